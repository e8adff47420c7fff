//! Stay under a provider's requests and tokens per minute, queueing what
//! cannot go yet: [`RateLimitLayer`].
//!
//! Providers limit requests per minute (RPM) and tokens per minute (TPM,
//! or input and output tokens apart, as Anthropic does) per organisation,
//! key and model, and say where a caller stands in every response. A
//! client that only reacts to 429s wastes attempts and, with retries,
//! turns a quota into a storm. This layer paces calls so that they meet
//! next to no 429s, and never becomes the reason a call fails.
//!
//! # What it does, per call
//!
//! 1. **Plan.** The call's [key](RateLimitKey) (default: provider, model and
//!    a hash of the API key), its [`Priority`], and what it takes from each
//!    [`Limit`] in force — one request, the input estimate from
//!    [`RequestMeta`](crate::request::RequestMeta) (pluggable:
//!    [`TokenEstimator`](crate::request::TokenEstimator)), and the output
//!    cap (`max_tokens`), or the model's default output when the call sets
//!    none, cut to what the limits hold: a missing cap never refuses a call.
//!    What depends only on the key (its store keys, the limits in force,
//!    learned ones included) is worked out once per key and cached until a
//!    learned limit changes: a call builds no string.
//! 2. **Take, all or nothing, with a place in the queue.** One
//!    [`Store::acquire`](crate::store::Store::acquire) takes from every
//!    limit at once (per key, per provider, global) at the earliest time
//!    they all allow — or takes nothing, and the call fails at once with
//!    [`RateLimited { retry_after }`](RateLimited) when that time is further
//!    than [`max_wait`](RateLimitConfig::max_wait) or the call's
//!    [`Deadline`](crate::deadline::Deadline), or with [`RequestTooLarge`]
//!    when no window can ever hold it. Waiting calls are served first come,
//!    first served: the order lives in the store's cells, so it costs no
//!    bookkeeping and holds across processes sharing a store. The queue is
//!    bounded ([`max_queued`](RateLimitConfig::max_queued)); a waiter that
//!    is dropped gives back what it took: the next caller of the same limits
//!    gets the turn it had. (A limit that had room before that turn — a
//!    global one, say, when the key's limit made the call wait — stays
//!    marked up to the turn: the refund gives the units back but cannot
//!    tell how much room there was before. The wait it costs is bounded by
//!    the turn given up.)
//! 3. **Call**, once its turn has come: a clone of the inner service is
//!    driven to readiness then, so a wait holds no readiness below.
//! 4. **Align** with the provider's headers (`x-ratelimit-*`,
//!    `anthropic-ratelimit-*`): fewer remaining than the layer thought
//!    slows it down; a lower limit than configured replaces it; a limit not
//!    configured is learned. A 429 with a server delay pauses the key for
//!    **every** call until then; a limit its headers say is spent is empty
//!    then, so calls resume at that limit's pace rather than in a burst.
//!    The pause is a [flag](crate::store::Store::set_flag) in the store,
//!    `<prefix>:<key>:pause`, read in the same step as the take: layers
//!    and processes made [`with_store`](RateLimitLayer::with_store) over
//!    one store and [`prefix`](RateLimitConfig::prefix) share it, so a
//!    429 one of them meets pauses the key for the whole fleet, which does
//!    not walk into the same wall N times. (What a layer *learns* from the
//!    headers — a limit not configured — stays in its process; the spent
//!    cells it holds are in the store, and shared too.)
//! 5. **Settle**, exactly once, with the usage the
//!    [meter](crate::metering::MeterLayer) reports: tokens reserved and not
//!    used are given back, tokens used beyond the estimate are taken. A call
//!    that fails, is cancelled or dropped mid-stream is settled with what
//!    it used. How unused *output* is settled follows the provider
//!    ([`SettleOutput`]): OpenAI counts `max_tokens` against TPM when a
//!    call arrives and keeps it; Anthropic corrects with the actual output,
//!    and does not count prompt-cache reads against input tokens per
//!    minute. Without a meter inside, a call keeps what it reserved (the
//!    safe side); a reservation never settled is given back by the limit's
//!    own refill, as every take is.
//!
//! # The algorithm
//!
//! Each limit is a GCRA cell: a token bucket of the limit's size, refilled
//! continuously, kept as one timestamp per key (see [`store`](crate::store)).
//! Over any interval of length `d`, at most `limit · headroom · (1 + d /
//! window)` units pass: a full bucket, then the rate. The default headroom
//! is 90%.
//!
//! # Where it goes
//!
//! Inside retry and the breaker, outside the per-attempt timeout:
//! `Retry → CircuitBreaker → RateLimit → Timeout(attempt) → Meter → client`.
//! Every attempt takes its own turn; waiting does not eat the attempt
//! timeout; a refusal is not a provider failure (the breaker does not count
//! it) and is not retried (the wait was already too long) — a fallback
//! moves on. Used alone in front of any HTTP service it works the same,
//! settling with what it reserved unless a meter reports usage.
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::rate_limit::{Limit, RateLimitConfig, RateLimitLayer, Scope};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::new(
//!     RateLimitConfig::new()
//!         .limit(Limit::per_minute().requests(500).tokens(30_000))
//!         .limit(Limit::at(Scope::Global).concurrency(64))
//!         .max_wait(Duration::from_secs(30))
//!         .build()?,
//! );
//! let handle = layer.handle();
//! # let _ = handle.stats();
//! # Ok(()) }
//! ```
//!
//! # When the store fails
//!
//! Every store operation is bounded by
//! [`store_timeout`](RateLimitConfig::store_timeout) (250 ms): a store
//! that hangs fails like one that errs. While it fails, calls follow
//! [`on_store_failure`](RateLimitConfig::on_store_failure) (see
//! [`store`](crate::store#when-the-store-fails)):
//!
//! - **degraded** (the default, with a share of 1.0): the layer paces calls
//!   in a private in-memory store, each limit × share — a **per-process**
//!   limit —, 429 pauses and provider headers included;
//!   [`store_degraded`](RateLimitStats::store_degraded) counts the calls;
//! - **fail open**: calls go unlimited
//!   ([`store_fail_open`](RateLimitStats::store_fail_open));
//! - **fail closed**: calls fail with the [`StoreError`](crate::store::StoreError).
//!
//! The first failure emits [`RateLimitEvent::StoreDown`] (and a `tracing`
//! error); one call a second tries the shared store again, and the first
//! that succeeds switches back, with [`RateLimitEvent::StoreRecovered`].
//! Giving back or charging tokens after a call never fails it: a failure
//! there is counted in [`store_errors`](RateLimitStats::store_errors) and
//! logged. [`RateLimitStats::store_down`] says whether the store is
//! failing now.
//!
//! # Observing
//!
//! `tracing` events under the target `llm_tower::rate_limit`, the same
//! [`RateLimitEvent`]s to a [listener](RateLimitLayer::on_event), counters
//! and a key's state through a [`RateLimitHandle`].

mod config;
mod error;
mod key;
mod layer;
mod state;

use std::{sync::Arc, time::Duration};

pub use config::{Limit, RateLimitConfig, Scope, SettleOutput, presets};
pub use error::{RateLimited, RefusalReason, RequestTooLarge};
pub use key::{Priority, RateLimitKey};
pub use layer::{
    KeyState, LimitState, RateLimit, RateLimitBody, RateLimitHandle, RateLimitLayer,
    RateLimitStats, ResponseFuture,
};

/// The window of a limit that names none, and of the limits providers
/// report in their headers.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);

/// What happened to a call, or to a key, in a [`RateLimitLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitEvent {
    /// The call waits for its turn.
    Queued {
        /// The call's key.
        key: Arc<str>,
        /// How long.
        wait: Duration,
    },
    /// The call goes.
    Admitted {
        /// The call's key.
        key: Arc<str>,
        /// How long it waited.
        waited: Duration,
    },
    /// The call was refused: its turn was too far away.
    Refused {
        /// The call's key.
        key: Arc<str>,
        /// Why.
        reason: RefusalReason,
        /// When it would have gone.
        retry_after: Option<Duration>,
    },
    /// The call can never fit its limits.
    TooLarge {
        /// The error returned.
        error: RequestTooLarge,
    },
    /// The call's usage was settled.
    Settled {
        /// The call's key.
        key: Arc<str>,
        /// Tokens reserved.
        reserved: u64,
        /// Tokens used, as counted against the limits; `None` when unknown
        /// (the reservation stays).
        used: Option<u64>,
    },
    /// A limit was learned or changed from the provider's headers.
    Adapted {
        /// The key.
        key: Arc<str>,
        /// `requests`, `tokens`, `input_tokens` or `output_tokens`.
        dimension: &'static str,
        /// The provider's limit.
        limit: u64,
        /// What remained, as the provider said.
        remaining: Option<u64>,
    },
    /// A 429 with a server delay paused the key for every call.
    Paused {
        /// The key.
        key: Arc<str>,
        /// Until when.
        delay: Duration,
    },
    /// The store failed or timed out: the layer follows its
    /// [`on_store_failure`](RateLimitConfig::on_store_failure) policy until
    /// it answers again. Once per outage.
    StoreDown {
        /// The store's error.
        error: String,
        /// The policy now in force: `fail_closed`, `fail_open` or
        /// `degraded` (see [`OnStoreFailure`](crate::store::OnStoreFailure)).
        policy: &'static str,
    },
    /// The store answered again: the layer uses it again.
    StoreRecovered {
        /// How long it was failing.
        down_for: Duration,
    },
}

