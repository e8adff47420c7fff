//! Request and (non-streaming) response translation between OpenAI chat
//! completions and Anthropic messages.
//!
//! The OpenAI side is checked by a client nobody here wrote: every
//! translated OpenAI request deserializes into `async-openai`'s
//! `CreateChatCompletionRequest`, every translated answer into its
//! `CreateChatCompletionResponse`. The Anthropic side is compared with the
//! shapes of Anthropic's documented examples, written out below.

use async_openai::types::chat::{
    ChatCompletionRequestMessage, CreateChatCompletionRequest, CreateChatCompletionResponse,
    FinishReason as OaFinish,
};
use llm_tower::{
    provider::{WireFormat, usage::scan_json},
    translate::{Target, TranslateError, request, response},
};
use serde_json::{Value, json};

const OPENAI: WireFormat = WireFormat::OpenAiChat;
const ANTHROPIC: WireFormat = WireFormat::AnthropicMessages;

fn to_anthropic(body: Value) -> Result<Value, TranslateError> {
    let target = Target::new(ANTHROPIC, "claude-sonnet-4-5").default_max_tokens(1024);
    let out = request::translate(OPENAI, body.to_string().as_bytes(), &target)?;
    Ok(serde_json::from_slice(&out).expect("the translation is JSON"))
}

fn to_openai(body: Value) -> Result<Value, TranslateError> {
    let target = Target::new(OPENAI, "gpt-4o");
    let out = request::translate(ANTHROPIC, body.to_string().as_bytes(), &target)?;
    // Every translated request is one async-openai accepts.
    serde_json::from_slice::<CreateChatCompletionRequest>(&out)
        .unwrap_or_else(|e| panic!("async-openai rejects the request: {e}"));
    Ok(serde_json::from_slice(&out).expect("the translation is JSON"))
}

fn refused(r: Result<Value, TranslateError>) -> String {
    match r {
        Err(e @ TranslateError::Unsupported { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn answer(from: WireFormat, to: WireFormat, body: &Value, model: &str) -> Value {
    let out = response::translate(from, to, body.to_string().as_bytes(), model)
        .unwrap_or_else(|e| panic!("translation failed: {e}"));
    if to == OPENAI && body.get("type") != Some(&json!("error")) {
        serde_json::from_slice::<CreateChatCompletionResponse>(&out)
            .unwrap_or_else(|e| panic!("async-openai rejects the answer: {e}"));
    }
    serde_json::from_slice(&out).expect("the translation is JSON")
}

// ------------------------------------------------------- requests: OpenAI → Anthropic

#[test]
fn translate_request_openai_to_anthropic_system_turns_and_merging() {
    let out = to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "Are you there?"}]},
            {"role": "assistant", "content": "Oui."},
            {"role": "user", "content": "Bye"}
        ]
    }))
    .unwrap();
    assert_eq!(
        out,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are terse.\n\nAnswer in French.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Hello"},
                    {"type": "text", "text": "Are you there?"}
                ]},
                {"role": "assistant", "content": "Oui."},
                {"role": "user", "content": "Bye"}
            ]
        })
    );
}

#[test]
fn translate_request_openai_system_message_mid_conversation_is_refused() {
    let msg = refused(to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "Now be rude."}
        ]
    })));
    assert!(
        msg.contains("system message after the conversation started"),
        "{msg}"
    );
}

#[test]
fn translate_request_openai_images_to_anthropic_sources() {
    let out = to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in these images?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}}
        ]}]
    }))
    .unwrap();
    // Anthropic's vision documentation: base64 and url sources.
    assert_eq!(
        out["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is in these images?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}}
        ])
    );
}

fn weather_tool_openai() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
    }})
}

fn weather_tool_anthropic() -> Value {
    // Anthropic's tool use documentation.
    json!({
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
    })
}

