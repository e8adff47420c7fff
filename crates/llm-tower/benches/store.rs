//! The in-memory store's hot path: a take on an existing rate-limit cell.
//!
//! `cargo bench -p llm-tower --bench store -- --warm-up-time 1 --measurement-time 3`

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    task::{Context, Poll, Waker},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use llm_tower::store::{MemoryStore, Quota, Store};

/// Polls a future that is ready at once.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the memory store is always ready"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let store = MemoryStore::new();
    // Large enough never to deny during the run.
    let quota = Quota::new(u64::MAX / (1 << 40), Duration::from_secs(1 << 20)).unwrap();
    now(store.take("openai:gpt-4o:rpm", 1, quota)).unwrap();
    let mut g = c.benchmark_group("store");
    g.bench_function("take_existing_key", |b| {
        b.iter(|| now(store.take(black_box("openai:gpt-4o:rpm"), 1, quota)).unwrap())
    });
    g.bench_function("reserve_settle", |b| {
        b.iter(|| {
            let r = now(store.reserve(
                black_box("tenant:day"),
                10,
                u64::MAX,
                Duration::from_secs(86_400),
            ))
            .unwrap();
            if let llm_tower::store::Reserve::Granted(r) = r {
                now(store.settle(&r, 9)).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
