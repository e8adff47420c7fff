//! What every cross-layer test needs: the mock provider in-process on
//! 127.0.0.1, hyper-util's legacy client, the recommended stack built as
//! the demo builds it (`examples/llm-tower-demo/src/stack.rs`), with the
//! rate limiter between the breaker and the attempt timeout (the demo has
//! none yet), a budget outermost after Prepare when [`Tuning::budget`]
//! sets one, a variant with other targets behind a fallback layer, and its
//! documented reorderings (without a rate limiter),
//! requests in both wire formats, and readers of what comes back (the
//! body, its error's source chain, usage reports, retry decisions, breaker
//! states, rate-limit events).
//!
//! Each test file uses part of it.
#![allow(dead_code)]

use std::{
    error::Error as StdError,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use llm_tower::{
    BoxError,
    budget::{BudgetConfig, BudgetHandle, BudgetLayer},
    circuit_breaker::{
        BreakerState, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, OpenDuration,
    },
    fallback::{FallbackLayer, Target},
    metering::{MeterLayer, UsageObservers, UsageReport},
    pricing::PriceTable,
    rate_limit::{RateLimitConfig, RateLimitEvent, RateLimitHandle, RateLimitLayer},
    request::{PrepareLayer, ReplayBody},
    retry::{Backoff, Decision, Jitter, RetryConfig, RetryEvent, RetryLayer},
    timeout::{TimeoutConfig, TimeoutLayer},
};
use llm_tower_mock::{MockServer, Provider, Rule};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneService};

pub(crate) const MS: Duration = Duration::from_millis(1);
pub(crate) const SEC: Duration = Duration::from_secs(1);

/// The OpenAI chat model of every request.
pub(crate) const OPENAI_MODEL: &str = "gpt-4o-mini";
/// The Anthropic model of every request.
pub(crate) const ANTHROPIC_MODEL: &str = "claude-haiku-4-5";
/// The Gemini model of every request.
pub(crate) const GEMINI_MODEL: &str = "gemini-2.0-flash";

/// The caller's view of a response body.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A stack, boxed: every variant has this one type.
pub(crate) type Svc = BoxCloneService<Request<String>, Response<Body>, BoxError>;
/// The HTTP client under a stack, boxed so a test can wrap it.
pub(crate) type HttpClient = BoxCloneService<Request<ReplayBody>, Response<Incoming>, BoxError>;

/// A mock with these rules, on 127.0.0.1:0, on tokio's (paused) clock.
pub(crate) async fn mock(rules: Vec<Rule>) -> MockServer {
    let mut b = MockServer::builder().seed(11);
    for r in rules {
        b = b.rule(r);
    }
    b.start().await.expect("the mock starts")
}

/// hyper-util's legacy client, as the demo builds it.
pub(crate) fn client() -> HttpClient {
    let client = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build_http::<ReplayBody>();
    BoxCloneService::new(client.map_err(BoxError::from))
}

/// `client` with a header added to every response, as a provider that sends
/// it would.
pub(crate) fn with_response_header(
    client: HttpClient,
    name: &'static str,
    value: &'static str,
) -> HttpClient {
    BoxCloneService::new(client.map_response(move |mut res: Response<Incoming>| {
        res.headers_mut()
            .insert(name, HeaderValue::from_static(value));
        res
    }))
}

/// The limits and policies of a stack. [`Tuning::new`] is deterministic:
/// no jitter anywhere, no retry budget (tests that need one set it).
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    /// The whole call (outside retry).
    pub(crate) total: Duration,
    /// One attempt, body included (inside retry).
    pub(crate) attempt: Duration,
    /// From an attempt's start to its first token (inside retry).
    pub(crate) first_token: Option<Duration>,
    /// Silence between two chunks (inside retry).
    pub(crate) idle: Option<Duration>,
    /// The retry policy.
    pub(crate) retry: RetryConfig,
    /// The breaker, one per provider and model.
    pub(crate) breaker: CircuitBreakerConfig,
    /// The rate limiter (recommended stack only): by default adaptive to
    /// the provider's headers, no limit of its own.
    pub(crate) rate_limit: RateLimitConfig,
    /// The budget (recommended stacks only), outermost after Prepare: none
    /// by default.
    pub(crate) budget: Option<BudgetConfig>,
    /// The budget's prices; `None` for [`PriceTable::embedded`].
    pub(crate) prices: Option<PriceTable>,
}

