//! The in-memory [`Store`].

use std::fmt;
use std::future::{Future, ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
// The maps' hasher: seeded at random per map (keys come from users), and
// several times faster than std's SipHash on keys of a few dozen bytes.
use foldhash::fast::RandomState;
use tokio::time::Instant;

use super::{
    Acquire, Balance, Bucket as BudgetBucket, Cell, Quota, Reservation, Reserve, Span, Store,
    StoreError, Take,
};
use crate::clock::{Clock, TokioClock};

/// How many new keys are inserted between two checks for a sweep.
const SWEEP_EVERY: usize = 4_096;
/// No sweep while the store holds fewer keys than this.
const MIN_SWEEP_LEN: usize = 4_096;

/// The embedded [`Store`]: state in this process's memory.
///
/// # Clone
///
/// Clones share the same state through an `Arc`: clone the store into every
/// layer and service that must see the same limits.
///
/// # Hot path
///
/// State lives in sharded concurrent maps ([`dashmap`], hashed with
/// [`foldhash`]'s randomly seeded hasher), one per family, looked up by
/// `&str` without allocating; a key is allocated once, when it is
/// first inserted. A rate-limit cell is one `AtomicU64` (the GCRA theoretical
/// arrival time) behind its own `Mutex`, held for a few instructions: an
/// [`acquire`](Store::acquire) over several cells locks them in the order
/// of their keys, so that it is all-or-nothing and never deadlocks. A budget
/// bucket is a per-key `Mutex` around three numbers. No lock is global, and
/// none is held across an `.await` (there is none).
///
/// Every method returns a [`std::future::Ready`]: the operation runs when the
/// method is called, and awaiting it never suspends nor allocates.
///
/// # Eviction
///
/// Idle keys are removed by a sweep: every 4096 insertions of a new key, if
/// the store holds more keys than twice what survived the previous sweep (and
/// at least 4096), the calling operation also drops the rate-limit cells that
/// are full again (`TAT ≤ now`, equivalent to a missing cell), the budget
/// buckets and flags that have expired. The cost is amortised over the
/// insertions, and memory stays flat however many distinct keys go by.
/// [`sweep`](Self::sweep) runs one on demand.
///
/// # Time
///
/// Time comes from the store's [`Clock`] ([`TokioClock`] by default), so tests
/// drive it with tokio's paused time.
pub struct MemoryStore<C: Clock = TokioClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    clock: C,
    /// Time zero for the nanosecond timestamps kept in the maps.
    origin: Instant,
    cells: DashMap<Box<str>, Arc<Mutex<u64>>, RandomState>,
    buckets: DashMap<Arc<str>, Mutex<Bucket>, RandomState>,
    /// Flag expiry, in nanoseconds since `origin`.
    flags: DashMap<Box<str>, AtomicU64, RandomState>,
    /// How many flags `flags` holds, raised before one is inserted and
    /// lowered after one is removed: when zero, a flag is not looked up
    /// (every acquire of the rate-limit layer asks for its pause flag).
    flag_count: AtomicUsize,
    inserts: AtomicUsize,
    sweep_above: AtomicUsize,
    sweeping: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    spent: u64,
    reserved: u64,
    created: u64,
    expires: u64,
}

impl Bucket {
    fn new(now: u64, ttl: Duration) -> Self {
        Self {
            spent: 0,
            reserved: 0,
            created: now,
            expires: now.saturating_add(nanos(ttl)),
        }
    }

    fn balance(&self, now: u64) -> Balance {
        if self.expires <= now {
            Balance::default()
        } else {
            Balance {
                spent: self.spent,
                reserved: self.reserved,
            }
        }
    }
}

