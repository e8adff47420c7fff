//! The journal in-process and over the admin endpoint, rules added over
//! HTTP, and reproducible runs.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::Full;
use llm_tower_mock::{Entry, Fault, MockConfig, MockServer, Provider, Rule};
use support::*;

#[tokio::test]
async fn the_journal_records_every_attempt_and_is_served_over_http() {
    let m = MockServer::builder()
        .rule(Rule::new(Fault::status(503)).times(1))
        .start()
        .await
        .unwrap();
    let c = client();
    let body = openai("gpt-4o", false, "same call");
    post_with(&c, &m.url(), OPENAI, &body, &[("idempotency-key", "k-1")]).await;
    post_with(&c, &m.url(), OPENAI, &body, &[("idempotency-key", "k-1")]).await;
    ask(&c, &m.url(), Provider::Anthropic, true, "other").await;

    let local = m.journal().entries();
    assert_eq!(local.len(), 3);
    assert_eq!(local[0].status, 503);
    assert_eq!(local[0].faults, ["status_503"]);
    assert_eq!(local[1].status, 200);
    assert_eq!(
        local[0].fingerprint, local[1].fingerprint,
        "a retry has the same fingerprint"
    );
    assert_eq!((local[0].attempt, local[1].attempt), (1, 2));
    assert_eq!(local[1].idempotency_key.as_deref(), Some("k-1"));
    assert_ne!(local[0].request_id, local[1].request_id);
    assert_eq!(local[2].model.as_deref(), Some("claude-haiku-4-5"));
    assert!(local[2].stream);
    assert_eq!(local.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);

    let remote = get(&c, &format!("{}/__mock/journal", m.url())).await;
    assert_eq!(remote.status, 200);
    let remote: Vec<Entry> = serde_json::from_str(&remote.text()).unwrap();
    assert_eq!(remote, local, "the admin endpoint serves the same journal");
    // Admin calls are not journaled.
    assert_eq!(m.journal().len(), 3);
    let health = get(&c, &format!("{}/__mock/health", m.url())).await.json();
    assert_eq!(health["requests"], 3);

    let req = http::Request::delete(format!("{}/__mock/journal", m.url()))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 204);
    assert!(m.journal().is_empty());
}

#[tokio::test]
async fn rules_can_be_added_and_cleared_over_http() {
    let m = MockServer::builder().start().await.unwrap();
    let c = client();
    let url = format!("{}/__mock/rules", m.url());
    let post_text = |text: &'static str| {
        http::Request::post(url.clone())
            .body(Full::new(Bytes::from_static(text.as_bytes())))
            .unwrap()
    };
    // A spec per line…
    let r = send(
        &c,
        post_text("status=500,times=1\nrate-limited=2s,model=gpt-4o-mini"),
    )
    .await;
    assert_eq!(r.status, 200);
    // …or JSON.
    let r = send(
        &c,
        post_text(r#"{"fault":{"kind":"overloaded"},"match":{"provider":"anthropic"}}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(
        m.rules()[1],
        "rate-limited=2s,model=gpt-4o-mini".parse().unwrap()
    );

    assert_eq!(
        ask(&c, &m.url(), Provider::OpenAi, false, "x").await.status,
        500
    );
    assert_eq!(
        post(&c, &m.url(), OPENAI, &openai("gpt-4o-mini", false, "x"))
            .await
            .status,
        429
    );
    let r = ask(&c, &m.url(), Provider::Anthropic, false, "x").await;
    assert_eq!(r.status, 529);

    let r = send(&c, post_text("status=200")).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not an error status")
    );
    let r = get(&c, &format!("{}/__mock/nothing", m.url())).await;
    assert_eq!(r.status, 404);

    let req = http::Request::delete(url.clone())
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&c, req).await.status, 204);
    assert!(m.rules().is_empty());
    assert_eq!(
        ask(&c, &m.url(), Provider::OpenAi, false, "x").await.status,
        200
    );
}

fn chaos(seed: u64) -> MockConfig {
    MockConfig {
        seed,
        rules: vec![
            Rule::new(Fault::rate_limited(Duration::from_secs(1))).probability(0.2),
            Rule::new(Fault::status(500)).probability(0.2),
            Rule::new(Fault::Drop { after: 2 }).probability(0.3),
        ],
        ..MockConfig::default()
    }
}

