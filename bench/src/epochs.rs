//! `ferry-bench epochs`: the same shuffled epochs read several ways in one
//! run. Over S3: `synthetic` (no I/O), `bare` (minimal HTTP server from
//! memory), `direct` (straight from the origin) and `ferry` (through
//! ferry-proxy). Over files (`--access posix`): `synthetic`, `tmpfs` (the
//! same tree in memory, the kernel's ceiling), `mount` (Ferry's FUSE mount)
//! and `ferry` (its S3 front door).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use clap::{Args, ValueEnum};
use serde::Serialize;

use ferry_config::{ByteSize, CachePolicy, SyntheticSpec};

use crate::child::{ChildProcess, ControlPlane, MeshIdentity, ProxyArgs, ProxyProgram, WorkerSpec};
use crate::client::{list_all, scrape};
use crate::report::{self, Table};
use crate::topology::{PoolSpec, PoolTopology};
use crate::tree::{FileTree, MountPoint, default_tmpfs_root};
use crate::workload::{
    DataSet, EpochStats, Target, read_epoch, sample_spec, shard_spec, synthetic_memory,
};

/// How the workload reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The reader makes the bytes itself: the no-I/O upper bound.
    Synthetic,
    /// A minimal HTTP server answering from memory: this machine's HTTP ceiling.
    Bare,
    /// Straight from the origin server, no Ferry.
    Direct,
    /// Through ferry-proxy, whose origin is the same origin server.
    Ferry,
    /// Through a sidecar whose pool of workers reads the same origin server.
    Pool,
    /// The same pool, with mutual TLS between the sidecar and the workers
    /// (certificates from a control plane started for the run).
    PoolMtls,
    /// The data set written out as files on tmpfs: what the kernel serves
    /// from memory with no FUSE in between.
    Tmpfs,
    /// Files through ferry-proxy's FUSE mount, whose origin is the origin server.
    Mount,
}

/// How the training job reads its samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// HTTP GETs of S3 keys.
    #[default]
    S3,
    /// open/read/close of files in class directories, like ImageFolder.
    Posix,
}

impl Mode {
    /// The name the command line and the JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Synthetic => "synthetic",
            Mode::Bare => "bare",
            Mode::Direct => "direct",
            Mode::Ferry => "ferry",
            Mode::Pool => "pool",
            Mode::PoolMtls => "pool-mtls",
            Mode::Tmpfs => "tmpfs",
            Mode::Mount => "mount",
        }
    }
}

/// `ferry-bench epochs` arguments.
#[derive(Args, Clone, Debug)]
pub struct EpochsArgs {
    /// Samples in the data set (sample mode).
    #[arg(long, default_value_t = 20_000)]
    pub samples: u64,
    /// Mean sample size; sizes spread like ImageNet's around it.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Shard mode: large objects read front to back in ranges, like webdataset.
    #[arg(long)]
    pub shards: bool,
    /// Shards in the data set (shard mode).
    #[arg(long, default_value_t = 16)]
    pub shard_count: u64,
    /// Size of each shard (shard mode).
    #[arg(long, default_value = "64MiB")]
    pub shard_size: ByteSize,
    /// Size of each range read (shard mode).
    #[arg(long, default_value = "4MiB")]
    pub range_size: ByteSize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 32)]
    pub readers: usize,
    /// Epochs per mode; each has a fresh shuffle.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Seed of sizes, contents and shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Emulated first-byte latency of the origin (a remote object store).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub origin_latency: Duration,
    /// S3 keys, or files in class directories (an ImageFolder tree).
    #[arg(long, value_enum, default_value = "s3")]
    pub access: Access,
    /// Class directories of the data set (0: none; posix access uses 100
    /// when not given).
    #[arg(long)]
    pub classes: Option<u64>,
    /// Modes to run, in order [default: synthetic,bare,direct,ferry; with
    /// --access posix: synthetic,tmpfs,mount,ferry].
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<Mode>,
    /// Directory on tmpfs for the tmpfs mode's copy of the data set.
    #[arg(long)]
    pub tmpfs_dir: Option<PathBuf>,
    /// Posix modes: drop each file's pages from the kernel's page cache once
    /// read, so warm epochs measure Ferry's mount, not the page cache (as
    /// when the data set is larger than memory; tmpfs keeps its pages).
    #[arg(long)]
    pub drop_pages: bool,
    /// FUSE session threads of the mount mode's proxy (default: its own).
    #[arg(long)]
    pub mount_threads: Option<usize>,
    /// Ferry's cache policy.
    #[arg(long, default_value = "pin")]
    pub cache_policy: CachePolicy,
    /// Ferry's cache size (default: large enough for the whole data set).
    #[arg(long)]
    pub cache_size: Option<ByteSize>,
    /// Workers in the pool topology.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// The pool sidecar's cache as a fraction of the data set (the workers
    /// together hold all of it).
    #[arg(long, default_value_t = 0.25)]
    pub sidecar_fraction: f64,
    /// Extra sidecar flags for the pool topology, e.g. "--hedge off".
    #[arg(long, allow_hyphen_values = true)]
    pub sidecar_flags: Option<String>,
    /// Lifetime of the certificates the control plane issues (pool-mtls).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// After the table, keep ferry-proxy running (its metrics stay browsable) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

