//! The response future and body of [`CircuitBreaker`](super::CircuitBreaker):
//! they record each call's outcome exactly once.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{
    CircuitOpen,
    layer::Shared,
    state::{Admission, Breaker, Outcome},
};
use crate::{
    BoxError,
    classify::{Classifier, ResponseView},
    metering::{Feeder, StreamProgress, observe},
};

/// A call let through: records its outcome once, or a neutral one if it is
/// dropped first (which frees a half-open probe's place).
pub(crate) struct Ticket<C> {
    shared: Arc<Shared<C>>,
    breaker: Arc<Breaker>,
    admission: Admission,
    start: Option<Instant>,
    /// Where the answer's body stands, once a response came.
    progress: Option<StreamProgress>,
    /// What an error means for the breaker (the classifier, reachable from
    /// `Drop`).
    judge: fn(&Shared<C>, &(dyn std::error::Error + 'static)) -> Outcome,
    done: bool,
}

impl<C: Classifier> Ticket<C> {
    pub(crate) fn new(
        shared: Arc<Shared<C>>,
        breaker: Arc<Breaker>,
        admission: Admission,
        start: Option<Instant>,
    ) -> Self {
        Ticket {
            shared,
            breaker,
            admission,
            start,
            progress: None,
            judge: |shared, e| {
                if shared.counts(&shared.classifier.classify_error(e)) {
                    Outcome::Failure
                } else {
                    Outcome::Neutral
                }
            },
            done: false,
        }
    }
}

impl<C> Ticket<C> {
    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let policy = &self.shared.policy;
        let (slow, now) = match (self.start, policy.config.slow_calls) {
            (Some(start), Some(s)) => {
                let now = Instant::now();
                // A stream is as slow as its first token: a long answer
                // that streams steadily is not a slow provider.
                let until = self
                    .progress
                    .as_ref()
                    .and_then(StreamProgress::first_output_at)
                    .unwrap_or(now);
                (
                    until.saturating_duration_since(start) > s.duration,
                    Some(now),
                )
            }
            _ => (false, None),
        };
        self.breaker
            .record(policy, self.admission, outcome, slow, now);
    }
}

impl<C> Ticket<C> {
    fn record_error(&mut self, e: &(dyn std::error::Error + 'static)) {
        let outcome = (self.judge)(&self.shared, e);
        self.record(outcome);
    }
}

impl<C> Ticket<C> {
    /// Records the failure the body's progress holds, if any: whichever
    /// layer noticed it (an error event seen by the meter, a timeout of a
    /// layer further out), the breaker counts it for what it was.
    fn record_progress_failure(&mut self) -> bool {
        let Some(p) = self.progress.clone() else {
            return false;
        };
        match p.failure() {
            Some(e) => {
                self.record_error(e);
                true
            }
            None => false,
        }
    }
}

impl<C> Drop for Ticket<C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped with the body: a failure recorded in the body's progress
        // (the retry layer dropping a stream whose error event it saw, a
        // timeout further out giving the body up) still counts; otherwise
        // the caller let go, which says nothing about the provider.
        let outcome = match self.progress.as_ref().and_then(|p| p.failure()) {
            Some(e) => (self.judge)(&self.shared, e),
            None => Outcome::Neutral,
        };
        self.record(outcome);
    }
}

impl<C> fmt::Debug for Ticket<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("breaker", &self.breaker)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: Option<F>,
        ticket: Option<Ticket<C>>,
        rejected: Option<CircuitOpen>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, ticket: Ticket<C>) -> Self {
        ResponseFuture {
            inner: Some(inner),
            ticket: Some(ticket),
            rejected: None,
        }
    }

    pub(crate) fn rejected(open: CircuitOpen) -> Self {
        ResponseFuture {
            inner: None,
            ticket: None,
            rejected: Some(open),
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl<F, B, E, C> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
    C: Classifier,
{
    type Output = Result<Response<BreakerBody<B, C>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let open = this.rejected.take().expect("polled after completion");
            return Poll::Ready(Err(open.into()));
        };
        let res = ready!(inner.poll(cx));
        let mut ticket = this.ticket.take().expect("polled after completion");
        match res {
            Err(e) => {
                let e: BoxError = e.into();
                ticket.record_error(&*e);
                Poll::Ready(Err(e))
            }
            Ok(res) => {
                // Judged on status and headers: the body is the caller's.
                let view = ResponseView::new(res.status(), res.headers());
                match ticket
                    .shared
                    .classifier
                    .classify_response(&view)
                    .into_failure()
                {
                    Some(failure) => {
                        let outcome = if ticket.shared.counts(&failure) {
                            Outcome::Failure
                        } else {
                            Outcome::Neutral
                        };
                        ticket.record(outcome);
                        Poll::Ready(Ok(res.map(|b| BreakerBody::new(b, None, None))))
                    }
                    // A success is a success once its body ends well, as
                    // its progress (parsed here unless a layer further in
                    // does) says.
                    None => {
                        let mut res = res;
                        let feeder = match StreamProgress::attach_with(&mut res, None, false) {
                            Some((p, f)) => {
                                ticket.progress = Some(p);
                                f
                            }
                            None => None,
                        };
                        Poll::Ready(Ok(res.map(|b| BreakerBody::new(b, feeder, Some(ticket)))))
                    }
                }
            }
        }
    }
}

pin_project! {
    /// A response body that tells the breaker how the call ended: a success
    /// at its end, a failure if it breaks in a way that counts (an error
    /// event, a cut stream, a timeout), nothing if it is dropped early.
    pub struct BreakerBody<B, C> {
        #[pin]
        inner: B,
        // Set when no layer further in follows the stream: this body does.
        feeder: Option<Feeder>,
        ticket: Option<Ticket<C>>,
    }
}

impl<B, C> BreakerBody<B, C> {
    fn new(inner: B, feeder: Option<Feeder>, ticket: Option<Ticket<C>>) -> Self {
        BreakerBody {
            inner,
            feeder,
            ticket,
        }
    }
}

impl<B, C> fmt::Debug for BreakerBody<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBody")
            .field("pending_outcome", &self.ticket.is_some())
            .finish_non_exhaustive()
    }
}

impl<B, C> Body for BreakerBody<B, C>
where
    B: Body,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        observe(this.feeder, &frame, || this.inner.is_end_stream());
        match frame {
            None => {
                if let Some(mut t) = this.ticket.take()
                    && !t.record_progress_failure()
                {
                    t.record(Outcome::Success);
                }
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                if let Some(mut t) = this.ticket.take() {
                    t.record_error(&*e);
                }
                Poll::Ready(Some(Err(e)))
            }
            Some(Ok(f)) => {
                // An error event, a malformed event, a cut: the call failed
                // here, whatever the layers further out do with the body. A
                // reader may stop at the last frame without asking again.
                // Both are one atomic load away in the body's progress.
                let over = this.ticket.as_ref().is_some_and(|t| match &t.progress {
                    Some(p) => p.has_failed() || p.is_ended(),
                    None => this.inner.is_end_stream(),
                });
                if over
                    && let Some(mut t) = this.ticket.take()
                    && !t.record_progress_failure()
                {
                    t.record(Outcome::Success);
                }
                Poll::Ready(Some(Ok(f)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
