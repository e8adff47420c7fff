//! RateLimitLayer over a store that fails, hangs and recovers, with paused
//! time: each `on_store_failure` policy, the per-operation timeout, the
//! events and counters, the probe and the return to the shared store.

mod faulty;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use faulty::{FaultyStore, Mode};
use http::{Request, Response};
use http_body_util::Full;
use llm_tower::{
    BoxError,
    metering::{Outcome, UsageObservers, UsageReport, UsageSource},
    provider::{Endpoint, Provider, WireFormat},
    rate_limit::{Limit, RateLimitConfig, RateLimitEvent, RateLimitLayer, SettleOutput},
    request::RequestMeta,
    store::{OnStoreFailure, StoreError},
    usage::Usage,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

const TIMEOUT: Duration = Duration::from_millis(250);

type Res = Response<Full<Bytes>>;

fn request() -> Request<String> {
    request_of(10)
}

fn request_of(input: u64) -> Request<String> {
    let meta = RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model("gpt-4o")
    .with_estimated_input_tokens(input)
    .with_max_output_tokens(Some(10));
    let mut req = Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(meta);
    req
}

/// A provider answering 200 at once; it reports `usage` to the call's
/// observers, as a meter would, when given one.
fn provider(
    usage: Option<Usage>,
    before: impl Fn() + Clone + Send + Sync + 'static,
) -> impl Service<
    Request<String>,
    Response = Res,
    Error = Infallible,
    Future = std::future::Ready<Result<Res, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(move |mut req: Request<String>| {
        before();
        if let Some(usage) = usage {
            UsageObservers::take(&mut req).notify(&UsageReport::new(
                usage,
                UsageSource::Actual,
                Outcome::Completed,
            ));
        }
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
    })
}

type Events = Arc<Mutex<Vec<RateLimitEvent>>>;

/// `rpm` requests per minute (no headroom) over a faulty store, with
/// `policy`; the events it emits.
fn layer(rpm: u64, policy: OnStoreFailure) -> (RateLimitLayer<FaultyStore>, FaultyStore, Events) {
    let store = FaultyStore::new();
    let config = RateLimitConfig::new()
        .headroom(1.0)
        .limit(Limit::per_minute().requests(rpm))
        .on_store_failure(policy)
        .store_timeout(TIMEOUT)
        .build()
        .unwrap();
    let events = Events::default();
    let seen = events.clone();
    let layer = RateLimitLayer::with_store(config, store.clone())
        .on_event(move |e| seen.lock().unwrap().push(e.clone()));
    (layer, store, events)
}

/// One call through `layer`, bounded so that a hung call fails the test;
/// how long it took.
async fn call(layer: &RateLimitLayer<FaultyStore>) -> (Result<Res, BoxError>, Duration) {
    let mut svc = layer.layer(provider(None, || {}));
    let t0 = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(600), async {
        svc.ready().await.unwrap().call(request()).await
    })
    .await
    .expect("the call hung");
    (res.map(|r| r.map(|b| b.get_ref().clone())), t0.elapsed())
}

fn downs(events: &Events) -> Vec<&'static str> {
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

fn recoveries(events: &Events) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, RateLimitEvent::StoreRecovered { .. }))
        .count()
}

fn store_error(e: &BoxError) -> bool {
    e.downcast_ref::<StoreError>().is_some()
}

