//! Shared state behind limits, budgets and breakers.
//!
//! Rate limits, budgets and circuit breakers keep their state behind the
//! narrow [`Store`] trait. [`MemoryStore`] is the embedded default; a Redis
//! store implements the same trait so that limits and budgets hold across
//! processes.
//!
//! The trait is meant to be implemented outside this crate: everything a
//! store needs is public — [`Reservation::new`], [`Reserved::new`],
//! [`Reserved::created`] and [`Reserved::lease`] to hand out and recognise
//! reservations,
//! [`Quota::emission_interval`] and [`Quota::tolerance`] for GCRA,
//! [`StoreError`] for failures.
//!
//! # One operation, one round trip
//!
//! Each method is one atomic step on the store's side: it reads the store's
//! own clock, decides and updates in one go, and answers with everything the
//! caller needs next (how long to wait, what is left, what was spent). Nothing
//! is read, decided in the caller and written back, so concurrent callers,
//! threads or processes can never all pass a check only one should pass. For
//! Redis (`RedisStore`, feature `redis`) each method is one Lua script on
//! the server, given the time of the store's [`Clock`](crate::clock::Clock);
//! for [`MemoryStore`] it is a short per-key lock.
//!
//! The operations come in three families:
//!
//! | family | methods | used by |
//! |---|---|---|
//! | weighted rate limit (GCRA) | [`take`](Store::take), [`acquire`](Store::acquire), [`refund`](Store::refund), [`charge`](Store::charge), [`hold`](Store::hold) | requests/min, tokens/min |
//! | budget bucket | [`reserve`](Store::reserve), [`settle`](Store::settle), [`balance`](Store::balance) | cost and token budgets |
//! | flag with expiry | [`set_flag`](Store::set_flag), [`flag`](Store::flag), [`clear_flag`](Store::clear_flag) | breaker open, provider cooldowns |
//!
//! # Rate limits: GCRA
//!
//! [`take`](Store::take) is the generic cell rate algorithm, weighted, as in
//! the `governor` crate. A [`Quota`] of `limit` units per `window` emits one
//! unit every `T = window / limit`. Per key the store keeps a single number,
//! the theoretical arrival time `TAT` (one `u64` of nanoseconds, one atomic in
//! memory): the time at which the key would be idle again if no more units
//! were taken. Taking `n` units at `now` succeeds iff
//!
//! ```text
//! max(TAT, now) + n·T − now ≤ limit·T      (limit·T is the window, rounded down to whole T)
//! ```
//!
//! and then `TAT = max(TAT, now) + n·T`. An idle key therefore accepts a burst
//! of the whole `limit`, then refills at one unit per `T`: it behaves as a
//! token bucket of capacity `limit` refilled continuously, with no timer and no
//! background task. Over any interval of length `d`, at most
//! `limit + ⌊d / T⌋` units pass.
//!
//! A denial carries `retry_after`, the exact wait after which the same take
//! succeeds if nothing else takes from the key in between: after a burst of
//! `limit`, the next single unit is denied with `retry_after == T`. A denied
//! take changes nothing. A take larger than `limit` can never succeed and is
//! answered [`Take::Never`] instead of a wait.
//!
//! [`refund`](Store::refund) gives units back (`TAT −= n·T`, never below now)
//! when the actual usage came in under the estimate taken before the call;
//! [`charge`](Store::charge) takes more without asking (`TAT = max(TAT,
//! now) + n·T`) when it came in over: what was used is used.
//! [`hold`](Store::hold) raises `TAT` to at least `now + d`, which is how a
//! provider's own view (its `remaining` headers, a 429's `retry-after`) is
//! written into a cell.
//!
//! ## Acquire: several cells, all or nothing, with a place in the queue
//!
//! [`acquire`](Store::acquire) takes from several cells at once (requests,
//! input tokens and output tokens of one key, plus a global limit, say) and
//! **schedules** the call instead of only answering yes or no: it finds the
//! earliest start `s ≥ now` at which every cell conforms,
//!
//! ```text
//! s = max(now, pause, maxᵢ(max(TATᵢ, now) + nᵢ·Tᵢ − limitᵢ·Tᵢ))
//! ```
//!
//! and, if `s − now` is within the caller's horizon, updates every cell as
//! if the call arrived at `s` (`TATᵢ = max(TATᵢ, s) + nᵢ·Tᵢ`) and answers
//! the wait `s − now`. Otherwise nothing changes and the answer is that wait,
//! as `retry_after`. A caller that waits its turn and then goes is therefore
//! in a FIFO queue that lives in the cells themselves: it costs no
//! bookkeeping, holds across processes sharing a store, and every waiter
//! knows its exact wait the moment it arrives. A waiter that gives up
//! [refunds](Store::refund) what it took.
//!
//! An optional pause flag (see [flags](#flags)) is read in the same step:
//! while it is set, nothing starts before it ends.
//!
//! # Budgets: reserve, then settle
//!
//! A budget bucket holds a `spent` and a `reserved` amount (nano-dollars,
//! tokens: the caller picks the unit). One call reserves in several buckets
//! at once — a tenant's dollars per day, its organisation's dollars per
//! month, the global tokens per hour — **all or nothing**, in one step.
//!
//! - [`reserve`](Store::reserve) succeeds iff every bucket has room,
//!   `spent + reserved + amount ≤ limit`; then `reserved += amount` in each,
//!   and it returns one [`Reservation`]. Otherwise nothing changes and the
//!   answer names the first bucket without room. A bucket already over its
//!   limit refuses even an amount of zero.
//! - [`settle`](Store::settle) releases the reservation and records what
//!   was actually spent: `reserved −= amount`, `spent += actual`, per bucket.
//!   The actual amount may exceed the reservation, even past the limit:
//!   money spent is spent, and the next reservations are denied until the
//!   window moves on. It returns every bucket's balance afterwards, from
//!   which the caller sees which thresholds this settlement crossed: since
//!   settlements are atomic, exactly one of them crosses each threshold.
//! - **Leases.** Every reservation holds for the `lease` given to
//!   `reserve`; a reservation not settled by then is released by the store
//!   (its amount leaves `reserved`), so a crashed caller never blocks a
//!   budget for good. A settlement after the lease still records its spend.
//! - **Windows.** A [`Span::Fixed`] bucket lives for the key's incarnation:
//!   the caller puts a calendar window's number in the key, e.g.
//!   `tenant-a:day:20414` (see [`clock::utc_day`](crate::clock::utc_day),
//!   [`utc_week`](crate::clock::utc_week) and
//!   [`utc_month`](crate::clock::utc_month)), and a time to live a little
//!   past the window's end ([`until_next_utc_day`](crate::clock::until_next_utc_day)
//!   and its siblings). A reservation
//!   settled after its bucket expired changes nothing: its window is over.
//!   A [`Span::Rolling`] bucket counts what was spent in the last `window`,
//!   in slots: see [`Span::Rolling`] for the bound.
//!
//! Reserving before the call makes N concurrent calls unable to all pass a
//! check that only one should pass.
//!
//! # Flags
//!
//! A flag is a key that exists for a while: [`set_flag`](Store::set_flag) with
//! a time to live, [`flag`](Store::flag) returns the time left, and
//! [`clear_flag`](Store::clear_flag) removes it early.
//!
//! # When the store fails
//!
//! [`MemoryStore`] never fails; a remote store does: it is down, slow, or
//! never answers. Every layer that uses a store therefore bounds each
//! operation by its `store_timeout` ([`DEFAULT_STORE_TIMEOUT`], 250 ms,
//! unless configured) — a timed-out operation is a failure like any other,
//! and a hung store never hangs a call — and declares what a call does
//! while the store fails, its [`OnStoreFailure`] policy:
//!
//! | policy | the call | default of |
//! |---|---|---|
//! | [`FailClosed`](OnStoreFailure::FailClosed) | fails with the store's error | budgets (money) |
//! | [`FailOpen`](OnStoreFailure::FailOpen) | goes unchecked | — |
//! | [`Degraded { share }`](OnStoreFailure::Degraded) | is checked in a private in-memory store of this process, against each limit × `share` | rate limits (`share` 1.0) |
//!
//! A degraded limit is **per process**: with `N` processes, up to `N ×
//! share` of the limit may pass in all. Pick `share = 1/N` to stay under
//! it, at the price of using less of it while the store fails.
//!
//! The switch is never silent. The first failure switches the layer to its
//! policy, with an event (`StoreDown`), a `tracing` error and a counter;
//! while the store fails, each call the policy handles counts in the
//! layer's stats (`store_fail_open`, `store_degraded`), and the store is
//! tried again by one call per [`PROBE_INTERVAL`] (one second) — the other
//! calls follow the policy at once instead of waiting for a timeout each.
//! The first operation that succeeds switches the layer back to the shared
//! store, with an event (`StoreRecovered`). What a call took in the private
//! store stays there: it is settled there, and the private store is only
//! used while the shared one fails.
//!
//! Settlements after a call (giving back unused tokens, recording what a
//! call cost) never fail the call: a failure is counted and logged, and
//! what it would have written is lost to the shared store (the reservation's
//! lease, or the rate limit's refill, restores it in time).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::store::{Bucket, MemoryStore, Quota, Reserve, Span, Store, Take};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//!
//! // 10,000 tokens per minute; take the estimate before the call.
//! let tpm = Quota::new(10_000, Duration::from_secs(60))?;
//! match store.take("openai:gpt-4o:tpm", 1_200, tpm).await? {
//!     Take::Allowed { remaining } => assert_eq!(remaining, 8_800),
//!     Take::Denied { retry_after } => println!("wait {retry_after:?}"),
//!     Take::Never => println!("larger than the whole quota"),
//! }
//! // The call used fewer tokens than estimated: give the rest back.
//! store.refund("openai:gpt-4o:tpm", 200, tpm).await?;
//!
//! // A daily budget of 500 cents: reserve the estimate, settle the actual cost.
//! let day = Span::Fixed { ttl: Some(Duration::from_secs(25 * 3600)) };
//! let lease = Duration::from_secs(600);
//! let bucket = Bucket::new("tenant-a:day:20414", 30, 500, day);
//! let Reserve::Granted(reservation) = store.reserve(&[bucket], lease).await? else {
//!     panic!("budget exceeded");
//! };
//! let balance = store.settle(&reservation, &[12]).await?;
//! assert_eq!((balance[0].spent, balance[0].reserved), (12, 0));
//! # Ok(()) }
//! ```

