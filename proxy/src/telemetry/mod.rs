//! Metrics: names, help texts, the Prometheus recorder, and per-data-set
//! handles registered once so the hot path only bumps atomics.

pub mod traces;

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cache::CacheCounters;

pub use ferry_config::telemetry::LATENCY_BUCKETS;

/// Installs the process-wide Prometheus recorder and describes every metric.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        "request_total",
        "Requests received, by data set and direction."
    );
    describe_counter!(
        "response_total",
        "Responses sent, by data set, direction, classification (success or failure) and status code."
    );
    describe_histogram!(
        "response_latency_seconds",
        Unit::Seconds,
        "Time from request received to response headers sent."
    );
    describe_counter!(
        "response_bytes_total",
        Unit::Bytes,
        "Body bytes sent to clients."
    );
    describe_counter!(
        "cache_hits_total",
        "Chunk reads served from the cache, by tier."
    );
    describe_counter!(
        "cache_misses_total",
        "Chunk reads that had to wait for upstream, by tier."
    );
    describe_gauge!(
        "cache_bytes",
        Unit::Bytes,
        "Bytes of chunk data held, by tier."
    );
    describe_gauge!(
        "cache_capacity_bytes",
        Unit::Bytes,
        "Configured cache size, by tier."
    );
    describe_counter!(
        "cache_evictions_total",
        "Chunks evicted to make room, by tier."
    );
    describe_counter!(
        "cache_admission_rejections_total",
        "Chunks not admitted because the cache was full (pin) or they did not fit, by tier."
    );
    describe_counter!(
        "metadata_hits_total",
        "Object metadata lookups served from the cache."
    );
    describe_counter!(
        "metadata_misses_total",
        "Object metadata lookups sent upstream."
    );
    describe_counter!(
        "origin_requests_total",
        "Requests sent to the origin, by operation."
    );
    describe_counter!(
        "origin_bytes_total",
        Unit::Bytes,
        "Bytes read from the origin."
    );
    describe_counter!("origin_errors_total", "Origin requests that failed.");
    describe_histogram!(
        "origin_latency_seconds",
        Unit::Seconds,
        "Time for one origin request."
    );
    describe_counter!(
        "cache_checksum_failures_total",
        "Chunks read back from disk whose checksum did not match; dropped and fetched again."
    );
    describe_counter!(
        "upstream_requests_total",
        "Requests a sidecar sent to each worker of a pool."
    );
    describe_histogram!(
        "upstream_response_latency_seconds",
        Unit::Seconds,
        "Time from request to response headers, per worker."
    );
    describe_counter!(
        "upstream_failovers_total",
        "Requests moved to another worker after this one failed."
    );
    describe_counter!(
        "upstream_hedges_total",
        "Hedge requests sent to this worker because the first was slow."
    );
    describe_counter!(
        "upstream_hedges_won_total",
        "Hedge requests to this worker that answered first."
    );
    describe_counter!(
        "upstream_ejections_total",
        "Times this worker was ejected after repeated failures."
    );
    describe_counter!(
        "upstream_slowdowns_total",
        "Answers from this worker asking to slow down (SlowDown): passed on to the app, never a reason to eject."
    );
    describe_counter!(
        "admission_refused_total",
        "Requests refused with 503 SlowDown after waiting admission_wait, by listener and by the limit that was full (requests or memory)."
    );
    describe_gauge!(
        "admission_requests_in_flight",
        "Requests admitted and not yet finished (their bodies sent), by listener."
    );
    describe_gauge!("upstream_inflight", "Requests in flight to this worker.");
    describe_gauge!(
        "upstream_member_ejected",
        "1 while this worker is ejected (until a probe request succeeds)."
    );
    describe_gauge!("pool_members", "Workers in the pool now.");
    describe_counter!(
        "readahead_chunks_total",
        "Chunks fetched ahead of a sequential reader."
    );
    describe_counter!(
        "prefetch_chunks_total",
        "Chunks fetched ahead of the readers in a posted read order (POST /v1/prefetch)."
    );
    describe_counter!(
        "prefetch_dropped_bytes_total",
        Unit::Bytes,
        "Bytes fetched for a posted order and dropped unread: the readers went another way, or a new order replaced it."
    );
    describe_counter!(
        "warm_bytes_total",
        Unit::Bytes,
        "Bytes a warm-up fetched from the origin into this worker's cache (chunks it already held are not counted)."
    );
    describe_counter!(
        "warm_objects_total",
        "Objects whose chunks this worker owns are all held after a warm-up reached them (fetched or already cached)."
    );
    describe_gauge!(
        "warm_in_progress",
        "1 while a warm-up of the data set runs on this worker."
    );
    describe_gauge!("connections_open", "Client connections open, by direction.");
    describe_gauge!(
        "runtime_alive_tasks",
        "Tokio tasks alive in the proxy (read at scrape time): a count that only grows is a leak."
    );
    describe_counter!(
        "connections_closed_total",
        "Connections closed by their deadlines, by direction and reason (header_timeout: no request head in time; idle: no byte either way)."
    );
    describe_gauge!(
        "inflight_fetch_bytes",
        Unit::Bytes,
        "Chunk bytes being fetched upstream."
    );
    describe_gauge!(
        "config_version",
        "Version of the control plane's snapshot in force."
    );
    describe_gauge!(
        "identity_cert_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the certificate this proxy holds expires (seconds since the epoch)."
    );
    describe_counter!(
        "inbound_tls_handshake_failures_total",
        "TLS handshakes refused on the inbound listener, by reason."
    );
    describe_counter!(
        "inbound_authz_denied_total",
        "Inbound requests refused because the caller's identity is not in the data set's allow list."
    );
    describe_counter!(
        "upstream_identity_mismatches_total",
        "Connections to a worker refused because it presented another identity than expected."
    );
    describe_counter!(
        "control_plane_identity_mismatches_total",
        "Connections to the control plane refused because it presented another identity."
    );
    describe_gauge!(
        "config_last_update_timestamp_seconds",
        Unit::Seconds,
        "When the snapshot in force was applied."
    );
    describe_gauge!(
        "control_plane_connected",
        "1 while a watch of the control plane is open, else 0 (the last snapshot stays in force)."
    );
    describe_counter!(
        "config_rejected_total",
        "Snapshots that did not make a valid configuration and were not applied."
    );
}

