//! The control plane's listeners: the proxy API over TLS (`:8086`) and the
//! admin endpoints (`:9990`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
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

use ferry_config::{ControlPlaneConfig, NativeSidecars, SpiffeId};

use crate::api_certificate::ApiCertificate;
use crate::identity::{AnyOf, CertificateAuthority, FileTokens, IdentityService, TokenValidator};
use crate::policy::PolicyStore;
use crate::policy::WarmOrderError;
use crate::sources::kubernetes::TokenReviewValidator;
use crate::watch::{ProxyRegistry, WatchService};

/// Deadline of a TLS handshake on the API listener.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running control plane.
pub struct RunningControlPlane {
    /// The proxy API (TLS).
    pub listen: SocketAddr,
    /// The admin endpoints.
    pub admin: SocketAddr,
    /// The injection webhook, when it runs.
    pub webhook: Option<SocketAddr>,
    /// The trust bundle file proxies should be given.
    pub trust_bundle: std::path::PathBuf,
    /// The policies it serves.
    pub store: Arc<PolicyStore>,
}

/// Starts the control plane `config` describes.
pub async fn start(
    config: ControlPlaneConfig,
    prometheus: Option<PrometheusHandle>,
) -> anyhow::Result<RunningControlPlane> {
    let kubernetes =
        if config.kubernetes {
            Some(kube::Client::try_default().await.context(
                "--kubernetes: no usable cluster configuration (in-cluster, or KUBECONFIG)",
            )?)
        } else {
            None
        };
    let issuer = match (&config.ca_secret, &kubernetes) {
        (Some(name), Some(client)) => Some(
            crate::identity::ca_secret::load_or_create(
                client.clone(),
                &config.namespace,
                name,
                &config.trust_domain,
            )
            .await?,
        ),
        (Some(_), None) => {
            anyhow::bail!("--ca-secret keeps the CA in Kubernetes: it needs --kubernetes")
        }
        (None, _) => None,
    };
    let ca = Arc::new(CertificateAuthority::open_with(&config, issuer)?);
    let file_tokens: Option<Arc<dyn TokenValidator>> = match &config.tokens {
        Some(path) => Some(Arc::new(FileTokens::load(path)?)),
        None => None,
    };
    let review: Option<Arc<dyn TokenValidator>> = kubernetes
        .clone()
        .map(|client| Arc::new(TokenReviewValidator::new(client)) as Arc<dyn TokenValidator>);
    let tokens: Arc<dyn TokenValidator> = match (file_tokens, review) {
        (Some(file), Some(review)) => Arc::new(AnyOf(vec![file, review])),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => {
            tracing::warn!("no bootstrap token file: every certify request will be refused");
            Arc::new(FileTokens::empty())
        }
    };
    let own_identity = SpiffeId::workload(
        &config.trust_domain,
        &config.namespace,
        "ferry-control-plane",
    )
    .map_err(anyhow::Error::msg)?;
    let mut roots = RootCertStore::empty();
    for anchor in ca.anchors_pem() {
        roots.add(CertificateDer::from_pem_slice(anchor.as_bytes())?)?;
    }
    // Client certificates are optional here: certify authenticates with a
    // token (a proxy has no certificate yet); watches require one.
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()?;
    let certificate = ApiCertificate::start(ca.clone(), config.server_names.clone(), own_identity)?;
    let mut tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let store = PolicyStore::new(
        &config.trust_domain,
        ca.anchors_pem().to_vec(),
        Some(config.state_dir.join("policies.yaml")),
    );
    let service = Arc::new(IdentityService::new(
        ca.clone(),
        tokens,
        &config.trust_domain,
    ));
    let watches = Arc::new(WatchService::new(
        store.clone(),
        &config.trust_domain,
        config.watch_heartbeat.0,
    ));
    if let Some(dir) = &config.config_dir {
        crate::sources::file::start(dir, store.clone())?;
    }
    if let Some(client) = &kubernetes {
        crate::sources::kubernetes::start(
            client.clone(),
            store.clone(),
            &config.namespace,
            &config.trust_domain,
        );
    }

    match (&config.trust_bundle_configmap, &kubernetes) {
        (Some(name), Some(client)) => {
            tokio::spawn(crate::identity::bundle_configmap::keep(
                client.clone(),
                config.namespace.clone(),
                name.clone(),
                ca.bundle_pem(),
            ));
        }
        (Some(_), None) => anyhow::bail!("--trust-bundle-configmap needs --kubernetes"),
        (None, _) => {}
    }
    let api = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on admin address {}", config.admin))?;
    let listen = api.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let webhook = match (&config.injection.enabled, &kubernetes) {
        (true, Some(client)) => {
            Some(start_webhook(&config, client, &ca, &store, listen.port()).await?)
        }
        (true, None) => anyhow::bail!("the injection webhook needs --kubernetes"),
        (false, _) => None,
    };
    let proxies = watches.proxies();
    tokio::spawn(serve_api(api, acceptor, service, watches));
    tokio::spawn(serve_admin(admin, prometheus, store.clone(), proxies));
    Ok(RunningControlPlane {
        listen,
        admin: admin_addr,
        webhook,
        trust_bundle: config.state_dir.join("bundle.pem"),
        store,
    })
}

