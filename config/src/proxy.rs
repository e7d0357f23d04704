//! Settings of one `ferry-proxy` process.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::Datasets;
use crate::units::{ByteSize, HumanDuration};

/// Default S3 front door for the local app.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4140";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4191";

/// Which side of the mesh a proxy is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Caches chunks and fetches misses from the origin.
    #[default]
    Worker,
    /// Runs beside the training program and fetches misses from workers.
    Sidecar,
}

impl Role {
    /// The role's name in flags, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Sidecar => "sidecar",
        }
    }
}

/// The whole configuration of a proxy.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The proxy's role.
    pub role: Role,
    /// Address of the S3 front door for the local app.
    pub listen: SocketAddr,
    /// Address of the admin endpoints (metrics, readiness).
    pub admin: SocketAddr,
    /// Runtime worker threads; absent means sized from the container's CPU quota.
    pub threads: Option<usize>,
    /// Host-name suffixes for virtual-hosted requests: `<bucket>.<suffix>`.
    pub virtual_host_domains: Vec<String>,
    /// Resource bounds.
    pub limits: Limits,
    /// The data sets served.
    pub datasets: Datasets,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            role: Role::Worker,
            listen: parse_default_addr(DEFAULT_LISTEN),
            admin: parse_default_addr(DEFAULT_ADMIN),
            threads: None,
            virtual_host_domains: vec!["localhost".to_owned()],
            limits: Limits::default(),
            datasets: Datasets::default(),
        }
    }
}

fn parse_default_addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Bounds on what a proxy holds at once.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections accepted at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Chunk bytes being fetched from upstream at once; more fetches wait.
    pub inflight_memory: ByteSize,
    /// Largest request head accepted; larger gets 431.
    pub max_header_bytes: ByteSize,
    /// Deadline for one upstream request.
    pub upstream_timeout: HumanDuration,
    /// Object metadata entries cached per data set.
    pub metadata_entries: usize,
    /// Objects listed per data set kept in the listing cache.
    pub listing_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            inflight_memory: ByteSize::mib(512),
            max_header_bytes: ByteSize::kib(16),
            upstream_timeout: HumanDuration(Duration::from_secs(30)),
            metadata_entries: 2_000_000,
            listing_entries: 2_000_000,
        }
    }
}
