//! `ferryctl warm`: starts a warm-up of a data set on every worker of a
//! pool (each loads the chunks it owns) and follows it with a progress
//! bar read from the workers; `--status` follows one already started.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ::http::{Method, StatusCode};
use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use ferry_config::warm::{WarmState, WarmStatus};

use super::{Output, Target, http};

fn human(bytes: u64) -> String {
    super::stat::bytes(bytes as f64)
}

/// How often the workers are asked for progress while following.
const POLL: Duration = Duration::from_millis(250);
/// How often a progress line is printed when the output is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What `ferryctl warm` was asked to do.
#[derive(Clone, Debug)]
pub struct WarmSettings {
    /// The data set's name.
    pub dataset: String,
    /// Only keys under this prefix.
    pub prefix: String,
    /// A sidecar whose `/pools` gives the members and weights.
    pub sidecar: Option<String>,
    /// Which of its pools (needed when it has several).
    pub pool: Option<String>,
    /// Origin fetches at once, per worker.
    pub concurrency: usize,
    /// Bound on origin bytes per second for the whole pool.
    pub bytes_per_second: Option<u64>,
    /// Start it and return.
    pub detach: bool,
    /// Follow a warm-up already started instead of starting one.
    pub status_only: bool,
    /// Order it through this control plane (its admin address) instead of
    /// starting it on each worker: the workers take their pool from their
    /// configuration.
    pub control_plane: Option<String>,
    /// Output format.
    pub output: Output,
    /// Deadline of each request.
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct ProxyView {
    role: String,
    bound: BoundView,
}

#[derive(Deserialize)]
struct BoundView {
    inbound: Option<String>,
}

#[derive(Deserialize)]
struct PoolView {
    pool: String,
    members: Vec<MemberView>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct MemberView {
    address: String,
    weight: u32,
}

/// One worker's part of a warm-up.
#[derive(Clone, Debug)]
struct Worker {
    admin: String,
    member: String,
}

/// The pool's warm-up, summed over its workers.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    /// Objects listed (each on the worker that owns its first chunk).
    pub objects_total: u64,
    /// Objects held.
    pub objects_done: u64,
    /// Objects failed.
    pub objects_failed: u64,
    /// Bytes listed.
    pub bytes_total: u64,
    /// Bytes held.
    pub bytes_done: u64,
    /// Bytes fetched from the origin.
    pub bytes_fetched: u64,
    /// Bytes left out because a cache was full.
    pub bytes_not_warmed: u64,
    /// Seconds the longest-running worker has run.
    pub elapsed_seconds: f64,
    /// Whether every worker has listed everything.
    pub listing_done: bool,
    /// Whether every worker has ended.
    pub finished: bool,
    /// Workers of the pool whose shares are not in these totals: the
    /// control plane asked does not list them, or they were out of reach.
    pub workers_not_followed: usize,
    /// Whether every worker kept every failed object's key (then failed
    /// objects are counted once, however many workers failed them).
    #[serde(skip)]
    errors_kept: bool,
}

impl Totals {
    fn of(statuses: &BTreeMap<String, WarmStatus>) -> Self {
        let mut totals = Self {
            listing_done: true,
            finished: true,
            errors_kept: true,
            ..Self::default()
        };
        for s in statuses.values() {
            totals.objects_total += s.objects_total;
            totals.objects_done += s.objects_done;
            totals.objects_failed += s.objects_failed;
            totals.errors_kept &= s.errors.len() as u64 == s.objects_failed;
            totals.bytes_total += s.bytes_total;
            totals.bytes_done += s.bytes_done;
            totals.bytes_fetched += s.bytes_fetched;
            totals.bytes_not_warmed += s.bytes_not_warmed;
            totals.elapsed_seconds = totals.elapsed_seconds.max(s.elapsed_seconds);
            totals.listing_done &= s.listing_done;
            totals.finished &= s.state != WarmState::Running;
        }
        let pool = statuses.values().map(|s| s.pool_members).max().unwrap_or(0);
        totals.workers_not_followed = pool.saturating_sub(statuses.len());
        if totals.errors_kept {
            // An object whose chunks failed on several workers is one object.
            let failed: std::collections::BTreeSet<&str> = statuses
                .values()
                .flat_map(|s| s.errors.iter().map(|e| e.key.as_str()))
                .collect();
            totals.objects_failed = failed.len() as u64;
        }
        totals
    }

