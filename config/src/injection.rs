//! Sidecar injection: what the control plane's admission webhook puts in a
//! training pod, and the per-pod settings a pod may ask for by annotation.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::policy::CachePolicy;
use crate::units::ByteSize;

/// Default webhook listener (HTTPS).
pub const DEFAULT_WEBHOOK_LISTEN: &str = "0.0.0.0:8443";

/// The injection webhook's settings (`injection:` in the control plane's file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectionConfig {
    /// Serve the webhook at all.
    pub enabled: bool,
    /// HTTPS listener of `POST /v1/inject`.
    pub listen: SocketAddr,
    /// The control plane's Service: the webhook certificate names
    /// `<service>.<namespace>.svc`, and sidecars reach the API through it.
    pub service: String,
    /// The MutatingWebhookConfiguration whose `caBundle` the control plane
    /// keeps equal to the trust bundle (empty: none is kept).
    pub webhook_configuration: String,
    /// Image of the injected `ferry-proxy` container.
    pub image: String,
    /// Its pull policy.
    pub image_pull_policy: String,
    /// The control plane URL sidecars use; default `https://<service>.<namespace>.svc:8086`.
    pub control_plane_url: Option<String>,
    /// Native sidecars (Kubernetes ≥ 1.29): `auto` asks the API server's version.
    pub native_sidecars: NativeSidecars,
    /// Pods may ask for the POSIX mount (`config.ferry.dev/mount`). Off by
    /// default: the sidecar of such a pod runs privileged, as root, to mount
    /// FUSE and share it through mount propagation.
    pub allow_mount: bool,
    /// Defaults of the per-pod settings.
    pub defaults: PodSettings,
}

impl InjectionConfig {
    /// Checks what the fields cannot say alone.
    pub fn validate(&self) -> Result<(), String> {
        if self.defaults.mount.is_some() && !self.allow_mount {
            return Err(
                "injection.defaults.mount needs injection.allow_mount: true (the mount makes the sidecar privileged)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl Default for InjectionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: DEFAULT_WEBHOOK_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
            service: "ferry-control-plane".to_owned(),
            webhook_configuration: String::new(),
            image: format!("ferry:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".to_owned(),
            control_plane_url: None,
            native_sidecars: NativeSidecars::Auto,
            allow_mount: false,
            defaults: PodSettings {
                cpu_request: Some("100m".parse().unwrap_or_default()),
                memory_request: Some("256Mi".parse().unwrap_or_default()),
                ..PodSettings::default()
            },
        }
    }
}

/// Whether the sidecar is a native one (an init container that keeps running).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeSidecars {
    /// From the API server's version: 1.29 and later have them.
    #[default]
    Auto,
    /// Always native.
    Always,
    /// Never: an ordinary first container that holds the app until ready.
    Never,
}

impl FromStr for NativeSidecars {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "'{other}' is not allowed: use auto, always or never"
            )),
        }
    }
}

/// What a pod may set for its sidecar (`config.ferry.dev/<setting>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodSettings {
    /// `--cache-size` of the sidecar (every data set's memory cache).
    pub cache_size: Option<ByteSize>,
    /// `--cache-policy` of the sidecar.
    pub cache_policy: Option<CachePolicy>,
    /// The sidecar container's CPU request.
    pub cpu_request: Option<Quantity>,
    /// Its CPU limit.
    pub cpu_limit: Option<Quantity>,
    /// Its memory request.
    pub memory_request: Option<Quantity>,
    /// Its memory limit.
    pub memory_limit: Option<Quantity>,
    /// Its log level.
    pub log_level: Option<LogLevel>,
    /// Where the app's containers see the data sets as files (the POSIX
    /// mount); none by default.
    pub mount: Option<AppMountPath>,
}

/// Prefix of the per-pod setting annotations.
pub const SETTING_PREFIX: &str = "config.ferry.dev/";

