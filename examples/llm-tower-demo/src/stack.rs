//! The two clients the demo compares: a bare client that only meters, and
//! the recommended stack of llm-tower's layers; plus the counters both feed.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use llm_tower::{
    BoxError,
    budget::{
        BudgetConfig as SpendConfig, BudgetHandle, BudgetLayer, Limit as SpendLimit, ScopeBudget,
        Window,
    },
    circuit_breaker::{
        CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, OpenDuration, Transition,
    },
    fallback::{FallbackBody, FallbackEvent, FallbackLayer, Target as FallbackTarget},
    metering::{MeterLayer, StreamProgress, UsageReport},
    pricing::PriceTable,
    provider::{Provider, WireFormat},
    rate_limit::{Limit, RateLimitConfig, RateLimitEvent, RateLimitHandle, RateLimitLayer},
    request::{PrepareLayer, ReplayBody, RequestMeta},
    retry::Hold,
    retry::{Backoff, BudgetConfig, Decision, Jitter, RetryConfig, RetryEvent, RetryLayer},
    timeout::{TimeoutConfig, TimeoutLayer},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, util::BoxCloneService};

use crate::{
    store::DemoStore,
    workload::{ApiFormat, Endpoint},
};
use tower_http::{
    classify::{ServerErrorsAsFailures, SharedClassifier},
    trace::TraceLayer,
};

/// The response body every side hands back: boxed, so both sides have one type.
pub type DemoBody = UnsyncBoxBody<Bytes, BoxError>;

/// A client of either side: takes a JSON request, answers with a boxed body.
pub type DemoService = BoxCloneService<Request<String>, Response<DemoBody>, BoxError>;

/// `FallbackLayer`'s default budget of attempts per call.
pub const DEFAULT_FALLBACK_ATTEMPTS: u32 = 6;

/// The limits and retry policy of the recommended stack.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// The whole logical call, every attempt and wait included (outside retry).
    pub total: Duration,
    /// One attempt, its body included (inside retry).
    pub attempt: Duration,
    /// From an attempt's start to a stream's first token (inside retry).
    pub first_token: Duration,
    /// Silence between two chunks of a body (inside retry).
    pub idle: Duration,
    /// The retry policy of every target.
    pub retry: RetryConfig,
    /// The most upstream attempts a call makes in all, every target's
    /// retries and the move to the fallback target included
    /// (`FallbackLayer::max_attempts`; the library's default is 6).
    pub fallback_attempts: u32,
    /// Whether the last target of a call (its fallback, or its own when it
    /// has none) waits for an open breaker's probe, within the call's
    /// deadline, rather than failing at once (`retry.wait_for_breaker` of
    /// that target's retry layer; the own target's never waits: the call
    /// moves on instead).
    pub last_waits_for_breaker: bool,
    /// The circuit breaker, one per provider and model.
    pub breaker: CircuitBreakerConfig,
    /// The rate limiter, one queue per provider, model and API key: the
    /// library's default (adaptive to the provider's rate-limit headers, no
    /// limit of its own) unless `--rpm` / `--tpm` set a limit.
    pub rate_limit: RateLimitConfig,
    /// Whether the target has a quota the calls queue for (see
    /// [`under_quota`](Self::under_quota)).
    pub queued: bool,
    /// The budget layer's global hard limit in dollars over the whole run
    /// (`--budget-usd`); none by default.
    pub budget_usd: Option<f64>,
    /// Its global hard limit in tokens over the whole run
    /// (`--budget-tokens`); none by default.
    pub budget_tokens: Option<u64>,
    /// Where the rate limiter and the budget keep their state (`--store`):
    /// a fresh [`MemoryStore`](llm_tower::store::MemoryStore) per stack by
    /// default, or one Redis connection that every stack, and every
    /// process pointed at the same server, shares.
    pub store: DemoStore,
}

impl Tuning {
    /// Gives the budget layer a global hard limit over the whole run
    /// (`Window::Total`): `usd` dollars (`--budget-usd`), `tokens` tokens
    /// (`--budget-tokens`), either or both. Without either the layer is
    /// still there: it has no limit, and prices every attempt.
    pub fn with_budget(mut self, usd: Option<f64>, tokens: Option<u64>) -> Self {
        self.budget_usd = usd;
        self.budget_tokens = tokens;
        self
    }

