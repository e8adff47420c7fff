//! One conformance suite for every [`Store`]: the same generic tests run
//! against [`MemoryStore`] and, with the `redis` feature, against
//! `RedisStore` on a real server (see `support/redis.rs`: without one, the
//! Redis half says loudly that it was skipped).
//!
//! Time is a [`ManualClock`] that the tests advance by hand, for both
//! stores. Not tokio's paused time: while a real socket read is pending,
//! paused time jumps to the next timer, which is the Redis call's timeout.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use llm_tower::clock::Clock;
use llm_tower::store::{
    Acquire, Balance, Bucket, Cell, MemoryStore, Quota, Reservation, Reserve, Span, Store, Take,
};
use tokio::time::Instant;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;
#[cfg(feature = "redis-tls")]
#[path = "support/redis_tls.rs"]
mod redis_tls_support;

const SEC: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A clock that moves only when told. Its wall time starts at midnight UTC
/// (day 20,000), so that rolling slots and lease ends, aligned on the epoch
/// in Redis and on the store's creation in memory, fall alike.
#[derive(Debug, Clone)]
struct ManualClock {
    base: Instant,
    offset_ns: Arc<AtomicU64>,
}

const WALL_BASE: Duration = Duration::from_secs(20_000 * 86_400);

impl ManualClock {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            offset_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    fn advance(&self, d: Duration) {
        self.offset_ns
            .fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    fn offset(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.offset()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + WALL_BASE + self.offset()
    }
}

/// Where stores come from: every store opened from one backend shares the
/// same state (for Redis, a new connection to the same server and prefix:
/// another process).
trait Backend: Send + Sync + 'static {
    type S: Store + Clone;
    fn open(&self) -> impl Future<Output = Self::S> + Send;
}

struct Memory(MemoryStore<ManualClock>);

impl Memory {
    fn new(clock: ManualClock) -> Self {
        Memory(MemoryStore::with_clock(clock))
    }
}

impl Backend for Memory {
    type S = MemoryStore<ManualClock>;
    async fn open(&self) -> Self::S {
        self.0.clone()
    }
}

/// A Redis server, or (`cluster`) the nodes of a Redis Cluster; over TLS
/// with `tls_root`, the CA to trust.
#[cfg(feature = "redis")]
struct Redis {
    urls: Vec<String>,
    cluster: bool,
    tls_root: Option<String>,
    prefix: String,
    clock: ManualClock,
}

#[cfg(feature = "redis")]
impl Redis {
    fn new(url: &str, test: &str, clock: ManualClock) -> Self {
        Redis {
            urls: vec![url.to_owned()],
            cluster: false,
            tls_root: None,
            prefix: redis_support::unique_prefix(test),
            clock,
        }
    }

    #[cfg(feature = "redis-tls")]
    fn tls(url: &str, ca: &str, test: &str, clock: ManualClock) -> Self {
        Redis {
            tls_root: Some(ca.to_owned()),
            ..Redis::new(url, test, clock)
        }
    }

    #[cfg(feature = "redis-cluster")]
    fn cluster(urls: &[String], test: &str, clock: ManualClock) -> Self {
        Redis {
            urls: urls.to_vec(),
            cluster: true,
            tls_root: None,
            prefix: redis_support::unique_prefix(test),
            clock,
        }
    }
}

/// A plain connection to the server (or node) at `url`, to look behind
/// the store.
#[cfg(feature = "redis")]
async fn raw(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[cfg(feature = "redis")]
impl Backend for Redis {
    type S = llm_tower::store::RedisStore<ManualClock>;
    async fn open(&self) -> Self::S {
        #[cfg(feature = "redis-cluster")]
        let builder = if self.cluster {
            llm_tower::store::RedisStore::cluster_builder(&self.urls)
        } else {
            llm_tower::store::RedisStore::builder(&self.urls[0])
        };
        #[cfg(not(feature = "redis-cluster"))]
        let builder = llm_tower::store::RedisStore::builder(&self.urls[0]);
        #[cfg(feature = "redis-tls")]
        let builder = match &self.tls_root {
            Some(ca) => builder.tls_root_certificate(ca.clone()),
            None => builder,
        };
        builder
            .prefix(self.prefix.clone())
            .clock(self.clock.clone())
            // Generous: hundreds of concurrent calls on a loaded machine.
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the test server")
    }
}

fn quota(limit: u64, window: Duration) -> Quota {
    Quota::new(limit, window).unwrap()
}

fn bal(spent: u64, reserved: u64) -> Balance {
    Balance { spent, reserved }
}

fn granted(r: Reserve) -> Reservation {
    match r {
        Reserve::Granted(r) => r,
        denied => panic!("expected a reservation, got {denied:?}"),
    }
}

async fn remaining<S: Store>(store: &S, key: &str, q: Quota) -> u64 {
    match store.take(key, 0, q).await.unwrap() {
        Take::Allowed { remaining } => remaining,
        other => panic!("a take of 0 from {key}: {other:?}"),
    }
}

// ---------------------------------------------------------------- GCRA

async fn gcra_exact_schedule<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    // T = 100 ms, a burst of 3.
    let q = quota(3, 300 * MS);
    for left in [2, 1, 0] {
        assert_eq!(
            store.take("k", 1, q).await.unwrap(),
            Take::Allowed { remaining: left }
        );
    }
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied {
            retry_after: 100 * MS
        }
    );
    clock.advance(40 * MS);
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Denied {
            retry_after: 60 * MS
        }
    );
    clock.advance(60 * MS);
    assert_eq!(
        store.take("k", 1, q).await.unwrap(),
        Take::Allowed { remaining: 0 }
    );
    // Weighted: after a whole window, 2 then 2 more is one interval early.
    clock.advance(300 * MS);
    assert_eq!(
        store.take("k", 2, q).await.unwrap(),
        Take::Allowed { remaining: 1 }
    );
    assert_eq!(
        store.take("k", 2, q).await.unwrap(),
        Take::Denied {
            retry_after: 100 * MS
        }
    );
    assert_eq!(store.take("k", 4, q).await.unwrap(), Take::Never);
    assert_eq!(remaining(&store, "k", q).await, 1);
    // A missing key is full; reading it takes nothing.
    assert_eq!(remaining(&store, "other", q).await, 3);
    // Over any interval of length d, at most limit + d/T pass.
    let mut passed = 0;
    for _ in 0..100 {
        if store.take("steady", 1, q).await.unwrap().is_allowed() {
            passed += 1;
        }
        clock.advance(10 * MS);
    }
    // 3 at once, then one per 100 ms over 1 s (the last advance is after
    // the last take).
    assert_eq!(passed, 3 + 9);
}

