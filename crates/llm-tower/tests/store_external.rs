//! A `Store` written outside the crate, as a Redis store would be: every
//! type it needs is public. A plain `Mutex<HashMap>` store, exercised only
//! through the trait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use llm_tower::store::{
    Acquire, Balance, Bucket, Cell, Quota, Reservation, Reserve, Reserved, Span, Store, StoreError,
    Take,
};
use tokio::time::Instant;

#[derive(Default)]
struct State {
    /// GCRA: the theoretical arrival time, in ns since `origin`.
    cells: HashMap<String, u64>,
    buckets: HashMap<String, Budget>,
    flags: HashMap<String, Instant>,
    incarnations: u64,
}

/// A budget bucket; times in ns since the store's origin.
struct Budget {
    span: Span,
    created: u64,
    /// Fixed with a ttl: when it expires.
    expires: Option<u64>,
    /// Fixed: everything settled.
    spent: u64,
    /// Rolling: `(slot, amount)`.
    slots: Vec<(u64, u64)>,
    /// `(lease end, amount)`: the lease end is the reservation's lease id.
    leases: Vec<(u64, u64)>,
}

impl Budget {
    fn new(span: Span, created: u64, now: u64) -> Self {
        let expires = match span {
            Span::Fixed { ttl } => ttl.map(|ttl| now + nanos(ttl)),
            Span::Rolling { .. } => None,
        };
        Budget {
            span,
            created,
            expires,
            spent: 0,
            slots: Vec::new(),
            leases: Vec::new(),
        }
    }

    fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// The slot length and window of a rolling bucket.
    fn rolling(&self) -> Option<(u64, u64)> {
        match self.span {
            Span::Rolling { window, slots } => Some((
                (nanos(window) / u64::from(slots.max(1))).max(1),
                nanos(window),
            )),
            Span::Fixed { .. } => None,
        }
    }

    /// Drops ended leases and slots that stopped counting.
    fn prune(&mut self, now: u64) {
        self.leases.retain(|&(end, _)| end > now);
        if let Some((len, window)) = self.rolling() {
            self.slots
                .retain(|&(slot, _)| (slot + 1) * len + window > now);
        }
    }

    fn spent(&self) -> u64 {
        match self.rolling() {
            Some(_) => self.slots.iter().map(|s| s.1).sum(),
            None => self.spent,
        }
    }

    fn reserved(&self) -> u64 {
        self.leases.iter().map(|l| l.1).sum()
    }

    fn balance(&self, now: u64) -> Balance {
        if self.expired(now) {
            return Balance::default();
        }
        Balance {
            spent: self.spent(),
            reserved: self.reserved(),
        }
    }