    /// The budget layer's configuration: one global scope with the limits
    /// of [`with_budget`](Self::with_budget), or no scope at all (nothing
    /// refused, every attempt still priced and counted).
    pub fn budget_config(&self) -> SpendConfig {
        let mut config = SpendConfig::new();
        if self.budget_usd.is_some() || self.budget_tokens.is_some() {
            let mut scope = ScopeBudget::global();
            if let Some(usd) = self.budget_usd {
                scope = scope.limit(SpendLimit::usd(usd, Window::Total));
            }
            if let Some(tokens) = self.budget_tokens {
                scope = scope.limit(SpendLimit::tokens(tokens, Window::Total));
            }
            config = config.scope(scope);
        }
        config
    }

    /// Keeps the rate limiter's and the budget's state in `store`.
    pub fn with_store(mut self, store: DemoStore) -> Self {
        self.store = store;
        self
    }

    /// Holds each target's streams as `hold` says.
    pub fn with_hold(mut self, hold: llm_tower::retry::Hold) -> Self {
        self.retry = self.retry.hold(hold);
        self
    }

    /// Limits for the embedded mock, whose healthy answers take well under a
    /// second: a stream silent for a second before its first token is hung.
    pub fn for_mock() -> Self {
        Tuning {
            total: Duration::from_secs(15),
            attempt: Duration::from_secs(5),
            first_token: Duration::from_secs(1),
            idle: Duration::from_secs(1),
            retry: RetryConfig::new()
                .max_attempts(4)
                .backoff(Backoff {
                    base: Duration::from_millis(250),
                    factor: 2.0,
                    cap: Duration::from_secs(4),
                    jitter: Jitter::Full,
                })
                .max_server_delay(Duration::from_secs(10))
                // The workload reads whole answers: hold each stream until
                // it is complete, so that one cut after its first tokens is
                // retried, then moved whole to the fallback target.
                .hold(Hold::complete(1 << 20))
                // A bigger bucket than the default (20): it pays only for
                // retries of outages actually made (a 429 with an exact
                // retry-after is free), but the mock's outage takes both
                // targets down, and with the default the retries at a
                // call's last target ran out during it (seed 4: four calls
                // failed that way).
                .budget(Some(BudgetConfig {
                    max_tokens: 50,
                    token_ratio: 0.2,
                })),
            // A call that meets an open breaker does not wait for its probe
            // (the default): it moves to its fallback target at once.
            fallback_attempts: DEFAULT_FALLBACK_ATTEMPTS,
            // The mock's outage takes both providers down: with nowhere
            // left to move, a call waits for the breaker's probe.
            last_waits_for_breaker: true,
            // Open after 5 failures in a row (or half of the last 50 calls),
            // for half a second at first: about the length of the mock's
            // outage, so the breaker spares it most of the calls and finds
            // it back soon after.
            breaker: CircuitBreakerConfig::new()
                .consecutive_failures(Some(5))
                .open(OpenDuration {
                    base: Duration::from_millis(500),
                    factor: 2.0,
                    cap: Duration::from_secs(4),
                    jitter: 0.1,
                }),
            rate_limit: RateLimitConfig::new(),
            queued: false,
            budget_usd: None,
            budget_tokens: None,
            store: DemoStore::default(),
        }
    }

    /// The same limits for a target with a quota that the calls will queue
    /// for (`--rpm`, `--tpm`, or a quota on the mock): a total of at least
    /// the rate limiter's `max_wait` (60 s), since every attempt may wait
    /// for its turn — `concurrency ÷ rate` at the steady state, 8.9 s for 8
    /// calls in flight under 60 requests a minute at 90% headroom — and a
    /// retry after such a wait takes a new turn at the back of the queue.
    /// With 15 s, such retries were refused by the rate limiter (the
    /// call's deadline came first), and at `--concurrency 16` even first
    /// attempts.
    pub fn under_quota(mut self) -> Self {
        self.total = self.total.max(self.rate_limit.max_wait);
        self.queued = true;
        self
    }

    /// Adds a per-minute limit at the default key scope (provider, model,
    /// API key) to the rate limiter: `requests` (`--rpm`) and `tokens`
    /// (`--tpm`), either or both; nothing when both are `None`.
    pub fn with_limits(mut self, requests: Option<u64>, tokens: Option<u64>) -> Self {
        if requests.is_none() && tokens.is_none() {
            return self;
        }
        let mut limit = Limit::per_minute();
        limit.requests = requests;
        limit.tokens = tokens;
        self.rate_limit = self.rate_limit.limit(limit);
        self
    }

