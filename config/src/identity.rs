//! Mesh identity: SPIFFE IDs, the patterns data sets allow, a proxy's
//! identity settings, and the control plane's bootstrap tokens.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::units::HumanDuration;

const SCHEME: &str = "spiffe://";

fn valid_trust_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 255
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Splits `spiffe://domain/a/b` into the domain and path segments.
fn split(text: &str) -> Result<(&str, Vec<&str>), String> {
    let rest = text
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("'{text}' is not a SPIFFE ID: it must start with spiffe://"))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid_trust_domain(domain) {
        return Err(format!(
            "'{text}' has an invalid trust domain '{domain}': use lowercase letters, digits, '.', '-' or '_'"
        ));
    }
    if path.is_empty() {
        return Err(format!(
            "'{text}' names no workload: expected spiffe://{domain}/ns/NAMESPACE/sa/ACCOUNT"
        ));
    }
    Ok((domain, path.split('/').collect()))
}

/// A SPIFFE ID: `spiffe://<trust-domain>/<path>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(String);

impl SpiffeId {
    /// The ID of service account `account` in `namespace` of `trust_domain`.
    pub fn workload(trust_domain: &str, namespace: &str, account: &str) -> Result<Self, String> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{account}").parse()
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its trust domain.
    pub fn trust_domain(&self) -> &str {
        let rest = &self.0[SCHEME.len()..];
        rest.split_once('/').map_or(rest, |(domain, _)| domain)
    }

    /// The identity an X.509 certificate (DER) names: its only URI SAN, when
    /// that is a SPIFFE ID. The chain must have been verified already.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, parsed) = X509Certificate::from_der(der).ok()?;
        let names = parsed.subject_alternative_name().ok()??;
        let mut uris = names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        let uri = uris.next()?;
        if uris.next().is_some() {
            return None;
        }
        uri.parse().ok()
    }

    /// The namespace of a workload ID (`.../ns/<namespace>/sa/<account>`).
    pub fn namespace(&self) -> Option<&str> {
        let rest = &self.0[SCHEME.len()..];
        let (_, path) = rest.split_once('/')?;
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", namespace, "sa", _] => Some(namespace),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (_, segments) = split(text)?;
        if let Some(bad) = segments.iter().find(|s| !valid_segment(s)) {
            return Err(format!(
                "'{text}' has an invalid path segment '{bad}': use letters, digits, '.', '-' or '_'"
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pattern of SPIFFE IDs: exact, or `*` standing for any one path segment,
/// e.g. `spiffe://cluster.local/ns/train/sa/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffePattern {
    text: String,
    trust_domain: String,
    segments: Vec<Option<String>>,
}

impl SpiffePattern {
    /// Any workload of `trust_domain` named the Kubernetes way.
    pub fn any_workload(trust_domain: &str) -> Self {
        Self {
            text: format!("{SCHEME}{trust_domain}/ns/*/sa/*"),
            trust_domain: trust_domain.to_owned(),
            segments: vec![Some("ns".into()), None, Some("sa".into()), None],
        }
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        let Ok((domain, segments)) = split(id.as_str()) else {
            return false;
        };
        domain == self.trust_domain
            && segments.len() == self.segments.len()
            && segments
                .iter()
                .zip(&self.segments)
                .all(|(segment, pattern)| pattern.as_deref().is_none_or(|p| p == *segment))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The trust domain it matches in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The one namespace whose workloads it can match
    /// (`.../ns/<namespace>/sa/...` with the namespace spelled out).
    pub fn namespace(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Some(ns), Some(namespace), Some(sa), _] if ns == "ns" && sa == "sa" => Some(namespace),
            _ => None,
        }
    }
}

impl FromStr for SpiffePattern {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (domain, segments) = split(text)?;
        let segments = segments
            .into_iter()
            .map(|segment| match segment {
                "*" => Ok(None),
                s if valid_segment(s) => Ok(Some(s.to_owned())),
                s => Err(format!(
                    "'{text}' has an invalid path segment '{s}': use letters, digits, '.', '-', '_' or a whole-segment '*'"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            trust_domain: domain.to_owned(),
            segments,
        })
    }
}

macro_rules! text_serde {
    ($type:ty) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

text_serde!(SpiffeId);
text_serde!(SpiffePattern);

/// Whether a proxy takes part in the mesh's identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// No certificates: plaintext between proxies, no authorization (development only).
    #[default]
    Disabled,
    /// Certificates from the control plane; mutual TLS between proxies.
    ControlPlane,
}

impl FromStr for IdentityMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "disabled" => Ok(Self::Disabled),
            "control-plane" => Ok(Self::ControlPlane),
            other => Err(format!(
                "identity '{other}' is unknown: expected disabled or control-plane"
            )),
        }
    }
}

