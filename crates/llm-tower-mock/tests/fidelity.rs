//! Fidelity of the mock's wire formats.
//!
//! - Its OpenAI answers, streamed and not, and its errors are read by
//!   `async-openai`, a widely used Rust client for that format, exactly as
//!   that client reads OpenAI's own (including its retry of a `429`).
//! - Its server-sent event streams, read raw over plain HTTP/1.1, follow each
//!   provider's documented order: Anthropic's named events from
//!   `message_start` to `message_stop`, OpenAI's role chunk, content chunks,
//!   finish chunk, usage chunk and `[DONE]`, and Gemini's data-only chunks
//!   with the finish reason on the last.

use std::time::{Duration, Instant};

use async_openai::{
    Client,
    config::OpenAIConfig,
    error::OpenAIError,
    types::chat::{
        ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
        CreateChatCompletionRequest, CreateChatCompletionRequestArgs, FinishReason, Role,
    },
};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use llm_tower_mock::{Entry, Fault, MockServer, Rule};
use serde_json::{Value, json};

const SEED: u64 = 0x5eed;

// ---------------------------------------------------------------- helpers

/// A mock with the test seed and `rules`.
async fn mock(rules: impl IntoIterator<Item = Rule>) -> MockServer {
    let mut builder = MockServer::builder().seed(SEED);
    for rule in rules {
        builder = builder.rule(rule);
    }
    builder.start().await.expect("the mock starts")
}

/// An `async-openai` client pointed at the mock.
fn openai(mock: &MockServer) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(mock.openai_base_url())
            .with_api_key("test"),
    )
}

/// A one-message chat request, with an optional output cap.
fn chat_request(prompt: &str, max_completion_tokens: Option<u32>) -> CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("gpt-4o-mini").messages(vec![
        ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .expect("a user message")
            .into(),
    ]);
    if let Some(n) = max_completion_tokens {
        args.max_completion_tokens(n);
    }
    args.build().expect("a chat request")
}

/// The only journal entry.
fn only_entry(mock: &MockServer) -> Entry {
    let entries = mock.journal().entries();
    assert_eq!(entries.len(), 1, "exactly one attempt: {entries:#?}");
    entries.into_iter().next().expect("one entry")
}

/// POSTs `body` as JSON to `url` over plain HTTP/1.1 and reads the whole
/// answer.
async fn post(url: &str, body: &Value) -> (StatusCode, HeaderMap, String) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-api-key", "test")
        .header(header::AUTHORIZATION, "Bearer test")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let resp = client.request(req).await.expect("the mock answers");
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .expect("the whole body arrives")
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("a UTF-8 body");
    (parts.status, parts.headers, text)
}

/// Splits a complete `text/event-stream` body into `(event, data)` pairs.
/// Panics on anything but `event:` and `data:` fields, and on a body that
/// does not end with a blank line (a torn last event).
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(
        body.ends_with("\n\n"),
        "the stream ends with a complete event: {body:?}"
    );
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => {
                        assert!(event.is_none(), "two event names in {block:?}");
                        event = Some(value.to_owned());
                    }
                    "data" => data.push(value),
                    other => panic!("unexpected SSE field {other:?} in {block:?}"),
                }
            }
            assert!(!data.is_empty(), "an event without data: {block:?}");
            (event, data.join("\n"))
        })
        .collect()
}

