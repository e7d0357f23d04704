//! The data sets a proxy serves, each with its upstream (the origin on a
//! worker, the worker pool on a sidecar), its cache tiers and its metrics.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use ferry_config::{
    CachePolicy, DatasetPolicy, PoolDownPolicy, PoolSpec, ProxyConfig, Role, WarmOrder, WarmPolicy,
};

use crate::cache::disk::persistent_seed;
use crate::cache::{ChunkCache, DiskCounters, DiskTier};
use crate::chunk::{ChunkRead, ChunkStore, ChunkStoreParts, FetchBudget, PlannedBudget, ReadAhead};
use crate::metadata::list::{self, ListOutcome, ListRequest, ListSource};
use crate::metadata::{MetadataCache, MetadataSettings, ObjectInfo};
use crate::origin::{self, OriginError};
use crate::outbound::PoolUpstream;
use crate::outbound::balance::{Pool, PoolTls};
use crate::outbound::connection::ConnectionSettings;
use crate::prefetch::order::{BadOrder, KeySource, OrderSpec};
use crate::prefetch::{NewKeys, PlanParts, PlanStatus, Prefetcher, Turn};
use crate::telemetry::{DatasetMetrics, Direction, TrafficMetrics};
use crate::tls::TlsState;
use crate::upstream::Upstream;
use crate::warm::{BadWarmUp, Peers, WarmMember, WarmParts, WarmRequest, WarmStatus, Warmer};

/// One read's bytes, and its turn to be sent when it is a sample of a
/// posted order (held until the response has gone).
pub struct DatasetRead {
    /// The bytes, from the chunk layer.
    pub chunks: ChunkRead,
    /// Given back when dropped: the next sample of the order may go.
    pub turn: Option<Turn>,
}

/// Read-ahead streams whose chunks may wait in staging at once.
const STAGED_STREAMS: u64 = 8;

/// One data set, ready to serve.
pub struct Dataset {
    /// Its policy.
    pub policy: DatasetPolicy,
    /// Where misses go: the origin (worker) or the pool (sidecar).
    pub upstream: Upstream,
    /// Object metadata and listings.
    pub metadata: Arc<MetadataCache>,
    /// Chunks.
    pub chunks: Arc<ChunkStore>,
    /// Metrics.
    pub metrics: Arc<DatasetMetrics>,
    /// Fetches ahead in a posted read order.
    pub prefetch: Arc<Prefetcher>,
    /// Loads this worker's share of the data set before readers ask.
    pub warm: Arc<Warmer>,
    /// Bytes the tiers can hold: the disk tier's, else the memory cache's.
    capacity: u64,
    /// How a worker reaches the rest of its pool (a warm-up's shared listing).
    peers: Option<Peers>,
}

/// Why an order could not be started.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The order itself is wrong.
    #[error(transparent)]
    Bad(#[from] BadOrder),
    /// It reuses a key list, and there is none.
    #[error(
        "this order reuses the previous order's keys, and there is none: send 'keys' or 'prefix'"
    )]
    NoKeys,
    /// Listing its prefix failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// Building it failed (its task ended without an answer).
    #[error("the order could not be built; post it again")]
    Lost,
}

/// Budgets a data set's chunks charge, shared by every data set of a proxy.
#[derive(Clone)]
pub struct Budgets {
    /// Chunk bytes being fetched.
    pub fetch: Arc<FetchBudget>,
    /// Chunk bytes fetched ahead for posted orders.
    pub planned: Arc<PlannedBudget>,
}

/// Where a data set keeps chunks on disk, and with which key seed.
pub struct DiskPlacement {
    /// The tier.
    pub tier: Arc<DiskTier>,
    /// Fingerprint seed kept beside it.
    pub seed: u64,
}

