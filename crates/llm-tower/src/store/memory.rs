use std::{
    fmt,
    future::{Future, ready},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use tokio::time::Instant;

use super::{Balance, Quota, Reservation, Reserve, Store, StoreError, Take};
use crate::clock::{Clock, TokioClock};

/// Operations between two sweeps for idle keys, at the least; a sweep
/// also waits for as many operations as there are keys, so its cost stays
/// constant per operation.
const SWEEP_EVERY: u64 = 4096;

/// The in-process [`Store`]: sharded maps (`dashmap`), one `AtomicU64` per
/// rate-limit cell updated by compare-and-swap, a small mutex per budget
/// bucket, and an amortized sweep that evicts idle keys, so memory stays
/// flat however many keys pass through.
///
/// Clones share the same state. Every future it returns is ready at once.
pub struct MemoryStore<C = TokioClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    clock: C,
    origin: Instant,
    cells: DashMap<Box<str>, AtomicU64>,
    buckets: DashMap<Box<str>, Mutex<Bucket>>,
    flags: DashMap<Box<str>, AtomicU64>,
    ops: AtomicU64,
    next_sweep: AtomicU64,
    generations: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    spent: u64,
    reserved: u64,
    expires: u64,
    generation: u64,
}

impl MemoryStore<TokioClock> {
    /// A store on tokio's clock.
    pub fn new() -> Self {
        Self::with_clock(TokioClock::new())
    }
}

impl Default for MemoryStore<TokioClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> MemoryStore<C> {
    /// A store on the given clock.
    pub fn with_clock(clock: C) -> Self {
        let origin = clock.now();
        MemoryStore {
            inner: Arc::new(Inner {
                clock,
                origin,
                cells: DashMap::new(),
                buckets: DashMap::new(),
                flags: DashMap::new(),
                ops: AtomicU64::new(0),
                next_sweep: AtomicU64::new(SWEEP_EVERY),
                generations: AtomicU64::new(0),
            }),
        }
    }

    /// Keys held: rate-limit cells, budget buckets and flags.
    pub fn len(&self) -> usize {
        self.inner.cells.len() + self.inner.buckets.len() + self.inner.flags.len()
    }

    /// `true` when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Evicts every idle key now: cells that are full again, expired
    /// buckets and flags. Runs by itself every so often.
    pub fn sweep(&self) {
        self.inner.sweep();
    }
}

