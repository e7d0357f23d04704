//! Hostile input at the socket, against a real worker process: clients that
//! say nothing or trickle their request head are cut at the header timeout,
//! idle HTTP/2 connections are sent GOAWAY and closed, and malformed requests get their S3
//! errors (414, 431, a read with a body) while several ranges get the whole
//! object, as S3 answers.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::ProxyProcess;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SPEC: &str = "count=4&size=10KiB&seed=2";

fn worker(extra: &[&str]) -> ProxyProcess {
    let origin = format!("synthetic://?{SPEC}");
    let mut args = vec!["worker", "--origin", &origin, "--bucket", "data"];
    args.extend_from_slice(extra);
    ProxyProcess::start(&args)
}

fn key(index: u64) -> String {
    ferry_config::SyntheticSpec::from_query(SPEC)
        .expect("spec")
        .key(index)
}

/// Reads until the server closes the connection (bounded), returning what it sent.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => Some(received),
        Err(_) => None,
    }
}

/// An HTTP/2 connection to `proxy`'s front door, driven in its own task
/// (which ends with how the connection ended).
async fn http2_connection(
    proxy: &ProxyProcess,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(proxy.listen).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    (sender, tokio::spawn(connection))
}

/// Sends `request` (raw HTTP/1.1) and returns the status line and the whole answer.
async fn exchange(proxy: &ProxyProcess, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(proxy.listen).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let answer = until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the proxy answers and closes");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_trickling_clients_are_cut_at_the_header_timeout() {
    let proxy = worker(&["--header-timeout", "300ms"]);
    let mut silent = TcpStream::connect(proxy.listen).await.expect("connect");
    let mut trickling = TcpStream::connect(proxy.listen).await.expect("connect");
    let trickle = tokio::spawn(async move {
        // One byte of a request head every 50 ms, for at most 10 s.
        let head = format!("GET /data/{} HTTP/1.1\r\nHost: x\r\nX-Slow: ", key(0));
        let bytes = head.bytes().chain(std::iter::repeat(b'a')).take(200);
        for byte in bytes {
            if trickling.write_all(&[byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut rest = Vec::new();
        until_closed(&mut trickling, Duration::from_secs(1))
            .await
            .inspect(|bytes| rest = bytes.clone())
            .is_some()
    });
    // Meanwhile a well-behaved client is served.
    let body = reqwest::get(proxy.url(&format!("/data/{}", key(1))))
        .await
        .expect("get")
        .error_for_status()
        .expect("200")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body.len(), common::synthetic_object(SPEC, 1).len());
    assert!(
        until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some_and(|bytes| bytes.is_empty()),
        "a client that says nothing is closed without an answer"
    );
    assert!(
        trickle.await.expect("trickler"),
        "a client that trickles its head is closed before it finishes"
    );
    assert!(
        proxy
            .metric(
                "connections_closed_total",
                &[("direction", "outbound"), ("reason", "header_timeout")]
            )
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_is_sent_goaway_and_closed() {
    let proxy = worker(&["--idle-timeout", "400ms", "--header-timeout", "200ms"]);
    let (mut sender, connection) = http2_connection(&proxy).await;
    let request = http::Request::get(format!("http://x/data/{}", key(2)))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = response.into_body().collect().await.expect("body");
    assert_eq!(
        body.to_bytes().len(),
        common::synthetic_object(SPEC, 2).len()
    );
    // Past the header timeout (a request came) and then idle: closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    let ended = ended.expect("the idle connection was closed");
    // With GOAWAY first, not a bare close (hyper reports that as a broken
    // pipe): a client sending a request at that moment would lose it.
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the idle connection was told to go away first: {ended:?}"
    );
    assert_eq!(
        proxy
            .metric(
                "connections_closed_total",
                &[("direction", "outbound"), ("reason", "idle")]
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_their_s3_errors() {
    let proxy = worker(&[]);
    let long_key = "k".repeat(9 * 1024);
    let (status, text) = exchange(
        &proxy,
        format!("GET /data/{long_key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status.contains(" 414 "), "{status}");
    assert!(text.contains("<Code>InvalidURI</Code>"), "{text}");

    let huge_header = "h".repeat(20 * 1024);
    let (status, _) = exchange(
        &proxy,
        format!(
            "GET /data/{} HTTP/1.1\r\nHost: x\r\nX-Big: {huge_header}\r\nConnection: close\r\n\r\n",
            key(0)
        )
        .as_bytes(),
    )
    .await;
    assert!(status.contains(" 431 "), "{status}");

    let (status, text) = exchange(
        &proxy,
        format!(
            "GET /data/{} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            key(0)
        )
        .as_bytes(),
    )
    .await;
    assert!(status.contains(" 400 "), "{status}");
    assert!(text.contains("<Code>InvalidRequest</Code>"), "{text}");

    // Several ranges: S3 ignores the header and sends the whole object.
    let whole = common::synthetic_object(SPEC, 3);
    let response = reqwest::Client::new()
        .get(proxy.url(&format!("/data/{}", key(3))))
        .header("range", "bytes=0-9,20-29")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(response.headers().get("content-range").is_none());
    assert_eq!(response.bytes().await.expect("body")[..], whole[..]);

    // Over HTTP/2 a read with a body is refused the same way.
    let stream = TcpStream::connect(proxy.listen).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://x/data/{}", key(0)))
        .body(Full::new(Bytes::from_static(b"body")))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    let refused = proxy
        .metric(
            "response_total",
            &[("direction", "outbound"), ("dataset", "unknown")],
        )
        .await;
    assert!(refused >= 3.0, "the refusals are counted: {refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_streams_are_bounded_and_others_are_served() {
    let proxy = worker(&[]);
    let stream = TcpStream::connect(proxy.listen).await.expect("connect");
    let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = Some(client);
    // Open a stream and reset it at once, over and over (CVE-2023-44487),
    // bounded in count and time.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut opened = 0u32;
    while opened < 20_000 && std::time::Instant::now() < deadline {
        let Some(idle) = client.take() else {
            break;
        };
        let Ok(mut ready) = idle.ready().await else {
            break;
        };
        let request = http::Request::get(format!("http://x/data/{}", key(0)))
            .body(())
            .expect("request");
        let Ok((_response, mut send)) = ready.send_request(request, true) else {
            break;
        };
        send.send_reset(h2::Reason::CANCEL);
        client = Some(ready);
        opened += 1;
    }
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
    // Whatever the flood did, the proxy serves others and holds no work for it.
    let body = reqwest::get(proxy.url(&format!("/data/{}", key(1))))
        .await
        .expect("get")
        .error_for_status()
        .expect("200")
        .bytes()
        .await
        .expect("body");
    assert_eq!(body[..], common::synthetic_object(SPEC, 1)[..]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let in_flight = proxy
            .metric("admission_requests_in_flight", &[("direction", "outbound")])
            .await;
        if in_flight == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reset streams left {in_flight} requests admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("rapid reset: {opened} streams opened and reset before the connection ended");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_responses_in_flight_and_sends_goaway_to_idle_connections() {
    const BIG: &str = "count=2&size=24MiB&seed=5";
    let origin = format!("synthetic://?{BIG}");
    let mut proxy = ProxyProcess::start(&["worker", "--origin", &origin, "--bucket", "data"]);
    let big = ferry_config::SyntheticSpec::from_query(BIG).expect("spec");
    // An idle HTTP/2 connection, after one request.
    let (mut sender, connection) = http2_connection(&proxy).await;
    let request = http::Request::get(format!("http://x/data/{}", big.key(1)))
        .header("range", "bytes=0-9")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), http::StatusCode::PARTIAL_CONTENT);
    response.into_body().collect().await.expect("body");
    // A large response, read only in part when shutdown starts.
    let mut in_flight = reqwest::get(proxy.url(&format!("/data/{}", big.key(0))))
        .await
        .expect("get")
        .error_for_status()
        .expect("200");
    let mut received = in_flight
        .chunk()
        .await
        .expect("first bytes")
        .expect("some")
        .to_vec();
    let shutdown = reqwest::Client::new()
        .post(proxy.admin_url("/shutdown"))
        .send()
        .await
        .expect("shutdown");
    assert_eq!(shutdown.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the idle connection was closed");
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the idle connection was told to go away first: {ended:?}"
    );
    while let Some(bytes) = in_flight.chunk().await.expect("the rest of the body") {
        received.extend_from_slice(&bytes);
    }
    assert!(
        received == common::synthetic_object(BIG, 0),
        "the response in flight finished whole ({} bytes)",
        received.len()
    );
    assert!(proxy.wait().success(), "the proxy exits once drained");
}