mod memory;
mod policy;
#[cfg(feature = "redis")]
mod redis;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{
    DEFAULT_PREFIX, DEFAULT_TIMEOUT, RedisStore, RedisStoreBuilder, redact_redis_url,
};
pub use memory::MemoryStore;
#[cfg(any(feature = "rate-limit", feature = "budget"))]
pub(crate) use policy::{Call, StoreGuard, Switch, bounded};
pub use policy::{DEFAULT_STORE_TIMEOUT, OnStoreFailure, PROBE_INTERVAL};

use crate::BoxError;

/// Shared state for limits, budgets and breakers.
///
/// Every method is one atomic step on the store's side, against the store's
/// own clock, and for a remote store one round trip. See the [module
/// documentation](self) for the semantics of each family of operations.
///
/// The futures are `Send` so that services can hold a store behind an `Arc`
/// and call it from any task. The trait uses `impl Future` returns and is
/// therefore not object safe: layers are generic over their store.
pub trait Store: Send + Sync + 'static {
    /// Takes `amount` units from the rate-limit cell `key` under `quota` (GCRA).
    ///
    /// A denied take changes nothing. Use one quota per key: the cell stores
    /// only the theoretical arrival time, which is read against the quota given.
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send;

    /// Gives `amount` units back to the rate-limit cell `key`, never leaving it
    /// more than full.
    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes from every cell of `cells` at the earliest start at which all
    /// of them conform and the `pause` flag (when given) has ended, if that
    /// start is at most `horizon` away; otherwise takes nothing. See
    /// [Acquire](self#acquire-several-cells-all-or-nothing-with-a-place-in-the-queue).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails, or when two cells share a key.
    fn acquire(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> impl Future<Output = Result<Acquire, StoreError>> + Send;

    /// Takes `amount` more units from the cell `key` whatever it holds
    /// (`TAT = max(TAT, now) + amount·T`): a call used more than it took.
    fn charge(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Raises the cell `key`'s theoretical arrival time to at least `now +
    /// at_least`, never lowering it: the cell then holds at most
    /// `(limit·T − at_least) / T` units now.
    fn hold(
        &self,
        key: &str,
        quota: Quota,
        at_least: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reserves `buckets[i].amount` in every bucket `buckets[i]` if each of
    /// them has room (`spent + reserved + amount ≤ limit`), all or nothing.
    ///
    /// The reservation holds for `lease` at most: if it is not settled by
    /// then, the store releases it by itself (a caller that crashed or
    /// leaked its reservation never blocks a budget for good). A missing or
    /// expired bucket is created empty; the `span` of an existing bucket is
    /// the one it was created with. See
    /// [Budgets](self#budgets-reserve-then-settle).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails, or when two buckets share a
    /// key.
    fn reserve(
        &self,
        buckets: &[Bucket<'_>],
        lease: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send;

    /// Settles a reservation: `actual[i]` was spent in the reservation's
    /// `i`-th bucket. Returns every bucket's balance afterwards, in order.
    ///
    /// `actual` may exceed the amount reserved, and the limit: money spent is
    /// spent. A bucket whose incarnation ended (a calendar window's bucket
    /// that expired) is left alone; a reservation whose lease ran out is not
    /// released a second time, but its spend is still recorded.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store fails, or when `actual` does not have
    /// one amount per bucket of the reservation.
    fn settle(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> impl Future<Output = Result<Vec<Balance>, StoreError>> + Send;

    /// The balance of the budget bucket `key`, counted as `span` says; zero
    /// if it is missing or expired.
    fn balance(
        &self,
        key: &str,
        span: Span,
    ) -> impl Future<Output = Result<Balance, StoreError>> + Send;

    /// Sets the flag `key` for `ttl`, replacing any time left.
    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The time left on the flag `key`, or `None` if it is not set.
    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Clears the flag `key`.
    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A rate limit: `limit` units per `window`, with a burst of the whole `limit`.
///
/// ```
/// use std::time::Duration;
/// use llm_tower::store::Quota;
///
/// let rpm = Quota::new(600, Duration::from_secs(60)).unwrap();
/// assert_eq!(rpm.emission_interval(), Duration::from_millis(100));
/// assert!(Quota::new(0, Duration::from_secs(60)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    window: Duration,
    /// Emission interval `T = window / limit`, in nanoseconds, at least 1.
    interval_ns: u64,
}

/// The longest window a [`Quota`] accepts: about 146 years, which keeps every
/// GCRA computation on `u64` nanoseconds far from overflow.
const MAX_WINDOW_NS: u128 = (u64::MAX / 4) as u128;

impl Quota {
    /// `limit` units per `window`.
    ///
    /// # Errors
    ///
    /// If `limit` or `window` is zero, if `window` is longer than about 146
    /// years, or if `window / limit` is below one nanosecond.
    pub fn new(limit: u64, window: Duration) -> Result<Self, InvalidQuota> {
        let window_ns = window.as_nanos();
        let kind = if limit == 0 {
            QuotaErrorKind::ZeroLimit
        } else if window_ns == 0 {
            QuotaErrorKind::ZeroWindow
        } else if window_ns > MAX_WINDOW_NS {
            QuotaErrorKind::WindowTooLong(window)
        } else if window_ns < u128::from(limit) {
            QuotaErrorKind::IntervalTooShort { limit, window }
        } else {
            return Ok(Self {
                limit,
                window,
                interval_ns: (window_ns / u128::from(limit)) as u64,
            });
        };
        Err(InvalidQuota { kind })
    }

    /// The number of units per window, which is also the largest burst.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The emission interval `T = window / limit`, rounded down to whole
    /// nanoseconds: one unit becomes available again every `T`.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// The burst tolerance `limit·T`: the window rounded down to whole
    /// emission intervals, so that a burst is exactly `limit`. A store takes
    /// `n` units at `now` iff `max(TAT, now) + n·T − now ≤ tolerance`.
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.tolerance_ns())
    }

    /// `T` in nanoseconds.
    pub(crate) fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// The burst tolerance `limit·T` in nanoseconds: the window rounded down
    /// to whole emission intervals, so that a burst is exactly `limit`.
    pub(crate) fn tolerance_ns(&self) -> u64 {
        // `limit·T ≤ window ≤ MAX_WINDOW_NS`: no overflow.
        self.limit * self.interval_ns
    }
}

/// The error returned by [`Quota::new`] for a limit that cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidQuota {
    kind: QuotaErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum QuotaErrorKind {
    ZeroLimit,
    ZeroWindow,
    WindowTooLong(Duration),
    IntervalTooShort { limit: u64, window: Duration },
}

impl fmt::Display for InvalidQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            QuotaErrorKind::ZeroLimit => f.write_str("invalid quota: the limit must be at least 1"),
            QuotaErrorKind::ZeroWindow => {
                f.write_str("invalid quota: the window must be longer than zero")
            }
            QuotaErrorKind::WindowTooLong(window) => write!(
                f,
                "invalid quota: a window of {window:?} is too long (at most about 146 years)"
            ),
            QuotaErrorKind::IntervalTooShort { limit, window } => write!(
                f,
                "invalid quota: {limit} per {window:?} is more than one unit per nanosecond"
            ),
        }
    }
}

