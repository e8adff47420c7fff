//! [`RateLimitLayer`], its service [`RateLimit`], the response future and
//! body, and the [`RateLimitHandle`].

use std::{
    fmt,
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc,
        atomic::Ordering::{AcqRel, Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Priority, RateLimitConfig, RateLimitEvent, RateLimitKey, RateLimited, RefusalReason,
    state::{Plan, Settlement, Shared, Taken},
};
use crate::{
    BoxError,
    config::Valid,
    deadline::Deadline,
    metering::{StreamProgress, UsageObservers},
    request::RequestMeta,
    store::{Acquire, MemoryStore, Store, Take},
};

type KeyFn = Arc<dyn Fn(&http::request::Parts) -> Option<RateLimitKey> + Send + Sync>;

/// Paces calls under requests-, tokens- and concurrency limits per key,
/// queueing what cannot go yet. See the [module docs](super).
///
/// Every clone of the layer, every service it makes and every
/// [handle](Self::handle) share one state (and one store); builder calls
/// never replace it.
pub struct RateLimitLayer<St = MemoryStore> {
    shared: Arc<Shared<St>>,
    key_fn: Option<KeyFn>,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<St> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.config)
            .field("key_fn", &self.key_fn.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer with a checked `config`, its state in a new [`MemoryStore`].
    pub fn new(config: Valid<RateLimitConfig>) -> Self {
        Self::with_store(config, MemoryStore::new())
    }
}

/// The default configuration: adaptive to the provider's headers, no limit
/// of its own.
impl Default for RateLimitLayer {
    fn default() -> Self {
        RateLimitLayer::new(Valid::default())
    }
}

/// Checks `config`, then makes the layer.
impl TryFrom<RateLimitConfig> for RateLimitLayer {
    type Error = crate::config::ConfigError;

    fn try_from(config: RateLimitConfig) -> Result<Self, Self::Error> {
        Ok(RateLimitLayer::new(config.build()?))
    }
}

impl<St: Store + Clone> RateLimitLayer<St> {
    /// A layer with a checked `config`, its state in `store`: layers (and
    /// processes) sharing a store and a [`prefix`](RateLimitConfig::prefix)
    /// share their limits.
    pub fn with_store(config: Valid<RateLimitConfig>, store: St) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared::new(config.into_inner(), store)),
            key_fn: None,
        }
    }

    /// A handle to read the layer's counters and a key's state. It may be
    /// taken at any time.
    pub fn handle(&self) -> RateLimitHandle<St> {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }

    /// Keys calls by `f` of the request head (a tenant, a user, a region)
    /// instead of provider, model and API key, for the services this layer
    /// makes from now on; `None` falls back to the default key. A
    /// [`RateLimitKey`] in the request's extensions comes first.
    pub fn key_fn(
        mut self,
        f: impl Fn(&http::request::Parts) -> Option<RateLimitKey> + Send + Sync + 'static,
    ) -> Self {
        self.key_fn = Some(Arc::new(f));
        self
    }

    /// Calls `f` with every [`RateLimitEvent`], besides the `tracing`
    /// events. Shared by every clone; a second call replaces the first.
    /// It runs on the task of the call; keep it short.
    pub fn on_event(self, f: impl Fn(&RateLimitEvent) + Send + Sync + 'static) -> Self {
        self.shared.listener.store(Some(Arc::new(Box::new(f))));
        self.shared
            .has_listener
            .store(true, std::sync::atomic::Ordering::Release);
        self
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> RateLimit<S, St> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
///
/// It waits for a call's turn in the response future, then drives a clone
/// of the inner service to readiness and calls it, so that waiting holds no
/// readiness of the inner service.
pub struct RateLimit<S, St = MemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
    key_fn: Option<KeyFn>,
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St> RateLimit<S, St> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    St: Store + Clone,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is taken on a clone once the call's turn has come.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let key = parts
            .extensions
            .get::<RateLimitKey>()
            .cloned()
            .or_else(|| self.key_fn.as_ref().and_then(|f| f(&parts)))
            .map(RateLimitKey::into_arc);
        let priority = parts
            .extensions
            .get::<Priority>()
            .copied()
            .unwrap_or_default();
        let plan = self.shared.plan(
            key,
            &parts.headers,
            parts.uri.query(),
            parts.extensions.get::<RequestMeta>(),
            priority,
        );
        let req = Request::from_parts(parts, body);
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        ResponseFuture {
            inner: Box::pin(run(self.shared.clone(), inner, req, plan)),
        }
    }
}