/// What must be equal between two runs: every entry but its arrival time
/// and sequence number, sorted by request.
fn outcome(entries: &[Entry]) -> Vec<Entry> {
    let mut v: Vec<Entry> = entries
        .iter()
        .map(|e| Entry {
            seq: 0,
            at: Duration::ZERO,
            ..e.clone()
        })
        .collect();
    v.sort_by(|a, b| (&a.fingerprint, a.attempt).cmp(&(&b.fingerprint, b.attempt)));
    v
}

/// Sends 40 distinct calls, all at once, retrying each failure once.
async fn run(m: &MockServer) -> Vec<String> {
    let c = client();
    let calls = (0..40).map(|i| {
        let c = c.clone();
        let base = m.url();
        async move {
            let body = openai("gpt-4o", i % 2 == 0, &format!("call {i}"));
            let first = post(&c, &base, OPENAI, &body).await;
            let second = post(&c, &base, OPENAI, &body).await;
            // Content without the wall-clock `created` field.
            let strip = |r: &Reply| -> String {
                let values = if r
                    .header("content-type")
                    .unwrap()
                    .starts_with("text/event-stream")
                {
                    r.event_json()
                } else {
                    vec![r.json()]
                };
                values
                    .into_iter()
                    .map(|mut v| {
                        v.as_object_mut().map(|o| o.remove("created"));
                        v.to_string()
                    })
                    .collect()
            };
            format!(
                "{} {} | {} {}",
                first.status,
                strip(&first),
                second.status,
                strip(&second)
            )
        }
    });
    join_all(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_and_script_give_the_same_run_whatever_the_arrival_order() {
    let a = MockServer::start(chaos(5)).await.unwrap();
    let b = MockServer::start(chaos(5)).await.unwrap();
    let c = MockServer::start(chaos(6)).await.unwrap();
    let (ra, rb, rc) = (run(&a).await, run(&b).await, run(&c).await);
    assert_eq!(ra, rb, "same answers, byte for byte (but `created`)");
    assert_ne!(ra, rc);
    assert_eq!(
        outcome(&a.journal().entries()),
        outcome(&b.journal().entries())
    );
    assert_ne!(
        outcome(&a.journal().entries()),
        outcome(&c.journal().entries()),
        "another seed, another run"
    );
    let faults = a.journal().count(|e| !e.faults.is_empty());
    assert!(faults > 10 && faults < 70, "{faults} faulty attempts of 80");
}

#[tokio::test]
async fn a_gemini_key_in_the_query_is_never_recorded_or_echoed() {
    let m = MockServer::builder()
        .api_key("secret123")
        .start()
        .await
        .unwrap();
    let c = client();
    let path = format!("{}&key=secret123", gemini_path("gemini-2.0-flash", true));
    let ok = post(&c, &m.url(), &path, &gemini("hi")).await;
    assert_eq!(ok.status, 200, "the key is still checked: {}", ok.text());
    let not_found = post(&c, &m.url(), "/v1/nowhere?key=secret123", &gemini("hi")).await;
    assert_eq!(not_found.status, 404);
    assert!(
        !not_found.text().contains("secret123"),
        "{}",
        not_found.text()
    );
    assert!(
        not_found.text().contains("key=REDACTED"),
        "{}",
        not_found.text()
    );
    let admin = get(&c, &format!("{}/__mock/nowhere?key=secret123", m.url())).await;
    assert_eq!(admin.status, 404);
    assert!(!admin.text().contains("secret123"), "{}", admin.text());

    let entries = m.journal().entries();
    assert_eq!(entries.len(), 2);
    assert!(
        entries[0].path.ends_with("?alt=sse&key=REDACTED"),
        "{:?}",
        entries[0]
    );
    assert!(entries[0].stream);
    for e in &entries {
        assert!(!format!("{e:?}").contains("secret123"), "{e:?}");
    }
    let remote = get(&c, &format!("{}/__mock/journal", m.url())).await;
    assert!(remote.text().contains("key=REDACTED"), "{}", remote.text());
    assert!(!remote.text().contains("secret123"), "{}", remote.text());
}
