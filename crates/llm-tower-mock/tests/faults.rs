//! Every fault, driven through a plain hyper client over loopback: what
//! arrives on the wire, and when (paused tokio time: delays cost nothing).

mod support;

use std::time::Duration;

use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use serde_json::Value;
use support::*;

const SEC: Duration = Duration::from_secs(1);

async fn mock(rules: Vec<Rule>) -> MockServer {
    let mut b = MockServer::builder().seed(11);
    for r in rules {
        b = b.rule(r);
    }
    b.start().await.unwrap()
}

/// (path, body) of a request to each provider.
fn each_provider(stream: bool) -> Vec<(Provider, String, Value)> {
    vec![
        (
            Provider::OpenAi,
            OPENAI.into(),
            openai("gpt-4o-mini", stream, "hi"),
        ),
        (
            Provider::Anthropic,
            ANTHROPIC.into(),
            anthropic("claude-sonnet-4-5", stream, "hi"),
        ),
        (
            Provider::Gemini,
            gemini_path("gemini-2.0-flash", stream),
            gemini("hi"),
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn rate_limited_carries_each_providers_delay() {
    let m = mock(vec![Rule::new(Fault::rate_limited(Duration::from_millis(
        2500,
    )))])
    .await;
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, false, "hi").await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("retry-after"),
        Some("3"),
        "whole seconds, rounded up"
    );
    assert_eq!(r.header("retry-after-ms"), Some("2500"));
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));

    let r = ask(&c, &m.url(), Provider::Anthropic, false, "hi").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(
        r.header("retry-after-ms"),
        None,
        "Anthropic sends seconds only"
    );
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("request-id").unwrap().starts_with("req_01"));

    let r = post(
        &c,
        &m.url(),
        &gemini_path("gemini-2.0-flash", false),
        &gemini("hi"),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(r.json()["error"]["details"][0]["retryDelay"], "3s");
}

#[tokio::test(start_paused = true)]
async fn quota_and_context_errors_are_the_providers_own() {
    let m = mock(vec![
        Rule::new(Fault::InsufficientQuota).times(2),
        Rule::new(Fault::ContextLength).times(2),
    ])
    .await;
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, false, "a").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota");
    assert_eq!(
        r.header("retry-after"),
        None,
        "quota exhausted has no retry"
    );
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "a").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credit balance")
    );

    let r = ask(&c, &m.url(), Provider::OpenAi, false, "b").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(r.json()["error"]["param"], "messages");
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "b").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt is too long")
    );
}

