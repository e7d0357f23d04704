//! Admin endpoints: `/live`, `/ready`, `/metrics`, `/config`, `/cache`, and
//! `/shutdown` (from loopback only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ferry_config::Role;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::Notify;

use crate::identity::Identity;
use crate::mesh::Mesh;
use crate::telemetry;
use crate::warm::WarmRequest;

/// Largest warm-up request body (a pool of thousands of members fits).
const MAX_WARM_REQUEST: usize = 1 << 20;

/// What the admin endpoints report on.
pub struct Admin {
    /// Set once listeners are bound and configuration is loaded.
    pub ready: AtomicBool,
    /// Prometheus renderer, when this process installed the recorder.
    pub prometheus: Option<PrometheusHandle>,
    /// The configuration and data sets in force.
    pub mesh: Arc<Mesh>,
    /// The mesh identity, when on.
    pub identity: Option<Arc<Identity>>,
    /// Notified by `/shutdown`.
    pub shutdown: Arc<Notify>,
    /// The addresses the listeners were bound to.
    pub bound: Bound,
}

/// The addresses a proxy's listeners were bound to (port 0 resolved), for `/config`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Bound {
    /// The front door.
    pub listen: SocketAddr,
    /// The inbound listener (workers).
    pub inbound: Option<SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
}

#[derive(Serialize)]
struct CacheReport {
    dataset: String,
    bucket: String,
    policy: &'static str,
    capacity_bytes: u64,
    used_bytes: u64,
    chunks: usize,
    metadata_objects: usize,
    disk: Option<DiskReport>,
}

#[derive(Serialize)]
struct DiskReport {
    used_bytes: u64,
    chunks: usize,
}

#[derive(Serialize)]
struct PoolReport {
    pool: String,
    members: Vec<MemberReport>,
}

#[derive(Serialize)]
struct MemberReport {
    address: String,
    weight: u32,
    zone: Option<String>,
    inflight: usize,
    available: bool,
}

