//! Settings of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::injection::InjectionConfig;
use crate::units::HumanDuration;

/// Default proxy API listener (identity certify, watches).
pub const DEFAULT_API: &str = "0.0.0.0:8086";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9990";

/// Everything `ferry-control-plane` runs with.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Proxy API (TLS).
    pub listen: SocketAddr,
    /// Admin: /live, /ready, /metrics.
    pub admin: SocketAddr,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Where a generated CA and the trust bundle are kept (local runs).
    pub state_dir: PathBuf,
    /// Issuer certificate (PEM), e.g. from a mounted Secret.
    pub ca_cert: Option<PathBuf>,
    /// Issuer private key (PEM), e.g. from a mounted Secret.
    pub ca_key: Option<PathBuf>,
    /// More trust anchors (PEM) to publish beside the issuer: the old CA
    /// while rotating to a new one.
    pub extra_anchors: Option<PathBuf>,
    /// Bootstrap tokens (YAML: `tokens: [{token, namespace, service_account}]`).
    pub tokens: Option<PathBuf>,
    /// Lifetime of issued workload certificates.
    pub cert_lifetime: HumanDuration,
    /// DNS names and IPs the API's own certificate covers.
    pub server_names: Vec<String>,
    /// File source: policy files (`*.yaml`) here apply to the whole mesh,
    /// those in a subdirectory named for a namespace to that namespace.
    pub config_dir: Option<PathBuf>,
    /// Kubernetes source: ConfigMaps, Services, EndpointSlices, TokenReview.
    pub kubernetes: bool,
    /// The control plane's own namespace: its policy ConfigMaps apply to the
    /// whole mesh.
    pub namespace: String,
    /// A watch with nothing new gets a heartbeat line this often.
    pub watch_heartbeat: HumanDuration,
    /// Kubernetes source: the issuer is kept in this Secret of the control
    /// plane's namespace (`tls.crt`, `tls.key`), created by the first replica
    /// that finds none.
    pub ca_secret: Option<String>,
    /// Kubernetes source: the trust bundle is published in this ConfigMap
    /// of the control plane's namespace (key `bundle.pem`), for the proxies
    /// started there (workers) to verify the control plane.
    pub trust_bundle_configmap: Option<String>,
    /// The sidecar injection webhook.
    pub injection: InjectionConfig,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_API
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8086))),
            admin: DEFAULT_ADMIN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9990))),
            trust_domain: "cluster.local".to_owned(),
            state_dir: PathBuf::from("ferry-control-plane"),
            ca_cert: None,
            ca_key: None,
            extra_anchors: None,
            tokens: None,
            cert_lifetime: HumanDuration(Duration::from_secs(24 * 3600)),
            server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            config_dir: None,
            kubernetes: false,
            namespace: "ferry-system".to_owned(),
            watch_heartbeat: HumanDuration(Duration::from_secs(10)),
            ca_secret: None,
            trust_bundle_configmap: None,
            injection: InjectionConfig::default(),
        }
    }
}
