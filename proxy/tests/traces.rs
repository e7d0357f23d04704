//! Traces from real processes to an OTLP/HTTP receiver: one read is one
//! trace from the app's `traceparent` through the sidecar, the worker and
//! the origin fetch; a collector that never answers costs reads nothing.

mod common;

use std::time::Duration;

use common::otlp::{OtlpReceiver, ReceivedSpan};
use common::{ProxyProcess, TestOrigin, test_bytes};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.trace_id == TRACE && s.service == service && s.name == name)
}

/// Whether `span` descends from the span `ancestor` (both in `spans`).
fn descends(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &str) -> bool {
    let mut parent = span.parent.clone();
    for _ in 0..32 {
        if parent == ancestor {
            return true;
        }
        match spans.iter().find(|s| s.span_id == parent) {
            Some(next) => parent = next.parent.clone(),
            None => return false,
        }
    }
    false
}

/// The trace as an indented tree, for the test's output.
fn tree(spans: &[ReceivedSpan], parent: &str, depth: usize, out: &mut String) {
    for span in spans
        .iter()
        .filter(|s| s.trace_id == TRACE && s.parent == parent)
    {
        let mut attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        attributes.sort();
        out.push_str(&format!(
            "{}{} [{}] {}\n",
            "  ".repeat(depth),
            span.name,
            span.service,
            attributes.join(" ")
        ));
        tree(spans, &span.span_id, depth + 1, out);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_read_is_one_trace_across_sidecar_worker_and_origin() {
    let receiver = OtlpReceiver::start().await;
    let origin = TestOrigin::start(vec![("photo.jpg", test_bytes(1, 30_000))]).await;
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str())];
    let origin_url = format!("http://{}/", origin.addr);
    let worker = ProxyProcess::start_with_env(
        &["worker", "--origin", &origin_url, "--bucket", "imagenet"],
        &env,
    );
    let pool = worker.inbound.expect("inbound").to_string();
    let sidecar = ProxyProcess::start_with_env(
        &[
            "sidecar", "--pool", &pool, "--bucket", "imagenet", "--hedge", "off",
        ],
        &env,
    );
    let response = reqwest::Client::new()
        .get(sidecar.url("/imagenet/photo.jpg"))
        .header("traceparent", format!("00-{TRACE}-{APP_SPAN}-01"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.expect("body")[..] == test_bytes(1, 30_000)[..]);

    let complete = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            find(spans, "ferry-worker", "origin fetch").is_some()
                && find(spans, "ferry-sidecar", "request").is_some()
        })
        .await;
    let spans = receiver.spans();
    let mut printed = String::new();
    tree(&spans, APP_SPAN, 0, &mut printed);
    eprintln!("trace {TRACE} from the app's span {APP_SPAN}:\n{printed}");
    assert!(complete, "spans from both processes arrived: {spans:#?}");

    let request = find(&spans, "ferry-sidecar", "request").expect("sidecar request");
    assert_eq!(
        request.parent, APP_SPAN,
        "the sidecar continues the app's trace"
    );
    let attempt = spans
        .iter()
        .find(|s| {
            s.trace_id == TRACE
                && s.name == "upstream attempt"
                && s.attributes
                    .get("what")
                    .is_some_and(|w| w.starts_with("bytes"))
        })
        .expect("an upstream attempt for the chunk");
    assert_eq!(attempt.attributes.get("worker"), Some(&pool));
    assert_eq!(
        attempt.attributes.get("attempt").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        attempt.attributes.get("hedged").map(String::as_str),
        Some("false")
    );
    assert!(
        descends(&spans, attempt, &request.span_id),
        "the attempt is under the request"
    );
    let worker_request = spans
        .iter()
        .find(|s| s.service == "ferry-worker" && s.name == "request" && s.parent == attempt.span_id)
        .expect("the worker's request is the attempt's child, across the hop");
    assert_eq!(worker_request.trace_id, TRACE);
    let fetch = find(&spans, "ferry-worker", "origin fetch").expect("origin fetch");
    assert!(
        descends(&spans, fetch, &worker_request.span_id),
        "the origin fetch is the worker's"
    );
    let lookup = find(&spans, "ferry-worker", "cache lookup").expect("cache lookup");
    assert_eq!(
        lookup.attributes.get("outcome").map(String::as_str),
        Some("miss")
    );
    assert!(find(&spans, "ferry-worker", "chunk fetch").is_some());

    // Read again in a new trace: the sidecar's memory has the chunk, so the
    // request span records the hit and the trace has no lookup, fetch or hop.
    const HIT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .get(sidecar.url("/imagenet/photo.jpg"))
        .header("traceparent", format!("00-{HIT_TRACE}-{APP_SPAN}-01"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status().as_u16(), 200);
    let arrived = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| s.trace_id == HIT_TRACE)
        })
        .await;
    assert!(arrived, "the cached read's trace arrived");
    let spans = receiver.spans();
    let hit: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == HIT_TRACE).collect();
    assert_eq!(hit.len(), 1, "a memory hit is one span: {hit:#?}");
    assert_eq!(hit[0].name, "request");
    assert_eq!(
        hit[0].attributes.get("cache.outcome").map(String::as_str),
        Some("hit")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_never_answers_drops_spans_and_reads_go_on() {
    let (stalled, _collector) = OtlpReceiver::stalled().await;
    let worker = ProxyProcess::start_with_env(
        &[
            "worker",
            "--origin",
            "synthetic://?count=4&size=4KiB",
            "--bucket",
            "imagenet",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", stalled.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ],
    );
    let client = reqwest::Client::new();
    let spec = ferry_config::SyntheticSpec::from_query("count=4&size=4KiB").expect("spec");
    // One span per cached read: 6,000 are more than the export queue (4,096)
    // and the batch stuck in the stalled export (512) hold.
    use futures::StreamExt as _;
    let statuses: Vec<u16> = futures::stream::iter(0..6_000u64)
        .map(|read| {
            let request = client.get(worker.url(&format!("/imagenet/{}", spec.key(read % 4))));
            async move { request.send().await.map(|r| r.status().as_u16()) }
        })
        .buffer_unordered(8)
        .map(|status| status.expect("get"))
        .collect()
        .await;
    assert!(statuses.iter().all(|&s| s == 200), "every read succeeds");
    // Every read past what the queue and the stuck batch hold is either a
    // span dropped or a request left untraced, and each is counted.
    let dropped = worker.metric("trace_spans_dropped_total", &[]).await;
    assert!(
        dropped >= (6_000 - 4_096 - 512) as f64,
        "spans beyond the queue are dropped and counted: {dropped}"
    );
    assert_eq!(worker.metric("trace_spans_exported_total", &[]).await, 0.0);
}