fn parse(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

// ------------------------------------------------------ async-openai: JSON

#[tokio::test]
async fn async_openai_reads_a_completion_and_its_usage() {
    let mock = mock([]).await;
    let client = openai(&mock);

    let resp = client
        .chat()
        .create(chat_request("Say something about retries.", None))
        .await
        .expect("async-openai accepts the answer");
    let entry = only_entry(&mock);
    assert_eq!(entry.status, 200);
    assert_eq!(resp.object, "chat.completion");
    assert!(resp.id.starts_with("chatcmpl-"), "{}", resp.id);
    assert_eq!(resp.model, "gpt-4o-mini");
    assert_eq!(resp.choices.len(), 1);
    let choice = &resp.choices[0];
    assert_eq!(choice.index, 0);
    assert_eq!(choice.message.role, Role::Assistant);
    let content = choice.message.content.as_deref().unwrap_or_default();
    assert!(!content.is_empty(), "the answer has text");
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let usage = resp.usage.expect("usage is reported");
    assert_eq!(Some(usage.prompt_tokens), entry.input_tokens);
    assert_eq!(Some(usage.completion_tokens), entry.output_tokens);
    assert!(usage.completion_tokens > 0);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );

    // Capped at three tokens: cut short, and billed three.
    mock.journal().clear();
    let resp = client
        .chat()
        .create(chat_request("Say something about retries.", Some(3)))
        .await
        .expect("async-openai accepts the capped answer");
    let entry = only_entry(&mock);
    let choice = &resp.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::Length));
    assert!(
        !choice
            .message
            .content
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );
    let usage = resp.usage.expect("usage is reported");
    assert_eq!(usage.completion_tokens, 3);
    assert_eq!(entry.output_tokens, Some(3));
    assert_eq!(Some(usage.prompt_tokens), entry.input_tokens);
}

// ---------------------------------------------------- async-openai: stream

#[tokio::test]
async fn async_openai_reads_every_chunk_of_a_stream_with_usage() {
    let mock = mock([]).await;
    let client = openai(&mock);
    let mut request = chat_request("Stream something about budgets.", None);
    request.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });

    let mut stream = client
        .chat()
        .create_stream(request)
        .await
        .expect("the stream opens");
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.expect("async-openai accepts every chunk"));
    }
    let entry = only_entry(&mock);
    assert!(entry.stream);
    assert!(chunks.len() >= 4, "role, content, finish and usage chunks");

    // The role comes first.
    assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
    let id = &chunks[0].id;
    for c in &chunks {
        assert_eq!(&c.id, id, "every chunk has the same id");
        assert_eq!(c.object, "chat.completion.chunk");
    }

    let text: String = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|ch| ch.delta.content.as_deref())
        .collect();
    assert!(!text.is_empty(), "the stream carries text");
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c.choices
                .iter()
                .any(|ch| ch.delta.content.as_deref().is_some_and(|t| !t.is_empty()))
        })
        .count() as u32;

    let finishes: Vec<_> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|ch| ch.finish_reason)
        .collect();
    assert_eq!(finishes, [FinishReason::Stop], "exactly one finish reason");

    let last = chunks.last().expect("chunks");
    assert!(last.choices.is_empty(), "the usage chunk has no choices");
    let usage = last.usage.as_ref().expect("the last chunk carries usage");
    assert_eq!(usage.completion_tokens, content_chunks);
    assert_eq!(Some(usage.completion_tokens), entry.output_tokens);
    assert_eq!(Some(usage.prompt_tokens), entry.input_tokens);
    for c in &chunks[..chunks.len() - 1] {
        assert!(c.usage.is_none(), "usage is null before the last chunk");
    }

    // Capped: the stream finishes with `length` after three tokens.
    mock.journal().clear();
    let mut request = chat_request("Stream something about budgets.", Some(3));
    request.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let chunks: Vec<_> = client
        .chat()
        .create_stream(request)
        .await
        .expect("the stream opens")
        .map(|c| c.expect("async-openai accepts every chunk"))
        .collect()
        .await;
    let finishes: Vec<_> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|ch| ch.finish_reason)
        .collect();
    assert_eq!(finishes, [FinishReason::Length]);
    let usage = chunks
        .last()
        .and_then(|c| c.usage.as_ref())
        .expect("usage last");
    assert_eq!(usage.completion_tokens, 3);
    assert_eq!(only_entry(&mock).output_tokens, Some(3));
}

// ---------------------------------------------------- async-openai: errors

