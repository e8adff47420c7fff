//! What every clone of a budget layer shares, and how one attempt is
//! planned, reserved and settled.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use foldhash::fast::RandomState;
use http::HeaderMap;
use smallvec::SmallVec;

use super::{
    Amount, BudgetConfig, BudgetEvent, BudgetExceeded, BudgetTenant, BudgetUnavailable, Scope,
    Unit, UnpricedPolicy, Window,
    config::{ROLLING_SLOTS, usd_to_nanos},
};
use crate::{
    BoxError,
    clock::{
        Clock, TokioClock, utc_day, utc_day_start, utc_month, utc_month_start, utc_week,
        utc_week_start,
    },
    metering::{UsageObserver, UsageReport},
    pricing::{Cost, ModelPrice, PriceTable, Unpriced},
    request::RequestMeta,
    store::{
        Balance, Bucket, Call, MemoryStore, OnStoreFailure, Reservation, Reserve, Span, Store,
        StoreError, StoreGuard, Switch, bounded,
    },
    usage::Usage,
    util::{api_key_fnv, api_key_secret, api_key_text, concat, run_now_or_spawn},
};

/// Extra life of a calendar window's bucket past the window's end, on top
/// of the lease: settlements of calls that started in the window land in it.
const CALENDAR_SLACK: Duration = Duration::from_secs(3600);

type Listener = Box<dyn Fn(&BudgetEvent) + Send + Sync>;

/// The most store keys kept built; past it the cache starts again.
const KEY_CACHE: usize = 16_384;

/// What a store key is built from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KeyId {
    scope: u16,
    limit: u16,
    window: u64,
    value: Arc<str>,
}

/// The UTC month last seen, so that most calls skip the calendar.
#[derive(Debug)]
struct MonthCache {
    month: u64,
    start: SystemTime,
    end: SystemTime,
}

/// A price table and the prices resolved from it, by model name.
struct Prices {
    table: PriceTable,
    resolved: DashMap<Arc<str>, Option<ModelPrice>, RandomState>,
}

impl Prices {
    fn new(table: PriceTable) -> Self {
        Prices {
            table,
            resolved: DashMap::default(),
        }
    }
}

pub(crate) struct Shared<St> {
    pub(crate) config: BudgetConfig,
    scopes: Box<[CompiledScope]>,
    pub(crate) store: St,
    /// Whether the store fails, and the policy meanwhile.
    pub(crate) guard: StoreGuard,
    /// The private store of a degraded policy.
    local: Option<MemoryStore>,
    /// The price table, with the prices resolved from it so far: swapped
    /// together, so that a lookup racing `set_prices` caches the old price
    /// in the old map only.
    prices: ArcSwap<Prices>,
    pub(crate) clock: ArcSwap<TokioClock>,
    pub(crate) listener: ArcSwapOption<Listener>,
    pub(crate) has_listener: AtomicBool,
    pub(crate) stats: Counters,
    /// The global scope's value.
    star: Arc<str>,
    keys: DashMap<KeyId, Arc<str>, RandomState>,
    month: ArcSwap<MonthCache>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) settled: AtomicU64,
    pub(crate) unpriced: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) unreserved: AtomicU64,
    pub(crate) store_fail_open: AtomicU64,
    pub(crate) store_degraded: AtomicU64,
    pub(crate) spent_nanos: AtomicU64,
    pub(crate) tokens: AtomicU64,
    pub(crate) reserved_nanos: AtomicU64,
    pub(crate) reserved_peak_nanos: AtomicU64,
}

struct CompiledScope {
    scope: Scope,
    limits: Box<[CompiledLimit]>,
    max_request_nanos: Option<u64>,
    max_request_tokens: Option<u64>,
    unpriced: UnpricedPolicy,
    unpriced_price: Option<ModelPrice>,
}

struct CompiledLimit {
    unit: Unit,
    amount: u64,
    window: Window,
    hard: bool,
    /// Thresholds in the limit's unit, with the fraction each stands for.
    alerts: Box<[(u64, f64)]>,
}

