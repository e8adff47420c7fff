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
use crate::usage::Usage;

pin_project! {
    /// Response future of [`Meter`](super::Meter): wraps the response body
    /// in a [`MeteredBody`], or reports a transport error.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        reporter: Reporter,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, reporter: Reporter) -> Self {
        ResponseFuture { inner, reporter }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.inner.poll(cx)) {
            Ok(res) => {
                let reporter = this.reporter.hand_over();
                Poll::Ready(Ok(MeteredBody::wrap_with(res, reporter)))
            }
            Err(e) => {
                // Nothing reached the provider, or nothing came back: no
                // tokens to account for.
                this.reporter.report(UsageReport::new(
                    Usage::default(),
                    UsageSource::Actual,
                    Outcome::TransportError,
                ));
                Poll::Ready(Err(e))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
