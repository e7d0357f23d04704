//! Human-friendly units in configuration: sizes like `4MiB`, durations like `30s`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes, written in YAML as `4MiB`, `512KiB`, `1GiB`, `110KB` or a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    /// `n` gibibytes.
    pub const fn gib(n: u64) -> Self {
        Self(n * 1024 * 1024 * 1024)
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

const SIZE_HINT: &str = "a size such as 512KiB, 4MiB, 1GiB, 110KB or a number of bytes";

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(format!("empty size: expected {SIZE_HINT}"));
        }
        if let Ok(n) = trimmed.parse::<u64>() {
            return Ok(Self(n));
        }
        // bytesize silently accepts fractional and odd spellings; reject a
        // leading sign or a missing number ourselves so errors stay precise.
        if !trimmed.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("invalid size '{text}': expected {SIZE_HINT}"));
        }
        trimmed
            .parse::<bytesize::ByteSize>()
            .map(|size| Self(size.as_u64()))
            .map_err(|_| format!("invalid size '{text}': expected {SIZE_HINT}"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, scale) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        if self.0 >= 1 << 20 {
            return write!(f, "{:.1}MiB", self.0 as f64 / (1 << 20) as f64);
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_HINT)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("negative size {v}: expected {SIZE_HINT}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How long cached object metadata stays valid before it is checked against the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MetadataTtl {
    /// Valid for the lifetime of the job: never re-validated (the default).
    #[default]
    Job,
    /// Re-validated with the origin once older than this.
    After(Duration),
}

const TTL_HINT: &str = "'job' (never re-validated) or a duration such as 30s, 5m, 1h";

impl FromStr for MetadataTtl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "job" {
            return Ok(Self::Job);
        }
        parse_duration(text)
            .map(Self::After)
            .map_err(|_| format!("invalid metadata TTL '{text}': expected {TTL_HINT}"))
    }
}

impl fmt::Display for MetadataTtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Job => f.write_str("job"),
            Self::After(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for MetadataTtl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl Serialize for MetadataTtl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parses a duration such as `30s`, `250ms` or `5m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration '{text}': {e}; expected e.g. 250ms, 30s, 5m"))
}

/// A duration written as `30s`, `250ms`, `5m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(Self).map_err(de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("4MiB".parse::<ByteSize>(), Ok(ByteSize::mib(4)));
        assert_eq!("512KiB".parse::<ByteSize>(), Ok(ByteSize::kib(512)));
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize::gib(1)));
        assert_eq!("110KB".parse::<ByteSize>(), Ok(ByteSize(110_000)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
    }

    #[test]
    fn bad_sizes_say_what_is_allowed() {
        for bad in ["", "MiB", "-4MiB", "4 parsecs", "four"] {
            let err = bad.parse::<ByteSize>().expect_err(bad);
            assert!(err.contains("512KiB"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes_display_in_their_largest_exact_unit() {
        assert_eq!(ByteSize::mib(4).to_string(), "4MiB");
        assert_eq!(ByteSize::gib(2).to_string(), "2GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn ttl_is_job_or_a_duration() {
        assert_eq!("job".parse::<MetadataTtl>(), Ok(MetadataTtl::Job));
        assert_eq!(
            "30s".parse::<MetadataTtl>(),
            Ok(MetadataTtl::After(Duration::from_secs(30)))
        );
        let err = "soon".parse::<MetadataTtl>().expect_err("soon");
        assert!(err.contains("'job'"), "{err}");
    }
}
