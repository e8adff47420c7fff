//! [`TimeoutLayer`] and its service, [`Timeout`].

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    ConfigError, TimeoutBody, TimeoutConfig,
    config::{Compiled, Limits},
    future::ResponseFuture,
};
use crate::{BoxError, config::Valid, deadline::Deadline, request::RequestMeta};

/// Applies a [`TimeoutConfig`] to every call. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    config: Arc<Compiled>,
}

impl TimeoutLayer {
    /// A layer enforcing a checked `config` ([`TimeoutConfig::build`]). It
    /// cannot fail.
    pub fn new(config: Valid<TimeoutConfig>) -> Self {
        TimeoutLayer {
            config: Arc::new(config.compile()),
        }
    }
}

/// Checks `config`, then makes the layer.
impl TryFrom<TimeoutConfig> for TimeoutLayer {
    type Error = ConfigError;

    fn try_from(config: TimeoutConfig) -> Result<Self, ConfigError> {
        Ok(TimeoutLayer::new(config.build()?))
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Enforces call, attempt, first-byte, first-token, idle and stream limits
/// on `S`. See [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    config: Arc<Compiled>,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a checked `config`.
    pub fn new(inner: S, config: Valid<TimeoutConfig>) -> Self {
        TimeoutLayer::new(config).layer(inner)
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

    /// The limits a call to `model` gets.
    pub fn limits_for(&self, model: Option<&str>) -> Limits {
        self.config.limits_for(model)
    }
}

impl<S, ReqB, B> Service<Request<ReqB>> for Timeout<S>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = Response<TimeoutBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let meta = RequestMeta::get(&req);
        let limits = self.config.limits_for(meta.and_then(RequestMeta::model));
        let stream = meta.is_some_and(RequestMeta::is_stream);
        let start = Instant::now();
        // Work that cannot finish in time is not started.
        if Deadline::get(&req).is_some_and(|d| d.is_expired(start)) {
            return ResponseFuture::expired(start);
        }
        if let Some((_, d)) = limits.call()
            && let Some(at) = start.checked_add(d)
        {
            Deadline::shrink(&mut req, at);
        }
        ResponseFuture::new(self.inner.call(req), start, limits, stream)
    }
}