impl Tuning {
    /// 120 s per call, 60 s per attempt (longer than the mock's 30 s stalls,
    /// so that only the limit under test can cut them), 2 s to the first
    /// token, 10 s idle;
    /// three attempts 100 ms apart; a breaker opening for 30 s after three
    /// failures in a row.
    pub(crate) fn new() -> Self {
        Tuning {
            total: 120 * SEC,
            attempt: 60 * SEC,
            first_token: Some(2 * SEC),
            idle: Some(10 * SEC),
            retry: RetryConfig::new()
                .max_attempts(3)
                .backoff(fixed(100 * MS))
                .budget(None),
            breaker: CircuitBreakerConfig::new()
                .consecutive_failures(Some(3))
                .failure_rate(None)
                .open(OpenDuration {
                    base: 30 * SEC,
                    factor: 2.0,
                    cap: 60 * SEC,
                    jitter: 0.0,
                }),
            rate_limit: RateLimitConfig::default(),
            budget: None,
            prices: None,
        }
    }

    /// The budget layer of `self`, if it has one.
    fn budget_layer(&self) -> Option<BudgetLayer> {
        let config = self.budget.clone()?;
        let layer = BudgetLayer::try_from(config).expect("a valid budget config");
        Some(match &self.prices {
            Some(table) => layer.prices(table.clone()),
            None => layer,
        })
    }

    fn timeouts(&self) -> TimeoutConfig {
        let mut t = TimeoutConfig::new().total(self.total).attempt(self.attempt);
        if let Some(d) = self.first_token {
            t = t.first_token(d);
        }
        if let Some(d) = self.idle {
            t = t.idle(d);
        }
        t
    }
}

/// A backoff of `base`, doubling, without jitter.
pub(crate) fn fixed(base: Duration) -> Backoff {
    Backoff {
        base,
        factor: 2.0,
        cap: 8 * SEC,
        jitter: Jitter::None,
    }
}

/// A built stack, with what it lets a test observe.
pub(crate) struct Stack {
    /// The stack.
    pub(crate) svc: Svc,
    /// Its circuit breakers.
    pub(crate) breaker: CircuitBreakerHandle,
    /// Every decision of its retry layer, in order.
    pub(crate) retries: Arc<Mutex<Vec<RetryEvent>>>,
    /// Its rate limiter, when it has one (the recommended stack).
    pub(crate) rate_limit: Option<RateLimitHandle>,
    /// Every event of its rate limiter, in order.
    pub(crate) rate_events: Arc<Mutex<Vec<RateLimitEvent>>>,
    /// Its budget, when [`Tuning::budget`] set one (recommended stacks).
    pub(crate) budget: Option<BudgetHandle>,
}

fn boxed<B>(res: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    res.map(|b| b.boxed_unsync())
}

impl Stack {
    fn layers(t: &Tuning) -> (RetryLayer, CircuitBreakerLayer, Arc<Mutex<Vec<RetryEvent>>>) {
        let retries: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
        let log = retries.clone();
        let retry = RetryLayer::try_from(t.retry.clone())
            .expect("a valid retry config")
            .on_event(move |e| log.lock().unwrap().push(e.clone()));
        let breaker =
            CircuitBreakerLayer::try_from(t.breaker.clone()).expect("a valid breaker config");
        (retry, breaker, retries)
    }

