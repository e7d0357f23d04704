//! An OTLP/HTTP trace receiver for tests: decodes the protobuf requests
//! proxies send (with the OpenTelemetry proto types) and keeps the spans.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One span as received.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Hex trace ID.
    pub trace_id: String,
    /// Hex span ID.
    pub span_id: String,
    /// Hex parent span ID; empty for a root.
    pub parent: String,
    /// Attributes, as text.
    pub attributes: HashMap<String, String>,
}

/// The receiver.
pub struct OtlpReceiver {
    /// Where to send: `http://127.0.0.1:PORT`.
    pub url: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    arrived: Arc<Notify>,
}

impl OtlpReceiver {
    /// Starts one that answers every export.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (kept, notify) = (spans.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, notify) = (kept.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (kept, notify) = (kept.clone(), notify.clone());
                        async move {
                            let body = request.into_body().collect().await.map(|b| b.to_bytes());
                            let status = match body
                                .ok()
                                .and_then(|b| ExportTraceServiceRequest::decode(b).ok())
                            {
                                Some(export) => {
                                    kept.lock().expect("lock").extend(flatten(export));
                                    notify.notify_waiters();
                                    StatusCode::OK
                                }
                                None => StatusCode::BAD_REQUEST,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            let mut response = Response::new(Full::new(Bytes::from(answer)));
                            *response.status_mut() = status;
                            response.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            spans,
            arrived,
        }
    }

    /// A collector that accepts connections and never answers.
    pub async fn stalled() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        (url, task)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits until the spans received satisfy `done`, or `limit` passes.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            if done(&self.spans()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return done(&self.spans());
            }
        }
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .map(|v| text(v.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                text(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    spans
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
