//! Plain HTTP/1.1 requests to admin endpoints, each within a deadline.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest admin response read (a large mesh's `/metrics` is well below).
const MAX_BODY: usize = 32 << 20;

/// GETs `path` from the admin endpoint `address` (`host:port`): the status
/// and the body.
pub async fn get(
    address: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    send(address, Method::GET, path, Bytes::new(), timeout).await
}

/// Sends `method path` with `body` (JSON when not empty) to the admin
/// endpoint `address`: the status and the body.
pub async fn send(
    address: &str,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    tokio::time::timeout(timeout, send_now(address, method, path, body))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {address} within {timeout:?}"))?
}

async fn send_now(
    address: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {address}"))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(http::header::HOST, address);
    if !body.is_empty() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(body))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {path} to {address}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading {path} from {address}: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

/// GETs `path` and requires a 200 with a UTF-8 body.
pub async fn get_text(address: &str, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let (status, body) = get(address, path, timeout).await?;
    anyhow::ensure!(
        status == StatusCode::OK,
        "GET {path} from {address} answered {status}"
    );
    String::from_utf8(body.to_vec()).with_context(|| format!("{path} from {address} is not UTF-8"))
}
