//! Every outcome reaches every layer that counts it: a failure the retry
//! layer sees inside a `200` stream, a timeout of the stream's first token,
//! a timeout of an outer layer firing mid-stream — the breaker counts each,
//! and the meter's report says the call failed. And an open breaker stops
//! the retries at once.

mod support;

use std::time::Duration;

use llm_tower::{
    circuit_breaker::{BreakerState, CircuitOpen},
    metering::Outcome,
    retry::Decision,
    timeout::Elapsed,
};
use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use support::*;
use tokio::time::Instant;

fn states(stack: &Stack) -> String {
    format!("{:?}", stack.breaker.states())
}

/// Makes `calls` calls one after the other; returns the last answer.
async fn calls(stack: &Stack, mock: &MockServer, provider: Provider, calls: usize) -> Answer {
    let mut last = None;
    for i in 0..calls {
        last = Some(
            stack
                .call(chat(mock, provider, true, &format!("call {i}")))
                .await,
        );
    }
    last.expect("at least one call")
}

#[tokio::test(start_paused = true)]
async fn error_events_inside_a_200_open_the_breaker() {
    // An `overloaded_error` event as the first event of every stream.
    let mock = mock(vec![Rule::new(Fault::ErrorEvent { after: 0 })]).await;
    let stack = Stack::recommended(&Tuning::new());
    let last = calls(&stack, &mock, Provider::Anthropic, 5).await;
    assert_eq!(
        stack.breaker_state(ANTHROPIC_MODEL),
        BreakerState::Open,
        "after {} overloaded attempts in a row (trip at 3): {}",
        mock.journal().len(),
        states(&stack)
    );
    assert_eq!(
        mock.journal().len(),
        3,
        "the breaker opened on the 3rd failed attempt: later calls fail fast"
    );
    assert!(
        find::<CircuitOpen>(last.err()).is_some(),
        "{}",
        last.describe()
    );
}

#[tokio::test(start_paused = true)]
async fn first_token_timeouts_open_the_breaker() {
    // Gemini streams have no preamble: the first-token limit fires today,
    // so this test is about the breaker hearing of it.
    let mock = mock(vec![Rule::new(Fault::slow_first_token(30 * SEC))]).await;
    let stack = Stack::recommended(&Tuning::new());
    let last = calls(&stack, &mock, Provider::Gemini, 3).await;
    assert_eq!(
        stack.breaker_state(GEMINI_MODEL),
        BreakerState::Open,
        "after {} first-token timeouts in a row (trip at 3): {}",
        mock.journal().len(),
        states(&stack)
    );
    assert_eq!(mock.journal().len(), 3, "later calls fail fast");
    assert!(
        find::<CircuitOpen>(last.err()).is_some(),
        "{}",
        last.describe()
    );
}

