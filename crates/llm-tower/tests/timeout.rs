//! TimeoutLayer, phase by phase, with paused time: each limit fires exactly
//! at its limit and not before, against scripted inner services and against
//! the mock provider over loopback.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    classify::{Classifier, DefaultClassifier, FailureClass},
    deadline::Deadline,
    request::{PrepareLayer, ReplayBody, RequestMeta},
    timeout::{Elapsed, Phase, TimeoutBody, TimeoutConfig, TimeoutLayer},
};
use llm_tower_mock::{Fault, MockServer, Rule};
use tokio::{sync::mpsc, time::advance};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_test::mock;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

type ChanBody = BoxBody<Bytes, Infallible>;

/// A body whose chunks the test sends; dropping the sender ends it.
fn chan_body() -> (mpsc::UnboundedSender<&'static str>, ChanBody) {
    let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(Bytes::from_static(chunk.as_bytes()))), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

fn sse_response(body: ChanBody) -> Response<ChanBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn request(model: &str, stream: bool) -> Request<String> {
    let mut req = Request::post("http://llm.test/v1/chat/completions")
        .body(String::new())
        .unwrap();
    req.extensions_mut()
        .insert(RequestMeta::new(None).with_model(model).with_stream(stream));
    req
}

type Svc = llm_tower::timeout::Timeout<mock::Mock<Request<String>, Response<ChanBody>>>;

fn stack(config: TimeoutConfig) -> (Svc, mock::Handle<Request<String>, Response<ChanBody>>) {
    let (svc, handle) = mock::pair();
    (TimeoutLayer::try_from(config).unwrap().layer(svc), handle)
}

fn elapsed(err: BoxError) -> Elapsed {
    err.downcast_ref::<Elapsed>()
        .unwrap_or_else(|| panic!("not a timeout: {err}"))
        .clone()
}

/// Polls a body once.
fn poll_body(
    body: &mut Pin<Box<TimeoutBody<ChanBody>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let mut t = task::spawn(());
    t.enter(|cx, _| body.as_mut().poll_frame(cx))
}

/// Advances paused time by `d`, then polls the body once: it must still be
/// going (pending, or a frame), not failed or ended.
async fn hold(body: &mut Pin<Box<TimeoutBody<ChanBody>>>, d: Duration) {
    advance(d).await;
    match poll_body(body) {
        Poll::Pending => {}
        Poll::Ready(Some(Ok(_))) => {}
        other => panic!(
            "expected the body to go on, got {:?}",
            other.map(|o| o.map(|r| r.map(|_| ()).map_err(|e| e.to_string())))
        ),
    }
}

fn body_err(body: &mut Pin<Box<TimeoutBody<ChanBody>>>) -> Elapsed {
    match poll_body(body) {
        Poll::Ready(Some(Err(e))) => elapsed(e),
        other => panic!(
            "expected a timeout, got {:?}",
            other.map(|o| o.map(|r| r.map(|_| ()).map_err(|e| e.to_string())))
        ),
    }
}

#[tokio::test(start_paused = true)]
async fn first_byte_fires_exactly_at_its_limit() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().first_byte(2 * SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", false)));
    assert_pending!(fut.poll());
    let (_req, _send) = handle.next_request().await.unwrap();
    advance(2 * SEC - MS).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!(
        (e.phase(), e.limit(), e.after()),
        (Phase::FirstByte, 2 * SEC, 2 * SEC)
    );
    assert_eq!(
        e.to_string(),
        "time to first byte timed out: limit 2s elapsed after 2s"
    );
}

#[tokio::test(start_paused = true)]
async fn headers_just_in_time_pass_and_first_byte_stops_counting() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().first_byte(2 * SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", false)));
    assert_pending!(fut.poll());
    let (_req, send) = handle.next_request().await.unwrap();
    advance(2 * SEC - MS).await;
    let (tx, body) = chan_body();
    send.send_response(Response::new(body));
    let resp = assert_ready!(fut.poll()).unwrap();
    let mut body = Box::pin(resp.into_body());
    // The body is not bound by first_byte.
    hold(&mut body, 60 * SEC).await;
    tx.send("late but fine").unwrap();
    drop(tx);
    assert!(matches!(poll_body(&mut body), Poll::Ready(Some(Ok(_)))));
    assert!(matches!(poll_body(&mut body), Poll::Ready(None)));
}