impl RateLimitEvent {
    fn trace(&self) {
        const T: &str = "llm_tower::rate_limit";
        match self {
            RateLimitEvent::Queued { key, wait } => {
                tracing::debug!(target: T, %key, ?wait, "rate limit: queued");
            }
            RateLimitEvent::Admitted { key, waited } => {
                tracing::trace!(target: T, %key, ?waited, "rate limit: admitted");
            }
            RateLimitEvent::Refused {
                key,
                reason,
                retry_after,
            } => {
                tracing::info!(target: T, %key, reason = reason.as_str(), ?retry_after, "rate limit: refused");
            }
            RateLimitEvent::TooLarge { error } => {
                tracing::info!(target: T, %error, "rate limit: request too large");
            }
            RateLimitEvent::Settled {
                key,
                reserved,
                used,
            } => {
                tracing::trace!(target: T, %key, reserved, ?used, "rate limit: settled");
            }
            RateLimitEvent::Adapted {
                key,
                dimension,
                limit,
                remaining,
            } => {
                tracing::debug!(target: T, %key, dimension, limit, ?remaining, "rate limit: adapted to the provider's headers");
            }
            RateLimitEvent::Paused { key, delay } => {
                tracing::info!(target: T, %key, ?delay, "rate limit: paused by a 429");
            }
            RateLimitEvent::StoreDown { error, policy } => {
                tracing::error!(target: T, %error, policy, "rate limit: store failing, the layer follows its policy until it answers again");
            }
            RateLimitEvent::StoreRecovered { down_for } => {
                tracing::warn!(target: T, ?down_for, "rate limit: store answers again, the layer uses it again");
            }
        }
    }
}
