//! The quota mode: a burst over the limit gets 429s whose `retry-after` is
//! the real wait, and a client that waits that long gets through.

mod support;

use std::time::Duration;

use llm_tower_mock::{MockServer, Provider, Quota};
use support::*;
use tokio::time::{Instant, sleep};

#[tokio::test(start_paused = true)]
async fn a_burst_over_the_request_limit_is_told_the_real_wait() {
    // 12 a minute: one back every 5 s.
    let m = MockServer::builder()
        .quota(Quota::per_minute().requests(12))
        .start()
        .await
        .unwrap();
    let c = client();
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for i in 0..15 {
        let r = post(
            &c,
            &m.url(),
            OPENAI,
            &openai("gpt-4o", false, &format!("call {i}")),
        )
        .await;
        statuses.push(r.status.as_u16());
        remaining.push(
            r.header("x-ratelimit-remaining-requests")
                .unwrap()
                .to_owned(),
        );
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("12"));
    }
    assert_eq!(statuses[..12], [200; 12]);
    assert_eq!(statuses[12..], [429; 3]);
    assert_eq!(remaining[0], "11");
    assert_eq!(remaining[11], "0");

    // The refusal says exactly how long: 5 s until one request is back.
    let r = ask(&c, &m.url(), Provider::OpenAi, false, "again").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after-ms"), Some("5000"));
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.header("x-ratelimit-reset-requests"), Some("1m0s"));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");

    // One millisecond early is still too early…
    sleep(Duration::from_millis(4999)).await;
    let early = ask(&c, &m.url(), Provider::OpenAi, false, "early").await;
    assert_eq!(early.status, 429);
    assert_eq!(early.header("retry-after-ms"), Some("1"));
    // …and waiting what it said gets through.
    sleep(Duration::from_millis(1)).await;
    let ok = ask(&c, &m.url(), Provider::OpenAi, false, "on time").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(m.journal().count(|e| e.has_fault("quota")), 5);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_honours_retry_after_always_gets_through() {
    // Requests and tokens both bind; every refusal's wait is honest.
    let m = MockServer::builder()
        .quota(Quota::per_minute().requests(30).tokens(2_000))
        .start()
        .await
        .unwrap();
    let c = client();
    let start = Instant::now();
    let mut refusals = 0;
    for i in 0..40 {
        let mut body = anthropic("claude-haiku-4-5", false, &format!("call {i}"));
        body["max_tokens"] = 100.into();
        let mut tries = 0;
        loop {
            tries += 1;
            let r = post(&c, &m.url(), ANTHROPIC, &body).await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 429);
            assert_eq!(r.json()["error"]["type"], "rate_limit_error");
            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!(wait >= 1);
            refusals += 1;
            sleep(Duration::from_secs(wait)).await;
        }
        assert!(
            tries <= 2,
            "call {i} waited what it was told and still failed"
        );
    }
    assert!(refusals > 0, "the burst went over the limit");
    // 108 tokens a call (8 of prompt, 100 of cap) against 2000 a minute: 18
    // calls fit the first minute's burst, the other 22 need 2320 tokens more,
    // which come back in 69.6 s; whole-second waits round up a little.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(69_600) && took <= Duration::from_secs(80),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn anthropic_headers_give_the_reset_as_an_instant() {
    let m = MockServer::builder()
        .quota(Quota::per_minute().requests(60).tokens(10_000))
        .start()
        .await
        .unwrap();
    let r = ask(&client(), &m.url(), Provider::Anthropic, false, "x").await;
    assert_eq!(r.header("anthropic-ratelimit-requests-limit"), Some("60"));
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("59")
    );
    assert_eq!(r.header("anthropic-ratelimit-tokens-limit"), Some("10000"));
    let reset = r.header("anthropic-ratelimit-requests-reset").unwrap();
    let at = humantime::parse_rfc3339(reset).unwrap();
    let from_now = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        from_now <= Duration::from_secs(2),
        "one request back within a second: {reset}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_a_minute_of_tokens_never_fits() {
    let m = MockServer::builder()
        .quota(Quota::per_minute().tokens(500))
        .start()
        .await
        .unwrap();
    let mut body = openai("gpt-4o", false, "x");
    body["max_completion_tokens"] = 1000.into();
    let r = post(&client(), &m.url(), OPENAI, &body).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), None, "no wait would help");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Request too large")
    );
}

