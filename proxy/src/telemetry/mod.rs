//! Metrics: names, help texts, the Prometheus recorder, and per-data-set
//! handles registered once so the hot path only bumps atomics.

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cache::CacheCounters;

/// Histogram buckets for request and chunk latencies: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

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
        "readahead_chunks_total",
        "Chunks fetched ahead of a sequential reader."
    );
    describe_gauge!("connections_open", "Client connections open, by direction.");
    describe_gauge!(
        "inflight_fetch_bytes",
        Unit::Bytes,
        "Chunk bytes being fetched upstream."
    );
}

/// Status codes the front door sends often enough to pre-register.
const COMMON_STATUSES: [u16; 11] = [200, 206, 304, 400, 403, 404, 412, 416, 500, 501, 503];

/// Metric handles for one data set (or `unknown` for requests matching none).
pub struct DatasetMetrics {
    dataset: String,
    direction: &'static str,
    /// `request_total`.
    pub requests: Counter,
    /// `response_latency_seconds`.
    pub latency: Histogram,
    /// `response_bytes_total`.
    pub response_bytes: Counter,
    /// `response_total` per common status, registered on first use so idle
    /// statuses add no series.
    responses: [OnceLock<Counter>; COMMON_STATUSES.len()],
    /// `cache_hits_total{tier="memory"}`.
    pub cache_hits: Counter,
    /// `cache_misses_total{tier="memory"}`.
    pub cache_misses: Counter,
    /// `cache_bytes{tier="memory"}`.
    pub cache_bytes: Gauge,
    /// `cache_capacity_bytes{tier="memory"}`.
    pub cache_capacity: Gauge,
    /// `metadata_hits_total`.
    pub metadata_hits: Counter,
    /// `metadata_misses_total`.
    pub metadata_misses: Counter,
    /// `origin_requests_total{op="head"}`.
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
}

impl DatasetMetrics {
    /// Registers the handles for `dataset` on the front door (`direction`).
    pub fn new(dataset: &str, direction: &'static str) -> Self {
        let name = dataset.to_owned();
        let labels = [
            ("dataset", name.clone()),
            ("direction", direction.to_owned()),
        ];
        let tier =
            |metric: &'static str| counter!(metric, "dataset" => name.clone(), "tier" => "memory");
        let origin_op = |op: &'static str| counter!("origin_requests_total", "dataset" => name.clone(), "op" => op);
        Self {
            requests: counter!("request_total", &labels),
            latency: histogram!("response_latency_seconds", &labels),
            response_bytes: counter!("response_bytes_total", &labels),
            responses: Default::default(),
            cache_hits: tier("cache_hits_total"),
            cache_misses: tier("cache_misses_total"),
            cache_bytes: gauge!("cache_bytes", "dataset" => name.clone(), "tier" => "memory"),
            cache_capacity: gauge!("cache_capacity_bytes", "dataset" => name.clone(), "tier" => "memory"),
            metadata_hits: counter!("metadata_hits_total", "dataset" => name.clone()),
            metadata_misses: counter!("metadata_misses_total", "dataset" => name.clone()),
            origin_heads: origin_op("head"),
            origin_gets: origin_op("get"),
            origin_lists: origin_op("list"),
            origin_bytes: counter!("origin_bytes_total", "dataset" => name.clone()),
            origin_errors: counter!("origin_errors_total", "dataset" => name.clone()),
            origin_latency: histogram!("origin_latency_seconds", "dataset" => name.clone()),
            readahead: counter!("readahead_chunks_total", "dataset" => name.clone()),
            dataset: name,
            direction,
        }
    }

    /// Counters the cache itself updates.
    pub fn cache_counters(&self) -> CacheCounters {
        CacheCounters {
            evictions: counter!("cache_evictions_total", "dataset" => self.dataset.clone(), "tier" => "memory"),
            rejections: counter!(
                "cache_admission_rejections_total",
                "dataset" => self.dataset.clone(),
                "tier" => "memory"
            ),
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

fn response_counter(dataset: &str, direction: &'static str, status: u16) -> Counter {
    let classification = if status >= 500 { "failure" } else { "success" };
    counter!(
        "response_total",
        "dataset" => dataset.to_owned(),
        "direction" => direction,
        "classification" => classification,
        "status_code" => status.to_string()
    )
}

/// Gauge of open client connections for a direction.
pub fn connections_open(direction: &'static str) -> Gauge {
    gauge!("connections_open", "direction" => direction)
}

/// Gauge of chunk bytes being fetched upstream.
pub fn inflight_fetch_bytes() -> Gauge {
    gauge!("inflight_fetch_bytes")
}
