//! Resilience middleware for calling LLM provider APIs (OpenAI, Anthropic,
//! Gemini and any OpenAI-compatible server), built on [`tower`].
//!
//! Every concern is its own [`tower::Layer`], usable alone or stacked with
//! [`tower::ServiceBuilder`]. All of them stand on one shared vocabulary,
//! which this crate provides unconditionally:
//!
//! | module | what it knows |
//! |---|---|
//! | [`provider`] | which provider a request goes to; its rate-limit headers, error bodies, request ids and usage formats |
//! | [`request`] | the replayable request body and the [`RequestMeta`](request::RequestMeta) parsed once from it |
//! | [`classify`] | one failure vocabulary ([`FailureClass`](classify::FailureClass)) read by every layer |
//! | [`metering`] | a response body wrapper that extracts usage from JSON and SSE without collecting the body |
//! | [`usage`] | token counts and finish reasons, normalised across providers |
//! | [`pricing`] | prices per model, embedded and overridable, to turn usage into cost |
//! | [`clock`] and [`store`] | injectable time and the shared-state store behind limits, budgets and breakers |
//! | [`deadline`] | the deadline of a call, carried in the request so every layer knows the time left |
//! | [`attempts`] | one budget of upstream attempts per call, shared by nested layers so they never multiply attempts |
//! | [`config`] | [`Valid`](config::Valid): a configuration checked once, what a layer's infallible constructor takes |
//!
//! # Example
//!
//! Buffer and parse the request once, meter the response, and classify
//! what came back — here around a stand-in for an HTTP client:
//!
//! ```
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use llm_tower::{
//!     classify::{Classifier, DefaultClassifier, FailureClass, PeekBody, ResponseView},
//!     metering::{MeterLayer, UsageObservers, UsageReport},
//!     request::{PrepareLayer, ReplayBody},
//! };
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::BoxError> {
//! // A provider that is out of quota.
//! let client = service_fn(|_req: http::Request<ReplayBody>| async {
//!     let body = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
//!     Ok::<_, llm_tower::BoxError>(
//!         http::Response::builder().status(429).body(Full::new(Bytes::from(body)))?,
//!     )
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(PrepareLayer::new())
//!     .layer(MeterLayer::new())
//!     .service(client);
//!
//! let mut req = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#.to_owned())?;
//! UsageObservers::register(&mut req, Arc::new(|r: &UsageReport| {
//!     assert_eq!(r.usage.total_tokens(), 0); // an error response costs nothing
//! }));
//!
//! let resp = PeekBody::new(svc.oneshot(req).await?, 64 << 10).await;
//! let view = ResponseView::new(resp.status(), resp.headers()).with_body(resp.body().peeked());
//! let failure = DefaultClassifier::new().classify_response(&view).into_failure().unwrap();
//! assert_eq!(failure.class(), FailureClass::QuotaExhausted);
//! assert!(!failure.is_retryable()); // retrying an empty account burns time forever
//! assert!(failure.should_fall_back()); // another provider may still answer
//! // The caller still gets the whole error body.
//! assert!(resp.into_body().collect().await?.to_bytes().starts_with(b"{\"error\""));
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! | feature | enables |
//! |---|---|
//! | `timeout` | [`TimeoutLayer`](timeout::TimeoutLayer): total, attempt, first byte, first token, idle and stream limits |
//! | `retry` | [`RetryLayer`](retry::RetryLayer): classified retries, server-directed delays, backoff with jitter, a shared budget, streams held until their first token |
//! | `rate-limit` | [`RateLimitLayer`](rate_limit::RateLimitLayer): requests, tokens and concurrency per key, provider or globally; a FIFO queue with a bounded wait; reserved from the estimate and settled with the metered usage; adaptive to the provider's rate-limit headers |
//! | `circuit-breaker` | [`CircuitBreakerLayer`](circuit_breaker::CircuitBreakerLayer): per provider and model, consecutive, rate and slow-call trips, limited half-open probes |
//! | `fallback` | [`FallbackLayer`](fallback::FallbackLayer): ordered targets, classified moves, cross-provider translation, one attempt budget, hedging, degradation; and [`translate`]: OpenAI chat <-> Anthropic messages, JSON and streams |
//! | `budget` | [`BudgetLayer`](budget::BudgetLayer): dollar and token limits per scope (global, API key, tenant, organisation, model, provider) over total, rolling and UTC calendar windows; worst case reserved before each attempt, settled to the metered cost; hard and soft limits with alerts |
//! | `redis` | [`store::RedisStore`]: limits and budgets shared across processes in Redis, one Lua script per operation |
//! | `redis-cluster` | `store::RedisStore::cluster_builder`: the Redis store on a Redis (or Valkey) Cluster |
//! | `redis-tls` | TLS for the Redis store (`rediss://`): rustls with ring, the system's roots or a CA of your own, client certificates |
//! | `full` | all of the above |
//! | `tower-http` | [`classify::HttpClassifier`], the classifier as a tower-http `ClassifyResponse` |
//! | `hyper` (default) | the classifier recognises hyper's and hyper-util's client errors; without it neither is compiled, and their I/O causes are still found through the source chain |
//! | `tower-timeout` (default) | the classifier recognises `tower::timeout`'s `Elapsed` |
//! | `reqwest` | [`client::ReqwestService`]: a `reqwest::Client` under the layers, its errors classified |
//! | `tiktoken` | [`request::TiktokenEstimator`]: exact input-token counts for OpenAI chat bodies with OpenAI's tokenizer (tiktoken-rs), for rate limits and budgets |
//!
//! The layers land one by one; the planned features exist from the start so
//! that a dependency declaration written today keeps working. The layers are
//! off by default (`full` turns them all on); docs.rs documents every
//! feature.
//!
//! See `docs/architecture.md` in the repository for the path of one request
//! and its response through the stack.
//!
//! [`tower`]: https://docs.rs/tower
//! [`tower::Layer`]: https://docs.rs/tower/latest/tower/trait.Layer.html
//! [`tower::ServiceBuilder`]: https://docs.rs/tower/latest/tower/struct.ServiceBuilder.html
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod attempts;
#[cfg(feature = "budget")]
pub mod budget;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
pub mod classify;
#[cfg(feature = "reqwest")]
pub mod client;
pub mod clock;
pub mod config;
pub mod deadline;
#[cfg(feature = "fallback")]
pub mod fallback;
pub mod metering;
pub mod pricing;
pub mod provider;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
pub mod request;
#[cfg(feature = "retry")]
pub mod retry;
pub mod store;
#[cfg(feature = "timeout")]
pub mod timeout;
#[cfg(feature = "fallback")]
pub mod translate;
pub mod usage;
mod util;

/// Alias for a type-erased error, as used throughout tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
