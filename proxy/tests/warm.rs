//! Warm-up with real processes: workers over a synthetic origin, a sidecar
//! over them, and `ferryctl warm`. Every chunk lands on the worker that owns
//! it; a warmed pool serves an epoch without the origin; a stopped warm-up
//! resumes without fetching anything twice; a broken object is listed and
//! the rest are warmed; the byte rate bound holds.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::ProxyProcess;
use ferry_config::SyntheticSpec;
use ferry_proxy::outbound::balance::rendezvous::{chunk_route, member_hash, owner};
use reqwest::StatusCode;
use serde_json::Value;

const CHUNK: u64 = 64 * 1024;

fn worker(query: &str, extra: &[&str]) -> ProxyProcess {
    worker_of(&format!("synthetic://?{query}"), extra)
}

/// A worker of bucket `data` over `origin`, 64 KiB chunks, no read-ahead.
fn worker_of(origin: &str, extra: &[&str]) -> ProxyProcess {
    let mut args = vec![
        "worker",
        "--origin",
        origin,
        "--bucket",
        "data",
        "--chunk-size",
        "64KiB",
        "--read-ahead",
        "0",
    ];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

/// A sidecar over `workers` with these weights, and no cache of its own.
/// It does not hedge: a hedged read goes to a worker that does not own the
/// chunk, which fetches it from the origin, and this test counts those.
fn sidecar(workers: &[(&ProxyProcess, u32)]) -> ProxyProcess {
    let pool: Vec<String> = workers
        .iter()
        .map(|(w, weight)| format!("{}@{weight}", w.inbound.expect("inbound")))
        .collect();
    let pool = pool.join(",");
    ProxyProcess::start(&[
        "sidecar",
        "--pool",
        &pool,
        "--bucket",
        "data",
        "--chunk-size",
        "64KiB",
        "--read-ahead",
        "0",
        "--cache-size",
        "0",
        "--hedge",
        "off",
    ])
}

fn ferryctl(args: &[&str]) -> Output {
    Command::new(common::ferryctl_binary())
        .args(args)
        .output()
        .expect("run ferryctl")
}

fn admins(workers: &[&ProxyProcess]) -> Vec<String> {
    workers
        .iter()
        .flat_map(|w| ["--admin".to_owned(), w.admin.to_string()])
        .collect()
}

fn warm(workers: &[&ProxyProcess], extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["warm".to_owned(), "data".to_owned()];
    args.extend(admins(workers));
    args.extend(["-o".to_owned(), "json".to_owned()]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = ferryctl(&args);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "ferryctl warm printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, report)
}

async fn cached_chunks(worker: &ProxyProcess) -> u64 {
    let report = common::get_json(&reqwest::Client::new(), worker.admin_url("/cache")).await;
    report[0]["chunks"].as_u64().expect("chunks")
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("a JSON answer")
}

async fn warm_status(worker: &ProxyProcess) -> (StatusCode, Value) {
    let response = reqwest::get(worker.admin_url("/warm/data"))
        .await
        .expect("get");
    let code = response.status();
    (code, json_of(response).await)
}

/// Chunks of every object of `spec` each member owns, members given as (address, weight).
/// The workers' inbound addresses, as a pool names its members.
fn addresses(workers: &[ProxyProcess]) -> Vec<String> {
    workers
        .iter()
        .map(|w| w.inbound.expect("inbound").to_string())
        .collect()
}

/// `addresses` as members of weight 1.
fn weight_one(addresses: &[String]) -> Vec<(String, u32)> {
    addresses.iter().map(|a| (a.clone(), 1)).collect()
}

fn owned_chunks(spec: &SyntheticSpec, members: &[(String, u32)]) -> Vec<u64> {
    let ranked: Vec<(u64, u32)> = members
        .iter()
        .map(|(address, weight)| (member_hash(address), *weight))
        .collect();
    let mut counts = vec![0; members.len()];
    for index in 0..spec.count {
        let key = spec.key(index);
        for chunk in 0..spec.object_size(index).div_ceil(CHUNK) {
            let route = chunk_route(&key, chunk * CHUNK);
            counts[owner(&ranked, route).expect("an owner")] += 1;
        }
    }
    counts
}

async fn read_all(sidecar: &ProxyProcess, spec: &SyntheticSpec, query: &str) {
    for index in 0..spec.count {
        let key = spec.key(index);
        let response = reqwest::get(sidecar.url(&format!("/data/{key}")))
            .await
            .expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        let body = response.bytes().await.expect("body");
        assert!(
            body[..] == common::synthetic_object(query, index)[..],
            "{key}: wrong bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_objects_count_once_in_the_pool() {
    // Twenty objects of 1 KiB and five empty ones (markers, empty shards).
    let dir = common::TempDir::new("warm-empty");
    for i in 0..25 {
        let size = if i % 5 == 0 { 0 } else { 1024 };
        std::fs::write(dir.path().join(format!("o{i:02}")), vec![7u8; size]).expect("object");
    }
    let origin = format!("file://{}", dir.path().display());
    let workers: Vec<ProxyProcess> = (0..3).map(|_| worker_of(&origin, &[])).collect();
    let refs: Vec<&ProxyProcess> = workers.iter().collect();
    let (output, report) = warm(&refs, &[]);
    assert!(output.status.success(), "{report}");
    let totals = &report["totals"];
    assert_eq!(totals["objects_total"], 25, "{report}");
    assert_eq!(totals["objects_done"], 25, "{report}");
    assert_eq!(totals["bytes_total"], 20 * 1024, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warmed_pool_has_each_chunk_on_its_owner_and_serves_an_epoch_without_the_origin() {
    let query = "count=40&size=200KiB&dist=fixed&seed=7&latency=2ms";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let workers: Vec<ProxyProcess> = (0..3).map(|_| worker(query, &[])).collect();
    let weights = [1, 2, 1];
    let weighted: Vec<(&ProxyProcess, u32)> = workers.iter().zip(weights).collect();
    let sidecar = sidecar(&weighted);
    let refs: Vec<&ProxyProcess> = workers.iter().collect();

    let sidecar_admin = sidecar.admin.to_string();
    let (output, report) = warm(&refs, &["--sidecar", &sidecar_admin]);
    assert!(output.status.success(), "{report}");
    let totals = &report["totals"];
    assert_eq!(totals["bytes_done"], spec.total_bytes(), "{report}");
    assert_eq!(totals["bytes_fetched"], spec.total_bytes(), "{report}");
    assert_eq!(totals["objects_failed"], 0, "{report}");
    // Each object's four chunks are spread over the workers; it counts once.
    assert_eq!(totals["objects_total"], 40, "{report}");
    assert_eq!(totals["objects_done"], 40, "{report}");

    let members: Vec<(String, u32)> = workers
        .iter()
        .zip(weights)
        .map(|(w, weight)| (w.inbound.expect("inbound").to_string(), weight))
        .collect();
    let expected = owned_chunks(&spec, &members);
    assert_eq!(expected.iter().sum::<u64>(), 160);
    for (worker, expected) in workers.iter().zip(&expected) {
        assert_eq!(
            cached_chunks(worker).await,
            *expected,
            "worker {} holds exactly the chunks it owns",
            worker.admin
        );
        assert_eq!(worker.origin_requests("get").await, *expected as f64);
    }
    assert!(
        expected[1] > expected[0] && expected[1] > expected[2],
        "weight 2 owns the most: {expected:?}"
    );

    read_all(&sidecar, &spec, query).await;
    for (worker, expected) in workers.iter().zip(&expected) {
        assert_eq!(
            worker.origin_requests("get").await,
            *expected as f64,
            "epoch 1 after the warm-up read nothing from the origin ({})",
            worker.admin
        );
    }
    let hits: f64 = {
        let mut sum = 0.0;
        for worker in &workers {
            sum += worker
                .metric(
                    "cache_hits_total",
                    &[("dataset", "data"), ("tier", "memory")],
                )
                .await;
        }
        sum
    };
    assert_eq!(hits, 160.0, "every chunk read was a hit on its owner");
    for worker in &workers {
        assert_eq!(
            worker
                .metric("warm_in_progress", &[("dataset", "data")])
                .await,
            0.0
        );
        assert!(
            worker
                .metric("warm_objects_total", &[("dataset", "data")])
                .await
                > 0.0
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_warm_up_resumes_without_fetching_anything_twice() {
    let query = "count=40&size=128KiB&dist=fixed&seed=3&latency=20ms";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let worker = worker(query, &[]);
    let (output, _) = warm(&[&worker], &["--concurrency", "2", "--detach"]);
    assert!(output.status.success());
    let (code, running) = warm_status(&worker).await;
    assert_eq!(code, StatusCode::OK, "{running}");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = warm_status(&worker).await;
        if status["chunks_fetched"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = reqwest::Client::new()
        .delete(worker.admin_url("/warm/data"))
        .send()
        .await
        .expect("delete");
    let stopped = json_of(stopped).await;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert!(stopped["bytes_done"].as_u64() < Some(spec.total_bytes()));

    let (output, report) = warm(&[&worker], &["--concurrency", "4"]);
    assert!(output.status.success(), "{report}");
    let status = &report["workers"][worker.admin.to_string()];
    assert_eq!(status["state"], "done");
    assert_eq!(status["bytes_done"], spec.total_bytes(), "{report}");
    assert!(
        status["chunks_held"].as_u64() >= Some(10),
        "the second run skipped what the first fetched: {status}"
    );
    assert_eq!(
        worker.origin_requests("get").await,
        80.0,
        "each of the 80 chunks was fetched from the origin once over both runs"
    );
    assert_eq!(cached_chunks(&worker).await, 80);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_object_is_listed_and_the_rest_are_warmed() {
    let query = "count=20&size=100KiB&dist=fixed&seed=4&broken=3";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let worker = worker(query, &[]);
    let (output, report) = warm(&[&worker], &[]);
    assert!(
        !output.status.success(),
        "a failed object fails the command"
    );
    let status = &report["workers"][worker.admin.to_string()];
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["objects_failed"], 1, "{status}");
    assert_eq!(status["objects_done"], 19, "{status}");
    assert_eq!(status["errors"][0]["key"], spec.key(3), "{status}");
    assert!(
        status["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("damaged")),
        "{status}"
    );
    assert_eq!(cached_chunks(&worker).await, 19 * 2);

    // The table names the object too.
    let admin = worker.admin.to_string();
    let output = ferryctl(&["warm", "data", "--admin", &admin]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(text.contains("1 objects failed"), "{text}");
    assert!(text.contains(&spec.key(3)), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_that_fails_on_several_workers_counts_once() {
    // Eight chunks an object: the broken one has chunks on both workers
    // (unless the ranking puts all eight on one, checked below).
    let query = "count=10&size=512KiB&dist=fixed&seed=4&broken=3";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let workers: Vec<ProxyProcess> = (0..2).map(|_| worker(query, &[])).collect();
    let refs: Vec<&ProxyProcess> = workers.iter().collect();
    let (output, report) = warm(&refs, &[]);
    assert!(
        !output.status.success(),
        "a failed object fails the command"
    );
    let totals = &report["totals"];
    assert_eq!(totals["objects_total"], 10, "{report}");
    assert_eq!(totals["objects_done"], 9, "{report}");
    assert_eq!(totals["objects_failed"], 1, "{report}");

    let ranked: Vec<(u64, u32)> = addresses(&workers)
        .iter()
        .map(|a| (member_hash(a), 1))
        .collect();
    let broken = spec.key(3);
    for (i, worker) in workers.iter().enumerate() {
        let owns_a_chunk = (0..spec.object_size(3).div_ceil(CHUNK))
            .any(|chunk| owner(&ranked, chunk_route(&broken, chunk * CHUNK)) == Some(i));
        let status = &report["workers"][worker.admin.to_string()];
        assert_eq!(
            status["objects_failed"],
            u64::from(owns_a_chunk),
            "worker {i}: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_byte_rate_bound_holds_within_ten_percent() {
    let query = "count=24&size=128KiB&dist=fixed&seed=5";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let worker = worker(query, &[]);
    let (output, report) = warm(&[&worker], &["--bytes-per-second", "1MiB"]);
    assert!(output.status.success(), "{report}");
    let status = &report["workers"][worker.admin.to_string()];
    let fetched = status["bytes_fetched"].as_f64().expect("bytes");
    let seconds = status["elapsed_seconds"].as_f64().expect("seconds");
    assert_eq!(fetched, spec.total_bytes() as f64);
    let rate = fetched / seconds;
    assert!(
        rate <= 1.1 * 1024.0 * 1024.0,
        "{rate:.0} B/s over {seconds:.2}s is above 1 MiB/s by more than 10%"
    );
    assert_eq!(status["bytes_per_second"], 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pin_cache_reports_what_fit() {
    let query = "count=20&size=64KiB&dist=fixed&seed=6";
    let worker = worker(query, &["--cache-size", "512KiB", "--cache-policy", "pin"]);
    let (output, report) = warm(&[&worker], &[]);
    assert!(!output.status.success(), "not all of it fit: {report}");
    let status = &report["workers"][worker.admin.to_string()];
    assert_eq!(status["capacity_reached"], true, "{status}");
    assert_eq!(status["bytes_done"], 512 * 1024, "{status}");
    assert_eq!(
        status["bytes_not_warmed"],
        20 * 64 * 1024 - 512 * 1024,
        "{status}"
    );
    assert_eq!(cached_chunks(&worker).await, 8);
    let admin = worker.admin.to_string();
    let text = String::from_utf8_lossy(&ferryctl(&["warm", "data", "--admin", &admin]).stdout)
        .into_owned();
    assert!(text.contains("did not fit"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_warm_up_requests_get_clear_errors() {
    let worker = worker("count=4&size=10KiB", &[]);
    let client = reqwest::Client::new();
    let post = |path: &str, body: &str| {
        client
            .post(worker.admin_url(path))
            .body(body.to_owned())
            .send()
    };
    let (code, body) = warm_status(&worker).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NoWarmUp"))
    );
    let member = worker.inbound.expect("inbound").to_string();
    let cases: HashMap<&str, (&str, String, StatusCode, &str)> = HashMap::from([
        (
            "unknown data set",
            (
                "/warm/nope",
                format!(r#"{{"members":[{{"address":"{member}"}}],"member":"{member}"}}"#),
                StatusCode::NOT_FOUND,
                "NoSuchDataset",
            ),
        ),
        (
            "not JSON",
            (
                "/warm/data",
                "members".to_owned(),
                StatusCode::BAD_REQUEST,
                "MalformedWarmUp",
            ),
        ),
        (
            "not a member",
            (
                "/warm/data",
                r#"{"members":[{"address":"x:1"}],"member":"y:1"}"#.to_owned(),
                StatusCode::BAD_REQUEST,
                "MalformedWarmUp",
            ),
        ),
    ]);
    for (what, (path, body, code, expected)) in cases {
        let response = post(path, &body).await.expect("post");
        assert_eq!(response.status(), code, "{what}");
        let answer = json_of(response).await;
        assert_eq!(answer["code"], expected, "{what}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A sidecar owns no chunks: ferryctl skips it, and refuses a list with no worker.
    let sidecar = sidecar(&[(&worker, 1)]);
    let admin = sidecar.admin.to_string();
    let output = ferryctl(&["warm", "data", "--admin", &admin]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("none of the proxies named is a worker"),
        "{stderr}"
    );
    let response = client
        .post(sidecar.admin_url("/warm/data"))
        .body(format!(
            r#"{{"members":[{{"address":"{member}"}}],"member":"{member}"}}"#
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::CONFLICT);
}

/// Polls a worker's warm-up until it has ended after `progress` (bounded:
/// never a fixed sleep).
async fn wait_for_warm(worker: &ProxyProcess, done: impl Fn(&Value) -> bool) -> Value {
    let what = format!("worker {}", worker.admin);
    common::poll_json(&what, || warm_status(worker), done).await
}

/// A worker watching `plane`, with no data set or pool of its own.
fn plane_worker(plane: &common::plane::ControlPlane) -> ProxyProcess {
    let mut args: Vec<String> = vec!["worker".into()];
    args.extend(plane.flags("worker-token"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ProxyProcess::start(&args)
}

/// `ferryctl warm data` ordered through the control plane at `admin` (with
/// `extra` flags), to its end: the JSON report, once it succeeded.
fn warm_through(admin: &str, extra: &[&str]) -> Value {
    let mut args = vec!["warm", "data", "--control-plane-admin", admin, "-o", "json"];
    args.extend_from_slice(extra);
    let output = ferryctl(&args);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "{report}");
    report
}

/// A control plane over a policy directory with one data set `data` of
/// `query` (its `extra` YAML lines appended), two workers watching it, and
/// the pool `workers` of both written once they run.
struct PlaneMesh {
    policies: std::path::PathBuf,
    plane: common::plane::ControlPlane,
    workers: [ProxyProcess; 2],
    addresses: Vec<String>,
    _dir: common::TempDir,
}

impl PlaneMesh {
    fn start(query: &str, extra: &str) -> Self {
        use common::plane::{ControlPlane, write_policy};
        let dir = common::TempDir::new("warm-plane");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        write_policy(
            &policies,
            "datasets.yaml",
            &format!(
                "datasets:\n  - name: data\n    origin: \"synthetic://?{query}\"\n    chunk_size: 64KiB\n    \
                 read_ahead: 0\n    pool: workers\n{extra}"
            ),
        );
        let config_dir = policies.to_str().expect("path").to_owned();
        let plane = ControlPlane::start(dir.path(), &["--config-dir", &config_dir]);
        let workers = [plane_worker(&plane), plane_worker(&plane)];
        let addresses = addresses(&workers);
        let mesh = Self {
            policies,
            plane,
            workers,
            addresses,
            _dir: dir,
        };
        mesh.set_pool(&mesh.addresses);
        mesh
    }

    fn set_pool(&self, members: &[String]) {
        let members: Vec<String> = members
            .iter()
            .map(|a| format!("{{ address: \"{a}\" }}"))
            .collect();
        common::plane::write_policy(
            &self.policies,
            "pools.yaml",
            &format!(
                "pools:\n  - name: workers\n    identity: spiffe://cluster.local/ns/ferry/sa/worker\n    \
                 members: [{}]\n",
                members.join(", ")
            ),
        );
    }

    fn owned(&self, spec: &SyntheticSpec) -> Vec<u64> {
        owned_chunks(spec, &weight_one(&self.addresses))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_with_warm_on_start_warms_each_worker_share_and_again_when_the_pool_changes() {
    let query = "count=30&size=100KiB&dist=fixed&seed=8";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let mesh = PlaneMesh::start(
        query,
        "    warm: on_start\n    warm_limits: { concurrency: 4 }\n",
    );
    let expected = mesh.owned(&spec);
    assert_eq!(expected.iter().sum::<u64>(), 60);
    for (worker, expected) in mesh.workers.iter().zip(&expected) {
        let status = wait_for_warm(worker, |s| s["state"] == "done").await;
        assert_eq!(status["concurrency"], 4, "{status}");
        assert_eq!(cached_chunks(worker).await, *expected, "{status}");
    }

    // The pool shrinks to the first worker: it warms again, now owning
    // everything, and fetches only what it did not hold.
    mesh.set_pool(&mesh.addresses[..1]);
    let status = wait_for_warm(&mesh.workers[0], |s| {
        s["state"] == "done" && s["bytes_total"] == spec.total_bytes()
    })
    .await;
    assert_eq!(status["chunks_held"], expected[0], "{status}");
    assert_eq!(status["chunks_fetched"], expected[1], "{status}");
    assert_eq!(cached_chunks(&mesh.workers[0]).await, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_admin_addresses_ferryctl_orders_the_warm_up_through_the_control_plane() {
    let query = "count=30&size=100KiB&dist=fixed&seed=9";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let mesh = PlaneMesh::start(query, "");
    let admin = mesh.plane.admin.clone();
    let report = warm_through(&admin, &["--bytes-per-second", "100MiB"]);
    assert_eq!(
        report["totals"]["workers_not_followed"], 0,
        "both workers watch this control plane: {report}"
    );
    assert_eq!(
        report["totals"]["bytes_done"],
        spec.total_bytes(),
        "{report}"
    );
    let expected = mesh.owned(&spec);
    let mut orders = Vec::new();
    for (worker, expected) in mesh.workers.iter().zip(&expected) {
        let status = &report["workers"][worker.admin.to_string()];
        assert_eq!(status["state"], "done", "{report}");
        orders.push(status["order"].as_u64().expect("an order id"));
        assert_eq!(cached_chunks(worker).await, *expected);
        let (_, own) = warm_status(worker).await;
        assert_eq!(
            own["bytes_per_second"],
            50 * 1024 * 1024,
            "the pool's bound split by weight: {own}"
        );
    }
    assert_eq!(orders[0], orders[1], "both carried out the same order");

    // A second order is a new one: both workers take it up, fetching nothing.
    let again = warm_through(&admin, &[]);
    for worker in &mesh.workers {
        let status = &again["workers"][worker.admin.to_string()];
        assert!(status["order"].as_u64() > Some(orders[0]), "{again}");
        assert_eq!(status["bytes_fetched"], 0, "{again}");
    }

    let output = ferryctl(&["warm", "nope", "--control-plane-admin", &admin]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NoSuchDataset"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_up_order_outlives_a_control_plane_restart() {
    let query = "count=30&size=100KiB&dist=fixed&seed=10";
    let mut mesh = PlaneMesh::start(query, "");
    let report = warm_through(&mesh.plane.admin, &[]);
    let order = report["workers"][mesh.workers[0].admin.to_string()]["order"].clone();
    assert!(order.is_u64(), "{report}");

    // The control plane restarts on its address; then a third worker joins
    // the pool and takes its share of the order it never saw posted.
    let listen = mesh.plane.url.trim_start_matches("https://").to_owned();
    let config_dir = mesh.policies.to_str().expect("path").to_owned();
    let _ = mesh.plane.child.kill();
    let _ = mesh.plane.child.wait();
    mesh.plane = common::plane::ControlPlane::start(
        mesh._dir.path(),
        &["--config-dir", &config_dir, "--listen", &listen],
    );
    let third = plane_worker(&mesh.plane);
    let mut members = mesh.addresses.clone();
    members.extend(addresses(std::slice::from_ref(&third)));
    mesh.set_pool(&members);
    let status = wait_for_warm(&third, |s| s["state"] == "done").await;
    assert_eq!(status["order"], order, "{status}");
    assert!(status["chunks_fetched"].as_u64() > Some(0), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_lists_the_data_set_once_and_knows_its_totals_long_before_it_is_done() {
    // Three pages of listing; fetches held to 64 KiB/s, so warming all
    // 2.5 MB would take about 40 s while listing takes milliseconds.
    let query = "count=2500&size=1KiB&dist=fixed&seed=9";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let worker = worker(query, &[]);
    let member = worker.inbound.expect("inbound").to_string();
    let response = reqwest::Client::new()
        .post(worker.admin_url("/warm/data"))
        .body(format!(
            r#"{{"members":[{{"address":"{member}"}}],"member":"{member}","bytes_per_second":65536}}"#
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let what = format!("worker {}", worker.admin);
    let status = common::poll_json(
        &what,
        || warm_status(&worker),
        |s| s["listing_done"] == true,
    )
    .await;
    assert_eq!(status["objects_total"], 2500, "{status}");
    assert_eq!(status["bytes_total"], spec.total_bytes(), "{status}");
    assert!(
        status["objects_done"].as_u64().expect("done") < 2500,
        "the totals were known while objects were still being warmed: {status}"
    );
    let lists = worker.origin_requests("list").await;
    assert_eq!(lists, 3.0, "one listing of 1,000 objects a page, not two");

    let stopped = reqwest::Client::new()
        .delete(worker.admin_url("/warm/data"))
        .send()
        .await
        .expect("delete");
    assert_eq!(stopped.status(), StatusCode::OK);
}

/// Which of `addresses` lists `prefix` for the pool: the owner of its
/// LIST route, as sidecars rank it.
fn lister(addresses: &[String], prefix: &str) -> usize {
    let members: Vec<(u64, u32)> = addresses.iter().map(|a| (member_hash(a), 1)).collect();
    owner(&members, chunk_route(&format!("list:{prefix}"), 0)).expect("an owner")
}

/// Warms the data set of `query` over three workers started with `extra`
/// flags; checks every chunk landed on its owner and that only the lister
/// asked the origin for listings. Returns the lister's origin LISTs.
async fn lister_lists_in_a_pool_warm_up(query: &str, extra: &[&str]) -> f64 {
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let workers: Vec<ProxyProcess> = (0..3).map(|_| worker(query, extra)).collect();
    let refs: Vec<&ProxyProcess> = workers.iter().collect();
    let (output, report) = warm(&refs, &[]);
    assert!(output.status.success(), "{report}");
    assert_eq!(
        report["totals"]["bytes_done"],
        spec.total_bytes(),
        "{report}"
    );
    let addresses = addresses(&workers);
    let lists_by = lister(&addresses, "");
    let expected = owned_chunks(&spec, &weight_one(&addresses));
    let mut lister_lists = 0.0;
    for (i, worker) in workers.iter().enumerate() {
        assert_eq!(cached_chunks(worker).await, expected[i], "{report}");
        let status = &report["workers"][worker.admin.to_string()];
        assert_eq!(status["pool_members"], 3, "{report}");
        let lists = worker.origin_requests("list").await;
        if i == lists_by {
            lister_lists = lists;
        } else {
            assert_eq!(lists, 0.0, "worker {i} paged through the lister's listing");
        }
    }
    lister_lists
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_lists_the_data_set_once_for_all_its_workers() {
    // Three pages of listing for three workers.
    let lists =
        lister_lists_in_a_pool_warm_up("count=2500&size=1KiB&dist=fixed&seed=11", &[]).await;
    assert_eq!(lists, 3.0, "the lister listed once, 1,000 objects a page");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_shares_one_origin_listing_of_a_data_set_too_big_to_cache() {
    // Five pages of listing against a listing cache of 1,000 objects: no
    // worker may keep the listing, so the others page through the lister,
    // which answers from its window of the latest origin pages.
    let dir = common::TempDir::new("too-big-listing");
    let config = dir.path().join("limits.yaml");
    std::fs::write(&config, "limits:\n  listing_entries: 1000\n").expect("config");
    let config = config.to_str().expect("path");
    let query = "count=4500&size=1KiB&dist=fixed&seed=13";
    let lists = lister_lists_in_a_pool_warm_up(query, &["--config", config]).await;
    // Two pages until the listing outgrew the cache, then each page once
    // more (the first only if a follower came after that): three workers
    // paging the origin each would have cost 17.
    assert!(
        (6.0..=7.0).contains(&lists),
        "the lister paged the origin once for all: {lists} LISTs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_cannot_reach_the_lister_lists_the_origin_itself() {
    let query = "count=1500&size=1KiB&dist=fixed&seed=12";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let workers: Vec<ProxyProcess> = (0..2).map(|_| worker(query, &[])).collect();
    let addresses = addresses(&workers);
    let lists_by = lister(&addresses, "");
    let mut workers = workers;
    workers.remove(lists_by).kill();
    let survivor = &workers[0];
    let me = survivor.inbound.expect("inbound").to_string();
    let members: Vec<String> = addresses
        .iter()
        .map(|a| format!(r#"{{"address":"{a}"}}"#))
        .collect();
    let response = reqwest::Client::new()
        .post(survivor.admin_url("/warm/data"))
        .body(format!(
            r#"{{"members":[{}],"member":"{me}"}}"#,
            members.join(",")
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let status = wait_for_warm(survivor, |s| s["state"] != "running").await;
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["objects_failed"], 0, "{status}");
    let mine = owned_chunks(&spec, &weight_one(&addresses))[1 - lists_by];
    assert_eq!(status["chunks_fetched"], mine, "{status}");
    assert_eq!(survivor.origin_requests("list").await, 2.0, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_share_the_listing_over_mutual_tls_for_a_data_set_they_may_not_read() {
    // The data set's allow list names readers only: the worker that lists
    // serves its pool peer (its own identity), not every workload.
    let query = "count=2500&size=1KiB&dist=fixed&seed=13";
    let spec = SyntheticSpec::from_query(query).expect("spec");
    let mesh = PlaneMesh::start(
        query,
        "    warm: on_start\n    allow: [\"spiffe://cluster.local/ns/train/sa/reader\"]\n",
    );
    let expected = mesh.owned(&spec);
    let lists_by = lister(&mesh.addresses, "");
    for (i, worker) in mesh.workers.iter().enumerate() {
        let status = wait_for_warm(worker, |s| s["state"] == "done").await;
        assert_eq!(cached_chunks(worker).await, expected[i], "{status}");
        let lists = worker.origin_requests("list").await;
        assert_eq!(lists, if i == lists_by { 3.0 } else { 0.0 }, "worker {i}");
    }
}
