//! Which S3 operation a request is: path-style (`/bucket/key`) or
//! virtual-hosted (`Host: bucket.localhost`).

use std::borrow::Cow;

use http::{Method, Uri};
use percent_encoding::percent_decode_str;

use super::error::S3Error;

/// A read-only S3 operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Operation<'a> {
    /// `GET /`.
    ListBuckets,
    /// `HEAD /bucket`.
    HeadBucket {
        /// The bucket.
        bucket: Cow<'a, str>,
    },
    /// `GET /bucket?location`.
    GetBucketLocation {
        /// The bucket.
        bucket: Cow<'a, str>,
    },
    /// `GET /bucket` (V1) or `GET /bucket?list-type=2`.
    ListObjects {
        /// The bucket.
        bucket: Cow<'a, str>,
        /// ListObjectsV2.
        v2: bool,
    },
    /// `GET /bucket/key`.
    GetObject {
        /// The bucket.
        bucket: Cow<'a, str>,
        /// The key, percent-decoded.
        key: Cow<'a, str>,
    },
    /// `HEAD /bucket/key`.
    HeadObject {
        /// The bucket.
        bucket: Cow<'a, str>,
        /// The key, percent-decoded.
        key: Cow<'a, str>,
    },
}

/// Bucket sub-resources a read-only gateway does not serve.
const UNSUPPORTED_SUBRESOURCES: [&str; 12] = [
    "acl",
    "cors",
    "lifecycle",
    "policy",
    "tagging",
    "versioning",
    "versions",
    "uploads",
    "website",
    "encryption",
    "replication",
    "notification",
];

/// Classifies a request; `domains` are the virtual-host suffixes.
pub fn route<'a>(
    method: &Method,
    uri: &'a Uri,
    host: Option<&'a str>,
    domains: &[String],
) -> Result<Operation<'a>, S3Error> {
    if method != Method::GET && method != Method::HEAD {
        return Err(S3Error::not_implemented(format!(
            "Ferry serves data sets read-only; {method} is not supported"
        )));
    }
    let path = uri.path();
    let (bucket, key) = match virtual_host_bucket(host, domains) {
        Some(bucket) => (
            Some(Cow::Borrowed(bucket)),
            path.strip_prefix('/').unwrap_or(path),
        ),
        None => {
            let rest = path.strip_prefix('/').unwrap_or(path);
            match rest.split_once('/') {
                Some((bucket, key)) => (Some(decode(bucket)?), key),
                None if rest.is_empty() => (None, ""),
                None => (Some(decode(rest)?), ""),
            }
        }
    };
    let Some(bucket) = bucket else {
        return if method == Method::GET {
            Ok(Operation::ListBuckets)
        } else {
            Err(S3Error::invalid_uri("HEAD needs a bucket"))
        };
    };
    if !key.is_empty() {
        let key = decode(key)?;
        return Ok(if method == Method::GET {
            Operation::GetObject { bucket, key }
        } else {
            Operation::HeadObject { bucket, key }
        });
    }
    if method == Method::HEAD {
        return Ok(Operation::HeadBucket { bucket });
    }
    let mut v2 = false;
    for (name, value) in query_pairs(uri) {
        match name.as_ref() {
            "location" => return Ok(Operation::GetBucketLocation { bucket }),
            "list-type" if value == "2" => v2 = true,
            "list-type" => {
                return Err(S3Error::invalid_argument(format!(
                    "list-type '{value}' is unknown: expected 2"
                )));
            }
            other if UNSUPPORTED_SUBRESOURCES.contains(&other) => {
                return Err(S3Error::not_implemented(format!(
                    "the bucket sub-resource '{other}' is not supported by Ferry"
                )));
            }
            _ => {}
        }
    }
    Ok(Operation::ListObjects { bucket, v2 })
}

/// The bucket named by a `Host: <bucket>.<domain>[:port]` header, if any.
pub fn virtual_host_bucket<'a>(host: Option<&'a str>, domains: &[String]) -> Option<&'a str> {
    let host = host?;
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    domains.iter().find_map(|domain| {
        let bucket = name.strip_suffix(domain.as_str())?.strip_suffix('.')?;
        (!bucket.is_empty()).then_some(bucket)
    })
}

/// The request's query as decoded name/value pairs.
pub fn query_pairs(uri: &Uri) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
}

fn decode(text: &str) -> Result<Cow<'_, str>, S3Error> {
    percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| S3Error::invalid_uri(format!("'{text}' does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, uri: &str, host: Option<&str>) -> Result<String, S3Error> {
        let uri: Uri = uri.parse().expect("uri");
        let domains = vec!["localhost".to_owned()];
        route(&method, &uri, host, &domains).map(|op| format!("{op:?}"))
    }

    #[test]
    fn path_style() {
        assert_eq!(op(Method::GET, "/", None).as_deref(), Ok("ListBuckets"));
        assert_eq!(
            op(Method::GET, "/data/a/b%20c.jpg?x-id=GetObject", None).as_deref(),
            Ok("GetObject { bucket: \"data\", key: \"a/b c.jpg\" }")
        );
        assert_eq!(
            op(Method::HEAD, "/data/k", None).as_deref(),
            Ok("HeadObject { bucket: \"data\", key: \"k\" }")
        );
        assert_eq!(
            op(Method::GET, "/data?list-type=2&prefix=a", None).as_deref(),
            Ok("ListObjects { bucket: \"data\", v2: true }")
        );
        assert_eq!(
            op(Method::GET, "/data/", None).as_deref(),
            Ok("ListObjects { bucket: \"data\", v2: false }")
        );
        assert_eq!(
            op(Method::HEAD, "/data", None).as_deref(),
            Ok("HeadBucket { bucket: \"data\" }")
        );
        assert_eq!(
            op(Method::GET, "/data?location", None).as_deref(),
            Ok("GetBucketLocation { bucket: \"data\" }")
        );
    }

    #[test]
    fn virtual_hosted_style() {
        assert_eq!(
            op(Method::GET, "/a/b.jpg", Some("data.localhost:4140")).as_deref(),
            Ok("GetObject { bucket: \"data\", key: \"a/b.jpg\" }")
        );
        assert_eq!(
            op(Method::GET, "/?list-type=2", Some("data.localhost")).as_deref(),
            Ok("ListObjects { bucket: \"data\", v2: true }")
        );
        assert_eq!(
            op(Method::GET, "/data/k", Some("127.0.0.1:4140")).as_deref(),
            Ok("GetObject { bucket: \"data\", key: \"k\" }"),
            "an IP host is path-style"
        );
    }

    #[test]
    fn writes_and_odd_requests_are_refused_clearly() {
        let err = op(Method::PUT, "/data/k", None).expect_err("put");
        assert_eq!(err.code, "NotImplemented");
        assert!(err.message.contains("read-only"));
        let err = op(Method::GET, "/data?versioning", None).expect_err("versioning");
        assert_eq!(err.code, "NotImplemented");
        let err = op(Method::GET, "/data/%ff%fe", None).expect_err("bad utf-8");
        assert_eq!(err.code, "InvalidURI");
    }
}
