//! Middleware that retries failed LLM calls the way a provider's own SDK
//! would approve of, and never turns an outage into a retry storm.
//!
//! [`RetryLayer`] asks the [classifier](crate::classify) about every
//! failed attempt and retries only what it calls retryable: rate limits,
//! overloads, server errors, timeouts, dropped connections, an error event
//! before a stream's first token. It never retries a bad request, an auth
//! failure, an exhausted quota, a context-length error or a content-policy
//! refusal.
//!
//! - **Delays.** When the provider says how long to wait (`retry-after`,
//!   `retry-after-ms`, an exhausted `x-ratelimit-reset-*`), that wait is
//!   honoured, never shortened; a wait longer than
//!   [`max_server_delay`](RetryConfig::max_server_delay) gives up instead.
//!   A delay of zero or already past is raised to a
//!   [floor](RetryConfig::server_delay_floor) (100 ms), and a little
//!   [jitter](RetryConfig::server_delay_jitter) (up to 100 ms) is added on
//!   top, so callers told the same instant do not all come back at it.
//!   Otherwise [`Backoff`]: exponential, capped, with full jitter by
//!   default (equal and decorrelated jitter as options).
//! - **Deadlines.** A wait that would end after the call's
//!   [`Deadline`](crate::deadline::Deadline) is not started: the last
//!   answer is returned at once.
//! - **Budget.** A [retry budget](BudgetConfig) shared by every clone of
//!   the layer: under a sustained outage, retries stop after a handful, and
//!   while calls succeed they stay a bounded fraction of them. Only retries
//!   actually made are paid for, and a `429` with an exact server-directed
//!   delay is free: a rate-limited but healthy provider is not an outage.
//! - **Streams.** A stream is held until its first token — the first event
//!   carrying model output, not a ping or an empty delta — as its
//!   [`StreamProgress`](crate::metering::StreamProgress) says (read from a
//!   meter or timeout further in, or parsed here when there is none): an
//!   error event, an event that is not valid JSON, a stream that ends
//!   early, a cut connection or a first-token timeout before it is retried
//!   like any failed attempt. Once the first token has been handed to the
//!   caller nothing is retried, and a later failure of the stream — the
//!   same ones, or a stream that ends before its finish reason — reaches the
//!   caller as a typed [`StreamInterrupted`], never as a silently partial
//!   answer. A stream that delivered its finish reason is complete, with or
//!   without a closing `[DONE]`.
//! - **Whole streams.** With [`hold`](RetryConfig::hold) set to
//!   [`Hold::Complete`], a stream is held until it is complete (its finish
//!   reason or terminal event came), up to `max_bytes`: a cut, a dropped
//!   connection, a malformed event or an error event **anywhere** in it is
//!   retried like a failure before the first token, and the caller gets one
//!   clean, complete stream — or, once retries are exhausted, the last
//!   failure. The price: nothing reaches the caller until the model has
//!   finished (no incremental display), and up to `max_bytes` held per call
//!   in flight. A stream larger than the bound is handed over when the
//!   bytes held reach it, and from then on is treated as with
//!   [`Hold::FirstToken`] (the default, for interactive callers).
//! - **Content.** Opt-in [content checks](ContentChecks): an empty answer
//!   or malformed JSON where JSON was asked for count as retryable
//!   [`InvalidContent`](crate::classify::InvalidContent). An answer cut by
//!   the output cap (`finish_reason: length`) is never resent as is (it
//!   would be cut again); with [`truncated`](ContentChecks::truncated) on it
//!   is a non-retryable `InvalidContent` (code `truncated`) that asks a
//!   fallback for a larger cap or another model.
//! - **Nothing made up.** When retries end on an HTTP error, the caller
//!   gets that response — status, headers and every byte of the body.
//! - **Idempotency.** With
//!   [`idempotency_header`](RetryConfig::idempotency_header), every attempt
//!   of a call carries the same key.
//! - **Observable.** A `tracing` span per attempt (`llm.attempt`, with the
//!   attempt number and model), an event per decision (class, status,
//!   delay, reason), and a [hook](RetryLayer::on_event) for metrics.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::{
//!     request::PrepareLayer,
//!     retry::{RetryConfig, RetryLayer},
//!     timeout::{TimeoutConfig, TimeoutLayer},
//! };
//! use tower::ServiceBuilder;
//! # use llm_tower::request::ReplayBody;
//! # fn client() -> impl tower::Service<http::Request<ReplayBody>, Response = http::Response<http_body_util::Full<bytes::Bytes>>, Error = std::convert::Infallible> + Clone {
//! #     tower::service_fn(|_| async { Ok(http::Response::new(http_body_util::Full::default())) })
//! # }
//!
//! let timeouts = TimeoutConfig::new()
//!     .total(Duration::from_secs(60))
//!     .attempt(Duration::from_secs(20))
//!     .first_token(Duration::from_secs(8));
//! let retry = RetryLayer::new(RetryConfig::new().max_attempts(4).idempotency_header("idempotency-key").build()?)
//!     .on_event(|e| eprintln!("attempt {} failed ({}): {:?}", e.attempt, e.class, e.decision));
//!
//! let svc = ServiceBuilder::new()
//!     .layer(PrepareLayer::new())
//!     .layer(TimeoutLayer::new(timeouts.whole_call().build()?)) // the caller's deadline
//!     .layer(retry)                                     // waits never pass it
//!     .layer(TimeoutLayer::new(timeouts.per_attempt().build()?)) // a hung attempt is cut and retried
//!     .service(client());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Order
//!
//! - **Inside the total timeout**, so its deadline bounds every attempt and
//!   wait, and the retry layer can see it to skip a wait that cannot fit.
//! - **Outside the attempt timeout**, so a hung attempt is cut and retried.
//! - **Outside the circuit breaker and the rate limiter**: each attempt is
//!   recorded by the breaker (an open breaker fails the attempt at once, and
//!   that failure is not retried) and takes its own rate-limit permit.
//! - **Outside the meter**, so each attempt's usage is metered, and inside
//!   a fallback layer, which moves on only when retries are done.
//!
//! Placed the other way round — retry inside the attempt timeout — one
//! attempt's limit would have to hold every retry and wait.
//!
//! # Requirements
//!
//! The request body must be `Clone` (use [`ReplayBody`](crate::request::ReplayBody),
//! which [`PrepareLayer`](crate::request::PrepareLayer) makes) and the
//! inner service `Clone`. The response body may be any body, `Unpin` or
//! not: a body that is read before it is handed over (an error body to
//! classify, a stream held until its first token) is pinned on the heap
//! for it.
//!
//! # The body the caller gets
//!
//! Through the recommended per-target stack over hyper-util's client, a
//! response body is
//! `RetryBody<BreakerBody<TimeoutBody<MeteredBody<Incoming>>>>`:
//! every layer's body wraps the one inside, without boxing. To name one
//! type for every stack (a `BoxCloneService`, say), box it:
//! `res.map(|b| http_body_util::BodyExt::boxed_unsync(b))` (or `boxed`
//! when `Sync` is needed), whose type is
//! `UnsyncBoxBody<Bytes, BoxError>`.
//!
//! # Clone
//!
//! Clones share the configuration, the classifier and the retry budget.

mod backoff;
mod body;
mod budget;
mod config;
mod content;
mod error;
mod event;
mod future;
mod layer;

pub use backoff::{Backoff, Jitter};
pub use body::RetryBody;
pub use budget::BudgetConfig;
pub use config::{ConfigError, ContentChecks, Hold, RetryConfig};
pub use error::StreamInterrupted;
pub use event::{Decision, GiveUp, RetryEvent};
pub use future::ResponseFuture;
pub use layer::{Retry, RetryLayer};
