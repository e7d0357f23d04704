//! A listing being read from the upstream page by page, shared by every
//! reader meanwhile: a page is answered as soon as the objects it needs
//! have arrived, so the first page of a million-object listing does not
//! wait for the last, and readers at different places (a warm-up here,
//! the pool's other workers paging through this one) cost one listing.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Listing;
use crate::origin::{ListPage, ObjectMeta, OriginError};

/// Where a growing listing stands.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Still listing.
    Listing,
    /// Listed to the end; the listing, as it is now cached.
    Complete(Arc<Listing>),
    /// More objects than the listing cache may hold: readers page the upstream.
    TooBig,
    /// The upstream failed.
    Failed(OriginError),
}

/// One listing in progress.
pub struct Growing {
    objects: Mutex<Vec<ObjectMeta>>,
    progress: watch::Sender<Progress>,
}

impl Growing {
    /// An empty listing, just started.
    pub fn new() -> Self {
        Self {
            objects: Mutex::new(Vec::new()),
            progress: watch::Sender::new(Progress::Listing),
        }
    }

    /// Adds the next page's objects (after every object so far).
    pub fn extend(&self, objects: Vec<ObjectMeta>) {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(objects);
        self.progress.send_replace(Progress::Listing);
    }

    /// The objects so far, taken out to become the complete listing.
    pub fn take(&self) -> Vec<ObjectMeta> {
        std::mem::take(&mut *self.objects.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Ends the listing as `outcome`, waking every reader.
    pub fn end(&self, outcome: Progress) {
        self.progress.send_replace(outcome);
    }

    /// How the listing ended, once it has.
    pub async fn wait(&self) -> Progress {
        let mut progress = self.progress.subscribe();
        loop {
            let now = progress.borrow_and_update().clone();
            if !matches!(now, Progress::Listing) {
                return now;
            }
            if progress.changed().await.is_err() {
                return ended_without_outcome();
            }
        }
    }

    /// Up to `max` objects under `prefix` after `after`, once they are
    /// here (or the listing ended); `Err` with the outcome when the page
    /// must come from elsewhere.
    pub async fn page(&self, prefix: &str, after: &str, max: usize) -> Result<ListPage, Progress> {
        let mut progress = self.progress.subscribe();
        loop {
            let now = progress.borrow_and_update().clone();
            match now {
                Progress::Listing => {
                    let held = self.objects.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(page) = page_of(&held, prefix, after, max, false) {
                        return Ok(page);
                    }
                }
                Progress::Complete(listing) => return Ok(listing.page(prefix, after, max)),
                ended => return Err(ended),
            }
            if progress.changed().await.is_err() {
                return Err(ended_without_outcome());
            }
        }
    }
}

fn ended_without_outcome() -> Progress {
    Progress::Failed(OriginError::unavailable(
        "listing",
        "the listing task ended without an outcome",
    ))
}

/// Up to `max` objects of `objects` (sorted) under `prefix` after `after`:
/// `None` while `objects` is still growing and has fewer. A full page of a
/// growing listing is truncated: the origin said more follow.
pub fn page_of(
    objects: &[ObjectMeta],
    prefix: &str,
    after: &str,
    max: usize,
    complete: bool,
) -> Option<ListPage> {
    let start = objects.partition_point(|o| o.key.as_str() <= after || o.key.as_str() < prefix);
    // Looks at one object past the page at most: a page costs its size,
    // not the rest of the listing.
    let under = objects[start..]
        .iter()
        .take(max.saturating_add(1))
        .take_while(|o| o.key.starts_with(prefix))
        .count();
    let more_held = under > max;
    let growing = !complete && !more_held && start + under == objects.len();
    if under < max && growing {
        return None;
    }
    Some(ListPage {
        objects: objects[start..start + under.min(max)].to_vec(),
        truncated: more_held || (under == max && growing),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn objects(keys: &[&str]) -> Vec<ObjectMeta> {
        keys.iter()
            .map(|k| ObjectMeta {
                key: (*k).to_owned(),
                size: 1,
                etag: "e".into(),
                modified: SystemTime::UNIX_EPOCH,
            })
            .collect()
    }

    fn keys(page: &ListPage) -> Vec<&str> {
        page.objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn a_page_of_a_growing_listing_is_ready_once_full() {
        let held = objects(&["a", "b", "c"]);
        assert!(page_of(&held, "", "", 4, false).is_none(), "d is coming");
        let page = page_of(&held, "", "", 3, false).expect("full");
        assert_eq!(
            (keys(&page), page.truncated),
            (vec!["a", "b", "c"], true),
            "the listing goes on"
        );
        let page = page_of(&held, "", "", 2, false).expect("c shows more follow");
        assert_eq!((keys(&page), page.truncated), (vec!["a", "b"], true));
        let page = page_of(&held, "", "", 3, true).expect("complete");
        assert_eq!((keys(&page), page.truncated), (vec!["a", "b", "c"], false));
        let page = page_of(&held, "", "a", 5, true).expect("complete");
        assert_eq!((keys(&page), page.truncated), (vec!["b", "c"], false));
        assert!(
            page_of(&held, "", "c", 5, true)
                .expect("end")
                .objects
                .is_empty()
        );
    }

    #[test]
    fn a_key_past_the_prefix_ends_a_page_of_a_growing_listing() {
        let held = objects(&["a/1", "a/2", "b/1"]);
        let page = page_of(&held, "a/", "", 5, false).expect("b/1 ends a/");
        assert_eq!((keys(&page), page.truncated), (vec!["a/1", "a/2"], false));
    }

    #[tokio::test]
    async fn readers_wait_for_the_objects_their_page_needs() {
        let growing = Arc::new(Growing::new());
        let reader = {
            let growing = Arc::clone(&growing);
            tokio::spawn(async move { growing.page("", "b", 2).await })
        };
        growing.extend(objects(&["a", "b"]));
        growing.extend(objects(&["c", "d"]));
        let listing = Arc::new(Listing {
            prefix: String::new(),
            objects: growing.take(),
            fetched_at: tokio::time::Instant::now(),
        });
        growing.end(Progress::Complete(listing));
        let page = reader.await.expect("task").expect("page");
        assert_eq!((keys(&page), page.truncated), (vec!["c", "d"], false));

        let failed = Growing::new();
        failed.end(Progress::TooBig);
        assert!(matches!(
            failed.page("", "", 1).await,
            Err(Progress::TooBig)
        ));
    }
}
