//! The command line: bad configuration fails at start with file, line and
//! field; a good file starts the proxy; admin endpoints answer.

mod common;

use std::process::Command;

use common::{ProxyProcess, TempDir};

fn run(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-proxy"))
        .args(args)
        .output()
        .expect("run ferry-proxy");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_files_fail_with_their_location() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ndatasets:\n  - name: imagenet\n    origin: synthetic://?count=5\n    chunk_size: huge\n",
    )
    .expect("write");
    let (ok, stderr) = run(&["--config", path.to_str().expect("path")]);
    assert!(!ok);
    let location = format!("{}:6:", path.display());
    assert!(stderr.contains(&location), "{stderr}");
    assert!(
        stderr.contains("datasets[0].chunk_size") && stderr.contains("4MiB"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_explained() {
    let (ok, stderr) = run(&["worker", "--origin", "ftp://x/y", "--bucket", "data"]);
    assert!(!ok);
    assert!(stderr.contains("unknown scheme 'ftp'"), "{stderr}");
    let (ok, stderr) = run(&[
        "worker",
        "--origin",
        "synthetic://?count=3",
        "--bucket",
        "Bad_Name",
    ]);
    assert!(!ok);
    assert!(stderr.contains("not a valid bucket name"), "{stderr}");
    let (ok, stderr) = run(&[
        "worker",
        "--origin",
        "synthetic://?count=3",
        "--bucket",
        "data",
        "--chunk-size",
        "1KiB",
    ]);
    assert!(!ok);
    assert!(stderr.contains("out of range"), "{stderr}");
    let (ok, stderr) = run(&[]);
    assert!(!ok);
    assert!(stderr.contains("give a role"), "{stderr}");
    let (ok, stderr) = run(&[
        "worker",
        "--origin",
        "file:///definitely/not/here",
        "--bucket",
        "data",
    ]);
    assert!(!ok);
    assert!(stderr.contains("/definitely/not/here"), "{stderr}");
}

#[tokio::test]
async fn a_config_file_starts_the_proxy_and_admin_answers() {
    let dir = TempDir::new("cli-good");
    let path = dir.path().join("good.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ninbound: 127.0.0.1:0\ndatasets:\n  - name: one-set\n    bucket: one\n    \
         origin: synthetic://?count=5\n    cache: { worker: { size: 8MiB, policy: lru } }\n  \
         - name: two-set\n    bucket: two\n    origin: synthetic://?count=7\n",
    )
    .expect("write");
    let proxy = ProxyProcess::start(&["--config", path.to_str().expect("path")]);
    let client = reqwest::Client::new();
    for (path, want) in [("/live", "live"), ("/ready", "ready")] {
        let response = client
            .get(proxy.admin_url(path))
            .send()
            .await
            .expect("admin");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("text").trim(), want);
    }
    let cache = common::get_json(&client, proxy.admin_url("/cache")).await;
    assert_eq!(cache[0]["policy"], "lru");
    assert_eq!(cache[0]["capacity_bytes"], 8 * 1024 * 1024);
    assert_eq!(cache[1]["bucket"], "two");
    let config = common::get_json(&client, proxy.admin_url("/config")).await;
    assert_eq!(
        config["datasets"][1]["origin"],
        "synthetic://?count=7&size=110KiB&seed=0&dist=imagenet&suffix=.jpg"
    );
    let body = client
        .get(proxy.url("/two/00000006.jpg"))
        .send()
        .await
        .expect("get");
    assert_eq!(body.status(), 200);
    let metrics = client
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "request_total",
        "response_total",
        "response_latency_seconds_bucket",
        "cache_hits_total",
        "cache_misses_total",
        "cache_bytes",
        "origin_requests_total",
        "origin_bytes_total",
    ] {
        assert!(
            metrics.contains(&format!("\n{name}{{")),
            "{name} missing from:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("# HELP request_total"),
        "metrics have help text"
    );
    let shutdown = client
        .post(proxy.admin_url("/shutdown"))
        .send()
        .await
        .expect("shutdown");
    assert_eq!(shutdown.status(), 200);
}

/// `ferry-proxy await --shutdown -- CMD`, as a Job's container runs it on a
/// cluster without native sidecars: CMD runs once the proxy is ready, its
/// exit status is await's, and the proxy is stopped so the pod completes.
#[test]
fn await_runs_the_command_once_ready_then_stops_the_proxy() {
    let mut proxy = ProxyProcess::start(&[
        "worker",
        "--origin",
        "synthetic://?count=3",
        "--bucket",
        "imagenet",
    ]);
    let admin = proxy.admin.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-proxy"))
        .args([
            "await",
            "--admin",
            &admin,
            "--shutdown",
            "--",
            "sh",
            "-c",
            "echo trained; exit 3",
        ])
        .output()
        .expect("run ferry-proxy await");
    assert_eq!(output.status.code(), Some(3), "the command's exit status");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "trained\n");
    let stopped = proxy.wait();
    assert!(
        stopped.success(),
        "the proxy was shut down cleanly: {stopped}"
    );
}

#[test]
fn await_gives_up_with_a_message_when_no_proxy_gets_ready() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = unused.local_addr().expect("address").to_string();
    drop(unused);
    let output = Command::new(env!("CARGO_BIN_EXE_ferry-proxy"))
        .args([
            "await",
            "--admin",
            &address,
            "--timeout",
            "300ms",
            "--",
            "true",
        ])
        .output()
        .expect("run ferry-proxy await");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not ready after 300ms"), "{stderr}");
}
