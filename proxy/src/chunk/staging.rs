//! Read-ahead chunks the cache would not admit (a full `pin` cache, say),
//! kept aside until their reader takes them. Bounded; oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::cache::ChunkKey;

#[derive(Default)]
struct Held {
    chunks: HashMap<ChunkKey, Bytes>,
    order: VecDeque<ChunkKey>,
    bytes: u64,
}

/// A bounded set of chunks, each taken at most once.
pub struct Staging {
    held: Mutex<Held>,
    capacity: u64,
}

impl Staging {
    /// Empty, holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            held: Mutex::new(Held::default()),
            capacity,
        }
    }

    /// Keeps `chunk` for its reader, dropping the oldest chunks to make room.
    pub fn put(&self, key: ChunkKey, chunk: Bytes) {
        let len = chunk.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.bytes + len > self.capacity {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some(dropped) = held.chunks.remove(&oldest) {
                held.bytes -= dropped.len() as u64;
            }
        }
        // Taken chunks leave their keys in `order`; drop those now and then so
        // `order` stays proportional to what is held.
        if held.order.len() > 2 * held.chunks.len() + 16 {
            let Held { chunks, order, .. } = &mut *held;
            order.retain(|k| chunks.contains_key(k));
        }
        if let Some(previous) = held.chunks.insert(key, chunk) {
            held.bytes -= previous.len() as u64;
        } else {
            held.order.push_back(key);
        }
        held.bytes += len;
    }

    /// Removes and returns the chunk, if held.
    pub fn take(&self, key: &ChunkKey) -> Option<Bytes> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.chunks.is_empty() {
            return None;
        }
        let chunk = held.chunks.remove(key)?;
        held.bytes -= chunk.len() as u64;
        // Its slot in `order` is skipped when reached (the map no longer has it).
        Some(chunk)
    }

    /// Whether the chunk is held.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.chunks.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_capacity_and_gives_each_once() {
        let staging = Staging::new(8);
        let key = |index| ChunkKey { object: 3, index };
        staging.put(key(0), Bytes::from_static(b"aaaa"));
        staging.put(key(1), Bytes::from_static(b"bbbb"));
        staging.put(key(2), Bytes::from_static(b"cccc"));
        assert!(!staging.contains(&key(0)), "oldest dropped");
        assert_eq!(staging.take(&key(1)).as_deref(), Some(&b"bbbb"[..]));
        assert!(staging.take(&key(1)).is_none(), "taken once");
        staging.put(key(3), Bytes::from_static(b"dddd"));
        assert!(staging.contains(&key(2)) && staging.contains(&key(3)));
    }

    #[test]
    fn taking_everything_keeps_bookkeeping_bounded() {
        let staging = Staging::new(1 << 20);
        for index in 0..10_000 {
            let key = ChunkKey { object: 1, index };
            staging.put(key, Bytes::from_static(b"x"));
            assert!(staging.take(&key).is_some());
        }
        let held = staging.held.lock().expect("lock");
        assert!(held.order.len() <= 17, "order has {}", held.order.len());
    }
}
