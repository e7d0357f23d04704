//! Object metadata (size, ETag, date) and listings, cached for the policy's
//! TTL so an epoch makes no repeated HEAD or LIST round trips to the origin.
//! A cached listing also answers metadata lookups for the keys it holds.

mod growing;
pub mod list;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so tests can move time forward instead of sleeping.
use tokio::time::Instant;

use futures::future::BoxFuture;
use http::HeaderValue;

use ferry_config::MetadataTtl;

use crate::flight::SingleFlight;
use crate::origin::wire::LIST_PAGE;
use crate::origin::{ListPage, ObjectMeta, OriginError};
use crate::telemetry::DatasetMetrics;
use crate::upstream::Upstream;
use growing::{Growing, Progress};
use window::{PageKey, PageWindow};

/// One version of one object, with what responses about it need precomputed.
#[derive(Debug)]
pub struct ObjectInfo {
    /// Origin metadata.
    pub meta: ObjectMeta,
    /// Keyed hash of key and ETag: the object part of its chunks' cache keys.
    pub fingerprint: u128,
    /// `"etag"`, ready for the ETag header.
    pub etag_header: HeaderValue,
    /// The HTTP date for Last-Modified.
    pub last_modified_header: HeaderValue,
    /// When the origin said this.
    pub fetched_at: Instant,
}

impl ObjectInfo {
    /// Wraps origin metadata, computing the fingerprint with `seed`.
    pub fn new(meta: ObjectMeta, seed: u64) -> Self {
        let mut identity = Vec::with_capacity(meta.key.len() + meta.etag.len() + 1);
        identity.extend_from_slice(meta.key.as_bytes());
        identity.push(0xff); // not valid UTF-8, so key/etag boundaries can't be forged
        identity.extend_from_slice(meta.etag.as_bytes());
        let fingerprint = xxhash_rust::xxh3::xxh3_128_with_seed(&identity, seed);
        let etag_header = HeaderValue::from_str(&format!("\"{}\"", meta.etag))
            .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        let last_modified_header = HeaderValue::from_str(&httpdate::fmt_http_date(meta.modified))
            .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        Self {
            meta,
            fingerprint,
            etag_header,
            last_modified_header,
            fetched_at: Instant::now(),
        }
    }
}

/// A complete listing of the objects under a prefix, sorted by key.
#[derive(Debug)]
pub struct Listing {
    /// The prefix listed.
    pub prefix: String,
    /// Every object under it, ascending.
    pub objects: Vec<ObjectMeta>,
    /// When it was fetched.
    pub fetched_at: Instant,
}

impl Listing {
    /// Up to `max` of its objects under `prefix` after `after`.
    pub fn page(&self, prefix: &str, after: &str, max: usize) -> ListPage {
        growing::page_of(&self.objects, prefix, after, max, true).unwrap_or_default()
    }

    fn find(&self, key: &str) -> Option<&ObjectMeta> {
        self.objects
            .binary_search_by(|probe| probe.key.as_str().cmp(key))
            .ok()
            .map(|at| &self.objects[at])
    }
}

/// Cached listings, bounded by the total number of objects they hold, and
/// the listings in progress.
#[derive(Default)]
struct ListingSet {
    by_prefix: HashMap<String, Arc<Listing>>,
    objects: usize,
    growing: HashMap<String, Arc<Growing>>,
    /// Prefixes found to hold more objects than the cache may, and when:
    /// their pages go to the origin without listing them again first.
    too_big: HashMap<String, Instant>,
}

impl ListingSet {
    fn remember(&mut self, listing: Arc<Listing>, capacity: usize) {
        if let Some(old) = self.by_prefix.remove(&listing.prefix) {
            self.objects -= old.objects.len();
        }
        // Make room by dropping the oldest listings.
        while self.objects + listing.objects.len() > capacity {
            let Some(oldest) = self
                .by_prefix
                .values()
                .min_by_key(|l| l.fetched_at)
                .map(|l| l.prefix.clone())
            else {
                break;
            };
            if let Some(old) = self.by_prefix.remove(&oldest) {
                self.objects -= old.objects.len();
            }
        }
        self.objects += listing.objects.len();
        self.by_prefix.insert(listing.prefix.clone(), listing);
    }

    fn remember_too_big(&mut self, prefix: String, at: Instant) {
        if self.too_big.len() >= TOO_BIG_KEPT {
            // Rare (many huge prefixes): forgetting costs one more listing each.
            self.too_big.clear();
        }
        self.too_big.insert(prefix, at);
    }
}

