//! The worker's local-disk tier: one file per chunk, each with a header
//! holding its key, length and checksum. A chunk read back is verified; a
//! corrupt one is deleted, counted and fetched again, never served. The
//! index is rebuilt from the files at start, so a restarted worker serves
//! what it had cached.
//!
//! Why not foyer's hybrid cache: its block engine checks its own checksum
//! and turns a mismatch into a silent miss, so corruption could not be
//! counted, and chunks share block files, so a corrupt chunk cannot be
//! found or tested on its own.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use metrics::{Counter, Gauge};
use xxhash_rust::xxh3::xxh3_64;

use super::ChunkKey;

const MAGIC: &[u8; 8] = b"FERRYCK1";
const HEADER_LEN: usize = 8 + 16 + 4 + 8 + 8;
/// Chunk bytes waiting to be written at once; beyond this, writes are skipped.
const MAX_PENDING_WRITE_BYTES: u64 = 256 << 20;
/// After the disk refuses a write (full, read-only, over quota), how long
/// new chunks are not even tried: reads go on from memory and upstream.
const DISK_FAULT_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

/// Counters the disk tier updates.
#[derive(Clone)]
pub struct DiskCounters {
    /// Chunks removed to make room.
    pub evictions: Counter,
    /// Chunks not stored (full under `pin`, or too many writes pending).
    pub rejections: Counter,
    /// Chunks whose checksum or header did not match when read.
    pub checksum_failures: Counter,
    /// Bytes stored.
    pub bytes: Gauge,
}

#[derive(Default)]
struct Index {
    lengths: HashMap<ChunkKey, u64>,
    order: VecDeque<ChunkKey>,
    used: u64,
}

impl Index {
    fn insert(&mut self, key: ChunkKey, len: u64) {
        if self.lengths.insert(key, len).is_none() {
            self.order.push_back(key);
            self.used += len;
        }
    }

    fn remove(&mut self, key: &ChunkKey) -> bool {
        match self.lengths.remove(key) {
            Some(len) => {
                self.used -= len;
                true
            }
            None => false,
        }
    }

    /// The oldest chunk still held.
    fn pop_oldest(&mut self) -> Option<ChunkKey> {
        while let Some(key) = self.order.pop_front() {
            if self.remove(&key) {
                return Some(key);
            }
        }
        None
    }
}

/// Chunks of one data set on local disk.
pub struct DiskTier {
    dir: Arc<Path>,
    capacity: u64,
    /// Full under `pin`: refuse new chunks instead of evicting old ones.
    evict: bool,
    index: Arc<Mutex<Index>>,
    pending: Arc<AtomicU64>,
    counters: DiskCounters,
    /// Milliseconds after `opened` until which admissions are paused.
    paused_until_ms: Arc<AtomicU64>,
    opened: std::time::Instant,
}

