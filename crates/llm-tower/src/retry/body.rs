//! Holding a stream until its first token, and the body the caller gets.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::StreamInterrupted;
use crate::{
    BoxError,
    classify::PeekedBody,
    metering::{SseParser, StreamError},
    provider::{
        WireFormat,
        usage::{StreamSignal, StreamUsage},
    },
};

/// How holding a stream ended.
#[derive(Debug)]
pub(crate) enum Held {
    /// The first token came (or the stream ended, or the hold limit was
    /// reached): hand the stream over.
    Handover,
    /// The stream failed before its first token.
    Failed(BoxError),
}

/// Reads a stream until its first token, keeping every byte.
pub(crate) struct Hold<B> {
    parts: Option<http::response::Parts>,
    body: Option<B>,
    /// The frames held, as they came (no copy).
    frames: Vec<Bytes>,
    held: usize,
    limit: usize,
    parser: SseParser,
    usage: StreamUsage,
    done: bool,
}

impl<B> Hold<B> {
    pub(crate) fn new(res: Response<B>, format: Option<WireFormat>, limit: usize) -> Self {
        let (parts, body) = res.into_parts();
        Hold {
            parts: Some(parts),
            body: Some(body),
            frames: Vec::new(),
            held: 0,
            limit,
            parser: SseParser::new(),
            usage: StreamUsage::new(format),
            done: false,
        }
    }
}

impl<B> fmt::Debug for Hold<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl<B> Future for Hold<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = (Held, Response<PeekedBody<B>>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let body = this.body.as_mut().expect("polled after completion");
        let held = loop {
            if this.held >= this.limit {
                break Held::Handover;
            }
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    this.done = true;
                    break Held::Handover;
                }
                Some(Err(e)) => break Held::Failed(e.into()),
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        // Trailers end the body.
                        this.done = true;
                        break Held::Handover;
                    };
                    let bytes = data.copy_to_bytes(data.remaining());
                    this.held += bytes.len();
                    let mut signal = StreamSignal::Continue;
                    let usage = &mut this.usage;
                    this.parser.feed(&bytes, |event| {
                        if matches!(signal, StreamSignal::Continue) {
                            signal = usage.on_event(event.event, event.data);
                        }
                    });
                    this.frames.push(bytes);
                    match signal {
                        StreamSignal::Error(e) => {
                            break Held::Failed(Box::new(StreamError::new(e)));
                        }
                        // A broken event before any token: let the caller's
                        // meter judge it; it is not a provider failure.
                        StreamSignal::Malformed(_) | StreamSignal::Continue => {}
                    }
                    if usage.content_events() > 0 || usage.is_complete() {
                        break Held::Handover;
                    }
                }
            }
        };
        let parts = this.parts.take().expect("polled after completion");
        let inner = this.body.take().expect("polled after completion");
        // Usually the first frame holds the first token: no copy at all.
        let prefix = match this.frames.len() {
            0 => Bytes::new(),
            1 => this.frames.pop().expect("one frame"),
            _ => {
                let mut all = BytesMut::with_capacity(this.held);
                for f in this.frames.drain(..) {
                    all.extend_from_slice(&f);
                }
                all.freeze()
            }
        };
        // A failure is kept apart: the caller gets it, after the bytes held,
        // only if no retry follows.
        let body = PeekedBody::from_parts(prefix, None, this.done, inner);
        Poll::Ready((held, Response::from_parts(parts, body)))
    }
}

pin_project! {
    /// The body of a response that came through [`Retry`](super::Retry):
    /// every byte of the attempt that answered, including the ones read to
    /// classify it or held until a stream's first token.
    ///
    /// Once a stream's first token has reached the caller, a later error of
    /// the stream comes wrapped in [`StreamInterrupted`]: it was not
    /// retried, and must not be.
    pub struct RetryBody<B> {
        #[pin]
        inner: PeekedBody<B>,
        // Set when the stream was handed over after its first token.
        interrupted_is_final: bool,
    }
}

impl<B> RetryBody<B> {
    pub(crate) fn new(inner: PeekedBody<B>, handed_over_stream: bool) -> Self {
        RetryBody {
            inner,
            interrupted_is_final: handed_over_stream,
        }
    }

    /// The bytes read by the retry layer that have not been yielded yet.
    pub fn peeked(&self) -> &[u8] {
        self.inner.peeked()
    }
}

impl<B> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Err(e)) if *this.interrupted_is_final => {
                Poll::Ready(Some(Err(Box::new(StreamInterrupted::new(e)))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