impl std::error::Error for InvalidQuota {}

/// The answer to [`Store::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The units were taken.
    Allowed {
        /// How many more units could be taken right now.
        remaining: u64,
    },
    /// Not enough units now; nothing was taken.
    Denied {
        /// The exact wait after which the same take succeeds, if nothing else
        /// takes from the key in between.
        retry_after: Duration,
    },
    /// The amount exceeds the quota's limit: this take can never succeed.
    Never,
}

impl Take {
    /// Whether the units were taken.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Take::Allowed { .. })
    }
}

/// One rate-limit cell of a [`Store::acquire`]: `amount` units from `key`
/// under `quota`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell<'a> {
    /// The cell's key.
    pub key: &'a str,
    /// Units to take.
    pub amount: u64,
    /// The cell's quota.
    pub quota: Quota,
    /// Units the take must leave in the cell for others (calls of a higher
    /// priority): the take conforms only if `keep` more units would still
    /// fit after it. Zero by default; at most `limit − amount` counts.
    pub keep: u64,
}

impl<'a> Cell<'a> {
    /// `amount` units of `key` under `quota`.
    pub fn new(key: &'a str, amount: u64, quota: Quota) -> Self {
        Cell {
            key,
            amount,
            quota,
            keep: 0,
        }
    }