/// Starts the injection webhook: namespaces followed, the sidecar's shape
/// decided (native or not), a certificate for the Service's names, the
/// listener, and the keeper of the webhook configuration's `caBundle`.
/// Sidecars reach the API on `api_port` (the port it is bound to).
async fn start_webhook(
    config: &ControlPlaneConfig,
    client: &kube::Client,
    ca: &Arc<CertificateAuthority>,
    store: &Arc<PolicyStore>,
    api_port: u16,
) -> anyhow::Result<SocketAddr> {
    let injection = &config.injection;
    let namespaces = crate::inject::follow_namespaces(client.clone(), store);
    let native = match injection.native_sidecars {
        NativeSidecars::Always => true,
        NativeSidecars::Never => false,
        NativeSidecars::Auto => {
            let version = client
                .apiserver_version()
                .await
                .context("native sidecars: auto needs the API server's /version")?;
            let number = |text: &str| {
                text.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u32>()
                    .unwrap_or(0)
            };
            let (major, minor) = (number(&version.major), number(&version.minor));
            tracing::info!(
                major,
                minor,
                native = (major, minor) >= (1, 29),
                "API server version"
            );
            (major, minor) >= (1, 29)
        }
    };
    let service = format!("{}.{}.svc", injection.service, config.namespace);
    let control_plane_url = injection
        .control_plane_url
        .clone()
        .unwrap_or_else(|| format!("https://{service}:{api_port}"));
    let template = crate::inject::SidecarTemplate {
        image: injection.image.clone(),
        image_pull_policy: injection.image_pull_policy.clone(),
        control_plane_url,
        control_plane_namespace: config.namespace.clone(),
        trust_bundle: ca.bundle_pem(),
        native,
        allow_mount: injection.allow_mount,
    };
    let injector = Arc::new(crate::inject::Injector::new(
        template,
        injection.defaults.clone(),
        &config.namespace,
        Box::new(namespaces),
    ));
    let mut names = vec![service.clone(), format!("{service}.cluster.local")];
    names.extend(config.server_names.iter().cloned());
    let identity = SpiffeId::workload(
        &config.trust_domain,
        &config.namespace,
        "ferry-control-plane",
    )
    .map_err(anyhow::Error::msg)?;
    let certificate = ApiCertificate::start(ca.clone(), names, identity)?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind(injection.listen)
        .await
        .with_context(|| format!("cannot listen on webhook address {}", injection.listen))?;
    let address = listener.local_addr()?;
    tokio::spawn(crate::inject::serve(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        injector,
    ));
    if !injection.webhook_configuration.is_empty() {
        tokio::spawn(crate::inject::keep_ca_bundle(
            client.clone(),
            injection.webhook_configuration.clone(),
            ca.bundle_pem(),
        ));
    }
    tracing::info!(%address, native, "injection webhook serving");
    Ok(address)
}

