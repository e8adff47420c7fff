//! The layer, its service, its response body and its handle.

use std::{
    fmt,
    future::{Future, poll_fn},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::SystemTime,
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Amount, Arrival, BudgetConfig, BudgetEvent, BudgetTenant, Scope, Window,
    state::{CallCost, Shared, Signature, Ticket, TicketObserver, Who},
};
use crate::{
    BoxError,
    clock::TokioClock,
    config::Valid,
    metering::{Admission, Attempt, AttemptGate, Gate, MeteredBody, UsageObserver, UsageObservers},
    pricing::{Cost, PriceTable},
    request::RequestMeta,
    store::{MemoryStore, Store, StoreError},
    util::{api_key_fnv, api_key_text},
};

type TenantFn = Arc<dyn Fn(&http::request::Parts) -> Option<BudgetTenant> + Send + Sync>;

/// Spend limits in dollars and tokens, reserved before each attempt and
/// settled after it. See the [module docs](super).
///
/// Every clone of the layer, every service it makes and every
/// [handle](Self::handle) share one state (and one store); builder calls
/// never replace it.
pub struct BudgetLayer<St = MemoryStore> {
    shared: Arc<Shared<St>>,
    tenant_fn: Option<TenantFn>,
}

impl<St> Clone for BudgetLayer<St> {
    fn clone(&self) -> Self {
        BudgetLayer {
            shared: Arc::clone(&self.shared),
            tenant_fn: self.tenant_fn.clone(),
        }
    }
}

impl<St> fmt::Debug for BudgetLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetLayer")
            .field("config", &self.shared.config)
            .field("tenant_fn", &self.tenant_fn.is_some())
            .finish_non_exhaustive()
    }
}

impl BudgetLayer {
    /// A layer with a checked `config`, its state in a new [`MemoryStore`].
    pub fn new(config: Valid<BudgetConfig>) -> Self {
        Self::with_store(config, MemoryStore::new())
    }
}

/// Checks `config`, then makes the layer.
impl TryFrom<BudgetConfig> for BudgetLayer {
    type Error = crate::config::ConfigError;

    fn try_from(config: BudgetConfig) -> Result<Self, Self::Error> {
        Ok(BudgetLayer::new(config.build()?))
    }
}

impl<St: Store> BudgetLayer<St> {
    /// A layer with a checked `config`, its state in `store`: layers (and
    /// processes) sharing a store and a [`prefix`](BudgetConfig::prefix)
    /// share their budgets.
    pub fn with_store(config: Valid<BudgetConfig>, store: St) -> Self {
        BudgetLayer {
            shared: Arc::new(Shared::new(config.into_inner(), store)),
            tenant_fn: None,
        }
    }

    /// A handle to read the spend. It may be taken at any time.
    pub fn handle(&self) -> BudgetHandle<St> {
        BudgetHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Prices calls with `table` instead of
    /// [`PriceTable::embedded`], for every clone.
    pub fn prices(self, table: PriceTable) -> Self {
        self.shared.set_prices(table);
        self
    }

    /// Reads calendar windows from `clock` (tests pin it to a date with
    /// [`TokioClock::starting_at`]), for every clone.
    pub fn clock(self, clock: TokioClock) -> Self {
        self.shared.clock.store(Arc::new(clock));
        self
    }

    /// Finds a call's tenant with `f` of the request head, for the services
    /// this layer makes from now on. A [`BudgetTenant`] in the request's
    /// extensions comes first.
    pub fn tenant_fn(
        mut self,
        f: impl Fn(&http::request::Parts) -> Option<BudgetTenant> + Send + Sync + 'static,
    ) -> Self {
        self.tenant_fn = Some(Arc::new(f));
        self
    }

    /// Calls `f` with every [`BudgetEvent`], besides the `tracing` events.
    /// Shared by every clone; a second call replaces the first. It runs on
    /// the task of the call (or of a settlement); keep it short.
    pub fn on_event(self, f: impl Fn(&BudgetEvent) + Send + Sync + 'static) -> Self {
        self.shared.listener.store(Some(Arc::new(Box::new(f))));
        self.shared.has_listener.store(true, Relaxed);
        self
    }
}

impl<S, St> Layer<S> for BudgetLayer<St> {
    type Service = Budget<S, St>;

    fn layer(&self, inner: S) -> Budget<S, St> {
        Budget {
            inner,
            shared: Arc::clone(&self.shared),
            tenant_fn: self.tenant_fn.clone(),
            gated: Arc::new(AtomicU8::new(UNKNOWN)),
        }
    }
}

/// The service of [`BudgetLayer`].
///
/// It reserves in the response future, then drives a clone of the inner
/// service to readiness and calls it, so that a reservation waiting for the
/// store holds no readiness of the inner service.
pub struct Budget<S, St = MemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
    tenant_fn: Option<TenantFn>,
    /// Whether a meter inside this service consults the gate (see
    /// [`Arrival::Auto`]): shared by the service's clones.
    gated: Arc<AtomicU8>,
}

