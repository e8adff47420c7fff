//! The shared vocabulary against the project's mock provider over loopback:
//! every fault the mock injects is classified as the layers need it, its
//! rate-limit headers parse, and metering reads its streams to the token.
//! The mock and the library were written apart, so each checks the other.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    classify::{Classifier, DefaultClassifier, Failure, FailureClass},
    metering::{
        MeterLayer, Outcome, StreamError, StreamProgress, TruncatedStream, UsageObservers,
        UsageReport, UsageSource,
    },
    provider::headers::RateLimitInfo,
    request::{PrepareLayer, ReplayBody},
};
use llm_tower_mock::{Fault, MockServer, Provider, Quota, Rule};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

fn body_for(provider: Provider, stream: bool, prompt: &str) -> (String, Value) {
    match provider {
        Provider::OpenAi => (
            "/v1/chat/completions".into(),
            json!({
                "model": "gpt-4o-mini",
                "stream": stream,
                "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
                "messages": [{"role": "user", "content": prompt}],
            }),
        ),
        Provider::Anthropic => (
            "/v1/messages".into(),
            json!({
                "model": "claude-haiku-4-5",
                "max_tokens": 512,
                "stream": stream,
                "messages": [{"role": "user", "content": prompt}],
            }),
        ),
        Provider::Gemini => (
            if stream {
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse".into()
            } else {
                "/v1beta/models/gemini-2.0-flash:generateContent".into()
            },
            json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}),
        ),
    }
}

const PROVIDERS: [Provider; 3] = [Provider::OpenAi, Provider::Anthropic, Provider::Gemini];

/// Sends one request straight to the mock and classifies the answer.
async fn classify(mock: &MockServer, provider: Provider) -> (StatusCode, Option<Failure>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (path, body) = body_for(provider, false, "classify me");
    let req = Request::post(format!("{}{path}", mock.url()))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let (parts, body) = client.request(req).await.unwrap().into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let view = llm_tower::classify::ResponseView::new(parts.status, &parts.headers)
        .with_body(&body)
        .with_now(SystemTime::now());
    (
        parts.status,
        DefaultClassifier::new()
            .classify_response(&view)
            .into_failure(),
    )
}

#[tokio::test]
async fn every_injected_error_is_classified_as_the_layers_need() {
    let cases: Vec<(Fault, FailureClass, bool)> = vec![
        (
            Fault::rate_limited(Duration::from_millis(2500)),
            FailureClass::RateLimited,
            true,
        ),
        (
            Fault::InsufficientQuota,
            FailureClass::QuotaExhausted,
            false,
        ),
        (Fault::ContextLength, FailureClass::ContextLength, false),
        (Fault::Overloaded, FailureClass::Overloaded, true),
        (Fault::status(500), FailureClass::ServerError, true),
        (Fault::status(502), FailureClass::ServerError, true),
        (Fault::status(503), FailureClass::Overloaded, true),
        (Fault::status(401), FailureClass::Auth, false),
        (Fault::status(403), FailureClass::Auth, false),
        (Fault::status(400), FailureClass::BadRequest, false),
        (Fault::status(404), FailureClass::BadRequest, false),
    ];
    let mock = MockServer::builder().start().await.unwrap();
    for (fault, class, retryable) in cases {
        for provider in PROVIDERS {
            mock.clear_rules();
            mock.push_rule(Rule::new(fault.clone())).unwrap();
            let (status, failure) = classify(&mock, provider).await;
            let failure = failure.unwrap_or_else(|| panic!("{fault:?} {provider}: {status}"));
            assert_eq!(
                failure.class(),
                class,
                "{fault:?} from {provider} ({status})"
            );
            assert_eq!(
                failure.is_retryable(),
                retryable,
                "{fault:?} from {provider}"
            );
        }
    }
    // The server delay, to the millisecond where the provider gives it.
    mock.clear_rules();
    mock.push_rule(Rule::new(Fault::rate_limited(Duration::from_millis(2500))))
        .unwrap();
    let delays: Vec<Option<Duration>> =
        futures_util::future::join_all(PROVIDERS.map(|p| classify(&mock, p)))
            .await
            .into_iter()
            .map(|(_, f)| f.unwrap().retry_after())
            .collect();
    assert_eq!(
        delays[0],
        Some(Duration::from_millis(2500)),
        "retry-after-ms"
    );
    assert_eq!(
        delays[1],
        Some(Duration::from_secs(3)),
        "retry-after, whole seconds"
    );
}

