//! FallbackLayer with scripted targets: when a call moves on and when it
//! does not, what each target receives, what the caller gets back.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use llm_tower::{
    BoxError,
    fallback::{AllTargetsFailed, Answered, FallbackEvent, FallbackLayer, Target},
    provider::{Endpoint, Provider, WireFormat},
    request::{CharEstimator, ReplayBody, RequestMeta},
};
use tower::{Layer, ServiceExt, service_fn};

const OPENAI_BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"max_tokens":50}"#;

fn request(body: &str) -> Request<ReplayBody> {
    let mut req = Request::post("https://api.openai.com/v1/chat/completions")
        .header("authorization", "Bearer sk-openai")
        .header("content-type", "application/json")
        .body(ReplayBody::new(body.to_owned()))
        .unwrap();
    let endpoint = Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    };
    let meta = RequestMeta::parse(
        Some(endpoint),
        "/v1/chat/completions",
        body.as_bytes(),
        &CharEstimator::new(),
    );
    req.extensions_mut().insert(meta);
    req
}

/// What a scripted target saw.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    headers: http::HeaderMap,
    body: serde_json::Value,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn json_response(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

type Res = Response<Full<Bytes>>;
type Answer<E> = std::future::Ready<Result<Res, E>>;

/// A target answering `status` with `body`, logging what it receives.
fn target(
    status: u16,
    body: &'static str,
    log: Log,
) -> impl tower::Service<
    Request<ReplayBody>,
    Response = Res,
    Error = Infallible,
    Future = Answer<Infallible>,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<ReplayBody>| {
        log.lock().unwrap().push(Seen {
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
            body: serde_json::from_slice(req.body().bytes()).unwrap(),
        });
        std::future::ready(Ok(json_response(status, body)))
    })
}

/// A target that cannot be reached.
fn unreachable(
    log: Log,
) -> impl tower::Service<
    Request<ReplayBody>,
    Response = Res,
    Error = std::io::Error,
    Future = Answer<std::io::Error>,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<ReplayBody>| {
        log.lock().unwrap().push(Seen {
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
            body: serde_json::from_slice(req.body().bytes()).unwrap_or_default(),
        });
        std::future::ready(Err(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    })
}

const OVERLOADED: &str = r#"{"error":{"message":"overloaded","type":"server_error"}}"#;
const BAD_REQUEST: &str =
    r#"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#;
const OPENAI_OK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;
const ANTHROPIC_OK: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"hello from claude"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":4}}"#;

async fn body_json(res: Response<llm_tower::fallback::FallbackBody>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_server_error_moves_to_the_next_model_rewritten_in_the_body() {
    let (a, b): (Log, Log) = Default::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = FallbackLayer::new()
        .target(
            Target::new("mini", Provider::OpenAi, WireFormat::OpenAiChat).model("gpt-4o-mini"),
            target(200, OPENAI_OK, b.clone()),
        )
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let svc = layer.layer(target(503, OVERLOADED, a.clone()));
    let res = svc.oneshot(request(OPENAI_BODY)).await.unwrap();
    assert_eq!(res.status(), 200);
    let answered = res.extensions().get::<Answered>().unwrap().clone();
    assert_eq!(
        (
            answered.target.as_str(),
            answered.model.as_deref(),
            answered.moved
        ),
        ("mini", Some("gpt-4o-mini"), true)
    );
    assert_eq!(
        body_json(res).await["choices"][0]["message"]["content"],
        "hello"
    );
    let seen = b.lock().unwrap()[0].clone();
    assert_eq!(seen.body["model"], "gpt-4o-mini");
    assert_eq!(seen.body["messages"][1]["content"], "hi");
    // Same provider, same format: the caller's credentials go along.
    assert_eq!(seen.headers["authorization"], "Bearer sk-openai");
    assert_eq!(a.lock().unwrap().len(), 1);
    let events = events.lock().unwrap().clone();
    assert!(matches!(&events[0], FallbackEvent::Failed { target, .. } if target == "primary"));
    assert!(
        matches!(&events[1], FallbackEvent::Answered { target, moved: true } if target == "mini")
    );
}

#[tokio::test]
async fn a_bad_request_does_not_move_on() {
    let (a, b): (Log, Log) = Default::default();
    let layer = FallbackLayer::new().target(
        Target::new("mini", Provider::OpenAi, WireFormat::OpenAiChat).model("gpt-4o-mini"),
        target(200, OPENAI_OK, b.clone()),
    );
    let res = layer
        .layer(target(400, BAD_REQUEST, a))
        .oneshot(request(OPENAI_BODY))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(body_json(res).await["error"]["message"], "bad");
    assert!(
        b.lock().unwrap().is_empty(),
        "another target would refuse it too"
    );
}

#[tokio::test]
async fn another_provider_gets_a_translated_request_and_the_caller_its_own_format() {
    let (a, b): (Log, Log) = Default::default();
    let layer = FallbackLayer::new().target(
        Target::new("claude", Provider::Anthropic, WireFormat::AnthropicMessages)
            .model("claude-haiku-4-5")
            .endpoint("https://api.anthropic.com/v1/messages".parse().unwrap())
            .header("x-api-key", "sk-ant"),
        target(200, ANTHROPIC_OK, b.clone()),
    );
    let res = layer
        .layer(unreachable(a))
        .oneshot(request(OPENAI_BODY))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer = body_json(res).await;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "claude-haiku-4-5");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "hello from claude"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 9);
    let seen = b.lock().unwrap()[0].clone();
    assert_eq!(seen.uri, "https://api.anthropic.com/v1/messages");
    assert_eq!(seen.body["model"], "claude-haiku-4-5");
    assert_eq!(seen.body["system"], "be brief");
    assert_eq!(seen.body["max_tokens"], 50);
    assert_eq!(seen.headers["x-api-key"], "sk-ant");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(
        !seen.headers.contains_key("authorization"),
        "OpenAI's key never goes to Anthropic"
    );
}

