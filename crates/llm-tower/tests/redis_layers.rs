//! The rate limiter and the budget over a real Redis (see
//! `support/redis.rs`: without one, every test says loudly that it was
//! skipped): two "processes" — two layers, each over its own
//! [`RedisStore`] connected to the same server (or Redis Cluster) and
//! prefix — share their limits; and each `on_store_failure` policy holds when the server is
//! killed, loses its scripts, or is too slow.
//!
//! Real time throughout, kept short: with tokio's paused time, a pending
//! socket read lets tokio jump to the next timer, the store's own timeout.
//! Every wait is bounded, so that nothing can hang the suite.

#![cfg(all(feature = "redis", feature = "rate-limit", feature = "budget"))]

#[path = "support/redis.rs"]
mod redis_support;

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    budget::{
        Amount, BudgetConfig, BudgetEvent, BudgetExceeded, BudgetLayer, BudgetUnavailable, Limit,
        Scope, ScopeBudget, Window,
    },
    pricing::{Cost, ModelPrice, PriceTable},
    provider::{Endpoint, Provider, WireFormat},
    rate_limit::{
        self, RateLimitConfig, RateLimitEvent, RateLimitKey, RateLimitLayer, RateLimited,
    },
    request::{PrepareLayer, ReplayBody, RequestMeta},
    store::{MemoryStore, OnStoreFailure, RedisStore, Store, StoreError},
};
use llm_tower_mock::{MockServer, Quota};
use redis_support::RedisServer;
use tokio::time::{Instant, timeout};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// A new connection (another process) to `url` under `prefix`.
async fn redis(url: &str, prefix: &str, op_timeout: Duration) -> RedisStore {
    RedisStore::builder(url)
        .prefix(prefix)
        .timeout(op_timeout)
        .connect()
        .await
        .expect("connect to the test server")
}

