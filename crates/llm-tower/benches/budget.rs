//! BudgetLayer's reserve-and-settle path under limits that never refuse,
//! side by side with the bare service and with `MeterLayer` alone.
//!
//! `cargo bench -p llm-tower --features budget --bench budget -- --warm-up-time 1 --measurement-time 3`
//!
//! Every case calls a service answering a 1 KB OpenAI chat completion (JSON,
//! with usage) for `gpt-4o`, with 1,000 input tokens estimated and
//! `max_tokens` 256, and drains the body; the request is the same in every
//! case (its [`RequestMeta`] and a [`BudgetTenant`]):
//!
//! - `bare`: the service alone;
//! - `meter`: [`MeterLayer`] over it (usage metering, no budget);
//! - `prices_only`: [`BudgetLayer`] without scopes over the meter:
//!   each call is planned and priced, nothing is reserved in the store;
//! - `global_day`: one global dollar limit per UTC day: one bucket
//!   reserved when the call comes in, settled when the body ends;
//! - `three_limits`: global dollars per day, the tenant's dollars per
//!   month and global tokens over a rolling hour: three buckets, reserved
//!   together and settled together.
//!
//! The budget layer hands its reservation to the meter through the
//! request's `AttemptGate`; the meter settles it from the usage it reads at
//! the end of the body. All state is in a `MemoryStore`.
//!
//! # Counting one case
//!
//! With `BUDGET_BENCH_ITERS=n` set, the binary skips criterion and runs the
//! case `BUDGET_BENCH_CASE` (one of the names above; all of them when
//! unset) `n` times, for instruction and allocation counts under valgrind:
//! the cost of one call is the difference between two runs (3,000 and 1,000
//! calls) divided by 2,000, which leaves out the setup and the first calls
//! (which create the store's buckets). With `B` the binary `cargo bench
//! --no-run` names:
//!
//! ```text
//! BUDGET_BENCH_CASE=global_day BUDGET_BENCH_ITERS=1000 \
//!     valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null $B   # "I refs"
//! BUDGET_BENCH_CASE=global_day BUDGET_BENCH_ITERS=1000 \
//!     valgrind --tool=dhat --dhat-out-file=/dev/null $B                            # "Total: … blocks"
//! ```

mod support;

use std::{convert::Infallible, hint::black_box, sync::Arc};

