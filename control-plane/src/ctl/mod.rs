//! `ferryctl`: the operator's view of a running mesh. `stat` prints golden
//! signals per data set and per proxy; `check` says what is wrong and what
//! to do. Proxies are named by their admin addresses, or found through the
//! control plane, which lists every proxy watching it.

pub mod check;
pub mod http;
pub mod stat;
pub mod table;
pub mod upstream;
pub mod warm;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// `ferryctl` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "Look at a running Ferry mesh, and warm its caches"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `ferryctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Success rate, requests/s, latency, hit ratios and bytes/s, per data set and per proxy.
    Stat(StatArgs),
    /// What is wrong with the mesh, and what to do about it (exit status 1 if anything failed).
    Check(CheckArgs),
    /// Load a data set into the workers' caches before a job: ordered through the control plane,
    /// or with --admin started on the workers named (exit status 1 unless every object was warmed).
    Warm(WarmArgs),
}

/// `ferryctl warm` arguments.
#[derive(Args, Debug)]
pub struct WarmArgs {
    /// The data set's name.
    pub dataset: String,
    /// Which workers (`--admin`, else every proxy the control plane lists; sidecars are skipped).
    #[command(flatten)]
    pub reach: Reach,
    /// Only keys under this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// With --admin: a sidecar's admin address, whose /pools gives the pool's members and
    /// weights (default: the workers named, each of weight 1).
    #[arg(long, value_name = "HOST:PORT")]
    pub sidecar: Option<String>,
    /// Which of the sidecar's pools (when it has more than one).
    #[arg(long, requires = "sidecar")]
    pub pool: Option<String>,
    /// Origin fetches at once, per worker.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Bound on origin bytes per second for the whole pool (e.g. 200MiB), split by weight.
    #[arg(long, value_parser = parse_bytes)]
    pub bytes_per_second: Option<u64>,
    /// Start the warm-up and return; follow it later with --status.
    #[arg(long, conflicts_with = "status")]
    pub detach: bool,
    /// Follow a warm-up already started (to its end) instead of starting one.
    #[arg(long)]
    pub status: bool,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    text.parse::<ferry_config::ByteSize>().map(|b| b.bytes())
}

/// Which proxies, and how to reach them.
#[derive(Args, Clone, Debug)]
pub struct Reach {
    /// A proxy's admin address (repeat for more); default: every proxy the control plane lists.
    #[arg(long = "admin", value_name = "HOST:PORT")]
    pub admins: Vec<String>,
    /// The control plane's admin address.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9990",
        env = "FERRY_CONTROL_PLANE_ADMIN"
    )]
    pub control_plane_admin: String,
    /// Deadline of each request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `ferryctl stat` arguments.
#[derive(Args, Debug)]
pub struct StatArgs {
    /// Which proxies.
    #[command(flatten)]
    pub reach: Reach,
    /// Time between the two scrapes the figures come from; 0 reports each proxy's whole life.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Refresh in place every interval, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch")]
    pub count: Option<u32>,
}

/// `ferryctl check` arguments.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Which proxies.
    #[command(flatten)]
    pub reach: Reach,
    /// The mesh runs without a control plane (identity disabled): do not look for one.
    #[arg(long)]
    pub no_control_plane: bool,
    /// A certificate with less left than this is reported as near expiry.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub expiry_warning: Duration,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Table,
    /// JSON for programs.
    Json,
}

/// A proxy to look at.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its admin address.
    pub admin: String,
    /// Its identity, when the control plane listed it.
    pub identity: Option<String>,
    /// Known from its pool's Service, not from a watch of the control plane
    /// asked (it may watch another replica, or be out of reach).
    pub discovered: bool,
}

impl Target {
    /// A proxy at `admin`, named by the user.
    pub fn named(admin: impl Into<String>) -> Self {
        Self {
            admin: admin.into(),
            identity: None,
            discovered: false,
        }
    }
}

#[derive(Deserialize)]
struct Listing {
    proxies: Vec<Listed>,
    #[serde(default)]
    pool_workers: Vec<PoolWorker>,
}

#[derive(Deserialize)]
struct PoolWorker {
    admin: String,
    identity: Option<String>,
}

#[derive(Deserialize)]
struct Listed {
    identity: String,
    admin: Option<String>,
}

