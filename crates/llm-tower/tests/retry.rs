//! RetryLayer with paused time: what is retried, when, how often, and what
//! the caller gets; against scripted services and the mock provider.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    classify::{Classifier, DefaultClassifier, FailureClass},
    deadline::Deadline,
    metering::MeterLayer,
    request::{PrepareLayer, ReplayBody, RequestMeta},
    retry::{
        Backoff, BudgetConfig, ContentChecks, Decision, GiveUp, Hold, Jitter, RetryConfig,
        RetryEvent, RetryLayer, StreamInterrupted,
    },
    timeout::{TimeoutConfig, TimeoutLayer},
};
use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn fixed(base: Duration) -> Backoff {
    Backoff {
        base,
        factor: 2.0,
        cap: 8 * SEC,
        jitter: Jitter::None,
    }
}

fn request(stream: bool) -> Request<String> {
    let mut req = Request::post("http://llm.test/v1/chat/completions")
        .body(r#"{"model":"gpt-4o"}"#.to_owned())
        .unwrap();
    req.extensions_mut().insert(
        RequestMeta::new(None)
            .with_model("gpt-4o")
            .with_stream(stream),
    );
    req
}

fn json(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

const OK: &str = r#"{"choices":[{"message":{"role":"assistant","content":"fine"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
const RATE_LIMITED: &str = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

type Answer = Result<Response<Full<Bytes>>, Infallible>;

/// A service answering from a script, recording when each attempt came.
#[derive(Clone)]
struct Script {
    answers: Arc<Mutex<Vec<Response<Full<Bytes>>>>>,
    arrivals: Arc<Mutex<Vec<(Instant, http::HeaderMap)>>>,
}

impl Script {
    fn new(mut answers: Vec<Response<Full<Bytes>>>) -> Self {
        answers.reverse();
        Script {
            answers: Arc::new(Mutex::new(answers)),
            arrivals: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = std::future::Ready<Answer>,
    > + Clone {
        let this = self.clone();
        service_fn(move |req: Request<String>| {
            this.arrivals
                .lock()
                .unwrap()
                .push((Instant::now(), req.headers().clone()));
            let next = this.answers.lock().unwrap().pop().expect("an answer left");
            std::future::ready(Ok(next))
        })
    }

    fn gaps(&self) -> Vec<Duration> {
        let a = self.arrivals.lock().unwrap();
        a.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }

    fn attempts(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
}

async fn body_text<B>(res: Response<B>) -> Result<String, BoxError>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    let b = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(b.to_vec()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_and_milliseconds_are_honoured_to_the_millisecond() {
    let script = Script::new(vec![
        json(429, &[("retry-after", "2")], RATE_LIMITED),
        json(
            429,
            &[("retry-after-ms", "1500"), ("retry-after", "2")],
            RATE_LIMITED,
        ),
        json(200, &[], OK),
    ]);
    let layer = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(3)
            .backoff(fixed(SEC))
            .server_delay_jitter(Duration::ZERO),
    )
    .unwrap();
    let res = layer
        .layer(script.service())
        .oneshot(request(false))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(body_text(res).await.unwrap(), OK);
    assert_eq!(script.gaps(), [2 * SEC, 1500 * MS]);
}

#[tokio::test(start_paused = true)]
async fn a_zero_server_delay_waits_the_floor_plus_jitter() {
    let config = RetryConfig::new();
    let (floor, jitter) = (config.server_delay_floor, config.server_delay_jitter);
    assert!(floor >= 50 * MS && !jitter.is_zero(), "on by default");
    let layer = RetryLayer::try_from(config).unwrap();
    let past = "Sun, 06 Nov 1994 08:49:37 GMT";
    let mut gaps = Vec::new();
    for i in 0..20 {
        let retry_after = if i % 2 == 0 { "0" } else { past };
        let script = Script::new(vec![
            json(429, &[("retry-after", retry_after)], RATE_LIMITED),
            json(200, &[], OK),
        ]);
        let res = layer
            .layer(script.service())
            .oneshot(request(false))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        gaps.extend(script.gaps());
    }
    for g in &gaps {
        assert!(
            *g >= floor && *g <= floor + jitter,
            "{g:?} is not within [{floor:?}, {:?}]",
            floor + jitter
        );
    }
    let mut distinct = gaps.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 1, "every caller woke at once: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn jitter_never_shortens_a_server_delay() {
    for _ in 0..20 {
        let script = Script::new(vec![
            json(429, &[("retry-after-ms", "1500")], RATE_LIMITED),
            json(200, &[], OK),
        ]);
        RetryLayer::try_from(RetryConfig::new())
            .unwrap()
            .layer(script.service())
            .oneshot(request(false))
            .await
            .unwrap();
        let g = script.gaps()[0];
        assert!(g >= 1500 * MS && g <= 1600 * MS, "{g:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_beyond_the_deadline_returns_at_once() {
    let script = Script::new(vec![json(
        429,
        &[("retry-after", "5"), ("x-request-id", "req_1")],
        RATE_LIMITED,
    )]);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = RetryLayer::try_from(RetryConfig::new().server_delay_jitter(Duration::ZERO))
        .unwrap()
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let mut req = request(false);
    Deadline::shrink(&mut req, Instant::now() + 3 * SEC);
    let start = Instant::now();
    let res = layer.layer(script.service()).oneshot(req).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(script.attempts(), 1);
    // The provider's own answer, intact.
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-request-id"], "req_1");
    assert_eq!(body_text(res).await.unwrap(), RATE_LIMITED);
    let e = events.lock().unwrap();
    assert_eq!(
        e[0].decision,
        Decision::GiveUp(GiveUp::DeadlineTooClose(5 * SEC))
    );
    assert_eq!(e[0].class, FailureClass::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn a_server_delay_beyond_the_maximum_is_not_shortened() {
    let script = Script::new(vec![json(429, &[("retry-after", "120")], RATE_LIMITED)]);
    let layer = RetryLayer::try_from(RetryConfig::new().max_server_delay(60 * SEC)).unwrap();
    let start = Instant::now();
    let res = layer
        .layer(script.service())
        .oneshot(request(false))
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), start.elapsed()),
        (429, Duration::ZERO)
    );
    assert_eq!(script.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_failures_are_tried_exactly_once_and_returned_intact() {
    let cases: &[(u16, &'static str)] = &[
        (
            400,
            r#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#,
        ),
        (
            401,
            r#"{"error":{"message":"key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ),
        (
            403,
            r#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#,
        ),
        (
            404,
            r#"{"error":{"message":"no model","type":"invalid_request_error","code":"model_not_found"}}"#,
        ),
        (
            422,
            r#"{"error":{"message":"unprocessable","type":"invalid_request_error","code":null}}"#,
        ),
        (
            429,
            r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#,
        ),
        (
            400,
            r#"{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        ),
        (
            400,
            r#"{"error":{"message":"flagged","type":"invalid_request_error","code":"content_policy_violation"}}"#,
        ),
    ];
    for &(status, body) in cases {
        let script = Script::new(vec![json(status, &[("x-request-id", "req_x")], body)]);
        let layer = RetryLayer::try_from(RetryConfig::new().max_attempts(5)).unwrap();
        let res = layer
            .layer(script.service())
            .oneshot(request(false))
            .await
            .unwrap();
        assert_eq!(script.attempts(), 1, "{status} {body}");
        assert_eq!(res.status(), status);
        assert_eq!(res.headers()["x-request-id"], "req_x");
        assert_eq!(body_text(res).await.unwrap(), body);
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_return_the_last_response() {
    let script = Script::new(vec![
        json(
            503,
            &[("x-request-id", "req_1")],
            r#"{"error":{"message":"one","type":"server_error"}}"#,
        ),
        json(
            500,
            &[("x-request-id", "req_2")],
            r#"{"error":{"message":"two","type":"server_error"}}"#,
        ),
        json(
            502,
            &[("x-request-id", "req_3")],
            r#"{"error":{"message":"three","type":"server_error"}}"#,
        ),
    ]);
    let layer =
        RetryLayer::try_from(RetryConfig::new().max_attempts(3).backoff(fixed(100 * MS))).unwrap();
    let res = layer
        .layer(script.service())
        .oneshot(request(false))
        .await
        .unwrap();
    assert_eq!(
        script.gaps(),
        [100 * MS, 200 * MS],
        "exponential: base, then doubled"
    );
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["x-request-id"], "req_3");
    assert_eq!(
        body_text(res).await.unwrap(),
        r#"{"error":{"message":"three","type":"server_error"}}"#
    );
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_and_the_last_one_returned() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<Response<Full<Bytes>>, BoxError>(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "refused",
            )))
        }
    });
    let layer =
        RetryLayer::try_from(RetryConfig::new().max_attempts(4).backoff(fixed(10 * MS))).unwrap();
    let err = layer.layer(svc).oneshot(request(false)).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_sustained_outage_across_many_calls_stays_within_the_budget() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let svc = service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(50 * MS).await;
            Ok::<_, Infallible>(json(
                503,
                &[],
                r#"{"error":{"message":"down","type":"server_error"}}"#,
            ))
        }
    });
    let budget = BudgetConfig {
        max_tokens: 20,
        token_ratio: 0.2,
    };
    let layer = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(5)
            .budget(Some(budget))
            .backoff(Backoff::default()),
    )
    .unwrap();
    let svc = layer.layer(svc);
    let calls = 500;
    let results =
        futures_util::future::join_all((0..calls).map(|_| svc.clone().oneshot(request(false))))
            .await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().status() == 503));
    let total = attempts.load(Ordering::SeqCst);
    // Without a budget: 2500 attempts. With one: each call once, plus the
    // retries the bucket allows before it is half empty.
    assert!(
        total <= calls + (budget.max_tokens / 2) as usize,
        "{total} attempts for {calls} calls"
    );
    assert!(total > calls, "some retries happened");

    // The same storm without a budget retries every call to the end.
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let svc = RetryLayer::try_from(RetryConfig::new().max_attempts(5).budget(None))
        .unwrap()
        .layer(service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(json(503, &[], "{}")))
        }));
    futures_util::future::join_all((0..50).map(|_| svc.clone().oneshot(request(false)))).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 250);
}

