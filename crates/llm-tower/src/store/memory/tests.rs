use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use proptest::prelude::*;
use tokio::time::{Instant, advance};

use super::*;

const MS: Duration = Duration::from_millis(1);
const NS: Duration = Duration::from_nanos(1);

/// Polls a store future once: every [`MemoryStore`] future is ready.
fn now<T>(f: impl Future<Output = Result<T, StoreError>>) -> T {
    f.now_or_never()
        .expect("memory store futures are ready")
        .expect("memory store never fails")
}

fn quota(limit: u64, window: Duration) -> Quota {
    Quota::new(limit, window).unwrap()
}

fn granted(r: Reserve) -> Reservation {
    match r {
        Reserve::Granted(r) => r,
        Reserve::Denied { spent, reserved } => {
            panic!("denied: spent {spent}, reserved {reserved}")
        }
    }
}

/// A clock that moves only when told to, shared by its clones; for tests on
/// plain threads, outside any runtime.
#[derive(Clone)]
struct ManualClock {
    origin: Instant,
    offset_ns: Arc<AtomicU64>,
}

impl ManualClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            offset_ns: Arc::default(),
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + Duration::from_nanos(self.offset_ns.load(Ordering::Relaxed))
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.offset_ns.load(Ordering::Relaxed))
    }
}

