//! The future of [`Meter`](super::Meter).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::{MeteredBody, Outcome, UsageReport, UsageSource, report::Reporter};
use crate::{BoxError, usage::Usage};

/// What a gated attempt waits for: the gate's answer, then the inner
/// service's call (its future and the attempt's reporter).
pub(crate) type Admitting<F> =
    Pin<Box<dyn Future<Output = Result<(F, Reporter), BoxError>> + Send + 'static>>;

pin_project! {
    /// Response future of [`Meter`](super::Meter): wraps the response body
    /// in a [`MeteredBody`], or reports a transport error. For an attempt
    /// an [`AttemptGate`](super::AttemptGate) holds back, it first waits
    /// for the gate.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Sent: the inner service's future (the only state without a gate,
        // or with a gate that admits at once).
        Sent {
            #[pin]
            inner: F,
            reporter: Reporter,
        },
        // Waiting for the gate; nothing sent yet.
        Admitting {
            admitting: Admitting<F>,
        },
        // Refused by the gate (`None` once returned).
        Refused {
            error: Option<BoxError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, reporter: Reporter) -> Self {
        ResponseFuture {
            state: State::Sent { inner, reporter },
        }
    }

    pub(crate) fn admitting(admitting: Admitting<F>) -> Self {
        ResponseFuture {
            state: State::Admitting { admitting },
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<MeteredBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Sent { inner, reporter } => {
                    return match ready!(inner.poll(cx)) {
                        Ok(res) => {
                            let reporter = reporter.hand_over();
                            Poll::Ready(Ok(MeteredBody::wrap_with(res, reporter)))
                        }
                        Err(e) => {
                            // Nothing reached the provider, or nothing came
                            // back: no tokens to account for.
                            reporter.report(UsageReport::new(
                                Usage::default(),
                                UsageSource::Actual,
                                Outcome::TransportError,
                            ));
                            Poll::Ready(Err(e.into()))
                        }
                    };
                }
                StateProj::Admitting { admitting } => match ready!(admitting.as_mut().poll(cx)) {
                    Ok((inner, reporter)) => state.set(State::Sent { inner, reporter }),
                    Err(e) => {
                        state.set(State::Refused { error: None });
                        return Poll::Ready(Err(e));
                    }
                },
                StateProj::Refused { error } => {
                    let e = error
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
