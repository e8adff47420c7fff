use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use proptest::prelude::*;
use tokio::time::{Instant, advance};

use super::*;
use crate::store::Bucket;

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
        denied => panic!("{denied:?}"),
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
    let ttl = |secs| Span::Fixed {
        ttl: Some(Duration::from_secs(secs)),
    };
    let lease = Duration::from_secs(600);
    granted(now(
        store.reserve(&[Bucket::new("live", 1, 10, ttl(60))], lease)
    ));
    granted(now(
        store.reserve(&[Bucket::new("dead", 1, 10, ttl(1))], lease)
    ));
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
    assert_eq!(now(store.balance("live", ttl(60))).reserved, 1);
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
            1 => drop(granted(now(store.reserve(
                &[Bucket::new(&key, 1, 1, Span::Fixed { ttl: Some(window) })],
                window,
            )))),
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

// ---------------------------------------------------------------------------
// acquire, charge, hold
// ---------------------------------------------------------------------------

/// A horizon longer than any wait in these tests.
const FOREVER: Duration = Duration::from_secs(1_000_000);

/// The wait of a granted acquire.
fn wait_of(a: Acquire) -> Duration {
    match a {
        Acquire::Granted { wait } => wait,
        other => panic!("not granted: {other:?}"),
    }
}

/// The units left in the cell `key` now, read with a take of zero; zero
/// when the cell is overdrawn (a take of zero is then denied, as documented:
/// `TAT − now > limit·T`).
fn remaining<C: Clock>(store: &MemoryStore<C>, key: &str, q: Quota) -> u64 {
    match now(store.take(key, 0, q)) {
        Take::Allowed { remaining } => remaining,
        Take::Denied { .. } => 0,
        Take::Never => panic!("a take of zero is never `Never`"),
    }
}

fn granted_now() -> Acquire {
    Acquire::Granted {
        wait: Duration::ZERO,
    }
}

/// An idle key grants its burst at once, then one unit per `T`, each waiter
/// told its exact turn: the queue is first in, first out by construction.
#[tokio::test(start_paused = true)]
async fn acquire_burst_then_one_per_interval() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let t = q.emission_interval();
    let one = [Cell::new("k", 1, q)];

    for _ in 0..10 {
        assert_eq!(
            store.acquire(&one, None, Duration::ZERO).await.unwrap(),
            granted_now()
        );
    }
    assert_eq!(remaining(&store, "k", q), 0);
    for i in 1..=5u32 {
        assert_eq!(
            store.acquire(&one, None, FOREVER).await.unwrap(),
            Acquire::Granted { wait: i * t }
        );
    }
    // The queue lives in the cell: a plain take sees it.
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after: 6 * t }
    );
    // A horizon of exactly the wait is enough; one nanosecond less is not.
    assert_eq!(
        store.acquire(&one, None, 6 * t - NS).await.unwrap(),
        Acquire::Denied { retry_after: 6 * t }
    );
    assert_eq!(
        store.acquire(&one, None, 6 * t).await.unwrap(),
        Acquire::Granted { wait: 6 * t }
    );
    // Time passing shortens every turn by as much.
    advance(2 * t + 30 * MS).await;
    assert_eq!(
        store.acquire(&one, None, FOREVER).await.unwrap(),
        Acquire::Granted {
            wait: 5 * t - 30 * MS
        }
    );
    // Once the queue has drained and a window gone by, the burst is back.
    advance(Duration::from_secs(2)).await;
    assert_eq!(remaining(&store, "k", q), 10);
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 10, q)], None, Duration::ZERO)
            .await
            .unwrap(),
        granted_now()
    );
}

/// A denied acquire answers the exact wait and takes nothing.
#[tokio::test(start_paused = true)]
async fn acquire_denied_takes_nothing() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let t = q.emission_interval();

    store.take("k", 7, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 3);
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 5, q)], None, 2 * t - NS)
            .await
            .unwrap(),
        Acquire::Denied { retry_after: 2 * t }
    );
    assert_eq!(remaining(&store, "k", q), 3);

    store.take("k", 3, q).await.unwrap();
    let one = [Cell::new("k", 1, q)];
    for _ in 0..3 {
        assert_eq!(
            store.acquire(&one, None, Duration::ZERO).await.unwrap(),
            Acquire::Denied { retry_after: t }
        );
    }
    // Nothing was queued by the denials: the next waiter is first in line.
    advance(t / 2).await;
    assert_eq!(
        store.acquire(&one, None, Duration::ZERO).await.unwrap(),
        Acquire::Denied { retry_after: t / 2 }
    );
    assert_eq!(
        store.acquire(&one, None, t / 2).await.unwrap(),
        Acquire::Granted { wait: t / 2 }
    );
    // `retry_after` is exact: after it, the same acquire passes at once.
    let Acquire::Denied { retry_after } = store.acquire(&one, None, Duration::ZERO).await.unwrap()
    else {
        panic!("the cell is empty");
    };
    // The grant above went at `T` (the cell's TAT was `10 T`, now `11 T`):
    // the next one at `2 T`, that is 1.5 T from now.
    assert_eq!(retry_after, t + t / 2);
    advance(retry_after - NS).await;
    assert!(matches!(
        store.acquire(&one, None, Duration::ZERO).await.unwrap(),
        Acquire::Denied { retry_after } if retry_after == NS
    ));
    advance(NS).await;
    assert_eq!(
        store.acquire(&one, None, Duration::ZERO).await.unwrap(),
        granted_now()
    );
}

/// A cell asking for more than its limit is named, whatever its place, and
/// nothing is taken from the others.
#[tokio::test(start_paused = true)]
async fn acquire_never_names_the_cell() {
    let store = MemoryStore::new();
    let small = quota(10, Duration::from_secs(1));
    let big = quota(100, Duration::from_secs(1));

    let cells = [
        Cell::new("a", 5, small),
        Cell::new("b", 100, big),
        Cell::new("c", 11, small),
    ];
    assert_eq!(
        store.acquire(&cells, None, FOREVER).await.unwrap(),
        Acquire::Never { index: 2 }
    );
    let cells = [
        Cell::new("a", 10, small),
        Cell::new("b", 101, big),
        Cell::new("c", 1, small),
    ];
    assert_eq!(
        store.acquire(&cells, None, FOREVER).await.unwrap(),
        Acquire::Never { index: 1 }
    );
    assert_eq!(remaining(&store, "a", small), 10);
    assert_eq!(remaining(&store, "b", big), 100);
    assert_eq!(remaining(&store, "c", small), 10);
    // Also when the other cells are busy already.
    store.take("a", 4, small).await.unwrap();
    let cells = [Cell::new("a", 1, small), Cell::new("c", 20, small)];
    assert_eq!(
        store.acquire(&cells, None, FOREVER).await.unwrap(),
        Acquire::Never { index: 1 }
    );
    assert_eq!(remaining(&store, "a", small), 6);
    assert_eq!(remaining(&store, "c", small), 10);
}

#[tokio::test(start_paused = true)]
async fn acquire_rejects_a_key_twice() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let cells = [
        Cell::new("a", 1, q),
        Cell::new("b", 2, q),
        Cell::new("a", 3, q),
    ];
    let err = store.acquire(&cells, None, FOREVER).await.unwrap_err();
    assert!(err.to_string().contains("share a key"), "{err}");
    assert_eq!(remaining(&store, "a", q), 10);
    assert_eq!(remaining(&store, "b", q), 10);
}

