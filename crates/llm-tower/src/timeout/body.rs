//! [`TimeoutBody`]: the limits that hold while the caller reads the body.

use std::{
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Buf;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{Elapsed, Phase, config::Limits, timer::Timer};
use crate::{BoxError, provider::headers::is_event_stream};

/// A limit in nanoseconds, `0` for none: validated limits are never zero.
/// Eight bytes instead of an `Option<Duration>`'s sixteen keeps the futures
/// and bodies small to move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span(u64);

impl Span {
    fn of(d: Option<Duration>) -> Span {
        Span(d.map_or(0, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
        }))
    }

    fn get(self) -> Option<Duration> {
        (self.0 != 0).then(|| Duration::from_nanos(self.0))
    }
}

/// Where a call stands against its limits: when it started, when its
/// headers came, and which limits apply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phases {
    start: Instant,
    /// The earlier of `total` and `attempt`, and which it is.
    call: Span,
    call_phase: Phase,
    first_byte: Span,
    first_token: Span,
    idle: Span,
    stream: Span,
    /// From the start to the end of the stream limit, once the headers came.
    stream_end: Span,
    /// The request asked for a stream: the first-token limit applies from
    /// the start.
    stream_request: bool,
    /// The response is a successful event stream: the first-token limit
    /// applies in the body.
    sse: bool,
}

type Due = (Instant, Phase, Duration);

/// The earliest of the candidates; ties go to the first (most specific).
fn earliest<const N: usize>(candidates: [Option<Due>; N]) -> Option<Due> {
    let mut best: Option<Due> = None;
    for c in candidates.into_iter().flatten() {
        if best.is_none_or(|b| c.0 < b.0) {
            best = Some(c);
        }
    }
    best
}

impl Phases {
    pub(crate) fn new(start: Instant, limits: Limits, stream_request: bool) -> Self {
        let (call_phase, call) = limits.call().unzip();
        Phases {
            start,
            call: Span::of(call),
            call_phase: call_phase.unwrap_or(Phase::Total),
            first_byte: Span::of(limits.first_byte),
            first_token: Span::of(limits.first_token),
            idle: Span::of(limits.idle),
            stream: Span::of(limits.stream),
            stream_end: Span::default(),
            stream_request,
            sse: false,
        }
    }

    /// `span` after the start, for `phase`, reported with `limit`.
    fn due(&self, span: Span, phase: Phase, limit: Span) -> Option<Due> {
        let d = span.get()?;
        Some((self.start.checked_add(d)?, phase, limit.get()?))
    }

    /// The first limit to fall before the response headers.
    pub(crate) fn head_deadline(&self) -> Option<Due> {
        earliest([
            self.due(self.first_byte, Phase::FirstByte, self.first_byte),
            if self.stream_request {
                self.due(self.first_token, Phase::FirstToken, self.first_token)
            } else {
                None
            },
            self.due(self.call, self.call_phase, self.call),
        ])
    }

    /// The phases once the response headers have come.
    pub(crate) fn at_headers<B>(&self, res: &Response<B>) -> Phases {
        let stream_end = match self.stream.get() {
            Some(d) => Span::of(Some(self.start.elapsed().saturating_add(d))),
            None => Span::default(),
        };
        Phases {
            sse: res.status().is_success() && is_event_stream(res.headers()),
            stream_end,
            ..*self
        }
    }

    /// The first limit to fall while reading the body.
    fn body_deadline(&self, token_seen: bool, idle_at: Option<Instant>) -> Option<Due> {
        earliest([
            if self.sse && !token_seen {
                self.due(self.first_token, Phase::FirstToken, self.first_token)
            } else {
                None
            },
            idle_at
                .zip(self.idle.get())
                .map(|(at, d)| (at, Phase::Idle, d)),
            self.due(self.stream_end, Phase::Stream, self.stream),
            self.due(self.call, self.call_phase, self.call),
        ])
    }

    fn idle(&self) -> Option<Duration> {
        self.idle.get()
    }

    pub(crate) fn since_start(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Spots the first SSE `data` field as the bytes pass, whatever the chunk
/// boundaries: comments (`: keep-alive`) and other fields do not count.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokenWatch {
    seen: bool,
    /// Bytes of `data:` matched at the start of the current line.
    matched: u8,
    /// The current line is known not to be a data line.
    skip_line: bool,
}

impl TokenWatch {
    const FIELD: &'static [u8] = b"data:";