/// One bucket of a planned reservation.
pub(crate) struct PlanBucket {
    key: Arc<str>,
    /// The scope's value: the tenant, the model…
    value: Arc<str>,
    amount: u64,
    limit: u64,
    span: Span,
    scope: u16,
    limit_index: u16,
    /// The price its dollars are counted at; `None` for tokens.
    price: Option<ModelPrice>,
    resets_at: Option<SystemTime>,
}

/// What a plan depends on in an attempt: an attempt with the same
/// signature has the same plan (within the same windows), so it can take a
/// reservation made for it without planning again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signature {
    model: Option<Arc<str>>,
    provider: Option<crate::provider::Provider>,
    input: u64,
    max_output: Option<u64>,
    api_key: Option<u64>,
}

impl Signature {
    pub(crate) fn of(meta: Option<&RequestMeta>, headers: &HeaderMap, query: Option<&str>) -> Self {
        Signature {
            model: meta.and_then(RequestMeta::model_arc).cloned(),
            provider: meta.and_then(RequestMeta::provider).cloned(),
            input: meta.map_or(0, RequestMeta::estimated_input_tokens),
            max_output: meta.and_then(RequestMeta::max_output_tokens),
            api_key: api_key_fnv(api_key_secret(headers, query)),
        }
    }
}

/// What one attempt reserves.
pub(crate) struct Plan {
    pub(crate) signature: Signature,
    model: Option<Arc<str>>,
    buckets: Vec<PlanBucket>,
    /// The price of the call's own cost (its model's, or the first
    /// configured one); `None` when it cannot be priced.
    price: Option<ModelPrice>,
    /// The worst case at `price`.
    worst_cost: Option<Cost>,
    /// The scopes that count this attempt in tokens only, its model having
    /// no price.
    unpriced: Vec<Scope>,
}

impl Plan {
    /// `true` when `self`, reserved already, covers `other`: the same
    /// buckets, each with at least as much.
    pub(crate) fn covers(&self, other: &Plan) -> bool {
        self.model == other.model
            && self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.key == b.key && a.amount >= b.amount)
    }
}

/// Who a call is, for its scopes: computed once per call.
#[derive(Clone, Debug, Default)]
pub(crate) struct Who {
    pub(crate) tenant: Option<BudgetTenant>,
}

impl<St: Store> Shared<St> {
    pub(crate) fn new(config: BudgetConfig, store: St) -> Self {
        let scopes = config
            .scopes
            .iter()
            .map(|s| CompiledScope {
                scope: s.scope,
                limits: s
                    .limits
                    .iter()
                    .map(|l| {
                        let amount = l.amount();
                        let mut alerts: Vec<(u64, f64)> = l
                            .alerts
                            .iter()
                            .map(|&f| (((amount as f64) * f).ceil() as u64, f))
                            .collect();
                        alerts.sort_by_key(|a| a.0);
                        alerts.dedup_by_key(|a| a.0);
                        CompiledLimit {
                            unit: l.unit(),
                            amount,
                            window: l.window,
                            hard: l.hard,
                            alerts: alerts.into(),
                        }
                    })
                    .collect(),
                max_request_nanos: s.max_request_usd.map(usd_to_nanos),
                max_request_tokens: s.max_request_tokens,
                unpriced: s.unpriced,
                unpriced_price: s.unpriced_price(),
            })
            .collect();
        let policy = config.on_store_failure;
        Shared {
            guard: StoreGuard::new(policy, config.store_timeout),
            local: matches!(policy, OnStoreFailure::Degraded { .. }).then(MemoryStore::new),
            config,
            scopes,
            store,
            prices: ArcSwap::from_pointee(Prices::new(PriceTable::embedded())),
            clock: ArcSwap::from_pointee(TokioClock::new()),
            listener: ArcSwapOption::empty(),
            has_listener: AtomicBool::new(false),
            stats: Counters::default(),
            star: Arc::from("*"),
            keys: DashMap::default(),
            month: ArcSwap::from_pointee(MonthCache {
                month: 0,
                start: SystemTime::UNIX_EPOCH,
                end: SystemTime::UNIX_EPOCH,
            }),
        }
    }