    fn spend(&mut self, now: u64, amount: u64) {
        match self.rolling() {
            Some((len, _)) => {
                let slot = now / len;
                match self.slots.iter_mut().find(|s| s.0 == slot) {
                    Some(s) => s.1 += amount,
                    None => self.slots.push((slot, amount)),
                }
            }
            None => self.spent += amount,
        }
    }
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
        let now = self.now_ns();
        let mut s = self.lock()?;
        let paused = pause.and_then(|k| s.flags.get(k)).map_or(0, |until| {
            nanos(until.saturating_duration_since(Instant::now()))
        });
        // One lock over the whole map: all or nothing by construction.
        let mut start = now + paused;
        for c in cells {
            let t = nanos(c.quota.emission_interval());
            let keep = c.keep.min(c.quota.limit() - c.amount);
            let tat = s.cells.get(c.key).copied().unwrap_or(0).max(now);
            start =
                start.max((tat + (c.amount + keep) * t).saturating_sub(nanos(c.quota.tolerance())));
        }
        if start - now > nanos(horizon) {
            return Ok(Acquire::Denied {
                retry_after: Duration::from_nanos(start - now),
            });
        }
        for c in cells {
            let tat = s.cells.entry(c.key.to_owned()).or_insert(0);
            *tat = (*tat).max(start) + c.amount * nanos(c.quota.emission_interval());
        }
        Ok(Acquire::Granted {
            wait: Duration::from_nanos(start - now),
        })
    }

    async fn charge(&self, key: &str, amount: u64, quota: Quota) -> Result<(), StoreError> {
        let now = self.now_ns();
        let mut s = self.lock()?;
        let tat = s.cells.entry(key.to_owned()).or_insert(0);
        *tat = (*tat).max(now) + amount * nanos(quota.emission_interval());
        Ok(())
    }

    async fn hold(&self, key: &str, _quota: Quota, at_least: Duration) -> Result<(), StoreError> {
        let floor = self.now_ns() + nanos(at_least);
        let mut s = self.lock()?;
        let tat = s.cells.entry(key.to_owned()).or_insert(0);
        *tat = (*tat).max(floor);
        Ok(())
    }

    async fn reserve(
        &self,
        buckets: &[Bucket<'_>],
        lease: Duration,
    ) -> Result<Reserve, StoreError> {
        for (i, b) in buckets.iter().enumerate() {
            if buckets[..i].iter().any(|o| o.key == b.key) {
                return Err(StoreError::new("reserve: two buckets share a key"));
            }
        }
        let now = self.now_ns();
        let mut s = self.lock()?;
        // One lock over the whole map: all or nothing by construction.
        for b in buckets {
            let live = s.buckets.get(b.key).is_some_and(|x| !x.expired(now));
            if !live {
                s.incarnations += 1;
                let bucket = Budget::new(b.span, s.incarnations, now);
                s.buckets.insert(b.key.to_owned(), bucket);
            }
            s.buckets.get_mut(b.key).expect("just made").prune(now);
        }
        for (index, b) in buckets.iter().enumerate() {
            let x = &s.buckets[b.key];
            let (spent, reserved) = (x.spent(), x.reserved());
            if spent.saturating_add(reserved).saturating_add(b.amount) > b.limit {
                let retry_after = x.rolling().and_then(|(len, window)| {
                    let first = x.slots.iter().filter(|s| s.1 > 0).map(|s| s.0).min();
                    let at = match first {
                        Some(slot) => (slot + 1) * len + window,
                        None => x.leases.iter().map(|l| l.0).min()?,
                    };
                    Some(Duration::from_nanos(at - now))
                });
                return Ok(Reserve::Denied {
                    index,
                    spent,
                    reserved,
                    retry_after,
                });
            }
        }
        let end = now + nanos(lease);
        let mut parts = Vec::new();
        for b in buckets {
            let x = s.buckets.get_mut(b.key).expect("made above");
            match x.leases.iter_mut().find(|l| l.0 == end) {
                Some(l) => l.1 += b.amount,
                None => x.leases.push((end, b.amount)),
            }
            parts.push(Reserved::new(b.key, b.amount, x.span, x.created, end));
        }
        Ok(Reserve::Granted(Reservation::new(parts)))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> Result<Vec<Balance>, StoreError> {
        let parts = reservation.parts();
        if parts.len() != actual.len() {
            return Err(StoreError::new("settle: one actual amount per bucket"));
        }
        let now = self.now_ns();
        let mut s = self.lock()?;
        let mut balances = Vec::new();
        for (part, &actual) in parts.iter().zip(actual) {
            if !s.buckets.contains_key(part.key()) {
                if !matches!(part.span(), Span::Rolling { .. }) {
                    balances.push(Balance::default());
                    continue;
                }
                s.incarnations += 1;
                let bucket = Budget::new(part.span(), s.incarnations, now);
                s.buckets.insert(part.key().to_owned(), bucket);
            }
            let x = s.buckets.get_mut(part.key()).expect("present");
            x.prune(now);
            let same = x.created == part.created() && !x.expired(now);
            if same && let Some(l) = x.leases.iter_mut().find(|l| l.0 == part.lease()) {
                l.1 = l.1.saturating_sub(part.amount());
            }
            if same || x.rolling().is_some() {
                x.spend(now, actual);
            }
            balances.push(x.balance(now));
        }
        Ok(balances)
    }

    async fn balance(&self, key: &str, _span: Span) -> Result<Balance, StoreError> {
        let now = self.now_ns();
        let mut s = self.lock()?;
        Ok(s.buckets.get_mut(key).map_or_else(Balance::default, |x| {
            x.prune(now);
            x.balance(now)
        }))
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

    // Acquire: several cells at once, a place in the queue, all or nothing.
    let a = Quota::new(2, 2 * sec).unwrap();
    let b = Quota::new(10, 10 * sec).unwrap();
    let both = [Cell::new("a", 1, a), Cell::new("b", 1, b)];
    for wait in [0, 0, 1, 2] {
        assert_eq!(
            store.acquire(&both, None, 5 * sec).await.unwrap(),
            Acquire::Granted { wait: wait * sec }
        );
    }
    assert_eq!(
        store.acquire(&both, None, sec).await.unwrap(),
        Acquire::Denied {
            retry_after: 3 * sec
        }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("b", 1, b), Cell::new("a", 3, a)], None, sec)
            .await
            .unwrap(),
        Acquire::Never { index: 1 }
    );
    // `b` gave nothing to the refused calls: 6 of 10 left.
    assert_eq!(
        store.take("b", 0, b).await.unwrap(),
        Take::Allowed { remaining: 6 }
    );
    store.charge("b", 6, b).await.unwrap();
    assert_eq!(
        store.take("b", 0, b).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
    store.hold("c", b, 4 * sec).await.unwrap();
    store.hold("c", b, sec).await.unwrap();
    assert_eq!(
        store.take("c", 0, b).await.unwrap(),
        Take::Allowed { remaining: 6 }
    );
    store.set_flag("pause", 7 * sec).await.unwrap();
    assert_eq!(
        store
            .acquire(&[Cell::new("d", 1, b)], Some("pause"), 10 * sec)
            .await
            .unwrap(),
        Acquire::Granted { wait: 7 * sec }
    );
    store.clear_flag("pause").await.unwrap();

    // Budgets: reserve in several buckets at once, all or nothing.
    let day = Span::Fixed {
        ttl: Some(24 * 3600 * sec),
    };
    let minute = Span::Rolling {
        window: 60 * sec,
        slots: 6,
    };
    let lease = 600 * sec;
    let both = |a, b| {
        [
            Bucket::new("tenant:day", a, 50, day),
            Bucket::new("global:minute", b, 100, minute),
        ]
    };
    let Reserve::Granted(r) = store.reserve(&both(30, 30), lease).await.unwrap() else {
        panic!("fits");
    };
    let parts: Vec<_> = r.parts().iter().map(|p| (p.key(), p.amount())).collect();
    assert_eq!(parts, [("tenant:day", 30), ("global:minute", 30)]);
    assert_eq!(
        store.reserve(&both(30, 1), lease).await.unwrap(),
        Reserve::Denied {
            index: 0,
            spent: 0,
            reserved: 30,
            retry_after: None
        }
    );
    assert_eq!(
        store.reserve(&both(1, 71), lease).await.unwrap(),
        Reserve::Denied {
            index: 1,
            spent: 0,
            reserved: 30,
            retry_after: Some(lease)
        }
    );
    assert!(
        store.settle(&r, &[12]).await.is_err(),
        "one amount per bucket"
    );
    assert!(
        store
            .reserve(&[both(1, 1)[0], both(1, 1)[0]], lease)
            .await
            .is_err(),
        "a key twice"
    );
    let balances = store.settle(&r, &[12, 70]).await.unwrap();
    assert_eq!(balances, [bal(12, 0), bal(70, 0)]);
    assert_eq!(store.balance("tenant:day", day).await.unwrap(), bal(12, 0));
    // Over the limit (38 spent of 50): even nothing is refused.
    let Reserve::Granted(over) = store.reserve(&both(0, 0), lease).await.unwrap() else {
        panic!("fits");
    };
    store.settle(&over, &[40, 0]).await.unwrap();
    assert!(matches!(
        store.reserve(&both(0, 0), lease).await.unwrap(),
        Reserve::Denied {
            index: 0,
            spent: 52,
            ..
        }
    ));
    // It is 1 s since the store was made: the rolling spend is in slot 0
    // (0–10 s), which counts until 70 s.
    tokio::time::advance(10 * sec).await;
    let Reserve::Denied { retry_after, .. } = store
        .reserve(&[Bucket::new("global:minute", 31, 100, minute)], lease)
        .await
        .unwrap()
    else {
        panic!("full for a minute");
    };
    assert_eq!(retry_after, Some(59 * sec));
    tokio::time::advance(59 * sec).await;
    assert_eq!(
        store.balance("global:minute", minute).await.unwrap(),
        Balance::default()
    );

    // An expired lease is released by the store, and its spend still counts.
    let fresh = Span::Fixed { ttl: None };
    let Reserve::Granted(leased) = store
        .reserve(&[Bucket::new("leased", 40, 50, fresh)], 10 * sec)
        .await
        .unwrap()
    else {
        panic!("fits");
    };
    tokio::time::advance(10 * sec).await;
    assert_eq!(store.balance("leased", fresh).await.unwrap(), bal(0, 0));
    let Reserve::Granted(next) = store
        .reserve(&[Bucket::new("leased", 50, 50, fresh)], lease)
        .await
        .unwrap()
    else {
        panic!("released");
    };
    assert_eq!(store.settle(&leased, &[5]).await.unwrap(), [bal(5, 50)]);
    assert_eq!(store.settle(&next, &[0]).await.unwrap(), [bal(5, 0)]);

    // A settlement after its window ended lands nowhere.
    let window = |amount| [Bucket::new("window", amount, 50, day)];
    let Reserve::Granted(late) = store.reserve(&window(5), lease).await.unwrap() else {
        panic!("fits");
    };
    tokio::time::advance(24 * 3600 * sec).await;
    let Reserve::Granted(_) = store.reserve(&window(1), lease).await.unwrap() else {
        panic!("a new window");
    };
    assert_eq!(
        store.settle(&late, &[5]).await.unwrap(),
        [bal(0, 1)],
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

fn bal(spent: u64, reserved: u64) -> Balance {
    Balance { spent, reserved }
}

#[tokio::test(start_paused = true)]
async fn a_store_written_outside_the_crate_implements_every_method() {
    exercise(Arc::new(LockedStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn it_answers_as_the_memory_store_does() {
    exercise(Arc::new(llm_tower::store::MemoryStore::new())).await;
}
