//! The reading side: one HTTP/1.1 keep-alive connection per reader, as a
//! data loader worker holds one; each response is read to the end and counted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use ferry_config::exposition::Exposition;

/// Longest a single read may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A server's 503 `SlowDown`: back off and retry (the connection stays usable).
#[derive(Debug, thiserror::Error)]
#[error("HTTP 503 SlowDown")]
pub struct SlowDown;

/// One reader's connection, reopened after failures.
pub struct Reader {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Reader {
    /// A reader of the server at `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Empty<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("no connection")
    }

    /// GETs `path` (optionally a byte range, inclusive) and returns the body length.
    pub async fn get(&mut self, path: &str, range: Option<(u64, u64)>) -> anyhow::Result<u64> {
        self.exchange(path, range, false).await.map(|(len, _)| len)
    }

    /// GETs `path` (optionally a byte range, inclusive) and returns the body.
    pub async fn get_body(
        &mut self,
        path: &str,
        range: Option<(u64, u64)>,
    ) -> anyhow::Result<Bytes> {
        let (_, body) = self.exchange(path, range, true).await?;
        body.context("body was not kept")
    }

    /// One GET within the read deadline; the body is counted, and kept when
    /// `keep` (kept bodies cost a copy, counted ones do not). A failed
    /// exchange drops the connection, since its state is unknown.
    async fn exchange(
        &mut self,
        path: &str,
        range: Option<(u64, u64)>,
        keep: bool,
    ) -> anyhow::Result<(u64, Option<Bytes>)> {
        let attempt = async {
            let mut request = Request::get(path).header(header::HOST, "127.0.0.1");
            if let Some((start, end)) = range {
                request = request.header(header::RANGE, format!("bytes={start}-{end}"));
            }
            let request = request.body(Empty::new())?;
            let sender = self.connect().await?;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let slow_down = response
                .headers()
                .get("x-amz-error-code")
                .is_some_and(|code| code == "SlowDown");
            let mut body = response.into_body();
            let mut len = 0u64;
            let mut kept = keep.then(BytesMut::new);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    len += data.len() as u64;
                    if let Some(kept) = kept.as_mut() {
                        kept.extend_from_slice(&data);
                    }
                }
            }
            if status == StatusCode::SERVICE_UNAVAILABLE && slow_down {
                return Err(anyhow::Error::new(SlowDown));
            }
            if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
                bail!("GET {path}: HTTP {status}");
            }
            Ok((len, kept.map(BytesMut::freeze)))
        };
        match tokio::time::timeout(READ_TIMEOUT, attempt).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(err)) if err.is::<SlowDown>() => Err(err),
            Ok(Err(err)) => {
                self.sender = None;
                Err(err)
            }
            Err(_) => {
                self.sender = None;
                bail!("GET {path} took longer than {READ_TIMEOUT:?}")
            }
        }
    }

    /// GETs `path` and returns the body as text (listings, metrics).
    pub async fn get_text(&mut self, path: &str) -> anyhow::Result<String> {
        let request = Request::get(path)
            .header(header::HOST, "127.0.0.1")
            .body(Empty::<Bytes>::new())?;
        let sender = self.connect().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {path}: HTTP {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Lists every key under `bucket_path` (e.g. `/imagenet`) with ListObjectsV2,
/// as a data loader builds its index; returns how many keys there were.
pub async fn list_all(addr: SocketAddr, bucket_path: &str) -> anyhow::Result<usize> {
    let mut reader = Reader::new(addr);
    let mut keys = 0;
    let mut token: Option<String> = None;
    loop {
        let mut path = format!(
            "{}?list-type=2",
            if bucket_path.is_empty() {
                "/"
            } else {
                bucket_path
            }
        );
        if let Some(token) = &token {
            path.push_str("&continuation-token=");
            path.push_str(token);
        }
        let page = reader.get_text(&path).await?;
        keys += page.matches("<Key>").count();
        token = page
            .split_once("<NextContinuationToken>")
            .and_then(|(_, rest)| rest.split_once("</NextContinuationToken>"))
            .map(|(token, _)| token.to_owned());
        if token.is_none() {
            return Ok(keys);
        }
    }
}

/// The samples of `name` in a proxy's /metrics, by the value of `label`.
pub async fn scrape_by(
    admin: SocketAddr,
    name: &str,
    label: &str,
) -> anyhow::Result<Vec<(String, f64)>> {
    let metrics = exposition(admin).await?;
    Ok(metrics
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter_map(|s| Some((s.label(label)?.to_owned(), s.value)))
        .collect())
}

/// Sums the samples of `name` in a proxy's /metrics whose labels include all of `labels`.
pub async fn scrape(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    Ok(exposition(admin).await?.sum(name, labels))
}

/// A proxy's (or the control plane's) /metrics, parsed.
async fn exposition(admin: SocketAddr) -> anyhow::Result<Exposition> {
    let text = Reader::new(admin).get_text("/metrics").await?;
    Exposition::parse(&text).map_err(|e| anyhow::anyhow!("/metrics of {admin}: {e}"))
}

/// Posts an epoch's keys, in read order, to a proxy's prefetch endpoint
/// (`POST /v1/prefetch/{bucket}`), as the Python sampler wrapper does.
pub async fn post_order(addr: SocketAddr, bucket: &str, keys: String) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/v1/prefetch/{bucket}"))
        .body(keys)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == reqwest::StatusCode::ACCEPTED,
        "{}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    Ok(())
}
