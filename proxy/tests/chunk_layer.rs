//! The chunk layer against a real HTTP origin: single-flight, aborted
//! responses, read-ahead, metadata caching, origin failures.

mod common;

use std::time::Duration;

use common::{ProxyProcess, TestOrigin, test_bytes};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHUNK: usize = 64 * 1024;

fn proxy_for(origin: &TestOrigin, extra: &[&str]) -> ProxyProcess {
    let url = origin.url();
    let mut args = vec![
        "worker",
        "--origin",
        &url,
        "--bucket",
        "data",
        "--chunk-size",
        "64KiB",
    ];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

#[tokio::test]
async fn sixty_four_readers_of_a_cold_chunk_cause_one_origin_fetch() {
    let origin = TestOrigin::start(vec![("cold.bin", test_bytes(1, 50_000))]).await;
    // The origin answers slowly so all readers arrive while the fetch is in flight.
    *origin.state.delay.lock().expect("lock") = Duration::from_millis(300);
    let proxy = proxy_for(&origin, &[]);
    let client = reqwest::Client::new();
    // Warm the metadata so every reader goes straight to the chunk.
    let head = client
        .head(proxy.url("/data/cold.bin"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    let readers = (0..64).map(|_| {
        let client = client.clone();
        let url = proxy.url("/data/cold.bin");
        tokio::spawn(async move {
            client
                .get(url)
                .send()
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body")
        })
    });
    let bodies = futures::future::join_all(readers).await;
    let want = test_bytes(1, 50_000);
    for body in bodies {
        assert!(body.expect("reader")[..] == want[..]);
    }
    assert_eq!(
        origin.state.gets_of("cold.bin"),
        1,
        "one origin fetch for 64 readers"
    );
    assert_eq!(proxy.origin_requests("get").await, 1.0);
}

#[tokio::test]
async fn an_origin_failing_mid_object_aborts_the_response() {
    let size = 4 * CHUNK + 100;
    let origin = TestOrigin::start(vec![("big.bin", test_bytes(2, size))]).await;
    *origin.state.fail_from.lock().expect("lock") = Some(2 * CHUNK as u64);
    let proxy = proxy_for(&origin, &["--read-ahead", "0"]);
    let client = reqwest::Client::new();
    let response = client
        .get(proxy.url("/data/big.bin"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "headers go out once the first chunk is in"
    );
    assert_eq!(
        response.headers()["content-length"],
        size.to_string().as_str()
    );
    let body = response.bytes().await;
    assert!(
        body.is_err(),
        "the body must fail, not end short: got {:?}",
        body.map(|b| b.len())
    );

    // With raw HTTP/1.1 the connection closes before Content-Length bytes arrive.
    // (Async I/O: the origin runs on this test's runtime.)
    let mut stream = tokio::net::TcpStream::connect(proxy.listen)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /data/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received).await;
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    let body_len = received.len() - head_end;
    assert!(
        body_len < size,
        "received {body_len} of {size} bytes and then the connection closed"
    );
    let want = test_bytes(2, size);
    assert!(
        received[head_end..] == want[..body_len],
        "what was sent is correct"
    );

    // Bytes served count what went out, not what the aborted responses promised.
    let served = proxy
        .metric("response_bytes_total", &[("dataset", "data")])
        .await;
    assert_eq!(
        served,
        (2 * 2 * CHUNK) as f64,
        "two responses each sent chunks 0 and 1"
    );

    // A chunk that fails before the response starts is a clean 503 naming the origin.
    let response = client
        .get(proxy.url("/data/big.bin"))
        .header("range", format!("bytes={}-", 3 * CHUNK))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("ServiceUnavailable") && text.contains(&origin.url()),
        "{text}"
    );
}

#[tokio::test]
async fn sequential_readers_get_read_ahead() {
    let size = 8 * CHUNK;
    let origin = TestOrigin::start(vec![("shard.tar", test_bytes(3, size))]).await;
    let proxy = proxy_for(&origin, &["--read-ahead", "3"]);
    let client = reqwest::Client::new();
    let want = test_bytes(3, size);
    for index in 0..8 {
        let range = format!("bytes={}-{}", index * CHUNK, (index + 1) * CHUNK - 1);
        let body = client
            .get(proxy.url("/data/shard.tar"))
            .header("range", range)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert!(
            body[..] == want[index * CHUNK..(index + 1) * CHUNK],
            "chunk {index}"
        );
    }
    let readahead = proxy
        .metric("readahead_chunks_total", &[("dataset", "data")])
        .await;
    assert!(
        readahead >= 5.0,
        "chunks 1..=7 were fetched ahead: {readahead}"
    );
    let hits = proxy
        .metric("cache_hits_total", &[("dataset", "data")])
        .await;
    assert!(hits >= 4.0, "later chunks were already there: {hits} hits");
    assert_eq!(
        origin.state.gets_of("shard.tar"),
        8,
        "each chunk fetched once"
    );
}

#[tokio::test]
async fn a_second_epoch_makes_no_origin_round_trips() {
    let objects: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("s/{i:03}.jpg"),
                test_bytes(10 + i, 3000 + i as usize * 17),
            )
        })
        .collect();
    let origin = TestOrigin::start(
        objects
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect(),
    )
    .await;
    let proxy = proxy_for(&origin, &[]);
    let client = reqwest::Client::new();
    for epoch in 0..2 {
        for (key, want) in &objects {
            let body = client
                .get(proxy.url(&format!("/data/{key}")))
                .send()
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            assert!(body[..] == want[..], "epoch {epoch} {key}");
        }
    }
    assert_eq!(
        origin.state.heads.load(std::sync::atomic::Ordering::SeqCst),
        20,
        "one HEAD per object"
    );
    assert_eq!(origin.state.total_gets(), 20, "one GET per object");
    let hits = proxy
        .metric("cache_hits_total", &[("dataset", "data")])
        .await;
    let misses = proxy
        .metric("cache_misses_total", &[("dataset", "data")])
        .await;
    assert_eq!((hits, misses), (20.0, 20.0));
}

