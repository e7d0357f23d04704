//! Prefetch in the sampler's order, with real processes: a sidecar over a
//! worker over a slow synthetic origin. Reads in a posted order find their
//! chunks fetched; a reader that goes another way still reads the right
//! bytes; a new order replaces the old; bad requests get clear 4xx errors.

mod common;

use std::time::{Duration, Instant};

use common::ProxyProcess;
use ferry_config::SyntheticSpec;
use ferry_proxy::prefetch::order::shuffle;
use reqwest::StatusCode;
use serde_json::Value;

const SPEC: &str = "count=200&size=30KiB&seed=9&latency=20ms";

fn spec() -> SyntheticSpec {
    SyntheticSpec::from_query(SPEC).expect("spec")
}

/// A worker over the slow origin and a sidecar with no hot cache, so a
/// hit can only be a chunk fetched ahead.
fn mesh(sidecar_extra: &[&str]) -> (ProxyProcess, ProxyProcess) {
    mesh_over(SPEC, sidecar_extra)
}

/// A worker over the synthetic origin `query` and a sidecar with no hot cache.
fn mesh_over(query: &str, sidecar_extra: &[&str]) -> (ProxyProcess, ProxyProcess) {
    let origin = format!("synthetic://?{query}");
    let worker = ProxyProcess::start(&["worker", "--origin", &origin, "--bucket", "data"]);
    let pool = worker.inbound.expect("inbound").to_string();
    let mut args = vec![
        "sidecar",
        "--pool",
        &pool,
        "--bucket",
        "data",
        "--cache-size",
        "0",
    ];
    args.extend_from_slice(sidecar_extra);
    (worker, ProxyProcess::start(&args))
}

async fn post(
    proxy: &ProxyProcess,
    bucket: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(proxy.url(&format!("/v1/prefetch/{bucket}")))
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("a JSON answer"),
    )
}

async fn status(proxy: &ProxyProcess) -> (StatusCode, Value) {
    let response = reqwest::get(proxy.url("/v1/prefetch/data"))
        .await
        .expect("get");
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("a JSON answer"),
    )
}

/// Polls the order's progress until `done` (bounded: never a fixed sleep).
async fn wait_for(proxy: &ProxyProcess, done: impl Fn(&Value) -> bool) -> Value {
    common::poll_json("the prefetcher", || status(proxy), done).await
}

async fn read(proxy: &ProxyProcess, index: u64) {
    let key = spec().key(index);
    let response = reqwest::get(proxy.url(&format!("/data/{key}")))
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK, "{key}");
    let body = response.bytes().await.expect("body");
    assert!(
        body[..] == common::synthetic_object(SPEC, index)[..],
        "{key}: wrong bytes"
    );
}