#[tokio::test(start_paused = true)]
async fn total_and_attempt_hold_through_the_body() {
    for (config, phase) in [
        (TimeoutConfig::new().total(5 * SEC), Phase::Total),
        (TimeoutConfig::new().attempt(5 * SEC), Phase::Attempt),
        (
            TimeoutConfig::new().total(9 * SEC).attempt(5 * SEC),
            Phase::Attempt,
        ),
    ] {
        let (mut svc, mut handle) = stack(config);
        svc.ready().await.unwrap();
        let mut fut = task::spawn(svc.call(request("gpt-4o", false)));
        assert_pending!(fut.poll());
        let (_req, send) = handle.next_request().await.unwrap();
        advance(SEC).await;
        let (tx, body) = chan_body();
        send.send_response(Response::new(body));
        let mut body = Box::pin(assert_ready!(fut.poll()).unwrap().into_body());
        tx.send("chunk").unwrap();
        hold(&mut body, SEC).await;
        hold(&mut body, 3 * SEC - MS).await;
        advance(MS).await;
        let e = body_err(&mut body);
        assert_eq!((e.phase(), e.limit(), e.after()), (phase, 5 * SEC, 5 * SEC));
        assert!(
            tx.is_closed(),
            "the inner body is dropped with the error: upstream is cancelled"
        );
        // Then the body ends.
        assert!(matches!(poll_body(&mut body), Poll::Ready(None)));
    }
}

#[tokio::test(start_paused = true)]
async fn first_token_ignores_keep_alives_and_fires_at_its_limit() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().first_token(3 * SEC).idle(10 * SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", true)));
    assert_pending!(fut.poll());
    let (_req, send) = handle.next_request().await.unwrap();
    let (tx, body) = chan_body();
    send.send_response(sse_response(body));
    let mut body = Box::pin(assert_ready!(fut.poll()).unwrap().into_body());
    hold(&mut body, SEC).await;
    tx.send(": keep-alive\n\n").unwrap();
    hold(&mut body, SEC).await;
    tx.send("event: ping\n\n").unwrap();
    hold(&mut body, SEC - MS).await;
    advance(MS).await;
    let e = body_err(&mut body);
    assert_eq!((e.phase(), e.after()), (Phase::FirstToken, 3 * SEC));
}

#[tokio::test(start_paused = true)]
async fn a_first_token_in_time_ends_the_first_token_limit() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().first_token(3 * SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", true)));
    assert_pending!(fut.poll());
    let (_req, send) = handle.next_request().await.unwrap();
    let (tx, body) = chan_body();
    send.send_response(sse_response(body));
    let mut body = Box::pin(assert_ready!(fut.poll()).unwrap().into_body());
    hold(&mut body, 3 * SEC - MS).await;
    tx.send("data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n")
        .unwrap();
    hold(&mut body, 60 * SEC).await;
}

#[tokio::test(start_paused = true)]
async fn first_token_counts_from_the_call_when_headers_are_late() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().first_token(3 * SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", true)));
    assert_pending!(fut.poll());
    let _pending = handle.next_request().await.unwrap();
    advance(3 * SEC - MS).await;
    assert_pending!(fut.poll());
    advance(MS).await;
    let e = elapsed(assert_ready!(fut.poll()).unwrap_err());
    assert_eq!((e.phase(), e.after()), (Phase::FirstToken, 3 * SEC));
    // Not for a request that does not stream.
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", false)));
    assert_pending!(fut.poll());
    let _pending = handle.next_request().await.unwrap();
    advance(60 * SEC).await;
    assert_pending!(fut.poll());
}

#[tokio::test(start_paused = true)]
async fn a_slow_stream_that_keeps_producing_is_not_cut_but_a_gap_is() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().idle(SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", true)));
    assert_pending!(fut.poll());
    let (_req, send) = handle.next_request().await.unwrap();
    let (tx, body) = chan_body();
    send.send_response(sse_response(body));
    let mut body = Box::pin(assert_ready!(fut.poll()).unwrap().into_body());
    // Two minutes of a chunk every 900 ms.
    for _ in 0..133 {
        hold(&mut body, 900 * MS).await;
        tx.send("data: {}\n\n").unwrap();
        assert!(matches!(poll_body(&mut body), Poll::Ready(Some(Ok(_)))));
    }
    // Then silence: exactly one second after the wait began.
    assert!(poll_body(&mut body).is_pending());
    advance(SEC - MS).await;
    assert!(poll_body(&mut body).is_pending());
    advance(MS).await;
    let e = body_err(&mut body);
    assert_eq!(e.phase(), Phase::Idle);
    assert_eq!(e.after(), 133 * 900 * MS + SEC);
}

