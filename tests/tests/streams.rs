//! What the caller gets from a stream that breaks, ends oddly or ends well,
//! through the whole recommended stack: a malformed event is never passed
//! on silently, a complete stream is not an error, a cut one is.

mod support;

use llm_tower::{
    classify::{Classifier, DefaultClassifier, FailureClass},
    metering::{MalformedStream, Outcome, TruncatedStream, UsageSource},
    retry::Hold,
};
use llm_tower_mock::{Fault, Provider, Rule};
use support::*;

#[tokio::test(start_paused = true)]
async fn a_malformed_event_before_the_first_token_is_retried() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = mock(vec![Rule::new(Fault::Malformed { after: 0 }).times(1)]).await;
        let stack = Stack::recommended(&Tuning::new());
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        let j = mock.journal().entries();
        assert_eq!(
            j.len(),
            2,
            "{provider}: the broken attempt is retried (caller got: {})",
            answer.describe()
        );
        assert_eq!(j[0].faults, ["malformed"]);
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        assert!(
            all_data_is_json(&answer),
            "{provider}: the caller got the broken event: {}",
            answer.text()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_malformed_event_after_tokens_reaches_the_caller_as_an_error() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = mock(vec![Rule::new(Fault::Malformed { after: 3 })]).await;
        let stack = Stack::recommended(&Tuning::new());
        let mut req = chat(&mock, provider, true, "hi");
        let reports = observe(&mut req);
        let answer = stack.call(req).await;
        assert_eq!(
            mock.journal().len(),
            1,
            "{provider}: tokens came, not retried"
        );
        assert!(
            answer.error.is_some(),
            "{provider}: the body ended Ok with a broken event in it: {}",
            answer.text()
        );
        let err = answer.err();
        assert!(
            find::<MalformedStream>(err).is_some(),
            "{provider}: no MalformedStream in {}",
            show(err)
        );
        let f = DefaultClassifier::new().classify_error(err);
        assert_ne!(f.class(), FailureClass::Other, "{provider}: {}", show(err));
        assert!(!f.is_retryable(), "{provider}: the caller has part of it");
        assert_eq!(reports.last().outcome, Outcome::Malformed, "{provider}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_ending_after_its_finish_reason_without_done_is_complete() {
    // OpenAI-compatible servers that end with the finish and usage chunks
    // and no `data: [DONE]`.
    let mock = mock(vec![Rule::new(Fault::NoDone)]).await;
    let stack = Stack::recommended(&Tuning::new());
    let mut req = chat(&mock, Provider::OpenAi, true, "hi");
    let reports = observe(&mut req);
    let answer = stack.call(req).await;
    assert_eq!(mock.journal().entries()[0].faults, ["no_done"]);
    assert!(!answer.text().contains("[DONE]"));
    assert!(
        answer.is_clean(),
        "a complete stream is not an error: {}",
        answer.describe()
    );
    assert_eq!(mock.journal().len(), 1, "nothing to retry");
    let r = reports.last();
    assert_eq!(r.outcome, Outcome::Completed);
    assert_eq!(r.source, UsageSource::Actual, "the usage chunk came");
    assert_eq!(
        r.usage.output_tokens,
        u64::from(mock.journal().entries()[0].output_tokens.unwrap())
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_before_its_finish_reason_is_an_error() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = mock(vec![Rule::new(Fault::Truncate { after: 3 })]).await;
        let stack = Stack::recommended(&Tuning::new());
        let mut req = chat(&mock, provider, true, "hi");
        let reports = observe(&mut req);
        let answer = stack.call(req).await;
        let err = answer.err();
        assert!(
            find::<TruncatedStream>(err).is_some(),
            "{provider}: no TruncatedStream in {}",
            show(err)
        );
        assert_eq!(reports.last().outcome, Outcome::Truncated, "{provider}");
        assert_eq!(
            mock.journal().len(),
            1,
            "{provider}: tokens came, not retried"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_event_before_the_first_token_is_retried_and_never_seen() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let mock = mock(vec![Rule::new(Fault::ErrorEvent { after: 0 }).times(1)]).await;
        let stack = Stack::recommended(&Tuning::new());
        let answer = stack.call(chat(&mock, provider, true, "hi")).await;
        assert_eq!(mock.journal().len(), 2, "{provider}");
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        let text = answer.text();
        assert!(
            !text.contains("overloaded") && !text.contains("server_error"),
            "{provider}: {text}"
        );
    }
}

/// The model's text in an answer of either format.
fn model_text(answer: &Answer) -> String {
    answer
        .data()
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .or_else(|| v["delta"]["text"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn hold_complete_recovers_a_cut_after_tokens_through_the_recommended_stack() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let clean = {
            let mock = mock(vec![]).await;
            let stack = Stack::recommended(&Tuning::new());
            stack.call(chat(&mock, provider, true, "hi")).await
        };
        assert!(clean.is_clean(), "{provider}: {}", clean.describe());
        assert!(
            !model_text(&clean).is_empty(),
            "{provider}: {}",
            clean.text()
        );
        let mut tuning = Tuning::new();
        tuning.retry = tuning.retry.hold(Hold::complete(1 << 20));
        let mock = mock(vec![Rule::new(Fault::Drop { after: 3 }).times(1)]).await;
        let stack = Stack::recommended(&tuning);
        let mut req = chat(&mock, provider, true, "hi");
        let reports = observe(&mut req);
        let answer = stack.call(req).await;
        let j = mock.journal().entries();
        assert_eq!(j.len(), 2, "{provider}: the cut attempt is retried");
        assert_eq!(j[0].faults, ["drop"], "{provider}");
        assert!(answer.is_clean(), "{provider}: {}", answer.describe());
        assert!(all_data_is_json(&answer), "{provider}: {}", answer.text());
        assert_eq!(
            model_text(&answer),
            model_text(&clean),
            "{provider}: one clean answer, no chunk of the cut one"
        );
        let reports = reports.all();
        assert_eq!(reports.len(), 2, "{provider}: one report per attempt");
        assert_ne!(reports[0].outcome, Outcome::Completed, "{provider}");
        assert_eq!(reports[1].outcome, Outcome::Completed, "{provider}");
    }
}
