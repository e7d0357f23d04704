//! The training-read workload: a data set of samples (or shards read as
//! ranges), a fresh shuffle every epoch, R concurrent readers, and per-epoch
//! throughput, latency and errors.

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use ferry_config::{ByteSize, SizeDistribution, SyntheticSpec};

use crate::client::Reader;

/// One GET of a workload.
#[derive(Clone, Debug)]
pub struct Read {
    /// Key of the object.
    pub key: String,
    /// Inclusive byte range, or the whole object.
    pub range: Option<(u64, u64)>,
    /// Bytes expected.
    pub len: u64,
}

/// A unit of work one reader takes: one sample, or one shard's ranges in order.
pub type Item = Vec<Read>;

/// What the workload reads.
pub struct DataSet {
    /// The items, unshuffled.
    pub items: Arc<Vec<Item>>,
    /// Total bytes of one epoch.
    pub bytes: u64,
}

/// An ImageNet-like synthetic data set of `count` samples around `size`.
pub fn sample_spec(count: u64, size: ByteSize, seed: u64) -> anyhow::Result<SyntheticSpec> {
    anyhow::ensure!(
        count > 0 && size.bytes() > 0,
        "a data set needs at least one sample of at least one byte"
    );
    Ok(SyntheticSpec {
        count,
        size,
        seed,
        ..SyntheticSpec::default()
    })
}

/// A synthetic data set of `count` shards of exactly `size`.
pub fn shard_spec(count: u64, size: ByteSize, seed: u64) -> anyhow::Result<SyntheticSpec> {
    anyhow::ensure!(
        count > 0 && size.bytes() > 0,
        "a data set needs at least one shard of at least one byte"
    );
    Ok(SyntheticSpec {
        count,
        size,
        seed,
        dist: SizeDistribution::Fixed,
        suffix: ".tar".to_owned(),
        ..SyntheticSpec::default()
    })
}

impl DataSet {
    /// Every object read whole (ImageNet-style samples).
    pub fn samples(spec: SyntheticSpec) -> Self {
        let items: Vec<Item> = (0..spec.count)
            .map(|i| {
                vec![Read {
                    key: spec.key(i),
                    range: None,
                    len: spec.object_size(i),
                }]
            })
            .collect();
        Self::from_items(items)
    }

    /// Every object read front to back in `range_size` pieces (webdataset-style shards).
    pub fn shards(spec: SyntheticSpec, range_size: u64) -> Self {
        let items: Vec<Item> = (0..spec.count)
            .map(|i| {
                let size = spec.object_size(i);
                (0..size.div_ceil(range_size))
                    .map(|piece| {
                        let start = piece * range_size;
                        let end = (start + range_size).min(size) - 1;
                        Read {
                            key: spec.key(i),
                            range: Some((start, end)),
                            len: end - start + 1,
                        }
                    })
                    .collect()
            })
            .collect();
        Self::from_items(items)
    }

    fn from_items(items: Vec<Item>) -> Self {
        let bytes = items.iter().flatten().map(|r| r.len).sum();
        Self {
            items: Arc::new(items),
            bytes,
        }
    }

    /// A cache size that holds the whole data set with room to spare.
    pub fn cache_for_all(&self) -> ByteSize {
        ByteSize(self.bytes + self.bytes / 4 + (64 << 20))
    }

    /// Number of GETs in one epoch.
    pub fn reads(&self) -> usize {
        self.items.iter().map(Vec::len).sum()
    }

    /// The size of the largest single read.
    pub fn largest_read(&self) -> u64 {
        self.items
            .iter()
            .flatten()
            .map(|r| r.len)
            .max()
            .unwrap_or(0)
    }

    /// Epoch `epoch`'s order: a fresh shuffle, the same for every mode.
    pub fn order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        order.shuffle(&mut rng);
        order
    }
}

/// Where reads go.
#[derive(Clone)]
pub enum Target {
    /// No I/O: the reader takes the bytes from memory it already has.
    Synthetic(Bytes),
    /// An HTTP server; keys are requested as `<prefix>/<key>`.
    Http {
        /// Server address.
        addr: SocketAddr,
        /// Path before the key: `/bucket` or empty.
        prefix: String,
        /// Check every byte against the synthetic data set this describes.
        verify: Option<Arc<SyntheticSpec>>,
    },
    /// Files: keys are paths under `root`, read with blocking
    /// open/read/close on threads of their own, as DataLoader workers do.
    Files {
        /// The directory keys are relative to.
        root: Arc<PathBuf>,
        /// Drop each file's cached pages after reading it.
        drop_pages: bool,
    },
}

impl Target {
    /// Files under `root`; with `drop_pages`, the kernel is told to drop
    /// each file's cached pages once it is read, so the next epoch reads
    /// through the file system again, as when the data set is larger than
    /// the machine's memory (tmpfs pages are the storage and stay).
    pub fn files(root: &Path, drop_pages: bool) -> Self {
        Self::Files {
            root: Arc::new(root.to_path_buf()),
            drop_pages,
        }
    }