/// A proxy's identity settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySpec {
    /// Disabled (plaintext) or issued by the control plane.
    pub mode: IdentityMode,
    /// The control plane's identity API, e.g. `https://ferry-control-plane.ferry:8086`.
    pub control_plane: Option<String>,
    /// File holding the token presented when asking for a certificate (a
    /// projected service account token in Kubernetes).
    pub token_file: Option<PathBuf>,
    /// The token itself (development; prefer `token_file`).
    pub token: Option<String>,
    /// PEM file of trust anchors: verifies the control plane and every peer.
    pub trust_bundle: Option<PathBuf>,
    /// The trust anchors themselves, PEM (instead of a file: an injected
    /// sidecar gets them in an environment variable).
    pub trust_bundle_pem: Option<String>,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Deadline of a TLS handshake on the inbound listener.
    pub handshake_timeout: HumanDuration,
    /// TLS handshakes in progress at once on the inbound listener.
    pub max_handshakes: usize,
    /// The control plane's namespace: its certificate must name
    /// `spiffe://<trust_domain>/ns/<this>/sa/ferry-control-plane`.
    pub control_plane_namespace: String,
    /// Follow the control plane's policies and pools (`GET /v1/watch/proxy`).
    pub watch: bool,
}

impl Default for IdentitySpec {
    fn default() -> Self {
        Self {
            mode: IdentityMode::Disabled,
            control_plane: None,
            token_file: None,
            token: None,
            trust_bundle: None,
            trust_bundle_pem: None,
            trust_domain: "cluster.local".to_owned(),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            max_handshakes: 256,
            control_plane_namespace: "ferry-system".to_owned(),
            watch: true,
        }
    }
}

impl IdentitySpec {
    /// Checks that control-plane mode has what it needs.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !valid_trust_domain(&self.trust_domain) {
            return Err((
                "identity.trust_domain",
                format!("'{}' is not a valid trust domain", self.trust_domain),
            ));
        }
        if self.mode == IdentityMode::ControlPlane {
            if self.control_plane.is_none() {
                return Err((
                    "identity.control_plane",
                    "control-plane mode needs the control plane's URL".into(),
                ));
            }
            if self.token_file.is_none() && self.token.is_none() {
                return Err((
                    "identity.token_file",
                    "control-plane mode needs a token_file (or token)".into(),
                ));
            }
            if self.trust_bundle.is_none() && self.trust_bundle_pem.is_none() {
                return Err((
                    "identity.trust_bundle",
                    "control-plane mode needs a trust_bundle PEM file (or trust_bundle_pem)".into(),
                ));
            }
        }
        if self.max_handshakes == 0 {
            return Err(("identity.max_handshakes", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// One bootstrap token of the control plane's token file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapToken {
    /// The secret a proxy presents.
    pub token: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

/// The control plane's bootstrap token file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapTokens {
    /// The tokens.
    pub tokens: Vec<BootstrapToken>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_name_their_domain() {
        let id: SpiffeId = "spiffe://cluster.local/ns/train/sa/job"
            .parse()
            .expect("id");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), Some("train"));
        let other: SpiffeId = "spiffe://cluster.local/host/node-1".parse().expect("id");
        assert_eq!(other.namespace(), None, "not a workload ID");
        assert_eq!(SpiffeId::workload("cluster.local", "train", "job"), Ok(id));
        for bad in [
            "http://x/y",
            "spiffe://",
            "spiffe://UPPER/ns/a",
            "spiffe://d",
            "spiffe://d/a//b",
            "spiffe://d/ns/*",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_whole_segments() {
        let pattern: SpiffePattern = "spiffe://cluster.local/ns/train/sa/*"
            .parse()
            .expect("pattern");
        let id = |s: &str| s.parse::<SpiffeId>().expect("id");
        assert!(pattern.matches(&id("spiffe://cluster.local/ns/train/sa/job")));
        assert!(!pattern.matches(&id("spiffe://cluster.local/ns/eval/sa/job")));
        assert!(!pattern.matches(&id("spiffe://other.domain/ns/train/sa/job")));
        assert!(!pattern.matches(&id("spiffe://cluster.local/ns/train/sa/job/extra")));
        let any = SpiffePattern::any_workload("cluster.local");
        assert!(any.matches(&id("spiffe://cluster.local/ns/x/sa/y")));
        for bad in [
            "spiffe://d/ns/tr*in",
            "spiffe://d/ns/",
            "spiffe://*/ns/a",
            "cluster.local/ns/a",
        ] {
            assert!(bad.parse::<SpiffePattern>().is_err(), "{bad}");
        }
    }
}