    pub(crate) fn seen(&self) -> bool {
        self.seen
    }

    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !self.seen && !bytes.is_empty() {
            if self.skip_line {
                match memchr::memchr2(b'\n', b'\r', bytes) {
                    Some(i) => {
                        self.skip_line = false;
                        self.matched = 0;
                        bytes = &bytes[i + 1..];
                    }
                    None => return,
                }
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if b == b'\n' || b == b'\r' {
                self.matched = 0;
            } else if b == Self::FIELD[usize::from(self.matched)] {
                self.matched += 1;
                self.seen = usize::from(self.matched) == Self::FIELD.len();
            } else {
                self.skip_line = true;
            }
        }
    }
}

pin_project! {
    /// A response body whose limits hold while it is read: the call or
    /// attempt deadline, the first SSE `data` event, the idle time between
    /// chunks and the stream duration.
    ///
    /// Every frame passes through at once. When a limit elapses, the inner
    /// body is dropped at once, which closes the connection and so cancels
    /// the request upstream, and the body yields an [`Elapsed`] error and
    /// then ends.
    pub struct TimeoutBody<B> {
        #[pin]
        inner: Inner<B>,
        timer: Timer,
        phases: Phases,
        idle_at: Option<Instant>,
        token: TokenWatch,
    }
}

pin_project! {
    /// The inner body, until it ends or is given up.
    #[project = InnerProj]
    enum Inner<B> {
        Live { #[pin] body: B },
        Gone,
    }
}

impl<B> TimeoutBody<B> {
    pub(crate) fn new(inner: B, phases: Phases) -> Self {
        TimeoutBody {
            inner: Inner::Live { body: inner },
            timer: Timer::default(),
            phases,
            idle_at: None,
            token: TokenWatch::default(),
        }
    }

    /// The inner body; `None` once it ended, failed or timed out.
    pub fn get_ref(&self) -> Option<&B> {
        match &self.inner {
            Inner::Live { body } => Some(body),
            Inner::Gone => None,
        }
    }
}

impl<B> std::fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("phases", &self.phases)
            .field("token_seen", &self.token.seen())
            .finish_non_exhaustive()
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let InnerProj::Live { body } = this.inner.as_mut().project() else {
            return Poll::Ready(None);
        };
        match body.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.idle_at = None;
                if this.phases.sse && !this.token.seen() {
                    if let Some(data) = frame.data_ref() {
                        let mut slices = [IoSlice::new(&[]); 8];
                        let n = data.chunks_vectored(&mut slices);
                        for s in &slices[..n] {
                            this.token.feed(s);
                        }
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner.set(Inner::Gone);
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.inner.set(Inner::Gone);
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // Waiting for the next chunk: the idle limit runs from here.
        if this.idle_at.is_none() {
            *this.idle_at = this
                .phases
                .idle()
                .and_then(|d| Instant::now().checked_add(d));
        }
        let Some((at, phase, limit)) = this.phases.body_deadline(this.token.seen(), *this.idle_at)
        else {
            return Poll::Pending;
        };
        this.timer.arm(at, phase, limit);
        match this.timer.poll_fired(cx) {
            Some((phase, limit)) => {
                // Give the body up now: the connection closes and the
                // provider stops generating, whatever the caller does next.
                this.inner.set(Inner::Gone);
                let after = this.phases.since_start();
                Poll::Ready(Some(Err(Elapsed::new(phase, limit, after).into())))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::TokenWatch;

    fn watch(chunks: &[&str]) -> Option<usize> {
        let mut w = TokenWatch::default();
        for (i, c) in chunks.iter().enumerate() {
            w.feed(c.as_bytes());
            if w.seen() {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn data_fields_count_comments_and_other_fields_do_not() {
        assert_eq!(watch(&["data: {}\n\n"]), Some(0));
        assert_eq!(
            watch(&[": keep-alive\n\n", "event: ping\n", "data: {}\n\n"]),
            Some(2)
        );
        assert_eq!(watch(&["da", "ta", ":"]), Some(2), "split across chunks");
        assert_eq!(watch(&[": data: not a field\n"]), None);
        assert_eq!(watch(&["xdata: no\n", "id: 1\r\n"]), None);
        assert_eq!(watch(&["id: 1\r\ndata:x"]), Some(0));
    }

    proptest::proptest! {
        #[test]
        fn any_split_sees_the_field_in_the_chunk_that_completes_it(
            cuts in proptest::collection::vec(0usize..60, 0..6)
        ) {
            let text = ": ping\n\nevent: message_start\ndata: {}\n\n";
            let end = text.find("data:").unwrap() + 5;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort();
            cuts.dedup();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                if c > from {
                    chunks.push(&text[from..c]);
                    from = c;
                }
            }
            let mut offset = 0;
            let expected = chunks.iter().position(|c| {
                offset += c.len();
                offset >= end
            });
            proptest::prop_assert_eq!(watch(&chunks), expected);
        }
    }
}
