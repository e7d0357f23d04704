//! Golden signals of the proxy API (`:8086`), in the same names and labels
//! as the proxies': `request_total`, `response_total{classification,
//! status_code}` and `response_latency_seconds` (time to the response
//! head; a watch's stream then stays open), by `route`.

use std::time::Duration;

use http::StatusCode;
use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder, or `None` when one is
/// installed already (a test or bench running several in one process).
pub fn install_recorder() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &ferry_config::telemetry::LATENCY_BUCKETS,
        )
        .ok()?
        .install_recorder()
        .ok()?;
    describe_counter!("request_total", "API requests received, by route.");
    describe_counter!(
        "response_total",
        "API responses sent, by route, classification (success or failure) and status code."
    );
    describe_histogram!(
        "response_latency_seconds",
        Unit::Seconds,
        "Time from an API request to its response head, by route."
    );
    Some(handle)
}

/// Records one API request to `route` answered `status` after `latency`.
pub fn record(route: &'static str, status: StatusCode, latency: Duration) {
    let direction = ("direction", "inbound");
    counter!("request_total", "route" => route, direction.0 => direction.1).increment(1);
    let classification = ferry_config::telemetry::classification(status.as_u16());
    counter!(
        "response_total",
        "route" => route,
        direction.0 => direction.1,
        "classification" => classification,
        "status_code" => status.as_str().to_owned()
    )
    .increment(1);
    histogram!("response_latency_seconds", "route" => route, direction.0 => direction.1)
        .record(latency);
}
