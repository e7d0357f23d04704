//! Listeners and connection handling: the S3 front door, a worker's inbound
//! listener (mutual TLS when identity is on) and the admin port, with a
//! bound on open connections and graceful shutdown.

mod accept;
mod deadline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use ferry_config::{IdentityMode, ProxyConfig, Role};

use crate::admin::Admin;
use crate::identity::Identity;
use crate::mesh::Mesh;
use crate::s3::FrontDoor;
use crate::telemetry::{self, Direction};
pub use accept::{Accept, Peer, Plain, Tls};

/// How long open connections get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection told to go away (HTTP/2 GOAWAY) has to
/// finish before it is closed anyway.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// HTTP/2 flow-control windows sized for multi-MiB chunks.
const H2_STREAM_WINDOW: u32 = 4 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;
/// hyper refuses a smaller read buffer.
const MIN_HEADER_BUFFER: usize = 8192;

/// A running proxy.
pub struct RunningProxy {
    /// Where the S3 front door listens.
    pub listen: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin: SocketAddr,
    /// Where a worker listens for sidecars.
    pub inbound: Option<SocketAddr>,
    shutdown: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// Starts graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// A handle that starts shutdown when notified.
    pub fn shutdown_handle(&self) -> Arc<Notify> {
        self.shutdown.clone()
    }

