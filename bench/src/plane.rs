//! `ferry-bench control-plane`: how fast a policy change reaches every
//! proxy, at 1,000 and 5,000 watchers, and what it costs the control plane;
//! then reads through a sidecar and a worker while the control plane is
//! down for 30 s, or (`--partition`) unreachable from the sidecar alone.
//!
//! The watchers are simulated proxies: each opens its own connection (TCP,
//! mutual TLS, HTTP/2) and watch, exactly as a proxy does, with one
//! certificate obtained from the control plane for all of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use ferry_config::{Role, WatchEvent};
use ferry_proxy::identity::Identity;
use ferry_proxy::mesh::watch::{Line, WatchClient, WatchStream};

use crate::child::{ChildProcess, ControlPlane, ProxyArgs};
use crate::client::{Reader, list_all, scrape};
use crate::report::{self, Table};
use crate::workload::{DataSet, EpochStats, Target, percentile_ms, read_epoch, sample_spec};

/// `ferry-bench control-plane` arguments.
#[derive(Args, Clone, Debug)]
pub struct ControlPlaneArgs {
    /// Watcher counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    pub watchers: Vec<usize>,
    /// Policy changes timed at each count.
    #[arg(long, default_value_t = 5)]
    pub changes: usize,
    /// Watches opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// How long the control plane is down in the outage run; 0s skips it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Make the outage a partition of the sidecar alone: the control plane
    /// keeps running and the worker keeps its watch, but an nftables rule
    /// drops every packet between the sidecar and the control plane (no
    /// RST; root).
    #[arg(long)]
    pub partition: bool,
    /// Objects read in a loop during the outage run.
    #[arg(long, default_value_t = 2_000)]
    pub samples: u64,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One watcher count.
#[derive(Debug, Serialize)]
pub struct ScaleRun {
    /// Watches open.
    pub watchers: usize,
    /// Time to open them all and receive each one's first snapshot.
    pub connect_seconds: f64,
    /// Control plane resident memory with them open.
    pub control_plane_rss_bytes: Option<u64>,
    /// Policy changes timed.
    pub changes: usize,
    /// From the file write to a watcher holding the change: median, ms.
    pub p50_ms: f64,
    /// The same, 99th percentile.
    pub p99_ms: f64,
    /// The same, slowest watcher of any change.
    pub max_ms: f64,
    /// Watchers that never got a change (within 60 s).
    pub missed: usize,
    /// Control plane CPU seconds per change (fan-out to every watcher).
    pub cpu_seconds_per_change: Option<f64>,
}

/// The outage run.
#[derive(Debug, Serialize)]
pub struct OutageRun {
    /// Killed, or cut off by dropped packets.
    pub kind: &'static str,
    /// How long the control plane was down.
    pub down_seconds: f64,
    /// Reads completed over the whole run.
    pub reads: usize,
    /// Failed reads.
    pub failed_reads: usize,
    /// Reads whose bytes were wrong.
    pub wrong_bytes: usize,
    /// Worst epoch p99 latency, ms.
    pub worst_p99_ms: f64,
    /// From the restart (or the partition's end) until the sidecar watched again.
    pub resubscribed_after_seconds: Option<f64>,
    /// Whether the sidecar's watch was ever seen down during the outage.
    pub watch_dropped: bool,
    /// Whether the worker's watch was ever seen down (a partition of the
    /// sidecar alone must leave it up).
    pub worker_watch_dropped: bool,
}

/// Everything measured.
#[derive(Debug, Serialize)]
pub struct ControlPlaneReport {
    /// Propagation at each watcher count.
    pub scale: Vec<ScaleRun>,
    /// Reads while the control plane is down, unless skipped.
    pub outage: Option<OutageRun>,
}

impl ControlPlaneReport {
    /// Reads failed or wrong, and watchers that missed a change.
    pub fn failures(&self) -> usize {
        self.scale.iter().map(|s| s.missed).sum::<usize>()
            + self
                .outage
                .as_ref()
                .map_or(0, |o| o.failed_reads + o.wrong_bytes)
    }
}

/// A directory of policy files, removed on drop.
pub struct PolicyDir(PathBuf);

impl PolicyDir {
    /// A new, empty directory named after `label`.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ferry-bench-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// Writes `text` as `name` whole (temporary file, then rename).
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let temporary = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, self.0.join(name))?;
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the scenario.
pub async fn run(args: &ControlPlaneArgs) -> anyhow::Result<ControlPlaneReport> {
    let mut scale = Vec::new();
    if !args.watchers.is_empty() {
        let policies = PolicyDir::new("scale-policies")?;
        policies.write("policy.yaml", &policy_with(0))?;
        let plane = ControlPlane::start_with(
            Duration::from_secs(24 * 3600),
            vec!["--config-dir".into(), policies.path().display().to_string()],
        )?;
        let identity = Identity::new(&plane.identity.sidecar_spec())?;
        identity.obtain_first().await?;
        let client = Arc::new(WatchClient::new(
            &identity,
            Role::Sidecar,
            "cluster.local",
            "ferry-system",
            None,
        )?);
        let mut change = 0;
        for &watchers in &args.watchers {
            eprintln!("control-plane: {watchers} watchers");
            scale.push(measure(args, &plane, &client, &policies, watchers, &mut change).await?);
        }
    }
    let outage = if args.outage.is_zero() {
        None
    } else {
        Some(outage(args).await?)
    };
    let report = ControlPlaneReport { scale, outage };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

/// A policy file whose content differs with `change`: a pool, and a data
/// set named for the change that reads from it.
fn policy_with(change: usize) -> String {
    format!(
        "pools:\n  - {{ name: workers, members: [{{ address: \"127.0.0.1:4143\" }}] }}\n\
         datasets:\n  - {{ name: bench-{change}, bucket: bench-{change}, origin: \"synthetic://?count=10\" }}\n"
    )
}

async fn measure(
    args: &ControlPlaneArgs,
    plane: &ControlPlane,
    client: &Arc<WatchClient>,
    policies: &PolicyDir,
    watchers: usize,
    change: &mut usize,
) -> anyhow::Result<ScaleRun> {
    let started = Instant::now();
    let opened: Vec<anyhow::Result<(WatchStream, u64)>> = futures::stream::iter(0..watchers)
        .map(|_| {
            let client = client.clone();
            async move {
                let mut stream = client.open().await?;
                match stream.next().await? {
                    Some(Line::Event(WatchEvent::Snapshot(snapshot))) => {
                        Ok((stream, snapshot.version))
                    }
                    other => anyhow::bail!("the first watch line was {other:?}"),
                }
            }
        })
        .buffer_unordered(args.connect_concurrency.max(1))
        .collect()
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let (arrivals, mut arrived) = mpsc::channel::<(usize, u64, Instant)>(watchers.max(1) * 2);
    let mut tasks = Vec::new();
    let mut version = 0;
    for (index, opened) in opened.into_iter().enumerate() {
        let (stream, first) = opened.context("opening a watch")?;
        version = version.max(first);
        tasks.push(tokio::spawn(follow(stream, index, arrivals.clone())));
    }
    let rss = plane.running()?.rss_bytes();
    let mut latencies_us = Vec::new();
    let mut missed = 0;
    let mut cpu = 0.0;
    for _ in 0..args.changes {
        *change += 1;
        let cpu_before = plane.running()?.cpu_seconds();
        let written = Instant::now();
        policies.write("policy.yaml", &policy_with(*change))?;
        let mut seen = vec![false; watchers];
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut newest = version;
        while count < watchers {
            let Ok(Some((index, got, at))) =
                tokio::time::timeout_at(deadline, arrived.recv()).await
            else {
                break;
            };
            if got > version && !seen[index] {
                seen[index] = true;
                count += 1;
                newest = newest.max(got);
                let micros = at.saturating_duration_since(written).as_micros();
                latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
        }
        missed += watchers - count;
        version = newest;
        if let (Some(before), Some(after)) = (cpu_before, plane.running()?.cpu_seconds()) {
            cpu += after - before;
        }
    }
    for task in tasks {
        task.abort();
    }
    latencies_us.sort_unstable();
    Ok(ScaleRun {
        watchers,
        connect_seconds,
        control_plane_rss_bytes: rss,
        changes: args.changes,
        p50_ms: percentile_ms(&latencies_us, 0.5),
        p99_ms: percentile_ms(&latencies_us, 0.99),
        max_ms: latencies_us
            .last()
            .map_or(0.0, |&us| f64::from(us) / 1000.0),
        missed,
        cpu_seconds_per_change: Some(cpu / args.changes.max(1) as f64),
    })
}

/// Reports every snapshot a watcher receives: (watcher, version, when).
async fn follow(
    mut stream: WatchStream,
    index: usize,
    arrivals: mpsc::Sender<(usize, u64, Instant)>,
) {
    while let Ok(Some(line)) = stream.next().await {
        if let Line::Event(WatchEvent::Snapshot(snapshot)) = line
            && arrivals
                .send((index, snapshot.version, Instant::now()))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// A sidecar and a worker configured only by the control plane, read in a
/// loop while the control plane is killed and, after `args.outage`, restarted.
async fn outage(args: &ControlPlaneArgs) -> anyhow::Result<OutageRun> {
    let spec = sample_spec(args.samples, ferry_config::ByteSize::kib(110), 1)?;
    let data = DataSet::samples(spec.clone());
    let origin = ChildProcess::origin_server(&spec.to_query(), Duration::from_millis(10))?;
    let policies = PolicyDir::new("outage-policies")?;
    policies.write(
        "datasets.yaml",
        &format!(
            "datasets:\n  - name: imagenet\n    bucket: imagenet\n    origin: \"http://{}/\"\n    \
             allow: [\"spiffe://cluster.local/ns/train/sa/*\"]\n    \
             cache: {{ sidecar: {{ size: 64MiB }}, worker: {{ size: 4GiB }} }}\n",
            origin.addr
        ),
    )?;
    let mut plane = ControlPlane::start_with(
        Duration::from_secs(24 * 3600),
        vec!["--config-dir".into(), policies.path().display().to_string()],
    )?;
    let program = args.proxy.program();
    let mut worker_args = vec!["worker".to_owned()];
    worker_args.extend(plane.identity.worker_watch_flags());
    let worker = ChildProcess::proxy(&program, &worker_args)?;
    let inbound = worker
        .inbound
        .context("the worker has no inbound address")?;
    policies.write(
        "pools.yaml",
        &format!(
            "pools:\n  - name: workers\n    identity: spiffe://cluster.local/ns/ferry/sa/worker\n    \
             members: [{{ address: \"{inbound}\" }}]\n"
        ),
    )?;
    // The sidecar's first snapshot must hold the pool: wait for the control
    // plane to take the file in.
    let plane_admin = plane
        .running()?
        .admin
        .context("the control plane has no admin address")?;
    let taken = Instant::now();
    loop {
        let report = Reader::new(plane_admin).get_text("/policies").await?;
        if report.contains("pools.yaml") {
            break;
        }
        anyhow::ensure!(
            taken.elapsed() < Duration::from_secs(10),
            "the control plane did not take pools.yaml in: {report}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A partition cuts the sidecar alone off: it reaches the control plane
    // through a relay port of its own, and the rule drops that port.
    let relay = if args.partition {
        Some(Relay::start(plane.running()?.addr).await?)
    } else {
        None
    };
    let mut sidecar_args = vec!["sidecar".to_owned()];
    sidecar_args.extend(plane.identity.sidecar_watch_flags().into_iter().map(
        |flag| match &relay {
            Some(relay) if flag == plane.identity.url => format!("https://{}", relay.addr),
            _ => flag,
        },
    ));
    let sidecar = ChildProcess::proxy(&program, &sidecar_args)?;
    let worker_admin = worker.admin.context("the worker has no admin address")?;
    let admin = sidecar.admin.context("the sidecar has no admin address")?;
    list_all(sidecar.addr, "/imagenet").await?;
    let target = Target::Http {
        addr: sidecar.addr,
        prefix: "/imagenet".into(),
        verify: Some(Arc::new(spec)),
    };
    eprintln!(
        "control-plane: reading through a sidecar and a worker; the control plane goes down for {:?}",
        args.outage
    );
    let mut reads = Reads {
        data: &data,
        target: &target,
        epochs: Vec::new(),
    };
    reads.until(Instant::now() + Duration::from_secs(3)).await;
    let partition = if let Some(relay) = &relay {
        Some(Blackhole::port(relay.addr.port())?)
    } else {
        plane.kill();
        None
    };
    let down_at = Instant::now();
    let (mut watch_dropped, mut worker_watch_dropped) = (false, false);
    let is_down = |admin| async move {
        scrape(admin, "control_plane_connected", &[])
            .await
            .unwrap_or(1.0)
            == 0.0
    };
    while down_at.elapsed() < args.outage {
        reads.until(Instant::now() + Duration::from_secs(1)).await;
        watch_dropped |= is_down(admin).await;
        worker_watch_dropped |= is_down(worker_admin).await;
    }
    let down_seconds = down_at.elapsed().as_secs_f64();
    let restarted = Instant::now();
    match partition {
        Some(rule) => drop(rule),
        None => plane.restart()?,
    }
    let mut resubscribed_after_seconds = None;
    while restarted.elapsed() < Duration::from_secs(60) {
        reads
            .until(Instant::now() + Duration::from_millis(200))
            .await;
        if scrape(admin, "control_plane_connected", &[])
            .await
            .unwrap_or(0.0)
            == 1.0
        {
            resubscribed_after_seconds = Some(restarted.elapsed().as_secs_f64());
            break;
        }
    }
    reads.until(Instant::now() + Duration::from_secs(3)).await;
    let epochs = reads.epochs;
    drop((sidecar, worker, origin));
    Ok(OutageRun {
        kind: if args.partition {
            "partitioned from the sidecar"
        } else {
            "killed"
        },
        watch_dropped,
        worker_watch_dropped: relay.is_some() && worker_watch_dropped,
        down_seconds,
        reads: epochs.iter().map(|e| e.reads).sum(),
        failed_reads: epochs.iter().map(|e| e.errors).sum(),
        wrong_bytes: epochs.iter().map(|e| e.wrong_bytes).sum(),
        worst_p99_ms: epochs.iter().map(|e| e.p99_ms).fold(0.0, f64::max),
        resubscribed_after_seconds,
    })
}

/// A plain TCP relay to `target` on a port of its own, so a rule on that
/// port cuts off only the connections made through it.
struct Relay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An nftables table that drops every packet to and from one local port
/// (a partition without resets); removed when dropped.
struct Blackhole {
    table: String,
}

impl Blackhole {
    fn port(port: u16) -> anyhow::Result<Self> {
        use std::io::Write;
        let table = format!("ferry_bench_{}_{port}", std::process::id());
        let script = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             tcp dport {port} drop\n    tcp sport {port} drop\n  }}\n}}\n"
        );
        let mut nft = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running nft (nftables; root)")?;
        nft.stdin
            .as_mut()
            .context("nft's stdin")?
            .write_all(script.as_bytes())?;
        anyhow::ensure!(nft.wait()?.success(), "nft refused the partition rule");
        Ok(Self { table })
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// Epochs of reads, each checked byte by byte.
struct Reads<'a> {
    data: &'a DataSet,
    target: &'a Target,
    epochs: Vec<EpochStats>,
}

impl Reads<'_> {
    /// Reads whole epochs until `until` has passed.
    async fn until(&mut self, until: Instant) {
        while Instant::now() < until {
            let epoch = self.epochs.len() + 1;
            let label = format!("outage epoch {epoch}");
            let stats = read_epoch(self.data, self.target, 8, 1, epoch, &label).await;
            self.epochs.push(stats);
        }
    }
}

fn print(report: &ControlPlaneReport) {
    if !report.scale.is_empty() {
        let mut table = Table::new(&[
            "watchers",
            "connect s",
            "CP RSS MB",
            "changes",
            "p50 ms",
            "p99 ms",
            "max ms",
            "missed",
            "CP CPU s/change",
        ]);
        for run in &report.scale {
            table.row(vec![
                run.watchers.to_string(),
                format!("{:.2}", run.connect_seconds),
                run.control_plane_rss_bytes
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                run.changes.to_string(),
                format!("{:.1}", run.p50_ms),
                format!("{:.1}", run.p99_ms),
                format!("{:.1}", run.max_ms),
                run.missed.to_string(),
                run.cpu_seconds_per_change
                    .map_or("-".into(), |c| format!("{c:.3}")),
            ]);
        }
        println!("\ncontrol plane: a policy file changed → every watcher holds the new snapshot");
        table.print();
    }
    if let Some(outage) = &report.outage {
        println!(
            "\noutage: control plane {} for {:.1} s under reads through a sidecar and a worker: {} reads, \
             {} failed, {} wrong bytes, worst p99 {:.2} ms; sidecar's watch seen down: {}{}; resubscribed {}",
            outage.kind,
            outage.down_seconds,
            outage.reads,
            outage.failed_reads,
            outage.wrong_bytes,
            outage.worst_p99_ms,
            outage.watch_dropped,
            if outage.kind != "killed" {
                format!(", the worker's: {}", outage.worker_watch_dropped)
            } else {
                String::new()
            },
            outage
                .resubscribed_after_seconds
                .map_or("never (within 60 s)".to_owned(), |s| format!(
                    "{s:.2} s after the restart"
                ))
        );
    }
}
