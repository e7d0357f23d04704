//! Warm-up: a worker loads its share of a data set into its cache before
//! any reader asks. The pool lists the data set once (one worker lists
//! the origin, the others page through its listing: [`listing`]), ahead
//! of the fetches (so the progress totals are known early), and each
//! worker queues the objects with chunks it owns (as many as the listing
//! cache may hold), and fetches each chunk
//! it owns
//! under the pool's weighted rendezvous ranking (the one sidecars route
//! by), so a warmed pool answers epoch 1 from cache with no spill. Chunks a
//! tier already holds are skipped, so a stopped warm-up resumes where it
//! was; origin fetches are bounded in number and bytes per second, and the
//! whole warm-up by what the cache can hold. One bad object is listed and
//! the rest go on.

pub mod listing;
pub mod request;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use crate::chunk::{ChunkStore, Warmed, chunk_range};
use crate::metadata::{MetadataCache, ObjectInfo};
use crate::origin::ObjectMeta;
use crate::outbound::balance::rendezvous::{self, chunk_route};
use crate::telemetry::DatasetMetrics;
pub use ferry_config::warm::{ObjectError, WarmState, WarmStatus};
use listing::Lister;
pub use listing::Peers;
pub use request::{BadWarmUp, WarmMember, WarmRequest};

/// Marks a listing read to its end (no key is empty, so none is this).
const END: &str = "";
/// Failed objects whose key and error are kept for the status; the rest are counted.
const ERRORS_KEPT: usize = 1000;

/// What a warm-up works on: one data set's parts.
#[derive(Clone)]
pub struct WarmParts {
    /// The data set's name.
    pub dataset: String,
    /// Its chunks.
    pub chunks: Arc<ChunkStore>,
    /// Its metadata (listings come from the origin through it).
    pub metadata: Arc<MetadataCache>,
    /// Its metrics.
    pub metrics: Arc<DatasetMetrics>,
    /// Bytes its tiers can hold: the disk tier's, else the memory cache's.
    pub capacity: u64,
    /// Its bucket, as other workers serve it.
    pub bucket: String,
    /// How to reach the worker of the pool that lists the data set.
    pub peers: Option<Peers>,
}

/// The warm-up of one data set on this proxy: at most one at a time.
#[derive(Default)]
pub struct Warmer {
    job: Mutex<Option<Arc<Job>>>,
    /// What the last warm-up the configuration started was asked.
    configured: Mutex<Option<String>>,
}

impl Warmer {
    /// Starts warming as the configuration asks (`warm: on_start`, or a
    /// control plane's order), unless the last such warm-up was asked the
    /// same (same pool, bounds and order): a snapshot that changes
    /// something else starts nothing.
    pub fn start_as_configured(
        &self,
        parts: WarmParts,
        request: WarmRequest,
    ) -> Result<(), BadWarmUp> {
        let asked = format!("{request:?}");
        let mut last = self.configured.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(asked.as_str()) {
            return Ok(());
        }
        self.start(parts, request)?;
        *last = Some(asked);
        Ok(())
    }

