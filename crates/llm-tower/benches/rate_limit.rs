//! RateLimitLayer's admit-and-settle path under limits that never deny,
//! side by side with the bare service, tower's `RateLimitLayer` and a
//! governor cell.
//!
//! `cargo bench -p llm-tower --features rate-limit --bench rate_limit -- --warm-up-time 1 --measurement-time 3`
//!
//! Every call is planned (store keys, amounts), takes its cells with one
//! [`Store::acquire`](llm_tower::store::Store::acquire) on a
//! [`MemoryStore`](llm_tower::store::MemoryStore), calls the inner service,
//! reads the response's (absent) rate-limit headers, and settles when the
//! drained body is dropped. `with_headers` answers with OpenAI's six
//! rate-limit headers (which the layer reads and aligns to; the inner
//! service also builds them each time). `governor` is one GCRA cell alone,
//! no service: the floor of the cell step.

mod support;

use std::{
    convert::Infallible, future::poll_fn, hint::black_box, num::NonZeroU32, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use llm_tower::{
    provider::{Endpoint, Provider, WireFormat},
    rate_limit::{Limit, RateLimitConfig, RateLimitLayer},
    request::RequestMeta,
};
use support::{block, drain};
use tower::{Layer, Service, service_fn};

/// Requests a minute no bench reaches: one per 67 ns after the headroom.
const REQUESTS: u64 = 1_000_000_000;
/// The most tokens a minute a quota holds (one per nanosecond).
const TOKENS: u64 = 60_000_000_000;

/// Readies `svc` then calls it and drains the body: what a caller does.
fn round_trip<S, B>(svc: &mut S, req: Request<()>) -> usize
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
{
    block(poll_fn(|cx| svc.poll_ready(cx))).unwrap();
    drain(block(svc.call(req)).unwrap().into_body())
}

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let meta = RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model(Arc::<str>::from("gpt-4o-mini"))
    .with_estimated_input_tokens(1_000)
    .with_max_output_tokens(Some(256));
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
    let layer =
        |limit: Limit| RateLimitLayer::new(RateLimitConfig::new().limit(limit).build().unwrap());
    // What OpenAI sends with every response: one request and 1,256 tokens
    // of the quotas used.
    let openai_headers = {
        let mut h = http::HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-limit-requests", REQUESTS.to_string()),
            ("x-ratelimit-remaining-requests", (REQUESTS - 1).to_string()),
            ("x-ratelimit-reset-requests", "6ms".into()),
            ("x-ratelimit-limit-tokens", TOKENS.to_string()),
            ("x-ratelimit-remaining-tokens", (TOKENS - 1_256).to_string()),
            ("x-ratelimit-reset-tokens", "1ms".into()),
        ] {
            h.insert(name, value.parse().unwrap());
        }
        h
    };
    let with_headers = {
        let body = body.clone();
        service_fn(move |_req: Request<()>| {
            let mut res = Response::new(Full::new(body.clone()));
            *res.headers_mut() = openai_headers.clone();
            std::future::ready(Ok::<_, Infallible>(res))
        })
    };

    let mut g = c.benchmark_group("rate_limit");
    let mut bare = make();
    g.bench_function("bare", |b| {
        b.iter(|| round_trip(&mut bare, black_box(request())))
    });
    let mut tower_limited =
        tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(1)).layer(make());
    g.bench_function("tower_rate_limit", |b| {
        b.iter(|| round_trip(&mut tower_limited, black_box(request())))
    });
    let mut requests = layer(Limit::per_minute().requests(REQUESTS)).layer(make());
    g.bench_function("rate_limit/requests", |b| {
        b.iter(|| round_trip(&mut requests, black_box(request())))
    });
    let mut both = layer(Limit::per_minute().requests(REQUESTS).tokens(TOKENS)).layer(make());
    g.bench_function("rate_limit/requests+tokens", |b| {
        b.iter(|| round_trip(&mut both, black_box(request())))
    });
    let mut headers =
        layer(Limit::per_minute().requests(REQUESTS).tokens(TOKENS)).layer(with_headers);
    g.bench_function("rate_limit/requests+tokens/with_headers", |b| {
        b.iter(|| round_trip(&mut headers, black_box(request())))
    });
    let cell = governor::RateLimiter::direct(governor::Quota::per_minute(
        NonZeroU32::new(u32::MAX).unwrap(),
    ));
    g.bench_function("governor/check", |b| {
        b.iter(|| black_box(cell.check()).is_ok())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
