//! Chunks fetched ahead of readers for a posted read order, each held until
//! its reader takes it or the order has passed it. Unlike the hot cache, the
//! buffer never evicts a chunk that is still to be read: what a known order
//! needs soonest is what it keeps, and a chunk leaves as soon as it is read
//! (it is not needed again this epoch). Its bytes count against a budget
//! shared by every data set of the proxy, which the prefetcher checks before
//! it fetches more.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::cache::ChunkKey;

/// Bytes held by every data set's planned chunks, against one bound, and
/// bytes reserved for samples being fetched (whose size is known), so that
/// what arrives always has room.
pub struct PlannedBudget {
    used: AtomicU64,
    reserved: AtomicU64,
    capacity: u64,
}

impl PlannedBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            capacity,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes that may still be fetched ahead.
    pub fn room(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used())
            .saturating_sub(self.reserved.load(Ordering::Relaxed))
    }

    /// Reserves room for `bytes` about to be fetched, if there is room; the
    /// reservation is given back with [`Self::unreserve`] once they arrived
    /// (and are held, or were taken).
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let mut reserved = self.reserved.load(Ordering::Relaxed);
        loop {
            if self.used() + reserved + bytes > self.capacity {
                return false;
            }
            match self.reserved.compare_exchange_weak(
                reserved,
                reserved + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => reserved = now,
            }
        }
    }

    /// Gives back a reservation.
    pub fn unreserve(&self, bytes: u64) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Held {
    chunks: HashMap<ChunkKey, (Bytes, u64)>,
    by_position: BTreeMap<u64, Vec<ChunkKey>>,
    bytes: u64,
}

/// One data set's planned chunks.
pub struct Planned {
    held: Mutex<Held>,
    budget: Arc<PlannedBudget>,
}

impl Planned {
    /// Empty, charging `budget`.
    pub fn new(budget: Arc<PlannedBudget>) -> Self {
        Self {
            held: Mutex::new(Held::default()),
            budget,
        }
    }

    /// Holds `chunk`, read at `position` (counted across the data set's
    /// orders, see [`crate::prefetch`]), unless the budget is spent (the
    /// prefetcher reserves room first, so that is rare); returns whether it
    /// was kept.
    pub fn put(&self, key: ChunkKey, chunk: Bytes, position: u64) -> bool {
        let len = chunk.len() as u64;
        let mut held = self.lock();
        if held.chunks.contains_key(&key) {
            return true;
        }
        if self.budget.used() + len > self.budget.capacity {
            return false;
        }
        self.budget.used.fetch_add(len, Ordering::Relaxed);
        held.bytes += len;
        held.chunks.insert(key, (chunk, position));
        held.by_position.entry(position).or_default().push(key);
        true
    }

    /// Removes and returns the chunk, if held.
    pub fn take(&self, key: &ChunkKey) -> Option<Bytes> {
        let mut held = self.lock();
        if held.chunks.is_empty() {
            return None;
        }
        let (chunk, position) = held.chunks.remove(key)?;
        self.release(&mut held, chunk.len() as u64);
        if let Some(keys) = held.by_position.get_mut(&position) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                held.by_position.remove(&position);
            }
        }
        Some(chunk)
    }

    /// Whether the chunk is held.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.lock().chunks.contains_key(key)
    }

    /// Drops every chunk planned for a position before `position`: the
    /// readers have gone past them without asking (a diverging reader).
    /// Returns the bytes dropped.
    pub fn drop_before(&self, position: u64) -> u64 {
        let mut held = self.lock();
        if held
            .by_position
            .first_key_value()
            .is_none_or(|(&first, _)| first >= position)
        {
            return 0;
        }
        let kept = held.by_position.split_off(&position);
        let passed = std::mem::replace(&mut held.by_position, kept);
        let mut dropped = 0;
        for key in passed.into_values().flatten() {
            if let Some((chunk, _)) = held.chunks.remove(&key) {
                dropped += chunk.len() as u64;
            }
        }
        self.release(&mut held, dropped);
        dropped
    }

    /// Drops everything (a new order replaces the old one).
    pub fn clear(&self) {
        let mut held = self.lock();
        let bytes = held.bytes;
        held.chunks.clear();
        held.by_position.clear();
        self.release(&mut held, bytes);
    }

    /// The budget it charges.
    pub fn budget(&self) -> &PlannedBudget {
        &self.budget
    }

    /// Bytes held by this data set.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn release(&self, held: &mut Held, bytes: u64) {
        held.bytes -= bytes;
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Planned {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32) -> ChunkKey {
        ChunkKey { object: 1, index }
    }

    #[test]
    fn chunks_are_held_within_the_shared_budget_and_taken_once() {
        let budget = PlannedBudget::new(10);
        let a = Planned::new(budget.clone());
        let b = Planned::new(budget.clone());
        assert!(a.put(key(0), Bytes::from_static(b"123456"), 0));
        assert!(
            !b.put(key(1), Bytes::from_static(b"12345"), 0),
            "over the shared bound"
        );
        assert!(b.put(key(1), Bytes::from_static(b"1234"), 0));
        assert_eq!(budget.used(), 10);
        assert_eq!(a.take(&key(0)).as_deref(), Some(&b"123456"[..]));
        assert!(a.take(&key(0)).is_none(), "taken once");
        assert_eq!(budget.used(), 4);
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped buffer gives its bytes back");
    }

    #[test]
    fn reserved_room_is_not_given_twice_and_arrivals_fit_in_it() {
        let budget = PlannedBudget::new(10);
        assert!(budget.try_reserve(6));
        assert!(!budget.try_reserve(5), "only 4 bytes are left");
        assert_eq!(budget.room(), 4);
        let planned = Planned::new(budget.clone());
        assert!(
            planned.put(key(0), Bytes::from_static(b"123456"), 0),
            "its room was kept"
        );
        budget.unreserve(6);
        assert_eq!((budget.used(), budget.room()), (6, 4));
    }

    #[test]
    fn positions_the_readers_passed_are_dropped() {
        let budget = PlannedBudget::new(100);
        let planned = Planned::new(budget.clone());
        for position in 0..5 {
            let at = u64::from(position);
            assert!(planned.put(key(position), Bytes::from_static(b"xx"), at));
        }
        assert_eq!(planned.drop_before(3), 6);
        assert!(!planned.contains(&key(2)));
        assert!(planned.contains(&key(3)));
        assert_eq!(budget.used(), 4);
        planned.clear();
        assert_eq!((planned.bytes(), budget.used()), (0, 0));
    }
}
