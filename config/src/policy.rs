//! Data set policies: what a data set is, where it lives and how it is cached.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::identity::SpiffePattern;
use crate::load::ConfigError;
use crate::origin::OriginSpec;
use crate::pool::PoolSpec;
use crate::proxy::Role;
use crate::tenancy::TenantSpec;
use crate::units::{ByteSize, MetadataTtl};

/// Default chunk size: the unit of caching and of fetches from upstream.
pub const DEFAULT_CHUNK_SIZE: ByteSize = ByteSize::mib(4);
/// Smallest chunk size allowed: below this, per-chunk overhead dominates.
pub const MIN_CHUNK_SIZE: ByteSize = ByteSize::kib(64);
/// Largest chunk size allowed: one chunk is held in memory whole.
pub const MAX_CHUNK_SIZE: ByteSize = ByteSize::mib(256);
/// Default read-ahead depth, in chunks.
pub const DEFAULT_READ_AHEAD: u32 = 4;
/// Largest read-ahead depth allowed.
pub const MAX_READ_AHEAD: u32 = 64;
/// Default size of each role's hot cache for a data set.
pub const DEFAULT_CACHE_SIZE: ByteSize = ByteSize::gib(1);

/// One data set: the bucket the app reads, its origin, and its caching policy.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawDatasetPolicy")]
pub struct DatasetPolicy {
    /// The data set's name (used in metrics and logs).
    pub name: String,
    /// The bucket name the training program uses for it.
    pub bucket: String,
    /// Where its objects live (required on workers; a sidecar needs it only
    /// to read the origin when its whole pool is down, see `on_pool_down`).
    pub origin: Option<OriginSpec>,
    /// The worker pool a sidecar reads misses from (default: the only pool).
    pub pool: Option<String>,
    /// What a sidecar does when every worker of its pool is down.
    pub on_pool_down: PoolDownPolicy,
    /// Identities a worker serves this data set to (exact SPIFFE IDs or
    /// patterns with `*` segments); empty means any workload of the trust domain.
    pub allow: Vec<SpiffePattern>,
    /// The namespace that owns this data set: a worker serves it only to
    /// identities of that namespace (and of them, only those `allow` names).
    /// The control plane sets it on a namespace's own data sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Settings for an `s3://` origin.
    #[serde(skip_serializing_if = "S3Options::is_unset")]
    pub s3: S3Options,
    /// Size of the aligned chunks objects are cached in; a smaller object is one chunk.
    pub chunk_size: ByteSize,
    /// How long object metadata and listings are trusted before re-validation.
    pub metadata_ttl: MetadataTtl,
    /// How many chunks ahead of a sequential reader are fetched in advance.
    pub read_ahead: u32,
    /// On the first metadata miss, list the whole data set in the background,
    /// so later objects need no HEAD round trip (one LIST instead of N HEADs).
    pub warm_metadata: bool,
    /// Whether workers load the data set as soon as the policy reaches them.
    pub warm: WarmPolicy,
    /// Bounds on the origin while they do.
    pub warm_limits: WarmLimits,
    /// Hot-cache settings per role.
    pub cache: RoleCaches,
}

impl DatasetPolicy {
    /// The pool among `pools` a sidecar reads this data set from: the one it
    /// names, or the only one; else why not.
    pub fn pool_in<'a>(&self, pools: &'a [PoolSpec]) -> Result<&'a PoolSpec, String> {
        match &self.pool {
            Some(name) => pools.iter().find(|p| &p.name == name).ok_or_else(|| {
                let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                format!(
                    "data set '{}' names pool '{name}', which is not defined (pools: {known:?})",
                    self.name
                )
            }),
            None => match pools {
                [only] => Ok(only),
                [] => Err(format!(
                    "data set '{}' has no pool to read from: define one under `pools:`",
                    self.name
                )),
                _ => Err(format!(
                    "data set '{}' must name its pool: there are {} pools",
                    self.name,
                    pools.len()
                )),
            },
        }
    }
}

/// What a sidecar does when no worker of its pool can serve a chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolDownPolicy {
    /// Fail the read with a 503 that names the pool and why each worker failed.
    #[default]
    Fail,
    /// Read the origin directly (the sidecar then needs the origin's credentials).
    Origin,
}