async fn refund_charge_hold<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    let q = quota(10, 10 * SEC);
    assert_eq!(
        store.take("k", 6, q).await.unwrap(),
        Take::Allowed { remaining: 4 }
    );
    store.refund("k", 2, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q).await, 6);
    store.refund("k", 100, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q).await, 10, "never more than full");
    store.refund("missing", 5, q).await.unwrap();
    assert_eq!(remaining(&store, "missing", q).await, 10);

    // Charge takes without asking, past empty.
    store.charge("k", 12, q).await.unwrap();
    assert_eq!(
        store.take("k", 0, q).await.unwrap(),
        Take::Denied {
            retry_after: 2 * SEC
        }
    );
    clock.advance(2 * SEC);
    assert_eq!(remaining(&store, "k", q).await, 0);
    store.charge("k", 0, q).await.unwrap();
    assert_eq!(remaining(&store, "k", q).await, 0);

    // Hold raises the arrival time, never lowers it.
    store.hold("h", q, 4 * SEC).await.unwrap();
    store.hold("h", q, SEC).await.unwrap();
    assert_eq!(remaining(&store, "h", q).await, 6);
    store.hold("h", q, Duration::ZERO).await.unwrap();
    assert_eq!(remaining(&store, "h", q).await, 6);
    clock.advance(SEC);
    assert_eq!(remaining(&store, "h", q).await, 7);
}

// ---------------------------------------------------------------- acquire

async fn acquire_queue_and_all_or_nothing<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    let a = quota(2, 2 * SEC);
    let bq = quota(10, 10 * SEC);
    let both = [Cell::new("a", 1, a), Cell::new("b", 1, bq)];
    // A place in the queue: waits 0, 0, then one per second.
    for wait in [0, 0, 1, 2] {
        assert_eq!(
            store.acquire(&both, None, 5 * SEC).await.unwrap(),
            Acquire::Granted { wait: wait * SEC }
        );
    }
    assert_eq!(
        store.acquire(&both, None, SEC).await.unwrap(),
        Acquire::Denied {
            retry_after: 3 * SEC
        }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("b", 1, bq), Cell::new("a", 3, a)], None, SEC)
            .await
            .unwrap(),
        Acquire::Never { index: 1 }
    );
    assert!(
        store
            .acquire(&[Cell::new("b", 1, bq), Cell::new("b", 1, bq)], None, SEC)
            .await
            .is_err(),
        "a key twice"
    );
    // Refused calls took nothing from `b`.
    assert_eq!(remaining(&store, "b", bq).await, 6);

    // All or nothing: `full` refuses, `empty` is left alone.
    let one = quota(1, 10 * SEC);
    store.charge("full", 1, one).await.unwrap();
    assert_eq!(
        store
            .acquire(
                &[Cell::new("empty", 3, bq), Cell::new("full", 1, one)],
                None,
                Duration::ZERO
            )
            .await
            .unwrap(),
        Acquire::Denied {
            retry_after: 10 * SEC
        }
    );
    assert_eq!(remaining(&store, "empty", bq).await, 10);

    // Within the horizon, the wait is granted and the cells are taken as
    // if the call arrived then: the next one queues behind it.
    assert_eq!(
        store
            .acquire(&[Cell::new("full", 1, one)], None, 10 * SEC)
            .await
            .unwrap(),
        Acquire::Granted { wait: 10 * SEC }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("full", 1, one)], None, 10 * SEC)
            .await
            .unwrap(),
        Acquire::Denied {
            retry_after: 20 * SEC
        }
    );
    clock.advance(20 * SEC);
    assert_eq!(
        store
            .acquire(&[Cell::new("full", 1, one)], None, Duration::ZERO)
            .await
            .unwrap(),
        Acquire::Granted {
            wait: Duration::ZERO
        }
    );
}

