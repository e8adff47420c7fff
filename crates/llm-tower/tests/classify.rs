//! The default classifier against realistic responses and errors of each
//! provider.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use llm_tower::{
    classify::{
        Classifier, ContentProblem, DefaultClassifier, Failure, FailureClass, InvalidContent,
        PeekBody, ResponseView,
    },
    metering::{StreamError, TruncatedStream},
    provider::ProviderError,
};

/// A fixed "now" so HTTP-date delays are deterministic.
fn now() -> SystemTime {
    httpdate::parse_http_date("Sun, 22 Nov 2026 12:00:00 GMT").unwrap()
}

fn classify(status: u16, headers: &[(&str, &str)], body: &str) -> Failure {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let view = ResponseView::new(StatusCode::from_u16(status).unwrap(), &map)
        .with_body(body.as_bytes())
        .with_now(now());
    DefaultClassifier::new()
        .classify_response(&view)
        .into_failure()
        .unwrap_or_else(|| panic!("{status} {body} classified as success"))
}

fn assert_class(f: &Failure, class: FailureClass, retryable: bool, health: bool, fallback: bool) {
    assert_eq!(f.class(), class, "{f:?}");
    assert_eq!(f.is_retryable(), retryable, "retryable {f:?}");
    assert_eq!(f.counts_against_health(), health, "health {f:?}");
    assert_eq!(f.should_fall_back(), fallback, "fallback {f:?}");
}

const OPENAI_RATE_LIMIT: &str = r#"{
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29760, Requested 741. Please try again in 1.002s. Visit https://platform.openai.com/account/rate-limits to learn more.",
        "type": "tokens",
        "param": null,
        "code": "rate_limit_exceeded"
    }
}"#;

const OPENAI_QUOTA: &str = r#"{
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota",
        "param": null,
        "code": "insufficient_quota"
    }
}"#;

#[test]
fn openai_rate_limit_vs_insufficient_quota() {
    let f = classify(
        429,
        &[
            ("retry-after", "2"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "1.002s"),
        ],
        OPENAI_RATE_LIMIT,
    );
    assert_class(&f, FailureClass::RateLimited, true, false, true);
    assert_eq!(f.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(f.code(), Some("rate_limit_exceeded"));
    assert_eq!(f.status(), Some(StatusCode::TOO_MANY_REQUESTS));

    let f = classify(429, &[("retry-after", "20")], OPENAI_QUOTA);
    assert_class(&f, FailureClass::QuotaExhausted, false, false, true);
    assert_eq!(f.code(), Some("insufficient_quota"));
}

#[test]
fn rate_limit_delay_from_exhausted_limit_headers() {
    let f = classify(
        429,
        &[
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ],
        OPENAI_RATE_LIMIT,
    );
    assert_eq!(f.retry_after(), Some(Duration::from_secs(360)));

    let f = classify(
        429,
        &[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-11-22T12:00:30Z"),
        ],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your per-minute rate limit"}}"#,
    );
    assert_eq!(f.retry_after(), Some(Duration::from_secs(30)));
}

#[test]
fn server_delays_in_every_format() {
    let body = OPENAI_RATE_LIMIT;
    assert_eq!(
        classify(429, &[("retry-after-ms", "1500")], body).retry_after(),
        Some(Duration::from_millis(1500))
    );
    // retry-after-ms is more precise and wins.
    assert_eq!(
        classify(
            429,
            &[("retry-after", "2"), ("retry-after-ms", "1250")],
            body
        )
        .retry_after(),
        Some(Duration::from_millis(1250))
    );
    assert_eq!(
        classify(503, &[("retry-after", "Sun, 22 Nov 2026 12:00:07 GMT")], "").retry_after(),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        classify(503, &[("retry-after", "soon")], "").retry_after(),
        None
    );
}

#[test]
fn openai_errors() {
    let f = classify(
        400,
        &[],
        r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130532 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
    );
    assert_class(&f, FailureClass::ContextLength, false, false, true);

    let f = classify(
        401,
        &[],
        r#"{"error":{"message":"Incorrect API key provided: sk-abc***. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
    );
    assert_class(&f, FailureClass::Auth, false, false, true);

    let f = classify(
        400,
        &[],
        r#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#,
    );
    assert_class(&f, FailureClass::ContentPolicy, false, false, false);

    let f = classify(
        400,
        &[],
        r#"{"error":{"message":"Invalid value for 'temperature': must be between 0 and 2.","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#,
    );
    assert_class(&f, FailureClass::BadRequest, false, false, false);

    let f = classify(
        404,
        &[],
        r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
    );
    assert_class(&f, FailureClass::BadRequest, false, false, true);

    let f = classify(
        500,
        &[],
        r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
    );
    assert_class(&f, FailureClass::ServerError, true, true, true);

    let f = classify(
        503,
        &[],
        r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}"#,
    );
    assert_class(&f, FailureClass::Overloaded, true, true, true);
}

