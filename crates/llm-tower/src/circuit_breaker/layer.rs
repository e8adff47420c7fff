//! [`CircuitBreakerLayer`], its service [`CircuitBreaker`] and the
//! [`CircuitBreakerHandle`].

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Admitted, BreakerBody, BreakerKey, BreakerState, CircuitBreakerConfig, ConfigError, Transition,
    future::{Judge, ResponseFuture, Ticket},
    map::Breakers,
    share::Health,
    state::{Breaker, Policy},
};
use crate::{
    BoxError,
    attempts::AttemptBudget,
    classify::{Classifier, DefaultClassifier, Failure, FailureClass},
    config::Valid,
    store::Store,
};

type KeyFn = Arc<dyn Fn(&http::request::Parts) -> BreakerKey + Send + Sync>;

/// What every clone of a layer, its services and its handles share. Made
/// once, by the layer's constructor; no builder method replaces it.
pub(crate) struct Shared<C> {
    pub(crate) policy: Policy,
    pub(crate) classifier: C,
    counted: Option<Vec<FailureClass>>,
    breakers: Breakers,
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
        self.breakers.get(key, &self.policy)
    }
}

impl<C: Classifier> Shared<C> {
    /// A closed breaker that shares its health looks at its flag, at most
    /// once per `share_refresh`: set, it opens for the time left on it.
    /// With an in-memory store this happens before the call is admitted;
    /// with a remote one, on a task, for the calls that follow.
    fn look_elsewhere(self: &Arc<Self>, breaker: &Arc<Breaker>) {
        let (Some(flag), Some(health)) = (breaker.share_due(&self.policy), &self.policy.health)
        else {
            return;
        };
        let judge: Arc<dyn Judge> = self.clone();
        let breaker = breaker.clone();
        health.read(flag, move |left| {
            breaker.open_elsewhere(judge.policy(), left);
        });
    }
}

/// Stops calling a provider (per key) that is down, and finds out when it
/// is back. See the [module docs](super).
///
/// Every clone of the layer, every service it makes and every
/// [handle](Self::handle) share one set of breakers, whatever the order of
/// the builder calls: [`key_fn`](Self::key_fn) sets how the layer's
/// services key their calls, [`on_transition`](Self::on_transition) sets
/// the shared listener; neither makes new breakers.
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
    key_fn: Option<KeyFn>,
}

impl<C> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.shared.policy.config)
            .field("breakers", &self.shared.breakers.len())
            .field("key_fn", &self.key_fn.is_some())
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A layer with a checked `config` ([`CircuitBreakerConfig::build`])
    /// and the [`DefaultClassifier`], keyed by provider and model. It cannot
    /// fail.
    ///
    /// Its breakers live in this process: [`share`](CircuitBreakerConfig::share)
    /// needs a store ([`with_store`](Self::with_store)).
    pub fn new(config: Valid<CircuitBreakerConfig>) -> Self {
        Self::with_classifier(config, DefaultClassifier::new())
    }

    /// A layer with a checked `config` and the [`DefaultClassifier`] that,
    /// when [`share`](CircuitBreakerConfig::share) is on, shares its
    /// breakers' health through `store` with every layer (and process)
    /// using the same store and [`prefix`](CircuitBreakerConfig::prefix):
    /// a breaker that opens anywhere opens the others. With `share` off,
    /// the store is never called. See
    /// [sharing](super#sharing-health-across-processes).
    pub fn with_store<St: Store + Clone>(config: Valid<CircuitBreakerConfig>, store: St) -> Self {
        Self::with_classifier_and_store(config, DefaultClassifier::new(), store)
    }
}

/// The default configuration.
impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        CircuitBreakerLayer::new(Valid::default())
    }
}

/// Checks `config`, then makes the layer.
impl TryFrom<CircuitBreakerConfig> for CircuitBreakerLayer {
    type Error = ConfigError;

    fn try_from(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Ok(CircuitBreakerLayer::new(config.build()?))
    }
}

