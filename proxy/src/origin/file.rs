//! `file://`: a local directory. No key may reach outside it: `..`, `.`,
//! absolute keys and symlinks that resolve outside the root are refused.

use std::fs::{File, Metadata};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;

use super::{ListPage, ObjectMeta, Origin, OriginError, check_length};

/// Serves the files below one directory. Cheap to clone into blocking tasks.
#[derive(Clone)]
pub struct FileOrigin {
    root: Arc<Path>,
    url: Arc<str>,
}

impl FileOrigin {
    /// An origin rooted at `root`, which must be an existing directory.
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let canonical = root
            .canonicalize()
            .with_context(|| format!("file origin root {} is not accessible", root.display()))?;
        anyhow::ensure!(
            canonical.is_dir(),
            "file origin root {} is not a directory",
            root.display()
        );
        Ok(Self {
            url: format!("file://{}", root.display()).into(),
            root: canonical.into(),
        })
    }

    /// The path of `key` inside the root, after every escape check.
    fn resolve(&self, key: &str) -> Result<PathBuf, OriginError> {
        let refuse = |why| OriginError::InvalidKey {
            key: key.to_owned(),
            why,
        };
        if key.is_empty() {
            return Err(refuse("it is empty"));
        }
        if key.starts_with('/') {
            return Err(refuse("absolute keys are not allowed"));
        }
        if key.contains('\0') {
            return Err(refuse("it contains a NUL byte"));
        }
        if key
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
        {
            return Err(refuse("'.' and '..' path segments are not allowed"));
        }
        let joined = self.root.join(key);
        let canonical = match joined.canonicalize() {
            Ok(path) => path,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(OriginError::NotFound {
                    key: key.to_owned(),
                });
            }
            Err(err) => return Err(OriginError::unavailable(&*self.url, err)),
        };
        if !canonical.starts_with(&self.root) {
            return Err(refuse("it resolves outside the data set root"));
        }
        Ok(canonical)
    }

    fn meta_of(key: &str, metadata: &Metadata) -> ObjectMeta {
        ObjectMeta {
            key: key.to_owned(),
            size: metadata.len(),
            etag: etag_of(metadata),
            modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    fn head_blocking(&self, key: &str) -> Result<ObjectMeta, OriginError> {
        let path = self.resolve(key)?;
        let metadata =
            std::fs::metadata(&path).map_err(|e| OriginError::unavailable(&*self.url, e))?;
        if !metadata.is_file() {
            return Err(OriginError::NotFound {
                key: key.to_owned(),
            });
        }
        Ok(Self::meta_of(key, &metadata))
    }

    fn read_blocking(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> Result<Bytes, OriginError> {
        let path = self.resolve(key)?;
        let file = File::open(&path).map_err(|e| OriginError::unavailable(&*self.url, e))?;
        let changed = || OriginError::Changed {
            key: key.to_owned(),
        };
        let before = file
            .metadata()
            .map_err(|e| OriginError::unavailable(&*self.url, e))?;
        if etag_of(&before) != etag {
            return Err(changed());
        }
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| OriginError::unavailable(&*self.url, "range too large"))?;
        let mut buf = BytesMut::zeroed(len);
        file.read_exact_at(&mut buf, range.start).map_err(|err| {
            if err.kind() == std::io::ErrorKind::UnexpectedEof {
                changed()
            } else {
                OriginError::unavailable(&*self.url, err)
            }
        })?;
        // A writer racing the read could leave a mix of versions in `buf`.
        let after = file
            .metadata()
            .map_err(|e| OriginError::unavailable(&*self.url, e))?;
        if etag_of(&after) != etag {
            return Err(changed());
        }
        check_length(&self.url, key, &range, buf.len())?;
        Ok(buf.freeze())
    }

    fn list_blocking(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, OriginError> {
        // Walk only the directory the prefix names; keys below it are filtered.
        let dir_part = prefix.rfind('/').map_or("", |at| &prefix[..at]);
        if dir_part.split('/').any(|s| s == ".." || s == ".") || prefix.starts_with('/') {
            return Ok(ListPage::default());
        }
        let start = self.root.join(dir_part);
        let mut keys = Vec::new();
        let mut pending = vec![start];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(OriginError::unavailable(&*self.url, err)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| OriginError::unavailable(&*self.url, e))?;
                let path = entry.path();
                // Follow symlinks only when they stay inside the root.
                let Ok(canonical) = path.canonicalize() else {
                    continue;
                };
                if !canonical.starts_with(&self.root) {
                    continue;
                }
                let Ok(metadata) = std::fs::metadata(&canonical) else {
                    continue;
                };
                let Some(key) = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(Path::to_str)
                    .map(str::to_owned)
                else {
                    continue;
                };
                if metadata.is_dir() {
                    if canonical != path {
                        continue; // a directory symlink could loop; keys stay unique
                    }
                    pending.push(path);
                } else if metadata.is_file()
                    && key.starts_with(prefix)
                    && start_after.is_none_or(|after| key.as_str() > after)
                {
                    keys.push(Self::meta_of(&key, &metadata));
                }
            }
        }
        keys.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let truncated = keys.len() > max;
        keys.truncate(max);
        Ok(ListPage {
            objects: keys,
            truncated,
        })
    }
}

