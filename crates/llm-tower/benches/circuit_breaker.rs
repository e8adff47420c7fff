//! CircuitBreakerLayer's closed path, side by side with the bare service.
//!
//! `cargo bench -p llm-tower --features circuit-breaker --bench circuit_breaker -- --warm-up-time 1 --measurement-time 3`

mod support;

use std::{convert::Infallible, hint::black_box, sync::Arc};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use llm_tower::{
    circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer},
    provider::{Endpoint, Provider, WireFormat},
    request::RequestMeta,
};
use support::{block, drain};
use tower::{Layer, Service, service_fn};

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let meta = RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model(Arc::<str>::from("gpt-4o-mini"));
    let request = || {
        let mut req = Request::new(());
        req.extensions_mut().insert(meta.clone());
        req
    };
    let body = Bytes::from(vec![b'x'; 1024]);
    let make = || {
        let body = body.clone();
        service_fn(move |_req: Request<()>| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(body.clone()))))
        })
    };
    let layer = CircuitBreakerLayer::try_from(CircuitBreakerConfig::new()).unwrap();

    let mut g = c.benchmark_group("circuit_breaker");
    let mut bare = make();
    g.bench_function("closed/bare", |b| {
        b.iter(|| drain(block(bare.call(black_box(request()))).unwrap().into_body()))
    });
    let mut layered = layer.layer(make());
    g.bench_function("closed/breaker", |b| {
        b.iter(|| {
            drain(
                block(layered.call(black_box(request())))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    // As in a stack, where the retry layer outside clones the service for
    // every call.
    let cloned = layer.layer(make());
    g.bench_function("closed/breaker_cloned_per_call", |b| {
        b.iter(|| {
            let mut svc = cloned.clone();
            drain(block(svc.call(black_box(request()))).unwrap().into_body())
        })
    });
    // The same key, with 10 000 others in the map (its default capacity).
    let crowded = CircuitBreakerLayer::try_from(CircuitBreakerConfig::new()).unwrap();
    let mut filler = crowded.layer(make());
    for i in 0..10_000 {
        let mut req = Request::new(());
        req.extensions_mut().insert(
            RequestMeta::new(Some(Endpoint {
                provider: Provider::OpenAi,
                format: WireFormat::OpenAiChat,
            }))
            .with_model(format!("model-{i}")),
        );
        drain(block(filler.call(req)).unwrap().into_body());
    }
    let mut crowded = crowded.layer(make());
    g.bench_function("closed/breaker_among_10k_keys", |b| {
        b.iter(|| {
            drain(
                block(crowded.call(black_box(request())))
                    .unwrap()
                    .into_body(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
