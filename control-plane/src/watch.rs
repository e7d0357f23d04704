//! `GET /v1/watch/proxy`: a stream of snapshots, one JSON line each, for the
//! proxy its client certificate names. The first line is the snapshot in
//! force; another follows whenever that proxy's share of the mesh changes,
//! and a heartbeat line when nothing has for a while. A slow reader skips
//! versions rather than queueing them: it always gets the newest.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use metrics::{Gauge, gauge};
use tokio::sync::watch;

use serde::Serialize;

use ferry_config::{Role, SpiffeId, WatchEvent};

use crate::policy::{PolicyStore, Published, ViewKey};

/// A response body: whole, or a stream.
pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// Serves watches from a policy store.
pub struct WatchService {
    store: Arc<PolicyStore>,
    trust_domain: String,
    heartbeat: Duration,
    streams: Gauge,
    proxies: Arc<ProxyRegistry>,
}

/// A proxy watching now, as `/proxies` on the admin port lists it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectedProxy {
    /// Its verified identity.
    pub identity: String,
    /// `sidecar` or `worker`.
    pub role: &'static str,
    /// Its admin endpoint (`host:port`), as it reported it.
    pub admin: Option<String>,
    /// When its watch opened, seconds since the Unix epoch.
    pub since_unix_seconds: u64,
}

/// The proxies watching now, each under its watch's number.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, ConnectedProxy>>,
}

impl ProxyRegistry {
    /// Every proxy watching now, in the order their watches opened.
    pub fn list(&self) -> Vec<ConnectedProxy> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().cloned().collect()
    }

    fn add(self: &Arc<Self>, proxy: ConnectedProxy) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(id, proxy);
        id
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
    }
}

impl WatchService {
    /// Watches of `store` for proxies of `trust_domain`, with a heartbeat
    /// line after `heartbeat` of quiet.
    pub fn new(store: Arc<PolicyStore>, trust_domain: &str, heartbeat: Duration) -> Self {
        Self {
            store,
            trust_domain: trust_domain.to_owned(),
            heartbeat,
            streams: gauge!("watch_streams"),
            proxies: Arc::default(),
        }
    }

    /// The proxies watching now.
    pub fn proxies(&self) -> Arc<ProxyRegistry> {
        self.proxies.clone()
    }

