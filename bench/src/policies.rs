//! `ferry-bench policies`: each cache policy at several cache fractions c of
//! the data set, under shuffled epochs. The best any cache can do on a fresh
//! uniform shuffle is a hit ratio of c; `pin` should sit on that line while
//! LRU thrashes below it. `ordered` is `pin` told each epoch's order first
//! (`POST /v1/prefetch`), with a prefetch buffer of `--ordered-buffer`
//! besides the cache: it fetches ahead of the readers, so reads hit past c,
//! while what it reads upstream stays what `pin` reads (the last column).
//! Prints a table and writes an SVG plot.

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use ferry_config::{ByteSize, CachePolicy};

use crate::child::{ChildProcess, ProxyArgs, WorkerSpec};
use crate::client::{post_order, scrape};
use crate::report::{self, Table};
use crate::workload::{DataSet, Target, read_epoch, sample_spec};

/// `ferry-bench policies` arguments.
#[derive(Args, Clone, Debug)]
pub struct PoliciesArgs {
    /// Samples in the data set.
    #[arg(long, default_value_t = 5_000)]
    pub samples: u64,
    /// Mean sample size.
    #[arg(long, default_value = "110KiB")]
    pub size: ByteSize,
    /// Cache sizes as fractions of the data set.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9")]
    pub fractions: Vec<f64>,
    /// Policies to compare: pin, lru, s3fifo, and ordered (pin with each
    /// epoch's order posted first).
    #[arg(long, value_delimiter = ',', default_value = "pin,lru,s3fifo,ordered")]
    pub policies: Vec<Policy>,
    /// Prefetch buffer of `ordered` (`--prefetch-memory`), besides its cache.
    #[arg(long, default_value = "16MiB")]
    pub ordered_buffer: ByteSize,
    /// Epochs per run (hit ratios are averaged over epochs 2+).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Seed of sizes and shuffles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the plot.
    #[arg(long, default_value = "target/ferry-bench/policies.svg")]
    pub svg: PathBuf,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A cache policy, or `pin` with the read order posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// A cache policy alone.
    Cache(CachePolicy),
    /// `pin`, told each epoch's order before it is read.
    Ordered,
}