/// Several cells: all or nothing, at the turn of the slowest.
#[tokio::test(start_paused = true)]
async fn acquire_is_all_or_nothing() {
    let store = MemoryStore::new();
    let qa = quota(10, Duration::from_secs(1)); // T = 100 ms
    let qb = quota(2, Duration::from_secs(1)); // T = 500 ms
    store.take("b", 2, qb).await.unwrap();

    let cells = [Cell::new("a", 1, qa), Cell::new("b", 1, qb)];
    assert_eq!(
        store.acquire(&cells, None, Duration::ZERO).await.unwrap(),
        Acquire::Denied {
            retry_after: 500 * MS
        }
    );
    assert_eq!(remaining(&store, "a", qa), 10, "A untouched by the denial");
    assert_eq!(remaining(&store, "b", qb), 0);
    // Order of the cells does not matter.
    let reversed = [cells[1], cells[0]];
    assert_eq!(
        store.acquire(&reversed, None, 499 * MS).await.unwrap(),
        Acquire::Denied {
            retry_after: 500 * MS
        }
    );
    assert_eq!(remaining(&store, "a", qa), 10);

    // Within the horizon both are taken, as if the call arrived at its turn
    // (`TAT_a = 500 ms + 100 ms`): A keeps 4 units now, 5 from 500 ms on.
    assert_eq!(
        store.acquire(&cells, None, 500 * MS).await.unwrap(),
        Acquire::Granted { wait: 500 * MS }
    );
    assert_eq!(remaining(&store, "a", qa), 4);
    assert_eq!(
        store.take("b", 1, qb).await.unwrap(),
        Take::Denied {
            retry_after: Duration::from_secs(1)
        }
    );
    advance(500 * MS).await;
    assert_eq!(remaining(&store, "a", qa), 9);
}

/// The pause flag holds every start back until it ends; it is a floor, not
/// added to the cells' own wait.
#[tokio::test(start_paused = true)]
async fn acquire_waits_for_the_pause() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let five = Duration::from_secs(5);
    let one = [Cell::new("k", 1, q)];
    store.set_flag("pause", five).await.unwrap();

    assert_eq!(
        store
            .acquire(&one, Some("pause"), Duration::from_secs(4))
            .await
            .unwrap(),
        Acquire::Denied { retry_after: five }
    );
    assert_eq!(remaining(&store, "k", q), 10);
    let wait = wait_of(store.acquire(&one, Some("pause"), FOREVER).await.unwrap());
    assert!(wait >= five, "{wait:?}");
    assert_eq!(wait, five);
    // No cells at all: the pause alone.
    assert_eq!(
        store.acquire(&[], Some("pause"), FOREVER).await.unwrap(),
        Acquire::Granted { wait: five }
    );
    // Without the flag, or with another one, no pause.
    assert_eq!(
        store
            .acquire(&[Cell::new("j", 1, q)], None, Duration::ZERO)
            .await
            .unwrap(),
        granted_now()
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("j", 1, q)], Some("unset"), Duration::ZERO)
            .await
            .unwrap(),
        granted_now()
    );

    // A cell's wait longer than the pause wins; they do not add up.
    let slow = quota(1, Duration::from_secs(7));
    store.take("slow", 1, slow).await.unwrap();
    assert_eq!(
        store
            .acquire(&[Cell::new("slow", 1, slow)], Some("pause"), FOREVER)
            .await
            .unwrap(),
        Acquire::Granted {
            wait: Duration::from_secs(7)
        }
    );

    // The pause ends on time, and a cleared one at once.
    advance(five - MS).await;
    assert_eq!(
        wait_of(
            store
                .acquire(&[Cell::new("j", 1, q)], Some("pause"), FOREVER)
                .await
                .unwrap()
        ),
        MS
    );
    store.clear_flag("pause").await.unwrap();
    assert_eq!(
        store
            .acquire(&[Cell::new("j", 1, q)], Some("pause"), Duration::ZERO)
            .await
            .unwrap(),
        granted_now()
    );
}

/// `keep` leaves units for others: a keeper stops where a non-keeper goes on.
#[tokio::test(start_paused = true)]
async fn acquire_keeps_units_for_others() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let t = q.emission_interval();
    let keeper = [Cell::new("k", 1, q).keep(5)];
    let other = [Cell::new("k", 1, q)];

    for _ in 0..5 {
        assert_eq!(
            store.acquire(&keeper, None, Duration::ZERO).await.unwrap(),
            granted_now()
        );
    }
    assert_eq!(
        store.acquire(&keeper, None, Duration::ZERO).await.unwrap(),
        Acquire::Denied { retry_after: t }
    );
    assert_eq!(remaining(&store, "k", q), 5);
    for _ in 0..5 {
        assert_eq!(
            store.acquire(&other, None, Duration::ZERO).await.unwrap(),
            granted_now()
        );
    }
    assert_eq!(
        store.acquire(&other, None, Duration::ZERO).await.unwrap(),
        Acquire::Denied { retry_after: t }
    );
    // On an empty cell the keeper waits until 1 + 5 units are back.
    assert_eq!(
        store.acquire(&keeper, None, FOREVER).await.unwrap(),
        Acquire::Granted { wait: 6 * t }
    );
    // A keeper of 3 units at once on a full cell gets them only if 5 stay.
    let wide = [Cell::new("w", 3, q).keep(5)];
    assert_eq!(
        store.acquire(&wide, None, Duration::ZERO).await.unwrap(),
        granted_now()
    );
    assert_eq!(
        store.acquire(&wide, None, Duration::ZERO).await.unwrap(),
        Acquire::Denied { retry_after: t }
    );
    // `keep` counts only up to `limit − amount`: a full burst still passes.
    assert_eq!(
        store
            .acquire(&[Cell::new("full", 10, q).keep(5)], None, Duration::ZERO)
            .await
            .unwrap(),
        granted_now()
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("more", 7, q).keep(100)], None, Duration::ZERO)
            .await
            .unwrap(),
        granted_now()
    );
    assert_eq!(remaining(&store, "more", q), 3);
}

#[tokio::test(start_paused = true)]
async fn charge_takes_without_asking() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let t = q.emission_interval();

    store.take("k", 3, q).await.unwrap();
    store.charge("k", 4, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 3);
    // Past empty: what was used is used, and the wait says so.
    store.charge("k", 10, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 0);
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after: 8 * t }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 1, q)], None, FOREVER)
            .await
            .unwrap(),
        Acquire::Granted { wait: 8 * t }
    );
    // A fresh key, and a charge of zero.
    store.charge("new", 2, q).await.unwrap();
    assert_eq!(remaining(&store, "new", q), 8);
    store.charge("new", 0, q).await.unwrap();
    store.charge("zero", 0, q).await.unwrap();
    assert_eq!(remaining(&store, "new", q), 8);
    assert_eq!(remaining(&store, "zero", q), 10);
    // A charge on an idle cell counts from now, not from a stale TAT.
    advance(Duration::from_secs(10)).await;
    store.charge("k", 1, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 9);
}