impl<C: Classifier> CircuitBreakerLayer<C> {
    /// A layer with a checked `config` and `classifier`.
    pub fn with_classifier(config: Valid<CircuitBreakerConfig>, classifier: C) -> Self {
        if config.share {
            tracing::warn!(
                target: "llm_tower::circuit_breaker",
                "circuit breaker: `share` is on but the layer has no store \
                 (use `with_store`): its health stays in this process"
            );
        }
        Self::build(config.into_inner(), classifier, None)
    }

    /// A layer with a checked `config` and `classifier` that shares its
    /// breakers' health through `store` when
    /// [`share`](CircuitBreakerConfig::share) is on, as
    /// [`with_store`](CircuitBreakerLayer::with_store) does.
    pub fn with_classifier_and_store<St: Store + Clone>(
        config: Valid<CircuitBreakerConfig>,
        classifier: C,
        store: St,
    ) -> Self {
        let config = config.into_inner();
        let health = config
            .share
            .then(|| Arc::new(Health::new(store, config.share_refresh, &config.prefix)));
        Self::build(config, classifier, health)
    }

    fn build(config: CircuitBreakerConfig, classifier: C, health: Option<Arc<Health>>) -> Self {
        let counted = config.counted_classes().expect("validated");
        let policy = Policy {
            config,
            origin: Instant::now(),
            listener: ArcSwapOption::empty(),
            health,
        };
        CircuitBreakerLayer {
            shared: Arc::new(Shared {
                breakers: Breakers::new(&policy),
                policy,
                classifier,
                counted,
            }),
            key_fn: None,
        }
    }

