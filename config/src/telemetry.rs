//! The telemetry contract every Ferry process keeps: histogram buckets and
//! how a response is classified.

/// Histogram buckets for request and chunk latencies: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// `classification` of a response: a server error is a failure of the
/// service; anything else (a 404, a 403) is the service working.
pub fn classification(status: u16) -> &'static str {
    if status >= 500 { "failure" } else { "success" }
}
