//! The first token is the first event carrying model output, for every
//! layer that waits for it: not Anthropic's `message_start`,
//! `content_block_start` or `ping`, not OpenAI's role chunk or an empty
//! delta. Keep-alives are not tokens, but they are not silence either.

mod support;

use llm_tower::{
    metering::{Outcome, UsageSource},
    timeout::{Elapsed, Phase},
};
use llm_tower_mock::{Fault, Provider, Rule};
use support::*;
use tokio::time::Instant;

fn journal(mock: &llm_tower_mock::MockServer) -> String {
    mock.journal()
        .entries()
        .iter()
        .map(|e| format!("#{} at {:?} {:?}", e.attempt, e.at, e.faults))
        .collect::<Vec<_>>()
        .join(", ")
}

/// First token 2 s, no idle limit: only the first-token limit can cut the
/// stall.
fn tuning() -> Tuning {
    Tuning {
        idle: None,
        ..Tuning::new()
    }
}

#[tokio::test(start_paused = true)]
async fn anthropic_pings_do_not_count_as_first_token() {
    // message_start, content_block_start and a ping at once, then 30 s
    // before the first content_block_delta; once.
    let mock = mock(vec![Rule::new(Fault::slow_first_token(30 * SEC)).times(1)]).await;
    let stack = Stack::recommended(&tuning());
    let start = Instant::now();
    let answer = stack
        .call(chat(&mock, Provider::Anthropic, true, "hi"))
        .await;
    let j = mock.journal().entries();
    assert_eq!(
        j.len(),
        2,
        "the stalled attempt is cut at 2 s by first_token and retried; journal: {}",
        journal(&mock)
    );
    assert_eq!(
        j[1].at - j[0].at,
        2 * SEC + 100 * MS,
        "cut at 2 s, retried 100 ms later"
    );
    assert!(answer.is_clean(), "{answer:?}");
    let text = answer.text();
    assert!(text.contains("message_stop"), "{text}");
    assert_eq!(
        text.matches("event: message_start").count(),
        1,
        "the caller gets one clean stream, not the preamble of the stalled attempt"
    );
    assert!(start.elapsed() < 3 * SEC, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn openai_role_and_empty_deltas_do_not_count_as_first_token() {
    // The role chunk and three `{"content": ""}` chunks at once, then 30 s
    // before the first token; the stall once.
    let mock = mock(vec![
        Rule::new(Fault::EmptyDeltas { count: 3 }),
        Rule::new(Fault::slow_first_token(30 * SEC)).times(1),
    ])
    .await;
    let stack = Stack::recommended(&tuning());
    let answer = stack.call(chat(&mock, Provider::OpenAi, true, "hi")).await;
    let j = mock.journal().entries();
    assert_eq!(
        j.len(),
        2,
        "the stalled attempt is cut at 2 s by first_token and retried; journal: {}",
        journal(&mock)
    );
    assert_eq!(j[1].at - j[0].at, 2 * SEC + 100 * MS);
    assert!(answer.is_clean(), "{answer:?}");
    let text = answer.text();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(
        text.matches("\"role\"").count(),
        1,
        "one clean stream: {text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_never_gives_a_token_ends_in_a_first_token_timeout() {
    for provider in [Provider::Anthropic, Provider::OpenAi] {
        let mock = mock(vec![Rule::new(Fault::slow_first_token(30 * SEC))]).await;
        let stack = Stack::recommended(&tuning());
        let start = Instant::now();
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        assert_eq!(
            mock.journal().len(),
            3,
            "{provider}: every attempt cut at its first-token limit; journal: {}",
            journal(&mock)
        );
        let err = answer.err();
        let elapsed = find::<Elapsed>(err)
            .unwrap_or_else(|| panic!("{provider}: not a timeout: {}", show(err)));
        assert_eq!(elapsed.phase(), Phase::FirstToken, "{provider}");
        // 2 s, 100 ms, 2 s, 200 ms, 2 s.
        assert_eq!(start.elapsed(), 6 * SEC + 300 * MS, "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn keepalives_before_a_late_first_token_are_not_silence() {
    // A keep-alive every second, the first token at 5 s: idle(2 s) must not
    // fire, first_token(10 s) is met.
    for provider in [Provider::Anthropic, Provider::OpenAi, Provider::Gemini] {
        let mock = mock(vec![Rule::new(Fault::SlowFirstToken {
            delay: 5 * SEC,
            keepalive: Some(SEC),
        })])
        .await;
        let tuning = Tuning {
            first_token: Some(10 * SEC),
            idle: Some(2 * SEC),
            ..Tuning::new()
        };
        let stack = Stack::recommended(&tuning);
        let start = Instant::now();
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        assert_eq!(mock.journal().len(), 1, "{provider}: {}", journal(&mock));
        assert_eq!(start.elapsed(), 5 * SEC, "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_healthy_call_is_metered_as_completed_with_actual_usage() {
    for provider in [Provider::OpenAi, Provider::Anthropic, Provider::Gemini] {
        for stream in [false, true] {
            let mock = mock(vec![]).await;
            let stack = Stack::recommended(&Tuning::new());
            let mut req = chat(&mock, provider, stream, "hello there");
            let reports = observe(&mut req);
            let answer = stack.call(req).await;
            assert!(answer.is_clean(), "{provider} {stream}: {answer:?}");
            let all = reports.all();
            assert_eq!(all.len(), 1, "{provider} {stream}: one report per attempt");
            let r = &all[0];
            let j = &mock.journal().entries()[0];
            assert_eq!(r.outcome, Outcome::Completed, "{provider} {stream}");
            assert_eq!(r.source, UsageSource::Actual, "{provider} {stream}");
            assert_eq!(
                (r.usage.input_tokens, r.usage.output_tokens),
                (
                    u64::from(j.input_tokens.unwrap()),
                    u64::from(j.output_tokens.unwrap())
                ),
                "{provider} {stream}"
            );
        }
    }
}