/// An Anthropic request with its output cap set.
fn capped(stream: bool, prompt: &str, max_tokens: u32) -> serde_json::Value {
    let mut body = anthropic("claude-haiku-4-5", stream, prompt);
    body["max_tokens"] = max_tokens.into();
    body
}

#[tokio::test(start_paused = true)]
async fn unused_output_is_given_back_when_the_answer_ends() {
    for stream in [false, true] {
        // 1,200 output tokens a minute, 20 a second.
        let m = MockServer::builder()
            .quota(Quota::per_minute().output_tokens(1_200))
            .start()
            .await
            .unwrap();
        let c = client();
        let first = post(&c, &m.url(), ANTHROPIC, &capped(stream, "one", 1_000)).await;
        assert_eq!(first.status, 200, "stream={stream}");
        // The cap is counted on arrival…
        assert_eq!(
            first.header("anthropic-ratelimit-output-tokens-remaining"),
            Some("200"),
            "stream={stream}"
        );
        let used = m.journal().entries()[0].output_tokens.unwrap();
        assert!((8..=40).contains(&used), "{used}");
        // …and what the answer did not use came back when it ended: a second
        // call of 1,000 fits at once, where it would wait (800 − 200 + used)
        // / 20 s ≥ 40 s with the cap kept.
        let second = post(&c, &m.url(), ANTHROPIC, &capped(stream, "two", 1_000)).await;
        assert_eq!(second.status, 200, "stream={stream}");
        assert_eq!(
            second.header("anthropic-ratelimit-output-tokens-remaining"),
            Some((200 - used).to_string().as_str()),
            "stream={stream}: 1,200 − {used} used − 1,000 capped"
        );
        // Without output limits, a tokens-per-minute quota keeps the cap, as
        // OpenAI counts it: the same second call waits.
        let m = MockServer::builder()
            .quota(Quota::per_minute().tokens(1_200))
            .start()
            .await
            .unwrap();
        let first = post(&c, &m.url(), ANTHROPIC, &capped(stream, "one", 1_000)).await;
        assert_eq!(first.status, 200);
        let again = post(&c, &m.url(), ANTHROPIC, &capped(stream, "two", 1_000)).await;
        assert_eq!(again.status, 429, "stream={stream}");
        assert_eq!(again.json()["error"]["type"], "rate_limit_error");
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_answer_gives_all_its_output_back() {
    let m = MockServer::builder()
        .quota(Quota::per_minute().output_tokens(1_200))
        .start()
        .await
        .unwrap();
    let c = client();
    let mut body = capped(false, "one", 1_000);
    body["messages"][0]["content"] = "x".into();
    let r = post_with(
        &c,
        &m.url(),
        ANTHROPIC,
        &body,
        &[("x-mock-fault", "overloaded")],
    )
    .await;
    assert_eq!(r.status, 529);
    let ok = post(&c, &m.url(), ANTHROPIC, &capped(false, "two", 1_000)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("anthropic-ratelimit-output-tokens-remaining"),
        Some("200")
    );
}

#[tokio::test(start_paused = true)]
async fn anthropic_headers_report_input_output_and_the_most_restrictive() {
    let m = MockServer::builder()
        .quota(
            Quota::per_minute()
                .requests(50)
                .input_tokens(1_000)
                .output_tokens(2_000),
        )
        .start()
        .await
        .unwrap();
    let c = client();
    // A prompt of 400 characters: 100 tokens, + 3 per message + 3.
    let prompt = "abcd".repeat(100);
    let r = post(&c, &m.url(), ANTHROPIC, &capped(false, &prompt, 500)).await;
    assert_eq!(r.status, 200);
    assert_eq!(m.journal().entries()[0].input_tokens, Some(106));
    let h = |name: &str| r.header(name).map(str::to_owned);
    assert_eq!(
        h("anthropic-ratelimit-requests-remaining").as_deref(),
        Some("49")
    );
    assert_eq!(
        h("anthropic-ratelimit-input-tokens-limit").as_deref(),
        Some("1000")
    );
    assert_eq!(
        h("anthropic-ratelimit-input-tokens-remaining").as_deref(),
        Some("894")
    );
    assert_eq!(
        h("anthropic-ratelimit-output-tokens-limit").as_deref(),
        Some("2000")
    );
    assert_eq!(
        h("anthropic-ratelimit-output-tokens-remaining").as_deref(),
        Some("1500")
    );
    // The most restrictive now: input, 894 left.
    assert_eq!(
        h("anthropic-ratelimit-tokens-limit").as_deref(),
        Some("1000")
    );
    assert_eq!(
        h("anthropic-ratelimit-tokens-remaining").as_deref(),
        Some("894")
    );
    assert_eq!(
        h("anthropic-ratelimit-tokens-reset"),
        h("anthropic-ratelimit-input-tokens-reset")
    );
    // 106 input tokens refill in 6.36 s at 1,000 a minute (the instant is
    // rounded up to the second).
    let reset = h("anthropic-ratelimit-input-tokens-reset").unwrap();
    let at = humantime::parse_rfc3339(&reset).unwrap();
    let from_now = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        from_now > Duration::from_secs(5) && from_now <= Duration::from_secs(8),
        "{reset}"
    );

    // A call with a small prompt and a large cap: output becomes the most
    // restrictive (2,000 − 500 + the first's unused − 1,800 < 894 − 7).
    let r = post(&c, &m.url(), ANTHROPIC, &capped(false, "x", 1_800)).await;
    assert_eq!(r.status, 200);
    let used = m.journal().entries()[0].output_tokens.unwrap();
    let output_left = (2_000 - used - 1_800).to_string();
    assert_eq!(
        r.header("anthropic-ratelimit-output-tokens-remaining"),
        Some(output_left.as_str())
    );
    assert_eq!(r.header("anthropic-ratelimit-tokens-limit"), Some("2000"));
    assert_eq!(
        r.header("anthropic-ratelimit-tokens-remaining"),
        Some(output_left.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn openai_format_calls_are_held_to_input_and_output_limits_without_headers_for_them() {
    let m = MockServer::builder()
        .quota(
            Quota::per_minute()
                .requests(50)
                .input_tokens(200)
                .output_tokens(1_200),
        )
        .start()
        .await
        .unwrap();
    let c = client();
    let body = |prompt: &str, max_tokens: u32| {
        let mut body = openai("gpt-4o", false, prompt);
        body["max_completion_tokens"] = max_tokens.into();
        body
    };
    let long = "abcd".repeat(100); // 106 tokens
    let r = post(&c, &m.url(), OPENAI, &body(&long, 1_000)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("49"));
    // OpenAI has no header for them.
    assert_eq!(r.header("x-ratelimit-limit-tokens"), None);
    assert!(
        r.headers
            .keys()
            .all(|k| !k.as_str().starts_with("anthropic-")),
        "{:?}",
        r.headers
    );
    // The unused output came back (the answer is at most 40 tokens): 1,100
    // more fit.
    let r = post(&c, &m.url(), OPENAI, &body("x", 1_100)).await;
    assert_eq!(r.status, 200);
    // 200 − 106 − 7 = 87 input tokens left: the long prompt waits for 19
    // more, 5.7 s at 200 a minute, and is told so.
    let r = post(&c, &m.url(), OPENAI, &body(&long, 10)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.header("retry-after-ms"), Some("5700"));
    assert_eq!(r.header("retry-after"), Some("6"));
}

#[tokio::test(start_paused = true)]
async fn a_request_refused_by_the_input_limit_takes_no_output() {
    let m = MockServer::builder()
        .quota(Quota::per_minute().input_tokens(200).output_tokens(1_000))
        .start()
        .await
        .unwrap();
    let c = client();
    let prompt = "abcd".repeat(100); // 106 tokens
    let r = post(&c, &m.url(), ANTHROPIC, &capped(false, &prompt, 100)).await;
    assert_eq!(r.status, 200);
    let used = m.journal().entries()[0].output_tokens.unwrap();
    // 94 input tokens left: the same prompt waits for 12 more, 3.6 s at
    // 200 a minute: `retry-after: 4`.
    let r = post(&c, &m.url(), ANTHROPIC, &capped(false, &prompt, 500)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("4"));
    // The refusal took none of the output limit's 1,000 − used.
    let left = (1_000 - used).to_string();
    assert_eq!(
        r.header("anthropic-ratelimit-output-tokens-remaining"),
        Some(left.as_str())
    );
    let r = post(&c, &m.url(), ANTHROPIC, &capped(false, "x", 1)).await;
    assert_eq!(r.status, 200);
    let left = (1_000 - used - 1).to_string();
    assert_eq!(
        r.header("anthropic-ratelimit-output-tokens-remaining"),
        Some(left.as_str())
    );
}
