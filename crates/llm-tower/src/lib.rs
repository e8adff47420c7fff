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
//!
//! # Feature flags
//!
//! | feature | enables |
//! |---|---|
//! | `timeout` | `TimeoutLayer` |
//! | `retry` | `RetryLayer` |
//! | `rate-limit` | `RateLimitLayer` |
//! | `circuit-breaker` | `CircuitBreakerLayer` |
//! | `fallback` | `FallbackLayer` |
//! | `budget` | `BudgetLayer` |
//! | `full` | all of the above |
//! | `tower-http` | [`classify::HttpClassifier`], the classifier as a tower-http `ClassifyResponse` |
//!
//! The layers land one by one; the features exist from the start so that a
//! dependency declaration written today keeps working.
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
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod classify;
pub mod clock;
pub mod metering;
pub mod pricing;
pub mod provider;
pub mod request;
pub mod store;
pub mod usage;

/// Alias for a type-erased error, as used throughout tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
