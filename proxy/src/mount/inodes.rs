//! Inode numbers for the mount: one per (data set, path) for directories
//! and one per (data set, path, ETag) for files, derived from a hash, so a
//! path keeps its number while its version stays (and `readdir` can name it
//! without a table entry). A file's inode is pinned to the version it was
//! looked up at: every read of it is checked against that ETag, and a new
//! version is a new inode, with a page cache of its own. Entries live from
//! the kernel's first lookup to its last forget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::metadata::ObjectInfo;

/// The mount's root: one directory per data set.
pub const ROOT: u64 = 1;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The root (its children are data sets).
    Root,
    /// A data set's root or a prefix in it.
    Dir,
    /// An object.
    File,
}

/// One inode the kernel knows.
#[derive(Clone, Debug)]
pub struct Node {
    /// The data set's bucket (empty for the root).
    pub bucket: Arc<str>,
    /// The path in the data set: an object's key, or a directory's prefix
    /// (empty for a data set's root, else ending in `/`).
    pub key: String,
    /// Directory or file.
    pub kind: Kind,
    /// A file's version: what the kernel was told and what reads return.
    pub object: Option<Arc<ObjectInfo>>,
}

impl Node {
    /// A directory (`key` empty or ending in `/`) of data set `bucket`.
    pub fn dir(bucket: Arc<str>, key: String) -> Self {
        Self {
            bucket,
            key,
            kind: Kind::Dir,
            object: None,
        }
    }

    /// Version `object` of a file of data set `bucket`.
    pub fn file(bucket: Arc<str>, object: Arc<ObjectInfo>) -> Self {
        Self {
            bucket,
            key: object.meta.key.clone(),
            kind: Kind::File,
            object: Some(object),
        }
    }

    /// The ETag of a file's version; empty for a directory.
    fn version(&self) -> &str {
        self.object.as_ref().map_or("", |o| o.meta.etag.as_str())
    }
}

struct Entry {
    node: Arc<Node>,
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
}

/// The inodes the kernel holds.
pub struct Inodes {
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Default for Inodes {
    fn default() -> Self {
        let root = Entry {
            node: Arc::new(Node {
                bucket: Arc::from(""),
                key: String::new(),
                kind: Kind::Root,
                object: None,
            }),
            lookups: 1,
        };
        Self {
            entries: Mutex::new(HashMap::from([(ROOT, root)])),
        }
    }
}

/// The number `bucket`/`key` at `version` (a file's ETag, empty for a
/// directory) gets unless another node has it already.
pub fn number_of(bucket: &str, key: &str, version: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(bucket.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    hasher.update(&[0]);
    hasher.update(version.as_bytes());
    // Never 0 (invalid) or 1 (the root).
    (hasher.digest() >> 1) + 2
}

impl Inodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node behind `ino`, if the kernel holds it.
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.lock().get(&ino).map(|e| Arc::clone(&e.node))
    }

    /// Counts one lookup of `node`; its inode number.
    pub fn remember(&self, node: Node) -> u64 {
        let mut entries = self.lock();
        let mut ino = number_of(&node.bucket, &node.key, node.version());
        // A hash collision (about one in 10^8 nodes): the next free number.
        loop {
            match entries.get_mut(&ino) {
                Some(entry)
                    if entry.node.bucket == node.bucket
                        && entry.node.key == node.key
                        && entry.node.kind == node.kind
                        && entry.node.version() == node.version() =>
                {
                    entry.lookups += 1;
                    return ino;
                }
                Some(_) => ino = ino.wrapping_add(1).max(2),
                None => {
                    let node = Arc::new(node);
                    entries.insert(ino, Entry { node, lookups: 1 });
                    return ino;
                }
            }
        }
    }

    /// The kernel forgets `lookups` lookups of `ino`.
    pub fn forget(&self, ino: u64, lookups: u64) {
        if ino == ROOT {
            return;
        }
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&ino) {
            entry.lookups = entry.lookups.saturating_sub(lookups);
            if entry.lookups == 0 {
                entries.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::ObjectMeta;

    fn file(key: &str, etag: &str) -> Node {
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: 10,
            etag: etag.to_owned(),
            modified: std::time::SystemTime::UNIX_EPOCH,
        };
        Node::file(Arc::from("imagenet"), Arc::new(ObjectInfo::new(meta, 0)))
    }

    #[test]
    fn a_path_keeps_its_number_until_the_kernel_forgets_it() {
        let inodes = Inodes::default();
        let ino = inodes.remember(file("a/b.jpg", "v1"));
        assert_eq!(ino, number_of("imagenet", "a/b.jpg", "v1"));
        assert_eq!(inodes.remember(file("a/b.jpg", "v1")), ino);
        inodes.forget(ino, 1);
        assert!(inodes.get(ino).is_some(), "one lookup left");
        inodes.forget(ino, 1);
        assert!(inodes.get(ino).is_none());
        inodes.forget(ROOT, 5);
        assert!(inodes.get(ROOT).is_some(), "the root stays");
    }

    #[test]
    fn a_new_version_is_a_new_inode_and_the_old_one_keeps_its_version() {
        let inodes = Inodes::default();
        let old = inodes.remember(file("x", "v1"));
        let new = inodes.remember(file("x", "v2"));
        assert_ne!(old, new, "the kernel starts a fresh page cache");
        let etag = |ino| {
            let node = inodes.get(ino).expect("held");
            node.object.as_ref().expect("a file").meta.etag.clone()
        };
        assert_eq!(etag(old), "v1", "open files keep reading their version");
        assert_eq!(etag(new), "v2");
        let dir = inodes.remember(Node::dir(Arc::from("imagenet"), "x/".to_owned()));
        assert_eq!(dir, number_of("imagenet", "x/", ""));
    }
}