/// One mode's epochs.
#[derive(Debug, Serialize)]
pub struct ModeRun {
    /// The mode.
    pub mode: Mode,
    /// Every epoch.
    pub epochs: Vec<EpochStats>,
    /// Time to list the bucket before the first epoch, as a data loader does.
    pub list_seconds: Option<f64>,
    /// ferry-proxy resident memory before any request (empty cache).
    pub proxy_idle_rss_bytes: Option<u64>,
    /// ferry-proxy resident memory after the run.
    pub proxy_final_rss_bytes: Option<u64>,
    /// ferry-proxy's admin address.
    pub proxy_admin: Option<String>,
    /// A few of ferry-proxy's counters at the end of the run.
    pub proxy_counters: Vec<(String, f64)>,
}

impl ModeRun {
    /// Epochs after the first (warm cache); all of them if there is only one.
    pub fn warm(&self) -> &[EpochStats] {
        if self.epochs.len() > 1 {
            &self.epochs[1..]
        } else {
            &self.epochs
        }
    }
    /// Mean items/s over warm epochs.
    pub fn warm_items_per_second(&self) -> f64 {
        mean(self.warm().iter().map(EpochStats::items_per_second))
    }
    /// Mean MB/s over warm epochs.
    pub fn warm_mb_per_second(&self) -> f64 {
        mean(self.warm().iter().map(EpochStats::mb_per_second))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// The whole comparison.
#[derive(Debug, Serialize)]
pub struct EpochsReport {
    /// `samples` or `shards`.
    pub workload: &'static str,
    /// The data set as a synthetic URL.
    pub dataset: String,
    /// Items per epoch.
    pub items: usize,
    /// GETs per epoch.
    pub reads: usize,
    /// Bytes per epoch.
    pub bytes: u64,
    /// Concurrent readers.
    pub readers: usize,
    /// Origin first-byte latency in milliseconds.
    pub origin_latency_ms: f64,
    /// Every mode's run.
    pub runs: Vec<ModeRun>,
    /// Warm-epoch ratios of Ferry to each baseline.
    pub ratios: Vec<(String, f64)>,
}

impl EpochsArgs {
    fn spec(&self) -> anyhow::Result<SyntheticSpec> {
        let mut spec = if self.shards {
            shard_spec(self.shard_count, self.shard_size, self.seed)?
        } else {
            sample_spec(self.samples, self.size, self.seed)?
        };
        spec.classes = match (self.classes, self.access) {
            (Some(classes), _) => classes,
            (None, Access::Posix) if !self.shards => 100,
            (None, _) => 0,
        };
        Ok(spec)
    }

    /// The modes to run: those given, or the access's comparison.
    fn modes(&self) -> Vec<Mode> {
        match (self.modes.is_empty(), self.access) {
            (false, _) => self.modes.clone(),
            (true, Access::S3) => vec![Mode::Synthetic, Mode::Bare, Mode::Direct, Mode::Ferry],
            (true, Access::Posix) => vec![Mode::Synthetic, Mode::Tmpfs, Mode::Mount, Mode::Ferry],
        }
    }

    fn bucket(&self) -> &'static str {
        if self.shards { "shards" } else { "imagenet" }
    }
}

/// Runs the comparison and prints it.
pub async fn run(args: &EpochsArgs) -> anyhow::Result<EpochsReport> {
    anyhow::ensure!(args.epochs >= 1, "--epochs must be at least 1");
    let modes = args.modes();
    let spec = args.spec()?;
    let query = spec.to_query();
    let data = if args.shards {
        DataSet::shards(spec.clone(), args.range_size.bytes().max(1))
    } else {
        DataSet::samples(spec.clone())
    };
    let program = args.proxy.program();
    let needs_origin = modes.iter().any(|m| {
        matches!(
            m,
            Mode::Direct | Mode::Ferry | Mode::Pool | Mode::PoolMtls | Mode::Mount
        )
    });
    let origin = if needs_origin {
        Some(ChildProcess::origin_server(&query, args.origin_latency)?)
    } else {
        None
    };
    eprintln!(
        "data set: {} items, {} reads, {:.1} MB per epoch; {} readers; origin latency {:?}",
        data.items.len(),
        data.reads(),
        data.bytes as f64 / 1e6,
        args.readers,
        args.origin_latency
    );
    // One control plane serves every mTLS mode of the run; it lives as long
    // as the proxies it certifies.
    let control_plane = if modes.contains(&Mode::PoolMtls) {
        Some(ControlPlane::start(args.cert_lifetime)?)
    } else {
        None
    };
    let mesh_identity = control_plane.as_ref().map(|plane| &plane.identity);
    // Every mode's server runs for the whole comparison and epochs take
    // turns (epoch 1 of each mode, then epoch 2 of each, ...), so slow drift
    // on a shared machine touches every mode alike.
    let mut prepared = Vec::new();
    for &mode in &modes {
        prepared.push(
            prepare(
                args,
                mode,
                &data,
                &spec,
                origin.as_ref(),
                &program,
                mesh_identity,
            )
            .await?,
        );
    }
    for epoch in 1..=args.epochs {
        for mode in &mut prepared {
            let stats = mode.epoch(args, &data, epoch).await;
            mode.run.epochs.push(stats);
        }
    }
    let mut servers = Vec::new();
    let mut pools = Vec::new();
    let mut trees = Vec::new();
    let mut mounts = Vec::new();
    let mut runs = Vec::new();
    for mut mode in prepared {
        // The proxy the app talked to: the worker, or the pool's sidecar.
        let proxy = match mode.run.mode {
            Mode::Ferry | Mode::Mount => mode.server.as_ref(),
            Mode::Pool | Mode::PoolMtls => mode.pool.as_ref().map(|p| &p.sidecar),
            _ => None,
        };
        if let Some(proxy) = proxy {
            mode.run.proxy_final_rss_bytes = proxy.rss_bytes();
            if let Some(admin) = proxy.admin {
                mode.run.proxy_admin = Some(admin.to_string());
                for name in PROXY_COUNTERS {
                    if let Ok(value) = scrape(admin, name, &[("dataset", mode.bucket)]).await {
                        mode.run.proxy_counters.push((name.to_owned(), value));
                    }
                }
            }
        }
        servers.extend(mode.server);
        pools.extend(mode.pool);
        trees.extend(mode.copy);
        mounts.extend(mode.mount);
        runs.push(mode.run);
    }
    let ratios = ratios(&runs);
    let report = EpochsReport {
        workload: if args.shards { "shards" } else { "samples" },
        dataset: spec.to_url(),
        items: data.items.len(),
        reads: data.reads(),
        bytes: data.bytes,
        readers: args.readers,
        origin_latency_ms: args.origin_latency.as_secs_f64() * 1000.0,
        runs,
        ratios,
    };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    print_mesh(&pools).await;
    if args.keep_running {
        if let Some(admin) = report.runs.iter().find_map(|r| r.proxy_admin.as_ref()) {
            println!(
                "\nferry-proxy keeps running: http://{admin}/metrics, /cache, /config. Ctrl-C to stop."
            );
        }
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(servers);
    drop(pools);
    drop(trees);
    drop(mounts);
    Ok(report)
}

/// The pools' proxies as `ferryctl stat --interval 0` shows them.
async fn print_mesh(pools: &[PoolTopology]) {
    use ferry_control_plane::ctl::{Output, Target, stat};
    let targets: Vec<Target> = pools
        .iter()
        .flat_map(PoolTopology::admins)
        .map(|admin| Target::named(admin.to_string()))
        .collect();
    if targets.is_empty() {
        return;
    }
    println!("\nThe mesh as `ferryctl stat --interval 0` sees it:");
    let scrape = stat::scrape(&targets, Duration::from_secs(5)).await;
    let _ = stat::print(
        &stat::report(None, &scrape),
        Output::Table,
        &mut std::io::stdout(),
    );
}

/// Counters of ferry-proxy reported at the end of a run.
const PROXY_COUNTERS: [&str; 6] = [
    "request_total",
    "cache_hits_total",
    "cache_misses_total",
    "origin_requests_total",
    "origin_bytes_total",
    "response_bytes_total",
];

/// A mode ready to read: its server (if any) started, its bucket listed.
struct PreparedMode {
    run: ModeRun,
    target: Target,
    server: Option<ChildProcess>,
    pool: Option<PoolTopology>,
    /// The tmpfs mode's copy of the data set.
    copy: Option<FileTree>,
    /// The mount mode's mount point.
    mount: Option<MountPoint>,
    bucket: &'static str,
}

async fn prepare(
    args: &EpochsArgs,
    mode: Mode,
    data: &DataSet,
    spec: &SyntheticSpec,
    origin: Option<&ChildProcess>,
    program: &ProxyProgram,
    mesh_identity: Option<&MeshIdentity>,
) -> anyhow::Result<PreparedMode> {
    let bucket = args.bucket();
    let query = &spec.to_query();
    let mut server = None;
    let mut pool = None;
    let mut copy = None;
    let mut mount_point = None;
    let mut list_seconds = None;
    let mut idle_rss = None;
    let target = match mode {
        Mode::Synthetic => Target::Synthetic(synthetic_memory(data.largest_read())),
        Mode::Bare => {
            let bare = ChildProcess::bare_server(query)?;
            let target = Target::http(bare.addr, format!("/{bucket}"));
            server = Some(bare);
            target
        }
        Mode::Direct => {
            let origin = origin.ok_or_else(|| anyhow::anyhow!("no origin server"))?;
            let started = std::time::Instant::now();
            list_all(origin.addr, "").await?;
            list_seconds = Some(started.elapsed().as_secs_f64());
            Target::http(origin.addr, String::new())
        }
        Mode::Ferry => {
            let origin = origin.ok_or_else(|| anyhow::anyhow!("no origin server"))?;
            let proxy = ChildProcess::ferry_worker(
                program,
                &WorkerSpec {
                    origin: &format!("http://{}/", origin.addr),
                    bucket,
                    cache_size: args.cache_size.unwrap_or_else(|| data.cache_for_all()),
                    cache_policy: args.cache_policy,
                    read_ahead: None,
                    extra: Vec::new(),
                },
            )?;
            idle_rss = proxy.rss_bytes();
            // A data loader lists the bucket once to build its index.
            let started = std::time::Instant::now();
            list_all(proxy.addr, &format!("/{bucket}")).await?;
            list_seconds = Some(started.elapsed().as_secs_f64());
            let target = Target::http(proxy.addr, format!("/{bucket}"));
            server = Some(proxy);
            target
        }
        Mode::Pool | Mode::PoolMtls => {
            let origin = origin.ok_or_else(|| anyhow::anyhow!("no origin server"))?;
            anyhow::ensure!(
                (0.0..1.0).contains(&args.sidecar_fraction),
                "--sidecar-fraction must be below 1: the sidecar's cache is smaller than the data set"
            );
            let workers = args.workers.max(1) as u64;
            let topology = PoolTopology::start(
                program,
                &PoolSpec {
                    origin: &format!("http://{}/", origin.addr),
                    bucket,
                    workers: workers as usize,
                    worker_cache: ByteSize(data.cache_for_all().bytes() / workers + (64 << 20)),
                    sidecar_cache: ByteSize((data.bytes as f64 * args.sidecar_fraction) as u64),
                    policy: args.cache_policy,
                    identity: match mode {
                        Mode::PoolMtls => Some(mesh_identity.cloned().ok_or_else(|| {
                            anyhow::anyhow!("pool-mtls needs the run's control plane")
                        })?),
                        _ => None,
                    },
                    sidecar_flags: args
                        .sidecar_flags
                        .as_deref()
                        .map(|f| f.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default(),
                },
            )?;
            idle_rss = topology.sidecar.rss_bytes();
            let started = std::time::Instant::now();
            list_all(topology.sidecar.addr, &format!("/{bucket}")).await?;
            list_seconds = Some(started.elapsed().as_secs_f64());
            let target = Target::http(topology.sidecar.addr, format!("/{bucket}"));
            pool = Some(topology);
            target
        }
        Mode::Tmpfs => {
            let parent = args.tmpfs_dir.clone().unwrap_or_else(default_tmpfs_root);
            eprintln!("writing the data set under {}", parent.display());
            let spec = spec.clone();
            let files =
                tokio::task::spawn_blocking(move || FileTree::write(&parent, &spec)).await??;
            let root = files.root().to_path_buf();
            list_seconds = Some(walk_seconds(&root).await?);
            copy = Some(files);
            Target::files(&root, args.drop_pages)
        }
        Mode::Mount => {
            let origin = origin.ok_or_else(|| anyhow::anyhow!("no origin server"))?;
            let mount = MountPoint::new("epochs")?;
            let proxy = ChildProcess::ferry_worker(
                program,
                &WorkerSpec {
                    origin: &format!("http://{}/", origin.addr),
                    bucket,
                    cache_size: args.cache_size.unwrap_or_else(|| data.cache_for_all()),
                    cache_policy: args.cache_policy,
                    read_ahead: None,
                    extra: mount
                        .flags()
                        .into_iter()
                        .chain(
                            args.mount_threads
                                .map(|n| ["--mount-threads".to_owned(), n.to_string()])
                                .into_iter()
                                .flatten(),
                        )
                        .collect(),
                },
            )?;
            idle_rss = proxy.rss_bytes();
            // ImageFolder walks the tree once to build its index.
            let root = mount.path().join(bucket);
            list_seconds = Some(walk_seconds(&root).await?);
            server = Some(proxy);
            mount_point = Some(mount);
            Target::files(&root, args.drop_pages)
        }
    };
    Ok(PreparedMode {
        run: ModeRun {
            mode,
            epochs: Vec::new(),
            list_seconds,
            proxy_idle_rss_bytes: idle_rss,
            proxy_final_rss_bytes: None,
            proxy_admin: None,
            proxy_counters: Vec::new(),
        },
        target,
        server,
        pool,
        copy,
        mount: mount_point,
        bucket,
    })
}

/// Seconds to walk every directory under `root` and stat its files, as
/// `os.walk` (ImageFolder's indexing) does; fails if it finds no file.
async fn walk_seconds(root: &std::path::Path) -> anyhow::Result<f64> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut pending = vec![root.clone()];
        let mut files = 0u64;
        while let Some(dir) = pending.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
            {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                if entry.file_type()?.is_dir() {
                    pending.push(entry.path());
                } else {
                    files += 1;
                }
            }
        }
        anyhow::ensure!(files > 0, "{} holds no file", root.display());
        Ok(started.elapsed().as_secs_f64())
    })
    .await?
}

