//! The last origin pages of listings too big to cache. Readers paging such
//! a prefix side by side (the pool's workers warming through one lister,
//! each a little ahead of or behind the others) follow the same chain of
//! pages, each starting after the last key of the one before; keeping the
//! latest pages, and fetching each once however many ask for it at the
//! same moment, lets them share one origin listing instead of one each.
//! Pages leave oldest first: every reader moves forward.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ferry_config::MetadataTtl;
use futures::future::BoxFuture;
// Tokio's clock, as the rest of the metadata cache, so tests can move time.
use tokio::time::Instant;

use crate::flight::SingleFlight;
use crate::origin::wire::LIST_PAGE;
use crate::origin::{ListPage, OriginError};

/// Which page: the chain is the same for readers asking the same size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    /// The prefix listed.
    pub prefix: String,
    /// Keys after this ("" for the first page).
    pub after: String,
    /// Most objects asked for.
    pub max: usize,
}

/// The pages kept, in the order they came.
#[derive(Default)]
struct Kept {
    pages: HashMap<PageKey, (Arc<ListPage>, Instant)>,
    order: VecDeque<PageKey>,
    objects: usize,
}

/// Recent pages of too-big prefixes, each fetched once at a time.
pub struct PageWindow {
    kept: Mutex<Kept>,
    fetching: Arc<SingleFlight<PageKey, Arc<ListPage>, OriginError>>,
    capacity: usize,
    ttl: MetadataTtl,
}

fn lost() -> OriginError {
    OriginError::unavailable("origin", "the listing page fetch task failed")
}

impl PageWindow {
    /// An empty window holding up to `objects` listed objects (at least
    /// four full pages), each trusted for `ttl`.
    pub fn new(objects: usize, ttl: MetadataTtl) -> Self {
        Self {
            kept: Mutex::new(Kept::default()),
            fetching: Arc::new(SingleFlight::new(lost)),
            capacity: objects.max(4 * LIST_PAGE),
            ttl,
        }
    }

    /// Listed objects kept now.
    #[cfg(test)]
    pub fn objects(&self) -> usize {
        self.lock().objects
    }

    /// The page `key`: kept (while fresh), being fetched for another reader
    /// (joined), or fetched by `fetch` and kept.
    pub async fn page(
        self: &Arc<Self>,
        key: PageKey,
        fetch: impl FnOnce(&PageKey) -> BoxFuture<'static, Result<ListPage, OriginError>>,
    ) -> Result<ListPage, OriginError> {
        if let Some(page) = self.kept_page(&key) {
            return Ok(ListPage::clone(&page));
        }
        let window = Arc::clone(self);
        let (flight, _) = self.fetching.join_or_start(key.clone(), move || {
            let work = fetch(&key);
            Box::pin(async move {
                // Kept by a fetch that ended after this reader looked.
                if let Some(page) = window.kept_page(&key) {
                    return Ok(page);
                }
                let page = Arc::new(work.await?);
                window.keep(key, Arc::clone(&page));
                Ok(page)
            })
        });
        flight.await.map(|page| ListPage::clone(&page))
    }

    fn kept_page(&self, key: &PageKey) -> Option<Arc<ListPage>> {
        let kept = self.lock();
        let (page, at) = kept.pages.get(key)?;
        super::fresh(self.ttl, *at).then(|| Arc::clone(page))
    }

    /// Keeps `page`, letting the oldest pages go past the capacity.
    fn keep(&self, key: PageKey, page: Arc<ListPage>) {
        let mut kept = self.lock();
        if let Some((old, _)) = kept.pages.remove(&key) {
            kept.objects -= old.objects.len();
            kept.order.retain(|k| k != &key);
        }
        kept.objects += page.objects.len();
        kept.pages.insert(key.clone(), (page, Instant::now()));
        kept.order.push_back(key);
        while kept.objects > self.capacity {
            let Some(oldest) = kept.order.pop_front() else {
                break;
            };
            if let Some((gone, _)) = kept.pages.remove(&oldest) {
                kept.objects -= gone.objects.len();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A fetch of an empty last page that counts itself in `fetches`.
    fn counted(
        fetches: &Arc<AtomicUsize>,
    ) -> impl FnOnce(&PageKey) -> BoxFuture<'static, Result<ListPage, OriginError>> {
        let fetches = Arc::clone(fetches);
        move |_| {
            Box::pin(async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok(ListPage::default())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_page_is_trusted_for_the_ttl_and_then_fetched_again() {
        let window = Arc::new(PageWindow::new(
            0,
            MetadataTtl::After(Duration::from_secs(30)),
        ));
        let key = PageKey {
            prefix: "p/".to_owned(),
            after: "p/k".to_owned(),
            max: LIST_PAGE,
        };
        let fetches = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            window
                .page(key.clone(), counted(&fetches))
                .await
                .expect("page");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "kept");
        tokio::time::advance(Duration::from_secs(31)).await;
        window
            .page(key.clone(), counted(&fetches))
            .await
            .expect("page");
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "stale, fetched again");
        assert_eq!(window.lock().order.len(), 1, "replaced, not kept twice");
    }
}