impl PodSettings {
    /// The annotation names, each with what it allows.
    pub const ANNOTATIONS: [(&'static str, &'static str); 8] = [
        ("cache-size", "a size such as 512MiB or 4GiB"),
        ("cache-policy", "pin, lru or s3fifo"),
        ("cpu-request", "a Kubernetes quantity such as 250m or 2"),
        ("cpu-limit", "a Kubernetes quantity such as 250m or 2"),
        (
            "memory-request",
            "a Kubernetes quantity such as 512Mi or 2Gi",
        ),
        ("memory-limit", "a Kubernetes quantity such as 512Mi or 2Gi"),
        ("log-level", "error, warn, info, debug or trace"),
        (
            "mount",
            "an absolute path such as /data where the app's containers see the data sets, or none",
        ),
    ];

    /// These settings with each `config.ferry.dev/<setting>` annotation of
    /// `annotations` on top; the first invalid one is an error that names
    /// the annotation, its value and what is allowed. An unknown setting
    /// under the prefix is an error too (a typo must not pass silently).
    pub fn with_annotations<'a>(
        &self,
        annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut settings = self.clone();
        for (name, value) in annotations {
            let Some(setting) = name.strip_prefix(SETTING_PREFIX) else {
                continue;
            };
            let Some((_, allowed)) = Self::ANNOTATIONS.iter().find(|(s, _)| *s == setting) else {
                let known: Vec<String> = Self::ANNOTATIONS
                    .iter()
                    .map(|(s, _)| format!("{SETTING_PREFIX}{s}"))
                    .collect();
                return Err(format!(
                    "annotation {name} is not a Ferry setting: use one of {}",
                    known.join(", ")
                ));
            };
            let bad = |why: String| format!("annotation {name}: {why}; allowed: {allowed}");
            match setting {
                "cache-size" => settings.cache_size = Some(value.parse().map_err(bad)?),
                "cache-policy" => settings.cache_policy = Some(value.parse().map_err(bad)?),
                "cpu-request" => settings.cpu_request = Some(value.parse().map_err(bad)?),
                "cpu-limit" => settings.cpu_limit = Some(value.parse().map_err(bad)?),
                "memory-request" => settings.memory_request = Some(value.parse().map_err(bad)?),
                "memory-limit" => settings.memory_limit = Some(value.parse().map_err(bad)?),
                "mount" if value == "none" => settings.mount = None,
                "mount" => settings.mount = Some(value.parse().map_err(bad)?),
                _ => settings.log_level = Some(value.parse().map_err(bad)?),
            }
        }
        Ok(settings)
    }
}

/// A path in the app's containers: absolute, normalized (no empty, `.` or
/// `..` segments), not `/` itself, as a `volumeMount`'s `mountPath` must be
/// to hold a volume of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMountPath(String);

impl AppMountPath {
    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppMountPath {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("'{text}' is not an absolute path"));
        };
        let normal = !rest.is_empty()
            && rest
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | ".."));
        if !normal {
            return Err(format!(
                "'{text}' is not a normalized path below / (no empty, '.' or '..' parts, no trailing /)"
            ));
        }
        if text.len() > 1024 || text.contains(['\0', ':']) {
            return Err(format!("'{text}' cannot be a mount path"));
        }
        Ok(Self(text.to_owned()))
    }
}

