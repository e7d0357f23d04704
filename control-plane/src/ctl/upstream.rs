//! `ferryctl stat`'s worker table: each pool member as the sidecars that
//! send it chunks see it (requests, latency, failovers, hedges, ejection).

use serde::Serialize;

use ferry_config::exposition::{Exposition, quantile};

use super::stat::{bucket_delta, counter_delta, millis};
use super::table::Table;

/// One pool member seen from one sidecar.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerRow {
    /// The sidecar's admin address.
    pub proxy: String,
    /// The pool.
    pub pool: String,
    /// The worker's inbound address.
    pub member: String,
    /// Requests sent to it in the window.
    pub requests: f64,
    /// Those per second (none over a proxy's whole life).
    pub requests_per_second: Option<f64>,
    /// Median time to its response headers, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, milliseconds.
    pub p99_ms: Option<f64>,
    /// Requests moved away from it after it failed.
    pub failovers: f64,
    /// Hedge requests sent to it.
    pub hedges: f64,
    /// Hedges to it that won.
    pub hedges_won: f64,
    /// Whether it is ejected now.
    pub ejected: bool,
}

/// The members a sidecar's `/metrics` (`now`, against `then`) knows.
pub fn rows(
    proxy: &str,
    then: Option<&Exposition>,
    now: &Exposition,
    window: Option<f64>,
) -> Vec<WorkerRow> {
    let Some(family) = now.family("upstream_requests_total") else {
        return Vec::new();
    };
    family
        .samples
        .iter()
        .filter_map(|sample| {
            let pool = sample.label("pool")?;
            let member = sample.label("member")?;
            let labels = [("pool", pool), ("member", member)];
            let count = |name: &str| counter_delta(then, now, name, &labels);
            let buckets = bucket_delta(then, now, "upstream_response_latency_seconds", &labels);
            let requests = count("upstream_requests_total");
            Some(WorkerRow {
                proxy: proxy.to_owned(),
                pool: pool.to_owned(),
                member: member.to_owned(),
                requests,
                requests_per_second: window.filter(|w| *w > 0.0).map(|w| requests / w),
                p50_ms: quantile(&buckets, 0.50).map(|s| s * 1e3),
                p99_ms: quantile(&buckets, 0.99).map(|s| s * 1e3),
                failovers: count("upstream_failovers_total"),
                hedges: count("upstream_hedges_total"),
                hedges_won: count("upstream_hedges_won_total"),
                ejected: now.sum("upstream_member_ejected", &labels) > 0.0,
            })
        })
        .collect()
}

/// Writes the worker table.
pub fn print(rows: &[WorkerRow], out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut table = Table::new(&[
        "PROXY",
        "POOL",
        "WORKER",
        "RPS",
        "P50",
        "P99",
        "FAILOVERS",
        "HEDGES",
        "WON",
        "STATE",
    ]);
    for row in rows {
        table.row(vec![
            row.proxy.clone(),
            row.pool.clone(),
            row.member.clone(),
            row.requests_per_second
                .map_or_else(|| format!("{} req", row.requests), |r| format!("{r:.1}")),
            millis(row.p50_ms),
            millis(row.p99_ms),
            format!("{}", row.failovers),
            format!("{}", row.hedges),
            format!("{}", row.hedges_won),
            if row.ejected {
                "ejected"
            } else {
                "in rotation"
            }
            .to_owned(),
        ]);
    }
    table.print(out)
}
