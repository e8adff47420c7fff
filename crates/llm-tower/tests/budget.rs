//! BudgetLayer over a scripted provider, with paused time: reservation of
//! the worst case, settlement exactly once to the metered cost, refusals,
//! windows, scopes, unpriced models, alerts, and the guarantee under load.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use llm_tower::{
    BoxError,
    budget::{
        Amount, BudgetConfig, BudgetEvent, BudgetExceeded, BudgetLayer, BudgetTenant, CallCost,
        Limit, Scope, ScopeBudget, UnpricedPolicy, Window,
    },
    classify::{BUDGET_EXCEEDED, Classifier, DefaultClassifier},
    clock::TokioClock,
    metering::MeterLayer,
    pricing::{Cost, ModelPrice, PriceTable, Unpriced},
    provider::{Endpoint, Provider, WireFormat},
    request::RequestMeta,
};
use tower::{Layer, Service, ServiceExt, service_fn};

/// $1 per million input tokens, $2 per million output: one input token is
/// 1,000 nano-dollars, one output token 2,000.
fn prices() -> PriceTable {
    PriceTable::empty()
        .with_price("m", ModelPrice::new(1.0, 2.0).unwrap())
        .with_price("dear", ModelPrice::new(10.0, 20.0).unwrap())
}

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
        .header("content-type", "application/json")
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(m);
    req
}

/// A call whose worst case is 1,000 input and 500 output tokens of `m`:
/// 1,000·1,000 + 500·2,000 = 2,000,000 nano-dollars ($0.002).
fn call() -> Request<String> {
    request(meta("m", 1_000, Some(500)))
}

const WORST: u64 = 2_000_000;

type Res = Response<Full<Bytes>>;

fn json_usage(prompt: u64, completion: u64) -> Res {
    let body = format!(
        r#"{{"id":"x","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
        prompt + completion
    );
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The cost of `prompt` input and `completion` output tokens of `m`.
fn cost(prompt: u64, completion: u64) -> u64 {
    prompt * 1_000 + completion * 2_000
}

/// A provider answering every call with this usage, counting calls.
fn provider(
    prompt: u64,
    completion: u64,
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
        std::future::ready(Ok(json_usage(prompt, completion)))
    })
}

fn budget(config: BudgetConfig) -> BudgetLayer {
    BudgetLayer::new(config.build().unwrap()).prices(prices())
}

fn global_usd(usd: f64, window: Window) -> BudgetConfig {
    BudgetConfig::new().scope(ScopeBudget::global().limit(Limit::usd(usd, window)))
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

async fn read<B: http_body::Body>(res: Response<B>) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn reserves_the_worst_case_then_settles_the_metered_cost() {
    let layer = budget(global_usd(1.0, Window::Day));
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(MeterLayer::new().layer(provider(900, 100, calls.clone())));
    let res = svc.oneshot(call()).await.unwrap();

    // The body is not read yet: the worst case is still reserved.
    let stats = handle.stats();
    assert_eq!(stats.reserved, Cost::from_nanos(WORST));
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].reserved, Amount::Usd(Cost::from_nanos(WORST)));
    assert_eq!(status[0].spent, Amount::Usd(Cost::ZERO));

    let call_cost = res.extensions().get::<CallCost>().unwrap().clone();
    read(res).await;
    let stats = handle.stats();
    assert_eq!(stats.reserved, Cost::ZERO);
    assert_eq!(stats.reserved_peak, Cost::from_nanos(WORST));
    assert_eq!(stats.spent, Cost::from_nanos(cost(900, 100)));
    assert_eq!((stats.attempts, stats.settled), (1, 1));
    assert_eq!(call_cost.cost(), Cost::from_nanos(cost(900, 100)));
    assert_eq!(call_cost.tokens(), 1_000);
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(
        status[0].spent,
        Amount::Usd(Cost::from_nanos(cost(900, 100)))
    );
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
    assert_eq!(
        status[0].remaining,
        Amount::Usd(Cost::from_nanos(1_000_000_000 - cost(900, 100)))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn cached_input_and_reasoning_are_priced_as_the_provider_bills_them() {
    // $1 per million input, $0.50 cached, $2 output (reasoning included).
    let table = PriceTable::empty().with_price(
        "m",
        ModelPrice::new(1.0, 2.0)
            .unwrap()
            .with_cached_input(0.5)
            .unwrap(),
    );
    let layer = BudgetLayer::new(global_usd(1.0, Window::Total).build().unwrap()).prices(table);
    let handle = layer.handle();
    let svc = layer.layer(MeterLayer::new().layer(service_fn(|_req: Request<String>| async {
        let body = r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100,"prompt_tokens_details":{"cached_tokens":800},"completion_tokens_details":{"reasoning_tokens":60}}}"#;
        let res = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        Ok::<_, Infallible>(res)
    })));
    let res = svc.oneshot(call()).await.unwrap();
    let call_cost = res.extensions().get::<CallCost>().unwrap().clone();
    read(res).await;
    // 200 uncached at 1,000, 800 cached at 500, 100 output at 2,000.
    let expected = Cost::from_nanos(200 * 1_000 + 800 * 500 + 100 * 2_000);
    assert_eq!(call_cost.cost(), expected);
    assert_eq!(handle.stats().spent, expected);
}

