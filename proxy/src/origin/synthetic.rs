//! `synthetic://`: objects generated on demand, optionally behind an emulated
//! remote-store latency.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;

use ferry_config::SyntheticSpec;

use super::{ListPage, ObjectMeta, Origin, OriginError};

/// Generates a [`SyntheticSpec`] data set.
pub struct SyntheticOrigin {
    spec: SyntheticSpec,
    url: String,
}

impl SyntheticOrigin {
    /// An origin serving `spec`.
    pub fn new(spec: SyntheticSpec) -> Self {
        let url = spec.to_url();
        Self { spec, url }
    }

    fn meta(&self, index: u64) -> ObjectMeta {
        ObjectMeta {
            key: self.spec.key(index),
            size: self.spec.object_size(index),
            etag: self.spec.etag(index),
            modified: self.spec.mtime(),
        }
    }

    fn index(&self, key: &str) -> Result<u64, OriginError> {
        self.spec
            .index_of(key)
            .ok_or_else(|| OriginError::NotFound {
                key: key.to_owned(),
            })
    }

    async fn emulate_latency(&self) {
        if !self.spec.latency.is_zero() {
            tokio::time::sleep(self.spec.latency).await;
        }
    }
}

impl Origin for SyntheticOrigin {
    fn describe(&self) -> &str {
        &self.url
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
        Box::pin(async move {
            self.emulate_latency().await;
            Ok(self.meta(self.index(key)?))
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
        Box::pin(async move {
            self.emulate_latency().await;
            let index = self.index(key)?;
            if self.spec.broken == Some(index) {
                return Err(OriginError::unavailable(
                    &self.url,
                    format!("'{key}' is damaged (the spec's 'broken' object)"),
                ));
            }
            if self.spec.etag(index) != etag {
                return Err(OriginError::Changed {
                    key: key.to_owned(),
                });
            }
            let size = self.spec.object_size(index);
            if range.end > size || range.start > range.end {
                return Err(OriginError::unavailable(
                    &self.url,
                    format!("range {range:?} is outside '{key}' ({size} bytes)"),
                ));
            }
            let len = usize::try_from(range.end - range.start)
                .map_err(|_| OriginError::unavailable(&self.url, "range too large"))?;
            let mut buf = BytesMut::zeroed(len);
            self.spec.fill(index, range.start, &mut buf);
            Ok(buf.freeze())
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
        Box::pin(async move {
            self.emulate_latency().await;
            // Keys sort by position (class by class, fixed-width numbers), so
            // the first key at or past a bound is found by binary search.
            let first_at_or_after = |bound: &str, inclusive: bool| {
                partition_point(self.spec.count, |position| {
                    let key = self.spec.key(self.spec.index_at(position));
                    if inclusive {
                        key.as_str() < bound
                    } else {
                        key.as_str() <= bound
                    }
                })
            };
            let mut position = first_at_or_after(prefix, true);
            if let Some(after) = start_after {
                position = position.max(first_at_or_after(after, false));
            }
            let mut page = ListPage::default();
            while position < self.spec.count {
                let meta = self.meta(self.spec.index_at(position));
                if !meta.key.starts_with(prefix) {
                    break;
                }
                if page.objects.len() == max {
                    page.truncated = true;
                    break;
                }
                page.objects.push(meta);
                position += 1;
            }
            Ok(page)
        })
    }
}

/// The first position in `0..count` for which `before` is false (`before` is monotone).
fn partition_point(count: u64, before: impl Fn(u64) -> bool) -> u64 {
    let (mut low, mut high) = (0, count);
    while low < high {
        let mid = low + (high - low) / 2;
        if before(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> SyntheticOrigin {
        SyntheticOrigin::new(SyntheticSpec::from_query("count=25&prefix=img/").expect("spec"))
    }

    #[tokio::test]
    async fn lists_pages_in_key_order() {
        let origin = origin();
        let page = origin.list("img/", None, 10).await.expect("list");
        assert_eq!(page.objects.len(), 10);
        assert!(page.truncated);
        assert_eq!(page.objects[0].key, "img/00000000.jpg");
        let after = page.objects[9].key.clone();
        let rest = origin.list("img/", Some(&after), 100).await.expect("list");
        assert_eq!(rest.objects.len(), 15);
        assert!(!rest.truncated);
        assert_eq!(rest.objects[0].key, "img/00000010.jpg");
        let narrow = origin.list("img/0000001", None, 100).await.expect("list");
        assert_eq!(narrow.objects.len(), 10, "img/00000010..19");
        let none = origin.list("other/", None, 100).await.expect("list");
        assert!(none.objects.is_empty());
    }

    #[tokio::test]
    async fn reads_match_the_spec_and_pin_the_version() {
        let origin = origin();
        let meta = origin.head("img/00000003.jpg").await.expect("head");
        let bytes = origin
            .read(&meta.key, 10..20, &meta.etag)
            .await
            .expect("read");
        let mut want = vec![0; 10];
        origin.spec.fill(3, 10, &mut want);
        assert_eq!(&bytes[..], &want[..]);
        assert!(matches!(
            origin.read(&meta.key, 0..1, "other").await,
            Err(OriginError::Changed { .. })
        ));
        assert!(matches!(
            origin.head("img/00000099.jpg").await,
            Err(OriginError::NotFound { .. })
        ));
    }
}