/// Status codes the front door sends often enough to pre-register.
const COMMON_STATUSES: [u16; 11] = [200, 206, 304, 400, 403, 404, 412, 416, 500, 501, 503];

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The S3 front door for the local app (`127.0.0.1:4140`).
    Outbound,
    /// The worker's listener for other proxies (`:4143`).
    Inbound,
    /// The FUSE mount (`--mount`): reads the kernel sends, not the app's
    /// reads (page-cache hits never reach the proxy).
    Mount,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
            Self::Mount => "mount",
        }
    }
}

/// Golden-signal handles for one data set on one listener.
pub struct TrafficMetrics {
    dataset: String,
    direction: Direction,
    /// `request_total`.
    pub requests: Counter,
    /// `response_latency_seconds`.
    pub latency: Histogram,
    /// `response_bytes_total`.
    pub response_bytes: Counter,
    /// `response_total` per common status, registered on first use so idle
    /// statuses add no series.
    responses: [OnceLock<Counter>; COMMON_STATUSES.len()],
}

impl TrafficMetrics {
    /// Registers the handles for `dataset` on `direction`.
    pub fn new(dataset: &str, direction: Direction) -> Self {
        let labels = [
            ("dataset", dataset.to_owned()),
            ("direction", direction.as_str().to_owned()),
        ];
        if direction == Direction::Inbound {
            // Exported from the start, so a rule can tell none from unknown.
            counter!("inbound_authz_denied_total", "dataset" => dataset.to_owned()).increment(0);
        }
        Self {
            dataset: dataset.to_owned(),
            direction,
            requests: counter!("request_total", &labels),
            latency: histogram!("response_latency_seconds", &labels),
            response_bytes: counter!("response_bytes_total", &labels),
            responses: Default::default(),
        }
    }

    /// Counts one response with `status`.
    pub fn count_response(&self, status: u16) {
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(slot) => self.responses[slot]
                .get_or_init(|| response_counter(&self.dataset, self.direction, status))
                .increment(1),
            None => response_counter(&self.dataset, self.direction, status).increment(1),
        }
    }
}

fn response_counter(dataset: &str, direction: Direction, status: u16) -> Counter {
    let classification = ferry_config::telemetry::classification(status);
    counter!(
        "response_total",
        "dataset" => dataset.to_owned(),
        "direction" => direction.as_str(),
        "classification" => classification,
        "status_code" => status.to_string()
    )
}

/// Cache handles for one tier of one data set.
pub struct TierMetrics {
    /// `cache_hits_total`.
    pub hits: Counter,
    /// `cache_misses_total`.
    pub misses: Counter,
    /// `cache_bytes`.
    pub bytes: Gauge,
    /// `cache_capacity_bytes`.
    pub capacity: Gauge,
    /// `cache_evictions_total`.
    pub evictions: Counter,
    /// `cache_admission_rejections_total`.
    pub rejections: Counter,
    /// `cache_checksum_failures_total` (disk tier).
    pub checksum_failures: Counter,
}

