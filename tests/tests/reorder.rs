//! The documented reorderings, and layers used alone: a stream's progress is
//! parsed once, by the innermost layer that needs it, so every arrangement
//! knows a first token from a ping, sees error and malformed events, and
//! tells a complete stream from a cut one — with or without the meter.

mod support;

use http::Request;
use http_body_util::BodyExt;
use llm_tower::{
    circuit_breaker::BreakerState,
    metering::{MalformedStream, Outcome, StreamProgress, TruncatedStream},
    request::PrepareLayer,
    retry::{RetryConfig, RetryLayer, StreamInterrupted},
    timeout::{Elapsed, Phase, TimeoutConfig},
};
use llm_tower_mock::{Fault, Provider, Rule};
use support::*;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneService};

fn quiet() -> Tuning {
    Tuning {
        idle: None,
        ..Tuning::new()
    }
}

#[tokio::test(start_paused = true)]
async fn without_the_meter_pings_are_still_not_a_first_token() {
    for provider in [Provider::Anthropic, Provider::OpenAi] {
        let mock = mock(vec![
            Rule::new(Fault::EmptyDeltas { count: 2 }),
            Rule::new(Fault::SlowFirstToken {
                delay: 30 * SEC,
                keepalive: Some(SEC),
            })
            .times(1),
        ])
        .await;
        let stack = Stack::without_meter(&quiet());
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        assert_eq!(
            mock.journal().len(),
            2,
            "{provider}: the attempt timeout parsed the stream itself, cut the stall at 2 s"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_the_meter_error_events_are_retried_and_counted_by_the_breaker() {
    let mock = mock(vec![Rule::new(Fault::ErrorEvent { after: 0 })]).await;
    let stack = Stack::without_meter(&Tuning::new());
    let answer = stack
        .call(chat(&mock, Provider::Anthropic, true, "hi"))
        .await;
    assert!(answer.error.is_some());
    assert_eq!(mock.journal().len(), 3, "three attempts, each failed");
    assert_eq!(stack.breaker_state(ANTHROPIC_MODEL), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn without_the_meter_a_malformed_event_after_tokens_is_a_typed_error() {
    let mock = mock(vec![Rule::new(Fault::Malformed { after: 2 })]).await;
    let stack = Stack::without_meter(&Tuning::new());
    for provider in [Provider::Anthropic, Provider::OpenAi] {
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        let err = answer.err();
        assert!(find::<StreamInterrupted>(err).is_some(), "{}", show(err));
        assert!(find::<MalformedStream>(err).is_some(), "{}", show(err));
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_breaker_outside_retry_it_sees_one_outcome_per_call() {
    let mock = mock(vec![Rule::new(Fault::ErrorEvent { after: 0 })]).await;
    let stack = Stack::breaker_outside_retry(&Tuning::new());
    for i in 0..2 {
        stack
            .call(chat(&mock, Provider::Anthropic, true, &format!("{i}")))
            .await;
    }
    assert_eq!(mock.journal().len(), 6, "two calls of three attempts");
    assert_eq!(
        stack.breaker_state(ANTHROPIC_MODEL),
        BreakerState::Closed,
        "two failed calls, not six failed attempts"
    );
    stack
        .call(chat(&mock, Provider::Anthropic, true, "3"))
        .await;
    assert_eq!(stack.breaker_state(ANTHROPIC_MODEL), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_alone_knows_the_first_token_and_passes_the_stream_as_it_came() {
    let mock = mock(vec![
        Rule::new(Fault::EmptyDeltas { count: 3 }).times(1),
        Rule::new(Fault::slow_first_token(30 * SEC)).times(1),
    ])
    .await;
    let svc = timeout_only(TimeoutConfig::new().first_token(2 * SEC));
    let answer = call(&svc, chat(&mock, Provider::OpenAi, true, "hi")).await;
    let e = find::<Elapsed>(answer.err()).expect("a timeout");
    assert_eq!(e.phase(), Phase::FirstToken);

    // Without retry, nothing acts on a stream's failures: the bytes pass
    // as they came, and the meter's report says what happened.
    mock.clear_rules();
    mock.push_rule(Rule::new(Fault::Malformed { after: 2 }))
        .unwrap();
    let mut req = chat(&mock, Provider::Anthropic, true, "hi");
    let reports = observe(&mut req);
    let answer = call(&svc, req).await;
    assert!(answer.is_clean(), "{}", answer.describe());
    assert!(!all_data_is_json(&answer));
    assert_eq!(reports.last().outcome, Outcome::Malformed);
}

/// Prepare → Retry → client: retry alone parses the stream itself.
fn retry_alone() -> Svc {
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(RetryLayer::try_from(RetryConfig::new().max_attempts(2).budget(None)).unwrap())
        .service(client());
    BoxCloneService::new(ServiceExt::<Request<String>>::map_response(svc, |r| {
        r.map(|b| b.boxed_unsync())
    }))
}

#[tokio::test(start_paused = true)]
async fn retry_alone_retries_what_fails_before_the_first_token() {
    for fault in [
        Fault::ErrorEvent { after: 0 },
        Fault::Truncate { after: 0 },
        Fault::Malformed { after: 0 },
    ] {
        let mock = mock(vec![Rule::new(fault.clone()).times(1)]).await;
        let answer = call(&retry_alone(), chat(&mock, Provider::Anthropic, true, "hi")).await;
        assert!(answer.is_clean(), "{fault:?}: {}", answer.describe());
        assert_eq!(mock.journal().len(), 2, "{fault:?}");
        assert!(all_data_is_json(&answer), "{fault:?}");
    }
    // A cut after tokens reaches the caller as a typed error.
    let mock = mock(vec![Rule::new(Fault::Truncate { after: 2 })]).await;
    let answer = call(&retry_alone(), chat(&mock, Provider::OpenAi, true, "hi")).await;
    let err = answer.err();
    assert!(find::<TruncatedStream>(err).is_some(), "{}", show(err));
    assert_eq!(mock.journal().len(), 1, "not retried after the first token");
}

#[tokio::test(start_paused = true)]
async fn the_recommended_stack_parses_each_stream_once() {
    let mock = mock(vec![]).await;
    let stack = Stack::recommended(&Tuning::new());
    for provider in [Provider::Anthropic, Provider::OpenAi, Provider::Gemini] {
        let res = stack
            .svc
            .clone()
            .oneshot(chat(&mock, provider, true, "count the events"))
            .await
            .unwrap();
        let progress = StreamProgress::get(&res)
            .cloned()
            .expect("a progress, attached by the meter and read by every layer");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        let events = text.lines().filter(|l| l.starts_with("data:")).count() as u64;
        // Fed by one layer only: two parsers feeding it would count each
        // event twice.
        assert_eq!(progress.events(), events, "{provider}");
        assert_eq!(progress.bytes(), body.len() as u64, "{provider}");
        assert!(
            progress.is_complete() && progress.has_output(),
            "{provider}"
        );
        assert!(!progress.has_failed(), "{provider}");
    }
}