    /// Leaves `keep` units in the cell for others.
    pub fn keep(mut self, keep: u64) -> Self {
        self.keep = keep;
        self
    }
}

/// The answer to [`Store::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Every cell was taken from; the call may start after `wait` (zero:
    /// now).
    Granted {
        /// The wait before the call's turn.
        wait: Duration,
    },
    /// The call's turn is further away than the horizon; nothing was taken.
    Denied {
        /// The wait the call would have had: after it, the same acquire is
        /// granted at once if nothing else takes from the cells.
        retry_after: Duration,
    },
    /// `cells[index]` asks for more than its quota's limit: it can never
    /// be granted. Nothing was taken.
    Never {
        /// The index of the cell in the request.
        index: usize,
    },
}

/// How a budget bucket counts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Span {
    /// One amount for the key's whole life. The bucket expires `ttl` after
    /// it is created (`None`: never), and the next reservation starts an
    /// empty one. Calendar windows put their number in the key (`…:day:20414`)
    /// and expire a little after the window's end, so that late settlements
    /// still land.
    Fixed {
        /// The bucket's time to live from its creation.
        ttl: Option<Duration>,
    },
    /// What was spent in the last `window`: spend is recorded in one of
    /// `slots` slots of `window / slots` each, by the time it is settled,
    /// and counts until its slot is more than `window` old. Spend therefore
    /// counts for at least `window` and at most `window + window / slots`:
    /// a rolling limit is never exceeded over any interval of length
    /// `window`, and may refuse up to one slot early.
    Rolling {
        /// The window's length.
        window: Duration,
        /// The number of slots the window is counted in, at least 1.
        slots: u32,
    },
}