    fn boxed<S, B>(
        svc: S,
        breaker: CircuitBreakerHandle,
        retries: Arc<Mutex<Vec<RetryEvent>>>,
    ) -> Stack
    where
        S: tower::Service<Request<String>, Response = Response<B>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        Stack {
            svc: BoxCloneService::new(ServiceExt::<Request<String>>::map_response(svc, boxed)),
            breaker,
            retries,
            rate_limit: None,
            rate_events: Arc::default(),
            budget: None,
        }
    }

    /// `Prepare → [Budget] → inner`, boxed: the budget only when `t` sets
    /// one.
    fn prepared<S, B>(
        t: &Tuning,
        inner: S,
        breaker: CircuitBreakerHandle,
        retries: Arc<Mutex<Vec<RetryEvent>>>,
    ) -> Stack
    where
        S: tower::Service<Request<ReplayBody>, Response = Response<B>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        match t.budget_layer() {
            Some(budget) => {
                let handle = budget.handle();
                let svc = ServiceBuilder::new()
                    .layer(PrepareLayer::new())
                    .layer(budget)
                    .service(inner);
                Stack {
                    budget: Some(handle),
                    ..Stack::boxed(svc, breaker, retries)
                }
            }
            None => {
                let svc = ServiceBuilder::new()
                    .layer(PrepareLayer::new())
                    .service(inner);
                Stack::boxed(svc, breaker, retries)
            }
        }
    }

    /// The rate limiter of `t`, with a log of its events.
    fn rate_limit_layer(t: &Tuning) -> (RateLimitLayer, Arc<Mutex<Vec<RateLimitEvent>>>) {
        let events: Arc<Mutex<Vec<RateLimitEvent>>> = Arc::default();
        let log = events.clone();
        let layer = RateLimitLayer::try_from(t.rate_limit.clone())
            .expect("a valid rate-limit config")
            .on_event(move |e| log.lock().unwrap().push(e.clone()));
        (layer, events)
    }

    /// The recommended stack, outermost first:
    /// `Prepare → [Budget] → Timeout(total) → Retry → CircuitBreaker →
    /// RateLimit → Timeout(attempt, first token, idle) → Meter → client`,
    /// the budget only when [`Tuning::budget`] sets one.
    pub(crate) fn recommended(t: &Tuning) -> Stack {
        Stack::recommended_over(t, client())
    }

    /// The recommended stack over `client`: hyper-util's, reqwest's, or
    /// one that wraps them.
    pub(crate) fn recommended_over<C, B>(t: &Tuning, client: C) -> Stack
    where
        C: tower::Service<Request<ReplayBody>, Response = Response<B>, Error = BoxError>
            + Clone
            + Send
            + 'static,
        C::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let limits = t.timeouts();
        let (retry, breaker, retries) = Stack::layers(t);
        let (rate_limit, rate_events) = Stack::rate_limit_layer(t);
        let handle = breaker.handle();
        let rate_handle = rate_limit.handle();
        let inner = ServiceBuilder::new()
            .layer(TimeoutLayer::try_from(limits.whole_call()).expect("valid limits"))
            .layer(retry)
            .layer(breaker)
            .layer(rate_limit)
            .layer(TimeoutLayer::try_from(limits.per_attempt()).expect("valid limits"))
            .layer(MeterLayer::new())
            .service(client);
        Stack {
            rate_limit: Some(rate_handle),
            rate_events,
            ..Stack::prepared(t, inner, handle, retries)
        }
    }

    /// The recommended stack with other targets, outermost first:
    /// `Prepare → [Budget] → Timeout(total) → Fallback → per target
    /// [Retry → CircuitBreaker → RateLimit → Timeout(attempt…) → Meter →
    /// client]`, the first target the request's own model and provider,
    /// then `targets` in order. The targets share one retry policy (and
    /// its log), one breaker per provider and model, and one rate limiter.
    pub(crate) fn recommended_with_fallback(t: &Tuning, targets: Vec<Target>) -> Stack {
        let limits = t.timeouts();
        let (retry, breaker, retries) = Stack::layers(t);
        let (rate_limit, rate_events) = Stack::rate_limit_layer(t);
        let handle = breaker.handle();
        let rate_handle = rate_limit.handle();
        let per_target = ServiceBuilder::new()
            .layer(retry)
            .layer(breaker)
            .layer(rate_limit)
            .layer(TimeoutLayer::try_from(limits.per_attempt()).expect("valid limits"))
            .layer(MeterLayer::new())
            .service(client());
        let mut fallback = FallbackLayer::new();
        for target in targets {
            fallback = fallback.target(target, per_target.clone());
        }
        let inner = ServiceBuilder::new()
            .layer(TimeoutLayer::try_from(limits.whole_call()).expect("valid limits"))
            .layer(fallback)
            .service(per_target);
        Stack {
            rate_limit: Some(rate_handle),
            rate_events,
            ..Stack::prepared(t, inner, handle, retries)
        }
    }

    /// The handle of the stack's budget; panics if it has none.
    pub(crate) fn budget(&self) -> &BudgetHandle {
        self.budget
            .as_ref()
            .expect("this stack has a budget (a recommended one, with Tuning::budget set)")
    }

    /// The handle of the stack's rate limiter; panics if it has none.
    pub(crate) fn rate_limit(&self) -> &RateLimitHandle {
        self.rate_limit
            .as_ref()
            .expect("this stack has a rate limiter (the recommended one)")
    }

    /// The events of its rate limiter so far.
    pub(crate) fn rate_events(&self) -> Vec<RateLimitEvent> {
        self.rate_events.lock().unwrap().clone()
    }

    /// A documented reordering: the breaker outside retry, so it sees one
    /// outcome per call instead of one per attempt.
    /// `Prepare → Timeout(total) → CircuitBreaker → Retry →
    /// Timeout(attempt…) → Meter → client`.
    pub(crate) fn breaker_outside_retry(t: &Tuning) -> Stack {
        let limits = t.timeouts();
        let (retry, breaker, retries) = Stack::layers(t);
        let handle = breaker.handle();
        let svc = ServiceBuilder::new()
            .layer(PrepareLayer::new())
            .layer(TimeoutLayer::try_from(limits.whole_call()).expect("valid limits"))
            .layer(breaker)
            .layer(retry)
            .layer(TimeoutLayer::try_from(limits.per_attempt()).expect("valid limits"))
            .layer(MeterLayer::new())
            .service(client());
        Stack::boxed(svc, handle, retries)
    }

    /// The recommended stack without its meter: the layers must then read
    /// the stream themselves.
    pub(crate) fn without_meter(t: &Tuning) -> Stack {
        let limits = t.timeouts();
        let (retry, breaker, retries) = Stack::layers(t);
        let handle = breaker.handle();
        let svc = ServiceBuilder::new()
            .layer(PrepareLayer::new())
            .layer(TimeoutLayer::try_from(limits.whole_call()).expect("valid limits"))
            .layer(retry)
            .layer(breaker)
            .layer(TimeoutLayer::try_from(limits.per_attempt()).expect("valid limits"))
            .service(client());
        Stack::boxed(svc, handle, retries)
    }

    /// The state of the breaker of `model` (closed if it has none yet).
    pub(crate) fn breaker_state(&self, model: &str) -> BreakerState {
        self.breaker
            .states()
            .into_iter()
            .find(|(k, _)| k.name() == Some(model))
            .map_or(BreakerState::Closed, |(_, s)| s)
    }

    /// How many retry decisions gave up for the reason named `why`
    /// (`budget_exhausted`, `not_retryable` …).
    pub(crate) fn gave_up(&self, why: &str) -> usize {
        self.retries
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.decision, Decision::GiveUp(g) if g.as_str() == why))
            .count()
    }

    /// Sends `req` and reads what comes back.
    pub(crate) async fn call(&self, req: Request<String>) -> Answer {
        call(&self.svc, req).await
    }
}

