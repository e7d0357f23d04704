//! The mesh run from a real Kubernetes API server, end to end: a control
//! plane on its own service account's token (the chart's RBAC), two workers
//! and sidecars configured only by `--control-plane`, `--token` and
//! `--trust-bundle`, every read checked byte by byte. Each of issue 10's
//! reproductions runs again here with its fixed outcome.
//!
//! Pool members must have addresses the API server accepts in an
//! EndpointSlice (not loopback), so the test runs itself again inside a
//! private network namespace where 192.0.2.0/24 is local: every process and
//! every packet stays inside it.

mod common;
#[path = "../../control-plane/tests/kube_env/mod.rs"]
mod kube_env;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::plane::ControlPlane;
use common::{ProxyProcess, TempDir};
use ferry_config::SyntheticSpec;
use kube_env::{Endpoint, KubeEnv, apply, event_about, policy_map};

const OWN: &str = "ferry-system";
const IN_NETNS: &str = "FERRY_TEST_IN_NETNS";
const SPEC: &str = "count=40&size=30KiB&seed=3";
/// The rogue worker's bytes differ from the origin's.
const ROGUE_SPEC: &str = "count=40&size=30KiB&seed=99";
const WORKER_0: &str = "192.0.2.11:4143";
const WORKER_1: &str = "192.0.2.12:4143";
/// The workers' admin addresses: the port the pool's slices name `admin`.
const WORKER_0_ADMIN: &str = "192.0.2.11:4191";
const WORKER_1_ADMIN: &str = "192.0.2.12:4191";
const ROGUE: &str = "192.0.2.66:4143";
const WAIT: Duration = Duration::from_secs(30);

const TOKENS: &str = "tokens:\n  \
    - { token: worker-token, namespace: ferry-system, service_account: worker }\n  \
    - { token: cache-token, namespace: ferry-system, service_account: cache }\n  \
    - { token: train-token, namespace: train, service_account: job }\n";

fn key_of(index: u64) -> String {
    SyntheticSpec::from_query(SPEC).expect("spec").key(index)
}

/// Runs `test` of this binary again in a network namespace of its own;
/// false when this process is already inside one (then run the test).
fn ran_in_network_namespace(test: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        return false;
    }
    if std::env::var_os(kube_env::ASSETS).is_none() {
        eprintln!(
            "skipped {test}: {} is not set (scripts/test sets it)",
            kube_env::ASSETS
        );
        return true;
    }
    let can = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        eprintln!("skipped {test}: cannot make a network namespace here (needs root and unshare)");
        return true;
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && ip addr add 192.0.2.0/24 dev lo && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .status()
        .expect("run the test in a network namespace");
    assert!(status.success(), "{test} failed in its network namespace");
    true
}

#[test]
fn the_mesh_follows_a_real_api_server() {
    if ran_in_network_namespace("the_mesh_follows_a_real_api_server") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(scenario());
}

/// Polls `check` until it holds, for at most [`WAIT`].
async fn until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn json_at(url: String) -> Value {
    match reqwest::get(&url).await {
        Ok(response) => match response.bytes().await {
            Ok(body) => serde_json::from_slice(&body).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        },
        Err(_) => Value::Null,
    }
}

/// How one read went.
#[derive(Debug, PartialEq)]
enum Read {
    Right,
    Wrong,
    Failed,
}

/// Reads object `index` through the front door at `base` and checks it.
async fn read_one(client: &reqwest::Client, base: &str, index: u64) -> Read {
    let url = format!("{base}/imagenet/{}", key_of(index));
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(body) if body[..] == common::synthetic_object(SPEC, index)[..] => Read::Right,
            Ok(_) => Read::Wrong,
            Err(_) => Read::Failed,
        },
        _ => Read::Failed,
    }
}

/// Reads every object of the data set through `sidecar`; the number of
/// reads that failed or had other bytes than the origin's.
async fn read_all(client: &reqwest::Client, sidecar: &ProxyProcess) -> (usize, usize) {
    let (mut failed, mut wrong) = (0, 0);
    for index in 0..40 {
        match read_one(client, &sidecar.url(""), index).await {
            Read::Right => {}
            Read::Wrong => wrong += 1,
            Read::Failed => failed += 1,
        }
    }
    (failed, wrong)
}

