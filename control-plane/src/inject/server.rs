//! The webhook's HTTPS listener: `POST /v1/inject`, on a certificate the
//! mesh CA issues for the control plane's Service name.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::Injector;

/// Largest AdmissionReview read (a Pod's is a few KiB; the API server's
/// own request limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;
/// Deadline of a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `injector` on `listener` with `tls` until the process ends.
pub async fn serve(listener: TcpListener, tls: TlsAcceptor, injector: Arc<Injector>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let injector = injector.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let injector = injector.clone();
                async move { Ok::<_, Infallible>(answer(&injector, request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    injector: &Injector,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/v1/inject" {
        return text(StatusCode::NOT_FOUND, "not found: POST /v1/inject\n".into());
    }
    if request.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the AdmissionReview could not be read (at most {MAX_BODY} bytes): {err}\n"
                ),
            );
        }
    };
    match injector.review(&body) {
        Ok(answer) => {
            let mut response = Response::new(Full::new(Bytes::from(answer)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(message) => text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