impl PoolDownPolicy {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Origin => "origin",
        }
    }
}

impl std::str::FromStr for PoolDownPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(Self::Fail),
            "origin" => Ok(Self::Origin),
            other => Err(format!("'{other}' is not allowed: use fail or origin")),
        }
    }
}

/// When workers load a data set into their caches unasked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarmPolicy {
    /// Only when `ferryctl warm` asks.
    #[default]
    Never,
    /// As soon as the policy (and the pool's membership) reaches a worker,
    /// and again when the membership changes: each worker loads the chunks
    /// it owns, skipping those it holds.
    OnStart,
}

/// Bounds on the origin while a worker warms a data set on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmLimits {
    /// Origin fetches at once, per worker.
    pub concurrency: usize,
    /// Origin bytes per second, per worker (none: unbounded).
    pub bytes_per_second: Option<ByteSize>,
}

impl Default for WarmLimits {
    fn default() -> Self {
        Self {
            concurrency: 8,
            bytes_per_second: None,
        }
    }
}

/// Settings for an S3-compatible origin. Credentials come only from the standard
/// AWS environment variables, never from a policy file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible store; `AWS_ENDPOINT_URL` when absent.
    pub endpoint: Option<String>,
    /// Region; `AWS_REGION` when absent.
    pub region: Option<String>,
    /// Send unsigned requests (public buckets).
    pub anonymous: bool,
}

impl S3Options {
    /// Whether nothing is set (then it is not written out).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

/// Hot-cache settings for each proxy role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleCaches {
    /// The sidecar's cache (memory).
    pub sidecar: CacheSpec,
    /// The worker's cache (memory).
    pub worker: CacheSpec,
}

/// Size and eviction policy of one cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSpec {
    /// Capacity in bytes of cached chunk data.
    pub size: ByteSize,
    /// What happens when the cache is full.
    pub policy: CachePolicy,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            size: DEFAULT_CACHE_SIZE,
            policy: CachePolicy::Pin,
        }
    }
}

/// What a full cache does with a new chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// Admit until full, then never evict: a shuffled epoch can't thrash it.
    #[default]
    Pin,
    /// Evict the least recently used chunk.
    Lru,
    /// S3-FIFO: scan-resistant, new chunks must prove themselves before staying.
    S3fifo,
}

impl CachePolicy {
    /// Every policy, in a stable order.
    pub const ALL: [CachePolicy; 3] = [CachePolicy::Pin, CachePolicy::Lru, CachePolicy::S3fifo];

    /// The name used in configuration and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pin => "pin",
            Self::Lru => "lru",
            Self::S3fifo => "s3fifo",
        }
    }
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown cache policy '{s}': expected pin, lru or s3fifo"))
    }
}

/// The policy as written, before defaults and cross-field checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatasetPolicy {
    #[serde(deserialize_with = "bucket_name")]
    name: String,
    #[serde(default, deserialize_with = "optional_bucket_name")]
    bucket: Option<String>,
    origin: Option<OriginSpec>,
    pool: Option<String>,
    #[serde(default)]
    on_pool_down: PoolDownPolicy,
    #[serde(default)]
    allow: Vec<SpiffePattern>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    s3: Option<S3Options>,
    #[serde(default = "default_chunk_size", deserialize_with = "chunk_size")]
    chunk_size: ByteSize,
    #[serde(default)]
    metadata_ttl: MetadataTtl,
    #[serde(default = "default_read_ahead", deserialize_with = "read_ahead")]
    read_ahead: u32,
    #[serde(default = "default_true")]
    warm_metadata: bool,
    #[serde(default)]
    warm: WarmPolicy,
    #[serde(default)]
    warm_limits: WarmLimits,
    #[serde(default)]
    cache: RoleCaches,
}

fn default_chunk_size() -> ByteSize {
    DEFAULT_CHUNK_SIZE
}

fn default_read_ahead() -> u32 {
    DEFAULT_READ_AHEAD
}

fn default_true() -> bool {
    true
}