/// A version tag from the file's identity, size and modification time.
fn etag_of(metadata: &Metadata) -> String {
    let mut bytes = [0u8; 40];
    bytes[..8].copy_from_slice(&metadata.dev().to_le_bytes());
    bytes[8..16].copy_from_slice(&metadata.ino().to_le_bytes());
    bytes[16..24].copy_from_slice(&metadata.len().to_le_bytes());
    bytes[24..32].copy_from_slice(&metadata.mtime().to_le_bytes());
    bytes[32..40].copy_from_slice(&metadata.mtime_nsec().to_le_bytes());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    url: &str,
    work: impl FnOnce() -> Result<T, OriginError> + Send + 'static,
) -> Result<T, OriginError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OriginError::unavailable(&url, e))?
}

impl Origin for FileOrigin {
    fn describe(&self) -> &str {
        &self.url
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectMeta, OriginError>> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move { blocking(&self.url, move || this.head_blocking(&key)).await })
    }

    fn check_key<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), OriginError>> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            blocking(&self.url, move || match this.resolve(&key) {
                // Missing is for the caller to find out; escaping is not.
                Ok(_) | Err(OriginError::NotFound { .. }) => Ok(()),
                Err(err) => Err(err),
            })
            .await
        })
    }

    fn read<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        etag: &'a str,
    ) -> BoxFuture<'a, Result<Bytes, OriginError>> {
        let this = self.clone();
        let (key, etag) = (key.to_owned(), etag.to_owned());
        Box::pin(async move {
            blocking(&self.url, move || this.read_blocking(&key, range, &etag)).await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, OriginError>> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        Box::pin(async move {
            blocking(&self.url, move || {
                this.list_blocking(&prefix, start_after.as_deref(), max)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempdir::TempDir, FileOrigin) {
        let dir = tempdir::TempDir::new();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/one.bin"), b"0123456789").expect("write");
        std::fs::write(root.join("a/two.bin"), b"xy").expect("write");
        std::fs::write(dir.path().join("secret"), b"top secret").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).expect("link");
        std::os::unix::fs::symlink(root.join("a/two.bin"), root.join("inside")).expect("link");
        let origin = FileOrigin::new(&root).expect("origin");
        (dir, origin)
    }

    /// A throwaway directory, removed on drop.
    mod tempdir {
        use std::path::{Path, PathBuf};
        pub struct TempDir(PathBuf);
        impl TempDir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "ferry-file-origin-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or_default()
                ));
                std::fs::create_dir_all(&path).expect("temp dir");
                Self(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn reads_ranges_of_files() {
        let (_dir, origin) = fixture();
        let meta = origin.head("a/b/one.bin").await.expect("head");
        assert_eq!(meta.size, 10);
        let bytes = origin
            .read("a/b/one.bin", 2..5, &meta.etag)
            .await
            .expect("read");
        assert_eq!(&bytes[..], b"234");
        assert!(matches!(
            origin.read("a/b/one.bin", 0..1, "stale").await,
            Err(OriginError::Changed { .. })
        ));
    }

    #[tokio::test]
    async fn refuses_every_escape() {
        let (_dir, origin) = fixture();
        for key in [
            "../secret",
            "a/../../secret",
            "/etc/passwd",
            "./a/two.bin",
            "escape",
            "",
        ] {
            let result = origin.head(key).await;
            assert!(
                matches!(result, Err(OriginError::InvalidKey { .. })),
                "{key}: {result:?}"
            );
        }
        assert_eq!(origin.head("inside").await.expect("inner link").size, 2);
        assert!(matches!(
            origin.head("a/missing").await,
            Err(OriginError::NotFound { .. })
        ));
        assert!(
            matches!(origin.head("a").await, Err(OriginError::NotFound { .. })),
            "a directory is not an object"
        );
    }

    #[tokio::test]
    async fn lists_files_sorted_without_escapes() {
        let (_dir, origin) = fixture();
        let page = origin.list("", None, 100).await.expect("list");
        let keys: Vec<&str> = page.objects.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a/b/one.bin", "a/two.bin", "inside"]);
        let page = origin
            .list("a/", Some("a/b/one.bin"), 100)
            .await
            .expect("list");
        assert_eq!(page.objects.len(), 1);
        let page = origin.list("", None, 1).await.expect("list");
        assert!(page.truncated);
    }
}
