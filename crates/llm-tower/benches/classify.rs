//! Classification cost: the happy path (a `200`) and a provider error.
//!
//! `cargo bench -p llm-tower --bench classify`

use std::{hint::black_box, time::SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, StatusCode};
use llm_tower::classify::{Classifier, DefaultClassifier, ResponseView};

fn openai_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-request-id", "req_8f1e2b7c9d0a4e6f8a1b2c3d4e5f6a7b"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-tokens", "29999000"),
        ("x-ratelimit-reset-tokens", "2ms"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let classifier = DefaultClassifier::new();
    let headers = openai_headers();
    let now = SystemTime::now();
    let mut g = c.benchmark_group("classify");
    g.bench_function("200", |b| {
        b.iter(|| {
            let view = ResponseView::new(black_box(StatusCode::OK), &headers).with_now(now);
            black_box(classifier.classify_response(&view))
        })
    });
    let body = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29760, Requested 741.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    let mut h429 = headers.clone();
    h429.insert("retry-after", HeaderValue::from_static("2"));
    g.bench_function("429_rate_limit_exceeded", |b| {
        b.iter(|| {
            let view = ResponseView::new(black_box(StatusCode::TOO_MANY_REQUESTS), &h429)
                .with_body(black_box(body))
                .with_now(now);
            black_box(classifier.classify_response(&view))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