impl PreparedMode {
    /// CPU seconds of Ferry's processes in this mode, if it has any.
    fn proxy_cpu_seconds(&self) -> Option<f64> {
        match (&self.server, &self.pool) {
            (_, Some(pool)) => pool.cpu_seconds(),
            (Some(server), None) if matches!(self.run.mode, Mode::Ferry | Mode::Mount) => {
                server.cpu_seconds()
            }
            _ => None,
        }
    }

    async fn epoch(&self, args: &EpochsArgs, data: &DataSet, epoch: usize) -> EpochStats {
        let admin = match self.run.mode {
            Mode::Ferry | Mode::Mount => self.server.as_ref().and_then(|s| s.admin),
            _ => None,
        };
        let before = hit_counters(admin, self.bucket).await;
        let pool_before = match &self.pool {
            Some(pool) => pool.counters().await.ok(),
            None => None,
        };
        let cpu_before = self.proxy_cpu_seconds();
        let label = format!("{} epoch {epoch}", self.run.mode.name());
        let mut stats =
            read_epoch(data, &self.target, args.readers, args.seed, epoch, &label).await;
        if let (Some(before), Some(after)) = (cpu_before, self.proxy_cpu_seconds()) {
            stats.proxy_cpu_seconds = Some(after - before);
        }
        if let (Some(before), Some(after)) = (before, hit_counters(admin, self.bucket).await) {
            let hits = after.0 - before.0;
            let lookups = hits + after.1 - before.1;
            stats.hit_ratio = (lookups > 0.0).then(|| hits / lookups);
        }
        if let (Some(pool), Some(before)) = (&self.pool, pool_before)
            && let Ok(after) = pool.counters().await
        {
            let (sidecar, workers, origin_bytes, evenness) = before.delta(&after);
            stats.hit_ratio = sidecar;
            stats.pool_hit_ratio = workers;
            stats.origin_bytes = Some(origin_bytes);
            stats.load_evenness = evenness;
        }
        stats
    }
}