impl Dataset {
    /// Builds a data set for a proxy in `role`, reading misses from `upstream`.
    pub fn new(
        policy: &DatasetPolicy,
        role: Role,
        config: &ProxyConfig,
        upstream: Upstream,
        budgets: Budgets,
        disk: Option<DiskPlacement>,
        metrics: Arc<DatasetMetrics>,
    ) -> Self {
        let cache_spec = *policy.cache_for(role);
        metrics.memory.capacity.set(cache_spec.size.bytes() as f64);
        let timeout = config.limits.upstream_timeout.0;
        let chunk_size = policy.chunk_size.bytes();
        let staging_bytes = (u64::from(policy.read_ahead) * chunk_size * STAGED_STREAMS)
            .min(config.limits.inflight_bytes());
        // The chunk size is part of every fingerprint: chunk 3 of an object
        // at 4 MiB is not chunk 3 at 8 MiB, on disk or anywhere.
        let capacity = disk
            .as_ref()
            .map_or(cache_spec.size.bytes(), |d| d.tier.capacity());
        let seed = disk.as_ref().map_or_else(random_seed, |d| d.seed);
        let seed = xxhash_rust::xxh3::xxh3_64_with_seed(&chunk_size.to_le_bytes(), seed);
        let chunks = Arc::new(ChunkStore::new(ChunkStoreParts {
            cache: ChunkCache::new(cache_spec, metrics.memory.cache_counters()),
            disk: disk.map(|d| d.tier),
            upstream: upstream.clone(),
            budget: budgets.fetch,
            staging_bytes,
            planned_budget: budgets.planned,
            chunk_size,
            read_ahead: policy.read_ahead,
            timeout,
            metrics: metrics.clone(),
        }));
        let metadata = Arc::new(MetadataCache::new(
            upstream.clone(),
            MetadataSettings {
                ttl: policy.metadata_ttl,
                object_capacity: config.limits.metadata_capacity(),
                listing_capacity: config.limits.listing_capacity(),
                timeout,
                seed,
                warm_listing: policy.warm_metadata,
            },
            metrics.clone(),
        ));
        Self {
            policy: policy.clone(),
            upstream,
            metadata,
            chunks,
            metrics,
            prefetch: Arc::default(),
            warm: Arc::default(),
            capacity,
            peers: None,
        }
    }

    /// Starts warming this data set (see [`crate::warm`]).
    pub fn start_warm(&self, request: WarmRequest) -> Result<WarmStatus, BadWarmUp> {
        self.warm.start(self.warm_parts(), request)
    }

    /// Warms this data set as the configuration asks, when `me` is a
    /// member of its pool among `pools`: the control plane's `order` if
    /// there is one (each order once), else its policy's `warm: on_start`
    /// (again when the pool's membership changes; chunks held are skipped).
    pub fn warm_as_configured(&self, pools: &[PoolSpec], me: &str, order: Option<&WarmOrder>) {
        if order.is_none() && self.policy.warm != WarmPolicy::OnStart {
            return;
        }
        let pool = match self.policy.pool_in(pools) {
            Ok(pool) => pool,
            Err(why) => {
                tracing::debug!(dataset = %self.policy.name, %why, "a warm-up waits for the data set's pool");
                return;
            }
        };
        let Some(mine) = pool.members.iter().find(|m| m.address == me) else {
            tracing::debug!(dataset = %self.policy.name, pool = %pool.name, me, "not warming: this worker is not (yet) a member of the pool");
            return;
        };
        let members: Vec<WarmMember> = pool
            .members
            .iter()
            .map(|m| WarmMember {
                address: m.address.clone(),
                weight: m.weight,
            })
            .collect();
        let request = match order {
            Some(order) => {
                // The order bounds the whole pool: this worker's share by weight.
                let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
                WarmRequest {
                    prefix: order.prefix.clone(),
                    members,
                    member: me.to_owned(),
                    concurrency: order.concurrency,
                    bytes_per_second: order.bytes_per_second.map(|rate| {
                        (rate * u64::from(mine.weight))
                            .div_ceil(total.max(1))
                            .max(1)
                    }),
                    order: Some(order.id),
                }
            }
            None => WarmRequest {
                prefix: String::new(),
                members,
                member: me.to_owned(),
                concurrency: self.policy.warm_limits.concurrency,
                bytes_per_second: self.policy.warm_limits.bytes_per_second.map(|b| b.bytes()),
                order: None,
            },
        };
        if let Err(err) = self.warm.start_as_configured(self.warm_parts(), request) {
            tracing::warn!(dataset = %self.policy.name, %err, "a configured warm-up could not start");
        }
    }