#[tokio::test(start_paused = true)]
async fn the_stream_limit_runs_from_the_headers() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().stream(4 * SEC));
    svc.ready().await.unwrap();
    let mut fut = task::spawn(svc.call(request("gpt-4o", true)));
    assert_pending!(fut.poll());
    let (_req, send) = handle.next_request().await.unwrap();
    advance(SEC).await;
    let (tx, body) = chan_body();
    send.send_response(sse_response(body));
    let mut body = Box::pin(assert_ready!(fut.poll()).unwrap().into_body());
    for _ in 0..7 {
        hold(&mut body, 500 * MS).await;
        tx.send("data: {}\n\n").unwrap();
        assert!(matches!(poll_body(&mut body), Poll::Ready(Some(Ok(_)))));
    }
    hold(&mut body, 500 * MS - MS).await;
    advance(MS).await;
    let e = body_err(&mut body);
    assert_eq!(
        (e.phase(), e.limit(), e.after()),
        (Phase::Stream, 4 * SEC, 5 * SEC)
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_set_outside_is_visible_inside_and_shrinks() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<String>| {
            let seen = seen.clone();
            async move {
                let d = Deadline::get(&req).expect("a deadline");
                seen.lock()
                    .unwrap()
                    .push(d.remaining(tokio::time::Instant::now()));
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::new())))
            }
        })
    };
    let outer = TimeoutLayer::try_from(TimeoutConfig::new().total(10 * SEC)).unwrap();
    let svc = ServiceBuilder::new()
        .layer(outer.clone())
        .layer(TimeoutLayer::try_from(TimeoutConfig::new().attempt(3 * SEC)).unwrap())
        .service(inner.clone());
    svc.oneshot(request("m", false)).await.unwrap();
    let svc = ServiceBuilder::new()
        .layer(outer.clone())
        .layer(TimeoutLayer::try_from(TimeoutConfig::new().attempt(30 * SEC)).unwrap())
        .service(inner.clone());
    svc.oneshot(request("m", false)).await.unwrap();
    // Time spent before an inner layer is gone from what it sees.
    let delayed = ServiceBuilder::new()
        .layer(outer)
        .layer(tower::layer::layer_fn(|s| {
            tower::service_fn({
                let s: tower::util::BoxCloneService<_, _, _> = tower::util::BoxCloneService::new(s);
                move |req| {
                    let s = s.clone();
                    async move {
                        tokio::time::sleep(4 * SEC).await;
                        s.oneshot(req).await
                    }
                }
            })
        }))
        .service(inner);
    delayed.oneshot(request("m", false)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [3 * SEC, 10 * SEC, 6 * SEC]);
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_is_not_sent() {
    let (mut svc, mut handle) = stack(TimeoutConfig::new().attempt(5 * SEC));
    let mut req = request("m", false);
    Deadline::shrink(&mut req, tokio::time::Instant::now());
    svc.ready().await.unwrap();
    let e = elapsed(svc.call(req).await.unwrap_err());
    assert_eq!(e.phase(), Phase::Deadline);
    assert_eq!(e.to_string(), "deadline already passed: request not sent");
    handle.allow(0);
    assert!(
        tokio::time::timeout(SEC, handle.next_request())
            .await
            .is_err(),
        "nothing reached the inner service"
    );
    let f = DefaultClassifier::new().classify_error(&e);
    assert_eq!(f.class(), FailureClass::Timeout);
    assert!(!f.is_retryable() && !f.counts_against_health());
}

#[tokio::test(start_paused = true)]
async fn a_timeout_drops_the_inner_call_at_once() {
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let inner = {
        let dropped = dropped.clone();
        tower::service_fn(move |_req: Request<String>| {
            let guard = Guard(dropped.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::new())))
            }
        })
    };
    let svc = TimeoutLayer::try_from(TimeoutConfig::new().first_byte(SEC))
        .unwrap()
        .layer(inner);
    let mut fut = task::spawn(svc.oneshot(request("m", false)));
    assert_pending!(fut.poll());
    assert!(!dropped.load(Ordering::SeqCst));
    advance(SEC).await;
    assert!(assert_ready!(fut.poll()).is_err());
    assert!(
        dropped.load(Ordering::SeqCst),
        "the upstream call is cancelled with the error, not later"
    );
}

