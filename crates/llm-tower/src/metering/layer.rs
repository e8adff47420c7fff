use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Admission, Attempt, AttemptGate, MeteredBody, UsageObservers,
    future::ResponseFuture,
    report::{CallInfo, Reporter},
};
use crate::{BoxError, request::RequestMeta};

/// Wraps response bodies in a [`MeteredBody`] that reports usage to the
/// request's [`UsageObservers`]. See the [module docs](super).
#[derive(Clone, Copy, Debug, Default)]
pub struct MeterLayer {
    _priv: (),
}

impl MeterLayer {
    /// A metering layer.
    pub fn new() -> Self {
        MeterLayer { _priv: () }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Meter<S>;

    fn layer(&self, inner: S) -> Meter<S> {
        Meter::new(inner)
    }
}

/// Meters the response bodies of `S`, each attempt admitted first by the
/// request's [`AttemptGate`], if any. See [`MeterLayer`].
///
/// Its error is a [`BoxError`]: the inner service's error, or the error of a
/// gate that refused the attempt.
#[derive(Clone, Debug)]
pub struct Meter<S> {
    inner: S,
}

impl<S> Meter<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Meter { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Meter<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + 'static,
    B: Body,
{
    type Response = Response<MeteredBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // Taken, not read: a second meter further in must not report the
        // same call again, nor gate it again.
        let mut observers = UsageObservers::take(&mut req);
        let gate = AttemptGate::take(&mut req);
        let info = CallInfo::from_meta(RequestMeta::get(&req));
        let admission = match gate {
            None => Admission::Now(None),
            Some(gate) => gate.admit(&Attempt::of(&req)),
        };
        match admission {
            Admission::Now(observer) => {
                if let Some(o) = observer {
                    observers.push(o);
                }
                ResponseFuture::new(self.inner.call(req), Reporter::new(info, observers))
            }
            Admission::Refuse(error) => ResponseFuture::refused(error),
            Admission::Later(admit) => {
                // The service polled ready goes with the attempt; a fresh
                // clone stays (as `tower::filter::AsyncFilter` does).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::admitting(Box::pin(async move {
                    // Dropped here unfinished, the gate's future releases
                    // what it reserved; nothing was sent, nothing reported.
                    if let Some(o) = admit.await? {
                        observers.push(o);
                    }
                    // The reporter exists from the moment the attempt is
                    // sent: before, there is nothing to report.
                    let reporter = Reporter::new(info, observers);
                    Ok((inner.call(req), reporter))
                }))
            }
        }
    }
}