    /// A handle to read the breakers' states, isolate and reset them. It
    /// may be taken at any time: builder calls made later do not orphan it.
    pub fn handle(&self) -> CircuitBreakerHandle<C> {
        CircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Classifier + Clone> CircuitBreakerLayer<C> {
    /// Keys breakers by `f` of the request head instead of provider and
    /// model (a region, an API key, a deployment…), for the services this
    /// layer makes from now on. The breakers stay shared with every clone
    /// and handle.
    pub fn key_fn(
        mut self,
        f: impl Fn(&http::request::Parts) -> BreakerKey + Send + Sync + 'static,
    ) -> Self {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// Calls `f` with every change of state, besides the `tracing` events.
    ///
    /// The listener is part of the shared state: set on any clone, it
    /// hears every breaker of every clone; a second call replaces the
    /// first. It runs after the breaker has changed state and let go of its
    /// lock, on the task that made the change, so it may steer the breakers
    /// through a [handle](Self::handle) (reset, isolate). Keep it short.
    pub fn on_transition(self, f: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.shared
            .policy
            .listener
            .store(Some(Arc::new(Box::new(f))));
        self
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> CircuitBreaker<S, C> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
            inner_ready: false,
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
            .field("breakers", &self.shared.breakers.len())
            .finish()
    }
}

impl<C> CircuitBreakerHandle<C> {
    /// The state of the breaker of exactly `key`: closed for a key not
    /// kept, isolated for one an [isolation](Self::isolate) covers.
    pub fn state(&self, key: &BreakerKey) -> BreakerState {
        match self.shared.breakers.existing(key) {
            Some(b) => b.state(),
            None if self.shared.breakers.isolated(key) => BreakerState::Isolated,
            None => BreakerState::Closed,
        }
    }

    /// The time left open for `key`, if open.
    pub fn open_for(&self, key: &BreakerKey) -> Option<Duration> {
        let b = self.shared.breakers.existing(key)?;
        b.open_for(&self.shared.policy, Instant::now())
    }

    /// Every breaker kept, with its state.
    pub fn states(&self) -> Vec<(BreakerKey, BreakerState)> {
        let mut v: Vec<_> = self
            .shared
            .breakers
            .all()
            .iter()
            .map(|b| (b.key().clone(), b.state()))
            .collect();
        v.sort_by_key(|(k, _)| k.to_string());
        v
    }

    /// Forces open, until [`reset`](Self::reset), every breaker `key`
    /// [covers](BreakerKey::covers): no call goes through, not even a
    /// probe. `BreakerKey::named("gpt-4o")` isolates `gpt-4o` at every
    /// provider; a key with a provider and no model, the whole provider.
    ///
    /// The isolation is kept apart from the breakers: it applies to
    /// breakers made later too, and eviction never lifts it.
    pub fn isolate(&self, key: &BreakerKey) {
        self.shared.breakers.isolate(key, &self.shared.policy);
    }

    /// Lifts the isolations `key` covers, and closes (forgetting their
    /// failures) the breakers it covers — except those a broader isolation
    /// still holds: resetting `openai/gpt-4o` leaves it isolated while
    /// `BreakerKey::named("gpt-4o")` is.
    ///
    /// When the layer [shares](super#sharing-health-across-processes) its
    /// breakers' health, closing a breaker also clears its shared flag
    /// (isolations stay in this process).
    pub fn reset(&self, key: &BreakerKey) {
        self.shared.breakers.reset(key, &self.shared.policy);
    }

    /// How many operations on the shared health store failed: each one
    /// left the breaker on its local state, and was logged as a `tracing`
    /// warning. Always 0 for a layer that does not
    /// [share](super#sharing-health-across-processes).
    pub fn store_errors(&self) -> u64 {
        self.shared.policy.health.as_ref().map_or(0, |h| h.errors())
    }
}

/// Fails calls fast while their breaker is open. See
/// [`CircuitBreakerLayer`].
///
/// # Readiness
///
/// `poll_ready` is always ready: it does not wait on the inner service, so
/// that an open breaker refuses at once even when the service behind it
/// cannot take a call (a concurrency limit at capacity, a saturated pool).
/// It asks the inner service once, without waiting; a call admitted while
/// the inner service was not ready takes a clone of it (hence `S: Clone`)
/// and waits for its readiness inside the response future, as
/// [`tower::ServiceExt::oneshot`](https://docs.rs/tower/latest/tower/trait.ServiceExt.html#method.oneshot)
/// does. That wait counts in a slow call's time.
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
    key_fn: Option<KeyFn>,
    /// The inner service said it was ready, and no call has used that yet.
    inner_ready: bool,
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
            // Readiness belongs to the service that was polled.
            inner_ready: false,
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
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Response = Response<BreakerBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<Admitted<S, Request<ReqB>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.inner_ready {
            match self.inner.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.inner_ready = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                // Waited on, if at all, by an admitted call.
                Poll::Pending => {}
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let budget = AttemptBudget::get(&req).cloned();
        let key = match &self.key_fn {
            None => BreakerKey::of_request(&req),
            Some(f) => {
                let (parts, body) = req.into_parts();
                let key = f(&parts);
                return self.call_keyed(key, Request::from_parts(parts, body), budget);
            }
        };
        self.call_keyed(key, req, budget)
    }
}

impl<S, C> CircuitBreaker<S, C>
where
    C: Classifier,
{
    /// `budget`: the call's attempts, one of which is given back when the
    /// call is refused (nothing was sent).
    fn call_keyed<Req>(
        &mut self,
        key: BreakerKey,
        req: Req,
        budget: Option<AttemptBudget>,
    ) -> ResponseFuture<Admitted<S, Req>>
    where
        S: Service<Req> + Clone,
    {
        let breaker = self.shared.breaker(&key);
        if breaker.is_shared() {
            self.shared.look_elsewhere(&breaker);
        }
        match breaker.admit(&self.shared.policy) {
            Err(open) => {
                if let Some(budget) = budget {
                    budget.give_back();
                }
                ResponseFuture::rejected(open)
            }
            Ok(admission) => {
                let start = self.shared.policy.config.slow_calls.map(|_| Instant::now());
                let ticket = Ticket::new(self.shared.clone(), breaker, admission, start);
                let call = if std::mem::take(&mut self.inner_ready) {
                    Admitted::called(self.inner.call(req))
                } else {
                    // The ready service goes with the call; a clone stays.
                    let clone = self.inner.clone();
                    Admitted::waiting(std::mem::replace(&mut self.inner, clone), req)
                };
                ResponseFuture::new(call, ticket)
            }
        }
    }
}