#[tokio::test(start_paused = true)]
async fn hold_raises_and_never_lowers() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let t = q.emission_interval();

    store.hold("k", q, 5 * t).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 5);
    store.hold("k", q, 2 * t).await.unwrap();
    assert_eq!(
        remaining(&store, "k", q),
        5,
        "a shorter hold changes nothing"
    );
    store.hold("k", q, Duration::ZERO).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 5);

    // Holding for the whole tolerance empties the cell.
    store.hold("k", q, q.tolerance()).await.unwrap();
    assert_eq!(remaining(&store, "k", q), 0);
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after: t }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 1, q)], None, FOREVER)
            .await
            .unwrap(),
        Acquire::Granted { wait: t }
    );

    // The hold counts from now: after 3 T, a hold of 5 T is below the TAT.
    let r = remaining(&store, "j", q);
    assert_eq!(r, 10);
    store.hold("j", q, q.tolerance()).await.unwrap();
    advance(3 * t).await;
    assert_eq!(remaining(&store, "j", q), 3);
    store.hold("j", q, 5 * t).await.unwrap();
    assert_eq!(remaining(&store, "j", q), 3);
    store.hold("j", q, 8 * t).await.unwrap();
    assert_eq!(remaining(&store, "j", q), 2);
    // A hold on a cell busy from takes keeps the takes.
    store.take("h", 6, q).await.unwrap();
    store.hold("h", q, 2 * t).await.unwrap();
    assert_eq!(remaining(&store, "h", q), 4);
}

/// A waiter that gives up and refunds leaves the cells as they were: the
/// next waiter gets the turn the first one had.
#[tokio::test(start_paused = true)]
async fn refunded_acquire_leaves_no_trace() {
    let store = MemoryStore::new();
    let q = quota(10, Duration::from_secs(1));
    let t = q.emission_interval();

    store.take("k", 10, q).await.unwrap();
    let three = [Cell::new("k", 3, q)];
    assert_eq!(
        store.acquire(&three, None, FOREVER).await.unwrap(),
        Acquire::Granted { wait: 3 * t }
    );
    store.refund("k", 3, q).await.unwrap();
    assert_eq!(
        store.acquire(&three, None, FOREVER).await.unwrap(),
        Acquire::Granted { wait: 3 * t }
    );
    store.refund("k", 3, q).await.unwrap();
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after: t }
    );

    // Three waiters in line; the second leaves; the next arrival takes the
    // last place, not a place after the one that left.
    let one = [Cell::new("k", 1, q)];
    let waits: Vec<_> = (0..3)
        .map(|_| wait_of(now(store.acquire(&one, None, FOREVER))))
        .collect();
    assert_eq!(waits, [t, 2 * t, 3 * t]);
    store.refund("k", 1, q).await.unwrap();
    assert_eq!(
        store.acquire(&one, None, FOREVER).await.unwrap(),
        Acquire::Granted { wait: 3 * t }
    );
    // Everyone leaves: the cell is as the burst left it.
    store.refund("k", 3, q).await.unwrap();
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied { retry_after: t }
    );

    // Several cells: the slow one is restored, the next waiter on the same
    // cells gets the same turn.
    let qa = quota(10, Duration::from_secs(1));
    let qb = quota(2, Duration::from_secs(1));
    store.take("b", 2, qb).await.unwrap();
    let cells = [Cell::new("a", 1, qa), Cell::new("b", 1, qb)];
    assert_eq!(
        store.acquire(&cells, None, FOREVER).await.unwrap(),
        Acquire::Granted { wait: 500 * MS }
    );
    store.refund("a", 1, qa).await.unwrap();
    store.refund("b", 1, qb).await.unwrap();
    assert_eq!(
        store.take("b", 1, qb).await.unwrap(),
        Take::Denied {
            retry_after: 500 * MS
        }
    );
    assert_eq!(
        store.acquire(&cells, None, FOREVER).await.unwrap(),
        Acquire::Granted { wait: 500 * MS }
    );
}

/// One arrival of the acquire property test: the time since the previous
/// one, the amounts of the two cells (the second cell optional), the first
/// cell's `keep` and the horizon.
#[derive(Debug, Clone)]
struct Arrival {
    advance_ns: u64,
    amounts: (u64, Option<u64>),
    keep: u64,
    horizon_ns: u64,
}

fn quotas_and_arrivals() -> impl Strategy<Value = ([Quota; 2], Vec<Arrival>)> {
    let quota_strategy =
        (1..=50u64, 1..=10u64).prop_map(|(limit, secs)| quota(limit, Duration::from_secs(secs)));
    (quota_strategy.clone(), quota_strategy).prop_flat_map(|(q0, q1)| {
        let window_ns = q0.window().max(q1.window()).as_nanos() as u64;
        let t_ns = q0.interval_ns().min(q1.interval_ns());
        let arrival = (
            prop_oneof![Just(0), 0..=t_ns, 0..=2 * window_ns],
            0..=q0.limit(),
            proptest::option::of(0..=q1.limit()),
            prop_oneof![3 => Just(0), 1 => 0..=q0.limit()],
            prop_oneof![Just(0), 0..=2 * window_ns],
        )
            .prop_map(|(advance_ns, a0, a1, keep, horizon_ns)| Arrival {
                advance_ns,
                amounts: (a0, a1),
                keep,
                horizon_ns,
            });
        (Just([q0, q1]), proptest::collection::vec(arrival, 1..100))
    })
}

/// Plays the arrivals on paused time against a model of the documented
/// schedule; returns the grants of each cell as (start, amount), in ns.
async fn run_acquire(qs: [Quota; 2], arrivals: Vec<Arrival>) -> [Vec<(u64, u64)>; 2] {
    let store = MemoryStore::new();
    let start = Instant::now();
    let keys = ["c0", "c1"];
    // The model: each cell's TAT, in ns since `start` (0: full).
    let mut tat = [0u64; 2];
    let mut grants: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for a in arrivals {
        advance(Duration::from_nanos(a.advance_ns)).await;
        let t_now = (Instant::now() - start).as_nanos() as u64;
        let mut cells = vec![Cell::new(keys[0], a.amounts.0, qs[0]).keep(a.keep)];
        let mut asked = vec![(0, a.amounts.0, a.keep)];
        if let Some(n1) = a.amounts.1 {
            cells.push(Cell::new(keys[1], n1, qs[1]));
            asked.push((1, n1, 0));
        }
        // The earliest start at which every cell conforms: GCRA at `s`,
        // `max(TAT, s) + (n + keep)·T − s ≤ limit·T`.
        let mut s = t_now;
        for &(i, n, keep) in &asked {
            let q = qs[i];
            let keep = keep.min(q.limit() - n);
            let ready = i128::from(tat[i].max(t_now)) + i128::from((n + keep) * q.interval_ns())
                - i128::from(q.tolerance_ns());
            s = s.max(u64::try_from(ready).unwrap_or(0));
        }
        let wait = s - t_now;
        let got = now(store.acquire(&cells, None, Duration::from_nanos(a.horizon_ns)));
        if wait > a.horizon_ns {
            assert_eq!(
                got,
                Acquire::Denied {
                    retry_after: Duration::from_nanos(wait)
                },
                "{a:?} at {t_now}"
            );
        } else {
            // Never denied when the turn is within the horizon.
            assert_eq!(
                got,
                Acquire::Granted {
                    wait: Duration::from_nanos(wait)
                },
                "{a:?} at {t_now}"
            );
            for &(i, n, _) in &asked {
                tat[i] = tat[i].max(s) + n * qs[i].interval_ns();
                grants[i].push((s, n));
            }
        }
    }
    // The model and the store agree on what is left, or on the debt.
    let t_now = (Instant::now() - start).as_nanos() as u64;
    for ((key, q), tat) in keys.into_iter().zip(qs).zip(tat) {
        let ahead = tat.saturating_sub(t_now);
        let expected = match ahead.checked_sub(q.tolerance_ns()) {
            Some(debt) if debt > 0 => Take::Denied {
                retry_after: Duration::from_nanos(debt),
            },
            _ => Take::Allowed {
                remaining: (q.tolerance_ns() - ahead) / q.interval_ns(),
            },
        };
        assert_eq!(now(store.take(key, 0, q)), expected, "{key}");
    }
    grants
}

