//! The FUSE file system: every data set a directory named after its bucket,
//! directories from listings (prefixes folded at `/`), attributes from
//! object metadata, reads from the chunk layer. Read-only: the mount says
//! so, and the kernel answers writes, creates, renames and unlinks with
//! `EROFS` before they get here; an open for writing that does is refused
//! with `EROFS` too. Calls a read-only tree has no use for (extended
//! attributes, `ioctl`, `fsync`, `lseek` for holes) are answered at once and
//! quietly, most of them so that the kernel stops asking.
//!
//! fuser calls these methods on its session threads; anything that may wait
//! (metadata, chunks, listings) runs as a task on the proxy's runtime and
//! replies from there, so a session thread is never blocked by a slow read.
//!
//! A file's version is fixed when the kernel looks it up (see `inodes`), so
//! `open` has nothing to do: where the kernel supports it, the mount asks it
//! not to send opens and releases at all, and a warm epoch of small files
//! is served from the kernel's page cache without a round trip here.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyXattr, Request,
};
use futures::StreamExt;

use ferry_config::MetadataTtl;

use super::inodes::{Inodes, Kind, Node, ROOT, number_of};
use crate::chunk::ReadAhead;
use crate::dataset::Dataset;
use crate::mesh::Mesh;
use crate::metadata::ObjectInfo;
use crate::metadata::list::ListRequest;
use crate::origin::OriginError;
use crate::telemetry::Direction;

/// How long the kernel trusts the root's entries: data sets come and go
/// with the control plane's configuration.
const ROOT_TTL: Duration = Duration::from_secs(5);
/// `metadata_ttl: job`: as long as the kernel cares to remember.
const JOB_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Directory entries listed per listing page.
const LIST_PAGE: usize = 1000;

/// The largest read the kernel sends, and its read-ahead: 1 MiB, the most
/// FUSE allows (256 pages). Against 128 KiB, 4 MiB sequential reads through
/// the mount ran 2.05–2.25 GB/s against 1.94–2.01 (`ferry-bench epochs
/// --access posix --shards --drop-pages`).
pub const MAX_READ: u32 = 1 << 20;

/// A directory's entries as `opendir` listed them: (inode, kind, name).
type Listed = Arc<Vec<(u64, FileType, String)>>;

/// The file system.
pub struct FerryFs {
    mesh: Arc<Mesh>,
    runtime: tokio::runtime::Handle,
    inodes: Arc<Inodes>,
    dirs: Arc<Mutex<HashMap<u64, Listed>>>,
    next_handle: AtomicU64,
    /// The kernel agreed to skip opens and releases of files.
    no_open: bool,
    /// Owner of every entry: the proxy's user.
    owner: (u32, u32),
    started: SystemTime,
}

impl FerryFs {
    /// The data sets of `mesh`, read on `runtime`.
    pub fn new(mesh: Arc<Mesh>, runtime: tokio::runtime::Handle) -> Self {
        Self {
            mesh,
            runtime,
            inodes: Arc::default(),
            dirs: Arc::default(),
            next_handle: AtomicU64::new(1),
            no_open: false,
            owner: (
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            ),
            started: SystemTime::now(),
        }
    }

    fn dataset(&self, bucket: &str) -> Option<Arc<Dataset>> {
        self.mesh.datasets().get(bucket).cloned()
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        attr(ino, Kind::Dir, 0, self.started, self.owner)
    }
}

/// How long the kernel may trust entries and attributes of `dataset`.
fn ttl_of(dataset: &Dataset) -> Duration {
    match dataset.policy.metadata_ttl {
        MetadataTtl::Job => JOB_TTL,
        MetadataTtl::After(ttl) => ttl,
    }
}

