//! `ferry-bench mtls`: what mutual TLS costs on the sidecar → worker hop, and
//! whether certificates renew under load without losing a read.
//!
//! The hop is measured against itself in plaintext in the same run (epochs
//! alternate between the two pools): 4 MiB range reads for throughput, 110 KB
//! objects for latency. The sidecar caches nothing, so every read crosses the
//! hop. The renewal run then reads through an mTLS pool whose certificates
//! live a minute, for several minutes, checking every byte.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use ferry_config::{ByteSize, CachePolicy};

use crate::child::{ChildProcess, ControlPlane, ProxyArgs};
use crate::client::{list_all, scrape};
use crate::epochs::{self, EpochsArgs, EpochsReport, Mode};
use crate::report::{self, Table};
use crate::topology::{PoolSpec, PoolTopology};
use crate::workload::{DataSet, EpochStats, Target, read_epoch, sample_spec};

/// Sidecar flags that turn off hedges and spills.
const AFFINITY_ONLY: &str = "--hedge off --load-epsilon 10";

/// `ferry-bench mtls` arguments.
#[derive(Args, Clone, Debug)]
pub struct MtlsArgs {
    /// Shards read in 4 MiB ranges (throughput part).
    #[arg(long, default_value_t = 64)]
    pub shard_count: u64,
    /// Size of each shard.
    #[arg(long, default_value = "16MiB")]
    pub shard_size: ByteSize,
    /// Size of each range read.
    #[arg(long, default_value = "4MiB")]
    pub range_size: ByteSize,
    /// Objects in the latency part (and the renewal run).
    #[arg(long, default_value_t = 6_000)]
    pub samples: u64,
    /// Mean object size.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Epochs per pool in the comparisons (the first fills the workers).
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 32)]
    pub readers: usize,
    /// Workers in each pool.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// How long the renewal run reads; 0s skips it.
    #[arg(long, default_value = "200s", value_parser = humantime::parse_duration)]
    pub renewal_for: Duration,
    /// Certificate lifetime in the renewal run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,
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

/// Plaintext against mTLS on one workload, over the warm epochs.
#[derive(Debug, Serialize)]
pub struct HopComparison {
    /// Plaintext hop: MB/s.
    pub plaintext_mb_s: f64,
    /// mTLS hop: MB/s.
    pub mtls_mb_s: f64,
    /// mTLS / plaintext throughput.
    pub throughput_ratio: f64,
    /// Plaintext hop: mean of the epochs' median latency, ms.
    pub plaintext_p50_ms: f64,
    /// Plaintext hop: mean of the epochs' p99 latency, ms.
    pub plaintext_p99_ms: f64,
    /// mTLS hop: mean of the epochs' median latency, ms.
    pub mtls_p50_ms: f64,
    /// mTLS hop: mean of the epochs' p99 latency, ms.
    pub mtls_p99_ms: f64,
    /// Plaintext: CPU seconds of the sidecar and workers per GB read.
    pub plaintext_cpu_s_per_gb: f64,
    /// mTLS: CPU seconds of the sidecar and workers per GB read.
    pub mtls_cpu_s_per_gb: f64,
    /// Failed reads in both pools, all epochs.
    pub failed_reads: usize,
}

/// The renewal run.
#[derive(Debug, Serialize)]
pub struct RenewalReport {
    /// Certificate lifetime, seconds.
    pub cert_lifetime_s: f64,
    /// How long it read, seconds.
    pub seconds: f64,
    /// Epochs read.
    pub epochs: usize,
    /// Reads completed.
    pub reads: usize,
    /// Failed reads.
    pub failed_reads: usize,
    /// Reads whose bytes were wrong.
    pub wrong_bytes: usize,
    /// Certificates the control plane issued (the first of each proxy included).
    pub certificates_issued: u64,
    /// Renewals: certificates issued beyond each proxy's first.
    pub renewals: u64,
    /// Slowest epoch's p99 latency, ms.
    pub worst_p99_ms: f64,
}

/// The whole scenario.
#[derive(Debug, Serialize)]
pub struct MtlsReport {
    /// 4 MiB ranges.
    pub chunks: HopComparison,
    /// 110 KB objects.
    pub objects: HopComparison,
    /// Renewal under load, unless skipped.
    pub renewal: Option<RenewalReport>,
}

impl MtlsReport {
    /// Failed or wrong reads anywhere in the scenario.
    pub fn failures(&self) -> usize {
        self.chunks.failed_reads
            + self.objects.failed_reads
            + self
                .renewal
                .as_ref()
                .map_or(0, |r| r.failed_reads + r.wrong_bytes)
    }
}