impl TryFrom<RawDatasetPolicy> for DatasetPolicy {
    type Error = String;
    fn try_from(raw: RawDatasetPolicy) -> Result<Self, String> {
        let policy = Self {
            bucket: raw.bucket.unwrap_or_else(|| raw.name.clone()),
            name: raw.name,
            origin: raw.origin,
            pool: raw.pool,
            on_pool_down: raw.on_pool_down,
            allow: raw.allow,
            namespace: raw.namespace,
            s3: raw.s3.unwrap_or_default(),
            chunk_size: raw.chunk_size,
            metadata_ttl: raw.metadata_ttl,
            read_ahead: raw.read_ahead,
            warm_metadata: raw.warm_metadata,
            warm: raw.warm,
            warm_limits: raw.warm_limits,
            cache: raw.cache,
        };
        policy.validate().map_err(|(_, message)| message)?;
        Ok(policy)
    }
}

impl DatasetPolicy {
    /// Data set `name`, read as `bucket`, every other setting at its default.
    pub fn new(name: &str, bucket: &str) -> Self {
        Self {
            name: name.to_owned(),
            bucket: bucket.to_owned(),
            origin: None,
            pool: None,
            on_pool_down: PoolDownPolicy::Fail,
            allow: Vec::new(),
            namespace: None,
            s3: S3Options::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            metadata_ttl: MetadataTtl::default(),
            read_ahead: DEFAULT_READ_AHEAD,
            warm_metadata: true,
            warm: WarmPolicy::Never,
            warm_limits: WarmLimits::default(),
            cache: RoleCaches::default(),
        }
    }

    /// Checks every field's range and what fields say of each other (a file's
    /// parser checks the same, with the line): else the field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_bucket_name(&self.name).map_err(|m| ("name", m))?;
        check_bucket_name(&self.bucket).map_err(|m| ("bucket", m))?;
        check_chunk_size(self.chunk_size).map_err(|m| ("chunk_size", m))?;
        check_read_ahead(self.read_ahead).map_err(|m| ("read_ahead", m))?;
        if !(1..=256).contains(&self.warm_limits.concurrency) {
            return Err((
                "warm_limits",
                format!(
                    "concurrency {} is out of range: 1 to 256 origin fetches at once",
                    self.warm_limits.concurrency
                ),
            ));
        }
        if self.warm_limits.bytes_per_second == Some(ByteSize(0)) {
            return Err((
                "warm_limits",
                "bytes_per_second must be more than 0 (leave it out for no bound)".to_owned(),
            ));
        }
        if !self.s3.is_unset() && !matches!(self.origin, Some(OriginSpec::S3 { .. })) {
            let origin = self
                .origin
                .as_ref()
                .map_or("none".to_owned(), ToString::to_string);
            return Err((
                "s3",
                format!(
                    "data set '{}': s3 settings apply only to an s3:// origin, but the origin is {origin}",
                    self.name
                ),
            ));
        }
        if self.on_pool_down == PoolDownPolicy::Origin && self.origin.is_none() {
            return Err((
                "on_pool_down",
                format!(
                    "data set '{}': on_pool_down: origin needs an origin to fall back to",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// This data set's cache on a proxy of `role`.
    pub fn cache_for(&self, role: Role) -> &CacheSpec {
        match role {
            Role::Worker => &self.cache.worker,
            Role::Sidecar => &self.cache.sidecar,
        }
    }

    /// [`DatasetPolicy::cache_for`], to change.
    pub fn cache_for_mut(&mut self, role: Role) -> &mut CacheSpec {
        match role {
            Role::Worker => &mut self.cache.worker,
            Role::Sidecar => &mut self.cache.sidecar,
        }
    }
}

fn bucket_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    check_bucket_name(&name).map_err(de::Error::custom)?;
    Ok(name)
}

fn optional_bucket_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    bucket_name(deserializer).map(Some)
}

fn chunk_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
    let size = ByteSize::deserialize(deserializer)?;
    check_chunk_size(size).map_err(de::Error::custom)?;
    Ok(size)
}

fn read_ahead<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let depth = u32::deserialize(deserializer)?;
    check_read_ahead(depth).map_err(de::Error::custom)?;
    Ok(depth)
}