/// The future of [`RateLimit`]: the wait for the call's turn, then the
/// call.
pub struct ResponseFuture<B> {
    #[allow(clippy::type_complexity)]
    inner: Pin<Box<dyn Future<Output = Result<Response<RateLimitBody<B>>, BoxError>> + Send>>,
}

impl<B> fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ResponseFuture<B> {
    type Output = Result<Response<RateLimitBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// Counts a call in the queue while it waits.
struct InQueue<'a>(&'a std::sync::atomic::AtomicUsize, bool);

impl InQueue<'_> {
    /// Enters the queue unless it is full.
    fn enter(&mut self, max: usize) -> bool {
        if self.1 {
            return true;
        }
        let before = self.0.fetch_add(1, AcqRel);
        if before >= max {
            self.0.fetch_sub(1, AcqRel);
            return false;
        }
        self.1 = true;
        true
    }
}

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_sub(1, AcqRel);
        }
    }
}

async fn run<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    mut req: Request<ReqBody>,
    plan: Plan,
) -> Result<Response<RateLimitBody<ResBody>>, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    St: Store + Clone,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    let config = &shared.config;
    let started = Instant::now();
    let deadline = Deadline::get(&req);
    // How long the call may still wait, and what bounds it.
    let horizon = |now: Instant| {
        let left = config.max_wait.saturating_sub(now - started);
        match deadline.map(|d| d.remaining(now)) {
            Some(d) if d < left => (d, RefusalReason::Deadline),
            _ => (left, RefusalReason::MaxWait),
        }
    };
    let refuse = |retry_after: Option<Duration>, reason: RefusalReason| -> BoxError {
        shared.counters.refused.fetch_add(1, Relaxed);
        shared.emit(RateLimitEvent::Refused {
            key: plan.key().clone(),
            reason,
            retry_after,
        });
        Box::new(RateLimited {
            key: plan.key().clone(),
            retry_after,
            reason,
        })
    };
    let mut queue = InQueue(&shared.waiting, false);
    // The time now, when known without reading the clock again: when the
    // call started, until it first waits.
    let mut now = Some(started);

    // Calls in flight.
    let mut permits = Vec::with_capacity(plan.keyed.semaphores.len());
    for sem in plan.keyed.semaphores.iter() {
        match sem.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => {
                if !queue.enter(config.max_queued) {
                    return Err(refuse(None, RefusalReason::QueueFull));
                }
                let (wait, reason) = horizon(Instant::now());
                match tokio::time::timeout(wait, sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => permits.push(p),
                    _ => return Err(refuse(None, reason)),
                }
                now = None;
            }
        }
    }

    // Requests and tokens: a place in the queue kept in the cells. A batch
    // call takes no place ahead: it goes when its share is there now, and
    // waits out of the line until then, so that interactive calls arriving
    // later still go first.
    let batch = plan.priority == Priority::Batch;
    let mut waited = Duration::ZERO;
    let mut queued_once = false;
    let taken = loop {
        let (mut wait_max, mut reason) = horizon(now.take().unwrap_or_else(Instant::now));
        if !queue.1 && shared.waiting.load(Relaxed) >= config.max_queued {
            // A full queue: go now or not at all.
            (wait_max, reason) = (Duration::ZERO, RefusalReason::QueueFull);
        }
        let turn = if batch { Duration::ZERO } else { wait_max };
        let (wait, taken) = match shared.acquire(&plan, turn).await {
            // Counted and reported already; the policy is fail closed.
            Err(e) => return Err(Box::new(e)),
            Ok((Acquire::Never { index }, _)) => {
                shared.counters.too_large.fetch_add(1, Relaxed);
                let e = plan.too_large(index);
                shared.emit(RateLimitEvent::TooLarge { error: e.clone() });
                return Err(Box::new(e));
            }
            Ok((Acquire::Denied { retry_after }, _)) if batch && retry_after <= wait_max => {
                // Out of the line: nothing taken; look again then.
                (retry_after, None)
            }
            Ok((Acquire::Denied { retry_after }, _)) => {
                return Err(refuse(Some(retry_after), reason));
            }
            Ok((Acquire::Granted { wait }, via)) => {
                let taken = Taken::new(&shared, &plan, via);
                if wait.is_zero() {
                    break taken;
                }
                (wait, Some(taken))
            }
        };
        // The call waits: for its turn, or (a batch call) out of the line
        // until its share is there.
        if !queue.enter(config.max_queued) {
            drop(taken);
            return Err(refuse(Some(wait), RefusalReason::QueueFull));
        }
        if !queued_once {
            queued_once = true;
            shared.counters.queued.fetch_add(1, Relaxed);
        }
        shared.emit(RateLimitEvent::Queued {
            key: plan.key().clone(),
            wait,
        });
        tokio::time::sleep(wait).await;
        waited += wait;
        let Some(taken) = taken else {
            // A batch call looks again.
            continue;
        };
        // A 429 met while this call waited: its place was taken before the
        // pause; take a new one after it.
        match shared.pause_left(taken.via(), plan.pause()).await {
            Some(left) if !left.is_zero() => continue,
            _ => break taken,
        }
    };
    let via = taken.keep();
    drop(queue);
    shared.counters.admitted.fetch_add(1, Relaxed);
    if !waited.is_zero() {
        shared
            .counters
            .waited_ns
            .fetch_add(waited.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }
    shared.emit(RateLimitEvent::Admitted {
        key: plan.key().clone(),
        waited,
    });

    // The settlement takes the call's state over: no more references to
    // count.
    let settlement = Arc::new(Settlement::new(shared, plan, permits, via));
    UsageObservers::register(&mut req, settlement.clone());
    if let Err(e) = poll_fn(|cx| inner.poll_ready(cx)).await {
        return Err(e.into());
    }
    let res = match inner.call(req).await {
        Ok(res) => res,
        Err(e) => return Err(e.into()),
    };
    (settlement.shared).observe(&settlement.plan, res.status(), res.headers());
    if let Some(p) = StreamProgress::get(&res) {
        let _ = settlement.progress.set(p.clone());
    }
    Ok(res.map(|body| RateLimitBody {
        inner: body,
        _settlement: settlement,
    }))
}

