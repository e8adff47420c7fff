//! Tool calls: a request that carries tools and asks for one is answered
//! with one call to that tool, in each provider's documented shape, JSON and
//! streamed. The OpenAI answers are read with `async-openai`'s types.

use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse, FinishReason, FunctionType,
};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use llm_tower_mock::{Entry, MockServer};
use serde_json::{Value, json};

const PROMPT: &str = "What is the weather like in Paris today?";

/// What the mock sends as the arguments of every call for [`PROMPT`]: the
/// prompt's first five words.
fn expected_arguments() -> Value {
    json!({"query": "What is the weather like"})
}

async fn mock() -> MockServer {
    MockServer::builder()
        .seed(0x5eed)
        .start()
        .await
        .expect("the mock starts")
}

fn only_entry(mock: &MockServer) -> Entry {
    let entries = mock.journal().entries();
    assert_eq!(entries.len(), 1, "exactly one attempt: {entries:#?}");
    entries.into_iter().next().expect("one entry")
}

async fn post(url: &str, body: &Value) -> (StatusCode, String) {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-api-key", "test")
        .header(header::AUTHORIZATION, "Bearer test")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid request");
    let resp = client.request(req).await.expect("the mock answers");
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("the whole body arrives")
        .to_bytes();
    (status, String::from_utf8(bytes.to_vec()).expect("UTF-8"))
}

/// `(event, data)` of each event of a complete SSE body.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

fn openai_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
    ])
}

fn openai_body(stream: bool, tool_choice: Value) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
        "tools": openai_tools(),
        "tool_choice": tool_choice,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn anthropic_body(stream: bool, tool_choice: Value) -> Value {
    json!({
        "model": "claude-haiku-4-5",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        "tools": [
            {"name": "get_time", "input_schema": {"type": "object"}},
            {"name": "search", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}
        ],
        "tool_choice": tool_choice,
    })
}

#[tokio::test]
async fn openai_json_answers_a_required_or_named_tool_with_one_tool_call() {
    let mock = mock().await;
    let url = format!("{}/v1/chat/completions", mock.url());
    for (choice, name) in [
        (json!("required"), "get_time"),
        (
            json!({"type": "function", "function": {"name": "search"}}),
            "search",
        ),
    ] {
        mock.journal().clear();
        let (status, text) = post(&url, &openai_body(false, choice)).await;
        assert_eq!(status, 200, "{text}");
        let raw: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["choices"][0]["message"]["content"], Value::Null);
        let resp: CreateChatCompletionResponse =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let choice = &resp.choices[0];
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(choice.message.content, None);
        let calls = choice.message.tool_calls.as_ref().expect("tool calls");
        assert_eq!(calls.len(), 1);
        let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
            panic!("a function call: {text}");
        };
        assert!(call.id.starts_with("call_"), "{}", call.id);
        assert_eq!(call.function.name, name);
        let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert_eq!(args, expected_arguments());
        let usage = resp.usage.expect("usage");
        let entry = only_entry(&mock);
        assert!(usage.completion_tokens > 0);
        assert_eq!(Some(usage.completion_tokens), entry.output_tokens);
        assert_eq!(Some(usage.prompt_tokens), entry.input_tokens);
    }
}