#[test]
fn azure_content_filter_with_numeric_status() {
    let f = classify(
        400,
        &[],
        r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
    );
    assert_class(&f, FailureClass::ContentPolicy, false, false, false);
    assert_eq!(f.code(), Some("content_filter"));
}

#[test]
fn anthropic_errors() {
    let f = classify(
        529,
        &[],
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    );
    assert_class(&f, FailureClass::Overloaded, true, true, true);
    assert_eq!(f.code(), Some("overloaded_error"));

    let f = classify(
        429,
        &[("retry-after", "30")],
        r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage."}}"#,
    );
    assert_class(&f, FailureClass::RateLimited, true, false, true);
    assert_eq!(f.retry_after(), Some(Duration::from_secs(30)));

    let f = classify(
        400,
        &[],
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#,
    );
    assert_class(&f, FailureClass::ContextLength, false, false, true);

    let f = classify(
        400,
        &[],
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
    );
    assert_class(&f, FailureClass::QuotaExhausted, false, false, true);

    let f = classify(
        401,
        &[],
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
    );
    assert_class(&f, FailureClass::Auth, false, false, true);

    let f = classify(
        413,
        &[],
        r#"{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#,
    );
    assert_class(&f, FailureClass::BadRequest, false, false, false);

    let f = classify(
        500,
        &[],
        r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
    );
    assert_class(&f, FailureClass::ServerError, true, true, true);
}

#[test]
fn gemini_errors() {
    let f = classify(
        429,
        &[],
        r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
    );
    assert_class(&f, FailureClass::RateLimited, true, false, true);
    assert_eq!(f.code(), Some("RESOURCE_EXHAUSTED"));

    let f = classify(
        400,
        &[],
        r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
    );
    assert_class(&f, FailureClass::ContextLength, false, false, true);

    let f = classify(
        400,
        &[],
        r#"{"error":{"code":400,"message":"* GenerateContentRequest.contents: contents is not specified\n","status":"INVALID_ARGUMENT"}}"#,
    );
    assert_class(&f, FailureClass::BadRequest, false, false, false);

    let f = classify(
        503,
        &[],
        r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
    );
    assert_class(&f, FailureClass::Overloaded, true, true, true);

    let f = classify(
        403,
        &[],
        r#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers.","status":"PERMISSION_DENIED"}}"#,
    );
    assert_class(&f, FailureClass::Auth, false, false, true);
}

#[test]
fn statuses_without_bodies() {
    for (status, class, retryable) in [
        (400, FailureClass::BadRequest, false),
        (401, FailureClass::Auth, false),
        (403, FailureClass::Auth, false),
        (404, FailureClass::BadRequest, false),
        (408, FailureClass::Timeout, true),
        (409, FailureClass::ServerError, true),
        (413, FailureClass::BadRequest, false),
        (422, FailureClass::BadRequest, false),
        (429, FailureClass::RateLimited, true),
        (500, FailureClass::ServerError, true),
        (502, FailureClass::ServerError, true),
        (503, FailureClass::Overloaded, true),
        (504, FailureClass::ServerError, true),
        (529, FailureClass::Overloaded, true),
    ] {
        let f = classify(status, &[], "<html>error</html>");
        assert_eq!(
            (f.class(), f.is_retryable()),
            (class, retryable),
            "{status}"
        );
    }
    // A lock conflict is retried but says nothing about health.
    assert!(!classify(409, &[], "").counts_against_health());
}

