//! Logs and traces. Logs go to stderr, filtered by `RUST_LOG`. With an OTLP
//! endpoint in the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), the data path's spans
//! are exported over OTLP/HTTP (protobuf) as well.
//!
//! The data path's spans are at DEBUG level: without an endpoint no layer
//! wants them and each costs one disabled-callsite check. With one, each
//! request is sampled when it arrives ([`sampled`], following the standard
//! sampler variables): an unsampled request creates no span at all, so its
//! cost is one random number. A read that memory answers is one span (the
//! request, with `cache.outcome`); a lookup that waits gets spans for the
//! lookup, the chunk fetch and each upstream attempt or origin fetch. A
//! sampled request's spans go, when finished,
//! into a bounded queue that a background task exports in batches; when the
//! queue is full a span is dropped and counted, and new requests are not
//! traced (and counted) until it drains: the data path never waits for
//! telemetry, nor builds spans that could only be dropped.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::{Counter, counter, describe_counter};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Finished spans waiting for export at most.
const QUEUE: usize = 4096;
/// Spans per export request at most.
const BATCH: usize = 512;
/// A partial batch is sent after this long.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// An export that takes longer is abandoned (and its spans counted as dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, queued spans get this long to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps trace export running; [`Tracing::flush`] sends what is queued.
pub struct Tracing {
    export: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.export.is_some()
    }

    /// Exports the spans still queued (within a deadline), then stops.
    pub async fn flush(mut self) {
        // Ends the spans' path into the queue first.
        drop(self.provider.take());
        if let Some((stop, task)) = self.export.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, task).await;
        }
    }
}

/// Installs the process's logging and, when an OTLP endpoint is set, trace
/// export. Call once, from `main`, inside the Tokio runtime.
pub fn init(default_service: &str) -> anyhow::Result<Tracing> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !endpoint {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Tracing {
            export: None,
            provider: None,
        });
    }
    describe();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(default_service.to_owned());
    }
    let resource = resource.build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
    exporter.set_resource(&resource);
    let (queue, queued) = mpsc::channel(QUEUE);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(export_loop(exporter, queued, stopped));
    // Requests are sampled on arrival (see `sampled`); the SDK keeps every
    // span of a sampled request.
    let _ = SAMPLER.set(HeadSampler::from_env(
        queue.clone(),
        counter!("trace_spans_dropped_total"),
    ));
    let provider = SdkTracerProvider::builder()
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOn,
        )))
        .with_resource(resource)
        .with_span_processor(BoundedQueue {
            queue,
            dropped: counter!("trace_spans_dropped_total"),
        })
        .build();
    let tracer = provider.tracer("ferry-proxy");
    // Source locations, thread names and busy/idle times would cost every
    // span on the data path; the span names and fields say what happened.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        // Parents come from tracing's span tree; attaching an OpenTelemetry
        // context on every poll of a traced request bought nothing.
        .with_context_activation(false)
        .with_filter(
            // Decided once per call site: only Ferry's spans (so the many
            // trace events of hyper and h2 stay as cheap as without tracing).
            Targets::new()
                .with_target("ferry_proxy", tracing::Level::DEBUG)
                .and(tracing_subscriber::filter::filter_fn(|meta| meta.is_span()))
                // Decided per span: a request span is created only when
                // sampled; every other span only inside one.
                .and(tracing_subscriber::filter::dynamic_filter_fn(
                    |meta, context| meta.name() == "request" || context.lookup_current().is_some(),
                )),
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    tracing::info!("exporting traces over OTLP/HTTP");
    Ok(Tracing {
        export: Some((stop, task)),
        provider: Some(provider),
    })
}

fn describe() {
    describe_counter!(
        "trace_spans_exported_total",
        "Spans sent to the OTLP endpoint."
    );
    describe_counter!(
        "trace_spans_dropped_total",
        "Spans dropped, and requests left untraced, because the export queue was full or an export failed."
    );
    describe_counter!(
        "trace_export_failures_total",
        "Export requests that failed or timed out."
    );
}

/// Hands finished spans to the export task without ever waiting.
#[derive(Debug)]
struct BoundedQueue {
    queue: mpsc::Sender<SpanData>,
    dropped: Counter,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.dropped.increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends queued spans in batches, one export at a time, until stopped; then
/// sends what is left.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queued: mpsc::Receiver<SpanData>,
    mut stopped: oneshot::Receiver<()>,
) {
    let exported = counter!("trace_spans_exported_total");
    let dropped = counter!("trace_spans_dropped_total");
    let failures = counter!("trace_export_failures_total");
    let mut stopping = false;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        if !stopping {
            tokio::select! {
                first = queued.recv() => match first {
                    Some(span) => batch.push(span),
                    None => stopping = true,
                },
                _ = &mut stopped => stopping = true,
            }
        }
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            match queued.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) if stopping => break,
                Err(_) => match tokio::time::timeout_at(deadline, queued.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    _ => break,
                },
            }
        }
        if batch.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        let count = batch.len() as u64;
        match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
            Ok(Ok(())) => exported.increment(count),
            Ok(Err(err)) => {
                failures.increment(1);
                dropped.increment(count);
                tracing::debug!(%err, "trace export failed");
            }
            Err(_) => {
                failures.increment(1);
                dropped.increment(count);
            }
        }
    }
}