async fn serve_api(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: Arc<IdentityService>,
    watches: Arc<WatchService>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        let watches = watches.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // Verified by the TLS handshake against the mesh's anchors.
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| SpiffeId::from_certificate(leaf.as_ref()))
                .map(Arc::new);
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let service = service.clone();
                let watches = watches.clone();
                let client = client.clone();
                async move {
                    let started = std::time::Instant::now();
                    let (route, response) = match request.uri().path() {
                        "/v1/identity/certify" => (
                            "certify",
                            service.certify(request).await.map(BodyExt::boxed_unsync),
                        ),
                        "/v1/watch/proxy" => ("watch", watches.watch(&request, client.as_deref())),
                        _ => (
                            "unknown",
                            crate::watch::whole(
                                StatusCode::NOT_FOUND,
                                "not found: POST /v1/identity/certify or GET /v1/watch/proxy\n"
                                    .into(),
                            ),
                        ),
                    };
                    crate::api_metrics::record(route, response.status(), started.elapsed());
                    Ok::<_, Infallible>(response)
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
    store: Arc<PolicyStore>,
    proxies: Arc<ProxyRegistry>,
) {
    let prometheus = Arc::new(prometheus);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let prometheus = prometheus.clone();
        let store = store.clone();
        let proxies = proxies.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let prometheus = prometheus.clone();
                let store = store.clone();
                let proxies = proxies.clone();
                async move {
                    if let Some(dataset) = request.uri().path().strip_prefix("/warm/") {
                        let dataset = dataset.to_owned();
                        return Ok(order_warm(&store, request, &dataset, peer).await);
                    }
                    Ok::<_, Infallible>(match request.uri().path() {
                        "/live" => text(StatusCode::OK, "live\n"),
                        "/ready" => match waiting_for(&store) {
                            None => text(StatusCode::OK, "ready\n"),
                            Some(what) => owned_text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {what}\n"),
                            ),
                        },
                        "/metrics" => match prometheus.as_ref() {
                            Some(handle) => {
                                // Read at scrape time: cheaper than keeping it current.
                                metrics::gauge!("runtime_alive_tasks").set(
                                    tokio::runtime::Handle::current()
                                        .metrics()
                                        .num_alive_tasks()
                                        as f64,
                                );
                                handle.run_upkeep();
                                Response::new(Full::new(Bytes::from(handle.render())))
                            }
                            None => text(
                                StatusCode::NOT_FOUND,
                                "metrics are not recorded in this process\n",
                            ),
                        },
                        "/policies" => json(&policies_report(&store)),
                        "/proxies" => json(&proxies_report(&store, &proxies)),
                        _ => text(
                            StatusCode::NOT_FOUND,
                            "not found: try /live, /ready, /metrics, /policies, /proxies or POST /warm/{dataset}\n",
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

/// The body of `POST /warm/{dataset}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmAsk {
    #[serde(default)]
    prefix: String,
    #[serde(default = "default_warm_concurrency")]
    concurrency: usize,
    #[serde(default)]
    bytes_per_second: Option<u64>,
}

fn default_warm_concurrency() -> usize {
    8
}

/// `POST /warm/{dataset}` (loopback only, as it spends origin bandwidth):
/// orders every worker of the data set's pool to warm it.
async fn order_warm(
    store: &PolicyStore,
    request: Request<hyper::body::Incoming>,
    dataset: &str,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let error = |status: StatusCode, code: &str, message: String| {
        let mut response = json(&serde_json::json!({ "code": code, "message": message }));
        *response.status_mut() = status;
        response
    };
    if request.method() != http::Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "use POST /warm/{dataset}; each worker's progress is its own GET /warm/{dataset}"
                .into(),
        );
    }
    if !peer.ip().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "warm-ups are ordered from localhost only (kubectl port-forward or exec)".into(),
        );
    }
    let body = match http_body_util::Limited::new(request.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "MalformedWarmUp",
                format!("the body could not be read: {err}"),
            );
        }
    };
    let ask: WarmAsk = if body.is_empty() {
        WarmAsk {
            prefix: String::new(),
            concurrency: default_warm_concurrency(),
            bytes_per_second: None,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(ask) => ask,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MalformedWarmUp",
                    format!("the body is not a warm-up request: {err}"),
                );
            }
        }
    };
    match store.order_warm(dataset, ask.prefix, ask.concurrency, ask.bytes_per_second) {
        Ok(order) => {
            tracing::info!(dataset, id = order.id, "warm-up ordered");
            let mut response = json(&serde_json::to_value(&order).unwrap_or_default());
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }
        Err(err @ WarmOrderError::UnknownDataset(_)) => {
            error(StatusCode::NOT_FOUND, "NoSuchDataset", err.to_string())
        }
        Err(err) => error(StatusCode::BAD_REQUEST, "MalformedWarmUp", err.to_string()),
    }
}