#[test]
fn success_is_success() {
    let headers = HeaderMap::new();
    for status in [200, 201, 204] {
        let view = ResponseView::new(StatusCode::from_u16(status).unwrap(), &headers);
        assert!(
            DefaultClassifier::new()
                .classify_response(&view)
                .is_success()
        );
    }
    assert!(!DefaultClassifier::new().needs_body(StatusCode::OK));
    assert!(DefaultClassifier::new().needs_body(StatusCode::TOO_MANY_REQUESTS));
}

#[test]
fn x_should_retry_overrides() {
    let f = classify(500, &[("x-should-retry", "false")], "");
    assert_eq!(f.class(), FailureClass::ServerError);
    assert!(!f.is_retryable());
    let f = classify(429, &[("x-should-retry", "maybe")], OPENAI_RATE_LIMIT);
    assert!(f.is_retryable());
    let f = classify(409, &[("x-should-retry", "true")], "");
    assert!(f.is_retryable());
}

#[test]
fn x_should_retry_true_never_revives_a_hopeless_failure() {
    let hopeless = [
        (429, OPENAI_QUOTA, FailureClass::QuotaExhausted),
        (401, "", FailureClass::Auth),
        (400, "", FailureClass::BadRequest),
        (
            400,
            r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            FailureClass::ContextLength,
        ),
        (
            400,
            r#"{"error":{"message":"refused","type":"invalid_request_error","code":"content_policy_violation"}}"#,
            FailureClass::ContentPolicy,
        ),
    ];
    for (status, body, class) in hopeless {
        let f = classify(status, &[("x-should-retry", "true")], body);
        assert_eq!(f.class(), class, "{status} {body}");
        assert!(!f.is_retryable(), "{class} revived by x-should-retry: true");
    }
    // A transient failure the classifier would retry anyway stays retryable,
    // and `false` still stops it.
    let f = classify(429, &[("x-should-retry", "true")], OPENAI_RATE_LIMIT);
    assert!(f.is_retryable());
    let f = classify(429, &[("x-should-retry", "false")], OPENAI_RATE_LIMIT);
    assert!(!f.is_retryable());
}

#[test]
fn stream_errors() {
    let c = DefaultClassifier::new();
    let overloaded = StreamError::new(
        ProviderError::parse(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap(),
    );
    let f = c.classify_error(&overloaded);
    assert_class(&f, FailureClass::Overloaded, true, true, true);

    let unknown = StreamError::new(ProviderError::new(Some("weird_error"), None, None));
    assert_class(
        &c.classify_error(&unknown),
        FailureClass::StreamError,
        true,
        true,
        true,
    );

    let f = c.classify_error(&TruncatedStream::new());
    assert_class(&f, FailureClass::TruncatedStream, true, true, true);
}

#[test]
fn invalid_content() {
    let c = DefaultClassifier::new();
    for problem in [
        ContentProblem::Empty,
        ContentProblem::MalformedJson,
        ContentProblem::Refusal,
    ] {
        let f = c.classify_error(&InvalidContent::new(problem));
        assert_class(&f, FailureClass::InvalidContent, true, false, true);
        assert_eq!(f.code(), Some(problem.as_str()));
    }
}

#[test]
fn a_truncated_answer_is_not_retried_but_falls_back() {
    let f =
        DefaultClassifier::new().classify_error(&InvalidContent::new(ContentProblem::Truncated));
    assert_class(&f, FailureClass::InvalidContent, false, false, true);
    assert_eq!(f.code(), Some("truncated"));
}

#[derive(Debug)]
struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client error")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[test]
fn transport_errors_through_their_source_chain() {
    let c = DefaultClassifier::new();
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_class(
        &c.classify_error(&refused),
        FailureClass::Connect,
        true,
        true,
        true,
    );
    let wrapped = Wrapped(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )));
    assert_eq!(c.classify_error(&wrapped).class(), FailureClass::Connect);
    let timed_out = Wrapped(Box::new(std::io::Error::from(std::io::ErrorKind::TimedOut)));
    assert_eq!(c.classify_error(&timed_out).class(), FailureClass::Timeout);
    assert_eq!(
        c.classify_error(&tower::timeout::error::Elapsed::new())
            .class(),
        FailureClass::Timeout
    );
    let other = std::io::Error::other("something else");
    let f = c.classify_error(&other);
    assert_class(&f, FailureClass::Other, false, false, false);
}

