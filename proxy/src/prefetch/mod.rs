//! Prefetch in the sampler's order: a data set told the keys an epoch will
//! read, in order, fetches ahead of its readers into the planned buffer of
//! its chunk store, a window ahead that grows with the rate they read at.
//! Reads find their chunks there (or in flight: one fetch, joined); chunks
//! are dropped once read, or once the readers are far past them.

mod keys;
pub mod order;
mod turns;

pub use keys::{KeyList, Keys, NewKeys};
use turns::Turns;
pub use turns::{Turn, TurnCounts};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::Notify;

use crate::chunk::ChunkStore;
use crate::metadata::MetadataCache;
use crate::origin::OriginError;
use crate::telemetry::DatasetMetrics;

/// Most samples fetched at once. Through a pool, a cold sample costs a
/// worker's round trip plus the origin's first byte (10 ms in the benches,
/// 20–40 ms under load): 64 at once keep ahead of 2,000 samples per second.
const MAX_CONCURRENCY: usize = 64;
/// Fewest samples fetched at once.
const MIN_CONCURRENCY: usize = 4;
/// The least read rate concurrency is sized for, before one is observed.
const MIN_RATE: f64 = 1000.0;
/// The least window ahead of the furthest reader, in samples. A data
/// loader's workers start an epoch all at once, each on its own batch, so
/// the front starts several batches in and everything behind it is fetched
/// too; this is the margin past it until a read rate is measured.
const MIN_WINDOW: u32 = 256;
/// How far ahead, in time at the observed read rate, the window reaches.
const LEAD: Duration = Duration::from_secs(1);
/// How far behind the furthest reader a position is given up on (its
/// chunks dropped unread), in samples, or four windows if more. A data
/// loader's slowest worker trails the furthest by up to workers × batch
/// samples (2,048 for 8 × 256, 16,384 for 16 × 1,024), so less would drop
/// what it is about to read; more only holds a diverging reader's chunks
/// longer, within `prefetch_memory` either way.
const GIVE_UP_BEHIND: u32 = 16_384;
/// How often the driver looks again without being woken (budget freed by
/// reads taking their chunks, or by another data set).
const TICK: Duration = Duration::from_millis(50);

/// What a data set's current order has done so far.
#[derive(Clone, Debug, Serialize)]
pub struct PlanStatus {
    /// Increases with each order posted to this proxy.
    pub generation: u64,
    /// Samples in the order.
    pub samples: u32,
    /// Reads of keys in the order seen so far.
    pub reads: u64,
    /// One past the furthest position read.
    pub front: u32,
    /// Next position the prefetcher will fetch.
    pub next: u32,
    /// Samples fetched ahead.
    pub fetched: u64,
    /// Samples whose fetch failed (their readers fetch them again).
    pub failed: u64,
    /// Samples the window reaches ahead of the front now.
    pub window: u32,
    /// Bytes fetched ahead and not yet read (this data set).
    pub buffered_bytes: u64,
    /// Whether every position has been fetched or passed.
    pub done: bool,
    /// How samples took turns to be sent (this data set, every order).
    pub turns: TurnCounts,
}

/// One posted order.
struct Plan {
    generation: u64,
    /// Where this order's position 0 is counted across the data set's
    /// orders: the planned buffer holds chunks by that count, so an order
    /// that continues the previous one keeps what was fetched for it.
    base: u64,
    keys: Keys,
    order: Vec<u32>,
    /// Each key's first position, by its first index in `keys` (`NONE`
    /// when it is not in the order).
    first: Vec<u32>,
    /// The position after each one that holds the same key (`NONE` after
    /// the last): an order spanning several epochs holds each key once per
    /// epoch, and a read is the earliest of its key's positions not yet read.
    next_same: Vec<u32>,
    /// The position before each one that holds the same key (`NONE` before the first).
    prev_same: Vec<u32>,
    /// When each position was read: the count of reads then (wrapping,
    /// never 0), or 0 while unread.
    read_at: Vec<AtomicU32>,
    front: AtomicU32,
    reads: AtomicU64,
    next: AtomicU32,
    fetched: AtomicU64,
    failed: AtomicU64,
    window: AtomicU32,
    done: AtomicBool,
    stopped: AtomicBool,
    wake: Notify,
}