#[test]
fn translate_request_openai_tools_and_tool_choice_to_anthropic() {
    let base = |choice: Option<Value>, parallel: Option<bool>| {
        let mut body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [weather_tool_openai()]
        });
        if let Some(c) = choice {
            body["tool_choice"] = c;
        }
        if let Some(p) = parallel {
            body["parallel_tool_calls"] = json!(p);
        }
        to_anthropic(body).unwrap()
    };
    let out = base(None, None);
    assert_eq!(out["tools"], json!([weather_tool_anthropic()]));
    assert!(
        out.get("tool_choice").is_none(),
        "auto is Anthropic's default"
    );
    assert_eq!(base(Some(json!("auto")), None).get("tool_choice"), None);
    assert_eq!(
        base(Some(json!("none")), None)["tool_choice"],
        json!({"type": "none"})
    );
    assert_eq!(
        base(Some(json!("required")), None)["tool_choice"],
        json!({"type": "any"})
    );
    assert_eq!(
        base(
            Some(json!({"type": "function", "function": {"name": "get_weather"}})),
            None
        )["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(
        base(None, Some(false))["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        base(Some(json!("required")), Some(false))["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(base(None, Some(true)).get("tool_choice"), None);
}

#[test]
fn translate_request_openai_tool_calls_and_results_to_anthropic() {
    let out = to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Lyon?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Lyon\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21°C"}]},
            {"role": "user", "content": "Thanks, which is warmer?"}
        ],
        "tools": [weather_tool_openai()]
    }))
    .unwrap();
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris and Lyon?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"location": "Lyon"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "21°C"},
                {"type": "text", "text": "Thanks, which is warmer?"}
            ]}
        ])
    );
}

#[test]
fn translate_request_openai_edge_cases_to_anthropic() {
    let out = to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "", "refusal": "I can't.", "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "ping", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_0", "content": "pong"}
        ],
        "tools": [{"type": "function", "function": {"name": "ping"}}],
        "tool_choice": "none",
        "parallel_tool_calls": false
    }))
    .unwrap();
    assert_eq!(
        out["messages"][1]["content"],
        json!([
            {"type": "text", "text": "I can't."},
            {"type": "tool_use", "id": "call_0", "name": "ping", "input": {}}
        ])
    );
    // A tool without parameters gets the empty schema Anthropic requires.
    assert_eq!(
        out["tools"],
        json!([{"name": "ping", "input_schema": {"type": "object", "properties": {}}}])
    );
    // `none` takes no disable_parallel_tool_use.
    assert_eq!(out["tool_choice"], json!({"type": "none"}));
}

#[test]
fn translate_request_openai_parameters_to_anthropic() {
    let out = to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "max_completion_tokens": 200,
        "stop": "END",
        "temperature": 1.7,
        "top_p": 0.9,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "n": 1,
        "logprobs": false,
        "seed": 7
    }))
    .unwrap();
    assert_eq!(
        out,
        json!({
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 200,
            "stop_sequences": ["END"],
            "temperature": 1.0,
            "top_p": 0.9,
            "stream": true,
            "metadata": {"user_id": "user-42"}
        })
    );
    let out = to_anthropic(json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        "stop": ["a", "b"],
        "temperature": 0.3
    }))
    .unwrap();
    assert_eq!(out["max_tokens"], 100);
    assert_eq!(out["stop_sequences"], json!(["a", "b"]));
    assert_eq!(out["temperature"], 0.3);
}

#[test]
fn translate_request_openai_refusals_name_what_cannot_be_carried() {
    let with = |key: &str, value: Value| {
        let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]});
        body[key] = value;
        refused(to_anthropic(body))
    };
    assert!(with("n", json!(2)).contains("n > 1"));
    assert!(with("logprobs", json!(true)).contains("logprobs"));
    assert!(with("top_logprobs", json!(3)).contains("top_logprobs"));
    assert!(with("logit_bias", json!({"50256": -100})).contains("logit_bias"));
    let json_mode = with("response_format", json!({"type": "json_object"}));
    assert!(
        json_mode.contains("JSON mode (response_format `json_object`)"),
        "{json_mode}"
    );
    assert!(
        with(
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "x"}})
        )
        .contains("json_schema")
    );
    assert!(with("audio", json!({"voice": "alloy", "format": "wav"})).contains("audio output"));
    assert!(with("modalities", json!(["text", "audio"])).contains("audio output"));
    assert!(with("functions", json!([])).contains("legacy functions"));
    assert!(with("reasoning_effort", json!("high")).contains("reasoning_effort"));
    assert!(with("frobnicate", json!(1)).contains("the field `frobnicate`"));
    let part = |p: Value| {
        refused(to_anthropic(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [p]}]}),
        ))
    };
    assert!(
        part(json!({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}))
            .contains("audio input")
    );
    assert!(part(json!({"type": "file", "file": {"file_id": "f"}})).contains("file input"));
    assert_eq!(
        with("n", json!(3)),
        "cannot translate: n > 1 (several choices) has no equivalent in the target's format"
    );
    // A text response_format is no JSON mode.
    let mut ok = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]});
    ok["response_format"] = json!({"type": "text"});
    assert!(to_anthropic(ok).is_ok());
}