#[tokio::test]
async fn async_openai_retries_a_rate_limit_after_retry_after() {
    // async-openai 0.43 retries a `429` (unless its type is
    // `insufficient_quota`), waiting the whole seconds of `retry-after`.
    let mock = mock([Rule::new(Fault::rate_limited(Duration::from_secs(1))).times(1)]).await;
    let client = openai(&mock);

    let started = Instant::now();
    let resp = client
        .chat()
        .create(chat_request("Hello after a rate limit.", None))
        .await
        .expect("the retry succeeds");
    let waited = started.elapsed();
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Stop));

    let entries = mock.journal().entries();
    assert_eq!(entries.len(), 2, "one refusal, one retry: {entries:#?}");
    assert_eq!(entries[0].status, 429);
    assert!(entries[0].has_fault("rate_limited"));
    assert_eq!(entries[0].attempt, 1);
    assert_eq!(entries[1].status, 200);
    assert!(entries[1].faults.is_empty());
    assert_eq!(entries[1].attempt, 2);
    assert_eq!(
        entries[0].fingerprint, entries[1].fingerprint,
        "the retry is the same request"
    );
    // The client honoured `retry-after: 1`.
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before retry-after"
    );
    assert!(entries[1].at - entries[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn async_openai_surfaces_context_length_and_insufficient_quota() {
    let mock = mock([
        Rule::new(Fault::ContextLength).times(1),
        Rule::new(Fault::InsufficientQuota).times(1),
    ])
    .await;
    let client = openai(&mock);

    let err = client
        .chat()
        .create(chat_request("Too long.", None))
        .await
        .expect_err("context length fails");
    let OpenAIError::ApiError(api) = err else {
        panic!("an API error, not {err:?}");
    };
    assert_eq!(api.status_code.as_u16(), 400);
    assert_eq!(
        api.api_error.code.as_deref(),
        Some("context_length_exceeded")
    );
    assert_eq!(
        api.api_error.r#type.as_deref(),
        Some("invalid_request_error")
    );
    assert_eq!(api.api_error.param.as_deref(), Some("messages"));
    assert!(!api.api_error.message.is_empty());
    let entry = only_entry(&mock);
    assert_eq!((entry.status, entry.attempt), (400, 1), "not retried");
    assert!(entry.has_fault("context_length"));

    // A `429` of type `insufficient_quota` is permanent to async-openai: no
    // retry.
    mock.journal().clear();
    let err = client
        .chat()
        .create(chat_request("No credit.", None))
        .await
        .expect_err("insufficient quota fails");
    let OpenAIError::ApiError(api) = err else {
        panic!("an API error, not {err:?}");
    };
    assert_eq!(api.status_code.as_u16(), 429);
    assert_eq!(api.api_error.code.as_deref(), Some("insufficient_quota"));
    assert_eq!(api.api_error.r#type.as_deref(), Some("insufficient_quota"));
    let entry = only_entry(&mock);
    assert_eq!((entry.status, entry.attempt), (429, 1), "not retried");
    assert!(entry.has_fault("insufficient_quota"));
}

// ------------------------------------------------------- raw SSE: Anthropic

fn anthropic_body(stream: bool, max_tokens: u32) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Tell me about circuit breakers."}],
    })
}

#[tokio::test]
async fn anthropic_stream_follows_the_documented_event_order() {
    let mock = mock([]).await;
    let url = format!("{}/v1/messages", mock.url());
    let (status, headers, body) = post(&url, &anthropic_body(true, 1000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type(&headers).starts_with("text/event-stream"));
    let entry = only_entry(&mock);

    let events = sse_events(&body);
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().expect("every Anthropic event is named"))
        .collect();
    let n = names
        .iter()
        .filter(|e| **e == "content_block_delta")
        .count();
    assert!(n >= 1, "at least one delta: {names:?}");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", n));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let data: Vec<Value> = events.iter().map(|(_, d)| parse(d)).collect();
    for ((name, _), d) in events.iter().zip(&data) {
        assert_eq!(
            d["type"].as_str(),
            name.as_deref(),
            "data type matches event"
        );
    }
    let start = &data[0]["message"];
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["content"], json!([]));
    assert!(start["stop_reason"].is_null());
    assert_eq!(
        start["usage"]["input_tokens"].as_u64(),
        entry.input_tokens.map(u64::from)
    );
    assert_eq!(data[1]["index"], 0);
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = data[3..3 + n]
        .iter()
        .map(|d| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().expect("delta text")
        })
        .collect();
    assert!(!text.is_empty());
    let delta = &data[3 + n + 1];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"].as_u64(), Some(n as u64));
    assert_eq!(entry.output_tokens, Some(n as u32));
}