#[tokio::test]
async fn a_target_that_cannot_serve_the_call_is_skipped_and_every_failure_named() {
    let (a, b, c): (Log, Log, Log) = Default::default();
    let long = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}],"max_tokens":100}}"#,
        "word ".repeat(2_000)
    );
    let layer = FallbackLayer::new()
        .target(
            Target::new("small", Provider::OpenAi, WireFormat::OpenAiChat)
                .model("small")
                .context_window(1_000),
            unreachable(b.clone()),
        )
        .target(
            Target::new("large", Provider::OpenAi, WireFormat::OpenAiChat).model("large"),
            unreachable(c.clone()),
        );
    let e = layer
        .layer(unreachable(a.clone()))
        .oneshot(request(&long))
        .await
        .unwrap_err();
    let all = e
        .downcast_ref::<AllTargetsFailed>()
        .expect("AllTargetsFailed");
    let names: Vec<_> = all.targets.iter().map(|t| t.target.as_str()).collect();
    assert_eq!(names, ["primary", "small", "large"]);
    assert!(
        all.targets[1].outcome.starts_with("skipped: about"),
        "{all}"
    );
    assert!(all.targets[2].outcome.starts_with("connect"), "{all}");
    assert!(
        b.lock().unwrap().is_empty(),
        "nothing sent to a window too small"
    );
    assert_eq!((a.lock().unwrap().len(), c.lock().unwrap().len()), (1, 1));
}

#[tokio::test]
async fn the_attempt_budget_bounds_the_moves() {
    let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
    let layer = FallbackLayer::new()
        .max_attempts(2)
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
            target(503, OVERLOADED, logs[1].clone()),
        )
        .target(
            Target::new("c", Provider::OpenAi, WireFormat::OpenAiChat).model("c"),
            target(200, OPENAI_OK, logs[2].clone()),
        );
    let res = layer
        .layer(target(503, OVERLOADED, logs[0].clone()))
        .oneshot(request(OPENAI_BODY))
        .await
        .unwrap();
    // Two attempts in all: the last answer is the caller's.
    assert_eq!(res.status(), 503);
    let sent: Vec<_> = logs.iter().map(|l| l.lock().unwrap().len()).collect();
    assert_eq!(sent, [1, 1, 0]);
}