    /// The settings that differ from the library's defaults, each with why:
    /// printed under the demo's report.
    pub fn changed_settings(&self) -> Vec<crate::report::ChangedSetting> {
        let mut out = Vec::new();
        let mut change = |setting: String, why: &str| {
            out.push(crate::report::ChangedSetting {
                setting,
                why: why.to_owned(),
            })
        };
        // Timeouts have no defaults: every limit is the caller's choice.
        change(
            format!(
                "timeouts: total {:?}, attempt {:?}, first_token {:?}, idle {:?}",
                self.total, self.attempt, self.first_token, self.idle
            ),
            if self.queued {
                "timeouts have no defaults; these fit the target's answer times, and the total \
                 leaves room to queue for the quota before each attempt (the rate limiter's max_wait)"
            } else {
                "timeouts have no defaults; these fit the target's answer times"
            },
        );
        let d = RetryConfig::default();
        let r = &self.retry;
        if r.max_attempts != d.max_attempts {
            change(
                format!("retry.max_attempts = {}", r.max_attempts),
                "one more attempt than the default, to ride out a short outage",
            );
        }
        if r.backoff != d.backoff {
            change(
                format!("retry.backoff = {:?}", r.backoff),
                "a shorter base than the default: the mock's faults clear in milliseconds",
            );
        }
        if r.hold != d.hold {
            change(
                format!("retry.hold = {:?}", r.hold),
                "the workload reads whole answers: a stream cut after its first tokens is retried, \
                 then moved whole to the fallback target, instead of reaching the caller cut \
                 (--hold first-token keeps the default, for interactive callers)",
            );
        }
        if r.max_server_delay != d.max_server_delay {
            change(
                format!("retry.max_server_delay = {:?}", r.max_server_delay),
                "within the total timeout: a longer server delay could not be honoured anyway",
            );
        }
        if r.wait_for_breaker != d.wait_for_breaker {
            change(
                format!("retry.wait_for_breaker = {}", r.wait_for_breaker),
                "a call that meets an open breaker waits for its probe rather than moving to its fallback target",
            );
        }
        if self.last_waits_for_breaker && !d.wait_for_breaker {
            change(
                "retry.wait_for_breaker = true at a call's last target".to_owned(),
                "with nowhere left to move (the mock's outage takes both providers down), a call \
                 that meets an open breaker waits for its probe; at its own target it moves on at once",
            );
        }
        if self.fallback_attempts != DEFAULT_FALLBACK_ATTEMPTS {
            change(
                format!("fallback.max_attempts = {}", self.fallback_attempts),
                "room for the own target's retries and the fallback target's",
            );
        }
        if r.budget != d.budget {
            change(
                format!("retry.budget = {:?}", r.budget),
                "the mock's outage takes both targets down: with the default bucket (20), the \
                 retries at a call's last target ran out during it, and those calls failed",
            );
        }
        let b = CircuitBreakerConfig::default();
        if self.breaker.consecutive_failures != b.consecutive_failures {
            change(
                format!(
                    "breaker.consecutive_failures = {:?}",
                    self.breaker.consecutive_failures
                ),
                "trips within the mock's outage, which is short",
            );
        }
        if self.breaker.open != b.open {
            change(
                format!("breaker.open = {:?}", self.breaker.open),
                "about the length of the mock's outage, so the breaker finds it back soon",
            );
        }
        if let Some(usd) = self.budget_usd {
            change(
                format!("budget: global hard limit ${usd} over the run (Window::Total)"),
                "--budget-usd: the budget layer has no limit by default; calls whose worst case \
                 no longer fits are refused before they are sent",
            );
        }
        if let Some(tokens) = self.budget_tokens {
            change(
                format!("budget: global hard limit {tokens} tokens over the run (Window::Total)"),
                "--budget-tokens: the budget layer has no limit by default; calls whose worst \
                 case no longer fits are refused before they are sent",
            );
        }
        if self.store.is_shared() {
            change(
                format!("store = {}", self.store.describe()),
                "--store: several processes share limits and budgets: the rate limiter's queues \
                 and the budget's buckets live in Redis, so every demo process pointed at this \
                 server paces under one quota and spends from one budget (the default keeps \
                 them in each process's memory)",
            );
        }
        let l = RateLimitConfig::default();
        let rl = &self.rate_limit;
        for limit in rl.limits.iter().filter(|x| !l.limits.contains(x)) {
            let mut what = Vec::new();
            if let Some(n) = limit.requests {
                what.push(format!("requests {n}"));
            }
            if let Some(n) = limit.tokens {
                what.push(format!("tokens {n}"));
            }
            change(
                format!(
                    "rate_limit.limits += per minute at scope {}: {}",
                    serde_json::to_value(limit.scope)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    what.join(", ")
                ),
                "--rpm / --tpm: the target's quota, paced from the first call rather than learned from its headers",
            );
        }
        if rl.headroom != l.headroom {
            change(
                format!("rate_limit.headroom = {}", rl.headroom),
                "tuned for this workload",
            );
        }
        if rl.max_wait != l.max_wait {
            change(
                format!("rate_limit.max_wait = {:?}", rl.max_wait),
                "tuned for this workload",
            );
        }
        if rl.adaptive != l.adaptive {
            change(
                format!("rate_limit.adaptive = {}", rl.adaptive),
                "tuned for this workload",
            );
        }
        out
    }