#[test]
fn translate_request_other_formats_are_refused() {
    let body = br#"{"model":"gpt-4o","input":"Hi"}"#;
    let t = Target::new(ANTHROPIC, "claude");
    let e = request::translate(WireFormat::OpenAiResponses, body, &t).unwrap_err();
    assert!(e.to_string().contains("openai responses format"), "{e}");
    let e = request::translate(WireFormat::GeminiGenerateContent, br#"{"contents":[]}"#, &t)
        .unwrap_err();
    assert!(e.to_string().contains("gemini"), "{e}");
    let e = request::translate(
        OPENAI,
        body,
        &Target::new(WireFormat::GeminiGenerateContent, "g"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("gemini"), "{e}");
}

#[test]
fn translate_request_invalid_bodies() {
    let t = Target::new(ANTHROPIC, "claude");
    assert!(matches!(
        request::translate(OPENAI, b"not json", &t),
        Err(TranslateError::Invalid { .. })
    ));
    assert!(matches!(
        request::translate(OPENAI, br#"{"model":"m"}"#, &t),
        Err(TranslateError::Invalid { .. })
    ));
    let bad_args = json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]});
    assert_eq!(
        to_anthropic(bad_args).unwrap_err(),
        TranslateError::invalid("a tool call's arguments are not valid JSON")
    );
}

#[test]
fn translate_request_same_format_only_replaces_the_model() {
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "n": 3, "seed": 1});
    let out = request::translate(
        OPENAI,
        body.to_string().as_bytes(),
        &Target::new(OPENAI, "gpt-4.1"),
    )
    .unwrap();
    let mut want = body.clone();
    want["model"] = json!("gpt-4.1");
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), want);

    let body = json!({"model": "claude-a", "max_tokens": 5, "top_k": 3, "messages": []});
    let out = request::translate(
        ANTHROPIC,
        body.to_string().as_bytes(),
        &Target::new(ANTHROPIC, "claude-b"),
    )
    .unwrap();
    let mut want = body.clone();
    want["model"] = json!("claude-b");
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), want);

    let gemini = br#"{"contents":[{"parts":[{"text":"Hi"}]}]}"#;
    let g = WireFormat::GeminiGenerateContent;
    assert_eq!(
        &request::translate(g, gemini, &Target::new(g, "gemini-2.5-flash")).unwrap()[..],
        gemini
    );
}

// ------------------------------------------------------- requests: Anthropic → OpenAI

#[test]
fn translate_request_anthropic_to_openai_system_turns_and_parameters() {
    let out = to_openai(json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Hello, Claude"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
            {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}
        ],
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "stream": true,
        "metadata": {"user_id": "user-42"}
    }))
    .unwrap();
    assert_eq!(
        out,
        json!({
            "model": "gpt-4o",
            "max_completion_tokens": 1024,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello, Claude"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [
                    {"type": "text", "text": "Part one."},
                    {"type": "text", "text": "Part two."}
                ]}
            ],
            "stop": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": "user-42"
        })
    );
}