#[tokio::test(start_paused = true)]
async fn without_a_meter_inside_the_layer_meters_itself() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let svc = layer.layer(provider(10, 20, Arc::new(AtomicUsize::new(0))));
    let res = svc.oneshot(call()).await.unwrap();
    let call_cost = res.extensions().get::<CallCost>().unwrap().clone();
    read(res).await;
    assert_eq!(handle.stats().spent, Cost::from_nanos(cost(10, 20)));
    assert_eq!(call_cost.cost(), Cost::from_nanos(cost(10, 20)));
    assert_eq!(handle.stats().reserved, Cost::ZERO);
}

#[tokio::test(start_paused = true)]
async fn deferring_without_a_meter_inside_charges_the_call_after_the_fact() {
    use llm_tower::budget::Arrival;

    let calls = Arc::new(AtomicUsize::new(0));
    let layer = budget(global_usd(0.001, Window::Total).arrival(Arrival::Defer));
    let handle = layer.handle();
    // No meter: nothing consults the gate, so the call goes out unreserved.
    let svc = layer.layer(provider(1_000, 500, calls.clone()));
    let res = svc.oneshot(call()).await.unwrap();
    read(res).await;
    let stats = handle.stats();
    assert_eq!((stats.unreserved, stats.refused), (1, 0), "{stats:?}");
    // Nothing is lost: the spend is recorded, past the limit.
    assert_eq!(stats.spent, Cost::from_nanos(WORST));
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].spent, Amount::Usd(Cost::from_nanos(WORST)));
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));

    // `Auto` never defers for a service whose calls no meter consulted.
    let layer = budget(global_usd(0.003, Window::Total));
    let svc = layer.layer(provider(1_000, 500, calls.clone()));
    read(svc.clone().oneshot(call()).await.unwrap()).await;
    let before = calls.load(Ordering::SeqCst);
    let err = svc.oneshot(call()).await.unwrap_err();
    assert!(find::<BudgetExceeded>(&err).is_some());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "refused on arrival, nothing sent"
    );
}

/// Charged after the fact, a Gemini call's spend still lands on its API
/// key's budget: the key is read from the query (`?key=`), as on arrival.
#[tokio::test(start_paused = true)]
async fn a_call_charged_after_the_fact_is_charged_to_its_gemini_key() {
    use llm_tower::budget::Arrival;

    let calls = Arc::new(AtomicUsize::new(0));
    let config = BudgetConfig::new()
        .scope(ScopeBudget::new(Scope::ApiKey).limit(Limit::usd(0.001, Window::Total)))
        .arrival(Arrival::Defer);
    let layer = budget(config);
    let handle = layer.handle();
    let svc = layer.layer(provider(1_000, 500, calls));
    let mut req = request(meta("m", 1_000, Some(500)));
    req.headers_mut().remove("authorization");
    *req.uri_mut() =
        "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent?key=AIza-test"
            .parse()
            .unwrap();
    read(svc.oneshot(req).await.unwrap()).await;
    assert_eq!(handle.stats().unreserved, 1);
    let status = handle.status(Scope::ApiKey, "AIza-test").await.unwrap();
    assert_eq!(status[0].spent, Amount::Usd(Cost::from_nanos(WORST)));
}

#[tokio::test(start_paused = true)]
async fn refuses_what_cannot_fit_and_admits_it_once_others_settle_lower() {
    // Room for two worst cases, not three.
    let layer = budget(global_usd(0.005, Window::Total));
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(MeterLayer::new().layer(provider(100, 10, calls.clone())));

    let first = svc.clone().oneshot(call()).await.unwrap();
    let second = svc.clone().oneshot(call()).await.unwrap();
    let err = svc.clone().oneshot(call()).await.unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).expect("a BudgetExceeded");
    assert_eq!(refusal.scope(), Scope::Global);
    assert_eq!(refusal.key(), "*");
    assert_eq!(refusal.limit(), Amount::Usd(Cost::from_nanos(5_000_000)));
    assert_eq!(refusal.reserved(), Amount::Usd(Cost::from_nanos(2 * WORST)));
    assert_eq!(refusal.asked(), Amount::Usd(Cost::from_nanos(WORST)));
    assert_eq!(refusal.window(), Some(Window::Total));
    assert_eq!(refusal.resets_at(), None);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refused call was never sent"
    );
    let failure = DefaultClassifier::new().classify_error(&*err);
    assert_eq!(failure.code(), Some(BUDGET_EXCEEDED));
    assert!(!failure.is_retryable());
    assert!(failure.should_fall_back());

    // The first two cost far less than they reserved.
    read(first).await;
    read(second).await;
    let res = svc.clone().oneshot(call()).await.unwrap();
    read(res).await;
    assert_eq!(handle.stats().refused, 1);
    assert_eq!(handle.stats().spent, Cost::from_nanos(3 * cost(100, 10)));
}

