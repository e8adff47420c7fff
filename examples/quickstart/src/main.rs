//! The README's quickstart: the recommended stack over hyper-util's client,
//! speaking HTTPS with rustls and the platform's root certificates.
//!
//! ```sh
//! OPENAI_API_KEY=sk-... cargo run -p quickstart
//! ```
//!
//! Without `OPENAI_API_KEY` it builds the stack and exits without a request.
//! `OPENAI_BASE_URL` (default `https://api.openai.com/v1`) sends the request
//! to any OpenAI-compatible server instead.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer},
    metering::MeterLayer,
    rate_limit::RateLimitLayer,
    request::{PrepareLayer, ReplayBody},
    retry::{RetryConfig, RetryLayer},
    timeout::{TimeoutConfig, TimeoutLayer},
};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let limits = TimeoutConfig::new()
        .total(Duration::from_secs(120)) // the whole call
        .attempt(Duration::from_secs(45)) // one attempt, body included
        .first_token(Duration::from_secs(10)) // a stream's first token of output (not a ping)
        .idle(Duration::from_secs(20)) // silence between chunks
        .profile(
            "o3*",
            TimeoutConfig::new()
                .attempt(Duration::from_secs(110))
                .first_token(Duration::from_secs(90)),
        );

    // HTTPS by rustls (ring), trusting the platform's roots, or those of
    // `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, as curl and OpenSSL do.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, ReplayBody>(https);
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new().body_limit(4 << 20)) // buffer once, parse once
        .layer(TimeoutLayer::new(limits.whole_call().build()?)) // outside retry: the caller's deadline
        .layer(RetryLayer::new(RetryConfig::new().build()?)) // 3 attempts, server delays, shared budget
        .layer(CircuitBreakerLayer::new(
            CircuitBreakerConfig::new().build()?,
        )) // per provider and model
        .layer(RateLimitLayer::default()) // paced by the provider's rate-limit headers; a 429 pauses the key
        .layer(TimeoutLayer::new(limits.per_attempt().build()?)) // inside retry: each attempt and its stream
        .layer(MeterLayer::new()) // usage, finish reason, stream errors
        .service(client);

    let Ok(key) = std::env::var("OPENAI_API_KEY") else {
        println!("stack built; set OPENAI_API_KEY to send a request");
        return Ok(());
    };
    let base =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".to_owned());
    let req = http::Request::post(format!("{}/chat/completions", base.trim_end_matches('/')))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}"#.to_owned(),
        )?;
    let res = svc.oneshot(req).await?;
    println!("{}", res.status());
    let body = res.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
