//! Outlier ejection: a worker that keeps failing is taken out of rotation for
//! a backoff that doubles with each ejection, then let back for one probe
//! request; success restores it, failure ejects it again for longer.

use std::time::Duration;

use tokio::time::Instant;

/// What a member's health allows right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// In rotation.
    Healthy,
    /// Ejection over: one probe request may go.
    ProbeReady,
    /// Out of rotation.
    Ejected,
}

/// Ejection thresholds.
#[derive(Clone, Copy, Debug)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject.
    pub after_failures: u32,
    /// First ejection's length.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
}

/// One member's failure record.
#[derive(Debug, Default)]
pub struct Health {
    last_answer: Option<Instant>,
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    probing: bool,
}

impl Health {
    /// What the member may do now (does not claim a probe).
    pub fn availability(&self, now: Instant) -> Availability {
        match self.ejected_until {
            None => Availability::Healthy,
            Some(until) if now < until || self.probing => Availability::Ejected,
            Some(_) => Availability::ProbeReady,
        }
    }

    /// Claims the right to send a request: always for a healthy member, once
    /// for a member whose ejection has run out (the probe).
    pub fn claim(&mut self, now: Instant) -> bool {
        match self.availability(now) {
            Availability::Healthy => true,
            Availability::ProbeReady => {
                self.probing = true;
                true
            }
            Availability::Ejected => false,
        }
    }

    /// Records a success at `now`: the member is back in full rotation.
    pub fn succeeded(&mut self, now: Instant) {
        *self = Health {
            last_answer: Some(now),
            ..Health::default()
        };
    }

    /// Whether the member answered anything within `window` before `now`.
    pub fn answered_within(&self, now: Instant, window: Duration) -> bool {
        self.last_answer
            .is_some_and(|at| now.saturating_duration_since(at) < window)
    }

    /// Records a failure; returns the ejection length if this ejects the member.
    pub fn failed(&mut self, now: Instant, policy: &EjectionPolicy) -> Option<Duration> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let eject = self.probing
            || (self.ejected_until.is_none() && self.consecutive_failures >= policy.after_failures);
        if !eject {
            return None;
        }
        self.probing = false;
        self.ejections = self.ejections.saturating_add(1);
        let doubling = 1u32
            .checked_shl(self.ejections.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let length = policy.base.saturating_mul(doubling).min(policy.max);
        self.ejected_until = Some(now + length);
        Some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: EjectionPolicy = EjectionPolicy {
        after_failures: 3,
        base: Duration::from_secs(1),
        max: Duration::from_secs(5),
    };

    #[test]
    fn ejects_after_consecutive_failures_and_backs_off() {
        let mut health = Health::default();
        let start = Instant::now();
        assert_eq!(health.failed(start, &POLICY), None);
        assert_eq!(health.failed(start, &POLICY), None);
        assert_eq!(health.failed(start, &POLICY), Some(Duration::from_secs(1)));
        assert_eq!(health.availability(start), Availability::Ejected);
        assert!(!health.claim(start));
        let later = start + Duration::from_secs(1);
        assert_eq!(health.availability(later), Availability::ProbeReady);
        assert!(health.claim(later), "one probe");
        assert!(!health.claim(later), "only one probe at a time");
        assert_eq!(
            health.failed(later, &POLICY),
            Some(Duration::from_secs(2)),
            "failed probe doubles"
        );
        let later = later + Duration::from_secs(2);
        assert!(health.claim(later));
        assert_eq!(health.failed(later, &POLICY), Some(Duration::from_secs(4)));
        let later = later + Duration::from_secs(4);
        assert!(health.claim(later));
        assert_eq!(
            health.failed(later, &POLICY),
            Some(Duration::from_secs(5)),
            "capped"
        );
        let later = later + Duration::from_secs(5);
        assert!(health.claim(later));
        health.succeeded(Instant::now());
        assert_eq!(health.availability(later), Availability::Healthy);
        assert_eq!(health.failed(later, &POLICY), None, "the count starts over");
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let mut health = Health::default();
        let now = Instant::now();
        health.failed(now, &POLICY);
        health.failed(now, &POLICY);
        health.succeeded(Instant::now());
        assert_eq!(health.failed(now, &POLICY), None);
        assert_eq!(health.failed(now, &POLICY), None);
    }
}