impl<C: Clock> Inner<C> {
    /// Nanoseconds since the store was made; never zero, so that zero can
    /// mean "full" or "expired".
    fn now(&self) -> u64 {
        let d = self.clock.now().saturating_duration_since(self.origin);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2) + 1
    }

    fn tick(&self) {
        let ops = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        if ops >= self.next_sweep.load(Ordering::Relaxed) {
            // One caller sweeps; the others go on.
            let next = ops + SWEEP_EVERY.max(self.len_u64());
            if self.next_sweep.fetch_max(next, Ordering::Relaxed) < next {
                self.sweep();
            }
        }
    }

    fn len_u64(&self) -> u64 {
        (self.cells.len() + self.buckets.len() + self.flags.len()) as u64
    }

    fn sweep(&self) {
        let now = self.now();
        self.cells
            .retain(|_, tat| tat.load(Ordering::Acquire) > now);
        self.flags
            .retain(|_, expires| expires.load(Ordering::Acquire) > now);
        self.buckets.retain(|_, bucket| match bucket.try_lock() {
            Ok(b) => b.expires > now,
            // Busy: in use, so not idle.
            Err(_) => true,
        });
    }

    fn take(&self, key: &str, amount: u64, quota: Quota) -> Take {
        self.tick();
        let (t, span) = (quota.interval_nanos(), quota.span_nanos());
        let Some(cost) = amount.checked_mul(t).filter(|c| *c <= span) else {
            return Take::Never;
        };
        // Lock-free once the key exists: a shard read guard and a CAS loop.
        let cell = match self.cells.get(key) {
            Some(cell) => cell,
            None => self
                .cells
                .entry(key.into())
                .or_insert_with(|| AtomicU64::new(0))
                .downgrade(),
        };
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let now = self.now();
            let new = tat.max(now) + cost;
            let ahead = new - now;
            if ahead > span {
                return Take::Denied {
                    retry_after: Duration::from_nanos(ahead - span),
                };
            }
            match cell.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Take::Allowed {
                        remaining: (span - ahead) / t,
                    };
                }
                Err(actual) => tat = actual,
            }
        }
    }

    fn refund(&self, key: &str, amount: u64, quota: Quota) {
        self.tick();
        let Some(cell) = self.cells.get(key) else {
            return;
        };
        let back = amount.saturating_mul(quota.interval_nanos());
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let now = self.now();
            if tat <= now {
                return; // full already
            }
            let new = tat.saturating_sub(back).max(now);
            match cell.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => tat = actual,
            }
        }
    }

    fn reserve(&self, key: &str, amount: u64, limit: u64, ttl: Duration) -> Reserve {
        self.tick();
        let now = self.now();
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX / 2);
        let fresh = || Bucket {
            spent: 0,
            reserved: 0,
            expires: now.saturating_add(ttl),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
        };
        let entry = match self.buckets.get(key) {
            Some(e) => e,
            None => self
                .buckets
                .entry(key.into())
                .or_insert_with(|| Mutex::new(fresh()))
                .downgrade(),
        };
        let mut b = entry.lock().unwrap_or_else(|e| e.into_inner());
        if b.expires <= now {
            *b = fresh();
        }
        let fits = b
            .spent
            .checked_add(b.reserved)
            .and_then(|used| used.checked_add(amount))
            .is_some_and(|total| total <= limit);
        if !fits {
            return Reserve::Denied {
                spent: b.spent,
                reserved: b.reserved,
            };
        }
        b.reserved += amount;
        Reserve::Granted(Reservation::new(key.into(), amount, b.generation))
    }

    fn settle(&self, reservation: &Reservation, actual: u64) {
        self.tick();
        let now = self.now();
        let Some(entry) = self.buckets.get(reservation.key()) else {
            return; // evicted after expiring: that window is over
        };
        let mut b = entry.lock().unwrap_or_else(|e| e.into_inner());
        if b.generation == reservation.generation() {
            b.reserved = b.reserved.saturating_sub(reservation.amount());
        }
        if b.expires > now || b.generation == reservation.generation() {
            b.spent = b.spent.saturating_add(actual);
        }
    }

    fn balance(&self, key: &str) -> Balance {
        let now = self.now();
        match self.buckets.get(key) {
            Some(entry) => {
                let b = entry.lock().unwrap_or_else(|e| e.into_inner());
                if b.expires > now {
                    Balance {
                        spent: b.spent,
                        reserved: b.reserved,
                    }
                } else {
                    Balance::default()
                }
            }
            None => Balance::default(),
        }
    }

    fn set_flag(&self, key: &str, ttl: Duration) {
        self.tick();
        let expires = self
            .now()
            .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX / 2));
        match self.flags.get(key) {
            Some(f) => f.store(expires, Ordering::Release),
            None => {
                self.flags
                    .entry(key.into())
                    .or_insert_with(|| AtomicU64::new(0))
                    .store(expires, Ordering::Release);
            }
        }
    }

    fn flag(&self, key: &str) -> Option<Duration> {
        let expires = self.flags.get(key)?.load(Ordering::Acquire);
        let now = self.now();
        (expires > now).then(|| Duration::from_nanos(expires - now))
    }

    fn clear_flag(&self, key: &str) {
        self.flags.remove(key);
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send {
        ready(Ok(self.inner.take(key, amount, quota)))
    }

    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.refund(key, amount, quota);
        ready(Ok(()))
    }

    fn reserve(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send {
        ready(Ok(self.inner.reserve(key, amount, limit, ttl)))
    }

    fn settle(
        &self,
        reservation: &Reservation,
        actual: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.settle(reservation, actual);
        ready(Ok(()))
    }

    fn balance(&self, key: &str) -> impl Future<Output = Result<Balance, StoreError>> + Send {
        ready(Ok(self.inner.balance(key)))
    }

    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.set_flag(key, ttl);
        ready(Ok(()))
    }

    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        ready(Ok(self.inner.flag(key)))
    }

    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.clear_flag(key);
        ready(Ok(()))
    }
}

impl<C> Clone for MemoryStore<C> {
    fn clone(&self) -> Self {
        MemoryStore {
            inner: self.inner.clone(),
        }
    }
}

impl<C> fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("cells", &self.inner.cells.len())
            .field("buckets", &self.inner.buckets.len())
            .field("flags", &self.inner.flags.len())
            .finish_non_exhaustive()
    }
}
