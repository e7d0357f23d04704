//! `ferry-bench train`: a GPU-bound training job. A consumer takes batches at
//! a fixed compute time per batch (the model's speed); DataLoader-like
//! workers fetch samples and keep a bounded number of batches ready. The same
//! job runs on synthetic data (no I/O) and through Ferry; the epoch times say
//! how close Ferry comes to keeping the GPU fed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;

use ferry_config::{ByteSize, CachePolicy};

use crate::child::{ChildProcess, ProxyArgs, WorkerSpec};
use crate::client::{Reader, list_all, post_order, scrape};
use crate::epochs::Access;
use crate::report::{self, Table};
use crate::topology::{PoolSpec, PoolTopology};
use crate::tree::MountPoint;
use crate::workload::{DataSet, FileReader, progress, sample_spec};

/// `ferry-bench train` arguments.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Samples in the data set (an epoch lasts samples/rate seconds; long
    /// enough that filling the first batch is a small part of it, as in a real job).
    #[arg(long, default_value_t = 30_000)]
    pub samples: u64,
    /// Mean sample size (ImageNet-like spread).
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Samples per second the model consumes (the GPU's speed).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Samples per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Data loader workers (each reads its batches' samples one by one).
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Batches each worker keeps ready ahead of the model (DataLoader's
    /// `prefetch_factor`).
    #[arg(long, default_value_t = 2)]
    pub prefetch_factor: usize,
    /// Post each epoch's order to the proxy (`POST /v1/prefetch/{bucket}`)
    /// before reading it, as the Python sampler wrapper does.
    #[arg(long)]
    pub prefetch: bool,
    /// With --prefetch: epochs each post holds, this one and the next (the
    /// Python wrapper's `epochs_ahead`, 2 by default; 1 posts only the
    /// epoch about to be read). The proxy keeps what it fetched when the
    /// next post continues the order it has.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub epochs_ahead: u32,
    /// Post the whole job's order (every epoch's, as a seeded sampler knows
    /// them) once, before epoch 1, instead of each epoch's at its start: the
    /// next epoch's first samples are fetched while the current one ends.
    #[arg(long, conflicts_with = "prefetch")]
    pub prefetch_job: bool,
    /// Before epoch 1, load the data set into the workers with `ferryctl
    /// warm` (timed against reading it all from the origin at the same
    /// concurrency), so epoch 1 is read from warm workers.
    #[arg(long)]
    pub warm: bool,
    /// With --warm: origin fetches at once per worker.
    #[arg(long, default_value_t = 8)]
    pub warm_concurrency: usize,
    /// Epochs per job.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Emulated first-byte latency of the origin.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub origin_latency: Duration,
    /// Seed of sizes, contents and shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Ferry's cache policy.
    #[arg(long, default_value = "pin")]
    pub cache_policy: CachePolicy,
    /// Read S3 keys over HTTP, or files (class directories) through Ferry's mount.
    #[arg(long, value_enum, default_value = "s3")]
    pub access: Access,
    /// Read through a sidecar and 3 workers (pool) or one worker.
    #[arg(long, value_enum, default_value = "pool")]
    pub topology: Topology,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Which Ferry the job reads through.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Topology {
    /// One worker, read directly.
    Worker,
    /// A sidecar with a pool of 3 workers.
    Pool,
}

/// One epoch of one job.
#[derive(Debug, Clone, Serialize)]
pub struct TrainEpoch {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Time the model waited for a batch.
    pub starved_seconds: f64,
    /// Of that, the wait for the epoch's first batch (its samples read
    /// while every loader worker fills its own first batch).
    pub first_batch_seconds: f64,
    /// Samples that failed to load.
    pub errors: usize,
    /// Reads that reached Ferry through the mount (the rest came from the
    /// kernel's page cache); posix access only.
    pub mount_reads: Option<f64>,
}

/// The comparison.
#[derive(Debug, Serialize)]
pub struct TrainReport {
    /// How the job read its samples.
    pub access: Access,
    /// The data set.
    pub dataset: String,
    /// Model speed in samples/s.
    pub rate: f64,
    /// Epochs on synthetic data.
    pub synthetic: Vec<TrainEpoch>,
    /// Epochs through Ferry.
    pub ferry: Vec<TrainEpoch>,
    /// Per epoch: synthetic time / Ferry time (1.0 = Ferry as fast as no I/O).
    pub ratios: Vec<f64>,
    /// Mean ratio over epochs 2+ (warm cache).
    pub warm_ratio: f64,
    /// The warm-up before epoch 1, with --warm.
    pub warm_up: Option<WarmUp>,
}

/// How long `ferryctl warm` took, against what the origin allows.
#[derive(Debug, Serialize)]
pub struct WarmUp {
    /// Bytes the workers fetched.
    pub bytes: u64,
    /// Seconds `ferryctl warm` ran, start to end.
    pub seconds: f64,
    /// Seconds to read every object straight from the origin with as many
    /// requests at once as the warm-up had (the origin's bandwidth at that
    /// concurrency), measured just before.
    pub origin_read_seconds: f64,
    /// origin_read_seconds / seconds (1.0: the warm-up as fast as the origin allows).
    pub ratio: f64,
    /// LIST requests the workers had sent the origin by the warm-up's end,
    /// the job's first listing included (the pool lists the data set once:
    /// one request per 1,000 objects).
    pub origin_lists: u64,
}

/// LIST requests the workers at `admins` have sent the origin so far.
async fn origin_lists(admins: &[SocketAddr]) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for &admin in admins {
        total += scrape(admin, "origin_requests_total", &[("op", "list")]).await?;
    }
    Ok(total as u64)
}