impl TierMetrics {
    /// Registers the handles for `dataset`'s `tier` (`memory` or `disk`).
    pub fn new(dataset: &str, tier: &'static str) -> Self {
        let labels = [("dataset", dataset.to_owned()), ("tier", tier.to_owned())];
        Self {
            hits: counter!("cache_hits_total", &labels),
            misses: counter!("cache_misses_total", &labels),
            bytes: gauge!("cache_bytes", &labels),
            capacity: gauge!("cache_capacity_bytes", &labels),
            evictions: counter!("cache_evictions_total", &labels),
            rejections: counter!("cache_admission_rejections_total", &labels),
            checksum_failures: counter!("cache_checksum_failures_total", &labels),
        }
    }

    /// Counters the cache itself updates.
    pub fn cache_counters(&self) -> CacheCounters {
        CacheCounters {
            evictions: self.evictions.clone(),
            rejections: self.rejections.clone(),
        }
    }
}

/// Metric handles for one data set, registered once.
pub struct DatasetMetrics {
    /// Traffic on the app's front door.
    pub outbound: TrafficMetrics,
    /// Traffic from other proxies (workers).
    pub inbound: TrafficMetrics,
    /// Reads through the mount, registered on the first one, so proxies
    /// without a mount export no such series.
    mount: OnceLock<TrafficMetrics>,
    /// The memory tier.
    pub memory: TierMetrics,
    /// The disk tier (workers with a disk cache).
    pub disk: TierMetrics,
    /// `metadata_hits_total`.
    pub metadata_hits: Counter,
    /// `metadata_misses_total`.
    pub metadata_misses: Counter,
    /// `origin_requests_total{op="head"}`: requests upstream (the origin, or a sidecar's pool).
    pub origin_heads: Counter,
    /// `origin_requests_total{op="get"}`.
    pub origin_gets: Counter,
    /// `origin_requests_total{op="list"}`.
    pub origin_lists: Counter,
    /// `origin_bytes_total`.
    pub origin_bytes: Counter,
    /// `origin_errors_total`.
    pub origin_errors: Counter,
    /// `origin_latency_seconds`.
    pub origin_latency: Histogram,
    /// `readahead_chunks_total`.
    pub readahead: Counter,
    /// `prefetch_chunks_total`.
    pub prefetched: Counter,
    /// `prefetch_dropped_bytes_total`.
    pub prefetch_dropped: Counter,
    /// `warm_bytes_total`.
    pub warm_bytes: Counter,
    /// `warm_objects_total`.
    pub warm_objects: Counter,
    /// `warm_in_progress`.
    pub warm_in_progress: Gauge,
}

impl DatasetMetrics {
    /// Registers the handles for `dataset`.
    pub fn new(dataset: &str) -> Self {
        let name = dataset.to_owned();
        let origin_op = |op: &'static str| counter!("origin_requests_total", "dataset" => name.clone(), "op" => op);
        Self {
            outbound: TrafficMetrics::new(dataset, Direction::Outbound),
            inbound: TrafficMetrics::new(dataset, Direction::Inbound),
            mount: OnceLock::new(),
            memory: TierMetrics::new(dataset, "memory"),
            disk: TierMetrics::new(dataset, "disk"),
            metadata_hits: counter!("metadata_hits_total", "dataset" => name.clone()),
            metadata_misses: counter!("metadata_misses_total", "dataset" => name.clone()),
            origin_heads: origin_op("head"),
            origin_gets: origin_op("get"),
            origin_lists: origin_op("list"),
            origin_bytes: counter!("origin_bytes_total", "dataset" => name.clone()),
            origin_errors: counter!("origin_errors_total", "dataset" => name.clone()),
            origin_latency: histogram!("origin_latency_seconds", "dataset" => name.clone()),
            readahead: counter!("readahead_chunks_total", "dataset" => name.clone()),
            prefetched: counter!("prefetch_chunks_total", "dataset" => name.clone()),
            prefetch_dropped: counter!("prefetch_dropped_bytes_total", "dataset" => name.clone()),
            warm_bytes: counter!("warm_bytes_total", "dataset" => name.clone()),
            warm_objects: counter!("warm_objects_total", "dataset" => name.clone()),
            warm_in_progress: gauge!("warm_in_progress", "dataset" => name),
        }
    }

    /// The traffic handles for `direction`.
    pub fn traffic(&self, direction: Direction) -> &TrafficMetrics {
        match direction {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
            Direction::Mount => self
                .mount
                .get_or_init(|| TrafficMetrics::new(&self.outbound.dataset, Direction::Mount)),
        }
    }
}

/// Gauge of open client connections for a listener.
pub fn connections_open(direction: &'static str) -> Gauge {
    gauge!("connections_open", "direction" => direction)
}

/// Gauge of chunk bytes being fetched upstream.
pub fn inflight_fetch_bytes() -> Gauge {
    gauge!("inflight_fetch_bytes")
}