/// Not known yet.
const UNKNOWN: u8 = 0;
/// A meter inside consulted the gate.
const GATED: u8 = 1;
/// A call was answered with no meter consulting the gate.
const UNGATED: u8 = 2;

impl<S: Clone, St> Clone for Budget<S, St> {
    fn clone(&self) -> Self {
        Budget {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            tenant_fn: self.tenant_fn.clone(),
            gated: Arc::clone(&self.gated),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Budget<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The response future of [`Budget`].
pub type ResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<BudgetBody<B>>, BoxError>> + Send + 'static>>;

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Budget<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: AsRef<[u8]> + Clone + Send,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    type Response = Response<BudgetBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is driven in the future, after the reservation.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        shared.stats.calls.fetch_add(1, Relaxed);
        let (req, who) = who_of(req, self.tenant_fn.as_ref());
        let plan = shared.plan(
            RequestMeta::get(&req),
            req.headers(),
            req.uri().query(),
            &who,
        );
        Box::pin(run(shared, inner, req, who, plan, Arc::clone(&self.gated)))
    }
}

/// The call's tenant: from its extensions, else from the layer's function.
fn who_of<B>(req: Request<B>, tenant_fn: Option<&TenantFn>) -> (Request<B>, Who) {
    if let Some(t) = req.extensions().get::<BudgetTenant>() {
        let tenant = Some(t.clone());
        return (req, Who { tenant });
    }
    let Some(f) = tenant_fn else {
        return (req, Who::default());
    };
    let (parts, body) = req.into_parts();
    let tenant = f(&parts);
    (Request::from_parts(parts, body), Who { tenant })
}

async fn run<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    mut req: Request<ReqBody>,
    who: Who,
    plan: Result<super::state::Plan, BoxError>,
    gated: Arc<AtomicU8>,
) -> Result<Response<BudgetBody<ResBody>>, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Data: AsRef<[u8]> + Clone,
    ResBody::Error: Into<BoxError>,
    St: Store,
{
    let cost = CallCost::default();
    let defer = match shared.config.arrival {
        Arrival::Refuse => false,
        Arrival::Defer => true,
        Arrival::Auto => gated.load(Relaxed) == GATED,
    };
    let reserved = match plan {
        Ok(plan) => shared.reserve(plan, Some(cost.clone())).await,
        Err(e) => Err(e),
    };
    let prepaid = match reserved {
        Ok(ticket) => Some(ticket),
        // The first attempt does not fit; an attempt elsewhere may: each
        // attempt's reservation at the meter decides.
        Err(e) if defer && is_refusal(&e) => None,
        Err(e) => return Err(shared.record(e)),
    };
    // Only for a call let through unreserved, to charge it if no meter
    // inside did: what its scopes are read from (a Gemini key is in the
    // query).
    let unreserved = prepaid
        .is_none()
        .then(|| (req.headers().clone(), req.uri().query().map(str::to_owned)));
    let gate = Arc::new(CallGate {
        shared: Arc::clone(&shared),
        who,
        prepaid: Mutex::new(prepaid),
        cost: cost.clone(),
        admitted: AtomicU64::new(0),
    });
    AttemptGate::insert(&mut req, AttemptGate::from_arc(gate.clone()));
    let meta = RequestMeta::get(&req).cloned();
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let result = inner.call(req).await.map_err(Into::into);
    let admitted = gate.admitted.load(Relaxed) > 0;
    if admitted {
        gated.store(GATED, Relaxed);
    }
    // What no attempt claimed is released here (when dropped), unless this
    // layer meters the response itself.
    let unclaimed = gate
        .prepaid
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let mut res = result?;
    res.extensions_mut().insert(cost.clone());
    if admitted || is_degraded(&res) {
        drop(unclaimed);
        return Ok(res.map(BudgetBody::plain));
    }
    // No meter inside consulted the gate: meter the body here.
    gated.store(UNGATED, Relaxed);
    let ticket = match (unclaimed, unreserved) {
        (Some(ticket), _) => Some(ticket),
        (None, Some((headers, query))) => {
            tracing::error!(
                target: "llm_tower::budget",
                "a call went out without a reservation: no meter inside consulted the budget \
                 (put MeterLayer in front of the client, or set `arrival` to `refuse`); \
                 its cost is recorded after the fact"
            );
            shared.stats.unreserved.fetch_add(1, Relaxed);
            match shared.plan(meta.as_ref(), &headers, query.as_deref(), &gate.who) {
                Ok(plan) => shared.reserve_anyway(plan, Some(cost)).await.ok(),
                Err(_) => None,
            }
        }
        (None, None) => None,
    };
    let mut observers = UsageObservers::new();
    if let Some(ticket) = ticket {
        observers.push(Arc::new(TicketObserver::new(ticket)));
    }
    let res = MeteredBody::wrap_response(res, meta.as_ref(), observers);
    Ok(res.map(BudgetBody::metered))
}