/// Whether the units started in every interval [a, b] between two starts
/// stay within `limit + ⌊(b − a) / T⌋`.
fn check_gcra_bound(q: Quota, grants: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let mut starts = grants.to_vec();
    starts.sort_unstable();
    let t = q.interval_ns();
    for i in 0..starts.len() {
        let mut sum = 0;
        for (j, &(b, n)) in starts.iter().enumerate().skip(i) {
            sum += n;
            let bound = q.limit() + (b - starts[i].0) / t;
            prop_assert!(
                sum <= bound,
                "{sum} > {bound} started over starts[{i}..={j}]: {starts:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    /// Acquire grants exactly the documented schedule: granted with the
    /// model's wait when it is within the horizon, denied with that wait as
    /// `retry_after` only when it is not; and the starts of every cell stay
    /// within the GCRA bound, a burst of `limit` then one unit per `T`.
    #[test]
    fn acquire_is_accurate((qs, arrivals) in quotas_and_arrivals()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let grants = rt.block_on(run_acquire(qs, arrivals));
        check_gcra_bound(qs[0], &grants[0])?;
        check_gcra_bound(qs[1], &grants[1])?;
    }

    /// Back-to-back single units with a long horizon are scheduled at
    /// exactly the GCRA times: `limit` at once, then one per `T`.
    #[test]
    fn acquire_uses_the_whole_rate(limit in 1..=50u64, secs in 1..=10u64, extra in 0..=100u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let q = quota(limit, Duration::from_secs(secs));
        let t = q.emission_interval();
        rt.block_on(async {
            let store = MemoryStore::new();
            let one = [Cell::new("k", 1, q)];
            for i in 0..limit + extra {
                let wait = wait_of(now(store.acquire(&one, None, FOREVER)));
                let expected = if i < limit { Duration::ZERO } else { t * (i - limit + 1) as u32 };
                assert_eq!(wait, expected, "grant {i} of {q:?}");
            }
        });
    }
}

/// 1,000 concurrent tasks each acquire one unit of a global cell and of
/// their group's cell, at once or not at all: the totals are exact, and a
/// task refused by its group takes nothing from the global cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquires_grant_exactly_what_fits() {
    // No refill during the test: one unit back per 36 s at the fastest.
    let hours = Duration::from_secs(1_000 * 3_600);
    let global = quota(100, hours);
    let per_group = quota(30, hours);

    async fn run(global: Quota, per_group: Quota, group_of: fn(usize) -> usize) -> [u64; 10] {
        let store = MemoryStore::new();
        let tasks: Vec<_> = (0..1_000usize)
            .map(|i| {
                // Spawn in a scattered order, so groups compete.
                let i = i * 7 % 1_000;
                let group = group_of(i);
                let store = store.clone();
                tokio::spawn(async move {
                    let key = format!("group-{group}");
                    let g = Cell::new(&key, 1, per_group);
                    let all = Cell::new("global", 1, global);
                    let cells = if i % 2 == 0 { [all, g] } else { [g, all] };
                    let got = store.acquire(&cells, None, Duration::ZERO).await.unwrap();
                    assert!(!matches!(got, Acquire::Never { .. }));
                    (group, got == granted_now())
                })
            })
            .collect();
        let mut granted = [0u64; 10];
        let mut denied = [0u64; 10];
        for t in tasks {
            let (group, ok) = t.await.unwrap();
            if ok {
                granted[group] += 1;
            } else {
                denied[group] += 1;
            }
        }
        let total: u64 = granted.iter().sum();
        assert!(total <= 100, "{granted:?}");
        assert_eq!(remaining(&store, "global", global), 100 - total);
        for g in 0..10 {
            assert!(granted[g] <= 30, "{granted:?}");
            assert_eq!(
                remaining(&store, &format!("group-{g}"), per_group),
                30 - granted[g],
                "group {g}: {granted:?}"
            );
            // A denial means a full cell.
            if denied[g] > 0 {
                assert!(granted[g] == 30 || total == 100, "{granted:?} {denied:?}");
            }
        }
        granted
    }

    // Uneven groups: three crowded ones (400, 300, 200 tasks) and seven of
    // about 14. More fits in the groups (190) than globally: exactly 100.
    let granted = run(global, per_group, |i| match i {
        0..400 => 0,
        400..700 => 1,
        700..900 => 2,
        _ => 3 + i % 7,
    })
    .await;
    assert_eq!(granted.iter().sum::<u64>(), 100, "{granted:?}");
    // Every task tries once, ten groups of 100: min(100, 10·30) = 100.
    let granted = run(global, per_group, |i| i % 10).await;
    assert_eq!(granted.iter().sum::<u64>(), 100, "{granted:?}");
    // Three groups only: they cap at 90, and the global cell keeps 10 — the
    // 910 tasks refused by their group took nothing from it.
    let granted = run(global, per_group, |i| i % 3).await;
    assert_eq!(granted, [30, 30, 30, 0, 0, 0, 0, 0, 0, 0]);
}

/// Threads acquiring and refunding at once, the clock standing still:
/// every refund gives back exactly what was taken, so the cells end full.
#[test]
fn concurrent_acquire_and_refund_end_full() {
    let store = MemoryStore::with_clock(ManualClock::new());
    let global = quota(3, Duration::from_secs(1));
    let group = quota(2, Duration::from_secs(1));
    let solo = quota(2, Duration::from_secs(1));
    let grants: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4usize)
            .map(|thread| {
                let store = store.clone();
                s.spawn(move || {
                    let key = format!("group-{}", thread % 2);
                    let mut grants = 0;
                    for i in 0..5_000usize {
                        let g = Cell::new(&key, 1, group);
                        let all = Cell::new("global", 1, global);
                        let cells = if i % 2 == 0 { [all, g] } else { [g, all] };
                        if now(store.acquire(&cells, None, Duration::ZERO)) == granted_now() {
                            grants += 1;
                            if i % 3 == 0 {
                                now(store.refund("global", 1, global));
                                now(store.refund(&key, 1, group));
                            } else {
                                now(store.refund(&key, 1, group));
                                now(store.refund("global", 1, global));
                            }
                        }
                        // One cell, a long horizon: a wait, given up.
                        let got = now(store.acquire(&[Cell::new("solo", 1, solo)], None, FOREVER));
                        assert!(matches!(got, Acquire::Granted { .. }), "{got:?}");
                        now(store.refund("solo", 1, solo));
                    }
                    grants
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(grants > 0);
    assert_eq!(remaining(&store, "global", global), 3);
    assert_eq!(remaining(&store, "group-0", group), 2);
    assert_eq!(remaining(&store, "group-1", group), 2);
    assert_eq!(remaining(&store, "solo", solo), 2);
}

/// A sweep running while acquires, charges and holds make new cells: none
/// of their updates is lost to a cell swept between lookup and lock (which
/// would let a second caller find a fresh, full cell).
#[test]
fn sweep_never_loses_an_update() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let q = quota(1, Duration::from_secs(3_600));
    let done = std::sync::atomic::AtomicBool::new(false);
    /// Stops the sweeper however the test ends, a failed assertion included.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&done);
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                store.sweep();
            }
        });
        for round in 0..40 {
            let keys: Vec<String> = (0..500).map(|i| format!("{round}:{i}")).collect();
            let grants: u64 = std::thread::scope(|s| {
                let takers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            let mut grants = 0;
                            for key in &keys {
                                let cells = [Cell::new(key, 1, q)];
                                if now(store.acquire(&cells, None, Duration::ZERO)) == granted_now()
                                {
                                    grants += 1;
                                }
                            }
                            grants
                        })
                    })
                    .collect();
                for key in &keys {
                    now(store.charge(&format!("c-{key}"), 1, q));
                    now(store.hold(&format!("h-{key}"), q, q.tolerance()));
                }
                takers.into_iter().map(|h| h.join().unwrap()).sum()
            });
            // One unit per key, whoever got it; the charges and holds stuck.
            assert_eq!(grants, 500, "round {round}");
            for key in &keys {
                assert_eq!(remaining(&store, key, q), 0, "{key}");
                assert_eq!(remaining(&store, &format!("c-{key}"), q), 0, "c-{key}");
                assert_eq!(remaining(&store, &format!("h-{key}"), q), 0, "h-{key}");
            }
            // Every cell idle again: the sweeper clears them for the next round.
            clock
                .offset_ns
                .fetch_add(2 * 3_600 * 1_000_000_000, Ordering::Relaxed);
        }
    });
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

