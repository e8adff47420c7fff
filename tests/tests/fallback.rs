//! FallbackLayer over loopback against the mock: a call the first provider
//! cannot answer is answered by another, in the caller's format, with the
//! attempts of every target's retries and the moves counted together.

mod support;

use http::Request;
use http_body_util::BodyExt;
use llm_tower::{
    BoxError,
    fallback::{Answered, FallbackLayer, Target},
    metering::MeterLayer,
    provider::{Provider as LlmProvider, WireFormat},
    request::{PrepareLayer, ReplayBody},
    retry::{RetryConfig, RetryLayer},
};
use llm_tower_mock::{Fault, MockServer, Provider, Rule};
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};

/// One target's stack: two attempts, metered, over hyper-util's client.
fn per_target() -> impl Service<
    Request<ReplayBody>,
    Response = http::Response<
        impl http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
    >,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    per_target_holding(llm_tower::retry::Hold::FirstToken)
}

/// [`per_target`], its streams held as `hold` says.
fn per_target_holding(
    hold: llm_tower::retry::Hold,
) -> impl Service<
    Request<ReplayBody>,
    Response = http::Response<
        impl http_body::Body<Data = bytes::Bytes, Error = BoxError> + Send + 'static,
    >,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryConfig::new()
                .max_attempts(2)
                .server_delay_jitter(std::time::Duration::ZERO)
                .hold(hold)
                .build()
                .unwrap(),
        ))
        .layer(MeterLayer::new())
        .service(client())
}

fn claude(mock: &MockServer) -> Target {
    Target::new(
        "claude",
        LlmProvider::Anthropic,
        WireFormat::AnthropicMessages,
    )
    .model(ANTHROPIC_MODEL)
    .endpoint(format!("{}/v1/messages", mock.url()).parse().unwrap())
    .header("x-api-key", "sk-ant-test")
}

