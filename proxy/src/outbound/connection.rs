//! One pooled HTTP/2 connection to a worker, shared by every request to it,
//! reopened after it breaks. Flow-control windows are sized for multi-MiB
//! chunks: with h2's 64 KiB default a 4 MiB chunk would stall on window
//! updates every 64 KiB.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Socket read buffer under TLS.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// How connections to workers are made.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    /// Deadline of TCP connect plus the HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 window per stream.
    pub stream_window: u32,
    /// HTTP/2 window per connection.
    pub connection_window: u32,
}

impl From<&ferry_config::BalanceSpec> for ConnectionSettings {
    fn from(balance: &ferry_config::BalanceSpec) -> Self {
        Self {
            connect_timeout: balance.connect_timeout.0,
            stream_window: u32::try_from(balance.stream_window.bytes()).unwrap_or(u32::MAX >> 1),
            connection_window: u32::try_from(balance.connection_window.bytes())
                .unwrap_or(u32::MAX >> 1),
        }
    }
}

/// Why a request to a worker did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection broke or refused the stream.
    #[error("request failed: {0}")]
    Request(String),
}

/// A lazily opened, shared HTTP/2 connection to one address, over mutual
/// TLS when `tls` is given.
pub struct Connection {
    address: String,
    settings: ConnectionSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    sender: Mutex<Option<SendRequest<Empty<Bytes>>>>,
    /// Serialises (re)connecting so a burst of requests opens one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// A connection to `address` (`host:port`), opened on first use.
    pub fn new(
        address: &str,
        settings: ConnectionSettings,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            address: address.to_owned(),
            settings,
            tls,
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<SendRequest<Empty<Bytes>>> {
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        sender.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn forget(&self) {
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        *sender = None;
    }

    async fn open(&self) -> Result<SendRequest<Empty<Bytes>>, SendError> {
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        // The async lock is held across the connect on purpose: one task
        // connects while the others wait for its result.
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.current() {
            return Ok(sender);
        }
        let connect = async {
            let stream = TcpStream::connect(&self.address)
                .await
                .map_err(|e| SendError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => self.handshake(stream).await,
                Some(config) => {
                    let host = self
                        .address
                        .rsplit_once(':')
                        .map_or(self.address.as_str(), |(host, _)| host);
                    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                        .map_err(|e| {
                            SendError::Connect(format!("{host} is not a valid server name: {e}"))
                        })?;
                    // rustls reads the socket 4 KiB at a time; a buffer
                    // underneath turns that into one syscall per 64 KiB,
                    // which is most of the TLS cost of a bulk download.
                    let stream = BufReader::with_capacity(TLS_READ_BUFFER, stream);
                    let tls = TlsConnector::from(Arc::clone(config))
                        .connect(name, stream)
                        .await
                        .map_err(|e| SendError::Connect(format!("TLS: {e}")))?;
                    self.handshake(tls).await
                }
            }
        };
        let sender = tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "no connection within {:?}",
                    self.settings.connect_timeout
                ))
            })??;
        let mut slot = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// The HTTP/2 handshake over `io`; the connection is driven by its own task.
    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Empty<Bytes>>, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.settings.stream_window)
            .initial_connection_window_size(self.settings.connection_window)
            .max_frame_size(1 << 20)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            // Pings while idle keep the worker's idle deadline from closing
            // a pooled connection just as a request takes it.
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(format!("HTTP/2 handshake: {e}")))?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%address, %err, "worker connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `request` on the shared connection, opening it if needed.
    pub async fn send(
        &self,
        request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = self.open().await?;
        if sender.ready().await.is_err() {
            self.forget();
            sender = self.open().await?;
        }
        sender.send_request(request).await.map_err(|err| {
            if sender.is_closed() {
                self.forget();
            }
            SendError::Request(err.to_string())
        })
    }

    /// The address this connects to.
    pub fn address(&self) -> &str {
        &self.address
    }
}