// Budget buckets.

const SEC: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(600);
/// A fixed bucket that never expires.
const UNENDING: Span = Span::Fixed { ttl: None };

fn fixed(ttl: Duration) -> Span {
    Span::Fixed { ttl: Some(ttl) }
}

fn rolling(window: Duration, slots: u32) -> Span {
    Span::Rolling { window, slots }
}

fn bal(spent: u64, reserved: u64) -> Balance {
    Balance { spent, reserved }
}

/// The live lease entries of the bucket `key`.
fn lease_entries<C: Clock>(store: &MemoryStore<C>, key: &str) -> usize {
    lock(&store.inner.buckets.get(key).unwrap()).leases.len()
}

#[tokio::test(start_paused = true)]
async fn budget_exact_limit_and_overspend() {
    let store = MemoryStore::new();
    let key = "tenant-a:day:20414";
    let day = fixed(Duration::from_secs(86_400));
    let one = |amount| [Bucket::new(key, amount, 100, day)];

    let first = granted(now(store.reserve(&one(30), LEASE)));
    let part = &first.parts()[0];
    assert_eq!((part.key(), part.amount(), part.span()), (key, 30, day));
    let second = granted(now(store.reserve(&one(70), LEASE)));
    // Exactly at the limit: one more unit does not fit.
    assert_eq!(
        now(store.reserve(&one(1), LEASE)),
        Reserve::Denied {
            index: 0,
            spent: 0,
            reserved: 100,
            retry_after: None
        }
    );

    // Actual under the estimate frees the difference, to the unit.
    assert_eq!(now(store.settle(&first, &[10])), [bal(10, 70)]);
    let third = granted(now(store.reserve(&one(20), LEASE)));
    assert!(matches!(
        now(store.reserve(&one(1), LEASE)),
        Reserve::Denied {
            spent: 10,
            reserved: 90,
            ..
        }
    ));

    // Actual over the estimate, even past the limit, is recorded.
    assert_eq!(now(store.settle(&second, &[90])), [bal(100, 20)]);
    assert_eq!(now(store.settle(&third, &[25])), [bal(125, 0)]);
    assert_eq!(now(store.balance(key, day)), bal(125, 0));
    // Over the limit: even nothing is refused.
    assert_eq!(
        now(store.reserve(&one(0), LEASE)),
        Reserve::Denied {
            index: 0,
            spent: 125,
            reserved: 0,
            retry_after: None
        }
    );

    // A soft limit only counts; other keys are other budgets; unknown keys
    // are empty.
    let soft = [Bucket::new(key, u64::MAX, u64::MAX, day)];
    let r = granted(now(store.reserve(&soft, LEASE)));
    assert_eq!(now(store.settle(&r, &[5])), [bal(130, 0)]);
    granted(now(store.reserve(
        &[Bucket::new("tenant-b:day:20414", 100, 100, day)],
        LEASE,
    )));
    assert_eq!(now(store.balance("nobody", day)), Balance::default());
}

#[tokio::test(start_paused = true)]
async fn budget_reserve_is_all_or_nothing() {
    let store = MemoryStore::new();
    let a = |amount| Bucket::new("a", amount, 100, UNENDING);
    let b = |amount| Bucket::new("b", amount, 50, UNENDING);

    let r = granted(now(store.reserve(&[a(30), b(40)], LEASE)));
    let parts: Vec<_> = r.parts().iter().map(|p| (p.key(), p.amount())).collect();
    assert_eq!(parts, [("a", 30), ("b", 40)]);

    // `b` has no room: `a` is left alone.
    assert_eq!(
        now(store.reserve(&[a(30), b(20)], LEASE)),
        Reserve::Denied {
            index: 1,
            spent: 0,
            reserved: 40,
            retry_after: None
        }
    );
    // The index is in the caller's order, whatever the keys' order.
    assert_eq!(
        now(store.reserve(&[b(5), a(80)], LEASE)),
        Reserve::Denied {
            index: 1,
            spent: 0,
            reserved: 30,
            retry_after: None
        }
    );
    // Both full: the first in the caller's order is named.
    assert!(matches!(
        now(store.reserve(&[b(50), a(80)], LEASE)),
        Reserve::Denied { index: 0, .. }
    ));
    assert_eq!(now(store.balance("a", UNENDING)), bal(0, 30));
    assert_eq!(now(store.balance("b", UNENDING)), bal(0, 40));

    // What fits everywhere goes everywhere.
    let more = granted(now(store.reserve(&[b(10), a(70)], LEASE)));
    assert_eq!(now(store.settle(&r, &[25, 45])), [bal(25, 70), bal(45, 10)]);
    assert_eq!(now(store.settle(&more, &[0, 0])), [bal(45, 0), bal(25, 0)]);

    // Nothing at all is granted with nothing reserved.
    let none = granted(now(store.reserve(&[], LEASE)));
    assert!(now(store.settle(&none, &[])).is_empty());
}