async fn acquire_keep_and_pause<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    let q = quota(10, 10 * SEC);
    let now = Duration::ZERO;
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 5, q).keep(5)], None, now)
            .await
            .unwrap(),
        Acquire::Granted { wait: now }
    );
    // 5 left: 5 more keeping 1 for others waits a second.
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 5, q).keep(1)], None, now)
            .await
            .unwrap(),
        Acquire::Denied { retry_after: SEC }
    );
    // `keep` beyond `limit − amount` counts as `limit − amount`.
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 5, q).keep(100)], None, now)
            .await
            .unwrap(),
        Acquire::Denied {
            retry_after: 5 * SEC
        }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("k", 5, q)], None, now)
            .await
            .unwrap(),
        Acquire::Granted { wait: now }
    );

    // The pause flag: nothing starts before it ends.
    store.set_flag("pause", 7 * SEC).await.unwrap();
    assert_eq!(
        store
            .acquire(&[Cell::new("p", 1, q)], Some("pause"), 5 * SEC)
            .await
            .unwrap(),
        Acquire::Denied {
            retry_after: 7 * SEC
        }
    );
    assert_eq!(
        remaining(&store, "p", q).await,
        10,
        "a denial takes nothing"
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("p", 1, q)], Some("pause"), 10 * SEC)
            .await
            .unwrap(),
        Acquire::Granted { wait: 7 * SEC }
    );
    clock.advance(3 * SEC);
    assert_eq!(
        store
            .acquire(&[Cell::new("p2", 1, q)], Some("pause"), 10 * SEC)
            .await
            .unwrap(),
        Acquire::Granted { wait: 4 * SEC }
    );
    store.clear_flag("pause").await.unwrap();
    assert_eq!(
        store
            .acquire(&[Cell::new("p3", 1, q)], Some("pause"), Duration::ZERO)
            .await
            .unwrap(),
        Acquire::Granted { wait: now }
    );
    // A refund gives back what a waiter took.
    assert_eq!(
        store
            .acquire(&[Cell::new("r", 10, q)], None, now)
            .await
            .unwrap(),
        Acquire::Granted { wait: now }
    );
    assert_eq!(
        store
            .acquire(&[Cell::new("r", 3, q)], None, 10 * SEC)
            .await
            .unwrap(),
        Acquire::Granted { wait: 3 * SEC }
    );
    store.refund("r", 3, q).await.unwrap();
    assert_eq!(
        store
            .acquire(&[Cell::new("r", 3, q)], None, 10 * SEC)
            .await
            .unwrap(),
        Acquire::Granted { wait: 3 * SEC }
    );
}

// ---------------------------------------------------------------- budgets

async fn reserve_and_settle_exactly_once<B: Backend>(b: B, _clock: ManualClock) {
    let store = b.open().await;
    let total = Span::Fixed { ttl: None };
    let lease = 600 * SEC;
    let r = granted(
        store
            .reserve(&[Bucket::new("t", 60, 100, total)], lease)
            .await
            .unwrap(),
    );
    assert_eq!(
        store
            .reserve(&[Bucket::new("t", 50, 100, total)], lease)
            .await
            .unwrap(),
        Reserve::Denied {
            index: 0,
            spent: 0,
            reserved: 60,
            retry_after: None
        }
    );
    assert!(
        store.settle(&r, &[]).await.is_err(),
        "one amount per bucket"
    );
    assert_eq!(store.settle(&r, &[40]).await.unwrap(), [bal(40, 0)]);
    // Settled twice (a caller's bug): `reserved` never drops below zero,
    // though a reservation sharing the lease entry (the same second) is
    // released early.
    let other = granted(
        store
            .reserve(&[Bucket::new("t", 10, 100, total)], lease)
            .await
            .unwrap(),
    );
    assert_eq!(store.settle(&r, &[0]).await.unwrap(), [bal(40, 0)]);
    assert_eq!(store.settle(&other, &[10]).await.unwrap(), [bal(50, 0)]);
    // The exact limit fits; one more does not.
    let r = granted(
        store
            .reserve(&[Bucket::new("t", 50, 100, total)], lease)
            .await
            .unwrap(),
    );
    // Overspend is recorded: money spent is spent.
    assert_eq!(store.settle(&r, &[70]).await.unwrap(), [bal(120, 0)]);
    assert!(matches!(
        store
            .reserve(&[Bucket::new("t", 0, 100, total)], lease)
            .await
            .unwrap(),
        Reserve::Denied { spent: 120, .. }
    ));
    assert_eq!(store.balance("t", total).await.unwrap(), bal(120, 0));
    assert_eq!(store.balance("none", total).await.unwrap(), bal(0, 0));

    // All or nothing across buckets, the first full one named.
    let two = |a, b| {
        [
            Bucket::new("x", a, 10, total),
            Bucket::new("y", b, 10, total),
        ]
    };
    let r = granted(store.reserve(&two(4, 8), lease).await.unwrap());
    assert_eq!(
        store.reserve(&two(4, 4), lease).await.unwrap(),
        Reserve::Denied {
            index: 1,
            spent: 0,
            reserved: 8,
            retry_after: None
        }
    );
    assert_eq!(store.balance("x", total).await.unwrap(), bal(0, 4));
    assert!(
        store
            .reserve(&[two(1, 1)[0], two(1, 1)[0]], lease)
            .await
            .is_err(),
        "a key twice"
    );
    let parts: Vec<_> = r.parts().iter().map(|p| (p.key(), p.amount())).collect();
    assert_eq!(parts, [("x", 4), ("y", 8)]);
    assert_eq!(
        store.settle(&r, &[1, 2]).await.unwrap(),
        [bal(1, 0), bal(2, 0)]
    );
    // A soft limit only counts.
    let soft = granted(
        store
            .reserve(&[Bucket::new("soft", 1 << 40, u64::MAX, total)], lease)
            .await
            .unwrap(),
    );
    assert_eq!(
        store.settle(&soft, &[1 << 41]).await.unwrap(),
        [bal(1 << 41, 0)]
    );
}

