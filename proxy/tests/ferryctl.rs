//! `ferryctl stat` and `ferryctl check` against real running proxies and a
//! real control plane: the figures printed are what the workload did, and
//! each problem is reported with what to do.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::plane::ControlPlane;
use common::{ProxyProcess, TempDir};
use ferry_config::SyntheticSpec;

const SPEC: &str = "count=40&size=16KiB&seed=3";

/// Runs `ferryctl args` to completion (its own deadlines bound it).
fn ferryctl(args: &[&str]) -> Output {
    Command::new(common::ferryctl_binary())
        .args(args)
        .output()
        .expect("run ferryctl")
}

fn json_of(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "ferryctl printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

async fn get(client: &reqwest::Client, proxy: &ProxyProcess, key: &str) -> u16 {
    let response = client
        .get(proxy.url(&format!("/imagenet/{key}")))
        .send()
        .await
        .expect("get");
    let status = response.status().as_u16();
    let _ = response.bytes().await.expect("body");
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn stat_prints_what_the_workload_did() {
    let origin = format!("synthetic://?{SPEC}");
    let worker = ProxyProcess::start(&["worker", "--origin", &origin, "--bucket", "imagenet"]);
    let spec = SyntheticSpec::from_query(SPEC).expect("spec");
    let client = reqwest::Client::new();
    // 10 first reads (misses), the same 10 again (hits), 2 keys that do not exist.
    for round in 0..2 {
        for index in 0..10 {
            assert_eq!(
                get(&client, &worker, &spec.key(index)).await,
                200,
                "round {round}"
            );
        }
    }
    for _ in 0..2 {
        assert_eq!(get(&client, &worker, "no-such-key").await, 404);
    }
    let admin = worker.admin.to_string();

    let output = ferryctl(&["stat", "--admin", &admin, "--interval", "0", "-o", "json"]);
    assert!(output.status.success(), "{output:?}");
    let report = json_of(&output);
    assert!(report["window_seconds"].is_null(), "lifetime figures");
    let rows = report["proxies"].as_array().expect("proxies");
    assert_eq!(rows.len(), 1, "one data set, one direction: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row["proxy"], admin);
    assert_eq!(row["dataset"], "imagenet");
    assert_eq!(row["direction"], "outbound");
    assert_eq!(row["requests"], 22.0);
    // 404 is the client's mistake, not a failure of the proxy.
    assert_eq!(row["success_rate"], 1.0);
    assert_eq!(row["memory_hit_ratio"], 0.5, "10 hits in 20 chunk lookups");
    let p50 = row["p50_ms"].as_f64().expect("p50");
    let p99 = row["p99_ms"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} ≤ p99 {p99}");
    assert_eq!(
        report["datasets"][0]["requests"], 22.0,
        "the data set's total"
    );

    let output = ferryctl(&["stat", "--admin", &admin, "--interval", "0"]);
    let table = String::from_utf8_lossy(&output.stdout);
    eprintln!("{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&admin))
        .expect("the proxy's row");
    for figure in ["imagenet", "outbound", "100.00%", "22 req", "50.00%"] {
        assert!(line.contains(figure), "{figure} in {line:?}");
    }

    // Over a window: the reads made during it, per second.
    let reading = tokio::spawn({
        let client = client.clone();
        let url = worker.url(&format!("/imagenet/{}", spec.key(1)));
        async move {
            let started = Instant::now();
            let mut reads = 0u64;
            while started.elapsed() < Duration::from_secs(10) {
                let Ok(response) = client.get(&url).send().await else {
                    break;
                };
                let _ = response.bytes().await;
                reads += 1;
                if reads == 200_000 {
                    break;
                }
            }
        }
    });
    let watched_admin = admin.clone();
    let output = tokio::task::spawn_blocking(move || {
        ferryctl(&["stat", "--admin", &admin, "--interval", "1s", "-o", "json"])
    })
    .await
    .expect("ferryctl");
    // --watch prints a report per interval; --count bounds it.
    let watched = tokio::task::spawn_blocking(move || {
        ferryctl(&[
            "stat",
            "--admin",
            &watched_admin,
            "--interval",
            "200ms",
            "--watch",
            "--count",
            "3",
            "-o",
            "json",
        ])
    })
    .await
    .expect("ferryctl --watch");
    assert!(watched.status.success(), "{watched:?}");
    let reports: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&watched.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("one JSON report per refresh");
    assert_eq!(reports.len(), 3, "three refreshes");
    for report in &reports {
        let window = report["window_seconds"].as_f64().expect("a window each");
        assert!(window >= 0.2, "each over its own interval: {window}");
    }
    reading.abort();
    let report = json_of(&output);
    let window = report["window_seconds"].as_f64().expect("a window");
    assert!(window >= 1.0, "window {window}");
    let row = &report["proxies"][0];
    let requests = row["requests"].as_f64().expect("requests");
    let rate = row["requests_per_second"].as_f64().expect("rate");
    assert!(requests > 0.0, "reads during the window are counted");
    assert!(
        (rate * window - requests).abs() < 1e-6 * requests.max(1.0),
        "rate × window = requests"
    );
    assert_eq!(row["memory_hit_ratio"], 1.0, "the window's reads all hit");
    let bytes = row["bytes_per_second"].as_f64().expect("bytes/s");
    let size = spec.object_size(1) as f64;
    // A scrape may land between a read's request and byte counts: one read
    // either way.
    assert!(
        (bytes * window - requests * size).abs() <= 2.0 * size,
        "bytes/s {bytes} is {requests} reads of {size} bytes over {window} s"
    );
}

/// Polls `ferryctl check` until a finding matches `wanted`, within `limit`.
fn check_until(
    args: &[&str],
    limit: Duration,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let report = json_of(&ferryctl(args));
        let found = report["findings"]
            .as_array()
            .is_some_and(|all| all.iter().any(&wanted));
        if found || started.elapsed() > limit {
            return report;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finding<'a>(
    report: &'a serde_json::Value,
    severity: &str,
    contains: &str,
) -> Option<&'a serde_json::Value> {
    report["findings"].as_array()?.iter().find(|f| {
        f["severity"] == severity && format!("{} {}", f["subject"], f["message"]).contains(contains)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_problems_with_advice() {
    let dir = TempDir::new("ferryctl-check");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    std::fs::write(
        policies.join("datasets.yaml"),
        format!(
            "datasets:\n  - name: imagenet\n    bucket: imagenet\n    origin: \"synthetic://?{SPEC}\"\n    pool: workers\n"
        ),
    )
    .expect("write");
    std::fs::write(
        policies.join("broken.yaml"),
        "datasets:\n  - name: broken\n    colour: blue\n",
    )
    .expect("write");
    let config_dir = policies.to_str().expect("path").to_owned();
    let plane = ControlPlane::start(
        dir.path(),
        &["--config-dir", &config_dir, "--cert-lifetime", "6s"],
    );
    let mut args = vec!["worker".to_owned()];
    args.extend(plane.flags("worker-token"));
    let worker = ProxyProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let admin = worker.admin.to_string();

    // Found through the control plane, which lists the proxies watching it.
    let base = ["check", "--control-plane-admin", &plane.admin, "-o", "json"];
    let mut lenient = base.to_vec();
    lenient.extend(["--expiry-warning", "1s"]);
    let output = ferryctl(&lenient);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a refused policy fails the check"
    );
    let report = json_of(&output);
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    assert_eq!(report["ok"], false);
    assert!(
        finding(&report, "ok", "control plane").is_some(),
        "the control plane is up"
    );
    let refused = finding(&report, "fail", "broken.yaml").expect("the broken file is reported");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour")),
        "with the field: {refused}"
    );
    assert!(refused["advice"].is_string(), "and what to do");
    let no_pool = finding(&report, "warn", "data set imagenet").expect("the missing pool");
    assert!(
        no_pool["message"]
            .as_str()
            .is_some_and(|m| m.contains("workers"))
    );
    let watching = finding(&report, "ok", "watching the control plane").expect("the worker");
    assert!(
        watching["subject"].as_str().is_some_and(
            |s| s.contains(&admin) && s.contains("spiffe://cluster.local/ns/ferry/sa/worker")
        ),
        "listed with its admin address and identity: {watching}"
    );
    assert!(finding(&report, "ok", "certificate valid for").is_some());

    // A 6 s certificate is near expiry by a 1 h standard.
    let mut near = base.to_vec();
    near.extend(["--expiry-warning", "1h"]);
    let report = json_of(&ferryctl(&near));
    let warning = finding(&report, "warn", "certificate expires in").expect("near expiry");
    assert!(
        warning["advice"]
            .as_str()
            .is_some_and(|a| a.contains("renew"))
    );

    // Without the control plane: it is unreachable, the proxy disconnected,
    // and (no renewal) its certificate runs out.
    drop(plane);
    let alone = [
        "check",
        "--control-plane-admin",
        "127.0.0.1:1",
        "--admin",
        &admin,
        "-o",
        "json",
    ];
    let report = check_until(&alone, Duration::from_secs(20), |f| {
        f["severity"] == "fail" && f["message"].as_str().is_some_and(|m| m.contains("expired"))
    });
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    assert!(finding(&report, "fail", "control plane 127.0.0.1:1").is_some());
    assert!(finding(&report, "fail", "disconnected from the control plane").is_some());
    assert!(finding(&report, "fail", "certificate expired").is_some());
    let table = String::from_utf8_lossy(&ferryctl(&alone[..5]).stdout).to_string();
    assert!(
        table.contains("FAIL  control plane 127.0.0.1:1: unreachable"),
        "{table}"
    );
    assert!(
        table.contains("-> Start it"),
        "advice under each failure: {table}"
    );
}