impl<'de> Deserialize<'de> for AppMountPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for AppMountPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A Kubernetes resource quantity (`250m`, `2`, `512Mi`, `1e3`, `1.5Gi`),
/// checked as the API server would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Quantity {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        const SUFFIXES: [&str; 14] = [
            "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
        ];
        let number_end = text
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-')))
            })
            .map_or(text.len(), |(i, _)| i);
        let (number, suffix) = text.split_at(number_end);
        let digits = number.trim_start_matches(['+', '-']);
        let valid_number = !digits.is_empty()
            && digits != "."
            && digits.matches('.').count() <= 1
            && !number.starts_with('-');
        let valid_suffix = suffix.is_empty()
            || SUFFIXES.contains(&suffix)
            || suffix == "E"
            || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
                let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
            });
        if valid_number && valid_suffix {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "'{text}' is not a Kubernetes quantity (a non-negative number with an optional suffix: m, k, M, G, Ki, Mi, Gi, ...)"
            ))
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A proxy's log level (`RUST_LOG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// And warnings.
    Warn,
    /// And notable events (the default).
    Info,
    /// And details.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        [
            Self::Error,
            Self::Warn,
            Self::Info,
            Self::Debug,
            Self::Trace,
        ]
        .into_iter()
        .find(|l| l.as_str() == text)
        .ok_or_else(|| format!("unknown log level '{text}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_absolute_and_normalized() {
        for good in ["/data", "/mnt/ferry", "/a-b/c_d.e"] {
            assert!(good.parse::<AppMountPath>().is_ok(), "{good}");
        }
        for bad in [
            "", "/", "data", "/data/", "//data", "/a/../b", "/a/./b", "/a:b",
        ] {
            assert!(bad.parse::<AppMountPath>().is_err(), "{bad}");
        }
        let defaults = InjectionConfig::default().defaults;
        let asked = defaults
            .with_annotations([("config.ferry.dev/mount", "/data")])
            .expect("valid");
        assert_eq!(
            asked.mount.as_ref().map(AppMountPath::as_str),
            Some("/data")
        );
        let declined = asked
            .with_annotations([("config.ferry.dev/mount", "none")])
            .expect("valid");
        assert_eq!(declined.mount, None);
        let err = defaults
            .with_annotations([("config.ferry.dev/mount", "data")])
            .expect_err("relative");
        assert!(err.contains("absolute path such as /data"), "{err}");
    }

    #[test]
    fn a_default_mount_needs_the_operator_to_allow_it() {
        let mut config = InjectionConfig::default();
        assert!(config.validate().is_ok());
        config.defaults.mount = Some("/data".parse().expect("path"));
        let err = config.validate().expect_err("not allowed");
        assert!(err.contains("allow_mount"), "{err}");
        config.allow_mount = true;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn quantities_are_checked_as_the_api_server_does() {
        for good in [
            "250m", "2", "0.5", "512Mi", "1Gi", "1e3", "1.5Gi", "+3", "100k", "3E",
        ] {
            assert!(good.parse::<Quantity>().is_ok(), "{good}");
        }
        for bad in ["", "lots", "-1", "1.2.3", "12mb", "Gi", "1 Gi", ".", "5x"] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn annotations_override_defaults_and_bad_ones_say_what_is_allowed() {
        let defaults = InjectionConfig::default().defaults;
        let settings = defaults
            .with_annotations([
                ("config.ferry.dev/cache-size", "2GiB"),
                ("config.ferry.dev/cpu-limit", "2"),
                ("config.ferry.dev/log-level", "debug"),
                ("unrelated/annotation", "whatever"),
            ])
            .expect("valid");
        assert_eq!(settings.cache_size, Some(ByteSize::gib(2)));
        assert_eq!(settings.cpu_limit.as_ref().map(Quantity::as_str), Some("2"));
        assert_eq!(settings.cpu_request, defaults.cpu_request, "kept");
        assert_eq!(settings.log_level, Some(LogLevel::Debug));
        for (name, value, says) in [
            (
                "config.ferry.dev/cache-size",
                "huge",
                "allowed: a size such as",
            ),
            (
                "config.ferry.dev/cache-policy",
                "mru",
                "allowed: pin, lru or s3fifo",
            ),
            (
                "config.ferry.dev/memory-limit",
                "lots",
                "Kubernetes quantity",
            ),
            ("config.ferry.dev/log-level", "loud", "allowed: error, warn"),
            (
                "config.ferry.dev/cache-szie",
                "1GiB",
                "is not a Ferry setting",
            ),
        ] {
            let err = defaults.with_annotations([(name, value)]).expect_err(name);
            let quoted = err.contains(value) || says == "is not a Ferry setting";
            assert!(err.contains(name) && quoted && err.contains(says), "{err}");
        }
    }
}
