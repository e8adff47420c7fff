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
    state::{Admission, Breaker, Outcome, Policy},
};
use crate::{
    BoxError,
    classify::{Classifier, ResponseView},
    metering::{Feeder, StreamProgress, observe},
};

/// A call let through: records its outcome once, or a neutral one if it is
/// dropped first (which frees a half-open probe's place).
///
/// The layer's classifier is reached through [`Judge`], so the future and
/// body of the breaker do not carry its type.
pub(crate) struct Ticket {
    shared: Arc<dyn Judge>,
    breaker: Arc<Breaker>,
    admission: Admission,
    start: Option<Instant>,
    /// Where the answer's body stands, once a response came.
    progress: Option<StreamProgress>,
    done: bool,
}

/// What a ticket needs of its layer: the policy, and what an outcome means.
pub(crate) trait Judge: Send + Sync + 'static {
    /// The breakers' policy.
    fn policy(&self) -> &Policy;
    /// What an error means for the breaker.
    fn judge_error(&self, e: &(dyn std::error::Error + 'static)) -> Outcome;
    /// What a response means for the breaker, judged on its head: `None`
    /// for a success (judged again at the end of its body).
    fn judge_response(&self, view: &ResponseView<'_>) -> Option<Outcome>;
}

impl<C: Classifier> Judge for Shared<C> {
    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn judge_error(&self, e: &(dyn std::error::Error + 'static)) -> Outcome {
        self.outcome(&self.classifier.classify_error(e))
    }

    fn judge_response(&self, view: &ResponseView<'_>) -> Option<Outcome> {
        let failure = self.classifier.classify_response(view).into_failure()?;
        Some(self.outcome(&failure))
    }
}

impl<C> Shared<C> {
    fn outcome(&self, failure: &crate::classify::Failure) -> Outcome {
        if self.counts(failure) {
            Outcome::Failure
        } else {
            Outcome::Neutral
        }
    }
}

impl Ticket {
    pub(crate) fn new(
        shared: Arc<dyn Judge>,
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
            done: false,
        }
    }
}

impl Ticket {
    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let policy = self.shared.policy();
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

impl Ticket {
    fn record_error(&mut self, e: &(dyn std::error::Error + 'static)) {
        let outcome = self.shared.judge_error(e);
        self.record(outcome);
    }
}

impl Ticket {
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

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped with the body: a failure recorded in the body's progress
        // (the retry layer dropping a stream whose error event it saw, a
        // timeout further out giving the body up) still counts; otherwise
        // the caller let go, which says nothing about the provider.
        let outcome = match self.progress.as_ref().and_then(|p| p.failure()) {
            Some(e) => self.shared.judge_error(e),
            None => Outcome::Neutral,
        };
        self.record(outcome);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("breaker", &self.breaker)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        ticket: Option<Ticket>,
        rejected: Option<CircuitOpen>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, ticket: Ticket) -> Self {
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

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<BreakerBody<B>>, BoxError>;

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
                match ticket.shared.judge_response(&view) {
                    Some(outcome) => {
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
    pub struct BreakerBody<B> {
        #[pin]
        inner: B,
        // Set when no layer further in follows the stream: this body does.
        feeder: Option<Feeder>,
        ticket: Option<Ticket>,
    }
}

impl<B> BreakerBody<B> {
    fn new(inner: B, feeder: Option<Feeder>, ticket: Option<Ticket>) -> Self {
        BreakerBody {
            inner,
            feeder,
            ticket,
        }
    }
}

impl<B> fmt::Debug for BreakerBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerBody")
            .field("pending_outcome", &self.ticket.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for BreakerBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
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