#[tokio::test]
async fn anthropic_message_and_capped_stream_have_their_shapes() {
    let mock = mock([]).await;
    let url = format!("{}/v1/messages", mock.url());
    let (status, headers, body) = post(&url, &anthropic_body(false, 1000)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type(&headers).starts_with("application/json"));
    assert!(
        headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("req_")),
        "Anthropic's request-id header: {headers:?}"
    );
    let entry = only_entry(&mock);
    let msg = parse(&body);
    assert_eq!(msg["type"], "message");
    assert_eq!(msg["role"], "assistant");
    assert!(msg["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(msg["model"], "claude-sonnet-4-5");
    assert_eq!(msg["content"][0]["type"], "text");
    assert!(
        msg["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(msg["stop_reason"], "end_turn");
    assert!(msg["stop_sequence"].is_null());
    assert_eq!(
        msg["usage"]["input_tokens"].as_u64(),
        entry.input_tokens.map(u64::from)
    );
    assert_eq!(
        msg["usage"]["output_tokens"].as_u64(),
        entry.output_tokens.map(u64::from)
    );

    // Capped at two tokens, the stream stops for `max_tokens`.
    mock.journal().clear();
    let (status, _, body) = post(&url, &anthropic_body(true, 2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = sse_events(&body);
    let deltas = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .count();
    assert_eq!(deltas, 2);
    let (name, data) = &events[events.len() - 2];
    assert_eq!(name.as_deref(), Some("message_delta"));
    let delta = parse(data);
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 2);
    assert_eq!(only_entry(&mock).output_tokens, Some(2));
}

#[tokio::test]
async fn anthropic_error_event_comes_first_and_ends_the_stream() {
    let mock = mock([Rule::new(Fault::ErrorEvent { after: 0 }).times(1)]).await;
    let url = format!("{}/v1/messages", mock.url());
    let (status, headers, body) = post(&url, &anthropic_body(true, 1000)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the error comes inside a 200 stream"
    );
    assert!(content_type(&headers).starts_with("text/event-stream"));
    let events = sse_events(&body);
    assert_eq!(events.len(), 1, "nothing after the error: {events:?}");
    let (name, data) = &events[0];
    assert_eq!(name.as_deref(), Some("error"));
    let data = parse(data);
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(data["error"]["message"].is_string());
    let entry = only_entry(&mock);
    assert!(entry.has_fault("error_event"));
    assert_eq!(entry.output_tokens, Some(0));
}

// ---------------------------------------------------------- raw SSE: OpenAI

fn openai_stream_body(include_usage: bool) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "Tell me about deadlines."}],
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

#[tokio::test]
async fn openai_stream_follows_the_documented_chunk_order() {
    let mock = mock([]).await;
    let url = format!("{}/chat/completions", mock.openai_base_url());
    let (status, headers, body) = post(&url, &openai_stream_body(true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type(&headers).starts_with("text/event-stream"));
    let entry = only_entry(&mock);

    let events = sse_events(&body);
    assert!(
        events.iter().all(|(e, _)| e.is_none()),
        "OpenAI events are data-only"
    );
    let (_, done) = events.last().expect("events");
    assert_eq!(done, "[DONE]", "the stream ends with [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| parse(d))
        .collect();
    assert!(chunks.len() >= 4);
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(&c["id"], id);
        assert!(c.get("usage").is_some(), "usage on every chunk: {c}");
    }

    // Role chunk.
    let first = &chunks[0];
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(first["choices"][0]["finish_reason"].is_null());
    assert!(first["usage"].is_null());
    // Content chunks, then the finish chunk, then usage.
    let usage_chunk = &chunks[chunks.len() - 1];
    let finish_chunk = &chunks[chunks.len() - 2];
    let content = &chunks[1..chunks.len() - 2];
    assert!(!content.is_empty());
    for c in content {
        let choice = &c["choices"][0];
        assert!(
            choice["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        assert!(choice["finish_reason"].is_null());
        assert!(c["usage"].is_null());
    }
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "stop");
    assert!(finish_chunk["usage"].is_null());
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(
        usage["completion_tokens"].as_u64(),
        Some(content.len() as u64)
    );
    assert_eq!(
        usage["prompt_tokens"].as_u64(),
        entry.input_tokens.map(u64::from)
    );
    assert_eq!(entry.output_tokens, Some(content.len() as u32));
    assert_eq!(
        chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .count(),
        1,
        "one finish reason"
    );
}

#[tokio::test]
async fn openai_stream_without_include_usage_has_no_usage_key() {
    let mock = mock([]).await;
    let url = format!("{}/chat/completions", mock.openai_base_url());
    let (status, _, body) = post(&url, &openai_stream_body(false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = sse_events(&body);
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| parse(d))
        .collect();
    for c in &chunks {
        assert!(c.get("usage").is_none(), "no usage key: {c}");
        assert_eq!(c["choices"].as_array().map(Vec::len), Some(1));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().expect("chunks");
    assert_eq!(
        last["choices"][0]["finish_reason"], "stop",
        "the finish chunk comes just before [DONE]"
    );
}

// ---------------------------------------------------------- raw SSE: Gemini

#[tokio::test]
async fn gemini_stream_is_data_only_with_the_finish_reason_last() {
    let mock = mock([]).await;
    let url = format!(
        "{}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        mock.url()
    );
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let (status, headers, body) = post(&url, &body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type(&headers).starts_with("text/event-stream"));
    let entry = only_entry(&mock);
    assert!(entry.stream);
    assert_eq!(entry.model.as_deref(), Some("gemini-2.0-flash"));

    let events = sse_events(&body);
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|(e, _)| e.is_none()),
        "Gemini events are data-only"
    );
    let chunks: Vec<Value> = events.iter().map(|(_, d)| parse(d)).collect();
    let mut text = String::new();
    let mut previous = 0;
    for (i, c) in chunks.iter().enumerate() {
        let candidate = &c["candidates"][0];
        assert_eq!(candidate["content"]["role"], "model");
        text.push_str(
            candidate["content"]["parts"][0]["text"]
                .as_str()
                .expect("a text part"),
        );
        let last = i + 1 == chunks.len();
        if last {
            assert_eq!(candidate["finishReason"], "STOP");
        } else {
            assert!(
                candidate.get("finishReason").is_none(),
                "only the last chunk finishes: {c}"
            );
        }
        let usage = &c["usageMetadata"];
        assert_eq!(
            usage["promptTokenCount"].as_u64(),
            entry.input_tokens.map(u64::from)
        );
        let sent = usage["candidatesTokenCount"].as_u64().expect("a count");
        assert!(sent >= previous, "usage only grows");
        previous = sent;
    }
    assert!(!text.is_empty());
    let last = chunks.last().expect("chunks");
    assert_eq!(
        last["usageMetadata"]["candidatesTokenCount"].as_u64(),
        entry.output_tokens.map(u64::from)
    );
    assert_eq!(
        last["usageMetadata"]["totalTokenCount"].as_u64(),
        entry
            .input_tokens
            .zip(entry.output_tokens)
            .map(|(i, o)| u64::from(i + o))
    );
}
