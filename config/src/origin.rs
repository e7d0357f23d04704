//! Origin URLs: where a data set's bytes live.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::synthetic::SyntheticSpec;

/// Where a data set's objects come from.
#[derive(Clone, Debug, PartialEq)]
pub enum OriginSpec {
    /// A local directory: `file:///abs/dir`. Keys are paths below it.
    File {
        /// Absolute root directory.
        root: PathBuf,
    },
    /// An HTTP(S) server with Range support: `http(s)://host[:port]/prefix`.
    Http {
        /// Base URL; a key is appended to it.
        base: String,
    },
    /// An S3-compatible store: `s3://bucket/prefix`.
    S3 {
        /// The store's bucket.
        bucket: String,
        /// Key prefix inside the bucket (empty or ending in `/` as written).
        prefix: String,
    },
    /// Generated data: `synthetic://?count=N&size=110KiB&seed=S`.
    Synthetic(SyntheticSpec),
}

const ORIGIN_HINT: &str = "file:///abs/dir, http(s)://host/prefix, s3://bucket/prefix or \
                           synthetic://?count=N&size=110KiB&seed=S";

impl FromStr for OriginSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid origin '{text}': {why}; expected {ORIGIN_HINT}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("missing scheme"))?;
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(bad(
                        "a file origin needs an absolute path (file:///abs/dir)",
                    ));
                }
                if rest.split('/').any(|segment| segment == "..") {
                    return Err(bad("a file origin's path may not contain '..'"));
                }
                Ok(Self::File {
                    root: PathBuf::from(rest),
                })
            }
            "http" | "https" => {
                let parsed = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(bad("missing host"));
                }
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    return Err(bad("an HTTP origin takes no query or fragment"));
                }
                Ok(Self::Http {
                    base: text.to_owned(),
                })
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad("missing bucket (s3://bucket/prefix)"));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: prefix.to_owned(),
                })
            }
            "synthetic" => {
                let query = rest.strip_prefix('?').unwrap_or(rest);
                let query = query.strip_prefix('/').unwrap_or(query);
                let query = query.strip_prefix('?').unwrap_or(query);
                SyntheticSpec::from_query(query)
                    .map(Self::Synthetic)
                    .map_err(|e| bad(&e))
            }
            other => Err(bad(&format!("unknown scheme '{other}'"))),
        }
    }
}

impl fmt::Display for OriginSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { root } => write!(f, "file://{}", root.display()),
            Self::Http { base } => f.write_str(base),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Self::Synthetic(spec) => f.write_str(&spec.to_url()),
        }
    }
}

impl<'de> Deserialize<'de> for OriginSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for OriginSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_parses() {
        assert_eq!(
            "file:///data/imagenet".parse::<OriginSpec>(),
            Ok(OriginSpec::File {
                root: PathBuf::from("/data/imagenet")
            })
        );
        assert!(matches!(
            "https://example.com/data/".parse::<OriginSpec>(),
            Ok(OriginSpec::Http { .. })
        ));
        assert_eq!(
            "s3://bucket/train/".parse::<OriginSpec>(),
            Ok(OriginSpec::S3 {
                bucket: "bucket".into(),
                prefix: "train/".into()
            })
        );
        let Ok(OriginSpec::Synthetic(spec)) = "synthetic://?count=9&seed=3".parse::<OriginSpec>()
        else {
            panic!("synthetic did not parse");
        };
        assert_eq!((spec.count, spec.seed), (9, 3));
    }

    #[test]
    fn bad_origins_say_what_is_allowed() {
        for bad in [
            "/data",
            "file://relative/dir",
            "file:///data/../etc",
            "ftp://host/x",
            "s3://",
            "http://",
            "synthetic://?count=0",
        ] {
            let err = bad.parse::<OriginSpec>().expect_err(bad);
            assert!(err.contains("expected file:///abs/dir"), "{bad}: {err}");
        }
    }
}
