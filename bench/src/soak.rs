//! `ferry-bench soak --minutes N`: a long run that shows leaks as slopes.
//! Readers go through a sidecar and a pool of workers over mutual TLS, in
//! shuffled epochs with every byte checked, while workers other than the
//! first are restarted in turn every `--restart-every`, the control plane's
//! policy changes every `--policy-every` (a data set added or removed), and
//! certificates of `--cert-lifetime` renew. Every `--sample-every`, the RSS,
//! open file descriptors and live Tokio tasks of the sidecar, the first
//! worker (never restarted) and the control plane are sampled; the report
//! fits a line through the second half of each series and plots RSS and
//! descriptors against time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use ferry_config::{ByteSize, CachePolicy, SyntheticSpec};

use crate::child::{ChildProcess, ControlPlane, ProxyArgs};
use crate::client::{list_all, scrape};
use crate::plane::PolicyDir;
use crate::report::{self, Table};
use crate::topology::{PoolSpec, PoolTopology};
use crate::workload::{DataSet, EpochStats, Target, progress, run_epoch, sample_spec};

/// `ferry-bench soak` arguments.
#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Samples in the data set.
    #[arg(long, default_value_t = 8_000)]
    pub samples: u64,
    /// Mean sample size.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Workers in the pool (at least 2: the first is never restarted).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// A worker other than the first is restarted this often.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub restart_every: Duration,
    /// The control plane's policy changes this often.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub policy_every: Duration,
    /// Lifetime of the certificates the control plane issues.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub cert_lifetime: Duration,
    /// How often processes are sampled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Emulated first-byte latency of the origin.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub origin_latency: Duration,
    /// Seed of sizes, contents and shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the plot goes.
    #[arg(long, default_value = "target/ferry-bench/soak.svg")]
    pub svg: PathBuf,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One sample: seconds since start, RSS bytes, open descriptors, live tasks.
pub type Sample = (f64, u64, u64, Option<f64>);

/// What a plot panel shows of a sample.
type Measure = fn(&Sample) -> f64;

/// One process's samples.
#[derive(Debug, Default, Serialize)]
pub struct Series {
    /// Which process.
    pub process: String,
    /// Its samples.
    pub samples: Vec<Sample>,
    /// Fitted RSS slope over the second half, MiB per hour.
    pub rss_mib_per_hour: f64,
    /// Fitted descriptor slope over the second half, per hour.
    pub fds_per_hour: f64,
    /// Fitted task slope over the second half, per hour.
    pub tasks_per_hour: Option<f64>,
}

/// What the soak saw.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// Seconds run.
    pub seconds: f64,
    /// Epochs read.
    pub epochs: Vec<EpochStats>,
    /// Worker restarts.
    pub restarts: usize,
    /// Policy changes written.
    pub policy_changes: usize,
    /// Certificates the control plane issued.
    pub certificates_issued: u64,
    /// Failed reads.
    pub failed_reads: usize,
    /// Reads with wrong bytes.
    pub wrong_bytes: usize,
    /// Samples per process.
    pub series: Vec<Series>,
}

/// The policy at change `change`: an extra data set, present every other change.
fn policy(change: usize) -> String {
    if change.is_multiple_of(2) {
        "datasets: []\n".to_owned()
    } else {
        format!(
            "datasets:\n  - {{ name: extra-{change}, bucket: extra-{change}, origin: \"synthetic://?count=10\" }}\n"
        )
    }
}

/// Descriptors `pid` holds open.
fn open_fds(process: &ChildProcess) -> u64 {
    std::fs::read_dir(format!("/proc/{}/fd", process.id()))
        .map(|entries| entries.count() as u64)
        .unwrap_or(0)
}

async fn sample(process: &ChildProcess, started: Instant) -> Sample {
    let tasks = match process.admin {
        Some(admin) => scrape(admin, "runtime_alive_tasks", &[]).await.ok(),
        None => None,
    };
    (
        started.elapsed().as_secs_f64(),
        process.rss_bytes().unwrap_or(0),
        open_fds(process),
        tasks,
    )
}

/// Least-squares slope of `points` (x in seconds), per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if variance == 0.0 {
        return 0.0;
    }
    covariance / variance * 3600.0
}