    fn warm_parts(&self) -> WarmParts {
        WarmParts {
            dataset: self.policy.name.clone(),
            chunks: Arc::clone(&self.chunks),
            metadata: Arc::clone(&self.metadata),
            metrics: Arc::clone(&self.metrics),
            capacity: self.capacity,
            bucket: self.policy.bucket.clone(),
            peers: self.peers.clone(),
        }
    }

    /// The bytes of `range` (non-empty) of `object`, from the chunk layer
    /// (`ahead`: whether a sequential reader gets read-ahead). An object
    /// that changed at the origin is forgotten here, so the next request
    /// reads its new version. A sample of a posted order, in hand whole,
    /// comes with its turn to be sent.
    pub async fn read(
        &self,
        object: &Arc<ObjectInfo>,
        range: std::ops::Range<u64>,
        ahead: ReadAhead,
    ) -> Result<DatasetRead, OriginError> {
        let position = self.prefetch.observe(&object.meta.key);
        let mut read = self
            .chunks
            .read(object, range, ahead)
            .await
            .inspect_err(|e| self.forget_if_changed(e))?;
        let mut turn = None;
        if let Some(rest) = read.rest.take() {
            let metadata = Arc::clone(&self.metadata);
            read.rest = Some(Box::pin(futures::StreamExt::inspect(rest, move |piece| {
                if let Err(OriginError::Changed { key }) = piece {
                    metadata.invalidate(key);
                }
            })));
        } else if let Some(position) = position {
            turn = self.prefetch.turn(position).await;
        }
        Ok(DatasetRead { chunks: read, turn })
    }

    /// One page of the listing `request` describes: from the cached listing
    /// of the data set, or the listing in progress, else from the upstream's pages.
    pub async fn list(&self, request: &ListRequest<'_>) -> Result<ListOutcome, OriginError> {
        list::list(&ListSource::Metadata(Arc::clone(&self.metadata)), request).await
    }

    /// Starts fetching ahead in the order `spec` describes, replacing the
    /// current order.
    pub async fn post_order(&self, spec: OrderSpec) -> Result<PlanStatus, OrderError> {
        let keys = match spec.keys {
            KeySource::List(keys) => NewKeys::List(keys.into_iter().map(Arc::from).collect()),
            KeySource::Prefix(prefix) => NewKeys::List(self.keys_under(&prefix).await?),
            KeySource::Previous => NewKeys::Reused(self.prefetch.keys().ok_or(OrderError::NoKeys)?),
        };
        // A million-sample order takes a while to index and shuffle: off
        // the runtime's threads, which are serving reads.
        let prefetch = Arc::clone(&self.prefetch);
        let permutation = spec.permutation;
        let prepared = tokio::task::spawn_blocking(move || {
            let order = permutation.apply(keys.len())?;
            Ok::<_, BadOrder>(prefetch.prepare(keys.into_keys(), order))
        })
        .await
        .map_err(|_| OrderError::Lost)??;
        let parts = PlanParts {
            metadata: Arc::clone(&self.metadata),
            chunks: Arc::clone(&self.chunks),
            metrics: Arc::clone(&self.metrics),
        };
        Ok(self.prefetch.start(prepared, parts))
    }

