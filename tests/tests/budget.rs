//! BudgetLayer through the whole recommended stack, over loopback against
//! the mock, on tokio's paused clock: what a call costs is the usage the
//! mock sent priced by the table, in both wire formats, streaming and not;
//! every attempt is settled exactly once (a success, an error answer, a
//! stream the caller drops, a call cut by the total timeout, a retry, a
//! move to another provider) and nothing stays reserved; a budget that
//! fits N calls answers N of them and refuses the rest before sending
//! anything; and a refused target is not retried, does not count against
//! its breaker, and the fallback moves on to a cheaper one.
//!
//! The mock never reports prompt-cache tokens (its usage always has
//! `cached_tokens: 0`, `cache_read_input_tokens: 0` and
//! `cache_creation_input_tokens: 0`: it has no prompt cache), so cached
//! and cache-write prices are not exercised here; the per-layer tests and
//! the pricing tests cover them.

mod support;

use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use llm_tower::{
    budget::{
        Amount, Arrival, BudgetConfig, BudgetExceeded, CallCost, Limit, Scope, ScopeBudget, Window,
    },
    circuit_breaker::{BreakerState, CircuitBreakerConfig},
    fallback::{Answered, Target},
    metering::Outcome,
    pricing::{Cost, ModelPrice, PriceTable},
    provider::{Provider as LlmProvider, WireFormat},
    timeout::Elapsed,
    usage::Usage,
};
use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use serde_json::Value;
use support::*;
use tower::ServiceExt;

/// Both wire formats, streaming and not.
const SHAPES: [(Provider, bool); 4] = [
    (Provider::OpenAi, false),
    (Provider::OpenAi, true),
    (Provider::Anthropic, false),
    (Provider::Anthropic, true),
];

/// The embedded prices of the mock's two models, in nano-dollars a token:
/// `gpt-4o-mini` $0.15 and $0.60 per million input and output tokens,
/// `claude-haiku-4-5` $1 and $5.
fn embedded_rates(provider: Provider) -> (u64, u64) {
    match provider {
        Provider::OpenAi => (150, 600),
        Provider::Anthropic => (1_000, 5_000),
        Provider::Gemini => unreachable!("not priced here"),
    }
}

/// `usage` at `rates` (nano-dollars a token, input and output), by hand.
fn priced(rates: (u64, u64), usage: &Usage) -> u64 {
    usage.input_tokens * rates.0 + usage.output_tokens * rates.1
}

/// A global limit of `usd` over the whole time.
fn global(usd: f64) -> BudgetConfig {
    BudgetConfig::new().scope(ScopeBudget::global().limit(Limit::usd(usd, Window::Total)))
}

/// [`Tuning::new`] with the budget `config`.
fn with_budget(config: BudgetConfig) -> Tuning {
    Tuning {
        budget: Some(config),
        ..Tuning::new()
    }
}

/// Lets a settlement the store runs on a task of its own land.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// The global scope's spend and reservations, read from the store.
async fn global_status(stack: &Stack) -> (Cost, Cost) {
    let status = stack.budget().status(Scope::Global, "*").await.unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    let (Amount::Usd(spent), Amount::Usd(reserved)) = (status[0].spent, status[0].reserved) else {
        panic!("a dollar limit: {status:?}");
    };
    (spent, reserved)
}

/// Checks that the call's cost, the layer's counters and the store all
/// say `nanos` were spent, and that nothing is reserved any more.
async fn assert_spent(what: &str, stack: &Stack, cost: Option<&CallCost>, nanos: u64) {
    settle().await;
    let expected = Cost::from_nanos(nanos);
    if let Some(cost) = cost {
        assert_eq!(cost.cost(), expected, "{what}: the call's cost");
    }
    let stats = stack.budget().stats();
    assert_eq!(stats.spent, expected, "{what}: {stats:?}");
    assert_eq!(stats.reserved, Cost::ZERO, "{what}: {stats:?}");
    let (spent, reserved) = global_status(stack).await;
    assert_eq!(spent, expected, "{what}: the store's spend");
    assert_eq!(reserved, Cost::ZERO, "{what}: the store's reservations");
}