#[tokio::test(start_paused = true)]
async fn tokio_timeouts_are_timeouts() {
    let err = tokio::time::timeout(Duration::from_secs(1), std::future::pending::<()>())
        .await
        .unwrap_err();
    assert_eq!(
        DefaultClassifier::new().classify_error(&err).class(),
        FailureClass::Timeout
    );
}

#[tokio::test]
async fn connection_refused_from_hyper_util_client() {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    // Bind then drop a listener: the port is closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let err = client
        .get(format!("http://{addr}/v1/models").parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        DefaultClassifier::new().classify_error(&err).class(),
        FailureClass::Connect,
        "{err:?}"
    );
}

#[tokio::test]
async fn peeked_error_body_is_handed_back_intact() {
    let chunks = [
        "{\"type\":\"error\",",
        "\"error\":{\"type\":\"overloaded_error\",",
        "\"message\":\"Overloaded\"}}",
    ];
    let body = StreamBody::new(futures_util::stream::iter(chunks.map(|c| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c)))
    })));
    let resp = Response::builder().status(529).body(body).unwrap();
    let resp = PeekBody::new(resp, 1024).await;
    assert_eq!(resp.body().peeked(), chunks.concat().as_bytes());
    let headers = HeaderMap::new();
    let view = ResponseView::new(resp.status(), &headers).with_body(resp.body().peeked());
    let f = DefaultClassifier::new()
        .classify_response(&view)
        .into_failure()
        .unwrap();
    assert_eq!(f.class(), FailureClass::Overloaded);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        chunks.concat()
    );
}

#[tokio::test]
async fn peek_stops_at_its_limit_and_loses_nothing() {
    let chunks = ["0123456789", "abcdefghij", "KLMNOPQRST"];
    let body = StreamBody::new(futures_util::stream::iter(chunks.map(|c| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c)))
    })));
    let resp = PeekBody::new(Response::new(body), 15).await;
    assert_eq!(resp.body().peeked(), b"0123456789abcdefghij");
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        chunks.concat()
    );
}

#[tokio::test]
async fn peek_keeps_a_body_error_for_the_caller() {
    let body = StreamBody::new(futures_util::stream::iter([
        Ok(http_body::Frame::data(Bytes::from("partial"))),
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    ]));
    let resp = PeekBody::new(Response::new(body), 1024).await;
    assert_eq!(resp.body().peeked(), b"partial");
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "partial");
    let err = body.frame().await.unwrap().unwrap_err();
    assert!(err.is::<std::io::Error>());
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn peek_keeps_trailers() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let body = StreamBody::new(futures_util::stream::iter([
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from("data"))),
        Ok(http_body::Frame::trailers(trailers.clone())),
    ]));
    let resp = PeekBody::new(Response::new(body), 1024).await;
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), "data");
}

#[test]
fn every_class_has_a_distinct_name() {
    let names: std::collections::HashSet<_> =
        FailureClass::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), FailureClass::ALL.len());
}

proptest::proptest! {
    #[test]
    fn classifier_never_panics(
        status in 100u16..1000,
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        retry_after in "[ -~]{0,40}",
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&retry_after) {
            headers.insert("retry-after", v.clone());
            headers.insert("retry-after-ms", v.clone());
            headers.insert("x-ratelimit-reset-tokens", v);
        }
        let view = ResponseView::new(StatusCode::from_u16(status).unwrap(), &headers)
            .with_body(&body)
            .with_now(now());
        let _ = DefaultClassifier::new().classify_response(&view);
    }
}
