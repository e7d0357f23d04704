//! The response body: empty, one buffer, or chunks streamed as they arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http_body::{Frame, SizeHint};
use metrics::Counter;

use crate::admission::Admitted;
use crate::origin::OriginError;
use crate::prefetch::Turn;

/// Why a streamed body stopped early; hyper then aborts the response
/// (connection reset / RST_STREAM), so the client never sees a short body as whole.
#[derive(Debug, thiserror::Error)]
#[error("response aborted: {0}")]
pub struct BodyError(#[from] pub OriginError);

/// A response body that never allocates for the common cases. It holds
/// its request's admission (slot and bytes) until it has been sent.
pub struct ProxyBody {
    kind: Kind,
    held: Option<Admitted>,
    turn: Option<Turn>,
    /// Whether the connection had a pass to write the bytes since they
    /// were handed over (the turn is kept until then).
    handed_over: bool,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    /// Chunks as they are fetched; `remaining` bytes still to come; `sent`
    /// counts bytes as they go out (an aborted body counts what was sent).
    Stream {
        chunks: BoxStream<'static, Result<Bytes, OriginError>>,
        remaining: u64,
        sent: Counter,
    },
}

impl ProxyBody {
    /// No body.
    pub const EMPTY: Self = Self {
        kind: Kind::Empty,
        held: None,
        turn: None,
        handed_over: false,
    };

    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
            held: None,
            turn: None,
            handed_over: false,
        }
    }

    /// Chunks as they arrive, `remaining` bytes in all; `sent` counts them out.
    pub fn stream(
        chunks: BoxStream<'static, Result<Bytes, OriginError>>,
        remaining: u64,
        sent: Counter,
    ) -> Self {
        Self {
            kind: Kind::Stream {
                chunks,
                remaining,
                sent,
            },
            held: None,
            turn: None,
            handed_over: false,
        }
    }

    /// This body, keeping `admitted` until it has been sent.
    pub fn holding(mut self, admitted: Admitted) -> Self {
        self.held = Some(admitted);
        self
    }

    /// This body, keeping its sample's `turn` of a posted order until it has
    /// been sent.
    pub fn in_turn(mut self, turn: Option<Turn>) -> Self {
        self.turn = turn;
        self
    }

    /// The length of a one-buffer body.
    pub fn full_len(&self) -> Option<usize> {
        match &self.kind {
            Kind::Full(Some(bytes)) => Some(bytes.len()),
            _ => None,
        }
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
        let this = self.get_mut();
        if let (Kind::Full(None), Some(_)) = (&this.kind, &this.turn) {
            // The bytes went to the connection, which writes them to the
            // socket when its body yields: one pass more before the next
            // sample's turn, so the turn covers the send itself.
            if !this.handed_over {
                this.handed_over = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.turn = None;
        }
        let frame = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream {
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
        };
        if matches!(frame, Poll::Ready(None)) {
            // Sent: the next request may have the slot and the bytes now.
            this.held = None;
            this.turn = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none() && self.turn.is_none(),
            Kind::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