#[test]
fn translate_request_anthropic_images_tools_and_results_to_openai() {
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 512,
        "tools": [weather_tool_anthropic()],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "text", "text": "Where was this taken, and what is the weather there?"}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "15 degrees"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "sunny"}], "is_error": false},
                {"type": "text", "text": "Thanks"}
            ]}
        ]
    });
    let out = to_openai(body).unwrap();
    assert_eq!(out["tools"], json!([weather_tool_openai()]));
    assert_eq!(out["tool_choice"], "required");
    assert_eq!(out["parallel_tool_calls"], false);
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": "Where was this taken, and what is the weather there?"}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "15 degrees"},
            {"role": "tool", "tool_call_id": "toolu_01B", "content": "sunny"},
            {"role": "user", "content": "Thanks"}
        ])
    );
    // async-openai reads the roles as OpenAI defines them.
    let typed: CreateChatCompletionRequest = serde_json::from_value(out).unwrap();
    assert!(matches!(
        typed.messages[1],
        ChatCompletionRequestMessage::Assistant(_)
    ));
    assert!(matches!(
        typed.messages[2],
        ChatCompletionRequestMessage::Tool(_)
    ));
    assert_eq!(typed.max_completion_tokens, Some(512));

    let choice = |c: Value| {
        to_openai(json!({"model": "c", "max_tokens": 1, "messages": [], "tools": [weather_tool_anthropic()], "tool_choice": c}))
            .unwrap()["tool_choice"]
            .clone()
    };
    assert_eq!(choice(json!({"type": "auto"})), "auto");
    assert_eq!(choice(json!({"type": "none"})), "none");
    assert_eq!(
        choice(json!({"type": "tool", "name": "get_weather"})),
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
}

#[test]
fn translate_request_anthropic_refusals_name_what_cannot_be_carried() {
    let with = |key: &str, value: Value| {
        let mut body = json!({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]});
        body[key] = value;
        refused(to_openai(body))
    };
    assert!(with("top_k", json!(5)).contains("top_k"));
    assert!(
        with(
            "thinking",
            json!({"type": "enabled", "budget_tokens": 2000})
        )
        .contains("extended thinking")
    );
    assert!(
        with(
            "tools",
            json!([{"type": "web_search_20250305", "name": "web_search"}])
        )
        .contains("server tool `web_search_20250305`")
    );
    let block = |b: Value| {
        refused(to_openai(
            json!({"model": "c", "max_tokens": 1, "messages": [{"role": "user", "content": [b]}]}),
        ))
    };
    assert!(block(json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}})).contains("document"));
    assert!(
        block(
            json!({"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}}]})
        )
        .contains("image in a tool result")
    );
    // Disabled thinking is no thinking.
    let mut ok = json!({"model": "c", "max_tokens": 10, "messages": []});
    ok["thinking"] = json!({"type": "disabled"});
    assert!(to_openai(ok).is_ok());
}

// ------------------------------------------------------- requests: round trips

#[test]
fn translate_request_round_trip_openai_anthropic_openai_keeps_the_meaning() {
    let original = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be helpful."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_9", "content": "18°C"},
            {"role": "assistant", "content": "It is 18°C."},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [weather_tool_openai()],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_completion_tokens": 300,
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.8,
        "user": "u1"
    });
    let there = to_anthropic(original.clone()).unwrap();
    let mut back = to_openai(there).unwrap();
    back["model"] = json!("gpt-4o");
    assert_eq!(back, original);
}

#[test]
fn translate_request_round_trip_anthropic_openai_anthropic_keeps_the_meaning() {
    let original = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}}
            ]}
        ],
        "tools": [weather_tool_anthropic()],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["###"],
        "temperature": 0.2,
        "stream": true,
        "metadata": {"user_id": "u7"}
    });
    let there = to_openai(original.clone()).unwrap();
    let target = Target::new(ANTHROPIC, "claude-sonnet-4-5");
    let back = request::translate(OPENAI, there.to_string().as_bytes(), &target).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&back).unwrap(), original);
}

// ------------------------------------------------------- responses

/// Anthropic's documented answer shape (messages API reference).
fn anthropic_answer() -> Value {
    json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "I'll check the weather."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
        ],
        "stop_reason": "tool_use",
        "stop_sequence": null,
        "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 900, "output_tokens": 503}
    })
}

/// OpenAI's documented chat completion shape.
fn openai_answer() -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "I'll check the weather.",
                "refusal": null,
                "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}],
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
        }],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035"
    })
}