    pub(crate) fn emit(&self, event: impl FnOnce() -> BudgetEvent) {
        if !self.has_listener.load(Relaxed) {
            return;
        }
        if let Some(listener) = &*self.listener.load() {
            listener(&event());
        }
    }

    pub(crate) fn wall(&self) -> SystemTime {
        self.clock.load().wall()
    }

    /// The value of `scope` for an attempt; `None` when the scope does not
    /// apply to it (no tenant, no API key…).
    fn scope_value(
        &self,
        scope: Scope,
        meta: Option<&RequestMeta>,
        headers: &HeaderMap,
        query: Option<&str>,
        who: &Who,
    ) -> Option<Arc<str>> {
        match scope {
            Scope::Global => Some(Arc::clone(&self.star)),
            Scope::ApiKey => api_key_fnv(api_key_secret(headers, query))
                .map(|h| Arc::from(api_key_text(Some(h)))),
            Scope::Tenant => who.tenant.as_ref()?.tenant_arc().cloned(),
            Scope::Organisation => who.tenant.as_ref()?.organisation_arc().cloned(),
            Scope::Model => meta?.model_arc().cloned(),
            Scope::Provider => meta?.provider().map(|p| Arc::from(p.name())),
        }
    }

    /// The table's price of `model`, resolved once per model name.
    fn price_of(&self, model: &Arc<str>) -> Option<ModelPrice> {
        let prices = self.prices.load();
        if let Some(price) = prices.resolved.get(model) {
            return *price;
        }
        let price = prices.table.price(model).copied();
        if prices.resolved.len() >= KEY_CACHE {
            prices.resolved.clear();
        }
        prices.resolved.insert(Arc::clone(model), price);
        price
    }

    /// Replaces the price table (and with it what was resolved from the
    /// old one).
    pub(crate) fn set_prices(&self, table: PriceTable) {
        self.prices.store(Arc::new(Prices::new(table)));
    }

    /// The current window of `window` at `wall`: its number (0 for a total
    /// or a rolling window), the store span of its bucket and when it ends.
    fn window_of(&self, window: Window, wall: SystemTime) -> (u64, Span, Option<SystemTime>) {
        let lease = self.config.lease;
        let calendar = |n: u64, end: SystemTime| {
            let left = end.duration_since(wall).unwrap_or_default();
            let ttl = Some(left + lease + CALENDAR_SLACK);
            (n, Span::Fixed { ttl }, Some(end))
        };
        match window {
            Window::Total => (0, Span::Fixed { ttl: None }, None),
            Window::Rolling(d) => (
                0,
                Span::Rolling {
                    window: d,
                    slots: ROLLING_SLOTS,
                },
                None,
            ),
            Window::Day => {
                let n = utc_day(wall);
                calendar(n, utc_day_start(n + 1))
            }
            Window::Week => {
                let n = utc_week(wall);
                calendar(n, utc_week_start(n + 1))
            }
            Window::Month => {
                let cached = self.month.load();
                let (n, end) = if cached.start <= wall && wall < cached.end {
                    (cached.month, cached.end)
                } else {
                    let n = utc_month(wall);
                    let (start, end) = (utc_month_start(n), utc_month_start(n + 1));
                    self.month.store(Arc::new(MonthCache {
                        month: n,
                        start,
                        end,
                    }));
                    (n, end)
                };
                calendar(n, end)
            }
        }
    }

    /// The store key of limit `li` of scope `si` for `value` in window
    /// `window`: built once, then cached until the cache is full.
    fn key_of(&self, si: usize, li: usize, window: u64, value: &Arc<str>) -> Arc<str> {
        let id = KeyId {
            scope: si as u16,
            limit: li as u16,
            window,
            value: Arc::clone(value),
        };
        if let Some(key) = self.keys.get(&id) {
            return Arc::clone(&key);
        }
        let scope = &self.scopes[si];
        let limit = &scope.limits[li];
        let tag = match limit.window {
            Window::Total => "total".to_owned(),
            Window::Rolling(d) => format!("r{}", d.as_millis()),
            Window::Day => format!("d{window}"),
            Window::Week => format!("w{window}"),
            Window::Month => format!("m{window}"),
        };
        let key: Arc<str> = Arc::from(concat(&[
            &self.config.prefix,
            ":",
            scope.scope.as_str(),
            ":",
            value,
            ":",
            limit.unit.as_str(),
            ":",
            &tag,
        ]));
        if self.keys.len() >= KEY_CACHE {
            // Old windows and idle tenants: start again.
            self.keys.clear();
        }
        self.keys.insert(id, Arc::clone(&key));
        key
    }

