//! Listing over a sorted source: a cached complete listing, or origin pages
//! for listings too big to cache. Delimiters fold keys into common prefixes
//! (the directories of a mount, an S3 client's folders); the cursor is an
//! exclusive lower bound on keys.

use std::sync::Arc;

use super::{Listing, MetadataCache};
use crate::origin::{ListPage, ObjectMeta, OriginError};

/// Where listed keys come from.
pub enum ListSource {
    /// A complete listing of the prefix.
    Cached(Arc<Listing>),
    /// The data set's metadata: its cached listing, the listing in
    /// progress, or origin pages for listings too big to cache.
    Metadata(Arc<MetadataCache>),
}

impl ListSource {
    async fn page(&self, prefix: &str, after: &str, max: usize) -> Result<ListPage, OriginError> {
        match self {
            Self::Cached(listing) => Ok(listing.page(prefix, after, max)),
            Self::Metadata(metadata) => metadata.page(prefix, after, max).await,
        }
    }
}

/// What to list.
pub struct ListRequest<'a> {
    /// Keys must start with this.
    pub prefix: &'a str,
    /// Fold keys at the first delimiter after the prefix.
    pub delimiter: Option<&'a str>,
    /// Most entries (objects plus common prefixes) to return.
    pub max_keys: usize,
    /// Only keys after this (exclusive).
    pub after: &'a str,
}

/// One page of results.
#[derive(Debug, Default)]
pub struct ListOutcome {
    /// Objects, ascending.
    pub objects: Vec<ObjectMeta>,
    /// Common prefixes, ascending.
    pub common_prefixes: Vec<String>,
    /// Whether more entries follow.
    pub truncated: bool,
    /// The bound to continue from, when truncated.
    pub next_after: Option<String>,
}

/// A bound just past every key that starts with `prefix`.
fn past_prefix(prefix: &str) -> String {
    let mut bound = String::with_capacity(prefix.len() + 4);
    bound.push_str(prefix);
    bound.push(char::MAX);
    bound
}

/// Lists one page of `request` from `source`.
pub async fn list(
    source: &ListSource,
    request: &ListRequest<'_>,
) -> Result<ListOutcome, OriginError> {
    let mut outcome = ListOutcome::default();
    if request.max_keys == 0 {
        return Ok(outcome);
    }
    let mut cursor = request.after.to_owned();
    let mut folded: Option<String> = None;
    // Without a delimiter a full page whose source says more follow is
    // truncated; with one, the keys after it may fold into its last
    // prefix, so one more is looked at.
    let folding = request.delimiter.is_some_and(|d| !d.is_empty());
    'pages: loop {
        let entries = outcome.objects.len() + outcome.common_prefixes.len();
        let ask = request.max_keys - entries + usize::from(folding);
        let page = source.page(request.prefix, &cursor, ask).await?;
        for object in page.objects {
            if folded.as_deref().is_some_and(|p| object.key.starts_with(p)) {
                continue;
            }
            let common = request
                .delimiter
                .filter(|d| !d.is_empty())
                .and_then(|delimiter| {
                    let rest = object.key.get(request.prefix.len()..)?;
                    rest.find(delimiter).map(|at| {
                        object.key[..request.prefix.len() + at + delimiter.len()].to_owned()
                    })
                });
            if outcome.objects.len() + outcome.common_prefixes.len() == request.max_keys {
                outcome.truncated = true;
                break 'pages;
            }
            match common {
                Some(prefix) => {
                    cursor = past_prefix(&prefix);
                    folded = Some(prefix.clone());
                    outcome.common_prefixes.push(prefix);
                }
                None => {
                    cursor.clone_from(&object.key);
                    outcome.objects.push(object);
                }
            }
        }
        if !page.truncated {
            break;
        }
        if !folding && outcome.objects.len() == request.max_keys {
            outcome.truncated = true;
            break;
        }
    }
    if outcome.truncated {
        outcome.next_after = Some(cursor);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use tokio::time::Instant;

    fn source(keys: &[&str]) -> ListSource {
        let mut objects: Vec<ObjectMeta> = keys
            .iter()
            .map(|k| ObjectMeta {
                key: (*k).to_owned(),
                size: 1,
                etag: "e".into(),
                modified: SystemTime::UNIX_EPOCH,
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        ListSource::Cached(Arc::new(Listing {
            prefix: String::new(),
            objects,
            fetched_at: Instant::now(),
        }))
    }

    fn names(outcome: &ListOutcome) -> (Vec<&str>, Vec<&str>) {
        (
            outcome.objects.iter().map(|o| o.key.as_str()).collect(),
            outcome.common_prefixes.iter().map(String::as_str).collect(),
        )
    }

    const KEYS: [&str; 7] = ["a/1", "a/2", "b/x/1", "b/y", "c", "d/1", "d/2"];

    #[tokio::test]
    async fn pages_follow_each_other_without_gaps() {
        let source = source(&KEYS);
        let mut after = String::new();
        let mut seen = Vec::new();
        loop {
            let request = ListRequest {
                prefix: "",
                delimiter: None,
                max_keys: 3,
                after: &after,
            };
            let outcome = list(&source, &request).await.expect("list");
            seen.extend(outcome.objects.iter().map(|o| o.key.clone()));
            match outcome.next_after {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(seen, KEYS);
    }

    #[tokio::test]
    async fn delimiters_fold_keys_into_prefixes() {
        let source = source(&KEYS);
        let request = ListRequest {
            prefix: "",
            delimiter: Some("/"),
            max_keys: 100,
            after: "",
        };
        let outcome = list(&source, &request).await.expect("list");
        assert_eq!(names(&outcome), (vec!["c"], vec!["a/", "b/", "d/"]));
        assert!(!outcome.truncated);
        let request = ListRequest {
            prefix: "b/",
            delimiter: Some("/"),
            max_keys: 100,
            after: "",
        };
        let outcome = list(&source, &request).await.expect("list");
        assert_eq!(names(&outcome), (vec!["b/y"], vec!["b/x/"]));
    }

    #[tokio::test]
    async fn truncation_counts_prefixes_and_resumes_past_them() {
        let source = source(&KEYS);
        let request = ListRequest {
            prefix: "",
            delimiter: Some("/"),
            max_keys: 2,
            after: "",
        };
        let first = list(&source, &request).await.expect("list");
        assert_eq!(names(&first), (vec![], vec!["a/", "b/"]));
        assert!(first.truncated);
        let after = first.next_after.expect("next");
        let request = ListRequest {
            prefix: "",
            delimiter: Some("/"),
            max_keys: 2,
            after: &after,
        };
        let second = list(&source, &request).await.expect("list");
        assert_eq!(names(&second), (vec!["c"], vec!["d/"]));
        assert!(!second.truncated, "nothing after d/");
    }

    #[tokio::test]
    async fn exact_fit_is_not_truncated() {
        let source = source(&["x", "y"]);
        let request = ListRequest {
            prefix: "",
            delimiter: None,
            max_keys: 2,
            after: "",
        };
        let outcome = list(&source, &request).await.expect("list");
        assert!(!outcome.truncated);
        assert!(outcome.next_after.is_none());
    }
}
