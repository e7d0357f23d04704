//! The response body: empty, one buffer, or chunks streamed as they arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http_body::{Frame, SizeHint};
use metrics::Counter;

use crate::origin::OriginError;

/// Why a streamed body stopped early; hyper then aborts the response
/// (connection reset / RST_STREAM), so the client never sees a short body as whole.
#[derive(Debug, thiserror::Error)]
#[error("response aborted: {0}")]
pub struct BodyError(#[from] pub OriginError);

/// A response body that never allocates for the common cases.
pub enum ProxyBody {
    /// No body.
    Empty,
    /// One buffer, sent at once.
    Full(Option<Bytes>),
    /// Chunks as they are fetched; `remaining` bytes still to come.
    Stream {
        /// The chunks.
        chunks: BoxStream<'static, Result<Bytes, OriginError>>,
        /// Bytes not yet sent.
        remaining: u64,
        /// Counts bytes as they go out (an aborted body counts what was sent).
        sent: Counter,
    },
}

impl ProxyBody {
    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }
}

/// A stream that yields a different length than promised is a bug upstream;
/// abort rather than send a wrong body.
fn mismatch(direction: &str) -> BodyError {
    BodyError(OriginError::Unavailable {
        origin: "chunk stream".to_owned(),
        detail: format!("produced {direction} bytes than the response promised"),
    })
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream {
                chunks,
                remaining,
                sent,
            } => match Pin::new(chunks).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => match remaining.checked_sub(bytes.len() as u64) {
                    Some(left) => {
                        *remaining = left;
                        sent.increment(bytes.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(bytes))))
                    }
                    None => Poll::Ready(Some(Err(mismatch("more")))),
                },
                Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(BodyError(err)))),
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(mismatch("fewer")))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(bytes) => bytes.is_none(),
            Self::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
