//! Retry budget: retries (and hedges) may add at most a fraction of the
//! requests of the last few seconds, plus a small floor per second, so a
//! sick pool is not hammered with retries.

use std::sync::Mutex;

use tokio::time::Instant;

/// Seconds the budget looks back.
const WINDOW_SECONDS: usize = 10;

#[derive(Default)]
struct Window {
    /// Per-second counts, indexed by second modulo the window.
    requests: [u64; WINDOW_SECONDS],
    retries: [u64; WINDOW_SECONDS],
    /// The second (since `start`) of the newest slot.
    second: u64,
}

impl Window {
    fn advance(&mut self, second: u64) {
        if second <= self.second {
            return;
        }
        let stale = (second - self.second).min(WINDOW_SECONDS as u64);
        for step in 1..=stale {
            let slot = ((self.second + step) % WINDOW_SECONDS as u64) as usize;
            self.requests[slot] = 0;
            self.retries[slot] = 0;
        }
        self.second = second;
    }

    fn slot(&self) -> usize {
        (self.second % WINDOW_SECONDS as u64) as usize
    }
}

/// A retry budget shared by every request to one pool.
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    start: Instant,
    window: Mutex<Window>,
}

impl RetryBudget {
    /// Retries up to `ratio` × requests plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            start: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.advance(self.start.elapsed().as_secs());
        window
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        let mut window = self.window();
        let slot = window.slot();
        window.requests[slot] += 1;
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self) -> bool {
        let mut window = self.window();
        let requests: u64 = window.requests.iter().sum();
        let retries: u64 = window.retries.iter().sum();
        let allowed =
            self.ratio * requests as f64 + f64::from(self.min_per_second) * WINDOW_SECONDS as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        let slot = window.slot();
        window.retries[slot] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_fraction_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(0.2, 1);
        // The floor alone: 1/s over a 10 s window.
        let floor = (0..100).take_while(|_| budget.try_retry()).count();
        assert_eq!(floor, 10);
        for _ in 0..100 {
            budget.record_request();
        }
        let more = (0..100).take_while(|_| budget.try_retry()).count();
        assert_eq!(more, 20, "20% of 100 requests");
        // Once the window has passed, old requests and retries no longer count.
        tokio::time::advance(Duration::from_secs(11)).await;
        let fresh = (0..100).take_while(|_| budget.try_retry()).count();
        assert_eq!(fresh, 10);
    }
}