async fn leases_expire<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    let total = Span::Fixed { ttl: None };
    let leased = granted(
        store
            .reserve(&[Bucket::new("l", 40, 50, total)], 10 * SEC)
            .await
            .unwrap(),
    );
    clock.advance(9 * SEC);
    assert_eq!(store.balance("l", total).await.unwrap(), bal(0, 40));
    clock.advance(SEC);
    assert_eq!(store.balance("l", total).await.unwrap(), bal(0, 0));
    let next = granted(
        store
            .reserve(&[Bucket::new("l", 50, 50, total)], 600 * SEC)
            .await
            .unwrap(),
    );
    // The late settlement records its spend, and releases nothing else.
    assert_eq!(store.settle(&leased, &[5]).await.unwrap(), [bal(5, 50)]);
    assert_eq!(store.settle(&next, &[0]).await.unwrap(), [bal(5, 0)]);

    // Lease ends are rounded up to the second: 10 s from 0.5 s ends at 11 s.
    clock.advance(500 * MS);
    let _ = granted(
        store
            .reserve(&[Bucket::new("round", 7, 50, total)], 10 * SEC)
            .await
            .unwrap(),
    );
    clock.advance(10 * SEC + 400 * MS);
    assert_eq!(store.balance("round", total).await.unwrap(), bal(0, 7));
    clock.advance(100 * MS);
    assert_eq!(store.balance("round", total).await.unwrap(), bal(0, 0));
}

async fn fixed_spans_and_incarnations<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    let day = Span::Fixed {
        ttl: Some(86_400 * SEC),
    };
    let lease = 600 * SEC;
    let window = |amount| [Bucket::new("w", amount, 50, day)];
    let late = granted(store.reserve(&window(5), lease).await.unwrap());
    let on_time = granted(store.reserve(&window(6), lease).await.unwrap());
    assert_eq!(store.settle(&on_time, &[6]).await.unwrap(), [bal(6, 5)]);
    clock.advance(86_400 * SEC - SEC);
    assert_eq!(store.balance("w", day).await.unwrap(), bal(6, 0));
    clock.advance(SEC);
    assert_eq!(store.balance("w", day).await.unwrap(), bal(0, 0), "expired");
    let next = granted(store.reserve(&window(1), lease).await.unwrap());
    assert_ne!(next.parts()[0].created(), late.parts()[0].created());
    assert_eq!(
        store.settle(&late, &[5]).await.unwrap(),
        [bal(0, 1)],
        "not counted in the new window"
    );
    assert_eq!(store.settle(&next, &[1]).await.unwrap(), [bal(1, 0)]);
}

async fn rolling_windows<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    let minute = Span::Rolling {
        window: 60 * SEC,
        slots: 6,
    };
    let lease = 600 * SEC;
    clock.advance(SEC);
    let r = granted(
        store
            .reserve(&[Bucket::new("m", 30, 100, minute)], lease)
            .await
            .unwrap(),
    );
    // With nothing spent yet, the refusal waits for the first lease.
    assert_eq!(
        store
            .reserve(&[Bucket::new("m", 71, 100, minute)], lease)
            .await
            .unwrap(),
        Reserve::Denied {
            index: 0,
            spent: 0,
            reserved: 30,
            retry_after: Some(lease)
        }
    );
    assert_eq!(store.settle(&r, &[70]).await.unwrap(), [bal(70, 0)]);
    // Spent at 1 s: slot 0 (0–10 s), which counts until 70 s.
    clock.advance(10 * SEC);
    assert_eq!(
        store
            .reserve(&[Bucket::new("m", 31, 100, minute)], lease)
            .await
            .unwrap(),
        Reserve::Denied {
            index: 0,
            spent: 70,
            reserved: 0,
            retry_after: Some(59 * SEC)
        }
    );
    let r = granted(
        store
            .reserve(&[Bucket::new("m", 30, 100, minute)], lease)
            .await
            .unwrap(),
    );
    assert_eq!(store.settle(&r, &[20]).await.unwrap(), [bal(90, 0)]);
    clock.advance(58 * SEC);
    assert_eq!(store.balance("m", minute).await.unwrap(), bal(90, 0));
    clock.advance(SEC);
    // 70 s: slot 0 stopped counting; slot 1 (10–20 s) counts until 80 s.
    assert_eq!(store.balance("m", minute).await.unwrap(), bal(20, 0));
    clock.advance(10 * SEC);
    assert_eq!(store.balance("m", minute).await.unwrap(), bal(0, 0));
    // An amount alone over the limit: no wait helps.
    assert_eq!(
        store
            .reserve(&[Bucket::new("m", 101, 100, minute)], lease)
            .await
            .unwrap(),
        Reserve::Denied {
            index: 0,
            spent: 0,
            reserved: 0,
            retry_after: None
        }
    );
    // Rolling spend counts whenever it is settled, even past the lease.
    let r = granted(
        store
            .reserve(&[Bucket::new("late", 10, 100, minute)], 5 * SEC)
            .await
            .unwrap(),
    );
    clock.advance(100 * SEC);
    assert_eq!(store.balance("late", minute).await.unwrap(), bal(0, 0));
    assert_eq!(store.settle(&r, &[9]).await.unwrap(), [bal(9, 0)]);
}

// ---------------------------------------------------------------- flags