/// (hits, misses) of the proxy's memory tier, if `admin` is a proxy's.
async fn hit_counters(admin: Option<std::net::SocketAddr>, dataset: &str) -> Option<(f64, f64)> {
    let admin = admin?;
    let hits = scrape(
        admin,
        "cache_hits_total",
        &[("dataset", dataset), ("tier", "memory")],
    )
    .await
    .ok()?;
    let misses = scrape(
        admin,
        "cache_misses_total",
        &[("dataset", dataset), ("tier", "memory")],
    )
    .await
    .ok()?;
    Some((hits, misses))
}

fn ratios(runs: &[ModeRun]) -> Vec<(String, f64)> {
    let find = |mode| runs.iter().find(|r| r.mode == mode);
    let mut ratios = Vec::new();
    let comparisons: [(Mode, &[Mode]); 5] = [
        (Mode::Ferry, &[Mode::Bare, Mode::Direct]),
        (Mode::Tmpfs, &[Mode::Synthetic]),
        (Mode::Mount, &[Mode::Tmpfs, Mode::Ferry, Mode::Synthetic]),
        (Mode::Pool, &[Mode::Synthetic, Mode::Bare, Mode::Direct]),
        (
            Mode::PoolMtls,
            &[Mode::Pool, Mode::Synthetic, Mode::Bare, Mode::Direct],
        ),
    ];
    for (mode, baselines) in comparisons {
        let Some(run) = find(mode) else { continue };
        let name = mode.name();
        for &baseline in baselines {
            if let Some(base) = find(baseline) {
                let base_name = baseline.name();
                ratios.push((
                    format!("{name}/{base_name} items/s"),
                    run.warm_items_per_second() / base.warm_items_per_second(),
                ));
                ratios.push((
                    format!("{name}/{base_name} MB/s"),
                    run.warm_mb_per_second() / base.warm_mb_per_second(),
                ));
            }
        }
    }
    ratios
}