#[tokio::test(start_paused = true)]
async fn content_checks_retry_an_empty_or_non_json_answer() {
    const EMPTY: &str =
        r#"{"choices":[{"message":{"role":"assistant","content":"  "},"finish_reason":"stop"}]}"#;
    const PROSE: &str = r#"{"choices":[{"message":{"role":"assistant","content":"Sure! Here it is"},"finish_reason":"stop"}]}"#;
    const JSON: &str = r#"{"choices":[{"message":{"role":"assistant","content":"```json\n{\"ok\":true}\n```"},"finish_reason":"stop"}]}"#;
    let script = Script::new(vec![
        json(200, &[], EMPTY),
        json(200, &[], PROSE),
        json(200, &[], JSON),
    ]);
    let layer = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(4)
            .backoff(fixed(MS))
            .content(ContentChecks::default()),
    )
    .unwrap();
    let mut req = request(false);
    let meta = RequestMeta::get(&req)
        .unwrap()
        .clone()
        .with_wants_json(true);
    req.extensions_mut().insert(meta);
    let res = layer.layer(script.service()).oneshot(req).await.unwrap();
    assert_eq!(script.attempts(), 3);
    assert_eq!(body_text(res).await.unwrap(), JSON);
    // Off by default: the empty answer is returned as it came.
    let script = Script::new(vec![json(200, &[], EMPTY)]);
    let res = RetryLayer::try_from(RetryConfig::new())
        .unwrap()
        .layer(script.service())
        .oneshot(request(false))
        .await
        .unwrap();
    assert_eq!(
        (script.attempts(), body_text(res).await.unwrap().as_str()),
        (1, EMPTY)
    );
}