/// Where two "processes" meet: one server, or (feature `redis-cluster`)
/// the nodes of a Redis Cluster.
#[derive(Debug, Clone)]
enum Remote {
    Server(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl Remote {
    /// A new connection (another process) under `prefix`.
    async fn open(&self, prefix: &str, op_timeout: Duration) -> RedisStore {
        match self {
            Remote::Server(url) => redis(url, prefix, op_timeout).await,
            #[cfg(feature = "redis-cluster")]
            Remote::Cluster(nodes) => RedisStore::cluster_builder(nodes)
                .prefix(prefix)
                .timeout(op_timeout)
                .connect()
                .await
                .expect("connect to the test cluster"),
        }
    }
}

/// Runs `f` within `limit`, or fails the test: nothing may hang.
async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {limit:?}"))
}

/// A connection of its own to the test's server, to disturb it; its
/// replies may take seconds (`DEBUG SLEEP`).
async fn admin(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("an admin connection");
    con.set_response_timeout(Duration::from_secs(5));
    con
}

// ------------------------------------------ 1. rate limits over the mock

/// The mock's quota, and each layer's whole limit.
const RPM: u64 = 600;
/// The layers use 95% of it: 570 at once, then 9.5 a second. The 30 left
/// absorb calls that reach the mock in another order, or bunched up,
/// after taking their turns (a call arrives after its turn, never
/// before). Larger than the mock's burst: 640 calls, 70 past the layers'
/// burst, about 7.4 s at 9.5 a second.
const HEADROOM: f64 = 0.95;
const PER_PROCESS: usize = 320;
const CONCURRENCY: usize = 16;

fn rate_config() -> rate_limit::RateLimitConfig {
    RateLimitConfig::new()
        .limit(rate_limit::Limit::per_minute().requests(RPM))
        .headroom(HEADROOM)
        // Not aligned with the mock's headers: those would share what each
        // layer sees of the quota through the provider, and the store is
        // what is tested here.
        .adaptive(false)
        .max_wait(Duration::from_secs(30))
        .store_timeout(Duration::from_secs(2))
}

fn chat(mock: &MockServer, i: usize) -> Request<String> {
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": format!("call {i}")}],
    });
    Request::post(format!("{}/v1/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(body.to_string())
        .unwrap()
}

/// `n` calls to the mock through `layer`, `CONCURRENCY` at a time; their
/// statuses.
async fn workload<St: Store + Clone + Send + Sync + 'static>(
    layer: RateLimitLayer<St>,
    mock: &MockServer,
    first: usize,
    n: usize,
) -> Vec<u16> {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(layer)
        .service(client);
    futures_util::stream::iter(first..first + n)
        .map(|i| {
            let svc = svc.clone();
            let req = chat(mock, i);
            async move {
                let res = svc.oneshot(req).await.expect("the call completes");
                let status = res.status().as_u16();
                res.into_body().collect().await.expect("the body");
                status
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Two processes, each with the whole limit, their halves of the workload
/// at once: the 429s they meet.
async fn two_processes<St: Store + Clone + Send + Sync + 'static>(
    a: RateLimitLayer<St>,
    b: RateLimitLayer<St>,
) -> (usize, Duration) {
    let mock = MockServer::builder()
        .quota(Quota::per_minute().requests(RPM as u32))
        .start()
        .await
        .unwrap();
    let t0 = Instant::now();
    let (sa, sb) = bounded(Duration::from_secs(30), "the workload", async {
        tokio::join!(
            workload(a, &mock, 0, PER_PROCESS),
            workload(b, &mock, PER_PROCESS, PER_PROCESS)
        )
    })
    .await;
    let took = t0.elapsed();
    let statuses: Vec<u16> = sa.into_iter().chain(sb).collect();
    assert_eq!(statuses.len(), 2 * PER_PROCESS, "every call completed");
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 429)),
        "{statuses:?}"
    );
    let journal = mock.journal().entries();
    assert_eq!(journal.len(), 2 * PER_PROCESS, "one attempt per call");
    (statuses.iter().filter(|s| **s == 429).count(), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rate_limiters_sharing_redis_stay_under_the_providers_quota() {
    let Some(server) = redis_support::server() else {
        return;
    };
    rate_limiters_sharing(Remote::Server(server.url().to_owned())).await;
}

/// The same on a Redis Cluster: both layers' cells in the shard of their
/// prefix's slot, reached through the cluster client.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rate_limiters_sharing_a_redis_cluster_stay_under_the_providers_quota() {
    let Some(cluster) = redis_support::cluster() else {
        return;
    };
    rate_limiters_sharing(Remote::Cluster(cluster.urls().to_vec())).await;
}

async fn rate_limiters_sharing(remote: Remote) {
    let prefix = redis_support::unique_prefix("shared-rpm");
    let op = Duration::from_secs(2);
    let a = RateLimitLayer::with_store(
        rate_config().build().unwrap(),
        remote.open(&prefix, op).await,
    );
    let b = RateLimitLayer::with_store(
        rate_config().build().unwrap(),
        remote.open(&prefix, op).await,
    );
    let (ha, hb) = (a.handle(), b.handle());
    let (throttled, took) = two_processes(a, b).await;
    eprintln!("shared Redis ({remote:?}): {throttled} 429s, {took:?}");
    assert_eq!(throttled, 0, "one shared limit: no 429 (in {took:?})");
    let (sa, sb) = (ha.stats(), hb.stats());
    assert_eq!(sa.admitted + sb.admitted, 2 * PER_PROCESS as u64);
    assert_eq!((sa.store_errors, sb.store_errors), (0, 0));
    // 70 calls past the shared burst at 9.5 a second: at least ~7 s, which
    // two separate limits (the control below) never wait.
    assert!(took >= Duration::from_secs(6), "paced: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_two_rate_limiters_with_separate_memory_stores_meet_429s() {
    // No Redis needed; the same workload, each process alone with the
    // whole limit: both send their 320 at once, 640 against a quota of
    // 600 (plus the little it refills meanwhile, 10 a second).
    let a = RateLimitLayer::with_store(rate_config().build().unwrap(), MemoryStore::new());
    let b = RateLimitLayer::with_store(rate_config().build().unwrap(), MemoryStore::new());
    let (throttled, took) = two_processes(a, b).await;
    eprintln!("separate memory stores: {throttled} 429s, {took:?}");
    assert!(
        throttled >= 20,
        "two separate limits overshoot the quota: {throttled} 429s in {took:?}"
    );
    // The shared limiters above pace for at least 6 s; these never wait.
    assert!(took < Duration::from_secs(6), "nothing waited: {took:?}");
}

// ---------------------------------------------------------- 2. budgets

/// One input token of `m` costs 1,000 nano-dollars, one output token 2,000.
fn prices() -> PriceTable {
    PriceTable::empty().with_price("m", ModelPrice::new(1.0, 2.0).unwrap())
}

/// A call's worst case, 1,000 input and 500 output tokens of `m`: $0.002.
const WORST: u64 = 2_000_000;

fn budget_request() -> Request<String> {
    let meta = RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model("m")
    .with_estimated_input_tokens(1_000)
    .with_max_output_tokens(Some(500));
    let mut req = Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .header("content-type", "application/json")
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(meta);
    req
}

type Res = Response<Full<Bytes>>;

/// A provider that uses each call's whole worst case, counting calls.
fn worst_case_provider(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<String>,
    Response = Res,
    Error = Infallible,
    Future = std::future::Ready<Result<Res, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#;
        std::future::ready(Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()))
    })
}

