//! The control plane's listeners: the proxy API over TLS (`:8086`) and the
//! admin endpoints (`:9990`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use ferry_config::{ControlPlaneConfig, SpiffeId};

use crate::identity::{CertificateAuthority, FileTokens, IdentityService, TokenValidator};

/// Deadline of a TLS handshake on the API listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running control plane.
pub struct RunningControlPlane {
    /// The proxy API (TLS).
    pub listen: SocketAddr,
    /// The admin endpoints.
    pub admin: SocketAddr,
    /// The trust bundle file proxies should be given.
    pub trust_bundle: std::path::PathBuf,
}

/// Starts the control plane `config` describes.
pub async fn start(
    config: ControlPlaneConfig,
    prometheus: Option<PrometheusHandle>,
) -> anyhow::Result<RunningControlPlane> {
    let ca = CertificateAuthority::open(&config)?;
    let tokens: Arc<dyn TokenValidator> = match &config.tokens {
        Some(path) => Arc::new(FileTokens::load(path)?),
        None => {
            tracing::warn!("no bootstrap token file: every certify request will be refused");
            Arc::new(FileTokens::empty())
        }
    };
    let own_identity =
        SpiffeId::workload(&config.trust_domain, "ferry-system", "ferry-control-plane")
            .map_err(anyhow::Error::msg)?;
    let (chain, key) = ca.server_identity(&config.server_names, &own_identity)?;
    let mut roots = RootCertStore::empty();
    for anchor in ca.anchors_pem() {
        roots.add(CertificateDer::from_pem_slice(anchor.as_bytes())?)?;
    }
    // Client certificates are optional here: certify authenticates with a
    // token; the watch API (next) will require them.
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()?;
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let service = Arc::new(IdentityService::new(ca, tokens, &config.trust_domain));

    let api = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on admin address {}", config.admin))?;
    let listen = api.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_api(api, acceptor, service));
    tokio::spawn(serve_admin(admin, prometheus, ready.clone()));
    ready.store(true, Ordering::Release);
    Ok(RunningControlPlane {
        listen,
        admin: admin_addr,
        trust_bundle: config.state_dir.join("bundle.pem"),
    })
}

async fn serve_api(listener: TcpListener, acceptor: TlsAcceptor, service: Arc<IdentityService>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let service = service.clone();
                async move {
                    Ok::<_, Infallible>(match request.uri().path() {
                        "/v1/identity/certify" => service.certify(request).await,
                        _ => text(
                            StatusCode::NOT_FOUND,
                            "not found: POST /v1/identity/certify\n",
                        ),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn serve_admin(
    listener: TcpListener,
    prometheus: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
) {
    let prometheus = Arc::new(prometheus);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let prometheus = prometheus.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let prometheus = prometheus.clone();
                let ready = ready.clone();
                async move {
                    Ok::<_, Infallible>(match request.uri().path() {
                        "/live" => text(StatusCode::OK, "live\n"),
                        "/ready" if ready.load(Ordering::Acquire) => {
                            text(StatusCode::OK, "ready\n")
                        }
                        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                        "/metrics" => match prometheus.as_ref() {
                            Some(handle) => {
                                handle.run_upkeep();
                                Response::new(Full::new(Bytes::from(handle.render())))
                            }
                            None => text(
                                StatusCode::NOT_FOUND,
                                "metrics are not recorded in this process\n",
                            ),
                        },
                        _ => text(
                            StatusCode::NOT_FOUND,
                            "not found: try /live, /ready or /metrics\n",
                        ),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