    /// Every key under `prefix`, in listing order.
    async fn keys_under(&self, prefix: &str) -> Result<Vec<Arc<str>>, OrderError> {
        let mut keys: Vec<Arc<str>> = Vec::new();
        let mut after = String::new();
        loop {
            let page = self
                .list(&ListRequest {
                    prefix,
                    delimiter: None,
                    max_keys: 1000,
                    after: &after,
                })
                .await?;
            keys.extend(page.objects.iter().map(|o| Arc::from(o.key.as_str())));
            if keys.len() > crate::prefetch::order::MAX_ORDER_SAMPLES {
                return Err(BadOrder(format!(
                    "more than {} keys are under '{prefix}'",
                    crate::prefetch::order::MAX_ORDER_SAMPLES
                ))
                .into());
            }
            match (page.truncated, page.next_after, page.objects.last()) {
                (true, Some(next), _) => after = next,
                (true, None, Some(last)) => after.clone_from(&last.key),
                _ => break,
            }
        }
        if keys.is_empty() {
            return Err(BadOrder(format!("no keys are under '{prefix}'")).into());
        }
        Ok(keys)
    }

    /// Forgets the metadata of an object `err` says changed.
    pub fn forget_if_changed(&self, err: &OriginError) {
        if let OriginError::Changed { key } = err {
            self.metadata.invalidate(key);
        }
    }

    /// This data set under `policy`, which differs from its own only where
    /// [`same_data_path`] allows: same caches, same upstream.
    fn with_policy(&self, policy: &DatasetPolicy) -> Self {
        Self {
            policy: policy.clone(),
            upstream: self.upstream.clone(),
            metadata: self.metadata.clone(),
            chunks: self.chunks.clone(),
            metrics: self.metrics.clone(),
            prefetch: self.prefetch.clone(),
            warm: self.warm.clone(),
            capacity: self.capacity,
            peers: self.peers.clone(),
        }
    }
}

/// Whether two policies differ at most in what leaves a data set's caches
/// and upstream as they are: the `allow` list, the pool's name (`same_pool`
/// checks where it leads) and the warm-up settings.
fn same_data_path(a: &DatasetPolicy, b: &DatasetPolicy) -> bool {
    let mut a = a.clone();
    a.allow.clone_from(&b.allow);
    a.pool.clone_from(&b.pool);
    a.warm = b.warm;
    a.warm_limits = b.warm_limits;
    a == *b
}

/// Whether `old` reads from the pool `policy` now resolves to (always true
/// on a worker, whose upstream is the origin in the policy itself).
fn same_pool(
    old: &Dataset,
    config: &ProxyConfig,
    policy: &DatasetPolicy,
    pools: &HashMap<&str, Arc<Pool>>,
) -> bool {
    if config.role == Role::Worker {
        return true;
    }
    let Ok(spec) = policy.pool_in(&config.pools) else {
        return false;
    };
    match (pools.get(spec.name.as_str()), old.upstream.pool()) {
        (Some(now), Some(before)) => Arc::ptr_eq(now, before),
        _ => false,
    }
}

/// A per-process secret for chunk fingerprints, so nobody can craft two
/// objects whose chunks collide in the cache.
fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64)
}

/// A removed data set, kept (not served) until `until`.
#[derive(Clone)]
struct Retired {
    dataset: Arc<Dataset>,
    until: Instant,
}

/// The data sets by bucket, and the pools they read from.
pub struct Datasets {
    by_bucket: HashMap<String, Arc<Dataset>>,
    ordered: Vec<Arc<Dataset>>,
    retired: Vec<Retired>,
    pools: Vec<Arc<Pool>>,
    budgets: Budgets,
    unknown_outbound: TrafficMetrics,
    unknown_inbound: TrafficMetrics,
}

impl Datasets {
    /// Builds every data set of `config` with the upstream its role reads from.
    /// With `tls`, a sidecar reaches its workers over mutual TLS.
    pub fn from_config(config: &ProxyConfig, tls: Option<&Arc<TlsState>>) -> anyhow::Result<Self> {
        Self::build(config, tls, None)
    }

    /// The data sets of a changed `config`, keeping from `self` what did not
    /// change: a data set whose policy is the same (or differs in its
    /// `allow` list only) keeps its caches, and a pool whose settings are the
    /// same keeps its workers' connections and health, taking new members in.
    pub fn reconcile(
        &self,
        config: &ProxyConfig,
        tls: Option<&Arc<TlsState>>,
    ) -> anyhow::Result<Self> {
        Self::build(config, tls, Some(self))
    }