impl MemoryStore {
    /// An empty store on [`TokioClock`].
    pub fn new() -> Self {
        Self::with_clock(TokioClock::new())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> MemoryStore<C> {
    /// An empty store on `clock`.
    pub fn with_clock(clock: C) -> Self {
        let origin = clock.now();
        Self {
            inner: Arc::new(Inner {
                clock,
                origin,
                cells: DashMap::default(),
                buckets: DashMap::default(),
                flags: DashMap::default(),
                flag_count: AtomicUsize::new(0),
                inserts: AtomicUsize::new(0),
                sweep_above: AtomicUsize::new(MIN_SWEEP_LEN),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// The number of keys held (rate-limit cells, budget buckets and flags),
    /// including idle ones not swept yet.
    pub fn len(&self) -> usize {
        self.inner.cells.len() + self.inner.buckets.len() + self.inner.flags.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes idle keys now: full rate-limit cells, expired buckets and
    /// flags. Returns the number of keys removed.
    pub fn sweep(&self) -> usize {
        let inner = &*self.inner;
        let before = self.len();
        let now = inner.now_ns();
        // A cell whose `Arc` is held elsewhere is in use: an `acquire`,
        // `charge` or `hold` looked it up and is about to lock and update it.
        // Removing it would lose that update to a detached cell (and a later
        // caller would find a fresh, full one). No new clone can be made while
        // `retain` holds the shard, so a count of one means no user.
        inner
            .cells
            .retain(|_, tat| Arc::strong_count(tat) > 1 || *lock(tat) > now);
        inner.buckets.retain(|_, b| lock(b).expires > now);
        let mut flags_removed = 0;
        inner.flags.retain(|_, expires| {
            let keep = expires.load(Ordering::Acquire) > now;
            flags_removed += usize::from(!keep);
            keep
        });
        inner.flag_count.fetch_sub(flags_removed, Ordering::AcqRel);
        let after = self.len();
        inner.sweep_above.store(
            after.saturating_mul(2).max(MIN_SWEEP_LEN),
            Ordering::Relaxed,
        );
        before.saturating_sub(after)
    }

    /// Counts one insertion of a new key; sweeps when due. Never called while
    /// a guard into one of the maps is held (`retain` locks every shard).
    fn inserted(&self) {
        let inner = &*self.inner;
        let n = inner.inserts.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(SWEEP_EVERY) || self.len() <= inner.sweep_above.load(Ordering::Relaxed)
        {
            return;
        }
        // One sweeper at a time; the others carry on.
        if inner
            .sweeping
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            self.sweep();
            inner.sweeping.store(false, Ordering::Release);
        }
    }

    fn take_now(&self, key: &str, amount: u64, quota: Quota) -> Take {
        if amount > quota.limit() {
            return Take::Never;
        }
        let inner = &*self.inner;
        let now = inner.now_ns();
        if let Some(cell) = inner.cells.get(key) {
            return gcra_take(&mut lock(&cell), now, amount, quota);
        }
        if amount == 0 {
            // A missing cell is a full one; nothing to record.
            return Take::Allowed {
                remaining: quota.limit(),
            };
        }
        let take = {
            let cell = inner.cells.entry(Box::from(key)).or_default();
            gcra_take(&mut lock(&cell), now, amount, quota)
        };
        self.inserted();
        take
    }

    /// The cell `key`, made if missing (full: `TAT = 0`).
    fn cell(&self, key: &str) -> Arc<Mutex<u64>> {
        if let Some(cell) = self.inner.cells.get(key) {
            return Arc::clone(&cell);
        }
        let cell = Arc::clone(&self.inner.cells.entry(Box::from(key)).or_default());
        self.inserted();
        cell
    }

    fn refund_now(&self, key: &str, amount: u64, quota: Quota) {
        let inner = &*self.inner;
        let now = inner.now_ns();
        let Some(cell) = inner.cells.get(key) else {
            // A missing cell is full already.
            return;
        };
        let back = amount.saturating_mul(quota.interval_ns());
        let mut tat = lock(&cell);
        *tat = tat.saturating_sub(back).max(now).min(*tat);
    }

    fn charge_now(&self, key: &str, amount: u64, quota: Quota) {
        if amount == 0 {
            return;
        }
        let now = self.inner.now_ns();
        let cell = self.cell(key);
        let mut tat = lock(&cell);
        *tat = (*tat)
            .max(now)
            .saturating_add(amount.saturating_mul(quota.interval_ns()))
            .min(MAX_TAT);
    }

    fn hold_now(&self, key: &str, at_least: Duration) {
        if at_least.is_zero() {
            return;
        }
        let now = self.inner.now_ns();
        let cell = self.cell(key);
        let mut tat = lock(&cell);
        *tat = (*tat).max(now.saturating_add(nanos(at_least)).min(MAX_TAT));
    }

    fn acquire_now(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> Result<Acquire, StoreError> {
        if let Some(index) = cells.iter().position(|c| c.amount > c.quota.limit()) {
            return Ok(Acquire::Never { index });
        }
        // Up to `INLINE_CELLS` cells (every acquire of the rate-limit
        // layer), the bookkeeping lives on the stack, in slots of the
        // usual few cells when that is enough.
        if cells.len() <= FEW_CELLS {
            self.acquire_inline::<FEW_CELLS>(cells, pause, horizon)
        } else if cells.len() <= INLINE_CELLS {
            self.acquire_inline::<INLINE_CELLS>(cells, pause, horizon)
        } else {
            let mut order = vec![0; cells.len()];
            let mut arcs = vec![None; cells.len()];
            let mut guards: Vec<_> = (0..cells.len()).map(|_| None).collect();
            self.acquire_locked(cells, pause, horizon, &mut order, &mut arcs, &mut guards)
        }
    }

    /// [`acquire_now`](Self::acquire_now) with its bookkeeping on the
    /// stack, for at most `N` cells.
    fn acquire_inline<const N: usize>(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> Result<Acquire, StoreError> {
        let mut order = [0; N];
        let mut arcs: [Option<Arc<Mutex<u64>>>; N] = [const { None }; N];
        let mut guards: [Option<MutexGuard<'_, u64>>; N] = [const { None }; N];
        let n = cells.len();
        self.acquire_locked(
            cells,
            pause,
            horizon,
            &mut order[..n],
            &mut arcs[..n],
            &mut guards[..n],
        )
    }

    /// [`acquire_now`](Self::acquire_now) with its bookkeeping, one slot
    /// per cell in each slice.
    fn acquire_locked<'a>(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
        order: &mut [usize],
        arcs: &'a mut [Option<Arc<Mutex<u64>>>],
        guards: &mut [Option<MutexGuard<'a, u64>>],
    ) -> Result<Acquire, StoreError> {
        // Lock in the order of the keys: two acquires never deadlock.
        for (i, o) in order.iter_mut().enumerate() {
            *o = i;
        }
        order.sort_unstable_by_key(|&i| cells[i].key);
        if order.windows(2).any(|w| cells[w[0]].key == cells[w[1]].key) {
            return Err(StoreError::new("acquire: two cells share a key"));
        }
        for (arc, &i) in arcs.iter_mut().zip(&*order) {
            *arc = Some(self.cell(cells[i].key));
        }
        let arcs: &'a [Option<Arc<Mutex<u64>>>] = arcs;
        for (guard, arc) in guards.iter_mut().zip(arcs.iter().flatten()) {
            *guard = Some(lock(arc));
        }
        let now = self.inner.now_ns();
        let paused = pause.and_then(|k| self.flag_at(k, now)).map_or(0, nanos);
        // The earliest start at which every cell conforms.
        let mut start = now.saturating_add(paused);
        for (guard, &i) in guards.iter().flatten().zip(&*order) {
            let c = &cells[i];
            let keep = c.keep.min(c.quota.limit() - c.amount);
            let ready = (**guard)
                .max(now)
                .saturating_add((c.amount + keep) * c.quota.interval_ns())
                .saturating_sub(c.quota.tolerance_ns());
            start = start.max(ready);
        }
        let wait = start - now;
        if wait > nanos(horizon) {
            return Ok(Acquire::Denied {
                retry_after: Duration::from_nanos(wait),
            });
        }
        for (guard, &i) in guards.iter_mut().flatten().zip(&*order) {
            let c = &cells[i];
            **guard = (**guard).max(start) + c.amount * c.quota.interval_ns();
        }
        Ok(Acquire::Granted {
            wait: Duration::from_nanos(wait),
        })
    }

    fn set_flag_now(&self, key: &str, ttl: Duration) {
        let inner = &*self.inner;
        let expires = inner.now_ns().saturating_add(nanos(ttl));
        if let Some(flag) = inner.flags.get(key) {
            flag.store(expires, Ordering::Release);
            return;
        }
        // Counted before it can be seen.
        inner.flag_count.fetch_add(1, Ordering::AcqRel);
        let inserted = match inner.flags.entry(Box::from(key)) {
            dashmap::Entry::Occupied(flag) => {
                flag.get().store(expires, Ordering::Release);
                false
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(AtomicU64::new(expires));
                true
            }
        };
        if inserted {
            self.inserted();
        } else {
            inner.flag_count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn flag_now(&self, key: &str) -> Option<Duration> {
        self.flag_at(key, self.inner.now_ns())
    }

    /// The time left on the flag `key` at `now`.
    fn flag_at(&self, key: &str, now: u64) -> Option<Duration> {
        let inner = &*self.inner;
        if inner.flag_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let expires = inner.flags.get(key)?.load(Ordering::Acquire);
        (expires > now).then(|| Duration::from_nanos(expires - now))
    }

    fn clear_flag_now(&self, key: &str) {
        let inner = &*self.inner;
        if inner.flags.remove(key).is_some() {
            inner.flag_count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<C: Clock> Inner<C> {
    /// Nanoseconds since the store's origin. `u64` lasts 584 years.
    fn now_ns(&self) -> u64 {
        nanos(self.clock.now().saturating_duration_since(self.origin))
    }
}

/// The GCRA step on one cell: see the module documentation of [`super`].
fn gcra_take(tat: &mut u64, now: u64, amount: u64, quota: Quota) -> Take {
    let interval = quota.interval_ns();
    let tolerance = quota.tolerance_ns();
    // `amount ≤ limit`, so `cost ≤ tolerance`.
    let cost = amount * interval;
    let new_tat = (*tat).max(now) + cost;
    let ahead = new_tat - now;
    if ahead > tolerance {
        return Take::Denied {
            retry_after: Duration::from_nanos(ahead - tolerance),
        };
    }
    *tat = new_tat;
    Take::Allowed {
        remaining: (tolerance - ahead) / interval,
    }
}

/// Locks a bucket. Nothing can panic while a bucket is locked, so a poisoned
/// lock still holds consistent numbers.
fn lock<T>(bucket: &Mutex<T>) -> MutexGuard<'_, T> {
    bucket
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The most cells an acquire takes without a heap allocation: as many as
/// one call of the rate-limit layer has.
const INLINE_CELLS: usize = 16;

/// The cells of most acquires (requests and tokens, per key and global).
const FEW_CELLS: usize = 4;

/// The furthest a theoretical arrival time goes (about 146 years from the
/// store's origin), so that adding a window to it never overflows.
const MAX_TAT: u64 = u64::MAX / 4;

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<C: Clock> Clone for MemoryStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Clock> fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("cells", &self.inner.cells.len())
            .field("buckets", &self.inner.buckets.len())
            .field("flags", &self.inner.flags.len())
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send {
        ready(Ok(self.take_now(key, amount, quota)))
    }

    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.refund_now(key, amount, quota);
        ready(Ok(()))
    }

    fn acquire(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> impl Future<Output = Result<Acquire, StoreError>> + Send {
        ready(self.acquire_now(cells, pause, horizon))
    }

    fn charge(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.charge_now(key, amount, quota);
        ready(Ok(()))
    }

    fn hold(
        &self,
        key: &str,
        _quota: Quota,
        at_least: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.hold_now(key, at_least);
        ready(Ok(()))
    }

    fn reserve(
        &self,
        _buckets: &[BudgetBucket<'_>],
        _lease: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send {
        #[allow(unreachable_code)]
        ready(unimplemented!("budget buckets: being rewritten"))
    }

    fn settle(
        &self,
        _reservation: &Reservation,
        _actual: &[u64],
    ) -> impl Future<Output = Result<Vec<Balance>, StoreError>> + Send {
        #[allow(unreachable_code)]
        ready(unimplemented!("budget buckets: being rewritten"))
    }

    fn balance(
        &self,
        _key: &str,
        _span: Span,
    ) -> impl Future<Output = Result<Balance, StoreError>> + Send {
        #[allow(unreachable_code)]
        ready(unimplemented!("budget buckets: being rewritten"))
    }

    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.set_flag_now(key, ttl);
        ready(Ok(()))
    }

    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        ready(Ok(self.flag_now(key)))
    }

    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.clear_flag_now(key);
        ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
