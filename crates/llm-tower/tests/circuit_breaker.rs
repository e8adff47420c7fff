//! CircuitBreakerLayer with paused time: every transition, the half-open
//! probe limit under many concurrent callers, and an outage of the mock
//! provider.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    circuit_breaker::{
        BreakerKey, BreakerState, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, HalfOpen,
        OpenDuration, RateTrip, SlidingWindow, SlowTrip, Transition,
    },
    classify::{Classifier, DefaultClassifier, FailureClass},
    provider::Provider,
    request::{PrepareLayer, ReplayBody, RequestMeta},
    retry::{Backoff, Jitter, RetryConfig, RetryLayer},
};
use llm_tower_mock::{MockServer, Rule};
use proptest::prelude::*;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[path = "support/breaker.rs"]
mod breaker_support;
use breaker_support::{ScriptedProvider as Provider503, key, request};

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::new()
        .consecutive_failures(Some(3))
        .failure_rate(None)
        .open(OpenDuration {
            base: 10 * SEC,
            factor: 2.0,
            cap: 60 * SEC,
            jitter: 0.0,
        })
}

type Log = Arc<
    Mutex<
        Vec<(
            String,
            BreakerState,
            BreakerState,
            &'static str,
            Option<Duration>,
        )>,
    >,
>;

fn layer(config: CircuitBreakerConfig) -> (CircuitBreakerLayer, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let layer = CircuitBreakerLayer::try_from(config)
        .unwrap()
        .on_transition(move |t: &Transition| {
            sink.lock()
                .unwrap()
                .push((t.key.to_string(), t.from, t.to, t.reason, t.open_for));
        });
    (layer, log)
}

/// Calls once and reads the body to its end.
async fn call<S, B>(svc: &mut S, model: &str) -> Result<u16, BoxError>
where
    S: Service<Request<String>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let res = svc.ready().await?.call(request(model)).await?;
    let status = res.status().as_u16();
    res.into_body().collect().await.map_err(Into::into)?;
    Ok(status)
}

fn open_err(e: BoxError) -> CircuitOpen {
    e.downcast_ref::<CircuitOpen>()
        .unwrap_or_else(|| panic!("not CircuitOpen: {e}"))
        .clone()
}

