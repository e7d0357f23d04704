//! The `synthetic://` data set: deterministic objects generated from a count, a
//! size and a seed, so benchmarks and the demo need no storage. The proxy's
//! synthetic origin and the benchmark's readers both derive keys, sizes and
//! bytes from this one definition.

use std::time::{Duration, SystemTime};

use crate::units::{ByteSize, parse_duration};

/// How object sizes are spread around the configured size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeDistribution {
    /// Log-normal around the mean, like ImageNet JPEGs (mean ≈ 110 KB, long tail).
    Imagenet,
    /// Every object has exactly the configured size (shards, fixed records).
    Fixed,
}

/// A synthetic data set, parsed from `synthetic://?count=N&size=110KiB&seed=S`.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Number of objects.
    pub count: u64,
    /// Mean object size.
    pub size: ByteSize,
    /// Seed for sizes and content.
    pub seed: u64,
    /// Size distribution.
    pub dist: SizeDistribution,
    /// Prefix of every key, e.g. `train/`.
    pub prefix: String,
    /// Suffix of every key, e.g. `.jpg`.
    pub suffix: String,
    /// Emulated time to first byte of every origin read (a remote store's latency).
    pub latency: Duration,
    /// Class directories, like an ImageFolder tree: object `i` is in
    /// `class{i mod classes}/` (0: no directories).
    pub classes: u64,
    /// An object whose every read fails (a damaged object at the origin),
    /// to show how one bad object is reported.
    pub broken: Option<u64>,
}

/// Spread of the log-normal size distribution (natural-log standard deviation).
const IMAGENET_SIGMA: f64 = 0.5;
/// Last-Modified of every synthetic object: fixed so ETags and dates are stable.
const SYNTHETIC_MTIME_SECS: u64 = 1_700_000_000;
/// Digits in the numeric part of a key.
const KEY_DIGITS: usize = 8;

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            count: 10_000,
            size: ByteSize(110 * 1024),
            seed: 0,
            dist: SizeDistribution::Imagenet,
            prefix: String::new(),
            suffix: ".jpg".to_owned(),
            latency: Duration::ZERO,
            classes: 0,
            broken: None,
        }
    }
}