    /// One line: a bar, objects, bytes, rate and time left.
    pub fn line(&self) -> String {
        let share = if self.bytes_total == 0 {
            if self.finished { 1.0 } else { 0.0 }
        } else {
            self.bytes_done as f64 / self.bytes_total as f64
        };
        const WIDTH: usize = 30;
        let filled = ((share * WIDTH as f64) as usize).min(WIDTH);
        let rate = if self.elapsed_seconds > 0.0 {
            self.bytes_fetched as f64 / self.elapsed_seconds
        } else {
            0.0
        };
        let left = self
            .bytes_total
            .saturating_sub(self.bytes_done + self.bytes_not_warmed);
        let eta = match (self.finished, self.listing_done, rate > 0.0) {
            (true, _, _) => "done".to_owned(),
            (false, true, true) => format!("ETA {:.0}s", left as f64 / rate),
            _ => "ETA ?".to_owned(),
        };
        format!(
            "[{}{}] {:>3.0}%  {}/{}{} objects  {} / {}  {}/s  {eta}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            share * 100.0,
            self.objects_done,
            self.objects_total,
            if self.listing_done { "" } else { "+" },
            human(self.bytes_done),
            human(self.bytes_total),
            human(rate as u64),
        )
    }
}

/// Runs `ferryctl warm` against `targets`; whether it ended with every
/// object warmed.
pub async fn run(targets: &[Target], settings: &WarmSettings) -> anyhow::Result<bool> {
    if let Some(control_plane) = &settings.control_plane {
        return run_ordered(targets, control_plane, settings).await;
    }
    let (workers, members) = workers_of(targets, settings).await?;
    anyhow::ensure!(
        !workers.is_empty(),
        "none of the proxies named is a worker: warm-ups run on workers (name their admin addresses with --admin)"
    );
    if !settings.status_only {
        start(&workers, &members, settings).await?;
        if settings.detach {
            if settings.output == Output::Json {
                let admins: Vec<&str> = workers.iter().map(|w| w.admin.as_str()).collect();
                super::write_json(
                    &serde_json::json!({ "dataset": settings.dataset, "started_on": admins }),
                    &mut std::io::stdout().lock(),
                )?;
            }
            eprintln!(
                "warm-up of '{}' started on {} workers; follow it with: ferryctl warm {} --status",
                settings.dataset,
                workers.len(),
                settings.dataset
            );
            return Ok(true);
        }
    }
    let statuses = follow(&workers, settings, Expect::Started).await?;
    report(&statuses, settings)
}

/// `ferryctl warm` through the control plane: it orders the warm-up, every
/// worker of the data set's pool takes the order up from its next snapshot,
/// and progress is read from the workers the control plane lists.
async fn run_ordered(
    targets: &[Target],
    control_plane: &str,
    settings: &WarmSettings,
) -> anyhow::Result<bool> {
    let workers = workers_among(targets, settings.timeout).await?;
    anyhow::ensure!(
        !workers.is_empty(),
        "the control plane lists no worker with an admin address"
    );
    let id = if settings.status_only {
        None
    } else {
        let body = serde_json::json!({
            "prefix": settings.prefix,
            "concurrency": settings.concurrency,
            "bytes_per_second": settings.bytes_per_second,
        });
        let (status, answer) = http::send(
            control_plane,
            Method::POST,
            &format!("/warm/{}", settings.dataset),
            Bytes::from(body.to_string()),
            settings.timeout,
        )
        .await?;
        anyhow::ensure!(
            status == StatusCode::ACCEPTED,
            "the control plane refused the warm-up ({status}): {}",
            String::from_utf8_lossy(&answer).trim()
        );
        let order: serde_json::Value =
            serde_json::from_slice(&answer).context("the control plane's answer is not JSON")?;
        let id = order["id"]
            .as_u64()
            .context("the control plane's answer has no id")?;
        if settings.detach {
            if settings.output == Output::Json {
                super::write_json(&order, &mut std::io::stdout().lock())?;
            }
            eprintln!(
                "warm-up of '{}' ordered (id {id}); follow it with: ferryctl warm {} --status",
                settings.dataset, settings.dataset
            );
            return Ok(true);
        }
        Some(id)
    };
    let statuses = follow(&workers, settings, Expect::Order(id)).await?;
    report(&statuses, settings)
}

/// The workers among `targets` (their `/config` says so), each with its
/// bound inbound address as `member`.
async fn workers_among(targets: &[Target], timeout: Duration) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for target in targets {
        let text = match http::get_text(&target.admin, "/config", timeout).await {
            Ok(text) => text,
            // A member known only from its Service may be out of reach from
            // here; its share is then not followed, and the totals say so.
            Err(err) if target.discovered => {
                eprintln!(
                    "pool member at {} cannot be followed: {err:#}",
                    target.admin
                );
                continue;
            }
            Err(err) => return Err(err),
        };
        let view: ProxyView = serde_json::from_str(&text)
            .with_context(|| format!("/config of {} is not a proxy's", target.admin))?;
        if let ("worker", Some(inbound)) = (view.role.as_str(), view.bound.inbound) {
            workers.push(Worker {
                admin: target.admin.clone(),
                member: inbound,
            });
        }
    }
    Ok(workers)
}