type BudgetEvents = Arc<Mutex<Vec<BudgetEvent>>>;

/// A global budget of `worsts` worst cases in all, over `store`.
fn budget_layer(
    worsts: u64,
    store: RedisStore,
    policy: OnStoreFailure,
    store_timeout: Duration,
) -> (BudgetLayer<RedisStore>, BudgetEvents) {
    let usd = (worsts * WORST) as f64 / 1e9;
    let config = BudgetConfig::new()
        .scope(ScopeBudget::global().limit(Limit::usd(usd, Window::Total)))
        .on_store_failure(policy)
        .store_timeout(store_timeout)
        .build()
        .unwrap();
    let events = BudgetEvents::default();
    let seen = events.clone();
    let layer = BudgetLayer::with_store(config, store)
        .prices(prices())
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    (layer, events)
}

/// One call through `layer`, its body read; how long it took.
async fn budget_call(
    layer: &BudgetLayer<RedisStore>,
    calls: &Arc<AtomicUsize>,
) -> (Result<(), BoxError>, Duration) {
    let svc = layer.layer(worst_case_provider(calls.clone()));
    let t0 = Instant::now();
    let res = bounded(Duration::from_secs(10), "a budget call", async {
        match svc.oneshot(budget_request()).await {
            Ok(res) => res.into_body().collect().await.map(drop),
            Err(e) => Err(e),
        }
    })
    .await;
    (res, t0.elapsed())
}

/// `(spent, reserved)` of the shared global budget, in nano-dollars.
async fn shared_balance(layer: &BudgetLayer<RedisStore>) -> (u64, u64) {
    let status = bounded(
        Duration::from_secs(5),
        "a status",
        layer.handle().status(Scope::Global, "*"),
    )
    .await
    .expect("the store answers");
    match (status[0].spent, status[0].reserved) {
        (Amount::Usd(s), Amount::Usd(r)) => (s.as_nanos(), r.as_nanos()),
        other => panic!("{other:?}"),
    }
}