#[tokio::test]
async fn an_unreachable_origin_is_a_503_naming_it() {
    // Bind and drop a listener: nothing answers on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let proxy = ProxyProcess::start(&["worker", "--origin", &url, "--bucket", "data"]);
    let response = reqwest::get(proxy.url("/data/x.jpg")).await.expect("get");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("<Code>ServiceUnavailable</Code>") && text.contains(&url),
        "{text}"
    );
    let failures = proxy
        .metric(
            "response_total",
            &[
                ("dataset", "data"),
                ("classification", "failure"),
                ("status_code", "503"),
            ],
        )
        .await;
    assert_eq!(failures, 1.0);
}

#[tokio::test]
async fn an_http_origin_is_never_read_outside_its_base() {
    let origin = TestOrigin::start(vec![
        ("base/a.bin", test_bytes(5, 1000)),
        ("secret.txt", b"TOP-SECRET-CONTENT".to_vec()),
    ])
    .await;
    let base = format!("{}base/", origin.url());
    let proxy = ProxyProcess::start(&["worker", "--origin", &base, "--bucket", "data"]);
    let ok = reqwest::get(proxy.url("/data/a.bin")).await.expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    // A URL resolves `..`: such keys would read beside the base. Sent as
    // written (no client normalisation), on a raw connection.
    for path in [
        "/data/../secret.txt",
        "/data/x/../../secret.txt",
        "/data/%2e%2e/secret.txt",
        "/data/./a.bin",
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxy.listen)
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(
            !answer.contains("TOP-SECRET-CONTENT"),
            "{path} leaked: {answer}"
        );
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("<Code>AccessDenied</Code>"),
            "{path} is refused: {answer}"
        );
    }
    assert_eq!(origin.state.gets_of("secret.txt"), 0, "never asked for");
}

/// A namespace's HTTP origin never reaches the machine by a name: what the
/// name resolves to is checked at connection time. An IP literal is what
/// the mesh admin wrote in the namespace's allowance, and is used as is.
#[tokio::test]
async fn a_namespace_http_origin_does_not_reach_loopback_by_name() {
    let origin = TestOrigin::start(vec![("a.bin", test_bytes(6, 1000))]).await;
    let dir = common::TempDir::new("tenant-origin");
    let config = dir.path().join("worker.yaml");
    let port = origin.addr.port();
    std::fs::write(
        &config,
        format!(
            "role: worker\nlisten: 127.0.0.1:0\nadmin: 127.0.0.1:0\ninbound: 127.0.0.1:0\n\
             datasets:\n  \
             - {{ name: by-name, bucket: by-name, origin: \"http://localhost:{port}/\", namespace: train }}\n  \
             - {{ name: by-ip, bucket: by-ip, origin: \"http://127.0.0.1:{port}/\", namespace: train }}\n  \
             - {{ name: mesh-wide, bucket: mesh-wide, origin: \"http://localhost:{port}/\" }}\n"
        ),
    )
    .expect("config");
    let proxy = ProxyProcess::start(&["--config", config.to_str().expect("path")]);
    let refused = reqwest::get(proxy.url("/by-name/a.bin"))
        .await
        .expect("get");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = refused.text().await.expect("text");
    assert!(text.contains("may not reach"), "{text}");
    for allowed in ["/by-ip/a.bin", "/mesh-wide/a.bin"] {
        let response = reqwest::get(proxy.url(allowed)).await.expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{allowed}");
        assert_eq!(
            response.bytes().await.expect("body")[..],
            test_bytes(6, 1000)[..]
        );
    }
}
