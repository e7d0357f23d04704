//! The chunk layer: a byte range becomes aligned chunks; each chunk comes from
//! the cache, from a fetch already in flight, or from one new upstream fetch.
//! Bytes in flight are bounded; sequential readers get read-ahead. Every
//! front door (S3, the mount) reads through [`ChunkStore::read`].

mod planned;
mod readahead;
mod staging;

use std::ops::{Range, RangeInclusive};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::cache::{ChunkCache, ChunkKey, DiskTier};
use crate::flight::SingleFlight;
use crate::metadata::ObjectInfo;
use crate::origin::OriginError;
use crate::telemetry::DatasetMetrics;
use crate::upstream::Upstream;

pub use planned::{Planned, PlannedBudget};
pub use readahead::SequentialDetector;
pub use staging::Staging;

/// The chunks that hold `range` (non-empty) of an object cut in `chunk_size` pieces.
pub fn chunks_of(range: &Range<u64>, chunk_size: u64) -> RangeInclusive<u32> {
    let first = range.start / chunk_size;
    let last = (range.end - 1) / chunk_size;
    (first as u32)..=(last as u32)
}

/// The byte range of chunk `index` of an object of `size` bytes.
pub fn chunk_range(index: u32, chunk_size: u64, size: u64) -> Range<u64> {
    let start = u64::from(index) * chunk_size;
    start..(start + chunk_size).min(size)
}

/// Memory accounting unit for bytes in flight.
const BUDGET_UNIT: u64 = 64 * 1024;

/// Bytes of chunks being fetched, shared by every data set of a proxy.
pub struct FetchBudget {
    permits: Semaphore,
    total_units: u32,
}

impl FetchBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Arc<Self> {
        let total_units = u32::try_from((bytes / BUDGET_UNIT).max(1)).unwrap_or(u32::MAX >> 4);
        Arc::new(Self {
            permits: Semaphore::new(total_units as usize),
            total_units,
        })
    }

    /// Units a chunk of `len` bytes takes; never more than the whole budget, so
    /// one chunk larger than the budget still proceeds (alone).
    fn units(&self, len: u64) -> u32 {
        (len.div_ceil(BUDGET_UNIT) as u32).clamp(1, self.total_units)
    }

    /// Bytes in flight now.
    pub fn in_use(&self) -> u64 {
        u64::from(self.total_units - self.permits.available_permits() as u32) * BUDGET_UNIT
    }
}

/// Where a chunk came from, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The hot cache in memory.
    Cache,
    /// A read-ahead chunk kept aside because the cache did not admit it.
    Staged,
    /// A chunk fetched ahead for a posted read order.
    Prefetched,
    /// A fetch another request had started.
    Joined,
    /// A fetch this request started.
    Fetched,
}

impl Source {
    /// How a trace names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "hit",
            Self::Staged => "read-ahead",
            Self::Prefetched => "prefetched",
            Self::Joined => "joined fetch",
            Self::Fetched => "miss",
        }
    }
}

/// Whether a read may have the chunks after it fetched in advance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAhead {
    /// When this reader looks sequential (an app's front door: S3, the mount).
    IfSequential,
    /// Never: a worker serving a sidecar, which reads ahead itself, chunk by
    /// chunk, from each chunk's owner (a worker reading ahead would cache
    /// chunks other workers own).
    Never,
}

/// Where a fetched chunk is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// In the hot cache, if it admits it (a reader's miss).
    Cache,
    /// In the hot cache, else in staging (read-ahead).
    CacheOrStaging,
    /// In the planned buffer, for this position (counted across orders).
    Planned(u64),
}

/// What a warm-up step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warmed {
    /// A tier held the chunk already (or a reader was fetching it).
    Held,
    /// It was fetched from upstream: this many bytes.
    Fetched(u64),
}

/// The bytes of one read: the first chunk's share in hand (so a failure
/// shows before a response starts), the rest as they arrive, in order.
pub struct ChunkRead {
    /// Where the first chunk came from.
    pub first_source: Source,
    /// The first chunk's bytes of the range.
    pub head: Bytes,
    /// The other chunks' bytes; an error ends the read, which must then be
    /// aborted, never padded or cut short silently.
    pub rest: Option<BoxStream<'static, Result<Bytes, OriginError>>>,
}