    /// Every limit of `scope`, with its bucket for `value` now.
    #[allow(clippy::type_complexity)]
    pub(crate) fn buckets_of(
        &self,
        scope: Scope,
        value: &str,
        wall: SystemTime,
    ) -> Vec<(
        (Unit, u64, Window, bool),
        Arc<str>,
        Span,
        Option<SystemTime>,
    )> {
        let value: Arc<str> = Arc::from(value);
        let mut out = Vec::new();
        for (si, s) in self.scopes.iter().enumerate() {
            if s.scope != scope {
                continue;
            }
            for (li, l) in s.limits.iter().enumerate() {
                let (n, span, resets) = self.window_of(l.window, wall);
                let key = self.key_of(si, li, n, &value);
                out.push(((l.unit, l.amount, l.window, l.hard), key, span, resets));
            }
        }
        out
    }

    /// Plans the reservation of one attempt: its buckets and their worst
    /// case. Refuses a call over a per-request cap, or to a model without a
    /// price under a scope that refuses those.
    pub(crate) fn plan(
        &self,
        meta: Option<&RequestMeta>,
        headers: &HeaderMap,
        query: Option<&str>,
        who: &Who,
    ) -> Result<Plan, BoxError> {
        let model = meta.and_then(RequestMeta::model_arc).cloned();
        let input = meta.map_or(0, RequestMeta::estimated_input_tokens);
        let output = meta
            .and_then(RequestMeta::max_output_tokens)
            .unwrap_or_else(|| self.config.max_output_for(model.as_deref()));
        let worst = Usage::new(input, output);
        let table_price = model.as_ref().and_then(|m| self.price_of(m));
        let mut own_price = table_price;
        let wall = self.wall();
        let mut buckets = Vec::new();
        let mut unpriced = Vec::new();
        for (si, scope) in self.scopes.iter().enumerate() {
            let Some(value) = self.scope_value(scope.scope, meta, headers, query, who) else {
                continue;
            };
            let price = match (table_price, scope.unpriced) {
                (Some(p), _) => Some(p),
                (None, UnpricedPolicy::Price(_)) => scope.unpriced_price,
                (None, UnpricedPolicy::TokensOnly) => None,
                (None, UnpricedPolicy::Refuse) => {
                    let has_usd = scope.limits.iter().any(|l| l.unit == Unit::Usd)
                        || scope.max_request_nanos.is_some();
                    if has_usd {
                        return Err(Unpriced::new(model.as_deref().unwrap_or("(unknown)")).into());
                    }
                    None
                }
            };
            if own_price.is_none() {
                own_price = price;
            }
            let worst_cost = price.map(|p| p.worst_cost(input, output).as_nanos());
            if table_price.is_none() && price.is_none() {
                unpriced.push(scope.scope);
            }
            let cap = |limit: u64, asked: u64, unit: Unit| BudgetExceeded {
                scope: scope.scope,
                key: Arc::clone(&value),
                limit: Amount::of(unit, limit),
                spent: 0,
                reserved: 0,
                asked,
                window: None,
                resets_at: None,
                retry_after: None,
                status: self.config.refusal_status,
            };
            if let (Some(cap_nanos), Some(cost)) = (scope.max_request_nanos, worst_cost)
                && cost > cap_nanos
            {
                return Err(cap(cap_nanos, cost, Unit::Usd).into());
            }
            if let Some(cap_tokens) = scope.max_request_tokens
                && worst.total_tokens() > cap_tokens
            {
                return Err(cap(cap_tokens, worst.total_tokens(), Unit::Tokens).into());
            }
            for (li, limit) in scope.limits.iter().enumerate() {
                let (amount, price) = match limit.unit {
                    Unit::Tokens => (worst.total_tokens(), None),
                    Unit::Usd => match (worst_cost, price) {
                        (Some(c), Some(p)) => (c, Some(p)),
                        // Unpriced, counted in tokens only.
                        _ => continue,
                    },
                };
                let (window, span, resets_at) = self.window_of(limit.window, wall);
                let key = self.key_of(si, li, window, &value);
                buckets.push(PlanBucket {
                    key,
                    value: Arc::clone(&value),
                    amount,
                    limit: if limit.hard { limit.amount } else { u64::MAX },
                    span,
                    scope: si as u16,
                    limit_index: li as u16,
                    price,
                    resets_at,
                });
            }
        }
        Ok(Plan {
            signature: Signature::of(meta, headers, query),
            worst_cost: own_price.map(|p| p.worst_cost(input, output)),
            model,
            buckets,
            price: own_price,
            unpriced,
        })
    }