    /// Limits for a real provider, whose first tokens can take many seconds.
    pub fn for_remote() -> Self {
        Tuning {
            total: Duration::from_secs(180),
            attempt: Duration::from_secs(90),
            first_token: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            retry: RetryConfig::new().max_attempts(4),
            fallback_attempts: DEFAULT_FALLBACK_ATTEMPTS,
            last_waits_for_breaker: false,
            breaker: CircuitBreakerConfig::new(),
            rate_limit: RateLimitConfig::new(),
            queued: false,
            budget_usd: None,
            budget_tokens: None,
            store: DemoStore::default(),
        }
    }

    fn timeouts(&self) -> TimeoutConfig {
        TimeoutConfig::new()
            .total(self.total)
            .attempt(self.attempt)
            .first_token(self.first_token)
            .idle(self.idle)
    }
}

/// What one side counts while it runs: attempts, retry decisions, tokens.
/// Shared by every clone of that side's service.
#[derive(Debug, Default)]
pub struct SideStats {
    attempts: AtomicU64,
    refused: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
    retries: Mutex<BTreeMap<String, u64>>,
    gave_up: Mutex<BTreeMap<String, u64>>,
    breaker: Mutex<Vec<(tokio::time::Instant, String)>>,
    too_many_requests: AtomicU64,
    queue_waits: Mutex<Vec<Duration>>,
    pauses: AtomicU64,
    rate_limit: OnceLock<RateLimitHandle<DemoStore>>,
    answered: Mutex<BTreeMap<String, u64>>,
    moved: AtomicU64,
    fallbacks: Mutex<BTreeMap<String, u64>>,
    cost_nanos: AtomicU64,
    unpriced: AtomicU64,
    budget: OnceLock<BudgetHandle<DemoStore>>,
}

/// The prices the demo reads both sides' usage at: the library's embedded
/// table, which the budget layer uses too (the mock's models,
/// `gpt-4o-mini` and `claude-haiku-4-5`, are in it).
pub fn prices() -> &'static PriceTable {
    static PRICES: OnceLock<PriceTable> = OnceLock::new();
    PRICES.get_or_init(PriceTable::embedded)
}

