//! RateLimitLayer alone, with paused time: pacing, the queue and its
//! bounds, settlement exactly once, adaptation to the provider's headers,
//! the 429 pause, concurrency and priorities.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use llm_tower::{
    BoxError,
    deadline::Deadline,
    metering::{Outcome, UsageObservers, UsageReport, UsageSource},
    provider::{Endpoint, Provider, WireFormat},
    rate_limit::{
        Limit, Priority, RateLimitConfig, RateLimitEvent, RateLimitKey, RateLimitLayer,
        RateLimited, RefusalReason, RequestTooLarge, Scope,
    },
    request::RequestMeta,
    store::MemoryStore,
    usage::Usage,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

const SEC: Duration = Duration::from_secs(1);

fn meta(model: &str, input: u64, cap: Option<u64>) -> RequestMeta {
    RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model(model)
    .with_estimated_input_tokens(input)
    .with_max_output_tokens(cap)
}

fn request(m: RequestMeta) -> Request<String> {
    let mut req = Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-test")
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(m);
    req
}

fn plain() -> Request<String> {
    request(meta("gpt-4o", 10, Some(10)))
}

type Res = Response<Full<Bytes>>;

type Answer = std::future::Ready<Result<Res, Infallible>>;

/// A provider that answers every request with `answer`, at once.
fn provider(
    answer: impl Fn(Request<String>) -> Res + Clone + Send + 'static,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future = Answer>
+ Clone
+ Send
+ 'static {
    service_fn(move |req| std::future::ready(Ok(answer(req))))
}

/// A provider that answers 200 at once, counting calls.
fn ok_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future = Answer>
+ Clone
+ Send
+ 'static {
    provider(move |_req| {
        calls.fetch_add(1, Ordering::SeqCst);
        Response::new(Full::new(Bytes::from_static(b"{}")))
    })
}

fn layer(config: RateLimitConfig) -> RateLimitLayer {
    RateLimitLayer::new(config.build().unwrap())
}

fn rpm(n: u64) -> RateLimitConfig {
    RateLimitConfig::new()
        .headroom(1.0)
        .limit(Limit::per_minute().requests(n))
}

fn find<E: std::error::Error + 'static>(e: &BoxError) -> Option<&E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&**e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

#[tokio::test(start_paused = true)]
async fn calls_over_the_limit_wait_their_turn_in_order() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(60));
    let t0 = Instant::now();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..65 {
        let svc = layer.layer(ok_service(calls.clone()));
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(plain()).await.unwrap();
            order.lock().unwrap().push((i, t0.elapsed()));
            drop(res);
        }));
        // Arrivals in a known order.
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(calls.load(Ordering::SeqCst), 65);
    // A burst of the whole limit, then one per second, first come first
    // served.
    for &(i, at) in &order {
        let expected = if i < 60 {
            Duration::ZERO
        } else {
            SEC * (i - 59)
        };
        assert_eq!(at, expected, "call {i}");
    }
    let stats = layer.handle().stats();
    assert_eq!((stats.admitted, stats.queued, stats.refused), (65, 5, 0));
    assert_eq!(stats.waited, SEC * (1 + 2 + 3 + 4 + 5));
}