#[tokio::test(start_paused = true)]
async fn budget_argument_errors() {
    let store = MemoryStore::new();
    let twice = [
        Bucket::new("a", 1, 10, UNENDING),
        Bucket::new("b", 1, 10, UNENDING),
        Bucket::new("a", 1, 10, UNENDING),
    ];
    let err = store.reserve(&twice, LEASE).now_or_never().unwrap();
    assert!(err.unwrap_err().to_string().contains("share a key"));
    assert_eq!(now(store.balance("a", UNENDING)), Balance::default());

    let r = granted(now(store.reserve(&twice[..2], LEASE)));
    for actual in [&[][..], &[1], &[1, 2, 3]] {
        let err = store.settle(&r, actual).now_or_never().unwrap();
        assert!(err.unwrap_err().to_string().contains("one actual amount"));
    }
    // The failed settlements changed nothing.
    assert_eq!(now(store.balance("a", UNENDING)), bal(0, 1));
    assert_eq!(now(store.settle(&r, &[1, 2])), [bal(1, 0), bal(2, 0)]);
}

#[tokio::test(start_paused = true)]
async fn budget_lease_expiry_releases() {
    let store = MemoryStore::new();
    let one = |amount| [Bucket::new("b", amount, 100, UNENDING)];
    advance(Duration::from_millis(300)).await;

    // Lease ends are rounded up to the second: 10.3 s → 11 s.
    let lease = 10 * SEC;
    let first = granted(now(store.reserve(&one(30), lease)));
    assert_eq!(first.parts()[0].lease(), 11_000_000_000);
    advance(Duration::from_millis(200)).await;
    // Same second: the same entry.
    let second = granted(now(store.reserve(&one(20), lease)));
    assert_eq!(second.parts()[0].lease(), first.parts()[0].lease());
    assert_eq!(lease_entries(&store, "b"), 1);
    // A longer lease: another entry.
    let long = granted(now(store.reserve(&one(40), 60 * SEC)));
    assert_eq!(lease_entries(&store, "b"), 2);
    assert_eq!(now(store.balance("b", UNENDING)), bal(0, 90));

    // At least the lease, at most a second more.
    advance(Duration::from_millis(10_500) - NS).await;
    assert_eq!(now(store.balance("b", UNENDING)), bal(0, 90));
    advance(NS).await;
    assert_eq!(now(store.balance("b", UNENDING)), bal(0, 40));
    assert!(
        now(store.reserve(&one(60), lease))
            != Reserve::Denied {
                index: 0,
                spent: 0,
                reserved: 40,
                retry_after: None
            }
    );

    // An expired lease is not released again; its spend still counts.
    assert_eq!(now(store.settle(&first, &[25])), [bal(25, 100)]);
    assert_eq!(now(store.settle(&second, &[20])), [bal(45, 100)]);
    assert_eq!(now(store.settle(&long, &[40])), [bal(85, 60)]);
    advance(lease).await;
    assert_eq!(now(store.balance("b", UNENDING)), bal(85, 0));
    assert_eq!(lease_entries(&store, "b"), 0);
}

/// Settling one reservation twice (a caller bug) never drives `reserved`
/// below what the live entries hold.
#[tokio::test(start_paused = true)]
async fn budget_double_settle_never_underflows() {
    let store = MemoryStore::new();
    let one = |amount| [Bucket::new("b", amount, 100, UNENDING)];
    let r = granted(now(store.reserve(&one(30), LEASE)));
    let other = granted(now(store.reserve(&one(20), LEASE)));
    assert_eq!(now(store.settle(&r, &[30])), [bal(30, 20)]);
    // The second settlement releases what is left of the shared entry at
    // most; the spend is counted again (the caller said so).
    assert_eq!(now(store.settle(&r, &[0])), [bal(30, 0)]);
    assert_eq!(now(store.settle(&other, &[20])), [bal(50, 0)]);
    assert_eq!(lease_entries(&store, "b"), 0);

    // Alone in its entry, a reservation settled twice releases once.
    let r = granted(now(store.reserve(&one(10), LEASE)));
    advance(2 * SEC).await;
    let later = granted(now(store.reserve(&one(5), LEASE)));
    assert_eq!(now(store.settle(&r, &[0])), [bal(50, 5)]);
    assert_eq!(now(store.settle(&r, &[0])), [bal(50, 5)]);
    assert_eq!(now(store.settle(&later, &[0])), [bal(50, 0)]);
}

#[tokio::test(start_paused = true)]
async fn budget_fixed_ttl_starts_new_incarnations() {
    let store = MemoryStore::new();
    let hour = Duration::from_secs(3_600);
    let b = |amount, ttl| [Bucket::new("b", amount, 100, fixed(ttl))];

    let early = granted(now(store.reserve(&b(60, hour), LEASE)));
    advance(hour / 2).await;
    // The ttl runs from creation; a later span does not change it.
    let late = granted(now(store.reserve(&b(40, 10 * hour), 2 * hour)));
    assert_eq!(late.parts()[0].span(), fixed(hour));
    assert_eq!(late.parts()[0].created(), early.parts()[0].created());
    assert_eq!(now(store.settle(&early, &[50])), [bal(50, 40)]);

    advance(hour / 2 - NS).await;
    assert_eq!(now(store.balance("b", fixed(hour))), bal(50, 40));
    advance(NS).await;
    assert_eq!(now(store.balance("b", fixed(hour))), Balance::default());

    // The next window under the same key starts empty, as a new incarnation...
    let fresh = granted(now(store.reserve(&b(100, hour), LEASE)));
    assert_ne!(fresh.parts()[0].created(), late.parts()[0].created());
    // ...and a late settlement from the old one changes nothing in it.
    assert_eq!(now(store.settle(&late, &[40])), [bal(0, 100)]);
    assert_eq!(now(store.settle(&fresh, &[1])), [bal(1, 0)]);

    // Expired and swept: settling is a no-op, and makes nothing.
    advance(hour).await;
    assert_eq!(store.sweep(), 1);
    assert_eq!(now(store.settle(&fresh, &[7])), [Balance::default()]);
    assert!(store.is_empty());
}