fn worker(plane: &ControlPlane, token: &str, inbound: &str, extra: &[&str]) -> ProxyProcess {
    let mut args = vec!["worker", "--inbound", inbound];
    args.extend(extra);
    let flags = plane.flags(token);
    args.extend(flags.iter().map(String::as_str));
    ProxyProcess::start(&args)
}

fn sidecar(plane: &ControlPlane) -> ProxyProcess {
    let flags = plane.flags("train-token");
    let mut args = vec!["sidecar", "--cache-size", "64MiB"];
    args.extend(flags.iter().map(String::as_str));
    ProxyProcess::start(&args)
}

/// The control plane's `/policies`.
async fn policies(plane: &ControlPlane) -> Value {
    json_at(format!("http://{}/policies", plane.admin)).await
}

async fn scenario() {
    let env = KubeEnv::start("mesh").expect("kube-env");
    let admin = env.client().await;
    let dir = TempDir::new("kube-mesh");
    kube_env::namespace(&admin, OWN, &["worker", "cache"]).await;
    kube_env::namespace(&admin, "train", &["job"]).await;

    // The control plane runs on its own service account, with the chart's RBAC.
    let helm = kube_env::chart::helm("the_mesh_follows_a_real_api_server").expect("FERRY_HELM");
    let rendered = kube_env::chart::render(&helm, OWN, "").expect("the chart renders");
    for object in rendered.into_iter().filter(|o| {
        let kind = o["kind"].as_str().unwrap_or_default();
        kind.contains("Role") || kind == "ServiceAccount"
    }) {
        apply(&admin, object).await;
    }
    let token = kube_env::token(
        &admin,
        OWN,
        "ferry-control-plane",
        "https://kubernetes.default.svc.cluster.local",
    )
    .await;
    // Every answer of the API server 0.4 s late, as in the reproduction of
    // the restart defect (the control plane was ready before it had listed).
    let relay = kube_env::Relay::start(&env.url, Duration::from_millis(400)).await;
    let kubeconfig = env.kubeconfig_with("control-plane", &token, Some(&relay.url));
    let kubeconfig = kubeconfig.display().to_string();

    let w0 = kube_env::pod(&admin, OWN, "worker-0", "worker").await;
    let w1 = kube_env::pod(&admin, OWN, "worker-1", "worker").await;
    let job = kube_env::pod(&admin, "train", "job-0", "job").await;
    let mesh_policy = format!(
        "tenants:\n  - {{ namespace: train, origins: [\"synthetic://\"] }}\n\
         datasets:\n  - {{ name: imagenet, bucket: imagenet, origin: \"synthetic://?{SPEC}\", pool: cache-workers }}\n  \
         - {{ name: spare, bucket: spare, origin: \"synthetic://?{SPEC}\", pool: spare-pool }}\n"
    );
    apply(&admin, policy_map(OWN, "mesh", &mesh_policy)).await;
    apply(
        &admin,
        kube_env::pool_service(OWN, "workers", "cache-workers", json!({})),
    )
    .await;
    let members = |w1_uid: &str| {
        kube_env::slice(
            OWN,
            "workers-a",
            "workers",
            "IPv4",
            4143,
            &[
                Endpoint::ready("192.0.2.11", Some(("worker-0", w0.as_str()))),
                Endpoint::ready("192.0.2.12", Some(("worker-1", w1_uid))),
            ],
        )
    };
    apply(&admin, members(&w1)).await;

    let state = dir.path().join("plane");
    std::fs::create_dir_all(&state).expect("dir");
    let env_vars = [("KUBECONFIG", kubeconfig.as_str()), ("RUST_LOG", "warn")];
    let plane = ControlPlane::start_with(
        &state,
        &["--kubernetes", "--namespace", OWN],
        TOKENS,
        &env_vars,
    );
    let worker_0 = worker(
        &plane,
        "worker-token",
        WORKER_0,
        &["--admin", WORKER_0_ADMIN],
    );
    let worker_1 = worker(
        &plane,
        "worker-token",
        WORKER_1,
        &["--admin", WORKER_1_ADMIN],
    );
    let train = sidecar(&plane);
    let client = reqwest::Client::new();
    assert_eq!(read_all(&client, &train).await, (0, 0), "the mesh serves");

    // Defect 2: train's own Service, labelled with the mesh pool's name,
    // pointing at a worker on train's certificate that serves other bytes.
    let rogue = worker(
        &plane,
        "train-token",
        ROGUE,
        &[
            "--no-watch",
            "--origin",
            &format!("synthetic://?{ROGUE_SPEC}"),
            "--bucket",
            "imagenet",
        ],
    );
    kube_env::pool(
        &admin,
        "train",
        "rogue",
        "cache-workers",
        json!({}),
        &[Endpoint::ready("192.0.2.66", Some(("job-0", job.as_str())))],
    )
    .await;
    until(
        "the control plane has discovered the rogue endpoint",
        || async {
            policies(&plane).await["discovered_pools"]
                .as_array()
                .is_some_and(|pools| {
                    pools.iter().any(|p| {
                        p["members"]
                            .as_array()
                            .is_some_and(|m| m.contains(&json!(ROGUE)))
                    })
                })
        },
    )
    .await;
    // A sidecar with an empty cache, so every chunk is asked of the pool.
    let probe = sidecar(&plane);
    for _ in 0..2 {
        assert_eq!(
            read_all(&client, &probe).await,
            (0, 0),
            "only the origin's bytes"
        );
    }
    let rogue_requests = rogue
        .metric("request_total", &[("direction", "inbound")])
        .await;
    eprintln!(
        "rogue Service: 80 reads through a fresh sidecar, rogue worker requests {rogue_requests}"
    );
    assert_eq!(rogue_requests, 0.0, "the rogue worker got no request");
    let pools = json_at(probe.admin_url("/pools")).await;
    let serving: Vec<&str> = pools[0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["address"].as_str())
        .collect();
    assert_eq!(
        serving,
        [WORKER_0, WORKER_1],
        "the sidecar's pool is the mesh's"
    );
    drop(probe);

    // Defect 1: a data set on the worker's own files, from train's ConfigMap.
    let secret_dir = dir.path().join("worker-secrets");
    std::fs::create_dir_all(&secret_dir).expect("dir");
    std::fs::write(secret_dir.join("token"), "WORKER-TOKEN").expect("token");
    let steal = format!(
        "datasets:\n  - {{ name: secrets, bucket: secrets, origin: \"file://{}/\" }}\n",
        secret_dir.display()
    );
    apply(&admin, policy_map("train", "steal", &steal)).await;
    let message = event_about(&admin, "train", "ConfigMap", "steal", |m| {
        m.contains("file://")
    })
    .await;
    assert!(message.contains("mesh admin's alone"), "{message}");
    let stolen = client
        .get(train.url("/secrets/token"))
        .send()
        .await
        .expect("get");
    assert_eq!(stolen.status(), 404, "no such bucket");
    let text = stolen.text().await.expect("text");
    assert!(
        !text.contains("WORKER-TOKEN") && text.contains("NoSuchBucket"),
        "{text}"
    );
    let worker_config = json_at(worker_0.admin_url("/config")).await;
    assert!(
        !worker_config.to_string().contains("secrets"),
        "the worker never got it"
    );

    // Defect 3: a pool with no ready endpoint leaves the rest working, and a
    // sidecar started meanwhile becomes ready.
    let unready = Endpoint {
        ready: false,
        ..Endpoint::ready("192.0.2.20", Some(("worker-0", w0.as_str())))
    };
    kube_env::pool(&admin, OWN, "spare", "spare-pool", json!({}), &[unready]).await;
    until("the sidecar holds the empty pool", || async {
        json_at(train.admin_url("/pools"))
            .await
            .as_array()
            .is_some_and(|pools| pools.iter().any(|p| p["pool"] == "spare-pool"))
    })
    .await;
    let spare = client
        .get(train.url(&format!("/spare/{}", key_of(1))))
        .send()
        .await
        .expect("get");
    assert_eq!(spare.status(), 503);
    let text = spare.text().await.expect("text");
    assert!(
        text.contains("ServiceUnavailable") && text.contains("spare-pool"),
        "{text}"
    );
    assert_eq!(
        read_all(&client, &train).await,
        (0, 0),
        "the other data set works"
    );
    let late = sidecar(&plane);
    assert_eq!(
        read_all(&client, &late).await,
        (0, 0),
        "a new sidecar is ready and reads"
    );
    assert_eq!(train.metric("config_rejected_total", &[]).await, 0.0);

    // Defect 4: the control plane killed and restarted while reads go on,
    // its API server 0.4 s away: it is not ready before it has listed, and
    // the sidecar keeps its data sets and its cache.
    let chunks_before = cached_chunks(&train).await;
    let version_before = json_at(train.admin_url("/config")).await["control_plane"]["version"]
        .as_u64()
        .expect("version");
    let (listen, admin_port) = (
        plane.url.trim_start_matches("https://").to_owned(),
        plane.admin.clone(),
    );
    drop(plane);
    let reader = {
        let client = client.clone();
        let url = train.url("");
        tokio::spawn(async move { keep_reading(client, url, Duration::from_secs(6)).await })
    };
    let restarted = {
        let (state, listen, admin_port, kubeconfig) = (
            state.clone(),
            listen.clone(),
            admin_port.clone(),
            kubeconfig.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let env_vars = [("KUBECONFIG", kubeconfig.as_str()), ("RUST_LOG", "warn")];
            let flags = [
                "--kubernetes",
                "--namespace",
                OWN,
                "--listen",
                &listen,
                "--admin",
                &admin_port,
            ];
            ControlPlane::start_with(&state, &flags, TOKENS, &env_vars)
        })
    };
    let first = first_ready_answer(&admin_port).await;
    assert_eq!(
        first, 503,
        "the restarted control plane is not ready before it has listed"
    );
    let plane = restarted.await.expect("the control plane restarted");
    until("the sidecar watches again, at a higher version", || async {
        let status = &json_at(train.admin_url("/config")).await["control_plane"];
        status["connected"] == true && status["version"].as_u64() > Some(version_before)
    })
    .await;
    let (reads, failed, wrong) = reader.await.expect("reader");
    let chunks_after = cached_chunks(&train).await;
    eprintln!(
        "control plane restart: first /ready {first}; {reads} reads, {failed} failed, {wrong} wrong; \
         sidecar chunks {chunks_before} before, {chunks_after} after"
    );
    assert!(reads > 100, "reads went on: {reads}");
    assert_eq!(
        (failed, wrong),
        (0, 0),
        "none of {reads} reads failed or was wrong"
    );
    let config = json_at(train.admin_url("/config")).await;
    let names: Vec<&str> = config["datasets"]
        .as_array()
        .expect("datasets")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["imagenet", "spare"],
        "the first snapshot after the restart is whole"
    );
    assert!(
        chunks_after >= chunks_before,
        "the cache was kept ({chunks_before} chunks before)"
    );

    // Defect 5: worker-1's Pod re-created under the same name with another
    // service account; its new identity reaches the sidecar.
    drop(worker_1);
    kube_env::delete(&admin, "v1", "Pod", OWN, "worker-1").await;
    let new_uid = kube_env::pod(&admin, OWN, "worker-1", "cache").await;
    let worker_1 = worker(
        &plane,
        "cache-token",
        WORKER_1,
        &["--admin", WORKER_1_ADMIN],
    );
    apply(&admin, members(&new_uid)).await;
    let cache = "spiffe://cluster.local/ns/ferry-system/sa/cache";
    until("the sidecar expects worker-1's new identity", || async {
        let config = json_at(train.admin_url("/config")).await;
        config["pools"].as_array().is_some_and(|pools| {
            pools.iter().any(|p| {
                p["members"].as_array().is_some_and(|members| {
                    members
                        .iter()
                        .any(|m| m["address"] == WORKER_1 && m["identity"] == cache)
                })
            })
        })
    })
    .await;
    let fresh = sidecar(&plane);
    assert_eq!(read_all(&client, &fresh).await, (0, 0));
    assert!(
        worker_1
            .metric("request_total", &[("direction", "inbound")])
            .await
            > 0.0,
        "the re-created worker serves its chunks"
    );
    assert_eq!(
        fresh
            .metric("upstream_identity_mismatches_total", &[])
            .await,
        0.0
    );

    // A warm-up ordered through one replica reaches the workers watching
    // another: the replicas share orders through a ConfigMap.
    let state_b = dir.path().join("plane-b");
    std::fs::create_dir_all(&state_b).expect("dir");
    let replica = tokio::task::spawn_blocking(move || {
        let env_vars = [("KUBECONFIG", kubeconfig.as_str()), ("RUST_LOG", "warn")];
        ControlPlane::start_with(
            &state_b,
            &["--kubernetes", "--namespace", OWN],
            TOKENS,
            &env_vars,
        )
    })
    .await
    .expect("the second replica started");
    let ordered = client
        .post(format!("http://{}/warm/imagenet", plane.admin))
        .send()
        .await
        .expect("order");
    assert_eq!(ordered.status(), reqwest::StatusCode::ACCEPTED);
    let order: Value =
        serde_json::from_slice(&ordered.bytes().await.expect("body")).expect("the order");
    until("the other replica takes up the order", || async {
        let seen = policies(&replica).await;
        seen["warm_orders"]
            .as_array()
            .is_some_and(|orders| orders.iter().any(|o| o["id"] == order["id"]))
    })
    .await;
    // ferryctl through that replica follows both workers, though neither
    // watches it: it knows them from the pool's slices (their admin port).
    let followed = std::process::Command::new(common::ferryctl_binary())
        .args(["warm", "imagenet", "--status", "-o", "json"])
        .args(["--control-plane-admin", &replica.admin])
        .output()
        .expect("run ferryctl");
    let report: Value = serde_json::from_slice(&followed.stdout).unwrap_or_else(|e| {
        panic!(
            "ferryctl warm printed no JSON ({e}): {}",
            String::from_utf8_lossy(&followed.stderr)
        )
    });
    let workers = report["workers"].as_object().expect("workers");
    assert!(
        workers.contains_key(WORKER_0_ADMIN) && workers.contains_key(WORKER_1_ADMIN),
        "{report}"
    );
    assert_eq!(report["totals"]["objects_done"], 40, "{report}");
    assert_eq!(report["totals"]["workers_not_followed"], 0, "{report}");
    drop(worker_0);
}