async fn flags_expire<B: Backend>(b: B, clock: ManualClock) {
    let store = b.open().await;
    assert_eq!(store.flag("open").await.unwrap(), None);
    store.set_flag("open", 10 * SEC).await.unwrap();
    assert_eq!(store.flag("open").await.unwrap(), Some(10 * SEC));
    clock.advance(4 * SEC);
    assert_eq!(store.flag("open").await.unwrap(), Some(6 * SEC));
    store.set_flag("open", 3 * SEC).await.unwrap();
    assert_eq!(store.flag("open").await.unwrap(), Some(3 * SEC), "replaced");
    clock.advance(3 * SEC);
    assert_eq!(store.flag("open").await.unwrap(), None);
    store.set_flag("open", 3 * SEC).await.unwrap();
    store.clear_flag("open").await.unwrap();
    assert_eq!(store.flag("open").await.unwrap(), None);
    store.clear_flag("never-set").await.unwrap();
}

// ---------------------------------------------------------------- concurrency

/// 500 tasks on a multi-threaded runtime acquire a global cell and one of
/// five group cells: exactly the global limit passes, at most each group's.
async fn concurrent_acquires_grant_exactly_what_fits<B: Backend>(b: B, _clock: ManualClock) {
    let store = b.open().await;
    let global = quota(100, 60 * SEC);
    let group = quota(30, 60 * SEC);
    let groups = ["g0", "g1", "g2", "g3", "g4"];
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let cells = [
                    Cell::new("global", 1, global),
                    Cell::new(groups[i % 5], 1, group),
                ];
                let a = store.acquire(&cells, None, Duration::ZERO).await.unwrap();
                (i % 5, matches!(a, Acquire::Granted { .. }))
            })
        })
        .collect();
    let mut per_group = [0; 5];
    for t in tasks {
        let (g, ok) = t.await.unwrap();
        per_group[g] += usize::from(ok);
    }
    assert_eq!(per_group.iter().sum::<usize>(), 100, "{per_group:?}");
    assert!(per_group.iter().all(|&n| n <= 30), "{per_group:?}");
    assert_eq!(remaining(&store, "global", global).await, 0);
}

/// Two stores standing for two processes share one limit: of 1,000
/// concurrent acquires split over both, exactly the limit passes.
async fn two_instances_share_limits<B: Backend>(b: B, clock: ManualClock) {
    let stores = [b.open().await, b.open().await];
    let q = quota(250, 60 * SEC);
    let tasks: Vec<_> = (0..1_000)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move { store.take("shared", 1, q).await.unwrap().is_allowed() })
        })
        .collect();
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 250);
    // Both see the same cell refill.
    clock.advance(SEC * 6 / 25);
    assert_eq!(remaining(&stores[0], "shared", q).await, 1);
    assert_eq!(remaining(&stores[1], "shared", q).await, 1);
    store_flag_seen_by_both(&stores).await;
}

async fn store_flag_seen_by_both<S: Store>(stores: &[S; 2]) {
    stores[0].set_flag("f", 5 * SEC).await.unwrap();
    assert_eq!(stores[1].flag("f").await.unwrap(), Some(5 * SEC));
    stores[1].clear_flag("f").await.unwrap();
    assert_eq!(stores[0].flag("f").await.unwrap(), None);
}

/// 1,000 concurrent reservations split over two stores (two processes)
/// against a budget that fits 100 of them: exactly 100 are granted, and
/// what they spend, settled concurrently, stays within the limit.
async fn budget_across_two_instances<B: Backend>(b: B, _clock: ManualClock) {
    let stores = [b.open().await, b.open().await];
    let day = Span::Fixed {
        ttl: Some(86_400 * SEC),
    };
    let hour = Span::Rolling {
        window: 3_600 * SEC,
        slots: 60,
    };
    let tasks: Vec<_> = (0..1_000u64)
        .map(|i| {
            let store = stores[(i % 2) as usize].clone();
            tokio::spawn(async move {
                let buckets = [
                    Bucket::new("tenant:day", 3, 300, day),
                    Bucket::new("global:hour", 3, u64::MAX, hour),
                ];
                match store.reserve(&buckets, 600 * SEC).await.unwrap() {
                    Reserve::Granted(r) => {
                        // Spent at most what was reserved.
                        store.settle(&r, &[i % 4, i % 4]).await.unwrap();
                        Some(i % 4)
                    }
                    Reserve::Denied { index, .. } => {
                        assert_eq!(index, 0);
                        None
                    }
                }
            })
        })
        .collect();
    let mut granted = 0;
    let mut spent = 0;
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            granted += 1;
            spent += s;
        }
    }
    // Settlements race with reservations: a reservation settled below its
    // amount makes room for more. At least 100 fit, and never more spend
    // (plus what is still reserved) than the limit.
    assert!(granted >= 100, "{granted}");
    let day_balance = stores[0].balance("tenant:day", day).await.unwrap();
    assert_eq!(day_balance, bal(spent, 0));
    assert!(spent <= 300, "{spent}");
    assert_eq!(
        stores[1].balance("global:hour", hour).await.unwrap(),
        bal(spent, 0)
    );

    // Without settlements in between: exactly what fits.
    let tasks: Vec<_> = (0..1_000usize)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                let buckets = [Bucket::new("exact", 7, 700, day)];
                store.reserve(&buckets, 600 * SEC).await.unwrap()
            })
        })
        .collect();
    let mut reservations = Vec::new();
    for t in tasks {
        if let Reserve::Granted(r) = t.await.unwrap() {
            reservations.push(r);
        }
    }
    assert_eq!(reservations.len(), 100);
    assert_eq!(stores[0].balance("exact", day).await.unwrap(), bal(0, 700));
    for (i, r) in reservations.iter().enumerate() {
        stores[i % 2].settle(r, &[7]).await.unwrap();
    }
    assert_eq!(stores[1].balance("exact", day).await.unwrap(), bal(700, 0));
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let clock = super::ManualClock::new();
                    super::$name(super::Memory::new(clock.clone()), clock).await;
                }
            )*
        }

        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(server) = super::redis_support::server() else {
                        return;
                    };
                    let clock = super::ManualClock::new();
                    let backend = super::Redis::new(server.url(), stringify!($name), clock.clone());
                    super::$name(backend, clock).await;
                    drop(server);
                }
            )*
        }

        #[cfg(feature = "redis-tls")]
        mod redis_tls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some((server, certs)) = super::redis_tls_support::server(false) else {
                        return;
                    };
                    let clock = super::ManualClock::new();
                    let backend =
                        super::Redis::tls(server.url(), &certs.ca, stringify!($name), clock.clone());
                    super::$name(backend, clock).await;
                    drop(server);
                }
            )*
        }

        #[cfg(feature = "redis-cluster")]
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(cluster) = super::redis_support::cluster() else {
                        return;
                    };
                    let clock = super::ManualClock::new();
                    let backend =
                        super::Redis::cluster(cluster.urls(), stringify!($name), clock.clone());
                    super::$name(backend, clock).await;
                    drop(cluster);
                }
            )*
        }
    };
}

