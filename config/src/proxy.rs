//! Settings of one `ferry-proxy` process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::IdentitySpec;
use crate::load::ConfigError;
use crate::policy::{CachePolicy, DatasetPolicy, Datasets, PoolDownPolicy};
use crate::pool::PoolSpec;
use crate::units::{ByteSize, HumanDuration};

/// Default S3 front door for the local app.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4140";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4191";
/// Default inbound listener of a worker (other proxies connect here).
pub const DEFAULT_INBOUND: &str = "0.0.0.0:4143";

/// Which side of the mesh a proxy is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
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
    /// Where a worker accepts requests from sidecars.
    pub inbound: SocketAddr,
    /// A worker's address as its pool names it (`host:port`), for warm-ups
    /// it starts on its own; default: its inbound address, when that names
    /// one host.
    pub advertise: Option<String>,
    /// Runtime worker threads; absent means sized from the container's CPU quota.
    pub threads: Option<usize>,
    /// Host-name suffixes for virtual-hosted requests: `<bucket>.<suffix>`.
    pub virtual_host_domains: Vec<String>,
    /// Resource bounds.
    pub limits: Limits,
    /// Mesh identity: certificates and mutual TLS between proxies.
    pub identity: IdentitySpec,
    /// Worker pools sidecars read from.
    pub pools: Vec<PoolSpec>,
    /// A worker's local-disk cache tier.
    pub disk_cache: Option<DiskCacheSpec>,
    /// The data sets served.
    pub datasets: Datasets,
    /// This proxy's cache for every data set, whatever their policies say
    /// (the control plane's included): `--cache-size`, `--cache-policy`.
    pub cache: CacheOverride,
    /// A read-only FUSE mount of every data set (`--mount DIR`).
    pub mount: Option<MountSpec>,
}

/// Where and how the data sets are mounted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// An empty directory to mount on.
    pub dir: PathBuf,
    /// FUSE session threads (each with its own /dev/fuse descriptor).
    #[serde(default = "default_mount_threads")]
    pub threads: usize,
}

/// Session threads of a mount. On 2 cores 1 to 8 threads were within noise
/// of each other (13.9–14.7 k files/s of 110 KB from Ferry's cache, 2.1–2.2
/// GB/s in 4 MiB reads); 4 leave room for larger nodes without idling many.
pub const DEFAULT_MOUNT_THREADS: usize = 4;

fn default_mount_threads() -> usize {
    DEFAULT_MOUNT_THREADS
}

/// A proxy's own cache settings, over every data set's policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheOverride {
    /// Memory cache size for each data set.
    pub size: Option<ByteSize>,
    /// Eviction policy of each data set's memory cache.
    pub policy: Option<CachePolicy>,
}

impl CacheOverride {
    /// Applies these settings to `dataset`'s cache for `role`.
    pub fn apply(&self, role: Role, dataset: &mut DatasetPolicy) {
        let cache = dataset.cache_for_mut(role);
        if let Some(size) = self.size {
            cache.size = size;
        }
        if let Some(policy) = self.policy {
            cache.policy = policy;
        }
    }
}

/// The local-disk tier of a worker's cache.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskCacheSpec {
    /// Directory holding cached chunks (created if missing).
    pub dir: PathBuf,
    /// Most bytes of chunk data kept there.
    pub size: ByteSize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            role: Role::Worker,
            listen: parse_default_addr(DEFAULT_LISTEN),
            admin: parse_default_addr(DEFAULT_ADMIN),
            inbound: parse_default_addr(DEFAULT_INBOUND),
            advertise: None,
            threads: None,
            virtual_host_domains: vec!["localhost".to_owned()],
            limits: Limits::default(),
            identity: IdentitySpec::default(),
            pools: Vec::new(),
            disk_cache: None,
            datasets: Datasets::default(),
            cache: CacheOverride::default(),
            mount: None,
        }
    }
}