/// Chunks in the sidecar's memory, over its data sets.
async fn cached_chunks(sidecar: &ProxyProcess) -> u64 {
    json_at(sidecar.admin_url("/cache"))
        .await
        .as_array()
        .map_or(0, |sets| {
            sets.iter().filter_map(|d| d["chunks"].as_u64()).sum()
        })
}

/// Reads objects through the front door at `base` for `length`; (reads,
/// failed, wrong bytes).
async fn keep_reading(
    client: reqwest::Client,
    base: String,
    length: Duration,
) -> (usize, usize, usize) {
    let started = Instant::now();
    let (mut reads, mut failed, mut wrong) = (0, 0, 0);
    let mut index = 0u64;
    while started.elapsed() < length {
        match read_one(&client, &base, index).await {
            Read::Right => {}
            Read::Wrong => wrong += 1,
            Read::Failed => failed += 1,
        }
        reads += 1;
        index = (index + 1) % 40;
    }
    (reads, failed, wrong)
}

/// The status of the first answer of the control plane's `/ready`, waiting
/// for its admin port to be bound.
async fn first_ready_answer(admin: &str) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = reqwest::get(format!("http://{admin}/ready")).await {
            return response.status().as_u16();
        }
        assert!(Instant::now() < deadline, "the admin port never answered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