/// Only `Prepare → Timeout(config) → Meter → client`.
pub(crate) fn timeout_only(config: TimeoutConfig) -> Svc {
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(TimeoutLayer::try_from(config).expect("valid limits"))
        .layer(MeterLayer::new())
        .service(client());
    BoxCloneService::new(ServiceExt::<Request<String>>::map_response(svc, boxed))
}

/// The mock's model of `provider`.
pub(crate) fn model(provider: Provider) -> &'static str {
    match provider {
        Provider::OpenAi => OPENAI_MODEL,
        Provider::Anthropic => ANTHROPIC_MODEL,
        Provider::Gemini => GEMINI_MODEL,
    }
}

/// A chat request to the mock in `provider`'s wire format; OpenAI streams
/// ask for their usage chunk.
pub(crate) fn chat(
    mock: &MockServer,
    provider: Provider,
    stream: bool,
    prompt: &str,
) -> Request<String> {
    let (path, body) = match provider {
        Provider::OpenAi => {
            let mut body = json!({
                "model": OPENAI_MODEL,
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            });
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            ("/v1/chat/completions".to_owned(), body)
        }
        Provider::Anthropic => (
            "/v1/messages".to_owned(),
            json!({
                "model": ANTHROPIC_MODEL,
                "max_tokens": 512,
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }),
        ),
        Provider::Gemini => (
            if stream {
                format!("/v1beta/models/{GEMINI_MODEL}:streamGenerateContent?alt=sse")
            } else {
                format!("/v1beta/models/{GEMINI_MODEL}:generateContent")
            },
            json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}),
        ),
    };
    Request::post(format!("{}{path}", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .expect("a valid request")
}

/// The usage reports of one call, one per metered attempt.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reports(Arc<Mutex<Vec<UsageReport>>>);

impl Reports {
    /// The reports so far.
    pub(crate) fn all(&self) -> Vec<UsageReport> {
        self.0.lock().unwrap().clone()
    }

    /// The last report; panics if there is none.
    pub(crate) fn last(&self) -> UsageReport {
        self.all().last().cloned().expect("a usage report")
    }
}

/// Registers an observer on `req` that keeps every report.
pub(crate) fn observe(req: &mut Request<String>) -> Reports {
    let reports = Reports::default();
    let sink = reports.0.clone();
    UsageObservers::register(
        req,
        Arc::new(move |r: &UsageReport| sink.lock().unwrap().push(r.clone())),
    );
    reports
}

/// What the caller got.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status, if a response came.
    pub(crate) status: Option<StatusCode>,
    /// Every byte of the body that arrived.
    pub(crate) body: Bytes,
    /// The error of the call or of its body, if any.
    pub(crate) error: Option<BoxError>,
    /// The response's extensions (empty when none came).
    pub(crate) extensions: http::Extensions,
}