fn fit(series: &mut Series) {
    let half = &series.samples[series.samples.len() / 2..];
    let rss: Vec<(f64, f64)> = half
        .iter()
        .map(|s| (s.0, s.1 as f64 / f64::from(1 << 20)))
        .collect();
    let fds: Vec<(f64, f64)> = half.iter().map(|s| (s.0, s.2 as f64)).collect();
    let tasks: Vec<(f64, f64)> = half.iter().filter_map(|s| Some((s.0, s.3?))).collect();
    series.rss_mib_per_hour = slope_per_hour(&rss);
    series.fds_per_hour = slope_per_hour(&fds);
    series.tasks_per_hour = (tasks.len() >= 2).then(|| slope_per_hour(&tasks));
}

/// Runs the soak.
pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(args.workers >= 2, "a soak needs at least 2 workers");
    let length = Duration::from_secs_f64(args.minutes * 60.0);
    let program = args.proxy.program();
    let policies = PolicyDir::new("soak-policies")?;
    policies.write("policy.yaml", &policy(0))?;
    let plane = ControlPlane::start_with(
        args.cert_lifetime,
        vec!["--config-dir".into(), policies.path().display().to_string()],
    )?;
    let spec = SyntheticSpec {
        latency: args.origin_latency,
        ..sample_spec(args.samples, args.size, args.seed)?
    };
    let data = DataSet::samples(spec.clone());
    let origin = spec.to_url();
    // Caches smaller than the data set, with eviction: every epoch churns.
    let topology = PoolTopology::start(
        &program,
        &PoolSpec {
            origin: &origin,
            bucket: "soak",
            workers: args.workers,
            worker_cache: ByteSize(data.bytes / 2),
            sidecar_cache: ByteSize(data.bytes / 8),
            policy: CachePolicy::Lru,
            sidecar_flags: Vec::new(),
            identity: Some(plane.identity.clone()),
        },
    )?;
    let sidecar = topology.sidecar.addr;
    list_all(sidecar, "/soak").await?;
    let target = Arc::new(Target::Http {
        addr: sidecar,
        prefix: "/soak".into(),
        verify: Some(Arc::new(SyntheticSpec {
            latency: Duration::ZERO,
            ..spec
        })),
    });
    let data = Arc::new(data);
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let (data, target, stop) = (data.clone(), target.clone(), stop.clone());
        let (readers, seed) = (args.readers, args.seed);
        tokio::spawn(async move {
            let mut epochs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let epoch = epochs.len() + 1;
                let bar = progress(data.items.len(), &format!("soak epoch {epoch}"));
                let order = data.order(seed, epoch);
                let mut stats = run_epoch(&data, order, &target, readers, &bar).await;
                bar.finish_and_clear();
                stats.epoch = epoch;
                epochs.push(stats);
            }
            epochs
        })
    };

    eprintln!(
        "soak: {:.0} min through a sidecar and {} workers; a worker restarts every {:?}, the policy changes every {:?}, certificates last {:?}",
        args.minutes, args.workers, args.restart_every, args.policy_every, args.cert_lifetime
    );
    let mut topology = topology;
    let started = Instant::now();
    let mut sidecar_series = Series {
        process: "sidecar".into(),
        ..Series::default()
    };
    let mut worker_series = Series {
        process: "worker 0 (never restarted)".into(),
        ..Series::default()
    };
    let mut plane_series = Series {
        process: "control plane".into(),
        ..Series::default()
    };
    let (mut next_sample, mut next_policy, mut next_restart) =
        (Duration::ZERO, args.policy_every, args.restart_every);
    let (mut restarts, mut policy_changes) = (0, 0);
    while started.elapsed() < length {
        let now = started.elapsed();
        if now >= next_sample {
            sidecar_series
                .samples
                .push(sample(&topology.sidecar, started).await);
            if let Some(worker) = topology.worker(0) {
                worker_series.samples.push(sample(worker, started).await);
            }
            plane_series
                .samples
                .push(sample(plane.running()?, started).await);
            next_sample += args.sample_every;
        }
        if now >= next_policy {
            policy_changes += 1;
            policies.write("policy.yaml", &policy(policy_changes))?;
            next_policy += args.policy_every;
        }
        if now >= next_restart {
            let victim = 1 + restarts % (args.workers - 1);
            topology.kill(victim);
            topology.restart(victim)?;
            restarts += 1;
            next_restart += args.restart_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let epochs = reading.await?;
    let plane_admin = plane
        .running()?
        .admin
        .ok_or_else(|| anyhow::anyhow!("the control plane has no admin address"))?;
    let certificates_issued =
        scrape(plane_admin, "identity_certificates_issued_total", &[]).await? as u64;
    let mut series = vec![sidecar_series, worker_series, plane_series];
    for one in &mut series {
        fit(one);
    }
    let report = SoakReport {
        seconds: started.elapsed().as_secs_f64(),
        failed_reads: epochs.iter().map(|e| e.errors).sum(),
        wrong_bytes: epochs.iter().map(|e| e.wrong_bytes).sum(),
        epochs,
        restarts,
        policy_changes,
        certificates_issued,
        series,
    };
    print(&report);
    if let Some(parent) = args.svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.svg, svg(&report))?;
    println!("plot written to {}", args.svg.display());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

fn print(report: &SoakReport) {
    println!(
        "\nsoak: {:.0} s, {} epochs, {} reads, {} failed, {} wrong; {} worker restarts, {} policy changes, {} certificates issued",
        report.seconds,
        report.epochs.len(),
        report.epochs.iter().map(|e| e.reads).sum::<usize>(),
        report.failed_reads,
        report.wrong_bytes,
        report.restarts,
        report.policy_changes,
        report.certificates_issued
    );
    let mut table = Table::new(&[
        "process",
        "RSS MiB first → last",
        "RSS MiB/h",
        "fds first → last",
        "fds/h",
        "tasks first → last",
        "tasks/h",
    ]);
    for series in &report.series {
        let (Some(first), Some(last)) = (series.samples.first(), series.samples.last()) else {
            continue;
        };
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let tasks =
            |s: &(f64, u64, u64, Option<f64>)| s.3.map_or("-".into(), |t| format!("{t:.0}"));
        table.row(vec![
            series.process.clone(),
            format!("{:.0} → {:.0}", mib(first.1), mib(last.1)),
            format!("{:+.1}", series.rss_mib_per_hour),
            format!("{} → {}", first.2, last.2),
            format!("{:+.1}", series.fds_per_hour),
            format!("{} → {}", tasks(first), tasks(last)),
            series
                .tasks_per_hour
                .map_or("-".into(), |t| format!("{t:+.1}")),
        ]);
    }
    table.print();
}

/// RSS, open descriptors and live tasks of each process against time, a
/// panel each (a process that reports no task count is left out of that one).
fn svg(report: &SoakReport) -> String {
    const WIDTH: f64 = 760.0;
    const PANEL: f64 = 220.0;
    const LEFT: f64 = 70.0;
    const COLOURS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];
    let seconds = report.seconds.max(1.0);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        PANEL * 3.0 + 130.0
    );
    let panels: [(&str, Measure); 3] = [
        ("RSS (MiB)", |s| s.1 as f64 / f64::from(1 << 20)),
        ("open descriptors", |s| s.2 as f64),
        ("live Tokio tasks", |s| s.3.unwrap_or(f64::NAN)),
    ];
    for (panel, (label, value)) in panels.iter().enumerate() {
        let top = 20.0 + panel as f64 * (PANEL + 40.0);
        let max = report
            .series
            .iter()
            .flat_map(|s| s.samples.iter().map(value))
            .filter(|v| v.is_finite())
            .fold(1.0_f64, f64::max)
            * 1.1;
        out.push_str(&format!(
            "<text x=\"{LEFT}\" y=\"{}\">{label}, 0 to {max:.0}, over {seconds:.0} s</text>\n\
             <rect x=\"{LEFT}\" y=\"{}\" width=\"{}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\n",
            top + 12.0,
            top + 18.0,
            WIDTH - LEFT - 20.0
        ));
        for (index, series) in report.series.iter().enumerate() {
            let points: Vec<String> = series
                .samples
                .iter()
                .filter(|s| value(s).is_finite())
                .map(|s| {
                    let x = LEFT + s.0 / seconds * (WIDTH - LEFT - 20.0);
                    let y = top + 18.0 + PANEL - value(s) / max * PANEL;
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            out.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
                COLOURS[index % COLOURS.len()],
                points.join(" ")
            ));
        }
    }
    for (index, series) in report.series.iter().enumerate() {
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n",
            LEFT + index as f64 * 230.0,
            PANEL * 3.0 + 120.0,
            COLOURS[index % COLOURS.len()],
            series.process
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_has_no_slope_and_a_rising_one_has_its_own() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i) * 10.0, 100.0)).collect();
        assert!(slope_per_hour(&flat).abs() < 1e-9);
        let rising: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i) * 60.0, f64::from(i)))
            .collect();
        assert!(
            (slope_per_hour(&rising) - 60.0).abs() < 1e-9,
            "one per minute is 60 per hour"
        );
    }
}
