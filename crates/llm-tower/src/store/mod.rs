//! Shared state behind limits, budgets and breakers.
//!
//! Rate-limit cells, budget reservations and breaker flags go through the
//! narrow [`Store`] trait, so that they can live in this process
//! ([`MemoryStore`], the default) or be shared by many (a Redis store, with
//! the same semantics). Every operation is one atomic step on one key, with
//! the store's own clock: one round trip, one Lua script in Redis.
//!
//! # Rate-limit cells: weighted GCRA
//!
//! [`Store::take`] implements the generic cell rate algorithm, weighted:
//! a [`Quota`] of `limit` per `window` admits one unit every `window /
//! limit` (the emission interval `T`) and a burst of up to `limit` units.
//! The whole state of a key is one number, the theoretical arrival time
//! (TAT): the instant at which the cell would be full again. A take of `n`
//! at time `t` is admitted when `max(TAT, t) + n·T − t ≤ limit·T`, and then
//! moves TAT forward by `n·T`. A denial says exactly how long to wait
//! ([`Take::Denied`]), and over any interval of length `d` a key admits at
//! most `limit + d / T` units. [`Store::refund`] gives units back when the
//! actual cost came in under the estimate. In memory a cell is one
//! `AtomicU64` updated with compare-and-swap: no lock once the key exists.
//!
//! # Budget buckets: reservation, then settlement
//!
//! [`Store::reserve`] checks `spent + reserved + amount ≤ limit` and
//! reserves `amount` in the same atomic step, so N concurrent calls can
//! never all pass a check that only one should pass.
//! [`Store::settle`] turns the reservation into the actual amount spent
//! (which may exceed the reservation: money spent is spent). The caller
//! puts the window in the key (`tenant-a:day:20779`); the bucket expires
//! `ttl` after it was created.
//!
//! # Flags
//!
//! [`Store::set_flag`] raises a flag that falls by itself after a time
//! (a breaker open for everyone); [`Store::flag`] says how long it has left.

mod memory;

use std::{fmt, future::Future, sync::Arc, time::Duration};

pub use self::memory::MemoryStore;

/// A rate: `limit` units per `window`, with a burst of up to `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    window: Duration,
    /// Nanoseconds per unit, rounded up: the cell refills no faster than
    /// `limit` per `window`.
    interval: u64,
}

impl Quota {
    /// `limit` units per `window`. Rejects a zero limit or window, and a
    /// rate finer than a unit per nanosecond.
    pub fn new(limit: u64, window: Duration) -> Result<Quota, InvalidQuota> {
        let invalid = |reason| Err(InvalidQuota { reason });
        if limit == 0 {
            return invalid("the limit is zero");
        }
        if window.is_zero() {
            return invalid("the window is zero");
        }
        let nanos = window.as_nanos();
        if nanos > u128::from(u64::MAX) / 4 {
            return invalid("the window is too long (over 146 years)");
        }
        let interval = (nanos as u64).div_ceil(limit);
        if u128::from(interval) * u128::from(limit) > u128::from(u64::MAX) / 4 {
            return invalid("the window is too long for this limit");
        }
        if (nanos as u64) < limit {
            return invalid("the rate is finer than one unit per nanosecond");
        }
        Ok(Quota {
            limit,
            window,
            interval,
        })
    }

    /// `limit` units per minute.
    pub fn per_minute(limit: u64) -> Result<Quota, InvalidQuota> {
        Quota::new(limit, Duration::from_secs(60))
    }

    /// `limit` units per second.
    pub fn per_second(limit: u64) -> Result<Quota, InvalidQuota> {
        Quota::new(limit, Duration::from_secs(1))
    }

    /// Units per window, and the largest burst.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Time for one unit to come back (the emission interval).
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// The interval, in nanoseconds.
    pub(crate) fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// The burst span `limit · T`, in nanoseconds.
    pub(crate) fn span_nanos(&self) -> u64 {
        self.interval * self.limit
    }
}