#[test]
fn the_default_policy_is_degraded_with_the_whole_limit() {
    let config = RateLimitConfig::default();
    assert_eq!(
        config.on_store_failure,
        OnStoreFailure::Degraded { share: 1.0 }
    );
    assert_eq!(config.store_timeout, TIMEOUT);
    let json = r#"{"on_store_failure": {"degraded": {"share": 0.25}}, "store_timeout": "100ms"}"#;
    let config: llm_tower::config::Valid<RateLimitConfig> = serde_json::from_str(json).unwrap();
    assert_eq!(
        config.on_store_failure,
        OnStoreFailure::Degraded { share: 0.25 }
    );
    let bad = r#"{"on_store_failure": {"degraded": {"share": 1.5}}}"#;
    let err = serde_json::from_str::<llm_tower::config::Valid<RateLimitConfig>>(bad).unwrap_err();
    assert!(err.to_string().contains("on_store_failure"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn fail_closed_fails_the_call_with_the_store_error_then_recovers() {
    let (layer, store, events) = layer(60, OnStoreFailure::FailClosed);
    store.set(Mode::Fail);
    let (res, took) = call(&layer).await;
    assert!(store_error(&res.unwrap_err()));
    assert_eq!(took, Duration::ZERO);
    let stats = layer.handle().stats();
    assert_eq!((stats.store_errors, stats.admitted), (1, 0));
    assert!(stats.store_down);
    assert_eq!(downs(&events), ["fail_closed"]);

    // Until the next probe, calls fail at once without asking the store.
    let ops = store.ops();
    let (res, _) = call(&layer).await;
    assert!(store_error(&res.unwrap_err()));
    assert_eq!(store.ops(), ops, "the store is not tried before the probe");

    store.set(Mode::Ok);
    tokio::time::advance(Duration::from_secs(1)).await;
    let (res, _) = call(&layer).await;
    res.unwrap();
    let stats = layer.handle().stats();
    assert!(!stats.store_down);
    assert_eq!(stats.admitted, 1);
    assert_eq!(recoveries(&events), 1);
    assert_eq!(downs(&events).len(), 1, "one event per outage");
}

#[tokio::test(start_paused = true)]
async fn fail_closed_a_hung_store_fails_the_call_after_the_timeout() {
    let (layer, store, events) = layer(60, OnStoreFailure::FailClosed);
    store.set(Mode::Hang);
    let (res, took) = call(&layer).await;
    let e = res.unwrap_err();
    assert!(store_error(&e));
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(took, TIMEOUT);
    assert_eq!(layer.handle().stats().store_errors, 1);
    assert_eq!(downs(&events), ["fail_closed"]);
}

#[tokio::test(start_paused = true)]
async fn fail_open_lets_calls_through_unlimited_and_counts_them() {
    let (layer, store, events) = layer(1, OnStoreFailure::FailOpen);
    store.set(Mode::Fail);
    // One per minute, five at once: none waits.
    for _ in 0..5 {
        let (res, took) = call(&layer).await;
        res.unwrap();
        assert_eq!(took, Duration::ZERO);
    }
    let stats = layer.handle().stats();
    assert_eq!(
        (stats.admitted, stats.store_fail_open, stats.store_errors),
        (5, 5, 1)
    );
    assert!(stats.store_down);
    assert_eq!(downs(&events), ["fail_open"]);

    // Back to the shared store, and to its limit.
    store.set(Mode::Ok);
    tokio::time::advance(Duration::from_secs(1)).await;
    let (res, took) = call(&layer).await;
    res.unwrap();
    assert_eq!(took, Duration::ZERO);
    let (res, took) = call(&layer).await;
    res.unwrap();
    assert_eq!(took, Duration::from_secs(60), "the shared limit again");
    let stats = layer.handle().stats();
    assert_eq!(stats.store_fail_open, 5);
    assert!(!stats.store_down);
    assert_eq!(recoveries(&events), 1);
}

#[tokio::test(start_paused = true)]
async fn fail_open_a_hung_store_costs_one_call_the_timeout_and_the_next_nothing() {
    let (layer, store, events) = layer(1, OnStoreFailure::FailOpen);
    store.set(Mode::Hang);
    let (res, took) = call(&layer).await;
    res.unwrap();
    assert_eq!(took, TIMEOUT);
    // Not probed again within the second: no wait at all.
    let (res, took) = call(&layer).await;
    res.unwrap();
    assert_eq!(took, Duration::ZERO);
    let stats = layer.handle().stats();
    assert_eq!((stats.store_fail_open, stats.store_errors), (2, 1));
    assert_eq!(downs(&events), ["fail_open"]);
}

#[tokio::test(start_paused = true)]
async fn degraded_paces_calls_under_a_share_of_the_limit_in_a_private_store() {
    // Four a minute, half of it while the store fails: two a minute here.
    let (layer, store, events) = layer(4, OnStoreFailure::Degraded { share: 0.5 });
    store.set(Mode::Fail);
    let mut took = Vec::new();
    for _ in 0..3 {
        let (res, t) = call(&layer).await;
        res.unwrap();
        took.push(t);
    }
    assert_eq!(
        took,
        [Duration::ZERO, Duration::ZERO, Duration::from_secs(30)],
        "a burst of two, then one every 30 s"
    );
    let stats = layer.handle().stats();
    assert_eq!((stats.admitted, stats.store_degraded), (3, 3));
    assert!(stats.store_down);
    assert_eq!(downs(&events), ["degraded"]);
    let shared_before = store.ops();
    assert!(shared_before >= 1);

    // The store answers again: the next call is paced by the shared cells,
    // which the degraded calls never touched (four at once).
    store.set(Mode::Ok);
    for _ in 0..4 {
        let (res, t) = call(&layer).await;
        res.unwrap();
        assert_eq!(t, Duration::ZERO);
    }
    let stats = layer.handle().stats();
    assert_eq!((stats.admitted, stats.store_degraded), (7, 3));
    assert!(!stats.store_down);
    assert_eq!(recoveries(&events), 1);
    assert!(
        store.ops() >= shared_before + 4,
        "the shared store is used again"
    );
}

#[tokio::test(start_paused = true)]
async fn degraded_a_hung_store_costs_one_call_the_timeout_then_the_share_applies() {
    let (layer, store, events) = layer(2, OnStoreFailure::Degraded { share: 0.5 });
    store.set(Mode::Hang);
    let (res, took) = call(&layer).await;
    res.unwrap();
    assert_eq!(took, TIMEOUT);
    // One a minute here: the next waits its turn in the private store.
    let (res, took) = call(&layer).await;
    res.unwrap();
    assert_eq!(took, Duration::from_secs(60));
    let stats = layer.handle().stats();
    assert_eq!((stats.store_degraded, stats.store_errors), (2, 1));
    assert_eq!(downs(&events), ["degraded"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_is_probed_at_most_once_a_second() {
    let (layer, store, _events) = layer(60, OnStoreFailure::FailOpen);
    store.set(Mode::Fail);
    let before = store.ops();
    for _ in 0..10 {
        call(&layer).await.0.unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
    }
    // Calls at 0, 0.3 … 2.7 s: tries at 0, 1.2 and 2.4 s.
    assert_eq!(store.ops() - before, 3);
    assert_eq!(layer.handle().stats().store_errors, 3);
}

#[tokio::test(start_paused = true)]
async fn a_settlement_that_fails_fails_nothing_and_is_counted() {
    let store = FaultyStore::new();
    let config = RateLimitConfig::new()
        .headroom(1.0)
        .limit(Limit::per_minute().tokens(10_000))
        .settle_output(SettleOutput::Actual)
        .on_store_failure(OnStoreFailure::FailClosed)
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_store(config, store.clone());
    // The store fails once the call is admitted: the refund of unused
    // tokens fails.
    let failing = store.clone();
    let mut svc = layer.layer(provider(Some(Usage::new(5, 5)), move || {
        failing.set(Mode::Fail)
    }));
    let res = svc.ready().await.unwrap().call(request_of(1_000)).await;
    res.unwrap();
    let stats = layer.handle().stats();
    assert_eq!((stats.admitted, stats.settled), (1, 1));
    assert_eq!(stats.store_errors, 1, "the failed refund is counted");
}