pin_project! {
    /// The body of a response through [`RateLimit`]: the inner body, as it
    /// is, holding the call's settlement until it ends or is dropped.
    pub struct RateLimitBody<B> {
        #[pin]
        inner: B,
        // The call's settlement, kept alive (its type erased).
        _settlement: Arc<dyn std::any::Any + Send + Sync>,
    }
}

impl<B: fmt::Debug> fmt::Debug for RateLimitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B> RateLimitBody<B> {
    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for RateLimitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the state of a [`RateLimitLayer`].
pub struct RateLimitHandle<St = MemoryStore> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for RateLimitHandle<St> {
    fn clone(&self) -> Self {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<St> fmt::Debug for RateLimitHandle<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle").finish_non_exhaustive()
    }
}

/// The counters of a [`RateLimitLayer`] since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Calls let through.
    pub admitted: u64,
    /// Calls that waited for their turn (then went or gave up).
    pub queued: u64,
    /// The total time admitted calls waited.
    pub waited: Duration,
    /// Calls refused with [`RateLimited`].
    pub refused: u64,
    /// Calls refused with [`RequestTooLarge`](super::RequestTooLarge).
    pub too_large: u64,
    /// Calls waiting now.
    pub waiting: u64,
    /// 429 responses met from the provider.
    pub provider_429: u64,
    /// Calls settled.
    pub settled: u64,
    /// Limits learned or changed from the provider's headers.
    pub adapted: u64,
    /// Store operations that failed or timed out.
    pub store_errors: u64,
    /// Calls let through unlimited while the store failed
    /// ([`OnStoreFailure::FailOpen`](crate::store::OnStoreFailure::FailOpen)).
    pub store_fail_open: u64,
    /// Calls checked against this process's share of the limits while the
    /// store failed ([`OnStoreFailure::Degraded`](crate::store::OnStoreFailure::Degraded)).
    pub store_degraded: u64,
    /// Whether the store is failing now: the layer follows its
    /// [`on_store_failure`](super::RateLimitConfig::on_store_failure)
    /// policy until it answers again.
    pub store_down: bool,
}