#[tokio::test(start_paused = true)]
async fn a_truncated_answer_is_not_resent_at_the_same_cap() {
    const CUT: &str = r#"{"choices":[{"message":{"role":"assistant","content":"{\"ok\":"},"finish_reason":"length"}]}"#;
    assert!(!ContentChecks::default().truncated, "off by default");
    let json_request = || {
        let mut req = request(false);
        let meta = RequestMeta::get(&req)
            .unwrap()
            .clone()
            .with_wants_json(true);
        req.extensions_mut().insert(meta);
        req
    };
    // The default checks: a cut answer is neither checked nor resent, even
    // though its JSON is half written.
    let script = Script::new(vec![json(200, &[], CUT), json(200, &[], OK)]);
    let res = RetryLayer::try_from(
        RetryConfig::new()
            .backoff(fixed(MS))
            .content(ContentChecks::default()),
    )
    .unwrap()
    .layer(script.service())
    .oneshot(json_request())
    .await
    .unwrap();
    assert_eq!(
        (script.attempts(), body_text(res).await.unwrap().as_str()),
        (1, CUT)
    );
    // Asked for: a non-retryable content failure, for a fallback to act on.
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let sink = events.clone();
    let script = Script::new(vec![json(200, &[], CUT), json(200, &[], OK)]);
    let res = RetryLayer::try_from(
        RetryConfig::new()
            .backoff(fixed(MS))
            .content(ContentChecks {
                truncated: true,
                ..ContentChecks::default()
            }),
    )
    .unwrap()
    .on_event(move |e| sink.lock().unwrap().push(e.clone()))
    .layer(script.service())
    .oneshot(json_request())
    .await
    .unwrap();
    assert_eq!(
        (script.attempts(), body_text(res).await.unwrap().as_str()),
        (1, CUT)
    );
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].class, FailureClass::InvalidContent);
    assert_eq!(events[0].decision, Decision::GiveUp(GiveUp::NotRetryable));
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_decision() {
    let script = Script::new(vec![
        json(503, &[], "{}"),
        json(429, &[("retry-after", "1")], RATE_LIMITED),
        json(
            400,
            &[],
            r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#,
        ),
    ]);
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let sink = events.clone();
    let layer = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(5)
            .backoff(fixed(300 * MS))
            .server_delay_jitter(Duration::ZERO),
    )
    .unwrap()
    .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    layer
        .layer(script.service())
        .oneshot(request(false))
        .await
        .unwrap();
    let e = events.lock().unwrap();
    let seen: Vec<_> = e
        .iter()
        .map(|e| (e.attempt, e.class, e.status.map(|s| s.as_u16()), e.decision))
        .collect();
    assert_eq!(
        seen,
        [
            (
                1,
                FailureClass::Overloaded,
                Some(503),
                Decision::Retry {
                    delay: 300 * MS,
                    server_directed: false
                }
            ),
            (
                2,
                FailureClass::RateLimited,
                Some(429),
                Decision::Retry {
                    delay: SEC,
                    server_directed: true
                }
            ),
            (
                3,
                FailureClass::BadRequest,
                Some(400),
                Decision::GiveUp(GiveUp::NotRetryable)
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn on_event_keeps_the_budget_shared_with_earlier_clones() {
    let failing = || {
        service_fn(|_req: Request<String>| {
            std::future::ready(Ok::<_, Infallible>(json(503, &[], "{}")))
        })
    };
    let layer = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(5)
            .backoff(fixed(MS))
            .budget(Some(BudgetConfig {
                max_tokens: 4,
                token_ratio: 0.1,
            })),
    )
    .unwrap();
    let before = layer.layer(failing());
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let sink = events.clone();
    let after = layer
        .clone()
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .layer(failing());
    // The service made before `on_event` spends the budget…
    before.oneshot(request(false)).await.unwrap();
    // …and the one made after sees it spent.
    after.oneshot(request(false)).await.unwrap();
    let e = events.lock().unwrap();
    assert_eq!(
        e[0].decision,
        Decision::GiveUp(GiveUp::BudgetExhausted),
        "{e:?}"
    );
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    for (config, message) in [
        (RetryConfig::new().max_attempts(0), "max_attempts is 0"),
        (
            RetryConfig::new().backoff(Backoff {
                base: Duration::ZERO,
                ..Backoff::default()
            }),
            "backoff.base is 0s",
        ),
        (
            RetryConfig::new().backoff(Backoff {
                factor: 0.5,
                ..Backoff::default()
            }),
            "backoff.factor 0.5",
        ),
        (
            RetryConfig::new().backoff(Backoff {
                cap: MS,
                ..Backoff::default()
            }),
            "backoff.cap (1ms) is shorter than backoff.base (500ms)",
        ),
        (
            RetryConfig::new().budget(Some(BudgetConfig {
                max_tokens: 10,
                token_ratio: 1.5,
            })),
            "budget.token_ratio 1.5",
        ),
        (
            RetryConfig::new().idempotency_header("bad header"),
            "is not a header name",
        ),
        (
            RetryConfig::new().hold(Hold::complete(0)),
            "hold.max_bytes is 0",
        ),
    ] {
        let err = RetryLayer::try_from(config).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
    let err = serde_json::from_str::<RetryConfig>(r#"{"max_atempts": 3}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `max_atempts`"));
    let c: RetryConfig =
        serde_json::from_str(r#"{"backoff":{"jitter":"decorrelated"},"budget":null}"#).unwrap();
    assert_eq!((c.backoff.jitter, c.budget), (Jitter::Decorrelated, None));
}

proptest! {
    #[test]
    fn backoff_delays_stay_within_their_bounds(
        seed in any::<u64>(),
        base_ms in 1u64..2_000,
        factor in 1.0f64..4.0,
        cap_ms in 1u64..60_000,
        retries in 1u32..40,
    ) {
        let base = Duration::from_millis(base_ms);
        let cap = Duration::from_millis(cap_ms).max(base);
        let mut rng = StdRng::seed_from_u64(seed);
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated, Jitter::None] {
            let b = Backoff { base, factor, cap, jitter };
            let mut previous = Duration::ZERO;
            let mut last_exp = Duration::ZERO;
            for n in 1..=retries {
                let exp = b.exponential(n);
                prop_assert!(exp <= cap && exp >= last_exp.min(cap), "exponential grows to the cap");
                last_exp = exp;
                let d = b.delay(n, previous, &mut rng);
                prop_assert!(d <= cap, "{jitter:?}: {d:?} over the cap {cap:?}");
                match jitter {
                    Jitter::Full => prop_assert!(d <= exp),
                    Jitter::Equal => prop_assert!(d >= exp / 2 && d <= exp),
                    Jitter::Decorrelated => prop_assert!(d >= base.min(cap) && d <= previous.max(base).saturating_mul(3).min(cap)),
                    Jitter::None => prop_assert_eq!(d, exp),
                }
                previous = d;
            }
        }
    }
}

// --- Against the mock provider, over loopback ---

fn chat(mock: &MockServer, provider: Provider, stream: bool, prompt: &str) -> Request<String> {
    let (path, body) = match provider {
        Provider::OpenAi => (
            "/v1/chat/completions",
            serde_json::json!({
                "model": "gpt-4o-mini",
                "stream": stream,
                "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
                "messages": [{"role": "user", "content": prompt}],
            }),
        ),
        _ => (
            "/v1/messages",
            serde_json::json!({
                "model": "claude-haiku-4-5",
                "max_tokens": 256,
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }),
        ),
    };
    Request::post(format!("{}{path}", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_60_rpm_quota_does_not_drain_the_default_budget() {
    use futures_util::StreamExt;
    use llm_tower_mock::Quota;

    let mock = MockServer::builder()
        .quota(Quota::per_minute().requests(60))
        .start()
        .await
        .unwrap();
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let sink = events.clone();
    // The default budget; attempts enough for a call to wait its turn among
    // eight, one request a second; no server-delay jitter (it is random,
    // and this test must not be).
    let retry = RetryLayer::try_from(
        RetryConfig::new()
            .max_attempts(30)
            .server_delay_jitter(Duration::ZERO),
    )
    .unwrap()
    .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(retry)
        .service(client);
    let statuses: Vec<u16> = futures_util::stream::iter(0..90)
        .map(|i| {
            let svc = svc.clone();
            let req = chat(&mock, Provider::OpenAi, false, &format!("call {i}"));
            async move {
                let res = svc.oneshot(req).await.unwrap();
                let status = res.status().as_u16();
                body_text(res).await.unwrap();
                status
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let events = events.lock().unwrap();
    let gave_up: Vec<_> = events
        .iter()
        .filter_map(|e| match e.decision {
            Decision::GiveUp(why) => Some(why),
            _ => None,
        })
        .collect();
    assert_eq!(gave_up, [], "every call waits its turn");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        events
            .iter()
            .filter(|e| e.status.map(|s| s.as_u16()) == Some(429))
            .count()
            >= 30,
        "the quota was met"
    );
}

/// The recommended order: retry outside the attempt timeout and the meter.
async fn call(
    retry: RetryConfig,
    timeouts: TimeoutConfig,
    req: Request<String>,
) -> Result<String, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(RetryLayer::try_from(retry).unwrap())
        .layer(TimeoutLayer::try_from(timeouts).unwrap())
        .layer(MeterLayer::new())
        .service(client);
    let res = svc.oneshot(req).await?;
    let status = res.status();
    let text = body_text(res).await?;
    Ok(format!("{} {text}", status.as_u16()))
}

fn quick() -> RetryConfig {
    RetryConfig::new()
        .max_attempts(3)
        .backoff(fixed(100 * MS))
        .idempotency_header("idempotency-key")
        // Exact server delays, to the millisecond.
        .server_delay_jitter(Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn both_formats_streaming_or_not_retry_a_rate_limit_exactly_when_told() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        for stream in [false, true] {
            let mock = MockServer::builder()
                .rule(Rule::new(Fault::rate_limited(1200 * MS)).times(1))
                .start()
                .await
                .unwrap();
            let start = Instant::now();
            let out = call(
                quick(),
                TimeoutConfig::new(),
                chat(&mock, provider, stream, "hi"),
            )
            .await
            .unwrap();
            assert!(out.starts_with("200 "), "{provider} {stream}: {out}");
            let j = mock.journal().entries();
            assert_eq!(j.len(), 2, "{provider} {stream}");
            assert_eq!(j[0].fingerprint, j[1].fingerprint);
            assert_eq!((j[0].status, j[1].status), (429, 200));
            let key = j[0].idempotency_key.clone().expect("an idempotency key");
            assert_eq!(
                j[1].idempotency_key.as_deref(),
                Some(key.as_str()),
                "the same key on every attempt"
            );
            // OpenAI says 1200 ms; Anthropic rounds up to 2 s.
            let wait = if provider == Provider::OpenAi {
                1200 * MS
            } else {
                2 * SEC
            };
            assert_eq!(j[1].at - j[0].at, wait, "{provider}");
            assert_eq!(start.elapsed(), wait);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_event_before_the_first_token_is_retried() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = MockServer::builder()
            .rule(Rule::new(Fault::ErrorEvent { after: 0 }).times(1))
            .start()
            .await
            .unwrap();
        let out = call(
            quick(),
            TimeoutConfig::new(),
            chat(&mock, provider, true, "hi"),
        )
        .await
        .unwrap();
        let j = mock.journal().entries();
        assert_eq!(j.len(), 2, "{provider}");
        assert_eq!(j[0].faults, ["error_event"]);
        // The caller sees only the good stream, whole.
        assert!(
            !out.contains("overloaded") && !out.contains("server_error"),
            "{out}"
        );
        assert!(
            out.contains("[DONE]") || out.contains("message_stop"),
            "{out}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_after_tokens_is_not_retried_and_the_caller_gets_a_typed_error() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = MockServer::builder()
            .rule(Rule::new(Fault::Drop { after: 3 }))
            .start()
            .await
            .unwrap();
        let err = call(
            quick(),
            TimeoutConfig::new(),
            chat(&mock, provider, true, "hi"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            mock.journal().len(),
            1,
            "{provider}: nothing retried, nothing duplicated"
        );
        let interrupted = err
            .downcast_ref::<StreamInterrupted>()
            .unwrap_or_else(|| panic!("{provider}: {err}"));
        let f = DefaultClassifier::new().classify_error(interrupted);
        assert!(!f.is_retryable() && !f.should_fall_back(), "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_token_timeout_is_retried_within_the_attempt_limits() {
    let mock = MockServer::builder()
        .rule(Rule::new(Fault::slow_first_token(5 * SEC)).times(1))
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    let out = call(
        quick(),
        TimeoutConfig::new().first_token(2 * SEC),
        chat(&mock, Provider::Anthropic, true, "hi"),
    )
    .await
    .unwrap();
    assert!(out.contains("message_stop"));
    assert_eq!(mock.journal().len(), 2);
    assert_eq!(
        start.elapsed(),
        2 * SEC + 100 * MS,
        "timed out at 2 s, retried after 100 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_preamble_without_output_is_held_and_its_stall_retried_in_both_formats() {
    // Anthropic's preamble and pings, OpenAI's role chunk and empty deltas:
    // neither is a first token, so the hold keeps them and the first-token
    // timeout's retry gives the caller one clean stream.
    for provider in [Provider::Anthropic, Provider::OpenAi] {
        let mock = MockServer::builder()
            .rule(Rule::new(Fault::EmptyDeltas { count: 3 }))
            .rule(
                Rule::new(Fault::SlowFirstToken {
                    delay: 30 * SEC,
                    keepalive: Some(SEC),
                })
                .times(1),
            )
            .start()
            .await
            .unwrap();
        let start = Instant::now();
        let out = call(
            quick(),
            TimeoutConfig::new().first_token(2 * SEC),
            chat(&mock, provider, true, "hi"),
        )
        .await
        .unwrap_or_else(|e| panic!("{provider}: {e}"));
        assert_eq!(mock.journal().len(), 2, "{provider}");
        assert_eq!(start.elapsed(), 2 * SEC + 100 * MS, "{provider}");
        let starts = match provider {
            Provider::Anthropic => out.matches("event: message_start").count(),
            _ => out.matches("\"role\":\"assistant\"").count(),
        };
        assert_eq!(
            starts, 1,
            "{provider}: one stream, not the stalled preamble too"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_outage_ends_with_the_providers_last_answer() {
    let mock = MockServer::builder()
        .rule(Rule::new(Fault::Overloaded))
        .start()
        .await
        .unwrap();
    let out = call(
        quick(),
        TimeoutConfig::new(),
        chat(&mock, Provider::Anthropic, false, "hi"),
    )
    .await
    .unwrap();
    assert!(out.starts_with("529 "), "{out}");
    assert!(out.contains("overloaded_error"));
    assert_eq!(mock.journal().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn quota_exhausted_and_context_length_are_tried_once_against_the_mock() {
    for fault in [Fault::InsufficientQuota, Fault::ContextLength] {
        let mock = MockServer::builder()
            .rule(Rule::new(fault.clone()))
            .start()
            .await
            .unwrap();
        let out = call(
            quick(),
            TimeoutConfig::new(),
            chat(&mock, Provider::OpenAi, false, "hi"),
        )
        .await
        .unwrap();
        assert_eq!(mock.journal().len(), 1, "{fault:?}");
        assert!(out.starts_with("429 ") || out.starts_with("400 "), "{out}");
    }
}

/// A body that is not `Unpin`: an `async` state machine behind it.
fn not_unpin_sse(
    chunks: Vec<&'static str>,
) -> impl http_body::Body<Data = Bytes, Error = Infallible> {
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
        let chunk = it.next()?;
        tokio::task::yield_now().await;
        Some((
            Ok(http_body::Frame::data(Bytes::from_static(chunk.as_bytes()))),
            it,
        ))
    });
    http_body_util::StreamBody::new(stream)
}

#[tokio::test(start_paused = true)]
async fn bodies_that_are_not_unpin_are_held_and_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = service_fn(move |_req: Request<String>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let chunks = if n == 0 {
            vec![
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            ]
        } else {
            vec![
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n",
            ]
        };
        let res = Response::builder()
            .header("content-type", "text/event-stream")
            .body(not_unpin_sse(chunks))
            .unwrap();
        async move { Ok::<_, Infallible>(res) }
    });
    let svc = RetryLayer::try_from(quick()).unwrap().layer(svc);
    let mut req = Request::new(String::new());
    req.extensions_mut().insert(
        RequestMeta::new(Some(llm_tower::provider::Endpoint {
            provider: llm_tower::provider::Provider::Anthropic,
            format: llm_tower::provider::WireFormat::AnthropicMessages,
        }))
        .with_stream(true),
    );
    let res = svc.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"event: content_block_delta"), "{body:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the error event was retried"
    );
}

/// Retry layers nested in one another share the call's attempt budget:
/// however deep, the call never makes more upstream attempts than the
/// outermost layer allows.
#[tokio::test(start_paused = true)]
async fn nested_retries_never_multiply_attempts() {
    use llm_tower::attempts::{AttemptBudget, AttemptsExhausted};
    let sent = Arc::new(AtomicUsize::new(0));
    let provider = {
        let sent = sent.clone();
        service_fn(move |_req: Request<String>| {
            sent.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(json(
                503,
                &[],
                r#"{"error":{"message":"down","type":"server_error"}}"#,
            )))
        })
    };
    let retry = |n: u32| {
        RetryLayer::new(
            RetryConfig::new()
                .max_attempts(n)
                .backoff(fixed(10 * MS))
                .budget(None)
                .build()
                .unwrap(),
        )
    };
    for (outer, inner, expected) in [(3, 3, 3), (2, 5, 2), (5, 2, 5)] {
        sent.store(0, Ordering::SeqCst);
        let svc = ServiceBuilder::new()
            .layer(retry(outer))
            .layer(retry(inner))
            .service(provider.clone());
        let res = svc.oneshot(request(false)).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(
            sent.load(Ordering::SeqCst),
            expected,
            "outer {outer}, inner {inner}: nine without a shared budget"
        );
    }
    // A budget that allows one attempt: sent once, not retried.
    sent.store(0, Ordering::SeqCst);
    let mut req = request(false);
    AttemptBudget::get_or_insert(&mut req, 1);
    let res = retry(3).layer(provider.clone()).oneshot(req).await.unwrap();
    assert_eq!(
        (res.status().as_u16(), sent.load(Ordering::SeqCst)),
        (503, 1)
    );
    // A budget that allows none: nothing is sent, a typed error says why.
    let mut req = request(false);
    req.extensions_mut().insert(AttemptBudget::new(0));
    let e = retry(3).layer(provider).oneshot(req).await.unwrap_err();
    assert_eq!(e.downcast_ref::<AttemptsExhausted>().unwrap().total(), 0);
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    let f = DefaultClassifier::new().classify_error(&*e);
    assert!(!f.is_retryable() && !f.should_fall_back() && !f.counts_against_health());
}

// --- Hold::Complete: a stream held until its end ---

const A_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n";
const A_HI: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
const A_THERE: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n";
const A_END: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
const A_ERROR: &str = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
const A_MALFORMED: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_del\n\n";

/// One frame of a scripted stream: data, or the connection breaking.
type Chunk = Result<&'static str, &'static str>;

/// The connection reset, as the client reports it.
fn reset(why: &str) -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        why,
    ))
}

type ScriptedBody = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, BoxError>>>,
>;

/// An Anthropic streaming request, as Prepare would mark it.
fn anthropic_stream() -> Request<String> {
    let mut req = Request::new(String::new());
    req.extensions_mut().insert(
        RequestMeta::new(Some(llm_tower::provider::Endpoint {
            provider: llm_tower::provider::Provider::Anthropic,
            format: llm_tower::provider::WireFormat::AnthropicMessages,
        }))
        .with_stream(true),
    );
    req
}

/// A service answering attempt `n` with the stream `attempts[n]`, one frame
/// per chunk; the attempts made are counted.
fn scripted_streams(
    attempts: Vec<Vec<Chunk>>,
) -> (
    BoxCloneService<Request<String>, Response<ScriptedBody>, Infallible>,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let attempts = Arc::new(attempts);
    let svc = service_fn(move |_req: Request<String>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = attempts[n]
            .iter()
            .map(|c| match c {
                Ok(data) => Ok(http_body::Frame::data(Bytes::from_static(data.as_bytes()))),
                Err(e) => Err(reset(e)),
            })
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let res = Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap();
        std::future::ready(Ok(res))
    });
    (BoxCloneService::new(svc), calls)
}

fn complete(max_bytes: usize) -> RetryConfig {
    quick().hold(Hold::complete(max_bytes))
}

#[tokio::test(start_paused = true)]
async fn hold_complete_retries_a_failure_anywhere_in_a_scripted_stream() {
    let clean: Vec<Chunk> = vec![Ok(A_START), Ok(A_HI), Ok(A_THERE), Ok(A_END)];
    let clean_text = [A_START, A_HI, A_THERE, A_END].concat();
    let failures: [(&str, Vec<Chunk>); 4] = [
        ("cut", vec![Ok(A_START), Ok(A_HI), Err("connection reset")]),
        ("truncated", vec![Ok(A_START), Ok(A_HI), Ok(A_THERE)]),
        ("error event", vec![Ok(A_START), Ok(A_HI), Ok(A_ERROR)]),
        (
            "malformed",
            vec![
                Ok(A_START),
                Ok(A_HI),
                Ok(A_MALFORMED),
                Ok(A_THERE),
                Ok(A_END),
            ],
        ),
    ];
    for (name, failed) in failures {
        // Held until complete: retried, one clean stream.
        let (svc, calls) = scripted_streams(vec![failed.clone(), clean.clone()]);
        let svc = RetryLayer::try_from(complete(1 << 20)).unwrap().layer(svc);
        let res = svc.oneshot(anthropic_stream()).await.unwrap();
        let body = body_text(res)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(body, clean_text, "{name}: exactly the clean stream");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{name}: retried once");

        // Held until the first token: the caller gets the failure, typed.
        let (svc, calls) = scripted_streams(vec![failed, clean.clone()]);
        let svc = RetryLayer::try_from(quick()).unwrap().layer(svc);
        let res = svc.oneshot(anthropic_stream()).await.unwrap();
        let err = body_text(res).await.unwrap_err();
        assert!(err.is::<StreamInterrupted>(), "{name}: {err}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name}: not retried");
    }
}

#[tokio::test(start_paused = true)]
async fn hold_complete_gives_the_last_failure_when_attempts_run_out() {
    let cut: Vec<Chunk> = vec![Ok(A_START), Ok(A_HI), Ok(A_ERROR)];
    let (svc, calls) = scripted_streams(vec![cut.clone(), cut.clone(), cut]);
    let events: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let sink = events.clone();
    let svc = RetryLayer::try_from(complete(1 << 20))
        .unwrap()
        .on_event(move |e| sink.lock().unwrap().push(e.clone()))
        .layer(svc);
    let err = svc.oneshot(anthropic_stream()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "max_attempts");
    // Nothing reached the caller: the last failure alone, typed — never a
    // partial answer, and a fallback further out can move on.
    assert!(err.is::<llm_tower::metering::StreamError>(), "{err}");
    let decisions: Vec<Decision> = events.lock().unwrap().iter().map(|e| e.decision).collect();
    assert_eq!(decisions.len(), 3);
    assert_eq!(
        decisions[2],
        Decision::GiveUp(GiveUp::AttemptsExhausted),
        "{decisions:?}"
    );
}

type ChannelBody = http_body_util::StreamBody<
    std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<http_body::Frame<Bytes>, BoxError>> + Send>,
    >,
>;

type ChannelService = BoxCloneService<Request<String>, Response<ChannelBody>, Infallible>;

/// A service whose single answer is a stream the test writes frame by
/// frame.
fn channel_stream() -> (
    ChannelService,
    tokio::sync::mpsc::UnboundedSender<Chunk>,
    Arc<AtomicUsize>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let rx = rx.lock().unwrap().take().expect("one attempt only");
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let frame = match rx.recv().await? {
                Ok(data) => Ok(http_body::Frame::data(Bytes::from_static(data.as_bytes()))),
                Err(e) => Err(reset(e)),
            };
            Some((frame, rx))
        });
        let res = Response::builder()
            .header("content-type", "text/event-stream")
            .body(http_body_util::StreamBody::new(Box::pin(stream)
                as std::pin::Pin<
                    Box<dyn futures_util::Stream<Item = _> + Send>,
                >))
            .unwrap();
        std::future::ready(Ok(res))
    });
    (BoxCloneService::new(svc), tx, calls)
}

#[tokio::test(start_paused = true)]
async fn hold_complete_hands_nothing_over_before_the_end() {
    let (svc, tx, _calls) = channel_stream();
    let svc = RetryLayer::try_from(complete(1 << 20)).unwrap().layer(svc);
    let call = tokio::spawn(svc.oneshot(anthropic_stream()));
    tx.send(Ok(A_START)).unwrap();
    tx.send(Ok(A_HI)).unwrap();
    tx.send(Ok(A_THERE)).unwrap();
    tokio::time::sleep(SEC).await;
    assert!(
        !call.is_finished(),
        "tokens came, but the stream is not complete"
    );
    tx.send(Ok(A_END)).unwrap();
    // Complete: handed over, though the connection is still open.
    let res = call.await.unwrap().unwrap();
    drop(tx);
    assert_eq!(
        body_text(res).await.unwrap(),
        [A_START, A_HI, A_THERE, A_END].concat()
    );
}

#[tokio::test(start_paused = true)]
async fn hold_complete_hands_a_stream_over_at_its_bound_and_a_later_cut_is_interrupted() {
    let (svc, tx, calls) = channel_stream();
    // The bound: reached once the preamble and the first token are held.
    let bound = A_START.len() + A_HI.len();
    let svc = RetryLayer::try_from(complete(bound)).unwrap().layer(svc);
    let call = tokio::spawn(svc.oneshot(anthropic_stream()));
    tx.send(Ok(A_START)).unwrap();
    tokio::time::sleep(SEC).await;
    assert!(!call.is_finished(), "below the bound, held");
    tx.send(Ok(A_HI)).unwrap();
    // The bound is reached: handed over, though the stream goes on.
    let res = tokio::time::timeout(SEC, call)
        .await
        .expect("handed over at the bound")
        .unwrap()
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, [A_START, A_HI].concat(), "every byte held, at once");
    tx.send(Ok(A_THERE)).unwrap();
    let next = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(next, A_THERE, "then the stream as it comes");
    tx.send(Err("connection reset")).unwrap();
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.is::<StreamInterrupted>(), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "not retried past the bound"
    );
}

/// The text of an SSE answer in either format: OpenAI chat deltas'
/// `content`, Anthropic `text_delta`s.
fn sse_text(body: &str) -> String {
    let mut text = String::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if v["type"] == "content_block_delta"
            && let Some(t) = v["delta"]["text"].as_str()
        {
            text.push_str(t);
        }
    }
    text
}

/// The number of streams in a body: OpenAI role chunks, Anthropic
/// `message_start`s.
fn stream_starts(provider: Provider, body: &str) -> usize {
    match provider {
        Provider::Anthropic => body.matches("event: message_start").count(),
        _ => body.matches("\"role\":\"assistant\"").count(),
    }
}

async fn mock_with(rules: Vec<Rule>) -> MockServer {
    let mut b = MockServer::builder().seed(7);
    for r in rules {
        b = b.rule(r);
    }
    b.start().await.unwrap()
}

/// A stream fault after three tokens, on the first attempt only.
fn faults_after_tokens() -> [Fault; 4] {
    [
        Fault::Drop { after: 3 },
        Fault::Truncate { after: 3 },
        Fault::ErrorEvent { after: 3 },
        Fault::Malformed { after: 3 },
    ]
}

#[tokio::test(start_paused = true)]
async fn hold_complete_recovers_stream_faults_after_tokens_against_the_mock_in_both_formats() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let clean = {
            let mock = mock_with(vec![]).await;
            call(
                quick(),
                TimeoutConfig::new(),
                chat(&mock, provider, true, "hi"),
            )
            .await
            .unwrap()
        };
        let clean_text = sse_text(&clean);
        assert!(!clean_text.is_empty(), "{provider}: {clean}");
        for fault in faults_after_tokens() {
            let mock = mock_with(vec![Rule::new(fault.clone()).times(1)]).await;
            let mut req = chat(&mock, provider, true, "hi");
            let reports: Arc<Mutex<Vec<llm_tower::metering::UsageReport>>> = Arc::default();
            let sink = reports.clone();
            llm_tower::metering::UsageObservers::register(
                &mut req,
                Arc::new(move |r: &llm_tower::metering::UsageReport| {
                    sink.lock().unwrap().push(r.clone())
                }),
            );
            let out = call(complete(1 << 20), TimeoutConfig::new(), req)
                .await
                .unwrap_or_else(|e| panic!("{provider} {fault:?}: {e}"));
            let j = mock.journal().entries();
            assert_eq!(j.len(), 2, "{provider} {fault:?}: retried once");
            assert_eq!(j[0].faults, [fault.name()], "{provider}");
            assert!(j[1].faults.is_empty(), "{provider} {fault:?}");
            assert!(out.starts_with("200 "), "{provider} {fault:?}: {out}");
            assert_eq!(
                sse_text(&out),
                clean_text,
                "{provider} {fault:?}: the clean answer, no chunk twice"
            );
            assert_eq!(
                stream_starts(provider, &out),
                1,
                "{provider} {fault:?}: one stream"
            );
            assert!(
                out.ends_with("data: [DONE]\n\n") || out.contains("event: message_stop"),
                "{provider} {fault:?}: complete: {out}"
            );
            assert!(
                !out.contains("overloaded") && !out.contains("server_error"),
                "{provider} {fault:?}: {out}"
            );
            // Metering: each attempt reported once, the failed one as such.
            let reports = reports.lock().unwrap().clone();
            assert_eq!(reports.len(), 2, "{provider} {fault:?}: {reports:?}");
            assert_ne!(
                reports[0].outcome,
                llm_tower::metering::Outcome::Completed,
                "{provider} {fault:?}"
            );
            assert_eq!(
                reports[1].outcome,
                llm_tower::metering::Outcome::Completed,
                "{provider} {fault:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn hold_first_token_still_interrupts_stream_faults_after_tokens_in_both_formats() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        for fault in faults_after_tokens() {
            let mock = mock_with(vec![Rule::new(fault.clone()).times(1)]).await;
            let config = quick().hold(Hold::FirstToken);
            assert_eq!(config, quick(), "the default");
            let err = call(
                config,
                TimeoutConfig::new(),
                chat(&mock, provider, true, "hi"),
            )
            .await
            .unwrap_err();
            assert!(err.is::<StreamInterrupted>(), "{provider} {fault:?}: {err}");
            assert_eq!(mock.journal().len(), 1, "{provider} {fault:?}: not retried");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn hold_complete_past_its_bound_is_interrupted_by_a_later_cut_in_both_formats() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        // Dropped after 7 tokens, held up to 1 byte: the first frame is
        // past the bound, so the stream is handed over and its cut reaches
        // the caller.
        let mock = mock_with(vec![Rule::new(Fault::Drop { after: 7 })]).await;
        let err = call(
            complete(1),
            TimeoutConfig::new(),
            chat(&mock, provider, true, "hi"),
        )
        .await
        .unwrap_err();
        assert!(err.is::<StreamInterrupted>(), "{provider}: {err}");
        assert_eq!(mock.journal().len(), 1, "{provider}: not retried");
    }
}