suite!(
    gcra_exact_schedule,
    refund_charge_hold,
    acquire_queue_and_all_or_nothing,
    acquire_keep_and_pause,
    reserve_and_settle_exactly_once,
    leases_expire,
    fixed_spans_and_incarnations,
    rolling_windows,
    flags_expire,
    concurrent_acquires_grant_exactly_what_fits,
    two_instances_share_limits,
    budget_across_two_instances,
);

/// Tests that only make sense against a server: expiry in Redis, failures,
/// and a differential run against [`MemoryStore`].
#[cfg(feature = "redis")]
mod redis_only {
    use super::*;
    use llm_tower::store::{RedisStore, StoreError};

    /// Every key the store writes has a TTL in Redis, from the caller's
    /// clock, except a fixed bucket without one (a total for good).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_has_a_ttl() {
        let Some(server) = redis_support::server() else {
            return;
        };
        let clock = ManualClock::new();
        let backend = Redis::new(server.url(), "ttl", clock.clone());
        let store = backend.open().await;
        let q = quota(60, 60 * SEC);
        store.take("cell", 1, q).await.unwrap();
        store.set_flag("pause", 30 * SEC).await.unwrap();
        store
            .acquire(&[Cell::new("queued", 1, q)], Some("pause"), 60 * SEC)
            .await
            .unwrap();
        let day = Span::Fixed {
            ttl: Some(3_600 * SEC),
        };
        let minute = Span::Rolling {
            window: 60 * SEC,
            slots: 6,
        };
        let total = Span::Fixed { ttl: None };
        let r = granted(
            store
                .reserve(
                    &[
                        Bucket::new("day", 1, 10, day),
                        Bucket::new("minute", 1, 10, minute),
                        Bucket::new("total", 1, 10, total),
                    ],
                    120 * SEC,
                )
                .await
                .unwrap(),
        );
        let mut con = raw(server.url()).await;
        let prefix = format!("{{{}}}:", backend.prefix);
        let mut keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{{{}}}:*", backend.prefix))
            .query_async(&mut con)
            .await
            .unwrap();
        keys.sort();
        let names: Vec<_> = keys.iter().map(|k| &k[prefix.len()..]).collect();
        assert_eq!(
            names,
            [
                "b:day",
                "b:minute",
                "b:total",
                "c:cell",
                "c:queued",
                "f:pause",
                "incarnation"
            ]
        );
        let margin = 60_000;
        let expected = [
            ("b:day", 3_600_000),
            ("b:minute", 120_000),
            ("c:cell", 1_000),
            ("c:queued", 31_000),
            ("f:pause", 30_000),
        ];
        for (name, ms) in expected {
            let pttl: i64 = ::redis::cmd("PTTL")
                .arg(format!("{prefix}{name}"))
                .query_async(&mut con)
                .await
                .unwrap();
            assert!(
                pttl > ms + margin - 5_000 && pttl <= ms + margin,
                "{name}: {pttl} ms"
            );
        }
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg(format!("{prefix}b:total"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(pttl, -1, "a total never expires");
        // Settled, with nothing left counting, a rolling bucket goes.
        store.settle(&r, &[0, 0, 0]).await.unwrap();
        clock.advance(SEC);
        store
            .reserve(&[Bucket::new("minute", 0, 10, minute)], SEC)
            .await
            .unwrap();
        let exists: i64 = ::redis::cmd("EXISTS")
            .arg(format!("{prefix}b:minute"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(exists, 0);
    }

    /// A server that accepts connections and never answers: connecting
    /// fails within the timeout instead of hanging.
    #[tokio::test]
    async fn a_silent_server_never_hangs() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://:hunter2@{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                sockets.push(s);
            }
        });
        let started = std::time::Instant::now();
        let err: StoreError = RedisStore::builder(&url)
            .timeout(200 * MS)
            .connect()
            .await
            .unwrap_err();
        assert!(started.elapsed() < 2 * SEC, "{:?}", started.elapsed());
        let message = err.to_string();
        assert!(message.contains("no answer"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        held.abort();
    }

    /// A server that goes down fails calls within the timeout; once it is
    /// back (empty, without the scripts), calls work again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_server_is_used_again() {
        let Some(mut server) = redis_support::own_server() else {
            return;
        };
        let clock = ManualClock::new();
        let url = server.url().to_owned();
        let store = RedisStore::builder(&url)
            .prefix("restart")
            .clock(clock.clone())
            .timeout(300 * MS)
            .connect()
            .await
            .unwrap();
        assert!(format!("{store:?}").contains(&url));
        let q = quota(10, 10 * SEC);
        assert!(store.take("k", 1, q).await.unwrap().is_allowed());
        server.kill();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            assert!(store.take("k", 1, q).await.is_err());
            assert!(started.elapsed() < 2 * SEC, "{:?}", started.elapsed());
        }
        assert!(server.restart(), "the test's own server starts again");
        let deadline = std::time::Instant::now() + 10 * SEC;
        loop {
            match store.take("k", 1, q).await {
                Ok(take) => {
                    // A fresh server: the cell is full again.
                    assert_eq!(take, Take::Allowed { remaining: 9 });
                    break;
                }
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "never back: {e}");
                    tokio::time::sleep(50 * MS).await;
                }
            }
        }
        // Every script is loaded again on its first use.
        store.set_flag("f", SEC).await.unwrap();
        assert_eq!(store.flag("f").await.unwrap(), Some(SEC));
    }

    /// A small deterministic generator (no dependency).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    fn show<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(_) => "error".to_owned(),
        }
    }

    fn show_reserve(r: Result<Reserve, StoreError>) -> (String, Option<Reservation>) {
        match r {
            Ok(Reserve::Granted(r)) => {
                let parts: Vec<_> = r.parts().iter().map(|p| (p.key(), p.amount())).collect();
                (format!("granted {parts:?}"), Some(r))
            }
            other => (show(other), None),
        }
    }

    /// Thousands of random operations, on the same clock, answered alike by
    /// both stores.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_as_the_memory_store_does() {
        let Some(server) = redis_support::server() else {
            return;
        };
        let clock = ManualClock::new();
        let memory = MemoryStore::with_clock(clock.clone());
        let redis = Redis::new(server.url(), "differential", clock.clone())
            .open()
            .await;
        // Emission intervals in whole microseconds, as the Redis store counts.
        let quotas = [
            ("a", quota(5, SEC)),
            ("b", quota(7, 700 * MS)),
            ("c", quota(3, 1_500 * MS)),
        ];
        let buckets = [
            (
                "x",
                50,
                Span::Fixed {
                    ttl: Some(30 * SEC),
                },
            ),
            (
                "y",
                40,
                Span::Rolling {
                    window: 10 * SEC,
                    slots: 5,
                },
            ),
            ("z", 100, Span::Fixed { ttl: None }),
        ];
        let mut rng = Lcg(0x5eed);
        let mut open: Vec<(Reservation, Reservation)> = Vec::new();
        for step in 0..3_000 {
            let (m, r) = match rng.below(11) {
                0 | 1 => {
                    let (k, q) = quotas[rng.below(3) as usize];
                    let n = rng.below(7);
                    (
                        show(memory.take(k, n, q).await),
                        show(redis.take(k, n, q).await),
                    )
                }
                2 => {
                    let (k, q) = quotas[rng.below(3) as usize];
                    let n = rng.below(4);
                    match rng.below(3) {
                        0 => (
                            show(memory.refund(k, n, q).await),
                            show(redis.refund(k, n, q).await),
                        ),
                        1 => (
                            show(memory.charge(k, n, q).await),
                            show(redis.charge(k, n, q).await),
                        ),
                        _ => {
                            let d = MS * rng.below(3_000) as u32;
                            (
                                show(memory.hold(k, q, d).await),
                                show(redis.hold(k, q, d).await),
                            )
                        }
                    }
                }
                3 | 4 => {
                    let first = rng.below(3) as usize;
                    let count = 1 + rng.below(3) as usize;
                    let cells: Vec<_> = (0..count)
                        .map(|i| {
                            let (k, q) = quotas[(first + i) % 3];
                            Cell::new(k, rng.below(6), q).keep(rng.below(3))
                        })
                        .collect();
                    let pause = (rng.below(3) == 0).then_some("p");
                    let horizon = MS * rng.below(3_000) as u32;
                    (
                        show(memory.acquire(&cells, pause, horizon).await),
                        show(redis.acquire(&cells, pause, horizon).await),
                    )
                }
                5 => {
                    let d = MS * rng.below(3_000) as u32;
                    match rng.below(3) {
                        0 => (
                            show(memory.set_flag("p", d).await),
                            show(redis.set_flag("p", d).await),
                        ),
                        1 => (
                            show(memory.clear_flag("p").await),
                            show(redis.clear_flag("p").await),
                        ),
                        _ => (show(memory.flag("p").await), show(redis.flag("p").await)),
                    }
                }
                6 | 7 => {
                    let first = rng.below(3) as usize;
                    let count = 1 + rng.below(2) as usize;
                    let list: Vec<_> = (0..count)
                        .map(|i| {
                            let (k, limit, span) = buckets[(first + i) % 3];
                            Bucket::new(k, rng.below(20), limit, span)
                        })
                        .collect();
                    let lease = SEC * (1 + rng.below(5) as u32);
                    let (m, mr) = show_reserve(memory.reserve(&list, lease).await);
                    let (r, rr) = show_reserve(redis.reserve(&list, lease).await);
                    if let (Some(mr), Some(rr)) = (mr, rr) {
                        open.push((mr, rr));
                    }
                    (m, r)
                }
                8 if !open.is_empty() => {
                    let i = rng.below(open.len() as u64) as usize;
                    let (mr, rr) = if rng.below(10) == 0 {
                        open[i].clone()
                    } else {
                        open.swap_remove(i)
                    };
                    let actual: Vec<u64> = (0..mr.parts().len()).map(|_| rng.below(25)).collect();
                    (
                        show(memory.settle(&mr, &actual).await),
                        show(redis.settle(&rr, &actual).await),
                    )
                }
                9 => {
                    let (k, _, span) = buckets[rng.below(3) as usize];
                    (
                        show(memory.balance(k, span).await),
                        show(redis.balance(k, span).await),
                    )
                }
                _ => {
                    clock.advance(MS * rng.below(1_500) as u32);
                    continue;
                }
            };
            assert_eq!(m, r, "step {step} at {:?}", clock.offset());
        }
    }
}