#[tokio::test(start_paused = true)]
async fn budget_rolling_window() {
    let store = MemoryStore::new();
    // Six slots of 10 s.
    let minute = rolling(Duration::from_secs(60), 6);
    let one = |amount| [Bucket::new("rpm", amount, 100, minute)];

    // 30 spent at 0 s (slot 0), 50 at 25 s (slot 2).
    let r = granted(now(store.reserve(&one(30), LEASE)));
    assert_eq!(r.parts()[0].span(), minute);
    now(store.settle(&r, &[30]));
    advance(25 * SEC).await;
    let r = granted(now(store.reserve(&one(50), LEASE)));
    assert_eq!(now(store.settle(&r, &[50])), [bal(80, 0)]);

    // Denied until the oldest spend stops counting: slot 0 ends at 10 s and
    // counts for a window more, until 70 s.
    assert_eq!(
        now(store.reserve(&one(21), LEASE)),
        Reserve::Denied {
            index: 0,
            spent: 80,
            reserved: 0,
            retry_after: Some(45 * SEC)
        }
    );
    advance(45 * SEC - NS).await;
    assert_eq!(now(store.balance("rpm", minute)), bal(80, 0));
    assert!(matches!(
        now(store.reserve(&one(21), LEASE)),
        Reserve::Denied {
            retry_after: Some(NS),
            ..
        }
    ));
    advance(NS).await;
    // 70 s: the 30 left, 70 s after it was spent (window + one slot).
    assert_eq!(now(store.balance("rpm", minute)), bal(50, 0));
    let r = granted(now(store.reserve(&one(21), LEASE)));

    // The 50 spent at 25 s leaves at 90 s: 65 s later, within one slot of
    // the window.
    advance(20 * SEC - NS).await;
    assert_eq!(now(store.settle(&r, &[0])), [bal(50, 0)]);
    advance(NS).await;
    assert_eq!(now(store.balance("rpm", minute)), Balance::default());

    // Spend settled at the very end of a slot counts for just over the window.
    advance(10 * SEC - NS).await; // 99.999… s, the end of slot 9
    let r = granted(now(store.reserve(&one(100), LEASE)));
    now(store.settle(&r, &[100]));
    advance(60 * SEC).await;
    assert_eq!(now(store.balance("rpm", minute)), bal(100, 0));
    advance(NS).await;
    assert_eq!(now(store.balance("rpm", minute)), Balance::default());

    // Only reservations in the way: retry when the first lease ends.
    let r = granted(now(store.reserve(&one(100), 30 * SEC)));
    let Reserve::Denied { retry_after, .. } = now(store.reserve(&one(1), LEASE)) else {
        panic!("full");
    };
    // It is 160 s: the lease ends at 190 s, a whole second.
    assert_eq!(retry_after, Some(30 * SEC));
    now(store.settle(&r, &[0]));
}

#[tokio::test(start_paused = true)]
async fn budget_rolling_slots_round_down() {
    let store = MemoryStore::new();
    // 10 s in 3 slots: slots of 3.333… s, rounded down to whole nanoseconds.
    let span = rolling(Duration::from_secs(10), 3);
    let len = Duration::from_nanos(3_333_333_333);
    let r = granted(now(store.reserve(&[Bucket::new("r", 1, 1, span)], LEASE)));
    now(store.settle(&r, &[1]));
    // Slot 0 ends at `len`, and counts for the window after that.
    advance(len + Duration::from_secs(10) - NS).await;
    assert_eq!(now(store.balance("r", span)).spent, 1);
    advance(NS).await;
    assert_eq!(now(store.balance("r", span)).spent, 0);
}

#[tokio::test(start_paused = true)]
async fn budget_sweep_removes_only_idle_buckets() {
    let store = MemoryStore::new();
    let window = Duration::from_secs(60);
    let reserve =
        |key, span, lease| granted(now(store.reserve(&[Bucket::new(key, 1, 10, span)], lease)));
    reserve("fixed-live", fixed(10 * window), LEASE);
    reserve("fixed-dead", fixed(window), LEASE);
    reserve("forever", UNENDING, SEC);
    let lost = reserve("rolling-leased", rolling(window, 4), 10 * window);
    let spent = reserve("rolling-spent", rolling(window, 4), LEASE);
    let idle = reserve("rolling-idle", rolling(window, 4), SEC);
    let dropped = reserve("rolling-dropped", rolling(window, 4), SEC);
    assert_eq!(store.len(), 7);

    advance(window).await;
    now(store.settle(&spent, &[1]));
    now(store.settle(&idle, &[0]));
    drop(dropped);
    // Empty rolling buckets with no live lease, and expired fixed ones.
    assert_eq!(store.sweep(), 3, "{store:?}");
    for key in ["fixed-live", "forever", "rolling-leased", "rolling-spent"] {
        assert!(store.inner.buckets.contains_key(key), "{key}");
    }
    assert_eq!(
        now(store.balance("rolling-leased", rolling(window, 4))),
        bal(0, 1)
    );
    assert_eq!(
        now(store.balance("rolling-spent", rolling(window, 4))),
        bal(1, 0)
    );

    // Spend settled after the bucket was swept still counts.
    now(store.settle(&idle, &[3]));
    assert_eq!(
        now(store.balance("rolling-idle", rolling(window, 4))),
        bal(3, 0)
    );
    drop(lost);
}

/// A sweep running while reserves make new buckets never drops one between
/// lookup and lock (which would lose its reservation, and let a second
/// caller find a fresh, empty bucket).
#[test]
fn budget_sweep_never_loses_a_reservation() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone());
    let hour = Duration::from_secs(3_600);
    // Rolling buckets are idle, so swept, until a reservation lands.
    let span = rolling(hour, 4);
    let done = std::sync::atomic::AtomicBool::new(false);
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&done);
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                store.sweep();
            }
        });
        for round in 0..40 {
            let keys: Vec<String> = (0..500).map(|i| format!("{round}:{i}")).collect();
            let grants: usize = std::thread::scope(|s| {
                let reservers: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            keys.iter()
                                .filter(|key| {
                                    let b = [Bucket::new(key, 1, 1, span)];
                                    matches!(now(store.reserve(&b, hour)), Reserve::Granted(_))
                                })
                                .count()
                        })
                    })
                    .collect();
                reservers.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(grants, 500, "round {round}");
            for key in &keys {
                assert_eq!(now(store.balance(key, span)), bal(0, 1), "{key}");
            }
            // Every lease over: the sweeper clears them for the next round.
            clock
                .offset_ns
                .fetch_add(2 * 3_600 * 1_000_000_000, Ordering::Relaxed);
        }
    });
}