/// The shared balance once every settlement is in: settlements run after
/// the call, in the background; bounded.
async fn settled_balance(layer: &BudgetLayer<RedisStore>) -> (u64, u64) {
    let t0 = Instant::now();
    loop {
        let balance = shared_balance(layer).await;
        if balance.1 == 0 || t0.elapsed() > Duration::from_secs(3) {
            return balance;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn budget_count(events: &BudgetEvents, f: impl Fn(&BudgetEvent) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|e| f(e)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_calls_over_two_redis_stores_never_overspend() {
    let Some(server) = redis_support::server() else {
        return;
    };
    a_thousand_calls_over_two_stores(Remote::Server(server.url().to_owned())).await;
}

/// The same on a Redis Cluster.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_calls_over_two_redis_cluster_stores_never_overspend() {
    let Some(cluster) = redis_support::cluster() else {
        return;
    };
    a_thousand_calls_over_two_stores(Remote::Cluster(cluster.urls().to_vec())).await;
}

async fn a_thousand_calls_over_two_stores(remote: Remote) {
    const N: u64 = 100;
    const CALLS: usize = 1_000;
    let prefix = redis_support::unique_prefix("budget-1000");
    // Generous: a thousand calls at once on a loaded machine.
    let op = Duration::from_secs(5);
    let (a, _) = budget_layer(
        N,
        remote.open(&prefix, op).await,
        OnStoreFailure::FailClosed,
        op,
    );
    let (b, _) = budget_layer(
        N,
        remote.open(&prefix, op).await,
        OnStoreFailure::FailClosed,
        op,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CALLS)
        .map(|i| {
            let layer = if i % 2 == 0 { a.clone() } else { b.clone() };
            let calls = calls.clone();
            tokio::spawn(async move { budget_call(&layer, &calls).await.0 })
        })
        .collect();
    let results = bounded(
        Duration::from_secs(30),
        "a thousand calls",
        futures_util::future::join_all(tasks),
    )
    .await;
    let mut answered = 0;
    let mut refused = 0;
    for r in results {
        match r.expect("no panic") {
            Ok(()) => answered += 1,
            Err(e) if e.is::<BudgetExceeded>() => refused += 1,
            Err(e) => panic!("neither answered nor refused: {e}"),
        }
    }
    assert_eq!(answered, N, "exactly the worst cases that fit");
    assert_eq!(refused, CALLS as u64 - N);
    assert_eq!(calls.load(Ordering::SeqCst) as u64, N, "refusals unsent");
    // Both processes answered some: the limit held across them.
    let (spent, reserved) = settled_balance(&a).await;
    let (sa, sb) = (a.handle().stats(), b.handle().stats());
    assert!(sa.refused > 0 && sb.refused > 0, "{sa:?} {sb:?}");
    assert_eq!(sa.store_errors + sb.store_errors, 0);
    assert_eq!(spent, N * WORST, "spent, to the nano-dollar, ≤ the limit");
    assert_eq!(reserved, 0, "every reservation settled");
    assert_eq!(shared_balance(&b).await, (N * WORST, 0), "one budget");
}

// ------------------------------------------------------------- 3. faults

/// The layers' time allowed to one store operation (the stores' own is
/// longer, so that the layers' applies).
const STORE_TIMEOUT: Duration = Duration::from_millis(200);
/// Scheduling, connecting, the call itself.
const MARGIN: Duration = Duration::from_millis(300);

type RateEvents = Arc<Mutex<Vec<RateLimitEvent>>>;

/// `rpm` requests a minute (no headroom) over its own connection, with
/// `policy`; a call past the limit is refused at once (`max_wait` 1 s).
async fn rate_layer(
    server: &RedisServer,
    prefix: &str,
    rpm: u64,
    policy: OnStoreFailure,
) -> (RateLimitLayer<RedisStore>, RateEvents) {
    let config = RateLimitConfig::new()
        .limit(rate_limit::Limit::per_minute().requests(rpm))
        .headroom(1.0)
        .max_wait(Duration::from_secs(1))
        .on_store_failure(policy)
        .store_timeout(STORE_TIMEOUT)
        .build()
        .unwrap();
    let store = redis(server.url(), prefix, Duration::from_secs(2)).await;
    let events = RateEvents::default();
    let seen = events.clone();
    let layer = RateLimitLayer::with_store(config, store)
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    (layer, events)
}

fn rate_request() -> Request<String> {
    let meta = RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model("gpt-4o")
    .with_estimated_input_tokens(10)
    .with_max_output_tokens(Some(10));
    let mut req = Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(meta);
    req.extensions_mut().insert(RateLimitKey::new(RATE_KEY));
    req
}

/// The key of every call of the fault tests.
const RATE_KEY: &str = "tenant-a";

/// One call through `layer` to a provider answering 200 at once; how long
/// it took.
async fn rate_call(layer: &RateLimitLayer<RedisStore>) -> (Result<(), BoxError>, Duration) {
    let svc = layer.layer(service_fn(|_req: Request<String>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"{}"),
        ))))
    }));
    let t0 = Instant::now();
    let res = bounded(
        Duration::from_secs(10),
        "a rate-limited call",
        svc.oneshot(rate_request()),
    )
    .await
    .map(drop);
    (res, t0.elapsed())
}

fn is_store_error(e: &BoxError) -> bool {
    e.downcast_ref::<StoreError>().is_some()
}

fn is_rate_limited(e: &BoxError) -> bool {
    e.downcast_ref::<RateLimited>().is_some()
}

fn downs(events: &RateEvents) -> Vec<&'static str> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RateLimitEvent::StoreDown { policy, .. } => Some(*policy),
            _ => None,
        })
        .collect()
}

fn recoveries(events: &RateEvents) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, RateLimitEvent::StoreRecovered { .. }))
        .count()
}