/// What a listing lookup found.
enum Found {
    Cached(Arc<Listing>),
    Growing(Arc<Growing>),
    TooBig,
}

/// Prefixes remembered as too big to cache.
const TOO_BIG_KEPT: usize = 1024;

/// Whether what was fetched at `fetched_at` may still be trusted under `ttl`.
fn fresh(ttl: MetadataTtl, fetched_at: Instant) -> bool {
    match ttl {
        MetadataTtl::Job => true,
        MetadataTtl::After(ttl) => fetched_at.elapsed() < ttl,
    }
}

/// Metadata and listing cache of one data set.
pub struct MetadataCache {
    origin: Upstream,
    objects: quick_cache::sync::Cache<String, Arc<ObjectInfo>>,
    listings: Mutex<ListingSet>,
    /// The last origin pages of prefixes too big to cache, shared by readers paging side by side.
    big_pages: Arc<PageWindow>,
    heads: Arc<SingleFlight<String, Arc<ObjectInfo>, OriginError>>,
    ttl: MetadataTtl,
    listing_capacity: usize,
    /// Whether a miss starts a background listing of the data set, and when one last did.
    warm: Option<Mutex<Option<Instant>>>,
    timeout: Duration,
    seed: u64,
    metrics: Arc<DatasetMetrics>,
}

fn lost() -> OriginError {
    OriginError::Unavailable {
        origin: "origin".to_owned(),
        detail: "the metadata fetch task failed".to_owned(),
    }
}

/// Settings of a [`MetadataCache`].
pub struct MetadataSettings {
    /// How long entries are trusted.
    pub ttl: MetadataTtl,
    /// Object entries kept.
    pub object_capacity: usize,
    /// Listed objects kept, over all listings.
    pub listing_capacity: usize,
    /// Deadline of one origin request.
    pub timeout: Duration,
    /// Secret for chunk fingerprints.
    pub seed: u64,
    /// List the data set in the background on the first miss.
    pub warm_listing: bool,
}

impl MetadataCache {
    /// An empty cache in front of `origin` (the data set's upstream).
    pub fn new(origin: Upstream, settings: MetadataSettings, metrics: Arc<DatasetMetrics>) -> Self {
        Self {
            origin,
            objects: quick_cache::sync::Cache::new(settings.object_capacity.max(1)),
            listings: Mutex::new(ListingSet::default()),
            big_pages: Arc::new(PageWindow::new(settings.listing_capacity, settings.ttl)),
            heads: Arc::new(SingleFlight::new(lost)),
            ttl: settings.ttl,
            listing_capacity: settings.listing_capacity,
            warm: settings.warm_listing.then(|| Mutex::new(None)),
            timeout: settings.timeout,
            seed: settings.seed,
            metrics,
        }
    }

    fn fresh(&self, fetched_at: Instant) -> bool {
        fresh(self.ttl, fetched_at)
    }

    /// Metadata of `key`: from the cache, a cached listing, or one shared HEAD.
    pub async fn object(self: &Arc<Self>, key: &str) -> Result<Arc<ObjectInfo>, OriginError> {
        if let Some(info) = self.objects.get(key)
            && self.fresh(info.fetched_at)
        {
            self.metrics.metadata_hits.increment(1);
            return Ok(info);
        }
        self.origin.check_key(key).await?;
        if let Some(listed) = self.listed(key) {
            self.metrics.metadata_hits.increment(1);
            let info = Arc::new(ObjectInfo::new(listed?, self.seed));
            self.objects.insert(key.to_owned(), info.clone());
            return Ok(info);
        }
        self.metrics.metadata_misses.increment(1);
        self.warm_up();
        let this = Arc::clone(self);
        let owned = key.to_owned();
        let (flight, _) = self.heads.join_or_start(key.to_owned(), move || {
            Box::pin(async move {
                this.metrics.origin_heads.increment(1);
                let started = std::time::Instant::now();
                let result = tokio::time::timeout(this.timeout, this.origin.head(&owned))
                    .await
                    .unwrap_or_else(|_| Err(this.timed_out("HEAD", &owned)));
                this.metrics.origin_latency.record(started.elapsed());
                let meta = result.inspect_err(|_| this.metrics.origin_errors.increment(1))?;
                let info = Arc::new(ObjectInfo::new(meta, this.seed));
                this.objects.insert(owned, info.clone());
                Ok(info)
            })
        });
        flight.await
    }

