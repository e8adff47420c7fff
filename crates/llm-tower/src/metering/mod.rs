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
//! Every call that [`Meter`] sends produces exactly one report:
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
//! An attempt its [gate](#attempt-gates) refuses, or that is given up while
//! the gate makes it wait, is never sent and reports nothing.
//!
//! # Attempt gates
//!
//! An outer layer that must act *before each attempt is sent* — a budget
//! reserving the attempt's price, at the model of that attempt — puts an
//! [`AttemptGate`] in the request's extensions. The meter takes it and asks
//! its [`Gate`] about every attempt before calling the inner service, with
//! the attempt's [`RequestMeta`](crate::request::RequestMeta) (the model
//! after any fallback rewrite). The gate answers with an [`Admission`]:
//!
//! - [`Now`](Admission::Now): sent at once, as without a gate; the gate's
//!   observer, if any, gets this attempt's report (after the request's own
//!   observers), to settle what it reserved.
//! - [`Later`](Admission::Later): sent when the gate's future resolves
//!   `Ok`; on `Err` the attempt fails with that error. The meter holds its
//!   inner service, polled ready, while it waits (as
//!   `tower::filter::AsyncFilter` does). If the caller gives the attempt
//!   up meanwhile, the gate's future is dropped and must release what it
//!   reserved.
//! - [`Refuse`](Admission::Refuse): not sent; the attempt fails with the
//!   error.
//!
//! A refused attempt reports nothing to the observers: nothing was sent, and
//! the gate keeps its own accounts.
//!
//! Why in the meter: it is the one layer every attempt on the wire passes,
//! next to the HTTP client. Retry layers, fallback, hedging — including
//! layers that know nothing of llm-tower, like `tower::retry` — clone the
//! request, extensions and all, for each attempt, so each clone carries the
//! gate to the meter, which consults it once for that attempt. A layer
//! further out would see the call once, not its attempts; the meter sees
//! each attempt and its usage report, which settles what was reserved.
//!
//! Without a gate, or with one answering `Now`, the call costs what it did
//! before gates: no allocation beyond the observer added. `Later` boxes
//! the wait.
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
//! [`RequestMeta`](crate::request::RequestMeta), [`UsageObservers`] and
//! [`AttemptGate`]). The meter is a service only over a `Clone` inner
//! service: an attempt a gate makes wait takes the service polled ready
//! with it, leaving a clone.
//!
//! # Order
//!
//! Place the meter inside retry and fallback, next to the HTTP client, so
//! every attempt is metered: each attempt that reached a provider may cost
//! tokens. The meter *takes* the observers and the gate out of the request,
//! so a second meter further in reports nothing twice and gates nothing
//! twice.

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
pub use self::gate::{Admission, AdmitFuture, Attempt, AttemptGate, Gate};
pub use self::layer::{Meter, MeterLayer};
#[cfg(any(feature = "timeout", feature = "retry", feature = "circuit-breaker"))]
pub(crate) use self::progress::observe;
pub use self::progress::{Feeder, ProgressBody, StreamProgress};
pub use self::report::{Outcome, UsageObserver, UsageObservers, UsageReport, UsageSource};
pub use self::sse::{MAX_EVENT_SIZE, SseEvent, SseParser};