/// One bucket of a [`Store::reserve`]: `amount` more in `key`, whose
/// limit is `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket<'a> {
    /// The bucket's key.
    pub key: &'a str,
    /// The amount to reserve.
    pub amount: u64,
    /// The most `spent + reserved` may reach; `u64::MAX` for a bucket that
    /// only counts (a soft limit).
    pub limit: u64,
    /// How the bucket counts time.
    pub span: Span,
}

impl<'a> Bucket<'a> {
    /// `amount` in `key` under `limit`, counted as `span` says.
    pub fn new(key: &'a str, amount: u64, limit: u64, span: Span) -> Self {
        Bucket {
            key,
            amount,
            limit,
            span,
        }
    }
}

/// The answer to [`Store::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Every amount is reserved; settle them with [`Store::settle`].
    Granted(Reservation),
    /// `buckets[index]` has no room; nothing was reserved anywhere.
    Denied {
        /// The index of the first bucket without room.
        index: usize,
        /// What that bucket has spent in its window.
        spent: u64,
        /// What calls in flight have reserved in it.
        reserved: u64,
        /// For a [rolling](Span::Rolling) bucket, when its oldest spend
        /// stops counting (the earliest the same reservation could fit if
        /// nothing else changes); `None` for a fixed one.
        retry_after: Option<Duration>,
    },
}

