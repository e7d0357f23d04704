//! The sidecar and its worker pool as real processes: reads survive a
//! killed worker, slow workers get hedged, the disk tier verifies what it
//! reads back and survives restarts, bad pools are explained.

mod common;

use std::process::Command;

use common::{ProxyProcess, TempDir};
use ferry_config::SyntheticSpec;
use reqwest::StatusCode;

const SPEC: &str = "count=300&size=40KiB&seed=5";

fn spec() -> SyntheticSpec {
    SyntheticSpec::from_query(SPEC).expect("spec")
}

fn expected(index: u64) -> Vec<u8> {
    common::synthetic_object(SPEC, index)
}

fn worker(origin_query: &str, extra: &[&str]) -> ProxyProcess {
    let origin = format!("synthetic://?{origin_query}");
    let mut args = vec!["worker", "--origin", &origin, "--bucket", "imagenet"];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

fn inbound(worker: &ProxyProcess) -> String {
    worker
        .inbound
        .expect("a worker reports its inbound address")
        .to_string()
}

fn sidecar(workers: &[&ProxyProcess], extra: &[&str]) -> ProxyProcess {
    let pool = workers
        .iter()
        .map(|w| inbound(w))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["sidecar", "--pool", &pool, "--bucket", "imagenet"];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_survive_a_worker_killed_mid_loop() {
    let mut workers: Vec<ProxyProcess> = (0..3).map(|_| worker(SPEC, &[])).collect();
    let proxy = sidecar(&workers.iter().collect::<Vec<_>>(), &["--cache-size", "0"]);
    let client = reqwest::Client::new();
    let mut verified = 0;
    for round in 0..2 {
        for index in 0..spec().count {
            if round == 0 && index == 100 {
                // SIGKILL: no goodbye, connections just die.
                let victim = workers.remove(1);
                drop(victim);
            }
            let url = proxy.url(&format!("/imagenet/{}", spec().key(index)));
            let response = client.get(&url).send().await.expect("get");
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "round {round} object {index}"
            );
            let body = response.bytes().await.expect("body");
            assert!(
                body[..] == expected(index)[..],
                "round {round} object {index}: wrong bytes"
            );
            verified += 1;
        }
    }
    assert_eq!(verified, 600);
    let failovers = proxy
        .metric("upstream_failovers_total", &[("pool", "workers")])
        .await;
    let ejections = proxy
        .metric("upstream_ejections_total", &[("pool", "workers")])
        .await;
    assert!(
        failovers >= 1.0,
        "the dead worker's chunks failed over: {failovers}"
    );
    assert!(ejections >= 1.0, "the dead worker was ejected: {ejections}");
    // It never answers a probe, so it stays ejected; the others never were.
    let ejected = proxy
        .metric("upstream_member_ejected", &[("pool", "workers")])
        .await;
    assert_eq!(ejected, 1.0, "exactly the dead worker is ejected now");
    assert_eq!(
        proxy.metric("pool_members", &[("pool", "workers")]).await,
        3.0,
        "the pool still lists three workers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_worker_is_hedged() {
    let fast = worker(SPEC, &[]);
    // Same data set, but its origin takes 30 s to answer: without hedging a
    // read it owns would wait that long (the chunk timeout is longer still).
    let slow = worker(&format!("{SPEC}&latency=30s"), &[]);
    let proxy = sidecar(
        &[&fast, &slow],
        &[
            "--hedge",
            "50ms",
            "--chunk-timeout",
            "60s",
            "--cache-size",
            "0",
        ],
    );
    let client = reqwest::Client::new();
    for index in 0..20 {
        let url = proxy.url(&format!("/imagenet/{}", spec().key(index)));
        let body = client
            .get(&url)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert!(body[..] == expected(index)[..], "object {index}");
    }
    let fast_member = inbound(&fast);
    let hedges = proxy
        .metric("upstream_hedges_total", &[("member", &fast_member)])
        .await;
    let won = proxy
        .metric("upstream_hedges_won_total", &[("member", &fast_member)])
        .await;
    assert!(
        hedges >= 1.0,
        "reads owned by the slow worker were hedged: {hedges}"
    );
    assert!(won >= 1.0, "and the hedge answered first: {won}");
}

fn chunk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "chunk") {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_tier_survives_restarts_and_never_serves_corruption() {
    let dir = TempDir::new("disk-tier");
    let cache_dir = dir.path().to_str().expect("path").to_owned();
    let disk = [
        "--disk-cache",
        cache_dir.as_str(),
        "--disk-cache-size",
        "64MiB",
    ];
    let client = reqwest::Client::new();
    {
        let first = worker(SPEC, &disk);
        for index in 0..2 {
            let body = client
                .get(first.url(&format!("/imagenet/{}", spec().key(index))))
                .send()
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            assert!(body[..] == expected(index)[..]);
        }
        // Writes go to disk in the background; wait until both files exist.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while chunk_files(dir.path()).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "chunks never reached the disk"
            );
            tokio::task::yield_now().await;
        }
    }
    let mut files = chunk_files(dir.path());
    files.sort();
    assert_eq!(files.len(), 2);
    // Corrupt one chunk in place.
    let victim = &files[0];
    let mut raw = std::fs::read(victim).expect("read chunk");
    let last = raw.len() - 1;
    raw[last] ^= 0x5a;
    std::fs::write(victim, &raw).expect("corrupt");

    let second = worker(SPEC, &disk);
    for index in 0..2 {
        let body = client
            .get(second.url(&format!("/imagenet/{}", spec().key(index))))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert!(
            body[..] == expected(index)[..],
            "object {index} is correct after restart"
        );
    }
    let failures = second
        .metric("cache_checksum_failures_total", &[("tier", "disk")])
        .await;
    let disk_hits = second.metric("cache_hits_total", &[("tier", "disk")]).await;
    let origin_gets = second
        .metric("origin_requests_total", &[("op", "get")])
        .await;
    assert_eq!(failures, 1.0, "the corrupt chunk was detected");
    assert_eq!(
        disk_hits, 1.0,
        "the intact chunk was served from disk after the restart"
    );
    assert_eq!(origin_gets, 1.0, "only the corrupt chunk was fetched again");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pools_are_explained_and_other_data_sets_keep_serving() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ferry-proxy"))
            .args(args)
            .output()
            .expect("run");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(&["sidecar", "--pool", "a:4143,a:4143", "--bucket", "imagenet"]);
    assert!(
        !ok && stderr.contains("lists member 'a:4143' twice"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["sidecar", "--pool", "nonsense", "--bucket", "imagenet"]);
    assert!(!ok && stderr.contains("not host:port"), "{stderr}");
    let (ok, stderr) = run(&["sidecar", "--bucket", "imagenet"]);
    assert!(!ok && stderr.contains("no pool to read from"), "{stderr}");

    // One data set's pool is unreachable, the other's works.
    let good = worker(SPEC, &[]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dir = TempDir::new("pools");
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "role: sidecar\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\npools:\n  - name: live\n    members: [{{ address: '{}' }}]\n  \
             - name: gone\n    members: [{{ address: '{dead}' }}]\ndatasets:\n  - name: imagenet\n    pool: live\n  \
             - name: other\n    pool: gone\n",
            inbound(&good)
        ),
    )
    .expect("write");
    let proxy = ProxyProcess::start(&["--config", config.to_str().expect("path")]);
    let client = reqwest::Client::new();
    let failed = client
        .get(proxy.url("/other/x.jpg"))
        .send()
        .await
        .expect("get");
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = failed.text().await.expect("text");
    assert!(
        text.contains("pool &apos;gone&apos;") || text.contains("pool 'gone'"),
        "{text}"
    );
    assert!(
        text.contains("cannot connect"),
        "the cause is named: {text}"
    );
    let ok = client
        .get(proxy.url(&format!("/imagenet/{}", spec().key(3))))
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.bytes().await.expect("body")[..] == expected(3)[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_on_pool_down_origin_a_dead_pool_falls_back_to_the_origin() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let origin = format!("synthetic://?{SPEC}");
    let proxy = ProxyProcess::start(&[
        "sidecar",
        "--pool",
        &dead,
        "--bucket",
        "imagenet",
        "--on-pool-down",
        "origin",
        "--origin",
        &origin,
    ]);
    let client = reqwest::Client::new();
    for index in [0, 7, 42] {
        let response = client
            .get(proxy.url(&format!("/imagenet/{}", spec().key(index))))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.bytes().await.expect("body")[..] == expected(index)[..],
            "object {index}"
        );
    }
    let failovers = proxy
        .metric("upstream_failovers_total", &[("member", &dead)])
        .await;
    assert!(failovers >= 1.0, "the pool was tried first: {failovers}");
}