#[tokio::test(start_paused = true)]
async fn an_error_response_gives_everything_back() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let svc = layer.layer(
        MeterLayer::new().layer(service_fn(|_req: Request<String>| async {
            let mut res = Response::new(Full::new(Bytes::from_static(
                br#"{"error":{"message":"boom","type":"server_error"}}"#,
            )));
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            Ok::<_, Infallible>(res)
        })),
    );
    let res = svc.oneshot(call()).await.unwrap();
    assert_eq!(res.status(), 500);
    read(res).await;
    let stats = handle.stats();
    assert_eq!(
        (stats.spent, stats.reserved, stats.settled),
        (Cost::ZERO, Cost::ZERO, 1)
    );
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(
        (status[0].spent, status[0].reserved),
        (Amount::Usd(Cost::ZERO), Amount::Usd(Cost::ZERO))
    );
}

#[tokio::test(start_paused = true)]
async fn a_transport_error_gives_everything_back() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let svc = layer.layer(
        MeterLayer::new().layer(service_fn(|_req: Request<String>| async {
            Err::<Res, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        })),
    );
    assert!(svc.oneshot(call()).await.is_err());
    let stats = handle.stats();
    assert_eq!(
        (stats.spent, stats.reserved, stats.settled),
        (Cost::ZERO, Cost::ZERO, 1)
    );
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_bills_its_input_estimate_once() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let (mock, mut ctl) = tower_test::mock::pair::<Request<String>, Res>();
    let svc = layer.layer(MeterLayer::new().layer(mock));
    let fut = tokio::spawn(svc.oneshot(call()));
    // The request reached the provider; the caller gives up.
    let (_req, _send) = ctl.next_request().await.unwrap();
    fut.abort();
    let _ = fut.await;
    tokio::task::yield_now().await;
    let stats = handle.stats();
    assert_eq!(stats.settled, 1);
    assert_eq!(stats.reserved, Cost::ZERO);
    // The prompt may have been read: billed at the input estimate.
    assert_eq!(stats.spent, Cost::from_nanos(cost(1_000, 0)));
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
    assert_eq!(
        status[0].spent,
        Amount::Usd(Cost::from_nanos(cost(1_000, 0)))
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_cancelled_before_it_was_sent_costs_nothing() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let (mock, mut ctl) = tower_test::mock::pair::<Request<String>, Res>();
    ctl.allow(0);
    let svc = layer.layer(MeterLayer::new().layer(mock));
    let fut = tokio::spawn(svc.oneshot(call()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.stats().reserved, Cost::from_nanos(WORST));
    fut.abort();
    let _ = fut.await;
    tokio::task::yield_now().await;
    let stats = handle.stats();
    assert_eq!((stats.spent, stats.reserved), (Cost::ZERO, Cost::ZERO));
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(
        (status[0].spent, status[0].reserved),
        (Amount::Usd(Cost::ZERO), Amount::Usd(Cost::ZERO))
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_midway_is_billed_for_what_it_used() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    // Three content chunks, then the caller stops reading.
    let sse = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello there\"}}]}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" friend\"}}]}\n\n",
    );
    let svc = layer.layer(MeterLayer::new().layer(service_fn(
        move |_req: Request<String>| async move {
            let res = Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from_static(sse.as_bytes())))
                .unwrap();
            Ok::<_, Infallible>(res)
        },
    )));
    let res = svc
        .oneshot(request(meta("m", 1_000, Some(500)).with_stream(true)))
        .await
        .unwrap();
    let mut body = res.into_body();
    let _first = body.frame().await;
    drop(body);
    let stats = handle.stats();
    assert_eq!((stats.settled, stats.reserved), (1, Cost::ZERO));
    // Billed: the input estimate, and the output seen so far (estimated,
    // since no usage came), never zero and never the whole cap.
    assert!(stats.spent > Cost::from_nanos(cost(1_000, 0)), "{stats:?}");
    assert!(stats.spent < Cost::from_nanos(WORST), "{stats:?}");
}