impl ProxyConfig {
    /// Checks what spans sections: every data set has what its role needs, and
    /// pools are named uniquely and exist. `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let error = |field: String, message: String| ConfigError::in_file(file, field, message);
        crate::pool::check_unique_names(&self.pools)
            .map_err(|(field, message)| error(field, message))?;
        for (i, pool) in self.pools.iter().enumerate() {
            pool.validate()
                .map_err(|(field, message)| error(format!("pools[{i}].{field}"), message))?;
        }
        for (i, dataset) in self.datasets.iter().enumerate() {
            dataset
                .validate()
                .map_err(|(field, message)| error(format!("datasets[{i}].{field}"), message))?;
            if let Some(first) = self.datasets[..i]
                .iter()
                .position(|d| d.name == dataset.name || d.bucket == dataset.bucket)
            {
                return Err(error(
                    format!("datasets[{i}]"),
                    format!(
                        "data set '{}' (bucket '{}') reuses the name or bucket of datasets[{first}]",
                        dataset.name, dataset.bucket
                    ),
                ));
            }
        }
        self.identity
            .check()
            .map_err(|(field, message)| error(field.to_owned(), message))?;
        if let Some(mount) = &self.mount
            && !(1..=64).contains(&mount.threads)
        {
            return Err(error(
                "mount.threads".into(),
                format!("{} session threads: allowed 1 to 64", mount.threads),
            ));
        }
        if self.limits.max_requests == Some(0) {
            return Err(error(
                "limits.max_requests".into(),
                "0 requests at once would refuse every request: give at least 1".into(),
            ));
        }
        if let Some(bytes) = self.limits.inflight_memory
            && bytes.bytes() < 64 * 1024
        {
            return Err(error(
                "limits.inflight_memory".into(),
                format!("{bytes} in flight is less than one 64 KiB unit: give at least 64KiB"),
            ));
        }
        for (field, value) in [
            ("header_timeout", self.limits.header_timeout.0),
            ("idle_timeout", self.limits.idle_timeout.0),
        ] {
            if value.is_zero() {
                return Err(error(
                    format!("limits.{field}"),
                    "0 would close every connection at once: give a duration such as 10s".into(),
                ));
            }
        }
        if self.limits.admission_wait.0 > Duration::from_secs(60) {
            return Err(error(
                "limits.admission_wait".into(),
                format!(
                    "{:?} is longer than S3 clients wait for an answer: allowed up to 60s",
                    self.limits.admission_wait.0
                ),
            ));
        }
        if self.disk_cache.is_some() && self.role != Role::Worker {
            return Err(error(
                "disk_cache".into(),
                "a disk cache belongs to a worker, not a sidecar".into(),
            ));
        }
        for (i, dataset) in self.datasets.iter().enumerate() {
            match self.role {
                Role::Worker if dataset.origin.is_none() => {
                    return Err(error(
                        format!("datasets[{i}].origin"),
                        format!(
                            "data set '{}' has no origin: a worker reads from one",
                            dataset.name
                        ),
                    ));
                }
                Role::Worker => {}
                Role::Sidecar => {
                    dataset
                        .pool_in(&self.pools)
                        .map_err(|message| error(format!("datasets[{i}].pool"), message))?;
                    if dataset.on_pool_down == PoolDownPolicy::Origin && dataset.origin.is_none() {
                        return Err(error(
                            format!("datasets[{i}].origin"),
                            "on_pool_down: origin needs an origin".into(),
                        ));
                    }
                }
            }
        }
        Ok(())
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
    /// Requests served at once on each listener; past it a request waits
    /// `admission_wait`, then gets 503 `SlowDown`. Absent: 128 per CPU.
    pub max_requests: Option<usize>,
    /// Bytes in flight, twice over: chunk bytes being fetched upstream, and
    /// bytes of responses not yet sent. Past either, new work waits
    /// `admission_wait` (then 503 `SlowDown`). Absent: an eighth of the
    /// container's memory limit, at most 512 MiB.
    pub inflight_memory: Option<ByteSize>,
    /// Chunks fetched ahead for posted read orders (`POST /v1/prefetch`)
    /// and not yet read, across data sets. Absent: as `inflight_memory`.
    pub prefetch_memory: Option<ByteSize>,
    /// How long a request waits for a slot or memory before `SlowDown`.
    pub admission_wait: HumanDuration,
    /// Largest request head accepted; larger gets 431.
    pub max_header_bytes: ByteSize,
    /// A connection must send a complete request head within this of
    /// opening (and, over HTTP/1.1, of being ready for its next request).
    pub header_timeout: HumanDuration,
    /// A connection that moves no byte either way this long is closed.
    pub idle_timeout: HumanDuration,
    /// Deadline for one upstream request.
    pub upstream_timeout: HumanDuration,
    /// Object metadata entries cached per data set. Absent: as many as a
    /// sixteenth of the container's memory limit holds (about 700 bytes
    /// each), at most 2,000,000.
    pub metadata_entries: Option<usize>,
    /// Objects listed per data set kept in the listing cache (and as many
    /// again in the latest pages of prefixes too big for it). Absent: as
    /// many as a sixteenth of the memory limit holds twice over (about 160
    /// bytes each), at most 2,000,000.
    pub listing_entries: Option<usize>,
    /// How long a data set the control plane removed keeps its caches (not
    /// served), so that it comes back warm if the removal was a flap.
    pub removed_dataset_grace: HumanDuration,
}