impl SideStats {
    /// Requests handed to the HTTP client: one per attempt that went out.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Attempts the retry layer made that the circuit breaker refused, so
    /// they never went on the wire.
    pub fn refused_by_breaker(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Input and output tokens of every metered attempt.
    pub fn tokens(&self) -> (u64, u64) {
        (
            self.input_tokens.load(Ordering::Relaxed),
            self.output_tokens.load(Ordering::Relaxed),
        )
    }

    /// Retries decided, by the failure class of the attempt retried.
    pub fn retries(&self) -> BTreeMap<String, u64> {
        lock(&self.retries).clone()
    }

    /// Decisions to give up after a failed attempt, by reason.
    pub fn gave_up(&self) -> BTreeMap<String, u64> {
        lock(&self.gave_up).clone()
    }

    /// Attempts the provider answered with a 429 (rate limited), as the
    /// responses that reached the HTTP client's caller say.
    pub fn provider_429(&self) -> u64 {
        self.too_many_requests.load(Ordering::Relaxed)
    }

    /// How long each attempt the rate limiter queued waited before it went.
    pub fn queue_waits(&self) -> Vec<Duration> {
        lock(&self.queue_waits).clone()
    }

    /// Pauses of a key for every call, after a 429 with a server delay.
    pub fn rate_limit_pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// The rate limiter's handle, on a side that has one.
    pub fn rate_limit(&self) -> Option<&RateLimitHandle<DemoStore>> {
        self.rate_limit.get()
    }

    /// Adds one event of the rate limiter (its `on_event` hook): the wait
    /// of every attempt admitted after waiting, and every pause.
    pub fn record_rate_limit_event(&self, event: &RateLimitEvent) {
        match event {
            RateLimitEvent::Admitted { waited, .. } if !waited.is_zero() => {
                lock(&self.queue_waits).push(*waited);
            }
            RateLimitEvent::Paused { .. } => {
                self.pauses.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Calls answered, by the target that answered them.
    pub fn answered(&self) -> BTreeMap<String, u64> {
        lock(&self.answered).clone()
    }

    /// Calls answered by another target than their own.
    pub fn answered_after_fallback(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Targets that failed in a way that moves a call on, by the failure
    /// class.
    pub fn fallbacks(&self) -> BTreeMap<String, u64> {
        lock(&self.fallbacks).clone()
    }

    /// Adds one event of a fallback layer (its `on_event` hook).
    pub fn record_fallback_event(&self, event: &FallbackEvent) {
        match event {
            FallbackEvent::Answered { target, moved } => {
                *lock(&self.answered).entry(target.clone()).or_default() += 1;
                if *moved {
                    self.moved.fetch_add(1, Ordering::Relaxed);
                }
            }
            FallbackEvent::Failed { class, .. } => {
                *lock(&self.fallbacks)
                    .entry(class.as_str().to_owned())
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    /// Adds one metered attempt's usage (a `UsageObserver`), and prices it
    /// at its model's price in [`prices`], as the budget layer does.
    pub fn record_usage(&self, report: &UsageReport) {
        self.input_tokens
            .fetch_add(report.usage.input_tokens, Ordering::Relaxed);
        self.output_tokens
            .fetch_add(report.usage.output_tokens, Ordering::Relaxed);
        match report.model.as_deref().and_then(|m| prices().price(m)) {
            Some(price) => {
                self.cost_nanos
                    .fetch_add(price.cost(&report.usage).as_nanos(), Ordering::Relaxed);
            }
            None if report.usage.total_tokens() > 0 => {
                self.unpriced.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }

    /// What the metered attempts cost at [`prices`], in nano-dollars: every
    /// attempt that reached the provider, retries and fallbacks included.
    pub fn priced_nanos(&self) -> u64 {
        self.cost_nanos.load(Ordering::Relaxed)
    }

    /// Metered attempts with tokens whose model has no price.
    pub fn unpriced_attempts(&self) -> u64 {
        self.unpriced.load(Ordering::Relaxed)
    }

    /// The budget layer's handle, on a side that has one.
    pub fn budget(&self) -> Option<&BudgetHandle<DemoStore>> {
        self.budget.get()
    }

    /// Adds one decision of the retry layer (its `on_event` hook).
    pub fn record_retry_event(&self, event: &RetryEvent) {
        match event.decision {
            Decision::Retry { .. } => {
                *lock(&self.retries)
                    .entry(event.class.as_str().to_owned())
                    .or_default() += 1;
            }
            Decision::GiveUp(why) => {
                *lock(&self.gave_up)
                    .entry(why.as_str().to_owned())
                    .or_default() += 1;
            }
            // `Decision` is non-exhaustive: count anything new as a give-up.
            _ => *lock(&self.gave_up).entry("other".to_owned()).or_default() += 1,
        }
    }
}

impl SideStats {
    /// Adds one transition of a circuit breaker (its `on_transition` hook).
    pub fn record_transition(&self, t: &Transition) {
        lock(&self.breaker).push((tokio::time::Instant::now(), t.to.as_str().to_owned()));
    }

    /// Circuit breaker transitions so far.
    pub fn breaker_transitions(&self) -> u64 {
        lock(&self.breaker).len() as u64
    }

    /// The breaker states entered, with their times from `start`.
    pub fn breaker_timeline(&self, start: tokio::time::Instant) -> Vec<(Duration, String)> {
        lock(&self.breaker)
            .iter()
            .map(|(at, s)| (at.saturating_duration_since(start), s.clone()))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The attempts of one logical call, carried in the request's extensions
/// (and so in every attempt's copy of them) for [`Count`] to increment.
#[derive(Clone, Debug, Default)]
pub struct CallAttempts(pub Arc<AtomicU32>);

impl CallAttempts {
    /// Attempts counted so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The targets a logical call went to, in order, carried in the request's
/// extensions for each target's stack to add its name to.
#[derive(Clone, Debug, Default)]
pub struct CallTargets(pub Arc<Mutex<Vec<String>>>);

impl CallTargets {
    /// The targets so far.
    pub fn get(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// Counts every request that reaches the HTTP client, in [`SideStats`] and
/// in the request's [`CallAttempts`], and every 429 the provider answers.
/// Placed innermost, next to the client, so it counts exactly the attempts
/// that went on the wire and the responses they got.
#[derive(Clone, Debug)]
pub struct CountLayer {
    stats: Arc<SideStats>,
}

impl CountLayer {
    /// A layer counting into `stats`.
    pub fn new(stats: Arc<SideStats>) -> Self {
        CountLayer { stats }
    }
}

impl<S> Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// The service of [`CountLayer`].
#[derive(Clone, Debug)]
pub struct Count<S> {
    inner: S,
    stats: Arc<SideStats>,
}

impl<S, B, RB> Service<Request<B>> for Count<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        if let Some(call) = req.extensions().get::<CallAttempts>() {
            call.0.fetch_add(1, Ordering::Relaxed);
        }
        let stats = self.stats.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let Ok(r) = &res
                && r.status() == http::StatusCode::TOO_MANY_REQUESTS
            {
                stats.too_many_requests.fetch_add(1, Ordering::Relaxed);
            }
            res
        })
    }
}

/// Counts the attempts a [`CircuitBreakerLayer`] refuses (placed just
/// outside it): they are made by the retry layer but never sent.
#[derive(Clone, Debug)]
struct RefusalCountLayer {
    stats: Arc<SideStats>,
}

impl<S> Layer<S> for RefusalCountLayer {
    type Service = RefusalCount<S>;

    fn layer(&self, inner: S) -> RefusalCount<S> {
        RefusalCount {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// The service of [`RefusalCountLayer`].
#[derive(Clone, Debug)]
struct RefusalCount<S> {
    inner: S,
    stats: Arc<SideStats>,
}

impl<S, B> Service<Request<B>> for RefusalCount<S>
where
    S: Service<Request<B>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let stats = self.stats.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let Err(e) = &res
                && e.is::<CircuitOpen>()
            {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            res
        })
    }
}

/// The TLS configuration of every connection to an `https://` base URL:
/// rustls with the ring provider, trusting the platform's root
/// certificates, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set (as
/// curl and OpenSSL do). Loaded once.
pub fn tls_config() -> &'static rustls::ClientConfig {
    &tls().0
}

/// Whether [`tls_config`] trusts any root certificate, so that `https://`
/// can work at all.
pub fn has_tls_roots() -> bool {
    tls().1
}

fn tls() -> &'static (rustls::ClientConfig, bool) {
    static TLS: OnceLock<(rustls::ClientConfig, bool)> = OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable or unparsable certificates are skipped, as curl does.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let any = !roots.is_empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        (config, any)
    })
}

/// hyper-util's client, speaking `http://` and `https://`.
fn http_client() -> Client<HttpsConnector<HttpConnector>, ReplayBody> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config().clone())
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

fn boxed<B>(res: Response<B>) -> Response<DemoBody>
where
    B: http_body_util::BodyExt<Data = Bytes, Error = BoxError> + Send + 'static,
{
    res.map(|b| b.boxed_unsync())
}

/// The bare side: hyper-util's client with only [`PrepareLayer`] (so requests
/// carry their metadata) and [`MeterLayer`] (so usage is counted). No
/// timeout, no retry: what the provider does, the caller gets.
pub fn bare(stats: Arc<SideStats>) -> DemoService {
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(MeterLayer::new())
        .layer(CountLayer::new(stats))
        .service(http_client());
    let svc = ServiceExt::<Request<String>>::map_response(svc, boxed);
    BoxCloneService::new(svc)
}

/// tower-http's `TraceLayer` with a DEBUG span: `call` carries the method,
/// the URI and the headers (credentials print as `Sensitive`, because
/// [`PrepareLayer`] above it marked them so), `attempt` the URI only, as it
/// nests in its call's span.
fn trace_layer(
    attempt: bool,
) -> TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    impl Fn(&Request<ReplayBody>) -> tracing::Span + Clone,
> {
    TraceLayer::new_for_http().make_span_with(move |req: &Request<ReplayBody>| {
        let (method, uri, headers) = (req.method(), req.uri(), req.headers());
        if attempt {
            tracing::debug_span!("attempt", %uri)
        } else {
            tracing::debug_span!("call", %method, %uri, ?headers)
        }
    })
}

/// One target's service: what the [`FallbackLayer`] calls.
type TargetService = BoxCloneService<Request<ReplayBody>, Response<DemoBody>, BoxError>;

/// The calls of one wire format, through their [`FallbackLayer`].
type FormatService = BoxCloneService<Request<ReplayBody>, Response<FallbackBody>, BoxError>;

/// The recommended stack, outermost first:
///
/// `PrepareLayer → BudgetLayer → TraceLayer(call) → TimeoutLayer(total) → FallbackLayer →
/// per target: [RetryLayer → CircuitBreakerLayer → RateLimitLayer →
/// TimeoutLayer(attempt, first token, idle) → MeterLayer →
/// TraceLayer(attempt) → client]`
///
/// (with the attempt counter between the meter and the attempt's trace).
/// A [`FallbackLayer`] has one ordered list of targets, and the calls'
/// own target depends on their format, so there is one per wire format
/// the endpoint speaks, and the calls go to the one of their format: an
/// OpenAI call to `openai → its fallback`, an Anthropic call to
/// `anthropic → its fallback` (against the embedded mock, each falls back
/// to the other provider). Each target has its own per-target stack; the
/// rate limiter is one for all (its queues are per provider, model and
/// key).
///
/// The budget layer is always there: with no limit (no `--budget-usd` or
/// `--budget-tokens`) it refuses nothing and still prices every attempt;
/// with one, it reserves each call's worst case before it is sent and each
/// retry's and fallback's before it goes on the wire (the meters in front
/// of the client consult its gate), and settles them to what they cost.
///
/// Every retry decision, breaker transition, rate-limit wait and fallback
/// event goes to `stats`, and the rate limiter's handle with them; with
/// `RUST_LOG=debug`, tower-http's `TraceLayer` logs every call and every
/// attempt, headers included (credentials masked).
pub fn recommended(
    tuning: &Tuning,
    endpoint: &Endpoint,
    stats: Arc<SideStats>,
) -> Result<DemoService, BoxError> {
    let limits = tuning.timeouts();
    let hook = stats.clone();
    // One store for the rate limiter and the budget: this stack's own in
    // memory, or the shared Redis connection.
    let store = tuning.store.for_stack();
    let rate_limit = RateLimitLayer::with_store(tuning.rate_limit.clone().build()?, store.clone())
        .on_event(move |e| hook.record_rate_limit_event(e));
    let _ = stats.rate_limit.set(rate_limit.handle());
    // One set of breakers, one per provider and model, whichever role the
    // target has in a call.
    let hook = stats.clone();
    let breaker = CircuitBreakerLayer::try_from(tuning.breaker.clone())?
        .on_transition(move |t| hook.record_transition(t));
    // One per-target stack per target and role: a call's own target moves
    // on at once when its breaker is open; the last target (nowhere left to
    // move) waits for its breaker's probe when `last_waits_for_breaker`.
    let mut targets: BTreeMap<(String, bool), TargetService> = BTreeMap::new();
    let mut target = |name: String, last: bool| -> Result<TargetService, BoxError> {
        let wait = last && tuning.last_waits_for_breaker;
        if let Some(svc) = targets.get(&(name.clone(), wait)) {
            return Ok(svc.clone());
        }
        let svc = per_target(&name, tuning, wait, &breaker, &rate_limit, stats.clone())?;
        targets.insert((name, wait), svc.clone());
        Ok(svc)
    };
    let mut by_format = ByFormat::default();
    for format in endpoint.formats() {
        let name = endpoint.primary_name(format);
        let fallback = endpoint.fallback_for(format);
        let own = target(name.clone(), fallback.is_none())?;
        let (provider, wire) = wire_of(format);
        let hook = stats.clone();
        let mut layer = FallbackLayer::new()
            .max_attempts(tuning.fallback_attempts)
            .primary(FallbackTarget::new(name, provider, wire))
            .on_event(move |e| hook.record_fallback_event(e));
        if let Some(f) = fallback {
            let (provider, wire) = wire_of(f.format);
            let (header, value) = f.credential();
            let other = FallbackTarget::new(f.name(), provider, wire)
                .model(f.model.clone())
                .endpoint(f.url().parse()?)
                .header(header, &value);
            layer = layer.target(other, target(f.name(), true)?);
        }
        let svc = FormatService::new(layer.layer(own));
        match format {
            ApiFormat::OpenAi => by_format.openai = Some(svc),
            ApiFormat::Anthropic => by_format.anthropic = Some(svc),
        }
    }
    let budget =
        BudgetLayer::with_store(tuning.budget_config().build()?, store).prices(prices().clone());
    let _ = stats.budget.set(budget.handle());
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        // Outermost after Prepare (which estimates the input tokens it
        // reserves for): a call that does not fit is refused before it
        // takes any turn, deadline or attempt; every attempt further in
        // (retries, the fallback target) reserves at its own model's price
        // through the meter's gate.
        .layer(budget)
        // Below Prepare, which marks credential headers sensitive.
        .layer(trace_layer(false))
        // Outside fallback and retry: the caller's deadline for the whole
        // call, every target's attempts and waits included.
        .layer(TimeoutLayer::try_from(limits.whole_call())?)
        .service(by_format);
    let svc = ServiceExt::<Request<String>>::map_response(svc, boxed);
    Ok(BoxCloneService::new(svc))
}

/// The provider and wire format of `format`.
fn wire_of(format: ApiFormat) -> (Provider, WireFormat) {
    match format {
        ApiFormat::OpenAi => (Provider::OpenAi, WireFormat::OpenAiChat),
        ApiFormat::Anthropic => (Provider::Anthropic, WireFormat::AnthropicMessages),
    }
}

/// One target's stack, outermost first: `RetryLayer → CircuitBreakerLayer
/// → RateLimitLayer → TimeoutLayer(attempt) → MeterLayer → client`.
/// Its retry waits for an open breaker's probe when `wait_for_breaker`.
fn per_target(
    name: &str,
    tuning: &Tuning,
    wait_for_breaker: bool,
    breaker: &CircuitBreakerLayer,
    rate_limit: &RateLimitLayer<DemoStore>,
    stats: Arc<SideStats>,
) -> Result<TargetService, BoxError> {
    let limits = tuning.timeouts();
    let hook = stats.clone();
    let retry = RetryLayer::try_from(tuning.retry.clone().wait_for_breaker(wait_for_breaker))?
        .on_event(move |event| hook.record_retry_event(event));
    let name = name.to_owned();
    let svc = ServiceBuilder::new()
        // The call's log of the targets it went to.
        .map_request(move |req: Request<ReplayBody>| {
            if let Some(t) = req.extensions().get::<CallTargets>() {
                lock(&t.0).push(name.clone());
            }
            req
        })
        .layer(retry)
        // Inside retry: every attempt is recorded, and an open breaker fails
        // the attempt at once, sparing the provider (the call moves to its
        // fallback target).
        .layer(RefusalCountLayer {
            stats: stats.clone(),
        })
        .layer(breaker.clone())
        // Inside the breaker (a refusal is not the provider's failure),
        // outside the attempt timeout (waiting for a turn does not eat
        // it): every attempt takes its turn under the key's limits.
        .layer(rate_limit.clone())
        // Inside retry: each attempt, its first token and its stream.
        .layer(TimeoutLayer::try_from(limits.per_attempt())?)
        .layer(MeterLayer::new())
        .layer(CountLayer::new(stats))
        .layer(trace_layer(true))
        .service(http_client());
    let svc = ServiceExt::<Request<ReplayBody>>::map_response(svc, boxed);
    Ok(BoxCloneService::new(svc))
}

/// Sends each call to the [`FallbackLayer`] of its wire format.
#[derive(Clone, Default)]
struct ByFormat {
    openai: Option<FormatService>,
    anthropic: Option<FormatService>,
}

impl Service<Request<ReplayBody>> for ByFormat {
    type Response = Response<FallbackBody>;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // A FallbackLayer is always ready: each target's readiness is taken
        // when the call comes to it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> Self::Future {
        let format = RequestMeta::get(&req).and_then(RequestMeta::format);
        let svc = match format {
            Some(WireFormat::AnthropicMessages) => self.anthropic.clone(),
            Some(WireFormat::OpenAiChat) => self.openai.clone(),
            _ => None,
        };
        match svc {
            Some(svc) => Box::pin(svc.oneshot(req)),
            None => Box::pin(std::future::ready(Err(BoxError::from(format!(
                "no target serves calls in the format {format:?}"
            ))))),
        }
    }
}

/// Whether the stack has a circuit breaker.
pub const HAS_BREAKER: bool = true;

/// Sends one request through `svc` and reads its whole body; says too
/// whether output (a stream's first token) reached the caller.
pub(crate) async fn send(
    svc: &mut DemoService,
    req: Request<String>,
) -> (
    Result<(http::StatusCode, http::HeaderMap, Bytes), BoxError>,
    bool,
) {
    let res = match svc.ready().await {
        Ok(svc) => svc.call(req).await,
        Err(e) => Err(e),
    };
    let res = match res {
        Ok(res) => res,
        Err(e) => return (Err(e), false),
    };
    // The meter only observes: a stream that carried an error event, a
    // broken event or ended early reaches a bare caller as a 200 with a
    // partial answer. Judge every answer by what its stream's progress
    // recorded, so a partial answer is never counted as a success (the
    // stack's retry layer turns those into errors itself).
    let progress = StreamProgress::get(&res).cloned();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await;
    let output = progress.as_ref().is_some_and(StreamProgress::has_output);
    let bytes = match bytes {
        Ok(b) => b.to_bytes(),
        Err(e) => return (Err(e), output),
    };
    if let Some(failure) = progress.and_then(|p| p.failure_error()) {
        return (Err(failure), output);
    }
    (Ok((parts.status, parts.headers, bytes)), output)
}