#[tokio::test(start_paused = true)]
async fn closed_open_half_open_closed() {
    let p = Provider503::default();
    let (layer, log) = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    p.set(503);
    for _ in 0..2 {
        assert_eq!(call(&mut svc, "m").await.unwrap(), 503);
    }
    assert_eq!(
        handle.state(&key("m")),
        BreakerState::Closed,
        "two failures are not three"
    );
    assert_eq!(call(&mut svc, "m").await.unwrap(), 503);
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
    // Open: nothing is sent, and the error says when the probe goes.
    let e = open_err(call(&mut svc, "m").await.unwrap_err());
    assert_eq!(
        (e.state(), e.retry_after()),
        (BreakerState::Open, Some(10 * SEC))
    );
    assert_eq!(p.calls(), 3);
    // Another model has its own breaker.
    p.set(200);
    assert_eq!(call(&mut svc, "other").await.unwrap(), 200);
    advance(10 * SEC - MS).await;
    let e = open_err(call(&mut svc, "m").await.unwrap_err());
    assert_eq!(e.retry_after(), Some(MS));
    advance(MS).await;
    // The probe goes through and succeeds: closed again.
    assert_eq!(call(&mut svc, "m").await.unwrap(), 200);
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (
                "m".into(),
                BreakerState::Closed,
                BreakerState::Open,
                "consecutive_failures",
                Some(10 * SEC)
            ),
            (
                "m".into(),
                BreakerState::Open,
                BreakerState::HalfOpen,
                "open_time_over",
                None
            ),
            (
                "m".into(),
                BreakerState::HalfOpen,
                BreakerState::Closed,
                "probes_succeeded",
                None
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_consecutive_count() {
    let p = Provider503::default();
    let (layer, _) = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    for status in [503, 503, 200, 503, 503, 200, 503, 503] {
        p.set(status);
        call(&mut svc, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
    let p = Provider503::default();
    let (layer, log) = layer(config());
    let mut svc = layer.layer(p.service());
    p.set(529);
    for _ in 0..3 {
        call(&mut svc, "m").await.unwrap();
    }
    let mut waits = vec![];
    for _ in 0..4 {
        let e = open_err(call(&mut svc, "m").await.unwrap_err());
        let wait = e.retry_after().unwrap();
        waits.push(wait);
        advance(wait).await;
        // The probe fails.
        assert_eq!(call(&mut svc, "m").await.unwrap(), 529);
    }
    assert_eq!(
        waits,
        [10 * SEC, 20 * SEC, 40 * SEC, 60 * SEC],
        "doubling to the cap"
    );
    let reasons: Vec<_> = log.lock().unwrap().iter().map(|l| l.3).collect();
    assert_eq!(reasons.iter().filter(|r| **r == "probe_failed").count(), 4);
}

#[tokio::test(start_paused = true)]
async fn open_time_jitter_stays_within_its_share() {
    let p = Provider503::default();
    let mut cfg = config();
    cfg.open.jitter = 0.2;
    let (layer, log) = layer(cfg);
    let mut svc = layer.layer(p.service());
    p.set(503);
    for model in 0..50 {
        for _ in 0..3 {
            call(&mut svc, &model.to_string()).await.unwrap();
        }
    }
    let times: Vec<Duration> = log.lock().unwrap().iter().filter_map(|l| l.4).collect();
    assert_eq!(times.len(), 50);
    assert!(
        times.iter().all(|t| *t >= 8 * SEC && *t <= 12 * SEC),
        "{times:?}"
    );
    assert!(times.iter().any(|t| *t != times[0]), "jittered");
}

#[tokio::test(start_paused = true)]
async fn the_failure_rate_trips_once_the_window_holds_enough_calls() {
    let p = Provider503::default();
    let cfg = CircuitBreakerConfig::new()
        .consecutive_failures(None)
        .failure_rate(Some(RateTrip {
            threshold: 0.5,
            min_calls: 10,
            window: SlidingWindow::Calls { calls: 20 },
        }));
    let (layer, log) = layer(cfg);
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    // 5 failures of 9 calls: over half, but too few calls to judge.
    for i in 0..9 {
        p.set(if i % 2 == 0 { 500 } else { 200 });
        call(&mut svc, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
    p.set(500);
    call(&mut svc, "m").await.unwrap();
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
    assert_eq!(log.lock().unwrap()[0].3, "failure_rate");

    // Below the threshold it stays closed whatever the count.
    let (layer, _) = self::layer(CircuitBreakerConfig::new().consecutive_failures(None));
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    for i in 0..200 {
        p.set(if i % 3 == 0 { 503 } else { 200 });
        call(&mut svc, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_failures() {
    let p = Provider503::default();
    let cfg = CircuitBreakerConfig::new()
        .consecutive_failures(None)
        .failure_rate(Some(RateTrip {
            threshold: 0.5,
            min_calls: 4,
            window: SlidingWindow::Time { duration: 10 * SEC },
        }));
    let (layer, _) = layer(cfg);
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    p.set(503);
    for _ in 0..3 {
        call(&mut svc, "m").await.unwrap();
        advance(5 * SEC).await;
    }
    // Never more than two calls in any 10 s: closed.
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
    // At 15 s the failures of 0 s and 5 s have left the window: two more
    // calls make three in it, still under the minimum of four…
    for _ in 0..2 {
        call(&mut svc, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
    // …and one more opens it.
    call(&mut svc, "m").await.unwrap();
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_it_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let slow = service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(3 * SEC).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }
    });
    let cfg = CircuitBreakerConfig::new()
        .consecutive_failures(None)
        .failure_rate(Some(RateTrip {
            threshold: 0.5,
            min_calls: 4,
            window: SlidingWindow::Calls { calls: 10 },
        }))
        .slow_calls(Some(SlowTrip {
            duration: 2 * SEC,
            threshold: 0.75,
        }));
    let (layer, log) = layer(cfg);
    let handle = layer.handle();
    let mut svc = layer.layer(slow);
    for _ in 0..4 {
        call(&mut svc, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
    assert_eq!(log.lock().unwrap()[0].3, "slow_calls");
}

#[tokio::test(start_paused = true)]
async fn bad_requests_auth_errors_and_rate_limits_do_not_trip_it_unless_counted() {
    let p = Provider503::default();
    let (layer, _) = layer(config());
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    for status in [400, 401, 403, 404, 422, 429] {
        p.set(status);
        for _ in 0..5 {
            call(&mut svc, "m").await.unwrap();
        }
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
    let (layer, _) =
        self::layer(config().count(&[FailureClass::RateLimited, FailureClass::ServerError]));
    let handle = layer.handle();
    let mut svc = layer.layer(p.service());
    p.set(429);
    for _ in 0..3 {
        call(&mut svc, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_its_probes_and_needs_their_successes() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let status = Arc::new(AtomicU16::new(503));
    let inner = {
        let (gate, status) = (gate.clone(), status.clone());
        service_fn(move |_req: Request<String>| {
            let (gate, status) = (gate.clone(), status.clone());
            async move {
                let s = status.load(Ordering::SeqCst);
                if s == 200 {
                    gate.acquire().await.unwrap().forget();
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(s)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
            }
        })
    };
    let mut cfg = config();
    cfg.half_open = HalfOpen {
        probes: 2,
        successes: 2,
    };
    let (layer, _) = layer(cfg);
    let handle = layer.handle();
    let svc = layer.layer(inner);
    for _ in 0..3 {
        svc.clone().oneshot(request("m")).await.unwrap();
    }
    status.store(200, Ordering::SeqCst);
    advance(10 * SEC).await;
    let mut probes = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        let mut f = tokio_test::task::spawn(svc.clone().oneshot(request("m")));
        match f.poll() {
            std::task::Poll::Ready(Err(e)) => {
                assert_eq!(open_err(e).state(), BreakerState::HalfOpen);
                refused += 1;
            }
            std::task::Poll::Pending => probes.push(f),
            std::task::Poll::Ready(Ok(_)) => panic!("a probe answered before the gate opened"),
        }
    }
    assert_eq!((probes.len(), refused), (2, 3));
    assert_eq!(handle.state(&key("m")), BreakerState::HalfOpen);
    gate.add_permits(1);
    let first = probes.remove(0).await.unwrap();
    first.into_body().collect().await.unwrap();
    assert_eq!(
        handle.state(&key("m")),
        BreakerState::HalfOpen,
        "one success of two"
    );
    gate.add_permits(1);
    probes
        .remove(0)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn isolate_and_reset_by_hand() {
    let (layer, log) = layer(config());
    let handle = layer.handle();
    let p = Provider503::default();
    let svc = layer.layer(p.service());
    handle.isolate(&key("m"));
    // Isolated: nothing goes through, not even a probe, until reset.
    let e = open_err(svc.clone().oneshot(request("m")).await.unwrap_err());
    assert_eq!((e.state(), e.retry_after()), (BreakerState::Isolated, None));
    advance(3600 * SEC).await;
    assert!(svc.clone().oneshot(request("m")).await.is_err());
    assert_eq!(p.calls(), 0);
    assert_eq!(handle.states(), [(key("m"), BreakerState::Isolated)]);
    handle.reset(&key("m"));
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
    assert!(svc.clone().oneshot(request("m")).await.is_ok());
    let reasons: Vec<_> = log.lock().unwrap().iter().map(|l| l.3).collect();
    assert_eq!(reasons, ["isolated", "reset"]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_place() {
    let p = Provider503::default();
    let (layer, _) = layer(config());
    let handle = layer.handle();
    let hanging = layer.layer(service_fn(|_r: Request<String>| {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    }));
    let mut failing = layer.layer(p.service());
    p.set(503);
    for _ in 0..3 {
        call(&mut failing, "m").await.unwrap();
    }
    advance(10 * SEC).await;
    let mut probe = tokio_test::task::spawn(hanging.clone().oneshot(request("m")));
    assert!(probe.poll().is_pending());
    assert!(
        hanging.clone().oneshot(request("m")).await.is_err(),
        "the one probe is taken"
    );
    drop(probe);
    assert_eq!(handle.state(&key("m")), BreakerState::HalfOpen);
    p.set(200);
    assert_eq!(
        call(&mut failing, "m").await.unwrap(),
        200,
        "the freed place goes to the next caller"
    );
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_counts_as_a_failure() {
    let inner = service_fn(|_r: Request<String>| async {
        let chunks = futures_util::stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"data: {}\n\n"))),
            Err::<http_body::Frame<Bytes>, BoxError>(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))),
        ]);
        Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(chunks)))
    });
    let (layer, _) = layer(config());
    let handle = layer.handle();
    let svc = layer.layer(inner);
    for _ in 0..3 {
        let res = svc.clone().oneshot(request("m")).await.unwrap();
        assert!(res.into_body().collect().await.is_err());
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_ends_retries_at_once() {
    let p = Provider503::default();
    let (breaker, _) = layer(config());
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::try_from(RetryConfig::new().max_attempts(10).backoff(Backoff {
                base: 10 * MS,
                factor: 1.0,
                cap: 10 * MS,
                jitter: Jitter::None,
            }))
            .unwrap(),
        )
        .layer(breaker)
        .service(p.service());
    p.set(503);
    let err = svc.oneshot(request("m")).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
    assert_eq!(
        p.calls(),
        3,
        "three attempts tripped it; the fourth was refused and not retried"
    );
    let f = DefaultClassifier::new().classify_error(&*err);
    assert!(!f.is_retryable() && f.should_fall_back() && !f.counts_against_health());
}

#[tokio::test(start_paused = true)]
async fn without_a_fallback_retry_can_wait_for_the_breakers_probe() {
    let p = Provider503::default();
    let (breaker, _) = layer(config());
    let handle = breaker.handle();
    let trip_layer = breaker.clone();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::try_from(
                RetryConfig::new()
                    .max_attempts(5)
                    .wait_for_breaker(true)
                    .max_server_delay(30 * SEC)
                    .server_delay_jitter(Duration::ZERO),
            )
            .unwrap(),
        )
        .layer(breaker)
        .service(p.service());
    // Trip it without retries: three 503s in a row.
    let mut tripper = trip_layer.layer(p.service());
    p.set(503);
    for _ in 0..3 {
        call(&mut tripper, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
    let sent = p.calls();
    p.set(200);
    let start = Instant::now();
    let res = svc.clone().oneshot(request("m")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        start.elapsed(),
        10 * SEC,
        "waited for the open time, then probed"
    );
    // The probe succeeds once its body has been read.
    res.into_body().collect().await.unwrap();
    assert_eq!(p.calls(), sent + 1, "only the probe reached the provider");
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_slow_probe_costs_no_attempt() {
    // The probe may be slow — a long answer, or a wait in a rate limiter
    // inside the breaker. Meanwhile the breaker refuses other calls
    // (half-open, its probe taken); a call waiting for it keeps its
    // attempts, since none of those refusals reached the provider.
    let p = Provider503::default();
    let (breaker, _) = layer(config());
    let handle = breaker.handle();
    let mut tripper = breaker.layer(p.service());
    p.set(503);
    for _ in 0..3 {
        call(&mut tripper, "m").await.unwrap();
    }
    assert_eq!(handle.state(&key("m")), BreakerState::Open);
    let sent = Arc::new(AtomicUsize::new(0));
    let slow = {
        let sent = sent.clone();
        service_fn(move |_req: Request<String>| {
            sent.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(5 * SEC).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }
        })
    };
    let retry = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(2)
            .wait_for_breaker(true)
            .backoff(Backoff {
                base: 200 * MS,
                factor: 1.0,
                cap: 200 * MS,
                jitter: Jitter::None,
            }),
    )
    .unwrap();
    advance(10 * SEC).await;
    // The probe: through the breaker, 5 s long.
    let probe = tokio::spawn(
        ServiceBuilder::new()
            .layer(retry.clone())
            .layer(breaker.clone())
            .service(slow.clone())
            .oneshot(request("m")),
    );
    tokio::task::yield_now().await;
    assert_eq!(handle.state(&key("m")), BreakerState::HalfOpen);
    let start = Instant::now();
    let waiter = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .service(slow)
        .oneshot(request("m"));
    let (probe, waiter) = tokio::join!(
        async {
            probe
                .await
                .unwrap()
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
        },
        waiter
    );
    drop(probe);
    let res = waiter.expect("refusals while the probe ran are not attempts");
    assert_eq!(res.status(), 200);
    // About 25 refusals at 200 ms, then one attempt of 5 s.
    assert!(start.elapsed() >= 10 * SEC, "{:?}", start.elapsed());
    assert_eq!(
        sent.load(Ordering::SeqCst),
        2,
        "the probe and the waiter's one attempt"
    );
    assert_eq!(handle.state(&key("m")), BreakerState::Closed);
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let cases: Vec<(CircuitBreakerConfig, &str)> = vec![
        (
            CircuitBreakerConfig::new().consecutive_failures(Some(0)),
            "consecutive_failures is 0",
        ),
        (
            CircuitBreakerConfig::new()
                .consecutive_failures(None)
                .failure_rate(None),
            "no trip is set",
        ),
        (
            CircuitBreakerConfig::new().failure_rate(Some(RateTrip {
                threshold: 1.5,
                ..RateTrip::default()
            })),
            "failure_rate.threshold 1.5",
        ),
        (
            CircuitBreakerConfig::new().failure_rate(Some(RateTrip {
                threshold: 0.5,
                min_calls: 30,
                window: SlidingWindow::Calls { calls: 20 },
            })),
            "more than the window holds",
        ),
        (
            CircuitBreakerConfig::new().half_open(HalfOpen {
                probes: 0,
                successes: 1,
            }),
            "half_open.probes is 0",
        ),
        (
            CircuitBreakerConfig {
                count: Some(vec!["meltdown".into()]),
                ..CircuitBreakerConfig::new()
            },
            "unknown failure class `meltdown`",
        ),
    ];
    for (config, message) in cases {
        let err = CircuitBreakerLayer::try_from(config)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{err}");
    }
    let c: CircuitBreakerConfig = serde_json::from_str(
        r#"{"failure_rate":{"threshold":0.4,"min_calls":5,"window":{"duration":"30s"}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.failure_rate.unwrap().window,
        SlidingWindow::Time { duration: 30 * SEC }
    );
    assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"consecutive":3}"#).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn half_open_never_admits_more_concurrent_probes_than_configured(
        probes in 1u32..5,
        callers in 5usize..120,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let in_flight = Arc::new(AtomicUsize::new(0));
            let max = Arc::new(AtomicUsize::new(0));
            let release = Arc::new(tokio::sync::Notify::new());
            let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let inner = {
                let (in_flight, max, release, fail) = (in_flight.clone(), max.clone(), release.clone(), fail.clone());
                service_fn(move |_r: Request<String>| {
                    let (in_flight, max, release, fail) = (in_flight.clone(), max.clone(), release.clone(), fail.clone());
                    async move {
                        if fail.load(Ordering::SeqCst) {
                            return Ok::<_, Infallible>(Response::builder().status(503).body(Full::new(Bytes::new())).unwrap());
                        }
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        release.notified().await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok(Response::new(Full::new(Bytes::new())))
                    }
                })
            };
            let mut cfg = config();
            cfg.open.base = 20 * MS;
            cfg.open.cap = 20 * MS;
            cfg.half_open = HalfOpen { probes, successes: probes };
            let layer = CircuitBreakerLayer::try_from(cfg).unwrap();
            let svc = layer.layer(inner);
            for _ in 0..3 {
                svc.clone().oneshot(request("m")).await.unwrap();
            }
            fail.store(false, Ordering::SeqCst);
            tokio::time::sleep(30 * MS).await;
            let refused = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..callers)
                .map(|_| {
                    let (svc, refused) = (svc.clone(), refused.clone());
                    tokio::spawn(async move {
                        match svc.oneshot(request("m")).await {
                            Err(_) => { refused.fetch_add(1, Ordering::SeqCst); }
                            Ok(res) => { let _ = res.into_body().collect().await; }
                        }
                    })
                })
                .collect();
            // Every caller is either refused or holding a probe.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while refused.load(Ordering::SeqCst) + in_flight.load(Ordering::SeqCst) < callers {
                assert!(std::time::Instant::now() < deadline, "callers stuck");
                tokio::task::yield_now().await;
            }
            assert!(max.load(Ordering::SeqCst) <= probes as usize, "{} probes at once, {probes} allowed", max.load(Ordering::SeqCst));
            assert_eq!(in_flight.load(Ordering::SeqCst), (probes as usize).min(callers));
            while in_flight.load(Ordering::SeqCst) > 0 {
                release.notify_waiters();
                tokio::task::yield_now().await;
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
}

#[tokio::test(start_paused = true)]
async fn the_mocks_outage_opens_it_stops_traffic_and_its_end_closes_it() {
    let mock = MockServer::builder()
        .rule(Rule::outage(2 * SEC..8 * SEC))
        .start()
        .await
        .unwrap();
    let mut cfg = config();
    cfg.open.base = 2 * SEC;
    let (breaker, log) = layer(cfg);
    let handle = breaker.handle();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(breaker)
        .service(client);
    let start = Instant::now();
    let mut outcomes = Vec::new();
    for i in 0..120 {
        // A call every 100 ms for 12 s.
        tokio::time::sleep_until(start + i * 100 * MS).await;
        let body = serde_json::json!({
            "model": "claude-haiku-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": format!("call {i}")}],
        });
        let req = Request::post(format!("{}/v1/messages", mock.url()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .unwrap();
        let out = match svc.clone().oneshot(req).await {
            Ok(res) => {
                let s = res.status().as_u16();
                res.into_body().collect().await.unwrap();
                s
            }
            Err(e) => {
                assert!(e.is::<CircuitOpen>(), "{e}");
                0
            }
        };
        outcomes.push(out);
    }
    let key = BreakerKey::new(Some(Provider::Anthropic), Some("claude-haiku-4-5".into()));
    assert_eq!(
        handle.state(&key),
        BreakerState::Closed,
        "closed again once the provider is back"
    );
    // The breaker opened after exactly three failed calls of the outage.
    let first_529 = outcomes.iter().position(|s| *s == 529).unwrap();
    assert_eq!(first_529, 20, "the outage starts at 2 s");
    assert_eq!(&outcomes[20..24], &[529, 529, 529, 0]);
    // While open nothing reached the provider: only the probes did.
    let journal = mock.journal().entries();
    let during: Vec<_> = journal
        .iter()
        .filter(|e| e.at >= 2 * SEC && e.at < 8 * SEC)
        .collect();
    let probes = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.3 == "open_time_over")
        .count();
    assert_eq!(
        during.len(),
        3 + probes - 1,
        "3 trips calls, then one probe per open period in the outage"
    );
    assert!(
        outcomes[90..].iter().all(|s| *s == 200),
        "after the outage every call succeeds"
    );
    let reasons: Vec<_> = log.lock().unwrap().iter().map(|l| l.3).collect();
    assert_eq!(reasons.first(), Some(&"consecutive_failures"));
    assert_eq!(reasons.last(), Some(&"probes_succeeded"));
}

/// Resident memory of this process, in KiB (Linux; 0 elsewhere).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// A measurement, not a check: the cost of many distinct keys (model names
/// read from requests). `LLM_TOWER_KEYS` sets how many (100 000 by default).
///
/// `cargo test --release -p llm-tower --all-features --test circuit_breaker -- --ignored --nocapture distinct_keys`
#[test]
#[ignore = "a measurement: run it by hand, in release"]
fn distinct_keys_time_and_memory() {
    let n: usize = std::env::var("LLM_TOWER_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let layer = CircuitBreakerLayer::try_from(CircuitBreakerConfig::new()).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|_req: Request<String>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"{}"),
        ))))
    }));
    let names: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("model-{i}"))).collect();
    let endpoint = llm_tower::provider::Endpoint {
        provider: Provider::OpenAi,
        format: llm_tower::provider::WireFormat::OpenAiChat,
    };
    let rss_before = rss_kib();
    let start = std::time::Instant::now();
    for name in &names {
        let mut req = Request::new(String::new());
        req.extensions_mut()
            .insert(RequestMeta::new(Some(endpoint.clone())).with_model(name.clone()));
        let res = rt.block_on(svc.call(req)).unwrap();
        rt.block_on(res.into_body().collect()).unwrap();
    }
    let elapsed = start.elapsed();
    let rss_after = rss_kib();
    println!(
        "{n} distinct keys: {:.3} s in call ({:.0} ns/call), RSS {} KiB -> {} KiB (+{} KiB), breakers kept: {}",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / n as f64,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
        handle.states().len(),
    );
}

