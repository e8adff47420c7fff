use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    MeteredBody, UsageObservers,
    future::ResponseFuture,
    report::{CallInfo, Reporter},
};
use crate::request::RequestMeta;

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

/// Meters the response bodies of `S`. See [`MeterLayer`].
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
    S: Service<Request<ReqB>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<MeteredBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // Taken, not read: a second meter further in must not report the
        // same call again.
        let observers = UsageObservers::take(&mut req);
        let info = CallInfo::from_meta(RequestMeta::get(&req));
        ResponseFuture::new(self.inner.call(req), Reporter::new(info, observers))
    }
}