    fn build(
        config: &ProxyConfig,
        tls: Option<&Arc<TlsState>>,
        previous: Option<&Datasets>,
    ) -> anyhow::Result<Self> {
        config.validate("configuration")?;
        let budgets = match previous {
            // One bound on fetch memory for the process, across changes.
            Some(previous) => previous.budgets.clone(),
            None => Budgets {
                fetch: FetchBudget::new(config.limits.inflight_bytes()),
                planned: PlannedBudget::new(config.limits.prefetch_bytes()),
            },
        };
        let origins = origin::OriginSettings {
            timeout: config.limits.upstream_timeout.0,
            control_plane_host: config
                .identity
                .control_plane
                .as_deref()
                .and_then(|url| url.parse::<http::Uri>().ok())
                .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_owned())),
        };
        let now = Instant::now();
        let grace = config.limits.removed_dataset_grace.0;
        // Data sets removed a short while ago, kept so a flap of the
        // control plane's configuration does not empty their caches.
        let mut retired: Vec<Retired> = previous
            .map(|prev| {
                prev.retired
                    .iter()
                    .filter(|r| r.until > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let pools: HashMap<&str, Arc<Pool>> = match config.role {
            Role::Sidecar => config
                .pools
                .iter()
                .map(|p| {
                    let kept = previous
                        .and_then(|prev| prev.pools.iter().find(|old| old.can_become(p)))
                        .cloned();
                    let pool = match kept {
                        Some(pool) => {
                            pool.update(&p.members);
                            pool
                        }
                        None => {
                            let pool_tls = tls.map(|state| PoolTls {
                                state: Arc::clone(state),
                                trust_domain: config.identity.trust_domain.clone(),
                                expected: p.identity.clone(),
                            });
                            Pool::new(p, pool_tls)
                        }
                    };
                    (p.name.as_str(), pool)
                })
                .collect(),
            Role::Worker => HashMap::new(),
        };
        let mut built = Vec::new();
        for policy in config.datasets.iter() {
            let name = &policy.name;
            let old = previous
                .and_then(|prev| prev.ordered.iter().find(|d| &d.policy.name == name))
                .or_else(|| {
                    retired
                        .iter()
                        .map(|r| &r.dataset)
                        .find(|d| &d.policy.name == name)
                });
            if let Some(old) = old
                && same_data_path(&old.policy, policy)
                && same_pool(old, config, policy, &pools)
            {
                built.push(if old.policy == *policy {
                    Arc::clone(old)
                } else {
                    Arc::new(old.with_policy(policy))
                });
                continue;
            }
            let upstream = match config.role {
                Role::Worker => Upstream::Origin(
                    origin::from_policy(policy, &origins)
                        .with_context(|| format!("data set '{name}'"))?,
                ),
                Role::Sidecar => {
                    let spec = policy.pool_in(&config.pools).map_err(anyhow::Error::msg)?;
                    let pool = pools.get(spec.name.as_str()).cloned().with_context(|| {
                        format!("data set '{name}': pool '{}' is missing", spec.name)
                    })?;
                    let fallback = match policy.on_pool_down {
                        PoolDownPolicy::Origin => {
                            Some(origin::from_policy(policy, &origins).with_context(|| {
                                format!("data set '{name}': the fallback origin")
                            })?)
                        }
                        PoolDownPolicy::Fail => None,
                    };
                    Upstream::Pool(Arc::new(PoolUpstream::new(pool, &policy.bucket, fallback)))
                }
            };
            let metrics = Arc::new(DatasetMetrics::new(name));
            // A changed data set on a worker keeps its disk tier: the tier
            // owns the directory, and the chunk size is in the fingerprints.
            let old_disk = old.and_then(|old| {
                let tier = old.chunks.disk()?.clone();
                let seed = persistent_seed(&config.disk_cache.as_ref()?.dir.join(name)).value;
                Some(DiskPlacement { tier, seed })
            });
            let disk = match &config.disk_cache {
                _ if old_disk.is_some() => old_disk,
                Some(spec) if config.role == Role::Worker => {
                    // Each data set gets its own directory and an equal share.
                    let dir = spec.dir.join(name);
                    let seed = persistent_seed(&dir);
                    if seed.chunks_orphaned && dir.join("chunks").exists() {
                        // Keyed with a seed that is gone: never found again.
                        tracing::warn!(dir = %dir.display(), "disk cache: dropping chunks keyed with a lost seed");
                        let _ = std::fs::remove_dir_all(dir.join("chunks"));
                    }
                    let share = spec.size.bytes() / config.datasets.len().max(1) as u64;
                    let evict = policy.cache.worker.policy != CachePolicy::Pin;
                    metrics.disk.capacity.set(share as f64);
                    let tier = DiskTier::open(
                        &dir.join("chunks"),
                        share,
                        evict,
                        DiskCounters {
                            evictions: metrics.disk.evictions.clone(),
                            rejections: metrics.disk.rejections.clone(),
                            checksum_failures: metrics.disk.checksum_failures.clone(),
                            bytes: metrics.disk.bytes.clone(),
                        },
                    )
                    .with_context(|| format!("data set '{name}': disk cache"))?;
                    Some(DiskPlacement {
                        tier: Arc::new(tier),
                        seed: seed.value,
                    })
                }
                _ => None,
            };
            let mut dataset = Dataset::new(
                policy,
                config.role,
                config,
                upstream,
                budgets.clone(),
                disk,
                metrics,
            );
            if config.role == Role::Worker {
                // The pool's own connection settings (timeouts, windows), as
                // its sidecars reach these workers with.
                let balance = dataset
                    .policy
                    .pool_in(&config.pools)
                    .map(|pool| pool.balance.clone())
                    .unwrap_or_default();
                dataset.peers = Some(Peers {
                    tls: tls.cloned(),
                    settings: ConnectionSettings::from(&balance),
                    timeout: config.limits.upstream_timeout.0,
                });
            }
            built.push(Arc::new(dataset));
        }
        let mut pools: Vec<Arc<Pool>> = pools.into_values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        retired.retain(|r| !built.iter().any(|d| d.policy.name == r.dataset.policy.name));
        if let Some(previous) = previous
            && !grace.is_zero()
        {
            for gone in previous
                .ordered
                .iter()
                .filter(|old| !built.iter().any(|d| d.policy.name == old.policy.name))
            {
                tracing::info!(dataset = %gone.policy.name, ?grace, "data set removed; its caches are kept for the grace period");
                retired.push(Retired {
                    dataset: Arc::clone(gone),
                    until: now + grace,
                });
            }
        }
        let mut datasets = Self::index(built, pools, budgets);
        datasets.retired = retired;
        Ok(datasets)
    }

    /// These data sets less the removed ones whose grace period is over;
    /// `None` when there is none to drop.
    pub fn without_expired(&self) -> Option<Self> {
        let now = Instant::now();
        if self.retired.iter().all(|r| r.until > now) {
            return None;
        }
        let mut datasets = Self::index(
            self.ordered.clone(),
            self.pools.clone(),
            self.budgets.clone(),
        );
        datasets.retired = self
            .retired
            .iter()
            .filter(|r| r.until > now)
            .cloned()
            .collect();
        Some(datasets)
    }

    /// Names of the removed data sets whose caches are still kept.
    pub fn retired(&self) -> impl Iterator<Item = &str> {
        self.retired.iter().map(|r| r.dataset.policy.name.as_str())
    }

    /// Indexes built data sets.
    pub fn new(datasets: Vec<Dataset>, pools: Vec<Arc<Pool>>) -> Self {
        let budgets = Budgets {
            fetch: FetchBudget::new(u64::MAX >> 1),
            planned: PlannedBudget::new(u64::MAX >> 1),
        };
        Self::index(datasets.into_iter().map(Arc::new).collect(), pools, budgets)
    }

    fn index(ordered: Vec<Arc<Dataset>>, pools: Vec<Arc<Pool>>, budgets: Budgets) -> Self {
        let by_bucket = ordered
            .iter()
            .map(|d| (d.policy.bucket.clone(), d.clone()))
            .collect();
        Self {
            by_bucket,
            ordered,
            retired: Vec::new(),
            pools,
            budgets,
            unknown_outbound: TrafficMetrics::new("unknown", Direction::Outbound),
            unknown_inbound: TrafficMetrics::new("unknown", Direction::Inbound),
        }
    }

    /// The data set served as `bucket`.
    pub fn get(&self, bucket: &str) -> Option<&Arc<Dataset>> {
        self.by_bucket.get(bucket)
    }

    /// Every data set, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Dataset>> {
        self.ordered.iter()
    }

    /// The pools sidecar data sets read from.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Traffic metrics for requests that match no data set.
    pub fn unknown(&self, direction: Direction) -> &TrafficMetrics {
        match direction {
            // The mount has no unknown data sets: only theirs are directories.
            Direction::Outbound | Direction::Mount => &self.unknown_outbound,
            Direction::Inbound => &self.unknown_inbound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::from_yaml;

    /// A worker with one data set whose policy ends in `extra`.
    fn worker(extra: &str) -> ProxyConfig {
        let yaml = format!(
            "role: worker\ndatasets:\n  - {{ name: set-a, bucket: a-bucket, \
             origin: \"synthetic://?count=100000&latency=20ms\"{extra} }}\n"
        );
        from_yaml(&yaml, "test.yaml").expect("config")
    }

    fn only(datasets: &Datasets) -> Arc<Dataset> {
        Arc::clone(datasets.get("a-bucket").expect("the data set"))
    }

    #[tokio::test]
    async fn changing_warm_up_settings_keeps_the_caches_and_other_changes_do_not() {
        let before = Datasets::from_config(&worker(""), None).expect("built");
        let warmed = before
            .reconcile(
                &worker(", warm: on_start, warm_limits: { concurrency: 2 }"),
                None,
            )
            .expect("reconciled");
        assert_eq!(only(&warmed).policy.warm, ferry_config::WarmPolicy::OnStart);
        assert!(
            Arc::ptr_eq(&only(&before).chunks, &only(&warmed).chunks),
            "same chunk store"
        );
        let rechunked = warmed
            .reconcile(&worker(", chunk_size: 2MiB"), None)
            .expect("reconciled");
        assert!(!Arc::ptr_eq(
            &only(&warmed).chunks,
            &only(&rechunked).chunks
        ));
    }

    #[tokio::test]
    async fn a_worker_reaches_its_pool_peers_with_the_pool_connection_settings() {
        let mut config = worker(", pool: workers");
        config.pools = from_yaml(
            "- { name: workers, members: [{ address: \"w:1\" }], balance: { connect_timeout: 7s } }\n",
            "pools.yaml",
        )
        .expect("pools");
        let datasets = Datasets::from_config(&config, None).expect("built");
        let peers = only(&datasets).peers.clone().expect("a worker has peers");
        assert_eq!(
            peers.settings.connect_timeout,
            std::time::Duration::from_secs(7)
        );
    }

    #[tokio::test]
    async fn a_data_set_dropped_for_good_stops_its_warm_up() {
        let datasets = Datasets::from_config(&worker(""), None).expect("built");
        let dataset = only(&datasets);
        let request = WarmRequest {
            prefix: String::new(),
            members: vec![WarmMember {
                address: "w:1".to_owned(),
                weight: 1,
            }],
            member: "w:1".to_owned(),
            concurrency: 2,
            bytes_per_second: None,
            order: None,
        };
        dataset.start_warm(request).expect("started");
        // 100,000 objects at 20 ms each, two at a time: it runs for minutes,
        // holding the data set's chunk store.
        let chunks = Arc::clone(&dataset.chunks);
        assert!(
            Arc::strong_count(&chunks) > 2,
            "the warm-up holds the store"
        );
        drop((dataset, datasets));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&chunks) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the warm-up still runs after its data set was dropped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
