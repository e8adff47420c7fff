//! Stream translation against the project's mock provider: its real
//! streams, cut where the network cuts them, translated to the other
//! format and read back by the crate's own parser and classifier — the
//! first token, the finish reason, the usage, errors and cuts survive.

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    classify::{Classifier, DefaultClassifier},
    metering::{StreamError, StreamProgress, TruncatedStream},
    provider::WireFormat,
    translate::StreamTranslator,
};
use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use serde_json::{Value, json};

fn format_of(provider: Provider) -> WireFormat {
    match provider {
        Provider::Anthropic => WireFormat::AnthropicMessages,
        _ => WireFormat::OpenAiChat,
    }
}

fn other(format: WireFormat) -> WireFormat {
    match format {
        WireFormat::OpenAiChat => WireFormat::AnthropicMessages,
        _ => WireFormat::OpenAiChat,
    }
}

/// The mock's stream for `provider`, frame by frame.
async fn frames(mock: &MockServer, provider: Provider) -> Vec<Bytes> {
    let (path, body) = match provider {
        Provider::Anthropic => (
            "/v1/messages",
            json!({"model": "claude-haiku-4-5", "max_tokens": 512, "stream": true,
                "messages": [{"role": "user", "content": "Tell me a story"}]}),
        ),
        _ => (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "Tell me a story"}]}),
        ),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("{}{path}", mock.url()))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let mut body = client.request(req).await.unwrap().into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => out.extend(f.into_data().ok()),
            Err(_) => break,
        }
    }
    out
}

/// A stream read by the crate's own parser, as a layer would.
fn progress(format: WireFormat, frames: &[Bytes]) -> StreamProgress {
    let mut res = Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(())
        .unwrap();
    let (progress, feeder) = StreamProgress::attach_with(&mut res, Some(format), true).unwrap();
    let mut feeder = feeder.unwrap();
    for f in frames {
        feeder.feed(f);
    }
    feeder.end();
    progress
}

/// The translated stream, one output per target frame (and the end).
fn translate(from: WireFormat, frames: &[Bytes]) -> Vec<Bytes> {
    let mut t = StreamTranslator::new(from, other(from), "the-model").unwrap();
    let mut out: Vec<Bytes> = frames.iter().map(|f| t.feed(f).unwrap()).collect();
    out.push(t.finish().unwrap());
    out
}

/// The answer's text, from the events of either format.
fn text(format: WireFormat, frames: &[Bytes]) -> String {
    let mut parser = llm_tower::metering::SseParser::new();
    let mut text = String::new();
    for f in frames {
        parser.feed(f, |ev| {
            let Ok(v) = serde_json::from_slice::<Value>(ev.data) else {
                return;
            };
            let part = match format {
                WireFormat::OpenAiChat => &v["choices"][0]["delta"]["content"],
                _ => &v["delta"]["text"],
            };
            text += part.as_str().unwrap_or("");
        });
    }
    text
}

#[tokio::test]
async fn translated_mock_streams_keep_first_token_finish_usage_and_failures() {
    let mock = MockServer::builder().start().await.unwrap();
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let from = format_of(provider);
        let to = other(from);

        mock.clear_rules();
        let target = frames(&mock, provider).await;
        let caller = translate(from, &target);
        let (t, c) = (progress(from, &target), progress(to, &caller));
        assert!(
            c.has_output() && c.is_complete() && !c.has_failed(),
            "{provider}"
        );
        assert_eq!(c.finish_reason(), t.finish_reason(), "{provider}");
        let (tu, cu) = (t.usage().unwrap(), c.usage().unwrap());
        assert_eq!(
            (cu.input_tokens, cu.cached_input_tokens, cu.output_tokens),
            (tu.input_tokens, tu.cached_input_tokens, tu.output_tokens),
            "{provider}"
        );
        let said = text(from, &target);
        assert!(!said.is_empty());
        assert_eq!(text(to, &caller), said, "{provider}");

        mock.clear_rules();
        mock.push_rule(Rule::new(Fault::ErrorEvent { after: 2 }))
            .unwrap();
        let target = frames(&mock, provider).await;
        let caller = translate(from, &target);
        let (t, c) = (progress(from, &target), progress(to, &caller));
        let err = c.failure_error().expect("an error");
        assert!(err.is::<StreamError>(), "{provider}: {err}");
        let classifier = DefaultClassifier::new();
        assert_eq!(
            classifier.classify_error(&*err).class(),
            classifier
                .classify_error(&*t.failure_error().unwrap())
                .class(),
            "{provider}: the same class in both formats"
        );

        mock.clear_rules();
        mock.push_rule(Rule::new(Fault::Truncate { after: 2 }))
            .unwrap();
        let target = frames(&mock, provider).await;
        let c = progress(to, &translate(from, &target));
        assert!(c.has_output() && !c.is_complete(), "{provider}");
        assert!(c.failure().unwrap().is::<TruncatedStream>(), "{provider}");
    }

    // An OpenAI stream without [DONE] is complete, and so is its translation.
    mock.clear_rules();
    mock.push_rule(Rule::new(Fault::NoDone)).unwrap();
    let target = frames(&mock, Provider::OpenAi).await;
    let c = progress(
        WireFormat::AnthropicMessages,
        &translate(WireFormat::OpenAiChat, &target),
    );
    assert!(c.is_complete() && !c.has_failed());
    assert!(c.usage().unwrap().output_tokens > 0);
}
