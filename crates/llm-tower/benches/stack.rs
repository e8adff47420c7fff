//! A streamed answer through the recommended per-target stack — retry,
//! circuit breaker, per-attempt timeouts, meter — side by side with the
//! bare service: what reading one SSE stream costs when every layer needs
//! to know where the stream stands (first token, terminal event, errors).
//!
//! `cargo bench -p llm-tower --features full --bench stack -- --warm-up-time 1 --measurement-time 3`

mod support;

use std::{convert::Infallible, hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use llm_tower::{
    circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer},
    metering::MeterLayer,
    provider::{Endpoint, Provider, WireFormat},
    request::RequestMeta,
    retry::{RetryConfig, RetryLayer},
    timeout::{TimeoutConfig, TimeoutLayer},
};
use support::{Chunks, block, drain};
use tower::{Service, ServiceBuilder, service_fn};

fn request(provider: Provider, format: WireFormat) -> Request<Bytes> {
    let mut req = Request::post("https://api.example.com/v1/stream")
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    req.extensions_mut().insert(
        RequestMeta::new(Some(Endpoint { provider, format }))
            .with_model("bench-model")
            .with_stream(true),
    );
    req
}

/// An Anthropic stream as the provider sends it: `message_start`,
/// `content_block_start`, a `ping`, 100 deltas, the closing events.
fn anthropic_events() -> Vec<Bytes> {
    let mut v = vec![
        Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n"),
        Bytes::from_static(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"),
        Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n"),
    ];
    v.extend(std::iter::repeat_n(
        Bytes::from_static(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" token\"}}\n\n"),
        100,
    ));
    v.push(Bytes::from_static(
        b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    ));
    v.push(Bytes::from_static(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":100}}\n\n"));
    v.push(Bytes::from_static(
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ));
    v
}

/// An OpenAI chat stream: the role chunk, 100 content chunks, the finish
/// chunk, the usage chunk, `[DONE]`.
fn openai_events() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(
        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n",
    )];
    v.extend(std::iter::repeat_n(
        Bytes::from_static(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"finish_reason\":null}],\"usage\":null}\n\n"),
        100,
    ));
    v.push(Bytes::from_static(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"));
    v.push(Bytes::from_static(b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"completion_tokens\":100,\"total_tokens\":125}}\n\n"));
    v.push(Bytes::from_static(b"data: [DONE]\n\n"));
    v
}

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let limits = TimeoutConfig::new()
        .attempt(Duration::from_secs(60))
        .first_token(Duration::from_secs(10))
        .idle(Duration::from_secs(20));
    let retry = RetryLayer::try_from(RetryConfig::new()).unwrap();
    let breaker = CircuitBreakerLayer::try_from(CircuitBreakerConfig::new()).unwrap();
    let timeout = TimeoutLayer::try_from(limits).unwrap();

    for (name, provider, format, events) in [
        (
            "anthropic_sse_100_events",
            Provider::Anthropic,
            WireFormat::AnthropicMessages,
            anthropic_events(),
        ),
        (
            "openai_sse_100_events",
            Provider::OpenAi,
            WireFormat::OpenAiChat,
            openai_events(),
        ),
    ] {
        let bytes: usize = events.iter().map(Bytes::len).sum();
        let events: std::sync::Arc<[Bytes]> = events.into();
        let make = || {
            let events = events.clone();
            service_fn(move |_req: Request<Bytes>| {
                let resp = Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Chunks::new(events.iter().cloned()))
                    .unwrap();
                std::future::ready(Ok::<_, Infallible>(resp))
            })
        };
        let mut g = c.benchmark_group(format!("stack/{name}"));
        g.throughput(Throughput::Bytes(bytes as u64));
        let mut bare = make();
        g.bench_function("bare", |b| {
            b.iter(|| {
                drain(
                    block(bare.call(black_box(request(provider.clone(), format))))
                        .unwrap()
                        .into_body(),
                )
            })
        });
        let mut metered = ServiceBuilder::new()
            .layer(MeterLayer::new())
            .service(make());
        g.bench_function("meter", |b| {
            b.iter(|| {
                drain(
                    block(metered.call(black_box(request(provider.clone(), format))))
                        .unwrap()
                        .into_body(),
                )
            })
        });
        let mut stack = ServiceBuilder::new()
            .layer(retry.clone())
            .layer(breaker.clone())
            .layer(timeout.clone())
            .layer(MeterLayer::new())
            .service(make());
        g.bench_function("retry_breaker_timeout_meter", |b| {
            b.iter(|| {
                drain(
                    block(stack.call(black_box(request(provider.clone(), format))))
                        .unwrap()
                        .into_body(),
                )
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