    /// An HTTP target that does not verify bytes.
    pub fn http(addr: SocketAddr, prefix: impl Into<String>) -> Self {
        Self::Http {
            addr,
            prefix: prefix.into(),
            verify: None,
        }
    }
}

/// Results of one epoch.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// GETs completed.
    pub reads: usize,
    /// Items (samples or shards) completed.
    pub items: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Failed reads.
    pub errors: usize,
    /// Reads whose bytes differed from the data set (when verifying).
    pub wrong_bytes: usize,
    /// Median read latency in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile read latency in milliseconds.
    pub p99_ms: f64,
    /// Cache hit ratio of the epoch, when reading through a proxy (the
    /// sidecar's, in a pool).
    pub hit_ratio: Option<f64>,
    /// Hit ratio of the workers' caches (pool topology).
    pub pool_hit_ratio: Option<f64>,
    /// Bytes the proxies read from the origin during the epoch.
    pub origin_bytes: Option<u64>,
    /// Most requests any worker got over the mean (pool topology).
    pub load_evenness: Option<f64>,
    /// CPU seconds Ferry's processes (proxy, or sidecar and workers) used.
    pub proxy_cpu_seconds: Option<f64>,
    /// Each read's start (ms since the epoch began) and latency (µs).
    #[serde(skip)]
    pub timeline: Vec<(u32, u32)>,
}

impl EpochStats {
    /// Items per second.
    pub fn items_per_second(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
    /// GETs per second.
    pub fn reads_per_second(&self) -> f64 {
        self.reads as f64 / self.seconds.max(1e-9)
    }
    /// Megabytes (10^6) per second.
    pub fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(total: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {per_sec}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// Epoch `epoch` of `data` in its shuffle for `seed`, with a progress bar
/// named `label`: what most scenarios run.
pub async fn read_epoch(
    data: &DataSet,
    target: &Target,
    readers: usize,
    seed: u64,
    epoch: usize,
    label: &str,
) -> EpochStats {
    let bar = progress(data.items.len(), label);
    let mut stats = run_epoch(data, data.order(seed, epoch), target, readers, &bar).await;
    bar.finish_and_clear();
    stats.epoch = epoch;
    stats
}

/// Reads every item of `data` once, in `order`, with `readers` concurrent readers.
pub async fn run_epoch(
    data: &DataSet,
    order: Vec<usize>,
    target: &Target,
    readers: usize,
    bar: &ProgressBar,
) -> EpochStats {
    if let Target::Files { root, drop_pages } = target {
        let items = data.items.clone();
        let root = root.clone();
        let drop_pages = *drop_pages;
        let bar = bar.clone();
        return tokio::task::spawn_blocking(move || {
            file_epoch(&items, &order, &root, drop_pages, readers, &bar)
        })
        .await
        .unwrap_or_default();
    }
    let order = Arc::new(order);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..readers.max(1))
        .map(|_| {
            let order = order.clone();
            let next = next.clone();
            let items = data.items.clone();
            let target = target.clone();
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut local = ReaderTotals::default();
                let mut reader = match &target {
                    Target::Http { addr, .. } => Some(Reader::new(*addr)),
                    Target::Synthetic(_) | Target::Files { .. } => None,
                };
                let mut path = String::new();
                let mut expected = Vec::new();
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&item) = order.get(at) else { break };
                    for read in &items[item] {
                        let begun = Instant::now();
                        let outcome = match (&target, reader.as_mut()) {
                            (Target::Synthetic(memory), _) => {
                                let sample = memory.slice(..read.len as usize);
                                Ok(std::hint::black_box(sample).len() as u64)
                            }
                            (Target::Http { prefix, verify, .. }, Some(reader)) => {
                                path.clear();
                                path.push_str(prefix);
                                path.push('/');
                                path.push_str(&read.key);
                                match verify {
                                    None => reader.get(&path, read.range).await,
                                    Some(spec) => match reader.get_body(&path, read.range).await {
                                        Ok(body) => {
                                            if !matches_spec(spec, read, &body, &mut expected) {
                                                local.wrong += 1;
                                            }
                                            Ok(body.len() as u64)
                                        }
                                        Err(err) => Err(err),
                                    },
                                }
                            }
                            (Target::Http { .. } | Target::Files { .. }, _) => Ok(0),
                        };
                        local.record(started, begun, read, outcome);
                    }
                    local.items += 1;
                    bar.inc(1);
                }
                local
            })
        })
        .collect();
    let mut totals = ReaderTotals::default();
    for task in tasks {
        if let Ok(local) = task.await {
            totals.merge(local);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    totals.into_stats(seconds)
}

/// An epoch over files: `readers` threads take items in `order` and read
/// each file (or each range of it) with open, read and close.
fn file_epoch(
    items: &[Item],
    order: &[usize],
    root: &Path,
    drop_pages: bool,
    readers: usize,
    bar: &ProgressBar,
) -> EpochStats {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let totals = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..readers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut local = ReaderTotals::default();
                    let mut reader = FileReader::new(drop_pages);
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&item) = order.get(at) else { break };
                        for read in &items[item] {
                            let begun = Instant::now();
                            let outcome = reader.read(&root.join(&read.key), read);
                            local.record(started, begun, read, outcome);
                        }
                        local.items += 1;
                        bar.inc(1);
                    }
                    local
                })
            })
            .collect();
        let mut totals = ReaderTotals::default();
        for thread in threads {
            if let Ok(local) = thread.join() {
                totals.merge(local);
            }
        }
        totals
    });
    totals.into_stats(started.elapsed().as_secs_f64())
}

