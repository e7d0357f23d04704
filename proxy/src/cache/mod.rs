//! The hot chunk cache in memory, with one of three policies:
//! `pin` (admit until full, never evict), `lru` and `s3fifo` (foyer's).

pub mod disk;
mod pin;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use foyer::{Cache, CacheBuilder, Event, EventListener, LruConfig, S3FifoConfig};
use metrics::Counter;

use ferry_config::{CachePolicy, CacheSpec};

pub use disk::{DiskCounters, DiskTier};
pub use pin::PinCache;

/// Identifies one chunk of one version of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// Keyed hash of (key, ETag): distinct versions never share chunks.
    pub object: u128,
    /// Chunk number within the object.
    pub index: u32,
}

/// Counters a cache updates itself.
#[derive(Clone)]
pub struct CacheCounters {
    /// Chunks pushed out to make room.
    pub evictions: Counter,
    /// Chunks refused because the cache was full (pin) or too small for them.
    pub rejections: Counter,
}

/// A chunk cache with a policy chosen by configuration.
pub enum ChunkCache {
    /// Admit until full, then keep what is there.
    Pin(PinCache),
    /// LRU or S3-FIFO, evicting to admit.
    Evicting {
        /// The foyer cache.
        cache: Cache<ChunkKey, Bytes>,
        /// Largest chunk one shard can hold; bigger ones are refused.
        max_chunk: usize,
        /// Bytes currently held (kept by the eviction listener and inserts).
        used: Arc<AtomicU64>,
        /// Counters.
        counters: CacheCounters,
    },
    /// Size zero: caches nothing.
    Disabled(CacheCounters),
}

/// Shards for the evicting caches: enough to spread locks, few enough that
/// each shard still holds many chunks.
const EVICTING_SHARDS: usize = 8;

impl ChunkCache {
    /// A cache with `spec`'s size and policy.
    pub fn new(spec: CacheSpec, counters: CacheCounters) -> Self {
        let capacity = usize::try_from(spec.size.bytes()).unwrap_or(usize::MAX);
        if capacity == 0 {
            return Self::Disabled(counters);
        }
        if spec.policy == CachePolicy::Pin {
            return Self::Pin(PinCache::new(spec.size.bytes(), counters));
        }
        let used = Arc::new(AtomicU64::new(0));
        let builder = CacheBuilder::new(capacity)
            .with_shards(EVICTING_SHARDS)
            .with_weighter(|_key: &ChunkKey, value: &Bytes| value.len())
            .with_event_listener(Arc::new(LeaveListener {
                used: used.clone(),
                evictions: counters.evictions.clone(),
            }));
        let cache = match spec.policy {
            CachePolicy::Lru | CachePolicy::Pin => {
                builder.with_eviction_config(LruConfig::default()).build()
            }
            CachePolicy::S3fifo => builder
                .with_eviction_config(S3FifoConfig::default())
                .build(),
        };
        Self::Evicting {
            cache,
            max_chunk: capacity / EVICTING_SHARDS,
            used,
            counters,
        }
    }

    /// The chunk, if cached.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        match self {
            Self::Pin(pin) => pin.get(key),
            Self::Evicting { cache, .. } => cache.get(key).map(|entry| entry.value().clone()),
            Self::Disabled(_) => None,
        }
    }

    /// Whether the chunk is cached, without touching its recency.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        match self {
            Self::Pin(pin) => pin.get(key).is_some(),
            Self::Evicting { cache, .. } => cache.contains(key),
            Self::Disabled(_) => false,
        }
    }

    /// Offers a chunk; returns whether the cache kept it.
    pub fn insert(&self, key: ChunkKey, chunk: Bytes) -> bool {
        match self {
            Self::Pin(pin) => pin.insert(key, chunk),
            Self::Evicting {
                cache,
                max_chunk,
                used,
                counters,
            } => {
                if chunk.len() > *max_chunk {
                    counters.rejections.increment(1);
                    return false;
                }
                used.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                cache.insert(key, chunk);
                true
            }
            Self::Disabled(counters) => {
                counters.rejections.increment(1);
                false
            }
        }
    }

    /// Bytes of chunk data held.
    pub fn used_bytes(&self) -> u64 {
        match self {
            Self::Pin(pin) => pin.used_bytes(),
            Self::Evicting { used, .. } => used.load(Ordering::Relaxed),
            Self::Disabled(_) => 0,
        }
    }

    /// Number of chunks held.
    pub fn entries(&self) -> usize {
        match self {
            Self::Pin(pin) => pin.entries(),
            Self::Evicting { cache, .. } => cache.entries(),
            Self::Disabled(_) => 0,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &'static str {
        match self {
            Self::Pin(_) => CachePolicy::Pin.as_str(),
            Self::Evicting { cache, .. } => match cache {
                Cache::Lru(_) => CachePolicy::Lru.as_str(),
                _ => CachePolicy::S3fifo.as_str(),
            },
            Self::Disabled(_) => "disabled",
        }
    }
}

/// Keeps the byte count and eviction counter right as foyer drops entries.
struct LeaveListener {
    used: Arc<AtomicU64>,
    evictions: Counter,
}

impl EventListener for LeaveListener {
    type Key = ChunkKey;
    type Value = Bytes;

    fn on_leave(&self, reason: Event, _key: &ChunkKey, value: &Bytes) {
        self.used.fetch_sub(value.len() as u64, Ordering::Relaxed);
        if matches!(reason, Event::Evict) {
            self.evictions.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::ByteSize;

    fn counters() -> CacheCounters {
        CacheCounters {
            evictions: Counter::noop(),
            rejections: Counter::noop(),
        }
    }

    fn key(index: u32) -> ChunkKey {
        ChunkKey { object: 7, index }
    }

    #[test]
    fn evicting_caches_stay_within_their_size() {
        for policy in [CachePolicy::Lru, CachePolicy::S3fifo] {
            let cache = ChunkCache::new(
                CacheSpec {
                    size: ByteSize::kib(64),
                    policy,
                },
                counters(),
            );
            for i in 0..200 {
                assert!(cache.insert(key(i), Bytes::from(vec![0u8; 1024])));
            }
            assert!(
                cache.used_bytes() <= 64 * 1024,
                "{policy}: {}",
                cache.used_bytes()
            );
            assert!(cache.entries() <= 64, "{policy}");
            assert!(cache.get(&key(199)).is_some(), "{policy}: newest is kept");
        }
    }

    #[test]
    fn zero_size_caches_nothing() {
        let cache = ChunkCache::new(
            CacheSpec {
                size: ByteSize(0),
                policy: CachePolicy::Lru,
            },
            counters(),
        );
        assert!(!cache.insert(key(0), Bytes::from_static(b"x")));
        assert!(cache.get(&key(0)).is_none());
    }
}