#[tokio::test(start_paused = true)]
async fn a_turn_past_max_wait_is_refused_at_once_and_takes_nothing() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(60).max_wait(3 * SEC));
    let mut svc = layer.layer(ok_service(calls.clone()));
    for _ in 0..60 {
        svc.ready().await.unwrap().call(plain()).await.unwrap();
    }
    let t0 = Instant::now();
    // Turns at 1 s, 2 s, 3 s: fine.
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(layer.layer(ok_service(calls.clone())).oneshot(plain())))
        .collect();
    tokio::task::yield_now().await;
    // The fourth would go at 4 s: refused now, with its turn.
    let e = svc.ready().await.unwrap().call(plain()).await.unwrap_err();
    let limited = find::<RateLimited>(&e).expect("RateLimited");
    assert_eq!(limited.retry_after(), Some(4 * SEC));
    assert_eq!(limited.reason(), RefusalReason::MaxWait);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    // It took nothing: the next call's turn is the one it would have had.
    assert_eq!(t0.elapsed(), 3 * SEC);
    let t1 = Instant::now();
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    assert_eq!(t1.elapsed(), SEC);
    assert_eq!(calls.load(Ordering::SeqCst), 64);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_wait() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(1));
    let mut svc = layer.layer(ok_service(calls.clone()));
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    let mut req = plain();
    Deadline::shrink(&mut req, Instant::now() + 10 * SEC);
    let e = svc.ready().await.unwrap().call(req).await.unwrap_err();
    let limited = find::<RateLimited>(&e).unwrap();
    assert_eq!(limited.reason(), RefusalReason::Deadline);
    assert_eq!(limited.retry_after(), Some(60 * SEC));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_larger_than_the_limit_is_refused_clearly() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(
        RateLimitConfig::new()
            .headroom(1.0)
            .limit(Limit::per_minute().requests(100).tokens(1_000)),
    );
    let mut svc = layer.layer(ok_service(calls.clone()));
    let e = svc
        .ready()
        .await
        .unwrap()
        .call(request(meta("gpt-4o", 900, Some(500))))
        .await
        .unwrap_err();
    let big = find::<RequestTooLarge>(&e).expect("RequestTooLarge");
    assert_eq!(
        (big.dimension(), big.amount(), big.limit()),
        ("tokens", 1_400, 1_000)
    );
    assert!(e.to_string().contains("max_tokens"), "{e}");
    // Nothing was taken from the request limit either.
    let key = "openai:gpt-4o:";
    let state = layer.handle().key_state(&state_key(key)).await.unwrap();
    assert!(
        state.limits.iter().all(|l| l.available == l.limit),
        "{state:?}"
    );
    // A missing cap never refuses: the default output is cut to fit.
    svc.ready()
        .await
        .unwrap()
        .call(request(meta("gpt-4o", 900, None)))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The default key of `plain()`'s requests: provider, model, key hash.
fn state_key(prefix: &str) -> String {
    // The hash of "Bearer sk-test" (FNV-1a), as the layer computes it.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in b"Bearer sk-test" {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}{h:016x}")
}

/// A provider that reports usage to the request's observers as the meter
/// would, and counts how often.
fn metered_service(
    usage: Usage,
    reports: Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future = Answer>
+ Clone
+ Send
+ 'static {
    provider(move |mut req| {
        let observers = UsageObservers::take(&mut req);
        reports.fetch_add(1, Ordering::SeqCst);
        observers.notify(&UsageReport::new(
            usage,
            UsageSource::Actual,
            Outcome::Completed,
        ));
        Response::new(Full::new(Bytes::from_static(b"{}")))
    })
}

