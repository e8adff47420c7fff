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
//! its body has ended complete, and as a failure if the body breaks in a
//! way that counts — an error event inside the `200`, an event that is not
//! valid JSON, a stream cut before its finish reason, a timeout — whichever
//! layer noticed it: the breaker reads the body's
//! [`StreamProgress`](crate::metering::StreamProgress), where the meter,
//! the retry hold or a timeout further out recorded it, so a stream the
//! retry layer drops for an error event before its first token still counts
//! as the failure it was. A stream's slowness is timed to its first token.
//!
//! A [`CircuitBreakerHandle`] reads every breaker's state, isolates
//! (forces open) and resets breakers. It takes a key as a pattern
//! ([`BreakerKey::covers`]): `BreakerKey::named("gpt-4o")` reaches the
//! `gpt-4o` breaker of every provider. Isolations are kept apart from the
//! breakers, apply to breakers made later, and survive eviction. Every
//! transition is a `tracing` event, and is passed to
//! [`on_transition`](CircuitBreakerLayer::on_transition) — after the
//! breaker's lock is released, so a listener may call the handle.
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
//!         .open(OpenDuration { base: Duration::from_secs(10), ..OpenDuration::default() })
//!         .build()?,
//! )
//! .on_transition(|t| eprintln!("{}: {} -> {} ({})", t.key, t.from, t.to, t.reason));
//! let handle = breaker.handle();
//!
//! let svc = ServiceBuilder::new()
//!     .layer(PrepareLayer::new())
//!     .layer(RetryLayer::new(RetryConfig::new().build()?))
//!     .layer(breaker)
//!     .service(client());
//!
//! // An operator takes a model out of rotation at every provider, then
//! // puts it back.
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
//! # Sharing health across processes
//!
//! Off by default, a breaker's state lives in its process: a fleet of N
//! processes would each have to fail against a provider that is down
//! before all of them stop calling it. With
//! [`share`](CircuitBreakerConfig::share) on, and a layer made
//! [`with_store`](CircuitBreakerLayer::with_store) — a store shared by the
//! fleet, such as Redis; here every layer over one
//! [`MemoryStore`](crate::store::MemoryStore) clone — breakers of the same
//! key share their openings through a [flag](crate::store::Store::set_flag)
//! in the store, `<prefix>:breaker:<key>:open` (`llm-tower:breaker:openai/gpt-4o:open`
//! by default, the key as [`BreakerKey`] displays it):
//!
//! - **A trip** anywhere sets the flag, with the open time as its time to
//!   live. A failed probe trips again and sets it again, for the longer
//!   open time.
//! - **A closed breaker** looks at the flag before admitting a call, at most
//!   once per [`share_refresh`](CircuitBreakerConfig::share_refresh) per key
//!   (1 s by default; one caller per period looks, the others go on the
//!   local state). If the flag is set, the breaker opens here for the time
//!   left on it, with the transition reason `opened_elsewhere`, and refuses
//!   with [`CircuitOpen`] as if it had tripped. It does **not** count a
//!   trip of its own: its next open time starts from
//!   [`base`](OpenDuration::base) again. A breaker that is open or
//!   half-open here goes on its own state.
//! - **After the open time** every breaker lets its own probes through, as
//!   usual. A probe that closes a breaker clears the flag: a breaker that
//!   opened elsewhere for longer (another process's later trip) no longer
//!   holds the others back once one of them found the provider back. So
//!   does [`reset`](CircuitBreakerHandle::reset); isolations stay local.
//! - **Staleness.** A breaker sees an opening elsewhere within
//!   `share_refresh` of it: with the in-memory store before the call is
//!   admitted; with a remote store the look runs on a task and its answer
//!   applies from the next call on (within `share_refresh` plus a round
//!   trip). The flag holds the last word: a clear by a successful probe
//!   lifts a trip made elsewhere at the same time.
//! - **Store failures never fail a call.** A flag that cannot be read,
//!   set or cleared leaves the breaker on its local state; the failure is
//!   a `tracing` warning and is counted
//!   ([`CircuitBreakerHandle::store_errors`]).
//! - **Cost.** Off, the closed path reads one more field of the breaker and
//!   never calls the store. On, it reads the clock and one atomic per call,
//!   and calls the store once per key and `share_refresh`, plus once per
//!   trip and close.
//! - **Not shared**: isolations, the counts of a closed breaker (each
//!   process trips on its own failures), and the overflow breaker of a full
//!   map (it stands for many keys).
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::{
//!     circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer},
//!     store::MemoryStore,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One store for the fleet (a Redis store in production).
//! let store = MemoryStore::new();
//! let config = CircuitBreakerConfig::new()
//!     .share(true)
//!     .share_refresh(Duration::from_millis(500))
//!     .build()?;
//! let a = CircuitBreakerLayer::with_store(config.clone(), store.clone());
//! let b = CircuitBreakerLayer::with_store(config, store);
//! # let _ = (a, b);
//! # Ok(()) }
//! ```
//!
//! # Keys and memory
//!
//! Breakers are kept per key in a sharded map, at most
//! [`max_keys`](CircuitBreakerConfig::max_keys) of them (10 000 by
//! default). A closed breaker unused for
//! [`idle_timeout`](CircuitBreakerConfig::idle_timeout) (10 min) is
//! dropped with its counts. When a new key finds the map full, the least
//! recently used closed (or isolated) breakers are dropped, an eighth of
//! the map at a time; open and half-open breakers are never dropped, and if
//! the map is full of them, new keys share one overflow breaker (key
//! `<overflow>`) until room is made. Eviction runs only on the path of new
//! keys, in sweeps amortized over them: a new key costs O(1) amortized, and
//! memory stays flat however many distinct keys (model names read from
//! requests) come.
//!
//! # Readiness
//!
//! The service's `poll_ready` never waits on the inner service, so an open
//! breaker refuses at once even in front of a saturated one (a concurrency
//! limit at capacity); an admitted call waits for the inner service's
//! readiness inside its response future, with a clone of it, as
//! `ServiceExt::oneshot` does. The inner service must be `Clone`.
//!
//! # Performance
//!
//! On the closed path a call costs a lookup of its breaker in the sharded
//! map (a shard's read lock, no global lock, no copy), one atomic load to
//! admit it and a few relaxed atomic operations to record it; only
//! transitions take a lock, and only new keys may sweep the map.
//!
//! [`Failure::counts_against_health`]: crate::classify::Failure::counts_against_health

mod admitted;
mod config;
mod error;
mod future;
mod key;
mod layer;
mod map;
mod share;
mod state;
mod window;

pub use admitted::Admitted;
pub use config::{
    CircuitBreakerConfig, ConfigError, DEFAULT_MAX_KEYS, DEFAULT_PREFIX, DEFAULT_SHARE_REFRESH,
    HalfOpen, OpenDuration, RateTrip, SlidingWindow, SlowTrip,
};
pub use error::CircuitOpen;
pub use future::{BreakerBody, ResponseFuture};
pub use key::BreakerKey;
pub use layer::{CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer};
pub use state::{BreakerState, Transition};