/// 1,000 tasks reserve one unit in a global bucket and in their group's:
/// exactly what fits is granted, and the totals add up once settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_concurrent_global_and_groups() {
    const GROUP_LIMITS: [u64; 4] = [100, 150, 200, 400];
    const GLOBAL: u64 = 600;
    let store = MemoryStore::new();
    let groups = ["group-0", "group-1", "group-2", "group-3"];
    let hour = rolling(Duration::from_secs(3_600), 60);
    let tasks: Vec<_> = (0..1_000usize)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let g = i % 4;
                let buckets = [
                    Bucket::new("global", 1, GLOBAL, UNENDING),
                    Bucket::new(groups[g], 1, GROUP_LIMITS[g], hour),
                ];
                let Reserve::Granted(r) = store.reserve(&buckets, LEASE).await.unwrap() else {
                    return None;
                };
                tokio::task::yield_now().await;
                let b = store.settle(&r, &[1, 1]).await.unwrap();
                assert!(b[0].spent + b[0].reserved <= GLOBAL, "{b:?}");
                assert!(b[1].spent + b[1].reserved <= GROUP_LIMITS[g], "{b:?}");
                Some(g)
            })
        })
        .collect();
    let mut per_group = [0u64; 4];
    for t in tasks {
        if let Some(g) = t.await.unwrap() {
            per_group[g] += 1;
        }
    }
    // 250 tasks per group, 700 that fit their groups: the global limit
    // binds. Had it not filled up, every refusal would be a full group's,
    // and group 3 (250 tasks under 400) would have taken all: 700 > 600.
    let granted: u64 = per_group.iter().sum();
    assert_eq!(granted, GLOBAL, "{per_group:?}");
    for (g, &n) in per_group.iter().enumerate() {
        assert!(n <= GROUP_LIMITS[g], "{per_group:?}");
        assert_eq!(now(store.balance(groups[g], hour)), bal(n, 0));
    }
    assert_eq!(now(store.balance("global", UNENDING)), bal(GLOBAL, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Concurrent reservations on plain threads never grant more than the
    /// limit in total, and never deny one that would have fitted.
    #[test]
    fn budget_concurrent_reservations_never_overspend(
        amounts in proptest::collection::vec(1..=50u64, 1..300),
        limit in 0..=2_000u64,
    ) {
        let store = MemoryStore::with_clock(ManualClock::new());
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
                            let b = [Bucket::new("budget", a, limit, UNENDING)];
                            match now(store.reserve(&b, LEASE)) {
                                Reserve::Granted(r) => granted += r.parts()[0].amount(),
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
        prop_assert_eq!(now(store.balance("budget", UNENDING)), bal(0, total));
        // Reservations only grow here: a denial did not fit at the end either.
        for a in results.iter().flat_map(|r| &r.1) {
            prop_assert!(total + a > limit, "{a} was denied but fits: {total} of {limit}");
        }
    }

    /// With settlements at or under the reservation running concurrently,
    /// spent plus reserved never exceeds the limit, in either bucket, and
    /// every settlement counts.
    #[test]
    fn budget_concurrent_reserve_and_settle(
        jobs in proptest::collection::vec((1..=50u64, 0..=100u64), 1..300),
        limit in 0..=2_000u64,
    ) {
        let store = MemoryStore::with_clock(ManualClock::new());
        let hour = rolling(Duration::from_secs(3_600), 60);
        let chunk = jobs.len().div_ceil(4);
        let spent: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .chunks(chunk)
                .map(|jobs| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mut spent = 0;
                        for &(amount, percent) in jobs {
                            let b = [
                                Bucket::new("fixed", amount, limit, UNENDING),
                                Bucket::new("rolling", amount, limit, hour),
                            ];
                            if let Reserve::Granted(r) = now(store.reserve(&b, LEASE)) {
                                let actual = amount * percent / 100;
                                for b in now(store.settle(&r, &[actual, actual])) {
                                    assert!(b.spent + b.reserved <= limit, "{b:?} over {limit}");
                                }
                                spent += actual;
                            }
                        }
                        spent
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        prop_assert_eq!(now(store.balance("fixed", UNENDING)), bal(spent, 0));
        prop_assert_eq!(now(store.balance("rolling", hour)), bal(spent, 0));
    }
}

/// Operations of the budget property test.
#[derive(Debug, Clone)]
enum BudgetOp {
    /// Reserve `amount` in the fixed bucket and, if `rolling`, in the
    /// rolling one too, for `lease_s` seconds.
    Reserve {
        amount: u64,
        rolling: bool,
        lease_s: u64,
    },
    /// Settle the `pick`-th reservation still open, `percent` of its amount.
    Settle { pick: usize, percent: u64 },
    /// Advance time.
    Advance { ms: u64 },
}

fn budget_ops() -> impl Strategy<Value = Vec<BudgetOp>> {
    let op = prop_oneof![
        4 => (0..=40u64, any::<bool>(), 1..=60u64).prop_map(|(amount, rolling, lease_s)| {
            BudgetOp::Reserve { amount, rolling, lease_s }
        }),
        3 => (any::<usize>(), 0..=100u64).prop_map(|(pick, percent)| BudgetOp::Settle { pick, percent }),
        2 => (0..=20_000u64).prop_map(|ms| BudgetOp::Advance { ms }),
    ];
    proptest::collection::vec(op, 1..120)
}

/// An open reservation of the property test, as the model sees it.
struct Open {
    reservation: Reservation,
    amount: u64,
    lease_end: u64,
}

/// Runs `ops` against a fixed bucket (limit `limit`, never expiring) and a
/// rolling one (limit `limit`, 30 s in 3 slots), checking against a model of
/// the fixed bucket after every step.
async fn run_budget(limit: u64, ops: Vec<BudgetOp>) -> Result<(), TestCaseError> {
    let store = MemoryStore::new();
    let start = Instant::now();
    let roll = rolling(Duration::from_secs(30), 3);
    let ns = || u64::try_from((Instant::now() - start).as_nanos()).unwrap();
    let mut open: Vec<Open> = Vec::new();
    let (mut spent, mut late) = (0u64, false);
    for op in ops {
        match op {
            BudgetOp::Reserve {
                amount,
                rolling: with_roll,
                lease_s,
            } => {
                let lease = Duration::from_secs(lease_s);
                let mut buckets = vec![Bucket::new("fixed", amount, limit, UNENDING)];
                if with_roll {
                    buckets.push(Bucket::new("rolling", amount, limit, roll));
                }
                let model_reserved: u64 = open
                    .iter()
                    .filter(|o| o.lease_end > ns())
                    .map(|o| o.amount)
                    .sum();
                let fits = spent + model_reserved + amount <= limit;
                match now(store.reserve(&buckets, lease)) {
                    Reserve::Granted(r) => {
                        prop_assert!(fits, "granted past the model's limit");
                        let lease_end = (ns() + lease_s * 1_000_000_000).div_ceil(1_000_000_000)
                            * 1_000_000_000;
                        prop_assert_eq!(r.parts()[0].lease(), lease_end);
                        open.push(Open {
                            reservation: r,
                            amount,
                            lease_end,
                        });
                    }
                    Reserve::Denied {
                        index,
                        spent: s,
                        reserved,
                        ..
                    } => {
                        if index == 0 {
                            prop_assert!(!fits, "denied but fits");
                            prop_assert_eq!((s, reserved), (spent, model_reserved));
                        } else {
                            prop_assert!(with_roll && s + reserved + amount > limit);
                        }
                    }
                }
            }
            BudgetOp::Settle { pick, percent } => {
                if open.is_empty() {
                    continue;
                }
                let o = open.remove(pick % open.len());
                let actual = o.amount * percent / 100;
                late |= o.lease_end <= ns();
                let actuals = vec![actual; o.reservation.parts().len()];
                now(store.settle(&o.reservation, &actuals));
                spent += actual;
            }
            BudgetOp::Advance { ms } => advance(Duration::from_millis(ms)).await,
        }
        let model_reserved: u64 = open
            .iter()
            .filter(|o| o.lease_end > ns())
            .map(|o| o.amount)
            .sum();
        let fixed = now(store.balance("fixed", UNENDING));
        prop_assert_eq!(fixed, bal(spent, model_reserved));
        // Only a settlement after its lease ended can push spend past the
        // limit when every actual is at most its reservation.
        if !late {
            prop_assert!(fixed.spent + fixed.reserved <= limit, "{fixed:?}");
            let r = now(store.balance("rolling", roll));
            prop_assert!(r.spent + r.reserved <= limit, "{r:?}");
        }
    }
    for o in open.drain(..) {
        let zeros = vec![0; o.reservation.parts().len()];
        now(store.settle(&o.reservation, &zeros));
    }
    prop_assert_eq!(now(store.balance("fixed", UNENDING)).reserved, 0);
    prop_assert_eq!(now(store.balance("rolling", roll)).reserved, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// With every actual at most its reservation and settled within its
    /// lease, `spent + reserved` never exceeds the limit; reservations fit
    /// exactly when the model says; `reserved` counts the live leases and
    /// returns to zero once everything is settled.
    #[test]
    fn budget_reservations_never_overcommit(limit in 0..=200u64, ops in budget_ops()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_budget(limit, ops))?;
    }
}
