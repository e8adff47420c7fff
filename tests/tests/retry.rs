//! Retry through the whole stack against the mock's real-looking answers:
//! what a provider's hints may and may not override, a quota worked
//! through with the default policy, and a zero server delay.

mod support;

use std::time::Duration;

use futures_util::{StreamExt, stream};
use http::StatusCode;
use llm_tower::{rate_limit::RateLimitConfig, retry::RetryConfig};
use llm_tower_mock::{Fault, MockServer, Provider, Quota, Rule};
use support::*;

#[tokio::test(start_paused = true)]
async fn x_should_retry_does_not_make_insufficient_quota_retryable() {
    // OpenAI's `429 insufficient_quota`, with `x-should-retry: true` as an
    // overeager gateway adds it: the quota is spent, retrying burns time.
    let mock = mock(vec![Rule::new(Fault::InsufficientQuota)]).await;
    let client = with_response_header(client(), "x-should-retry", "true");
    let stack = Stack::recommended_over(&Tuning::new(), client);
    let answer = stack.call(chat(&mock, Provider::OpenAi, false, "hi")).await;
    assert_eq!(answer.status, Some(StatusCode::TOO_MANY_REQUESTS));
    assert!(answer.text().contains("insufficient_quota"));
    assert_eq!(
        mock.journal().len(),
        1,
        "insufficient_quota is tried once, whatever x-should-retry says"
    );
}

#[tokio::test(start_paused = true)]
async fn a_requests_per_minute_quota_is_worked_through_with_the_default_policy() {
    // 60 requests a minute, 90 calls, 8 at a time: 60 go through at once,
    // then one a second, every other caller told exactly how long to wait.
    let mock = MockServer::builder()
        .seed(11)
        .quota(Quota::per_minute().requests(60))
        .start()
        .await
        .unwrap();
    // The default policy, except: a deadline of 10 min for the whole call,
    // and 30 attempts — with 8 callers sharing one request a second, and
    // every waiter waking at the quota's reset (plus a little jitter), a
    // caller may lose its turn many times, each wait server-directed. (A
    // rate limiter in front, not retries, is what paces such a workload:
    // the stack's own, adaptive by default, would learn the quota from the
    // first answers' headers and meet no 429 at all — see rate_limit.rs —
    // so it is told to ignore them here: this test is about retry.)
    // The server-delay jitter is off: it is random, and this test must
    // not be.
    let tuning = Tuning {
        total: 600 * SEC,
        retry: RetryConfig::default()
            .max_attempts(30)
            .server_delay_jitter(Duration::ZERO),
        rate_limit: RateLimitConfig::new().adaptive(false),
        ..Tuning::new()
    };
    let stack = Stack::recommended(&tuning);
    let answers: Vec<Answer> = stream::iter(0..90)
        .map(|i| stack.call(chat(&mock, Provider::OpenAi, false, &format!("call {i}"))))
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(
        stack.gave_up("budget_exhausted"),
        0,
        "server-directed waits of a quota drained the retry budget ({} of 90 calls failed)",
        answers.iter().filter(|a| !a.is_clean()).count()
    );
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !a.is_clean())
        .map(|a| (a.status, a.describe()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} calls failed: {failed:?}",
        failed.len()
    );
    let ok = mock.journal().entries();
    assert_eq!(ok.iter().filter(|e| e.status == 200).count(), 90);
    assert!(
        ok.iter().any(|e| e.status == 429),
        "the quota was worked through by retry, so it must have answered 429s"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_zero_is_not_an_immediate_retry() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        // `retry-after: 0` (and OpenAI's `retry-after-ms: 0`), once.
        let mock = mock(vec![
            Rule::new(Fault::rate_limited(Duration::ZERO)).times(1),
        ])
        .await;
        let stack = Stack::recommended(&Tuning::new());
        let answer = stack.call(chat(&mock, provider, false, "hi")).await;
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        let j = mock.journal().entries();
        assert_eq!(j.len(), 2, "{provider}");
        assert_eq!(j[0].status, 429);
        assert!(
            j[1].at > j[0].at,
            "{provider}: retried at the same instant ({:?})",
            j[0].at
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_cut_by_its_output_cap_is_not_resent_at_the_same_cap() {
    use llm_tower::retry::ContentChecks;
    let mock = mock(vec![]).await;
    // Content checks on, with their defaults.
    let tuning = Tuning {
        retry: Tuning::new().retry.content(ContentChecks::default()),
        ..Tuning::new()
    };
    let stack = Stack::recommended(&tuning);
    let body = serde_json::json!({
        "model": OPENAI_MODEL,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "write me a long story"}],
    });
    let req = http::Request::post(format!("{}/v1/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let answer = stack.call(req).await;
    assert!(answer.is_clean(), "{}", answer.describe());
    assert!(
        answer.text().contains("\"finish_reason\":\"length\""),
        "{}",
        answer.text()
    );
    assert_eq!(
        mock.journal().len(),
        1,
        "the same cap would cut it again, at full cost"
    );
}