/// Where one limit of a key stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitState {
    /// `requests`, `tokens`, `input_tokens` or `output_tokens`.
    pub dimension: &'static str,
    /// The limit in force, after headroom (learned or configured).
    pub limit: u64,
    /// Its window.
    pub window: Duration,
    /// Units that could be taken now.
    pub available: u64,
}

/// Where a key stands: its limits and its pause.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyState {
    /// The key-scope limits of the key (configured and learned).
    pub limits: Vec<LimitState>,
    /// Time left on a pause from a provider's 429, if any.
    pub paused_for: Option<Duration>,
}

impl<St: Store + Clone> RateLimitHandle<St> {
    /// The layer's counters.
    pub fn stats(&self) -> RateLimitStats {
        let c = &self.shared.counters;
        RateLimitStats {
            admitted: c.admitted.load(Relaxed),
            queued: c.queued.load(Relaxed),
            waited: Duration::from_nanos(c.waited_ns.load(Relaxed)),
            refused: c.refused.load(Relaxed),
            too_large: c.too_large.load(Relaxed),
            waiting: self.shared.waiting.load(Relaxed) as u64,
            provider_429: c.provider_429.load(Relaxed),
            settled: c.settled.load(Relaxed),
            adapted: c.adapted.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            store_fail_open: c.store_fail_open.load(Relaxed),
            store_degraded: c.store_degraded.load(Relaxed),
            store_down: self.shared.guard.failing(),
        }
    }

    /// The state of the key `key` (as [`RateLimitKey`] or the default key
    /// `provider:model:api-key-hash` names it): its key-scope limits and
    /// what they hold now, and its pause — in the shared store, each read
    /// bounded by the [`store_timeout`](super::RateLimitConfig::store_timeout).
    pub async fn key_state(&self, key: &str) -> Result<KeyState, crate::store::StoreError> {
        let plan = self.shared.plan(
            Some(Arc::from(key)),
            &http::HeaderMap::new(),
            None,
            None,
            Priority::Interactive,
        );
        let mut limits = Vec::new();
        for cell in plan
            .keyed
            .cells
            .iter()
            .filter(|c| c.scope == super::Scope::Key)
        {
            let available = match self
                .shared
                .read(self.shared.store.take(&cell.key, 0, cell.quota))
                .await?
            {
                Take::Allowed { remaining } => remaining,
                _ => 0,
            };
            limits.push(LimitState {
                dimension: cell.dim.as_str(),
                limit: cell.quota.limit(),
                window: cell.quota.window(),
                available,
            });
        }
        Ok(KeyState {
            limits,
            paused_for: self
                .shared
                .read(self.shared.store.flag(plan.pause()))
                .await?,
        })
    }
}
