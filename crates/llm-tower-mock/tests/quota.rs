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