/// Checks a chunk size against the allowed range.
pub fn check_chunk_size(size: ByteSize) -> Result<(), String> {
    if size < MIN_CHUNK_SIZE || size > MAX_CHUNK_SIZE {
        return Err(format!(
            "chunk size {size} is out of range: allowed {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}"
        ));
    }
    Ok(())
}

/// Checks a read-ahead depth against the allowed range.
pub fn check_read_ahead(depth: u32) -> Result<(), String> {
    if depth > MAX_READ_AHEAD {
        return Err(format!(
            "read-ahead of {depth} chunks is too deep: allowed 0 to {MAX_READ_AHEAD}"
        ));
    }
    Ok(())
}

/// Checks S3 bucket naming rules, which also keep names safe in hosts, paths and metrics.
pub fn check_bucket_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let valid_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if (3..=63).contains(&name.len()) && valid_chars && valid_ends && !name.contains("..") {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid bucket name: use 3 to 63 lowercase letters, digits, \
             '-' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// Checks a Kubernetes namespace name (an RFC 1123 label).
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a namespace name: use 1 to 63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// A list of data set policies whose names and buckets are unique.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Datasets(pub Vec<DatasetPolicy>);

impl<'de> Deserialize<'de> for Datasets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniqueDatasets;
        impl<'de> Visitor<'de> for UniqueDatasets {
            type Value = Datasets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of data set policies")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Datasets, A::Error> {
                // Names and buckets seen so far, with the line each was defined on.
                let mut names: HashMap<String, u64> = HashMap::new();
                let mut buckets: HashMap<String, u64> = HashMap::new();
                let mut list = Vec::new();
                while let Some(spanned) = seq.next_element::<Spanned<DatasetPolicy>>()? {
                    let line = spanned.referenced.line();
                    let policy = spanned.value;
                    if let Some(first) = names.insert(policy.name.clone(), line) {
                        return Err(de::Error::custom(format!(
                            "data set on line {line} reuses the name '{}' of the data set on \
                             line {first}: names must be unique",
                            policy.name
                        )));
                    }
                    if let Some(first) = buckets.insert(policy.bucket.clone(), line) {
                        return Err(de::Error::custom(format!(
                            "data set on line {line} reuses bucket '{}' of the data set on \
                             line {first}: buckets must be unique",
                            policy.bucket
                        )));
                    }
                    list.push(policy);
                }
                Ok(Datasets(list))
            }
        }
        deserializer.deserialize_seq(UniqueDatasets)
    }
}

impl std::ops::Deref for Datasets {
    type Target = [DatasetPolicy];
    fn deref(&self) -> &[DatasetPolicy] {
        &self.0
    }
}

/// A policy file: the data sets and worker pools it defines (a file of the
/// control plane's `--config-dir`, or a ConfigMap's `policy.yaml`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// The data sets.
    #[serde(default)]
    pub datasets: Datasets,
    /// Worker pools, by name.
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
    /// The mesh admin's table of what each namespace's own policies may
    /// use (only in the mesh-wide policies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantSpec>,
}

impl PolicyFile {
    /// Checks what spans entries: pools are named once, and every data set
    /// has the origin its workers read. `file` names the source in errors.
    pub fn check(&self, file: &str) -> Result<(), ConfigError> {
        let error = |field: String, message: String| ConfigError::in_file(file, field, message);
        crate::pool::check_unique_names(&self.pools)
            .map_err(|(field, message)| error(field, message))?;
        for (i, tenant) in self.tenants.iter().enumerate() {
            if let Err(message) = check_namespace_name(&tenant.namespace) {
                return Err(error(format!("tenants[{i}].namespace"), message));
            }
            if self.tenants[..i]
                .iter()
                .any(|t| t.namespace == tenant.namespace)
            {
                return Err(error(
                    format!("tenants[{i}].namespace"),
                    format!("namespace '{}' is listed twice", tenant.namespace),
                ));
            }
        }
        for (i, dataset) in self.datasets.iter().enumerate() {
            if let Some(namespace) = &dataset.namespace
                && let Err(message) = check_namespace_name(namespace)
            {
                return Err(error(format!("datasets[{i}].namespace"), message));
            }
            if dataset.origin.is_none() {
                return Err(error(
                    format!("datasets[{i}].origin"),
                    format!(
                        "data set '{}' has no origin: the workers read from one",
                        dataset.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