impl DiskTier {
    /// Opens (creating if needed) the tier in `dir`, indexing what is there.
    /// With `evict` false it keeps what it holds once full (`pin`).
    pub fn open(
        dir: &Path,
        capacity: u64,
        evict: bool,
        counters: DiskCounters,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create disk cache {}", dir.display()))?;
        let mut found = Vec::new();
        let mut dropped = 0usize;
        for shard in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&shard)? {
                let path = entry?.path();
                match read_header(&path) {
                    Some((key, len, modified)) if path == chunk_path(dir, &key) => {
                        found.push((modified, key, len))
                    }
                    // Torn writes, truncated, foreign or renamed files: not ours to serve.
                    _ => {
                        dropped += 1;
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(
                dir = %dir.display(),
                dropped,
                kept = found.len(),
                "disk cache: dropped files that were not whole chunks (torn writes, truncation); kept the rest"
            );
        }
        found.sort_by_key(|(modified, _, _)| *modified);
        let mut index = Index::default();
        for (_, key, len) in found {
            index.insert(key, len);
        }
        let tier = Self {
            dir: dir.into(),
            capacity,
            evict,
            index: Arc::new(Mutex::new(index)),
            pending: Arc::new(AtomicU64::new(0)),
            counters,
            paused_until_ms: Arc::new(AtomicU64::new(0)),
            opened: std::time::Instant::now(),
        };
        // The capacity may have shrunk since the last run.
        let doomed = {
            let mut index = tier.lock();
            let mut doomed = Vec::new();
            while index.used > capacity {
                let Some(key) = index.pop_oldest() else { break };
                doomed.push(key);
            }
            tier.counters.bytes.set(index.used as f64);
            doomed
        };
        for key in doomed {
            let _ = fs::remove_file(chunk_path(&tier.dir, &key));
        }
        Ok(tier)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunks held.
    pub fn entries(&self) -> usize {
        self.lock().lengths.len()
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// Whether the index holds the chunk (not read or verified).
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.lock().lengths.contains_key(key)
    }

    /// Its capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The chunk, verified, if it is on disk.
    pub async fn get(&self, key: ChunkKey) -> Option<Bytes> {
        let expected = *self.lock().lengths.get(&key)?;
        let path = chunk_path(&self.dir, &key);
        let read = tokio::task::spawn_blocking(move || read_chunk(&path, &key, expected)).await;
        match read {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(why)) => {
                tracing::warn!(?key, %why, "disk cache chunk failed verification; fetching it again");
                self.counters.checksum_failures.increment(1);
                self.discard(key);
                None
            }
            Err(_) => None,
        }
    }

    fn discard(&self, key: ChunkKey) {
        let removed = {
            let mut index = self.lock();
            let removed = index.remove(&key);
            self.counters.bytes.set(index.used as f64);
            removed
        };
        if removed {
            let path = chunk_path(&self.dir, &key);
            tokio::task::spawn_blocking(move || fs::remove_file(path));
        }
    }

    /// Stores a chunk in the background (the caller never waits for the disk).
    pub fn put(&self, key: ChunkKey, chunk: Bytes) {
        let len = chunk.len() as u64;
        let now_ms = self.opened.elapsed().as_millis() as u64;
        if len > self.capacity || now_ms < self.paused_until_ms.load(Ordering::Relaxed) {
            self.counters.rejections.increment(1);
            return;
        }
        if self.pending.fetch_add(len, Ordering::AcqRel) + len > MAX_PENDING_WRITE_BYTES {
            self.pending.fetch_sub(len, Ordering::AcqRel);
            self.counters.rejections.increment(1);
            return;
        }
        let evicted = {
            let mut index = self.lock();
            if index.lengths.contains_key(&key) {
                drop(index);
                self.pending.fetch_sub(len, Ordering::AcqRel);
                return;
            }
            let mut evicted = Vec::new();
            while index.used + len > self.capacity {
                if !self.evict {
                    break;
                }
                match index.pop_oldest() {
                    Some(old) => evicted.push(old),
                    None => break,
                }
            }
            if index.used + len > self.capacity {
                drop(index);
                self.pending.fetch_sub(len, Ordering::AcqRel);
                self.counters.rejections.increment(1);
                return;
            }
            index.insert(key, len);
            self.counters.bytes.set(index.used as f64);
            evicted
        };
        self.counters.evictions.increment(evicted.len() as u64);
        let dir = Arc::clone(&self.dir);
        let pending = Arc::clone(&self.pending);
        let index = Arc::clone(&self.index);
        let counters = self.counters.clone();
        let paused_until_ms = Arc::clone(&self.paused_until_ms);
        tokio::task::spawn_blocking(move || {
            for old in evicted {
                let _ = fs::remove_file(chunk_path(&dir, &old));
            }
            if let Err(err) = write_chunk(&dir, &key, &chunk) {
                // A failed write must not leave an index entry pointing at nothing.
                let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
                index.remove(&key);
                counters.bytes.set(index.used as f64);
                counters.rejections.increment(1);
                drop(index);
                if disk_refuses_writes(&err) {
                    let until = now_ms + DISK_FAULT_PAUSE.as_millis() as u64;
                    if paused_until_ms.swap(until, Ordering::Relaxed) <= now_ms {
                        tracing::warn!(
                            %err,
                            pause = ?DISK_FAULT_PAUSE,
                            "disk cache: the disk refuses writes; not storing chunks for a while (reads go on)"
                        );
                    }
                } else {
                    tracing::warn!(%err, "disk cache write failed");
                }
            }
            pending.fetch_sub(len, Ordering::AcqRel);
        });
    }
}

/// Where a chunk lives: 256 subdirectories by the first byte of its object hash.
fn chunk_path(dir: &Path, key: &ChunkKey) -> PathBuf {
    dir.join(format!("{:02x}", (key.object >> 120) as u8))
        .join(format!("{:032x}-{:08x}.chunk", key.object, key.index))
}

fn header(key: &ChunkKey, data: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..24].copy_from_slice(&key.object.to_le_bytes());
    header[24..28].copy_from_slice(&key.index.to_le_bytes());
    header[28..36].copy_from_slice(&(data.len() as u64).to_le_bytes());
    header[36..44].copy_from_slice(&xxh3_64(data).to_le_bytes());
    header
}