/// The workers among `targets`, each with its address in the pool, and
/// the pool's members with their weights.
async fn workers_of(
    targets: &[Target],
    settings: &WarmSettings,
) -> anyhow::Result<(Vec<Worker>, Vec<MemberView>)> {
    let found = workers_among(targets, settings.timeout).await?;
    if settings.status_only {
        return Ok((found, Vec::new()));
    }
    let members = match &settings.sidecar {
        Some(sidecar) => members_from_sidecar(sidecar, settings).await?,
        None => found
            .iter()
            .map(|w| MemberView {
                address: advertised(&w.admin, &w.member),
                weight: 1,
            })
            .collect(),
    };
    let mut workers = Vec::new();
    for Worker {
        admin,
        member: inbound,
    } in found
    {
        let candidates = [inbound.clone(), advertised(&admin, &inbound)];
        let Some(member) = members.iter().find(|m| candidates.contains(&m.address)) else {
            anyhow::bail!(
                "worker {admin} (inbound {inbound}) is not a member of the pool ({}): \
                 name only the pool's workers with --admin",
                members
                    .iter()
                    .map(|m| m.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        workers.push(Worker {
            admin,
            member: member.address.clone(),
        });
    }
    if let Some(missing) = members
        .iter()
        .find(|m| !workers.iter().any(|w| w.member == m.address))
    {
        anyhow::bail!(
            "pool member {} has no worker among the admin addresses: its chunks would not be warmed \
             (name its admin address with --admin)",
            missing.address
        );
    }
    Ok((workers, members))
}

/// A worker's address as peers reach it: its inbound address, with the
/// admin address's host when it listens on every interface.
fn advertised(admin: &str, inbound: &str) -> String {
    let unspecified = inbound
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified());
    match (
        unspecified,
        admin.rsplit_once(':'),
        inbound.rsplit_once(':'),
    ) {
        (true, Some((host, _)), Some((_, port))) => format!("{host}:{port}"),
        _ => inbound.to_owned(),
    }
}

async fn members_from_sidecar(
    sidecar: &str,
    settings: &WarmSettings,
) -> anyhow::Result<Vec<MemberView>> {
    let text = http::get_text(sidecar, "/pools", settings.timeout).await?;
    let pools: Vec<PoolView> =
        serde_json::from_str(&text).with_context(|| format!("/pools of {sidecar}"))?;
    let pool = match &settings.pool {
        Some(name) => pools
            .into_iter()
            .find(|p| &p.pool == name)
            .with_context(|| format!("sidecar {sidecar} has no pool named '{name}'"))?,
        None => {
            anyhow::ensure!(
                pools.len() == 1,
                "sidecar {sidecar} has {} pools: choose one with --pool",
                pools.len()
            );
            pools.into_iter().next().context("no pool")?
        }
    };
    anyhow::ensure!(
        !pool.members.is_empty(),
        "pool '{}' has no members",
        pool.pool
    );
    Ok(pool.members)
}

async fn start(
    workers: &[Worker],
    members: &[MemberView],
    settings: &WarmSettings,
) -> anyhow::Result<()> {
    let total_weight: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
    for worker in workers {
        let weight = members
            .iter()
            .find(|m| m.address == worker.member)
            .map_or(1, |m| u64::from(m.weight));
        // Each worker gets its share of the pool's origin bandwidth.
        let bytes_per_second = settings
            .bytes_per_second
            .map(|total| (total * weight).div_ceil(total_weight.max(1)).max(1));
        let body = serde_json::json!({
            "prefix": settings.prefix,
            "members": members,
            "member": worker.member,
            "concurrency": settings.concurrency,
            "bytes_per_second": bytes_per_second,
        });
        let (status, answer) = http::send(
            &worker.admin,
            Method::POST,
            &format!("/warm/{}", settings.dataset),
            Bytes::from(body.to_string()),
            settings.timeout,
        )
        .await?;
        anyhow::ensure!(
            status == StatusCode::ACCEPTED,
            "worker {} refused the warm-up ({status}): {}",
            worker.admin,
            String::from_utf8_lossy(&answer).trim()
        );
    }
    Ok(())
}

/// Which warm-up `follow` waits for on each worker.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The one just started on each (or the last one, for `--status`).
    Started,
    /// The control plane's order `id` (any order with `None`): a worker
    /// that shows none within `JOIN_WAIT` takes no part.
    Order(Option<u64>),
}

/// How long a worker has to take up a control plane's order.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// Polls every worker until all have ended, drawing progress.
async fn follow(
    workers: &[Worker],
    settings: &WarmSettings,
    expect: Expect,
) -> anyhow::Result<BTreeMap<String, WarmStatus>> {
    let terminal = std::io::stderr().is_terminal() && settings.output == Output::Table;
    let mut last_log: Option<Instant> = None;
    let started = Instant::now();
    loop {
        let mut statuses = BTreeMap::new();
        let mut waiting = 0;
        for worker in workers {
            let (status, body) = http::get(
                &worker.admin,
                &format!("/warm/{}", settings.dataset),
                settings.timeout,
            )
            .await?;
            let parsed = match status {
                StatusCode::OK => Some(
                    serde_json::from_slice::<WarmStatus>(&body)
                        .with_context(|| format!("/warm of {}", worker.admin))?,
                ),
                StatusCode::NOT_FOUND if matches!(expect, Expect::Order(_)) => None,
                _ => anyhow::bail!(
                    "worker {} has no warm-up of '{}' ({status}): {}",
                    worker.admin,
                    settings.dataset,
                    String::from_utf8_lossy(&body).trim()
                ),
            };
            match (expect, parsed) {
                (Expect::Started, Some(parsed)) => {
                    statuses.insert(worker.admin.clone(), parsed);
                }
                (Expect::Order(id), Some(parsed))
                    if parsed.order.is_some() && (id.is_none() || parsed.order == id) =>
                {
                    statuses.insert(worker.admin.clone(), parsed);
                }
                _ => waiting += 1,
            }
        }
        let joining = waiting > 0 && started.elapsed() < JOIN_WAIT;
        let totals = Totals::of(&statuses);
        let finished = totals.finished && !joining && !statuses.is_empty();
        if terminal {
            eprint!("\r{}", totals.line());
            let _ = std::io::stderr().flush();
        } else if settings.output == Output::Table
            && (finished || last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY))
        {
            eprintln!("{}", totals.line());
            last_log = Some(Instant::now());
        }
        if finished {
            if terminal {
                eprintln!();
            }
            if waiting > 0 {
                eprintln!(
                    "{waiting} worker(s) took no part: not members of the data set's pool, or their configuration is behind (ferryctl check)"
                );
            }
            return Ok(statuses);
        }
        anyhow::ensure!(
            joining || !statuses.is_empty(),
            "no worker took up the warm-up of '{}' within {JOIN_WAIT:?}: are they members of its pool? (ferryctl check)",
            settings.dataset
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Prints the outcome; whether every object was warmed.
fn report(
    statuses: &BTreeMap<String, WarmStatus>,
    settings: &WarmSettings,
) -> anyhow::Result<bool> {
    let totals = Totals::of(statuses);
    let complete = statuses
        .values()
        .all(|s| s.state == WarmState::Done && s.objects_failed == 0 && !s.capacity_reached);
    let mut out = std::io::stdout().lock();
    if settings.output == Output::Json {
        super::write_json(
            &serde_json::json!({ "dataset": settings.dataset, "totals": totals, "workers": statuses }),
            &mut out,
        )?;
        return Ok(complete);
    }
    let rate = if totals.elapsed_seconds > 0.0 {
        totals.bytes_fetched as f64 / totals.elapsed_seconds
    } else {
        0.0
    };
    writeln!(
        out,
        "warmed '{}': {} of {} objects, {} of {} held ({} fetched from the origin in {:.1}s, {}/s)",
        settings.dataset,
        totals.objects_done,
        totals.objects_total,
        human(totals.bytes_done),
        human(totals.bytes_total),
        human(totals.bytes_fetched),
        totals.elapsed_seconds,
        human(rate as u64),
    )?;
    if totals.workers_not_followed > 0 {
        writeln!(
            out,
            "{} more worker(s) of the pool were not followed here (the control plane asked does not list \
             them, or their admin port is out of reach): their shares are not in these figures",
            totals.workers_not_followed
        )?;
    }
    for (admin, status) in statuses {
        if status.state != WarmState::Done {
            writeln!(out, "worker {admin}: {}", status.state)?;
        }
        if let Some(failure) = &status.failure {
            writeln!(out, "worker {admin}: the listing failed: {failure}")?;
        }
        if status.capacity_reached {
            writeln!(
                out,
                "worker {admin}: its cache ({}) is full: {} of its share did not fit",
                human(status.capacity_bytes),
                human(status.bytes_not_warmed),
            )?;
        }
    }
    if totals.objects_failed > 0 {
        writeln!(out, "{} objects failed:", totals.objects_failed)?;
        for status in statuses.values() {
            for error in &status.errors {
                writeln!(out, "  {}: {}", error.key, error.message)?;
            }
        }
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_listening_everywhere_is_reached_at_its_admin_host() {
        assert_eq!(advertised("10.0.0.7:4191", "0.0.0.0:4143"), "10.0.0.7:4143");
        assert_eq!(
            advertised("127.0.0.1:9", "127.0.0.1:4143"),
            "127.0.0.1:4143"
        );
    }

    #[test]
    fn the_progress_line_shows_share_rate_and_time_left() {
        let mut statuses = BTreeMap::new();
        statuses.insert(
            "a".to_owned(),
            WarmStatus {
                state: WarmState::Running,
                listing_done: true,
                objects_total: 10,
                objects_done: 5,
                bytes_total: 1 << 20,
                bytes_done: 1 << 19,
                bytes_fetched: 1 << 19,
                elapsed_seconds: 1.0,
                ..WarmStatus::default()
            },
        );
        let line = Totals::of(&statuses).line();
        assert!(line.contains(" 50%"), "{line}");
        assert!(line.contains("5/10 objects"), "{line}");
        assert!(line.contains("512.0KiB/s"), "{line}");
        assert!(line.contains("ETA 1s"), "{line}");
    }

    #[test]
    fn workers_of_the_pool_not_followed_are_counted() {
        let share = |pool_members| WarmStatus {
            pool_members,
            ..WarmStatus::default()
        };
        let mut statuses = BTreeMap::from([("a".to_owned(), share(3)), ("b".to_owned(), share(3))]);
        assert_eq!(Totals::of(&statuses).workers_not_followed, 1);
        statuses.insert("c".to_owned(), share(3));
        assert_eq!(Totals::of(&statuses).workers_not_followed, 0);
        // A worker of an earlier version reports no pool: nothing is known.
        let older = BTreeMap::from([("a".to_owned(), share(0))]);
        assert_eq!(Totals::of(&older).workers_not_followed, 0);
    }
}
