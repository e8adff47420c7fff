//! Middleware that meters response bodies: token usage, finish reasons and
//! stream errors, observed as the body passes, never by collecting it.
//!
//! [`MeterLayer`] wraps every response body in a [`MeteredBody`]. The body
//! passes each frame on at once and, on the way, extracts usage from JSON
//! bodies (a targeted scan at the end, see
//! [`provider::usage`](crate::provider::usage)) and from SSE streams (parsed
//! incrementally by [`SseParser`]), for OpenAI chat and responses, Anthropic
//! and Gemini. Outer layers (budget, rate limit, logging) register
//! [`UsageObserver`]s on the request before the call; each gets one
//! [`UsageReport`] per call.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use llm_tower::metering::{MeterLayer, UsageObservers, UsageReport};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(MeterLayer::new())
//!     .service(service_fn(|_req: http::Request<Full<Bytes>>| async move {
//!         let body = r#"{"choices":[{"finish_reason":"stop"}],
//!                        "usage":{"prompt_tokens":12,"completion_tokens":3}}"#;
//!         Ok::<_, llm_tower::BoxError>(http::Response::new(Full::new(Bytes::from(body))))
//!     }));
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let mut req = http::Request::new(Full::new(Bytes::new()));
//! let sink = seen.clone();
//! UsageObservers::register(&mut req, Arc::new(move |r: &UsageReport| {
//!     sink.lock().unwrap().push(r.usage)
//! }));
//!
//! let res = svc.oneshot(req).await?;
//! let body = res.into_body().collect().await?.to_bytes(); // the body, untouched
//! assert!(body.starts_with(b"{\"choices\""));
//! assert_eq!(seen.lock().unwrap()[0].total_tokens(), 15);
//! # Ok(())
//! # }
//! ```
//!
//! # Exactly one report
//!
//! Every call that reaches [`Meter`] produces exactly one report:
//!
//! | what happened | reported | [`Outcome`] |
//! |---|---|---|
//! | body read to its end | the provider's usage, else the estimate | `Completed` |
//! | error event inside a stream | what arrived, estimated | `StreamError` |
//! | stream ended before its finish reason | what arrived, estimated | `Truncated` |
//! | an event that is not valid JSON | what arrived, estimated | `Malformed` |
//! | the inner body failed | what arrived, estimated | `BodyError` |
//! | a timeout further out gave the body up | what arrived, estimated | `TimedOut` |
//! | another layer gave it up for a failure it recorded | what arrived, estimated | `Failed` |
//! | body dropped before its end | what arrived, estimated | `DroppedEarly` (`Completed` if the stream was complete) |
//! | error response (non-2xx) | zero, actual | as above, with the status |
//! | the inner service failed | zero, actual | `TransportError` |
//! | the response future was dropped | the input estimate | `Cancelled` |
//!
//! [`MeteredBody`] documents when usage is actual and how it is estimated.
//!
//! # Observing, not acting
//!
//! The meter never changes what the caller receives: every byte and every
//! error of the inner body passes as it came, and nothing is added. Stream
//! failures ([`StreamError`], [`MalformedStream`], [`TruncatedStream`]) are
//! recorded in the body's [`StreamProgress`] and in the report's
//! [`Outcome`]; acting on them is a policy of the layers further out
//! (retry retries them before the first token and hands them to the caller
//! as a typed error after; the circuit breaker counts them).
//!
//! # One parse per stream
//!
//! The meter attaches the response's [`StreamProgress`] and parses the
//! stream into it; the timeout, breaker and retry layers wrapping the body
//! read it instead of parsing again. What each format's events mean — the
//! first token, the finish reason, errors — is written once, in
//! [`provider::usage::StreamUsage`](crate::provider::usage::StreamUsage).
//!
//! # Request metadata
//!
//! The meter reads the [`RequestMeta`](crate::request::RequestMeta) that
//! [`PrepareLayer`](crate::request::PrepareLayer) put in the request's
//! extensions, for the wire format, the model and the input estimate.
//! Without it, the format is inferred from the response (SSE events named
//! `message_*` are Anthropic's, `data: [DONE]` and `choices` OpenAI chat's,
//! `usageMetadata` Gemini's) and the estimate is zero.
//!
//! # Clone
//!
//! [`MeterLayer`] holds no state and [`Meter`] is `Clone` when its inner
//! service is: everything a call needs travels with the request (its
//! [`RequestMeta`](crate::request::RequestMeta) and [`UsageObservers`]).
//!
//! # Order
//!
//! Place the meter inside retry and fallback, next to the HTTP client, so
//! every attempt is metered: each attempt that reached a provider may cost
//! tokens. The meter *takes* the observers out of the request, so a second
//! meter further in reports nothing twice.

mod body;
mod error;
mod gate;
mod layer;
mod progress;
mod report;
mod sse;

pub mod future;

pub use self::body::{BodyKind, JSON_RETAIN_LIMIT, MeteredBody};
pub use self::error::{MalformedStream, StreamError, TruncatedStream};
pub use self::gate::{Admission, AdmitFuture, AttemptGate, Gate};
pub use self::layer::{Meter, MeterLayer};
#[cfg(any(feature = "timeout", feature = "retry", feature = "circuit-breaker"))]
pub(crate) use self::progress::observe;
pub use self::progress::{Feeder, ProgressBody, StreamProgress};
pub use self::report::{Outcome, UsageObserver, UsageObservers, UsageReport, UsageSource};
pub use self::sse::{MAX_EVENT_SIZE, SseEvent, SseParser};