/// The call's cost from its answer's extensions.
fn call_cost(answer: &Answer) -> CallCost {
    answer
        .extensions
        .get::<CallCost>()
        .cloned()
        .unwrap_or_else(|| panic!("a CallCost: {answer:?}"))
}

/// The usage a JSON object in either format reports, if it has one:
/// OpenAI's `usage` (prompt tokens include the cached ones) or Anthropic's
/// (input tokens exclude cache reads and writes).
fn usage_in(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    if let Some(prompt) = u.get("prompt_tokens") {
        return Some(Usage {
            input_tokens: n(prompt),
            output_tokens: n(&u["completion_tokens"]),
            cached_input_tokens: n(&u["prompt_tokens_details"]["cached_tokens"]),
            ..Usage::default()
        });
    }
    let read = n(&u["cache_read_input_tokens"]);
    let write = n(&u["cache_creation_input_tokens"]);
    Some(Usage {
        input_tokens: n(&u["input_tokens"]) + read + write,
        output_tokens: n(&u["output_tokens"]),
        cached_input_tokens: read,
        cache_write_tokens: write,
        ..Usage::default()
    })
}

/// The usage the mock sent in `answer`: the JSON body's, or, for a
/// stream, OpenAI's usage chunk or Anthropic's `message_start` input and
/// last `message_delta` output.
fn sent_usage(answer: &Answer, stream: bool) -> Usage {
    if !stream {
        let v: Value = serde_json::from_slice(&answer.body).unwrap();
        return usage_in(&v).unwrap_or_else(|| panic!("a usage: {v}"));
    }
    let mut usage = None::<Usage>;
    for d in answer.data() {
        let Ok(v) = serde_json::from_str::<Value>(&d) else {
            continue;
        };
        if v.get("type").is_none()
            && let Some(u) = usage_in(&v)
        {
            // OpenAI's usage chunk.
            usage = Some(u);
        }
        if v["type"] == "message_start" {
            usage = usage_in(&v["message"]);
        }
        if v["type"] == "message_delta" {
            let mut u = usage.expect("message_start came first");
            u.output_tokens = v["usage"]["output_tokens"].as_u64().unwrap();
            usage = Some(u);
        }
    }
    usage.unwrap_or_else(|| panic!("a usage in the stream: {}", answer.text()))
}

// ------------------------------------------------------- cost = usage × price