impl Answer {
    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` of every SSE event of the body.
    pub(crate) fn data(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.trim().to_owned())
            .collect()
    }

    /// A call that worked: a 200 read to its end without an error.
    pub(crate) fn is_clean(&self) -> bool {
        self.status == Some(StatusCode::OK) && self.error.is_none()
    }

    /// The error and its chain, or "no error".
    pub(crate) fn describe(&self) -> String {
        match &self.error {
            Some(e) => show(&**e),
            None => "no error".to_owned(),
        }
    }

    /// The error; panics with what came instead if there is none.
    pub(crate) fn err(&self) -> &(dyn StdError + 'static) {
        match &self.error {
            Some(e) => &**e,
            None => panic!(
                "expected an error, the call ended cleanly with {:?}: {}",
                self.status,
                self.text()
            ),
        }
    }
}

/// Sends `req` through `svc` and reads the whole body, keeping what arrived
/// before any error.
pub(crate) async fn call(svc: &Svc, req: Request<String>) -> Answer {
    let res = match svc.clone().oneshot(req).await {
        Ok(res) => res,
        Err(e) => {
            return Answer {
                status: None,
                body: Bytes::new(),
                error: Some(e),
                extensions: http::Extensions::new(),
            };
        }
    };
    let (parts, mut body) = res.into_parts();
    let mut bytes = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Answer {
        status: Some(parts.status),
        body: bytes.into(),
        error,
        extensions: parts.extensions,
    }
}

/// Every error of `err`'s source chain, `err` first.
pub(crate) fn chain<'a>(err: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = vec![err];
    let mut cur = err;
    while let Some(next) = cur.source() {
        out.push(next);
        cur = next;
    }
    out
}

/// The first error of type `E` in `err`'s source chain.
pub(crate) fn find<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    chain(err).into_iter().find_map(|e| e.downcast_ref::<E>())
}

/// `err`'s chain, one error per line, for failure messages.
pub(crate) fn show(err: &(dyn StdError + 'static)) -> String {
    chain(err)
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n  caused by: ")
}

/// Whether every `data:` of a stream is JSON (or OpenAI's `[DONE]`).
pub(crate) fn all_data_is_json(answer: &Answer) -> bool {
    answer
        .data()
        .iter()
        .all(|d| d == "[DONE]" || serde_json::from_str::<Value>(d).is_ok())
}