/// In-flight bytes without a configured value or a memory limit to size them from.
pub const DEFAULT_INFLIGHT_MEMORY: ByteSize = ByteSize::mib(512);
/// The least in-flight bytes a memory limit sizes: one 4 MiB chunk each way, twice.
pub const MIN_INFLIGHT_MEMORY: ByteSize = ByteSize::mib(8);
/// Requests per CPU when `max_requests` is absent.
pub const REQUESTS_PER_CPU: usize = 128;
/// Metadata and listing entries per data set without a configured value
/// or a memory limit to size them from.
pub const DEFAULT_METADATA_ENTRIES: usize = 2_000_000;
/// The fewest entries a memory limit sizes either cache to.
pub const MIN_METADATA_ENTRIES: usize = 10_000;
/// Memory of one cached object's metadata, rounded up from 530-670 bytes
/// measured with 20-byte keys (its key, ETag, headers and cache entry).
pub const METADATA_ENTRY_BYTES: u64 = 700;
/// Memory of one listed object, rounded up from about 120 bytes measured.
pub const LISTED_OBJECT_BYTES: u64 = 160;

impl Limits {
    /// The in-flight byte bound in force.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_memory
            .unwrap_or(DEFAULT_INFLIGHT_MEMORY)
            .bytes()
    }

    /// Object metadata entries per data set in force.
    pub fn metadata_capacity(&self) -> usize {
        self.metadata_entries.unwrap_or(DEFAULT_METADATA_ENTRIES)
    }

    /// Listed objects per data set in force.
    pub fn listing_capacity(&self) -> usize {
        self.listing_entries.unwrap_or(DEFAULT_METADATA_ENTRIES)
    }

    /// The prefetch byte bound in force.
    pub fn prefetch_bytes(&self) -> u64 {
        self.prefetch_memory
            .map_or_else(|| self.inflight_bytes(), ByteSize::bytes)
    }

    /// Fills the absent bounds from the container's `cpus` and memory
    /// limit (`None`: unlimited).
    pub fn size_from(&mut self, cpus: usize, memory_limit: Option<u64>) {
        self.max_requests
            .get_or_insert(REQUESTS_PER_CPU.saturating_mul(cpus.max(1)));
        if self.inflight_memory.is_none() {
            let sized = memory_limit.map_or(DEFAULT_INFLIGHT_MEMORY.bytes(), |limit| {
                (limit / 8).clamp(MIN_INFLIGHT_MEMORY.bytes(), DEFAULT_INFLIGHT_MEMORY.bytes())
            });
            self.inflight_memory = Some(ByteSize(sized));
        }
        // A sixteenth of the limit each for a data set's metadata and its
        // listings (held twice: the cache and the window of too-big prefixes).
        let entries = |each: u64| {
            memory_limit.map_or(DEFAULT_METADATA_ENTRIES, |limit| {
                usize::try_from(limit / 16 / each)
                    .unwrap_or(usize::MAX)
                    .clamp(MIN_METADATA_ENTRIES, DEFAULT_METADATA_ENTRIES)
            })
        };
        self.metadata_entries
            .get_or_insert_with(|| entries(METADATA_ENTRY_BYTES));
        self.listing_entries
            .get_or_insert_with(|| entries(2 * LISTED_OBJECT_BYTES));
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_requests: None,
            inflight_memory: None,
            prefetch_memory: None,
            admission_wait: HumanDuration(Duration::from_secs(1)),
            max_header_bytes: ByteSize::kib(16),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(120)),
            upstream_timeout: HumanDuration(Duration::from_secs(30)),
            metadata_entries: None,
            listing_entries: None,
            removed_dataset_grace: HumanDuration(Duration::from_secs(300)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_bounds_are_sized_from_the_memory_limit_unless_given() {
        let mut unlimited = Limits::default();
        unlimited.size_from(2, None);
        assert_eq!(unlimited.metadata_capacity(), DEFAULT_METADATA_ENTRIES);
        assert_eq!(unlimited.listing_capacity(), DEFAULT_METADATA_ENTRIES);

        // A sixteenth of 4 GiB (256 MiB) each.
        let limit: u64 = 4 << 30;
        let mut sized = Limits::default();
        sized.size_from(2, Some(limit));
        assert_eq!(sized.metadata_capacity() as u64, limit / 16 / 700);
        assert_eq!(sized.listing_capacity() as u64, limit / 16 / 320);

        let mut small = Limits::default();
        small.size_from(1, Some(64 << 20));
        assert_eq!(small.metadata_capacity(), MIN_METADATA_ENTRIES);

        let mut given = Limits {
            metadata_entries: Some(5),
            ..Limits::default()
        };
        given.size_from(2, Some(limit));
        assert_eq!(given.metadata_capacity(), 5, "a configured value stands");
        let mut huge = Limits::default();
        huge.size_from(2, Some(1 << 40));
        assert_eq!(huge.metadata_capacity(), DEFAULT_METADATA_ENTRIES);
    }
}