#[tokio::test(start_paused = true)]
async fn an_outer_timeout_firing_mid_stream_is_a_failure_for_the_breaker_and_the_meter() {
    // Three tokens, then a minute of silence; the call's total limit (5 s,
    // outside retry) fires mid-stream.
    let mock = mock(vec![Rule::new(Fault::Stall {
        after: 3,
        duration: 60 * SEC,
    })])
    .await;
    let tuning = Tuning {
        total: 5 * SEC,
        idle: None,
        ..Tuning::new()
    };
    let stack = Stack::recommended(&tuning);
    let mut outcomes = Vec::new();
    for i in 0..3 {
        let mut req = chat(&mock, Provider::Anthropic, true, &format!("call {i}"));
        let reports = observe(&mut req);
        let start = Instant::now();
        let answer = stack.call(req).await;
        assert!(
            find::<Elapsed>(answer.err()).is_some(),
            "{}",
            answer.describe()
        );
        assert_eq!(start.elapsed(), 5 * SEC);
        outcomes.push(reports.last().outcome);
    }
    assert_eq!(mock.journal().len(), 3, "tokens came: nothing retried");
    assert_eq!(
        stack.breaker_state(ANTHROPIC_MODEL),
        BreakerState::Open,
        "three timeouts in a row: {}",
        states(&stack)
    );
    assert!(
        outcomes
            .iter()
            .all(|o| !matches!(o, Outcome::Completed | Outcome::DroppedEarly)),
        "the meter reports {outcomes:?}, as if the caller had let go; the calls timed out"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_retries_at_once() {
    let mock = mock(vec![Rule::new(Fault::Overloaded)]).await;
    let mut tuning = Tuning::new();
    tuning.retry = tuning.retry.max_attempts(5);
    tuning.breaker = tuning.breaker.consecutive_failures(Some(2));
    let stack = Stack::recommended(&tuning);
    let start = Instant::now();
    let first = stack
        .call(chat(&mock, Provider::Anthropic, false, "first"))
        .await;
    assert_eq!(
        mock.journal().len(),
        2,
        "two 529s open the breaker; the third attempt is refused, not sent"
    );
    let events = stack.retries.lock().unwrap().clone();
    assert!(
        matches!(events.last().map(|e| e.decision), Some(Decision::GiveUp(_))),
        "a CircuitOpen is not retried: {events:?}"
    );
    assert_eq!(events.len(), 3, "{events:?}");
    // 100 ms before the 2nd attempt, 200 ms before the refused 3rd; no more.
    assert_eq!(start.elapsed(), 300 * MS, "{first:?}");

    // The next call fails fast, without reaching the provider.
    let start = Instant::now();
    let second = stack
        .call(chat(&mock, Provider::Anthropic, false, "second"))
        .await;
    assert!(
        find::<CircuitOpen>(second.err()).is_some(),
        "{}",
        second.describe()
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mock.journal().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_for_the_breaker_retries_once_it_lets_a_probe_through() {
    // Two 529s, then healthy.
    let mock = mock(vec![Rule::new(Fault::Overloaded).times(2)]).await;
    let mut tuning = Tuning::new();
    tuning.retry = tuning.retry.max_attempts(5).wait_for_breaker(true);
    tuning.breaker = tuning.breaker.consecutive_failures(Some(2));
    let stack = Stack::recommended(&tuning);
    let answer = stack
        .call(chat(&mock, Provider::Anthropic, false, "hi"))
        .await;
    assert!(answer.is_clean(), "{}", answer.describe());
    let j = mock.journal().entries();
    assert_eq!(j.len(), 3, "two failures, then the probe");
    let waited = j[2].at - j[1].at;
    assert!(
        (30 * SEC..31 * SEC).contains(&waited),
        "the probe goes once the breaker's 30 s are over: {waited:?}"
    );
    assert_eq!(stack.breaker_state(ANTHROPIC_MODEL), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_long_steady_stream_is_not_a_slow_call_but_a_late_first_token_is() {
    use llm_tower::circuit_breaker::{RateTrip, SlidingWindow, SlowTrip};
    // Tokens every 300 ms: every answer streams for seconds, its first
    // token comes at once.
    let mock = MockServer::builder()
        .seed(11)
        .token_interval(300 * MS)
        .start()
        .await
        .unwrap();
    let tuning = Tuning {
        first_token: None,
        breaker: Tuning::new()
            .breaker
            .consecutive_failures(None)
            .failure_rate(Some(RateTrip {
                threshold: 0.5,
                min_calls: 4,
                window: SlidingWindow::Calls { calls: 10 },
            }))
            .slow_calls(Some(SlowTrip {
                duration: SEC,
                threshold: 0.5,
            })),
        ..Tuning::new()
    };
    let stack = Stack::recommended(&tuning);
    let start = Instant::now();
    for i in 0..6 {
        let answer = stack
            .call(chat(
                &mock,
                Provider::Anthropic,
                true,
                &format!("a long answer {i}"),
            ))
            .await;
        assert!(answer.is_clean(), "{}", answer.describe());
    }
    assert!(
        start.elapsed() > 6 * SEC,
        "each answer streamed for more than the slow-call limit: {:?}",
        start.elapsed()
    );
    assert_eq!(
        stack.breaker_state(ANTHROPIC_MODEL),
        BreakerState::Closed,
        "a stream is as slow as its first token, not as long as its answer"
    );
    // First tokens 2 s late: slow calls, and the breaker opens.
    mock.push_rule(Rule::new(Fault::slow_first_token(2 * SEC)))
        .unwrap();
    for i in 0..6 {
        stack
            .call(chat(&mock, Provider::Anthropic, true, &format!("late {i}")))
            .await;
    }
    assert_eq!(
        stack.breaker_state(ANTHROPIC_MODEL),
        BreakerState::Open,
        "{}",
        states(&stack)
    );
}
