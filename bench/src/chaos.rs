//! `ferry-bench chaos`: the pool topology under a worker crash. One worker
//! is killed (SIGKILL) in the middle of an epoch and started again later on
//! the same address; every sample is checked against the synthetic data set.
//! Reports failed reads, wrong bytes, latency around the failover, and how
//! long the restarted worker takes to be back in rotation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use ferry_config::{ByteSize, CachePolicy};

use crate::child::{ChildProcess, ProxyArgs};
use crate::client::{list_all, scrape};
use crate::report::{self, Table};
use crate::topology::{PoolSpec, PoolTopology};
use crate::workload::{
    DataSet, EpochStats, Target, percentile_ms, progress, run_epoch, sample_spec,
};

/// `ferry-bench chaos` arguments.
#[derive(Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Samples in the data set.
    #[arg(long, default_value_t = 12_000)]
    pub samples: u64,
    /// Mean sample size.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 32)]
    pub readers: usize,
    /// Workers in the pool.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Emulated first-byte latency of the origin.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub origin_latency: Duration,
    /// How long the killed worker stays down.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub down_for: Duration,
    /// Seed of sizes, contents and shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the crash did.
#[derive(Debug, Serialize)]
pub struct ChaosReport {
    /// Epoch 1 (warm-up), 2 (crash) and 3 (after).
    pub epochs: Vec<EpochStats>,
    /// Worker killed.
    pub killed: String,
    /// When, in ms since epoch 2 began.
    pub killed_at_ms: u64,
    /// When it was started again, in ms since epoch 2 began.
    pub restarted_at_ms: Option<u64>,
    /// From restart until the sidecar sent it requests again.
    pub recovery_seconds: Option<f64>,
    /// Reads started in the second after the kill: count, p50, p99.
    pub failover_window: (usize, f64, f64),
    /// Failed reads in all epochs.
    pub failed_reads: usize,
    /// Reads with wrong bytes in all epochs.
    pub wrong_bytes: usize,
}