impl SyntheticSpec {
    /// Parses the query part of a `synthetic://?...` URL (without the `?`).
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut spec = Self::default();
        let mut suffix_given = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("synthetic parameter '{pair}' has no value"))?;
            match name {
                "count" => {
                    spec.count = value
                        .parse()
                        .map_err(|_| format!("count '{value}' is not a whole number"))?
                }
                "size" => spec.size = value.parse()?,
                "seed" => {
                    spec.seed = value
                        .parse()
                        .map_err(|_| format!("seed '{value}' is not a whole number"))?
                }
                "dist" => {
                    spec.dist = match value {
                        "imagenet" => SizeDistribution::Imagenet,
                        "fixed" => SizeDistribution::Fixed,
                        other => {
                            return Err(format!(
                                "dist '{other}' is unknown: expected 'imagenet' or 'fixed'"
                            ));
                        }
                    }
                }
                "prefix" => spec.prefix = value.to_owned(),
                "suffix" => {
                    spec.suffix = value.to_owned();
                    suffix_given = true;
                }
                "latency" => spec.latency = parse_duration(value)?,
                "classes" => {
                    spec.classes = value.parse().ok().filter(|c| *c <= 10_000).ok_or_else(|| {
                        format!("classes '{value}' is not a whole number up to 10000")
                    })?
                }
                "broken" => {
                    spec.broken = Some(
                        value
                            .parse()
                            .map_err(|_| format!("broken '{value}' is not an object index"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "unknown synthetic parameter '{other}': expected count, size, seed, \
                         dist, prefix, suffix, latency, classes or broken"
                    ));
                }
            }
        }
        if spec.count == 0 {
            return Err("count must be at least 1".to_owned());
        }
        if spec.size.bytes() == 0 {
            return Err("size must be at least 1 byte".to_owned());
        }
        if !suffix_given && spec.dist == SizeDistribution::Fixed {
            spec.suffix = ".tar".to_owned();
        }
        Ok(spec)
    }

    /// The URL this spec was parsed from, normalised.
    pub fn to_url(&self) -> String {
        format!("synthetic://?{}", self.to_query())
    }

    /// The query part of [`SyntheticSpec::to_url`], as [`SyntheticSpec::from_query`] reads it.
    pub fn to_query(&self) -> String {
        let dist = match self.dist {
            SizeDistribution::Imagenet => "imagenet",
            SizeDistribution::Fixed => "fixed",
        };
        let mut url = format!(
            "count={}&size={}&seed={}&dist={dist}",
            self.count, self.size, self.seed
        );
        if !self.prefix.is_empty() {
            url.push_str(&format!("&prefix={}", self.prefix));
        }
        url.push_str(&format!("&suffix={}", self.suffix));
        if !self.latency.is_zero() {
            url.push_str(&format!(
                "&latency={}",
                humantime::format_duration(self.latency)
            ));
        }
        if self.classes > 0 {
            url.push_str(&format!("&classes={}", self.classes));
        }
        if let Some(broken) = self.broken {
            url.push_str(&format!("&broken={broken}"));
        }
        url
    }

    /// The key of object `index`.
    pub fn key(&self, index: u64) -> String {
        match self.classes {
            0 => format!(
                "{}{index:0width$}{}",
                self.prefix,
                self.suffix,
                width = KEY_DIGITS
            ),
            classes => format!(
                "{}class{:04}/{index:0width$}{}",
                self.prefix,
                index % classes,
                self.suffix,
                width = KEY_DIGITS
            ),
        }
    }

    /// The index of the object named `key`, if it belongs to this data set.
    pub fn index_of(&self, key: &str) -> Option<u64> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let (class, rest) = match self.classes {
            0 => (None, rest),
            _ => {
                let (dir, rest) = rest.split_once('/')?;
                let class: u64 = dir.strip_prefix("class")?.parse().ok()?;
                (Some(class), rest)
            }
        };
        let digits = rest.strip_suffix(self.suffix.as_str())?;
        if digits.len() != KEY_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let index: u64 = digits.parse().ok()?;
        let in_class = class.is_none_or(|c| self.classes > 0 && index % self.classes == c);
        (index < self.count && in_class).then_some(index)
    }

    /// The index of the object at `position` in key order (class by class,
    /// when there are classes).
    pub fn index_at(&self, position: u64) -> u64 {
        let classes = self.classes.min(self.count);
        if classes == 0 {
            return position;
        }
        // The first `long` classes hold one object more than the others.
        let (short, long) = (self.count / classes, self.count % classes);
        let long_objects = long * (short + 1);
        let (class, within) = if position < long_objects {
            (position / (short + 1), position % (short + 1))
        } else {
            let rest = position - long_objects;
            (long + rest / short, rest % short)
        };
        class + within * self.classes
    }

    /// The size in bytes of object `index`.
    pub fn object_size(&self, index: u64) -> u64 {
        let mean = self.size.bytes();
        match self.dist {
            SizeDistribution::Fixed => mean,
            SizeDistribution::Imagenet => {
                let u1 = unit_interval(mix(self.seed ^ 0x5151_5151, index));
                let u2 = unit_interval(mix(self.seed ^ 0xa3a3_a3a3, index));
                // Box-Muller: a standard normal from two uniforms.
                let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let mu = (mean as f64).ln() - IMAGENET_SIGMA * IMAGENET_SIGMA / 2.0;
                let size = (mu + IMAGENET_SIGMA * normal).exp();
                (size as u64).clamp((mean / 16).max(1), mean.saturating_mul(16))
            }
        }
    }

    /// Total bytes of the whole data set.
    pub fn total_bytes(&self) -> u64 {
        (0..self.count).map(|i| self.object_size(i)).sum()
    }

    /// The entity tag of object `index` (stable for a given spec).
    pub fn etag(&self, index: u64) -> String {
        let h = mix(self.seed ^ self.object_size(index).rotate_left(17), index);
        format!("{h:016x}")
    }

    /// Last-Modified of every object.
    pub fn mtime(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(SYNTHETIC_MTIME_SECS)
    }

    /// Fills `buf` with the bytes of object `index` starting at `offset`.
    pub fn fill(&self, index: u64, offset: u64, buf: &mut [u8]) {
        let stream = mix(self.seed, index);
        let mut word_index = offset / 8;
        let mut skip = (offset % 8) as usize;
        let mut filled = 0;
        while filled < buf.len() {
            let word = mix(stream, word_index).to_le_bytes();
            let take = (8 - skip).min(buf.len() - filled);
            buf[filled..filled + take].copy_from_slice(&word[skip..skip + take]);
            filled += take;
            skip = 0;
            word_index += 1;
        }
    }
}

