//! `ferry-bench overload`: admission control and memory under load.
//!
//! Part 1, capacity: one worker admits `--capacity` requests at once, every
//! read a miss to an origin `--origin-latency` away. Readers at capacity,
//! then at `--factor` × capacity, each for `--phase`; readers back off on
//! `SlowDown` as S3 clients do (jittered, doubling, at most `Retry-After`).
//! Every body is checked against the synthetic data set.
//!
//! Part 3, slow-loris: readers of cached samples against a worker alone,
//! then with `--loris` connections that each trickle a request head one
//! header line a second and reconnect when cut (the worker's header
//! timeout, 10 s by default, cuts them).
//!
//! Part 2, memory: a sidecar with a 1 MiB cache over one worker, `--range-readers`
//! connections reading 4 MiB ranges of 64 MiB shards for `--range-load`,
//! then `--idle`; the sidecar's RSS is sampled throughout. Run for the
//! proxy under test, for `--baseline-bin` (an older build) in the same run,
//! and, with `--memory-limit`, for the proxy inside a memory cgroup of that
//! size (its in-flight bounds then come from the limit).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use ferry_config::{ByteSize, CachePolicy, SyntheticSpec};

use crate::child::{ChildProcess, ProxyArgs, ProxyProgram, WorkerSpec};
use crate::client::{Reader, SlowDown};
use crate::report::{self, Table};
use crate::workload::{percentile_ms, sample_spec, shard_spec};

/// `ferry-bench overload` arguments.
#[derive(Args, Clone, Debug)]
pub struct OverloadArgs {
    /// Samples in the data set of part 1.
    #[arg(long, default_value_t = 4_000)]
    pub samples: u64,
    /// Mean sample size.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Requests the worker serves at once (`--max-requests`).
    #[arg(long, default_value_t = 16)]
    pub capacity: usize,
    /// Readers in the overload phase, as a multiple of the capacity.
    #[arg(long, default_value_t = 4)]
    pub factor: usize,
    /// Length of each phase of part 1.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub phase: Duration,
    /// Emulated first-byte latency of the origin (every read of part 1 misses).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub origin_latency: Duration,
    /// The worker's `--admission-wait`.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub admission_wait: Duration,
    /// Connections reading 4 MiB ranges in part 2.
    #[arg(long, default_value_t = 64)]
    pub range_readers: usize,
    /// How long part 2 reads.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub range_load: Duration,
    /// How long part 2 then idles, sampling RSS.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Also run part 2 with the sidecar in a memory cgroup of this size (root only).
    #[arg(long)]
    pub memory_limit: Option<ByteSize>,
    /// An older ferry-proxy to run part 2 with as the baseline.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// Skip part 1.
    #[arg(long)]
    pub memory_only: bool,
    /// Slow-loris connections in part 3 (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    pub loris: usize,
    /// Readers of part 3, and how long each half of it runs.
    #[arg(long, default_value_t = 16)]
    pub loris_readers: usize,
    /// How long each half of part 3 runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub loris_phase: Duration,
    /// How often each slow-loris connection sends another header line
    /// (the classic tool's default is 15 s; the worker cuts at 10 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub loris_interval: Duration,
    /// Skip part 2.
    #[arg(long)]
    pub skip_memory: bool,
    /// Seed of sizes, contents and choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One phase of part 1.
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    /// Concurrent readers.
    pub readers: usize,
    /// Reads answered 200 with the right bytes.
    pub ok: u64,
    /// Reads answered with wrong bytes.
    pub wrong_bytes: u64,
    /// Answers that were 503 SlowDown.
    pub slow_downs: u64,
    /// Reads that failed otherwise.
    pub failed: u64,
    /// Good reads per second.
    pub reads_per_second: f64,
    /// Latency of good reads (including any admission wait).
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// The worker's RSS at the end of the phase.
    pub worker_rss_bytes: Option<u64>,
}

