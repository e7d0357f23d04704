//! Chunk-affine balancing over a pool of workers: rendezvous hashing picks
//! each chunk's owner, bounded load spills to the next candidate, ejection
//! takes failing workers out, a retry budget caps retries and hedges.

pub mod budget;
pub mod health;
pub mod latency;
pub mod rendezvous;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tokio::time::Instant;

use ferry_config::{HedgeSpec, MemberSpec, PoolSpec, SpiffeId, SpiffePattern};

use crate::outbound::connection::{Connection, ConnectionSettings};
use crate::tls::TlsState;
use budget::RetryBudget;
use health::{Availability, EjectionPolicy, Health};
use latency::LatencyTracker;

/// Shortest hedge delay: below this a second request costs more than it saves.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(2);
/// How long a member must have answered nothing before a hedge beating it
/// counts as its failure: far above a healthy worker's tail (the soak saw
/// 30 ejections a minute of live, CPU-starved workers when every lost race
/// counted) and short enough to eject a black hole within about two seconds.
const SILENT_BEFORE_HEDGE_FAILURES: Duration = Duration::from_secs(1);
/// Time constant of the smoothed load. Instantaneous in-flight counts swing
/// by several requests at random even in a balanced pool; bounding on them
/// would send a tenth of the chunks away from their owners (measured: pool
/// hit ratio 0.82 instead of 1.00 at 32 readers). Smoothing over half a
/// second keeps that noise out and still reacts to a worker that stays slow.
const LOAD_TIME_CONSTANT: Duration = Duration::from_millis(500);

/// An exponentially weighted moving average of a member's in-flight requests.
#[derive(Debug)]
struct SmoothedLoad {
    value: f64,
    at: Instant,
}

impl SmoothedLoad {
    fn new() -> Self {
        Self {
            value: 0.0,
            at: Instant::now(),
        }
    }

    /// The average at `now`, given the load held since the last update.
    fn at(&self, now: Instant, held: usize) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let keep = (-elapsed / LOAD_TIME_CONSTANT.as_secs_f64()).exp();
        self.value * keep + held as f64 * (1.0 - keep)
    }
}

/// Per-worker metric handles.
pub struct MemberMetrics {
    /// `upstream_requests_total`.
    pub requests: Counter,
    /// `upstream_response_latency_seconds` (time to response headers).
    pub latency: Histogram,
    /// `upstream_failovers_total`: requests moved away from this worker after it failed.
    pub failovers: Counter,
    /// `upstream_hedges_total`: hedge requests sent to this worker.
    pub hedges: Counter,
    /// `upstream_hedges_won_total`: hedges to this worker that answered first.
    pub hedges_won: Counter,
    /// `upstream_ejections_total`.
    pub ejections: Counter,
    /// `upstream_slowdowns_total`: answers asking to slow down (not failures).
    pub busy: Counter,
    /// `upstream_inflight`.
    pub inflight: Gauge,
    /// `upstream_member_ejected`: 1 while ejected (until a probe succeeds).
    pub ejected: Gauge,
}

impl MemberMetrics {
    fn new(pool: &str, member: &str) -> Self {
        let labels = [("pool", pool.to_owned()), ("member", member.to_owned())];
        Self {
            requests: counter!("upstream_requests_total", &labels),
            latency: histogram!("upstream_response_latency_seconds", &labels),
            failovers: counter!("upstream_failovers_total", &labels),
            hedges: counter!("upstream_hedges_total", &labels),
            hedges_won: counter!("upstream_hedges_won_total", &labels),
            ejections: counter!("upstream_ejections_total", &labels),
            busy: counter!("upstream_slowdowns_total", &labels),
            inflight: gauge!("upstream_inflight", &labels),
            ejected: gauge!("upstream_member_ejected", &labels),
        }
    }
}

/// One worker of a pool.
pub struct Member {
    /// `host:port`.
    pub address: String,
    /// Relative share of chunks.
    pub weight: u32,
    /// Failure domain.
    pub zone: Option<String>,
    /// The exact identity it must present, if configured.
    pub identity: Option<SpiffeId>,
    hash: u64,
    inflight: AtomicUsize,
    load: Mutex<SmoothedLoad>,
    health: Mutex<Health>,
    /// Whether it counts in `upstream_member_ejected` now. A flag, not a set
    /// gauge, so that a member replaced by a same-named one (new weight)
    /// takes its share out of the gauge exactly once.
    counted_ejected: AtomicBool,
    /// The shared connection to it.
    pub connection: Connection,
    /// Its metrics.
    pub metrics: MemberMetrics,
}

impl Member {
    /// Requests to it in flight now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// In-flight requests averaged over the last moments.
    pub fn smoothed_load(&self) -> f64 {
        let load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        load.at(Instant::now(), self.inflight())
    }

