//! Connection deadlines hyper does not keep for us: a connection must send
//! its first request head within the header timeout (hyper's own timer
//! covers later heads on HTTP/1.1, but not the protocol sniffing before the
//! first one, nor HTTP/2), and one that moves no byte either way for the
//! idle timeout is closed. So a client that connects and trickles, or
//! connects and says nothing, holds its connection slot for a bounded time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a connection last moved bytes, and whether it has sent a request.
pub struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last byte read or written.
    last_ms: AtomicU64,
    requested: AtomicBool,
}

/// Why a connection was closed by its deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within the header timeout.
    HeaderTimeout,
    /// No byte either way for the idle timeout.
    Idle,
}

impl Expired {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
        }
    }
}

impl Activity {
    /// A connection opened now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            requested: AtomicBool::new(false),
        })
    }

    /// Records that a request head arrived.
    pub fn saw_request(&self) {
        self.requested.store(true, Ordering::Relaxed);
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Resolves when the connection has outlived a deadline: no request
    /// within `header_timeout` of opening, or, after one, `idle_timeout`
    /// without a byte either way.
    pub async fn expired(&self, header_timeout: Duration, idle_timeout: Duration) -> Expired {
        tokio::time::sleep(header_timeout).await;
        if !self.requested.load(Ordering::Relaxed) {
            return Expired::HeaderTimeout;
        }
        loop {
            let idle = self.idle_for();
            if idle >= idle_timeout {
                return Expired::Idle;
            }
            tokio::time::sleep(idle_timeout - idle).await;
        }
    }
}

/// A stream that records its activity.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// Wraps `inner`, recording into `activity`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires_at_the_header_timeout() {
        let activity = Activity::new();
        activity.touch();
        let started = tokio::time::Instant::now();
        let expired = activity
            .expired(Duration::from_secs(10), Duration::from_secs(120))
            .await;
        assert_eq!(expired, Expired::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn idleness_counts_from_the_last_byte() {
        let activity = Activity::new();
        activity.saw_request();
        std::thread::sleep(Duration::from_millis(30));
        assert!(activity.idle_for() >= Duration::from_millis(30));
        activity.touch();
        assert!(activity.idle_for() < Duration::from_millis(30));
    }
}
