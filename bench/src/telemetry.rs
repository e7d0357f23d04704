//! `ferry-bench telemetry`: what observability costs on the hot path. Five
//! workers serve the same cached data set in turns, epoch by epoch: tracing
//! off, traces sampled at 0.01 and at 1.0 (exported to a collector process),
//! at 1.0 to a collector that accepts and never answers,
//! and tracing off with `/metrics` scraped 10 times a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use ferry_config::ByteSize;

use crate::child::{ChildProcess, ProxyArgs};
use crate::client::{Reader, list_all, scrape};
use crate::report::{self, Table};
use crate::workload::{DataSet, EpochStats, Target, read_epoch, sample_spec};

/// `ferry-bench telemetry` arguments.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Samples in the data set.
    #[arg(long, default_value_t = 5_000)]
    pub samples: u64,
    /// Mean sample size.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 32)]
    pub readers: usize,
    /// Epochs per variant after the one that fills the caches (rounds of
    /// the paired comparison; one takes about 0.7 s here).
    #[arg(long, default_value_t = 200)]
    pub epochs: usize,
    /// Scrapes per second in the scraped variant.
    #[arg(long, default_value_t = 10)]
    pub scrapes_per_second: u32,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One variant's warm epochs.
#[derive(Debug, Serialize)]
pub struct Variant {
    /// What it is.
    pub name: &'static str,
    /// Warm epochs.
    pub epochs: Vec<EpochStats>,
    /// Mean samples/s over them.
    pub items_per_second: f64,
    /// Against tracing off, same run.
    pub ratio_to_off: f64,
    /// Mean of the rounds' ratios to off (each round reads every variant once).
    pub paired_ratio: f64,
    /// Half-width of that mean's 95 % confidence interval.
    pub paired_ci95: f64,
    /// The worker's CPU time per read over the warm epochs, µs (export included).
    pub cpu_us_per_read: Option<f64>,
    /// That against tracing off.
    pub cpu_ratio_to_off: Option<f64>,
    /// Spans the worker exported (none when it does not trace).
    pub spans_exported: Option<f64>,
    /// Spans it dropped.
    pub spans_dropped: Option<f64>,
}

/// The results.
#[derive(Debug, Serialize)]
pub struct TelemetryReport {
    /// Every variant.
    pub variants: Vec<Variant>,
    /// Scrapes made in the scraped variant.
    pub scrapes: u64,
    /// Mean time of one scrape, ms.
    pub scrape_ms: f64,
    /// Size of one exposition, bytes.
    pub scrape_bytes: u64,
}

impl TelemetryReport {
    /// Failed reads in any variant.
    pub fn failures(&self) -> usize {
        self.variants
            .iter()
            .flat_map(|v| &v.epochs)
            .map(|e| e.errors)
            .sum()
    }
}

const VARIANTS: [&str; 5] = [
    "off",
    "sampled 0.01",
    "sampled 1.0",
    "1.0, collector stalled",
    "scraped 10/s",
];
/// The variant whose `/metrics` is scraped.
const SCRAPED: usize = 4;
/// Connections the stalled collector holds open at most.
const STALLED_CONNECTIONS: usize = 256;