#[tokio::test]
async fn openai_stream_opens_the_tool_call_then_streams_its_arguments() {
    let mock = mock().await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let (status, text) = post(&url, &openai_body(true, json!("required"))).await;
    assert_eq!(status, 200, "{text}");
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<CreateChatCompletionStreamResponse> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    // The opening chunk: id, type, name, empty arguments.
    let first = chunks[0].choices[0].delta.tool_calls.as_ref().unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].index, 0);
    assert!(first[0].id.as_deref().unwrap().starts_with("call_"));
    assert_eq!(first[0].r#type, Some(FunctionType::Function));
    let f = first[0].function.as_ref().unwrap();
    assert_eq!(f.name.as_deref(), Some("get_time"));
    assert_eq!(f.arguments.as_deref(), Some(""));
    // Then fragments of the arguments, then the finish, then usage.
    let mut fragments = Vec::new();
    let mut finish = Vec::new();
    for c in &chunks[1..] {
        for choice in &c.choices {
            if let Some(calls) = &choice.delta.tool_calls {
                assert_eq!(calls.len(), 1);
                assert_eq!(calls[0].index, 0);
                assert!(calls[0].id.is_none());
                let f = calls[0].function.as_ref().unwrap();
                assert!(f.name.is_none());
                fragments.push(f.arguments.clone().unwrap());
            }
            assert!(choice.delta.content.is_none());
            finish.extend(choice.finish_reason);
        }
    }
    assert!((2..=3).contains(&fragments.len()), "{fragments:?}");
    let args: Value = serde_json::from_str(&fragments.concat()).unwrap();
    assert_eq!(args, expected_arguments());
    assert_eq!(finish, [FinishReason::ToolCalls]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    let usage = last.usage.clone().expect("the usage chunk");
    assert_eq!(
        Some(usage.completion_tokens),
        only_entry(&mock).output_tokens
    );
    assert!(usage.completion_tokens > 0);
}

#[tokio::test]
async fn anthropic_json_answers_any_or_a_named_tool_with_tool_use() {
    let mock = mock().await;
    let url = format!("{}/v1/messages", mock.url());
    for (choice, name) in [
        (json!({"type": "any"}), "get_time"),
        (json!({"type": "tool", "name": "search"}), "search"),
    ] {
        mock.journal().clear();
        let (status, text) = post(&url, &anthropic_body(false, choice)).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        let content = v["content"].as_array().unwrap();
        assert_eq!(content.len(), 1, "{v}");
        assert_eq!(content[0]["type"], "tool_use");
        assert!(content[0]["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(content[0]["name"], name);
        assert_eq!(content[0]["input"], expected_arguments());
        let entry = only_entry(&mock);
        assert_eq!(
            v["usage"]["output_tokens"].as_u64(),
            entry.output_tokens.map(u64::from)
        );
        assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn anthropic_stream_sends_tool_use_and_input_json_deltas() {
    let mock = mock().await;
    let url = format!("{}/v1/messages", mock.url());
    let (status, text) = post(&url, &anthropic_body(true, json!({"type": "any"}))).await;
    assert_eq!(status, 200, "{text}");
    let events: Vec<(String, Value)> = sse_events(&text)
        .into_iter()
        .map(|(e, d)| (e.expect("named events"), serde_json::from_str(&d).unwrap()))
        .filter(|(e, _)| e != "ping")
        .collect();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!((2..=3).contains(&deltas), "{names:?}");
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let block = &events[1].1;
    assert_eq!(block["index"], 0);
    assert_eq!(block["content_block"]["type"], "tool_use");
    assert!(
        block["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_")
    );
    assert_eq!(block["content_block"]["name"], "get_time");
    assert_eq!(block["content_block"]["input"], json!({}));
    let partial: String = events[2..2 + deltas]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    let input: Value = serde_json::from_str(&partial).unwrap();
    assert_eq!(input, expected_arguments());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    let output = delta["usage"]["output_tokens"].as_u64().unwrap();
    assert!(output > 0);
    assert_eq!(Some(output), only_entry(&mock).output_tokens.map(u64::from));
}

#[tokio::test]
async fn without_a_tool_asked_for_the_answer_is_text() {
    let mock = mock().await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let (_, text) = post(&url, &openai_body(false, json!("auto"))).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    let url = format!("{}/v1/messages", mock.url());
    let mut body = anthropic_body(false, json!({"type": "auto"}));
    body.as_object_mut().unwrap().remove("tool_choice");
    let (_, text) = post(&url, &body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["content"][0]["type"], "text", "{v}");
    assert_eq!(v["stop_reason"], "end_turn");
}