#[test]
fn translate_response_anthropic_to_openai_text_tools_usage() {
    let src = anthropic_answer();
    let out = answer(ANTHROPIC, OPENAI, &src, "claude-sonnet-4-5-20250929");
    let typed: CreateChatCompletionResponse = serde_json::from_value(out.clone()).unwrap();
    assert_eq!(typed.id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
    assert_eq!(typed.object, "chat.completion");
    assert_eq!(typed.model, "claude-sonnet-4-5-20250929");
    assert!(typed.created > 1_700_000_000);
    let choice = &typed.choices[0];
    assert_eq!(choice.finish_reason, Some(OaFinish::ToolCalls));
    assert_eq!(
        choice.message.content.as_deref(),
        Some("I'll check the weather.")
    );
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"],
        json!([{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}}])
    );
    let usage = typed.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (3095, 503, 3598)
    );
    assert_eq!(
        usage.prompt_tokens_details.unwrap().cached_tokens,
        Some(900)
    );
    // The crate's own usage reader sees the same usage on both sides, bar
    // the cache writes OpenAI cannot express.
    let before = scan_json(Some(ANTHROPIC), src.to_string().as_bytes());
    let after = scan_json(Some(OPENAI), out.to_string().as_bytes());
    let (b, a) = (before.usage.unwrap(), after.usage.unwrap());
    assert_eq!(
        (a.input_tokens, a.cached_input_tokens, a.output_tokens),
        (b.input_tokens, b.cached_input_tokens, b.output_tokens)
    );
    assert_eq!(before.finish_reason, after.finish_reason);
}

#[test]
fn translate_response_openai_to_anthropic_text_tools_usage() {
    let src = openai_answer();
    let out = answer(OPENAI, ANTHROPIC, &src, "gpt-4o-2024-08-06");
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "type": "message",
            "role": "assistant",
            "model": "gpt-4o-2024-08-06",
            "content": [
                {"type": "text", "text": "I'll check the weather."},
                {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"location": "Paris"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 117, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1000, "output_tokens": 46}
        })
    );
    let before = scan_json(Some(OPENAI), src.to_string().as_bytes());
    let after = scan_json(Some(ANTHROPIC), out.to_string().as_bytes());
    assert_eq!(before.usage, after.usage);
    assert_eq!(before.finish_reason, after.finish_reason);
}

#[test]
fn translate_response_finish_and_stop_reasons_both_ways() {
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ] {
        let mut o = openai_answer();
        o["choices"][0]["finish_reason"] = json!(finish);
        assert_eq!(
            answer(OPENAI, ANTHROPIC, &o, "m")["stop_reason"],
            stop,
            "{finish}"
        );
        let mut a = anthropic_answer();
        a["stop_reason"] = json!(stop);
        assert_eq!(
            answer(ANTHROPIC, OPENAI, &a, "m")["choices"][0]["finish_reason"],
            finish,
            "{stop}"
        );
    }
    let mut a = anthropic_answer();
    a["stop_reason"] = json!("stop_sequence");
    a["stop_sequence"] = json!("END");
    assert_eq!(
        answer(ANTHROPIC, OPENAI, &a, "m")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[test]
fn translate_response_text_only_and_refusal() {
    let a = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
        "content": [{"type": "text", "text": "Hi! "}, {"type": "text", "text": "Bye."}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 3}});
    let out = answer(ANTHROPIC, OPENAI, &a, "c");
    assert_eq!(
        out["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hi! Bye.", "refusal": null})
    );
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let mut o = openai_answer();
    o["choices"][0]["message"] =
        json!({"role": "assistant", "content": null, "refusal": "I can't help with that."});
    o["choices"][0]["finish_reason"] = json!("stop");
    let out = answer(OPENAI, ANTHROPIC, &o, "m");
    assert_eq!(
        out["content"],
        json!([{"type": "text", "text": "I can't help with that."}])
    );
}