    /// Counts and reports a refusal that is final: the call or attempt
    /// fails with it. Other errors pass through untouched.
    pub(crate) fn record(&self, e: BoxError) -> BoxError {
        if let Some(refusal) = e.downcast_ref::<BudgetExceeded>() {
            self.stats.refused.fetch_add(1, Relaxed);
            tracing::info!(target: "llm_tower::budget", "{refusal}");
            self.emit(|| BudgetEvent::Refused(refusal.clone()));
        } else if let Some(unpriced) = e.downcast_ref::<Unpriced>() {
            self.stats.refused.fetch_add(1, Relaxed);
            tracing::info!(target: "llm_tower::budget", "refused: {unpriced}");
        }
        e
    }

    /// Reserves a plan whatever its limits say: for a call that went out
    /// without a reservation, so that its spend is still recorded.
    pub(crate) async fn reserve_anyway(
        self: &Arc<Self>,
        mut plan: Plan,
        cost: Option<CallCost>,
    ) -> Result<Ticket<St>, BoxError> {
        for b in &mut plan.buckets {
            b.limit = u64::MAX;
        }
        self.reserve(plan, cost).await
    }

    /// Reserves a plan: a ticket to settle, or the refusal.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        plan: Plan,
        cost: Option<CallCost>,
    ) -> Result<Ticket<St>, BoxError> {
        if plan.buckets.is_empty() {
            return Ok(self.ticket(plan, None, cost));
        }
        let (call, switch) = self
            .guard
            .call(|| async {
                let buckets: SmallVec<[Bucket<'_>; 4]> = plan
                    .buckets
                    .iter()
                    .map(|b| Bucket::new(&b.key, b.amount, b.limit, b.span))
                    .collect();
                self.store.reserve(&buckets, self.config.lease).await
            })
            .await;
        let error = match call {
            Call::Answered(answer) => {
                self.switched(switch, None);
                return match answer {
                    Reserve::Granted(r) => Ok(self.ticket(plan, Some(Held::Shared(r)), cost)),
                    Reserve::Denied {
                        index,
                        spent,
                        reserved,
                        retry_after,
                    } => Err(self
                        .denied(&plan, index, spent, reserved, retry_after, false)
                        .into()),
                };
            }
            Call::Failed(e) => {
                self.store_failed(&e);
                self.switched(switch, Some(&e));
                e
            }
            Call::Skipped => {
                StoreError::new("unavailable: it failed, and is tried again once a second")
            }
        };
        let policy = self.config.on_store_failure;
        match (policy, &self.local) {
            (OnStoreFailure::FailOpen, _) => {
                self.stats.store_fail_open.fetch_add(1, Relaxed);
                let model = plan.model.as_deref().unwrap_or("-");
                tracing::error!(
                    target: "llm_tower::budget",
                    { gen_ai.request.model = model, error = %error },
                    "budget store failing: call let through unchecked (fail open); \
                     its cost is counted in this process's stats only"
                );
                self.emit(|| BudgetEvent::Unchecked {
                    model: plan.model.clone(),
                });
                Ok(self.ticket(plan, None, cost))
            }
            (OnStoreFailure::Degraded { .. }, Some(local)) => {
                self.stats.store_degraded.fetch_add(1, Relaxed);
                let buckets: SmallVec<[Bucket<'_>; 4]> = plan
                    .buckets
                    .iter()
                    .map(|b| Bucket::new(&b.key, b.amount, policy.scale(b.limit), b.span))
                    .collect();
                match local.reserve(&buckets, self.config.lease).await {
                    Ok(Reserve::Granted(r)) => {
                        drop(buckets);
                        Ok(self.ticket(plan, Some(Held::Local(r)), cost))
                    }
                    Ok(Reserve::Denied {
                        index,
                        spent,
                        reserved,
                        retry_after,
                    }) => {
                        drop(buckets);
                        Err(self
                            .denied(&plan, index, spent, reserved, retry_after, true)
                            .into())
                    }
                    Err(e) => Err(BudgetUnavailable { source: e }.into()),
                }
            }
            _ => Err(BudgetUnavailable { source: error }.into()),
        }
    }

    /// Reports a change of the store's state.
    fn switched(&self, switch: Option<Switch>, error: Option<&StoreError>) {
        match switch {
            None => {}
            Some(Switch::Failed) => {
                let policy = self.guard.policy.as_str();
                tracing::error!(
                    target: "llm_tower::budget",
                    policy,
                    "budget store failing: calls follow the policy until it answers again"
                );
                self.emit(|| BudgetEvent::StoreDown {
                    error: error.map_or_else(String::new, ToString::to_string),
                    policy,
                });
            }
            Some(Switch::Recovered { down_for }) => {
                tracing::warn!(
                    target: "llm_tower::budget",
                    ?down_for,
                    "budget store answers again: budgets are shared again"
                );
                self.emit(|| BudgetEvent::StoreRecovered { down_for });
            }
        }
    }

    /// Settles `reservation` where it was made, off the call's path: a
    /// failure of the shared store is counted, logged and reported, and
    /// fails nothing.
    async fn settle_held(&self, held: &Held, actual: &[u64]) -> Option<Vec<Balance>> {
        match held {
            Held::Shared(r) => match self.guard.run(self.store.settle(r, actual)).await {
                (Call::Answered(balances), switch) => {
                    self.switched(switch, None);
                    Some(balances)
                }
                (Call::Failed(e), switch) => {
                    self.store_failed(&e);
                    self.switched(switch, Some(&e));
                    None
                }
                (Call::Skipped, _) => None,
            },
            Held::Local(r) => {
                if let Some(local) = &self.local {
                    let _ = local.settle(r, actual).await;
                }
                // Thresholds are the shared budget's, not this process's.
                None
            }
        }
    }

    /// A shared-store read for the handle, bounded by the timeout.
    pub(crate) async fn read<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded(self.guard.timeout, fut).await
    }

    fn ticket(
        self: &Arc<Self>,
        plan: Plan,
        reservation: Option<Held>,
        cost: Option<CallCost>,
    ) -> Ticket<St> {
        self.stats.attempts.fetch_add(1, Relaxed);
        if !plan.unpriced.is_empty() {
            self.stats.unpriced.fetch_add(1, Relaxed);
            let name = plan.model.as_deref().unwrap_or("-");
            for &scope in &plan.unpriced {
                tracing::warn!(
                    target: "llm_tower::budget",
                    { scope = scope.as_str(), gen_ai.request.model = name },
                    "model has no price: only token limits count this attempt"
                );
                self.emit(|| BudgetEvent::Unpriced {
                    scope,
                    model: plan.model.clone(),
                });
            }
        }
        let worst = plan.worst_cost.map_or(0, Cost::as_nanos);
        let now = self.stats.reserved_nanos.fetch_add(worst, Relaxed) + worst;
        self.stats.reserved_peak_nanos.fetch_max(now, Relaxed);
        Ticket {
            shared: Arc::clone(self),
            plan,
            reservation,
            cost,
            settled: false,
        }
    }

    fn denied(
        &self,
        plan: &Plan,
        index: usize,
        spent: u64,
        reserved: u64,
        retry_after: Option<Duration>,
        degraded: bool,
    ) -> BudgetExceeded {
        let b = &plan.buckets[index];
        let scope = &self.scopes[b.scope as usize];
        let limit = &scope.limits[b.limit_index as usize];
        let amount = if degraded {
            self.config.on_store_failure.scale(limit.amount)
        } else {
            limit.amount
        };
        let resets_at = b.resets_at;
        let retry_after = retry_after
            .or_else(|| resets_at.map(|at| at.duration_since(self.wall()).unwrap_or_default()));
        BudgetExceeded {
            scope: scope.scope,
            key: Arc::clone(&b.value),
            limit: Amount::of(limit.unit, amount),
            spent,
            reserved,
            asked: b.amount,
            window: Some(limit.window),
            resets_at,
            retry_after,
            status: self.config.refusal_status,
        }
    }

    /// Counts, logs and reports a failed operation of the shared store.
    pub(crate) fn store_failed(&self, e: &StoreError) {
        self.stats.store_errors.fetch_add(1, Relaxed);
        tracing::error!(target: "llm_tower::budget", error = %e, "budget store failed");
        self.emit(|| BudgetEvent::StoreFailed {
            error: e.to_string(),
        });
    }

    /// The thresholds a settlement crossed, as events.
    fn crossed(&self, plan: &Plan, actual: &[u64], balances: &[Balance]) {
        for ((b, &amount), balance) in plan.buckets.iter().zip(actual).zip(balances) {
            let scope = &self.scopes[b.scope as usize];
            let limit = &scope.limits[b.limit_index as usize];
            let after = balance.spent;
            let before = after.saturating_sub(amount);
            for &(at, fraction) in limit.alerts.iter() {
                if before < at && at <= after {
                    let value = &*b.value;
                    let spent = Amount::of(limit.unit, after);
                    let of = Amount::of(limit.unit, limit.amount);
                    if fraction >= 1.0 {
                        tracing::warn!(
                            target: "llm_tower::budget",
                            scope = scope.scope.as_str(), key = value,
                            "budget {:.0}% spent: {spent} of {of} per {}", fraction * 100.0, limit.window
                        );
                    } else {
                        tracing::info!(
                            target: "llm_tower::budget",
                            scope = scope.scope.as_str(), key = value,
                            "budget {:.0}% spent: {spent} of {of} per {}", fraction * 100.0, limit.window
                        );
                    }
                    self.emit(|| BudgetEvent::Threshold {
                        scope: scope.scope,
                        key: value.into(),
                        limit: of,
                        window: limit.window,
                        hard: limit.hard,
                        fraction,
                        spent,
                    });
                }
            }
        }
    }
}

