//! The proxy's side of `GET /v1/watch/proxy`: one HTTP/2 stream over mutual
//! TLS to the control plane, read line by line, each snapshot applied as it
//! comes. A broken or silent stream is reopened with jittered exponential
//! backoff; meanwhile the last good snapshot stays in force.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use ferry_config::{Role, SpiffeId, SpiffePattern, WatchEvent};

use super::Mesh;
use crate::identity::Identity;

/// First wait after a failed watch; doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// A stream silent this long is dead (the control plane sends a heartbeat
/// every 10 s by default).
const SILENCE: Duration = Duration::from_secs(35);
/// Deadline of connecting, the TLS and HTTP/2 handshakes, and the response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line accepted: a snapshot larger than this is refused.
const MAX_LINE: usize = 16 << 20;
/// The control plane's service account.
const CONTROL_PLANE_ACCOUNT: &str = "ferry-control-plane";

/// The watch request's path: the role, and where the admin endpoint is
/// reachable (an unspecified address becomes the pod's, from `POD_IP`).
fn watch_path(role: Role, admin: Option<SocketAddr>) -> String {
    let mut path = format!("/v1/watch/proxy?role={}", role.as_str());
    let reachable = admin.map(super::reachable);
    if let Some(admin) = reachable {
        let admin = admin.to_string().replace('[', "%5B").replace(']', "%5D");
        path.push_str("&admin=");
        path.push_str(&admin);
    }
    path
}

/// Watches the control plane for `mesh` in the background; the receiver
/// turns true once the first snapshot is in force.
pub fn spawn(
    mesh: Arc<Mesh>,
    identity: Arc<Identity>,
    role: Role,
    trust_domain: &str,
    control_plane_namespace: &str,
    admin: Option<SocketAddr>,
) -> anyhow::Result<watch::Receiver<bool>> {
    let client = WatchClient::new(
        &identity,
        role,
        trust_domain,
        control_plane_namespace,
        admin,
    )?;
    let (first, first_seen) = watch::channel(false);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let mut heard = false;
            match follow(&client, &mesh, &identity, &first, &mut heard).await {
                Ok(()) => tracing::warn!("the control plane closed the watch; reopening"),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "watch of the control plane failed; retrying")
                }
            }
            mesh.set_connected(false);
            if heard {
                backoff = BACKOFF_FIRST;
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    Ok(first_seen)
}

/// One watch, until it ends.
async fn follow(
    client: &WatchClient,
    mesh: &Mesh,
    identity: &Identity,
    first: &watch::Sender<bool>,
    heard: &mut bool,
) -> anyhow::Result<()> {
    let mut stream = client.open().await?;
    mesh.set_connected(true);
    while let Some(line) = stream.next().await? {
        *heard = true;
        let snapshot = match line {
            Line::Event(WatchEvent::Snapshot(snapshot)) => snapshot,
            Line::Event(WatchEvent::Heartbeat { .. }) => {
                mesh.prune();
                continue;
            }
            Line::Unreadable { version, error } => {
                mesh.refused(
                    version,
                    format!("the control plane's snapshot is unreadable: {error}"),
                );
                continue;
            }
        };
        if let Err(err) = identity.trust_published(&snapshot.trust_bundle) {
            tracing::error!(error = %format!("{err:#}"), "the published trust bundle is unusable; keeping the anchors in force");
        }
        // A refused snapshot is logged and counted by the mesh.
        if mesh.apply(&snapshot).is_ok() {
            first.send_replace(true);
        }
    }
    Ok(())
}

/// Opens watches of the control plane as one proxy.
pub struct WatchClient {
    address: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    path: String,
    authority: String,
}