/// Where a job's samples come from.
#[derive(Clone)]
enum Source {
    Synthetic,
    Ferry {
        addr: SocketAddr,
        bucket: String,
    },
    /// Files under this directory (Ferry's mount of the bucket).
    Files(Arc<PathBuf>),
}

/// Runs both jobs and prints the comparison.
pub async fn run(args: &TrainArgs) -> anyhow::Result<TrainReport> {
    anyhow::ensure!(
        args.rate > 0.0 && args.batch > 0 && args.workers > 0,
        "rate, batch and workers must be positive"
    );
    let mut spec = sample_spec(args.samples, args.size, args.seed)?;
    if args.access == Access::Posix {
        // An ImageFolder tree: class directories of samples.
        spec.classes = 100;
    }
    let query = spec.to_query();
    let mount = match args.access {
        Access::Posix => Some(MountPoint::new("train")?),
        Access::S3 => None,
    };
    let mount_flags = mount.as_ref().map(MountPoint::flags).unwrap_or_default();
    let data = DataSet::samples(spec.clone());
    let origin = ChildProcess::origin_server(&query, args.origin_latency)?;
    let origin_url = format!("http://{}/", origin.addr);
    // Keep the processes alive for the whole run.
    let (worker, pool, addr) = match args.topology {
        Topology::Worker => {
            let worker = ChildProcess::ferry_worker(
                &args.proxy.program(),
                &WorkerSpec {
                    origin: &origin_url,
                    bucket: "imagenet",
                    cache_size: data.cache_for_all(),
                    cache_policy: args.cache_policy,
                    read_ahead: None,
                    extra: mount_flags,
                },
            )?;
            let addr = worker.addr;
            (Some(worker), None, addr)
        }
        Topology::Pool => {
            let workers = 3;
            let pool = PoolTopology::start(
                &args.proxy.program(),
                &PoolSpec {
                    origin: &origin_url,
                    bucket: "imagenet",
                    workers,
                    worker_cache: ByteSize(
                        data.cache_for_all().bytes() / workers as u64 + (64 << 20),
                    ),
                    sidecar_cache: ByteSize(data.bytes / 4),
                    policy: args.cache_policy,
                    sidecar_flags: mount_flags,
                    identity: None,
                },
            )?;
            let addr = pool.sidecar.addr;
            (None, Some(pool), addr)
        }
    };
    list_all(addr, "/imagenet").await?;
    let warm_up = if args.warm {
        let mut admins: Vec<SocketAddr> = match (&worker, &pool) {
            (Some(worker), _) => worker.admin.into_iter().collect(),
            (None, Some(pool)) => pool.admins(),
            (None, None) => Vec::new(),
        };
        admins.sort();
        let sidecar = pool.as_ref().and_then(|p| p.sidecar.admin);
        Some(warm_up(args, &data, origin.addr, &admins, sidecar).await?)
    } else {
        None
    };
    // The proxy the job reads through: the worker, or the pool's sidecar.
    let admin = worker
        .as_ref()
        .and_then(|w| w.admin)
        .or_else(|| pool.as_ref().and_then(|p| p.sidecar.admin));
    let ferry_source = match &mount {
        Some(mount) => Source::Files(Arc::new(mount.path().join("imagenet"))),
        None => Source::Ferry {
            addr,
            bucket: "imagenet".into(),
        },
    };
    eprintln!(
        "train: {} samples, {} per batch at {} samples/s ({:.0} ms of compute per batch), {} workers",
        args.samples,
        args.batch,
        args.rate,
        args.batch as f64 / args.rate * 1000.0,
        args.workers
    );
    if let (true, Source::Ferry { addr, bucket }) = (args.prefetch_job, &ferry_source) {
        let keys: Vec<&str> = (1..=args.epochs)
            .flat_map(|epoch| data.order(args.seed, epoch))
            .map(|sample| data.items[sample][0].key.as_str())
            .collect();
        post_order(*addr, bucket, keys.join("\n")).await?;
    }
    let mut synthetic = Vec::new();
    let mut ferry = Vec::new();
    // Jobs alternate epoch by epoch so machine noise touches both alike.
    for epoch in 1..=args.epochs {
        synthetic.push(run_epoch(args, &data, &Source::Synthetic, epoch).await);
        let before = mount_reads(admin, &mount).await;
        let mut stats = run_epoch(args, &data, &ferry_source, epoch).await;
        if let (Some(before), Some(after)) = (before, mount_reads(admin, &mount).await) {
            stats.mount_reads = Some(after - before);
        }
        ferry.push(stats);
    }
    let ratios: Vec<f64> = synthetic
        .iter()
        .zip(&ferry)
        .map(|(s, f)| s.seconds / f.seconds.max(1e-9))
        .collect();
    let warm: &[f64] = if ratios.len() > 1 {
        &ratios[1..]
    } else {
        &ratios
    };
    let warm_ratio = warm.iter().sum::<f64>() / warm.len().max(1) as f64;
    let report = TrainReport {
        access: args.access,
        dataset: spec.to_url(),
        rate: args.rate,
        synthetic,
        ferry,
        ratios,
        warm_ratio,
        warm_up,
    };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

/// Reads the whole data set from the origin at the warm-up's concurrency,
/// then warms the workers with `ferryctl warm` (the same code as the
/// command), and times both.
async fn warm_up(
    args: &TrainArgs,
    data: &DataSet,
    origin: SocketAddr,
    admins: &[SocketAddr],
    sidecar: Option<SocketAddr>,
) -> anyhow::Result<WarmUp> {
    let workers = admins.len() - usize::from(sidecar.is_some());
    let readers = (args.warm_concurrency * workers).max(1);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (items, next) = (data.items.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut reader = Reader::new(origin);
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = items.get(index) else {
                    return Ok::<(), anyhow::Error>(());
                };
                for read in item {
                    reader.get(&format!("/{}", read.key), read.range).await?;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let origin_read_seconds = started.elapsed().as_secs_f64();
    let targets: Vec<ferry_control_plane::ctl::Target> = admins
        .iter()
        .map(|a| ferry_control_plane::ctl::Target::named(a.to_string()))
        .collect();
    let settings = ferry_control_plane::ctl::warm::WarmSettings {
        dataset: "imagenet".to_owned(),
        prefix: String::new(),
        sidecar: sidecar.map(|s| s.to_string()),
        pool: None,
        concurrency: args.warm_concurrency,
        bytes_per_second: None,
        detach: false,
        status_only: false,
        control_plane: None,
        output: ferry_control_plane::ctl::Output::Table,
        timeout: Duration::from_secs(10),
    };
    let started = Instant::now();
    let complete = ferry_control_plane::ctl::warm::run(&targets, &settings).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(complete, "the warm-up did not load every object");
    let worker_admins: Vec<SocketAddr> = admins
        .iter()
        .copied()
        .filter(|&a| Some(a) != sidecar)
        .collect();
    let origin_lists = origin_lists(&worker_admins).await?;
    eprintln!(
        "train: warm-up {seconds:.2}s ({origin_lists} origin LIST requests by {workers} workers so far); \
         reading it all from the origin at {readers} at once: {origin_read_seconds:.2}s"
    );
    Ok(WarmUp {
        bytes: data.bytes,
        seconds,
        origin_read_seconds,
        ratio: origin_read_seconds / seconds.max(1e-9),
        origin_lists,
    })
}

async fn run_epoch(args: &TrainArgs, data: &DataSet, source: &Source, epoch: usize) -> TrainEpoch {
    let order = data.order(args.seed, epoch);
    if let (true, Source::Ferry { addr, bucket }) = (args.prefetch, source) {
        // The loader knows its order before it reads (a seeded sampler,
        // the next epochs' too): tell the proxy.
        let ahead = epoch + args.epochs_ahead as usize;
        let keys: Vec<&str> = (epoch..ahead)
            .flat_map(|epoch| data.order(args.seed, epoch))
            .map(|sample| data.items[sample][0].key.as_str())
            .collect();
        if let Err(err) = post_order(*addr, bucket, keys.join("\n")).await {
            eprintln!("train: posting epoch {epoch}'s order failed: {err:#}");
        }
    }
    let batches: Arc<Vec<Vec<usize>>> =
        Arc::new(order.chunks(args.batch).map(<[usize]>::to_vec).collect());
    let label = match source {
        Source::Synthetic => format!("synthetic epoch {epoch}"),
        Source::Ferry { .. } => format!("ferry epoch {epoch}"),
        Source::Files(_) => format!("mount epoch {epoch}"),
    };
    let bar = progress(batches.len(), &label);
    let started = Instant::now();
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for worker in 0..args.workers {
        let (tx, rx) = mpsc::channel::<usize>(args.prefetch_factor.max(1));
        queues.push(rx);
        let batches = batches.clone();
        let items = data.items.clone();
        let source = source.clone();
        let stride = args.workers;
        if let Source::Files(root) = &source {
            // A DataLoader worker process: blocking open/read/close.
            let root = root.clone();
            workers.push(tokio::task::spawn_blocking(move || {
                let mut reader = FileReader::new(false);
                let mut errors = 0;
                for index in (worker..batches.len()).step_by(stride) {
                    for &sample in &batches[index] {
                        let read = &items[sample][0];
                        let loaded = reader.read(&root.join(&read.key), read);
                        if !loaded.is_ok_and(|len| len == read.len) {
                            errors += 1;
                        }
                    }
                    if tx.blocking_send(index).is_err() {
                        break;
                    }
                }
                errors
            }));
            continue;
        }
        workers.push(tokio::spawn(async move {
            let mut reader = match &source {
                Source::Ferry { addr, .. } => Some(Reader::new(*addr)),
                Source::Synthetic | Source::Files(_) => None,
            };
            let mut errors = 0;
            for index in (worker..batches.len()).step_by(stride) {
                let mut loaded = 0;
                for &sample in &batches[index] {
                    let read = &items[sample][0];
                    let ok = match (&source, reader.as_mut()) {
                        (Source::Ferry { bucket, .. }, Some(reader)) => reader
                            .get(&format!("/{bucket}/{}", read.key), None)
                            .await
                            .is_ok_and(|len| len == read.len),
                        _ => true,
                    };
                    if ok { loaded += 1 } else { errors += 1 }
                }
                std::hint::black_box(loaded);
                if tx.send(index).await.is_err() {
                    break;
                }
            }
            errors
        }));
    }
    // The model: batches in order, each taking its compute time.
    let mut starved = Duration::ZERO;
    let mut first_batch = Duration::ZERO;
    for index in 0..batches.len() {
        let waiting = Instant::now();
        let _ = queues[index % args.workers].recv().await;
        let waited = waiting.elapsed();
        if index == 0 {
            first_batch = waited;
        }
        starved += waited;
        tokio::time::sleep(Duration::from_secs_f64(
            batches[index].len() as f64 / args.rate,
        ))
        .await;
        bar.inc(1);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut errors = 0;
    for worker in workers {
        errors += worker.await.unwrap_or(0);
    }
    TrainEpoch {
        epoch,
        seconds,
        starved_seconds: starved.as_secs_f64(),
        first_batch_seconds: first_batch.as_secs_f64(),
        errors,
        mount_reads: None,
    }
}

/// Reads the proxy at `admin` has served through its mount, if it has one.
async fn mount_reads(admin: Option<SocketAddr>, mount: &Option<MountPoint>) -> Option<f64> {
    mount.as_ref()?;
    let labels = [("dataset", "imagenet"), ("direction", "mount")];
    crate::client::scrape(admin?, "request_total", &labels)
        .await
        .ok()
}

fn print(report: &TrainReport) {
    let mut table = Table::new(&[
        "epoch",
        "synthetic s",
        "ferry s",
        "ferry starved s",
        "of which first batch s",
        "synthetic/ferry",
        "reads at the mount",
        "errors",
    ]);
    for ((s, f), ratio) in report
        .synthetic
        .iter()
        .zip(&report.ferry)
        .zip(&report.ratios)
    {
        table.row(vec![
            s.epoch.to_string(),
            format!("{:.2}", s.seconds),
            format!("{:.2}", f.seconds),
            format!("{:.2}", f.starved_seconds),
            format!("{:.3}", f.first_batch_seconds),
            format!("{ratio:.3}"),
            f.mount_reads.map_or("-".to_owned(), |n| format!("{n:.0}")),
            (s.errors + f.errors).to_string(),
        ]);
    }
    println!("\ntrain: {} at {} samples/s", report.dataset, report.rate);
    table.print();
    println!(
        "\nwarm epochs (2+): epoch time on synthetic data / through Ferry = {:.3}",
        report.warm_ratio
    );
    if let Some(warm) = &report.warm_up {
        println!(
            "warm-up before epoch 1: {:.2}s for {:.0} MiB; the origin read at the same concurrency: {:.2}s (origin time / warm-up time = {:.3})",
            warm.seconds,
            warm.bytes as f64 / (1 << 20) as f64,
            warm.origin_read_seconds,
            warm.ratio
        );
    }
}