#[test]
fn translate_response_round_trip_openai_anthropic_openai_keeps_the_meaning() {
    let src = openai_answer();
    let there = answer(OPENAI, ANTHROPIC, &src, "gpt-4o-2024-08-06");
    let back = answer(ANTHROPIC, OPENAI, &there, "gpt-4o-2024-08-06");
    let a: CreateChatCompletionResponse = serde_json::from_value(src).unwrap();
    let b: CreateChatCompletionResponse = serde_json::from_value(back).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(a.model, b.model);
    assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
    assert_eq!(
        a.choices[0].message.tool_calls,
        b.choices[0].message.tool_calls
    );
    assert_eq!(a.choices[0].finish_reason, b.choices[0].finish_reason);
    let (ua, ub) = (a.usage.unwrap(), b.usage.unwrap());
    assert_eq!(
        (ua.prompt_tokens, ua.completion_tokens, ua.total_tokens),
        (ub.prompt_tokens, ub.completion_tokens, ub.total_tokens)
    );
    assert_eq!(
        ua.prompt_tokens_details.unwrap().cached_tokens,
        ub.prompt_tokens_details.unwrap().cached_tokens
    );
}

#[test]
fn translate_response_error_bodies_both_ways() {
    // Anthropic's documented error shape.
    let a = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit."}});
    assert_eq!(
        answer(ANTHROPIC, OPENAI, &a, "m"),
        json!({"error": {"message": "Number of requests has exceeded your rate limit.", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );
    for (anthropic, ty, code) in [
        (
            "invalid_request_error",
            "invalid_request_error",
            Value::Null,
        ),
        (
            "authentication_error",
            "invalid_request_error",
            json!("invalid_api_key"),
        ),
        (
            "not_found_error",
            "invalid_request_error",
            json!("model_not_found"),
        ),
        (
            "billing_error",
            "insufficient_quota",
            json!("insufficient_quota"),
        ),
        ("overloaded_error", "server_error", Value::Null),
        ("api_error", "server_error", Value::Null),
    ] {
        let a = json!({"type": "error", "error": {"type": anthropic, "message": "x"}});
        let out = answer(ANTHROPIC, OPENAI, &a, "m");
        assert_eq!(
            (&out["error"]["type"], &out["error"]["code"]),
            (&json!(ty), &code),
            "{anthropic}"
        );
    }
    // OpenAI's documented error shape.
    let o = json!({"error": {"message": "Incorrect API key provided: sk-abc.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
    assert_eq!(
        answer(OPENAI, ANTHROPIC, &o, "m"),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "Incorrect API key provided: sk-abc."}})
    );
    for (ty, code, anthropic) in [
        ("requests", Some("rate_limit_exceeded"), "rate_limit_error"),
        (
            "insufficient_quota",
            Some("insufficient_quota"),
            "billing_error",
        ),
        (
            "invalid_request_error",
            Some("context_length_exceeded"),
            "invalid_request_error",
        ),
        (
            "invalid_request_error",
            Some("model_not_found"),
            "not_found_error",
        ),
        ("server_error", None, "api_error"),
    ] {
        let o = json!({"error": {"message": "x", "type": ty, "param": null, "code": code}});
        assert_eq!(
            answer(OPENAI, ANTHROPIC, &o, "m")["error"]["type"],
            anthropic,
            "{ty}"
        );
    }
}

#[test]
fn translate_response_same_format_unchanged_and_other_formats_refused() {
    let body = openai_answer().to_string();
    let out = response::translate(OPENAI, OPENAI, body.as_bytes(), "x").unwrap();
    assert_eq!(&out[..], body.as_bytes());
    let e = response::translate(WireFormat::GeminiGenerateContent, OPENAI, b"{}", "m").unwrap_err();
    assert!(e.to_string().contains("gemini"), "{e}");
    let e = response::translate(ANTHROPIC, WireFormat::OpenAiResponses, b"{}", "m").unwrap_err();
    assert!(e.to_string().contains("openai responses"), "{e}");
    let e = response::translate(OPENAI, ANTHROPIC, br#"{"choices":[]}"#, "m").unwrap_err();
    assert!(matches!(e, TranslateError::Invalid { .. }));
    let mut server_tool = anthropic_answer();
    server_tool["content"] =
        json!([{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]);
    let e = response::translate(ANTHROPIC, OPENAI, server_tool.to_string().as_bytes(), "m")
        .unwrap_err();
    assert!(e.to_string().contains("server_tool_use"), "{e}");
}