    /// Waits until the proxy has stopped.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds the listeners of `config` and serves until shutdown. With identity
/// on, only the admin listener serves (`/ready` false) until the first
/// certificate is held.
pub async fn start(
    config: ProxyConfig,
    prometheus: Option<PrometheusHandle>,
) -> anyhow::Result<RunningProxy> {
    start_announcing(config, prometheus, |_, _| {}).await
}

/// [`start`], calling `waiting(admin address, front door address)` when the
/// admin listener serves (and the front door answers 503) but the first
/// certificate is still to come.
pub async fn start_announcing(
    config: ProxyConfig,
    prometheus: Option<PrometheusHandle>,
    waiting: impl FnOnce(SocketAddr, SocketAddr),
) -> anyhow::Result<RunningProxy> {
    let identity = match config.identity.mode {
        IdentityMode::ControlPlane => Some(Identity::new(&config.identity)?),
        IdentityMode::Disabled => {
            if config.role == Role::Worker || !config.pools.is_empty() {
                tracing::warn!(
                    "identity is DISABLED: traffic between proxies is plaintext, unauthenticated and \
                     unauthorized. Development only; run with --identity control-plane in a cluster."
                );
            }
            None
        }
    };
    let mesh = Mesh::new(config.clone(), identity.as_ref().map(|i| i.tls.clone()))?;
    let front_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let inbound_listener = match config.role {
        Role::Worker => Some(
            TcpListener::bind(config.inbound)
                .await
                .with_context(|| format!("cannot listen on inbound address {}", config.inbound))?,
        ),
        Role::Sidecar => None,
    };
    let inbound = inbound_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    if config.role == Role::Worker {
        // Where the pool reaches this worker, for warm-ups it starts itself.
        let advertised = config.advertise.clone().or_else(|| {
            inbound
                .map(crate::mesh::reachable)
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.to_string())
        });
        if let Some(address) = advertised {
            mesh.set_advertised(address);
        }
    }
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("cannot listen on admin address {}", config.admin))?;
    let listen = front_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let shutdown = Arc::new(Notify::new());
    let domains = config.virtual_host_domains.clone();
    let door = Arc::new(FrontDoor::new(
        mesh.clone(),
        domains.clone(),
        Direction::Outbound,
        &config.limits,
    ));
    let inbound_door = Arc::new(
        FrontDoor::new(mesh.clone(), domains, Direction::Inbound, &config.limits).authorizing(
            identity
                .is_some()
                .then(|| config.identity.trust_domain.clone()),
        ),
    );
    let max_connections = config.limits.max_connections.max(1);
    let header_buffer = usize::try_from(config.limits.max_header_bytes.bytes())
        .unwrap_or(usize::MAX)
        .max(MIN_HEADER_BUFFER);
    let inbound_accept = match &identity {
        Some(identity) => Some(Tls::new(
            identity.tls.server_config()?,
            config.identity.handshake_timeout.0,
            config.identity.max_handshakes,
        )),
        None => None,
    };
    let awaiting_certificate = identity.clone();
    let role = config.role;
    let watch_spec = config.identity.clone();
    let admin = Arc::new(Admin {
        ready: false.into(),
        prometheus,
        mesh: mesh.clone(),
        identity,
        shutdown: shutdown.clone(),
        bound: crate::admin::Bound {
            listen,
            inbound,
            admin: admin_addr,
        },
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every open connection holds a sender: the drain ends when none is left.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let builder = Arc::new(http_builder(header_buffer, config.limits.header_timeout.0));
    let listeners = Listeners {
        builder: builder.clone(),
        stop: stop_rx,
        open: open_tx,
        header_timeout: config.limits.header_timeout.0,
        idle_timeout: config.limits.idle_timeout.0,
    };
    let admin_for_loop = admin.clone();
    let admin_task = tokio::spawn(listeners.clone().serve(
        admin_listener,
        Plain,
        64,
        "admin",
        move |request, peer: Peer| admin_for_loop.clone().handle(request, peer.address),
    ));
    // Bound already, so clients that come early get a 503 saying what the
    // proxy waits for instead of a connection nobody answers.
    let front_door = door.clone();
    let front = tokio::spawn(listeners.clone().serve(
        front_listener,
        Plain,
        max_connections,
        "outbound",
        move |request, _peer| door.clone().handle(request, None),
    ));
    if let Some(identity) = awaiting_certificate {
        waiting(admin_addr, listen);
        front_door.wait_for(Some("its first certificate from the control plane"));
        if let Err(err) = identity.obtain_first().await {
            let _ = stop_tx.send(true);
            return Err(err);
        }
        if watch_spec.watch {
            front_door.wait_for(Some("its first configuration from the control plane"));
            // Serve once the control plane's configuration is in force, so
            // the first request sees the data sets the mesh defines.
            let mut first = crate::mesh::watch::spawn(
                mesh.clone(),
                identity,
                role,
                &watch_spec.trust_domain,
                &watch_spec.control_plane_namespace,
                Some(admin_addr),
            )?;
            let _ = first.wait_for(|applied| *applied).await;
        }
        front_door.wait_for(None);
    }
    // Takes the last `listeners` (whether or not there is an inbound
    // listener), so only accept loops and connections hold the drain open.
    let inbound_task = inbound_listener.map(move |listener| {
        let serve = move |request, peer: Peer| inbound_door.clone().handle(request, peer.identity);
        match inbound_accept {
            Some(tls) => {
                tokio::spawn(listeners.serve(listener, tls, max_connections, "inbound", serve))
            }
            None => {
                tokio::spawn(listeners.serve(listener, Plain, max_connections, "inbound", serve))
            }
        }
    });
    // Mounted once the data sets are in force, so the first `ls` sees them.
    let mounted = match &config.mount {
        Some(spec) => match crate::mount::mount(
            &spec.dir,
            spec.threads,
            mesh.clone(),
            tokio::runtime::Handle::current(),
        ) {
            Ok(mounted) => Some(mounted),
            Err(err) => {
                let _ = stop_tx.send(true);
                return Err(err);
            }
        },
        None => None,
    };
    admin.ready.store(true, Ordering::Release);
    tracing::info!(%listen, admin = %admin_addr, ?inbound, "ferry-proxy ready");

    let shutdown_signal = shutdown.clone();
    let task = tokio::spawn(async move {
        shutdown_signal.notified().await;
        admin.ready.store(false, Ordering::Release);
        if let Some(mounted) = mounted {
            // First, so nothing is left mounted on a proxy that is gone.
            let unmounted = tokio::task::spawn_blocking(move || mounted.unmount()).await;
            if let Ok(Err(err)) = unmounted {
                tracing::error!(error = %format!("{err:#}"), "unmounting");
            }
        }
        tracing::info!("shutting down: no new connections, draining open ones");
        let _ = stop_tx.send(true);
        let _ = front.await;
        if let Some(task) = inbound_task {
            let _ = task.await;
        }
        let _ = admin_task.await;
        // The accept loops have returned and dropped their senders; each
        // connection was told to finish what it serves and go.
        if tokio::time::timeout(DRAIN_TIMEOUT, open_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    });
    Ok(RunningProxy {
        listen,
        admin: admin_addr,
        inbound,
        shutdown,
        task,
    })
}

fn http_builder(header_buffer: usize, header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(header_buffer)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(1024)
        // Rapid reset (CVE-2023-44487): a peer whose streams keep ending in
        // resets before or while they are served gets GOAWAY; the work of
        // a reset stream is dropped with it, admission slot included.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(1024);
    builder
}

/// What every listener shares: the HTTP settings and the shutdown signals.
#[derive(Clone)]
struct Listeners {
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    /// Held by each open connection (see the drain).
    open: mpsc::Sender<()>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Listeners {
    /// Accepts connections on `listener` through `accept` (plain or TLS) and
    /// serves each with `serve`, at most `max_connections` at once.
    async fn serve<A, F, Fut, B>(
        mut self,
        listener: TcpListener,
        accept: A,
        max_connections: usize,
        direction: &'static str,
        serve: F,
    ) where
        A: Accept,
        F: Fn(hyper::Request<hyper::body::Incoming>, Peer) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<hyper::Response<B>, std::convert::Infallible>> + Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = Arc::new(Semaphore::new(max_connections.max(1)));
        let open = telemetry::connections_open(direction);
        loop {
            // Past the connection limit, new connections wait in the kernel backlog.
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = self.stop.changed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.stop.changed() => return,
            };
            let (stream, address) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let accept = accept.clone();
            let serve = serve.clone();
            let builder = self.builder.clone();
            let mut stop = self.stop.clone();
            let held = self.open.clone();
            let open = open.clone();
            let (header_timeout, idle_timeout) = (self.header_timeout, self.idle_timeout);
            tokio::spawn(async move {
                // The handshake runs in the connection's own task, so a slow
                // one never holds up the accept loop.
                let Some((io, identity)) = accept.accept(stream, address).await else {
                    drop(permit);
                    return;
                };
                let peer = Peer { address, identity };
                let activity = deadline::Activity::new();
                let requests = activity.clone();
                let service = service_fn(move |request| {
                    requests.saw_request();
                    serve(request, peer.clone())
                });
                let io = deadline::Tracked::new(io, activity.clone());
                let connection = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                tokio::pin!(connection);
                open.increment(1.0);
                let deadlines = activity.expired(header_timeout, idle_timeout);
                tokio::pin!(deadlines);
                // Told to finish and go, by shutdown or for being idle.
                let mut going_away = false;
                let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
                let mut expired = None;
                if *stop.borrow_and_update() {
                    going_away = true;
                    connection.as_mut().graceful_shutdown();
                }
                loop {
                    tokio::select! {
                        ended = connection.as_mut() => {
                            if let Err(err) = ended {
                                tracing::debug!(%address, %err, "connection ended with an error");
                                // hyper's own timer for later HTTP/1.1 heads.
                                if err.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_timeout()) {
                                    expired = Some(deadline::Expired::HeaderTimeout);
                                }
                            }
                            break;
                        }
                        _ = stop.changed(), if !going_away => {
                            going_away = true;
                            connection.as_mut().graceful_shutdown();
                        }
                        reason = &mut deadlines, if expired.is_none() => {
                            expired = Some(reason);
                            if reason == deadline::Expired::HeaderTimeout {
                                // Dropping the connection closes it: a client
                                // that never finished a head is owed nothing.
                                break;
                            }
                            // Idle: HTTP/2 gets GOAWAY, so its client opens a
                            // new connection instead of losing a request sent
                            // as this one closes; HTTP/1.1 closes at once.
                            if !going_away {
                                going_away = true;
                                connection.as_mut().graceful_shutdown();
                            }
                            grace = Some(Box::pin(tokio::time::sleep(IDLE_CLOSE_GRACE)));
                        }
                        _ = async { if let Some(grace) = grace.as_mut() { grace.await } }, if grace.is_some() => {
                            // Response bodies still in flight go with it, and
                            // their admission too.
                            break;
                        }
                    }
                }
                drop(held);
                if let Some(expired) = expired {
                    counter!(
                        "connections_closed_total",
                        "direction" => direction,
                        "reason" => expired.as_str()
                    )
                    .increment(1);
                }
                open.decrement(1.0);
                drop(permit);
            });
        }
    }
}
