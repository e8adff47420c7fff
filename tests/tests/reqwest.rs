//! The recommended stack over reqwest (`llm_tower::client::ReqwestService`)
//! instead of hyper-util's client, against the mock on loopback: healthy
//! calls, a server-directed retry, a stream cut after tokens and a refused
//! connection, in both wire formats.
//!
//! reqwest runs on tokio's clock like everything else here, so the tests
//! use paused time; no reqwest timeout is set.

mod support;

use llm_tower::{
    classify::{Classifier, DefaultClassifier, FailureClass},
    client::ReqwestService,
    metering::{Outcome, UsageSource},
    retry::StreamInterrupted,
};
use llm_tower_mock::{Fault, Provider, Rule};
use support::*;

/// A reqwest client as an application builds one, under the layers: no
/// redirects, no timeouts of its own (the layers own them).
fn reqwest_client() -> ReqwestService {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a reqwest client");
    ReqwestService::new(client)
}

fn stack(t: &Tuning) -> Stack {
    Stack::recommended_over(t, reqwest_client())
}

#[tokio::test(start_paused = true)]
async fn a_healthy_call_streams_through_and_is_metered() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        for streaming in [false, true] {
            let mock = mock(vec![]).await;
            let stack = stack(&Tuning::new());
            let mut req = chat(&mock, provider, streaming, "hi");
            let reports = observe(&mut req);
            let answer = stack.call(req).await;
            let what = format!("{provider}, stream: {streaming}");
            assert!(answer.is_clean(), "{what}: {}", answer.describe());
            if streaming {
                assert!(!answer.data().is_empty(), "{what}: no events");
                assert!(all_data_is_json(&answer), "{what}: {}", answer.text());
            } else {
                let json: serde_json::Value =
                    serde_json::from_slice(&answer.body).expect("a JSON answer");
                assert!(json.is_object(), "{what}");
            }
            let j = mock.journal().entries();
            assert_eq!(j.len(), 1, "{what}");
            let r = reports.last();
            assert_eq!(r.outcome, Outcome::Completed, "{what}");
            assert_eq!(r.source, UsageSource::Actual, "{what}");
            assert_eq!(
                r.usage.output_tokens,
                u64::from(j[0].output_tokens.unwrap()),
                "{what}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_response_keeps_its_status_and_headers() {
    let mock = mock(vec![Rule::new(Fault::Status { status: 400 })]).await;
    let stack = stack(&Tuning::new());
    let res = tower::ServiceExt::oneshot(
        stack.svc.clone(),
        chat(&mock, Provider::OpenAi, false, "hi"),
    )
    .await
    .expect("a response");
    assert_eq!(res.status(), 400, "not retried: the caller gets the answer");
    assert!(
        res.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "{:?}",
        res.headers()
    );
    assert_eq!(mock.journal().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_its_retry_after() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = mock(vec![Rule::new(Fault::rate_limited(2 * SEC)).times(1)]).await;
        let stack = stack(&Tuning::new());
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        let j = mock.journal().entries();
        assert_eq!(j.len(), 2, "{provider}");
        assert_eq!(j[0].status, 429, "{provider}");
        assert_eq!(j[1].status, 200, "{provider}");
        assert!(
            j[1].at - j[0].at >= 2 * SEC,
            "{provider}: retried after {:?}, before the server's 2 s",
            j[1].at - j[0].at
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_tokens_reaches_the_caller_as_an_error() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = mock(vec![Rule::new(Fault::Drop { after: 3 })]).await;
        let stack = stack(&Tuning::new());
        let mut req = chat(&mock, provider, true, "hi");
        let reports = observe(&mut req);
        let answer = stack.call(req).await;
        assert_eq!(answer.status, Some(http::StatusCode::OK), "{provider}");
        assert!(!answer.data().is_empty(), "{provider}: the tokens came");
        let err = answer.err();
        let f = DefaultClassifier::new().classify_error(err);
        assert!(
            find::<StreamInterrupted>(err).is_some(),
            "{provider}: {}",
            show(err)
        );
        assert!(
            find::<reqwest::Error>(err).is_some_and(reqwest::Error::is_body),
            "{provider}: {}",
            show(err)
        );
        // The transfer broke off: a connection failure, by reqwest's word.
        assert_eq!(
            f.class(),
            FailureClass::Connect,
            "{provider}: {}",
            show(err)
        );
        assert!(!f.is_retryable(), "{provider}: the caller has part of it");
        assert_eq!(
            mock.journal().len(),
            1,
            "{provider}: tokens came, not retried"
        );
        assert_eq!(reports.last().outcome, Outcome::BodyError, "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_a_connect_failure() {
    // A port that was just free: nothing listens on it.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let stack = stack(&Tuning::new());
    let req = http::Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#.to_owned())
        .unwrap();
    let answer = stack.call(req).await;
    let err = answer.err();
    assert!(
        find::<reqwest::Error>(err).is_some_and(reqwest::Error::is_connect),
        "{}",
        show(err)
    );
    let f = DefaultClassifier::new().classify_error(err);
    assert_eq!(f.class(), FailureClass::Connect, "{}", show(err));
    assert!(
        stack.retries.lock().unwrap().len() >= 2,
        "a refused connection is retried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_url_reqwest_cannot_take_is_an_error_not_a_panic() {
    let mut svc = reqwest_client();
    let req = http::Request::post("/no/host")
        .body(llm_tower::request::ReplayBody::empty())
        .unwrap();
    let err = tower::Service::call(&mut svc, req).await.unwrap_err();
    assert!(
        err.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_builder),
        "{err}"
    );
    let f = DefaultClassifier::new().classify_error(&*err);
    assert!(!f.is_retryable(), "it fails again however often it is sent");
}
