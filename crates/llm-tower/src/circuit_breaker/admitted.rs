//! [`Admitted`]: the inner call of a request the breaker let through,
//! waiting for the inner service's readiness first when it was not ready.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tower_service::Service;

pin_project! {
    /// The inner service's call for a request the breaker admitted.
    ///
    /// The breaker's `poll_ready` never waits on the inner service (an open
    /// breaker must refuse at once, even when the service behind it is
    /// saturated). When the inner service was ready, the call is made at
    /// once; otherwise this future owns a clone of it, waits for its
    /// readiness, then calls it, as [`tower::ServiceExt::oneshot`] does.
    ///
    /// [`tower::ServiceExt::oneshot`]: https://docs.rs/tower/latest/tower/trait.ServiceExt.html#method.oneshot
    pub struct Admitted<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        call: Option<S::Future>,
        // Boxed: off the usual path, and kept out of the future's size.
        waiting: Option<Box<(S, Option<Req>)>>,
    }
}

impl<S: Service<Req>, Req> Admitted<S, Req> {
    /// The call of a ready service, made.
    pub(crate) fn called(fut: S::Future) -> Self {
        Admitted {
            call: Some(fut),
            waiting: None,
        }
    }

    /// A call to make once `service` is ready.
    pub(crate) fn waiting(service: S, req: Req) -> Self {
        Admitted {
            call: None,
            waiting: Some(Box::new((service, Some(req)))),
        }
    }
}

impl<S: Service<Req>, Req> Future for Admitted<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(fut) = this.call.as_mut().as_pin_mut() {
                return fut.poll(cx);
            }
            let (service, req) = &mut **this.waiting.as_mut().expect("polled after completion");
            ready!(service.poll_ready(cx))?;
            let fut = service.call(req.take().expect("called once"));
            this.call.set(Some(fut));
            *this.waiting = None;
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for Admitted<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("waiting_for_readiness", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}
