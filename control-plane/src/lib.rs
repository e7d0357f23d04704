//! Ferry's control plane: the identity service (the mesh CA), policies and
//! pools from files or Kubernetes streamed to proxies, and the sidecar
//! injection webhook.

pub mod api_certificate;
pub mod api_metrics;
pub mod cli;
pub mod ctl;
pub mod identity;
pub mod inject;
pub mod managed;
pub mod policy;
pub mod server;
pub mod sources;
pub mod watch;

/// Installs the process's TLS crypto provider (aws-lc-rs); call first in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Describes the control plane's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "identity_certificates_issued_total",
        "Workload certificates issued."
    );
    metrics::describe_gauge!(
        "config_version",
        "Version of the mesh's policies; grows with every accepted change."
    );
    metrics::describe_counter!(
        "policy_refused_total",
        "Policy documents refused (malformed, or clashing with another), by source."
    );
    metrics::describe_gauge!(
        "policy_documents_refused",
        "Documents whose latest content is refused (their last good version stays)."
    );
    metrics::describe_gauge!("watch_streams", "Proxies watching now.");
    metrics::describe_gauge!(
        "runtime_alive_tasks",
        "Tokio tasks alive in the control plane (read at scrape time): a count that only grows is a leak."
    );
    metrics::describe_counter!(
        "injection_total",
        "Pods the injection webhook decided on, by result (injected, skipped, denied) and reason."
    );
    metrics::describe_histogram!(
        "injection_latency_seconds",
        metrics::Unit::Seconds,
        "Time to decide on and patch one AdmissionReview, by result."
    );
    metrics::describe_counter!(
        "webhook_ca_bundle_patched_total",
        "Webhooks whose caBundle the control plane set to the trust bundle."
    );
    metrics::describe_counter!(
        "identity_certificates_refused_total",
        "Certify requests refused, by reason (bad_token, bad_csr, bad_request, unavailable, signing)."
    );
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