/// Calls `f` every 100 ms until it succeeds, at most `limit`; how long it
/// took and how many tries.
async fn until_ok<F, Fut>(limit: Duration, mut f: F) -> (Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        if f().await {
            return (t0.elapsed(), tries);
        }
        assert!(
            t0.elapsed() < limit,
            "not recovered within {limit:?} ({tries} tries)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_each_policy_applies_then_the_restarted_server_is_used_again() {
    // A server of its own, even when LLM_TOWER_REDIS_URL names one: this
    // test kills it.
    let Some(mut server) = redis_support::own_server() else {
        return;
    };
    let prefix = redis_support::unique_prefix("killed");
    let (closed, closed_ev) = rate_layer(
        &server,
        &format!("{prefix}:c"),
        3,
        OnStoreFailure::FailClosed,
    )
    .await;
    let (open, open_ev) =
        rate_layer(&server, &format!("{prefix}:o"), 3, OnStoreFailure::FailOpen).await;
    // Ten a minute, half of it while the store fails.
    let (degraded, degraded_ev) = rate_layer(
        &server,
        &format!("{prefix}:d"),
        10,
        OnStoreFailure::Degraded { share: 0.5 },
    )
    .await;
    let (budget, budget_ev) = budget_layer(
        3,
        redis(server.url(), &format!("{prefix}:b"), Duration::from_secs(2)).await,
        OnStoreFailure::FailClosed,
        STORE_TIMEOUT,
    );
    let calls = Arc::new(AtomicUsize::new(0));

    // Up: the shared limits hold — three a minute, a fourth is refused.
    for layer in [&closed, &open] {
        for _ in 0..3 {
            rate_call(layer).await.0.unwrap();
        }
        assert!(is_rate_limited(&rate_call(layer).await.0.unwrap_err()));
    }
    rate_call(&degraded).await.0.unwrap();
    budget_call(&budget, &calls).await.0.unwrap();
    budget_call(&budget, &calls).await.0.unwrap();
    assert_eq!(settled_balance(&budget).await, (2 * WORST, 0));

    server.kill();

    // Fail closed: the store's error, within the timeout; then at once
    // until the next probe.
    for _ in 0..3 {
        let (res, took) = rate_call(&closed).await;
        let e = res.unwrap_err();
        assert!(is_store_error(&e), "{e}");
        assert!(took <= STORE_TIMEOUT + MARGIN, "{took:?}");
    }
    assert_eq!(downs(&closed_ev), ["fail_closed"]);
    assert!(closed.handle().stats().store_down);

    // Fail open: five calls where the limit (already spent) allowed none.
    for _ in 0..5 {
        let (res, took) = rate_call(&open).await;
        res.unwrap();
        assert!(took <= STORE_TIMEOUT + MARGIN, "{took:?}");
    }
    let stats = open.handle().stats();
    assert_eq!(stats.store_fail_open, 5);
    assert_eq!(downs(&open_ev), ["fail_open"]);

    // Degraded: five (10 × 0.5) go at once in the private store, the
    // sixth's turn is 6 s away, past max_wait: refused.
    for _ in 0..5 {
        let (res, took) = rate_call(&degraded).await;
        res.unwrap();
        assert!(took <= STORE_TIMEOUT + MARGIN, "{took:?}");
    }
    let (res, took) = rate_call(&degraded).await;
    assert!(is_rate_limited(&res.unwrap_err()));
    assert!(took <= STORE_TIMEOUT + MARGIN, "{took:?}");
    assert_eq!(degraded.handle().stats().store_degraded, 6);
    assert_eq!(downs(&degraded_ev), ["degraded"]);

    // The budget, fail closed: refused unsent.
    let sent = calls.load(Ordering::SeqCst);
    let (res, took) = budget_call(&budget, &calls).await;
    let e = res.unwrap_err();
    assert!(e.is::<BudgetUnavailable>(), "{e}");
    assert!(took <= STORE_TIMEOUT + MARGIN, "{took:?}");
    assert_eq!(calls.load(Ordering::SeqCst), sent, "nothing sent");
    assert_eq!(
        budget_count(&budget_ev, |e| matches!(e, BudgetEvent::StoreDown { .. })),
        1
    );

    // Restarted — empty: `--save ''`, no persistence. The next probe (one
    // call a second) reconnects, reloads the scripts and switches back.
    let errors = |layer: &RateLimitLayer<RedisStore>| layer.handle().stats().store_errors;
    let before = [errors(&closed), errors(&open), errors(&degraded)];
    let budget_errors = budget.handle().stats().store_errors;
    assert!(server.restart(), "the server restarts");
    let limit = Duration::from_secs(4);
    let (after, tries) = until_ok(limit, || async { rate_call(&closed).await.0.is_ok() }).await;
    eprintln!("fail closed: back {after:?} after the restart, {tries} tries");
    // The probe a second after the first failure (just before the restart).
    assert!(after < Duration::from_secs(2), "{after:?}");
    assert_eq!(recoveries(&closed_ev), 1);
    assert!(!closed.handle().stats().store_down);
    // The state written before the restart is lost: the limit starts
    // empty again, three more this minute (the probe was the first).
    for _ in 0..2 {
        rate_call(&closed).await.0.unwrap();
    }
    assert!(is_rate_limited(&rate_call(&closed).await.0.unwrap_err()));

    // Fail open lets every call through while down; the one that finds
    // the store again is the first the (empty) shared limit counts.
    until_ok(limit, || async {
        rate_call(&open).await.0.unwrap();
        !open.handle().stats().store_down
    })
    .await;
    assert_eq!(recoveries(&open_ev), 1);
    for _ in 0..2 {
        rate_call(&open).await.0.unwrap();
    }
    assert!(is_rate_limited(&rate_call(&open).await.0.unwrap_err()));

    until_ok(limit, || async {
        rate_call(&degraded).await.0.is_ok() && !degraded.handle().stats().store_down
    })
    .await;
    assert_eq!(recoveries(&degraded_ev), 1);

    until_ok(limit, || async {
        budget_call(&budget, &calls).await.0.is_ok()
    })
    .await;
    assert_eq!(
        budget_count(&budget_ev, |e| matches!(
            e,
            BudgetEvent::StoreRecovered { .. }
        )),
        1
    );
    // The first probe after the restart found the store: no failure since.
    assert_eq!(
        [errors(&closed), errors(&open), errors(&degraded)],
        before,
        "a probe failed after the restart"
    );
    assert_eq!(budget.handle().stats().store_errors, budget_errors);
    // Lost too: the two worst cases spent before are gone, three fit again.
    assert_eq!(settled_balance(&budget).await, (WORST, 0));
    budget_call(&budget, &calls).await.0.unwrap();
    budget_call(&budget, &calls).await.0.unwrap();
    assert!(
        budget_call(&budget, &calls)
            .await
            .0
            .unwrap_err()
            .is::<BudgetExceeded>()
    );
    assert_eq!(settled_balance(&budget).await, (3 * WORST, 0));
}

/// Rounds of 20 calls with a `SCRIPT FLUSH` in their midst, after two
/// with flushes between them.
const FLUSHED_ROUNDS: u64 = 6;
const FLUSH_CALLS: u64 = 20 * (2 + FLUSHED_ROUNDS);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_run_the_scripts_are_loaded_again_and_nothing_fails() {
    // Its own server: flushing a shared one's scripts is felt by every
    // other test using it.
    let Some(server) = redis_support::own_server() else {
        return;
    };
    let prefix = redis_support::unique_prefix("flush");
    // Fail closed both: any store failure would fail a call.
    let (rate, rate_ev) = rate_layer(
        &server,
        &format!("{prefix}:r"),
        1_000,
        OnStoreFailure::FailClosed,
    )
    .await;
    let (budget, budget_ev) = budget_layer(
        1_000,
        redis(server.url(), &format!("{prefix}:b"), Duration::from_secs(2)).await,
        OnStoreFailure::FailClosed,
        // Not the fault-tests' 200 ms: a reload costs a round trip or two,
        // and this test is about the reload, not the timeout.
        Duration::from_secs(2),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let mut con = admin(&server).await;
    let round = || {
        let (rate, budget, calls) = (rate.clone(), budget.clone(), calls.clone());
        async move {
            let tasks: Vec<_> = (0..20)
                .map(|_| {
                    let (rate, budget, calls) = (rate.clone(), budget.clone(), calls.clone());
                    tokio::spawn(async move {
                        let r = rate_call(&rate).await.0;
                        let b = budget_call(&budget, &calls).await.0;
                        (
                            r.err().map(|e| e.to_string()),
                            b.err().map(|e| e.to_string()),
                        )
                    })
                })
                .collect();
            let mut failed = Vec::new();
            for t in tasks {
                match t.await.expect("no panic") {
                    (None, None) => {}
                    other => failed.push(other),
                }
            }
            failed
        }
    };
    let flush = |con: &mut redis::aio::MultiplexedConnection| {
        let mut con = con.clone();
        async move {
            let ok: String = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut con)
                .await
                .expect("SCRIPT FLUSH");
            assert_eq!(ok, "OK");
        }
    };
    let failed = bounded(Duration::from_secs(20), "the rounds", async {
        let mut failed = round().await;
        flush(&mut con).await;
        failed.extend(round().await);
        // And while calls are in flight, again and again: an operation
        // whose script is lost twice while it runs (flushed, loaded
        // again, flushed before the retry) must load it again.
        for _ in 0..FLUSHED_ROUNDS {
            let (more, ()) = tokio::join!(round(), async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                flush(&mut con).await;
            });
            failed.extend(more);
        }
        failed
    })
    .await;
    let (spent, reserved) = settled_balance(&budget).await;
    let budget_errors: Vec<_> = budget_ev
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, BudgetEvent::StoreFailed { .. }))
        .cloned()
        .collect();
    assert_eq!(failed, [], "{budget_errors:?} {rate_ev:?}");
    let stats = rate.handle().stats();
    assert_eq!((stats.admitted, stats.store_errors), (FLUSH_CALLS, 0));
    assert_eq!(downs(&rate_ev), Vec::<&str>::new());
    let stats = budget.handle().stats();
    assert_eq!(stats.store_errors, 0);
    assert_eq!(
        budget_count(&budget_ev, |e| matches!(e, BudgetEvent::StoreDown { .. })),
        0
    );
    assert_eq!(calls.load(Ordering::SeqCst) as u64, FLUSH_CALLS);
    assert_eq!((spent, reserved), (FLUSH_CALLS * WORST, 0));
    // The shared cell counted every call: 840 left of this minute's 1,000
    // (plus the refill, 16 a second).
    let state = rate
        .handle()
        .key_state(RATE_KEY)
        .await
        .expect("the store answers");
    let available = state.limits[0].available;
    assert!(
        (1_000 - FLUSH_CALLS..=1_000 - FLUSH_CALLS + 50).contains(&available),
        "{available}"
    );
}

