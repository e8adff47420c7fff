//! A `Store` written outside the crate, as a Redis store would be: every
//! type it needs is public. A plain `Mutex<HashMap>` store, exercised only
//! through the trait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use llm_tower::store::{
    Acquire, Balance, Cell, Quota, Reservation, Reserve, Store, StoreError, Take,
};
use tokio::time::Instant;

#[derive(Default)]
struct State {
    /// GCRA: the theoretical arrival time, in ns since `origin`.
    cells: HashMap<String, u64>,
    buckets: HashMap<String, Bucket>,
    flags: HashMap<String, Instant>,
    incarnations: u64,
}

struct Bucket {
    spent: u64,
    reserved: u64,
    created: u64,
    expires: Instant,
}

struct LockedStore {
    origin: Instant,
    state: Mutex<State>,
}

impl LockedStore {
    fn new() -> Self {
        LockedStore {
            origin: Instant::now(),
            state: Mutex::default(),
        }
    }

    fn now_ns(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_nanos() as u64
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::new("store poisoned"))
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

impl Store for LockedStore {
    async fn take(&self, key: &str, amount: u64, quota: Quota) -> Result<Take, StoreError> {
        if amount > quota.limit() {
            return Ok(Take::Never);
        }
        let (t, tolerance) = (nanos(quota.emission_interval()), nanos(quota.tolerance()));
        let now = self.now_ns();
        let mut s = self.lock()?;
        let tat = s.cells.get(key).copied().unwrap_or(0).max(now);
        let next = tat + amount * t;
        if next - now > tolerance {
            return Ok(Take::Denied {
                retry_after: Duration::from_nanos(next - now - tolerance),
            });
        }
        s.cells.insert(key.to_owned(), next);
        Ok(Take::Allowed {
            remaining: (tolerance - (next - now)) / t,
        })
    }

    async fn refund(&self, key: &str, amount: u64, quota: Quota) -> Result<(), StoreError> {
        let now = self.now_ns();
        let mut s = self.lock()?;
        if let Some(tat) = s.cells.get_mut(key) {
            let back = amount * nanos(quota.emission_interval());
            *tat = tat.saturating_sub(back).max(now);
        }
        Ok(())
    }

    async fn acquire(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> Result<Acquire, StoreError> {
        if let Some(index) = cells.iter().position(|c| c.amount > c.quota.limit()) {
            return Ok(Acquire::Never { index });
        }
        for (i, c) in cells.iter().enumerate() {
            if cells[..i].iter().any(|d| d.key == c.key) {
                return Err(StoreError::new("acquire: two cells share a key"));
            }
        }
        let paused = match pause {
            Some(key) => self.flag(key).await?.map_or(0, nanos),
            None => 0,
        };
        let now = self.now_ns();
        let mut s = self.lock()?;
        let tat = |s: &State, key: &str| s.cells.get(key).copied().unwrap_or(0);
        let mut start = now + paused;
        for c in cells {
            let t = nanos(c.quota.emission_interval());
            let keep = c.keep.min(c.quota.limit() - c.amount);
            let ready = (tat(&s, c.key).max(now) + (c.amount + keep) * t)
                .saturating_sub(nanos(c.quota.tolerance()));
            start = start.max(ready);
        }
        let wait = start - now;
        if wait > nanos(horizon) {
            return Ok(Acquire::Denied {
                retry_after: Duration::from_nanos(wait),
            });
        }
        for c in cells {
            let next = tat(&s, c.key).max(start) + c.amount * nanos(c.quota.emission_interval());
            s.cells.insert(c.key.to_owned(), next);
        }
        Ok(Acquire::Granted {
            wait: Duration::from_nanos(wait),
        })
    }

    async fn charge(&self, key: &str, amount: u64, quota: Quota) -> Result<(), StoreError> {
        let now = self.now_ns();
        let mut s = self.lock()?;
        let tat = s.cells.entry(key.to_owned()).or_default();
        *tat = (*tat).max(now) + amount * nanos(quota.emission_interval());
        Ok(())
    }

    async fn hold(&self, key: &str, _quota: Quota, at_least: Duration) -> Result<(), StoreError> {
        let now = self.now_ns();
        let mut s = self.lock()?;
        let tat = s.cells.entry(key.to_owned()).or_default();
        *tat = (*tat).max(now + nanos(at_least));
        Ok(())
    }

    async fn reserve(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        ttl: Duration,
    ) -> Result<Reserve, StoreError> {
        let now = Instant::now();
        let mut s = self.lock()?;
        let live = s.buckets.get(key).is_some_and(|b| b.expires > now);
        if !live {
            s.incarnations += 1;
            let created = s.incarnations;
            s.buckets.insert(
                key.to_owned(),
                Bucket {
                    spent: 0,
                    reserved: 0,
                    created,
                    expires: now + ttl,
                },
            );
        }
        let b = s.buckets.get_mut(key).expect("just made");
        if b.spent + b.reserved + amount > limit {
            return Ok(Reserve::Denied {
                spent: b.spent,
                reserved: b.reserved,
            });
        }
        b.reserved += amount;
        Ok(Reserve::Granted(Reservation::new(key, amount, b.created)))
    }

    async fn settle(&self, reservation: &Reservation, actual: u64) -> Result<Balance, StoreError> {
        let now = Instant::now();
        let mut s = self.lock()?;
        match s.buckets.get_mut(reservation.key()) {
            Some(b) if b.expires > now && b.created == reservation.created() => {
                b.reserved -= reservation.amount();
                b.spent += actual;
                Ok(Balance {
                    spent: b.spent,
                    reserved: b.reserved,
                })
            }
            Some(b) if b.expires > now => Ok(Balance {
                spent: b.spent,
                reserved: b.reserved,
            }),
            _ => Ok(Balance::default()),
        }
    }

    async fn balance(&self, key: &str) -> Result<Balance, StoreError> {
        let now = Instant::now();
        let s = self.lock()?;
        Ok(match s.buckets.get(key) {
            Some(b) if b.expires > now => Balance {
                spent: b.spent,
                reserved: b.reserved,
            },
            _ => Balance::default(),
        })
    }

    async fn set_flag(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.lock()?
            .flags
            .insert(key.to_owned(), Instant::now() + ttl);
        Ok(())
    }

    async fn flag(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .flags
            .get(key)
            .filter(|until| **until > now)
            .map(|until| *until - now))
    }

