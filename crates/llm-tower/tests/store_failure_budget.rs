//! BudgetLayer over a store that fails, hangs and recovers, with paused
//! time: each `on_store_failure` policy, the per-operation timeout, the
//! events and counters, the probe, the return to the shared store, and
//! settlements that fail.

mod faulty;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use faulty::{FaultyStore, Mode};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use llm_tower::{
    BoxError,
    budget::{
        BudgetConfig, BudgetEvent, BudgetExceeded, BudgetLayer, BudgetUnavailable, Limit, Scope,
        ScopeBudget, Window,
    },
    config::Valid,
    pricing::{Cost, ModelPrice, PriceTable},
    provider::{Endpoint, Provider, WireFormat},
    request::RequestMeta,
    store::OnStoreFailure,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

const TIMEOUT: Duration = Duration::from_millis(250);

/// One input token of `m` costs 1,000 nano-dollars, one output token 2,000.
fn prices() -> PriceTable {
    PriceTable::empty().with_price("m", ModelPrice::new(1.0, 2.0).unwrap())
}

/// A call whose worst case is 1,000 input and 500 output tokens of `m`:
/// $0.002. The provider uses all of it.
fn request() -> Request<String> {
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

const WORST: u64 = 2_000_000;

type Res = Response<Full<Bytes>>;

/// A provider that uses the whole worst case, counting calls; `before`
/// runs as it is called.
fn provider(
    calls: Arc<AtomicUsize>,
    before: impl Fn() + Clone + Send + Sync + 'static,
) -> impl Service<
    Request<String>,
    Response = Res,
    Error = Infallible,
    Future = std::future::Ready<Result<Res, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<String>| {
        before();
        calls.fetch_add(1, Ordering::SeqCst);
        let body = r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#;
        std::future::ready(Ok(Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()))
    })
}

type Events = Arc<Mutex<Vec<BudgetEvent>>>;

/// A global limit of `worsts` calls' worst case a day, over a faulty
/// store, with `policy` (the default when `None`); the events it emits.
fn layer(
    worsts: u64,
    policy: Option<OnStoreFailure>,
) -> (BudgetLayer<FaultyStore>, FaultyStore, Events) {
    let store = FaultyStore::new();
    let usd = (worsts * WORST) as f64 / 1e9;
    let mut config = BudgetConfig::new()
        .scope(ScopeBudget::global().limit(Limit::usd(usd, Window::Day)))
        .store_timeout(TIMEOUT);
    if let Some(policy) = policy {
        config = config.on_store_failure(policy);
    }
    let events = Events::default();
    let seen = events.clone();
    let layer = BudgetLayer::with_store(config.build().unwrap(), store.clone())
        .prices(prices())
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    (layer, store, events)
}

/// One call through `layer`, its body read, bounded so that a hung call
/// fails the test; how long it took to answer.
async fn call(
    layer: &BudgetLayer<FaultyStore>,
    calls: &Arc<AtomicUsize>,
) -> (Result<(), BoxError>, Duration) {
    call_with(layer, calls, || {}).await
}

async fn call_with(
    layer: &BudgetLayer<FaultyStore>,
    calls: &Arc<AtomicUsize>,
    before: impl Fn() + Clone + Send + Sync + 'static,
) -> (Result<(), BoxError>, Duration) {
    let mut svc = layer.layer(provider(calls.clone(), before));
    let t0 = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(600), async {
        svc.ready().await.unwrap().call(request()).await
    })
    .await
    .expect("the call hung");
    let took = t0.elapsed();
    let res = match res {
        Ok(res) => {
            res.into_body().collect().await.unwrap();
            Ok(())
        }
        Err(e) => Err(e),
    };
    (res, took)
}

fn downs(events: &Events) -> Vec<&'static str> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            BudgetEvent::StoreDown { policy, .. } => Some(*policy),
            _ => None,
        })
        .collect()
}

fn count(events: &Events, f: impl Fn(&BudgetEvent) -> bool) -> usize {
    events.lock().unwrap().iter().filter(|e| f(e)).count()
}