    /// The object `meta` describes (as a listing gave it), remembered so a
    /// HEAD of it is answered from here.
    pub fn adopt(&self, meta: ObjectMeta) -> Arc<ObjectInfo> {
        let key = meta.key.clone();
        let info = Arc::new(ObjectInfo::new(meta, self.seed));
        self.objects.insert(key, info.clone());
        info
    }

    /// Lists the whole data set in the background, once per TTL: a training
    /// job reads every object, and one listing answers all their metadata.
    fn warm_up(self: &Arc<Self>) {
        let Some(warm) = &self.warm else { return };
        {
            let mut last = warm.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| self.fresh(at)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match this.listing("").await {
                Ok(Some(listing)) => {
                    tracing::debug!(
                        objects = listing.objects.len(),
                        "metadata warmed from a listing"
                    )
                }
                Ok(None) => {
                    tracing::debug!("data set too large to keep its listing; HEADs continue")
                }
                Err(err) => {
                    tracing::debug!(%err, "no listing to warm metadata from; HEADs continue")
                }
            }
        });
    }

    /// Forgets `key`, e.g. after the origin said it changed.
    pub fn invalidate(&self, key: &str) {
        self.objects.remove(key);
    }

    /// What a fresh cached listing says of `key`: its metadata, or that it does
    /// not exist; `None` when no listing covers it.
    fn listed(&self, key: &str) -> Option<Result<ObjectMeta, OriginError>> {
        let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        listings
            .by_prefix
            .values()
            .filter(|listing| key.starts_with(&listing.prefix) && self.fresh(listing.fetched_at))
            .map(|listing| {
                listing
                    .find(key)
                    .cloned()
                    .ok_or_else(|| OriginError::NotFound {
                        key: key.to_owned(),
                    })
            })
            .next()
    }

    /// The complete listing under `prefix`, or `None` if it has more objects
    /// than the listing cache may hold (the caller then pages the origin).
    pub async fn listing(
        self: &Arc<Self>,
        prefix: &str,
    ) -> Result<Option<Arc<Listing>>, OriginError> {
        match self.find_or_grow(prefix) {
            Found::Cached(listing) => Ok(Some(listing)),
            Found::TooBig => Ok(None),
            Found::Growing(growing) => match growing.wait().await {
                Progress::Complete(listing) => Ok(Some(listing)),
                Progress::Failed(err) => Err(err),
                Progress::TooBig | Progress::Listing => Ok(None),
            },
        }
    }

    /// Up to `max` objects under `prefix` after `after` ("" for the first):
    /// from the cached listing, else from the listing in progress as soon
    /// as it has them (one origin listing for every reader), else (a
    /// prefix with more objects than the cache may hold) from the origin,
    /// through a window of its last pages that readers side by side share.
    pub async fn page(
        self: &Arc<Self>,
        prefix: &str,
        after: &str,
        max: usize,
    ) -> Result<ListPage, OriginError> {
        let outcome = match self.find_or_grow(prefix) {
            Found::Cached(listing) => return Ok(listing.page(prefix, after, max)),
            Found::TooBig => Progress::TooBig,
            Found::Growing(growing) => match growing.page(prefix, after, max).await {
                Ok(page) => return Ok(page),
                Err(outcome) => outcome,
            },
        };
        match outcome {
            Progress::Failed(err) => Err(err),
            _ => {
                let key = PageKey {
                    prefix: prefix.to_owned(),
                    after: after.to_owned(),
                    max,
                };
                let this = Arc::clone(self);
                let fetch = move |key: &PageKey| -> BoxFuture<'static, _> {
                    let (prefix, after) = (key.prefix.clone(), key.after.clone());
                    Box::pin(async move {
                        let after = (!after.is_empty()).then_some(after.as_str());
                        this.list_origin(&prefix, after, max).await
                    })
                };
                self.big_pages.page(key, fetch).await
            }
        }
    }

    /// The fresh cached listing of `prefix`, or the listing of it in
    /// progress (started here if none is).
    fn find_or_grow(self: &Arc<Self>, prefix: &str) -> Found {
        let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(listing) = listings.by_prefix.get(prefix)
            && self.fresh(listing.fetched_at)
        {
            return Found::Cached(listing.clone());
        }
        if listings
            .too_big
            .get(prefix)
            .is_some_and(|&at| self.fresh(at))
        {
            return Found::TooBig;
        }
        if let Some(growing) = listings.growing.get(prefix) {
            return Found::Growing(Arc::clone(growing));
        }
        let growing = Arc::new(Growing::new());
        listings
            .growing
            .insert(prefix.to_owned(), Arc::clone(&growing));
        drop(listings);
        let (this, owned) = (Arc::clone(self), prefix.to_owned());
        let task = Arc::clone(&growing);
        tokio::spawn(async move { this.grow(owned, task).await });
        Found::Growing(growing)
    }

    /// Lists `prefix` from the origin page by page into `growing`, then
    /// caches it (or remembers that it is too big to cache).
    async fn grow(self: Arc<Self>, prefix: String, growing: Arc<Growing>) {
        let mut after: Option<String> = None;
        let mut count = 0usize;
        let outcome = loop {
            let page = match self.list_origin(&prefix, after.as_deref(), LIST_PAGE).await {
                Ok(page) => page,
                Err(err) => break Progress::Failed(err),
            };
            count += page.objects.len();
            if count > self.listing_capacity {
                break Progress::TooBig;
            }
            let more = page.truncated && !page.objects.is_empty();
            after = page.objects.last().map(|o| o.key.clone());
            growing.extend(page.objects);
            if !more {
                let listing = Arc::new(Listing {
                    prefix: prefix.clone(),
                    objects: growing.take(),
                    fetched_at: Instant::now(),
                });
                break Progress::Complete(listing);
            }
        };
        {
            let mut listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            if listings
                .growing
                .get(&prefix)
                .is_some_and(|g| Arc::ptr_eq(g, &growing))
            {
                listings.growing.remove(&prefix);
            }
            match &outcome {
                Progress::Complete(listing) => {
                    listings.remember(listing.clone(), self.listing_capacity)
                }
                Progress::TooBig => listings.remember_too_big(prefix, Instant::now()),
                _ => {}
            }
        }
        growing.end(outcome);
    }

    /// One page straight from the upstream, counted.
    async fn list_origin(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, OriginError> {
        self.metrics.origin_lists.increment(1);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, self.origin.list(prefix, start_after, max))
            .await
            .unwrap_or_else(|_| Err(self.timed_out("LIST", prefix)));
        self.metrics.origin_latency.record(started.elapsed());
        result.inspect_err(|_| self.metrics.origin_errors.increment(1))
    }

    fn timed_out(&self, what: &str, key: &str) -> OriginError {
        OriginError::unavailable(
            self.origin.describe(),
            format!("{what} '{key}' got no answer within {:?}", self.timeout),
        )
    }

    /// Listed objects this cache may hold, over all its listings.
    pub fn listing_capacity(&self) -> usize {
        self.listing_capacity
    }

    /// Objects with cached metadata.
    pub fn cached_objects(&self) -> usize {
        self.objects.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use bytes::Bytes;
    use futures::future::BoxFuture;

    use crate::origin::{ListPage, Origin};

    /// An in-memory origin of `keys` that pages as S3 does and counts what
    /// it is asked.
    #[derive(Default)]
    struct TestOrigin {
        keys: Vec<String>,
        heads: AtomicUsize,
        lists: AtomicUsize,
        /// How long each page takes (none: a yield).
        page_time: Option<Duration>,
    }

    impl TestOrigin {
        fn of(keys: impl IntoIterator<Item = String>) -> Self {
            Self {
                keys: keys.into_iter().collect(),
                ..Self::default()
            }
        }

        /// "a", "b", "p/a" and "p/b".
        fn small() -> Arc<Self> {
            Arc::new(Self::of(["a", "b", "p/a", "p/b"].map(str::to_owned)))
        }

        /// `count` keys, k00000 on.
        fn numbered(count: usize) -> Self {
            Self::of((0..count).map(|i| format!("k{i:05}")))
        }
    }

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: 10,
            etag: "v1".to_owned(),
            modified: SystemTime::UNIX_EPOCH,
        }
    }

    impl Origin for TestOrigin {
        fn describe(&self) -> &str {
            "test://"
        }
        fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
            self.heads.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(meta(key)) })
        }
        fn read<'a>(
            &'a self,
            _: &'a str,
            _: Range<u64>,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
            Box::pin(async { Ok(Bytes::new()) })
        }
        fn list<'a>(
            &'a self,
            prefix: &'a str,
            after: Option<&'a str>,
            max: usize,
        ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // A round trip, so readers interleave with the listing.
                match self.page_time {
                    Some(time) => tokio::time::sleep(time).await,
                    None => tokio::task::yield_now().await,
                }
                let mut rest = self
                    .keys
                    .iter()
                    .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a));
                let objects: Vec<ObjectMeta> = rest.by_ref().take(max).map(|k| meta(k)).collect();
                Ok(ListPage {
                    objects,
                    truncated: rest.next().is_some(),
                })
            })
        }
    }

    fn cache(
        origin: Arc<TestOrigin>,
        ttl: MetadataTtl,
        listing_capacity: usize,
    ) -> Arc<MetadataCache> {
        warmed(origin, ttl, listing_capacity, false)
    }

    fn warmed(
        origin: Arc<TestOrigin>,
        ttl: MetadataTtl,
        listing_capacity: usize,
        warm_listing: bool,
    ) -> Arc<MetadataCache> {
        Arc::new(MetadataCache::new(
            Upstream::Origin(origin),
            MetadataSettings {
                ttl,
                object_capacity: 100,
                listing_capacity,
                timeout: Duration::from_millis(100),
                seed: 1,
                warm_listing,
            },
            Arc::new(DatasetMetrics::new("test")),
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn job_ttl_never_revalidates_and_a_duration_does() {
        let origin = TestOrigin::small();
        let forever = cache(origin.clone(), MetadataTtl::Job, 100);
        forever.object("k").await.expect("head");
        tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
        forever.object("k").await.expect("cached");
        assert_eq!(origin.heads.load(Ordering::SeqCst), 1);

        let origin = TestOrigin::small();
        let short = cache(
            origin.clone(),
            MetadataTtl::After(Duration::from_secs(30)),
            100,
        );
        short.object("k").await.expect("head");
        tokio::time::advance(Duration::from_secs(29)).await;
        short.object("k").await.expect("still fresh");
        assert_eq!(origin.heads.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        short.object("k").await.expect("revalidated");
        assert_eq!(origin.heads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_listing_answers_metadata_without_heads() {
        let origin = TestOrigin::small();
        let metadata = cache(origin.clone(), MetadataTtl::Job, 100);
        let listing = metadata.listing("p/").await.expect("list").expect("fits");
        assert_eq!(listing.objects.len(), 2);
        metadata.listing("p/").await.expect("cached listing");
        assert_eq!(origin.lists.load(Ordering::SeqCst), 1, "listed once");
        assert_eq!(metadata.object("p/a").await.expect("listed").meta.size, 10);
        assert!(matches!(
            metadata.object("p/zzz").await,
            Err(OriginError::NotFound { .. })
        ));
        assert_eq!(
            origin.heads.load(Ordering::SeqCst),
            0,
            "no HEAD for listed or absent keys"
        );
    }

    #[tokio::test]
    async fn listings_larger_than_the_cache_are_not_kept() {
        let origin = TestOrigin::small();
        let metadata = cache(origin.clone(), MetadataTtl::Job, 1);
        assert!(metadata.listing("p/").await.expect("list").is_none());
        metadata.object("p/a").await.expect("head");
        assert_eq!(origin.heads.load(Ordering::SeqCst), 1, "falls back to HEAD");
    }

    #[tokio::test]
    async fn the_first_miss_warms_metadata_from_one_listing() {
        let origin = TestOrigin::small();
        let metadata = warmed(origin.clone(), MetadataTtl::Job, 100, true);
        metadata.object("a").await.expect("head");
        assert_eq!(
            origin.heads.load(Ordering::SeqCst),
            1,
            "the first miss still HEADs"
        );
        // The background listing is single-flight: joining it waits for it.
        metadata.listing("").await.expect("listing").expect("fits");
        assert_eq!(origin.lists.load(Ordering::SeqCst), 1, "listed once");
        metadata.object("b").await.expect("listed");
        assert_eq!(origin.heads.load(Ordering::SeqCst), 1, "no HEAD once warm");
    }

    /// Every key under "" by pages of `max`, as a reader pages through.
    async fn page_through(metadata: Arc<MetadataCache>, max: usize) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        loop {
            let after = keys.last().cloned().unwrap_or_default();
            let page = metadata.page("", &after, max).await.expect("page");
            keys.extend(page.objects.into_iter().map(|o| o.key));
            if !page.truncated {
                return keys;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_paging_at_once_share_one_origin_listing() {
        let origin = Arc::new(TestOrigin::numbered(2500));
        let metadata = cache(origin.clone(), MetadataTtl::Job, 10_000);
        let readers: Vec<_> = [1000, 300, 7]
            .into_iter()
            .map(|max| tokio::spawn(page_through(Arc::clone(&metadata), max)))
            .collect();
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), origin.keys);
        }
        assert_eq!(
            origin.lists.load(Ordering::SeqCst),
            3,
            "one listing of 1,000 objects a page for all three readers"
        );
        page_through(Arc::clone(&metadata), 1000).await;
        assert_eq!(origin.lists.load(Ordering::SeqCst), 3, "then cached");
        assert!(metadata.object("k02499").await.is_ok());
        assert!(matches!(
            metadata.object("k02500").await,
            Err(OriginError::NotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_longer_than_the_deadline_is_answered_page_by_page() {
        // 30 pages of 10 ms against a 100 ms deadline per origin request:
        // the deadline bounds each page, not the whole listing.
        let origin = Arc::new(TestOrigin {
            page_time: Some(Duration::from_millis(10)),
            ..TestOrigin::numbered(30_000)
        });
        let metadata = cache(origin.clone(), MetadataTtl::Job, 100_000);
        let started = Instant::now();
        let first = metadata.page("", "", 1000).await.expect("first page");
        assert_eq!((first.objects.len(), first.truncated), (1000, true));
        assert!(
            started.elapsed() <= Duration::from_millis(10),
            "the first page waited for one origin page, not thirty: {:?}",
            started.elapsed()
        );
        let listing = metadata.listing("").await.expect("listed").expect("fits");
        assert_eq!(listing.objects.len(), 30_000);
        assert_eq!(origin.lists.load(Ordering::SeqCst), 30);
    }

    #[tokio::test]
    async fn a_prefix_too_big_to_cache_is_paged_from_the_origin_without_listing_it_again() {
        let origin = Arc::new(TestOrigin::numbered(2500));
        let metadata = cache(origin.clone(), MetadataTtl::Job, 1500);
        assert_eq!(page_through(Arc::clone(&metadata), 1000).await, origin.keys);
        assert!(metadata.listing("").await.expect("list").is_none());
        let before = origin.lists.load(Ordering::SeqCst);
        assert_eq!(page_through(Arc::clone(&metadata), 1000).await, origin.keys);
        assert_eq!(
            origin.lists.load(Ordering::SeqCst) - before,
            1,
            "the first page (the listing attempt had it), the others from the window; no listing of 1,500 first"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_paging_a_prefix_too_big_to_cache_side_by_side_share_each_page() {
        let origin = Arc::new(TestOrigin::numbered(5000));
        let metadata = cache(origin.clone(), MetadataTtl::Job, 1500);
        let readers: Vec<_> = (0..3)
            .map(|_| tokio::spawn(page_through(Arc::clone(&metadata), 1000)))
            .collect();
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), origin.keys);
        }
        assert_eq!(
            origin.lists.load(Ordering::SeqCst),
            2 + 4,
            "two pages until the prefix proved too big, then each later page once for all three"
        );
    }

    #[tokio::test]
    async fn a_reader_further_behind_than_the_window_pages_the_origin_again() {
        let origin = Arc::new(TestOrigin::numbered(40_500));
        let metadata = cache(origin.clone(), MetadataTtl::Job, 1500);
        assert_eq!(page_through(Arc::clone(&metadata), 1000).await, origin.keys);
        assert!(metadata.big_pages.objects() <= 4 * LIST_PAGE);
        let before = origin.lists.load(Ordering::SeqCst);
        assert_eq!(page_through(Arc::clone(&metadata), 1000).await, origin.keys);
        let again = origin.lists.load(Ordering::SeqCst) - before;
        assert!(
            (41 - 4..=41).contains(&again),
            "41 pages, at most 4 of them kept: {again} fetched again"
        );
    }

    #[test]
    fn fingerprints_separate_versions_and_keys() {
        let a = ObjectInfo::new(meta("k"), 7);
        let mut changed = meta("k");
        changed.etag = "v2".to_owned();
        let b = ObjectInfo::new(changed, 7);
        let c = ObjectInfo::new(meta("k2"), 7);
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(a.etag_header, "\"v1\"");
    }
}
