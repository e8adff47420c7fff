//! The round trip a [`RedisStore`] adds per operation on loopback, next to
//! [`MemoryStore`]: a take, an acquire of three cells (as the rate-limit
//! layer does), and a reserve + settle in two budget buckets; then calls
//! per second through one connection at a concurrency of 64.
//!
//! `cargo bench -p llm-tower --features redis --bench redis_store -- --warm-up-time 1 --measurement-time 3`
//!
//! The server is `LLM_TOWER_REDIS_URL`, or a `redis-server` started on a
//! free port (see `tests/support/redis.rs`); with neither, the bench says
//! so and measures nothing. With `--features redis-cluster` the single
//! operations are measured on a three-primary cluster too
//! (`LLM_TOWER_REDIS_CLUSTER`, or one started here), and with
//! `--features redis-tls` over TLS to a `redis-server` started here.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use llm_tower::store::{Bucket, Cell, MemoryStore, Quota, RedisStore, Reserve, Span, Store};

#[path = "../tests/support/redis.rs"]
mod redis_support;
#[cfg(feature = "redis-tls")]
#[path = "../tests/support/redis_tls.rs"]
mod redis_tls_support;

/// A microsecond per unit: whole microseconds in Redis, and never denied at
/// the rates measured here.
fn generous() -> Quota {
    Quota::new(1_000_000, Duration::from_secs(1)).unwrap()
}

async fn take<S: Store>(store: &S) {
    let take = store
        .take("openai:gpt-4o:rpm", 1, generous())
        .await
        .unwrap();
    debug_assert!(take.is_allowed());
    black_box(take);
}

async fn acquire3<S: Store>(store: &S) {
    let q = generous();
    let cells = [
        Cell::new("global:rpm", 1, q),
        Cell::new("openai:gpt-4o:rpm", 1, q),
        Cell::new("openai:gpt-4o:tpm", 100, q),
    ];
    black_box(store.acquire(&cells, None, Duration::ZERO).await.unwrap());
}

async fn reserve_settle2<S: Store>(store: &S) {
    let day = Span::Fixed {
        ttl: Some(Duration::from_secs(86_400)),
    };
    let hour = Span::Rolling {
        window: Duration::from_secs(3_600),
        slots: 60,
    };
    let buckets = [
        Bucket::new("tenant-a:day:20414", 1_000, u64::MAX, day),
        Bucket::new("global:hour", 1_000, u64::MAX, hour),
    ];
    let Reserve::Granted(r) = store
        .reserve(&buckets, Duration::from_secs(600))
        .await
        .unwrap()
    else {
        panic!("a soft limit never refuses");
    };
    black_box(store.settle(&r, &[900, 900]).await.unwrap());
}

fn bench(c: &mut Criterion) {
    let Some(server) = redis_support::server() else {
        eprintln!("redis_store: no Redis, nothing measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let memory = MemoryStore::new();
    // More stores with the features that make them.
    #[cfg_attr(
        not(any(feature = "redis-cluster", feature = "redis-tls")),
        allow(unused_mut)
    )]
    let mut remote = vec![(
        "redis",
        rt.block_on(RedisStore::builder(server.url()).prefix("bench").connect())
            .unwrap(),
    )];
    #[cfg(feature = "redis-cluster")]
    let cluster = redis_support::cluster();
    #[cfg(feature = "redis-cluster")]
    if let Some(cluster) = &cluster {
        let store = RedisStore::cluster_builder(cluster.urls())
            .prefix("bench")
            .connect();
        remote.push(("redis-cluster", rt.block_on(store).unwrap()));
    }
    #[cfg(feature = "redis-tls")]
    let tls = redis_tls_support::server(false);
    #[cfg(feature = "redis-tls")]
    if let Some((server, certs)) = &tls {
        let store = RedisStore::builder(server.url())
            .prefix("bench")
            .tls_root_certificate(certs.ca.clone())
            .connect();
        remote.push(("redis-tls", rt.block_on(store).unwrap()));
    }

    let mut g = c.benchmark_group("redis_store");
    g.bench_function("take/memory", |b| b.to_async(&rt).iter(|| take(&memory)));
    for (name, store) in &remote {
        g.bench_function(format!("take/{name}"), |b| {
            b.to_async(&rt).iter(|| take(store))
        });
    }
    g.bench_function("acquire3/memory", |b| {
        b.to_async(&rt).iter(|| acquire3(&memory))
    });
    for (name, store) in &remote {
        g.bench_function(format!("acquire3/{name}"), |b| {
            b.to_async(&rt).iter(|| acquire3(store))
        });
    }
    g.bench_function("reserve_settle2/memory", |b| {
        b.to_async(&rt).iter(|| reserve_settle2(&memory))
    });
    for (name, store) in &remote {
        g.bench_function(format!("reserve_settle2/{name}"), |b| {
            b.to_async(&rt).iter(|| reserve_settle2(store))
        });
    }
    g.finish();

    // 64 acquires in flight at once through one connection manager.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let redis = mt.block_on(async {
        RedisStore::builder(server.url())
            .prefix("bench-concurrent")
            .connect()
            .await
            .unwrap()
    });
    let mut g = c.benchmark_group("redis_store/concurrent");
    g.throughput(Throughput::Elements(64));
    g.bench_function("acquire3x64/redis", |b| {
        b.iter_custom(|iters| {
            mt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let store = redis.clone();
                            tokio::spawn(async move { acquire3(&store).await })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
                started.elapsed()
            })
        })
    });
    g.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