/// The cost of one call, in its response's extensions: the sum of what
/// each of its attempts cost, known once their bodies end (or are
/// dropped).
///
/// ```
/// # use llm_tower::budget::CallCost;
/// fn log<B>(res: &http::Response<B>) {
///     if let Some(cost) = res.extensions().get::<CallCost>() {
///         println!("{} over {} attempts", cost.cost(), cost.attempts());
///     }
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallCost(Arc<CostInner>);

#[derive(Debug, Default)]
struct CostInner {
    nanos: AtomicU64,
    tokens: AtomicU64,
    attempts: AtomicU64,
    unpriced: AtomicBool,
}

impl CallCost {
    /// What the call's settled attempts cost, at their models' prices.
    pub fn cost(&self) -> Cost {
        Cost::from_nanos(self.0.nanos.load(Relaxed))
    }

    /// The tokens the call's settled attempts used, input and output.
    pub fn tokens(&self) -> u64 {
        self.0.tokens.load(Relaxed)
    }

    /// How many attempts were settled.
    pub fn attempts(&self) -> u64 {
        self.0.attempts.load(Relaxed)
    }

    /// `true` when an attempt went to a model without a price, so
    /// [`cost`](Self::cost) leaves it out.
    pub fn has_unpriced(&self) -> bool {
        self.0.unpriced.load(Relaxed)
    }
}

