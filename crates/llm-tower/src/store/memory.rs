//! The in-memory [`Store`].

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use smallvec::SmallVec;
// The maps' hasher: seeded at random per map (keys come from users), and
// several times faster than std's SipHash on keys of a few dozen bytes.
use foldhash::fast::RandomState;
use tokio::time::Instant;

use super::{
    Acquire, Balance, Bucket as BudgetBucket, Cell, Quota, Reservation, Reserve, Reserved, Span,
    Store, StoreError, Take,
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
/// bucket is a per-key `Mutex` around its spend and its live leases, and a
/// [`reserve`](Store::reserve) over several buckets locks them in the same
/// order. No lock is global, and none is held across an `.await` (there is
/// none).
///
/// # Budget buckets
///
/// - **Leases.** A bucket keeps its reservations grouped by the end of their
///   lease, rounded up to a whole second on the store's clock, so that the
///   reservations of one second share one entry (a bucket holds at most one
///   entry per second of lease). A reservation therefore holds for at least
///   its `lease` and at most one second more. [`Reserved::lease`] is that
///   rounded end, in nanoseconds since the store was made: [`settle`](Store::settle)
///   releases the amount from that entry if it is still live, and only
///   records the spend if it has ended (the store released it already).
///   Entries that ended are released whenever the bucket is touched, so
///   `reserved` only ever counts live leases.
///   A reservation settled twice (a caller's bug) releases at most what its
///   entry still holds: `reserved` never drops below what the live entries
///   hold, though other reservations sharing the entry may be released
///   early.
/// - **Incarnations.** [`Reserved::created`] is a number the store draws from
///   a counter when a bucket is made (or made again after it expired):
///   strictly increasing, so two incarnations of a key never share it.
/// - **Fixed spans** expire `ttl` after their creation; the next reservation
///   makes a new, empty incarnation. A settlement for an older incarnation
///   changes nothing.
/// - **Rolling spans** record spend in slots of `window / slots` (rounded
///   down to whole nanoseconds, at least one): slot `n` covers
///   `[n·L, (n+1)·L)` on the store's clock and counts while
///   `now < (n+1)·L + window`, i.e. until it ended more than `window` ago.
///   Spend thus counts for more than `window` and at most `window + L ≤
///   window + window / slots`. A settlement always records its spend in the
///   current slot, even after its lease ended or the bucket was swept. A
///   refusal's `retry_after` is the time until the oldest slot with spend
///   stops counting; with no spend counted, until the first live lease ends;
///   with neither (the amount alone exceeds the limit), `None`.
/// - **Span.** An existing bucket keeps the [`Span`] it was made with: a
///   `span` given later for the same key (to `reserve`, `balance`) is not
///   read. Use one span per key.
///
/// Every method returns a [`std::future::Ready`]: the operation runs when the
/// method is called, and awaiting it never suspends nor allocates.
///
/// # Eviction
///
/// Idle keys are removed by a sweep: every 4096 insertions of a new key, if
/// the store holds more keys than twice what survived the previous sweep (and
/// at least 4096), the calling operation also drops the rate-limit cells that
/// are full again (`TAT ≤ now`, equivalent to a missing cell), the fixed
/// budget buckets and flags that have expired, and the rolling buckets
/// with neither a live lease nor any spend that still counts. The cost is amortised over the
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
    /// Budget buckets. Each sits behind an `Arc`, like the cells, so that a
    /// sweep never drops one that an operation has looked up and is about
    /// to lock.
    buckets: DashMap<Arc<str>, Arc<Mutex<Budget>>, RandomState>,
    /// The last bucket incarnation handed out.
    incarnations: AtomicU64,
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

/// A bucket found or made for a reservation: its key and its state.
type Found = (Arc<str>, Arc<Mutex<Budget>>);

/// Lease ends are rounded up to a whole second, so that the reservations of
/// one second share one entry.
const LEASE_GRANULE_NS: u64 = 1_000_000_000;

/// One budget bucket: an incarnation of a key.
#[derive(Debug)]
struct Budget {
    span: Span,
    /// The incarnation, drawn from [`Inner::incarnations`].
    created: u64,
    /// When a fixed bucket expires, in ns since the origin (`u64::MAX`:
    /// never, and always for a rolling one).
    expires: u64,
    /// Fixed: everything settled. Rolling: the sum of `slots`.
    spent: u64,
    /// Rolling: spend per slot, `(slot number, amount)`, oldest first,
    /// every slot still counting once pruned.
    slots: VecDeque<(u64, u64)>,
    /// Live reservations by lease end, `(end in ns, amount)`, sorted by end,
    /// ends distinct, amounts nonzero.
    leases: VecDeque<(u64, u64)>,
    /// The sum of `leases`' amounts.
    reserved: u64,
}

impl Budget {
    fn new(span: Span, created: u64, now: u64) -> Self {
        let expires = match span {
            Span::Fixed { ttl: Some(ttl) } => now.saturating_add(nanos(ttl)),
            Span::Fixed { ttl: None } | Span::Rolling { .. } => u64::MAX,
        };
        Self {
            span,
            created,
            expires,
            spent: 0,
            slots: VecDeque::new(),
            leases: VecDeque::new(),
            reserved: 0,
        }
    }

    fn expired(&self, now: u64) -> bool {
        self.expires <= now
    }

    /// Releases the leases that ended and forgets the slots that stopped
    /// counting.
    fn prune(&mut self, now: u64) {
        while let Some(&(end, amount)) = self.leases.front() {
            if end > now {
                break;
            }
            self.leases.pop_front();
            self.reserved = self.reserved.saturating_sub(amount);
        }
        if let Span::Rolling { window, slots } = self.span {
            let (len, window) = (slot_len(window, slots), nanos(window));
            while let Some(&(slot, amount)) = self.slots.front() {
                if slot_counts(slot, len, window, now) {
                    break;
                }
                self.slots.pop_front();
                self.spent = self.spent.saturating_sub(amount);
            }
        }
    }

    /// The balance at `now`, once pruned; zero once expired.
    fn balance(&self, now: u64) -> Balance {
        if self.expired(now) {
            Balance::default()
        } else {
            Balance {
                spent: self.spent,
                reserved: self.reserved,
            }
        }
    }

    /// Whether a sweep must keep the bucket: a fixed one until it expires
    /// (dropping it earlier would start a new incarnation and lose late
    /// settlements), a rolling one while it holds a live lease or spend
    /// that counts (a missing rolling bucket is an empty one).
    fn live(&mut self, now: u64) -> bool {
        match self.span {
            Span::Fixed { .. } => !self.expired(now),
            Span::Rolling { .. } => {
                self.prune(now);
                self.reserved > 0 || self.spent > 0
            }
        }
    }

    /// Adds `amount` to the lease entry ending at `end`.
    fn lease(&mut self, end: u64, amount: u64) {
        if amount == 0 {
            return;
        }
        self.reserved = self.reserved.saturating_add(amount);
        // Leases of one length end in order: the entry is almost always
        // the last one, or a new last one.
        match self.leases.back_mut() {
            Some((last, a)) if *last == end => *a = a.saturating_add(amount),
            Some(&mut (last, _)) if last > end => {
                match self.leases.binary_search_by_key(&end, |&(e, _)| e) {
                    Ok(i) => self.leases[i].1 = self.leases[i].1.saturating_add(amount),
                    Err(i) => self.leases.insert(i, (end, amount)),
                }
            }
            _ => self.leases.push_back((end, amount)),
        }
    }

    /// Releases up to `amount` from the lease entry ending at `end`, if it
    /// is still live.
    fn release(&mut self, end: u64, amount: u64) {
        let Ok(i) = self.leases.binary_search_by_key(&end, |&(e, _)| e) else {
            return;
        };
        let entry = &mut self.leases[i].1;
        let released = amount.min(*entry);
        *entry -= released;
        self.reserved = self.reserved.saturating_sub(released);
        if *entry == 0 {
            self.leases.remove(i);
        }
    }

    /// Records `amount` spent at `now` (in the current slot of a rolling
    /// bucket).
    fn spend(&mut self, now: u64, amount: u64) {
        if amount == 0 {
            return;
        }
        self.spent = self.spent.saturating_add(amount);
        if let Span::Rolling { window, slots } = self.span {
            let slot = now / slot_len(window, slots);
            match self.slots.back_mut() {
                Some((last, a)) if *last >= slot => *a = a.saturating_add(amount),
                _ => self.slots.push_back((slot, amount)),
            }
        }
    }

    /// For a rolling bucket, the wait until its oldest counted spend stops
    /// counting; if nothing counts, until its first lease ends.
    fn retry_after(&self, now: u64) -> Option<Duration> {
        let Span::Rolling { window, slots } = self.span else {
            return None;
        };
        let len = slot_len(window, slots);
        let at = match self.slots.iter().find(|&&(_, a)| a > 0) {
            Some(&(slot, _)) => slot_end(slot, len).saturating_add(nanos(window)),
            None => self.leases.front()?.0,
        };
        Some(Duration::from_nanos(at.saturating_sub(now)))
    }
}

/// The length of a rolling bucket's slot, in ns: `window / slots`, rounded
/// down, at least 1.
fn slot_len(window: Duration, slots: u32) -> u64 {
    (nanos(window) / u64::from(slots.max(1))).max(1)
}

/// When slot `slot` ends.
fn slot_end(slot: u64, len: u64) -> u64 {
    slot.saturating_add(1).saturating_mul(len)
}

/// Whether the spend of `slot` still counts at `now`: until the slot ended
/// more than `window` ago.
fn slot_counts(slot: u64, len: u64, window: u64, now: u64) -> bool {
    slot_end(slot, len).saturating_add(window) > now
}

/// The lease entry of a reservation made at `now` for `lease`: its end,
/// rounded up to [`LEASE_GRANULE_NS`].
fn lease_end(now: u64, lease: Duration) -> u64 {
    now.saturating_add(nanos(lease))
        .div_ceil(LEASE_GRANULE_NS)
        .saturating_mul(LEASE_GRANULE_NS)
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
                incarnations: AtomicU64::new(0),
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

    /// Removes idle keys now: full rate-limit cells, expired fixed buckets,
    /// idle rolling buckets and expired flags. Returns the number of keys removed.
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
        // The same holds for buckets: one whose `Arc` is held is in use.
        inner
            .buckets
            .retain(|_, b| Arc::strong_count(b) > 1 || lock(b).live(now));
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

    /// The bucket `key` and its key as stored, made empty with `span` if
    /// missing; `true` if it was made.
    fn budget(&self, key: &str, span: Span) -> (Arc<str>, Arc<Mutex<Budget>>, bool) {
        let inner = &*self.inner;
        if let Some(b) = inner.buckets.get(key) {
            return (Arc::clone(b.key()), Arc::clone(b.value()), false);
        }
        let mut made = false;
        let entry = inner.buckets.entry(Arc::from(key)).or_insert_with(|| {
            made = true;
            let budget = Budget::new(span, inner.next_incarnation(), inner.now_ns());
            Arc::new(Mutex::new(budget))
        });
        (Arc::clone(entry.key()), Arc::clone(entry.value()), made)
    }

    fn reserve_now(
        &self,
        buckets: &[BudgetBucket<'_>],
        lease: Duration,
    ) -> Result<Reserve, StoreError> {
        let inner = &*self.inner;
        // Lock in the order of the keys, as acquire does: two reserves
        // never deadlock.
        let mut order: SmallVec<[usize; 4]> = (0..buckets.len()).collect();
        order.sort_unstable_by_key(|&i| buckets[i].key);
        if order
            .windows(2)
            .any(|w| buckets[w[0]].key == buckets[w[1]].key)
        {
            return Err(StoreError::new("reserve: two buckets share a key"));
        }
        let mut made = 0;
        // Held until the buckets are updated: a sweep leaves them alone.
        let found: SmallVec<[Found; 4]> = buckets
            .iter()
            .map(|b| {
                let (key, budget, new) = self.budget(b.key, b.span);
                made += usize::from(new);
                (key, budget)
            })
            .collect();
        let reserve = {
            let mut guards: SmallVec<[Option<MutexGuard<'_, Budget>>; 4]> =
                (0..buckets.len()).map(|_| None).collect();
            for &i in &order {
                guards[i] = Some(lock(&found[i].1));
            }
            let now = inner.now_ns();
            for (g, b) in guards.iter_mut().flatten().zip(buckets) {
                if g.expired(now) {
                    **g = Budget::new(b.span, inner.next_incarnation(), now);
                } else {
                    g.prune(now);
                }
            }
            let full = guards
                .iter()
                .flatten()
                .zip(buckets)
                .enumerate()
                .find(|(_, (g, b))| {
                    g.spent.saturating_add(g.reserved).saturating_add(b.amount) > b.limit
                });
            if let Some((index, (g, _))) = full {
                Reserve::Denied {
                    index,
                    spent: g.spent,
                    reserved: g.reserved,
                    retry_after: g.retry_after(now),
                }
            } else {
                let end = lease_end(now, lease);
                let parts: Box<[Reserved]> = guards
                    .iter_mut()
                    .flatten()
                    .zip(buckets)
                    .zip(&found)
                    .map(|((g, b), (key, _))| {
                        g.lease(end, b.amount);
                        Reserved::new(Arc::clone(key), b.amount, g.span, g.created, end)
                    })
                    .collect();
                Reserve::Granted(Reservation::new(parts))
            }
        };
        drop(found);
        for _ in 0..made {
            self.inserted();
        }
        Ok(reserve)
    }

    fn settle_now(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> Result<Vec<Balance>, StoreError> {
        let parts = reservation.parts();
        if actual.len() != parts.len() {
            return Err(StoreError::new(
                "settle: needs one actual amount per bucket of the reservation",
            ));
        }
        let inner = &*self.inner;
        let mut made = 0;
        let balances = parts
            .iter()
            .zip(actual)
            .map(|(part, &actual)| {
                let found = inner.buckets.get(part.key()).map(|b| Arc::clone(b.value()));
                let bucket = match (found, part.span()) {
                    (Some(bucket), _) => bucket,
                    // Rolling spend counts whenever it is settled, even if the
                    // idle bucket was swept meanwhile.
                    (None, Span::Rolling { .. }) if actual > 0 => {
                        let (_, bucket, new) = self.budget(part.key(), part.span());
                        made += usize::from(new);
                        bucket
                    }
                    // A missing fixed bucket expired: its window is over.
                    (None, _) => return Balance::default(),
                };
                let mut b = lock(&bucket);
                let now = inner.now_ns();
                b.prune(now);
                let same = b.created == part.created() && !b.expired(now);
                if same {
                    b.release(part.lease(), part.amount());
                }
                if same || matches!(b.span, Span::Rolling { .. }) {
                    b.spend(now, actual);
                }
                b.balance(now)
            })
            .collect();
        for _ in 0..made {
            self.inserted();
        }
        Ok(balances)
    }

    fn balance_now(&self, key: &str) -> Balance {
        let inner = &*self.inner;
        let Some(bucket) = inner.buckets.get(key).map(|b| Arc::clone(b.value())) else {
            return Balance::default();
        };
        let mut b = lock(&bucket);
        let now = inner.now_ns();
        b.prune(now);
        b.balance(now)
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
    /// A new bucket incarnation, never handed out before.
    fn next_incarnation(&self) -> u64 {
        self.incarnations.fetch_add(1, Ordering::Relaxed) + 1
    }

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
        buckets: &[BudgetBucket<'_>],
        lease: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send {
        ready(self.reserve_now(buckets, lease))
    }

    fn settle(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> impl Future<Output = Result<Vec<Balance>, StoreError>> + Send {
        ready(self.settle_now(reservation, actual))
    }

    /// The balance of `key`, counted with the span the bucket was made
    /// with (`span` is not read).
    fn balance(
        &self,
        key: &str,
        _span: Span,
    ) -> impl Future<Output = Result<Balance, StoreError>> + Send {
        ready(Ok(self.balance_now(key)))
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