/// An Anthropic call that writes its whole prompt to the prompt cache pays
/// the cache-write price (1.25 times the input price here) for it: the
/// reservation covered that, so the settlement is never above it.
#[tokio::test(start_paused = true)]
async fn a_prompt_written_to_the_cache_never_settles_above_its_reservation() {
    let prices = PriceTable::empty().with_price(
        "cw",
        ModelPrice::new(1.0, 2.0)
            .unwrap()
            .with_cache_write(1.25)
            .unwrap(),
    );
    let layer = BudgetLayer::new(global_usd(1.0, Window::Total).build().unwrap()).prices(prices);
    let handle = layer.handle();
    let inner = service_fn(|_req: Request<String>| async {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"cw","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":0,"cache_creation_input_tokens":1000,"cache_read_input_tokens":0,"output_tokens":500}}"#;
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
    });
    let svc = layer.layer(MeterLayer::new().layer(inner));
    let mut req = request(
        RequestMeta::new(Some(Endpoint {
            provider: Provider::Anthropic,
            format: WireFormat::AnthropicMessages,
        }))
        .with_model("cw")
        .with_estimated_input_tokens(1_000)
        .with_max_output_tokens(Some(500)),
    );
    *req.uri_mut() = "https://api.anthropic.com/v1/messages".parse().unwrap();
    read(svc.oneshot(req).await.unwrap()).await;
    let stats = handle.stats();
    // 1,000 tokens written at 1,250 nano-dollars, 500 out at 2,000.
    assert_eq!(stats.spent, Cost::from_nanos(2_250_000), "{stats:?}");
    assert!(stats.reserved_peak >= stats.spent, "{stats:?}");
}

/// New prices given to a clone apply to the next call of every clone: the
/// prices resolved from the old table go with it.
#[tokio::test(start_paused = true)]
async fn new_prices_apply_to_the_next_call() {
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer
        .clone()
        .layer(MeterLayer::new().layer(provider(100, 10, calls.clone())));
    read(svc.clone().oneshot(call()).await.unwrap()).await;
    assert_eq!(handle.stats().spent, Cost::from_nanos(cost(100, 10)));
    let _ = layer.prices(PriceTable::empty().with_price("m", ModelPrice::new(2.0, 4.0).unwrap()));
    read(svc.oneshot(call()).await.unwrap()).await;
    assert_eq!(
        handle.stats().spent,
        Cost::from_nanos(cost(100, 10) + 2 * cost(100, 10))
    );
}

#[tokio::test(start_paused = true)]
async fn retries_reserve_and_settle_each_attempt() {
    use llm_tower::retry::{RetryConfig, RetryLayer};

    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let inner = service_fn(move |_req: Request<String>| {
        let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                let mut res = Response::new(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                )));
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok::<_, Infallible>(res);
            }
            Ok(json_usage(300, 40))
        }
    });
    let retry = RetryLayer::try_from(RetryConfig::new()).unwrap();
    let svc = layer.layer(retry.layer(MeterLayer::new().layer(inner)));
    let res = svc.oneshot(call()).await.unwrap();
    assert_eq!(res.status(), 200);
    let call_cost = res.extensions().get::<CallCost>().unwrap().clone();
    read(res).await;
    let stats = handle.stats();
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!((stats.attempts, stats.settled), (2, 2), "{stats:?}");
    assert_eq!(
        stats.reserved_peak,
        Cost::from_nanos(WORST),
        "one attempt in flight at a time"
    );
    assert_eq!(
        stats.spent,
        Cost::from_nanos(cost(300, 40)),
        "the failed attempt cost nothing"
    );
    assert_eq!(call_cost.attempts(), 2);
    assert_eq!(call_cost.cost(), Cost::from_nanos(cost(300, 40)));
}