    async fn clear_flag(&self, key: &str) -> Result<(), StoreError> {
        self.lock()?.flags.remove(key);
        Ok(())
    }
}

/// Only through the trait, as a layer generic over its store would.
async fn exercise<S: Store>(store: Arc<S>) {
    let sec = Duration::from_secs(1);
    // GCRA: a burst of the whole limit, then one unit per interval.
    let rpm = Quota::new(60, 60 * sec).unwrap();
    for i in 0..60 {
        assert_eq!(
            store.take("rpm", 1, rpm).await.unwrap(),
            Take::Allowed { remaining: 59 - i }
        );
    }
    assert_eq!(
        store.take("rpm", 1, rpm).await.unwrap(),
        Take::Denied { retry_after: sec }
    );
    assert_eq!(store.take("rpm", 61, rpm).await.unwrap(), Take::Never);
    store.refund("rpm", 1, rpm).await.unwrap();
    assert!(store.take("rpm", 1, rpm).await.unwrap().is_allowed());
    tokio::time::advance(sec).await;
    assert!(store.take("rpm", 1, rpm).await.unwrap().is_allowed());

    // Budgets: reserve, deny past the limit, settle.
    let day = 24 * 3600 * sec;
    let Reserve::Granted(r) = store.reserve("tenant", 30, 50, day).await.unwrap() else {
        panic!("fits");
    };
    assert_eq!((r.key(), r.amount()), ("tenant", 30));
    assert_eq!(
        store.reserve("tenant", 30, 50, day).await.unwrap(),
        Reserve::Denied {
            spent: 0,
            reserved: 30
        }
    );
    let b = store.settle(&r, 12).await.unwrap();
    assert_eq!((b.spent, b.reserved), (12, 0));
    assert_eq!(store.balance("tenant").await.unwrap(), b);
    // A settlement after its window ended lands nowhere.
    let Reserve::Granted(late) = store.reserve("tenant", 5, 50, day).await.unwrap() else {
        panic!("fits");
    };
    tokio::time::advance(day).await;
    let Reserve::Granted(_) = store.reserve("tenant", 1, 50, day).await.unwrap() else {
        panic!("a new window");
    };
    let b = store.settle(&late, 5).await.unwrap();
    assert_eq!(
        (b.spent, b.reserved),
        (0, 1),
        "not counted in the new window"
    );

    // Flags.
    store.set_flag("open:openai", 10 * sec).await.unwrap();
    assert_eq!(store.flag("open:openai").await.unwrap(), Some(10 * sec));
    tokio::time::advance(4 * sec).await;
    assert_eq!(store.flag("open:openai").await.unwrap(), Some(6 * sec));
    store.clear_flag("open:openai").await.unwrap();
    assert_eq!(store.flag("open:openai").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_implements_every_method() {
    exercise(Arc::new(LockedStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn it_answers_as_the_memory_store_does() {
    exercise(Arc::new(llm_tower::store::MemoryStore::new())).await;
}
