//! A fault-injecting mock LLM provider, for tests, demos and benchmarks.
//!
//! `llm-tower-mock` is a real HTTP/1.1 server on loopback that speaks
//! OpenAI chat completions, Anthropic messages and Gemini `generateContent`,
//! streaming (SSE) and not, and fails the way those providers fail, on
//! command. Point any client at it — llm-tower's layers, an official SDK, your
//! own code — and script what goes wrong.
//!
//! - **Faithful answers**: each provider's JSON and SSE event shapes and
//!   terminal events in the documented order, usage derived from the
//!   request, provider request ids, rate-limit headers; deterministic content
//!   for a given request and seed.
//! - **Faults** ([`Fault`]), scripted per call ([`Rule::times`], matching a
//!   model, provider, path or stream flag, or asked for by the request
//!   itself in an [`x-mock-fault`](FAULT_HEADER) header) or by chance
//!   ([`Rule::probability`]), or in a time window ([`Rule::outage`]).
//! - **Real quotas** ([`Quota`]): requests and tokens per minute (the
//!   output cap counted on arrival and kept, as OpenAI counts), input and
//!   output tokens per minute (unused output given back when the answer
//!   ends, as Anthropic counts), refused with `429` and an honest
//!   `retry-after`.
//! - **A journal** ([`Journal`]) of every attempt, in-process and at
//!   `GET /__mock/journal`.
//! - **Reproducible**: chance is drawn from the seed, the request body and
//!   its attempt number, so the same seed and script give the same faults
//!   even when concurrent calls arrive in another order.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use llm_tower_mock::{Fault, MockServer, Quota, Rule};
//!
//! let mock = MockServer::builder()
//!     .seed(42)
//!     // The first call to any gpt-4o model gets a 429 asking for 2 s.
//!     .rule(Rule::new(Fault::rate_limited(Duration::from_secs(2))).model("gpt-4o*").times(1))
//!     // Streams are cut after 3 tokens one time in ten.
//!     .rule(Rule::new(Fault::Drop { after: 3 }).probability(0.1))
//!     .quota(Quota::per_minute().requests(500).tokens(200_000))
//!     .start()
//!     .await?;
//!
//! println!("OpenAI base URL: {}", mock.openai_base_url());
//! println!("Anthropic base URL: {}", mock.url());
//! assert!(mock.journal().is_empty());
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! | path | format |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI chat completions (`stream`, `stream_options.include_usage`) |
//! | `POST /v1/messages` | Anthropic messages (`stream`) |
//! | `POST /v1beta/models/{model}:generateContent` | Gemini |
//! | `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` | Gemini, streaming |
//! | `GET /__mock/journal`, `DELETE /__mock/journal` | the journal as JSON; clear it |
//! | `GET /__mock/rules`, `POST /__mock/rules`, `DELETE /__mock/rules` | the rules; add (JSON or a spec per line); clear |
//! | `GET /__mock/health` | liveness |
//!
//! # Time
//!
//! Every delay, window and quota runs on tokio's clock, so a test with
//! paused time (`tokio::time::pause`) controls the mock as well as the
//! client: a `slow_first_token` of 30 s costs no real time.
//!
//! # The binary
//!
//! `cargo run -p llm-tower-mock -- --port 8080 --chaos` serves a chaotic
//! provider to any client; `--help` lists the flags, and `--config FILE`
//! takes a [`MockConfig`] as TOML or JSON.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod content;
mod fault;
mod journal;
mod quota;
mod server;
#[cfg(feature = "tls")]
pub mod tls;
mod wire;

pub use admin::PREFIX as ADMIN_PREFIX;
pub use config::{ConfigError, MockConfig, Timing};
pub use fault::{Fault, Match, Rule, Window};
pub use journal::{Entry, Journal};
pub use quota::Quota;
pub use server::{FAULT_HEADER, MockBuilder, MockServer, StartError};
pub use wire::Provider;