    /// Folds the load held until now into the average, then applies `change`.
    fn change_load(&self, change: impl FnOnce(&AtomicUsize)) {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        load.value = load.at(now, self.inflight());
        load.at = now;
        change(&self.inflight);
    }

    fn availability(&self, now: Instant) -> Availability {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .availability(now)
    }

    /// Claims the right to send it a request (false while it is ejected, or
    /// when another request already holds its single probe).
    pub fn claim(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claim(Instant::now())
    }

    /// Marks a request started; the guard marks it done when dropped.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.change_load(|inflight| {
            inflight.fetch_add(1, Ordering::Relaxed);
        });
        self.metrics.inflight.increment(1.0);
        self.metrics.requests.increment(1);
        InflightGuard(Arc::clone(self))
    }
}

/// Counts one request in flight to a member until dropped.
pub struct InflightGuard(Arc<Member>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.change_load(|inflight| {
            inflight.fetch_sub(1, Ordering::Relaxed);
        });
        self.0.metrics.inflight.decrement(1.0);
    }
}

/// A pool of workers, its members swappable while requests are in flight.
pub struct Pool {
    /// The pool's name.
    pub name: String,
    members: ArcSwap<Vec<Arc<Member>>>,
    /// Retries and hedges allowed.
    pub budget: RetryBudget,
    /// Recent times to first byte.
    pub latency: LatencyTracker,
    load_epsilon: f64,
    hedge: HedgeSpec,
    /// Deadline of one request to a worker.
    pub chunk_timeout: Duration,
    ejection: EjectionPolicy,
    settings: ConnectionSettings,
    /// Mutual TLS to the workers, when identity is on.
    tls: Option<PoolTls>,
    /// What it was built from, less its members (which [`Pool::update`] changes).
    built_from: (ferry_config::BalanceSpec, Option<SpiffePattern>),
    /// Its share of `pool_members`.
    size: Gauge,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.size.decrement(self.members.load().len() as f64);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.counted_ejected.load(Ordering::Relaxed) {
            self.metrics.ejected.decrement(1.0);
        }
    }
}

/// How a pool's connections are secured.
#[derive(Clone)]
pub struct PoolTls {
    /// The proxy's certificate and trust anchors.
    pub state: Arc<TlsState>,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Identity every worker must present, unless a member names its own.
    pub expected: Option<SpiffePattern>,
}

impl Pool {
    /// A pool as `spec` describes it.
    pub fn new(spec: &PoolSpec, tls: Option<PoolTls>) -> Arc<Self> {
        let balance = &spec.balance;
        let pool = Arc::new(Self {
            name: spec.name.clone(),
            members: ArcSwap::from_pointee(Vec::new()),
            budget: RetryBudget::new(balance.retry_ratio, balance.retry_min_per_second),
            latency: LatencyTracker::default(),
            load_epsilon: balance.load_epsilon,
            hedge: balance.hedge,
            chunk_timeout: balance.chunk_timeout.0,
            ejection: EjectionPolicy {
                after_failures: balance.eject_after_failures,
                base: balance.eject_base.0,
                max: balance.eject_max.0,
            },
            settings: ConnectionSettings::from(balance),
            tls,
            built_from: (spec.balance.clone(), spec.identity.clone()),
            size: gauge!("pool_members", "pool" => spec.name.clone()),
        });
        pool.update(&spec.members);
        pool
    }

    /// Whether `spec` differs from this pool in its members at most: then
    /// [`Pool::update`] turns this pool into it, keeping connections.
    pub fn can_become(&self, spec: &PoolSpec) -> bool {
        self.name == spec.name && self.built_from == (spec.balance.clone(), spec.identity.clone())
    }