/// One run of part 2.
#[derive(Debug, Default, Serialize)]
pub struct MemoryRun {
    /// Which proxy.
    pub mode: String,
    /// Bytes per second read.
    pub bytes_per_second: f64,
    /// 4 MiB reads that succeeded.
    pub reads: u64,
    /// Answers that were 503 SlowDown.
    pub slow_downs: u64,
    /// Reads that failed otherwise.
    pub failed: u64,
    /// The sidecar's largest RSS while reading.
    pub peak_rss_bytes: u64,
    /// Its RSS when reading stopped.
    pub end_of_load_rss_bytes: u64,
    /// Its RSS 5 s into the idle time.
    pub idle_5s_rss_bytes: u64,
    /// Its RSS at the end of the idle time.
    pub idle_end_rss_bytes: u64,
    /// Whether the sidecar was still running at the end (not OOM-killed).
    pub survived: bool,
    /// RSS samples: (seconds since load began, bytes).
    pub samples: Vec<(f64, u64)>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct OverloadReport {
    /// Part 1 at capacity.
    pub at_capacity: Option<Phase>,
    /// Part 1 at `factor` × capacity.
    pub overloaded: Option<Phase>,
    /// Good reads per second overloaded / at capacity.
    pub throughput_ratio: Option<f64>,
    /// Part 2.
    pub memory: Vec<MemoryRun>,
    /// Part 3: readers alone, then under the slow-loris connections.
    pub loris: Option<Loris>,
}

/// Part 3.
#[derive(Debug, Serialize)]
pub struct Loris {
    /// Slow-loris connections kept open (reopened when cut).
    pub connections: usize,
    /// Readers alone.
    pub alone: Phase,
    /// The same readers under the slow-loris connections.
    pub attacked: Phase,
    /// Good reads per second attacked / alone.
    pub throughput_ratio: f64,
    /// Slow-loris connections the worker cut (its header timeout).
    pub cut: u64,
    /// The worker's CPU milliseconds per good read, alone and attacked.
    pub worker_cpu_ms_per_read: (f64, f64),
}

impl OverloadReport {
    /// Reads that failed or came back wrong (SlowDown is neither).
    pub fn failures(&self) -> u64 {
        let phases = [&self.at_capacity, &self.overloaded];
        phases
            .iter()
            .flat_map(|p| p.iter())
            .map(|p| p.failed + p.wrong_bytes)
            .sum::<u64>()
            + self.memory.iter().map(|m| m.failed).sum::<u64>()
            + self
                .loris
                .iter()
                .map(|l| {
                    l.alone.failed
                        + l.alone.wrong_bytes
                        + l.attacked.failed
                        + l.attacked.wrong_bytes
                })
                .sum::<u64>()
    }
}

/// Runs both parts.
pub async fn run(args: &OverloadArgs) -> anyhow::Result<OverloadReport> {
    anyhow::ensure!(
        args.capacity > 0 && args.factor > 0,
        "capacity and factor must be positive"
    );
    let program = args.proxy.program();
    let mut report = OverloadReport {
        at_capacity: None,
        overloaded: None,
        throughput_ratio: None,
        memory: Vec::new(),
        loris: None,
    };
    if !args.memory_only {
        let (at_capacity, overloaded) = capacity(args, &program).await?;
        report.throughput_ratio = Some(overloaded.reads_per_second / at_capacity.reads_per_second);
        report.at_capacity = Some(at_capacity);
        report.overloaded = Some(overloaded);
    }
    if args.loris > 0 {
        report.loris = Some(loris(args, &program).await?);
    }
    if args.skip_memory {
        print(args, &report);
        if let Some(path) = &args.json {
            report::write_json(path, &report)?;
        }
        return Ok(report);
    }
    if let Some(baseline) = &args.baseline_bin {
        let program = ProxyProgram::Binary(baseline.clone());
        report
            .memory
            .push(memory(args, &program, "baseline", None).await?);
    }
    report
        .memory
        .push(memory(args, &program, "ferry", None).await?);
    if let Some(limit) = args.memory_limit {
        let label = format!("ferry, {limit} limit");
        report
            .memory
            .push(memory(args, &program, &label, Some(limit)).await?);
    }
    print(args, &report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

async fn capacity(args: &OverloadArgs, program: &ProxyProgram) -> anyhow::Result<(Phase, Phase)> {
    let spec = SyntheticSpec {
        latency: args.origin_latency,
        ..sample_spec(args.samples, args.size, args.seed)?
    };
    let origin = spec.to_url();
    let worker = ChildProcess::ferry_worker(
        program,
        &WorkerSpec {
            origin: &origin,
            bucket: "data",
            cache_size: ByteSize(0),
            cache_policy: CachePolicy::Lru,
            read_ahead: None,
            extra: vec![
                "--max-requests".into(),
                args.capacity.to_string(),
                "--admission-wait".into(),
                format!("{}ms", args.admission_wait.as_millis()),
            ],
        },
    )?;
    let spec = Arc::new(SyntheticSpec {
        latency: Duration::ZERO,
        ..spec
    });
    let mut phases = Vec::new();
    for readers in [args.capacity, args.capacity * args.factor] {
        eprintln!("overload: {readers} readers for {:?}", args.phase);
        let mut phase = samples_phase(worker.addr, &spec, readers, args.phase, args.seed).await;
        phase.worker_rss_bytes = worker.rss_bytes();
        phases.push(phase);
    }
    let overloaded = phases.pop().context("phase")?;
    let at_capacity = phases.pop().context("phase")?;
    Ok((at_capacity, overloaded))
}

/// What one reader counted.
#[derive(Default)]
struct Tally {
    ok: u64,
    wrong: u64,
    slow_downs: u64,
    failed: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.wrong += other.wrong;
        self.slow_downs += other.slow_downs;
        self.failed += other.failed;
        self.bytes += other.bytes;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// A small, fast, seeded generator: readers need choices, not cryptography.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The pause after the `attempt`-th SlowDown in a row: full jitter over a
/// doubling ceiling of 25 ms, never above the 1 s `Retry-After`.
fn backoff(random: &mut XorShift, attempt: u32) -> Duration {
    let ceiling_ms = (25u64 << attempt.min(6)).min(1000);
    Duration::from_millis(random.next() % (ceiling_ms + 1))
}

async fn samples_phase(
    addr: std::net::SocketAddr,
    spec: &Arc<SyntheticSpec>,
    readers: usize,
    length: Duration,
    seed: u64,
) -> Phase {
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for reader_index in 0..readers {
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut reader = Reader::new(addr);
            let mut random = XorShift(seed.wrapping_mul(0x9e37_79b9) ^ (reader_index as u64 + 1));
            let mut tally = Tally::default();
            let mut expected = Vec::new();
            let mut refused_in_a_row = 0;
            while Instant::now() < deadline {
                let index = random.next() % spec.count;
                let path = format!("/data/{}", spec.key(index));
                let begun = Instant::now();
                match reader.get_body(&path, None).await {
                    Ok(body) => {
                        refused_in_a_row = 0;
                        expected.resize(spec.object_size(index) as usize, 0);
                        spec.fill(index, 0, &mut expected);
                        if body[..] == expected[..] {
                            tally.ok += 1;
                            tally.bytes += body.len() as u64;
                            let micros = begun.elapsed().as_micros();
                            tally
                                .latencies_us
                                .push(u32::try_from(micros).unwrap_or(u32::MAX));
                        } else {
                            tally.wrong += 1;
                        }
                    }
                    Err(err) if err.is::<SlowDown>() => {
                        tally.slow_downs += 1;
                        tokio::time::sleep(backoff(&mut random, refused_in_a_row)).await;
                        refused_in_a_row += 1;
                    }
                    Err(_) => tally.failed += 1,
                }
            }
            tally
        }));
    }
    let started = Instant::now();
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.add(tally);
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(length.as_secs_f64());
    total.latencies_us.sort_unstable();
    Phase {
        readers,
        ok: total.ok,
        wrong_bytes: total.wrong,
        slow_downs: total.slow_downs,
        failed: total.failed,
        reads_per_second: total.ok as f64 / elapsed,
        p50_ms: percentile_ms(&total.latencies_us, 0.50),
        p99_ms: percentile_ms(&total.latencies_us, 0.99),
        worker_rss_bytes: None,
    }
}

async fn loris(args: &OverloadArgs, program: &ProxyProgram) -> anyhow::Result<Loris> {
    let spec = Arc::new(sample_spec(args.samples, args.size, args.seed)?);
    let origin = spec.to_url();
    let worker = ChildProcess::ferry_worker(
        program,
        &WorkerSpec {
            origin: &origin,
            bucket: "data",
            cache_size: ByteSize::gib(1),
            cache_policy: CachePolicy::Lru,
            read_ahead: None,
            extra: Vec::new(),
        },
    )?;
    eprintln!("overload: slow-loris, warming the cache");
    samples_phase(
        worker.addr,
        &spec,
        args.loris_readers,
        Duration::from_secs(5),
        args.seed,
    )
    .await;
    eprintln!(
        "overload: {} readers alone for {:?}",
        args.loris_readers, args.loris_phase
    );
    let cpu_before = worker.cpu_seconds().unwrap_or(0.0);
    let alone = samples_phase(
        worker.addr,
        &spec,
        args.loris_readers,
        args.loris_phase,
        args.seed,
    )
    .await;
    let cpu_alone = worker.cpu_seconds().unwrap_or(0.0) - cpu_before;
    eprintln!(
        "overload: {} readers and {} slow-loris connections for {:?}",
        args.loris_readers, args.loris, args.loris_phase
    );
    // The attack runs on a thread and runtime of its own, as a separate
    // client would: its 10,000 tasks must not queue the readers' wakeups.
    let cut = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let attack = {
        let (cut, addr, interval, connections) =
            (cut.clone(), worker.addr, args.loris_interval, args.loris);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let attackers: Vec<_> = (0..connections)
                    .map(|_| tokio::spawn(trickle(addr, interval, cut.clone())))
                    .collect();
                let _ = stopped.await;
                for attacker in attackers {
                    attacker.abort();
                }
            });
            anyhow::Ok(())
        })
    };
    let cpu_before = worker.cpu_seconds().unwrap_or(0.0);
    let attacked = samples_phase(
        worker.addr,
        &spec,
        args.loris_readers,
        args.loris_phase,
        args.seed,
    )
    .await;
    let cpu_attacked = worker.cpu_seconds().unwrap_or(0.0) - cpu_before;
    let _ = stop.send(());
    attack
        .join()
        .map_err(|_| anyhow::anyhow!("the slow-loris thread panicked"))??;
    let per_read = |cpu: f64, reads: u64| cpu * 1000.0 / reads.max(1) as f64;
    Ok(Loris {
        connections: args.loris,
        throughput_ratio: attacked.reads_per_second / alone.reads_per_second,
        worker_cpu_ms_per_read: (
            per_read(cpu_alone, alone.ok),
            per_read(cpu_attacked, attacked.ok),
        ),
        alone,
        attacked,
        cut: cut.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// One slow-loris connection: a request head, one header line every
/// `interval`, never finished; reconnects whenever the server cuts it.
async fn trickle(
    addr: std::net::SocketAddr,
    interval: Duration,
    cut: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncWriteExt;
    loop {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream
            .write_all(b"GET /data/x HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        loop {
            tokio::time::sleep(interval).await;
            if stream.write_all(b"X-Loris: 1\r\n").await.is_err() {
                cut.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Range size of part 2.
const RANGE: u64 = 4 << 20;

async fn memory(
    args: &OverloadArgs,
    program: &ProxyProgram,
    mode: &str,
    limit: Option<ByteSize>,
) -> anyhow::Result<MemoryRun> {
    eprintln!("overload: memory, {mode}");
    let spec = Arc::new(shard_spec(8, ByteSize::mib(64), args.seed)?);
    let origin = spec.to_url();
    let worker = ChildProcess::ferry_worker(
        program,
        &WorkerSpec {
            origin: &origin,
            bucket: "data",
            cache_size: ByteSize::gib(1),
            cache_policy: CachePolicy::Lru,
            read_ahead: None,
            extra: Vec::new(),
        },
    )?;
    let inbound = worker
        .inbound
        .context("the worker named no inbound address")?;
    let sidecar_args: Vec<String> = [
        "sidecar",
        "--pool",
        &inbound.to_string(),
        "--bucket",
        "data",
        "--cache-size",
        "1MiB",
    ]
    .map(str::to_owned)
    .into();
    let cgroup = match limit {
        Some(limit) => Some(MemoryCgroup::create(limit)?),
        None => None,
    };
    let mut sidecar = match &cgroup {
        Some(cgroup) => ChildProcess::proxy_in_cgroup(program, &sidecar_args, &cgroup.procs())?,
        None => ChildProcess::proxy(program, &sidecar_args)?,
    };
    let addr = sidecar.addr;
    let started = Instant::now();
    let deadline = started + args.range_load;
    let mut tasks = Vec::new();
    for reader_index in 0..args.range_readers {
        let spec = spec.clone();
        let seed = args.seed;
        tasks.push(tokio::spawn(async move {
            let mut reader = Reader::new(addr);
            let mut random = XorShift(seed.wrapping_mul(0x51_7cc1) ^ (reader_index as u64 + 7));
            let mut tally = Tally::default();
            let mut refused_in_a_row = 0;
            let ranges = spec.size.bytes() / RANGE;
            while Instant::now() < deadline {
                let shard = random.next() % spec.count;
                let start = (random.next() % ranges) * RANGE;
                let path = format!("/data/{}", spec.key(shard));
                match reader.get(&path, Some((start, start + RANGE - 1))).await {
                    Ok(len) if len == RANGE => {
                        refused_in_a_row = 0;
                        tally.ok += 1;
                        tally.bytes += len;
                    }
                    Ok(_) => tally.wrong += 1,
                    Err(err) if err.is::<SlowDown>() => {
                        tally.slow_downs += 1;
                        tokio::time::sleep(backoff(&mut random, refused_in_a_row)).await;
                        refused_in_a_row += 1;
                    }
                    Err(_) => tally.failed += 1,
                }
            }
            tally
        }));
    }
    let mut run = MemoryRun {
        mode: mode.to_owned(),
        ..MemoryRun::default()
    };
    let sample = |run: &mut MemoryRun, sidecar: &ChildProcess| -> u64 {
        let rss = sidecar.rss_bytes().unwrap_or(0);
        run.samples.push((started.elapsed().as_secs_f64(), rss));
        rss
    };
    while Instant::now() < deadline {
        let rss = sample(&mut run, &sidecar);
        run.peak_rss_bytes = run.peak_rss_bytes.max(rss);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.add(tally);
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();
    run.end_of_load_rss_bytes = sample(&mut run, &sidecar);
    run.peak_rss_bytes = run.peak_rss_bytes.max(run.end_of_load_rss_bytes);
    let idle_started = Instant::now();
    while idle_started.elapsed() < args.idle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let rss = sample(&mut run, &sidecar);
        if run.idle_5s_rss_bytes == 0 && idle_started.elapsed() >= Duration::from_secs(5) {
            run.idle_5s_rss_bytes = rss;
        }
        run.idle_end_rss_bytes = rss;
    }
    run.survived = sidecar.is_running();
    run.reads = total.ok;
    run.slow_downs = total.slow_downs;
    run.failed = total.failed + total.wrong;
    run.bytes_per_second = total.bytes as f64 / load_seconds;
    drop(sidecar);
    drop(cgroup);
    Ok(run)
}

/// A memory cgroup of its own (v2 or v1), removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    fn create(limit: ByteSize) -> anyhow::Result<Self> {
        let name = format!("ferry-bench-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, file) = if v2 {
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
        } else {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            )
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cgroup {} (needs root)", dir.display()))?;
        std::fs::write(dir.join(file), limit.bytes().to_string())
            .with_context(|| format!("setting {file} of {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its process is gone by now; an emptied cgroup can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / f64::from(1 << 20))
}

fn print(args: &OverloadArgs, report: &OverloadReport) {
    if let (Some(at), Some(over)) = (&report.at_capacity, &report.overloaded) {
        println!(
            "\nOne worker admitting {} requests (admission wait {:?}), every read a miss {:?} from the origin:",
            args.capacity, args.admission_wait, args.origin_latency
        );
        let mut table = Table::new(&[
            "readers",
            "good reads/s",
            "p50 ms",
            "p99 ms",
            "SlowDown",
            "failed",
            "wrong",
            "worker RSS MiB",
        ]);
        for phase in [at, over] {
            table.row(vec![
                phase.readers.to_string(),
                format!("{:.0}", phase.reads_per_second),
                format!("{:.1}", phase.p50_ms),
                format!("{:.1}", phase.p99_ms),
                phase.slow_downs.to_string(),
                phase.failed.to_string(),
                phase.wrong_bytes.to_string(),
                phase.worker_rss_bytes.map_or("-".into(), mib),
            ]);
        }
        table.print();
        if let Some(ratio) = report.throughput_ratio {
            println!("throughput overloaded / at capacity: {ratio:.3}");
        }
    }
    println!(
        "\nSidecar with a 1 MiB cache, {} connections of 4 MiB ranges for {:?}, then {:?} idle (RSS in MiB):",
        args.range_readers, args.range_load, args.idle
    );
    let mut table = Table::new(&[
        "proxy",
        "GB/s",
        "SlowDown",
        "failed",
        "peak RSS",
        "end of load",
        "idle 5 s",
        "idle end",
        "alive",
    ]);
    for run in &report.memory {
        table.row(vec![
            run.mode.clone(),
            format!("{:.2}", run.bytes_per_second / 1e9),
            run.slow_downs.to_string(),
            run.failed.to_string(),
            mib(run.peak_rss_bytes),
            mib(run.end_of_load_rss_bytes),
            mib(run.idle_5s_rss_bytes),
            mib(run.idle_end_rss_bytes),
            run.survived.to_string(),
        ]);
    }
    table.print();
    if let Some(loris) = &report.loris {
        println!(
            "\nReaders of cached {} samples, alone and with {} slow-loris connections:",
            args.size, loris.connections
        );
        let mut table = Table::new(&["", "good reads/s", "p50 ms", "p99 ms", "failed", "wrong"]);
        for (label, phase) in [("alone", &loris.alone), ("slow-loris", &loris.attacked)] {
            table.row(vec![
                label.to_owned(),
                format!("{:.0}", phase.reads_per_second),
                format!("{:.2}", phase.p50_ms),
                format!("{:.2}", phase.p99_ms),
                phase.failed.to_string(),
                phase.wrong_bytes.to_string(),
            ]);
        }
        table.print();
        println!(
            "throughput with slow-loris / alone: {:.3} ({} slow-loris connections cut, a header line every {:?}); \
             worker CPU per read {:.3} ms alone, {:.3} ms attacked",
            loris.throughput_ratio,
            loris.cut,
            args.loris_interval,
            loris.worker_cpu_ms_per_read.0,
            loris.worker_cpu_ms_per_read.1
        );
    }
}
