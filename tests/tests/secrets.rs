//! API keys never reach the logs: the whole recommended stack, with
//! tower-http's `TraceLayer` around it, around each call and around each
//! attempt (headers included), traced at TRACE level into a buffer, for
//! every wire format, streaming and not, with a retried failure on the way.

mod support;

use std::{
    io,
    sync::{Arc, Mutex},
};

use http::Request;
use llm_tower::{
    circuit_breaker::CircuitBreakerLayer,
    metering::MeterLayer,
    request::{PrepareLayer, ReplayBody},
    retry::RetryLayer,
    timeout::{TimeoutConfig, TimeoutLayer},
};
use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use support::*;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneService};
use tower_http::trace::{
    DefaultMakeSpan, DefaultOnBodyChunk, DefaultOnEos, DefaultOnFailure, DefaultOnRequest,
    DefaultOnResponse, TraceLayer,
};
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// The key every request carries, and the mock checks.
const KEY: &str = "sk-test-7f3a9c1e5b";

/// A `MakeWriter` appending everything to one shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// tower-http's `TraceLayer` at its most talkative: every span and event at
/// TRACE, headers included.
fn trace_layer() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    DefaultMakeSpan,
    DefaultOnRequest,
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    DefaultOnFailure,
> {
    TraceLayer::new_for_http()
        .make_span_with(
            DefaultMakeSpan::new()
                .level(Level::TRACE)
                .include_headers(true),
        )
        .on_request(DefaultOnRequest::new().level(Level::TRACE))
        .on_response(
            DefaultOnResponse::new()
                .level(Level::TRACE)
                .include_headers(true),
        )
        .on_eos(DefaultOnEos::new().level(Level::TRACE))
        .on_failure(DefaultOnFailure::new().level(Level::TRACE))
}

/// The recommended stack with a `TraceLayer` outside it (default: no
/// headers, since `PrepareLayer` has not marked them yet), one around each
/// call and one around each attempt (headers included):
/// `Trace → Prepare → Trace(call) → Timeout(total) → Retry → CircuitBreaker
/// → Timeout(attempt…) → Meter → Trace(attempt) → client`.
fn traced_stack(t: &Tuning) -> Svc {
    let timeouts = TimeoutConfig::new()
        .total(t.total)
        .attempt(t.attempt)
        .first_token(t.first_token.expect("a first-token limit"))
        .idle(t.idle.expect("an idle limit"));
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(PrepareLayer::new())
        .layer(trace_layer())
        .layer(TimeoutLayer::try_from(timeouts.whole_call()).expect("valid limits"))
        .layer(RetryLayer::try_from(t.retry.clone()).expect("a valid retry config"))
        .layer(CircuitBreakerLayer::try_from(t.breaker.clone()).expect("a valid breaker config"))
        .layer(TimeoutLayer::try_from(timeouts.per_attempt()).expect("valid limits"))
        .layer(MeterLayer::new())
        .layer(trace_layer())
        .service(client());
    let svc = ServiceExt::<Request<String>>::map_response(svc, |res| {
        res.map(http_body_util::BodyExt::boxed_unsync)
    });
    BoxCloneService::new(svc)
}

/// `req` with the key in `provider`'s credential header.
fn with_key(mut req: Request<String>, provider: Provider) -> Request<String> {
    let (name, value) = match provider {
        Provider::OpenAi => ("authorization", format!("Bearer {KEY}")),
        Provider::Anthropic => ("x-api-key", KEY.to_owned()),
        Provider::Gemini => ("x-goog-api-key", KEY.to_owned()),
    };
    req.headers_mut()
        .insert(name, value.parse().expect("a valid header value"));
    req
}

#[tokio::test(start_paused = true)]
async fn no_api_key_reaches_the_logs_of_the_whole_stack() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The first attempt of the first call fails with a 503, that of the
    // first stream with a 429, both retried; the mock checks the key, so a
    // call that succeeds sent it.
    let mock = MockServer::builder()
        .seed(11)
        .api_key(KEY)
        .rule(Rule::new(Fault::status(503)).times(1))
        .rule(
            Rule::new(Fault::rate_limited(std::time::Duration::from_secs(1)))
                .stream(true)
                .times(1),
        )
        .start()
        .await
        .expect("the mock starts");
    let svc = traced_stack(&Tuning::new());
    for provider in [Provider::OpenAi, Provider::Anthropic, Provider::Gemini] {
        for stream in [false, true] {
            let req = with_key(chat(&mock, provider, stream, "hi"), provider);
            let answer = call(&svc, req).await;
            assert!(
                answer.is_clean(),
                "{provider} stream={stream}: {}",
                answer.describe()
            );
        }
    }
    assert_eq!(mock.journal().len(), 8, "two calls retried once");
    assert_eq!(mock.journal().count(|e| e.status == 200), 6);

    let logs = captured.text();
    assert!(
        !logs.contains(KEY),
        "the key reached the logs:\n{}",
        logs.lines()
            .filter(|l| l.contains(KEY))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Not vacuous: the traces are there, headers included, the credentials
    // masked.
    assert!(logs.contains("started processing request"), "{logs}");
    assert!(logs.contains("finished processing request"), "{logs}");
    assert!(
        logs.contains("503"),
        "the retried attempts are logged: {logs}"
    );
    assert!(
        logs.contains("429"),
        "the retried attempts are logged: {logs}"
    );
    for name in ["authorization", "x-api-key", "x-goog-api-key"] {
        assert!(
            logs.contains(&format!("\"{name}\": Sensitive")),
            "{name} is logged, masked: {logs}"
        );
    }
    // The prompt's body never prints either, only its size.
    let body = ReplayBody::from(chat(&mock, Provider::OpenAi, false, KEY).into_body());
    assert!(!format!("{body:?}").contains(KEY));
}