    /// Replaces the member list atomically. Members that stay keep their
    /// connection, load and health; requests in flight finish on the list they began with.
    pub fn update(&self, specs: &[MemberSpec]) {
        let current = self.members.load();
        let next: Vec<Arc<Member>> = specs
            .iter()
            .map(|spec| {
                current
                    .iter()
                    .find(|m| {
                        m.address == spec.address
                            && m.weight == spec.weight
                            && m.zone == spec.zone
                            && m.identity == spec.identity
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Member {
                            hash: rendezvous::member_hash(&spec.address),
                            address: spec.address.clone(),
                            weight: spec.weight,
                            zone: spec.zone.clone(),
                            identity: spec.identity.clone(),
                            inflight: AtomicUsize::new(0),
                            load: Mutex::new(SmoothedLoad::new()),
                            health: Mutex::new(Health::default()),
                            counted_ejected: AtomicBool::new(false),
                            connection: Connection::new(
                                &spec.address,
                                self.settings,
                                self.client_tls(spec),
                            ),
                            metrics: MemberMetrics::new(&self.name, &spec.address),
                        })
                    })
            })
            .collect();
        // Added and taken away rather than set: a pool that replaces a
        // same-named one is built before the old one is dropped.
        self.size
            .increment(next.len() as f64 - current.len() as f64);
        self.members.store(Arc::new(next));
    }

    /// The TLS configuration for `member`: it must present its own expected
    /// identity, else the pool's, else any workload of the trust domain.
    fn client_tls(&self, member: &MemberSpec) -> Option<Arc<rustls::ClientConfig>> {
        let tls = self.tls.as_ref()?;
        let expected = match &member.identity {
            Some(id) => id.as_str().parse().ok(),
            None => tls.expected.clone(),
        }
        .unwrap_or_else(|| SpiffePattern::any_workload(&tls.trust_domain));
        let mismatches = counter!(
            "upstream_identity_mismatches_total",
            "pool" => self.name.clone(),
            "member" => member.address.clone()
        );
        Some(Arc::new(tls.state.client_config(expected, mismatches)))
    }

    /// The members now.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.load_full()
    }

    /// The members now, each with whether it is in rotation (not ejected).
    pub fn members_report(&self) -> Vec<(Arc<Member>, bool)> {
        let now = Instant::now();
        self.members
            .load()
            .iter()
            .map(|m| (Arc::clone(m), m.availability(now) != Availability::Ejected))
            .collect()
    }

    /// The members a request for `key` should try, in order: rendezvous
    /// order without ejected members, the first one whose smoothed load per
    /// unit of weight is within (1 + ε) × the pool's mean moved to the front.
    /// When every member is ejected, all of them in rendezvous order (a pool
    /// that ejected everyone has nothing better to offer).
    pub fn candidates(&self, key: u64) -> Vec<Arc<Member>> {
        self.ranked(key).0
    }

    /// [`Pool::candidates`], and whether they are everyone because everyone
    /// is ejected (then requests go to them regardless of their health).
    pub fn ranked(&self, key: u64) -> (Vec<Arc<Member>>, bool) {
        let members = self.members.load();
        let now = Instant::now();
        let weights: Vec<(u64, u32)> = members.iter().map(|m| (m.hash, m.weight)).collect();
        let all: Vec<Arc<Member>> = rendezvous::rank(&weights, key)
            .into_iter()
            .map(|i| Arc::clone(&members[i]))
            .collect();
        let mut ranked: Vec<Arc<Member>> = all
            .iter()
            .filter(|m| m.availability(now) != Availability::Ejected)
            .cloned()
            .collect();
        if ranked.is_empty() {
            return (all, true);
        }
        if ranked.len() > 1 {
            let loads: Vec<f64> = ranked.iter().map(|m| m.smoothed_load()).collect();
            let total_weight: f64 = ranked.iter().map(|m| f64::from(m.weight)).sum();
            let mean = loads.iter().sum::<f64>() / total_weight;
            // Below one request per unit of weight nobody is overloaded.
            let bound = (1.0 + self.load_epsilon) * mean.max(1.0);
            if let Some(first_fit) = ranked
                .iter()
                .zip(&loads)
                .position(|(m, load)| load / f64::from(m.weight) <= bound)
                && first_fit > 0
            {
                let chosen = ranked.remove(first_fit);
                ranked.insert(0, chosen);
            }
        }
        (ranked, false)
    }

    /// How long to wait for the first request before hedging, if at all.
    pub fn hedge_after(&self) -> Option<Duration> {
        match self.hedge {
            HedgeSpec::Off => None,
            HedgeSpec::After(delay) => Some(delay),
            HedgeSpec::Auto => self.latency.p95().map(|p95| p95.max(MIN_HEDGE_DELAY)),
        }
    }

    /// Records that `member` answered.
    pub fn succeeded(&self, member: &Member) {
        member
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .succeeded(Instant::now());
        if member.counted_ejected.load(Ordering::Relaxed)
            && member.counted_ejected.swap(false, Ordering::Relaxed)
        {
            member.metrics.ejected.decrement(1.0);
        }
    }

    /// Records that a hedge answered before `member` sent headers. That is
    /// a failure only if the member has answered nothing for
    /// [`SILENT_BEFORE_HEDGE_FAILURES`]: a black-holed worker, always beaten
    /// by hedges, would otherwise never time out and never be ejected, while
    /// a worker that is only slow now and then (the tail hedging is for)
    /// keeps answering its other requests and must not be ejected for it.
    pub fn beaten_by_hedge(&self, member: &Member) {
        let answering = member
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .answered_within(Instant::now(), SILENT_BEFORE_HEDGE_FAILURES);
        if !answering {
            self.failed(member);
        }
    }

    /// Records that `member` failed, ejecting it if it keeps failing.
    pub fn failed(&self, member: &Member) {
        let ejected = member
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(Instant::now(), &self.ejection);
        if let Some(length) = ejected {
            member.metrics.ejections.increment(1);
            if !member.counted_ejected.swap(true, Ordering::Relaxed) {
                member.metrics.ejected.increment(1.0);
            }
            tracing::warn!(pool = %self.name, member = %member.address, ?length, "worker ejected after failures");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::BalanceSpec;

    fn pool(addresses: &[&str]) -> Arc<Pool> {
        Pool::new(
            &PoolSpec {
                name: "test".into(),
                members: addresses.iter().map(|a| MemberSpec::new(*a)).collect(),
                balance: BalanceSpec::default(),
                identity: None,
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_that_stays_overloaded_spills_to_the_next_candidate() {
        let pool = pool(&["a:1", "b:1", "c:1"]);
        let key = 7;
        let owner = pool.candidates(key)[0].clone();
        let others: Vec<Arc<Member>> = pool.candidates(key)[1..].to_vec();
        let mut held: Vec<InflightGuard> = (0..10).map(|_| owner.start()).collect();
        for other in &others {
            held.extend((0..2).map(|_| other.start()));
        }
        assert_eq!(
            pool.candidates(key)[0].address,
            owner.address,
            "a momentary spike does not move chunks off their owner"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let candidates = pool.candidates(key);
        assert_ne!(
            candidates[0].address, owner.address,
            "owner stayed over (1+ε) × mean"
        );
        assert!(
            candidates.iter().any(|m| m.address == owner.address),
            "still a fallback"
        );
        held.clear();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            pool.candidates(key)[0].address,
            owner.address,
            "back once the load is gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn losing_hedge_races_ejects_only_a_member_that_answers_nothing() {
        let pool = pool(&["a:1"]);
        let member = pool.members()[0].clone();
        let ejected =
            |member: &Member| member.availability(Instant::now()) == Availability::Ejected;
        pool.succeeded(&member);
        for _ in 0..20 {
            pool.beaten_by_hedge(&member);
        }
        assert!(!ejected(&member), "it answered 0 s ago: only slow");
        tokio::time::advance(SILENT_BEFORE_HEDGE_FAILURES).await;
        for _ in 0..pool.ejection.after_failures {
            pool.beaten_by_hedge(&member);
        }
        assert!(ejected(&member), "silent for a second: a black hole");
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_members_carry_their_share_before_counting_as_loaded() {
        let pool = Pool::new(
            &PoolSpec {
                name: "test".into(),
                members: vec![
                    MemberSpec {
                        address: "big:1".into(),
                        weight: 3,
                        zone: None,
                        identity: None,
                    },
                    MemberSpec::new("small:1"),
                ],
                balance: BalanceSpec::default(),
                identity: None,
            },
            None,
        );
        let members = pool.members();
        // Three times the load on three times the weight is balanced.
        let _held: Vec<InflightGuard> = (0..9)
            .map(|_| members[0].start())
            .chain((0..3).map(|_| members[1].start()))
            .collect();
        tokio::time::advance(Duration::from_secs(3)).await;
        let weights: Vec<(u64, u32)> = members.iter().map(|m| (m.hash, m.weight)).collect();
        for key in 0..50 {
            let owner = &members[rendezvous::rank(&weights, key)[0]];
            assert_eq!(
                pool.candidates(key)[0].address,
                owner.address,
                "key {key} stays with its owner"
            );
        }
    }

    #[tokio::test]
    async fn ejected_members_are_left_out_and_updates_keep_state() {
        let pool = pool(&["a:1", "b:1"]);
        let members = pool.members();
        for _ in 0..5 {
            pool.failed(&members[0]);
        }
        for key in 0..20 {
            let candidates = pool.candidates(key);
            assert_eq!(candidates.len(), 1);
            assert_eq!(candidates[0].address, "b:1");
        }
        pool.update(&[
            MemberSpec::new("a:1"),
            MemberSpec::new("b:1"),
            MemberSpec::new("c:1"),
        ]);
        let after = pool.members();
        assert!(
            Arc::ptr_eq(&after[0], &members[0]),
            "a:1 keeps its health and connection"
        );
        assert_eq!(pool.candidates(3).len(), 2, "a:1 is still ejected");
        for _ in 0..5 {
            pool.failed(&after[1]);
            pool.failed(&after[2]);
        }
        assert_eq!(
            pool.candidates(1).len(),
            3,
            "all ejected: try everyone rather than no one"
        );
    }
}