/// Runs the crash scenario.
pub async fn run(args: &ChaosArgs) -> anyhow::Result<ChaosReport> {
    anyhow::ensure!(
        args.workers >= 2,
        "--workers must be at least 2 to survive losing one"
    );
    let spec = sample_spec(args.samples, args.size, args.seed)?;
    let data = DataSet::samples(spec.clone());
    let origin = ChildProcess::origin_server(&spec.to_query(), args.origin_latency)?;
    let workers = args.workers as u64;
    let topology = PoolTopology::start(
        &args.proxy.program(),
        &PoolSpec {
            origin: &format!("http://{}/", origin.addr),
            bucket: "imagenet",
            workers: args.workers,
            worker_cache: ByteSize(data.cache_for_all().bytes() / workers + (64 << 20)),
            sidecar_cache: ByteSize(data.bytes / 4),
            policy: CachePolicy::Pin,
            sidecar_flags: Vec::new(),
            identity: None,
        },
    )?;
    let sidecar = topology.sidecar.addr;
    let sidecar_admin = topology
        .sidecar
        .admin
        .ok_or_else(|| anyhow::anyhow!("sidecar has no admin"))?;
    let victim = 1.min(args.workers - 1);
    let victim_address = topology
        .worker_address(victim)
        .ok_or_else(|| anyhow::anyhow!("no worker {victim}"))?
        .to_string();
    let topology = Arc::new(Mutex::new(topology));
    list_all(sidecar, "/imagenet").await?;
    let target = Target::Http {
        addr: sidecar,
        prefix: "/imagenet".into(),
        verify: Some(Arc::new(spec)),
    };
    eprintln!(
        "chaos: {} samples through a sidecar and {} workers; worker {victim_address} is killed half-way through epoch 2",
        args.samples, args.workers
    );

    let mut epochs = Vec::new();
    let mut killed_at_ms = 0;
    let mut restarted_at_ms = None;
    let mut recovery_seconds = None;
    let mut crash_task = None;
    for epoch in 1..=3 {
        let bar = progress(data.items.len(), &format!("chaos epoch {epoch}"));
        let started = Instant::now();
        let crash = (epoch == 2).then(|| {
            let bar = bar.clone();
            let topology = Arc::clone(&topology);
            let half = data.items.len() as u64 / 2;
            let down_for = args.down_for;
            let member = victim_address.clone();
            tokio::spawn(async move {
                while bar.position() < half {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let killed = started.elapsed();
                lock(&topology).kill(victim);
                tokio::time::sleep(down_for).await;
                let before = member_requests(sidecar_admin, &member).await;
                let restart_topology = Arc::clone(&topology);
                let restarted =
                    tokio::task::spawn_blocking(move || lock(&restart_topology).restart(victim))
                        .await;
                let restarted_at = started.elapsed();
                if !matches!(restarted, Ok(Ok(()))) {
                    return (killed, None, None);
                }
                // Back in rotation once the sidecar sends it requests again.
                let deadline = Instant::now() + Duration::from_secs(120);
                while Instant::now() < deadline {
                    if member_requests(sidecar_admin, &member).await > before {
                        return (
                            killed,
                            Some(restarted_at),
                            Some(started.elapsed() - restarted_at),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (killed, Some(restarted_at), None)
            })
        });
        let mut stats = run_epoch(
            &data,
            data.order(args.seed, epoch),
            &target,
            args.readers,
            &bar,
        )
        .await;
        bar.finish_and_clear();
        stats.epoch = epoch;
        // The restart may land in a later epoch: the reads go on meanwhile.
        crash_task = crash_task.or(crash);
        epochs.push(stats);
    }
    if let Some(crash) = crash_task
        && let Ok((killed, restarted, recovered)) = crash.await
    {
        killed_at_ms = killed.as_millis() as u64;
        restarted_at_ms = restarted.map(|d| d.as_millis() as u64);
        recovery_seconds = recovered.map(|d| d.as_secs_f64());
    }
    // Reads that began within one second after the kill.
    let mut window: Vec<u32> = epochs[1]
        .timeline
        .iter()
        .filter(|(start, _)| {
            u64::from(*start) >= killed_at_ms && u64::from(*start) < killed_at_ms + 1000
        })
        .map(|(_, latency)| *latency)
        .collect();
    window.sort_unstable();
    let report = ChaosReport {
        failed_reads: epochs.iter().map(|e| e.errors).sum(),
        wrong_bytes: epochs.iter().map(|e| e.wrong_bytes).sum(),
        failover_window: (
            window.len(),
            percentile_ms(&window, 0.5),
            percentile_ms(&window, 0.99),
        ),
        epochs,
        killed: victim_address,
        killed_at_ms,
        restarted_at_ms,
        recovery_seconds,
    };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    drop(origin);
    Ok(report)
}

fn lock(topology: &Mutex<PoolTopology>) -> std::sync::MutexGuard<'_, PoolTopology> {
    topology.lock().unwrap_or_else(|p| p.into_inner())
}

async fn member_requests(admin: std::net::SocketAddr, member: &str) -> f64 {
    scrape(admin, "upstream_requests_total", &[("member", member)])
        .await
        .unwrap_or(0.0)
}

fn print(report: &ChaosReport) {
    let mut table = Table::new(&[
        "epoch",
        "items/s",
        "p50 ms",
        "p99 ms",
        "failed reads",
        "wrong bytes",
    ]);
    for epoch in &report.epochs {
        table.row(vec![
            epoch.epoch.to_string(),
            format!("{:.0}", epoch.items_per_second()),
            format!("{:.2}", epoch.p50_ms),
            format!("{:.2}", epoch.p99_ms),
            epoch.errors.to_string(),
            epoch.wrong_bytes.to_string(),
        ]);
    }
    println!(
        "\nchaos: worker {} killed {} ms into epoch 2",
        report.killed, report.killed_at_ms
    );
    table.print();
    let (count, p50, p99) = report.failover_window;
    println!(
        "\nreads started in the second after the kill: {count}, p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    match (report.restarted_at_ms, report.recovery_seconds) {
        (Some(at), Some(seconds)) => {
            println!("restarted {at} ms into epoch 2; back in rotation {seconds:.2} s later")
        }
        (Some(at), None) => {
            println!("restarted {at} ms into epoch 2; not back in rotation before the end")
        }
        _ => println!("the worker could not be restarted"),
    }
    println!(
        "failed reads: {}, wrong bytes: {}",
        report.failed_reads, report.wrong_bytes
    );
}