    /// Starts warming `parts` as `request` says, stopping a warm-up already
    /// running (what it fetched stays, and is skipped by this one).
    pub fn start(&self, parts: WarmParts, request: WarmRequest) -> Result<WarmStatus, BadWarmUp> {
        let plan = request.plan()?;
        let job = Arc::new(Job::new(&parts, plan));
        let previous = self.lock().replace(Arc::clone(&job));
        if let Some(previous) = previous {
            previous.stop();
        }
        parts.metrics.warm_in_progress.set(1.0);
        let runner = Arc::clone(&job);
        let handle = tokio::spawn(async move { runner.run(parts).await });
        *job.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.abort_handle());
        Ok(job.status())
    }

    /// Stops the running warm-up, if any; its status.
    pub fn stop(&self) -> Option<WarmStatus> {
        let job = self.lock().clone()?;
        job.stop();
        Some(job.status())
    }

    /// The status of the last warm-up, if one was started.
    pub fn status(&self) -> Option<WarmStatus> {
        self.lock().as_ref().map(|job| job.status())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Job>>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Warmer {
    /// A data set gone (its last version dropped) stops its warm-up: its
    /// caches are going with it.
    fn drop(&mut self) {
        let job = self.job.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(job) = job {
            job.stop();
        }
    }
}

/// A warm-up's settings, checked.
#[derive(Clone, Debug)]
pub struct WarmPlan {
    prefix: String,
    member: String,
    /// Members as (hash, weight), in the request's order.
    members: Vec<(u64, u32)>,
    /// Their addresses, in the same order.
    addresses: Vec<String>,
    /// This worker's index in `members`.
    me: usize,
    concurrency: usize,
    bytes_per_second: Option<u64>,
    order: Option<u64>,
}

struct Job {
    dataset: String,
    plan: WarmPlan,
    capacity: u64,
    started: Instant,
    started_at: u64,
    ended: Mutex<Option<Instant>>,
    state: AtomicU8,
    listing_done: AtomicBool,
    objects_total: AtomicU64,
    objects_done: AtomicU64,
    objects_failed: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    bytes_fetched: AtomicU64,
    bytes_not_warmed: AtomicU64,
    chunks_fetched: AtomicU64,
    chunks_held: AtomicU64,
    /// Bytes this warm-up holds or is fetching: checked against `capacity`.
    admitted: AtomicU64,
    capacity_reached: AtomicBool,
    errors: Mutex<Vec<ObjectError>>,
    failure: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// The data set's `warm_in_progress` gauge, cleared when it ends.
    in_progress: metrics::Gauge,
    /// Bytes reserved so far under the bytes-per-second bound.
    paced: AtomicU64,
}

/// One listed object's chunks that this worker owns, and how many are left.
struct Owned {
    object: Arc<ObjectInfo>,
    chunks: Vec<u32>,
    /// Whether this worker owns the object's first chunk: the one worker
    /// of the pool that counts the object, so the pool's sum is exact.
    counted: bool,
    remaining: AtomicU32,
    failed: AtomicBool,
    incomplete: AtomicBool,
}

impl Job {
    fn new(parts: &WarmParts, plan: WarmPlan) -> Self {
        Self {
            dataset: parts.dataset.clone(),
            plan,
            capacity: parts.capacity,
            started: Instant::now(),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ended: Mutex::new(None),
            state: AtomicU8::new(0),
            listing_done: AtomicBool::new(false),
            objects_total: AtomicU64::new(0),
            objects_done: AtomicU64::new(0),
            objects_failed: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_fetched: AtomicU64::new(0),
            bytes_not_warmed: AtomicU64::new(0),
            chunks_fetched: AtomicU64::new(0),
            chunks_held: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            capacity_reached: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            task: Mutex::new(None),
            in_progress: parts.metrics.warm_in_progress.clone(),
            paced: AtomicU64::new(0),
        }
    }

    fn status(&self) -> WarmStatus {
        let load = |n: &AtomicU64| n.load(Ordering::Acquire);
        let ended = *self.ended.lock().unwrap_or_else(|p| p.into_inner());
        WarmStatus {
            dataset: self.dataset.clone(),
            prefix: self.plan.prefix.clone(),
            member: self.plan.member.clone(),
            pool_members: self.plan.members.len(),
            state: state_of(self.state.load(Ordering::Acquire)),
            listing_done: self.listing_done.load(Ordering::Acquire),
            objects_total: load(&self.objects_total),
            objects_done: load(&self.objects_done),
            objects_failed: load(&self.objects_failed),
            bytes_total: load(&self.bytes_total),
            bytes_done: load(&self.bytes_done),
            bytes_fetched: load(&self.bytes_fetched),
            bytes_not_warmed: load(&self.bytes_not_warmed),
            chunks_fetched: load(&self.chunks_fetched),
            chunks_held: load(&self.chunks_held),
            capacity_bytes: self.capacity,
            capacity_reached: self.capacity_reached.load(Ordering::Acquire),
            concurrency: self.plan.concurrency,
            bytes_per_second: self.plan.bytes_per_second,
            order: self.plan.order,
            started_at: self.started_at,
            elapsed_seconds: ended
                .unwrap_or_else(Instant::now)
                .duration_since(self.started)
                .as_secs_f64(),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            failure: self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Ends the warm-up as `state`, unless it already ended.
    fn end(&self, state: WarmState) {
        let code = match state {
            WarmState::Running => return,
            WarmState::Done => 1,
            WarmState::Stopped => 2,
            WarmState::Failed => 3,
        };
        if self
            .state
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.in_progress.set(0.0);
        }
    }

    fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // Fetches already started finish in their own tasks and are kept.
            task.abort();
        }
        self.end(WarmState::Stopped);
    }

    async fn run(self: Arc<Self>, parts: WarmParts) {
        // The listing runs ahead of the fetches by up to the objects the
        // listing cache may hold: the totals are known as soon as the origin
        // has listed them, and a listing of millions still has a bound.
        let queued = parts.metadata.listing_capacity().max(1);
        let (sender, receiver) = mpsc::channel::<Arc<Owned>>(queued);
        let parts = Arc::new(parts);
        // The listing runs as its own task: turning a page into objects (a
        // peer's page is XML) must not hold up the fetches polled here.
        let listing = tokio::spawn({
            let (job, parts) = (Arc::clone(&self), Arc::clone(&parts));
            async move { job.list(&parts, sender).await }
        });
        let _stop_listing = AbortOnDrop(listing.abort_handle());
        let listing = async {
            listing
                .await
                .unwrap_or_else(|e| Err(format!("the listing task ended: {e}")))
        };
        let (job, shared) = (Arc::clone(&self), Arc::clone(&parts));
        let warming = receiver
            .flat_map(|owned| {
                let chunks = owned.chunks.clone();
                futures::stream::iter(chunks.into_iter().map(move |i| (Arc::clone(&owned), i)))
            })
            .for_each_concurrent(self.plan.concurrency, move |(owned, index)| {
                let (job, parts) = (Arc::clone(&job), Arc::clone(&shared));
                async move { job.warm_chunk(&parts, &owned, index).await }
            });
        let (listed, ()) = futures::join!(listing, warming);
        match listed {
            Ok(()) => self.end(WarmState::Done),
            Err(why) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                self.end(WarmState::Failed);
            }
        }
    }

    /// Lists the prefix page by page, counting and sending each object with
    /// chunks this worker owns to the warmers (waiting when the queue is full).
    async fn list(
        &self,
        parts: &WarmParts,
        mut sender: mpsc::Sender<Arc<Owned>>,
    ) -> Result<(), String> {
        let mut lister = Lister::for_plan(&self.plan, parts.peers.as_ref(), &parts.bucket);
        let mut start_after: Option<String> = None;
        while let Some(page) = self.next_page(parts, &mut lister, &mut start_after).await? {
            for meta in page {
                if meta.size == 0 {
                    // Nothing to fetch; counted (warm at once) by the owner
                    // its first chunk would have, so the totals are the data set's.
                    if self.owns(&meta.key, 0) {
                        self.objects_total.fetch_add(1, Ordering::AcqRel);
                        self.objects_done.fetch_add(1, Ordering::AcqRel);
                        parts.metrics.warm_objects.increment(1);
                    }
                    continue;
                }
                let (chunks, bytes) = self.owned(&meta, parts.chunks.chunk_size());
                if chunks.is_empty() {
                    continue;
                }
                let counted = chunks.first() == Some(&0);
                self.objects_total
                    .fetch_add(u64::from(counted), Ordering::AcqRel);
                self.bytes_total.fetch_add(bytes, Ordering::AcqRel);
                let owned = Arc::new(Owned {
                    object: parts.metadata.adopt(meta),
                    remaining: AtomicU32::new(chunks.len() as u32),
                    counted,
                    chunks,
                    failed: AtomicBool::new(false),
                    incomplete: AtomicBool::new(false),
                });
                if sender.send(owned).await.is_err() {
                    return Ok(());
                }
            }
        }
        self.listing_done.store(true, Ordering::Release);
        Ok(())
    }

    /// The next page of the listing after `start_after` (advanced), or
    /// `None` past the end.
    async fn next_page(
        &self,
        parts: &WarmParts,
        lister: &mut Lister,
        start_after: &mut Option<String>,
    ) -> Result<Option<Vec<ObjectMeta>>, String> {
        if start_after.as_deref() == Some(END) {
            return Ok(None);
        }
        let after = start_after.as_deref().unwrap_or_default();
        let page = lister
            .page(&parts.metadata, &self.plan.prefix, after)
            .await
            .map_err(|e| format!("listing '{}': {e}", self.plan.prefix))?;
        *start_after = match (page.truncated, page.objects.last()) {
            (true, Some(last)) => Some(last.key.clone()),
            _ => Some(END.to_owned()),
        };
        Ok(Some(page.objects))
    }

    /// Whether this worker owns the chunk of `key` starting at `offset`.
    fn owns(&self, key: &str, offset: u64) -> bool {
        rendezvous::owner(&self.plan.members, chunk_route(key, offset)) == Some(self.plan.me)
    }

    /// The chunks of `meta` this worker owns, and their bytes.
    fn owned(&self, meta: &ObjectMeta, chunk_size: u64) -> (Vec<u32>, u64) {
        let count = meta.size.div_ceil(chunk_size).min(u64::from(u32::MAX)) as u32;
        let chunks: Vec<u32> = (0..count)
            .filter(|&index| self.owns(&meta.key, u64::from(index) * chunk_size))
            .collect();
        let bytes = chunks
            .iter()
            .map(|&i| {
                let range = chunk_range(i, chunk_size, meta.size);
                range.end - range.start
            })
            .sum();
        (chunks, bytes)
    }

    async fn warm_chunk(&self, parts: &WarmParts, owned: &Owned, index: u32) {
        let range = chunk_range(index, parts.chunks.chunk_size(), owned.object.meta.size);
        let len = range.end - range.start;
        if self.admitted.fetch_add(len, Ordering::AcqRel) + len > self.capacity {
            self.admitted.fetch_sub(len, Ordering::AcqRel);
            self.capacity_reached.store(true, Ordering::Release);
            self.bytes_not_warmed.fetch_add(len, Ordering::AcqRel);
            owned.incomplete.store(true, Ordering::Release);
            return self.chunk_done(parts, owned);
        }
        let outcome = if parts.chunks.holds(&owned.object, index) {
            Ok(Warmed::Held)
        } else {
            self.pace(len).await;
            parts.chunks.warm(&owned.object, index).await
        };
        match outcome {
            Ok(Warmed::Held) => {
                self.chunks_held.fetch_add(1, Ordering::AcqRel);
                self.bytes_done.fetch_add(len, Ordering::AcqRel);
            }
            Ok(Warmed::Fetched(bytes)) => {
                self.chunks_fetched.fetch_add(1, Ordering::AcqRel);
                self.bytes_fetched.fetch_add(bytes, Ordering::AcqRel);
                parts.metrics.warm_bytes.increment(bytes);
                // A full cache (or a disk with writes queued past its bound)
                // may refuse what was fetched: then it is not warm.
                if parts.chunks.holds(&owned.object, index) {
                    self.bytes_done.fetch_add(len, Ordering::AcqRel);
                } else {
                    self.admitted.fetch_sub(len, Ordering::AcqRel);
                    self.capacity_reached.store(true, Ordering::Release);
                    self.bytes_not_warmed.fetch_add(len, Ordering::AcqRel);
                    owned.incomplete.store(true, Ordering::Release);
                }
            }
            Err(err) => {
                self.admitted.fetch_sub(len, Ordering::AcqRel);
                if !owned.failed.swap(true, Ordering::AcqRel) {
                    let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
                    if errors.len() < ERRORS_KEPT {
                        errors.push(ObjectError {
                            key: owned.object.meta.key.clone(),
                            message: err.to_string(),
                        });
                    }
                }
            }
        }
        self.chunk_done(parts, owned);
    }

    /// Counts one of the object's chunks as reached; the last one counts the object.
    fn chunk_done(&self, parts: &WarmParts, owned: &Owned) {
        if owned.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if owned.failed.load(Ordering::Acquire) {
            self.objects_failed.fetch_add(1, Ordering::AcqRel);
        } else if owned.counted && !owned.incomplete.load(Ordering::Acquire) {
            self.objects_done.fetch_add(1, Ordering::AcqRel);
            parts.metrics.warm_objects.increment(1);
        }
    }

    /// Waits until `len` more bytes fit under the bytes-per-second bound:
    /// each fetch is given the slot after the bytes reserved before it.
    async fn pace(&self, len: u64) {
        let Some(rate) = self.plan.bytes_per_second else {
            return;
        };
        let before = self.paced.fetch_add(len, Ordering::AcqRel);
        let due = self.started + Duration::from_secs_f64(before as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Aborts a task when dropped: a stopped warm-up stops its listing too.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A warm-up's state as its job stores it (an atomic byte).
fn state_of(value: u8) -> WarmState {
    match value {
        1 => WarmState::Done,
        2 => WarmState::Stopped,
        3 => WarmState::Failed,
        _ => WarmState::Running,
    }
}