/// A call's first attempt fails (503, which costs nothing); while its
/// retry waits out the backoff, another call takes the room. The retry
/// reserves for itself before it goes out, does not fit, and is refused
/// unsent: the caller gets the `BudgetExceeded`.
#[tokio::test(start_paused = true)]
async fn a_retry_that_does_not_fit_is_refused_before_it_is_sent() {
    use llm_tower::retry::{RetryConfig, RetryLayer};

    // Room for one worst case and a bit, not two.
    let layer = budget(global_usd(0.003, Window::Total));
    let handle = layer.handle();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let release = Arc::new(tokio::sync::Notify::new());
    let hold = release.clone();
    // The first request (call A's first attempt) fails; the second (call
    // B) answers once released; a third would be A's retry.
    let inner = service_fn(move |_req: Request<String>| {
        let i = seen.fetch_add(1, Ordering::SeqCst);
        let hold = hold.clone();
        async move {
            if i == 0 {
                let mut res = Response::new(Full::new(Bytes::from_static(
                    br#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                )));
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Ok::<_, Infallible>(res);
            }
            hold.notified().await;
            Ok(json_usage(1_000, 500))
        }
    });
    let retry = RetryLayer::try_from(RetryConfig::new()).unwrap();
    let svc = layer.layer(retry.layer(MeterLayer::new().layer(inner)));

    let a = tokio::spawn(svc.clone().oneshot(call()));
    // A's first attempt answered and settled at nothing; its retry waits.
    for _ in 0..1_000 {
        if n.load(Ordering::SeqCst) == 1 && handle.stats().settled == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.stats().reserved, Cost::ZERO, "{:?}", handle.stats());
    let b = tokio::spawn(svc.oneshot(call()));
    for _ in 0..1_000 {
        if n.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(n.load(Ordering::SeqCst), 2, "B is in flight");
    // The backoff passes (time auto-advances while everything waits).
    let err = a.await.unwrap().unwrap_err();
    assert!(find::<BudgetExceeded>(&err).is_some(), "{err}");
    assert_eq!(n.load(Ordering::SeqCst), 2, "the retry was never sent");
    release.notify_one();
    read(b.await.unwrap().unwrap()).await;
    let stats = handle.stats();
    assert_eq!(stats.spent, Cost::from_nanos(WORST), "{stats:?}");
    assert_eq!(stats.reserved, Cost::ZERO, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dearer_attempt_reserves_at_its_own_price() {
    // Attempts are admitted by the meter: one to `m`, then the same call
    // rewritten to `dear` (as a fallback does), each at its price.
    let layer = budget(global_usd(1.0, Window::Total));
    let handle = layer.handle();
    let inner = MeterLayer::new().layer(provider(100, 10, Arc::new(AtomicUsize::new(0))));
    let rewrite = tower::service_fn(move |mut req: Request<String>| {
        let mut inner = inner.clone();
        async move {
            let first = inner.ready().await?.call(clone(&req)).await?;
            read(first).await;
            req.extensions_mut().insert(meta("dear", 1_000, Some(500)));
            inner.ready().await?.call(req).await
        }
    });
    let svc = layer.layer(rewrite);
    let res = svc.oneshot(call()).await.unwrap();
    let call_cost = res.extensions().get::<CallCost>().unwrap().clone();
    read(res).await;
    let stats = handle.stats();
    assert_eq!((stats.attempts, stats.settled), (2, 2));
    // `dear` costs ten times `m`.
    assert_eq!(call_cost.cost(), Cost::from_nanos(11 * cost(100, 10)));
    // The second attempt reserved `dear`'s worst case, ten times `m`'s.
    assert_eq!(stats.reserved_peak, Cost::from_nanos(10 * WORST));
}

#[tokio::test(start_paused = true)]
async fn a_first_attempt_elsewhere_gives_the_arrival_reservation_back() {
    // `dear`'s worst case ($0.02) fits; with `m`'s ($0.002) still held on
    // top, it would not.
    let layer = budget(global_usd(0.021, Window::Total));
    let handle = layer.handle();
    let inner = MeterLayer::new().layer(provider(100, 10, Arc::new(AtomicUsize::new(0))));
    let rewrite = tower::service_fn(move |mut req: Request<String>| {
        let mut inner = inner.clone();
        async move {
            req.extensions_mut().insert(meta("dear", 1_000, Some(500)));
            inner.ready().await?.call(req).await
        }
    });
    let svc = layer.layer(rewrite);
    let res = svc.oneshot(call()).await.unwrap();
    assert_eq!(handle.stats().reserved, Cost::from_nanos(10 * WORST));
    read(res).await;
    let stats = handle.stats();
    assert_eq!((stats.attempts, stats.settled, stats.refused), (2, 2, 0));
    assert_eq!(stats.spent, Cost::from_nanos(10 * cost(100, 10)));
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
    assert_eq!(
        status[0].spent,
        Amount::Usd(Cost::from_nanos(10 * cost(100, 10)))
    );
}

fn clone(req: &Request<String>) -> Request<String> {
    let mut out = Request::new(req.body().clone());
    *out.uri_mut() = req.uri().clone();
    *out.headers_mut() = req.headers().clone();
    *out.extensions_mut() = req.extensions().clone();
    out
}

/// 2028-02-28T23:00:00Z: the day before a leap day.
fn before_leap_day() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_835_391_600)
}

#[tokio::test(start_paused = true)]
async fn calendar_windows_roll_over_by_themselves() {
    const HOUR: Duration = Duration::from_secs(3600);
    // Room for one call a day, and one call a month.
    let config = BudgetConfig::new()
        .scope(ScopeBudget::global().limit(Limit::usd(0.003, Window::Day)))
        .scope(ScopeBudget::tenant().limit(Limit::usd(0.003, Window::Month)));
    let layer = budget(config).clock(TokioClock::starting_at(before_leap_day()));
    let svc =
        layer.layer(MeterLayer::new().layer(provider(1_000, 500, Arc::new(AtomicUsize::new(0)))));
    let go = |tenant: &str| {
        let mut req = call();
        req.extensions_mut().insert(BudgetTenant::new(tenant));
        svc.clone().oneshot(req)
    };
    // Feb 28th, 23:00: a call; a second does not fit the day.
    read(go("a").await.unwrap()).await;
    let err = go("b").await.unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).unwrap();
    assert_eq!(refusal.window(), Some(Window::Day));
    // Midnight, the leap day.
    let leap_day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_835_395_200);
    assert_eq!(refusal.resets_at(), Some(leap_day));
    assert_eq!(refusal.retry_after(), Some(HOUR));

    tokio::time::advance(HOUR).await;
    // Feb 29th: a new day; tenant `a` has spent its month, `b` has not.
    let err = go("a").await.unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).unwrap();
    assert_eq!(
        (refusal.scope(), refusal.window()),
        (Scope::Tenant, Some(Window::Month))
    );
    let march = SystemTime::UNIX_EPOCH + Duration::from_secs(1_835_481_600);
    assert_eq!(refusal.resets_at(), Some(march));
    read(go("b").await.unwrap()).await;

    // March 1st: a new day and a new month.
    tokio::time::advance(24 * HOUR).await;
    read(go("a").await.unwrap()).await;
}

#[tokio::test(start_paused = true)]
async fn a_week_starts_on_monday_at_midnight_utc() {
    const HOUR: Duration = Duration::from_secs(3600);
    // Sunday 2028-02-27T23:00:00Z.
    let sunday = before_leap_day() - 24 * HOUR;
    let layer = budget(global_usd(0.003, Window::Week)).clock(TokioClock::starting_at(sunday));
    let svc =
        layer.layer(MeterLayer::new().layer(provider(1_000, 500, Arc::new(AtomicUsize::new(0)))));
    read(svc.clone().oneshot(call()).await.unwrap()).await;
    let err = svc.clone().oneshot(call()).await.unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).unwrap();
    assert_eq!(refusal.resets_at(), Some(sunday + HOUR));
    assert_eq!(refusal.retry_after(), Some(HOUR));
    tokio::time::advance(HOUR).await;
    read(svc.oneshot(call()).await.unwrap()).await;
}

