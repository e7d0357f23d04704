//! Turning an accepted TCP stream into a connection to serve: as is, or
//! after a mutual-TLS handshake that yields the peer's SPIFFE ID. TLS
//! handshakes have a deadline and a bound on how many run at once, so a
//! flood of half-open connections cannot starve the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use metrics::counter;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;

use ferry_config::SpiffeId;

use crate::tls::{handshake_failure_reason, spiffe_id_of};

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its address.
    pub address: SocketAddr,
    /// Its verified SPIFFE ID (mutual TLS only).
    pub identity: Option<Arc<SpiffeId>>,
}

/// A stream ready for HTTP and its peer's identity; `None` drops the connection.
pub type Accepted<Io> = BoxFuture<'static, Option<(Io, Option<Arc<SpiffeId>>)>>;

/// Prepares accepted streams.
pub trait Accept: Clone + Send + Sync + 'static {
    /// The stream to serve HTTP on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The stream ready for HTTP and the peer's identity; `None` drops it.
    fn accept(&self, stream: TcpStream, address: SocketAddr) -> Accepted<Self::Io>;
}

/// No TLS.
#[derive(Clone, Copy, Debug)]
pub struct Plain;

impl Accept for Plain {
    type Io = TcpStream;

    fn accept(&self, stream: TcpStream, _: SocketAddr) -> Accepted<TcpStream> {
        Box::pin(std::future::ready(Some((stream, None))))
    }
}

/// Mutual TLS with a required client certificate.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    handshakes: Arc<Semaphore>,
}

impl Tls {
    /// Handshakes with `config`, each within `timeout`, at most `max_handshakes` at once.
    pub fn new(config: rustls::ServerConfig, timeout: Duration, max_handshakes: usize) -> Self {
        // Exported from the start, so a rule can tell none from unknown.
        counter!("inbound_tls_handshake_failures_total", "reason" => "timeout").increment(0);
        Self {
            config: Arc::new(config),
            timeout,
            handshakes: Arc::new(Semaphore::new(max_handshakes.max(1))),
        }
    }
}

/// Encrypted bytes a connection may queue before writing them out.
const TLS_SEND_BUFFER: usize = 1 << 20;

fn refused(reason: &'static str) {
    counter!("inbound_tls_handshake_failures_total", "reason" => reason).increment(1);
}

impl Accept for Tls {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    fn accept(&self, stream: TcpStream, address: SocketAddr) -> Accepted<Self::Io> {
        let this = self.clone();
        Box::pin(async move {
            // A slot is taken only once the ClientHello is in: connections
            // that never speak hold no slot, so they cannot starve real
            // handshakes. Waiting for the hello and for a slot both count
            // against the one deadline.
            let handshake = async {
                let hello = LazyConfigAcceptor::new(Acceptor::default(), stream).await;
                let start = match hello {
                    Ok(start) => start,
                    Err(err) => return Some(Err(err)),
                };
                let _slot = this.handshakes.acquire().await.ok()?;
                Some(start.into_stream(Arc::clone(&this.config)).await)
            };
            let mut stream = match tokio::time::timeout(this.timeout, handshake).await {
                Ok(Some(Ok(stream))) => stream,
                Ok(Some(Err(err))) => {
                    let reason = handshake_failure_reason(&err);
                    refused(reason);
                    tracing::info!(%address, reason, %err, "refused a TLS connection");
                    return None;
                }
                Ok(None) => return None,
                Err(_) => {
                    refused("timeout");
                    tracing::info!(%address, "TLS handshake did not finish in time");
                    return None;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(spiffe_id_of);
            let Some(identity) = identity else {
                refused("no_spiffe_id");
                tracing::info!(%address, "refused a peer whose certificate names no SPIFFE ID");
                return None;
            };
            // rustls's default 64 KiB of pending records splits a chunk into
            // a writev per 64 KiB; HTTP/2 flow control already bounds what
            // one connection can have in flight.
            stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
            Some((stream, Some(Arc::new(identity))))
        })
    }
}