/// What the shared store says the global day's budget spent.
async fn shared_spent(layer: &BudgetLayer<FaultyStore>) -> u64 {
    let status = layer.handle().status(Scope::Global, "*").await.unwrap();
    match status[0].spent {
        llm_tower::budget::Amount::Usd(c) => c.as_nanos(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_default_policy_is_fail_closed() {
    let config = BudgetConfig::default();
    assert_eq!(config.on_store_failure, OnStoreFailure::FailClosed);
    assert_eq!(config.store_timeout, TIMEOUT);
    let json = r#"{"on_store_failure": "fail_open", "store_timeout": "1s"}"#;
    let config: Valid<BudgetConfig> = serde_json::from_str(json).unwrap();
    assert_eq!(config.on_store_failure, OnStoreFailure::FailOpen);
    assert_eq!(config.store_timeout, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn fail_closed_refuses_the_call_unsent_then_recovers() {
    let (layer, store, events) = layer(10, None);
    let calls = Arc::new(AtomicUsize::new(0));
    store.set(Mode::Fail);
    let (res, took) = call(&layer, &calls).await;
    let e = res.unwrap_err();
    assert!(e.is::<BudgetUnavailable>(), "{e}");
    assert_eq!(took, Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
    let stats = layer.handle().stats();
    assert_eq!(stats.store_errors, 1);
    assert!(stats.store_down);
    assert_eq!(downs(&events), ["fail_closed"]);
    assert_eq!(
        count(&events, |e| matches!(e, BudgetEvent::StoreFailed { .. })),
        1
    );

    // Before the next probe: refused at once, the store not asked.
    let ops = store.ops();
    let (res, _) = call(&layer, &calls).await;
    assert!(res.unwrap_err().is::<BudgetUnavailable>());
    assert_eq!(store.ops(), ops);

    store.set(Mode::Ok);
    tokio::time::advance(Duration::from_secs(1)).await;
    let (res, _) = call(&layer, &calls).await;
    res.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!layer.handle().stats().store_down);
    assert_eq!(
        count(&events, |e| matches!(e, BudgetEvent::StoreRecovered { .. })),
        1
    );
    assert_eq!(shared_spent(&layer).await, WORST);
}

#[tokio::test(start_paused = true)]
async fn fail_closed_a_hung_store_refuses_after_the_timeout() {
    let (layer, store, events) = layer(10, None);
    let calls = Arc::new(AtomicUsize::new(0));
    store.set(Mode::Hang);
    let (res, took) = call(&layer, &calls).await;
    let e = res.unwrap_err();
    assert!(e.is::<BudgetUnavailable>(), "{e}");
    assert_eq!(took, TIMEOUT);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(layer.handle().stats().store_errors, 1);
    assert_eq!(downs(&events), ["fail_closed"]);
}

#[tokio::test(start_paused = true)]
async fn fail_open_lets_the_call_through_unchecked_and_counts_its_cost_here() {
    // Not even one call's worst case fits the limit: only an unchecked call
    // goes.
    let (layer, store, events) = layer(0, Some(OnStoreFailure::FailOpen));
    let calls = Arc::new(AtomicUsize::new(0));
    store.set(Mode::Fail);
    for _ in 0..2 {
        let (res, took) = call(&layer, &calls).await;
        res.unwrap();
        assert_eq!(took, Duration::ZERO);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = layer.handle().stats();
    assert_eq!((stats.store_fail_open, stats.store_errors), (2, 1));
    assert_eq!(stats.spent, Cost::from_nanos(2 * WORST), "counted here");
    assert_eq!(downs(&events), ["fail_open"]);
    assert_eq!(
        count(&events, |e| matches!(e, BudgetEvent::Unchecked { .. })),
        2
    );

    // The store answers again: the limit holds again.
    store.set(Mode::Ok);
    tokio::time::advance(Duration::from_secs(1)).await;
    let (res, _) = call(&layer, &calls).await;
    assert!(res.unwrap_err().is::<BudgetExceeded>());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(!layer.handle().stats().store_down);
    assert_eq!(shared_spent(&layer).await, 0, "never in the shared budget");
}

#[tokio::test(start_paused = true)]
async fn fail_open_a_hung_store_costs_one_call_the_timeout() {
    let (layer, store, events) = layer(10, Some(OnStoreFailure::FailOpen));
    let calls = Arc::new(AtomicUsize::new(0));
    store.set(Mode::Hang);
    let (res, took) = call(&layer, &calls).await;
    res.unwrap();
    assert_eq!(took, TIMEOUT);
    let (res, took) = call(&layer, &calls).await;
    res.unwrap();
    assert_eq!(took, Duration::ZERO, "not tried again within the second");
    let stats = layer.handle().stats();
    assert_eq!((stats.store_fail_open, stats.store_errors), (2, 1));
    assert_eq!(downs(&events), ["fail_open"]);
}

#[tokio::test(start_paused = true)]
async fn degraded_reserves_a_share_of_each_limit_in_a_private_store() {
    // Four calls a day; half of it while the store fails: two here.
    let (layer, store, events) = layer(4, Some(OnStoreFailure::Degraded { share: 0.5 }));
    let calls = Arc::new(AtomicUsize::new(0));
    store.set(Mode::Fail);
    call(&layer, &calls).await.0.unwrap();
    call(&layer, &calls).await.0.unwrap();
    let e = call(&layer, &calls).await.0.unwrap_err();
    let refusal = e.downcast_ref::<BudgetExceeded>().expect("refused");
    assert!(
        refusal.to_string().contains("$0.004 per day"),
        "the limit × share: {refusal}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = layer.handle().stats();
    assert_eq!((stats.store_degraded, stats.refused), (3, 1));
    assert!(stats.store_down);
    assert_eq!(downs(&events), ["degraded"]);

    // The store answers again: the shared budget decides, and it never saw
    // the degraded spend.
    store.set(Mode::Ok);
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..4 {
        call(&layer, &calls).await.0.unwrap();
    }
    assert!(
        call(&layer, &calls)
            .await
            .0
            .unwrap_err()
            .is::<BudgetExceeded>()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    let stats = layer.handle().stats();
    assert_eq!(stats.store_degraded, 3);
    assert!(!stats.store_down);
    assert_eq!(
        count(&events, |e| matches!(e, BudgetEvent::StoreRecovered { .. })),
        1
    );
    assert_eq!(shared_spent(&layer).await, 4 * WORST);
}

#[tokio::test(start_paused = true)]
async fn degraded_a_hung_store_costs_one_call_the_timeout_then_the_share_applies() {
    let (layer, store, events) = layer(2, Some(OnStoreFailure::Degraded { share: 0.5 }));
    let calls = Arc::new(AtomicUsize::new(0));
    store.set(Mode::Hang);
    let (res, took) = call(&layer, &calls).await;
    res.unwrap();
    assert_eq!(took, TIMEOUT);
    let (res, took) = call(&layer, &calls).await;
    assert!(res.unwrap_err().is::<BudgetExceeded>(), "one call here");
    assert_eq!(took, Duration::ZERO);
    let stats = layer.handle().stats();
    assert_eq!((stats.store_degraded, stats.store_errors), (2, 1));
    assert_eq!(downs(&events), ["degraded"]);
}

#[tokio::test(start_paused = true)]
async fn a_settlement_that_fails_fails_nothing_is_counted_and_reported() {
    let (layer, store, events) = layer(10, None);
    let calls = Arc::new(AtomicUsize::new(0));
    // Reserved while the store answers; it fails before the settlement.
    let failing = store.clone();
    let (res, _) = call_with(&layer, &calls, move || failing.set(Mode::Fail)).await;
    res.unwrap();
    let stats = layer.handle().stats();
    assert_eq!((stats.settled, stats.store_errors), (1, 1));
    assert_eq!(
        stats.spent,
        Cost::from_nanos(WORST),
        "the spend is counted here"
    );
    assert_eq!(
        count(&events, |e| matches!(e, BudgetEvent::StoreFailed { .. })),
        1
    );
    assert_eq!(downs(&events), ["fail_closed"]);
}

#[tokio::test(start_paused = true)]
async fn a_settlement_on_a_hung_store_gives_up_after_the_timeout() {
    let (layer, store, events) = layer(10, None);
    let calls = Arc::new(AtomicUsize::new(0));
    let hanging = store.clone();
    let (res, _) = call_with(&layer, &calls, move || hanging.set(Mode::Hang)).await;
    res.unwrap();
    // The settlement runs on a task: it gives up after the timeout, not
    // before (paused time: a millisecond short, it is still waiting).
    tokio::time::sleep(TIMEOUT - Duration::from_millis(1)).await;
    assert_eq!(layer.handle().stats().store_errors, 0);
    tokio::time::sleep(Duration::from_millis(2)).await;
    let stats = layer.handle().stats();
    assert_eq!(stats.store_errors, 1);
    assert_eq!(
        count(&events, |e| matches!(e, BudgetEvent::StoreFailed { .. })),
        1
    );
}
