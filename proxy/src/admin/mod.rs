//! Admin endpoints: `/live`, `/ready`, `/metrics`, `/config`, `/cache`, and
//! `/shutdown` (from loopback only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::sync::Notify;

use crate::identity::Identity;
use crate::mesh::Mesh;
use crate::telemetry;

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
    ) -> Result<Response<Full<Bytes>>, Infallible> {
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
                "not found: try /live, /ready, /metrics, /config, /cache, /pools, /identity or POST /shutdown\n",
            ),
        };
        Ok(response)
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
