//! Overload as real processes: a full listener answers 503 `SlowDown` with
//! `Retry-After` after a bounded wait, response bytes held by slow clients
//! count against the memory bound, a sidecar passes a worker's `SlowDown` on
//! without ejecting it, and boto3 backs off and gets every byte.

mod common;

use std::process::Command;

use common::{ProxyProcess, python, require_python_modules};
use reqwest::StatusCode;

/// Every read waits 300 ms at the origin, so two slots stay taken.
const SLOW: &str = "count=16&size=20KiB&seed=3&latency=300ms";

fn worker(spec: &str, extra: &[&str]) -> ProxyProcess {
    let origin = format!("synthetic://?{spec}");
    let mut args = vec![
        "worker",
        "--origin",
        &origin,
        "--bucket",
        "data",
        "--cache-size",
        "0",
    ];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

/// Sends `gets` concurrent GETs of distinct objects to `base`; returns each
/// answer's status, `Retry-After`, error code and whether the body is right.
async fn burst(base: &str, spec: &str, gets: u64) -> Vec<(StatusCode, Option<String>, bool)> {
    let client = reqwest::Client::new();
    let synthetic = ferry_config::SyntheticSpec::from_query(spec).expect("spec");
    let mut tasks = Vec::new();
    for index in 0..gets {
        let client = client.clone();
        let url = format!("{base}/data/{}", synthetic.key(index));
        let want = common::synthetic_object(spec, index);
        tasks.push(tokio::spawn(async move {
            let response = client.get(&url).send().await.expect("get");
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let code = response
                .headers()
                .get("x-amz-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.bytes().await.expect("body");
            let right = status != StatusCode::OK || body[..] == want[..];
            let described = match code {
                Some(code) => Some(format!("{code} retry-after={retry_after:?}")),
                None => retry_after,
            };
            (status, described, right)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_listener_says_slow_down_and_a_sidecar_passes_it_on_without_ejecting() {
    let worker = worker(SLOW, &["--max-requests", "2", "--admission-wait", "50ms"]);
    let answers = burst(&format!("http://{}", worker.listen), SLOW, 8).await;
    let ok = answers.iter().filter(|a| a.0 == StatusCode::OK).count();
    let slowed: Vec<_> = answers
        .iter()
        .filter(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(answers.iter().all(|a| a.2), "every 200 has the right bytes");
    assert_eq!(ok + slowed.len(), 8, "only 200 or 503: {answers:?}");
    assert!(ok >= 2, "the two slots served: {answers:?}");
    assert!(
        !slowed.is_empty(),
        "8 reads at 2 slots: some told to slow down"
    );
    for answer in &slowed {
        assert_eq!(
            answer.1.as_deref(),
            Some("SlowDown retry-after=Some(\"1\")"),
            "503 SlowDown with Retry-After"
        );
    }
    let refused = worker
        .metric(
            "admission_refused_total",
            &[("direction", "outbound"), ("limit", "requests")],
        )
        .await;
    assert_eq!(refused, slowed.len() as f64, "each refusal is counted");

    // The same burst through a sidecar: the worker's inbound listener has
    // the same two slots; the sidecar passes SlowDown on and keeps the worker.
    let inbound = worker.inbound.expect("inbound").to_string();
    let sidecar = ProxyProcess::start(&[
        "sidecar",
        "--pool",
        &inbound,
        "--bucket",
        "data",
        "--cache-size",
        "0",
    ]);
    let answers = burst(&format!("http://{}", sidecar.listen), SLOW, 8).await;
    assert!(answers.iter().all(|a| a.2), "every 200 has the right bytes");
    let slowed = answers
        .iter()
        .filter(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(
        slowed > 0,
        "the worker's SlowDown reaches the app: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|a| a.0 == StatusCode::SERVICE_UNAVAILABLE)
            .all(|a| a.1.as_deref() == Some("SlowDown retry-after=Some(\"1\")")),
        "as SlowDown with Retry-After: {answers:?}"
    );
    let member = [("member", inbound.as_str())];
    assert!(sidecar.metric("upstream_slowdowns_total", &member).await >= 1.0);
    assert_eq!(
        sidecar.metric("upstream_ejections_total", &member).await,
        0.0,
        "back-pressure is not a failure"
    );
    assert_eq!(
        sidecar.metric("upstream_member_ejected", &member).await,
        0.0
    );
    // Unloaded, every object reads right through the same worker.
    let client = reqwest::Client::new();
    let synthetic = ferry_config::SyntheticSpec::from_query(SLOW).expect("spec");
    for index in 0..synthetic.count {
        let body = client
            .get(sidecar.url(&format!("/data/{}", synthetic.key(index))))
            .send()
            .await
            .expect("get")
            .error_for_status()
            .expect("200")
            .bytes()
            .await
            .expect("body");
        assert!(body[..] == common::synthetic_object(SLOW, index)[..]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_holds_response_bytes_until_it_goes() {
    // One 64 MiB object: more than the socket buffers take, so a client
    // that reads nothing keeps its body (and its reservation) in the proxy.
    const BIG: &str = "count=2&size=64MiB&seed=9";
    let worker = worker(
        BIG,
        &["--inflight-memory", "1MiB", "--admission-wait", "100ms"],
    );
    let synthetic = ferry_config::SyntheticSpec::from_query(BIG).expect("spec");
    let url = |index: u64| format!("http://{}/data/{}", worker.listen, synthetic.key(index));
    let client = reqwest::Client::new();
    let stalled = client.get(url(0)).send().await.expect("get");
    assert_eq!(stalled.status(), StatusCode::OK);
    let refused = client.get(url(1)).send().await.expect("get");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused
            .headers()
            .get("x-amz-error-code")
            .map(|v| v.as_bytes()),
        Some(&b"SlowDown"[..])
    );
    assert_eq!(
        worker
            .metric(
                "admission_refused_total",
                &[("direction", "outbound"), ("limit", "memory")]
            )
            .await,
        1.0
    );
    drop(stalled);
    // The abandoned body goes with its connection, and its bytes with it.
    let body = client
        .get(url(1))
        .header("range", "bytes=0-99999")
        .send()
        .await
        .expect("get")
        .error_for_status()
        .expect("admitted once the stalled client left")
        .bytes()
        .await
        .expect("body");
    assert!(body[..] == common::synthetic_object(BIG, 1)[..100_000]);
    assert_eq!(
        worker
            .metric("admission_requests_in_flight", &[("direction", "outbound")])
            .await,
        0.0,
        "every finished response gave its slot back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_backs_off_on_slow_down_and_reads_every_object() {
    require_python_modules(&["boto3"]);
    let worker = worker(SLOW, &["--max-requests", "1", "--admission-wait", "20ms"]);
    let script = r#"
import sys, concurrent.futures, boto3, botocore.config
endpoint, count = sys.argv[1], int(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
    aws_access_key_id="x", aws_secret_access_key="x",
    config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 20},
                                  max_pool_connections=16))
listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="data")["Contents"][:count]}
def get(key):
    return key, len(s3.get_object(Bucket="data", Key=key)["Body"].read())
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    sizes = dict(pool.map(get, listed))
assert sizes == listed, (sizes, listed)
print(len(sizes))
"#;
    let output = Command::new(python())
        .args(["-c", script, &format!("http://{}", worker.listen), "8"])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "boto3 failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let refused = worker
        .metric("admission_refused_total", &[("direction", "outbound")])
        .await;
    assert!(
        refused >= 1.0,
        "8 readers at one slot were refused and retried: {refused}"
    );
}