/// Reads files as a data loader does, into one reused buffer.
pub struct FileReader {
    buffer: Vec<u8>,
    drop_pages: bool,
}

impl FileReader {
    /// A reader; with `drop_pages`, see [`Target::files`].
    pub fn new(drop_pages: bool) -> Self {
        Self {
            buffer: Vec::new(),
            drop_pages,
        }
    }

    /// One read: the whole file, as `open(path).read()` does, or one range
    /// of it. Returns the bytes read.
    pub fn read(&mut self, path: &Path, read: &Read) -> std::io::Result<u64> {
        let mut file = std::fs::File::open(path)?;
        let len = match read.range {
            None => {
                self.buffer.clear();
                file.read_to_end(&mut self.buffer)?
            }
            Some((start, _)) => {
                self.buffer.resize(read.len as usize, 0);
                file.read_exact_at(&mut self.buffer, start)?;
                self.buffer.len()
            }
        };
        std::hint::black_box(&self.buffer);
        if self.drop_pages {
            let (offset, len) = read.range.map_or((0, None), |(start, end)| {
                (start, std::num::NonZeroU64::new(end - start + 1))
            });
            rustix::fs::fadvise(&file, offset, len, rustix::fs::Advice::DontNeed)?;
        }
        Ok(len as u64)
    }
}

/// What one reader counted.
#[derive(Default)]
pub struct ReaderTotals {
    reads: usize,
    items: usize,
    bytes: u64,
    errors: usize,
    wrong: usize,
    latencies_us: Vec<u32>,
    timeline: Vec<(u32, u32)>,
}

impl ReaderTotals {
    /// One read that began at `begun`, in an epoch that began at `started`.
    fn record<E>(
        &mut self,
        started: Instant,
        begun: Instant,
        read: &Read,
        outcome: Result<u64, E>,
    ) {
        let latency = begun.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.latencies_us.push(latency);
        let start_ms = begun
            .duration_since(started)
            .as_millis()
            .min(u32::MAX as u128) as u32;
        self.timeline.push((start_ms, latency));
        match outcome {
            Ok(len) if len == read.len => {
                self.reads += 1;
                self.bytes += len;
            }
            Ok(_) | Err(_) => self.errors += 1,
        }
    }

    fn merge(&mut self, other: ReaderTotals) {
        self.reads += other.reads;
        self.items += other.items;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.wrong += other.wrong;
        self.latencies_us.extend(other.latencies_us);
        self.timeline.extend(other.timeline);
    }

    fn into_stats(mut self, seconds: f64) -> EpochStats {
        self.latencies_us.sort_unstable();
        EpochStats {
            reads: self.reads,
            items: self.items,
            bytes: self.bytes,
            seconds,
            errors: self.errors,
            wrong_bytes: self.wrong,
            timeline: self.timeline,
            p50_ms: percentile_ms(&self.latencies_us, 0.50),
            p99_ms: percentile_ms(&self.latencies_us, 0.99),
            ..EpochStats::default()
        }
    }
}

/// Whether `body` is exactly what the data set holds for `read`.
fn matches_spec(spec: &SyntheticSpec, read: &Read, body: &[u8], expected: &mut Vec<u8>) -> bool {
    let Some(index) = spec.index_of(&read.key) else {
        return false;
    };
    let offset = read.range.map_or(0, |(start, _)| start);
    expected.resize(read.len as usize, 0);
    spec.fill(index, offset, expected);
    body == &expected[..]
}

/// The `q` quantile of sorted microsecond samples, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

/// Memory a synthetic reader hands out: as large as the largest read.
pub fn synthetic_memory(largest: u64) -> Bytes {
    Bytes::from(vec![7u8; largest as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let samples: Vec<u32> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(percentile_ms(&samples, 0.5), 50.0);
        assert_eq!(percentile_ms(&samples, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn shards_cover_every_byte_once() {
        let spec = SyntheticSpec::from_query("count=3&size=10MiB&dist=fixed").expect("spec");
        let data = DataSet::shards(spec, 4 << 20);
        assert_eq!(data.reads(), 9);
        assert_eq!(data.bytes, 30 << 20);
        let first = &data.items[0];
        assert_eq!(first[0].range, Some((0, (4 << 20) - 1)));
        assert_eq!(first[2].range, Some((8 << 20, (10 << 20) - 1)));
    }

    #[test]
    fn each_epoch_has_its_own_shuffle() {
        let data = DataSet::samples(SyntheticSpec::from_query("count=100").expect("spec"));
        let one = data.order(1, 1);
        let two = data.order(1, 2);
        assert_ne!(one, two);
        let mut sorted = one.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(one, data.order(1, 1), "same seed and epoch, same order");
    }
}