#[tokio::test(start_paused = true)]
async fn the_cost_is_the_usage_the_mock_sent_at_the_embedded_price() {
    for (provider, stream) in SHAPES {
        let what = format!("{provider} stream={stream}");
        let mock = mock(vec![]).await;
        let stack = Stack::recommended(&with_budget(global(1.0)));
        let answer = stack
            .call(chat(&mock, provider, stream, "what does a budget cost"))
            .await;
        assert!(answer.is_clean(), "{what}: {}", answer.describe());
        let usage = sent_usage(&answer, stream);
        assert!(
            usage.input_tokens > 0 && usage.output_tokens > 0,
            "{what}: {usage:?}"
        );
        // What the mock says it sent agrees with the body.
        let journal = mock.journal().entries();
        assert_eq!(journal.len(), 1, "{what}");
        assert_eq!(
            journal[0].input_tokens.map(u64::from),
            Some(usage.input_tokens),
            "{what}"
        );
        assert_eq!(
            journal[0].output_tokens.map(u64::from),
            Some(usage.output_tokens),
            "{what}"
        );

        let nanos = priced(embedded_rates(provider), &usage);
        // The hand-written rates are the embedded table's.
        assert_eq!(
            PriceTable::embedded()
                .cost(model(provider), &usage)
                .unwrap(),
            Cost::from_nanos(nanos),
            "{what}"
        );
        let cost = call_cost(&answer);
        assert_spent(&what, &stack, Some(&cost), nanos).await;
        assert_eq!(cost.attempts(), 1, "{what}");
        assert_eq!(cost.tokens(), usage.total_tokens(), "{what}");
        let stats = stack.budget().stats();
        assert_eq!(
            (stats.calls, stats.attempts, stats.settled, stats.refused),
            (1, 1, 1, 0),
            "{what}: {stats:?}"
        );
        assert_eq!(stats.tokens, usage.total_tokens(), "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_cost_follows_a_price_table_set_on_the_stack() {
    // Round prices, other than the embedded ones: $3 and $7 per million
    // (3,000 and 7,000 nano-dollars a token) for OpenAI's model, $11 and
    // $13 for Anthropic's.
    let table = PriceTable::empty()
        .with_price(OPENAI_MODEL, ModelPrice::new(3.0, 7.0).unwrap())
        .with_price(ANTHROPIC_MODEL, ModelPrice::new(11.0, 13.0).unwrap());
    for (provider, stream) in SHAPES {
        let what = format!("{provider} stream={stream}");
        let mock = mock(vec![]).await;
        let stack = Stack::recommended(&Tuning {
            prices: Some(table.clone()),
            ..with_budget(global(1.0))
        });
        let answer = stack.call(chat(&mock, provider, stream, "price me")).await;
        assert!(answer.is_clean(), "{what}: {}", answer.describe());
        let usage = sent_usage(&answer, stream);
        let rates = match provider {
            Provider::OpenAi => (3_000, 7_000),
            _ => (11_000, 13_000),
        };
        let nanos = priced(rates, &usage);
        assert_spent(&what, &stack, Some(&call_cost(&answer)), nanos).await;
    }
}

// ---------------------------------------------------- settled exactly once

#[tokio::test(start_paused = true)]
async fn an_error_answer_gives_everything_back() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        // A 400 is not retried: one attempt, one settlement, nothing spent.
        let mock = mock(vec![Rule::new(Fault::status(400))]).await;
        let stack = Stack::recommended(&with_budget(global(1.0)));
        let answer = stack.call(chat(&mock, provider, false, "bad")).await;
        assert_eq!(answer.status, Some(StatusCode::BAD_REQUEST));
        let cost = call_cost(&answer);
        assert_spent(&format!("{provider} 400"), &stack, Some(&cost), 0).await;
        assert_eq!(cost.attempts(), 1);
        let stats = stack.budget().stats();
        assert_eq!((stats.attempts, stats.settled), (1, 1), "{stats:?}");
        assert!(stats.reserved_peak > Cost::ZERO, "{stats:?}");
        assert_eq!(mock.journal().entries().len(), 1);

        // A 500 on every attempt: three attempts, each reserved and given
        // back.
        let mock = support::mock(vec![Rule::new(Fault::status(500))]).await;
        let stack = Stack::recommended(&with_budget(global(1.0)));
        let answer = stack.call(chat(&mock, provider, true, "boom")).await;
        assert_eq!(answer.status, Some(StatusCode::INTERNAL_SERVER_ERROR));
        let cost = call_cost(&answer);
        assert_spent(&format!("{provider} 500"), &stack, Some(&cost), 0).await;
        assert_eq!(cost.attempts(), 3);
        let stats = stack.budget().stats();
        assert_eq!((stats.attempts, stats.settled), (3, 3), "{stats:?}");
        assert_eq!(mock.journal().entries().len(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_the_caller_drops_midway_is_billed_for_what_it_used() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let what = format!("{provider}");
        // Three tokens, then 30 s of silence: the caller stops reading
        // in between.
        let mock = mock(vec![Rule::new(Fault::Stall {
            after: 3,
            duration: 30 * SEC,
        })])
        .await;
        let stack = Stack::recommended(&with_budget(global(1.0)));
        let mut req = chat(&mock, provider, true, "tell me a long story");
        let reports = observe(&mut req);
        let res = stack.svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let cost = res.extensions().get::<CallCost>().unwrap().clone();
        let mut body = res.into_body();
        let mut seen = Vec::new();
        // Read until the third token, then give up.
        let token = match provider {
            Provider::OpenAi => "\"content\":\"",
            _ => "\"text_delta\"",
        };
        while String::from_utf8_lossy(&seen).matches(token).count() < 3 {
            let frame = body.frame().await.expect("a frame").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
            }
        }
        tokio::time::sleep(SEC).await;
        assert_eq!(reports.all().len(), 0, "{what}: still in flight");
        drop(body);
        settle().await;

        let report = reports.last();
        assert_eq!(reports.all().len(), 1, "{what}");
        assert_eq!(report.outcome, Outcome::DroppedEarly, "{what}");
        assert!(report.usage.input_tokens > 0, "{what}: {report:?}");
        assert!(report.usage.output_tokens > 0, "{what}: {report:?}");
        let nanos = priced(embedded_rates(provider), &report.usage);
        assert_spent(&what, &stack, Some(&cost), nanos).await;
        let stats = stack.budget().stats();
        assert_eq!((stats.attempts, stats.settled), (1, 1), "{what}: {stats:?}");
        // Not zero, not the worst case that was reserved.
        assert!(stats.spent > Cost::ZERO, "{what}: {stats:?}");
        assert!(stats.spent < stats.reserved_peak, "{what}: {stats:?}");
        assert_eq!(mock.journal().entries().len(), 1, "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_cut_by_the_total_timeout_is_settled_once() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let what = format!("{provider}");
        // The answer's headers would come after 30 s; the call has 5 s.
        let mock = mock(vec![Rule::new(Fault::SlowFirstByte { delay: 30 * SEC })]).await;
        let stack = Stack::recommended(&Tuning {
            total: 5 * SEC,
            ..with_budget(global(1.0))
        });
        let mut req = chat(&mock, provider, false, "take your time");
        let reports = observe(&mut req);
        let answer = stack.call(req).await;
        assert_eq!(answer.status, None, "{what}");
        assert!(
            find::<Elapsed>(answer.err()).is_some(),
            "{what}: {}",
            answer.describe()
        );
        settle().await;
        assert_eq!(mock.journal().entries().len(), 1, "{what}");
        // Sent, then cancelled: billed for its input estimate, once.
        let report = reports.last();
        assert_eq!(reports.all().len(), 1, "{what}");
        assert_eq!(report.outcome, Outcome::Cancelled, "{what}");
        assert_eq!(report.usage.output_tokens, 0, "{what}: {report:?}");
        assert!(report.usage.input_tokens > 0, "{what}: {report:?}");
        let nanos = priced(embedded_rates(provider), &report.usage);
        assert_spent(&what, &stack, None, nanos).await;
        let stats = stack.budget().stats();
        assert_eq!((stats.attempts, stats.settled), (1, 1), "{what}: {stats:?}");
        assert!(stats.spent < stats.reserved_peak, "{what}: {stats:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_call_costs_its_successful_attempt() {
    for (provider, stream) in SHAPES {
        let what = format!("{provider} stream={stream}");
        // The first attempt is overloaded (503, or Anthropic's 529).
        let mock = mock(vec![Rule::new(Fault::Overloaded).times(1)]).await;
        let stack = Stack::recommended(&with_budget(global(1.0)));
        let answer = stack.call(chat(&mock, provider, stream, "again")).await;
        assert!(answer.is_clean(), "{what}: {}", answer.describe());
        let statuses: Vec<u16> = mock.journal().entries().iter().map(|e| e.status).collect();
        let overloaded = if provider == Provider::Anthropic {
            529
        } else {
            503
        };
        assert_eq!(statuses, [overloaded, 200], "{what}");
        let usage = sent_usage(&answer, stream);
        let nanos = priced(embedded_rates(provider), &usage);
        let cost = call_cost(&answer);
        assert_spent(&what, &stack, Some(&cost), nanos).await;
        assert_eq!(cost.attempts(), 2, "{what}");
        let stats = stack.budget().stats();
        assert_eq!(
            (stats.calls, stats.attempts, stats.settled),
            (1, 2, 2),
            "{what}: {stats:?}"
        );
    }
}

/// The Anthropic target of the mock.
fn claude(mock: &MockServer) -> Target {
    Target::new(
        "claude",
        LlmProvider::Anthropic,
        WireFormat::AnthropicMessages,
    )
    .model(ANTHROPIC_MODEL)
    .endpoint(format!("{}/v1/messages", mock.url()).parse().unwrap())
    .header("x-api-key", "sk-ant-test")
}

/// An OpenAI-format target of the mock with another model.
fn openai(mock: &MockServer, name: &str, model: &str) -> Target {
    Target::new(name, LlmProvider::OpenAi, WireFormat::OpenAiChat)
        .model(model)
        .endpoint(
            format!("{}/v1/chat/completions", mock.url())
                .parse()
                .unwrap(),
        )
}

/// The usage the mock sent with its last answer, from its journal.
fn journal_usage(mock: &MockServer) -> Usage {
    let last = mock.journal().entries().last().cloned().unwrap();
    assert_eq!(last.status, 200, "{last:?}");
    Usage::new(
        u64::from(last.input_tokens.unwrap()),
        u64::from(last.output_tokens.unwrap()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_call_moved_to_another_provider_is_billed_at_its_price() {
    for stream in [false, true] {
        let what = format!("stream={stream}");
        // OpenAI is overloaded every time; Anthropic answers.
        let mock = mock(vec![
            Rule::new(Fault::Overloaded).provider(Provider::OpenAi),
        ])
        .await;
        let stack =
            Stack::recommended_with_fallback(&with_budget(global(1.0)), vec![claude(&mock)]);
        let answer = stack
            .call(chat(&mock, Provider::OpenAi, stream, "anyone there"))
            .await;
        assert!(answer.is_clean(), "{what}: {}", answer.describe());
        assert_eq!(
            answer.extensions.get::<Answered>().unwrap().target,
            "claude"
        );
        let paths: Vec<String> = mock
            .journal()
            .entries()
            .iter()
            .map(|e| e.path.clone())
            .collect();
        // Three attempts at OpenAI (its retries), then Anthropic.
        assert_eq!(
            paths,
            [
                "/v1/chat/completions",
                "/v1/chat/completions",
                "/v1/chat/completions",
                "/v1/messages"
            ],
            "{what}"
        );
        // The caller got OpenAI's format, with Anthropic's usage in it.
        let usage = journal_usage(&mock);
        assert_eq!(sent_usage(&answer, stream), usage, "{what}");
        let nanos = priced(embedded_rates(Provider::Anthropic), &usage);
        // Not what the same tokens cost at the model asked for.
        assert_ne!(nanos, priced(embedded_rates(Provider::OpenAi), &usage));
        let cost = call_cost(&answer);
        assert_spent(&what, &stack, Some(&cost), nanos).await;
        assert_eq!(cost.attempts(), 4, "{what}");
        let stats = stack.budget().stats();
        assert_eq!(
            (stats.calls, stats.attempts, stats.settled),
            (1, 4, 4),
            "{what}: {stats:?}"
        );
    }
}

// -------------------------------------------------- a budget of N calls

/// The worst case `req` reserves through the recommended stack, measured
/// on a stack of its own with room to spare.
async fn worst_case_of(req: Request<String>) -> Cost {
    let stack = Stack::recommended(&with_budget(global(1.0)));
    let answer = stack.call(req).await;
    assert!(answer.is_clean(), "{}", answer.describe());
    stack.budget().stats().reserved_peak
}

#[tokio::test(start_paused = true)]
async fn a_budget_that_fits_three_calls_answers_three_of_ten() {
    const CALLS: usize = 10;
    const FITS: usize = 3;
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let what = format!("{provider}");
        // Every answer's headers wait a second, so that all ten calls
        // come in (and reserve) before any is settled.
        let mock = mock(vec![Rule::new(Fault::SlowFirstByte { delay: SEC })]).await;
        // Prompts of one length: one worst case for all.
        let req = |i: usize| chat(&mock, provider, false, &format!("call {i}"));
        let worst = worst_case_of(req(0)).await.as_nanos();
        assert!(worst > 0);
        mock.journal().clear();
        // Room for three worst cases and a half.
        let limit_nanos = FITS as u64 * worst + worst / 2;
        let stack = Stack::recommended(&with_budget(global(limit_nanos as f64 / 1e9)));
        let answers = join_all((0..CALLS).map(|i| stack.call(req(i)))).await;

        let answered: Vec<&Answer> = answers.iter().filter(|a| a.is_clean()).collect();
        let refused: Vec<&Answer> = answers.iter().filter(|a| !a.is_clean()).collect();
        assert_eq!(answered.len(), FITS, "{what}");
        assert_eq!(refused.len(), CALLS - FITS, "{what}");
        for a in &refused {
            // Refused before any response: no status, a BudgetExceeded.
            assert_eq!(a.status, None, "{what}: {}", a.describe());
            let e = find::<BudgetExceeded>(a.err())
                .unwrap_or_else(|| panic!("{what}: {}", a.describe()));
            assert_eq!(e.scope(), Scope::Global);
            assert_eq!(e.asked(), Amount::Usd(Cost::from_nanos(worst)));
        }
        // Only the answered calls reached the provider.
        let journal = mock.journal().entries();
        assert_eq!(journal.len(), FITS, "{what}");
        assert!(journal.iter().all(|e| e.status == 200), "{what}");

        settle().await;
        let total: u64 = answered
            .iter()
            .map(|a| priced(embedded_rates(provider), &sent_usage(a, false)))
            .sum();
        let stats = stack.budget().stats();
        assert_eq!(
            (stats.calls, stats.attempts, stats.settled, stats.refused),
            (
                CALLS as u64,
                FITS as u64,
                FITS as u64,
                (CALLS - FITS) as u64
            ),
            "{what}: {stats:?}"
        );
        assert_eq!(stats.reserved_peak, Cost::from_nanos(FITS as u64 * worst));
        assert_spent(&what, &stack, None, total).await;
        assert!(total <= limit_nanos, "{what}");
    }
}

// ----------------------------------------- refusals and the other targets

/// Round prices: the mock's two models cheap, `gpt-4o` a hundred times
/// dearer. In nano-dollars a token: `gpt-4o-mini` 1,000 and 2,000,
/// `claude-haiku-4-5` 2,000 and 4,000, `gpt-4o` 100,000 and 200,000.
fn three_prices() -> PriceTable {
    PriceTable::empty()
        .with_price(OPENAI_MODEL, ModelPrice::new(1.0, 2.0).unwrap())
        .with_price(ANTHROPIC_MODEL, ModelPrice::new(2.0, 4.0).unwrap())
        .with_price("gpt-4o", ModelPrice::new(100.0, 200.0).unwrap())
}

/// `chat()` in OpenAI's format for `model`, with an output cap of 100.
fn chat_for(mock: &MockServer, model: &str, prompt: &str) -> Request<String> {
    let req = chat(mock, Provider::OpenAi, false, prompt);
    let (parts, body) = req.into_parts();
    let mut json: Value = serde_json::from_str(&body).unwrap();
    json["model"] = model.into();
    json["max_tokens"] = 100.into();
    Request::from_parts(parts, json.to_string())
}

/// A limit of $0.005: the worst case of 100 output tokens and a short
/// prompt fits at the cheap prices (well under $0.001), never at
/// `gpt-4o`'s ($0.02 for the output alone).
fn room_for_the_cheap_ones() -> Tuning {
    Tuning {
        prices: Some(three_prices()),
        // A failure the breaker counted would open it at once.
        breaker: CircuitBreakerConfig::new()
            .consecutive_failures(Some(1))
            .failure_rate(None),
        ..with_budget(global(0.005))
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_target_is_not_retried_nor_counted_and_the_call_moves_to_a_cheaper_one() {
    // The first target (OpenAI's cheap model) is overloaded; the next,
    // `gpt-4o`, does not fit the budget; the last, Anthropic's, does.
    let mock = mock(vec![Rule::new(Fault::Overloaded).model(OPENAI_MODEL)]).await;
    let stack = Stack::recommended_with_fallback(
        &room_for_the_cheap_ones(),
        vec![openai(&mock, "dear", "gpt-4o"), claude(&mock)],
    );
    let answer = stack
        .call(chat_for(&mock, OPENAI_MODEL, "anyone cheap there"))
        .await;
    assert!(answer.is_clean(), "{}", answer.describe());
    assert_eq!(
        answer.extensions.get::<Answered>().unwrap().target,
        "claude"
    );
    // `gpt-4o` never reached the wire.
    let models: Vec<Option<String>> = mock
        .journal()
        .entries()
        .iter()
        .map(|e| e.model.clone())
        .collect();
    assert_eq!(
        models,
        [
            Some(OPENAI_MODEL.to_owned()),
            Some(ANTHROPIC_MODEL.to_owned())
        ]
    );
    // Refused once: not retried.
    let stats = stack.budget().stats();
    assert_eq!(stats.refused, 1, "{stats:?}");
    // Its breaker counted nothing (one failure would have opened it);
    // the overloaded model's did.
    assert_eq!(stack.breaker_state("gpt-4o"), BreakerState::Closed);
    assert_eq!(stack.breaker_state(OPENAI_MODEL), BreakerState::Open);
    // Billed at Anthropic's price; the overloaded attempt cost nothing.
    let usage = journal_usage(&mock);
    let nanos = usage.input_tokens * 2_000 + usage.output_tokens * 4_000;
    assert_spent("", &stack, Some(&call_cost(&answer)), nanos).await;
    let stats = stack.budget().stats();
    assert_eq!((stats.attempts, stats.settled), (2, 2), "{stats:?}");
}

/// The model asked for does not fit the budget, a cheaper fallback does.
/// With `Arrival::Defer` the first attempt's own reservation decides: it
/// is refused at the meter, and the fallback moves on to the cheap target.
#[tokio::test(start_paused = true)]
async fn a_call_whose_first_target_does_not_fit_moves_to_a_cheaper_one() {
    let mock = mock(vec![]).await;
    let mut tuning = room_for_the_cheap_ones();
    let config = tuning.budget.take().unwrap();
    tuning.budget = Some(config.arrival(Arrival::Defer));
    let stack =
        Stack::recommended_with_fallback(&tuning, vec![openai(&mock, "cheap", OPENAI_MODEL)]);
    let answer = stack.call(chat_for(&mock, "gpt-4o", "too dear")).await;
    assert_moved_to_the_cheap_one(&mock, &stack, &answer).await;
    let stats = stack.budget().stats();
    // One refusal (the first attempt, at the meter), one reservation.
    assert_eq!(
        (stats.refused, stats.attempts, stats.unreserved),
        (1, 1, 0),
        "{stats:?}"
    );
}

/// By default (`Arrival::Auto`) the first call of a stack is refused on
/// arrival; once a call has shown a meter inside, the next ones defer to
/// it and move on to a cheaper target.
#[tokio::test(start_paused = true)]
async fn by_default_a_stack_that_meters_its_attempts_defers_to_them() {
    let mock = mock(vec![]).await;
    let stack = Stack::recommended_with_fallback(
        &room_for_the_cheap_ones(),
        vec![openai(&mock, "cheap", OPENAI_MODEL)],
    );
    let first = stack.call(chat_for(&mock, "gpt-4o", "too dear")).await;
    assert!(
        find::<BudgetExceeded>(first.err()).is_some(),
        "{}",
        first.describe()
    );
    assert!(mock.journal().entries().is_empty());
    // A call that fits shows the stack meters its attempts.
    let fits = stack.call(chat_for(&mock, OPENAI_MODEL, "cheap")).await;
    assert!(fits.is_clean(), "{}", fits.describe());
    let spent_before = stack.budget().stats().spent;
    let moved = stack.call(chat_for(&mock, "gpt-4o", "too dear")).await;
    assert!(moved.is_clean(), "{}", moved.describe());
    assert_eq!(moved.extensions.get::<Answered>().unwrap().target, "cheap");
    assert_eq!(mock.journal().entries().len(), 2);
    assert!(stack.budget().stats().spent > spent_before);
    assert_eq!(stack.budget().stats().unreserved, 0);
}

async fn assert_moved_to_the_cheap_one(mock: &MockServer, stack: &Stack, answer: &Answer) {
    assert!(answer.is_clean(), "{}", answer.describe());
    assert_eq!(answer.extensions.get::<Answered>().unwrap().target, "cheap");
    let models: Vec<Option<String>> = mock
        .journal()
        .entries()
        .iter()
        .map(|e| e.model.clone())
        .collect();
    assert_eq!(models, [Some(OPENAI_MODEL.to_owned())]);
    assert_eq!(stack.breaker_state("gpt-4o"), BreakerState::Closed);
    let usage = journal_usage(mock);
    let nanos = usage.input_tokens * 1_000 + usage.output_tokens * 2_000;
    assert_spent("", stack, Some(&call_cost(answer)), nanos).await;
}

/// What refusals look like to a caller of the whole stack: the call that
/// does not fit is refused at once, nothing is sent, and no retry is made.
#[tokio::test(start_paused = true)]
async fn a_call_that_does_not_fit_is_refused_without_a_retry() {
    let mock = mock(vec![]).await;
    let stack = Stack::recommended(&room_for_the_cheap_ones());
    let answer = stack.call(chat_for(&mock, "gpt-4o", "too dear")).await;
    let e = find::<BudgetExceeded>(answer.err()).expect("a BudgetExceeded");
    assert_eq!(e.limit(), Amount::Usd(Cost::from_nanos(5_000_000)));
    assert_eq!(mock.journal().entries().len(), 0);
    let stats = stack.budget().stats();
    assert_eq!(
        (stats.calls, stats.attempts, stats.refused),
        (1, 0, 1),
        "{stats:?}"
    );
    assert!(stack.retries.lock().unwrap().is_empty());
    assert_eq!(stack.breaker_state("gpt-4o"), BreakerState::Closed);
}

// -------------------------------------------------- hedges

/// A hedged call: OpenAI's answer is slow, so after a second a hedge goes
/// to Anthropic, which answers; the slow attempt is cut. Each attempt was
/// reserved on its own, at its own model's price, and settled once: the
/// hedge at Anthropic's price for what it used, the cut one at its input
/// estimate at OpenAI's price.
#[tokio::test(start_paused = true)]
async fn a_hedge_is_reserved_and_settled_on_its_own() {
    use llm_tower::{
        budget::BudgetLayer,
        fallback::{FallbackLayer, Hedge},
        metering::MeterLayer,
        request::PrepareLayer,
    };
    use tower::ServiceBuilder;

    let mock = mock(vec![
        Rule::new(Fault::SlowFirstByte { delay: 10 * SEC }).provider(Provider::OpenAi),
    ])
    .await;
    let budget = BudgetLayer::new(global(1.0).build().unwrap());
    let handle = budget.handle();
    let per_target = ServiceBuilder::new()
        .layer(MeterLayer::new())
        .service(client());
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(budget)
        .layer(
            FallbackLayer::new()
                .hedge(SEC, 1.0)
                .target(claude(&mock), per_target.clone()),
        )
        .service(per_target);
    let mut req = chat(&mock, Provider::OpenAi, false, "hedge me");
    req.extensions_mut().insert(Hedge);
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "claude");
    let cost = res.extensions().get::<CallCost>().cloned().unwrap();
    // While the answer is read, the cut attempt is settled already.
    res.into_body().collect().await.unwrap();
    settle().await;
    assert_eq!(mock.journal().entries().len(), 2);
    let claude_usage = journal_usage(&mock);
    let stats = handle.stats();
    assert_eq!(
        (stats.calls, stats.attempts, stats.settled),
        (1, 2, 2),
        "{stats:?}"
    );
    assert_eq!(stats.reserved, Cost::ZERO);
    assert_eq!(cost.attempts(), 2);
    // The cut attempt: its input estimate at OpenAI's price (it may have
    // been read), nothing for output.
    let cut = stats.spent.as_nanos() - priced(embedded_rates(Provider::Anthropic), &claude_usage);
    assert!(cut > 0, "the cut attempt is billed its input: {stats:?}");
    assert_eq!(
        cut % embedded_rates(Provider::OpenAi).0,
        0,
        "at OpenAI's input price"
    );
    assert_eq!(cost.cost(), stats.spent);
    // Both were in flight at once: the peak is both worst cases, more
    // than either alone (measured on a mock without faults; the hedge's
    // translated request estimates about as the native one).
    let plain = crate::mock(vec![]).await;
    let openai = worst_case_of(chat(&plain, Provider::OpenAi, false, "hedge me")).await;
    let anthropic = worst_case_of(chat(&plain, Provider::Anthropic, false, "hedge me")).await;
    let (big, small) = (openai.max(anthropic), openai.min(anthropic));
    assert!(
        stats.reserved_peak.as_nanos() > big.as_nanos() + small.as_nanos() / 2,
        "{stats:?}: worst cases {openai:?} and {anthropic:?}"
    );
    let status = handle.status(Scope::Global, "*").await.unwrap();
    assert_eq!(status[0].spent, Amount::Usd(stats.spent));
    assert_eq!(status[0].reserved, Amount::Usd(Cost::ZERO));
}
