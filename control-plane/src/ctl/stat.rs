//! `ferryctl stat`: golden signals per data set and per proxy, from two
//! scrapes of each proxy's `/metrics` an interval apart (or, with an
//! interval of zero, from one scrape: everything since each proxy started).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use ferry_config::exposition::{Exposition, quantile};

use super::{Output, Target, table::Table};

/// What a row adds up: counts over the window, and latency buckets.
#[derive(Clone, Debug, Default)]
struct Tally {
    requests: f64,
    responses: f64,
    successes: f64,
    bytes: f64,
    memory_hits: f64,
    memory_misses: f64,
    disk_hits: f64,
    disk_misses: f64,
    /// Cumulative latency buckets: (upper bound in seconds, count).
    buckets: Vec<(f64, f64)>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.successes += other.successes;
        self.bytes += other.bytes;
        self.memory_hits += other.memory_hits;
        self.memory_misses += other.memory_misses;
        self.disk_hits += other.disk_hits;
        self.disk_misses += other.disk_misses;
        for &(bound, count) in &other.buckets {
            match self.buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, sum)) => *sum += count,
                None => self.buckets.push((bound, count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    fn row(&self, proxy: &str, dataset: &str, direction: &str, window: Option<f64>) -> Row {
        let ratio = |part: f64, whole: f64| (whole > 0.0).then(|| part / whole);
        let per_second = |count: f64| window.filter(|w| *w > 0.0).map(|w| count / w);
        let ms = |q: f64| quantile(&self.buckets, q).map(|s| s * 1e3);
        Row {
            proxy: proxy.to_owned(),
            dataset: dataset.to_owned(),
            direction: direction.to_owned(),
            requests: self.requests,
            success_rate: ratio(self.successes, self.responses),
            requests_per_second: per_second(self.requests),
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            memory_hit_ratio: ratio(self.memory_hits, self.memory_hits + self.memory_misses),
            disk_hit_ratio: ratio(self.disk_hits, self.disk_hits + self.disk_misses),
            bytes_per_second: per_second(self.bytes),
        }
    }
}

/// One line of the table: a data set's traffic in one direction, at one
/// proxy or across all of them.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The proxy's admin address, or `*` for all of them.
    pub proxy: String,
    /// The data set.
    pub dataset: String,
    /// `outbound` (from the app) or `inbound` (from other proxies).
    pub direction: String,
    /// Requests in the window.
    pub requests: f64,
    /// Successful responses / all responses (5xx fail; 4xx are the client's).
    pub success_rate: Option<f64>,
    /// Requests per second (none over a proxy's whole life).
    pub requests_per_second: Option<f64>,
    /// Median latency to response headers, milliseconds.
    pub p50_ms: Option<f64>,
    /// 95th percentile, milliseconds.
    pub p95_ms: Option<f64>,
    /// 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Chunk lookups the memory tier answered (the proxy's, for this data set).
    pub memory_hit_ratio: Option<f64>,
    /// Memory misses the disk tier answered.
    pub disk_hit_ratio: Option<f64>,
    /// Response bytes per second.
    pub bytes_per_second: Option<f64>,
}

/// A proxy that could not be scraped.
#[derive(Clone, Debug, Serialize)]
pub struct Unreachable {
    /// Its admin address.
    pub proxy: String,
    /// Why.
    pub error: String,
}

/// What `ferryctl stat` prints.
#[derive(Clone, Debug, Serialize)]
pub struct StatReport {
    /// Seconds between the scrapes; none when the figures cover each proxy's life.
    pub window_seconds: Option<f64>,
    /// Per data set and direction, across proxies.
    pub datasets: Vec<Row>,
    /// Per proxy, data set and direction.
    pub proxies: Vec<Row>,
    /// Per sidecar and pool member: the workers as sidecars see them.
    pub workers: Vec<super::upstream::WorkerRow>,
    /// Proxies that did not answer.
    pub unreachable: Vec<Unreachable>,
}