/// A reservation, and the store it was made in.
pub(crate) enum Held {
    /// The shared store.
    Shared(Reservation),
    /// The layer's private store, the shared one failing (degraded).
    Local(Reservation),
}

impl Held {
    fn parts(&self) -> usize {
        match self {
            Held::Shared(r) | Held::Local(r) => r.parts().len(),
        }
    }
}

/// One attempt's reservation, settled exactly once: by its usage report,
/// or, if it is dropped unreported, with nothing spent.
pub(crate) struct Ticket<St: Store> {
    shared: Arc<Shared<St>>,
    plan: Plan,
    reservation: Option<Held>,
    cost: Option<CallCost>,
    settled: bool,
}

impl<St: Store> Ticket<St> {
    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Settles with the usage of the attempt.
    pub(crate) fn settle(mut self, usage: Usage) {
        self.settled = true;
        let shared = Arc::clone(&self.shared);
        let worst = self.plan.worst_cost.map_or(0, Cost::as_nanos);
        shared.stats.reserved_nanos.fetch_sub(worst, Relaxed);
        shared.stats.settled.fetch_add(1, Relaxed);
        let cost = self.plan.price.map(|p| p.cost(&usage));
        if let Some(c) = cost {
            shared.stats.spent_nanos.fetch_add(c.as_nanos(), Relaxed);
        }
        shared.stats.tokens.fetch_add(usage.total_tokens(), Relaxed);
        if let Some(call) = &self.cost {
            call.0.attempts.fetch_add(1, Relaxed);
            call.0.tokens.fetch_add(usage.total_tokens(), Relaxed);
            match cost {
                Some(c) => {
                    call.0.nanos.fetch_add(c.as_nanos(), Relaxed);
                }
                None => call.0.unpriced.store(true, Relaxed),
            }
        }
        let model = self.plan.model.as_deref().unwrap_or("-");
        tracing::debug!(
            target: "llm_tower::budget",
            { gen_ai.request.model = model, gen_ai.usage.input_tokens = usage.input_tokens,
              gen_ai.usage.output_tokens = usage.output_tokens,
              cost_usd = cost.map(Cost::as_usd), reserved_usd = self.plan.worst_cost.map(Cost::as_usd) },
            "budget settled"
        );
        shared.emit(|| BudgetEvent::Settled {
            model: self.plan.model.clone(),
            usage,
            cost,
            reserved: self.plan.worst_cost,
        });
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let plan = std::mem::replace(
            &mut self.plan,
            Plan {
                signature: Signature {
                    model: None,
                    provider: None,
                    input: 0,
                    max_output: None,
                    api_key: None,
                },
                model: None,
                buckets: Vec::new(),
                price: None,
                worst_cost: None,
                unpriced: Vec::new(),
            },
        );
        let actual: SmallVec<[u64; 4]> = plan
            .buckets
            .iter()
            .map(|b| match b.price {
                Some(p) => p.cost(&usage).as_nanos(),
                None => usage.total_tokens(),
            })
            .collect();
        run_now_or_spawn("budget settlement", async move {
            if let Some(balances) = shared.settle_held(&reservation, &actual).await {
                shared.crossed(&plan, &actual, &balances);
            }
        });
    }
}