#[tokio::test(start_paused = true)]
async fn settlement_gives_back_unused_tokens_exactly_once() {
    let config = RateLimitConfig::new()
        .headroom(1.0)
        .limit(Limit::per_minute().tokens(10_000))
        .settle_output(llm_tower::rate_limit::SettleOutput::Actual);
    let layer = layer(config);
    let reports = Arc::new(AtomicUsize::new(0));
    let settled = Arc::new(AtomicUsize::new(0));
    let s = settled.clone();
    let layer = layer.on_event(move |e| {
        if matches!(e, RateLimitEvent::Settled { .. }) {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Reserved 1,000 + 4,000; used 800 + 200.
    let mut svc = layer.layer(metered_service(Usage::new(800, 200), reports.clone()));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request(meta("gpt-4o", 1_000, Some(4_000))))
        .await
        .unwrap();
    let key = state_key("openai:gpt-4o:");
    let state = layer.handle().key_state(&key).await.unwrap();
    assert_eq!(state.limits[0].available, 9_000, "{state:?}");
    // The body's end settles nothing more.
    drop(res.into_body().collect().await.unwrap());
    let state = layer.handle().key_state(&key).await.unwrap();
    assert_eq!(state.limits[0].available, 9_000);
    assert_eq!(settled.load(Ordering::SeqCst), 1);
    assert_eq!(layer.handle().stats().settled, 1);
}

#[tokio::test(start_paused = true)]
async fn usage_above_the_estimate_is_taken_and_openai_keeps_its_cap() {
    let layer = layer(
        RateLimitConfig::new()
            .headroom(1.0)
            .limit(Limit::per_minute().tokens(10_000)),
    );
    let reports = Arc::new(AtomicUsize::new(0));
    // OpenAI (Auto): the cap of 1,000 stays counted though 100 were used;
    // input came in above the estimate (1,500 for 1,000).
    let mut svc = layer.layer(metered_service(Usage::new(1_500, 100), reports));
    svc.ready()
        .await
        .unwrap()
        .call(request(meta("gpt-4o", 1_000, Some(1_000))))
        .await
        .unwrap();
    let state = layer
        .handle()
        .key_state(&state_key("openai:gpt-4o:"))
        .await
        .unwrap();
    assert_eq!(state.limits[0].available, 10_000 - 1_500 - 1_000);
}

#[tokio::test(start_paused = true)]
async fn without_a_meter_a_call_keeps_what_it_reserved() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(
        RateLimitConfig::new()
            .headroom(1.0)
            .limit(Limit::per_minute().tokens(10_000)),
    );
    let mut svc = layer.layer(ok_service(calls));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request(meta("gpt-4o", 1_000, Some(500))))
        .await
        .unwrap();
    drop(res);
    let state = layer
        .handle()
        .key_state(&state_key("openai:gpt-4o:"))
        .await
        .unwrap();
    assert_eq!(state.limits[0].available, 8_500);
    assert_eq!(layer.handle().stats().settled, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaves_no_trace() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(60));
    let mut svc = layer.layer(ok_service(calls.clone()));
    for _ in 0..60 {
        svc.ready().await.unwrap().call(plain()).await.unwrap();
    }
    let waiter = tokio::spawn(layer.layer(ok_service(calls.clone())).oneshot(plain()));
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().stats().waiting, 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(layer.handle().stats().waiting, 0);
    // Its turn (1 s) is free again: the next caller takes it.
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    assert_eq!(t0.elapsed(), SEC);
    assert_eq!(calls.load(Ordering::SeqCst), 61);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(1).max_queued(2).max_wait(300 * SEC));
    let mut svc = layer.layer(ok_service(calls.clone()));
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(layer.layer(ok_service(calls.clone())).oneshot(plain())))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().stats().waiting, 2);
    let e = svc.ready().await.unwrap().call(plain()).await.unwrap_err();
    assert_eq!(
        find::<RateLimited>(&e).unwrap().reason(),
        RefusalReason::QueueFull
    );
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

fn headers_service(
    status: StatusCode,
    headers: &'static [(&'static str, &'static str)],
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<String>, Response = Res, Error = Infallible, Future = Answer>
+ Clone
+ Send
+ 'static {
    provider(move |_req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
        *res.status_mut() = status;
        for (k, v) in headers {
            res.headers_mut().insert(*k, v.parse().unwrap());
        }
        res
    })
}

#[tokio::test(start_paused = true)]
async fn headers_that_say_fewer_remain_slow_the_layer_down_and_limits_are_learned() {
    let calls = Arc::new(AtomicUsize::new(0));
    // No limit configured: learned from the headers.
    let layer = layer(RateLimitConfig::new());
    let mut svc = layer.layer(headers_service(
        StatusCode::OK,
        &[
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "10"),
            ("x-ratelimit-reset-requests", "54s"),
        ],
        calls.clone(),
    ));
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    let key = state_key("openai:gpt-4o:");
    let state = layer.handle().key_state(&key).await.unwrap();
    // Learned 100/min, 90 with the headroom; the provider has 10 left,
    // which is inside the headroom: none left for us.
    assert_eq!(state.limits.len(), 1);
    assert_eq!((state.limits[0].limit, state.limits[0].available), (90, 0));
    assert_eq!(layer.handle().stats().adapted, 1);
    // The next call waits for the refill instead of meeting a 429.
    let t0 = Instant::now();
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
}