impl Policy {
    /// Its name in tables and the plot.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache(policy) => policy.as_str(),
            Self::Ordered => "ordered",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "ordered" {
            return Ok(Self::Ordered);
        }
        text.parse::<CachePolicy>()
            .map(Self::Cache)
            .map_err(|_| format!("'{text}' is not a policy: pin, lru, s3fifo or ordered"))
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One policy at one cache fraction.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRun {
    /// The policy.
    pub policy: String,
    /// Cache size as a fraction of the data set.
    pub fraction: f64,
    /// Hit ratio of each epoch.
    pub epoch_hit_ratios: Vec<f64>,
    /// Mean hit ratio of epochs 2+.
    pub warm_hit_ratio: f64,
    /// Upstream (origin) chunk reads per sample read, epochs 2+.
    pub warm_upstream_per_read: f64,
}

/// Runs every policy at every fraction.
pub async fn run(args: &PoliciesArgs) -> anyhow::Result<Vec<PolicyRun>> {
    anyhow::ensure!(
        args.epochs >= 2,
        "--epochs must be at least 2 (epoch 1 only fills the cache)"
    );
    let spec = sample_spec(args.samples, args.size, args.seed)?;
    let data = DataSet::samples(spec.clone());
    let program = args.proxy.program();
    let mut runs = Vec::new();
    for &fraction in &args.fractions {
        anyhow::ensure!(
            (0.0..=1.0).contains(&fraction),
            "fraction {fraction} is not within 0..1"
        );
        for &policy in &args.policies {
            let cache = ByteSize((data.bytes as f64 * fraction) as u64);
            let (cache_policy, extra) = match policy {
                Policy::Cache(policy) => (policy, Vec::new()),
                Policy::Ordered => (
                    CachePolicy::Pin,
                    vec![
                        "--prefetch-memory".to_owned(),
                        args.ordered_buffer.to_string(),
                    ],
                ),
            };
            let proxy = ChildProcess::ferry_worker(
                &program,
                &WorkerSpec {
                    origin: &spec.to_url(),
                    bucket: "imagenet",
                    cache_size: cache,
                    cache_policy,
                    read_ahead: Some(0),
                    extra,
                },
            )?;
            let admin = proxy
                .admin
                .ok_or_else(|| anyhow::anyhow!("proxy reported no admin address"))?;
            let target = Target::http(proxy.addr, "/imagenet");
            let mut ratios = Vec::new();
            let mut upstream = Vec::new();
            for epoch in 1..=args.epochs {
                if policy == Policy::Ordered {
                    let keys: Vec<&str> = data
                        .order(args.seed, epoch)
                        .iter()
                        .map(|&sample| data.items[sample][0].key.as_str())
                        .collect();
                    post_order(proxy.addr, "imagenet", keys.join("\n")).await?;
                }
                let gets = scrape(
                    admin,
                    "origin_requests_total",
                    &[("dataset", "imagenet"), ("op", "get")],
                )
                .await?;
                let hits = scrape(
                    admin,
                    "cache_hits_total",
                    &[("dataset", "imagenet"), ("tier", "memory")],
                )
                .await?;
                let misses = scrape(
                    admin,
                    "cache_misses_total",
                    &[("dataset", "imagenet"), ("tier", "memory")],
                )
                .await?;
                let label = format!("{policy} c={fraction} e{epoch}");
                let stats =
                    read_epoch(&data, &target, args.readers, args.seed, epoch, &label).await;
                anyhow::ensure!(
                    stats.errors == 0,
                    "{} reads failed ({policy}, c={fraction})",
                    stats.errors
                );
                let hits = scrape(
                    admin,
                    "cache_hits_total",
                    &[("dataset", "imagenet"), ("tier", "memory")],
                )
                .await?
                    - hits;
                let misses = scrape(
                    admin,
                    "cache_misses_total",
                    &[("dataset", "imagenet"), ("tier", "memory")],
                )
                .await?
                    - misses;
                ratios.push(hits / (hits + misses).max(1.0));
                let gets = scrape(
                    admin,
                    "origin_requests_total",
                    &[("dataset", "imagenet"), ("op", "get")],
                )
                .await?
                    - gets;
                upstream.push(gets / data.items.len().max(1) as f64);
            }
            let warm = &ratios[1..];
            let warm_upstream = &upstream[1..];
            runs.push(PolicyRun {
                policy: policy.to_string(),
                fraction,
                warm_hit_ratio: warm.iter().sum::<f64>() / warm.len() as f64,
                warm_upstream_per_read: warm_upstream.iter().sum::<f64>()
                    / warm_upstream.len() as f64,
                epoch_hit_ratios: ratios,
            });
        }
    }
    print(&runs);
    std::fs::create_dir_all(args.svg.parent().unwrap_or(std::path::Path::new(".")))?;
    std::fs::write(&args.svg, svg(&runs, &args.policies, &args.fractions))?;
    println!("plot written to {}", args.svg.display());
    if let Some(path) = &args.json {
        report::write_json(path, &runs)?;
    }
    Ok(runs)
}

fn print(runs: &[PolicyRun]) {
    let mut table = Table::new(&[
        "policy",
        "cache c",
        "bound c",
        "epoch 2+ hit ratio",
        "ratio / bound",
        "upstream reads / read",
    ]);
    for run in runs {
        table.row(vec![
            run.policy.clone(),
            format!("{:.2}", run.fraction),
            format!("{:.3}", run.fraction),
            format!("{:.3}", run.warm_hit_ratio),
            format!("{:.3}", run.warm_hit_ratio / run.fraction.max(1e-9)),
            format!("{:.3}", run.warm_upstream_per_read),
        ]);
    }
    println!(
        "\nhit ratio under shuffled epochs (the best possible without knowing the order is c):"
    );
    table.print();
}

/// A line plot: hit ratio against cache fraction, one line per policy, and the bound.
fn svg(runs: &[PolicyRun], policies: &[Policy], fractions: &[f64]) -> String {
    const WIDTH: f64 = 560.0;
    const HEIGHT: f64 = 400.0;
    const MARGIN: f64 = 56.0;
    let x = |c: f64| MARGIN + c * (WIDTH - 2.0 * MARGIN);
    let y = |h: f64| HEIGHT - MARGIN - h * (HEIGHT - 2.0 * MARGIN);
    let colours = ["#1b7837", "#b2182b", "#2166ac", "#762a83"];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Epoch 2+ hit ratio under shuffled epochs</text>\n",
        WIDTH / 2.0
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick:.2}</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{tick:.2}</text>",
            x(0.0),
            y(tick),
            x(1.0),
            y(tick),
            x(0.0) - 6.0,
            y(tick) + 4.0,
            x(tick),
            y(0.0) + 18.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">cache size / data set (c)</text>\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">hit ratio</text>\
         <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"5,4\"/>\
         <text x=\"{}\" y=\"{}\" fill=\"#888\">bound c</text>",
        WIDTH / 2.0,
        HEIGHT - 14.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0),
        x(0.82),
        y(0.9)
    );
    for (i, policy) in policies.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let points: Vec<String> = fractions
            .iter()
            .filter_map(|&c| {
                runs.iter()
                    .find(|r| r.policy == policy.as_str() && r.fraction == c)
                    .map(|r| format!("{:.1},{:.1}", x(c), y(r.warm_hit_ratio)))
            })
            .collect();
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{policy}</text>",
            points.join(" "),
            x(0.05),
            50.0 + 16.0 * i as f64
        );
        for point in &points {
            if let Some((px, py)) = point.split_once(',') {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>"
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_a_line_per_policy() {
        let runs = vec![
            PolicyRun {
                policy: "pin".into(),
                fraction: 0.5,
                epoch_hit_ratios: vec![0.0, 0.5],
                warm_hit_ratio: 0.5,
                warm_upstream_per_read: 0.5,
            },
            PolicyRun {
                policy: "lru".into(),
                fraction: 0.5,
                epoch_hit_ratios: vec![0.0, 0.3],
                warm_hit_ratio: 0.3,
                warm_upstream_per_read: 0.7,
            },
        ];
        let svg = svg(
            &runs,
            &[
                Policy::Cache(CachePolicy::Pin),
                Policy::Cache(CachePolicy::Lru),
            ],
            &[0.5],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