fn request_at(provider: Provider, model: &str) -> Request<String> {
    let format = match provider {
        Provider::Anthropic => llm_tower::provider::WireFormat::AnthropicMessages,
        _ => llm_tower::provider::WireFormat::OpenAiChat,
    };
    let mut req = Request::new(String::new());
    req.extensions_mut().insert(
        RequestMeta::new(Some(llm_tower::provider::Endpoint { provider, format }))
            .with_model(model),
    );
    req
}

#[tokio::test(start_paused = true)]
async fn many_distinct_keys_keep_the_map_bounded() {
    let layer = CircuitBreakerLayer::try_from(config().max_keys(100)).unwrap();
    let handle = layer.handle();
    let p = Provider503::default();
    let mut svc = layer.layer(p.service());
    for i in 0..5_000 {
        assert_eq!(call(&mut svc, &format!("model-{i}")).await.unwrap(), 200);
    }
    let kept = handle.states().len();
    assert!(kept <= 100, "{kept} breakers kept");
    assert_eq!(p.calls(), 5_000, "no call refused");
}

#[tokio::test(start_paused = true)]
async fn idle_closed_breakers_are_dropped_and_open_ones_kept() {
    let layer = CircuitBreakerLayer::try_from(config().idle_timeout(60 * SEC)).unwrap();
    let handle = layer.handle();
    let p = Provider503::default();
    let mut svc = layer.layer(p.service());
    p.set(503);
    for _ in 0..3 {
        call(&mut svc, "down").await.unwrap();
    }
    p.set(200);
    for i in 0..10 {
        call(&mut svc, &format!("idle-{i}")).await.unwrap();
    }
    assert_eq!(handle.states().len(), 11);
    // New keys come; the old ones are left alone for over the idle time.
    advance(61 * SEC).await;
    call(&mut svc, "new-1").await.unwrap();
    advance(61 * SEC).await;
    call(&mut svc, "new-2").await.unwrap();
    let states = handle.states();
    assert_eq!(
        states,
        [
            (key("down"), BreakerState::Open),
            (key("new-1"), BreakerState::Closed),
            (key("new-2"), BreakerState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_cap_open_breakers_stay_and_new_keys_share_the_overflow() {
    let layer = CircuitBreakerLayer::try_from(config().max_keys(2)).unwrap();
    let handle = layer.handle();
    let p = Provider503::default();
    let mut svc = layer.layer(p.service());
    p.set(503);
    for model in ["a", "b"] {
        for _ in 0..3 {
            call(&mut svc, model).await.unwrap();
        }
    }
    p.set(200);
    assert_eq!(call(&mut svc, "c").await.unwrap(), 200);
    assert_eq!(call(&mut svc, "d").await.unwrap(), 200);
    assert_eq!(handle.state(&key("a")), BreakerState::Open);
    assert_eq!(handle.state(&key("b")), BreakerState::Open);
    assert!(call(&mut svc, "a").await.is_err(), "still refused");
}

#[tokio::test(start_paused = true)]
async fn isolating_a_model_reaches_every_provider_and_survives_eviction() {
    let (layer, log) = layer(config().idle_timeout(60 * SEC));
    let handle = layer.handle();
    let p = Provider503::default();
    let svc = layer.layer(p.service());
    handle.isolate(&BreakerKey::named("gpt-4o"));
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let e = open_err(
            svc.clone()
                .oneshot(request_at(provider.clone(), "gpt-4o"))
                .await
                .unwrap_err(),
        );
        assert_eq!(e.state(), BreakerState::Isolated);
        let k = BreakerKey::new(Some(provider), Some("gpt-4o".into()));
        assert_eq!(handle.state(&k), BreakerState::Isolated);
    }
    assert!(
        svc.clone()
            .oneshot(request_at(Provider::OpenAi, "gpt-4o-mini"))
            .await
            .is_ok()
    );
    assert_eq!(p.calls(), 1);
    // Idle long enough for every breaker to be dropped…
    for i in 0..3 {
        advance(61 * SEC).await;
        svc.clone()
            .oneshot(request_at(Provider::OpenAi, &format!("other-{i}")))
            .await
            .unwrap();
    }
    assert!(
        !handle
            .states()
            .iter()
            .any(|(k, _)| k.name() == Some("gpt-4o")),
        "evicted: {:?}",
        handle.states()
    );
    // …the isolation holds.
    let e = open_err(
        svc.clone()
            .oneshot(request_at(Provider::OpenAi, "gpt-4o"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.state(), BreakerState::Isolated);
    // A narrower reset leaves the model isolated; the model's reset lifts it.
    let openai = BreakerKey::new(Some(Provider::OpenAi), Some("gpt-4o".into()));
    handle.reset(&openai);
    assert_eq!(handle.state(&openai), BreakerState::Isolated);
    handle.reset(&BreakerKey::named("gpt-4o"));
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        assert!(
            svc.clone()
                .oneshot(request_at(provider, "gpt-4o"))
                .await
                .is_ok()
        );
    }
    let reasons: Vec<_> = log.lock().unwrap().iter().map(|l| l.3).collect();
    assert_eq!(reasons.first(), Some(&"isolated"));
    assert_eq!(reasons.last(), Some(&"reset"));
}

#[test]
fn a_listener_may_reset_the_breaker_without_deadlock() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = CircuitBreakerLayer::try_from(config()).unwrap();
            let handle = layer.handle();
            let steer = handle.clone();
            let seen: Log = Arc::default();
            let sink = seen.clone();
            let layer = layer.on_transition(move |t: &Transition| {
                sink.lock()
                    .unwrap()
                    .push((t.key.to_string(), t.from, t.to, t.reason, t.open_for));
                if t.to == BreakerState::Open {
                    // An operator's policy: never stay open for this key.
                    steer.reset(&t.key);
                    steer.isolate(&BreakerKey::named("other"));
                }
            });
            let p = Provider503::default();
            let mut svc = layer.layer(p.service());
            p.set(503);
            for _ in 0..3 {
                call(&mut svc, "m").await.unwrap();
            }
            assert_eq!(handle.state(&key("m")), BreakerState::Closed);
            let reasons: Vec<_> = seen.lock().unwrap().iter().map(|l| l.3).collect();
            assert_eq!(reasons, ["consecutive_failures", "reset", "isolated"]);
        });
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("a listener steering the breaker deadlocked (or panicked)");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_even_when_the_inner_service_is_not_ready() {
    let layer = CircuitBreakerLayer::try_from(config()).unwrap();
    let handle = layer.handle();
    let (mock, mut upstream) = tower_test::mock::pair::<Request<String>, Response<Full<Bytes>>>();
    upstream.allow(0);
    let mut svc = layer.layer(mock);
    handle.isolate(&key("m"));
    let refused = tokio::time::timeout(SEC, async { svc.ready().await?.call(request("m")).await })
        .await
        .expect("the open breaker waited on the inner service");
    let e = open_err(refused.unwrap_err());
    assert_eq!(e.state(), BreakerState::Isolated);
    // An admitted call waits for the inner service's readiness, then goes.
    let mut svc2 = svc.clone();
    let pending = tokio::spawn(async move {
        let res = svc2.ready().await?.call(request("n")).await?;
        Ok::<_, BoxError>(res.status().as_u16())
    });
    tokio::task::yield_now().await;
    upstream.allow(1);
    let (_req, send) = upstream.next_request().await.unwrap();
    send.send_response(Response::new(Full::new(Bytes::new())));
    assert_eq!(pending.await.unwrap().unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn builder_calls_never_orphan_a_handle() {
    let layer = CircuitBreakerLayer::try_from(config()).unwrap();
    let early = layer.handle();
    let log: Log = Arc::default();
    let sink = log.clone();
    let layer = layer
        .on_transition(move |t: &Transition| {
            sink.lock()
                .unwrap()
                .push((t.key.to_string(), t.from, t.to, t.reason, t.open_for));
        })
        .key_fn(|parts| {
            BreakerKey::named(
                parts
                    .headers
                    .get("x-region")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned(),
            )
        });
    let late = layer.handle();
    let p = Provider503::default();
    let svc = layer.layer(p.service());
    early.isolate(&BreakerKey::named("eu"));
    let mut req = request("m");
    req.headers_mut().insert("x-region", "eu".parse().unwrap());
    let e = open_err(svc.clone().oneshot(req).await.unwrap_err());
    assert_eq!(e.state(), BreakerState::Isolated);
    assert_eq!(late.state(&BreakerKey::named("eu")), BreakerState::Isolated);
    assert_eq!(log.lock().unwrap().len(), 1, "the listener heard it");
    assert_eq!(p.calls(), 0);
}
