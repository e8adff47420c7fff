//! Store cost on the hot path: a GCRA take on an existing key (allowed and
//! denied), an acquire of three cells in one call (as the rate-limit layer
//! does), a reserve/settle pair in two budget buckets (a fixed day and a
//! rolling hour), a flag read, and takes from two threads.
//!
//! `cargo bench -p llm-tower --bench store -- --warm-up-time 1 --measurement-time 3`
//!
//! Every [`MemoryStore`] future is ready when returned, so one poll
//! (`now_or_never`) completes it: the numbers are the operations themselves.
//!
//! Bench builds enable tokio's `test-util` (a dev-dependency), which makes
//! `tokio::time::Instant::now()` lock the runtime's test clock. The `std-clock`
//! variants read the system clock directly, as `TokioClock` does in a build
//! without `test-util`: they are the cost a service pays.

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use llm_tower::clock::Clock;
use llm_tower::store::{
    Acquire, Bucket, Cell, MemoryStore, Quota, Reserve, Span, Store, StoreError, Take,
};

/// `std`'s monotonic clock, without tokio's test-clock indirection.
#[derive(Clone)]
struct StdClock;

impl Clock for StdClock {
    fn now(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(Instant::now())
    }

    fn wall(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }
}

fn ready<T>(f: impl Future<Output = Result<T, StoreError>>) -> T {
    f.now_or_never().expect("ready").expect("infallible")
}

/// Never runs out at one take per nanosecond: every take is allowed.
fn generous() -> Quota {
    Quota::new(1_000_000_000, Duration::from_secs(1)).unwrap()
}

fn single_thread(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    let store = MemoryStore::new();
    let mut g = c.benchmark_group("store");

    let q = generous();
    // Keys around, so that lookups hash into a populated map.
    for i in 0..1_000 {
        ready(store.take(&format!("openai:gpt-4o:{i}"), 1, q));
    }
    g.bench_function("take/allowed", |b| {
        b.iter(|| {
            let take = ready(store.take(black_box("openai:gpt-4o:500"), black_box(1), q));
            debug_assert!(take.is_allowed());
            black_box(take)
        })
    });
    let std_store = MemoryStore::with_clock(StdClock);
    for i in 0..1_000 {
        ready(std_store.take(&format!("openai:gpt-4o:{i}"), 1, q));
    }
    g.bench_function("take/allowed/std-clock", |b| {
        b.iter(|| {
            let take = ready(std_store.take(black_box("openai:gpt-4o:500"), black_box(1), q));
            debug_assert!(take.is_allowed());
            black_box(take)
        })
    });

    // Three cells at once (requests and tokens of a key, requests of its
    // provider), with the pause flag checked, as the rate-limit layer does.
    let cells = [
        Cell::new("openai:gpt-4o:500:requests", 1, q),
        Cell::new("openai:gpt-4o:500:tokens", 1, q),
        Cell::new("openai:provider:requests", 1, q),
    ];
    let horizon = Duration::from_secs(60);
    g.bench_function("acquire/3 cells", |b| {
        b.iter(|| {
            let acquire = ready(store.acquire(
                black_box(&cells),
                black_box(Some("openai:gpt-4o:500:pause")),
                horizon,
            ));
            debug_assert!(matches!(acquire, Acquire::Granted { .. }));
            black_box(acquire)
        })
    });

    let hourly = Quota::new(1, Duration::from_secs(3_600)).unwrap();
    ready(store.take("exhausted", 1, hourly));
    g.bench_function("take/denied", |b| {
        b.iter(|| {
            let take = ready(store.take(black_box("exhausted"), black_box(1), hourly));
            debug_assert!(matches!(take, Take::Denied { .. }));
            black_box(take)
        })
    });
    ready(std_store.take("exhausted", 1, hourly));
    g.bench_function("take/denied/std-clock", |b| {
        b.iter(|| {
            let take = ready(std_store.take(black_box("exhausted"), black_box(1), hourly));
            debug_assert!(matches!(take, Take::Denied { .. }));
            black_box(take)
        })
    });

    let day = Duration::from_secs(86_400);
    let day_span = Span::Fixed {
        ttl: Some(day + Duration::from_secs(3_600)),
    };
    let hour_span = Span::Rolling {
        window: Duration::from_secs(3_600),
        slots: 60,
    };
    let lease = Duration::from_secs(600);
    g.bench_function("reserve+settle/2-buckets", |b| {
        b.iter(|| {
            let buckets = [
                Bucket::new(black_box("tenant-a:day:20414"), 30, u64::MAX, day_span),
                Bucket::new(black_box("global:tokens:hour"), 1_000, u64::MAX, hour_span),
            ];
            let Reserve::Granted(r) = ready(store.reserve(&buckets, lease)) else {
                unreachable!("the limits are u64::MAX")
            };
            black_box(ready(store.settle(&r, &[12, 800])))
        })
    });

    ready(store.set_flag("open:openai", day));
    g.bench_function("flag", |b| {
        b.iter(|| black_box(ready(store.flag(black_box("open:openai")))))
    });
    g.finish();
}

/// Two threads taking from one key (every take contends on one atomic) and
/// from a key each, on the std clock. Reported time is wall time per take
/// across both threads.
fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("store/2-threads");
    let q = generous();
    for (name, keys) in [
        ("take/same-key", ["shared", "shared"]),
        ("take/own-key", ["left", "right"]),
    ] {
        let store = MemoryStore::with_clock(StdClock);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                thread::scope(|s| {
                    for key in keys {
                        let store = store.clone();
                        s.spawn(move || {
                            for _ in 0..iters.div_ceil(2) {
                                black_box(ready(store.take(black_box(key), 1, q)));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