/// Whether and how requests are sampled, from `OTEL_TRACES_SAMPLER` and
/// `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
#[derive(Debug)]
struct HeadSampler {
    /// Share of new traces sampled.
    ratio: f64,
    /// Whether a caller's `traceparent` decides.
    parent_based: bool,
    /// The export queue: while it is full, no request is traced.
    queue: mpsc::Sender<SpanData>,
    /// Counts the requests left untraced for that.
    shed: Counter,
}

static SAMPLER: std::sync::OnceLock<HeadSampler> = std::sync::OnceLock::new();

impl HeadSampler {
    fn from_env(queue: mpsc::Sender<SpanData>, shed: Counter) -> Self {
        let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0);
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let (ratio, parent_based) = match name.as_str() {
            "always_on" => (1.0, false),
            "always_off" => (0.0, false),
            "traceidratio" => (ratio, false),
            "parentbased_always_off" => (0.0, true),
            "parentbased_traceidratio" => (ratio, true),
            _ => (1.0, true),
        };
        Self {
            ratio,
            parent_based,
            queue,
            shed,
        }
    }

    /// See [`sampled`].
    fn decide(&self, headers: &HeaderMap, root_ok: bool) -> Option<Context> {
        use opentelemetry::trace::TraceContextExt;
        // The caller's context, parsed once; a malformed traceparent counts as none.
        let caller = headers
            .contains_key("traceparent")
            .then(|| extract(headers))
            .filter(|cx| cx.span().span_context().is_valid());
        let traced = match caller {
            Some(caller) if self.parent_based || !root_ok => {
                let sampled = caller.span().span_context().is_sampled();
                sampled.then_some(caller)
            }
            caller => {
                let coin = root_ok && self.ratio > 0.0 && rand::random::<f64>() < self.ratio;
                // A sampler that does not follow parents still keeps the caller's trace.
                coin.then(|| caller.unwrap_or_else(Context::new))
            }
        }?;
        // A stalled collector would otherwise cost every request its spans,
        // built only to be dropped at the full queue.
        if self.queue.capacity() == 0 {
            self.shed.increment(1);
            return None;
        }
        Some(traced)
    }
}

/// Whether a request with `headers` is traced, and under which parent: a
/// caller's sampled `traceparent` (when the sampler follows parents), or a
/// new trace at the sampler's ratio. Requests from other proxies (`root_ok`
/// false) are traced only as part of a caller's trace, so one read is
/// never sampled twice over. None while the export queue is full.
pub fn sampled(headers: &HeaderMap, root_ok: bool) -> Option<Context> {
    SAMPLER.get()?.decide(headers, root_ok)
}

/// The trace context the W3C `traceparent` header of `headers` carries.
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Adds `traceparent` for `span` to `headers`, when it is being traced.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
}

/// Makes `span` a child of `parent` (a caller's trace), when it has one.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    use opentelemetry::trace::TraceContextExt;
    if !span.is_disabled() && parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn sampler(ratio: f64, queue: mpsc::Sender<SpanData>, shed: &Arc<AtomicU64>) -> HeadSampler {
        HeadSampler {
            ratio,
            parent_based: true,
            queue,
            shed: Counter::from_arc(shed.clone()),
        }
    }

    #[test]
    fn a_full_export_queue_leaves_requests_untraced_and_counts_them() {
        let (queue, _queued) = mpsc::channel(1);
        let shed = Arc::new(AtomicU64::new(0));
        let sampler = sampler(1.0, queue.clone(), &shed);
        let headers = HeaderMap::new();
        assert!(sampler.decide(&headers, true).is_some(), "room: traced");
        let held = queue.try_reserve().expect("the queue has room for one");
        assert!(sampler.decide(&headers, true).is_none(), "full: untraced");
        assert!(sampler.decide(&headers, true).is_none(), "still full");
        assert_eq!(
            shed.load(Ordering::Relaxed),
            2,
            "each untraced request counted"
        );
        drop(held);
        assert!(
            sampler.decide(&headers, true).is_some(),
            "drained: traced again"
        );
    }

    #[test]
    fn an_unsampled_request_is_not_counted_as_shed() {
        let (queue, _queued) = mpsc::channel(1);
        let shed = Arc::new(AtomicU64::new(0));
        let sampler = sampler(0.0, queue.clone(), &shed);
        let _held = queue.try_reserve().expect("the queue has room for one");
        assert!(sampler.decide(&HeaderMap::new(), true).is_none());
        assert_eq!(shed.load(Ordering::Relaxed), 0);
    }
}