#[tokio::test]
async fn a_context_too_long_moves_only_to_a_larger_window() {
    const TOO_LONG: &str = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
    let logs: Vec<Log> = (0..3).map(|_| Log::default()).collect();
    let layer = FallbackLayer::new()
        .primary(Target::new("8k", Provider::OpenAi, WireFormat::OpenAiChat).context_window(8_192))
        .target(
            Target::new("also-8k", Provider::OpenAi, WireFormat::OpenAiChat)
                .model("also-8k")
                .context_window(8_192),
            target(200, OPENAI_OK, logs[1].clone()),
        )
        .target(
            Target::new("128k", Provider::OpenAi, WireFormat::OpenAiChat)
                .model("big")
                .context_window(128_000),
            target(200, OPENAI_OK, logs[2].clone()),
        );
    let res = layer
        .layer(target(400, TOO_LONG, logs[0].clone()))
        .oneshot(request(OPENAI_BODY))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "128k");
    let sent: Vec<_> = logs.iter().map(|l| l.lock().unwrap().len()).collect();
    assert_eq!(sent, [1, 0, 1]);
}

#[tokio::test]
async fn errors_that_do_not_move_on_reach_the_caller_as_they_are() {
    let b = Log::default();
    let layer = FallbackLayer::new().target(
        Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
        target(200, OPENAI_OK, b.clone()),
    );
    let svc = layer.layer(service_fn(|_req: Request<ReplayBody>| async {
        Err::<Response<Full<Bytes>>, BoxError>(BoxError::from("a bug of the caller's own"))
    }));
    let e = svc.oneshot(request(OPENAI_BODY)).await.unwrap_err();
    assert_eq!(e.to_string(), "a bug of the caller's own");
    assert!(b.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_target_whose_format_cannot_carry_the_request_is_skipped_without_an_attempt() {
    let (a, b, c): (Log, Log, Log) = Default::default();
    // Two choices: Anthropic has no `n`.
    let body = r#"{"model":"gpt-4o","n":2,"messages":[{"role":"user","content":"hi"}]}"#;
    let layer = FallbackLayer::new()
        .max_attempts(2)
        .target(
            Target::new("claude", Provider::Anthropic, WireFormat::AnthropicMessages)
                .model("claude-haiku-4-5")
                .header("x-api-key", "k"),
            target(200, ANTHROPIC_OK, b.clone()),
        )
        .target(
            Target::new("mini", Provider::OpenAi, WireFormat::OpenAiChat).model("gpt-4o-mini"),
            target(200, OPENAI_OK, c.clone()),
        );
    let res = layer
        .layer(target(503, OVERLOADED, a.clone()))
        .oneshot(request(body))
        .await
        .unwrap();
    // The skip cost no attempt: the budget of two reached "mini".
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "mini");
    assert!(b.lock().unwrap().is_empty());
    assert_eq!((a.lock().unwrap().len(), c.lock().unwrap().len()), (1, 1));
}

/// A target whose status the test sets (200 with `OPENAI_OK`, else an
/// overload).
fn switchable(
    status: Arc<std::sync::atomic::AtomicU16>,
) -> impl tower::Service<
    Request<ReplayBody>,
    Response = Res,
    Error = Infallible,
    Future = Answer<Infallible>,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<ReplayBody>| {
        let s = status.load(std::sync::atomic::Ordering::SeqCst);
        let body = if s == 200 { OPENAI_OK } else { OVERLOADED };
        std::future::ready(Ok(json_response(s, body)))
    })
}

#[tokio::test(start_paused = true)]
async fn when_every_target_fails_a_recent_answer_to_the_same_request_is_given_stale() {
    use llm_tower::fallback::{DEGRADED_HEADER, Degraded};
    use std::sync::atomic::AtomicU16;
    let status = Arc::new(AtomicU16::new(200));
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = FallbackLayer::new()
        .stale_answers(8, std::time::Duration::from_secs(600))
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
            switchable(status.clone()),
        )
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let svc = layer.layer(switchable(status.clone()));
    // A good answer, read to its end, is kept.
    let fresh = svc.clone().oneshot(request(OPENAI_BODY)).await.unwrap();
    assert!(fresh.headers().get(DEGRADED_HEADER).is_none());
    let fresh = body_json(fresh).await;
    // An answer not read to its end is not.
    let other = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"other"}]}"#;
    drop(svc.clone().oneshot(request(other)).await.unwrap());
    status.store(503, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(std::time::Duration::from_secs(60)).await;
    let res = svc.clone().oneshot(request(OPENAI_BODY)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[DEGRADED_HEADER], "stale");
    assert_eq!(
        res.extensions().get::<Degraded>(),
        Some(&Degraded::Stale {
            age: std::time::Duration::from_secs(60)
        })
    );
    assert_eq!(body_json(res).await, fresh);
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&FallbackEvent::Degraded { how: "stale" })
    );
    // Nothing kept for the other request: the last answer, a 503.
    let res = svc.clone().oneshot(request(other)).await.unwrap();
    assert_eq!(res.status(), 503);
    // Too old: not given.
    tokio::time::advance(std::time::Duration::from_secs(600)).await;
    let res = svc.oneshot(request(OPENAI_BODY)).await.unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test]