impl WatchClient {
    /// Watches for a proxy in `role` holding `identity`'s certificate; the
    /// control plane must present `spiffe://<trust_domain>/ns/<control_plane_namespace>/sa/ferry-control-plane`.
    /// `admin`, the proxy's admin endpoint, is told to the control plane so
    /// that `ferryctl` can find it.
    pub fn new(
        identity: &Identity,
        role: Role,
        trust_domain: &str,
        control_plane_namespace: &str,
        admin: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let expected: SpiffePattern =
            SpiffeId::workload(trust_domain, control_plane_namespace, CONTROL_PLANE_ACCOUNT)
                .map_err(anyhow::Error::msg)?
                .as_str()
                .parse()
                .map_err(anyhow::Error::msg)?;
        let uri: Uri = identity
            .control_plane_url()
            .parse()
            .context("the control plane URL is not a URL")?;
        let host = uri
            .host()
            .context("the control plane URL names no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .context("the control plane host is not a valid name")?;
        let mismatches = metrics::counter!("control_plane_identity_mismatches_total");
        let connector =
            TlsConnector::from(Arc::new(identity.tls.client_config(expected, mismatches)));
        Ok(Self {
            address: format!("{host}:{port}"),
            server_name,
            connector,
            path: watch_path(role, admin),
            authority: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
        })
    }

    /// Opens one watch (connection, TLS, HTTP/2, request), within a deadline.
    pub async fn open(&self) -> anyhow::Result<WatchStream> {
        let body = tokio::time::timeout(CONNECT_TIMEOUT, self.request())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
        Ok(WatchStream {
            body,
            pending: BytesMut::new(),
        })
    }

    async fn request(&self) -> anyhow::Result<hyper::body::Incoming> {
        let stream = TcpStream::connect(&self.address)
            .await
            .with_context(|| format!("cannot connect to {}", self.address))?;
        let _ = stream.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), stream)
            .await
            .context("TLS")?;
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake(TokioIo::new(tls))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri = Uri::builder()
            .scheme("https")
            .authority(self.authority.as_str())
            .path_and_query(self.path.as_str())
            .build()?;
        let request = Request::get(uri).body(Empty::<Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .context("watch request")?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            let text = body
                .as_ref()
                .map_or("", |b| std::str::from_utf8(b).unwrap_or(""));
            anyhow::bail!("the control plane answered {status}: {}", text.trim());
        }
        Ok(response.into_body())
    }
}

/// One line of a watch.
#[derive(Debug)]
pub enum Line {
    /// A snapshot or a heartbeat.
    Event(WatchEvent),
    /// A line this proxy cannot read (a newer control plane, or a bug): it
    /// is refused like a snapshot that does not validate.
    Unreadable {
        /// Its version, if that much can be read.
        version: Option<u64>,
        /// Why it cannot be read.
        error: String,
    },
}

/// The `version` field of a watch line that does not parse as an event.
fn version_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u64,
    }
    serde_json::from_slice::<Versioned>(line)
        .ok()
        .map(|v| v.version)
}

/// An open watch, read one event at a time.
pub struct WatchStream {
    body: hyper::body::Incoming,
    pending: BytesMut,
}

impl WatchStream {
    /// The next line; `None` when the control plane ended the stream.
    /// Silence past the heartbeat is an error.
    pub async fn next(&mut self) -> anyhow::Result<Option<Line>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line = self.pending.split_to(end + 1);
                return Ok(Some(match serde_json::from_slice(&line[..end]) {
                    Ok(event) => Line::Event(event),
                    Err(err) => Line::Unreadable {
                        version: version_of(&line[..end]),
                        error: err.to_string(),
                    },
                }));
            }
            anyhow::ensure!(
                self.pending.len() <= MAX_LINE,
                "a watch line is longer than {MAX_LINE} bytes"
            );
            let frame = tokio::time::timeout(SILENCE, self.body.frame())
                .await
                .map_err(|_| anyhow::anyhow!("the watch was silent for {SILENCE:?}"))?;
            let Some(frame) = frame else {
                return Ok(None);
            };
            if let Ok(data) = frame.context("the watch broke")?.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

/// `delay` give or take 20 %, so proxies do not return in lockstep.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_line_still_names_its_version_when_it_can() {
        assert_eq!(
            version_of(br#"{"type":"snapshot","version":12,"datasets":[{"oops":1}]}"#),
            Some(12)
        );
        assert_eq!(version_of(b"not json"), None);
    }
}