#[tokio::test(start_paused = true)]
async fn profiles_give_each_model_its_own_limits() {
    let config = TimeoutConfig::new()
        .first_byte(2 * SEC)
        .profile("o3*", TimeoutConfig::new().first_byte(10 * SEC))
        .profile("o3-pro", TimeoutConfig::new().first_byte(20 * SEC));
    let (mut svc, mut handle) = stack(config);
    let mut futs = Vec::new();
    for model in ["gpt-4o", "o3-mini", "o3-pro"] {
        svc.ready().await.unwrap();
        let mut f = task::spawn(svc.call(request(model, false)));
        assert_pending!(f.poll());
        futs.push((model, f, handle.next_request().await.unwrap()));
    }
    let mut fired = Vec::new();
    for _ in 0..20 {
        advance(SEC).await;
        for (model, f, _) in &mut futs {
            if !fired.iter().any(|(m, _)| m == model) && f.poll().is_ready() {
                fired.push((*model, tokio::time::Instant::now()));
            }
        }
    }
    let after: Vec<_> = fired.iter().map(|(m, _)| *m).collect();
    assert_eq!(after, ["gpt-4o", "o3-mini", "o3-pro"]);
}

#[test]
fn config_reads_human_durations_and_refuses_nonsense() {
    let c: TimeoutConfig = serde_json::from_str(
        r#"{"total":"2m","attempt":"30s","first_byte":"10s","first_token":"15s","idle":"5s","stream":"25s"}"#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.total, Some(120 * SEC));
    for (json, message) in [
        (
            r#"{"total":"30s","attempt":"1m"}"#,
            "attempt (1m) is longer than total (30s)",
        ),
        (
            r#"{"attempt":"10s","first_token":"20s"}"#,
            "first_token (20s) is longer than attempt (10s)",
        ),
        (
            r#"{"idle":"0s"}"#,
            "idle is 0s, which would fail every call",
        ),
        (
            r#"{"total":"30s","profiles":{"o3*":{"attempt":"1m"}}}"#,
            "profile `o3*`: attempt (1m) is longer than total (30s)",
        ),
        (
            r#"{"profiles":{"a":{"profiles":{"b":{}}}}}"#,
            "profile `a` has profiles of its own",
        ),
        (r#"{"profiles":{"*":{"idle":"1s"}}}"#, "matches every model"),
    ] {
        let c: TimeoutConfig = serde_json::from_str(json).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(message), "{json}: {err}");
        assert!(TimeoutLayer::try_from(c).is_err());
    }
    let unknown = serde_json::from_str::<TimeoutConfig>(r#"{"first_tokn":"1s"}"#).unwrap_err();
    assert!(unknown.to_string().contains("unknown field `first_tokn`"));
    let bad = serde_json::from_str::<TimeoutConfig>(r#"{"idle":"soon"}"#).unwrap_err();
    assert!(
        bad.to_string().contains("idle") || bad.to_string().contains("soon"),
        "{bad}"
    );
}

#[test]
fn whole_call_and_per_attempt_split_one_config() {
    let c = TimeoutConfig::new()
        .total(60 * SEC)
        .attempt(20 * SEC)
        .first_token(5 * SEC)
        .profile(
            "o3*",
            TimeoutConfig::new().total(300 * SEC).first_token(90 * SEC),
        );
    let outer = c.whole_call();
    assert_eq!(outer.limits_for(Some("gpt-4o")).total, Some(60 * SEC));
    assert_eq!(outer.limits_for(Some("gpt-4o")).first_token, None);
    assert_eq!(outer.limits_for(Some("o3")).total, Some(300 * SEC));
    let inner = c.per_attempt();
    assert_eq!(inner.limits_for(Some("o3")).total, None);
    assert_eq!(inner.limits_for(Some("o3")).first_token, Some(90 * SEC));
    assert_eq!(inner.limits_for(Some("gpt-4o")).attempt, Some(20 * SEC));
}

#[tokio::test(start_paused = true)]
async fn elapsed_is_a_retryable_timeout_named_by_its_phase() {
    let svc = TimeoutLayer::try_from(TimeoutConfig::new().first_token(SEC))
        .unwrap()
        .layer(tower::service_fn(|_r: Request<String>| {
            std::future::pending::<Result<Response<http_body_util::Full<Bytes>>, Infallible>>()
        }));
    let err = svc.oneshot(request("m", true)).await.unwrap_err();
    let f = DefaultClassifier::new().classify_error(&*err);
    assert_eq!(f.class(), FailureClass::Timeout);
    assert!(f.is_retryable());
    assert_eq!(f.code(), Some("first_token"));
}

// --- Against the mock provider, over loopback ---

async fn through_mock(
    mock: &MockServer,
    config: TimeoutConfig,
    stream: bool,
) -> (Result<(), Elapsed>, Duration) {
    through_mock_as(mock, config, stream, false).await
}

/// Like [`through_mock`], as an Anthropic request or, with `openai`, an
/// OpenAI chat request.
async fn through_mock_as(
    mock: &MockServer,
    config: TimeoutConfig,
    stream: bool,
    openai: bool,
) -> (Result<(), Elapsed>, Duration) {
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(TimeoutLayer::try_from(config).unwrap())
        .service(client);
    let (path, body) = if openai {
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
        });
        ("/v1/chat/completions", body)
    } else {
        let body = serde_json::json!({
            "model": "claude-haiku-4-5",
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
        });
        ("/v1/messages", body)
    };
    let req = Request::post(format!("{}{path}", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let start = tokio::time::Instant::now();
    let result = async {
        let resp = svc.oneshot(req).await?;
        resp.into_body().collect().await?;
        Ok::<_, BoxError>(())
    }
    .await
    .map_err(elapsed);
    (result, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn the_mocks_slow_first_byte() {
    let mock = MockServer::builder()
        .rule(Rule::new(Fault::SlowFirstByte { delay: 5 * SEC }))
        .start()
        .await
        .unwrap();
    let (r, took) = through_mock(&mock, TimeoutConfig::new().first_byte(2 * SEC), false).await;
    assert_eq!(r.unwrap_err().phase(), Phase::FirstByte);
    assert_eq!(took, 2 * SEC);
    let (r, took) = through_mock(&mock, TimeoutConfig::new().first_byte(5 * SEC + MS), false).await;
    assert!(r.is_ok());
    assert_eq!(took, 5 * SEC);
}

#[tokio::test(start_paused = true)]
async fn the_mocks_slow_first_token() {
    let mock = MockServer::builder()
        .rule(Rule::new(Fault::slow_first_token(5 * SEC)))
        .start()
        .await
        .unwrap();
    let (r, took) = through_mock(&mock, TimeoutConfig::new().first_token(3 * SEC), true).await;
    let e = r.unwrap_err();
    assert_eq!((e.phase(), e.after()), (Phase::FirstToken, 3 * SEC));
    assert_eq!(took, 3 * SEC);
    let (r, took) = through_mock(&mock, TimeoutConfig::new().first_token(6 * SEC), true).await;
    assert!(r.is_ok());
    assert_eq!(took, 5 * SEC);
}

#[tokio::test(start_paused = true)]
async fn pings_and_empty_deltas_are_not_a_first_token_but_are_not_silence() {
    // Anthropic: message_start, content_block_start and a ping at once, a
    // ping every second, the first delta after 5 s. OpenAI-compatible: the
    // role chunk and two empty deltas at once, an empty delta every second,
    // the first token after 5 s.
    let mock = MockServer::builder()
        .rule(Rule::new(Fault::EmptyDeltas { count: 2 }))
        .rule(Rule::new(Fault::SlowFirstToken {
            delay: 5 * SEC,
            keepalive: Some(SEC),
        }))
        .start()
        .await
        .unwrap();
    for openai in [false, true] {
        // Used alone, the layer parses the stream itself.
        let (r, took) = through_mock_as(
            &mock,
            TimeoutConfig::new().first_token(3 * SEC),
            true,
            openai,
        )
        .await;
        let e = r.unwrap_err();
        assert_eq!(
            (e.phase(), took),
            (Phase::FirstToken, 3 * SEC),
            "openai: {openai}"
        );
        // Keep-alives every second end each idle period of 2 s.
        let config = TimeoutConfig::new().first_token(6 * SEC).idle(2 * SEC);
        let (r, took) = through_mock_as(&mock, config, true, openai).await;
        assert!(r.is_ok(), "openai: {openai}: {r:?}");
        assert_eq!(took, 5 * SEC, "openai: {openai}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_mocks_stall_mid_stream() {
    let mock = MockServer::builder()
        .token_interval(500 * MS)
        .rule(
            Rule::new(Fault::Stall {
                after: 3,
                duration: 10 * SEC,
            })
            .times(1),
        )
        .start()
        .await
        .unwrap();
    // Three tokens at 500 ms each, then silence: idle fires 2 s later.
    let config = TimeoutConfig::new().first_token(SEC).idle(2 * SEC);
    let (r, took) = through_mock(&mock, config.clone(), true).await;
    let e = r.unwrap_err();
    assert_eq!(e.phase(), Phase::Idle);
    assert_eq!(took, 1500 * MS + 2 * SEC);
    // The same healthy slow stream, without the stall, is not cut.
    let (r, _) = through_mock(&mock, config, true).await;
    assert!(r.is_ok(), "{r:?}");
}
