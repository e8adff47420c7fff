//! Holding a stream until its first token (or its end), and the body the
//! caller gets.

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
    metering::{Feeder, StreamProgress, observe},
    provider::WireFormat,
};

/// How holding a stream ended.
#[derive(Debug)]
pub(crate) enum Held {
    /// The first token came (with [`Hold::Complete`](super::Hold::Complete),
    /// the stream is complete), or the stream ended complete, or the hold
    /// limit was reached: hand the stream over.
    Handover,
    /// The stream failed while held.
    Failed(BoxError),
}

/// Reads a stream until its first token, or until it is complete, keeping
/// every byte.
///
/// Where the stream stands is read from its [`StreamProgress`]: the one a
/// layer further in (the meter, the attempt timeout) feeds, or else one
/// this hold attaches and feeds itself, so that a retry layer alone still
/// knows a first token from a ping.
pub(crate) struct Holding<B> {
    parts: Option<http::response::Parts>,
    /// Pinned on the heap: any body can be held, `Unpin` or not.
    body: Option<Pin<Box<B>>>,
    /// Set when no layer further in follows the stream: the hold does,
    /// then the caller's [`RetryBody`].
    feeder: Option<Feeder>,
    progress: StreamProgress,
    /// The frames held, as they came (no copy).
    frames: Vec<Bytes>,
    held: usize,
    limit: usize,
    /// Held until complete, not only until the first token.
    until_complete: bool,
    done: bool,
}

impl<B> Holding<B> {
    pub(crate) fn new(
        mut res: Response<B>,
        format: Option<WireFormat>,
        limit: usize,
        until_complete: bool,
    ) -> Self {
        let (progress, feeder) = StreamProgress::attach_with(&mut res, format, true)
            .expect("only success responses are held");
        let (parts, body) = res.into_parts();
        Holding {
            parts: Some(parts),
            body: Some(Box::pin(body)),
            feeder,
            progress,
            frames: Vec::new(),
            held: 0,
            limit,
            until_complete,
            done: false,
        }
    }
}

impl<B> fmt::Debug for Holding<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holding")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl<B> Future for Holding<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = (Held, Response<PeekedBody<B>>, Option<Feeder>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let body = this.body.as_mut().expect("polled after completion");
        let progress = &this.progress;
        let held = loop {
            if this.held >= this.limit {
                break Held::Handover;
            }
            let frame = ready!(body.as_mut().poll_frame(cx));
            observe(&mut this.feeder, &frame, || body.is_end_stream());
            match frame {
                None => {
                    this.done = true;
                    // Ended while held: complete (an empty answer, for
                    // content checks to judge) or truncated.
                    break match progress.failure_error() {
                        Some(e) => Held::Failed(e),
                        None => Held::Handover,
                    };
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
                    this.frames.push(bytes);
                    if let Some(e) = progress.failure_error() {
                        break Held::Failed(e);
                    }
                    if progress.is_complete() || (progress.has_output() && !this.until_complete) {
                        break Held::Handover;
                    }
                }
            }
        };
        let parts = this.parts.take().expect("polled after completion");
        let inner = this.body.take().expect("polled after completion");
        // Usually the first frame holds the first token: no copy at all.
        // (Held until complete, the frames are copied once, into one.)
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
        Poll::Ready((held, Response::from_parts(parts, body), this.feeder.take()))
    }
}

pin_project! {
    /// The body of a response that came through [`Retry`](super::Retry):
    /// every byte of the attempt that answered, including the ones read to
    /// classify it or held until a stream's first token (or, with
    /// [`Hold::Complete`](super::Hold::Complete), its end).
    ///
    /// Once a stream has been handed over (at its first token, its end, or
    /// the hold's bound), nothing is retried, and the stream's failures
    /// reach the caller as a typed
    /// [`StreamInterrupted`] whose source says what broke it: an error
    /// event ([`StreamError`](crate::metering::StreamError)), an event that
    /// is not valid JSON ([`MalformedStream`](crate::metering::MalformedStream)),
    /// an end before the finish reason
    /// ([`TruncatedStream`](crate::metering::TruncatedStream)), a timeout,
    /// a dropped connection. The answer is never silently partial: this is
    /// where a failure the stream's [`StreamProgress`] recorded becomes an
    /// error. The error follows the frame that revealed it, so every byte
    /// before it has reached the caller.
    pub struct RetryBody<B> {
        #[pin]
        inner: PeekedBody<B>,
        // Set when the stream was handed over after its first token.
        stream: Option<StreamProgress>,
        // Set when this layer follows the stream (no layer further in does).
        feeder: Option<Feeder>,
        // The stream's failure, yielded after the frame that revealed it.
        pending: Option<BoxError>,
        finished: bool,
    }
}

impl<B> RetryBody<B> {
    pub(crate) fn new(
        inner: PeekedBody<B>,
        handed_over_stream: Option<StreamProgress>,
        feeder: Option<Feeder>,
    ) -> Self {
        RetryBody {
            inner,
            stream: handed_over_stream,
            feeder,
            pending: None,
            finished: false,
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
            .field("stream", &self.stream)
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
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        if let Some(e) = this.pending.take() {
            *this.finished = true;
            return Poll::Ready(Some(Err(Box::new(StreamInterrupted::new(e)))));
        }
        // The bytes held were followed while held: only what comes from
        // the inner body now is new.
        let fresh = this.inner.yields_inner_next();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if fresh {
            observe(this.feeder, &frame, || this.inner.is_end_stream());
        }
        let Some(progress) = this.stream else {
            return Poll::Ready(frame);
        };
        match frame {
            Some(Ok(frame)) => {
                if progress.has_failed() {
                    *this.pending = progress.failure_error();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                *this.finished = true;
                Poll::Ready(Some(Err(Box::new(StreamInterrupted::new(e)))))
            }
            None => {
                *this.finished = true;
                match progress.failure_error() {
                    Some(e) => Poll::Ready(Some(Err(Box::new(StreamInterrupted::new(e))))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.finished {
            return true;
        }
        // A failure still to yield keeps the body open, whatever the inner
        // body says.
        self.pending.is_none()
            && self.inner.is_end_stream()
            && self.stream.as_ref().is_none_or(|p| !p.has_failed())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