    /// Answers one watch request from the proxy `peer` (its verified client
    /// certificate's identity, if it presented one).
    pub fn watch<B>(&self, request: &Request<B>, peer: Option<&SpiffeId>) -> Response<ApiBody> {
        if request.method() != Method::GET {
            return whole(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        if let Some(what) = crate::server::waiting_for(&self.store) {
            // A snapshot before every source has listed would be missing
            // what the cluster holds: proxies keep their last good one and
            // come back.
            return whole(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the control plane is not ready: {what}\n"),
            );
        }
        let Some(peer) = peer else {
            return whole(
                StatusCode::UNAUTHORIZED,
                "a watch needs the proxy's client certificate (mutual TLS)\n".into(),
            );
        };
        if peer.trust_domain() != self.trust_domain {
            return whole(
                StatusCode::FORBIDDEN,
                format!("{peer} is not of trust domain {}\n", self.trust_domain),
            );
        }
        let Some(namespace) = peer.namespace() else {
            return whole(
                StatusCode::FORBIDDEN,
                format!("{peer} names no workload (spiffe://<domain>/ns/<ns>/sa/<sa>)\n"),
            );
        };
        let role = match query_value(request.uri().query(), "role") {
            None | Some("sidecar") => Role::Sidecar,
            Some("worker") => Role::Worker,
            Some(other) => {
                return whole(
                    StatusCode::BAD_REQUEST,
                    format!("role '{other}' is not known: use sidecar or worker\n"),
                );
            }
        };
        let key = ViewKey {
            role,
            namespace: namespace.to_owned(),
        };
        // Where operators' tools can scrape it; only a plausible address is kept.
        let admin = query_value(request.uri().query(), "admin")
            .map(|a| a.replace("%5B", "[").replace("%5D", "]"))
            .filter(|a| a.parse::<std::net::SocketAddr>().is_ok());
        tracing::debug!(%peer, ?role, ?admin, "watch opened");
        let since_unix_seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let registered = self.proxies.add(ConnectedProxy {
            identity: peer.to_string(),
            role: role.as_str(),
            admin,
            since_unix_seconds,
        });
        let stream = Stream {
            updates: self.store.subscribe(),
            key,
            sent: None,
            heartbeat: self.heartbeat,
            _open: StreamGuard::new(self.streams.clone(), self.proxies.clone(), registered),
        };
        let frames = futures::stream::unfold(stream, next_line)
            .map(|line| Ok::<_, Infallible>(Frame::data(line)));
        let mut response = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }
}

/// One open watch.
struct Stream {
    updates: watch::Receiver<Arc<Published>>,
    key: ViewKey,
    /// Fingerprint of the last snapshot sent (its content, not its version).
    sent: Option<u64>,
    heartbeat: Duration,
    _open: StreamGuard,
}

/// The next line of a watch: a changed snapshot, or a heartbeat.
async fn next_line(mut stream: Stream) -> Option<(Bytes, Stream)> {
    if stream.sent.is_none() {
        let published = stream.updates.borrow_and_update().clone();
        let (fingerprint, line) = render(&published, &stream.key);
        stream.sent = Some(fingerprint);
        return Some((line, stream));
    }
    loop {
        tokio::select! {
            changed = stream.updates.changed() => {
                changed.ok()?;
                let published = stream.updates.borrow_and_update().clone();
                let (fingerprint, line) = render(&published, &stream.key);
                if stream.sent != Some(fingerprint) {
                    stream.sent = Some(fingerprint);
                    return Some((line, stream));
                }
            }
            () = tokio::time::sleep(stream.heartbeat) => {
                let version = stream.updates.borrow().version;
                let line = Bytes::from(WatchEvent::Heartbeat { version }.to_line());
                return Some((line, stream));
            }
        }
    }
}

/// The watch line for `key` and a fingerprint of what it says besides the
/// version, so a change elsewhere in the mesh sends nothing to this proxy.
fn render(published: &Published, key: &ViewKey) -> (u64, Bytes) {
    let line = published.line_for(key);
    let mut hasher = DefaultHasher::new();
    without_version(&line).hash(&mut hasher);
    (hasher.finish(), line)
}

/// The line with its version field cut out (it comes first in a snapshot).
fn without_version(line: &[u8]) -> &[u8] {
    const PREFIX: &[u8] = b"{\"type\":\"snapshot\",\"version\":";
    let Some(rest) = line.strip_prefix(PREFIX) else {
        return line;
    };
    match rest.iter().position(|&b| b == b',') {
        Some(comma) => &rest[comma..],
        None => line,
    }
}

/// Counts an open watch in `watch_streams` and lists its proxy while alive.
struct StreamGuard {
    streams: Gauge,
    proxies: Arc<ProxyRegistry>,
    registered: u64,
}

impl StreamGuard {
    fn new(streams: Gauge, proxies: Arc<ProxyRegistry>, registered: u64) -> Self {
        streams.increment(1.0);
        Self {
            streams,
            proxies,
            registered,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.decrement(1.0);
        self.proxies.remove(self.registered);
    }
}

/// A whole response body.
pub fn whole(status: StatusCode, text: String) -> Response<ApiBody> {
    let mut response = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_the_version_only() {
        let a = br#"{"type":"snapshot","version":3,"datasets":[]}"#;
        let b = br#"{"type":"snapshot","version":41,"datasets":[]}"#;
        let c = br#"{"type":"snapshot","version":41,"datasets":[1]}"#;
        assert_eq!(without_version(a), without_version(b));
        assert_ne!(without_version(b), without_version(c));
    }
}
