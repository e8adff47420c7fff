//! [`CircuitBreakerLayer`], its service [`CircuitBreaker`] and the
//! [`CircuitBreakerHandle`].

use std::{
    collections::HashMap,
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    BreakerBody, BreakerKey, BreakerState, CircuitBreakerConfig, ConfigError, Transition,
    future::{ResponseFuture, Ticket},
    state::{Breaker, Listener, Policy},
};
use crate::{
    BoxError,
    classify::{Classifier, DefaultClassifier, Failure, FailureClass},
};

type KeyFn = Arc<dyn Fn(&http::request::Parts) -> BreakerKey + Send + Sync>;

/// What every clone of a layer and its services shares.
pub(crate) struct Shared<C> {
    pub(crate) policy: Policy,
    pub(crate) classifier: C,
    counted: Option<Vec<FailureClass>>,
    key_fn: Option<KeyFn>,
    /// Every breaker, by key. Read without a lock (an `ArcSwap` load);
    /// a new key copies the map, which is cheap for the provider-and-model
    /// keys it is made for.
    breakers: ArcSwap<HashMap<BreakerKey, Arc<Breaker>>>,
}

impl<C> Shared<C> {
    /// Whether a failure counts against the provider's health.
    pub(crate) fn counts(&self, failure: &Failure) -> bool {
        match &self.counted {
            Some(classes) => classes.contains(&failure.class()),
            None => failure.counts_against_health(),
        }
    }

    fn breaker(&self, key: &BreakerKey) -> Arc<Breaker> {
        if let Some(b) = self.breakers.load().get(key) {
            return b.clone();
        }
        let fresh = Arc::new(Breaker::new(key.clone(), &self.policy.config));
        let mut found = None;
        self.breakers.rcu(|map| {
            if let Some(b) = map.get(key) {
                found = Some(b.clone());
                return Arc::clone(map);
            }
            found = Some(fresh.clone());
            let mut next = HashMap::clone(map);
            next.insert(key.clone(), fresh.clone());
            Arc::new(next)
        });
        found.expect("set by rcu")
    }

    fn existing(&self, key: &BreakerKey) -> Option<Arc<Breaker>> {
        self.breakers.load().get(key).cloned()
    }
}

/// Stops calling a provider (per key) that is down, and finds out when it
/// is back. See the [module docs](super).
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.shared.policy.config)
            .field("breakers", &self.shared.breakers.load().len())
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A layer with `config` and the [`DefaultClassifier`], keyed by
    /// provider and model.
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::with_classifier(config, DefaultClassifier::new())
    }
}

impl<C: Classifier> CircuitBreakerLayer<C> {
    /// A layer with `config` and `classifier`.
    pub fn with_classifier(
        config: CircuitBreakerConfig,
        classifier: C,
    ) -> Result<Self, ConfigError> {
        Self::build(config, classifier, None, None)
    }

    fn build(
        config: CircuitBreakerConfig,
        classifier: C,
        key_fn: Option<KeyFn>,
        listener: Option<Listener>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let counted = config.counted_classes().expect("validated");
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                policy: Policy {
                    config,
                    origin: Instant::now(),
                    listener,
                },
                classifier,
                counted,
                key_fn,
                breakers: ArcSwap::default(),
            }),
        })
    }

    /// A handle to read the breakers' states, isolate and reset them. Take
    /// it after the last builder call (`key_fn`, `on_transition`), which
    /// make a new set of breakers.
    pub fn handle(&self) -> CircuitBreakerHandle<C> {
        CircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Classifier + Clone> CircuitBreakerLayer<C> {
    /// Keys breakers by `f` of the request head instead of provider and
    /// model (a region, an API key, a deployment…).
    pub fn key_fn(
        self,
        f: impl Fn(&http::request::Parts) -> BreakerKey + Send + Sync + 'static,
    ) -> Self {
        let s = &self.shared;
        Self::build(
            s.policy.config.clone(),
            s.classifier.clone(),
            Some(Arc::new(f)),
            s.policy.listener.clone(),
        )
        .expect("validated")
    }

    /// Calls `f` with every change of state, besides the `tracing` events.
    pub fn on_transition(self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        let s = &self.shared;
        Self::build(
            s.policy.config.clone(),
            s.classifier.clone(),
            s.key_fn.clone(),
            Some(Arc::new(f)),
        )
        .expect("validated")
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> CircuitBreaker<S, C> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Reads and steers the breakers of a [`CircuitBreakerLayer`].
pub struct CircuitBreakerHandle<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for CircuitBreakerHandle<C> {
    fn clone(&self) -> Self {
        CircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerHandle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("breakers", &self.shared.breakers.load().len())
            .finish()
    }
}

impl<C> CircuitBreakerHandle<C> {
    /// The state of the breaker of `key`; closed for a key never seen.
    pub fn state(&self, key: &BreakerKey) -> BreakerState {
        self.shared
            .existing(key)
            .map_or(BreakerState::Closed, |b| b.state())
    }

    /// The time left open for `key`, if open.
    pub fn open_for(&self, key: &BreakerKey) -> Option<Duration> {
        let b = self.shared.existing(key)?;
        b.open_for(&self.shared.policy, Instant::now())
    }

    /// Every breaker seen so far, with its state.
    pub fn states(&self) -> Vec<(BreakerKey, BreakerState)> {
        let mut v: Vec<_> = self
            .shared
            .breakers
            .load()
            .iter()
            .map(|(k, b)| (k.clone(), b.state()))
            .collect();
        v.sort_by_key(|(k, _)| k.to_string());
        v
    }

    /// Forces the breaker of `key` open until [`reset`](Self::reset): no
    /// call goes through, not even a probe.
    pub fn isolate(&self, key: &BreakerKey) {
        let b = self.shared.breaker(key);
        b.isolate(&self.shared.policy);
    }

    /// Closes the breaker of `key` and forgets its failures.
    pub fn reset(&self, key: &BreakerKey) {
        if let Some(b) = self.shared.existing(key) {
            b.reset(&self.shared.policy);
        }
    }
}

/// Fails calls fast while their breaker is open. See
/// [`CircuitBreakerLayer`].
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C> CircuitBreaker<S, C> {
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

impl<S, C, ReqB, B> Service<Request<ReqB>> for CircuitBreaker<S, C>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Response = Response<BreakerBody<B, C>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let key = match &self.shared.key_fn {
            None => BreakerKey::of_request(&req),
            Some(f) => {
                let (parts, body) = req.into_parts();
                let key = f(&parts);
                return self.call_keyed(key, Request::from_parts(parts, body));
            }
        };
        self.call_keyed(key, req)
    }
}

impl<S, C> CircuitBreaker<S, C>
where
    C: Classifier,
{
    fn call_keyed<ReqB>(
        &mut self,
        key: BreakerKey,
        req: Request<ReqB>,
    ) -> ResponseFuture<S::Future, C>
    where
        S: Service<Request<ReqB>>,
    {
        let breaker = self.shared.breaker(&key);
        match breaker.admit(&self.shared.policy) {
            Err(open) => ResponseFuture::rejected(open),
            Ok(admission) => {
                let start = self.shared.policy.config.slow_calls.map(|_| Instant::now());
                let ticket = Ticket::new(self.shared.clone(), breaker, admission, start);
                ResponseFuture::new(self.inner.call(req), ticket)
            }
        }
    }
}
