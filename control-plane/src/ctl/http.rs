//! Plain HTTP/1.1 GETs to admin endpoints, each within a deadline.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
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
    tokio::time::timeout(timeout, get_now(address, path))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {address} within {timeout:?}"))?
}

async fn get_now(address: &str, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {address}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(http::header::HOST, address)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET {path} from {address}"))?;
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
