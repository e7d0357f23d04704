//! Sequential-read detection: a reader that asks for the chunks right after
//! its previous read (or starts at the beginning) gets the next chunks
//! fetched before it asks.

use std::collections::HashMap;
use std::sync::Mutex;

/// Objects tracked at once; beyond this the table starts over (bounded memory).
const TRACKED_OBJECTS: usize = 8192;

/// Remembers, per object, which chunk a sequential reader will want next.
#[derive(Default)]
pub struct SequentialDetector {
    next_chunk: Mutex<HashMap<u128, u32>>,
}

impl SequentialDetector {
    /// Records a read of chunks `first..=last` of `object`; returns whether it
    /// looks sequential (starts the object or continues the previous read).
    pub fn observe(&self, object: u128, first: u32, last: u32) -> bool {
        let mut next_chunk = self.next_chunk.lock().unwrap_or_else(|p| p.into_inner());
        let sequential = first == 0 || next_chunk.get(&object) == Some(&first);
        if next_chunk.len() >= TRACKED_OBJECTS && !next_chunk.contains_key(&object) {
            next_chunk.clear();
        }
        next_chunk.insert(object, last.saturating_add(1));
        sequential
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_readers_that_continue() {
        let detector = SequentialDetector::default();
        assert!(detector.observe(1, 0, 0), "start of object");
        assert!(detector.observe(1, 1, 2), "continues");
        assert!(!detector.observe(1, 7, 7), "jumps");
        assert!(detector.observe(1, 8, 8), "continues after the jump");
        assert!(!detector.observe(2, 5, 5), "unknown object mid-way");
    }
}