/// Makes the test's server sleep for a second on a connection of its own
/// (`DEBUG SLEEP 1`; where `DEBUG` is not allowed, a Lua script that spins
/// for a second, which blocks the server alike). Returns once the server
/// is asleep; the task ends when it wakes.
async fn put_to_sleep(server: &RedisServer) -> tokio::task::JoinHandle<()> {
    let mut con = admin(server).await;
    let debug = {
        let mut con = con.clone();
        tokio::spawn(async move {
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(1)
                .query_async::<String>(&mut con)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    if debug.is_finished() {
        let refused = debug.await.unwrap();
        assert!(refused.is_err(), "DEBUG SLEEP 1 returned at once");
        eprintln!("DEBUG refused ({refused:?}): a spinning script instead");
        let spin = tokio::spawn(async move {
            let script = "local t0 = redis.call('TIME') \
                local t = t0 \
                while (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) < 1000000 do \
                    t = redis.call('TIME') \
                end \
                return 1";
            redis::cmd("EVAL")
                .arg(script)
                .arg(0)
                .query_async::<i64>(&mut con)
                .await
                .expect("the spinning script");
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        return spin;
    }
    tokio::spawn(async move {
        debug.await.unwrap().expect("DEBUG SLEEP 1");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_each_call_completes_within_the_timeout_with_its_policy() {
    // Its own server: a shared one put to sleep would slow every other
    // test using it.
    let Some(server) = redis_support::own_server() else {
        return;
    };
    let prefix = redis_support::unique_prefix("slow");
    let (closed, closed_ev) = rate_layer(
        &server,
        &format!("{prefix}:c"),
        600,
        OnStoreFailure::FailClosed,
    )
    .await;
    let (open, open_ev) = rate_layer(
        &server,
        &format!("{prefix}:o"),
        600,
        OnStoreFailure::FailOpen,
    )
    .await;
    let (degraded, degraded_ev) = rate_layer(
        &server,
        &format!("{prefix}:d"),
        600,
        OnStoreFailure::Degraded { share: 0.5 },
    )
    .await;
    let (budget, budget_ev) = budget_layer(
        100,
        redis(server.url(), &format!("{prefix}:b"), Duration::from_secs(2)).await,
        OnStoreFailure::FailClosed,
        STORE_TIMEOUT,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    // Scripts loaded, connections up.
    for layer in [&closed, &open, &degraded] {
        rate_call(layer).await.0.unwrap();
    }
    budget_call(&budget, &calls).await.0.unwrap();

    let asleep = put_to_sleep(&server).await;
    let t0 = Instant::now();
    let ((c, tc), (o, to), (d, td), (b, tb)) = tokio::join!(
        rate_call(&closed),
        rate_call(&open),
        rate_call(&degraded),
        budget_call(&budget, &calls)
    );
    // All four waited for the store's timeout, no longer.
    for took in [tc, to, td, tb] {
        assert!(
            (STORE_TIMEOUT..=STORE_TIMEOUT + MARGIN).contains(&took),
            "{took:?}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "within the sleep"
    );
    let e = c.unwrap_err();
    assert!(
        is_store_error(&e) && e.to_string().contains("timed out"),
        "{e}"
    );
    o.unwrap();
    d.unwrap();
    let e = b.unwrap_err();
    assert!(e.is::<BudgetUnavailable>(), "{e}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the refused call was not sent"
    );
    assert_eq!(downs(&closed_ev), ["fail_closed"]);
    assert_eq!(downs(&open_ev), ["fail_open"]);
    assert_eq!(downs(&degraded_ev), ["degraded"]);
    assert_eq!(open.handle().stats().store_fail_open, 1);
    assert_eq!(degraded.handle().stats().store_degraded, 1);

    // Still asleep: until the next probe, nothing waits.
    let (c, tc) = rate_call(&closed).await;
    assert!(is_store_error(&c.unwrap_err()));
    assert!(tc < STORE_TIMEOUT, "did not wait for the store: {tc:?}");

    bounded(Duration::from_secs(5), "the server's sleep", asleep)
        .await
        .unwrap();
    // The next probe, a second after the failure (when the first calls
    // timed out), finds the store again.
    let wait = (STORE_TIMEOUT + Duration::from_millis(1_050)).saturating_sub(t0.elapsed());
    tokio::time::sleep(wait).await;
    for (layer, events) in [
        (&closed, &closed_ev),
        (&open, &open_ev),
        (&degraded, &degraded_ev),
    ] {
        let (res, took) = rate_call(layer).await;
        res.unwrap();
        assert!(took <= MARGIN, "{took:?}");
        assert!(!layer.handle().stats().store_down);
        assert_eq!(recoveries(events), 1);
    }
    let (res, _) = budget_call(&budget, &calls).await;
    res.unwrap();
    assert_eq!(
        budget_count(&budget_ev, |e| matches!(
            e,
            BudgetEvent::StoreRecovered { .. }
        )),
        1
    );
    assert!(!budget.handle().stats().store_down);
}

/// What Redis kept across a restart is used after it: a budget's spend
/// saved to disk before the server went down still counts once it is
/// back, and the store reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_kept_across_a_restart_is_used_after_it() {
    let Some(mut server) = redis_support::own_server() else {
        return;
    };
    let prefix = redis_support::unique_prefix("kept");
    let store = redis(server.url(), &prefix, Duration::from_secs(2)).await;
    let (budget, _) = budget_layer(3, store, OnStoreFailure::FailClosed, STORE_TIMEOUT);
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        budget_call(&budget, &calls).await.0.expect("fits");
    }
    assert_eq!(settled_balance(&budget).await, (2 * WORST, 0));
    assert!(server.save(), "SAVE");
    server.kill();
    assert!(server.restart(), "restart");
    // The same store, reconnected: the spend is still there.
    let t0 = Instant::now();
    let balance = loop {
        match budget.handle().status(Scope::Global, "*").await {
            Ok(status) => break status,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "never back: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(balance[0].spent, Amount::Usd(Cost::from_nanos(2 * WORST)));
    // One more worst case fits, and the one after does not.
    let t0 = Instant::now();
    loop {
        match budget_call(&budget, &calls).await.0 {
            Ok(()) => break,
            // The first operations after the restart may meet the broken
            // connection, and the layer's probe once a second.
            Err(e) if !e.is::<BudgetExceeded>() && t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the third call: {e}"),
        }
    }
    let (res, _) = budget_call(&budget, &calls).await;
    assert!(
        res.as_ref().is_err_and(|e| e.is::<BudgetExceeded>()),
        "the fourth call does not fit: {res:?}"
    );
    assert_eq!(settled_balance(&budget).await, (3 * WORST, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
