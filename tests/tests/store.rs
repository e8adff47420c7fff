//! The store can be implemented outside the crate: a store of this test
//! crate, a plain map behind a mutex, implements `llm_tower::store::Store`
//! and keeps its contract.
//!
//! This file needs `Reservation::new` and `Reservation::created` to be
//! public (a store must build the reservations it grants and recognise them
//! when they are settled); it is on its own so that the other tests compile
//! while they are not.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use llm_tower::store::{Balance, Quota, Reservation, Reserve, Store, StoreError, Take};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Bucket {
    spent: u64,
    reserved: u64,
    created: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Theoretical arrival time of each rate-limit cell.
    cells: HashMap<String, Instant>,
    buckets: HashMap<String, Bucket>,
    flags: HashMap<String, Instant>,
    incarnations: u64,
}

/// A store written outside llm-tower, on tokio's clock.
#[derive(Debug, Default)]
struct MapStore {
    state: Mutex<State>,
}

impl MapStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Store for MapStore {
    async fn take(&self, key: &str, amount: u64, quota: Quota) -> Result<Take, StoreError> {
        if amount > quota.limit() {
            return Ok(Take::Never);
        }
        let now = Instant::now();
        let t = quota.emission_interval();
        let tolerance = t * quota.limit() as u32;
        let mut state = self.state();
        let tat = state.cells.get(key).copied().unwrap_or(now).max(now);
        let next = tat + t * amount as u32;
        let ahead = next - now;
        if ahead > tolerance {
            return Ok(Take::Denied {
                retry_after: ahead - tolerance,
            });
        }
        state.cells.insert(key.to_owned(), next);
        let remaining = (tolerance - ahead).as_nanos() / t.as_nanos().max(1);
        Ok(Take::Allowed {
            remaining: remaining as u64,
        })
    }

    async fn refund(&self, key: &str, amount: u64, quota: Quota) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        if let Some(tat) = state.cells.get_mut(key) {
            let back = quota.emission_interval() * amount as u32;
            *tat = tat.checked_sub(back).unwrap_or(now).max(now);
        }
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
        let mut state = self.state();
        let fresh = state.buckets.get(key).is_none_or(|b| b.expires <= now);
        if fresh {
            state.incarnations += 1;
            let created = state.incarnations;
            state.buckets.insert(
                key.to_owned(),
                Bucket {
                    spent: 0,
                    reserved: 0,
                    created,
                    expires: now + ttl,
                },
            );
        }
        let b = state.buckets.get_mut(key).expect("just made");
        if b.spent + b.reserved + amount > limit {
            return Ok(Reserve::Denied {
                spent: b.spent,
                reserved: b.reserved,
            });
        }
        b.reserved += amount;
        Ok(Reserve::Granted(Reservation::new(
            Arc::from(key),
            amount,
            b.created,
        )))
    }

    async fn settle(&self, reservation: &Reservation, actual: u64) -> Result<Balance, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        match state.buckets.get_mut(reservation.key()) {
            Some(b) if b.expires > now && b.created == reservation.created() => {
                b.reserved -= reservation.amount().min(b.reserved);
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
        Ok(match self.state().buckets.get(key) {
            Some(b) if b.expires > now => Balance {
                spent: b.spent,
                reserved: b.reserved,
            },
            _ => Balance::default(),
        })
    }

    async fn set_flag(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.state()
            .flags
            .insert(key.to_owned(), Instant::now() + ttl);
        Ok(())
    }

    async fn flag(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        Ok(self
            .state()
            .flags
            .get(key)
            .filter(|at| **at > now)
            .map(|at| *at - now))
    }

    async fn clear_flag(&self, key: &str) -> Result<(), StoreError> {
        self.state().flags.remove(key);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_outside_the_crate_reserves_and_settles() {
    let store = MapStore::default();
    let day = 24 * 3600 * SEC;
    let Reserve::Granted(r) = store.reserve("tenant:day", 30, 100, day).await.unwrap() else {
        panic!("30 of 100 fits");
    };
    assert_eq!((r.key(), r.amount()), ("tenant:day", 30));
    assert_eq!(
        store.reserve("tenant:day", 80, 100, day).await.unwrap(),
        Reserve::Denied {
            spent: 0,
            reserved: 30
        }
    );
    let b = store.settle(&r, 12).await.unwrap();
    assert_eq!((b.spent, b.reserved), (12, 0));

    // A reservation of yesterday's bucket never lands in today's.
    let Reserve::Granted(late) = store.reserve("tenant:day", 10, 100, day).await.unwrap() else {
        panic!("fits");
    };
    tokio::time::advance(day).await;
    let Reserve::Granted(_) = store.reserve("tenant:day", 5, 100, day).await.unwrap() else {
        panic!("a new day");
    };
    store.settle(&late, 10).await.unwrap();
    assert_eq!(
        store.balance("tenant:day").await.unwrap(),
        Balance {
            spent: 0,
            reserved: 5
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_outside_the_crate_limits_rates_and_keeps_flags() {
    let store = MapStore::default();
    let rpm = Quota::new(60, 60 * SEC).unwrap();
    for _ in 0..60 {
        assert!(store.take("m", 1, rpm).await.unwrap().is_allowed());
    }
    assert_eq!(
        store.take("m", 1, rpm).await.unwrap(),
        Take::Denied { retry_after: SEC }
    );
    assert_eq!(store.take("m", 61, rpm).await.unwrap(), Take::Never);
    store.refund("m", 1, rpm).await.unwrap();
    assert!(store.take("m", 1, rpm).await.unwrap().is_allowed());

    store.set_flag("open:anthropic", 30 * SEC).await.unwrap();
    tokio::time::advance(10 * SEC).await;
    assert_eq!(store.flag("open:anthropic").await.unwrap(), Some(20 * SEC));
    store.clear_flag("open:anthropic").await.unwrap();
    assert_eq!(store.flag("open:anthropic").await.unwrap(), None);
}