#[tokio::test]
async fn the_quota_modes_headers_parse_and_direct_the_real_wait() {
    let mock = MockServer::builder()
        .quota(Quota::per_minute().requests(2).tokens(100_000))
        .start()
        .await
        .unwrap();
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut last = None;
        for _ in 0..3 {
            let (path, body) = body_for(provider, false, "quota");
            let req = Request::post(format!("{}{path}", mock.url()))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            last = Some(client.request(req).await.unwrap());
        }
        let resp = last.unwrap();
        assert_eq!(resp.status(), 429, "{provider}");
        let info = RateLimitInfo::from_headers(resp.headers(), SystemTime::now());
        let requests = info.requests.unwrap();
        assert_eq!(
            (requests.limit, requests.remaining),
            (Some(2), Some(0)),
            "{provider}"
        );
        assert!(
            requests.reset.unwrap() <= Duration::from_secs(61),
            "{provider}"
        );
        assert_eq!(info.tokens.unwrap().limit, Some(100_000));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let view = llm_tower::classify::ResponseView::new(parts.status, &parts.headers)
            .with_body(&body)
            .with_now(SystemTime::now());
        let failure = DefaultClassifier::new()
            .classify_response(&view)
            .into_failure()
            .unwrap();
        assert_eq!(failure.class(), FailureClass::RateLimited);
        // One request comes back every 30 s: the first refusal waits ~30 s.
        let wait = failure.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
            "{provider}: {wait:?}"
        );
    }
}

/// Sends a streaming request through the stack; returns what the body
/// ended with — its error, or the failure its progress recorded (the meter
/// observes, it yields no error of its own) — and the one usage report.
async fn metered(
    mock: &MockServer,
    provider: Provider,
    prompt: &str,
) -> (Result<String, BoxError>, UsageReport) {
    let (path, body) = body_for(provider, true, prompt);
    let mut req = Request::post(format!("{}{path}", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let reports: Arc<Mutex<Vec<UsageReport>>> = Arc::default();
    let sink = reports.clone();
    UsageObservers::register(
        &mut req,
        Arc::new(move |r: &UsageReport| sink.lock().unwrap().push(r.clone())),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let stack = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(MeterLayer::new())
        .service(client);
    let resp = stack.oneshot(req).await.unwrap();
    let progress = StreamProgress::get(&resp).cloned().expect("attached");
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8(b.to_bytes().to_vec()).unwrap())
        .and_then(|text| match progress.failure_error() {
            Some(e) => Err(e),
            None => Ok(text),
        });
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "usage is reported exactly once");
    (text, reports[0].clone())
}

#[tokio::test]
async fn metering_reads_the_mocks_streams_to_the_token() {
    let mock = MockServer::builder().seed(3).start().await.unwrap();
    for provider in PROVIDERS {
        let (text, report) = metered(&mock, provider, "count my tokens").await;
        assert!(text.is_ok(), "{provider}");
        let entry = mock.journal().entries().pop().unwrap();
        assert_eq!(
            (report.outcome, report.source),
            (Outcome::Completed, UsageSource::Actual),
            "{provider}"
        );
        assert_eq!(
            report.usage.input_tokens,
            u64::from(entry.input_tokens.unwrap()),
            "{provider}"
        );
        assert_eq!(
            report.usage.output_tokens,
            u64::from(entry.output_tokens.unwrap()),
            "{provider}"
        );
    }
}

#[tokio::test]
async fn stream_faults_surface_as_typed_errors() {
    let mock = MockServer::builder().start().await.unwrap();
    for provider in PROVIDERS {
        mock.clear_rules();
        mock.push_rule(Rule::new(Fault::ErrorEvent { after: 0 }))
            .unwrap();
        let (text, report) = metered(&mock, provider, "error event").await;
        let err = text.unwrap_err();
        assert!(err.is::<StreamError>(), "{provider}: {err}");
        assert_eq!(report.outcome, Outcome::StreamError, "{provider}");
        let failure = DefaultClassifier::new().classify_error(&*err);
        let expected = match provider {
            // OpenAI's in-stream `server_error` names no finer class.
            Provider::OpenAi => FailureClass::StreamError,
            Provider::Anthropic | Provider::Gemini => FailureClass::Overloaded,
        };
        assert_eq!(
            failure.class(),
            expected,
            "{provider}: the in-stream error's own type"
        );
        assert!(failure.is_retryable(), "{provider}");

        mock.clear_rules();
        mock.push_rule(Rule::new(Fault::Truncate { after: 2 }))
            .unwrap();
        let (text, report) = metered(&mock, provider, "truncated").await;
        let err = text.unwrap_err();
        assert!(err.is::<TruncatedStream>(), "{provider}: {err}");
        assert_eq!(
            (report.outcome, report.source),
            (Outcome::Truncated, UsageSource::Estimated)
        );

        mock.clear_rules();
        mock.push_rule(Rule::new(Fault::Drop { after: 2 })).unwrap();
        let (text, report) = metered(&mock, provider, "dropped").await;
        assert!(text.is_err(), "{provider}");
        assert_eq!(report.outcome, Outcome::BodyError, "{provider}");
    }
}
