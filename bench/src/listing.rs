//! `ferry-bench list`: how soon a bucket's listing answers through a
//! worker, page by page (1,000 keys a page, continuing after the last key,
//! as boto3's paginator and s3fs do), against listing the origin itself,
//! for a data set whose listing takes many origin round trips. Each round
//! starts a fresh worker (nothing cached), lists through it twice (the
//! second time from its cached listing) and lists the origin directly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::child::{ChildProcess, ProxyArgs};
use crate::client::Reader;
use crate::report::{self, Table};

/// `ferry-bench list` arguments.
#[derive(Args, Clone, Debug)]
pub struct ListArgs {
    /// Objects in the bucket.
    #[arg(long, default_value_t = 200_000)]
    pub objects: u64,
    /// The origin's latency per request (each listing page).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub origin_latency: Duration,
    /// Rounds (each with a fresh worker).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Which ferry-proxy to run.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One listing, page by page.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Where it was listed: direct, ferry (cold), ferry (cached).
    pub mode: String,
    /// Round (1-based).
    pub round: usize,
    /// Milliseconds to the first page.
    pub first_page_ms: f64,
    /// Seconds to the last page.
    pub seconds: f64,
    /// Pages read.
    pub pages: usize,
    /// Keys listed.
    pub keys: u64,
    /// The error, if the listing failed.
    pub error: Option<String>,
}

/// Every listing of the run.
#[derive(Debug, Serialize)]
pub struct ListReport {
    /// Objects in the bucket.
    pub objects: u64,
    /// The origin's latency per request, in milliseconds.
    pub origin_latency_ms: f64,
    /// The listings.
    pub listings: Vec<Listed>,
}

impl ListReport {
    /// Listings that failed or missed keys.
    pub fn failures(&self) -> usize {
        self.listings
            .iter()
            .filter(|l| l.error.is_some() || l.keys != self.objects)
            .count()
    }
}

/// Runs the comparison.
pub async fn run(args: &ListArgs) -> anyhow::Result<ListReport> {
    let query = format!("count={}&size=1KiB&dist=fixed&seed=5", args.objects);
    let origin = ChildProcess::origin_server(&query, args.origin_latency)?;
    let origin_url = format!("http://{}/", origin.addr);
    let program = args.proxy.program();
    let mut listings = Vec::new();
    for round in 1..=args.rounds {
        listings.push(list_through(origin.addr, "/", "direct", round).await);
        let worker = ChildProcess::proxy(
            &program,
            &[
                "worker".into(),
                "--origin".into(),
                origin_url.clone(),
                "--bucket".into(),
                "data".into(),
            ],
        )?;
        listings.push(list_through(worker.addr, "/data", "ferry (cold)", round).await);
        listings.push(list_through(worker.addr, "/data", "ferry (cached)", round).await);
    }
    let report = ListReport {
        objects: args.objects,
        origin_latency_ms: args.origin_latency.as_secs_f64() * 1000.0,
        listings,
    };
    print(&report);
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(report)
}

/// Lists every key at `addr` under `bucket_path`, 1,000 a page.
async fn list_through(
    addr: std::net::SocketAddr,
    bucket_path: &str,
    mode: &str,
    round: usize,
) -> Listed {
    let mut reader = Reader::new(addr);
    let started = Instant::now();
    let mut listed = Listed {
        mode: mode.to_owned(),
        round,
        first_page_ms: 0.0,
        seconds: 0.0,
        pages: 0,
        keys: 0,
        error: None,
    };
    let mut after = String::new();
    loop {
        let mut path = format!("{bucket_path}?list-type=2&max-keys=1000");
        if !after.is_empty() {
            path.push_str("&start-after=");
            path.extend(url::form_urlencoded::byte_serialize(after.as_bytes()));
        }
        let page = match reader.get_text(&path).await {
            Ok(page) => page,
            Err(err) => {
                listed.error = Some(format!("{err:#}"));
                break;
            }
        };
        if listed.pages == 0 {
            listed.first_page_ms = started.elapsed().as_secs_f64() * 1000.0;
        }
        listed.pages += 1;
        let keys: Vec<&str> = page
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key))
            .collect();
        listed.keys += keys.len() as u64;
        match keys.last() {
            Some(last) if page.contains("<IsTruncated>true</IsTruncated>") => {
                after = (*last).to_owned()
            }
            _ => break,
        }
    }
    listed.seconds = started.elapsed().as_secs_f64();
    listed
}

fn print(report: &ListReport) {
    println!(
        "Listing {} objects, 1,000 a page, origin {:.0} ms a request:",
        report.objects, report.origin_latency_ms
    );
    let mut table = Table::new(&[
        "round",
        "mode",
        "first page",
        "all pages",
        "pages",
        "keys",
        "all pages / direct",
    ]);
    for listed in &report.listings {
        let direct = report
            .listings
            .iter()
            .find(|l| l.round == listed.round && l.mode == "direct")
            .map_or(f64::NAN, |d| d.seconds);
        table.row(vec![
            listed.round.to_string(),
            listed.mode.clone(),
            format!("{:.0} ms", listed.first_page_ms),
            match &listed.error {
                Some(error) => format!("failed after {:.2} s: {error}", listed.seconds),
                None => format!("{:.2} s", listed.seconds),
            },
            listed.pages.to_string(),
            listed.keys.to_string(),
            format!("{:.3}", listed.seconds / direct),
        ]);
    }
    table.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_errors_and_missing_keys() {
        let listed = |keys, error: Option<&str>| Listed {
            mode: "ferry (cold)".into(),
            round: 1,
            first_page_ms: 1.0,
            seconds: 1.0,
            pages: 1,
            keys,
            error: error.map(str::to_owned),
        };
        let report = ListReport {
            objects: 10,
            origin_latency_ms: 20.0,
            listings: vec![listed(10, None), listed(9, None), listed(0, Some("503"))],
        };
        assert_eq!(report.failures(), 2);
    }
}