#[tokio::test(start_paused = true)]
async fn an_openai_call_the_first_provider_cannot_answer_is_answered_by_anthropic() {
    // Every OpenAI-format call is overloaded; Anthropic answers.
    let mock = mock(vec![
        Rule::new(Fault::Overloaded).provider(Provider::OpenAi),
    ])
    .await;
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(
            FallbackLayer::new()
                .max_attempts(3)
                .target(claude(&mock), per_target()),
        )
        .service(per_target());
    let res = svc
        .oneshot(chat(&mock, Provider::OpenAi, false, "hello there"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answered = res.extensions().get::<Answered>().unwrap().clone();
    assert_eq!((answered.target.as_str(), answered.moved), ("claude", true));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The caller's format, the answering model named.
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["model"], ANTHROPIC_MODEL);
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{answer}"
    );
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    // Two attempts at OpenAI (its retries), then one at Anthropic: three
    // in all, the budget.
    let journal = mock.journal().entries();
    let paths: Vec<_> = journal.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/messages"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_attempt_budget_holds_across_retries_and_moves() {
    // Both providers overloaded: every attempt fails.
    let mock = mock(vec![Rule::new(Fault::Overloaded)]).await;
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(
            FallbackLayer::new()
                .max_attempts(3)
                .target(claude(&mock), per_target()),
        )
        .service(per_target());
    let res = svc
        .oneshot(chat(&mock, Provider::OpenAi, false, "hello"))
        .await
        .unwrap();
    // The last answer, in the caller's format.
    assert_eq!(res.status(), 529, "Anthropic's overloaded status");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(answer["error"]["message"].is_string(), "{answer}");
    // Without one budget: 2 + 2 = 4 attempts.
    assert_eq!(mock.journal().entries().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stream_falls_back_to_another_provider_and_arrives_in_the_callers_events() {
    let mock = mock(vec![
        Rule::new(Fault::Overloaded).provider(Provider::OpenAi),
    ])
    .await;
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(
            FallbackLayer::new()
                .max_attempts(3)
                .target(claude(&mock), per_target()),
        )
        .service(per_target());
    let res = svc
        .oneshot(chat(&mock, Provider::OpenAi, true, "tell me a story"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "claude");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    // OpenAI's chunks, each read by a client nobody here wrote.
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let mut content = String::new();
    let mut finish = None;
    let mut usage = None;
    for d in &data[..data.len() - 1] {
        let chunk: async_openai::types::chat::CreateChatCompletionStreamResponse =
            serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(chunk.model, ANTHROPIC_MODEL);
        for c in &chunk.choices {
            content.push_str(c.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(c.finish_reason);
        }
        usage = usage.or(chunk.usage);
    }
    assert!(!content.is_empty(), "{text}");
    assert!(finish.is_some(), "{text}");
    assert!(usage.is_some_and(|u| u.completion_tokens > 0), "{text}");
    assert_eq!(mock.journal().entries().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_tokens_on_every_attempt_falls_back_whole_with_hold_complete() {
    use llm_tower::retry::Hold;
    // Every OpenAI stream is cut after a few tokens; Anthropic answers.
    let mock = mock(vec![
        Rule::new(Fault::Truncate { after: 3 }).provider(Provider::OpenAi),
    ])
    .await;
    let hold = Hold::complete(1 << 20);
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(
            FallbackLayer::new()
                .max_attempts(3)
                .target(claude(&mock), per_target_holding(hold)),
        )
        .service(per_target_holding(hold));
    let res = svc
        .oneshot(chat(&mock, Provider::OpenAi, true, "tell me a story"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "claude");
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    // One clean stream in OpenAI's format: none of the cut attempts' tokens.
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(text.matches("\"role\":\"assistant\"").count(), 1, "{text}");
    assert!(text.contains(ANTHROPIC_MODEL));
    assert!(!text.contains(OPENAI_MODEL), "{text}");
    assert_eq!(
        mock.journal().entries().len(),
        3,
        "two cut attempts, then Anthropic"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_over_loopback_wins_and_the_slow_attempt_is_cut_and_metered_once() {
    use llm_tower::{fallback::Hedge, metering::Outcome};
    // OpenAI's status line comes after 10 s; Anthropic answers at once.
    let mock = mock(vec![
        Rule::new(Fault::SlowFirstByte { delay: 10 * SEC }).provider(Provider::OpenAi),
    ])
    .await;
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(
            FallbackLayer::new()
                .hedge(SEC, 1.0)
                .target(claude(&mock), per_target()),
        )
        .service(per_target());
    let mut req = chat(&mock, Provider::OpenAi, false, "hello");
    req.extensions_mut().insert(Hedge);
    let reports = observe(&mut req);
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(req).await.unwrap();
    assert!(start.elapsed() < 2 * SEC, "{:?}", start.elapsed());
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "claude");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["object"], "chat.completion");
    // Each attempt metered once: the hedge's answer, and the slow one,
    // cancelled when it lost.
    let mut outcomes: Vec<Outcome> = reports.all().iter().map(|r| r.outcome).collect();
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Outcome::Cancelled, Outcome::Completed]);
    assert_eq!(mock.journal().entries().len(), 2);
}

/// [`chat`] in OpenAI's format, with two tools and `tool_choice: "required"`.
fn tool_chat(mock: &MockServer, stream: bool, prompt: &str) -> http::Request<String> {
    let req = chat(mock, Provider::OpenAi, stream, prompt);
    let (parts, body) = req.into_parts();
    let mut body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["tools"] = serde_json::json!([
        {"type": "function", "function": {
            "name": "search",
            "description": "Searches the web.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
        }},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ]);
    body["tool_choice"] = serde_json::json!("required");
    http::Request::from_parts(parts, body.to_string())
}

/// The `input` of the tool call the mock answers a direct Anthropic call
/// with, for the same prompt and tools.
async fn anthropic_tool_input(mock: &MockServer, prompt: &str) -> serde_json::Value {
    let req = chat(mock, Provider::Anthropic, false, prompt);
    let (parts, body) = req.into_parts();
    let mut body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["tools"] = serde_json::json!([
        {"name": "search", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}},
        {"name": "get_time", "input_schema": {"type": "object"}}
    ]);
    body["tool_choice"] = serde_json::json!({"type": "any"});
    let res = client()
        .oneshot(http::Request::from_parts(
            parts,
            ReplayBody::from(body.to_string()),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["stop_reason"], "tool_use", "{answer}");
    assert_eq!(answer["content"][0]["name"], "search", "{answer}");
    answer["content"][0]["input"].clone()
}

#[tokio::test(start_paused = true)]
async fn an_openai_tool_call_falls_back_to_anthropic_and_arrives_as_openai_tool_calls() {
    use async_openai::types::chat::{
        ChatCompletionMessageToolCalls, CreateChatCompletionResponse,
        CreateChatCompletionStreamResponse, FinishReason,
    };
    const PROMPT: &str = "find the latest news about tower middleware";
    let mock = mock(vec![
        Rule::new(Fault::Overloaded).provider(Provider::OpenAi),
    ])
    .await;
    let input = anthropic_tool_input(&mock, PROMPT).await;
    // The mock's rule: the prompt's first five words.
    assert_eq!(
        input,
        serde_json::json!({"query": "find the latest news about"})
    );
    mock.journal().clear();
    let svc = ServiceBuilder::new()
        .layer(PrepareLayer::new())
        .layer(
            FallbackLayer::new()
                .max_attempts(3)
                .target(claude(&mock), per_target()),
        )
        .service(per_target());

    // Not streamed.
    let res = svc
        .clone()
        .oneshot(tool_chat(&mock, false, PROMPT))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "claude");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let answer: CreateChatCompletionResponse = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    assert_eq!(answer.model, ANTHROPIC_MODEL);
    let choice = &answer.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.as_ref().expect("tool calls");
    assert_eq!(calls.len(), 1);
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("a function call: {calls:?}");
    };
    assert_eq!(call.function.name, "search");
    assert!(!call.id.is_empty());
    let args: serde_json::Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert_eq!(args, input);
    let paths: Vec<_> = mock
        .journal()
        .entries()
        .iter()
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/messages"
        ]
    );

    // Streamed.
    mock.journal().clear();
    let res = svc.oneshot(tool_chat(&mock, true, PROMPT)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Answered>().unwrap().target, "claude");
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut arguments = String::new();
    let mut finish = None;
    let mut usage = None;
    for d in &data[..data.len() - 1] {
        let chunk: CreateChatCompletionStreamResponse =
            serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
        assert_eq!(chunk.model, ANTHROPIC_MODEL);
        for c in &chunk.choices {
            assert!(
                c.delta.content.as_deref().unwrap_or("").is_empty(),
                "{text}"
            );
            for t in c.delta.tool_calls.iter().flatten() {
                assert_eq!(t.index, 0, "{text}");
                ids.extend(t.id.clone());
                if let Some(f) = &t.function {
                    names.extend(f.name.clone());
                    arguments.push_str(f.arguments.as_deref().unwrap_or(""));
                }
            }
            finish = finish.or(c.finish_reason);
        }
        usage = usage.or(chunk.usage);
    }
    assert_eq!(ids.len(), 1, "{text}");
    assert_eq!(names, ["search"], "{text}");
    let args: serde_json::Value =
        serde_json::from_str(&arguments).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(args, input);
    assert_eq!(finish, Some(FinishReason::ToolCalls), "{text}");
    assert!(usage.is_some_and(|u| u.completion_tokens > 0), "{text}");
    assert_eq!(mock.journal().entries().len(), 3);
}