#[tokio::test]
async fn a_real_context_window_is_enforced() {
    let m = MockServer::builder()
        .context_window(1000)
        .start()
        .await
        .unwrap();
    let c = client();
    let mut body = openai("gpt-4o", false, "hi");
    body["max_completion_tokens"] = 995.into(); // with the 7-token prompt: 1002
    let r = post(&c, &m.url(), OPENAI, &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    body["max_completion_tokens"] = 100.into();
    assert_eq!(post(&c, &m.url(), OPENAI, &body).await.status, 200);
}

#[tokio::test]
async fn any_status_gets_that_providers_error_body() {
    let statuses = [
        400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529,
    ];
    let m = mock(vec![]).await;
    let c = client();
    for status in statuses {
        m.clear_rules();
        m.push_rule(Rule::new(Fault::status(status))).unwrap();
        for (provider, path, body) in each_provider(false) {
            let r = post(&c, &m.url(), &path, &body).await;
            assert_eq!(r.status, status, "{provider}");
            let j = r.json();
            match provider {
                Provider::OpenAi => {
                    assert!(j["error"]["message"].is_string(), "{j}");
                    assert!(j["error"]["type"].is_string(), "{j}");
                }
                Provider::Anthropic => {
                    assert_eq!(j["type"], "error");
                    assert!(
                        j["error"]["type"].as_str().unwrap().ends_with("error")
                            || j["error"]["type"] == "request_too_large",
                        "{j}"
                    );
                }
                Provider::Gemini => {
                    assert_eq!(j["error"]["code"], status);
                    assert!(
                        j["error"]["status"]
                            .as_str()
                            .unwrap()
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c == '_')
                    );
                }
            }
        }
    }
    // A few that clients branch on, exactly.
    m.clear_rules();
    m.push_rule(Rule::new(Fault::status(401))).unwrap();
    let r = ask(&c, &m.url(), Provider::OpenAi, false, "x").await;
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "x").await;
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    m.clear_rules();
    m.push_rule(Rule::new(Fault::status(529))).unwrap();
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "x").await;
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn overloaded_is_529_for_anthropic_and_503_elsewhere() {
    let m = mock(vec![Rule::new(Fault::Overloaded)]).await;
    let c = client();
    for (provider, path, body) in each_provider(true) {
        let r = post(&c, &m.url(), &path, &body).await;
        let expected = if provider == Provider::Anthropic {
            529
        } else {
            503
        };
        assert_eq!(r.status, expected, "{provider}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "x").await;
    assert_eq!(r.json()["error"]["type"], "overloaded_error");
}

#[tokio::test(start_paused = true)]
async fn latency_and_slow_first_byte_hold_the_headers() {
    let m = mock(vec![
        Rule::new(Fault::Latency {
            delay: Duration::from_millis(300),
            jitter: Duration::ZERO,
        })
        .model("slow*"),
        Rule::new(Fault::SlowFirstByte { delay: 5 * SEC }).model("slower"),
        Rule::new(Fault::status(500)).model("slower-failing"),
    ])
    .await;
    let c = client();
    let r = post(&c, &m.url(), OPENAI, &openai("fast", false, "x")).await;
    assert_eq!(r.head_at, Duration::ZERO);
    let r = post(&c, &m.url(), OPENAI, &openai("slow", false, "x")).await;
    assert_eq!(
        (r.status.as_u16(), r.head_at),
        (200, Duration::from_millis(300))
    );
    let r = post(&c, &m.url(), OPENAI, &openai("slower", false, "x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.head_at,
        5 * SEC + Duration::from_millis(300),
        "latency adds to the fault"
    );
    // Latency delays errors too.
    let r = post(&c, &m.url(), OPENAI, &openai("slower-failing", false, "x")).await;
    assert_eq!(
        (r.status.as_u16(), r.head_at),
        (500, Duration::from_millis(300))
    );
    let e = m.journal().entries();
    assert_eq!(e[2].faults, ["latency", "slow_first_byte"]);
}

/// Each event of a reply with the time its frame arrived: (at, name, data).
fn timed_events(r: &Reply) -> Vec<(Duration, Option<String>, String)> {
    r.frames
        .iter()
        .flat_map(|f| {
            let text = String::from_utf8_lossy(&f.bytes).into_owned();
            sse_events(&text)
                .into_iter()
                .map(move |(name, data)| (f.at, name, data))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether an event carries model output, by each provider's documentation.
fn carries_output(name: Option<&str>, data: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return false;
    };
    match name {
        Some(n) => n == "content_block_delta",
        None => {
            let openai = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            let gemini = v["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty());
            openai || gemini
        }
    }
}

#[tokio::test(start_paused = true)]
async fn slow_first_token_sends_the_preamble_then_waits_for_the_first_token() {
    let m = mock(vec![Rule::new(Fault::slow_first_token(3 * SEC))]).await;
    let c = client();
    for (provider, path, body) in each_provider(true) {
        let r = post(&c, &m.url(), &path, &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.head_at, Duration::ZERO, "{provider}");
        assert!(r.error.is_none());
        let events = timed_events(&r);
        let first = events
            .iter()
            .position(|(_, n, d)| carries_output(n.as_deref(), d))
            .unwrap_or_else(|| panic!("{provider}: no token"));
        // Everything before the first token came with the headers.
        assert!(
            events[..first].iter().all(|(at, ..)| at.is_zero()),
            "{provider}: {events:?}"
        );
        assert_eq!(events[first].0, 3 * SEC, "{provider}");
        let names: Vec<_> = events[..first]
            .iter()
            .map(|(_, n, _)| n.clone().unwrap_or_default())
            .collect();
        match provider {
            Provider::Anthropic => {
                assert_eq!(names, ["message_start", "content_block_start", "ping"])
            }
            Provider::OpenAi => assert_eq!(first, 1, "the role chunk"),
            Provider::Gemini => assert_eq!(first, 0, "no preamble"),
        }
    }
    // Non-streaming calls pass over stream faults.
    let r = ask(&c, &m.url(), Provider::OpenAi, false, "x").await;
    assert!(r.frames.iter().all(|f| f.at == Duration::ZERO));
    assert_eq!(m.journal().entries()[3].faults, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn slow_first_token_sends_each_providers_keepalive_while_waiting() {
    let m = mock(vec![Rule::new(Fault::SlowFirstToken {
        delay: 5 * SEC,
        keepalive: Some(SEC),
    })])
    .await;
    let c = client();
    for (provider, path, body) in each_provider(true) {
        let r = post(&c, &m.url(), &path, &body).await;
        assert!(r.error.is_none());
        let events = timed_events(&r);
        let first = events
            .iter()
            .position(|(_, n, d)| carries_output(n.as_deref(), d))
            .unwrap();
        assert_eq!(events[first].0, 5 * SEC, "{provider}");
        let waiting: Vec<_> = events[..first]
            .iter()
            .filter(|(at, ..)| !at.is_zero())
            .collect();
        let at: Vec<Duration> = waiting.iter().map(|(at, ..)| *at).collect();
        assert_eq!(at, [SEC, 2 * SEC, 3 * SEC, 4 * SEC], "{provider}");
        for (_, name, data) in waiting {
            match provider {
                // A comment: bytes on the wire, no event data.
                Provider::Gemini => assert!(data.is_empty(), "{data}"),
                Provider::Anthropic => {
                    assert_eq!(name.as_deref(), Some("ping"));
                    let v: Value = serde_json::from_str(data).unwrap();
                    assert_eq!(v, serde_json::json!({"type": "ping"}));
                }
                Provider::OpenAi => {
                    let v: Value = serde_json::from_str(data).unwrap();
                    assert_eq!(v["choices"][0]["delta"], serde_json::json!({"content": ""}));
                }
            }
        }
        if provider == Provider::Gemini {
            assert_eq!(r.text().matches(": keep-alive\n\n").count(), 4);
        }
    }
    // The spec form, and the header form for one call.
    let rule: Rule = "slow-first-token=5s:1s".parse().unwrap();
    assert_eq!(rule, m.rules()[0]);
    let r = post_with(
        &c,
        &m.url(),
        OPENAI,
        &openai("gpt-4o", true, "header"),
        &[("x-mock-fault", "slow-first-token=2s:500ms")],
    )
    .await;
    let events = timed_events(&r);
    let first = events
        .iter()
        .position(|(_, n, d)| carries_output(n.as_deref(), d))
        .unwrap();
    assert_eq!(events[first].0, 2 * SEC);
    assert_eq!(first, 1 + 3, "the role chunk and three keep-alives");
}

#[tokio::test(start_paused = true)]
async fn empty_deltas_come_between_the_role_chunk_and_the_first_token() {
    let m = mock(vec![
        Rule::new(Fault::EmptyDeltas { count: 3 }),
        Rule::new(Fault::slow_first_token(4 * SEC)),
    ])
    .await;
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, true, "x").await;
    let events = timed_events(&r);
    let deltas: Vec<Value> = events
        .iter()
        .filter(|(_, _, d)| d != "[DONE]")
        .map(|(_, _, d)| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"].clone())
        .collect();
    assert_eq!(deltas[0]["role"], "assistant");
    for d in &deltas[1..4] {
        assert_eq!(*d, serde_json::json!({"content": ""}));
    }
    assert!(events[..4].iter().all(|(at, ..)| at.is_zero()));
    assert!(carries_output(None, &events[4].2));
    assert_eq!(
        events[4].0,
        4 * SEC,
        "the stall comes after the empty deltas"
    );
    assert_eq!(
        m.journal().entries()[0].faults,
        ["empty_deltas", "slow_first_token"]
    );
    // Other providers' streams are left as they are, and spend no count.
    let r = ask(&c, &m.url(), Provider::Anthropic, true, "x").await;
    assert_eq!(m.journal().entries()[1].faults, ["slow_first_token"]);
    assert!(r.error.is_none());
}

#[tokio::test(start_paused = true)]
async fn no_done_ends_a_complete_stream_without_its_done_marker() {
    let m = mock(vec![Rule::new(Fault::NoDone)]).await;
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, true, "x").await;
    assert!(r.error.is_none(), "a clean end of body");
    let events = r.events();
    assert!(events.iter().all(|(_, d)| d != "[DONE]"), "{events:?}");
    let json = r.event_json();
    let usage = json.last().unwrap();
    assert_eq!(
        usage["choices"],
        serde_json::json!([]),
        "the usage chunk is last"
    );
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finish = &json[json.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    // Every token came: unlike `truncate`, nothing is missing.
    let tokens = json
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .count() as u64;
    assert_eq!(Some(tokens), usage["usage"]["completion_tokens"].as_u64());
    assert_eq!(m.journal().entries()[0].faults, ["no_done"]);
    // Anthropic streams keep their terminal event.
    let r = ask(&c, &m.url(), Provider::Anthropic, true, "x").await;
    assert_eq!(
        r.events().last().unwrap().0.as_deref(),
        Some("message_stop")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_pauses_mid_stream_then_finishes() {
    let m = MockServer::builder()
        .token_interval(Duration::from_millis(10))
        .rule(Rule::new(Fault::Stall {
            after: 2,
            duration: 4 * SEC,
        }))
        .start()
        .await
        .unwrap();
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, true, "x").await;
    let data: Vec<_> = r.events();
    assert_eq!(data.last().unwrap().1, "[DONE]", "the stream finishes");
    // Frames: role chunk at 0, token 1 at 10 ms, token 2 at 20 ms, then
    // token 3 after the stall and its own interval.
    let at: Vec<Duration> = r.frames.iter().map(|f| f.at).collect();
    assert_eq!(at[0], Duration::ZERO);
    assert_eq!(at[1], Duration::from_millis(10));
    assert_eq!(at[2], Duration::from_millis(20));
    assert_eq!(at[3], 4 * SEC + Duration::from_millis(30));
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps.iter().filter(|g| **g >= SEC).count(),
        1,
        "one stall: {gaps:?}"
    );
}

#[tokio::test]
async fn a_drop_breaks_the_connection_after_n_tokens() {
    let m = mock(vec![Rule::new(Fault::Drop { after: 3 })]).await;
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, true, "x").await;
    assert_eq!(r.status, 200);
    assert!(r.error.is_some(), "the body breaks off: {:?}", r.text());
    let chunks = r.event_json();
    let tokens = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(tokens, 3);
    assert!(!r.text().contains("[DONE]"));

    let r = ask(&c, &m.url(), Provider::Anthropic, true, "x").await;
    assert!(r.error.is_some());
    let names: Vec<_> = r.events().into_iter().map(|(n, _)| n.unwrap()).collect();
    assert_eq!(
        names.iter().filter(|n| *n == "content_block_delta").count(),
        3
    );
    assert!(!names.contains(&"message_stop".to_owned()));
    assert_eq!(m.journal().entries()[1].output_tokens, Some(3));
}

#[tokio::test]
async fn drop_at_zero_sends_headers_and_nothing_else() {
    let m = mock(vec![Rule::new(Fault::Drop { after: 0 })]).await;
    let r = ask(&client(), &m.url(), Provider::Anthropic, true, "x").await;
    assert_eq!(r.status, 200);
    assert!(r.frames.is_empty());
    assert!(r.error.is_some());
}

#[tokio::test]
async fn a_truncated_stream_ends_cleanly_without_its_terminal_event() {
    let m = mock(vec![Rule::new(Fault::Truncate { after: 4 })]).await;
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, true, "x").await;
    assert!(r.error.is_none(), "clean end of body");
    assert!(!r.text().contains("[DONE]"));
    assert!(
        r.event_json()
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert!(
        r.event_json().iter().all(|c| c["usage"].is_null()),
        "no usage chunk"
    );

    let r = ask(&c, &m.url(), Provider::Anthropic, true, "x").await;
    assert!(r.error.is_none());
    let names: Vec<_> = r.events().into_iter().map(|(n, _)| n.unwrap()).collect();
    assert_eq!(names.last().unwrap(), "content_block_delta");
    assert!(!names.contains(&"message_delta".to_owned()));

    let (_, path, body) = each_provider(true).remove(2);
    let r = post(&c, &m.url(), &path, &body).await;
    assert!(
        r.event_json()
            .iter()
            .all(|c| c["candidates"][0]["finishReason"].is_null())
    );
}

#[tokio::test]
async fn a_malformed_chunk_is_one_broken_event_in_a_stream_that_goes_on() {
    let m = mock(vec![Rule::new(Fault::Malformed { after: 2 })]).await;
    let c = client();
    for (provider, path, body) in each_provider(true) {
        let r = post(&c, &m.url(), &path, &body).await;
        let events = r.events();
        let broken: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, (_, d))| d != "[DONE]" && serde_json::from_str::<Value>(d).is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(broken.len(), 1, "{provider}: {events:?}");
        assert!(
            broken[0] > 0 && broken[0] < events.len() - 1,
            "{provider}: mid-stream"
        );
        assert!(r.error.is_none());
    }
}

#[tokio::test]
async fn an_error_event_inside_a_200_stream() {
    let m = mock(vec![
        Rule::new(Fault::ErrorEvent { after: 2 }).provider(Provider::OpenAi),
    ])
    .await;
    m.push_rule(Rule::new(Fault::ErrorEvent { after: 0 }).provider(Provider::Anthropic))
        .unwrap();
    m.push_rule(Rule::new(Fault::ErrorEvent { after: 1 }).provider(Provider::Gemini))
        .unwrap();
    let c = client();
    let r = ask(&c, &m.url(), Provider::OpenAi, true, "x").await;
    assert_eq!(r.status, 200);
    let chunks = r.event_json();
    assert_eq!(chunks.len(), 4, "role, two tokens, the error: {chunks:?}");
    assert_eq!(chunks[3]["error"]["type"], "server_error");

    let r = ask(&c, &m.url(), Provider::Anthropic, true, "x").await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(events.len(), 1, "the error is the first and only event");
    assert_eq!(events[0].0.as_deref(), Some("error"));
    let data: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(data["error"]["type"], "overloaded_error");

    let (_, path, body) = each_provider(true).remove(2);
    let r = post(&c, &m.url(), &path, &body).await;
    let chunks = r.event_json();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1]["error"]["status"], "UNAVAILABLE");
}

#[tokio::test(start_paused = true)]
async fn an_outage_window_opens_and_closes_on_time() {
    let m = mock(vec![Rule::outage(10 * SEC..20 * SEC)]).await;
    let c = client();
    let mut seen = Vec::new();
    for t in [0, 9, 10, 15, 19, 20, 25] {
        tokio::time::sleep_until(
            tokio::time::Instant::now() + (t * SEC).saturating_sub(m.elapsed()),
        )
        .await;
        let r = post(
            &c,
            &m.url(),
            ANTHROPIC,
            &anthropic("claude-haiku-4-5", false, &format!("t{t}")),
        )
        .await;
        seen.push((t, r.status.as_u16()));
    }
    assert_eq!(
        seen,
        [
            (0, 200),
            (9, 200),
            (10, 529),
            (15, 529),
            (19, 529),
            (20, 200),
            (25, 200)
        ]
    );
}

#[tokio::test]
async fn times_and_matchers_pick_their_requests() {
    let m = mock(vec![
        Rule::new(Fault::status(503)).model("gpt-4o").times(2),
        Rule::new(Fault::status(500)).path("/v1/messages"),
    ])
    .await;
    let c = client();
    let mut got = Vec::new();
    for model in ["gpt-4o-mini", "gpt-4o", "gpt-4o", "gpt-4o"] {
        got.push(
            post(&c, &m.url(), OPENAI, &openai(model, false, "x"))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(got, [200, 503, 503, 200]);
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "x").await;
    assert_eq!(r.status, 500);
}

#[tokio::test]
async fn the_api_key_is_checked_the_way_each_provider_sends_it() {
    let m = MockServer::builder()
        .api_key("sk-test")
        .start()
        .await
        .unwrap();
    let c = client();
    for (provider, path, body) in each_provider(false) {
        assert_eq!(
            post(&c, &m.url(), &path, &body).await.status,
            401,
            "{provider}"
        );
        let (name, value) = match provider {
            Provider::OpenAi => ("authorization", "Bearer sk-test"),
            Provider::Anthropic => ("x-api-key", "sk-test"),
            Provider::Gemini => ("x-goog-api-key", "sk-test"),
        };
        let r = post_with(&c, &m.url(), &path, &body, &[(name, value)]).await;
        assert_eq!(r.status, 200, "{provider}");
        let r = post_with(&c, &m.url(), &path, &body, &[(name, "wrong")]).await;
        assert_eq!(r.status, 401, "{provider}");
    }
    let path = format!("{}?key=sk-test", gemini_path("gemini-2.0-flash", false));
    assert_eq!(post(&c, &m.url(), &path, &gemini("x")).await.status, 200);
}

#[tokio::test]
async fn bad_requests_are_refused_like_the_provider_would() {
    let m = mock(vec![]).await;
    let c = client();
    let req = http::Request::post(format!("{}{OPENAI}", m.url()))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{not json",
        )))
        .unwrap();
    let r = send(&c, req).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    let mut body = anthropic("claude-haiku-4-5", false, "x");
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&c, &m.url(), ANTHROPIC, &body).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );

    let r = post(
        &c,
        &m.url(),
        OPENAI,
        &serde_json::json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "messages");

    let r = post(
        &c,
        &m.url(),
        "/v1/embeddingz",
        &openai("gpt-4o", false, "x"),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = get(&c, &format!("{}{OPENAI}", m.url())).await;
    assert_eq!(r.status, 405);
    let statuses: Vec<u16> = m.journal().entries().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [400, 400, 400, 404, 405]);
}

#[tokio::test]
async fn usage_follows_the_request_and_the_output_cap() {
    let m = mock(vec![]).await;
    let c = client();
    let short = ask(&c, &m.url(), Provider::OpenAi, false, "hi")
        .await
        .json();
    let long_prompt = "word ".repeat(400);
    let long = post(&c, &m.url(), OPENAI, &openai("gpt-4o", false, &long_prompt))
        .await
        .json();
    let short_in = short["usage"]["prompt_tokens"].as_u64().unwrap();
    let long_in = long["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(long_in > short_in + 400, "{short_in} vs {long_in}");
    let mut capped = openai("gpt-4o", false, "hi");
    capped["max_completion_tokens"] = 2.into();
    let capped = post(&c, &m.url(), OPENAI, &capped).await.json();
    assert_eq!(capped["usage"]["completion_tokens"], 2);
    assert_eq!(capped["choices"][0]["finish_reason"], "length");
    let e = m.journal().entries();
    assert_eq!(e[1].input_tokens, Some(long_in as u32));
}

#[tokio::test]
async fn a_request_can_ask_for_its_own_fault() {
    let m = mock(vec![Rule::new(Fault::status(500)).times(1)]).await;
    let c = client();
    let body = anthropic("claude-haiku-4-5", true, "x");
    let r = post_with(
        &c,
        &m.url(),
        ANTHROPIC,
        &body,
        &[("x-mock-fault", "error-event=0")],
    )
    .await;
    assert_eq!(r.events()[0].0.as_deref(), Some("error"));
    let r = post_with(
        &c,
        &m.url(),
        ANTHROPIC,
        &body,
        &[("x-mock-fault", "explode")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown fault `explode`")
    );
    // The scripted rule was not spent by the forced fault.
    assert_eq!(post(&c, &m.url(), ANTHROPIC, &body).await.status, 500);
    let faults: Vec<_> = m
        .journal()
        .entries()
        .into_iter()
        .map(|e| e.faults)
        .collect();
    assert_eq!(faults[0], ["error_event"]);
}