fn print(report: &EpochsReport) {
    let pool = report
        .runs
        .iter()
        .any(|r| matches!(r.mode, Mode::Pool | Mode::PoolMtls));
    let mut header = vec![
        "mode",
        "epoch",
        "items/s",
        "GETs/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "hit ratio",
    ];
    if pool {
        header.extend(["pool hit", "origin MB", "max/mean"]);
    }
    header.push("errors");
    let mut table = Table::new(&header);
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    for run in &report.runs {
        for epoch in &run.epochs {
            let mut row = vec![
                run.mode.name().to_owned(),
                epoch.epoch.to_string(),
                format!("{:.0}", epoch.items_per_second()),
                format!("{:.0}", epoch.reads_per_second()),
                format!("{:.0}", epoch.mb_per_second()),
                format!("{:.2}", epoch.p50_ms),
                format!("{:.2}", epoch.p99_ms),
                or_dash(epoch.hit_ratio.map(|h| format!("{h:.3}"))),
            ];
            if pool {
                row.push(or_dash(epoch.pool_hit_ratio.map(|h| format!("{h:.3}"))));
                row.push(or_dash(
                    epoch.origin_bytes.map(|b| format!("{:.1}", b as f64 / 1e6)),
                ));
                row.push(or_dash(epoch.load_evenness.map(|e| format!("{e:.3}"))));
            }
            row.push(epoch.errors.to_string());
            table.row(row);
        }
    }
    println!(
        "\n{} workload: {} items, {} GETs, {:.1} MB per epoch, {} readers, origin latency {} ms",
        report.workload,
        report.items,
        report.reads,
        report.bytes as f64 / 1e6,
        report.readers,
        report.origin_latency_ms
    );
    table.print();
    if !report.ratios.is_empty() {
        println!("\nwarm epochs (2+) against each baseline in this run:");
        for (name, value) in &report.ratios {
            println!("  {name:<26} {value:>8.3}");
        }
    }
    for run in &report.runs {
        let mode = run.mode.name();
        if let Some(seconds) = run.list_seconds {
            println!("  {:<26} {seconds:>8.3} s", format!("list bucket ({mode})"));
        }
        if let Some(rss) = run.proxy_idle_rss_bytes {
            let label = format!("proxy idle RSS ({mode})");
            println!("  {label:<26} {:>8.1} MB", rss as f64 / 1e6);
        }
        if let Some(rss) = run.proxy_final_rss_bytes {
            let label = format!("proxy RSS at end ({mode})");
            println!("  {label:<26} {:>8.1} MB", rss as f64 / 1e6);
        }
    }
    for run in &report.runs {
        if let Some(admin) = &run.proxy_admin {
            println!(
                "\n{} proxy counters at the end (from http://{admin}/metrics):",
                run.mode.name()
            );
            for (name, value) in &run.proxy_counters {
                println!("  {name:<26} {value:>14.0}");
            }
        }
    }
}