fn attr(ino: u64, kind: Kind, size: u64, modified: SystemTime, owner: (u32, u32)) -> FileAttr {
    let file = kind == Kind::File;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: modified,
        mtime: modified,
        ctime: modified,
        crtime: modified,
        kind: if file {
            FileType::RegularFile
        } else {
            FileType::Directory
        },
        perm: if file { 0o444 } else { 0o555 },
        nlink: if file { 1 } else { 2 },
        uid: owner.0,
        gid: owner.1,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

/// The errno an origin failure becomes.
fn errno_of(err: &OriginError) -> Errno {
    match err {
        OriginError::NotFound { .. } | OriginError::InvalidKey { .. } => Errno::ENOENT,
        OriginError::Denied { .. } => Errno::EACCES,
        _ => Errno::EIO,
    }
}

/// Every entry of directory `prefix` of `dataset`: its name, and its ETag
/// if it is a file.
async fn children(
    dataset: &Dataset,
    prefix: &str,
) -> Result<Vec<(String, Option<String>)>, OriginError> {
    let mut entries = Vec::new();
    let mut after = String::new();
    loop {
        let page = dataset
            .list(&ListRequest {
                prefix,
                delimiter: Some("/"),
                max_keys: LIST_PAGE,
                after: &after,
            })
            .await?;
        for object in &page.objects {
            let name = &object.key[prefix.len()..];
            if !name.is_empty() {
                entries.push((name.to_owned(), Some(object.etag.clone())));
            }
        }
        for common in &page.common_prefixes {
            let name = common[prefix.len()..].trim_end_matches('/');
            if !name.is_empty() {
                entries.push((name.to_owned(), None));
            }
        }
        match page.next_after {
            Some(next) if page.truncated => after = next,
            _ => break,
        }
    }
    entries.sort();
    entries.dedup_by(|a, b| a.0 == b.0);
    Ok(entries)
}

/// The longest pause between retries of a read a busy upstream refused.
const MAX_BUSY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(4);

/// Bytes `range` of version `object`, in one piece. A file reader cannot be
/// told to slow down, so a busy upstream (`SlowDown`) is waited out, backing
/// off from 50 ms to 4 s (about 8 s in all) before the read fails with EIO.
async fn read_range(
    dataset: &Dataset,
    object: &Arc<ObjectInfo>,
    range: std::ops::Range<u64>,
) -> Result<Bytes, OriginError> {
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        match read_range_once(dataset, object, range.clone()).await {
            Err(OriginError::Busy { .. }) if backoff <= MAX_BUSY_BACKOFF => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            read => return read,
        }
    }
}

/// [`read_range`], once. Pinned to that version: a changed object is an
/// error (EIO), never a mix of two versions.
async fn read_range_once(
    dataset: &Dataset,
    object: &Arc<ObjectInfo>,
    range: std::ops::Range<u64>,
) -> Result<Bytes, OriginError> {
    let len = (range.end - range.start) as usize;
    let read = dataset
        .read(object, range, ReadAhead::IfSequential)
        .await?
        .chunks;
    let Some(mut rest) = read.rest else {
        return Ok(read.head);
    };
    // A read across chunks: the kernel takes one buffer.
    let mut data = BytesMut::with_capacity(len);
    data.extend_from_slice(&read.head);
    while let Some(piece) = rest.next().await {
        data.extend_from_slice(&piece?);
    }
    Ok(data.freeze())
}

