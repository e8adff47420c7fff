//! RetryLayer's happy path (the first attempt answers), side by side with
//! the bare service it wraps.
//!
//! `cargo bench -p llm-tower --features retry --bench retry -- --warm-up-time 1 --measurement-time 3`

mod support;

use std::{convert::Infallible, hint::black_box};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use llm_tower::{
    request::RequestMeta,
    retry::{RetryConfig, RetryLayer},
};
use support::{Chunks, block, drain};
use tower::{Layer, Service, service_fn};

#[derive(Clone)]
struct KeepClone;

impl<Res, E> tower::retry::Policy<Request<Bytes>, Res, E> for KeepClone {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Request<Bytes>, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Request<Bytes>) -> Option<Request<Bytes>> {
        Some(req.clone())
    }
}

fn request(stream: bool) -> Request<Bytes> {
    let mut req = Request::post("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Bytes::from_static(
            b"{\"model\":\"gpt-4o-mini\",\"messages\":[]}",
        ))
        .unwrap();
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
    let events: Vec<Bytes> = std::iter::once(Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    ))
    .chain(std::iter::repeat_n(
        Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\" token\"}}]}\n\n"),
        19,
    ))
    .collect();
    // Cheap to clone, as a real client is: the retry layer clones the
    // service for every call.
    let make = |chunks: Vec<Bytes>, sse: bool| {
        let chunks: std::sync::Arc<[Bytes]> = chunks.into();
        service_fn(move |_req: Request<Bytes>| {
            let resp = Response::builder()
                .header(
                    "content-type",
                    if sse {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )
                .body(Chunks::new(chunks.iter().cloned()))
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(resp))
        })
    };
    let layer = RetryLayer::try_from(RetryConfig::new()).unwrap();

    let mut g = c.benchmark_group("retry");
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
    g.bench_function("json_1kb/retry", |b| {
        b.iter(|| {
            drain(
                block(layered.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    // tower's own retry with a policy that keeps a clone and never
    // retries: the floor of any retry layer, for scale.
    let mut tower_retry =
        tower::retry::RetryLayer::new(KeepClone).layer(make(vec![json.clone()], false));
    g.bench_function("json_1kb/tower_retry", |b| {
        b.iter(|| {
            drain(
                block(tower_retry.call(black_box(request(false))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let mut bare = make(events.clone(), true);
    g.bench_function("sse_20_events/bare", |b| {
        b.iter(|| {
            drain(
                block(bare.call(black_box(request(true))))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    let mut layered = layer.layer(make(events, true));
    g.bench_function("sse_20_events/retry", |b| {
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
