//! Tenancy: what a namespace's own policies may reach. The mesh admin's
//! `tenants` table lists, per namespace, the origin prefixes its data sets
//! may read; `file://` is never one of them, and a namespace's HTTP origins
//! never reach addresses that belong to the machine or the mesh.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::origin::OriginSpec;

/// One namespace's allowance.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// The Kubernetes namespace (or `--config-dir` subdirectory).
    pub namespace: String,
    /// Origin prefixes its data sets may use.
    #[serde(default)]
    pub origins: Vec<OriginPrefix>,
}

/// The start of the origins a namespace may use. Prefixes are literal, as
/// S3's are: `s3://data/train/` covers `s3://data/train/a/` but
/// `s3://data/train` also covers `s3://data/training/`. HTTP prefixes are
/// compared after URL normalisation (case, default port, `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPrefix {
    /// `s3://bucket[/prefix]`.
    S3 {
        /// The bucket, exactly.
        bucket: String,
        /// The start of the key prefix.
        prefix: String,
        /// As written.
        text: String,
    },
    /// `http(s)://host[:port][/path]`.
    Http {
        /// `scheme://host:port` with the port always spelled out.
        authority: String,
        /// The host as parsed (an IP literal or a name).
        host: String,
        /// The start of the path (begins with `/`).
        path: String,
        /// As written.
        text: String,
    },
    /// `synthetic://`: generated data, any parameters.
    Synthetic,
}

impl OriginPrefix {
    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::S3 { text, .. } | Self::Http { text, .. } => text,
            Self::Synthetic => "synthetic://",
        }
    }

    /// Whether `origin` starts with this prefix.
    pub fn covers(&self, origin: &OriginSpec) -> bool {
        match (self, origin) {
            (
                Self::S3 {
                    bucket: allowed_bucket,
                    prefix: allowed,
                    ..
                },
                OriginSpec::S3 { bucket, prefix },
            ) => allowed_bucket == bucket && prefix.starts_with(allowed.as_str()),
            (
                Self::Http {
                    authority, path, ..
                },
                OriginSpec::Http { base },
            ) => http_parts(base).is_some_and(|(their_authority, _, mut their_path)| {
                // A key is appended after a `/` the origin adds.
                if !their_path.ends_with('/') {
                    their_path.push('/');
                }
                their_authority == *authority && their_path.starts_with(path.as_str())
            }),
            (Self::Synthetic, OriginSpec::Synthetic(_)) => true,
            _ => false,
        }
    }

    /// The host a covered HTTP origin must have (`None` for other schemes).
    pub fn http_host(&self) -> Option<&str> {
        match self {
            Self::Http { host, .. } => Some(host),
            _ => None,
        }
    }
}

/// `scheme://host:port`, the host, and the normalised path of an HTTP URL.
fn http_parts(text: &str) -> Option<(String, String, String)> {
    let url = url::Url::parse(text).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?.to_owned();
    let port = url.port_or_known_default()?;
    let authority = format!("{}://{host}:{port}", url.scheme());
    Some((authority, host, url.path().to_owned()))
}

/// The host of an HTTP(S) origin, as parsed (brackets removed from IPv6).
pub fn http_origin_host(origin: &OriginSpec) -> Option<String> {
    match origin {
        OriginSpec::Http { base } => {
            http_parts(base).map(|(_, host, _)| host.trim_matches(['[', ']']).to_owned())
        }
        _ => None,
    }
}

impl FromStr for OriginPrefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("origin prefix '{text}': {why}");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            bad("missing scheme; expected s3://bucket/prefix, https://host/path or synthetic://")
        })?;
        match scheme {
            "file" => Err(bad(
                "file:// origins are never a namespace's: only the mesh admin's own policies read local files",
            )),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("names no bucket (s3://bucket/prefix)"));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.to_owned(),
                    text: text.to_owned(),
                })
            }
            "http" | "https" => {
                let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(bad("takes no query or fragment"));
                }
                let (authority, host, path) =
                    http_parts(text).ok_or_else(|| bad("names no host: a prefix must name one"))?;
                Ok(Self::Http {
                    authority,
                    host: host.trim_matches(['[', ']']).to_owned(),
                    path,
                    text: text.to_owned(),
                })
            }
            "synthetic" if rest.is_empty() => Ok(Self::Synthetic),
            "synthetic" => Err(bad(
                "write synthetic:// alone: it allows generated data of any shape",
            )),
            other => Err(bad(&format!(
                "unknown scheme '{other}'; expected s3, http, https or synthetic"
            ))),
        }
    }
}

impl fmt::Display for OriginPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OriginPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for OriginPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Whether a namespace's HTTP origin must not reach `ip`: the machine
/// itself (loopback, unspecified) or link-local addresses, where cloud
/// metadata services answer. IPv4 inside IPv6 counts as IPv4.
pub fn off_limits_to_tenants(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> OriginSpec {
        text.parse().expect("origin")
    }

    fn prefix(text: &str) -> OriginPrefix {
        text.parse().expect("prefix")
    }

    #[test]
    fn prefixes_cover_what_starts_with_them() {
        let s3 = prefix("s3://data/train/");
        assert!(s3.covers(&origin("s3://data/train/imagenet/")));
        assert!(!s3.covers(&origin("s3://data/training/")));
        assert!(!s3.covers(&origin("s3://other/train/")));
        assert!(prefix("s3://data").covers(&origin("s3://data/anything/")));

        let web = prefix("https://Data.Example.com/train/");
        assert!(web.covers(&origin("https://data.example.com:443/train/a")));
        assert!(web.covers(&origin("https://data.example.com/train")));
        assert!(!web.covers(&origin("https://data.example.com/train/../secret/")));
        assert!(!web.covers(&origin("http://data.example.com/train/")));
        assert!(!web.covers(&origin("https://data.example.com:8443/train/")));
        assert!(!web.covers(&origin("https://data.example.com@evil.example/train/")));

        assert!(prefix("synthetic://").covers(&origin("synthetic://?count=3")));
        assert!(!prefix("synthetic://").covers(&origin("file:///data")));
    }

    #[test]
    fn file_prefixes_and_hostless_ones_are_refused() {
        for (bad, why) in [
            ("file:///data/", "never a namespace's"),
            ("https://", "host"),
            ("s3://", "bucket"),
            ("ftp://h/", "unknown scheme"),
            ("synthetic://?count=1", "alone"),
        ] {
            let err = bad.parse::<OriginPrefix>().expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_machine_and_link_local_are_off_limits() {
        for ip in [
            "127.0.0.1",
            "127.3.2.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(off_limits_to_tenants(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["10.0.0.1", "192.0.2.7", "2001:db8::1"] {
            assert!(!off_limits_to_tenants(ip.parse().expect("ip")), "{ip}");
        }
    }
}
