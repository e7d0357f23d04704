//! Single-flight: concurrent requests for the same missing thing share one
//! upstream fetch. The fetch runs as its own task, so it finishes (and fills
//! the cache) even when the request that started it goes away.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// A fetch in progress, awaitable by any number of requests.
pub type Flight<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

/// The fetches in progress, by key.
pub struct SingleFlight<K, V, E> {
    inflight: Mutex<HashMap<K, Flight<V, E>>>,
    /// Builds the error waiters see if the fetch task itself dies.
    lost: fn() -> E,
}

impl<K, V, E> SingleFlight<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// No fetches in progress; `lost` is the error for a fetch task that panicked.
    pub fn new(lost: fn() -> E) -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
            lost,
        }
    }

    /// Joins the fetch of `key` in progress, or starts `fetch` for it. The
    /// boolean says whether this call started it.
    pub fn join_or_start<F>(self: &Arc<Self>, key: K, fetch: F) -> (Flight<V, E>, bool)
    where
        F: FnOnce() -> BoxFuture<'static, Result<V, E>>,
    {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = inflight.get(&key) {
            return (flight.clone(), false);
        }
        let this = Arc::clone(self);
        let task_key = key.clone();
        let work = fetch();
        // The task removes its entry only after `work` has stored its result
        // wherever later readers will look, so no reader falls in between.
        let task = tokio::spawn(async move {
            let result = work.await;
            this.finish(&task_key);
            result
        });
        let lost = self.lost;
        let flight = async move { task.await.unwrap_or_else(|_| Err(lost())) }
            .boxed()
            .shared();
        inflight.insert(key, flight.clone());
        (flight, true)
    }

    /// Whether a fetch of `key` is in progress.
    pub fn contains(&self, key: &K) -> bool {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.contains_key(key)
    }

    /// Fetches in progress.
    pub fn len(&self) -> usize {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.len()
    }

    /// Whether no fetch is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn finish(&self, key: &K) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let flights: Arc<SingleFlight<u32, u32, String>> =
            Arc::new(SingleFlight::new(|| "lost".to_owned()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let mut wait = Some(wait);
        let mut joined = Vec::new();
        for _ in 0..16 {
            let calls = calls.clone();
            let gate = wait.take();
            let (flight, _) = flights.join_or_start(7, move || {
                Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    Ok(42)
                })
            });
            joined.push(flight);
        }
        assert!(flights.contains(&7));
        let _ = release.send(());
        for flight in joined {
            assert_eq!(flight.await, Ok(42));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "finished fetches leave the map");
    }

    #[tokio::test]
    async fn a_dropped_starter_does_not_cancel_the_fetch() {
        let flights: Arc<SingleFlight<u32, u32, String>> =
            Arc::new(SingleFlight::new(|| "lost".to_owned()));
        let (flight, started) = flights.join_or_start(1, || Box::pin(async { Ok(5) }));
        assert!(started);
        drop(flight);
        let (again, started_again) = flights.join_or_start(1, || Box::pin(async { Ok(6) }));
        // Either the first fetch is still running (joined, 5) or it finished
        // and a new one ran (6); it is never lost.
        let value = again.await.expect("value");
        assert!(value == 5 && !started_again || value == 6 && started_again);
    }
}
