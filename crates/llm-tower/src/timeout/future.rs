//! The response future of [`Timeout`](super::Timeout).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::{Elapsed, Phase, TimeoutBody, body::Phases, config::Limits};
use crate::BoxError;

pin_project! {
    /// A timer that may be off, without a heap allocation either way.
    #[project = TimerProj]
    pub(crate) enum Timer {
        On { #[pin] sleep: Sleep, phase: Phase, limit: Duration },
        Off,
    }
}

impl Timer {
    pub(crate) fn on(at: Instant, phase: Phase, limit: Duration) -> Self {
        Timer::On {
            sleep: sleep_until(at),
            phase,
            limit,
        }
    }

    /// Moves the timer to `at` for `phase`, reusing its registration.
    pub(crate) fn arm(
        mut self: Pin<&mut Self>,
        at: Instant,
        new_phase: Phase,
        new_limit: Duration,
    ) {
        match self.as_mut().project() {
            TimerProj::On {
                sleep,
                phase,
                limit,
            } => {
                if sleep.deadline() != at {
                    sleep.reset(at);
                }
                *phase = new_phase;
                *limit = new_limit;
            }
            TimerProj::Off => self.set(Timer::on(at, new_phase, new_limit)),
        }
    }

    /// The phase and limit that fired, if the timer fired.
    pub(crate) fn poll_fired(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Option<(Phase, Duration)> {
        match self.project() {
            TimerProj::On {
                sleep,
                phase,
                limit,
            } => sleep.poll(cx).is_ready().then_some((*phase, *limit)),
            TimerProj::Off => None,
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        timer: Timer,
        phases: Phases,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, start: Instant, limits: Limits, stream: bool) -> Self {
        let phases = Phases::new(start, limits, stream);
        let timer = match phases.head_deadline() {
            Some((at, phase, limit)) => Timer::on(at, phase, limit),
            None => Timer::Off,
        };
        ResponseFuture {
            inner: Some(inner),
            timer,
            phases,
        }
    }

    pub(crate) fn expired(start: Instant) -> Self {
        ResponseFuture {
            inner: None,
            timer: Timer::Off,
            phases: Phases::new(start, Limits::default(), false),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<TimeoutBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(Elapsed::new(
                Phase::Deadline,
                Duration::ZERO,
                Duration::ZERO,
            )
            .into()));
        };
        if let Poll::Ready(res) = inner.poll(cx) {
            let res = res.map_err(Into::into)?;
            let phases = this.phases.at_headers(&res);
            return Poll::Ready(Ok(res.map(|b| TimeoutBody::new(b, phases))));
        }
        let (phase, limit) = ready!(this.timer.poll_fired(cx).map_or(Poll::Pending, Poll::Ready));
        // Dropping the inner future now cancels the request upstream.
        this.inner.set(None);
        let after = this.phases.since_start();
        Poll::Ready(Err(Elapsed::new(phase, limit, after).into()))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}
