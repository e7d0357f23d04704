//! Recent time-to-first-byte samples of a pool, for the `auto` hedge
//! threshold (the pool's p95).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Samples kept.
const SAMPLES: usize = 512;
/// Samples needed before a p95 is trusted.
const MIN_SAMPLES: usize = 64;
/// The p95 is recomputed every this many samples.
const RECOMPUTE_EVERY: usize = 32;

#[derive(Default)]
struct Ring {
    micros: Vec<u32>,
    next: usize,
    since_recompute: usize,
}

/// A rolling p95 estimate.
#[derive(Default)]
pub struct LatencyTracker {
    ring: Mutex<Ring>,
    /// Current p95 in microseconds; 0 until enough samples.
    p95_micros: AtomicU64,
}

impl LatencyTracker {
    /// Records one sample.
    pub fn record(&self, latency: Duration) {
        let micros = latency.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.micros.len() < SAMPLES {
            ring.micros.push(micros);
        } else {
            let at = ring.next;
            ring.micros[at] = micros;
        }
        ring.next = (ring.next + 1) % SAMPLES;
        ring.since_recompute += 1;
        if ring.micros.len() >= MIN_SAMPLES && ring.since_recompute >= RECOMPUTE_EVERY {
            ring.since_recompute = 0;
            let mut sorted = ring.micros.clone();
            sorted.sort_unstable();
            let p95 = sorted[(sorted.len() * 95).div_ceil(100) - 1];
            self.p95_micros.store(u64::from(p95), Ordering::Relaxed);
        }
    }

    /// The recent p95, once enough samples are in.
    pub fn p95(&self) -> Option<Duration> {
        match self.p95_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_appears_after_enough_samples() {
        let tracker = LatencyTracker::default();
        for i in 1..=63 {
            tracker.record(Duration::from_millis(i));
        }
        assert_eq!(tracker.p95(), None);
        for i in 64..=100 {
            tracker.record(Duration::from_millis(i));
        }
        let p95 = tracker.p95().expect("p95");
        assert!(
            p95 >= Duration::from_millis(90) && p95 <= Duration::from_millis(96),
            "{p95:?}"
        );
    }
}