/// Runs the comparison.
pub async fn run(args: &TelemetryArgs) -> anyhow::Result<TelemetryReport> {
    anyhow::ensure!(args.epochs >= 1, "--epochs must be at least 1");
    let spec = sample_spec(args.samples, args.size, 1)?;
    let data = DataSet::samples(spec.clone());
    let collector = ChildProcess::collector()?;
    let endpoint = format!("http://{}", collector.addr);
    let program = args.proxy.program();
    let origin = format!("synthetic://?{}", spec.to_query());
    let cache = data.cache_for_all().bytes().to_string();
    let worker_args: Vec<String> = [
        "worker",
        "--origin",
        &origin,
        "--bucket",
        "imagenet",
        "--cache-size",
        &cache,
    ]
    .map(str::to_owned)
    .into();
    // A collector that accepts connections and never answers: exports hang
    // until their timeout, the queue fills, and spans are dropped.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stalled_endpoint = format!("http://{}", stalled.local_addr()?);
    let stalled_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stalled.accept().await {
            if held.len() < STALLED_CONNECTIONS {
                held.push(stream);
            }
        }
    });
    let traced = |ratio: &'static str, endpoint: &str| -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
            ("OTEL_TRACES_SAMPLER", "traceidratio".into()),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.into()),
        ]
    };
    let envs: [Vec<(&str, String)>; 5] = [
        Vec::new(),
        traced("0.01", &endpoint),
        traced("1.0", &endpoint),
        traced("1.0", &stalled_endpoint),
        Vec::new(),
    ];
    let mut workers = Vec::new();
    for env in &envs {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let worker = ChildProcess::proxy_with_env(&program, &worker_args, &env)?;
        list_all(worker.addr, "/imagenet").await?;
        workers.push(worker);
    }
    let targets: Vec<Target> = workers
        .iter()
        .map(|w| Target::http(w.addr, "/imagenet"))
        .collect();
    eprintln!(
        "telemetry: {} samples, {} readers; variants {VARIANTS:?}",
        args.samples, args.readers
    );
    // Epoch 1 fills every cache; the rest are all hits.
    for (variant, target) in VARIANTS.iter().zip(&targets) {
        read_epoch(
            &data,
            target,
            args.readers,
            1,
            1,
            &format!("{variant} fill"),
        )
        .await;
    }
    let scraped_admin = workers[SCRAPED]
        .admin
        .ok_or_else(|| anyhow::anyhow!("the scraped worker has no admin"))?;
    let scrapes = Arc::new(AtomicU64::new(0));
    let scrape_nanos = Arc::new(AtomicU64::new(0));
    let scrape_bytes = Arc::new(AtomicU64::new(0));
    let mut results: Vec<Vec<EpochStats>> = vec![Vec::new(); VARIANTS.len()];
    let cpu_before: Vec<Option<f64>> = workers.iter().map(ChildProcess::cpu_seconds).collect();
    for epoch in 2..=args.epochs + 1 {
        // Each epoch starts with a different variant, so that none gains
        // from its place in the turn (the one after an idle spell runs
        // measurably faster on a small machine).
        for turn in 0..VARIANTS.len() {
            let index = (turn + epoch) % VARIANTS.len();
            let (variant, target) = (VARIANTS[index], &targets[index]);
            let scraping = (index == SCRAPED).then(|| {
                let running = Arc::new(AtomicBool::new(true));
                let task = tokio::spawn(scrape_loop(
                    scraped_admin,
                    args.scrapes_per_second.max(1),
                    running.clone(),
                    scrapes.clone(),
                    scrape_nanos.clone(),
                    scrape_bytes.clone(),
                ));
                (running, task)
            });
            let label = format!("{variant} {epoch}");
            let stats = read_epoch(&data, target, args.readers, 1, epoch, &label).await;
            if let Some((running, task)) = scraping {
                running.store(false, Ordering::Release);
                let _ = task.await;
            }
            results[index].push(stats);
        }
    }
    // The 1.0 worker's last spans leave after its last epoch: wait for its
    // exporter (one batch interval and then some) before reading CPU times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_per_read: Vec<Option<f64>> = workers
        .iter()
        .zip(&cpu_before)
        .zip(&results)
        .map(|((worker, before), epochs)| {
            let reads: usize = epochs.iter().map(|e| e.items).sum();
            let spent = worker.cpu_seconds()? - (*before)?;
            (reads > 0).then(|| spent * 1e6 / reads as f64)
        })
        .collect();
    let mean = |epochs: &[EpochStats]| {
        let items: usize = epochs.iter().map(|e| e.items).sum();
        let seconds: f64 = epochs.iter().map(|e| e.seconds).sum();
        items as f64 / seconds.max(1e-9)
    };
    let off = mean(&results[0]);
    let off_rounds = results[0].clone();
    let mut variants = Vec::new();
    for ((((name, epochs), worker), env), cpu) in VARIANTS
        .iter()
        .zip(results)
        .zip(&workers)
        .zip(&envs)
        .zip(&cpu_per_read)
    {
        let (exported, dropped) = match worker.admin {
            Some(admin) if !env.is_empty() => (
                scrape(admin, "trace_spans_exported_total", &[]).await.ok(),
                scrape(admin, "trace_spans_dropped_total", &[]).await.ok(),
            ),
            _ => (None, None),
        };
        let items_per_second = mean(&epochs);
        let (paired_ratio, paired_ci95) = paired(&epochs, &off_rounds);
        variants.push(Variant {
            name,
            epochs,
            items_per_second,
            ratio_to_off: items_per_second / off.max(1e-9),
            paired_ratio,
            paired_ci95,
            cpu_us_per_read: *cpu,
            cpu_ratio_to_off: cpu.zip(cpu_per_read[0]).map(|(c, o)| c / o.max(1e-9)),
            spans_exported: exported,
            spans_dropped: dropped,
        });
    }
    let count = scrapes.load(Ordering::Relaxed);
    let report = TelemetryReport {
        variants,
        scrapes: count,
        scrape_ms: scrape_nanos.load(Ordering::Relaxed) as f64 / 1e6 / count.max(1) as f64,
        scrape_bytes: scrape_bytes.load(Ordering::Relaxed) / count.max(1),
    };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    drop(collector);
    stalled_task.abort();
    Ok(report)
}

