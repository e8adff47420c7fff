//! [`TimeoutBody`]: the limits that hold while the caller reads the body.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{Elapsed, Phase, config::Limits, timer::Timer};
use crate::{
    BoxError,
    metering::{Feeder, StreamProgress, observe},
    provider::headers::is_event_stream,
};

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

    /// Whether the body's limits need to know where the stream stands: a
    /// first-token limit on a successful event stream.
    pub(crate) fn needs_progress(&self) -> bool {
        self.sse && self.first_token.get().is_some()
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

pin_project! {
    /// A response body whose limits hold while it is read: the call or
    /// attempt deadline, the stream's first token, the idle time between
    /// chunks and the stream duration.
    ///
    /// Every frame passes through at once. When a limit elapses, the inner
    /// body is dropped at once, which closes the connection and so cancels
    /// the request upstream, and the body yields an [`Elapsed`] error and
    /// then ends. The elapsed limit is first recorded in the body's
    /// [`StreamProgress`], so the layers inside (a circuit breaker, the
    /// meter) count the call as timed out, not as abandoned.
    ///
    /// The first token is the stream's first event carrying model output,
    /// as its [`StreamProgress`] says: a ping or an empty delta does not
    /// end the first-token limit. Any chunk, pings included, ends an idle
    /// period: `idle` bounds silence on the connection, `first_token`
    /// bounds the wait for output.
    #[project = TimeoutBodyProj]
    pub struct TimeoutBody<B> {
        #[pin]
        inner: Inner<B>,
        // Set when no layer further in follows the stream: this body does.
        feeder: Option<Feeder>,
        timer: Timer,
        phases: Phases,
        idle_at: Option<Instant>,
        progress: Option<StreamProgress>,
        // A limit found passed at a frame: the body fails at the next poll.
        expired: Option<(Phase, Duration)>,
        // Frames ready in a row since the body last waited.
        ready_run: u32,
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
    pub(crate) fn new(
        inner: B,
        phases: Phases,
        progress: Option<StreamProgress>,
        feeder: Option<Feeder>,
    ) -> Self {
        TimeoutBody {
            inner: Inner::Live { body: inner },
            feeder,
            timer: Timer::default(),
            phases,
            idle_at: None,
            progress,
            expired: None,
            ready_run: 0,
        }
    }

    /// The inner body; `None` once it ended, failed or timed out.
    pub fn get_ref(&self) -> Option<&B> {
        match &self.inner {
            Inner::Live { body } => Some(body),
            Inner::Gone => None,
        }
    }

    fn token_seen(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(StreamProgress::has_output)
    }
}

impl<B> std::fmt::Debug for TimeoutBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutBody")
            .field("phases", &self.phases)
            .field("token_seen", &self.token_seen())
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
        if let Some((phase, limit)) = this.expired.take() {
            return give_up(this, phase, limit);
        }
        let InnerProj::Live { mut body } = this.inner.as_mut().project() else {
            return Poll::Ready(None);
        };
        let polled = body.as_mut().poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            observe(this.feeder, frame, || body.is_end_stream());
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                *this.idle_at = None;
                // A body that is always ready never waits for the timer:
                // its limits are checked every few frames in a row, once a
                // frame has told whether the first token came. A limit
                // passed fails the body after this frame.
                *this.ready_run = this.ready_run.wrapping_add(1);
                if (*this.ready_run).is_multiple_of(READY_CHECK_EVERY) {
                    let token_seen = this
                        .progress
                        .as_ref()
                        .is_some_and(StreamProgress::has_output);
                    if let Some((at, phase, limit)) = this.phases.body_deadline(token_seen, None)
                        && Instant::now() >= at
                    {
                        *this.expired = Some((phase, limit));
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
            Poll::Pending => *this.ready_run = 0,
        }
        // Waiting for the next chunk: the idle limit runs from here.
        if this.idle_at.is_none() {
            *this.idle_at = this
                .phases
                .idle()
                .and_then(|d| Instant::now().checked_add(d));
        }
        let token_seen = this
            .progress
            .as_ref()
            .is_some_and(StreamProgress::has_output);
        let Some((at, phase, limit)) = this.phases.body_deadline(token_seen, *this.idle_at) else {
            return Poll::Pending;
        };
        this.timer.arm(at, phase, limit);
        match this.timer.poll_fired(cx) {
            Some((phase, limit)) => give_up(this, phase, limit),
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired.is_none() && self.get_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.get_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// How many frames in a row a body may yield without waiting before its
/// limits are checked against the clock: reading the clock at every frame
/// would cost more than the frame.
const READY_CHECK_EVERY: u32 = 16;

/// A limit elapsed: record it for the layers inside, then drop the inner
/// body now — the connection closes and the provider stops generating,
/// whatever the caller does next.
fn give_up<B, T>(
    mut this: TimeoutBodyProj<'_, B>,
    phase: Phase,
    limit: Duration,
) -> Poll<Option<Result<T, BoxError>>> {
    let elapsed = Elapsed::new(phase, limit, this.phases.since_start());
    if let Some(p) = this.progress.as_ref() {
        p.record_failure(elapsed.clone());
    }
    this.inner.set(Inner::Gone);
    Poll::Ready(Some(Err(elapsed.into())))
}