/// A disk that is full, read-only or over its quota: trying again at once
/// would fail the same way.
fn disk_refuses_writes(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::StorageFull | ErrorKind::ReadOnlyFilesystem | ErrorKind::QuotaExceeded
    )
}

/// Writes to a temporary name and renames, so a crash leaves no half file
/// under the chunk's name; a write that fails leaves no file at all (a full
/// disk keeps no half-written chunks).
fn write_chunk(dir: &Path, key: &ChunkKey, data: &[u8]) -> std::io::Result<()> {
    let path = chunk_path(dir, key);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("partial");
    let written = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(&header(key, data))?;
        file.write_all(data)?;
        drop(file);
        fs::rename(&temporary, &path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// The key, length and modification time a chunk file's header claims.
fn read_header(path: &Path) -> Option<(ChunkKey, u64, std::time::SystemTime)> {
    let mut file = fs::File::open(path).ok()?;
    let metadata = file.metadata().ok()?;
    let mut header = [0u8; HEADER_LEN];
    file.read_exact(&mut header).ok()?;
    if &header[..8] != MAGIC {
        return None;
    }
    let key = ChunkKey {
        object: u128::from_le_bytes(header[8..24].try_into().ok()?),
        index: u32::from_le_bytes(header[24..28].try_into().ok()?),
    };
    let len = u64::from_le_bytes(header[28..36].try_into().ok()?);
    (metadata.len() == HEADER_LEN as u64 + len).then(|| {
        (
            key,
            len,
            metadata.modified().unwrap_or(std::time::UNIX_EPOCH),
        )
    })
}

/// Reads and verifies a chunk file.
fn read_chunk(path: &Path, key: &ChunkKey, expected_len: u64) -> Result<Bytes, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 != HEADER_LEN as u64 + expected_len {
        return Err(format!(
            "{} bytes on disk, {} expected",
            bytes.len(),
            HEADER_LEN as u64 + expected_len
        ));
    }
    let data = &bytes[HEADER_LEN..];
    if bytes[..HEADER_LEN] != header(key, data) {
        return Err("header or checksum mismatch".to_owned());
    }
    Ok(Bytes::from(bytes).slice(HEADER_LEN..))
}

/// A disk cache's fingerprint seed, and whether the chunks beside it were
/// keyed with a seed that is lost (so can never be found, and must go).
pub struct Seed {
    /// The seed.
    pub value: u64,
    /// The seed file was missing or unreadable while chunks may exist.
    pub chunks_orphaned: bool,
}

/// The fingerprint seed of a disk cache: random on first use, then kept in
/// the directory so a restarted worker finds its chunks under the same keys.
/// A seed file that is unreadable (truncated, garbage) is replaced, and the
/// chunks keyed with the old one are reported orphaned; one that cannot be
/// written (a read-only disk) leaves a seed for this run only.
pub fn persistent_seed(dir: &Path) -> Seed {
    use std::hash::BuildHasher;
    let path = dir.join("seed");
    let existing = fs::read_to_string(&path);
    // Written as exactly 16 hex digits: anything shorter is a torn write,
    // even where what is left still parses.
    if let Ok(text) = &existing
        && text.trim().len() == 16
        && let Ok(value) = u64::from_str_radix(text.trim(), 16)
    {
        return Seed {
            value,
            chunks_orphaned: false,
        };
    }
    let value = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    let chunks_orphaned = existing.is_ok() || dir.join("chunks").exists();
    if existing.is_ok() {
        tracing::warn!(path = %path.display(), "disk cache: the seed file is unreadable; starting a new one");
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = fs::create_dir_all(dir)
        .and_then(|()| options.open(&path))
        .and_then(|mut file| writeln!(file, "{value:016x}"));
    if let Err(err) = written {
        tracing::warn!(path = %path.display(), %err, "disk cache: cannot keep a seed; chunks stored now will not outlive this run");
    }
    Seed {
        value,
        chunks_orphaned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> DiskCounters {
        DiskCounters {
            evictions: Counter::noop(),
            rejections: Counter::noop(),
            checksum_failures: Counter::noop(),
            bytes: Gauge::noop(),
        }
    }

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-disk-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn key(index: u32) -> ChunkKey {
        ChunkKey {
            object: 0xabcd_0000_0000_0000_0000_0000_0000_1234,
            index,
        }
    }

    /// Waits until the tier's background writes are done.
    async fn settle(tier: &DiskTier) {
        while tier.pending.load(Ordering::Acquire) > 0 {
            tokio::task::yield_now().await;
        }
        tokio::task::spawn_blocking(|| ())
            .await
            .expect("blocking pool");
    }

    #[tokio::test]
    async fn chunks_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let tier = DiskTier::open(&dir, 1 << 20, true, counters()).expect("open");
        tier.put(key(1), Bytes::from_static(b"hello chunk"));
        settle(&tier).await;
        assert_eq!(tier.get(key(1)).await.as_deref(), Some(&b"hello chunk"[..]));
        drop(tier);
        let again = DiskTier::open(&dir, 1 << 20, true, counters()).expect("reopen");
        assert_eq!(again.entries(), 1);
        assert_eq!(
            again.get(key(1)).await.as_deref(),
            Some(&b"hello chunk"[..])
        );
        assert_eq!(again.get(key(2)).await, None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn corrupt_chunks_are_dropped_and_counted() {
        let dir = temp_dir("corrupt");
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshot = recorder.snapshotter();
        let failures = metrics::with_local_recorder(&recorder, || metrics::counter!("failures"));
        let tier = DiskTier::open(
            &dir,
            1 << 20,
            true,
            DiskCounters {
                checksum_failures: failures,
                ..counters()
            },
        )
        .expect("open");
        tier.put(key(7), Bytes::from(vec![42u8; 1000]));
        settle(&tier).await;
        let path = chunk_path(&dir, &key(7));
        let mut raw = fs::read(&path).expect("file");
        raw[HEADER_LEN + 500] ^= 0xff;
        fs::write(&path, raw).expect("corrupt");
        assert_eq!(
            tier.get(key(7)).await,
            None,
            "a corrupt chunk is never served"
        );
        assert_eq!(tier.entries(), 0);
        let counted = snapshot
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(key, ..)| key.key().name() == "failures")
            .map(|(_, _, _, value)| value);
        assert_eq!(
            counted,
            Some(metrics_util::debugging::DebugValue::Counter(1))
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn pin_refuses_when_full_and_evicting_tiers_drop_the_oldest() {
        let dir = temp_dir("full");
        let pin = DiskTier::open(&dir.join("pin"), 25, false, counters()).expect("open");
        for index in 0..3 {
            pin.put(key(index), Bytes::from(vec![index as u8; 10]));
        }
        settle(&pin).await;
        assert_eq!(pin.entries(), 2);
        assert!(pin.get(key(0)).await.is_some() && pin.get(key(2)).await.is_none());
        let fifo = DiskTier::open(&dir.join("fifo"), 25, true, counters()).expect("open");
        for index in 0..3 {
            fifo.put(key(index), Bytes::from(vec![index as u8; 10]));
        }
        settle(&fifo).await;
        assert_eq!(fifo.entries(), 2);
        assert!(fifo.get(key(0)).await.is_none() && fifo.get(key(2)).await.is_some());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_seed_is_kept() {
        let dir = temp_dir("seed");
        let first = persistent_seed(&dir);
        assert!(
            !first.chunks_orphaned,
            "a new cache has no chunks to orphan"
        );
        let again = persistent_seed(&dir);
        assert_eq!(again.value, first.value);
        assert!(!again.chunks_orphaned);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("seed"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // Truncated: a new seed, and the chunks keyed with the old one are orphans.
        fs::write(dir.join("seed"), "12").expect("truncate");
        let replaced = persistent_seed(&dir);
        assert!(replaced.chunks_orphaned);
        assert_ne!(replaced.value, first.value);
        let _ = fs::remove_dir_all(&dir);
    }
}