use bytes::Bytes;
use criterion::Criterion;
use http::{HeaderValue, Request, Response, header::CONTENT_TYPE};
use http_body_util::Full;
use llm_tower::{
    budget::{BudgetConfig, BudgetHandle, BudgetLayer, BudgetTenant, Limit, ScopeBudget, Window},
    metering::MeterLayer,
    provider::{Endpoint, Provider, WireFormat},
    request::RequestMeta,
};
use support::{block, drain};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Dollars a window holds: far above what any run spends (about $0.00015
/// settled, $0.0051 reserved at a time, per call).
const USD: f64 = 1_000_000_000.0;
/// Tokens a rolling hour holds (29 settled, 1,256 reserved, per call).
const TOKENS: u64 = 1_000_000_000_000_000;

/// An OpenAI chat completion of about 1 KB, with usage (19 + 10 tokens).
fn chat_json() -> Bytes {
    let content = "Rust's ownership model guarantees memory safety without a garbage \
collector: every value has one owner, borrows are checked at compile time, and \
lifetimes make dangling references impossible. Tower builds middleware from small \
services and layers that compose. ";
    let body = format!(
        r#"{{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#
    );
    assert!((1000..=1124).contains(&body.len()), "{}", body.len());
    Bytes::from(body)
}

/// Readies `svc` then calls it and drains the body: what a caller does.
fn round_trip<S, B>(svc: &mut S, req: Request<()>) -> usize
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
{
    block(svc.ready()).unwrap();
    drain(block(svc.call(req)).unwrap().into_body())
}

/// One case: a name and one call of it.
type Case = (&'static str, Box<dyn FnMut() -> usize>);

/// Every case, each with its own service (and budget state).
fn cases() -> Vec<Case> {
    let meta = RequestMeta::new(Some(Endpoint {
        provider: Provider::OpenAi,
        format: WireFormat::OpenAiChat,
    }))
    .with_model(Arc::<str>::from("gpt-4o"))
    .with_estimated_input_tokens(1_000)
    .with_max_output_tokens(Some(256));
    let tenant = BudgetTenant::new("acme");
    let request = move || {
        let mut req = Request::new(());
        req.extensions_mut().insert(meta.clone());
        req.extensions_mut().insert(tenant.clone());
        req
    };
    let body = chat_json();
    let make = move || {
        let body = body.clone();
        service_fn(move |_req: Request<()>| {
            let mut res = Response::new(Full::new(body.clone()));
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            std::future::ready(Ok::<_, Infallible>(res))
        })
    };
    let budget = |config: BudgetConfig| BudgetLayer::new(config.build().unwrap());

    let mut out: Vec<Case> = Vec::new();
    let mut bare = make();
    let r = request.clone();
    out.push((
        "bare",
        Box::new(move || round_trip(&mut bare, black_box(r()))),
    ));
    let mut meter = MeterLayer::new().layer(make());
    let r = request.clone();
    out.push((
        "meter",
        Box::new(move || round_trip(&mut meter, black_box(r()))),
    ));
    for (name, config) in [
        ("prices_only", BudgetConfig::new()),
        (
            "global_day",
            BudgetConfig::new().scope(ScopeBudget::global().limit(Limit::usd(USD, Window::Day))),
        ),
        (
            "three_limits",
            BudgetConfig::new()
                .scope(
                    ScopeBudget::global()
                        .limit(Limit::usd(USD, Window::Day))
                        .limit(Limit::tokens(
                            TOKENS,
                            Window::Rolling(std::time::Duration::from_secs(3600)),
                        )),
                )
                .scope(ScopeBudget::tenant().limit(Limit::usd(USD, Window::Month))),
        ),
    ] {
        let layer = budget(config);
        let handle = layer.handle();
        let mut svc = layer.layer(MeterLayer::new().layer(make()));
        let r = request.clone();
        let n = round_trip(&mut svc, r());
        check(name, &handle, n);
        out.push((name, Box::new(move || round_trip(&mut svc, black_box(r())))));
    }
    out
}

/// One call went through: reserved, metered and settled, nothing left
/// reserved, nothing refused.
fn check(name: &str, handle: &BudgetHandle, bytes: usize) {
    assert!(bytes > 1000, "{name}: {bytes} bytes");
    let stats = handle.stats();
    assert_eq!(
        (stats.calls, stats.attempts, stats.settled, stats.refused),
        (1, 1, 1, 0),
        "{name}: {stats:?}"
    );
    assert_eq!(stats.tokens, 29, "{name}: {stats:?}");
    assert!(stats.spent.as_nanos() > 0, "{name}: {stats:?}");
    assert_eq!(stats.reserved.as_nanos(), 0, "{name}: {stats:?}");
}

fn bench(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("budget");
    for (name, mut call) in cases() {
        g.bench_function(name, |b| b.iter(&mut call));
    }
    g.finish();
}

/// `BUDGET_BENCH_ITERS` calls of `BUDGET_BENCH_CASE` (or of every case).
fn count(iters: &str) {
    let iters: u64 = iters.parse().expect("BUDGET_BENCH_ITERS: a number");
    let only = std::env::var("BUDGET_BENCH_CASE").ok();
    let rt = support::runtime();
    let _guard = rt.enter();
    let mut found = false;
    for (name, mut call) in cases() {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        found = true;
        let mut n = 0;
        for _ in 0..iters {
            n += call();
        }
        black_box(n);
    }
    assert!(found, "no case {only:?}");
}

fn main() {
    if let Ok(iters) = std::env::var("BUDGET_BENCH_ITERS") {
        count(&iters);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
