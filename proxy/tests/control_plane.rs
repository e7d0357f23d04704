//! Policies and pools from the control plane's file source, streamed to real
//! proxies that were given nothing but the control plane's address: changes
//! reach a running sidecar, a broken file changes nothing, and reads go on
//! while the control plane is away.

mod common;

use std::time::{Duration, Instant};

use common::plane::{ControlPlane, datasets_yaml, write_policy};
use common::{ProxyProcess, TempDir, get_json};
use ferry_config::SyntheticSpec;
use reqwest::StatusCode;

const SPEC: &str = "count=20&size=20KiB&seed=9";

fn expected(index: u64) -> Vec<u8> {
    common::synthetic_object(SPEC, index)
}

fn key_of(index: u64) -> String {
    SyntheticSpec::from_query(SPEC).expect("spec").key(index)
}

fn pools_yaml(worker: &ProxyProcess) -> String {
    format!(
        "pools:\n  - name: workers\n    identity: spiffe://cluster.local/ns/ferry/sa/worker\n    \
         members: [{{ address: \"{}\" }}]\n    balance: {{ hedge: off }}\n",
        worker.inbound.expect("inbound")
    )
}

/// A proxy in `role` that knows only the control plane.
fn proxy(plane: &ControlPlane, role: &str, token: &str) -> ProxyProcess {
    let mut args = vec![role.to_owned()];
    args.extend(plane.flags(token));
    ProxyProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

async fn get(
    client: &reqwest::Client,
    proxy: &ProxyProcess,
    bucket: &str,
    index: u64,
) -> StatusCode {
    let response = client
        .get(proxy.url(&format!("/{bucket}/{}", key_of(index))))
        .send()
        .await
        .expect("get");
    let status = response.status();
    if status == StatusCode::OK {
        assert!(
            response.bytes().await.expect("body")[..] == expected(index)[..],
            "{bucket}/{index}: the bytes of the object"
        );
    }
    status
}

/// Polls `check` every 20 ms until it holds or `limit` passes; the time it took.
async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_files_drive_running_proxies_and_reads_outlive_the_control_plane() {
    let dir = TempDir::new("cp-files");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "datasets.yaml",
        &datasets_yaml(&["imagenet"], SPEC),
    );
    let config_dir = policies.to_str().expect("path").to_owned();
    let plane = ControlPlane::start(dir.path(), &["--config-dir", &config_dir]);
    let worker = proxy(&plane, "worker", "worker-token");
    write_policy(&policies, "pools.yaml", &pools_yaml(&worker));
    let sidecar = proxy(&plane, "sidecar", "train-token");
    let client = reqwest::Client::new();

    // The sidecar serves what the files define, read through the worker.
    assert_eq!(get(&client, &sidecar, "imagenet", 1).await, StatusCode::OK);
    let version = |config: &serde_json::Value| config["control_plane"]["version"].as_u64();
    let before =
        version(&get_json(&client, sidecar.admin_url("/config")).await).expect("a version");

    // A new data set in the file reaches the running sidecar.
    write_policy(
        &policies,
        "datasets.yaml",
        &datasets_yaml(&["imagenet", "imagenet-val"], SPEC),
    );
    let took = wait_until(Duration::from_secs(10), || async {
        get(&client, &sidecar, "imagenet-val", 2).await == StatusCode::OK
    })
    .await
    .expect("the new data set is served");
    eprintln!("policy change applied by the sidecar after {took:?}");
    let after = version(&get_json(&client, sidecar.admin_url("/config")).await).expect("a version");
    assert!(after > before, "version {before} → {after}");

    // A broken file is refused with its location; the last good policy stays.
    write_policy(
        &policies,
        "datasets.yaml",
        "datasets:\n  - name: imagenet\n    bucket: imagenet\n    chunk_size: 3 bananas\n",
    );
    let refused = wait_until(Duration::from_secs(10), || async {
        let report = get_json(&client, format!("http://{}/policies", plane.admin)).await;
        !report["refused"].as_array().expect("refused").is_empty()
    })
    .await;
    assert!(refused.is_some(), "the broken file is refused");
    let report = get_json(&client, format!("http://{}/policies", plane.admin)).await;
    let message = report["refused"][0]["message"].as_str().expect("message");
    assert!(
        message.contains("datasets.yaml:4:") && message.contains("datasets[0].chunk_size"),
        "the refusal names file, line and field: {message}"
    );
    for bucket in ["imagenet", "imagenet-val"] {
        assert_eq!(
            get(&client, &sidecar, bucket, 3).await,
            StatusCode::OK,
            "{bucket} still served"
        );
    }
    let kept = version(&get_json(&client, sidecar.admin_url("/config")).await).expect("a version");
    assert_eq!(kept, after, "nothing new was published");

    // The control plane goes away: reads go on from the last good snapshot.
    let port = plane.url.rsplit(':').next().expect("port").to_owned();
    drop(plane);
    let disconnected = wait_until(Duration::from_secs(10), || async {
        sidecar.metric("control_plane_connected", &[]).await == 0.0
    })
    .await;
    assert!(disconnected.is_some(), "the sidecar noticed");
    // As long as the issue asks: 30 s is past the watch's longest backoff
    // (15 s), so the proxies are well into retrying when it comes back.
    let started = Instant::now();
    let (mut reads, mut failed) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(30) {
        for bucket in ["imagenet", "imagenet-val"] {
            if get(&client, &sidecar, bucket, reads % 20).await != StatusCode::OK {
                failed += 1;
            }
            reads += 1;
        }
    }
    assert_eq!(
        failed, 0,
        "{failed} of {reads} reads failed while the control plane was down"
    );
    eprintln!("{reads} reads, none failed, during the 30 s outage");

    // Back on the same address, the file still broken: the proxies
    // subscribe again and get the last good policy, saved by the first run.
    let listen = format!("127.0.0.1:{port}");
    let plane = ControlPlane::start(
        dir.path(),
        &["--config-dir", &config_dir, "--listen", &listen],
    );
    for proxy in [&sidecar, &worker] {
        let back = wait_until(Duration::from_secs(30), || async {
            proxy.metric("control_plane_connected", &[]).await == 1.0
        })
        .await;
        assert!(back.is_some(), "resubscribed");
    }
    let report = get_json(&client, format!("http://{}/policies", plane.admin)).await;
    assert_eq!(
        report["refused"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    for bucket in ["imagenet", "imagenet-val"] {
        assert_eq!(
            get(&client, &sidecar, bucket, 4).await,
            StatusCode::OK,
            "{bucket} after the restart"
        );
    }
    // Fixed, and shrunk to one data set: the sidecar follows.
    write_policy(
        &policies,
        "datasets.yaml",
        &datasets_yaml(&["imagenet"], SPEC),
    );
    let gone = wait_until(Duration::from_secs(10), || async {
        get(&client, &sidecar, "imagenet-val", 5).await == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone.is_some(), "the removed data set is no longer served");
    assert_eq!(get(&client, &sidecar, "imagenet", 5).await, StatusCode::OK);
    drop(plane);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_leaving_the_pool_finishes_what_it_started_and_gets_nothing_new() {
    let objects: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("k{i}.bin"), common::test_bytes(i, 50_000)))
        .collect();
    let origin = common::TestOrigin::start(
        objects
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect(),
    )
    .await;
    let dir = TempDir::new("cp-drain");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "datasets.yaml",
        &format!(
            "datasets:\n  - name: drain\n    bucket: drain\n    origin: \"http://{}/\"\n    pool: workers\n",
            origin.addr
        ),
    );
    let config_dir = policies.to_str().expect("path").to_owned();
    let plane = ControlPlane::start(dir.path(), &["--config-dir", &config_dir]);
    let leaving = proxy(&plane, "worker", "worker-token");
    let staying = proxy(&plane, "worker", "worker-token");
    write_policy(&policies, "pools.yaml", &pools_yaml(&leaving));
    let sidecar = proxy(&plane, "sidecar", "train-token");
    let client = reqwest::Client::new();
    let read = |key: &'static str| {
        let client = client.clone();
        let url = sidecar.url(&format!("/drain/{key}"));
        async move {
            let response = client.get(url).send().await.expect("get");
            (response.status(), response.bytes().await.expect("body"))
        }
    };
    // A slow read starts on the worker about to leave.
    *origin.state.delay.lock().expect("lock") = Duration::from_millis(1500);
    let in_flight = tokio::spawn(read("k1.bin"));
    let started = wait_until(Duration::from_secs(10), || async {
        origin.state.gets_of("k1.bin") > 0
    })
    .await;
    assert!(started.is_some(), "the worker is fetching k1");
    // The pool now holds only the other worker.
    write_policy(&policies, "pools.yaml", &pools_yaml(&staying));
    let staying_address = staying.inbound.expect("inbound").to_string();
    let switched = wait_until(Duration::from_secs(10), || async {
        let pools = get_json(&client, sidecar.admin_url("/pools")).await;
        let members = &pools[0]["members"];
        members.as_array().map(Vec::len) == Some(1)
            && members[0]["address"] == staying_address.as_str()
    })
    .await;
    assert!(switched.is_some(), "the sidecar's pool changed");
    let (status, body) = in_flight.await.expect("task");
    assert_eq!(status, StatusCode::OK, "the request in flight finished");
    assert!(body[..] == objects[1].1[..], "with the right bytes");
    *origin.state.delay.lock().expect("lock") = Duration::ZERO;
    let (status, body) = read("k2.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[..] == objects[2].1[..]);
    let to_staying = sidecar
        .metric(
            "upstream_requests_total",
            &[("member", staying_address.as_str())],
        )
        .await;
    assert!(to_staying >= 1.0, "new chunks go to the worker that stays");
    let leaving_address = leaving.inbound.expect("inbound").to_string();
    let to_leaving = sidecar
        .metric(
            "upstream_requests_total",
            &[("member", leaving_address.as_str())],
        )
        .await;
    assert!(
        to_leaving >= 1.0,
        "the leaving worker served the read in flight"
    );
    let leaving_inbound = leaving
        .metric("request_total", &[("direction", "inbound")])
        .await;
    assert!(leaving_inbound >= 1.0, "its inbound requests are counted");
    let _ = read("k0.bin").await;
    assert_eq!(
        leaving
            .metric("request_total", &[("direction", "inbound")])
            .await,
        leaving_inbound,
        "nothing new reaches the worker that left"
    );
}