impl Filesystem for FerryFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READ);
        // Many readers' requests in flight at once; the default (12) queues
        // a DataLoader's workers behind each other: 110 KB files went from
        // 10.6–10.9 k/s to 15.0–15.7 k/s, 4 MiB reads from 1.7 to 2.0 GB/s.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Zero-message opens (Linux 4.19+); older kernels keep sending them.
        self.no_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (Some(parent), Some(name)) = (self.inodes.get(parent.0), name.to_str()) else {
            return reply.error(Errno::ENOENT);
        };
        if parent.kind == Kind::Root {
            if self.dataset(name).is_none() {
                return reply.error(Errno::ENOENT);
            }
            let ino = self
                .inodes
                .remember(Node::dir(Arc::from(name), String::new()));
            return reply.entry(&ROOT_TTL, &self.dir_attr(ino), Generation(0));
        }
        let Some(dataset) = self.dataset(&parent.bucket) else {
            return reply.error(Errno::ENOENT);
        };
        let key = format!("{}{name}", parent.key);
        let inodes = Arc::clone(&self.inodes);
        let owner = self.owner;
        let started = self.started;
        self.runtime.spawn(async move {
            let ttl = ttl_of(&dataset);
            match dataset.metadata.object(&key).await {
                Ok(info) => {
                    let (size, modified) = (info.meta.size, info.meta.modified);
                    let ino = inodes.remember(Node::file(Arc::clone(&parent.bucket), info));
                    let attr = attr(ino, Kind::File, size, modified, owner);
                    reply.entry(&ttl, &attr, Generation(0));
                }
                Err(OriginError::NotFound { .. } | OriginError::InvalidKey { .. }) => {
                    let prefix = format!("{key}/");
                    let request = ListRequest {
                        prefix: &prefix,
                        delimiter: Some("/"),
                        max_keys: 1,
                        after: "",
                    };
                    match dataset.list(&request).await {
                        Ok(page)
                            if !page.objects.is_empty() || !page.common_prefixes.is_empty() =>
                        {
                            let ino =
                                inodes.remember(Node::dir(Arc::clone(&parent.bucket), prefix));
                            reply.entry(
                                &ttl,
                                &attr(ino, Kind::Dir, 0, started, owner),
                                Generation(0),
                            );
                        }
                        Ok(_) => reply.error(Errno::ENOENT),
                        Err(err) => reply.error(errno_of(&err)),
                    }
                }
                Err(err) => {
                    tracing::warn!(%key, %err, "mount: lookup failed");
                    reply.error(errno_of(&err));
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to write back; the kernel stops sending flushes after this.
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS: the kernel stops asking (`ls -l` asks for security.selinux).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Python's open() asks every file whether it is a terminal; the
        // kernel does not remember the answer, so it comes once per open.
        reply.error(Errno::ENOTTY);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing to write; the kernel stops asking.
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // Files have no holes; ENOSYS makes the kernel answer SEEK_DATA and
        // SEEK_HOLE itself from now on.
        reply.error(Errno::ENOSYS);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let ttl = match node.kind {
            Kind::Root => ROOT_TTL,
            _ => self.dataset(&node.bucket).map_or(ROOT_TTL, |d| ttl_of(&d)),
        };
        match &node.object {
            // The version this inode stands for: its attributes never change.
            Some(object) => {
                let (size, modified) = (object.meta.size, object.meta.modified);
                reply.attr(&ttl, &attr(ino.0, Kind::File, size, modified, self.owner));
            }
            None => reply.attr(&ttl, &self.dir_attr(ino.0)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.0 & libc_accmode() != libc_rdonly() || flags.0 & libc_trunc() != 0;
        if writing {
            return reply.error(Errno::EROFS);
        }
        let Some(node) = self.inodes.get(ino.0).filter(|n| n.kind == Kind::File) else {
            return reply.error(Errno::EISDIR);
        };
        if self.dataset(&node.bucket).is_none() {
            return reply.error(Errno::ENOENT);
        }
        if self.no_open {
            // Not an error: the kernel takes it as "never ask again" and
            // opens every file from now on with its page cache kept.
            return reply.error(Errno::ENOSYS);
        }
        // The inode is one version, so the pages cached for it stay right.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::EBADF);
        };
        let (Some(object), Some(dataset)) = (node.object.clone(), self.dataset(&node.bucket))
        else {
            return reply.error(Errno::EIO);
        };
        let end = offset.saturating_add(u64::from(size)).min(object.meta.size);
        if offset >= end {
            return reply.data(&[]);
        }
        let started = Instant::now();
        self.runtime.spawn(async move {
            let metrics = dataset.metrics.traffic(Direction::Mount);
            metrics.requests.increment(1);
            match read_range(&dataset, &object, offset..end).await {
                Ok(data) => {
                    metrics.count_response(200);
                    metrics.response_bytes.increment(data.len() as u64);
                    metrics.latency.record(started.elapsed());
                    reply.data(&data);
                }
                Err(err) => {
                    tracing::warn!(key = %object.meta.key, %err, "mount: read failed");
                    metrics.count_response(500);
                    metrics.latency.record(started.elapsed());
                    reply.error(Errno::EIO);
                }
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.inodes.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if node.kind == Kind::File {
            return reply.error(Errno::ENOTDIR);
        }
        let handle = self.handle();
        let dirs = Arc::clone(&self.dirs);
        let parent = ino.0;
        if node.kind == Kind::Root {
            let datasets = self.mesh.datasets();
            let mut entries = vec![(ROOT, FileType::Directory, ".".to_owned())];
            entries.push((ROOT, FileType::Directory, "..".to_owned()));
            for dataset in datasets.iter() {
                let bucket = &dataset.policy.bucket;
                entries.push((
                    number_of(bucket, "", ""),
                    FileType::Directory,
                    bucket.clone(),
                ));
            }
            dirs.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(handle, Arc::new(entries));
            return reply.opened(FileHandle(handle), FopenFlags::empty());
        }
        let Some(dataset) = self.dataset(&node.bucket) else {
            return reply.error(Errno::ENOENT);
        };
        self.runtime.spawn(async move {
            match children(&dataset, &node.key).await {
                Ok(children) => {
                    let mut entries = vec![(parent, FileType::Directory, ".".to_owned())];
                    entries.push((ROOT, FileType::Directory, "..".to_owned()));
                    for (name, etag) in children {
                        let (kind, key, version) = match &etag {
                            None => (FileType::Directory, format!("{}{name}/", node.key), ""),
                            Some(etag) => (
                                FileType::RegularFile,
                                format!("{}{name}", node.key),
                                etag.as_str(),
                            ),
                        };
                        entries.push((number_of(&node.bucket, &key, version), kind, name));
                    }
                    dirs.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(handle, Arc::new(entries));
                    reply.opened(FileHandle(handle), FopenFlags::empty());
                }
                Err(err) => reply.error(errno_of(&err)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned();
        let Some(entries) = entries else {
            return reply.error(Errno::EBADF);
        };
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.inodes.get(ino.0) {
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}

fn libc_accmode() -> i32 {
    rustix::fs::OFlags::ACCMODE.bits() as i32
}

fn libc_rdonly() -> i32 {
    rustix::fs::OFlags::RDONLY.bits() as i32
}

fn libc_trunc() -> i32 {
    rustix::fs::OFlags::TRUNC.bits() as i32
}