#[tokio::test(start_paused = true)]
async fn a_rolling_window_forgets_what_is_older_than_it() {
    let layer = budget(global_usd(
        0.003,
        Window::Rolling(Duration::from_secs(3600)),
    ));
    let svc =
        layer.layer(MeterLayer::new().layer(provider(1_000, 500, Arc::new(AtomicUsize::new(0)))));
    read(svc.clone().oneshot(call()).await.unwrap()).await;
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    let err = svc.clone().oneshot(call()).await.unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).unwrap();
    let wait = refusal.retry_after().unwrap();
    // Half an hour, and at most one slot (a minute) more.
    assert!(
        wait > Duration::from_secs(30 * 60) && wait <= Duration::from_secs(31 * 60),
        "{wait:?}"
    );
    tokio::time::advance(wait).await;
    read(svc.oneshot(call()).await.unwrap()).await;
}

#[tokio::test(start_paused = true)]
async fn nested_scopes_are_all_or_nothing() {
    // The tenant has room; its organisation does not.
    let config = BudgetConfig::new()
        .scope(ScopeBudget::tenant().limit(Limit::usd(1.0, Window::Total)))
        .scope(ScopeBudget::organisation().limit(Limit::usd(0.003, Window::Total)));
    let layer = budget(config);
    let handle = layer.handle();
    let svc =
        layer.layer(MeterLayer::new().layer(provider(1_000, 500, Arc::new(AtomicUsize::new(0)))));
    let go = |tenant: &str| {
        let mut req = call();
        req.extensions_mut()
            .insert(BudgetTenant::new(tenant).organisation("org"));
        svc.clone().oneshot(req)
    };
    read(go("a").await.unwrap()).await;
    let err = go("b").await.unwrap_err();
    assert_eq!(
        find::<BudgetExceeded>(&err).unwrap().scope(),
        Scope::Organisation
    );
    // Nothing was reserved in the tenant's bucket by the refused call.
    let b = handle.status(Scope::Tenant, "b").await.unwrap();
    assert_eq!(
        (b[0].spent, b[0].reserved),
        (Amount::Usd(Cost::ZERO), Amount::Usd(Cost::ZERO))
    );
    let a = handle.status(Scope::Tenant, "a").await.unwrap();
    assert_eq!(a[0].spent, Amount::Usd(Cost::from_nanos(WORST)));
    let org = handle.status(Scope::Organisation, "org").await.unwrap();
    assert_eq!(org[0].spent, Amount::Usd(Cost::from_nanos(WORST)));
}