/// One scrape of every target.
pub struct Scrape {
    at: Instant,
    results: Vec<(String, Result<Exposition, String>)>,
}

/// Scrapes every target's `/metrics` at once.
pub async fn scrape(targets: &[Target], timeout: Duration) -> Scrape {
    let at = Instant::now();
    let results = futures::future::join_all(targets.iter().map(|target| async move {
        let parsed = match super::http::get_text(&target.admin, "/metrics", timeout).await {
            Ok(text) => Exposition::parse(&text).map_err(|e| format!("bad /metrics: {e}")),
            Err(err) => Err(format!("{err:#}")),
        };
        (target.admin.clone(), parsed)
    }))
    .await;
    Scrape { at, results }
}

/// The report from `after`, against `before` when given (else lifetimes).
pub fn report(before: Option<&Scrape>, after: &Scrape) -> StatReport {
    let window = before.map(|b| after.at.duration_since(b.at).as_secs_f64());
    let mut datasets: BTreeMap<(String, String), Tally> = BTreeMap::new();
    let mut proxies = Vec::new();
    let mut workers = Vec::new();
    let mut unreachable = Vec::new();
    for (admin, result) in &after.results {
        let now = match result {
            Ok(now) => now,
            Err(error) => {
                unreachable.push(Unreachable {
                    proxy: admin.clone(),
                    error: error.clone(),
                });
                continue;
            }
        };
        let then = before.and_then(|b| {
            b.results
                .iter()
                .find(|(a, _)| a == admin)
                .and_then(|(_, r)| r.as_ref().ok())
        });
        workers.extend(super::upstream::rows(admin, then, now, window));
        for ((dataset, direction), tally) in tallies(then, now) {
            proxies.push(tally.row(admin, &dataset, &direction, window));
            datasets
                .entry((dataset, direction))
                .or_default()
                .add(&tally);
        }
    }
    StatReport {
        window_seconds: window,
        datasets: datasets
            .iter()
            .map(|((dataset, direction), tally)| tally.row("*", dataset, direction, window))
            .collect(),
        proxies,
        workers,
        unreachable,
    }
}

/// Each data set and direction a proxy has served, with what changed
/// between `then` and `now`.
fn tallies(then: Option<&Exposition>, now: &Exposition) -> BTreeMap<(String, String), Tally> {
    let mut out = BTreeMap::new();
    let Some(requests) = now.family("request_total") else {
        return out;
    };
    for sample in &requests.samples {
        let (Some(dataset), Some(direction)) = (sample.label("dataset"), sample.label("direction"))
        else {
            continue;
        };
        // A proxy's idle directions and the catch-all for unknown buckets
        // only clutter the table.
        if sample.value <= 0.0 {
            continue;
        }
        let traffic = [("dataset", dataset), ("direction", direction)];
        let cache = |tier: &'static str| [("dataset", dataset), ("tier", tier)];
        let counter = |name: &str, labels: &[(&str, &str)]| counter_delta(then, now, name, labels);
        let success = [
            ("dataset", dataset),
            ("direction", direction),
            ("classification", "success"),
        ];
        let tally = Tally {
            requests: counter("request_total", &traffic),
            responses: counter("response_total", &traffic),
            successes: counter("response_total", &success),
            bytes: counter("response_bytes_total", &traffic),
            memory_hits: counter("cache_hits_total", &cache("memory")),
            memory_misses: counter("cache_misses_total", &cache("memory")),
            disk_hits: counter("cache_hits_total", &cache("disk")),
            disk_misses: counter("cache_misses_total", &cache("disk")),
            buckets: bucket_delta(then, now, "response_latency_seconds", &traffic),
        };
        out.insert((dataset.to_owned(), direction.to_owned()), tally);
    }
    out
}

