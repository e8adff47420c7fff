//! Middleware that stops calling a provider that is down, and finds out
//! when it is back.
//!
//! [`CircuitBreakerLayer`] keeps one breaker per key — the provider and
//! model of the request by default ([`BreakerKey`]), anything else with
//! [`key_fn`](CircuitBreakerLayer::key_fn) — shared by every clone of the
//! layer and its services.
//!
//! - **Closed**: calls go through and their outcomes are counted. The
//!   breaker opens on [`consecutive_failures`](CircuitBreakerConfig::consecutive_failures)
//!   in a row, or when the [failure rate](RateTrip) over a sliding window
//!   (the last N calls, or the last T of time) reaches its threshold once
//!   the window holds a minimum of calls, or on a rate of
//!   [slow calls](SlowTrip).
//! - **Open**: calls fail at once with [`CircuitOpen`], which says when the
//!   next probe goes. The open time grows at each trip that follows without
//!   a close, up to a cap, with jitter ([`OpenDuration`]).
//! - **Half-open**: once the open time is over, a configured number of
//!   probes go through ([`HalfOpen`]); the others still fail fast. Enough
//!   successful probes close the breaker; a failed probe opens it again,
//!   for longer.
//!
//! Only failures that say the provider is unhealthy count, by default:
//! server errors, overload (`503`, `529`), timeouts, connection and stream
//! errors ([`Failure::counts_against_health`]). Bad requests, auth errors
//! and rate limits do not trip it; [`count`](CircuitBreakerConfig::count)
//! changes that. A response is judged on its status and headers (the body
//! is never read for it); a successful response counts as a success once
//! its body has ended well, and as a failure if the body breaks in a way
//! that counts (an error event, a cut stream, a timeout of an inner layer).
//!
//! A [`CircuitBreakerHandle`] reads every breaker's state, isolates one
//! (forces it open) and resets it. Every transition is a `tracing` event,
//! and is passed to [`on_transition`](CircuitBreakerLayer::on_transition).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::{
//!     circuit_breaker::{BreakerKey, CircuitBreakerConfig, CircuitBreakerLayer, OpenDuration},
//!     request::PrepareLayer,
//!     retry::{RetryConfig, RetryLayer},
//! };
//! use tower::ServiceBuilder;
//! # use llm_tower::request::ReplayBody;
//! # fn client() -> impl tower::Service<http::Request<ReplayBody>, Response = http::Response<http_body_util::Full<bytes::Bytes>>, Error = std::convert::Infallible> + Clone {
//! #     tower::service_fn(|_| async { Ok(http::Response::new(http_body_util::Full::default())) })
//! # }
//!
//! let breaker = CircuitBreakerLayer::new(
//!     CircuitBreakerConfig::new()
//!         .consecutive_failures(Some(5))
//!         .open(OpenDuration { base: Duration::from_secs(10), ..OpenDuration::default() }),
//! )?
//! .on_transition(|t| eprintln!("{}: {} -> {} ({})", t.key, t.from, t.to, t.reason));
//! let handle = breaker.handle();
//!
//! let svc = ServiceBuilder::new()
//!     .layer(PrepareLayer::new())
//!     .layer(RetryLayer::new(RetryConfig::new())?)
//!     .layer(breaker)
//!     .service(client());
//!
//! // An operator takes a model out of rotation, then puts it back.
//! let key = BreakerKey::named("gpt-4o");
//! handle.isolate(&key);
//! handle.reset(&key);
//! # let _ = svc;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Order
//!
//! Inside retry, so every attempt is recorded and an open breaker ends the
//! retries at once ([`CircuitOpen`] is not retryable) for a fallback to move
//! on; outside the rate limiter and the attempt timeout, so a timed-out
//! attempt counts as a failure and an open breaker spends no rate-limit
//! permit. Placed outside retry, it would see one outcome per call and trip
//! later.
//!
//! # Performance
//!
//! On the closed path a call costs a lookup of its breaker in a map read
//! without a lock (an [`arc_swap`](https://docs.rs/arc-swap) snapshot; a
//! new key copies the map), one atomic load to admit it and a few relaxed
//! atomic operations to record it; only transitions take a lock.
//!
//! [`Failure::counts_against_health`]: crate::classify::Failure::counts_against_health

mod admitted;
mod config;
mod error;
mod future;
mod key;
mod layer;
mod map;
mod state;
mod window;

pub use admitted::Admitted;
pub use config::{
    CircuitBreakerConfig, ConfigError, DEFAULT_MAX_KEYS, HalfOpen, OpenDuration, RateTrip,
    SlidingWindow, SlowTrip,
};
pub use error::CircuitOpen;
pub use future::{BreakerBody, ResponseFuture};
pub use key::BreakerKey;
pub use layer::{CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer};
pub use state::{BreakerState, Transition};