/// Mean and 95 % confidence half-width of `variant`'s throughput against
/// `off`'s round by round: one epoch is too short to compare on a shared
/// machine, but the spread of many paired ratios says how far to trust
/// their mean.
fn paired(variant: &[EpochStats], off: &[EpochStats]) -> (f64, f64) {
    let rate = |e: &EpochStats| e.items as f64 / e.seconds.max(1e-9);
    let ratios: Vec<f64> = variant
        .iter()
        .zip(off)
        .map(|(v, o)| rate(v) / rate(o).max(1e-9))
        .collect();
    let n = ratios.len() as f64;
    if ratios.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = ratios.iter().sum::<f64>() / n;
    let variance = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, 1.96 * (variance / n).sqrt())
}

/// Scrapes `/metrics` at `per_second` until `running` turns false.
async fn scrape_loop(
    admin: std::net::SocketAddr,
    per_second: u32,
    running: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    nanos: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
) {
    let mut reader = Reader::new(admin);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    while running.load(Ordering::Acquire) {
        tick.tick().await;
        let started = Instant::now();
        if let Ok(text) = reader.get_text("/metrics").await {
            nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            scrapes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn print(report: &TelemetryReport) {
    let spans = |count: Option<f64>| count.map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"));
    let mut table = Table::new(&[
        "variant",
        "samples/s",
        "vs off",
        "paired (95% CI)",
        "p50 ms",
        "p99 ms",
        "CPU µs/read",
        "CPU vs off",
        "spans exported",
        "spans dropped",
    ]);
    for variant in &report.variants {
        let p = |pick: fn(&EpochStats) -> f64| {
            variant.epochs.iter().map(pick).sum::<f64>() / variant.epochs.len().max(1) as f64
        };
        table.row(vec![
            variant.name.to_owned(),
            format!("{:.0}", variant.items_per_second),
            format!("{:.3}", variant.ratio_to_off),
            format!("{:.3} ±{:.3}", variant.paired_ratio, variant.paired_ci95),
            format!("{:.2}", p(|e| e.p50_ms)),
            format!("{:.2}", p(|e| e.p99_ms)),
            variant
                .cpu_us_per_read
                .map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            variant
                .cpu_ratio_to_off
                .map_or_else(|| "-".into(), |r| format!("{r:.3}")),
            spans(variant.spans_exported),
            spans(variant.spans_dropped),
        ]);
    }
    println!("\ntelemetry: cached reads (all hits), warm epochs, variants in turn");
    table.print();
    println!(
        "scrapes: {} of /metrics, {:.2} ms and {} bytes each",
        report.scrapes, report.scrape_ms, report.scrape_bytes
    );
}