/// How much counter `name` (summed over `labels`) grew from `then` to `now`;
/// all of `now` when there is no `then` or the proxy restarted meanwhile.
pub(super) fn counter_delta(
    then: Option<&Exposition>,
    now: &Exposition,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    let later = now.sum(name, labels);
    let earlier = then.map_or(0.0, |t| t.sum(name, labels));
    // A restarted proxy starts from zero: its count is all new.
    if later >= earlier {
        later - earlier
    } else {
        later
    }
}

/// Histogram `name`'s cumulative buckets gained from `then` to `now`.
pub(super) fn bucket_delta(
    then: Option<&Exposition>,
    now: &Exposition,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let later = now.buckets(name, labels);
    let Some(then) = then else {
        return later;
    };
    let earlier = then.buckets(name, labels);
    let delta: Vec<(f64, f64)> = later
        .iter()
        .map(|&(bound, count)| {
            let before = earlier
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, count - before)
        })
        .collect();
    if delta.iter().any(|(_, c)| *c < 0.0) {
        later
    } else {
        delta
    }
}

/// Prints `report` as a table or as JSON.
pub fn print(
    report: &StatReport,
    output: Output,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    if output == Output::Json {
        return super::write_json(report, out);
    }
    match report.window_seconds {
        Some(w) => writeln!(out, "over the last {w:.1} s")?,
        None => writeln!(out, "since each proxy started")?,
    }
    for (title, rows) in [
        ("DATA SETS (all proxies)", &report.datasets),
        ("PROXIES", &report.proxies),
    ] {
        writeln!(out, "\n{title}")?;
        let mut table = Table::new(&[
            "PROXY", "DATASET", "DIR", "SUCCESS", "RPS", "P50", "P95", "P99", "MEM HIT",
            "DISK HIT", "BYTES/S",
        ]);
        for row in rows {
            table.row(vec![
                row.proxy.clone(),
                row.dataset.clone(),
                row.direction.clone(),
                percent(row.success_rate),
                row.requests_per_second
                    .map_or_else(|| format!("{} req", row.requests), |r| format!("{r:.1}")),
                millis(row.p50_ms),
                millis(row.p95_ms),
                millis(row.p99_ms),
                percent(row.memory_hit_ratio),
                percent(row.disk_hit_ratio),
                row.bytes_per_second.map_or_else(|| "-".into(), bytes),
            ]);
        }
        table.print(out)?;
    }
    if !report.workers.is_empty() {
        writeln!(out, "\nWORKERS (as sidecars see them)")?;
        super::upstream::print(&report.workers, out)?;
    }
    for proxy in &report.unreachable {
        writeln!(out, "\nunreachable: {}: {}", proxy.proxy, proxy.error)?;
    }
    Ok(())
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".into(), |r| format!("{:.2}%", r * 100.0))
}

pub(super) fn millis(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{ms:.2}ms"))
}

pub(super) fn bytes(per_second: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = per_second;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `ferryctl stat`: one report, or (`watch`) one per interval until
/// `count` reports or Ctrl-C.
pub async fn run(
    targets: &[Target],
    interval: Duration,
    watch: bool,
    count: Option<u32>,
    output: Output,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout();
    if interval.is_zero() {
        anyhow::ensure!(!watch, "--watch needs an --interval above zero");
        let now = scrape(targets, timeout).await;
        let report = report(None, &now);
        print(&report, output, &mut stdout)?;
        return Ok(report.unreachable.is_empty());
    }
    let mut before = scrape(targets, timeout).await;
    let mut printed = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(true),
        }
        let now = scrape(targets, timeout).await;
        let report = report(Some(&before), &now);
        if watch && output == Output::Table {
            // Clear the screen and go home: the table refreshes in place.
            write!(stdout, "\x1b[2J\x1b[H")?;
        }
        print(&report, output, &mut stdout)?;
        stdout.flush()?;
        printed += 1;
        if !watch || count.is_some_and(|c| printed >= c) {
            return Ok(report.unreachable.is_empty());
        }
        before = now;
    }
}