/// Three calls of the key made after a 429; their start times.
async fn starts_after_429(layer: &RateLimitLayer, calls: &Arc<AtomicUsize>) -> Vec<Duration> {
    let t0 = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let svc = layer.layer(ok_service(calls.clone()));
            let starts = starts.clone();
            tokio::spawn(async move {
                svc.oneshot(plain()).await.unwrap();
                starts.lock().unwrap().push(t0.elapsed());
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    starts
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_the_key_for_every_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(600));
    // A 429 that says which limit is spent.
    let mut limited = layer.layer(headers_service(
        StatusCode::TOO_MANY_REQUESTS,
        &[
            ("retry-after", "5"),
            ("x-ratelimit-limit-requests", "600"),
            ("x-ratelimit-remaining-requests", "0"),
        ],
        calls.clone(),
    ));
    let res = limited.ready().await.unwrap().call(plain()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(layer.handle().stats().provider_429, 1);
    let key = state_key("openai:gpt-4o:");
    assert_eq!(
        layer.handle().key_state(&key).await.unwrap().paused_for,
        Some(5 * SEC)
    );
    // Other callers of the same key wait for the pause, then resume one
    // per interval of the spent limit, not in a burst.
    let t = Duration::from_millis(100);
    assert_eq!(
        starts_after_429(&layer, &calls).await,
        vec![5 * SEC, 5 * SEC + t, 5 * SEC + 2 * t]
    );
    // Another key is not paused.
    let mut other = layer.layer(ok_service(calls.clone()));
    let t1 = Instant::now();
    other
        .ready()
        .await
        .unwrap()
        .call(request(meta("gpt-4o-mini", 1, Some(1))))
        .await
        .unwrap();
    assert_eq!(t1.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_429_that_names_no_spent_limit_pauses_but_empties_nothing() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(600));
    let mut limited = layer.layer(headers_service(
        StatusCode::TOO_MANY_REQUESTS,
        &[
            ("retry-after", "5"),
            // The requests limit has room: the 429 was about something else.
            ("x-ratelimit-limit-requests", "600"),
            ("x-ratelimit-remaining-requests", "599"),
        ],
        calls.clone(),
    ));
    limited.ready().await.unwrap().call(plain()).await.unwrap();
    // Everyone waits for the pause; then the burst the limit holds is there.
    assert_eq!(starts_after_429(&layer, &calls).await, vec![5 * SEC; 3]);
}

#[tokio::test(start_paused = true)]
async fn a_429_pause_is_shared_by_layers_over_one_store() {
    // Two layers over one store and prefix: two processes over one Redis.
    // No limit of their own: only the pause can hold a call back.
    let store = MemoryStore::new();
    let shared =
        || RateLimitLayer::with_store(RateLimitConfig::new().build().unwrap(), store.clone());
    let (a, b) = (shared(), shared());
    let calls = Arc::new(AtomicUsize::new(0));
    let limited = a.layer(headers_service(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "5")],
        calls.clone(),
    ));
    let res = limited.oneshot(plain()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let key = state_key("openai:gpt-4o:");
    assert_eq!(
        b.handle().key_state(&key).await.unwrap().paused_for,
        Some(5 * SEC)
    );

    // B never met the 429, yet its next call of the key waits the pause out.
    let t0 = Instant::now();
    b.layer(ok_service(calls.clone()))
        .oneshot(plain())
        .await
        .unwrap();
    assert_eq!(t0.elapsed(), 5 * SEC);
    assert_eq!(b.handle().stats().provider_429, 0);

    // A layer over a store of its own is not paused.
    let t1 = Instant::now();
    layer(RateLimitConfig::new())
        .layer(ok_service(calls.clone()))
        .oneshot(plain())
        .await
        .unwrap();
    assert_eq!(t1.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limits_calls_in_flight() {
    let layer = layer(RateLimitConfig::new().limit(Limit::at(Scope::Global).concurrency(2)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let svc = {
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        service_fn(move |_req: Request<String>| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(SEC).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }
        })
    };
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let svc = layer.layer(svc.clone());
            tokio::spawn(async move { drop(svc.oneshot(plain()).await.unwrap()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(t0.elapsed(), 3 * SEC);
}

#[tokio::test(start_paused = true)]
async fn batch_calls_leave_room_for_interactive_ones() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(10).batch_share(0.5));
    let batch = || {
        let mut r = plain();
        r.extensions_mut().insert(Priority::Batch);
        r
    };
    let mut svc = layer.layer(ok_service(calls.clone()));
    // Batch calls get half the burst at once…
    for _ in 0..5 {
        let t0 = Instant::now();
        svc.ready().await.unwrap().call(batch()).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
    let t0 = Instant::now();
    let queued: Vec<_> = (0..3)
        .map(|_| {
            let svc = layer.layer(ok_service(calls.clone()));
            tokio::spawn(async move {
                svc.oneshot(batch()).await.unwrap();
                t0.elapsed()
            })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().stats().waiting, 3);
    // …and interactive calls, arriving later, still go at once: the batch
    // calls waiting took no place ahead of them.
    for _ in 0..5 {
        let t1 = Instant::now();
        svc.ready().await.unwrap().call(plain()).await.unwrap();
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }
    // The bucket is empty: the batch calls go when their share has
    // refilled (half the bucket, 5 units at 6 s each), one per interval.
    let mut at: Vec<Duration> = Vec::new();
    for q in queued {
        at.push(q.await.unwrap());
    }
    at.sort();
    assert_eq!(at, vec![36 * SEC, 42 * SEC, 48 * SEC]);
    assert_eq!(calls.load(Ordering::SeqCst), 13);
}

#[tokio::test(start_paused = true)]
async fn limits_are_taken_all_or_nothing_across_scopes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(
        RateLimitConfig::new()
            .headroom(1.0)
            .max_wait(Duration::ZERO)
            .limit(Limit::per_minute().requests(2))
            .limit(Limit::at(Scope::Global).requests(3)),
    );
    let mut svc = layer.layer(ok_service(calls.clone()));
    for _ in 0..2 {
        svc.ready().await.unwrap().call(plain()).await.unwrap();
    }
    // The key is full: refused, and the global limit keeps its last unit.
    assert!(svc.ready().await.unwrap().call(plain()).await.is_err());
    svc.ready()
        .await
        .unwrap()
        .call(request(meta("other", 1, Some(1))))
        .await
        .unwrap();
    // Now the global limit is full for every key.
    let e = svc
        .ready()
        .await
        .unwrap()
        .call(request(meta("third", 1, Some(1))))
        .await
        .unwrap_err();
    assert!(find::<RateLimited>(&e).is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_key_from_the_request_extensions() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(1).max_wait(Duration::ZERO));
    let mut svc = layer.layer(ok_service(calls.clone()));
    let tenant = |name: &'static str| {
        let mut r = plain();
        r.extensions_mut().insert(RateLimitKey::new(name));
        r
    };
    svc.ready().await.unwrap().call(tenant("a")).await.unwrap();
    svc.ready().await.unwrap().call(tenant("b")).await.unwrap();
    assert!(svc.ready().await.unwrap().call(tenant("a")).await.is_err());
    let state = layer.handle().key_state("a").await.unwrap();
    assert_eq!(state.limits[0].available, 0);
}

#[tokio::test(start_paused = true)]
async fn refusals_are_classified_not_retried_not_a_provider_failure() {
    use llm_tower::classify::{Classifier, DefaultClassifier, FailureClass};
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(rpm(1).max_wait(Duration::ZERO));
    let mut svc = layer.layer(ok_service(calls));
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    let e = svc.ready().await.unwrap().call(plain()).await.unwrap_err();
    let f = DefaultClassifier::new().classify_error(&*e);
    assert_eq!(f.class(), FailureClass::RateLimited);
    assert_eq!(f.code(), Some("local_rate_limit"));
    assert!(!f.is_retryable() && !f.counts_against_health() && f.should_fall_back());
    assert_eq!(f.retry_after(), Some(60 * SEC));
    let layer = self::layer(RateLimitConfig::new().limit(Limit::per_minute().tokens(100)));
    let mut svc = layer.layer(ok_service(Arc::new(AtomicUsize::new(0))));
    let e = svc
        .ready()
        .await
        .unwrap()
        .call(request(meta("big", 1, Some(1_000))))
        .await
        .unwrap_err();
    let f = DefaultClassifier::new().classify_error(&*e);
    assert_eq!(f.class(), FailureClass::BadRequest);
    assert_eq!(f.code(), Some("request_too_large"));
    assert!(!f.is_retryable() && f.should_fall_back());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_never_overshoot() {
    // An hour's window: nothing refills while the test runs.
    let hour = Duration::from_secs(3600);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(
        RateLimitConfig::new()
            .headroom(1.0)
            .max_wait(Duration::ZERO)
            .limit(Limit::per_minute().window(hour).requests(100).tokens(5_000))
            .limit(Limit::at(Scope::Global).window(hour).requests(150)),
    );
    let tokens_in = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let svc = layer.layer(ok_service(calls.clone()));
            let tokens_in = tokens_in.clone();
            // Two keys: each may pass 100 requests and 5,000 tokens, both
            // together 150 requests.
            let model = if i % 2 == 0 { "a" } else { "b" };
            let input = 10 + i % 41;
            tokio::spawn(async move {
                let res = svc.oneshot(request(meta(model, input, Some(10)))).await;
                if res.is_ok() {
                    tokens_in.fetch_add((input + 10) as usize, Ordering::SeqCst);
                }
                res.is_ok()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, calls.load(Ordering::SeqCst));
    assert!(admitted <= 150, "{admitted}");
    // Each key's tokens stayed under its limit: at most 2 × 5,000 in all.
    assert!(tokens_in.load(Ordering::SeqCst) <= 10_000);
    // Every refusal took nothing: what the cells hold adds up exactly.
    let stats = layer.handle().stats();
    assert_eq!(stats.admitted as usize, admitted);
    assert_eq!(stats.refused as usize, 1_000 - admitted);
    let mut used_requests = 0;
    for model in ["a", "b"] {
        let state = layer
            .handle()
            .key_state(&state_key(&format!("openai:{model}:")))
            .await
            .unwrap();
        let req = state
            .limits
            .iter()
            .find(|l| l.dimension == "requests")
            .unwrap();
        used_requests += req.limit - req.available;
    }
    assert_eq!(used_requests as usize, admitted);
    // The global limit filled up exactly, or one key's tokens did.
    assert!(admitted == 150 || tokens_in.load(Ordering::SeqCst) > 5_000);
}

#[tokio::test(start_paused = true)]
async fn anthropic_input_and_output_limits_are_learned_apart() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(RateLimitConfig::new().headroom(1.0));
    let mut svc = layer.layer(headers_service(
        StatusCode::OK,
        &[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-input-tokens-limit", "30000"),
            ("anthropic-ratelimit-input-tokens-remaining", "29000"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            // The most restrictive of the two: not a limit on their sum.
            ("anthropic-ratelimit-tokens-limit", "8000"),
            ("anthropic-ratelimit-tokens-remaining", "8000"),
        ],
        calls,
    ));
    svc.ready().await.unwrap().call(plain()).await.unwrap();
    let state = layer
        .handle()
        .key_state(&state_key("openai:gpt-4o:"))
        .await
        .unwrap();
    let mut got: Vec<_> = state
        .limits
        .iter()
        .map(|l| (l.dimension, l.limit, l.available))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("input_tokens", 30_000, 29_000),
            ("output_tokens", 8_000, 8_000),
            ("requests", 50, 49),
        ]
    );
}