/// A 64-bit mix of two values (SplitMix64 finaliser): fast, deterministic, well spread.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_add(b.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a hash to (0, 1), never exactly 0 so its logarithm is finite.
fn unit_interval(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_to_indices() {
        let spec = SyntheticSpec::from_query("count=100&prefix=train/").expect("spec");
        assert_eq!(spec.key(7), "train/00000007.jpg");
        assert_eq!(spec.index_of("train/00000007.jpg"), Some(7));
        assert_eq!(spec.index_of("train/00000100.jpg"), None, "past count");
        assert_eq!(spec.index_of("train/0000007.jpg"), None, "short");
        assert_eq!(spec.index_of("val/00000007.jpg"), None, "prefix");
    }

    #[test]
    fn imagenet_sizes_average_near_the_configured_size() {
        let spec = SyntheticSpec::from_query("count=20000&size=110KiB").expect("spec");
        let mean = spec.total_bytes() as f64 / spec.count as f64;
        let target = 110.0 * 1024.0;
        assert!((mean - target).abs() / target < 0.03, "mean {mean}");
        let sizes: Vec<u64> = (0..spec.count).map(|i| spec.object_size(i)).collect();
        assert!(sizes.iter().any(|&s| s < 60 * 1024), "has small objects");
        assert!(sizes.iter().any(|&s| s > 250 * 1024), "has a long tail");
    }

    #[test]
    fn fill_at_any_offset_matches_the_whole_object() {
        let spec = SyntheticSpec::from_query("count=3&size=1000&dist=fixed").expect("spec");
        let mut whole = vec![0u8; 1000];
        spec.fill(1, 0, &mut whole);
        for (start, end) in [(0, 1), (3, 17), (8, 16), (999, 1000), (5, 1000)] {
            let mut part = vec![0u8; end - start];
            spec.fill(1, start as u64, &mut part);
            assert_eq!(part, whole[start..end], "{start}..{end}");
        }
        let mut other = vec![0u8; 1000];
        spec.fill(2, 0, &mut other);
        assert_ne!(whole, other, "objects differ");
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = SyntheticSpec::from_query("count=10&colour=red").expect_err("unknown");
        assert!(
            err.contains("colour") && err.contains("count, size"),
            "{err}"
        );
        let err = SyntheticSpec::from_query("count=ten").expect_err("count");
        assert!(err.contains("ten"), "{err}");
        let err = SyntheticSpec::from_query("dist=zipf").expect_err("dist");
        assert!(err.contains("imagenet"), "{err}");
    }

    #[test]
    fn url_round_trips() {
        let spec = SyntheticSpec::from_query("count=5&size=4MiB&dist=fixed&seed=9&latency=5ms")
            .expect("spec");
        let again =
            SyntheticSpec::from_query(spec.to_url().strip_prefix("synthetic://?").expect("prefix"))
                .expect("again");
        assert_eq!(spec, again);
    }

    #[test]
    fn classes_make_directories_listed_in_key_order() {
        let spec = SyntheticSpec::from_query("count=10&classes=3&prefix=train/").expect("spec");
        assert_eq!(spec.key(7), "train/class0001/00000007.jpg");
        assert_eq!(spec.index_of("train/class0001/00000007.jpg"), Some(7));
        assert_eq!(
            spec.index_of("train/class0002/00000007.jpg"),
            None,
            "wrong class"
        );
        let keys: Vec<String> = (0..10).map(|p| spec.key(spec.index_at(p))).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "positions are key order");
        let mut indices: Vec<u64> = (0..10).map(|p| spec.index_at(p)).collect();
        indices.sort_unstable();
        assert_eq!(indices, (0..10).collect::<Vec<_>>(), "every object once");
        assert_eq!(
            SyntheticSpec::from_query(&spec.to_query()).expect("round trip"),
            spec
        );
    }
}