/// Amounts reserved in budget buckets, to be settled after the call.
///
/// Dropping a reservation without settling it leaves the amounts reserved
/// until the lease given to [`Store::reserve`] ends: settle with zeros when
/// a call is abandoned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reservation {
    parts: Box<[Reserved]>,
}

/// One bucket's part of a [`Reservation`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reserved {
    key: Arc<str>,
    amount: u64,
    span: Span,
    created: u64,
    lease: u64,
}

impl Reserved {
    /// `amount` reserved in the bucket `key`, for a [`Store`] implementation
    /// to return from [`reserve`](Store::reserve).
    ///
    /// `created` identifies the bucket's incarnation — any value the store
    /// picks that changes when the key's bucket expires and is made again,
    /// such as its creation time on the store's clock. `lease` identifies
    /// the reservation's lease — typically the time it ends on the store's
    /// clock. The store reads both back in [`settle`](Store::settle), so that
    /// a late settlement never lands in a later window that reuses the key,
    /// and an expired lease is not released twice.
    ///
    /// ```
    /// use llm_tower::store::{Reserved, Span};
    ///
    /// let day = Span::Fixed { ttl: None };
    /// let r = Reserved::new("tenant-a:day:20414", 120, day, 7, 9);
    /// assert_eq!((r.key(), r.amount(), r.created(), r.lease()), ("tenant-a:day:20414", 120, 7, 9));
    /// ```
    pub fn new(
        key: impl Into<Arc<str>>,
        amount: u64,
        span: Span,
        created: u64,
        lease: u64,
    ) -> Self {
        Reserved {
            key: key.into(),
            amount,
            span,
            created,
            lease,
        }
    }

    /// The bucket's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The amount reserved.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// How the bucket counts time.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The bucket's incarnation, as given to [`new`](Self::new).
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The reservation's lease, as given to [`new`](Self::new).
    pub fn lease(&self) -> u64 {
        self.lease
    }
}

impl Reservation {
    /// A reservation made of `parts`, one per bucket of the
    /// [`reserve`](Store::reserve) call, in the same order.
    pub fn new(parts: impl Into<Box<[Reserved]>>) -> Self {
        Reservation {
            parts: parts.into(),
        }
    }

    /// The parts, one per bucket, in the order they were reserved.
    pub fn parts(&self) -> &[Reserved] {
        &self.parts
    }
}

/// The state of a budget bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Amount spent in the window (settled).
    pub spent: u64,
    /// Amount reserved by calls not settled yet.
    pub reserved: u64,
}

/// An error from a [`Store`]: the store could not be reached or answered
/// something unexpected.
///
/// [`MemoryStore`] never fails; remote stores do.
#[derive(Debug)]
pub struct StoreError {
    message: Cow<'static, str>,
    source: Option<BoxError>,
}

impl StoreError {
    /// An error with a lowercase message such as `"connection refused"`.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and the underlying cause.
    pub fn with_source(message: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
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
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn quota_validation() {
        let q = Quota::new(3, Duration::from_secs(1)).unwrap();
        assert_eq!(q.limit(), 3);
        assert_eq!(q.window(), Duration::from_secs(1));
        assert_eq!(q.interval_ns(), 333_333_333);
        assert_eq!(q.tolerance_ns(), 999_999_999);

        let one_per_ns = Quota::new(1_000, Duration::from_micros(1)).unwrap();
        assert_eq!(one_per_ns.emission_interval(), Duration::from_nanos(1));

        let err = Quota::new(0, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid quota: the limit must be at least 1"
        );
        let err = Quota::new(1, Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid quota: the window must be longer than zero"
        );
        let err = Quota::new(1_001, Duration::from_micros(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid quota: 1001 per 1µs is more than one unit per nanosecond"
        );
        let err = Quota::new(1, Duration::from_secs(200 * 365 * 86_400)).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn store_error_display_and_source() {
        let err = StoreError::new("connection refused");
        assert_eq!(err.to_string(), "store error: connection refused");
        assert!(err.source().is_none());

        let io = std::io::Error::other("reset by peer");
        let err = StoreError::with_source("script failed", io);
        assert_eq!(err.to_string(), "store error: script failed");
        assert_eq!(err.source().unwrap().to_string(), "reset by peer");
    }
}