impl Admin {
    /// Answers one admin request from `peer`.
    pub async fn handle<B>(
        self: Arc<Self>,
        request: Request<B>,
        peer: SocketAddr,
    ) -> Result<Response<Full<Bytes>>, Infallible>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if let Some(dataset) = request.uri().path().strip_prefix("/warm") {
            let dataset = dataset.trim_start_matches('/').to_owned();
            return Ok(self.warm(request, &dataset, peer).await);
        }
        let response = match (request.method(), request.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::GET, "/metrics") => self.metrics(),
            (&Method::GET, "/config") => json(&self.config_report()),
            (&Method::GET, "/cache") => json(&self.cache_report()),
            (&Method::GET, "/pools") => json(&self.pool_report()),
            (&Method::GET, "/identity") => json(&self.identity_report()),
            (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
                self.shutdown.notify_one();
                text(StatusCode::OK, "shutting down\n")
            }
            (&Method::POST, "/shutdown") => text(
                StatusCode::FORBIDDEN,
                "shutdown is allowed from localhost only\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /config, /cache, /pools, /identity, /warm or POST /shutdown\n",
            ),
        };
        Ok(response)
    }

    /// `/warm[/{dataset}]`: GET the warm-ups' progress; POST starts one and
    /// DELETE stops it, from loopback only (like `/shutdown`: a warm-up
    /// spends origin bandwidth and displaces what the cache holds).
    async fn warm<B>(
        &self,
        request: Request<B>,
        dataset: &str,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let datasets = self.mesh.datasets();
        let method = request.method().clone();
        if dataset.is_empty() {
            if method != Method::GET {
                return warm_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "use GET /warm, or POST, GET or DELETE /warm/{dataset}".to_owned(),
                );
            }
            let statuses: Vec<_> = datasets.iter().filter_map(|d| d.warm.status()).collect();
            return json(&statuses);
        }
        let Some(found) = datasets.iter().find(|d| d.policy.name == dataset) else {
            return warm_error(
                StatusCode::NOT_FOUND,
                "NoSuchDataset",
                format!("no data set is named '{dataset}' here"),
            );
        };
        if method != Method::GET && !peer.ip().is_loopback() {
            return warm_error(StatusCode::FORBIDDEN, "Forbidden", "warm-ups are started and stopped from localhost only (kubectl port-forward, or the policy's warm: on_start)".to_owned());
        }
        match method {
            Method::GET => match found.warm.status() {
                Some(status) => json(&status),
                None => warm_error(
                    StatusCode::NOT_FOUND,
                    "NoWarmUp",
                    format!("no warm-up of '{dataset}' was started"),
                ),
            },
            Method::DELETE => match found.warm.stop() {
                Some(status) => json(&status),
                None => warm_error(
                    StatusCode::NOT_FOUND,
                    "NoWarmUp",
                    format!("no warm-up of '{dataset}' was started"),
                ),
            },
            Method::POST => {
                if self.mesh.config().role != Role::Worker {
                    return warm_error(
                        StatusCode::CONFLICT,
                        "NotAWorker",
                        "warm-ups run on workers, which own the chunks; this proxy is a sidecar"
                            .to_owned(),
                    );
                }
                let body = match Limited::new(request.into_body(), MAX_WARM_REQUEST)
                    .collect()
                    .await
                {
                    Ok(body) => body.to_bytes(),
                    Err(err) => {
                        return warm_error(
                            StatusCode::BAD_REQUEST,
                            "MalformedWarmUp",
                            format!("the body could not be read: {err}"),
                        );
                    }
                };
                let parsed: WarmRequest = match serde_json::from_slice(&body) {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        return warm_error(
                            StatusCode::BAD_REQUEST,
                            "MalformedWarmUp",
                            format!("the body is not a warm-up request: {err}"),
                        );
                    }
                };
                match found.start_warm(parsed) {
                    Ok(status) => {
                        let mut response = json(&status);
                        *response.status_mut() = StatusCode::ACCEPTED;
                        response
                    }
                    Err(err) => warm_error(StatusCode::BAD_REQUEST, "MalformedWarmUp", err.0),
                }
            }
            _ => warm_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "use POST, GET or DELETE /warm/{dataset}".to_owned(),
            ),
        }
    }

    fn config_report(&self) -> serde_json::Value {
        let config = self.mesh.config();
        let mut report = serde_json::to_value(&*config).unwrap_or_default();
        if let Some(fields) = report.as_object_mut() {
            fields.insert(
                "control_plane".into(),
                serde_json::to_value(self.mesh.status()).unwrap_or_default(),
            );
            fields.insert(
                "bound".into(),
                serde_json::to_value(self.bound).unwrap_or_default(),
            );
            fields.insert(
                "snapshot".into(),
                serde_json::to_value(&*self.mesh.snapshot()).unwrap_or_default(),
            );
        }
        report
    }

    fn cache_report(&self) -> Vec<CacheReport> {
        let role = self.mesh.config().role;
        self.mesh
            .datasets()
            .iter()
            .map(|d| {
                let cache = d.chunks.cache();
                CacheReport {
                    dataset: d.policy.name.clone(),
                    bucket: d.policy.bucket.clone(),
                    policy: cache.policy(),
                    capacity_bytes: d.policy.cache_for(role).size.bytes(),
                    used_bytes: cache.used_bytes(),
                    chunks: cache.entries(),
                    metadata_objects: d.metadata.cached_objects(),
                    disk: d.chunks.disk().map(|disk| DiskReport {
                        used_bytes: disk.used_bytes(),
                        chunks: disk.entries(),
                    }),
                }
            })
            .collect()
    }

    fn identity_report(&self) -> serde_json::Value {
        let seconds = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        match self.identity.as_ref().and_then(|i| i.held()) {
            Some(held) => serde_json::json!({
                "mode": "control-plane",
                "spiffe_id": held.spiffe_id.to_string(),
                "issued_at": seconds(held.issued_at),
                "expires_at": seconds(held.expires_at),
            }),
            None => serde_json::json!({ "mode": "disabled" }),
        }
    }

    fn pool_report(&self) -> Vec<PoolReport> {
        self.mesh
            .datasets()
            .pools()
            .iter()
            .map(|pool| PoolReport {
                pool: pool.name.clone(),
                members: pool
                    .members_report()
                    .into_iter()
                    .map(|(member, available)| MemberReport {
                        address: member.address.clone(),
                        weight: member.weight,
                        zone: member.zone.clone(),
                        inflight: member.inflight(),
                        available,
                    })
                    .collect(),
            })
            .collect()
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let Some(prometheus) = &self.prometheus else {
            return text(
                StatusCode::NOT_FOUND,
                "metrics are not recorded in this process\n",
            );
        };
        // Gauges that are cheaper to read at scrape time than to keep current.
        metrics::gauge!("runtime_alive_tasks").set(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as f64,
        );
        let mut inflight = 0;
        for dataset in self.mesh.datasets().iter() {
            dataset
                .metrics
                .memory
                .bytes
                .set(dataset.chunks.cache().used_bytes() as f64);
            inflight = dataset.chunks.inflight_bytes();
        }
        telemetry::inflight_fetch_bytes().set(inflight as f64);
        prometheus.run_upkeep();
        let mut response = Response::new(Full::new(Bytes::from(prometheus.render())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}

fn warm_error(status: StatusCode, code: &str, message: String) -> Response<Full<Bytes>> {
    let mut response = json(&serde_json::json!({ "code": code, "message": message }));
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn json(value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "could not encode JSON\n"),
    }
}
