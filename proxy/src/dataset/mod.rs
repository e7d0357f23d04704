//! The data sets a proxy serves, each with its origin, caches and metrics.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use ferry_config::{DatasetPolicy, ProxyConfig, Role};

use crate::cache::ChunkCache;
use crate::chunk::{ChunkStore, ChunkStoreParts, FetchBudget, SequentialDetector};
use crate::metadata::{MetadataCache, MetadataSettings};
use crate::origin;
use crate::telemetry::DatasetMetrics;

/// Read-ahead streams whose chunks may wait in staging at once.
const STAGED_STREAMS: u64 = 8;

/// One data set, ready to serve.
pub struct Dataset {
    /// Its policy.
    pub policy: DatasetPolicy,
    /// Object metadata and listings.
    pub metadata: Arc<MetadataCache>,
    /// Chunks.
    pub chunks: Arc<ChunkStore>,
    /// Sequential-reader detection for read-ahead.
    pub sequential: SequentialDetector,
    /// Metrics.
    pub metrics: Arc<DatasetMetrics>,
}

impl Dataset {
    /// Builds a data set for a proxy in `role`, upstream of `origin`.
    pub fn new(
        policy: &DatasetPolicy,
        role: Role,
        config: &ProxyConfig,
        origin: Arc<dyn origin::Origin>,
        budget: Arc<FetchBudget>,
        direction: &'static str,
    ) -> Self {
        let metrics = Arc::new(DatasetMetrics::new(&policy.name, direction));
        let cache_spec = match role {
            Role::Worker => policy.cache.worker,
            Role::Sidecar => policy.cache.sidecar,
        };
        metrics.cache_capacity.set(cache_spec.size.bytes() as f64);
        let timeout = config.limits.upstream_timeout.0;
        let chunk_size = policy.chunk_size.bytes();
        let staging_bytes = (u64::from(policy.read_ahead) * chunk_size * STAGED_STREAMS)
            .min(config.limits.inflight_memory.bytes());
        let chunks = Arc::new(ChunkStore::new(ChunkStoreParts {
            cache: ChunkCache::new(cache_spec, metrics.cache_counters()),
            origin: origin.clone(),
            budget,
            staging_bytes,
            chunk_size,
            timeout,
            metrics: metrics.clone(),
        }));
        let metadata = Arc::new(MetadataCache::new(
            origin,
            MetadataSettings {
                ttl: policy.metadata_ttl,
                object_capacity: config.limits.metadata_entries,
                listing_capacity: config.limits.listing_entries,
                timeout,
                seed: fingerprint_seed(),
            },
            metrics.clone(),
        ));
        Self {
            policy: policy.clone(),
            metadata,
            chunks,
            sequential: SequentialDetector::default(),
            metrics,
        }
    }
}

/// A per-process secret for chunk fingerprints, so nobody can craft two
/// objects whose chunks collide in the cache.
fn fingerprint_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5EED_u64)
}

/// The data sets by bucket.
pub struct Datasets {
    by_bucket: HashMap<String, Arc<Dataset>>,
    ordered: Vec<Arc<Dataset>>,
    /// Metrics for requests that match no data set.
    pub unknown: Arc<DatasetMetrics>,
}

impl Datasets {
    /// Builds every data set of `config`, each from its own origin.
    pub fn from_config(config: &ProxyConfig, direction: &'static str) -> anyhow::Result<Self> {
        let budget = FetchBudget::new(config.limits.inflight_memory.bytes());
        let mut built = Vec::new();
        for policy in config.datasets.iter() {
            let origin = origin::from_policy(policy, config.limits.upstream_timeout.0)
                .map_err(|e| anyhow::anyhow!("data set '{}': {e:#}", policy.name))?;
            built.push(Dataset::new(
                policy,
                config.role,
                config,
                origin,
                budget.clone(),
                direction,
            ));
        }
        Ok(Self::new(built, direction))
    }

    /// Indexes built data sets.
    pub fn new(datasets: Vec<Dataset>, direction: &'static str) -> Self {
        let ordered: Vec<Arc<Dataset>> = datasets.into_iter().map(Arc::new).collect();
        let by_bucket = ordered
            .iter()
            .map(|d| (d.policy.bucket.clone(), d.clone()))
            .collect();
        Self {
            by_bucket,
            ordered,
            unknown: Arc::new(DatasetMetrics::new("unknown", direction)),
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
}
