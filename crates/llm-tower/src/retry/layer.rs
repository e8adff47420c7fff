//! [`RetryLayer`] and its service, [`Retry`].

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    ConfigError, RetryBody, RetryConfig, RetryEvent, budget::Budget, event::Hook,
    future::ResponseFuture,
};
use crate::{
    BoxError,
    classify::{Classifier, DefaultClassifier},
    config::Valid,
};

/// What every clone of a layer and its services shares: the policy and the
/// retry budget.
pub(crate) struct Shared<C> {
    pub(crate) config: RetryConfig,
    pub(crate) classifier: C,
    /// Shared by every layer built from the same one, whatever builder
    /// method made it.
    pub(crate) budget: Option<Arc<Budget>>,
    pub(crate) hook: Option<Hook>,
    pub(crate) idempotency_header: Option<HeaderName>,
}

impl<C> fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("budget", &self.budget)
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

/// Retries failed calls as the [`RetryConfig`] and the classifier say. See
/// the [module docs](super).
///
/// Every service this layer makes, and every clone of them, shares one
/// retry budget.
#[derive(Debug)]
pub struct RetryLayer<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: self.shared.clone(),
        }
    }
}

impl RetryLayer {
    /// A layer with a checked `config` ([`RetryConfig::build`]) and the
    /// [`DefaultClassifier`]. It cannot fail.
    pub fn new(config: Valid<RetryConfig>) -> Self {
        RetryLayer::with_classifier(config, DefaultClassifier::new())
    }
}

/// The default configuration.
impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new(Valid::default())
    }
}

/// Checks `config`, then makes the layer.
impl TryFrom<RetryConfig> for RetryLayer {
    type Error = ConfigError;

    fn try_from(config: RetryConfig) -> Result<Self, ConfigError> {
        Ok(RetryLayer::new(config.build()?))
    }
}

impl<C: Classifier> RetryLayer<C> {
    /// A layer with a checked `config` and `classifier`.
    pub fn with_classifier(config: Valid<RetryConfig>, classifier: C) -> Self {
        let config = config.into_inner();
        let idempotency_header = config
            .idempotency_header
            .as_deref()
            .map(|h| HeaderName::try_from(h).expect("validated header name"));
        RetryLayer {
            shared: Arc::new(Shared {
                budget: config.budget.map(|b| Arc::new(Budget::new(b))),
                config,
                classifier,
                hook: None,
                idempotency_header,
            }),
        }
    }
}

impl<C: Classifier + Clone> RetryLayer<C> {
    /// Calls `hook` with every decision: each retry and each giving up.
    /// For metrics; it runs on the request's task, so keep it short.
    ///
    /// Like tower's setters it returns a new layer: services made by it
    /// call `hook`, services made earlier do not. The retry budget is not
    /// renewed: the new layer, the old one and every clone of either keep
    /// drawing on one bucket.
    pub fn on_event(self, hook: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        let shared = &self.shared;
        RetryLayer {
            shared: Arc::new(Shared {
                config: shared.config.clone(),
                classifier: shared.classifier.clone(),
                budget: shared.budget.clone(),
                hook: Some(Arc::new(hook)),
                idempotency_header: shared.idempotency_header.clone(),
            }),
        }
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Retry<S, C> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Retries the calls of `S`. See [`RetryLayer`].
#[derive(Debug)]
pub struct Retry<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> Retry<S, C> {
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

impl<S, C, ReqB, B> Service<Request<ReqB>> for Retry<S, C>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    ReqB: Clone,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Response = Response<RetryBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        if let Some(name) = &self.shared.idempotency_header
            && !req.headers().contains_key(name)
        {
            // One key for the call, the same on every attempt.
            let key = format!("{:032x}", rand::random::<u128>());
            req.headers_mut().insert(
                name.clone(),
                HeaderValue::try_from(key).expect("hex is a valid header value"),
            );
        }
        // The ready service goes with the call; a fresh clone stays.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(self.shared.clone(), service, req)
    }
}