/// Runs the scenario.
pub async fn run(args: &MtlsArgs) -> anyhow::Result<MtlsReport> {
    anyhow::ensure!(
        args.epochs >= 2,
        "--epochs must be at least 2 (one warms up)"
    );
    eprintln!("mtls: 4 MiB ranges, plaintext and mTLS pools in turn");
    let chunks = compare(&epochs::run(&args.comparison(true)).await?);
    eprintln!("mtls: 110 KB objects, plaintext and mTLS pools in turn");
    let objects = compare(&epochs::run(&args.comparison(false)).await?);
    let renewal = if args.renewal_for.is_zero() {
        None
    } else {
        Some(renewal(args).await?)
    };
    let report = MtlsReport {
        chunks,
        objects,
        renewal,
    };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

impl MtlsArgs {
    fn comparison(&self, shards: bool) -> EpochsArgs {
        EpochsArgs {
            samples: self.samples,
            size: self.size,
            shards,
            shard_count: self.shard_count,
            shard_size: self.shard_size,
            range_size: self.range_size,
            readers: self.readers,
            epochs: self.epochs,
            seed: self.seed,
            origin_latency: Duration::from_millis(10),
            modes: vec![Mode::Pool, Mode::PoolMtls],
            access: epochs::Access::S3,
            classes: None,
            tmpfs_dir: None,
            drop_pages: false,
            mount_threads: None,
            cache_policy: CachePolicy::Pin,
            cache_size: None,
            workers: self.workers,
            sidecar_fraction: 0.0,
            // Every chunk to its owner in both pools, so the two differ
            // only in the hop, not in what the balancer made of its latency.
            sidecar_flags: Some(AFFINITY_ONLY.to_owned()),
            cert_lifetime: Duration::from_secs(24 * 3600),
            proxy: self.proxy.clone(),
            json: None,
            keep_running: false,
        }
    }
}

fn compare(report: &EpochsReport) -> HopComparison {
    let warm = |mode: Mode| -> Vec<&EpochStats> {
        report
            .runs
            .iter()
            .filter(|r| r.mode == mode)
            .flat_map(|r| r.epochs.iter().skip(1))
            .collect()
    };
    let mb_s = |epochs: &[&EpochStats]| {
        let bytes: u64 = epochs.iter().map(|e| e.bytes).sum();
        let seconds: f64 = epochs.iter().map(|e| e.seconds).sum();
        bytes as f64 / 1e6 / seconds.max(1e-9)
    };
    let cpu_per_gb = |epochs: &[&EpochStats]| {
        let bytes: u64 = epochs.iter().map(|e| e.bytes).sum();
        let cpu: f64 = epochs.iter().filter_map(|e| e.proxy_cpu_seconds).sum();
        cpu / (bytes as f64 / 1e9).max(1e-9)
    };
    let mean = |epochs: &[&EpochStats], pick: fn(&EpochStats) -> f64| {
        epochs.iter().map(|e| pick(e)).sum::<f64>() / epochs.len().max(1) as f64
    };
    let (plain, mtls) = (warm(Mode::Pool), warm(Mode::PoolMtls));
    let (plaintext_mb_s, mtls_mb_s) = (mb_s(&plain), mb_s(&mtls));
    HopComparison {
        plaintext_mb_s,
        mtls_mb_s,
        throughput_ratio: mtls_mb_s / plaintext_mb_s.max(1e-9),
        plaintext_p50_ms: mean(&plain, |e| e.p50_ms),
        plaintext_p99_ms: mean(&plain, |e| e.p99_ms),
        mtls_p50_ms: mean(&mtls, |e| e.p50_ms),
        mtls_p99_ms: mean(&mtls, |e| e.p99_ms),
        plaintext_cpu_s_per_gb: cpu_per_gb(&plain),
        mtls_cpu_s_per_gb: cpu_per_gb(&mtls),
        failed_reads: report
            .runs
            .iter()
            .flat_map(|r| &r.epochs)
            .map(|e| e.errors)
            .sum(),
    }
}

async fn renewal(args: &MtlsArgs) -> anyhow::Result<RenewalReport> {
    let spec = sample_spec(args.samples, args.size, args.seed)?;
    let data = DataSet::samples(spec.clone());
    let plane = ControlPlane::start(args.cert_lifetime)?;
    let plane_admin = plane
        .running()?
        .admin
        .ok_or_else(|| anyhow::anyhow!("the control plane named no admin address"))?;
    let origin = ChildProcess::origin_server(&spec.to_query(), Duration::from_millis(10))?;
    let workers = args.workers.max(1) as u64;
    let topology = PoolTopology::start(
        &args.proxy.program(),
        &PoolSpec {
            origin: &format!("http://{}/", origin.addr),
            bucket: "imagenet",
            workers: args.workers.max(1),
            worker_cache: ByteSize(data.cache_for_all().bytes() / workers + (64 << 20)),
            sidecar_cache: ByteSize(0),
            policy: CachePolicy::Pin,
            sidecar_flags: Vec::new(),
            identity: Some(plane.identity.clone()),
        },
    )?;
    list_all(topology.sidecar.addr, "/imagenet").await?;
    let target = Target::Http {
        addr: topology.sidecar.addr,
        prefix: "/imagenet".into(),
        verify: Some(std::sync::Arc::new(spec)),
    };
    eprintln!(
        "mtls: renewal run, certificates of {:?}, reading for {:?}",
        args.cert_lifetime, args.renewal_for
    );
    let started = Instant::now();
    let mut epochs = Vec::new();
    while started.elapsed() < args.renewal_for {
        let epoch = epochs.len() + 1;
        let label = format!("renewal epoch {epoch}");
        epochs.push(read_epoch(&data, &target, args.readers, args.seed, epoch, &label).await);
    }
    let seconds = started.elapsed().as_secs_f64();
    let issued = scrape(plane_admin, "identity_certificates_issued_total", &[]).await? as u64;
    let proxies = workers + 1;
    Ok(RenewalReport {
        cert_lifetime_s: args.cert_lifetime.as_secs_f64(),
        seconds,
        epochs: epochs.len(),
        reads: epochs.iter().map(|e| e.reads).sum(),
        failed_reads: epochs.iter().map(|e| e.errors).sum(),
        wrong_bytes: epochs.iter().map(|e| e.wrong_bytes).sum(),
        certificates_issued: issued,
        renewals: issued.saturating_sub(proxies),
        worst_p99_ms: epochs.iter().map(|e| e.p99_ms).fold(0.0, f64::max),
    })
}

fn print(report: &MtlsReport) {
    let mut table = Table::new(&[
        "workload",
        "plain MB/s",
        "mTLS MB/s",
        "mTLS/plain",
        "plain p50",
        "mTLS p50",
        "plain p99",
        "mTLS p99",
        "added p50 ms",
        "added p99 ms",
        "plain CPU s/GB",
        "mTLS CPU s/GB",
    ]);
    for (name, hop) in [
        ("4 MiB ranges", &report.chunks),
        ("110 KB objects", &report.objects),
    ] {
        table.row(vec![
            name.to_owned(),
            format!("{:.0}", hop.plaintext_mb_s),
            format!("{:.0}", hop.mtls_mb_s),
            format!("{:.3}", hop.throughput_ratio),
            format!("{:.2}", hop.plaintext_p50_ms),
            format!("{:.2}", hop.mtls_p50_ms),
            format!("{:.2}", hop.plaintext_p99_ms),
            format!("{:.2}", hop.mtls_p99_ms),
            format!("{:+.2}", hop.mtls_p50_ms - hop.plaintext_p50_ms),
            format!("{:+.2}", hop.mtls_p99_ms - hop.plaintext_p99_ms),
            format!("{:.3}", hop.plaintext_cpu_s_per_gb),
            format!("{:.3}", hop.mtls_cpu_s_per_gb),
        ]);
    }
    println!("\nmtls: the sidecar → worker hop, warm epochs, same run");
    table.print();
    println!(
        "(CPU s/GB: CPU time of the sidecar and workers together per GB read; on a machine \
         whose cores the reader, sidecar and workers share, throughput follows it)"
    );
    if let Some(renewal) = &report.renewal {
        println!(
            "\nrenewal: {:.0} s of reads with {:.0} s certificates: {} epochs, {} reads, \
             {} certificates issued ({} renewals), {} failed reads, {} wrong bytes, worst p99 {:.2} ms",
            renewal.seconds,
            renewal.cert_lifetime_s,
            renewal.epochs,
            renewal.reads,
            renewal.certificates_issued,
            renewal.renewals,
            renewal.failed_reads,
            renewal.wrong_bytes,
            renewal.worst_p99_ms
        );
    }
}
