//! The metrics a proxy exports after a scripted workload: the counters say
//! exactly what the workload did, and the exposition is valid Prometheus
//! text where every family has its HELP and TYPE.

mod common;

use common::ProxyProcess;
use ferry_config::SyntheticSpec;
use ferry_config::exposition::quantile;

const SPEC: &str = "count=10&size=20KiB&seed=5&dist=fixed";

#[tokio::test(flavor = "multi_thread")]
async fn counters_match_the_workload_and_the_exposition_is_valid() {
    let origin = format!("synthetic://?{SPEC}");
    let worker = ProxyProcess::start(&["worker", "--origin", &origin, "--bucket", "imagenet"]);
    let spec = SyntheticSpec::from_query(SPEC).expect("spec");
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        async move {
            let response = client.get(path).send().await.expect("get");
            let status = response.status().as_u16();
            (status, response.bytes().await.expect("body").len() as u64)
        }
    };
    let mut bytes = 0;
    // Ten misses, then the same ten objects again: ten hits.
    for round in 0..2 {
        for index in 0..10 {
            let (status, len) = get(worker.url(&format!("/imagenet/{}", spec.key(index)))).await;
            assert_eq!(status, 200, "round {round}, object {index}");
            bytes += len;
        }
    }
    // One range of a cached object: a hit.
    let ranged = client
        .get(worker.url(&format!("/imagenet/{}", spec.key(3))))
        .header("range", "bytes=0-99")
        .send()
        .await
        .expect("range");
    assert_eq!(ranged.status().as_u16(), 206);
    bytes += ranged.bytes().await.expect("body").len() as u64;
    // Three objects that do not exist, two HEADs.
    for _ in 0..3 {
        let (status, len) = get(worker.url("/imagenet/missing.jpg")).await;
        assert_eq!(status, 404);
        bytes += len; // the S3 error document is served too
    }
    for _ in 0..2 {
        let head = client
            .head(worker.url(&format!("/imagenet/{}", spec.key(1))))
            .send()
            .await
            .expect("head");
        assert_eq!(head.status().as_u16(), 200);
    }

    let metrics = common::described_metrics(&worker.admin_url("/metrics")).await;
    let outbound = [("dataset", "imagenet"), ("direction", "outbound")];
    assert_eq!(metrics.sum("request_total", &outbound), 26.0);
    let responses = |code: &str| {
        metrics.sum(
            "response_total",
            &[
                ("dataset", "imagenet"),
                ("direction", "outbound"),
                ("status_code", code),
            ],
        )
    };
    assert_eq!(responses("200"), 22.0, "20 GETs and 2 HEADs");
    assert_eq!(responses("206"), 1.0);
    assert_eq!(responses("404"), 3.0);
    assert_eq!(
        metrics.sum("response_total", &[("classification", "failure")]),
        0.0,
        "a 404 is the service working"
    );
    assert_eq!(metrics.sum("response_bytes_total", &outbound), bytes as f64);
    let memory = [("dataset", "imagenet"), ("tier", "memory")];
    assert_eq!(metrics.sum("cache_misses_total", &memory), 10.0);
    assert_eq!(metrics.sum("cache_hits_total", &memory), 11.0);
    assert_eq!(
        metrics.sum(
            "origin_requests_total",
            &[("dataset", "imagenet"), ("op", "get")]
        ),
        10.0,
        "each object fetched once"
    );
    let latency = metrics.buckets("response_latency_seconds", &outbound);
    assert_eq!(
        latency.last().map(|b| b.1),
        Some(26.0),
        "every request timed"
    );
    assert!(
        latency.first().is_some_and(|b| b.0 == 0.0001),
        "buckets start at 100 µs"
    );
    assert!(latency.iter().any(|b| b.0 == 10.0), "and reach 10 s");
    assert!(quantile(&latency, 0.99).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_exports_its_upstream_metrics_with_help() {
    let origin = format!("synthetic://?{SPEC}");
    let worker = ProxyProcess::start(&["worker", "--origin", &origin, "--bucket", "imagenet"]);
    let pool = worker.inbound.expect("inbound").to_string();
    let sidecar = ProxyProcess::start(&["sidecar", "--pool", &pool, "--bucket", "imagenet"]);
    let spec = SyntheticSpec::from_query(SPEC).expect("spec");
    for index in 0..5 {
        let status = reqwest::get(sidecar.url(&format!("/imagenet/{}", spec.key(index))))
            .await
            .expect("get")
            .status();
        assert_eq!(status.as_u16(), 200);
    }
    let metrics = common::described_metrics(&sidecar.admin_url("/metrics")).await;
    // Five chunks, and the metadata (a HEAD, the background listing).
    let upstream = metrics.sum("upstream_requests_total", &[("member", pool.as_str())]);
    assert!(upstream >= 5.0, "{upstream}");
    let timed = metrics.buckets("upstream_response_latency_seconds", &[]);
    assert_eq!(
        timed.last().map(|b| b.1),
        Some(upstream),
        "every upstream request timed"
    );
}