#[tokio::test(start_paused = true)]
async fn token_limits_and_per_request_caps() {
    let config = BudgetConfig::new().scope(
        ScopeBudget::api_key()
            .limit(Limit::tokens(3_000, Window::Day))
            .max_request_usd(0.0025)
            .max_request_tokens(2_000),
    );
    let layer = budget(config);
    let handle = layer.handle();
    let svc =
        layer.layer(MeterLayer::new().layer(provider(1_000, 500, Arc::new(AtomicUsize::new(0)))));
    read(svc.clone().oneshot(call()).await.unwrap()).await;
    let status = handle
        .status(Scope::ApiKey, "Bearer sk-test")
        .await
        .unwrap();
    assert_eq!(status[0].spent, Amount::Tokens(1_500));
    // 1,500 more would pass 3,000.
    read(svc.clone().oneshot(call()).await.unwrap()).await;
    let err = svc.clone().oneshot(call()).await.unwrap_err();
    assert_eq!(
        find::<BudgetExceeded>(&err).unwrap().limit(),
        Amount::Tokens(3_000)
    );
    // A call whose worst case is over the cap: refused whatever is left.
    let err = svc
        .clone()
        .oneshot(request(meta("m", 1_000, Some(1_000))))
        .await
        .unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).unwrap();
    assert!(refusal.is_per_request());
    assert_eq!(refusal.asked(), Amount::Usd(Cost::from_nanos(3_000_000)));
}

#[tokio::test(start_paused = true)]
async fn unpriced_models_are_never_free() {
    // Refused by default, before anything is sent.
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = budget(global_usd(1.0, Window::Total));
    let svc = layer.layer(MeterLayer::new().layer(provider(10, 10, calls.clone())));
    let err = svc
        .oneshot(request(meta("mystery", 10, Some(10))))
        .await
        .unwrap_err();
    assert_eq!(find::<Unpriced>(&err).unwrap().model(), "mystery");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // A configured price.
    let priced = BudgetConfig::new().scope(
        ScopeBudget::global()
            .limit(Limit::usd(1.0, Window::Total))
            .unpriced(UnpricedPolicy::Price(
                serde_json::from_str(r#"{"input": 3, "output": 3}"#).unwrap(),
            )),
    );
    let layer = budget(priced);
    let handle = layer.handle();
    let svc = layer.layer(MeterLayer::new().layer(provider(10, 10, calls.clone())));
    read(
        svc.oneshot(request(meta("mystery", 10, Some(10))))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(handle.stats().spent, Cost::from_nanos(20 * 3_000));

    // Tokens only: the token limit counts it, with an event.
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let tokens_only = BudgetConfig::new().scope(
        ScopeBudget::global()
            .limit(Limit::usd(1.0, Window::Total))
            .limit(Limit::tokens(100, Window::Total))
            .unpriced(UnpricedPolicy::TokensOnly),
    );
    let layer = budget(tokens_only).on_event(move |e| seen.lock().unwrap().push(e.clone()));
    let handle = layer.handle();
    let svc = layer.layer(MeterLayer::new().layer(provider(10, 10, calls.clone())));
    let res = svc
        .oneshot(request(meta("mystery", 10, Some(10))))
        .await
        .unwrap();
    let call_cost = res.extensions().get::<CallCost>().unwrap().clone();
    read(res).await;
    assert!(call_cost.has_unpriced());
    assert_eq!(handle.stats().unpriced, 1);
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].spent, Amount::Usd(Cost::ZERO));
    assert_eq!(status[1].spent, Amount::Tokens(20));
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, BudgetEvent::Unpriced { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn alerts_fire_once_per_threshold_and_soft_limits_never_refuse() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    // A soft limit of 10 worst-case calls' cost.
    let config = BudgetConfig::new()
        .scope(ScopeBudget::global().limit(Limit::usd(0.02, Window::Day).soft()));
    let layer = budget(config).on_event(move |e| {
        if let BudgetEvent::Threshold {
            fraction, spent, ..
        } = e
        {
            seen.lock().unwrap().push((*fraction, *spent));
        }
    });
    let svc =
        layer.layer(MeterLayer::new().layer(provider(1_000, 500, Arc::new(AtomicUsize::new(0)))));
    for _ in 0..14 {
        read(svc.clone().oneshot(call()).await.unwrap()).await;
    }
    let crossed: Vec<(f64, Amount)> = events.lock().unwrap().clone();
    assert_eq!(
        crossed,
        vec![
            (0.5, Amount::Usd(Cost::from_nanos(5 * WORST))),
            (0.8, Amount::Usd(Cost::from_nanos(8 * WORST))),
            (1.0, Amount::Usd(Cost::from_nanos(10 * WORST))),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_map_to_provider_errors() {
    let layer = budget(global_usd(0.001, Window::Day));
    let svc = layer.layer(MeterLayer::new().layer(provider(1, 1, Arc::new(AtomicUsize::new(0)))));
    let err = svc.oneshot(call()).await.unwrap_err();
    let refusal = find::<BudgetExceeded>(&err).unwrap();
    let res = refusal.to_response(Some(WireFormat::OpenAiChat));
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
}

/// The guarantee under load: 1,000 concurrent calls on a multi-thread
/// runtime against a budget that fits 100 worst cases. Every call costs
/// its worst case, so exactly 100 are answered and nothing is overspent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_calls_never_overspend() {
    let layer = budget(global_usd(0.2, Window::Total));
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(MeterLayer::new().layer(provider(1_000, 500, calls.clone())));
    let barrier = Arc::new(tokio::sync::Barrier::new(1_000));
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let svc = svc.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                match svc.oneshot(call()).await {
                    Ok(res) => {
                        read(res).await;
                        true
                    }
                    Err(e) => {
                        assert!(find::<BudgetExceeded>(&e).is_some(), "{e}");
                        false
                    }
                }
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += usize::from(t.await.unwrap());
    }
    let stats = handle.stats();
    assert!(answered <= 100, "{answered} answered");
    assert_eq!(calls.load(Ordering::SeqCst), answered);
    assert!(stats.spent <= Cost::from_nanos(200_000_000), "{stats:?}");
    assert_eq!(stats.reserved, Cost::ZERO);
    // Calls that settle at their worst case fill the budget exactly.
    assert_eq!(answered, 100);
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].spent, Amount::Usd(Cost::from_nanos(200_000_000)));
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
}