/// A [`Quota`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidQuota {
    reason: &'static str,
}

impl fmt::Display for InvalidQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid quota: {}", self.reason)
    }
}

impl std::error::Error for InvalidQuota {}

/// The answer to [`Store::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Admitted; `remaining` units could still be taken at once.
    Allowed {
        /// Units left in the burst after this take.
        remaining: u64,
    },
    /// Not now: the same take is admitted after `retry_after`, if nothing
    /// else takes in between.
    Denied {
        /// The exact wait.
        retry_after: Duration,
    },
    /// Never: the amount is larger than the quota's whole burst.
    Never,
}

impl Take {
    /// `true` for [`Take::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Take::Allowed { .. })
    }
}

/// An amount reserved in a budget bucket, to settle once the actual amount
/// is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    key: Arc<str>,
    amount: u64,
    generation: u64,
}

impl Reservation {
    /// A reservation of `amount` in the bucket `key` as it was at
    /// `generation` (for [`Store`] implementations).
    pub fn new(key: Arc<str>, amount: u64, generation: u64) -> Self {
        Reservation {
            key,
            amount,
            generation,
        }
    }

    /// The bucket.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The amount reserved.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Which life of the bucket the reservation was made in: a bucket that
    /// expired and started again has a new generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The answer to [`Store::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Reserved: settle it when the actual amount is known.
    Granted(Reservation),
    /// The amount does not fit under the limit.
    Denied {
        /// Spent so far in the bucket.
        spent: u64,
        /// Reserved by calls still running.
        reserved: u64,
    },
}

/// What a budget bucket holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// Settled spending.
    pub spent: u64,
    /// Reservations not yet settled.
    pub reserved: u64,
}

/// A store could not carry out an operation (a connection lost, say).
/// The in-memory store never fails.
#[derive(Debug)]
pub struct StoreError {
    message: Box<str>,
    source: Option<crate::BoxError>,
}

impl StoreError {
    /// An error with a message and an optional cause.
    pub fn new(message: impl Into<Box<str>>, source: Option<crate::BoxError>) -> Self {
        StoreError {
            message: message.into(),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store error: {}", self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Shared state for limits, budgets and breakers: every operation is one
/// atomic step on one key, timed by the store's own clock.
///
/// See the [module docs](self) for the semantics every implementation
/// keeps.
pub trait Store: Send + Sync + 'static {
    /// Takes `amount` units from the rate-limit cell `key` (weighted GCRA).
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send;

    /// Gives `amount` units back to the cell `key`, never more than it
    /// holds when full.
    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reserves `amount` in the budget bucket `key` if spent, reserved and
    /// `amount` together stay within `limit`. A new bucket lives for `ttl`.
    fn reserve(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send;

    /// Settles a reservation: it stops being reserved, and `actual` is
    /// added to what was spent. If the bucket has expired since, the
    /// spending is recorded in its new life.
    fn settle(
        &self,
        reservation: &Reservation,
        actual: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What the bucket `key` holds (zero for an unknown or expired bucket).
    fn balance(&self, key: &str) -> impl Future<Output = Result<Balance, StoreError>> + Send;

    /// Raises the flag `key` for `ttl`, replacing any earlier expiry.
    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The time the flag `key` has left, or `None` when it is down.
    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Lowers the flag `key`.
    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<S: Store> Store for Arc<S> {
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send {
        (**self).take(key, amount, quota)
    }

    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).refund(key, amount, quota)
    }

    fn reserve(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send {
        (**self).reserve(key, amount, limit, ttl)
    }

    fn settle(
        &self,
        reservation: &Reservation,
        actual: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).settle(reservation, actual)
    }

    fn balance(&self, key: &str) -> impl Future<Output = Result<Balance, StoreError>> + Send {
        (**self).balance(key)
    }

    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).set_flag(key, ttl)
    }

    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        (**self).flag(key)
    }

    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).clear_flag(key)
    }
}