/// Chunks of one data set.
pub struct ChunkStore {
    cache: ChunkCache,
    disk: Option<Arc<DiskTier>>,
    staging: Staging,
    planned: Planned,
    flights: Arc<SingleFlight<ChunkKey, Bytes, OriginError>>,
    upstream: Upstream,
    budget: Arc<FetchBudget>,
    chunk_size: u64,
    read_ahead: u32,
    sequential: SequentialDetector,
    timeout: Duration,
    metrics: Arc<DatasetMetrics>,
}

fn lost() -> OriginError {
    OriginError::Unavailable {
        origin: "origin".to_owned(),
        detail: "the chunk fetch task failed".to_owned(),
    }
}

/// What a [`ChunkStore`] is made of.
pub struct ChunkStoreParts {
    /// The hot cache.
    pub cache: ChunkCache,
    /// The local-disk tier below it, on workers that have one.
    pub disk: Option<Arc<DiskTier>>,
    /// Upstream: the origin, or the worker pool.
    pub upstream: Upstream,
    /// Shared bound on bytes in flight.
    pub budget: Arc<FetchBudget>,
    /// Bytes of read-ahead kept aside when the cache does not admit it.
    pub staging_bytes: u64,
    /// Bound on chunks fetched ahead for posted read orders (all data sets).
    pub planned_budget: Arc<PlannedBudget>,
    /// Chunk size.
    pub chunk_size: u64,
    /// Chunks fetched ahead of a sequential reader.
    pub read_ahead: u32,
    /// Deadline of one upstream fetch.
    pub timeout: Duration,
    /// Metrics.
    pub metrics: Arc<DatasetMetrics>,
}