async fn memory(proxy: &ProxyProcess) -> (f64, f64) {
    let labels = [("dataset", "data"), ("tier", "memory")];
    (
        proxy.metric("cache_hits_total", &labels).await,
        proxy.metric("cache_misses_total", &labels).await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_in_the_posted_order_hit() {
    let (worker, proxy) = mesh(&[]);
    let order: Vec<u64> = (0..spec().count).rev().collect();
    let keys: Vec<String> = order.iter().map(|&i| spec().key(i)).collect();
    let (code, body) = post(&proxy, "data", keys.join("\n")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["samples"], 200);
    // The whole order fits the first window: wait until it is all fetched.
    let done = wait_for(&proxy, |s| s["fetched"] == 200).await;
    assert_eq!(done["failed"], 0);
    assert!(done["buffered_bytes"].as_u64().unwrap_or(0) >= 200 * 30 * 1024 * 9 / 10);
    let (hits, misses) = memory(&proxy).await;
    for &index in &order {
        read(&proxy, index).await;
    }
    let (hits_after, misses_after) = memory(&proxy).await;
    assert_eq!(
        hits_after - hits,
        200.0,
        "every read found its chunk fetched"
    );
    assert_eq!(misses_after - misses, 0.0);
    let after = wait_for(&proxy, |s| s["reads"] == 200).await;
    assert_eq!(after["buffered_bytes"], 0, "read chunks leave the buffer");
    assert_eq!(
        proxy.origin_requests("get").await,
        200.0,
        "each chunk went upstream once"
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_spanning_two_epochs_prefetches_each_epoch_in_turn() {
    let (_worker, proxy) = mesh(&[]);
    let n = spec().count;
    let keys: Vec<String> = (0..n).map(|i| spec().key(i)).collect();
    let first: Vec<u64> = (0..n).rev().collect();
    let second: Vec<u64> = shuffle(n as u32, 5).into_iter().map(u64::from).collect();
    let indices: Vec<u64> = first.iter().chain(&second).copied().collect();
    let body = serde_json::json!({
        "keys": keys,
        "permutation": {"kind": "indices", "indices": indices},
    });
    let (code, answer) = post(&proxy, "data", body.to_string()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["samples"], 400);
    wait_for(&proxy, |s| s["fetched"] == 200).await;
    let (hits, misses) = memory(&proxy).await;
    for &index in &first {
        read(&proxy, index).await;
    }
    // The second epoch's samples were in the buffer for the first: they are
    // fetched again once read there, before the second epoch reads them.
    wait_for(&proxy, |s| s["fetched"] == 400).await;
    for &index in &second {
        read(&proxy, index).await;
    }
    let (hits_after, misses_after) = memory(&proxy).await;
    assert_eq!(hits_after - hits, 400.0, "every read of both epochs hit");
    assert_eq!(misses_after - misses, 0.0);
    let after = wait_for(&proxy, |s| s["reads"] == 400).await;
    assert_eq!(
        after["front"], 400,
        "the second epoch's reads were its own positions"
    );
    assert_eq!(after["buffered_bytes"], 0);
    let turns = &after["turns"];
    let sent_in_turn = ["at_once", "waited", "kept_taken"]
        .iter()
        .map(|count| turns[count].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(
        sent_in_turn, 400,
        "every sample was sent in its turn: {turns}"
    );
    assert_eq!(turns["timed_out"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compact_order_is_the_shuffle_of_a_listing() {
    let (_worker, proxy) = mesh(&[]);
    let (code, body) = post(
        &proxy,
        "data",
        r#"{"prefix": "", "permutation": {"kind": "shuffle", "seed": 11}}"#,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["samples"], 200);
    wait_for(&proxy, |s| s["fetched"] == 200).await;
    // The listing is in key order; the synthetic keys sort as their indices.
    let mut listed: Vec<(String, u64)> = (0..200).map(|i| (spec().key(i), i)).collect();
    listed.sort();
    let (hits, _) = memory(&proxy).await;
    for position in shuffle(200, 11) {
        read(&proxy, listed[position as usize].1).await;
    }
    let (hits_after, _) = memory(&proxy).await;
    assert_eq!(
        hits_after - hits,
        200.0,
        "the client's shuffle is the sidecar's"
    );
    // The next epoch reuses the keys: only a seed crosses.
    let (code, body) = post(
        &proxy,
        "data",
        r#"{"permutation": {"kind": "shuffle", "seed": 12}}"#,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["samples"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_diverges_still_reads_the_right_bytes() {
    let (_worker, proxy) = mesh(&[]);
    let keys: Vec<String> = (0..100).map(|i| spec().key(i)).collect();
    let (code, _) = post(&proxy, "data", keys.join("\n")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    // Another order entirely, some of it outside the posted one.
    for index in (50..200).rev().step_by(3) {
        read(&proxy, index).await;
    }
    for index in 0..100 {
        read(&proxy, index).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_order_replaces_the_old() {
    let (_worker, proxy) = mesh(&[]);
    let first: Vec<String> = (0..100).map(|i| spec().key(i)).collect();
    let (_, one) = post(&proxy, "data", first.join("\n")).await;
    wait_for(&proxy, |s| s["fetched"] == 100).await;
    let second: Vec<String> = (100..150).map(|i| spec().key(i)).collect();
    let (code, two) = post(&proxy, "data", second.join("\n")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert!(two["generation"].as_u64() > one["generation"].as_u64());
    assert_eq!(two["samples"], 50);
    let now = wait_for(&proxy, |s| s["fetched"] == 50).await;
    assert_eq!(now["generation"], two["generation"]);
    assert!(
        now["buffered_bytes"].as_u64().unwrap_or(u64::MAX) <= 50 * 30 * 1024 * 11 / 10,
        "the first order's chunks were dropped: {now}"
    );
    assert!(
        proxy
            .metric("prefetch_dropped_bytes_total", &[("dataset", "data")])
            .await
            >= 100.0 * 30.0 * 1024.0 * 0.9
    );
    let (hits, _) = memory(&proxy).await;
    for index in 100..150 {
        read(&proxy, index).await;
    }
    assert_eq!(memory(&proxy).await.0 - hits, 50.0);
    // Stopped, there is no order.
    let response = reqwest::Client::new()
        .delete(proxy.url("/v1/prefetch/data"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(status(&proxy).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_that_continues_the_last_keeps_what_was_fetched_for_it() {
    let (worker, proxy) = mesh(&[]);
    let keys = |range: std::ops::Range<u64>| -> String {
        range.map(|i| spec().key(i)).collect::<Vec<_>>().join("\n")
    };
    post(&proxy, "data", keys(0..100)).await;
    wait_for(&proxy, |s| s["fetched"] == 100).await;
    for index in 0..50 {
        read(&proxy, index).await;
    }
    // A sampler posting this epoch and the next at each epoch's start: the
    // new order begins where the reader is in the old one.
    let (code, next) = post(&proxy, "data", keys(50..150)).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let unread: u64 = (50..100).map(|i| spec().object_size(i)).sum();
    assert_eq!(
        next["buffered_bytes"], unread,
        "the 50 samples fetched and not yet read stay: {next}"
    );
    assert_eq!(
        proxy
            .metric("prefetch_dropped_bytes_total", &[("dataset", "data")])
            .await,
        0.0
    );
    wait_for(&proxy, |s| s["fetched"] == 100).await;
    let (hits, _) = memory(&proxy).await;
    for index in 50..150 {
        read(&proxy, index).await;
    }
    assert_eq!(memory(&proxy).await.0 - hits, 100.0, "every read hit");
    let worker_gets = worker.origin_requests("get").await;
    assert_eq!(worker_gets, 150.0, "no sample was fetched twice");

    // An order that does not continue it starts afresh.
    let (_, other) = post(&proxy, "data", keys(10..20)).await;
    assert_eq!(other["buffered_bytes"], 0, "{other}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_orders_get_clear_errors() {
    let (_worker, proxy) = mesh(&[]);
    let client = reqwest::Client::new();
    let (code, body) = status(&proxy).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NoSuchOrder"))
    );
    for (bucket, body, code, error) in [
        ("nope", "a\n", StatusCode::NOT_FOUND, "NoSuchBucket"),
        ("data", "", StatusCode::BAD_REQUEST, "MalformedOrder"),
        (
            "data",
            "{\"keys\": 3}",
            StatusCode::BAD_REQUEST,
            "MalformedOrder",
        ),
        (
            "data",
            "{\"prefix\": \"absent/\"}",
            StatusCode::BAD_REQUEST,
            "MalformedOrder",
        ),
        (
            "data",
            "{\"permutation\": {\"kind\": \"shuffle\", \"seed\": 1}}",
            StatusCode::CONFLICT,
            "NoPreviousKeys",
        ),
    ] {
        let (got, answer) = post(&proxy, bucket, body).await;
        assert_eq!(got, code, "{body}: {answer}");
        assert_eq!(answer["code"], error, "{body}: {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let response = client
        .put(proxy.url("/v1/prefetch/data"))
        .body("a")
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = client
        .post(proxy.url("/v1/prefetch/"))
        .body("a")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Keys that do not exist are the readers' problem, not the order's.
    let (code, _) = post(&proxy, "data", "missing-1\nmissing-2\n").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let done = wait_for(&proxy, |s| s["done"] == true).await;
    assert_eq!(done["failed"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sampler_package_with_boto3_s3fs_and_the_crt_client() {
    common::require_python_modules(&[
        "pytest",
        "boto3",
        "s3fs",
        "ferry_prefetch",
        "s3torchconnectorclient",
    ]);
    let (_worker, proxy) = mesh(&[]);
    let expected = common::TempDir::new("prefetch-python");
    let keys: Vec<String> = (0..spec().count).map(|i| spec().key(i)).collect();
    std::fs::write(expected.path().join("keys"), keys.join("\n")).expect("keys");
    for index in 0..spec().count {
        let bytes = common::synthetic_object(SPEC, index);
        std::fs::write(expected.path().join(index.to_string()), bytes).expect("object");
    }
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/python/tests");
    let output = tokio::process::Command::new(common::python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", tests])
        .env("FERRY_ENDPOINT", proxy.url(""))
        .env("FERRY_ADMIN", proxy.admin.to_string())
        .env("FERRY_BUCKET", "data")
        .env("FERRY_EXPECTED", expected.path())
        .output()
        .await
        .expect("run pytest");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pytest failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !report.contains("skipped"),
        "every sidecar test ran: {report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fetched_chunks_stay_within_prefetch_memory() {
    // 200 samples of 30 KiB (6 MB) ahead of readers, in 256 KiB.
    let (_worker, proxy) = mesh(&["--prefetch-memory", "256KiB"]);
    let keys: Vec<String> = (0..spec().count).map(|i| spec().key(i)).collect();
    let (code, _) = post(&proxy, "data", keys.join("\n")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let (hits, _) = memory(&proxy).await;
    for index in 0..spec().count {
        read(&proxy, index).await;
        if index % 10 == 0 {
            let (_, now) = status(&proxy).await;
            let buffered = now["buffered_bytes"].as_u64().expect("bytes");
            assert!(
                buffered <= 256 * 1024,
                "{buffered} bytes held at read {index}: {now}"
            );
        }
    }
    let (_, done) = status(&proxy).await;
    assert!(
        done["fetched"].as_u64() > Some(100),
        "it kept fetching as reads made room: {done}"
    );
    assert!(
        memory(&proxy).await.0 - hits >= 100.0,
        "most reads still found their sample fetched ahead"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_too_large_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_worker, proxy) = mesh(&[]);
    let addr = proxy.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    // Declares 300 MB and sends none of it: the answer must not wait for it.
    stream
        .write_all(
            b"POST /v1/prefetch/data HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 300000000\r\n\r\n",
        )
        .await
        .expect("write");
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("EntityTooLarge"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtual_hosted_get_of_the_path_is_a_key_of_its_bucket() {
    let (_worker, proxy) = mesh(&[]);
    let response = reqwest::Client::new()
        .get(proxy.url("/v1/prefetch/data"))
        .header("host", "data.localhost")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("<Code>NoSuchKey</Code>"),
        "an S3 answer: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_the_readers_went_far_past_are_dropped() {
    // More samples than the 16,384 a reader may trail the furthest one by.
    const MANY: &str = "count=17000&size=512&seed=4";
    let (worker, proxy) = mesh_over(MANY, &[]);
    let many = SyntheticSpec::from_query(MANY).expect("spec");
    let keys: Vec<String> = (0..many.count).map(|i| many.key(i)).collect();
    let (code, _) = post(&proxy, "data", keys.join("\n")).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    // The first window is fetched ahead of a reader that has not started.
    wait_for(&proxy, |s| s["fetched"].as_u64() >= Some(200)).await;
    let dropped = || proxy.metric("prefetch_dropped_bytes_total", &[("dataset", "data")]);
    assert_eq!(dropped().await, 0.0);
    // A reader jumps to the end: what it skipped is given up on.
    let last = reqwest::get(proxy.url(&format!("/data/{}", keys[16_999])))
        .await
        .expect("get");
    assert_eq!(last.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped().await < 200.0 * 512.0 {
        assert!(Instant::now() < deadline, "nothing was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(worker);
}
