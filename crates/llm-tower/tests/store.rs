//! The in-memory store: GCRA cells, budget buckets, flags, eviction.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use llm_tower::store::{Balance, MemoryStore, Quota, Reserve, Store, Take};
use proptest::prelude::*;
use tokio::time::advance;

fn quota(limit: u64, window_ms: u64) -> Quota {
    Quota::new(limit, Duration::from_millis(window_ms)).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_limit_then_exact_waits() {
    let store = MemoryStore::new();
    let q = quota(10, 1000); // one unit per 100 ms
    for i in 0..10 {
        assert_eq!(
            store.take("k", 1, q).await.unwrap(),
            Take::Allowed { remaining: 9 - i }
        );
    }
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied {
            retry_after: Duration::from_millis(100)
        }
    );
    advance(Duration::from_millis(99)).await;
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied {
            retry_after: Duration::from_millis(1)
        }
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
    // Keys are independent.
    assert!(store.take("other", 10, q).await.unwrap().is_allowed());
}

#[tokio::test(start_paused = true)]
async fn weighted_takes_and_refunds() {
    let store = MemoryStore::new();
    let q = quota(1000, 60_000); // tokens per minute: one per 60 ms
    assert_eq!(
        store.take("tpm", 700, q).await.unwrap(),
        Take::Allowed { remaining: 300 }
    );
    // 400 more needs 100 to come back: 100 × 60 ms.
    assert_eq!(
        store.take("tpm", 400, q).await.unwrap(),
        Take::Denied {
            retry_after: Duration::from_secs(6)
        }
    );
    // The call used 500, not the 700 estimated: 200 come back.
    store.refund("tpm", 200, q).await.unwrap();
    assert_eq!(
        store.take("tpm", 400, q).await.unwrap(),
        Take::Allowed { remaining: 100 }
    );
    // A refund never overfills.
    advance(Duration::from_secs(60)).await;
    store.refund("tpm", 5000, q).await.unwrap();
    assert_eq!(
        store.take("tpm", 1000, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
    // More than the whole burst can never pass.
    assert_eq!(store.take("tpm", 1001, q).await.unwrap(), Take::Never);
    assert_eq!(
        store.take("tpm", 0, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
}

#[test]
fn invalid_quotas_are_rejected() {
    for (limit, window, why) in [
        (0, Duration::from_secs(1), "the limit is zero"),
        (1, Duration::ZERO, "the window is zero"),
        (
            2_000_000_000,
            Duration::from_secs(1),
            "finer than one unit per nanosecond",
        ),
    ] {
        let err = Quota::new(limit, window).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let q = Quota::per_minute(7).unwrap();
    assert_eq!(q.emission_interval(), Duration::from_nanos(8_571_428_572));
    assert_eq!((q.limit(), q.window()), (7, Duration::from_secs(60)));
}

#[tokio::test(start_paused = true)]
async fn reservations_then_settlement() {
    let store = MemoryStore::new();
    let day = Duration::from_secs(86_400);
    let Reserve::Granted(a) = store.reserve("t:day", 600, 1000, day).await.unwrap() else {
        panic!("fits")
    };
    assert_eq!(
        store.reserve("t:day", 500, 1000, day).await.unwrap(),
        Reserve::Denied {
            spent: 0,
            reserved: 600
        }
    );
    store.settle(&a, 450).await.unwrap();
    assert_eq!(
        store.balance("t:day").await.unwrap(),
        Balance {
            spent: 450,
            reserved: 0
        }
    );
    let Reserve::Granted(b) = store.reserve("t:day", 500, 1000, day).await.unwrap() else {
        panic!("fits now")
    };
    // Money spent is spent, even past the limit.
    store.settle(&b, 700).await.unwrap();
    assert_eq!(
        store.balance("t:day").await.unwrap(),
        Balance {
            spent: 1150,
            reserved: 0
        }
    );
    assert!(matches!(
        store.reserve("t:day", 1, 1000, day).await.unwrap(),
        Reserve::Denied { spent: 1150, .. }
    ));
    // The bucket expires with its window.
    advance(day).await;
    assert_eq!(store.balance("t:day").await.unwrap(), Balance::default());
    assert!(matches!(
        store.reserve("t:day", 1000, 1000, day).await.unwrap(),
        Reserve::Granted(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_settlement_after_expiry_counts_in_the_new_window_only() {
    let store = MemoryStore::new();
    let ttl = Duration::from_secs(60);
    let Reserve::Granted(old) = store.reserve("b", 100, 1000, ttl).await.unwrap() else {
        panic!()
    };
    advance(ttl).await;
    let Reserve::Granted(_new) = store.reserve("b", 200, 1000, ttl).await.unwrap() else {
        panic!()
    };
    store.settle(&old, 80).await.unwrap();
    // The old reservation is not taken from the new window's.
    assert_eq!(
        store.balance("b").await.unwrap(),
        Balance {
            spent: 80,
            reserved: 200
        }
    );
}

#[tokio::test(start_paused = true)]
async fn flags_expire() {
    let store = MemoryStore::new();
    assert_eq!(store.flag("open").await.unwrap(), None);
    store
        .set_flag("open", Duration::from_secs(30))
        .await
        .unwrap();
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        store.flag("open").await.unwrap(),
        Some(Duration::from_secs(20))
    );
    advance(Duration::from_secs(20)).await;
    assert_eq!(store.flag("open").await.unwrap(), None);
    store
        .set_flag("open", Duration::from_secs(5))
        .await
        .unwrap();
    store.clear_flag("open").await.unwrap();
    assert_eq!(store.flag("open").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn clones_share_state() {
    let a = MemoryStore::new();
    let b = a.clone();
    let q = quota(1, 1000);
    assert!(a.take("k", 1, q).await.unwrap().is_allowed());
    assert!(!b.take("k", 1, q).await.unwrap().is_allowed());
    let shared = Arc::new(a);
    assert!(!shared.take("k", 1, q).await.unwrap().is_allowed());
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted() {
    let store = MemoryStore::new();
    let q = quota(100, 1000);
    let ttl = Duration::from_secs(1);
    for i in 0..200_000u32 {
        let key = format!("k{i}");
        store.take(&key, 1, q).await.unwrap();
        if i % 4 == 0 {
            store.reserve(&key, 1, 10, ttl).await.unwrap();
            store.set_flag(&key, ttl).await.unwrap();
        }
    }
    // The amortized sweep ran while the map grew, but every key was live.
    assert!(store.len() > 200_000, "{}", store.len());
    advance(Duration::from_secs(2)).await;
    // Touching keys keeps sweeping; a final sweep leaves only the live ones.
    for i in 0..300_000u32 {
        store
            .take(&format!("new{}", i % 10), 1, quota(1_000_000, 1000))
            .await
            .unwrap();
    }
    assert!(store.len() <= 10, "{}", store.len());
    store.sweep();
    assert!(store.len() <= 10, "{}", store.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_overspend() {
    let store = MemoryStore::new();
    let granted = Arc::new(AtomicU64::new(0));
    let limit = 10_000;
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let store = store.clone();
            let granted = granted.clone();
            tokio::spawn(async move {
                for i in 0..200u64 {
                    let amount = 1 + (t * 7 + i * 13) % 50;
                    if let Reserve::Granted(_) = store
                        .reserve("shared", amount, limit, Duration::from_secs(3600))
                        .await
                        .unwrap()
                    {
                        granted.fetch_add(amount, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let total = granted.load(Ordering::Relaxed);
    assert!(total <= limit, "{total}");
    assert!(total > limit - 50, "the bucket filled up: {total}");
    assert_eq!(store.balance("shared").await.unwrap().reserved, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_never_exceed_the_burst() {
    let store = MemoryStore::new();
    // A minute-long window: no refill to speak of during the test.
    let q = Quota::per_minute(1000).unwrap();
    let allowed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (store, allowed) = (store.clone(), allowed.clone());
            tokio::spawn(async move {
                for _ in 0..100 {
                    if store.take("hot", 1, q).await.unwrap().is_allowed() {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // 3,200 tries, 1,000 allowed (a unit or two may refill on a slow run).
    let n = allowed.load(Ordering::Relaxed);
    assert!((1000..=1002).contains(&n), "{n}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over any interval of length d, a cell admits at most limit + d / T
    /// units (a full burst, then the refill).
    #[test]
    fn gcra_never_admits_more_than_burst_plus_refill(
        limit in 1u64..50,
        window_ms in 1u64..5000,
        ops in proptest::collection::vec((0u64..60, 0u64..3000), 1..120),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let q = quota(limit, window_ms);
            let t = q.emission_interval().as_nanos() as u64;
            let start = tokio::time::Instant::now();
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (amount, wait_ms) in ops {
                let at = (tokio::time::Instant::now() - start).as_nanos() as u64;
                match store.take("k", amount, q).await.unwrap() {
                    Take::Allowed { remaining } => {
                        prop_assert!(remaining <= limit);
                        admitted.push((at, amount));
                    }
                    Take::Denied { retry_after } => {
                        prop_assert!(amount <= limit);
                        // Waiting exactly that long admits the same take.
                        advance(retry_after).await;
                        let now = (tokio::time::Instant::now() - start).as_nanos() as u64;
                        prop_assert!(store.take("k", amount, q).await.unwrap().is_allowed());
                        admitted.push((now, amount));
                    }
                    Take::Never => prop_assert!(amount > limit),
                }
                advance(Duration::from_micros(wait_ms * 100)).await;
            }
            for i in 0..admitted.len() {
                let mut sum = 0u128;
                for &(at, amount) in &admitted[i..] {
                    sum += u128::from(amount);
                    let span = u128::from(at - admitted[i].0);
                    prop_assert!(
                        sum * u128::from(t) <= u128::from(limit) * u128::from(t) + span,
                        "{} units in {} ns", sum, span
                    );
                }
            }
            Ok(())
        })?;
    }
}