impl ChunkStore {
    /// A store from its parts.
    pub fn new(parts: ChunkStoreParts) -> Self {
        Self {
            cache: parts.cache,
            disk: parts.disk,
            staging: Staging::new(parts.staging_bytes),
            planned: Planned::new(parts.planned_budget),
            flights: Arc::new(SingleFlight::new(lost)),
            upstream: parts.upstream,
            budget: parts.budget,
            chunk_size: parts.chunk_size,
            read_ahead: parts.read_ahead,
            sequential: SequentialDetector::default(),
            timeout: parts.timeout,
            metrics: parts.metrics,
        }
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The most bytes one read's stream holds at once: its first chunk and
    /// the window of chunks after it.
    pub fn window_bytes(&self) -> u64 {
        (u64::from(self.read_ahead.max(1)) + 2) * self.chunk_size
    }

    /// The hot cache.
    pub fn cache(&self) -> &ChunkCache {
        &self.cache
    }

    /// Chunks fetched ahead for a posted read order.
    pub fn planned(&self) -> &Planned {
        &self.planned
    }

    /// The disk tier, if there is one.
    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    /// The bytes of `range` (non-empty, within the object) of `object`:
    /// the first chunk fetched now, the rest streamed in order as they
    /// arrive, a window of read-ahead deep; with `ahead` and a reader that
    /// goes front to back, the chunks after it are fetched in advance. Each
    /// chunk is checked against its place in the object.
    pub async fn read(
        self: &Arc<Self>,
        object: &Arc<ObjectInfo>,
        range: Range<u64>,
        ahead: ReadAhead,
    ) -> Result<ChunkRead, OriginError> {
        let chunk_size = self.chunk_size;
        let chunks = chunks_of(&range, chunk_size);
        let (first, last) = (*chunks.start(), *chunks.end());
        if ahead == ReadAhead::IfSequential
            && self.read_ahead > 0
            && object.meta.size > chunk_size
            && self.sequential.observe(object.fingerprint, first, last)
        {
            let final_chunk = ((object.meta.size - 1) / chunk_size) as u32;
            for index in (last + 1)..=last.saturating_add(self.read_ahead).min(final_chunk) {
                let _ = self.prefetch(object, index);
            }
        }
        // A chunk memory holds is an attribute of the caller's span; a
        // lookup that has to wait (for a worker, the disk or the origin)
        // gets a span of its own. A traced hit thus costs one span, not two.
        let (chunk, first_source) = match self.get_in_memory(object, first) {
            Some(found) => found,
            None => {
                let lookup = tracing::debug_span!(
                    "cache lookup",
                    chunk = first,
                    chunks = last - first + 1,
                    outcome = tracing::field::Empty,
                );
                let found = self.fetch(object, first).instrument(lookup.clone()).await?;
                if !lookup.is_disabled() {
                    lookup.record("outcome", found.1.as_str());
                }
                found
            }
        };
        check_chunk(&chunk, first, chunk_size, object)?;
        let head = slice_in_range(&chunk, first, chunk_size, &range);
        if first == last {
            return Ok(ChunkRead {
                first_source,
                head,
                rest: None,
            });
        }
        let window = self.read_ahead.max(1) as usize + 1;
        let this = Arc::clone(self);
        let object = Arc::clone(object);
        let rest = stream::iter((first + 1)..=last)
            .map(move |index| {
                let this = Arc::clone(&this);
                let object = Arc::clone(&object);
                let range = range.clone();
                async move {
                    let (chunk, _) = this.get(&object, index).await?;
                    check_chunk(&chunk, index, chunk_size, &object)?;
                    Ok(slice_in_range(&chunk, index, chunk_size, &range))
                }
            })
            .buffered(window)
            .boxed();
        Ok(ChunkRead {
            first_source,
            head,
            rest: Some(rest),
        })
    }

    /// Chunk `index` of `object`, fetched once however many ask at once.
    pub async fn get(
        self: &Arc<Self>,
        object: &Arc<ObjectInfo>,
        index: u32,
    ) -> Result<(Bytes, Source), OriginError> {
        match self.get_in_memory(object, index) {
            Some(found) => Ok(found),
            None => self.fetch(object, index).await,
        }
    }

    /// Chunk `index` of `object` if memory holds it (counted as a hit).
    pub fn get_in_memory(&self, object: &ObjectInfo, index: u32) -> Option<(Bytes, Source)> {
        let key = ChunkKey {
            object: object.fingerprint,
            index,
        };
        if let Some(chunk) = self.cache.get(&key) {
            self.metrics.memory.hits.increment(1);
            return Some((chunk, Source::Cache));
        }
        if let Some(chunk) = self.staging.take(&key) {
            self.metrics.memory.hits.increment(1);
            return Some((chunk, Source::Staged));
        }
        if let Some(chunk) = self.planned.take(&key) {
            self.metrics.memory.hits.increment(1);
            // From here on the chunk is what a miss would have brought in:
            // the cache admits it or not by its own policy.
            self.cache.insert(key, chunk.clone());
            return Some((chunk, Source::Prefetched));
        }
        None
    }

    /// Chunk `index` of `object` after [`Self::get_in_memory`] missed:
    /// counted as a miss, then fetched (or joined).
    pub async fn fetch(
        self: &Arc<Self>,
        object: &Arc<ObjectInfo>,
        index: u32,
    ) -> Result<(Bytes, Source), OriginError> {
        let key = ChunkKey {
            object: object.fingerprint,
            index,
        };
        self.metrics.memory.misses.increment(1);
        let (flight, started) = self.start_fetch(key, object, Keep::Cache);
        let chunk = flight.await?;
        if !started {
            // A prefetch this read joined put the chunk in the planned
            // buffer for this very read: it has it now.
            self.planned.take(&key);
        }
        Ok((
            chunk,
            if started {
                Source::Fetched
            } else {
                Source::Joined
            },
        ))
    }

    /// Starts fetching chunk `index` in the background unless it is cached or
    /// already coming; skipped when the fetch budget is exhausted. Returns the
    /// fetch it started, if any.
    pub fn prefetch(
        self: &Arc<Self>,
        object: &Arc<ObjectInfo>,
        index: u32,
    ) -> Option<crate::flight::Flight<Bytes, OriginError>> {
        let key = ChunkKey {
            object: object.fingerprint,
            index,
        };
        if self.held_or_coming(&key) {
            return None;
        }
        let len = chunk_range(index, self.chunk_size, object.meta.size);
        let units = self.budget.units(len.end - len.start);
        // Read-ahead never waits for memory: it is only worth doing when cheap.
        if self.budget.permits.available_permits() < units as usize {
            return None;
        }
        self.metrics.readahead.increment(1);
        Some(self.start_fetch(key, object, Keep::CacheOrStaging).0)
    }

    /// Starts fetching chunk `index` of `object` for `position` of a posted
    /// read order, to be held in the planned buffer until read; `None` when
    /// it is in memory or already coming. Unlike read-ahead it waits for
    /// fetch memory: the prefetcher bounds itself.
    pub fn prefetch_planned(
        self: &Arc<Self>,
        object: &Arc<ObjectInfo>,
        index: u32,
        position: u64,
    ) -> Option<crate::flight::Flight<Bytes, OriginError>> {
        let key = ChunkKey {
            object: object.fingerprint,
            index,
        };
        if self.held_or_coming(&key) {
            return None;
        }
        self.metrics.prefetched.increment(1);
        Some(self.start_fetch(key, object, Keep::Planned(position)).0)
    }

    /// Whether the hot cache or the disk tier holds chunk `index` of `object`.
    pub fn holds(&self, object: &ObjectInfo, index: u32) -> bool {
        self.holds_key(&ChunkKey {
            object: object.fingerprint,
            index,
        })
    }

    fn holds_key(&self, key: &ChunkKey) -> bool {
        self.cache.contains(key) || self.disk.as_ref().is_some_and(|d| d.contains(key))
    }

    /// Makes sure this proxy holds chunk `index` of `object`, fetching it
    /// into the cache (and the disk tier) unless a tier has it: a warm-up's
    /// step. Not counted as a hit or a miss: no reader asked.
    pub async fn warm(
        self: &Arc<Self>,
        object: &Arc<ObjectInfo>,
        index: u32,
    ) -> Result<Warmed, OriginError> {
        let key = ChunkKey {
            object: object.fingerprint,
            index,
        };
        if self.holds_key(&key) {
            return Ok(Warmed::Held);
        }
        let (flight, started) = self.start_fetch(key, object, Keep::Cache);
        let chunk = flight.await?;
        Ok(if started {
            Warmed::Fetched(chunk.len() as u64)
        } else {
            Warmed::Held
        })
    }

    /// Whether memory holds the chunk (cache, staging, planned buffer) or a
    /// fetch of it is under way: fetching it ahead would gain nothing.
    fn held_or_coming(&self, key: &ChunkKey) -> bool {
        self.flights.contains(key)
            || self.cache.get(key).is_some()
            || self.staging.contains(key)
            || self.planned.contains(key)
    }

    fn start_fetch(
        self: &Arc<Self>,
        key: ChunkKey,
        object: &Arc<ObjectInfo>,
        keep: Keep,
    ) -> (crate::flight::Flight<Bytes, OriginError>, bool) {
        let this = Arc::clone(self);
        let object = Arc::clone(object);
        self.flights.join_or_start(key, move || {
            // Created here, in the requester's span, and carried into the
            // fetch's own task.
            let span = tracing::debug_span!(
                "chunk fetch",
                chunk = key.index,
                read_ahead = keep != Keep::Cache
            );
            Box::pin(
                async move {
                    let range = chunk_range(key.index, this.chunk_size, object.meta.size);
                    if let Some(disk) = &this.disk {
                        if let Some(chunk) = disk.get(key).await
                            && chunk.len() as u64 == range.end - range.start
                        {
                            this.metrics.disk.hits.increment(1);
                            this.keep(key, &chunk, keep);
                            return Ok(chunk);
                        }
                        this.metrics.disk.misses.increment(1);
                    }
                    let units = this.budget.units(range.end - range.start);
                    let _permit = this
                        .budget
                        .permits
                        .acquire_many(units)
                        .await
                        .map_err(|_| lost())?;
                    this.metrics.origin_gets.increment(1);
                    let started = Instant::now();
                    let read =
                        this.upstream
                            .read(&object.meta.key, range.clone(), &object.meta.etag);
                    // A pool's attempts have spans of their own; an origin read is one.
                    let span = match &this.upstream {
                        Upstream::Pool(_) => tracing::Span::none(),
                        Upstream::Origin(origin) => tracing::debug_span!(
                            "origin fetch",
                            otel.kind = "client",
                            origin = origin.describe(),
                            bytes = range.end - range.start,
                        ),
                    };
                    let read = if span.is_disabled() {
                        read
                    } else {
                        Box::pin(read.instrument(span))
                    };
                    let fetched = tokio::time::timeout(this.timeout, read)
                        .await
                        .unwrap_or_else(|_| {
                            Err(OriginError::unavailable(
                                this.upstream.describe(),
                                format!(
                                    "chunk {} of '{}' got no answer within {:?}",
                                    key.index, object.meta.key, this.timeout
                                ),
                            ))
                        });
                    this.metrics.origin_latency.record(started.elapsed());
                    let chunk = fetched.inspect_err(|_| this.metrics.origin_errors.increment(1))?;
                    this.metrics.origin_bytes.increment(chunk.len() as u64);
                    this.keep(key, &chunk, keep);
                    if let Some(disk) = &this.disk {
                        disk.put(key, chunk.clone());
                    }
                    Ok(chunk)
                }
                .instrument(span),
            )
        })
    }

    /// Puts a fetched chunk in memory: a reader's in the cache; read-ahead
    /// the cache refuses in staging; a planned one in the planned buffer
    /// (or, if that is full, where read-ahead goes).
    fn keep(&self, key: ChunkKey, chunk: &Bytes, keep: Keep) {
        if let Keep::Planned(position) = keep
            && self.planned.put(key, chunk.clone(), position)
        {
            return;
        }
        if !self.cache.insert(key, chunk.clone()) && keep != Keep::Cache {
            self.staging.put(key, chunk.clone());
        }
    }

    /// Bytes of chunks being fetched now (all data sets).
    pub fn inflight_bytes(&self) -> u64 {
        self.budget.in_use()
    }
}

/// The part of chunk `index` (holding `chunk`) that falls inside `range`.
fn slice_in_range(chunk: &Bytes, index: u32, chunk_size: u64, range: &Range<u64>) -> Bytes {
    let chunk_start = u64::from(index) * chunk_size;
    let from = range.start.max(chunk_start) - chunk_start;
    let to = range.end.min(chunk_start + chunk.len() as u64) - chunk_start;
    chunk.slice(from as usize..to as usize)
}

/// A chunk must be exactly as long as its place in the object says.
fn check_chunk(
    chunk: &Bytes,
    index: u32,
    chunk_size: u64,
    object: &ObjectInfo,
) -> Result<(), OriginError> {
    let expected = chunk_range(index, chunk_size, object.meta.size);
    if chunk.len() as u64 == expected.end - expected.start {
        Ok(())
    } else {
        Err(OriginError::Corrupt {
            key: object.meta.key.clone(),
            detail: format!(
                "chunk {index} has {} bytes where {} were expected",
                chunk.len(),
                expected.end - expected.start
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_to_covering_chunks() {
        assert_eq!(chunks_of(&(0..1), 10), 0..=0);
        assert_eq!(chunks_of(&(0..10), 10), 0..=0);
        assert_eq!(chunks_of(&(9..11), 10), 0..=1);
        assert_eq!(chunks_of(&(10..30), 10), 1..=2);
        assert_eq!(chunk_range(2, 10, 25), 20..25);
        assert_eq!(chunk_range(0, 10, 5), 0..5);
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use futures::future::BoxFuture;

    use crate::cache::CacheCounters;
    use crate::origin::{ListPage, ObjectMeta, Origin};
    use ferry_config::{ByteSize, CachePolicy, CacheSpec};

    /// An origin that records how many reads run at once.
    #[derive(Default)]
    struct GaugedOrigin {
        running: AtomicUsize,
        most: AtomicUsize,
        reads: AtomicUsize,
    }

    impl Origin for GaugedOrigin {
        fn describe(&self) -> &str {
            "test://"
        }
        fn head<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
            Box::pin(async { Err(lost()) })
        }
        fn read<'a>(
            &'a self,
            _: &'a str,
            range: Range<u64>,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
            Box::pin(async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                self.reads.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
                Ok(Bytes::from(vec![1u8; (range.end - range.start) as usize]))
            })
        }
        fn list<'a>(
            &'a self,
            _: &'a str,
            _: Option<&'a str>,
            _: usize,
        ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
            Box::pin(async { Ok(ListPage::default()) })
        }
    }

    fn store(origin: Arc<GaugedOrigin>, budget_bytes: u64, cache: ByteSize) -> Arc<ChunkStore> {
        let metrics = Arc::new(DatasetMetrics::new("test"));
        Arc::new(ChunkStore::new(ChunkStoreParts {
            cache: ChunkCache::new(
                CacheSpec {
                    size: cache,
                    policy: CachePolicy::Pin,
                },
                CacheCounters {
                    evictions: metrics::Counter::noop(),
                    rejections: metrics::Counter::noop(),
                },
            ),
            disk: None,
            upstream: Upstream::Origin(origin),
            budget: FetchBudget::new(budget_bytes),
            staging_bytes: 1 << 20,
            planned_budget: PlannedBudget::new(1 << 20),
            chunk_size: 64 * 1024,
            read_ahead: 4,
            timeout: Duration::from_secs(5),
            metrics,
        }))
    }

    fn object(size: u64) -> Arc<ObjectInfo> {
        Arc::new(ObjectInfo::new(
            ObjectMeta {
                key: "k".into(),
                size,
                etag: "e".into(),
                modified: SystemTime::UNIX_EPOCH,
            },
            3,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_in_flight_stay_within_the_budget() {
        let origin = Arc::new(GaugedOrigin::default());
        // Room for exactly one 64 KiB chunk at a time.
        let store = store(origin.clone(), 64 * 1024, ByteSize::mib(1));
        let object = object(8 * 64 * 1024);
        let fetches = (0..8u32).map(|index| {
            let store = store.clone();
            let object = object.clone();
            tokio::spawn(async move { store.get(&object, index).await })
        });
        for fetch in futures::future::join_all(fetches).await {
            let (chunk, source) = fetch.expect("task").expect("chunk");
            assert_eq!(chunk.len(), 64 * 1024);
            assert_eq!(source, Source::Fetched);
        }
        assert_eq!(origin.reads.load(Ordering::SeqCst), 8);
        assert_eq!(
            origin.most.load(Ordering::SeqCst),
            1,
            "never two chunks in flight"
        );
        assert_eq!(store.inflight_bytes(), 0);
        let (_, source) = store.get(&object, 3).await.expect("cached");
        assert_eq!(source, Source::Cache);
    }

    #[tokio::test]
    async fn read_ahead_waits_in_staging_when_the_cache_is_full() {
        let origin = Arc::new(GaugedOrigin::default());
        let store = store(origin.clone(), 1 << 20, ByteSize(0));
        let object = object(4 * 64 * 1024);
        let fetch = store.prefetch(&object, 2).expect("started");
        assert!(
            store.prefetch(&object, 2).is_none(),
            "already coming: not fetched twice"
        );
        fetch.await.expect("fetched");
        assert_eq!(origin.reads.load(Ordering::SeqCst), 1);
        let (_, source) = store.get(&object, 2).await.expect("staged");
        assert_eq!(
            source,
            Source::Staged,
            "kept aside although the cache admits nothing"
        );
        let (_, source) = store.get(&object, 2).await.expect("refetched");
        assert_eq!(source, Source::Fetched, "staging gives each chunk once");
    }

    #[test]
    fn one_chunk_never_needs_more_than_the_budget() {
        let budget = FetchBudget::new(1024 * 1024);
        assert_eq!(budget.units(100 * 1024 * 1024), 16);
        assert_eq!(budget.units(1), 1);
        assert_eq!(budget.in_use(), 0);
    }
}
