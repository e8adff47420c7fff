//! The response future of [`Timeout`](super::Timeout).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{Elapsed, Phase, TimeoutBody, body::Phases, config::Limits, timer::Timer};
use crate::{BoxError, metering::StreamProgress};

pin_project! {
    /// Response future of [`Timeout`](super::Timeout).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        timer: Timer,
        phases: Phases,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, start: Instant, limits: Limits, stream: bool) -> Self {
        let phases = Phases::new(start, limits, stream);
        ResponseFuture {
            inner: Some(inner),
            timer: Timer::default(),
            phases,
        }
    }

    pub(crate) fn expired(start: Instant) -> Self {
        ResponseFuture {
            inner: None,
            timer: Timer::default(),
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
            let mut res = res.map_err(Into::into)?;
            let phases = this.phases.at_headers(&res);
            // The first-token limit needs to know where the stream stands:
            // read it from a layer further in, or follow it here.
            let (progress, feeder) = if phases.needs_progress() {
                match StreamProgress::attach_with(&mut res, None, true) {
                    Some((p, f)) => (Some(p), f),
                    None => (None, None),
                }
            } else {
                (StreamProgress::get(&res).cloned(), None)
            };
            return Poll::Ready(Ok(
                res.map(|b| TimeoutBody::new(b, phases, progress, feeder))
            ));
        }
        // Armed once the inner future has to wait: an answer that is ready
        // at once costs no timer.
        let Some((at, phase, limit)) = this.phases.head_deadline() else {
            return Poll::Pending;
        };
        this.timer.arm(at, phase, limit);
        let Some((phase, limit)) = this.timer.poll_fired(cx) else {
            return Poll::Pending;
        };
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