async fn when_every_target_fails_a_static_answer_in_the_callers_format() {
    use llm_tower::fallback::{DEGRADED_HEADER, Degraded};
    let a = Log::default();
    let layer = FallbackLayer::new().static_answer("The assistant is unavailable; try again soon.");
    let svc = layer.layer(target(503, OVERLOADED, a));
    // JSON, OpenAI's format.
    let res = svc.clone().oneshot(request(OPENAI_BODY)).await.unwrap();
    assert_eq!(res.headers()[DEGRADED_HEADER], "static");
    assert_eq!(res.extensions().get::<Degraded>(), Some(&Degraded::Static));
    let answer = body_json(res).await;
    let parsed: async_openai::types::chat::CreateChatCompletionResponse =
        serde_json::from_value(answer.clone()).unwrap();
    assert_eq!(
        parsed.choices[0].message.content.as_deref(),
        Some("The assistant is unavailable; try again soon.")
    );
    // A stream: OpenAI's chunks, ending with [DONE].
    let stream_body =
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let res = svc.oneshot(request(stream_body)).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.contains("try again soon"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

/// Sets its flag when dropped armed: a call cancelled before it answered.
struct DropFlag(Option<Arc<std::sync::atomic::AtomicBool>>);

impl DropFlag {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A target answering `OPENAI_OK` after `delay`; `cancelled` is set if its
/// call is dropped before that.
fn slow(
    delay: std::time::Duration,
    log: Log,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
) -> impl tower::Service<
    Request<ReplayBody>,
    Response = Res,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Res, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<ReplayBody>| {
        log.lock().unwrap().push(Seen {
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
            body: serde_json::from_slice(req.body().bytes()).unwrap(),
        });
        let mut flag = DropFlag(Some(cancelled.clone()));
        async move {
            tokio::time::sleep(delay).await;
            flag.disarm();
            Ok(json_response(200, OPENAI_OK))
        }
    })
}

fn hedged(body: &str) -> Request<ReplayBody> {
    let mut req = request(body);
    req.extensions_mut().insert(llm_tower::fallback::Hedge);
    req
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_wins_cancels_the_slow_target_at_once() {
    use std::{sync::atomic::AtomicBool, time::Duration};
    let (a, b): (Log, Log) = Default::default();
    let (a_cancelled, b_cancelled) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = FallbackLayer::new()
        .hedge(Duration::from_secs(1), 1.0)
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
            slow(Duration::from_millis(100), b.clone(), b_cancelled.clone()),
        )
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let svc = layer.layer(slow(
        Duration::from_secs(10),
        a.clone(),
        a_cancelled.clone(),
    ));
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(hedged(OPENAI_BODY)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(1_100));
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "b");
    assert!(
        a_cancelled.load(std::sync::atomic::Ordering::SeqCst),
        "the loser was dropped"
    );
    assert!(!b_cancelled.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&FallbackEvent::Hedged { target: "b".into() })
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_loses_is_cancelled_and_unmarked_calls_are_never_hedged() {
    use std::{sync::atomic::AtomicBool, time::Duration};
    let (a, b): (Log, Log) = Default::default();
    let (a_cancelled, b_cancelled) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let layer = FallbackLayer::new()
        .hedge(Duration::from_secs(1), 1.0)
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
            slow(Duration::from_secs(5), b.clone(), b_cancelled.clone()),
        );
    let svc = layer.layer(slow(Duration::from_secs(2), a.clone(), a_cancelled.clone()));
    let start = tokio::time::Instant::now();
    let res = svc.clone().oneshot(hedged(OPENAI_BODY)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        res.extensions().get::<Answered>().unwrap().target,
        "primary"
    );
    assert!(
        b_cancelled.load(std::sync::atomic::Ordering::SeqCst),
        "the hedge was dropped"
    );
    assert_eq!(b.lock().unwrap().len(), 1);
    // Not marked: no hedge, however slow.
    let start = tokio::time::Instant::now();
    svc.oneshot(request(OPENAI_BODY)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(b.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn hedges_are_bounded_by_their_ratio() {
    use std::{sync::atomic::AtomicBool, time::Duration};
    let (a, b): (Log, Log) = Default::default();
    let flag = Arc::new(AtomicBool::new(false));
    // One hedge per two eligible calls.
    let layer = FallbackLayer::new()
        .hedge(Duration::from_secs(1), 0.5)
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
            slow(Duration::from_millis(10), b.clone(), flag.clone()),
        );
    let svc = layer.layer(slow(Duration::from_secs(2), a.clone(), flag.clone()));
    let mut answered_by = Vec::new();
    for _ in 0..4 {
        let res = svc.clone().oneshot(hedged(OPENAI_BODY)).await.unwrap();
        answered_by.push(res.extensions().get::<Answered>().unwrap().target.clone());
    }
    assert_eq!(answered_by, ["primary", "b", "primary", "b"]);
    assert_eq!(b.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_hedging_delay_follows_a_percentile_of_the_targets_answer_times() {
    use std::{
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
        time::Duration,
    };
    let b = Log::default();
    let flag = Arc::new(AtomicBool::new(false));
    // The first target's answer time, set by the test.
    let millis = Arc::new(AtomicU64::new(100));
    let primary = {
        let millis = millis.clone();
        service_fn(move |_req: Request<ReplayBody>| {
            let d = Duration::from_millis(millis.load(Ordering::SeqCst));
            async move {
                tokio::time::sleep(d).await;
                Ok::<_, Infallible>(json_response(200, OPENAI_OK))
            }
        })
    };
    let layer = FallbackLayer::new()
        .hedge_at_percentile(0.95, Duration::from_secs(8), 1.0)
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat).model("b"),
            slow(Duration::from_millis(10), b.clone(), flag),
        );
    let svc = layer.layer(primary);
    // Twenty answers in 100 ms: the 95th percentile is 100 ms, the delay
    // its floor, 8 s / 4.
    for _ in 0..20 {
        svc.clone().oneshot(hedged(OPENAI_BODY)).await.unwrap();
    }
    assert!(b.lock().unwrap().is_empty());
    millis.store(30_000, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let res = svc.clone().oneshot(hedged(OPENAI_BODY)).await.unwrap();
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "b");
    assert_eq!(start.elapsed(), Duration::from_millis(2_010));
}

#[tokio::test(start_paused = true)]
async fn no_hedge_goes_to_a_target_that_says_it_cannot_take_a_call() {
    use std::{
        sync::atomic::{AtomicBool, Ordering},
        time::Duration,
    };
    let (a, b): (Log, Log) = Default::default();
    let flag = Arc::new(AtomicBool::new(false));
    // As a breaker handle would say: open, then closed.
    let open = Arc::new(AtomicBool::new(true));
    let is_open = open.clone();
    let layer = FallbackLayer::new()
        .hedge(Duration::from_secs(1), 1.0)
        .target(
            Target::new("b", Provider::OpenAi, WireFormat::OpenAiChat)
                .model("b")
                .available(move || !is_open.load(Ordering::SeqCst)),
            slow(Duration::from_millis(10), b.clone(), flag.clone()),
        );
    let svc = layer.layer(slow(Duration::from_secs(3), a.clone(), flag));
    let start = tokio::time::Instant::now();
    let res = svc.clone().oneshot(hedged(OPENAI_BODY)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3), "no hedge: waited");
    assert_eq!(
        res.extensions().get::<Answered>().unwrap().target,
        "primary"
    );
    assert!(b.lock().unwrap().is_empty(), "nothing sent to it");
    open.store(false, Ordering::SeqCst);
    let res = svc.oneshot(hedged(OPENAI_BODY)).await.unwrap();
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "b");
}