/// What only a cluster shows: stores spread over the shards, scripts lost
/// by every primary, and a plain connection to one node.
#[cfg(feature = "redis-cluster")]
mod redis_cluster_only {
    use super::*;
    use ::redis::{ErrorKind, ServerErrorKind};
    use llm_tower::store::RedisStore;

    /// The index of the node that holds `key` (the others answer `MOVED`).
    async fn owner(urls: &[String], key: &str) -> usize {
        let mut owners = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let answer: Result<u64, _> = ::redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut raw(url).await)
                .await;
            match answer {
                Ok(1) => owners.push(i),
                Ok(n) => panic!("{key} is not on node {i} ({n}), which holds its slot"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Server(ServerErrorKind::Moved)),
            }
        }
        assert_eq!(owners.len(), 1, "{key} on nodes {owners:?}");
        owners[0]
    }

    fn q() -> Quota {
        quota(10, 10 * SEC)
    }

    /// Twelve stores, twelve prefixes: each store's cell lands on the
    /// shard of its prefix's slot, the stores together use more than one
    /// shard, and each answers from its own state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_spread_over_the_shards() {
        let Some(cluster) = redis_support::cluster() else {
            return;
        };
        let clock = ManualClock::new();
        let mut owners = std::collections::BTreeSet::new();
        for i in 0..12 {
            let backend = Redis::cluster(cluster.urls(), &format!("spread{i}"), clock.clone());
            let store = backend.open().await;
            for n in 0..=(i % 5) {
                assert_eq!(
                    store.take("cell", 1, q()).await.unwrap(),
                    Take::Allowed { remaining: 9 - n },
                    "store {i}, take {n}"
                );
            }
            let key = format!("{{{}}}:c:cell", backend.prefix);
            owners.insert(owner(cluster.urls(), &key).await);
        }
        assert!(owners.len() >= 2, "every store on one shard: {owners:?}");
    }

    /// `SCRIPT FLUSH` on every primary: the next operation loads its script
    /// on the shard again, without an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripts_flushed_everywhere_are_loaded_again() {
        let Some(cluster) = redis_support::cluster() else {
            return;
        };
        let clock = ManualClock::new();
        let store = Redis::cluster(cluster.urls(), "flush", clock.clone())
            .open()
            .await;
        store.take("cell", 1, q()).await.unwrap();
        for url in cluster.urls() {
            let () = ::redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut raw(url).await)
                .await
                .unwrap();
        }
        assert_eq!(
            store.take("cell", 1, q()).await.unwrap(),
            Take::Allowed { remaining: 8 }
        );
    }

    /// A plain store pointed at one node fails, with an error, on a prefix
    /// whose slot another node holds (what the docs warn of), while the
    /// cluster store serves it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_store_on_one_node_does_not_follow_redirections() {
        let Some(cluster) = redis_support::cluster() else {
            return;
        };
        let clock = ManualClock::new();
        let urls = cluster.urls();
        for i in 0..64 {
            let backend = Redis::cluster(urls, &format!("plain{i}"), clock.clone());
            let store = backend.open().await;
            store.take("cell", 1, q()).await.unwrap();
            let key = format!("{{{}}}:c:cell", backend.prefix);
            if owner(urls, &key).await == 0 {
                continue;
            }
            let plain = RedisStore::builder(&urls[0])
                .prefix(backend.prefix.clone())
                .clock(clock.clone())
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .unwrap();
            let err = plain.take("cell", 1, q()).await.unwrap_err();
            assert!(err.to_string().contains("take failed"), "{err}");
            assert_eq!(
                store.take("cell", 1, q()).await.unwrap(),
                Take::Allowed { remaining: 8 }
            );
            return;
        }
        panic!("64 prefixes, all on the first node");
    }

    /// No node, or a node that is not a URL: a clear error.
    #[tokio::test]
    async fn bad_cluster_nodes_are_refused() {
        let none: [&str; 0] = [];
        let err = RedisStore::connect_cluster(none).await.unwrap_err();
        assert!(err.to_string().contains("at least one node"), "{err}");
        let err = RedisStore::cluster_builder(["not a url"])
            .connect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid cluster nodes"), "{err}");
    }
}
