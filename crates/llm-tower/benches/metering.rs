//! Metering cost, side by side with the bare body it wraps.
//!
//! `cargo bench -p llm-tower --bench metering -- --warm-up-time 1 --measurement-time 3`

use std::{
    collections::VecDeque,
    convert::Infallible,
    hint::black_box,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body::{Body, Frame};
use http_body_util::Full;
use llm_tower::{
    metering::{MeteredBody, SseParser, UsageObservers, UsageReport},
    provider::{Endpoint, Provider, WireFormat},
    request::RequestMeta,
};

/// A body yielding prepared chunks, always ready.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads an always-ready body to its end; returns the bytes seen.
fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        if let Ok(frame) = frame
            && let Some(d) = frame.data_ref()
        {
            n += d.len();
        }
    }
    n
}

fn chat_json() -> Bytes {
    let content = "Rust's ownership model guarantees memory safety without a garbage \
collector: every value has one owner, borrows are checked at compile time, and \
lifetimes make dangling references impossible. Tower builds middleware from small \
services and layers that compose. ";
    let body = format!(
        r#"{{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4.1-2025-04-14","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#
    );
    Bytes::from(body)
}

/// An Anthropic stream of 100 events, one frame per event.
fn anthropic_events() -> Vec<Bytes> {
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1200,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
    ];
    for i in 0..94 {
        events.push(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} of the answer \"}}}}\n\n"
        ));
    }
    events.extend([
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_owned(),
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":380}}\n\n".to_owned(),
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
    ]);
    assert_eq!(events.len(), 100);
    events.into_iter().map(Bytes::from).collect()
}

fn observers() -> UsageObservers {
    let mut o = UsageObservers::new();
    o.push(Arc::new(|r: &UsageReport| {
        black_box(r);
    }));
    o
}

fn meta(provider: Provider, format: WireFormat, stream: bool) -> RequestMeta {
    RequestMeta::new(Some(Endpoint { provider, format }))
        .with_model("m")
        .with_stream(stream)
        .with_estimated_input_tokens(100)
}

fn json(c: &mut Criterion) {
    let body = chat_json();
    assert!((1000..=1124).contains(&body.len()), "{}", body.len());
    let m = meta(Provider::OpenAi, WireFormat::OpenAiChat, false);
    let obs = observers();
    let mut g = c.benchmark_group("openai_json_1kb");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("bare", |b| {
        b.iter(|| drain(Full::new(black_box(body.clone()))))
    });
    g.bench_function("metered", |b| {
        b.iter(|| {
            drain(MeteredBody::new(
                Full::new(black_box(body.clone())),
                Some(&m),
                obs.clone(),
            ))
        })
    });
    g.finish();
}

fn sse(c: &mut Criterion) {
    let events = anthropic_events();
    let bytes: usize = events.iter().map(Bytes::len).sum();
    let m = meta(Provider::Anthropic, WireFormat::AnthropicMessages, true);
    let obs = observers();
    let mut g = c.benchmark_group("anthropic_sse_100_events");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("bare", |b| {
        b.iter(|| drain(Chunks(black_box(events.iter().cloned().collect()))))
    });
    g.bench_function("metered", |b| {
        b.iter(|| {
            drain(MeteredBody::new(
                Chunks(black_box(events.iter().cloned().collect())),
                Some(&m),
                obs.clone(),
            ))
        })
    });
    let whole: Vec<u8> = events.iter().flat_map(|e| e.iter().copied()).collect();
    g.bench_function("sse_parser_only", |b| {
        b.iter(|| {
            let mut p = SseParser::new();
            let mut n = 0;
            p.feed(black_box(&whole), |e| n += e.data.len());
            n
        })
    });
    g.finish();
}

criterion_group!(benches, json, sse);
criterion_main!(benches);
