//! TimeoutLayer's happy path, side by side with the bare service it wraps.
//!
//! `cargo bench -p llm-tower --features timeout --bench timeout -- --warm-up-time 1 --measurement-time 3`

mod support;

use std::{convert::Infallible, hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use llm_tower::{
    request::RequestMeta,
    timeout::{TimeoutConfig, TimeoutLayer},
};
use support::{Chunks, block, drain};
use tower::{Layer, Service, service_fn};

fn request(stream: bool) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(
        RequestMeta::new(None)
            .with_model("gpt-4o-mini")
            .with_stream(stream),
    );
    req
}

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let json = Bytes::from(vec![b'x'; 1024]);
    let event =
        Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\" token\"}}]}\n\n");
    let make = |chunks: Vec<Bytes>, gaps: bool| {
        service_fn(move |_req: Request<()>| {
            let body = if gaps {
                Chunks::with_gaps(chunks.clone())
            } else {
                Chunks::new(chunks.clone())
            };
            let resp = Response::builder()
                .header(
                    "content-type",
                    if gaps {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )
                .body(body)
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(resp))
        })
    };
    let limits = TimeoutConfig::new()
        .total(Duration::from_secs(120))
        .attempt(Duration::from_secs(60))
        .first_byte(Duration::from_secs(30))
        .first_token(Duration::from_secs(20))
        .idle(Duration::from_secs(15))
        .stream(Duration::from_secs(55))
        .profile(
            "o3*",
            TimeoutConfig::new().first_token(Duration::from_secs(50)),
        );
    let layer = TimeoutLayer::try_from(limits).unwrap();

    let mut g = c.benchmark_group("timeout");
    let mut bare = make(vec![json.clone()], false);
    g.bench_function("json_1kb/bare", |b| {
        b.iter(|| {
            drain(
                block(bare.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let mut layered = layer.layer(make(vec![json.clone()], false));
    g.bench_function("json_1kb/timeout", |b| {
        b.iter(|| {
            drain(
                block(layered.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    // tower's own timeout, which stops at the headers, for scale.
    let mut tower_timeout = tower::timeout::TimeoutLayer::new(Duration::from_secs(30))
        .layer(make(vec![json.clone()], false));
    g.bench_function("json_1kb/tower_timeout", |b| {
        b.iter(|| {
            drain(
                block(tower_timeout.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let events = vec![event; 20];
    let mut bare = make(events.clone(), true);
    g.bench_function("sse_20_events_with_gaps/bare", |b| {
        b.iter(|| {
            drain(
                block(bare.call(black_box(request(true))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let mut layered = layer.layer(make(events, true));
    g.bench_function("sse_20_events_with_gaps/timeout", |b| {
        b.iter(|| {
            drain(
                block(layered.call(black_box(request(true))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