/// A budget's refusal, which another attempt elsewhere may not meet.
fn is_refusal(e: &BoxError) -> bool {
    e.is::<super::BudgetExceeded>() || e.is::<crate::pricing::Unpriced>()
}

/// A degraded answer (a stale or static one from the fallback layer) was
/// not sent to any provider: it costs nothing.
fn is_degraded<B>(res: &Response<B>) -> bool {
    #[cfg(feature = "fallback")]
    if res
        .extensions()
        .get::<crate::fallback::Degraded>()
        .is_some()
    {
        return true;
    }
    #[cfg(not(feature = "fallback"))]
    let _ = res;
    false
}

/// The gate of one call: the first attempt takes the reservation made when
/// the call came in, the others reserve their own.
struct CallGate<St: Store> {
    shared: Arc<Shared<St>>,
    who: Who,
    prepaid: Mutex<Option<Ticket<St>>>,
    cost: CallCost,
    admitted: AtomicU64,
}

impl<St: Store> CallGate<St> {
    fn admit_attempt(
        &self,
        meta: Option<&RequestMeta>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Admission {
        self.admitted.fetch_add(1, Relaxed);
        {
            // The usual first attempt: the request as it arrived. Its
            // reservation is taken without planning again.
            let mut prepaid = self
                .prepaid
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if prepaid
                .as_ref()
                .is_some_and(|t| t.plan().signature == Signature::of(meta, headers, query))
                && let Some(ticket) = prepaid.take()
            {
                return Admission::Now(Some(observer(ticket)));
            }
        }
        let plan = match self.shared.plan(meta, headers, query, &self.who) {
            Ok(plan) => plan,
            Err(e) => return Admission::Refuse(self.shared.record(e)),
        };
        let stale = {
            let mut prepaid = self
                .prepaid
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match prepaid.take() {
                Some(ticket) if ticket.plan().covers(&plan) => {
                    return Admission::Now(Some(observer(ticket)));
                }
                other => other,
            }
        };
        // The call's first attempt goes elsewhere (a fallback target with
        // another model, say): what was reserved on arrival is given back
        // now, before this attempt reserves its own, so the call never
        // holds two worst cases for one attempt.
        drop(stale);
        let shared = Arc::clone(&self.shared);
        let cost = self.cost.clone();
        Admission::later(async move {
            match shared.reserve(plan, Some(cost)).await {
                Ok(ticket) => Ok(Some(observer(ticket))),
                Err(e) => Err(shared.record(e)),
            }
        })
    }
}

fn observer<St: Store>(ticket: Ticket<St>) -> Arc<dyn UsageObserver> {
    Arc::new(TicketObserver::new(ticket))
}

impl<St: Store> Gate for CallGate<St> {
    fn admit(&self, attempt: &Attempt<'_>) -> Admission {
        self.admit_attempt(attempt.meta(), attempt.headers(), attempt.uri().query())
    }
}

pin_project! {
    /// The response body of [`Budget`]: the inner body, metered here when
    /// no meter further in reported the call's usage.
    pub struct BudgetBody<B: Body> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B: Body> {
        Plain {
            #[pin]
            body: B,
        },
        Metered {
            #[pin]
            body: MeteredBody<B>,
        },
    }
}

impl<B: Body> BudgetBody<B> {
    fn plain(body: B) -> Self {
        BudgetBody {
            inner: Inner::Plain { body },
        }
    }

    fn metered(body: MeteredBody<B>) -> Self {
        BudgetBody {
            inner: Inner::Metered { body },
        }
    }

    /// `true` when the budget layer meters this body itself (no meter
    /// further in consulted its gate).
    pub fn is_metered_here(&self) -> bool {
        matches!(self.inner, Inner::Metered { .. })
    }
}

impl<B> Body for BudgetBody<B>
where
    B: Body,
    B::Data: AsRef<[u8]> + Clone,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Plain { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Metered { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain { body } => body.is_end_stream(),
            Inner::Metered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Plain { body } => body.size_hint(),
            Inner::Metered { body } => body.size_hint(),
        }
    }
}

impl<B: Body> fmt::Debug for BudgetBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetBody")
            .field("metered_here", &self.is_metered_here())
            .finish_non_exhaustive()
    }
}

/// Reads a [`BudgetLayer`]'s spend.
pub struct BudgetHandle<St = MemoryStore> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for BudgetHandle<St> {
    fn clone(&self) -> Self {
        BudgetHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St> fmt::Debug for BudgetHandle<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetHandle").finish_non_exhaustive()
    }
}