#[tokio::test(start_paused = true)]
async fn burst_then_exact_retry_after() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    assert_eq!(q.emission_interval(), 100 * MS);

    for i in (0..10).rev() {
        let take = store.take("k", 1, q).await.unwrap();
        assert_eq!(take, Take::Allowed { remaining: i });
    }
    let retry_after = 100 * MS;
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after }
    );

    // A denial changes nothing: one nanosecond early is still a denial.
    advance(retry_after - NS).await;
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after: NS }
    );
    advance(NS).await;
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );

    // A full window idle refills the whole burst, and no more.
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        store.take("k", 0, q).await.unwrap(),
        Take::Allowed { remaining: 10 }
    );
    assert_eq!(
        store.take("k", 10, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
    assert!(!store.take("k", 1, q).await.unwrap().is_allowed());
}

#[tokio::test(start_paused = true)]
async fn weighted_takes() {
    let store = MemoryStore::new();
    // 1,000 tokens per minute: one token every 60 ms.
    let q = quota(1_000, Duration::from_secs(60));

    assert_eq!(
        store.take("tpm", 600, q).await.unwrap(),
        Take::Allowed { remaining: 400 }
    );
    // 100 tokens short: 100 × 60 ms.
    assert_eq!(
        store.take("tpm", 500, q).await.unwrap(),
        Take::Denied {
            retry_after: Duration::from_secs(6)
        }
    );
    // A smaller take still fits.
    assert_eq!(
        store.take("tpm", 400, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
    assert_eq!(
        store.take("tpm", 500, q).await.unwrap(),
        Take::Denied {
            retry_after: Duration::from_secs(30)
        }
    );
    advance(Duration::from_secs(30)).await;
    assert_eq!(
        store.take("tpm", 500, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );

    // More than the whole quota can never pass, and is not a wait.
    assert_eq!(store.take("tpm", 1_001, q).await.unwrap(), Take::Never);
    assert_eq!(store.take("other", 1_001, q).await.unwrap(), Take::Never);
    // Keys are independent.
    assert_eq!(
        store.take("other", 1_000, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
}

#[tokio::test(start_paused = true)]
async fn refunds() {
    let store = MemoryStore::new();
    let q = quota(1_000, Duration::from_secs(60));

    // Estimate 1,000, actual 600: give 400 back, they can be taken at once.
    assert!(store.take("tpm", 1_000, q).await.unwrap().is_allowed());
    assert!(!store.take("tpm", 400, q).await.unwrap().is_allowed());
    store.refund("tpm", 400, q).await.unwrap();
    assert_eq!(
        store.take("tpm", 400, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );

    // A refund never fills a cell past full.
    store.refund("tpm", 5_000, q).await.unwrap();
    assert_eq!(
        store.take("tpm", 0, q).await.unwrap(),
        Take::Allowed { remaining: 1_000 }
    );
    assert!(store.take("tpm", 1_000, q).await.unwrap().is_allowed());
    assert!(!store.take("tpm", 1, q).await.unwrap().is_allowed());

    // Refunding an unknown key is a no-op and allocates nothing.
    let len = store.len();
    store.refund("unknown", 10, q).await.unwrap();
    assert_eq!(store.len(), len);
}

#[tokio::test(start_paused = true)]
async fn zero_take_reads_without_inserting() {
    let store = MemoryStore::new();
    let q = quota(5, Duration::from_secs(5));
    assert_eq!(
        store.take("k", 0, q).await.unwrap(),
        Take::Allowed { remaining: 5 }
    );
    assert!(store.is_empty());
    store.take("k", 2, q).await.unwrap();
    assert_eq!(
        store.take("k", 0, q).await.unwrap(),
        Take::Allowed { remaining: 3 }
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        store.take("k", 0, q).await.unwrap(),
        Take::Allowed { remaining: 4 }
    );
}

#[tokio::test(start_paused = true)]
async fn reservations_and_settlement() {
    let store = MemoryStore::new();
    let day = Duration::from_secs(86_400);
    let key = "tenant-a:day:20414";

    let first = granted(store.reserve(key, 30, 100, day).await.unwrap());
    assert_eq!((first.key(), first.amount()), (key, 30));
    let second = granted(store.reserve(key, 70, 100, day).await.unwrap());
    assert_eq!(
        store.reserve(key, 1, 100, day).await.unwrap(),
        Reserve::Denied {
            spent: 0,
            reserved: 100
        }
    );

    // Actual under the estimate frees the difference.
    let balance = store.settle(&first, 10).await.unwrap();
    assert_eq!(
        balance,
        Balance {
            spent: 10,
            reserved: 70
        }
    );
    let third = granted(store.reserve(key, 20, 100, day).await.unwrap());
    assert_eq!(
        store.reserve(key, 1, 100, day).await.unwrap(),
        Reserve::Denied {
            spent: 10,
            reserved: 90
        }
    );

    // Actual over the estimate, even past the limit, is recorded: spent is spent.
    store.settle(&second, 90).await.unwrap();
    let balance = store.settle(&third, 25).await.unwrap();
    assert_eq!(
        balance,
        Balance {
            spent: 125,
            reserved: 0
        }
    );
    assert_eq!(store.balance(key).await.unwrap(), balance);
    assert_eq!(
        store.reserve(key, 0, 100, day).await.unwrap(),
        Reserve::Denied {
            spent: 125,
            reserved: 0
        }
    );

    // Other keys, other budgets; unknown keys have an empty balance.
    assert!(matches!(
        store
            .reserve("tenant-b:day:20414", 100, 100, day)
            .await
            .unwrap(),
        Reserve::Granted(_)
    ));
    assert_eq!(store.balance("nobody").await.unwrap(), Balance::default());
}

#[tokio::test(start_paused = true)]
async fn bucket_expiry() {
    let store = MemoryStore::new();
    let hour = Duration::from_secs(3_600);

    let early = granted(store.reserve("b", 60, 100, hour).await.unwrap());
    advance(hour / 2).await;
    // The ttl runs from creation; a later reserve does not extend it.
    let late = granted(store.reserve("b", 40, 100, 10 * hour).await.unwrap());
    store.settle(&early, 50).await.unwrap();
    assert_eq!(
        store.balance("b").await.unwrap(),
        Balance {
            spent: 50,
            reserved: 40
        }
    );

    advance(hour / 2 - NS).await;
    assert_eq!(store.balance("b").await.unwrap().spent, 50);
    advance(NS).await;
    assert_eq!(store.balance("b").await.unwrap(), Balance::default());

    // A new window under the same key starts empty...
    let fresh = granted(store.reserve("b", 100, 100, hour).await.unwrap());
    // ...and a late settlement from the old window does not land in it.
    let balance = store.settle(&late, 40).await.unwrap();
    assert_eq!(
        balance,
        Balance {
            spent: 0,
            reserved: 100
        }
    );
    store.settle(&fresh, 1).await.unwrap();
    assert_eq!(
        store.balance("b").await.unwrap(),
        Balance {
            spent: 1,
            reserved: 0
        }
    );

    // Settling after expiry, with the key swept, is a no-op too.
    advance(hour).await;
    assert_eq!(store.sweep(), 1);
    assert_eq!(store.settle(&fresh, 7).await.unwrap(), Balance::default());
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn flags_expire() {
    let store = MemoryStore::new();
    let ttl = Duration::from_secs(10);

    assert_eq!(store.flag("open:openai").await.unwrap(), None);
    store.set_flag("open:openai", ttl).await.unwrap();
    assert_eq!(store.flag("open:openai").await.unwrap(), Some(ttl));
    advance(ttl - MS).await;
    assert_eq!(store.flag("open:openai").await.unwrap(), Some(MS));
    advance(MS).await;
    assert_eq!(store.flag("open:openai").await.unwrap(), None);

    // Setting again replaces the time left, shorter or longer.
    store.set_flag("open:openai", ttl).await.unwrap();
    store.set_flag("open:openai", 2 * MS).await.unwrap();
    assert_eq!(store.flag("open:openai").await.unwrap(), Some(2 * MS));

    store.clear_flag("open:openai").await.unwrap();
    assert_eq!(store.flag("open:openai").await.unwrap(), None);
    assert!(store.is_empty());
    store.clear_flag("never-set").await.unwrap();

    store.set_flag("zero", Duration::ZERO).await.unwrap();
    assert_eq!(store.flag("zero").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn clones_share_state() {
    let store = MemoryStore::new();
    let clone = store.clone();
    let q = quota(1, Duration::from_secs(1));
    assert!(store.take("k", 1, q).await.unwrap().is_allowed());
    assert!(!clone.take("k", 1, q).await.unwrap().is_allowed());
    clone.set_flag("f", Duration::from_secs(1)).await.unwrap();
    assert!(store.flag("f").await.unwrap().is_some());
    assert_eq!(store.len(), 2);
    assert_eq!(
        format!("{store:?}"),
        "MemoryStore { cells: 1, buckets: 0, flags: 1, .. }"
    );
}

#[tokio::test(start_paused = true)]
async fn sweep_keeps_live_state() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(10));
    store.take("busy", 10, q).await.unwrap();
    store.take("idle", 1, q).await.unwrap();
    store
        .reserve("live", 1, 10, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .reserve("dead", 1, 10, Duration::from_secs(1))
        .await
        .unwrap();
    store.set_flag("up", Duration::from_secs(60)).await.unwrap();
    store
        .set_flag("down", Duration::from_secs(1))
        .await
        .unwrap();

    advance(Duration::from_secs(1)).await;
    assert_eq!(store.sweep(), 3, "idle cell, expired bucket and flag");
    assert_eq!(store.len(), 3);
    // The surviving cell kept its state.
    assert_eq!(
        store.take("busy", 0, q).await.unwrap(),
        Take::Allowed { remaining: 1 }
    );
    assert_eq!(store.balance("live").await.unwrap().reserved, 1);
    assert!(store.flag("up").await.unwrap().is_some());
}

/// Memory stays flat over a million distinct keys: idle keys are swept while
/// new ones arrive, without any explicit sweep.
#[tokio::test(start_paused = true)]
async fn eviction_keeps_memory_flat() {
    let store = MemoryStore::new();
    let window = Duration::from_millis(10);
    let q = quota(5, window);
    let mut key = String::new();
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        key.clear();
        write!(key, "tenant-{i}").unwrap();
        match i % 3 {
            0 => assert!(store.take(&key, 1, q).await.unwrap().is_allowed()),
            1 => drop(granted(store.reserve(&key, 1, 1, window).await.unwrap())),
            _ => store.set_flag(&key, window).await.unwrap(),
        }
        if i % 1_000 == 999 {
            // 1,000 keys per window: about 1,000 keys are live at any time.
            advance(window).await;
            peak = peak.max(store.len());
        }
    }
    assert!(peak <= 3 * MIN_SWEEP_LEN, "peak of {peak} keys");

    // Everything idle: the next sweep empties the store.
    advance(window).await;
    store.sweep();
    assert!(store.is_empty(), "{store:?}");
}

/// Keys that all stay live are kept, and sweeps back off as the store grows
/// (each sweep at least doubles the size needed for the next one).
#[tokio::test(start_paused = true)]
async fn live_keys_are_never_evicted() {
    let store = MemoryStore::new();
    let q = quota(1, Duration::from_secs(3_600));
    let mut key = String::new();
    for i in 0..50_000u32 {
        key.clear();
        write!(key, "k{i}").unwrap();
        assert!(store.take(&key, 1, q).await.unwrap().is_allowed());
    }
    assert_eq!(store.len(), 50_000);
    assert!(store.inner.sweep_above.load(Ordering::Relaxed) >= 50_000);
    key.clear();
    write!(key, "k{}", 49_999).unwrap();
    assert!(!store.take(&key, 1, q).await.unwrap().is_allowed());
}

/// Operations of the GCRA property test.
#[derive(Debug, Clone)]
enum Op {
    Take { amount: u64, probe: bool },
    Refund(u64),
    Advance(u64),
}

fn ops(limit: u64, window_ns: u64) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => (0..=limit + 1, any::<bool>()).prop_map(|(amount, probe)| Op::Take { amount, probe }),
        1 => (1..=limit).prop_map(Op::Refund),
        3 => prop_oneof![0..=window_ns / limit, 0..=2 * window_ns].prop_map(Op::Advance),
    ];
    proptest::collection::vec(op, 1..120)
}

fn limit_and_ops() -> impl Strategy<Value = (Quota, Vec<Op>)> {
    (1..=20u64, 1..=2_000u64).prop_flat_map(|(limit, window_us)| {
        let window = Duration::from_micros(window_us);
        (Just(quota(limit, window)), ops(limit, window_us * 1_000))
    })
}

/// Runs one GCRA script on paused time; returns the log of allowed takes
/// (positive) and refunds (negative) with their times, in nanoseconds.
async fn run_gcra(q: Quota, ops: Vec<Op>) -> Vec<(u64, i128)> {
    let store = MemoryStore::new();
    let start = Instant::now();
    let t = || (Instant::now() - start).as_nanos() as u64;
    let mut log = Vec::new();
    for op in ops {
        match op {
            Op::Advance(ns) => advance(Duration::from_nanos(ns)).await,
            Op::Refund(n) => {
                now(store.refund("k", n, q));
                log.push((t(), -i128::from(n)));
            }
            Op::Take { amount, probe } => match now(store.take("k", amount, q)) {
                Take::Never => assert!(amount > q.limit()),
                Take::Allowed { remaining } => {
                    assert!(amount <= q.limit());
                    log.push((t(), i128::from(amount)));
                    // `remaining` is exact: one more is denied.
                    if remaining < q.limit() {
                        let more = now(store.take("k", remaining + 1, q));
                        assert!(matches!(more, Take::Denied { .. }), "{more:?}");
                    }
                }
                Take::Denied { retry_after } => {
                    assert!(amount <= q.limit() && !retry_after.is_zero());
                    if probe {
                        // `retry_after` is exact: 1 ns early is denied, on time passes.
                        advance(retry_after - NS).await;
                        assert_eq!(
                            now(store.take("k", amount, q)),
                            Take::Denied { retry_after: NS }
                        );
                        advance(NS).await;
                        assert!(now(store.take("k", amount, q)).is_allowed());
                        log.push((t(), i128::from(amount)));
                    }
                }
            },
        }
    }
    log
}

proptest! {
    /// Over any interval [t_i, t_j] ending in an allowed take, the units taken
    /// net of refunds never exceed `limit + ⌊(t_j − t_i) / T⌋`: a burst of at
    /// most `limit`, then one unit per emission interval. Within one emission
    /// interval that is at most `limit`.
    #[test]
    fn gcra_never_exceeds_the_quota((q, ops) in limit_and_ops()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let log = rt.block_on(run_gcra(q, ops));
        let interval = q.interval_ns();
        let limit = i128::from(q.limit());
        for i in 0..log.len() {
            let mut net = 0;
            for (j, &(t_j, n)) in log.iter().enumerate().skip(i) {
                net += n;
                if n > 0 {
                    let bound = limit + i128::from((t_j - log[i].0) / interval);
                    prop_assert!(net <= bound, "{net} > {bound} over log[{i}..={j}]: {log:?}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Concurrent reservations never grant more than the limit in total, and
    /// never deny one that would have fitted.
    #[test]
    fn concurrent_reservations_never_overspend(
        amounts in proptest::collection::vec(1..=50u64, 1..300),
        limit in 0..=2_000u64,
    ) {
        let store = MemoryStore::with_clock(ManualClock::new());
        let ttl = Duration::from_secs(60);
        let chunk = amounts.len().div_ceil(4);
        let results: Vec<(u64, Vec<u64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = amounts
                .chunks(chunk)
                .map(|amounts| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mut granted = 0;
                        let mut denied = Vec::new();
                        for &a in amounts {
                            match now(store.reserve("budget", a, limit, ttl)) {
                                Reserve::Granted(r) => granted += r.amount(),
                                Reserve::Denied { .. } => denied.push(a),
                            }
                        }
                        (granted, denied)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: u64 = results.iter().map(|r| r.0).sum();
        prop_assert!(total <= limit, "granted {total} > {limit}");
        let balance = now(store.balance("budget"));
        prop_assert_eq!(balance, Balance { spent: 0, reserved: total });
        // Reservations only grow here, so a denial means it did not fit at the end either.
        for a in results.iter().flat_map(|r| &r.1) {
            prop_assert!(total + a > limit, "{a} was denied but fits: {total} of {limit}");
        }
    }

    /// With settlements at or under the reservation running concurrently,
    /// spent plus reserved never exceeds the limit and every settlement counts.
    #[test]
    fn concurrent_reserve_and_settle(
        jobs in proptest::collection::vec((1..=50u64, 0..=100u64), 1..300),
        limit in 0..=2_000u64,
    ) {
        let store = MemoryStore::with_clock(ManualClock::new());
        let ttl = Duration::from_secs(60);
        let chunk = jobs.len().div_ceil(4);
        let spent: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks(chunk)
                .map(|jobs| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mut spent = 0;
                        for &(amount, percent) in jobs {
                            if let Reserve::Granted(r) = now(store.reserve("budget", amount, limit, ttl)) {
                                let actual = amount * percent / 100;
                                let b = now(store.settle(&r, actual));
                                assert!(b.spent + b.reserved <= limit, "{b:?} over {limit}");
                                spent += actual;
                            }
                        }
                        spent
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        prop_assert_eq!(now(store.balance("budget")), Balance { spent, reserved: 0 });
    }
}

/// Concurrent takes on one key on a multi-thread runtime: exactly the burst passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_pass_exactly_the_burst() {
    let store = MemoryStore::with_clock(ManualClock::new());
    let q = quota(1_000, Duration::from_secs(60));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut allowed = 0u64;
                for _ in 0..1_000 {
                    if store.take("k", 1, q).await.unwrap().is_allowed() {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1_000);
}

/// An acquire of more cells than fit on the stack works as one of a few:
/// all or nothing, at the earliest time every cell allows.
#[tokio::test(start_paused = true)]
async fn acquire_beyond_the_inline_cells() {
    let store = MemoryStore::new();
    let q = quota(2, Duration::from_secs(1));
    let keys: Vec<String> = (0..INLINE_CELLS + 4).map(|i| format!("c{i}")).collect();
    let cells: Vec<Cell<'_>> = keys.iter().map(|k| Cell::new(k, 1, q)).collect();
    for n in [INLINE_CELLS, cells.len()] {
        let store = MemoryStore::new();
        for _ in 0..2 {
            assert_eq!(
                now(store.acquire(&cells[..n], None, Duration::ZERO)),
                Acquire::Granted {
                    wait: Duration::ZERO
                }
            );
        }
        assert_eq!(
            now(store.acquire(&cells[..n], None, Duration::ZERO)),
            Acquire::Denied {
                retry_after: Duration::from_millis(500)
            }
        );
    }
    // One full cell among many delays them all.
    now(store.take("c7", 2, q));
    assert_eq!(
        now(store.acquire(&cells, None, Duration::from_secs(1))),
        Acquire::Granted {
            wait: Duration::from_millis(500)
        }
    );
    let twice = [cells[0], cells[1], cells[0]];
    assert!(
        store
            .acquire(&twice, None, Duration::ZERO)
            .now_or_never()
            .unwrap()
            .is_err()
    );
}