/// `/policies`: the version in force, what it is made of, what was refused.
fn policies_report(store: &PolicyStore) -> serde_json::Value {
    let current = store.current();
    let documents: Vec<serde_json::Value> = current
        .state
        .documents
        .iter()
        .map(|(key, document)| {
            serde_json::json!({
                "document": key.to_string(),
                "namespace": document.namespace,
                "datasets": document.policy.datasets.iter().map(|d| &d.name).collect::<Vec<_>>(),
                "pools": document.policy.pools.iter().map(|p| &p.name).collect::<Vec<_>>(),
            })
        })
        .collect();
    let discovered: Vec<serde_json::Value> = current
        .state
        .discovered_pools
        .iter()
        .map(|(key, pool)| {
            serde_json::json!({
                "pool": pool.name,
                "namespace": key.namespace,
                "members": pool.members.iter().map(|m| &m.address).collect::<Vec<_>>(),
            })
        })
        .collect();
    // Every pool with its scope and size, and the data sets whose pool is
    // unknown in their scope (sidecars leave those out until it appears).
    let scoped_pools: Vec<(Option<&str>, &ferry_config::PoolSpec)> = current
        .state
        .documents
        .values()
        .flat_map(|d| d.policy.pools.iter().map(|p| (d.namespace.as_deref(), p)))
        .chain(
            current
                .state
                .discovered_pools
                .iter()
                .map(|(k, p)| (k.namespace.as_deref(), p)),
        )
        .collect();
    let pools: Vec<serde_json::Value> = scoped_pools
        .iter()
        .map(|(namespace, pool)| {
            serde_json::json!({ "pool": pool.name, "namespace": namespace, "members": pool.members.len() })
        })
        .collect();
    let unresolved: Vec<serde_json::Value> = current
        .state
        .documents
        .iter()
        .flat_map(|(key, document)| {
            let usable: Vec<ferry_config::PoolSpec> = scoped_pools
                .iter()
                .filter(|(scope, _)| scope.is_none() || *scope == document.namespace.as_deref())
                .map(|(_, pool)| (*pool).clone())
                .collect();
            document
                .policy
                .datasets
                .iter()
                .filter(move |d| d.pool_in(&usable).is_err())
                .map(move |d| {
                    serde_json::json!({
                        "document": key.to_string(),
                        "dataset": d.name,
                        "pool": d.pool,
                    })
                })
        })
        .collect();
    let refused: Vec<serde_json::Value> = store
        .refusals()
        .iter()
        .map(|r| serde_json::json!({ "document": r.key.to_string(), "message": r.message }))
        .collect();
    serde_json::json!({
        "version": current.version,
        "ready": waiting_for(store).is_none(),
        "documents": documents,
        "discovered_pools": discovered,
        "pools": pools,
        "datasets_without_pool": unresolved,
        "refused": refused,
        "warm_orders": current.state.warm_orders.values().collect::<Vec<_>>(),
    })
}

/// The admin port's `/proxies`: the proxies watching this replica, and
/// the discovered pool members with an admin address (with several
/// replicas, most workers watch another one).
fn proxies_report(store: &PolicyStore, proxies: &ProxyRegistry) -> serde_json::Value {
    let current = store.current();
    let state = &current.state;
    let pool_workers: Vec<serde_json::Value> = state
        .discovered_pools
        .iter()
        .flat_map(|(key, pool)| {
            pool.members.iter().filter_map(move |member| {
                let admin = state.member_admins.get(&member.address)?;
                Some(serde_json::json!({
                    "pool": pool.name,
                    "namespace": key.namespace,
                    "address": member.address,
                    "admin": admin,
                    "identity": member.identity.as_ref().map(ToString::to_string),
                }))
            })
        })
        .collect();
    serde_json::json!({ "proxies": proxies.list(), "pool_workers": pool_workers })
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// What the control plane still waits for before it is ready (every
/// source listed once), if anything.
pub fn waiting_for(store: &PolicyStore) -> Option<String> {
    let pending = store.unsynced();
    (!pending.is_empty()).then(|| {
        let names: Vec<&str> = pending.into_iter().collect();
        format!("waiting for the first full list of {}", names.join(", "))
    })
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
