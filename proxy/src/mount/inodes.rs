//! Inode numbers for the mount: one per (data set, path), derived from a
//! hash of both, so the same path keeps its number for as long as the
//! kernel remembers it (and `readdir` can name it without a table entry).
//! Entries live from the kernel's first lookup to its last forget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
}

struct Entry {
    node: Node,
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
    /// The ETag the file was last opened at: the kernel's cached pages are
    /// kept only while it stays the same.
    etag: Option<String>,
}

/// The inodes the kernel holds.
pub struct Inodes {
    entries: Mutex<HashMap<u64, Entry>>,
}

impl Default for Inodes {
    fn default() -> Self {
        let root = Entry {
            node: Node {
                bucket: Arc::from(""),
                key: String::new(),
                kind: Kind::Root,
            },
            lookups: 1,
            etag: None,
        };
        Self {
            entries: Mutex::new(HashMap::from([(ROOT, root)])),
        }
    }
}

/// The number `bucket`/`key` gets unless another path has it already.
pub fn number_of(bucket: &str, key: &str) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(bucket.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    // Never 0 (invalid) or 1 (the root).
    (hasher.digest() >> 1) + 2
}

impl Inodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node behind `ino`, if the kernel holds it.
    pub fn get(&self, ino: u64) -> Option<Node> {
        self.lock().get(&ino).map(|e| e.node.clone())
    }

    /// Counts one lookup of `node`; its inode number.
    pub fn remember(&self, node: Node) -> u64 {
        let mut entries = self.lock();
        let mut ino = number_of(&node.bucket, &node.key);
        // A hash collision (about one in 10^8 paths): the next free number.
        loop {
            match entries.get_mut(&ino) {
                Some(entry) if entry.node.bucket == node.bucket && entry.node.key == node.key => {
                    entry.lookups += 1;
                    entry.node.kind = node.kind;
                    return ino;
                }
                Some(_) => ino = ino.wrapping_add(1).max(2),
                None => {
                    entries.insert(
                        ino,
                        Entry {
                            node,
                            lookups: 1,
                            etag: None,
                        },
                    );
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

    /// Records that `ino` was opened at `etag`: whether the kernel may keep
    /// the pages it cached (the same version as the last open).
    pub fn opened_at(&self, ino: u64, etag: &str) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&ino) else {
            return false;
        };
        let same = entry.etag.as_deref() == Some(etag);
        if !same {
            entry.etag = Some(etag.to_owned());
        }
        same
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str) -> Node {
        Node {
            bucket: Arc::from("imagenet"),
            key: key.to_owned(),
            kind: Kind::File,
        }
    }

    #[test]
    fn a_path_keeps_its_number_until_the_kernel_forgets_it() {
        let inodes = Inodes::default();
        let ino = inodes.remember(file("a/b.jpg"));
        assert_eq!(ino, number_of("imagenet", "a/b.jpg"));
        assert_eq!(inodes.remember(file("a/b.jpg")), ino);
        inodes.forget(ino, 1);
        assert!(inodes.get(ino).is_some(), "one lookup left");
        inodes.forget(ino, 1);
        assert!(inodes.get(ino).is_none());
        inodes.forget(ROOT, 5);
        assert!(inodes.get(ROOT).is_some(), "the root stays");
    }

    #[test]
    fn cached_pages_are_kept_only_for_the_same_version() {
        let inodes = Inodes::default();
        let ino = inodes.remember(file("x"));
        assert!(!inodes.opened_at(ino, "v1"), "first open: nothing to keep");
        assert!(inodes.opened_at(ino, "v1"));
        assert!(
            !inodes.opened_at(ino, "v2"),
            "a new version drops the pages"
        );
        assert!(inodes.opened_at(ino, "v2"));
    }
}
