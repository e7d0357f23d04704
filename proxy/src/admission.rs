//! Admission control: a listener serves at most so many requests, holding
//! at most so many response bytes, at once. Past either bound a request
//! waits a short, bounded time, then is refused with `SlowDown` (which S3
//! clients answer by backing off), so overload never turns into unbounded
//! queues, memory or latency.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use ferry_config::Limits;

/// Accounting unit of response bytes.
const UNIT: u64 = 64 * 1024;

/// Which bound refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every request slot was taken for the whole wait.
    Requests,
    /// The response-byte budget was spent for the whole wait.
    Memory,
}

impl Refused {
    /// What the client is told.
    pub fn message(self, wait: Duration) -> String {
        let what = match self {
            Self::Requests => "serves as many requests as it can",
            Self::Memory => "holds as many response bytes as it may",
        };
        format!("ferry-proxy {what}; nothing freed up within {wait:?}: slow down and retry")
    }
}

/// One listener's bounds.
pub struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    total_units: u32,
    wait: Duration,
    in_flight: Gauge,
    refused_requests: Counter,
    refused_memory: Counter,
}

/// A request let in; its slot and bytes are given back when this is dropped
/// (with the response body, once it has been sent or abandoned).
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    bytes: Option<OwnedSemaphorePermit>,
    in_flight: Gauge,
    deadline: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.decrement(1.0);
    }
}

impl Admission {
    /// The bounds of `limits` for the listener named `direction`.
    pub fn new(limits: &Limits, direction: &'static str) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_requests = limits
            .max_requests
            .unwrap_or(ferry_config::proxy::REQUESTS_PER_CPU * cpus)
            .max(1);
        let total_units =
            u32::try_from((limits.inflight_bytes() / UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        let refused = |limit: &'static str| counter!("admission_refused_total", "direction" => direction, "limit" => limit);
        Self {
            requests: Arc::new(Semaphore::new(max_requests)),
            bytes: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
            wait: limits.admission_wait.0,
            in_flight: gauge!("admission_requests_in_flight", "direction" => direction),
            refused_requests: refused("requests"),
            refused_memory: refused("memory"),
        }
    }

    /// How long a request may wait.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// A request slot, waiting at most the admission wait for one.
    pub async fn admit(&self) -> Result<Admitted, Refused> {
        let deadline = Instant::now() + self.wait;
        let permit = match self.requests.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout_at(deadline, self.requests.clone().acquire_owned()).await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => {
                        self.refused_requests.increment(1);
                        return Err(Refused::Requests);
                    }
                }
            }
        };
        self.in_flight.increment(1.0);
        Ok(Admitted {
            _request: permit,
            bytes: None,
            in_flight: self.in_flight.clone(),
            deadline,
        })
    }

    /// Reserves `len` response bytes for `admitted`, waiting at most what is
    /// left of its admission wait. A response larger than the whole budget
    /// takes all of it (it then runs alone rather than never).
    pub async fn reserve(&self, admitted: &mut Admitted, len: u64) -> Result<(), Refused> {
        let units = (len.div_ceil(UNIT).min(u64::from(self.total_units)) as u32).max(1);
        let permit = match self.bytes.clone().try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout_at(
                admitted.deadline,
                self.bytes.clone().acquire_many_owned(units),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) | Err(_) => {
                    self.refused_memory.increment(1);
                    return Err(Refused::Memory);
                }
            },
        };
        match &mut admitted.bytes {
            Some(held) => held.merge(permit),
            slot => *slot = Some(permit),
        }
        Ok(())
    }

    /// Response bytes reserved now.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.total_units - self.bytes.available_permits() as u32) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::{ByteSize, HumanDuration};

    fn limits(requests: usize, bytes: u64, wait_ms: u64) -> Limits {
        Limits {
            max_requests: Some(requests),
            inflight_memory: Some(ByteSize(bytes)),
            admission_wait: HumanDuration(Duration::from_millis(wait_ms)),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_listener_refuses_after_the_wait_and_admits_when_freed() {
        let admission = Admission::new(&limits(2, 1 << 20, 100), "test");
        let first = admission.admit().await.expect("first");
        let _second = admission.admit().await.expect("second");
        let started = Instant::now();
        assert_eq!(admission.admit().await.err(), Some(Refused::Requests));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(100),
            "waited the whole wait"
        );
        let waiting = admission.admit();
        drop(first);
        assert!(
            waiting.await.is_ok(),
            "a freed slot goes to the next request"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_held_until_the_admitted_request_is_dropped() {
        let admission = Admission::new(&limits(8, 1 << 20, 50), "test");
        let mut big = admission.admit().await.expect("admit");
        admission.reserve(&mut big, 768 << 10).await.expect("fits");
        assert_eq!(admission.reserved_bytes(), 768 << 10);
        let mut other = admission.admit().await.expect("admit");
        assert_eq!(
            admission.reserve(&mut other, 512 << 10).await,
            Err(Refused::Memory),
            "768 KiB + 512 KiB exceed 1 MiB"
        );
        admission
            .reserve(&mut other, 256 << 10)
            .await
            .expect("the rest fits");
        drop(big);
        drop(other);
        assert_eq!(admission.reserved_bytes(), 0);
        let mut huge = admission.admit().await.expect("admit");
        admission
            .reserve(&mut huge, 100 << 20)
            .await
            .expect("larger than the budget runs alone");
        assert_eq!(admission.reserved_bytes(), 1 << 20);
    }
}
