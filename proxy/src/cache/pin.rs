//! `pin`: admit chunks until the cache is full, then never evict. Under
//! shuffled epochs every chunk is equally likely to be read next, so keeping
//! a fixed fraction C/N of them is optimal, while LRU keeps replacing chunks
//! just before they are needed again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;

use super::{CacheCounters, ChunkKey};

/// Lock shards: lookups on different chunks rarely contend.
const SHARDS: usize = 32;

/// Chunk keys are already uniformly random (a keyed 128-bit hash), so
/// hashing them again would only cost time: fold the bits instead.
#[derive(Default)]
pub struct ChunkKeyHasher(u64);

impl Hasher for ChunkKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(23) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 ^= (value as u64) ^ ((value >> 64) as u64);
    }
    fn write_u32(&mut self, value: u32) {
        self.0 = (self.0 ^ u64::from(value)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type ChunkMap = HashMap<ChunkKey, Bytes, BuildHasherDefault<ChunkKeyHasher>>;

/// A cache that fills once and then keeps its contents.
pub struct PinCache {
    shards: Box<[Mutex<ChunkMap>]>,
    capacity: u64,
    used: AtomicU64,
    entries: AtomicUsize,
    counters: CacheCounters,
}

impl PinCache {
    /// An empty cache holding up to `capacity` bytes.
    pub fn new(capacity: u64, counters: CacheCounters) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(ChunkMap::default()))
                .collect(),
            capacity,
            used: AtomicU64::new(0),
            entries: AtomicUsize::new(0),
            counters,
        }
    }

    fn shard(&self, key: &ChunkKey) -> &Mutex<ChunkMap> {
        // The object hash is already uniformly random; mixing in the index
        // spreads one object's chunks over shards.
        let spread = (key.object as usize) ^ (key.index as usize).wrapping_mul(0x9E37_79B9);
        &self.shards[spread % SHARDS]
    }

    /// The chunk, if held.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(key).cloned()
    }

    /// Keeps the chunk if it fits in what is left; returns whether it was kept.
    pub fn insert(&self, key: ChunkKey, chunk: Bytes) -> bool {
        let len = chunk.len() as u64;
        let reserved = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(len)
                    .filter(|&total| total <= self.capacity)
            })
            .is_ok();
        if !reserved {
            self.counters.rejections.increment(1);
            return false;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        match shard.insert(key, chunk) {
            // Same chunk offered twice (two fetches raced): keep one copy's bytes.
            Some(previous) => {
                self.used.fetch_sub(previous.len() as u64, Ordering::AcqRel);
            }
            None => {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Chunks held.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Counter;

    #[test]
    fn fills_then_keeps_what_it_has() {
        let cache = PinCache::new(
            10,
            CacheCounters {
                evictions: Counter::noop(),
                rejections: Counter::noop(),
            },
        );
        let key = |index| ChunkKey { object: 1, index };
        assert!(cache.insert(key(0), Bytes::from_static(b"abcd")));
        assert!(cache.insert(key(1), Bytes::from_static(b"efgh")));
        assert!(
            !cache.insert(key(2), Bytes::from_static(b"ijkl")),
            "would overflow"
        );
        assert!(
            cache.insert(key(3), Bytes::from_static(b"mn")),
            "exactly fills"
        );
        assert_eq!(cache.used_bytes(), 10);
        assert_eq!(cache.entries(), 3);
        assert_eq!(
            cache.get(&key(0)).as_deref(),
            Some(&b"abcd"[..]),
            "never evicted"
        );
        assert!(cache.get(&key(2)).is_none());
    }
}
