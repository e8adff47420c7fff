use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The default number of error-body bytes read to classify a response:
/// 64 KiB, far more than any provider's error body.
pub const DEFAULT_ERROR_BODY_LIMIT: usize = 64 << 10;

/// Reads the start of a response body, up to a limit, and resolves to the
/// same response with a [`PeekedBody`] that yields every byte again.
///
/// It never fails: an error of the body while peeking is kept and yielded
/// by the [`PeekedBody`] in its place, after the bytes read before it.
///
/// Any body will do, [`Unpin`] or not: the body is pinned on the heap for
/// the peek (one allocation, on this path only).
pub struct PeekBody<B> {
    parts: Option<http::response::Parts>,
    body: Option<Pin<Box<B>>>,
    buf: BytesMut,
    limit: usize,
    trailers: Option<HeaderMap>,
    error: Option<crate::BoxError>,
    done: bool,
}

impl<B> PeekBody<B> {
    /// Peeks at most `limit` bytes of `response`'s body.
    pub fn new(response: Response<B>, limit: usize) -> Self {
        let (parts, body) = response.into_parts();
        PeekBody {
            parts: Some(parts),
            body: Some(Box::pin(body)),
            buf: BytesMut::new(),
            limit,
            trailers: None,
            error: None,
            done: false,
        }
    }
}

impl<B> Future for PeekBody<B>
where
    B: Body,
    B::Error: Into<crate::BoxError>,
{
    type Output = Response<PeekedBody<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let body = this.body.as_mut().expect("polled after completion");
        while !this.done && this.buf.len() < this.limit && this.error.is_none() {
            match ready!(body.as_mut().poll_frame(cx)) {
                None => this.done = true,
                Some(Err(e)) => this.error = Some(e.into()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let n = chunk.len();
                            this.buf.extend_from_slice(chunk);
                            data.advance(n);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.trailers = Some(trailers);
                        }
                        this.done = true;
                    }
                },
            }
        }
        let parts = this.parts.take().expect("polled after completion");
        let inner = this.body.take().expect("polled after completion");
        Poll::Ready(Response::from_parts(
            parts,
            PeekedBody {
                prefix: this.buf.split().freeze(),
                error: this.error.take(),
                trailers: this.trailers.take(),
                inner_done: this.done,
                inner: Inner::Boxed { body: inner },
            },
        ))
    }
}

pin_project! {
    /// A response body whose first bytes were read to classify it; yields
    /// them again, then the rest of the body, then any error or trailers met
    /// while peeking. Nothing is lost.
    pub struct PeekedBody<B> {
        prefix: Bytes,
        error: Option<crate::BoxError>,
        trailers: Option<HeaderMap>,
        inner_done: bool,
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    /// The body behind the peeked bytes: as it came, or pinned on the heap
    /// when it was read from (so that it need not be [`Unpin`]).
    #[project = InnerProj]
    enum Inner<B> {
        Direct { #[pin] body: B },
        Boxed { body: Pin<Box<B>> },
    }
}

/// What polling a body for a frame gives.
type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

impl<B: Body> Inner<B> {
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled<B> {
        match self.project() {
            InnerProj::Direct { body } => body.poll_frame(cx),
            InnerProj::Boxed { body } => body.as_mut().poll_frame(cx),
        }
    }
}

impl<B> Inner<B> {
    fn get_ref(&self) -> &B {
        match self {
            Inner::Direct { body } => body,
            Inner::Boxed { body } => body,
        }
    }
}

impl<B> PeekedBody<B> {
    /// A body with nothing peeked, passing `inner` through.
    pub fn passthrough(inner: B) -> Self {
        PeekedBody {
            prefix: Bytes::new(),
            error: None,
            trailers: None,
            inner_done: false,
            inner: Inner::Direct { body: inner },
        }
    }

    /// A body that yields `prefix`, then `error` if any, then the rest of
    /// `inner` unless `inner_done`.
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    pub(crate) fn from_parts(
        prefix: Bytes,
        error: Option<crate::BoxError>,
        inner_done: bool,
        inner: Pin<Box<B>>,
    ) -> Self {
        PeekedBody {
            prefix,
            error,
            trailers: None,
            inner_done,
            inner: Inner::Boxed { body: inner },
        }
    }

    /// Whether the whole body was read while peeking, without error.
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    pub(crate) fn is_complete(&self) -> bool {
        self.inner_done && self.error.is_none() && self.trailers.is_none()
    }

    /// Whether the next frame comes from the inner body (nothing peeked,
    /// no error or trailers kept, is left to yield).
    #[cfg_attr(not(feature = "retry"), allow(dead_code))]
    pub(crate) fn yields_inner_next(&self) -> bool {
        self.prefix.is_empty() && self.error.is_none() && self.trailers.is_none()
    }

    /// The bytes read while peeking (until yielded).
    pub fn peeked(&self) -> &[u8] {
        &self.prefix
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        self.inner.get_ref()
    }
}

impl<B> Body for PeekedBody<B>
where
    B: Body,
    B::Error: Into<crate::BoxError>,
{
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(std::mem::take(this.prefix)))));
        }
        if let Some(e) = this.error.take() {
            *this.inner_done = true;
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if *this.inner_done {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            None => {
                *this.inner_done = true;
                Poll::Ready(None)
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => Poll::Ready(Some(Ok(
                frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
            ))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.error.is_none()
            && self.trailers.is_none()
            && (self.inner_done || self.inner.get_ref().is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.len() as u64;
        if self.inner_done {
            return SizeHint::with_exact(prefix);
        }
        let inner = self.inner.get_ref().size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + prefix);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

impl<B> fmt::Debug for PeekBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeekBody")
            .field("peeked", &self.buf.len())
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<B> fmt::Debug for PeekedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeekedBody")
            .field("prefix", &self.prefix.len())
            .field("inner_done", &self.inner_done)
            .finish_non_exhaustive()
    }
}
