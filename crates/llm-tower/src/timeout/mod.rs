//! Middleware that bounds every phase of an LLM call, the streamed body
//! included.
//!
//! tower's own timeout stops at the response headers, but an LLM stream can
//! hang for minutes after them. [`TimeoutLayer`] enforces its limits while
//! the caller reads the body too:
//!
//! | limit | from | until | error phase |
//! |---|---|---|---|
//! | [`total`](TimeoutConfig::total) | the call into this layer | the end of the body | [`Phase::Total`] |
//! | [`attempt`](TimeoutConfig::attempt) | the call into this layer | the end of the body | [`Phase::Attempt`] |
//! | [`first_byte`](TimeoutConfig::first_byte) | the call | the response headers | [`Phase::FirstByte`] |
//! | [`first_token`](TimeoutConfig::first_token) | the call | the stream's first token: the first event carrying model output (streams only) | [`Phase::FirstToken`] |
//! | [`idle`](TimeoutConfig::idle) | a chunk (or the headers) | the next chunk | [`Phase::Idle`] |
//! | [`stream`](TimeoutConfig::stream) | the response headers | the end of the body | [`Phase::Stream`] |
//!
//! Every limit is optional, and [per-model profiles](TimeoutConfig::profiles)
//! give a slow reasoning model more time than a small one. A limit that
//! elapses fails the call with an [`Elapsed`] error that names the phase,
//! the limit and how long after the call it fired. Dropping the response
//! future or the body drops the inner call, which cancels the request
//! upstream (hyper closes the connection).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::timeout::{TimeoutConfig, TimeoutLayer};
//! use tower::ServiceBuilder;
//! # use llm_tower::request::{PrepareLayer, ReplayBody};
//! # fn client() -> impl tower::Service<http::Request<ReplayBody>, Response = http::Response<http_body_util::Full<bytes::Bytes>>, Error = std::convert::Infallible> + Clone {
//! #     tower::service_fn(|_| async { Ok(http::Response::new(http_body_util::Full::default())) })
//! # }
//!
//! let limits = TimeoutConfig::new()
//!     .total(Duration::from_secs(120))
//!     .attempt(Duration::from_secs(45))
//!     .first_token(Duration::from_secs(10))
//!     .idle(Duration::from_secs(20))
//!     // Reasoning models think before their first token.
//!     .profile("o3*", TimeoutConfig::new().attempt(Duration::from_secs(110)).first_token(Duration::from_secs(90)));
//!
//! let svc = ServiceBuilder::new()
//!     .layer(PrepareLayer::new())
//!     // Outside retry: the whole call, every attempt and backoff included.
//!     .layer(TimeoutLayer::new(limits.whole_call().build()?))
//!     // … RetryLayer, CircuitBreakerLayer, RateLimitLayer …
//!     // Inside retry: each attempt, and its stream.
//!     .layer(TimeoutLayer::new(limits.per_attempt().build()?))
//!     .service(client());
//! # Ok::<(), llm_tower::timeout::ConfigError>(())
//! ```
//!
//! # Order
//!
//! The layer measures from the moment a call enters it, so its position
//! decides what `total` and `attempt` mean:
//!
//! - **Outside retry** (and fallback), a limit covers the whole logical
//!   call: every attempt, every backoff, every fallback target. This is
//!   where the caller's own deadline belongs: `total`.
//! - **Inside retry**, a limit covers one attempt: a hung attempt is cut
//!   and retried, while the outer total still bounds the sum. This is where
//!   `attempt`, `first_byte`, `first_token`, `idle` and `stream` belong:
//!   a retry can only help if the timeout fires before the caller's budget
//!   is gone.
//!
//! [`TimeoutConfig::whole_call`] and [`TimeoutConfig::per_attempt`] split
//! one configuration for the two positions. A single layer with every limit
//! works too, for a stack without retry.
//!
//! # Deadline
//!
//! A layer with `total` or `attempt` sets a [`Deadline`] in the request's
//! extensions: the earlier of its own and any deadline already there. Layers
//! further in read it, so that a retry never sleeps past it and a
//! rate-limit queue never holds a request that cannot finish; a request
//! that arrives with its deadline already past fails at once with
//! [`Phase::Deadline`], and nothing is sent.
//!
//! # Streams
//!
//! The first-token limit applies to requests whose
//! [`RequestMeta`](crate::request::RequestMeta) asks for a stream (from the
//! call) and to successful `text/event-stream` responses (in the body). It
//! ends at the stream's **first token**: the first event that carries model
//! output, as the body's [`StreamProgress`] says — not Anthropic's
//! `message_start`, `content_block_start` or `ping`, not an OpenAI role
//! chunk or empty delta. The progress is read from a layer further in (the
//! meter) or, used without one, parsed by this layer: either way the stream
//! is parsed once ([`StreamProgress`] explains how).
//!
//! Keep-alives are not output, but they are not silence either: any chunk,
//! a ping included, ends an idle period. `idle` bounds silence on the
//! connection, `first_token` the wait for output. The idle limit runs while
//! the caller is waiting for the next chunk, so a slow reader is not
//! mistaken for a stalled provider. A healthy slow stream that keeps
//! producing is never cut by `idle`; `stream` bounds its whole duration. A
//! body that never waits (its frames always ready) meets its limits too:
//! they are checked against the clock every 16 frames in a row.
//!
//! When a limit elapses while the body is read, it is recorded in the
//! body's [`StreamProgress`] before the inner body is dropped, so a circuit
//! breaker or a meter further in counts the call as timed out, not as
//! abandoned by the caller.
//!
//! [`StreamProgress`]: crate::metering::StreamProgress
//!
//! # Clone
//!
//! The layer and service are cheap to clone: the configuration is shared.
//!
//! [`Deadline`]: crate::deadline::Deadline

mod body;
mod config;
mod error;
mod future;
mod layer;
mod timer;

pub use body::TimeoutBody;
pub use config::{ConfigError, Limits, TimeoutConfig};
pub use error::{Elapsed, Phase};
pub use future::ResponseFuture;
pub use layer::{Timeout, TimeoutLayer};