impl<St: Store> Drop for Ticket<St> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Never reported: nothing was sent. Give everything back.
        self.settled = true;
        let shared = Arc::clone(&self.shared);
        let worst = self.plan.worst_cost.map_or(0, Cost::as_nanos);
        shared.stats.reserved_nanos.fetch_sub(worst, Relaxed);
        shared.stats.settled.fetch_add(1, Relaxed);
        if let Some(reservation) = self.reservation.take() {
            let zeros: SmallVec<[u64; 4]> = smallvec::smallvec![0; reservation.parts()];
            run_now_or_spawn("budget release", async move {
                shared.settle_held(&reservation, &zeros).await;
            });
        }
    }
}

/// Settles a ticket with the report of the attempt it paid for.
pub(crate) struct TicketObserver<St: Store> {
    ticket: Mutex<Option<Ticket<St>>>,
}

impl<St: Store> TicketObserver<St> {
    pub(crate) fn new(ticket: Ticket<St>) -> Self {
        TicketObserver {
            ticket: Mutex::new(Some(ticket)),
        }
    }
}

impl<St: Store> UsageObserver for TicketObserver<St> {
    fn on_usage(&self, report: &UsageReport) {
        let ticket = self
            .ticket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(ticket) = ticket {
            ticket.settle(report.usage);
        }
    }
}