/// Calls that settle lower than they reserved leave room: 1,000 calls
/// reserving $0.002 and costing $0.0002 each, 64 at a time, against $0.02
/// — room for 10 worst cases but 100 actual costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settling_lower_lets_later_calls_in() {
    let layer = budget(global_usd(0.02, Window::Total));
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    // 100 input, 50 output: 200,000 nano-dollars.
    let svc = layer.layer(MeterLayer::new().layer(provider(100, 50, calls.clone())));
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let svc = svc.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire().await.unwrap();
                match svc.oneshot(call()).await {
                    Ok(res) => {
                        read(res).await;
                        true
                    }
                    Err(_) => false,
                }
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += usize::from(t.await.unwrap());
    }
    let stats = handle.stats();
    assert!(stats.spent <= Cost::from_nanos(20_000_000), "{stats:?}");
    // At most 8 in flight: once spend passes $0.02 − 8·$0.002, refusals
    // may start; until then every call fits. So at least (0.02 − 0.016) /
    // 0.0002 = 20 calls, and far more than the 10 worst cases.
    assert!(answered > 10, "{answered} answered");
    assert!(answered >= 20, "{answered} answered");
    assert!(answered <= 100, "{answered} answered");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever the interleaving of reservations and settlements, with
    /// actual costs at most the worst case: spend never passes the limit,
    /// and every reservation is given back at the end.
    #[test]
    fn never_overspent(
        limit_calls in 1u64..12,
        costs in proptest::collection::vec((0u64..=1_000, 0u64..=500, 0u64..40), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let limit = limit_calls * WORST;
            let layer = budget(global_usd(limit as f64 / 1e9, Window::Total));
            let handle = layer.handle();
            let mut tasks = Vec::new();
            let admitted = Arc::new(AtomicUsize::new(0));
            for (prompt, completion, delay) in costs {
                let admitted = admitted.clone();
                let svc = layer.layer(MeterLayer::new().layer(service_fn(move |_req: Request<String>| async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Ok::<_, Infallible>(json_usage(prompt, completion))
                })));
                tasks.push(tokio::spawn(async move {
                    match svc.oneshot(call()).await {
                        Ok(res) => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(delay % 7)).await;
                            read(res).await;
                        }
                        Err(e) => assert!(find::<BudgetExceeded>(&e).is_some(), "{e}"),
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let status = handle.status(Scope::Global, "*").await.unwrap();
            let Amount::Usd(spent) = status[0].spent else { unreachable!() };
            assert!(spent.as_nanos() <= limit, "{spent} over {limit}");
            assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
            assert_eq!(handle.stats().reserved, Cost::ZERO);
            // The first reservation always fits: the limit is at least one worst case.
            assert!(admitted.load(Ordering::SeqCst) >= 1);
        });
    }
}