/// This process's counters of a [`BudgetLayer`], from
/// [`BudgetHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetStats {
    /// Calls that came in.
    pub calls: u64,
    /// Reservations made: one when a call arrives (for its first
    /// attempt), and one for each attempt that could not use it (a retry,
    /// another target, a hedge).
    pub attempts: u64,
    /// Calls and attempts refused by a limit or a per-request cap.
    pub refused: u64,
    /// Reservations settled, or given back in full because nothing was
    /// sent with them: `attempts` once nothing is in flight.
    pub settled: u64,
    /// Attempts to models without a price, counted in tokens only.
    pub unpriced: u64,
    /// Store operations that failed or timed out.
    pub store_errors: u64,
    /// Calls and attempts let through unchecked while the store failed
    /// ([`OnStoreFailure::FailOpen`](crate::store::OnStoreFailure::FailOpen)):
    /// their cost is in [`spent`](Self::spent), not in the shared budget.
    pub store_fail_open: u64,
    /// Calls and attempts reserved in this process's share of the limits
    /// while the store failed
    /// ([`OnStoreFailure::Degraded`](crate::store::OnStoreFailure::Degraded)).
    pub store_degraded: u64,
    /// Whether the store is failing now: calls follow the
    /// [`on_store_failure`](super::BudgetConfig::on_store_failure) policy
    /// until it answers again.
    pub store_down: bool,
    /// Calls let through unreserved ([`Arrival::Defer`]) that no meter
    /// inside reserved for: charged after the fact. Zero in a stack with a
    /// meter in front of the client.
    pub unreserved: u64,
    /// What the settled attempts cost.
    pub spent: Cost,
    /// The tokens they used.
    pub tokens: u64,
    /// The worst case of the attempts in flight now.
    pub reserved: Cost,
    /// The most `reserved` has been.
    pub reserved_peak: Cost,
}

/// One limit of a scope, as [`BudgetHandle::status`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStatus {
    /// The limit.
    pub limit: Amount,
    /// Its window.
    pub window: Window,
    /// Whether it refuses calls.
    pub hard: bool,
    /// Spent in the window.
    pub spent: Amount,
    /// Reserved by calls in flight.
    pub reserved: Amount,
    /// What is left: the limit minus both (zero when over).
    pub remaining: Amount,
    /// When a calendar window ends.
    pub resets_at: Option<SystemTime>,
}

impl<St: Store> BudgetHandle<St> {
    /// This process's counters.
    pub fn stats(&self) -> BudgetStats {
        let s = &self.shared.stats;
        BudgetStats {
            calls: s.calls.load(Relaxed),
            attempts: s.attempts.load(Relaxed),
            refused: s.refused.load(Relaxed),
            settled: s.settled.load(Relaxed),
            unpriced: s.unpriced.load(Relaxed),
            store_errors: s.store_errors.load(Relaxed),
            store_fail_open: s.store_fail_open.load(Relaxed),
            store_degraded: s.store_degraded.load(Relaxed),
            store_down: self.shared.guard.failing(),
            unreserved: s.unreserved.load(Relaxed),
            spent: Cost::from_nanos(s.spent_nanos.load(Relaxed)),
            tokens: s.tokens.load(Relaxed),
            reserved: Cost::from_nanos(s.reserved_nanos.load(Relaxed)),
            reserved_peak: Cost::from_nanos(s.reserved_peak_nanos.load(Relaxed)),
        }
    }

    /// The current window of every limit of `scope` for `key` — `*` for
    /// [`Scope::Global`], the tenant, the organisation, the model, the
    /// provider's name, or for [`Scope::ApiKey`] the API key itself (only
    /// its hash is used) — read from the shared store, each read bounded
    /// by the [`store_timeout`](super::BudgetConfig::store_timeout). Empty when the scope is not
    /// configured.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn status(&self, scope: Scope, key: &str) -> Result<Vec<LimitStatus>, StoreError> {
        let hashed;
        let value = if scope == Scope::ApiKey {
            hashed = api_key_text(api_key_fnv(Some(key.as_bytes())));
            hashed.as_str()
        } else {
            key
        };
        let wall = self.shared.wall();
        let mut out = Vec::new();
        for (limit, bucket_key, span, resets_at) in self.shared.buckets_of(scope, value, wall) {
            let balance = self
                .shared
                .read(self.shared.store.balance(&bucket_key, span))
                .await?;
            let used = balance.spent.saturating_add(balance.reserved);
            out.push(LimitStatus {
                limit: Amount::of(limit.0, limit.1),
                window: limit.2,
                hard: limit.3,
                spent: Amount::of(limit.0, balance.spent),
                reserved: Amount::of(limit.0, balance.reserved),
                remaining: Amount::of(limit.0, limit.1.saturating_sub(used)),
                resets_at,
            });
        }
        Ok(out)
    }
}