/// Writes `value` as indented JSON and a newline.
fn write_json(value: &impl serde::Serialize, out: &mut impl std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// The proxies in the control plane's `/proxies` answer that gave an admin address.
pub fn targets_from_listing(json: &str) -> anyhow::Result<Vec<Target>> {
    let listing: Listing = serde_json::from_str(json)?;
    Ok(watching(listing.proxies))
}

fn watching(proxies: Vec<Listed>) -> Vec<Target> {
    proxies
        .into_iter()
        .filter_map(|p| {
            Some(Target {
                admin: p.admin?,
                identity: Some(p.identity),
                discovered: false,
            })
        })
        .collect()
}

/// The watching proxies of a `/proxies` answer, then the pool members it
/// names that are not among them (they watch another replica).
pub fn targets_with_pool_workers(json: &str) -> anyhow::Result<Vec<Target>> {
    let listing: Listing = serde_json::from_str(json)?;
    let mut targets = watching(listing.proxies);
    for worker in listing.pool_workers {
        if !targets.iter().any(|t| t.admin == worker.admin) {
            targets.push(Target {
                admin: worker.admin,
                identity: worker.identity,
                discovered: true,
            });
        }
    }
    Ok(targets)
}

/// The proxies named with `--admin`.
fn named(reach: &Reach) -> Vec<Target> {
    reach.admins.iter().map(Target::named).collect()
}

/// The proxies to look at: those named, else those the control plane lists.
async fn targets(reach: &Reach) -> anyhow::Result<Vec<Target>> {
    if !reach.admins.is_empty() {
        return Ok(named(reach));
    }
    let listing = http::get_text(&reach.control_plane_admin, "/proxies", reach.timeout)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "no --admin given, and the control plane cannot list proxies: {e:#} \
                 (name proxies with --admin HOST:PORT, or point --control-plane-admin at it)"
            )
        })?;
    targets_with_pool_workers(&listing)
}

/// Runs `cli`; the process's exit status.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Stat(args) => {
            let targets = targets(&args.reach).await?;
            anyhow::ensure!(!targets.is_empty(), "no proxies to look at");
            stat::run(
                &targets,
                args.interval,
                args.watch,
                args.count,
                args.reach.output,
                args.reach.timeout,
            )
            .await
        }
        Command::Check(args) => {
            let settings = check::CheckSettings {
                control_plane: (!args.no_control_plane)
                    .then(|| args.reach.control_plane_admin.clone()),
                expiry_warning: args.expiry_warning,
                timeout: args.reach.timeout,
            };
            let report = check::run(&named(&args.reach), &settings).await;
            check::print(&report, args.reach.output, &mut std::io::stdout())?;
            Ok(report.ok)
        }
        Command::Warm(args) => {
            let targets = targets(&args.reach).await?;
            anyhow::ensure!(!targets.is_empty(), "no proxies to warm");
            let settings = warm::WarmSettings {
                dataset: args.dataset,
                prefix: args.prefix,
                sidecar: args.sidecar,
                pool: args.pool,
                concurrency: args.concurrency,
                bytes_per_second: args.bytes_per_second,
                detach: args.detach,
                status_only: args.status,
                // Without --admin, the control plane orders it (the workers'
                // admin ports accept warm-ups from localhost only).
                control_plane: args
                    .reach
                    .admins
                    .is_empty()
                    .then(|| args.reach.control_plane_admin.clone()),
                output: args.reach.output,
                timeout: args.reach.timeout,
            };
            warm::run(&targets, &settings).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_workers_not_watching_are_added_once() {
        let listing = r#"{
            "proxies": [
                { "identity": "spiffe://d/ns/a/sa/w", "role": "worker", "admin": "10.0.0.1:4191" },
                { "identity": "spiffe://d/ns/a/sa/s", "role": "sidecar", "admin": null }
            ],
            "pool_workers": [
                { "pool": "p", "address": "10.0.0.1:4143", "admin": "10.0.0.1:4191", "identity": "spiffe://d/ns/a/sa/w" },
                { "pool": "p", "address": "10.0.0.2:4143", "admin": "10.0.0.2:4191", "identity": null }
            ]
        }"#;
        let watching = targets_from_listing(listing).expect("listing");
        assert_eq!(watching.len(), 1, "only watchers with an admin address");
        let all = targets_with_pool_workers(listing).expect("listing");
        let admins: Vec<(&str, bool)> = all
            .iter()
            .map(|t| (t.admin.as_str(), t.discovered))
            .collect();
        assert_eq!(admins, [("10.0.0.1:4191", false), ("10.0.0.2:4191", true)]);
        // An older control plane's answer has no pool workers.
        let old = r#"{ "proxies": [] }"#;
        assert!(targets_with_pool_workers(old).expect("old").is_empty());
    }
}