impl Plan {
    fn new(keys: Keys, order: Vec<u32>, base: u64) -> Self {
        let mut first = vec![NONE; keys.len()];
        let mut next_same = vec![NONE; order.len()];
        let mut prev_same = vec![NONE; order.len()];
        // Walked from the end, so each key's entry ends at its first position.
        for (position, &index) in order.iter().enumerate().rev() {
            let Some(entry) = first.get_mut(keys.first_of(index) as usize) else {
                continue;
            };
            let later = std::mem::replace(entry, position as u32);
            if later != NONE {
                next_same[position] = later;
                prev_same[later as usize] = position as u32;
            }
        }
        Self {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            base,
            read_at: (0..order.len()).map(|_| AtomicU32::new(0)).collect(),
            keys,
            order,
            first,
            next_same,
            prev_same,
            front: AtomicU32::new(0),
            reads: AtomicU64::new(0),
            next: AtomicU32::new(0),
            fetched: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            window: AtomicU32::new(MIN_WINDOW),
            done: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// The first position of the key at `index` of the list, if the order reads it.
    fn first_position(&self, index: u32) -> Option<u32> {
        self.first
            .get(index as usize)
            .copied()
            .filter(|&p| p != NONE)
    }

    /// The position a read of `key` takes (see [`Prefetcher::observe`]).
    fn claim(&self, key: &str) -> Option<u32> {
        let first = self.first_position(self.keys.find(key)?)?;
        let reads = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
        // Wrapping is harmless: the stamp only tells recent reads from old.
        let stamp = (reads as u32).max(1);
        // A key read again goes on to its next position when that is near
        // the front, or when its last read was long ago: the next epoch's
        // turn, not a second read of the same sample (ranged readers read
        // one sample in several requests, one right after the other).
        let ahead = 2 * self.window.load(Ordering::Relaxed).max(MIN_WINDOW);
        let reach = self.front.load(Ordering::Relaxed).saturating_add(ahead);
        let mut position = first;
        loop {
            let at = self.read_at.get(position as usize)?;
            let read_before =
                match at.compare_exchange(0, stamp, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(before) => before,
                };
            match self.next_same.get(position as usize) {
                Some(&next)
                    if next != NONE
                        && (next <= reach || stamp.wrapping_sub(read_before) > ahead) =>
                {
                    position = next;
                }
                _ => return None,
            }
        }
        if self.front.fetch_max(position + 1, Ordering::Relaxed) <= position {
            self.wake.notify_one();
        }
        Some(position)
    }

    fn is_read(&self, position: u32) -> bool {
        self.read_at
            .get(position as usize)
            .is_none_or(|at| at.load(Ordering::Relaxed) != 0)
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The key index read at `position` (its first index in the list).
    fn index_at(&self, position: usize) -> Option<u32> {
        Some(self.keys.first_of(*self.order.get(position)?))
    }

    fn key_at(&self, position: usize) -> Option<&Arc<str>> {
        self.keys.get(*self.order.get(position)?)
    }

    /// Where `next` begins in this order, if it continues it: from that
    /// position on this order reads what `next` reads first (a sampler
    /// that posts this epoch and the next at each epoch's start, or the
    /// same order posted again).
    fn continued_at(&self, next: &Plan) -> Option<u32> {
        // Orders that reuse the key list compare indices, not keys.
        let same_keys = Arc::ptr_eq(&self.keys, &next.keys);
        let first = if same_keys {
            next.index_at(0)?
        } else {
            self.keys.find(next.key_at(0)?)?
        };
        let mut candidate = self.first_position(first)?;
        loop {
            let at = candidate as usize;
            let overlap = (self.order.len() - at).min(next.order.len());
            let continues = if same_keys {
                (0..overlap).all(|i| self.index_at(at + i) == next.index_at(i))
            } else {
                (0..overlap).all(|i| self.key_at(at + i) == next.key_at(i))
            };
            if continues {
                return Some(candidate);
            }
            candidate = *self.next_same.get(at).filter(|&&n| n != NONE)?;
        }
    }

    /// Takes over what this order knows of the positions from `offset` on,
    /// which `next` reads from its position 0: which were read, and how far.
    fn hand_over(&self, offset: u32, next: &Plan) {
        for (mine, theirs) in self.read_at[offset as usize..].iter().zip(&next.read_at) {
            theirs.store(mine.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        next.reads
            .store(self.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        let front = self.front.load(Ordering::Relaxed).saturating_sub(offset);
        next.front.store(front, Ordering::Relaxed);
        next.window
            .store(self.window.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A data set's prefetcher: at most one order at a time.
pub struct Prefetcher {
    active: ArcSwapOption<Plan>,
    /// Serializes posting, so two posts cannot both start drivers.
    posting: Mutex<()>,
    /// Sends of samples in the order, earliest position first.
    turns: Arc<Turns>,
}

impl Default for Prefetcher {
    fn default() -> Self {
        Self {
            active: ArcSwapOption::empty(),
            posting: Mutex::new(()),
            turns: Turns::new(SENDS_AT_ONCE),
        }
    }
}

/// Samples of an order sent at once: one, so that when loader workers
/// contend for the CPU the sample needed soonest is never behind another.
const SENDS_AT_ONCE: usize = 1;

/// No further position: the end of a key's chain in `Plan::next_same`.
const NONE: u32 = u32::MAX;

/// Orders posted to this process, so generations are unique.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// An order built and compared with the current one, ready to start.
pub struct Prepared {
    plan: Plan,
    /// The order current when it was compared.
    after: Option<Arc<Plan>>,
    /// Where it continues that order.
    offset: Option<u32>,
}

/// What a new order's driver works with.
pub struct PlanParts {
    /// Object metadata (a sample's size and version).
    pub metadata: Arc<MetadataCache>,
    /// The chunk store the readers read through.
    pub chunks: Arc<ChunkStore>,
    /// The data set's metrics.
    pub metrics: Arc<DatasetMetrics>,
}

impl Prefetcher {
    /// Notes a read of `key`: the readers have reached its position. Returns
    /// that position, or `None` when the key is not in the order or this is
    /// a second read of a position already read.
    pub fn observe(&self, key: &str) -> Option<u32> {
        let guard = self.active.load();
        let plan = guard.as_ref()?;
        plan.claim(key)
    }

    /// Waits for the turn to send the sample at `position` of the order
    /// (bounded; `None` when it goes without one).
    pub async fn turn(&self, position: u32) -> Option<Turn> {
        self.turns.take(position).await
    }

    /// The keys of the current order, for an order that reuses them.
    pub fn keys(&self) -> Option<Keys> {
        self.active
            .load()
            .as_ref()
            .map(|plan| Arc::clone(&plan.keys))
    }

    /// A plan of `order` over `keys`, and where it continues the current
    /// order, if it does. Building one for millions of positions takes a
    /// while: call it off the runtime's threads.
    pub fn prepare(&self, keys: Keys, order: Vec<u32>) -> Prepared {
        let plan = Plan::new(keys, order, 0);
        let after = self.active.load_full();
        let offset = after
            .as_deref()
            .and_then(|current| current.continued_at(&plan));
        Prepared {
            plan,
            after,
            offset,
        }
    }

    /// Replaces the current order (if any) with a prepared one and starts
    /// fetching ahead.
    pub fn start(&self, prepared: Prepared, parts: PlanParts) -> PlanStatus {
        let _posting = self.posting.lock().unwrap_or_else(|p| p.into_inner());
        let Prepared {
            mut plan,
            after,
            mut offset,
        } = prepared;
        let current = self.active.load_full();
        let same = match (&current, &after) {
            (Some(current), Some(after)) => Arc::ptr_eq(current, after),
            (None, None) => true,
            _ => false,
        };
        if !same {
            // Another order was posted meanwhile (rare: posts race).
            offset = current.as_deref().and_then(|c| c.continued_at(&plan));
        }
        let dropped = match (current.as_deref(), offset) {
            // What was fetched for the rest of the current order stays,
            // under the same counts; only what comes before goes.
            (Some(current), Some(offset)) => {
                plan.base = current.base + u64::from(offset);
                current.hand_over(offset, &plan);
                parts.chunks.planned().drop_before(plan.base)
            }
            (Some(current), None) => {
                plan.base = current.base + current.order.len() as u64;
                let dropped = parts.chunks.planned().bytes();
                parts.chunks.planned().clear();
                dropped
            }
            (None, _) => 0,
        };
        let plan = Arc::new(plan);
        if let Some(old) = self.active.swap(Some(Arc::clone(&plan))) {
            old.stop();
        }
        parts.metrics.prefetch_dropped.increment(dropped);
        let status = status(&plan, &parts.chunks, &self.turns);
        tokio::spawn(drive(plan, parts));
        status
    }

    /// Stops the current order; whether there was one.
    pub fn stop(&self, chunks: &ChunkStore) -> bool {
        let _posting = self.posting.lock().unwrap_or_else(|p| p.into_inner());
        let Some(plan) = self.active.swap(None) else {
            return false;
        };
        plan.stop();
        chunks.planned().clear();
        true
    }

    /// The current order's progress.
    pub fn status(&self, chunks: &ChunkStore) -> Option<PlanStatus> {
        self.active
            .load()
            .as_ref()
            .map(|plan| status(plan, chunks, &self.turns))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if let Some(plan) = self.active.swap(None) {
            plan.stop();
        }
    }
}

fn status(plan: &Plan, chunks: &ChunkStore, turns: &Turns) -> PlanStatus {
    PlanStatus {
        generation: plan.generation,
        samples: plan.order.len() as u32,
        reads: plan.reads.load(Ordering::Relaxed),
        front: plan.front.load(Ordering::Relaxed),
        next: plan.next.load(Ordering::Relaxed),
        fetched: plan.fetched.load(Ordering::Relaxed),
        failed: plan.failed.load(Ordering::Relaxed),
        window: plan.window.load(Ordering::Relaxed),
        buffered_bytes: chunks.planned().bytes(),
        done: plan.done.load(Ordering::Relaxed),
        turns: turns.counts(),
    }
}

/// Fetches the order's samples ahead of the front, within the window, the
/// concurrency bound and the planned budget; drops what the readers passed.
async fn drive(plan: Arc<Plan>, parts: PlanParts) {
    let len = plan.order.len() as u32;
    let mut next = 0u32;
    let mut fetching = FuturesUnordered::new();
    let mut rate = RateMeter::new();
    // A sample's likely size, to reserve budget before its size is known
    // (a guess until one is fetched).
    let mut typical: Option<u64> = None;
    // How long a sample takes to fetch (smoothed; none yet: assume slow).
    let mut latency: Option<f64> = None;
    // Positions before this were given up on.
    let mut given_up = 0u32;
    // Positions whose key's earlier position is still unread, in order:
    // their chunks are in the buffer for that one, and are fetched again
    // once it has been read (an order spanning epochs).
    let mut deferred: VecDeque<u32> = VecDeque::new();
    let launch = |position: u32| {
        let key = plan
            .key_at(position as usize)
            .map_or_else(|| Arc::from(""), Arc::clone);
        let started = Instant::now();
        let (parts, plan) = (&parts, &plan);
        async move {
            let fetched = fetch_sample(parts, plan, key, position).await;
            (fetched, started.elapsed())
        }
    };

    while !plan.stopped.load(Ordering::Acquire) {
        let front = plan.front.load(Ordering::Relaxed);
        let per_second = rate.update(plan.reads.load(Ordering::Relaxed));
        let window = ((per_second * LEAD.as_secs_f64()) as u32).max(MIN_WINDOW);
        plan.window.store(window, Ordering::Relaxed);
        // Positions this far behind the front were skipped by the readers.
        let passed = front.saturating_sub(window.saturating_mul(4).max(GIVE_UP_BEHIND));
        given_up = given_up.max(passed);
        next = next.max(given_up);
        // Also what an earlier order's fetches still in flight put there.
        let dropped = parts
            .chunks
            .planned()
            .drop_before(plan.base + u64::from(given_up));
        parts.metrics.prefetch_dropped.increment(dropped);
        let budget = parts.chunks.planned().budget();
        // Enough fetches at once to stay ahead of the readers at twice their
        // rate, no more: warm samples come in a millisecond, and 64 at once
        // then only compete with the readers for CPU (measured with
        // `ferry-bench train --prefetch`: warm epochs starved 0.30–0.45 s
        // with 64, 0.20 s without prefetch).
        let concurrency = latency.map_or(MAX_CONCURRENCY, |seconds| {
            ((2.0 * seconds * per_second.max(MIN_RATE)).ceil() as usize)
                .clamp(MIN_CONCURRENCY, MAX_CONCURRENCY)
        });
        while let Some(&position) = deferred.front()
            && fetching.len() < concurrency
        {
            let earlier = plan.prev_same[position as usize];
            let waiting = earlier != NONE && earlier >= given_up && !plan.is_read(earlier);
            if waiting {
                break;
            }
            deferred.pop_front();
            if position < given_up || plan.is_read(position) {
                continue;
            }
            fetching.push(launch(position));
        }
        while next < len
            && fetching.len() < concurrency
            && next < front.saturating_add(window)
            && (budget.room()
                >= (fetching.len() as u64 + 1)
                    * typical.unwrap_or(parts.chunks.chunk_size().min(1 << 20))
                || (fetching.is_empty() && budget.room() > 0))
        {
            let position = next;
            next += 1;
            if plan.is_read(position) {
                continue;
            }
            let earlier = plan.prev_same[position as usize];
            if earlier != NONE && !plan.is_read(earlier) {
                deferred.push_back(position);
                continue;
            }
            fetching.push(launch(position));
        }
        plan.next.store(next, Ordering::Relaxed);
        if next >= len && fetching.is_empty() && deferred.is_empty() {
            plan.done.store(true, Ordering::Relaxed);
            break;
        }
        tokio::select! {
            Some((fetched, took)) = fetching.next(), if !fetching.is_empty() => match fetched {
                Ok((size, fetched)) => {
                    if fetched {
                        let took = took.as_secs_f64();
                        latency = Some(latency.map_or(took, |l| 0.9 * l + 0.1 * took));
                    }
                    plan.fetched.fetch_add(1, Ordering::Relaxed);
                    if size > 0 {
                        // A running mean over recent samples.
                        typical = Some(typical.map_or(size, |t| (t * 7 + size) / 8));
                    }
                }
                Err(err) => {
                    plan.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%err, "prefetch: a sample failed; its reader will fetch it");
                }
            },
            () = plan.wake.notified() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Starts every chunk of the sample at `position` and waits for them:
/// its size, and whether anything had to be fetched.
async fn fetch_sample(
    parts: &PlanParts,
    plan: &Plan,
    key: Arc<str>,
    position: u32,
) -> Result<(u64, bool), OriginError> {
    let object = parts.metadata.object(&key).await?;
    let size = object.meta.size;
    // A reader that got here while the metadata came has its chunks coming
    // already, or has them: fetching them again would only hold them unread.
    if size == 0 || plan.is_read(position) {
        return Ok((size, false));
    }
    // Room for the whole sample first, so that every chunk fetched has a
    // place to wait for its reader (waiting here holds a fetch slot, which
    // is the bound doing its job).
    let budget = parts.chunks.planned().budget();
    while !budget.try_reserve(size) {
        if plan.stopped.load(Ordering::Acquire) || plan.is_read(position) {
            return Ok((size, false));
        }
        if size > budget.capacity() {
            return Ok((size, false));
        }
        tokio::time::sleep(TICK).await;
    }
    let last = ((size - 1) / parts.chunks.chunk_size()) as u32;
    let at = plan.base + u64::from(position);
    let flights: Vec<_> = (0..=last)
        .filter_map(|index| parts.chunks.prefetch_planned(&object, index, at))
        .collect();
    let fetched = !flights.is_empty();
    let mut result = Ok((size, fetched));
    for flight in flights {
        if let Err(err) = flight.await {
            result = Err(err);
        }
    }
    budget.unreserve(size);
    result
}

/// Reads per second, smoothed over the driver's passes.
struct RateMeter {
    at: Instant,
    reads: u64,
    per_second: f64,
}

impl RateMeter {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            reads: 0,
            per_second: 0.0,
        }
    }

    fn update(&mut self, reads: u64) -> f64 {
        let elapsed = self.at.elapsed();
        // Half a second damps the burst of an epoch's start, when every
        // loader worker fills its queue at once.
        if elapsed >= Duration::from_millis(500) {
            let now = (reads - self.reads) as f64 / elapsed.as_secs_f64();
            self.per_second = if self.per_second == 0.0 {
                now
            } else {
                0.5 * self.per_second + 0.5 * now
            };
            self.at = Instant::now();
            self.reads = reads;
        }
        self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two epochs of `n` keys: in key order, then reversed.
    fn two_epochs(n: u32) -> Plan {
        let keys = Arc::new(KeyList::new(
            (0..n).map(|i| Arc::from(format!("k{i}"))).collect(),
        ));
        let order = (0..n).chain((0..n).rev()).collect();
        Plan::new(keys, order, 0)
    }

    fn plan_of(keys: &[u32]) -> Plan {
        let names = Arc::new(KeyList::new(
            (0..100).map(|i| Arc::from(format!("k{i}"))).collect(),
        ));
        Plan::new(names, keys.to_vec(), 0)
    }

    #[test]
    fn an_order_continues_the_last_where_its_first_samples_begin() {
        // This epoch and the next, then the next and the one after.
        let last = plan_of(&[3, 1, 2, 0, 2, 0, 3, 1]);
        assert_eq!(
            last.continued_at(&plan_of(&[2, 0, 3, 1, 1, 3, 0, 2])),
            Some(4)
        );
        // The same order posted again; or only the part still to read.
        assert_eq!(
            last.continued_at(&plan_of(&[3, 1, 2, 0, 2, 0, 3, 1])),
            Some(0)
        );
        assert_eq!(last.continued_at(&plan_of(&[0, 3, 1])), Some(5));
        // Another order (its first key is at 2 and 4, the rest differs).
        assert_eq!(last.continued_at(&plan_of(&[2, 1, 3, 0])), None);
        assert_eq!(last.continued_at(&plan_of(&[9])), None);
        assert_eq!(last.continued_at(&plan_of(&[])), None);
    }

    #[test]
    fn orders_over_one_key_list_compare_indices() {
        let names = Arc::new(KeyList::new(
            ["a", "b", "a", "c"].iter().map(|&k| Arc::from(k)).collect(),
        ));
        // Index 2 repeats "a": the same key as index 0.
        let last = Plan::new(Arc::clone(&names), vec![1, 0, 3, 2, 1], 0);
        let next = Plan::new(Arc::clone(&names), vec![0, 3, 2, 1, 3], 0);
        assert_eq!(last.continued_at(&next), Some(1));
        let other = Plan::new(names, vec![3, 3], 0);
        assert_eq!(last.continued_at(&other), None);
        // "a" is read at positions 1 and 3, one key.
        assert_eq!(last.claim("a"), Some(1));
        assert_eq!(last.claim("a"), Some(3));
    }

    #[test]
    fn a_continuing_order_takes_over_what_was_read() {
        let last = plan_of(&[3, 1, 2, 0, 2, 0, 3, 1]);
        for key in ["k3", "k1", "k2", "k0", "k2"] {
            assert!(last.claim(key).is_some());
        }
        let next = plan_of(&[2, 0, 3, 1, 1, 3, 0, 2]);
        last.hand_over(4, &next);
        assert!(next.is_read(0) && !next.is_read(1));
        assert_eq!(next.front.load(Ordering::Relaxed), 1);
        assert_eq!(next.reads.load(Ordering::Relaxed), 5);
        // The next read of k0 is its position in the epoch now read.
        assert_eq!(next.claim("k0"), Some(1));
    }

    #[tokio::test]
    async fn an_order_prepared_before_another_was_started_is_compared_with_that_one() {
        let config = ferry_config::from_yaml(
            "role: worker\ndatasets:\n  - { name: set-d, origin: \"synthetic://?count=8\" }\n",
            "test.yaml",
        )
        .expect("config");
        let datasets = crate::dataset::Datasets::from_config(&config, None).expect("built");
        let dataset = datasets.get("set-d").expect("the data set");
        let parts = || PlanParts {
            metadata: Arc::clone(&dataset.metadata),
            chunks: Arc::clone(&dataset.chunks),
            metrics: Arc::clone(&dataset.metrics),
        };
        let keys: Keys = Arc::new(KeyList::new(
            (0..8).map(|i| Arc::from(format!("k{i}"))).collect(),
        ));
        let prefetch = &dataset.prefetch;
        let base = || prefetch.active.load_full().expect("an order").base;
        prefetch.start(
            prefetch.prepare(Arc::clone(&keys), vec![0, 1, 2, 3, 4, 5, 6, 7]),
            parts(),
        );
        // Two posts race: both are prepared against the first order; the
        // one that continues it (from position 4) starts second.
        let continuing = prefetch.prepare(Arc::clone(&keys), vec![4, 5, 6, 7, 0, 1, 2, 3]);
        let other = prefetch.prepare(Arc::clone(&keys), vec![3, 2, 1, 0, 4, 7, 6, 5]);
        prefetch.start(other, parts());
        assert_eq!(base(), 8, "the other order replaced the first");
        prefetch.start(continuing, parts());
        assert_eq!(
            base(),
            16,
            "it does not continue the order now current: it replaces it"
        );
        prefetch.stop(&dataset.chunks);
    }

    #[test]
    fn a_second_read_of_a_sample_right_after_the_first_takes_no_position() {
        let plan = two_epochs(2000);
        assert_eq!(plan.claim("k0"), Some(0));
        // A ranged reader's next part of the same sample: its next epoch's
        // position (3,999) is far ahead and its last read was just now.
        assert_eq!(plan.claim("k0"), None);
        assert_eq!(plan.front.load(Ordering::Relaxed), 1);
        assert_eq!(plan.claim("unknown"), None);
    }

    #[test]
    fn a_sample_read_again_an_epoch_later_takes_its_next_position() {
        let plan = two_epochs(2000);
        for i in 0..2000 {
            assert_eq!(plan.claim(&format!("k{i}")), Some(i));
        }
        // Past the reach of the front (2,000 + two windows), but k0 was last
        // read 2,000 reads ago: this is its next epoch's turn.
        assert_eq!(plan.claim("k0"), Some(3999));
        assert_eq!(plan.claim("k1999"), Some(2000));
        assert!(plan.is_read(3999) && plan.is_read(2000) && !plan.is_read(2001));
    }
}
