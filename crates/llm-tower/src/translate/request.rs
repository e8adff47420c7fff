//! Request bodies from one wire format to another.
//!
//! Same format: only the model is replaced (the body is re-serialised, every
//! other value keeps its meaning). Gemini bodies name no model (it is in the
//! URL): a same-format Gemini body is returned unchanged.
//!
//! Across formats, OpenAI chat completions ↔ Anthropic messages:
//!
//! | OpenAI chat | Anthropic messages |
//! |---|---|
//! | leading `system` / `developer` messages (joined by a blank line) | `system` (a string; text blocks are joined) |
//! | `user` / `assistant` messages, content a string or parts | `user` / `assistant` messages; consecutive messages of one role are merged (Anthropic requires alternation) |
//! | `image_url` part, a `data:` URL or an `http(s)` URL | `image` block, `source` `base64` or `url` |
//! | assistant `tool_calls[]{id, function{name, arguments}}` | `tool_use` blocks `{id, name, input}` (the arguments string parsed into an object) |
//! | `role: tool` message `{tool_call_id, content}` | `tool_result` block `{tool_use_id, content}` in a user message |
//! | `tools[].function{name, description, parameters}` | `tools[]{name, description, input_schema}` |
//! | `tool_choice` `auto` / `none` / `required` / named | `tool_choice` `auto` / `none` / `any` / `tool` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | `max_completion_tokens` or `max_tokens` (none: [`Target::default_max_tokens`]) | `max_tokens` (required by Anthropic) |
//! | `stop` (a string or an array) | `stop_sequences` |
//! | `temperature` (0–2), clamped to 1 | `temperature` (0–1) |
//! | `top_p`, `stream` | `top_p`, `stream` |
//! | `stream: true` gets `stream_options.include_usage: true` (so usage arrives) | — |
//! | `user` | `metadata.user_id` |
//!
//! Toward Anthropic, `max_completion_tokens` wins over `max_tokens`; toward
//! OpenAI, `max_tokens` becomes `max_completion_tokens` (the current name;
//! `max_tokens` is deprecated and refused by OpenAI's reasoning models).
//!
//! Decisions, where the formats differ:
//!
//! - A `system` or `developer` message after the first user or assistant
//!   message is refused ([`TranslateError::Unsupported`]): Anthropic has one
//!   system prompt, before the conversation, and moving the instruction
//!   there would change what the model sees when.
//! - A `temperature` above 1 is clamped to 1 (Anthropic's maximum): both
//!   mean "as varied as the provider allows"; refusing would make every such
//!   call impossible to fall back.
//! - Hints with no counterpart that do not change the shape of the answer
//!   are dropped: OpenAI's `seed`, `presence_penalty`, `frequency_penalty`,
//!   `store`, `metadata`, `service_tier`, `prompt_cache_key`,
//!   `safety_identifier`, `stream_options` (toward Anthropic, whose streams
//!   always carry usage), a message's `name`, an image's `detail`, a tool's
//!   `strict`; Anthropic's `cache_control`, `service_tier`, a tool result's
//!   `is_error` flag (its content is kept), and `thinking` blocks in the
//!   history (OpenAI chat takes no reasoning back).
//! - Everything else without a counterpart is refused, naming it: `n > 1`,
//!   `logprobs`, `top_logprobs`, `logit_bias`, audio (input parts, output,
//!   `modalities`), file parts, JSON mode (`response_format` `json_object`
//!   or `json_schema`: Anthropic has no constrained JSON output to map it
//!   to), `reasoning_effort`, `prediction`, `web_search_options`, the legacy
//!   `functions` / `function_call`, custom (non-function) tools; Anthropic's
//!   `top_k`, extended `thinking`, server tools, `document` blocks, images in
//!   tool results; the OpenAI responses and Gemini formats; and any field
//!   this module does not know.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Target, TranslateError};
use crate::provider::WireFormat;

type Result<T> = std::result::Result<T, TranslateError>;

/// Rewrites the request `body`, written in `from`, for `target`: its format
/// and its model. Same format: only the model is replaced.
///
/// See the [module documentation](self) for what is carried over, what is
/// dropped and what is refused.
pub fn translate(from: WireFormat, body: &[u8], target: &Target) -> Result<Bytes> {
    if from == target.format && from == WireFormat::GeminiGenerateContent {
        return Ok(Bytes::copy_from_slice(body));
    }
    let body = parse_object(body)?;
    let out = match (from, target.format) {
        (a, b) if a == b => {
            let mut body = body;
            body.insert("model".into(), Value::String(target.model.clone()));
            body
        }
        (WireFormat::OpenAiChat, WireFormat::AnthropicMessages) => {
            openai_to_anthropic(body, target)?
        }
        (WireFormat::AnthropicMessages, WireFormat::OpenAiChat) => {
            anthropic_to_openai(body, target)?
        }
        (a, b) => {
            return Err(unsupported_format(a).unwrap_or_else(|| {
                unsupported_format(b)
                    .unwrap_or_else(|| TranslateError::unsupported("this pair of formats"))
            }));
        }
    };
    to_bytes(&Value::Object(out))
}

/// The refusal for a format translation does not speak, if `format` is one.
pub(super) fn unsupported_format(format: WireFormat) -> Option<TranslateError> {
    match format {
        WireFormat::OpenAiResponses => {
            Some(TranslateError::unsupported("the openai responses format"))
        }
        WireFormat::GeminiGenerateContent => Some(TranslateError::unsupported("the gemini format")),
        _ => None,
    }
}

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TranslateError::invalid("the body is not a JSON object")),
        Err(_) => Err(TranslateError::invalid("the body is not valid JSON")),
    }
}

pub(super) fn to_bytes(value: &Value) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|_| TranslateError::invalid("the translated body could not be serialised"))
}

fn unsupported(what: impl Into<Cow<'static, str>>) -> TranslateError {
    TranslateError::unsupported(what)
}

fn invalid(reason: impl Into<Cow<'static, str>>) -> TranslateError {
    TranslateError::invalid(reason)
}

fn str_of<'a>(v: &'a Value, what: &'static str) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| invalid(format!("{what} is not a string")))
}

// ----------------------------------------------------------- OpenAI → Anthropic

fn openai_to_anthropic(body: Map<String, Value>, target: &Target) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    out.insert("model".into(), Value::String(target.model.clone()));
    let mut max_completion = None;
    let mut max_tokens = None;
    let mut messages = None;
    let mut tools = None;
    let mut tool_choice = None;
    let mut parallel = true;
    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => {}
            "messages" => messages = Some(value),
            "max_completion_tokens" => {
                max_completion = Some(tokens(&value, "max_completion_tokens")?)
            }
            "max_tokens" => max_tokens = Some(tokens(&value, "max_tokens")?),
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s)],
                    Value::Array(a) => a,
                    _ => return Err(invalid("stop is neither a string nor an array")),
                };
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(stops));
                }
            }
            "temperature" => {
                let t = value
                    .as_f64()
                    .ok_or_else(|| invalid("temperature is not a number"))?;
                let t = if t > 1.0 { json!(1.0) } else { value };
                out.insert("temperature".into(), t);
            }
            "top_p" | "stream" => {
                out.insert(key, value);
            }
            "user" => {
                out.insert("metadata".into(), json!({ "user_id": value }));
            }
            "tools" => tools = Some(value),
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => parallel = value.as_bool() != Some(false),
            "n" => {
                if value.as_u64() != Some(1) {
                    return Err(unsupported("n > 1 (several choices)"));
                }
            }
            "logprobs" => {
                if value.as_bool() == Some(true) {
                    return Err(unsupported("logprobs"));
                }
            }
            "top_logprobs" => return Err(unsupported("top_logprobs")),
            "logit_bias" => {
                if value.as_object().is_none_or(|m| !m.is_empty()) {
                    return Err(unsupported("logit_bias"));
                }
            }
            "response_format" => {
                let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
                if kind != "text" {
                    return Err(unsupported(format!("JSON mode (response_format `{kind}`)")));
                }
            }
            "audio" => return Err(unsupported("audio output")),
            "modalities" => {
                let text_only = value
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m.as_str() == Some("text")));
                if !text_only {
                    return Err(unsupported("audio output (modalities)"));
                }
            }
            "functions" | "function_call" => {
                return Err(unsupported("the legacy functions and function_call"));
            }
            "reasoning_effort" | "prediction" | "web_search_options" => {
                return Err(unsupported(format!("`{key}`")));
            }
            "seed" | "presence_penalty" | "frequency_penalty" | "store" | "metadata"
            | "service_tier" | "prompt_cache_key" | "safety_identifier" | "stream_options" => {}
            other => return Err(unsupported(format!("the field `{other}`"))),
        }
    }
    let max = max_completion
        .or(max_tokens)
        .unwrap_or(target.default_max_tokens);
    out.insert("max_tokens".into(), max.into());

    let messages = messages.ok_or_else(|| invalid("messages is missing"))?;
    let Value::Array(messages) = messages else {
        return Err(invalid("messages is not an array"));
    };
    let (system, messages) = openai_messages(messages)?;
    if let Some(system) = system {
        out.insert("system".into(), Value::String(system));
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(tools) = tools {
        let Value::Array(tools) = tools else {
            return Err(invalid("tools is not an array"));
        };
        let tools = tools
            .into_iter()
            .map(openai_tool)
            .collect::<Result<Vec<_>>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
            let mut choice = match tool_choice {
                Some(c) => openai_tool_choice(c)?,
                None => json!({"type": "auto"}),
            };
            if !parallel && choice["type"] != "none" {
                choice["disable_parallel_tool_use"] = Value::Bool(true);
            }
            if tool_choice_is_default(&choice) {
                // `auto` is Anthropic's default: leave it out.
            } else {
                out.insert("tool_choice".into(), choice);
            }
        }
    }
    Ok(out)
}

fn tool_choice_is_default(choice: &Value) -> bool {
    choice
        .as_object()
        .is_some_and(|c| c.len() == 1 && c["type"] == "auto")
}

fn tokens(v: &Value, what: &'static str) -> Result<u64> {
    v.as_u64()
        .ok_or_else(|| invalid(format!("{what} is not a non-negative integer")))
}

fn openai_tool(tool: Value) -> Result<Value> {
    let kind = tool
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("function");
    if kind != "function" {
        return Err(unsupported(format!("a tool of type `{kind}`")));
    }
    let f = tool
        .get("function")
        .ok_or_else(|| invalid("a tool has no function"))?;
    let name = str_of(f.get("name").unwrap_or(&Value::Null), "a tool's name")?;
    let mut out = Map::new();
    out.insert("name".into(), name.into());
    if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
        out.insert("description".into(), d.clone());
    }
    let schema = match f.get("parameters") {
        Some(p) if !p.is_null() => p.clone(),
        _ => json!({"type": "object", "properties": {}}),
    };
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

fn openai_tool_choice(choice: Value) -> Result<Value> {
    match &choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(invalid(format!("unknown tool_choice `{other}`"))),
        },
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tool_choice names no function"))?;
                Ok(json!({"type": "tool", "name": name}))
            }
            Some(other) => Err(unsupported(format!("tool_choice of type `{other}`"))),
            None => Err(invalid("tool_choice has no type")),
        },
        _ => Err(invalid("tool_choice is neither a string nor an object")),
    }
}

/// Text of a system, developer or tool message: a string, or text parts
/// joined by a newline.
fn openai_text(content: &Value, what: &'static str) -> Result<String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(str_of(&p["text"], "a text part's text")?),
                    Some(other) => {
                        return Err(unsupported(format!("a `{other}` part in a {what} message")));
                    }
                    None => return Err(invalid("a content part has no type")),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(invalid(
            "a message's content is neither a string nor an array",
        )),
    }
}

/// The leading system prompt and the Anthropic messages.
fn openai_messages(messages: Vec<Value>) -> Result<(Option<String>, Vec<Value>)> {
    let mut system: Vec<String> = Vec::new();
    let mut started = false;
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in messages {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a message has no role"))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                if started {
                    return Err(unsupported(
                        "a system message after the conversation started (Anthropic has one system prompt, before the messages)",
                    ));
                }
                let text = openai_text(content, "system")?;
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            "user" => ("user", openai_user_blocks(content)?),
            "assistant" => ("assistant", openai_assistant_blocks(&m)?),
            "tool" => {
                let id = str_of(
                    m.get("tool_call_id").unwrap_or(&Value::Null),
                    "a tool message's tool_call_id",
                )?;
                let text = openai_text(content, "tool")?;
                let block = json!({"type": "tool_result", "tool_use_id": id, "content": text});
                ("user", vec![block])
            }
            "function" => return Err(unsupported("the legacy function messages")),
            other => return Err(invalid(format!("unknown message role `{other}`"))),
        };
        started = true;
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, blocks)| {
            let content = match blocks.as_slice() {
                [one] if one["type"] == "text" => one["text"].clone(),
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, messages))
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn openai_user_blocks(content: &Value) -> Result<Vec<Value>> {
    match content {
        Value::String(s) => Ok(text_block(s).into_iter().collect()),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.extend(text_block(str_of(&p["text"], "a text part's text")?))
                    }
                    Some("image_url") => {
                        let url = p
                            .get("image_url")
                            .and_then(|i| i.get("url"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid("an image_url part has no url"))?;
                        out.push(image_block(url)?);
                    }
                    Some("input_audio") => return Err(unsupported("audio input")),
                    Some("file") => return Err(unsupported("file input")),
                    Some(other) => return Err(unsupported(format!("a `{other}` content part"))),
                    None => return Err(invalid("a content part has no type")),
                }
            }
            Ok(out)
        }
        Value::Null => Ok(Vec::new()),
        _ => Err(invalid(
            "a user message's content is neither a string nor an array",
        )),
    }
}

/// An Anthropic image block for an OpenAI image URL: a base64 `data:` URL or
/// a web URL.
fn image_block(url: &str) -> Result<Value> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| unsupported("an image data URL that is not base64"))?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(invalid(
        "an image URL is neither a data URL nor an http(s) URL",
    ))
}

fn openai_assistant_blocks(m: &Value) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    match m.get("content").unwrap_or(&Value::Null) {
        Value::String(s) => out.extend(text_block(s)),
        Value::Null => {}
        Value::Array(parts) => {
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        out.extend(text_block(str_of(&p["text"], "a text part's text")?))
                    }
                    Some("refusal") => {
                        out.extend(text_block(str_of(
                            &p["refusal"],
                            "a refusal part's refusal",
                        )?));
                    }
                    Some(other) => {
                        return Err(unsupported(format!(
                            "a `{other}` part in an assistant message"
                        )));
                    }
                    None => return Err(invalid("a content part has no type")),
                }
            }
        }
        _ => {
            return Err(invalid(
                "an assistant message's content is neither a string nor an array",
            ));
        }
    }
    if let Some(refusal) = m.get("refusal").and_then(Value::as_str) {
        out.extend(text_block(refusal));
    }
    if m.get("audio").is_some_and(|a| !a.is_null()) {
        return Err(unsupported("audio in an assistant message"));
    }
    if m.get("function_call").is_some_and(|a| !a.is_null()) {
        return Err(unsupported("the legacy function_call"));
    }
    if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
        let calls = calls
            .as_array()
            .ok_or_else(|| invalid("tool_calls is not an array"))?;
        for call in calls {
            let kind = call
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("function");
            if kind != "function" {
                return Err(unsupported(format!("a tool call of type `{kind}`")));
            }
            let id = str_of(call.get("id").unwrap_or(&Value::Null), "a tool call's id")?;
            let f = call
                .get("function")
                .ok_or_else(|| invalid("a tool call has no function"))?;
            let name = str_of(f.get("name").unwrap_or(&Value::Null), "a tool call's name")?;
            let input = arguments_to_input(f.get("arguments").unwrap_or(&Value::Null))?;
            out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    Ok(out)
}

/// OpenAI's `arguments` (a JSON string) as Anthropic's `input` (an object):
/// an empty string is an empty object.
pub(super) fn arguments_to_input(arguments: &Value) -> Result<Value> {
    let text = match arguments {
        Value::String(s) => s.as_str(),
        Value::Null => "",
        // Some compatible servers send the object itself.
        Value::Object(_) => return Ok(arguments.clone()),
        _ => return Err(invalid("a tool call's arguments are not a string")),
    };
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid("a tool call's arguments are not a JSON object")),
        Err(_) => Err(invalid("a tool call's arguments are not valid JSON")),
    }
}

// ----------------------------------------------------------- Anthropic → OpenAI

fn anthropic_to_openai(body: Map<String, Value>, target: &Target) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    out.insert("model".into(), Value::String(target.model.clone()));
    let mut system = None;
    let mut messages = None;
    let mut tools = None;
    let mut tool_choice = None;
    let mut stream = false;
    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => {}
            "messages" => messages = Some(value),
            "system" => system = Some(value),
            "max_tokens" => {
                out.insert(
                    "max_completion_tokens".into(),
                    tokens(&value, "max_tokens")?.into(),
                );
            }
            "stop_sequences" => {
                if value.as_array().is_some_and(|a| !a.is_empty()) {
                    out.insert("stop".into(), value);
                }
            }
            "temperature" | "top_p" => {
                out.insert(key, value);
            }
            "stream" => {
                stream = value.as_bool() == Some(true);
                out.insert(key, value);
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").filter(|u| !u.is_null()) {
                    out.insert("user".into(), user.clone());
                }
            }
            "tools" => tools = Some(value),
            "tool_choice" => tool_choice = Some(value),
            "thinking" => {
                if value.get("type").and_then(Value::as_str) != Some("disabled") {
                    return Err(unsupported("extended thinking"));
                }
            }
            "top_k" | "container" | "mcp_servers" => return Err(unsupported(format!("`{key}`"))),
            "service_tier" => {}
            other => return Err(unsupported(format!("the field `{other}`"))),
        }
    }
    if stream {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let mut msgs = Vec::new();
    if let Some(system) = system {
        let text = anthropic_text(&system, "system")?;
        if !text.is_empty() {
            msgs.push(json!({"role": "system", "content": text}));
        }
    }
    let messages = messages.ok_or_else(|| invalid("messages is missing"))?;
    let Value::Array(messages) = messages else {
        return Err(invalid("messages is not an array"));
    };
    for m in messages {
        anthropic_message(m, &mut msgs)?;
    }
    out.insert("messages".into(), Value::Array(msgs));

    if let Some(tools) = tools {
        let Value::Array(tools) = tools else {
            return Err(invalid("tools is not an array"));
        };
        let tools = tools
            .into_iter()
            .map(anthropic_tool)
            .collect::<Result<Vec<_>>>()?;
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
            if let Some(choice) = tool_choice {
                if choice
                    .get("disable_parallel_tool_use")
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    out.insert("parallel_tool_calls".into(), Value::Bool(false));
                }
                let choice = match choice.get("type").and_then(Value::as_str) {
                    Some("auto") => json!("auto"),
                    Some("none") => json!("none"),
                    Some("any") => json!("required"),
                    Some("tool") => {
                        let name = str_of(
                            choice.get("name").unwrap_or(&Value::Null),
                            "tool_choice's name",
                        )?;
                        json!({"type": "function", "function": {"name": name}})
                    }
                    Some(other) => return Err(invalid(format!("unknown tool_choice `{other}`"))),
                    None => return Err(invalid("tool_choice has no type")),
                };
                out.insert("tool_choice".into(), choice);
            }
        }
    }
    Ok(out)
}

/// Text of a system prompt or a tool result: a string, or text blocks
/// joined by a newline.
fn anthropic_text(content: &Value, what: &'static str) -> Result<String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(blocks) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(str_of(&b["text"], "a text block's text")?),
                    Some("image") => return Err(unsupported(format!("an image in a {what}"))),
                    Some(other) => {
                        return Err(unsupported(format!("a `{other}` block in a {what}")));
                    }
                    None => return Err(invalid("a content block has no type")),
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(invalid(format!(
            "the {what} is neither a string nor an array"
        ))),
    }
}

fn anthropic_message(m: Value, out: &mut Vec<Value>) -> Result<()> {
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a message has no role"))?;
    let content = m.get("content").unwrap_or(&Value::Null);
    let blocks: Cow<'_, [Value]> = match content {
        Value::String(s) => {
            if role != "user" && role != "assistant" {
                return Err(invalid(format!("unknown message role `{role}`")));
            }
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(a) => Cow::Borrowed(a),
        _ => {
            return Err(invalid(
                "a message's content is neither a string nor an array",
            ));
        }
    };
    match role {
        "user" => {
            let mut parts = Vec::new();
            for b in blocks.iter() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = str_of(&b["text"], "a text block's text")?;
                        parts.push(json!({"type": "text", "text": text}));
                    }
                    Some("image") => parts.push(image_part(b)?),
                    Some("tool_result") => {
                        let id = str_of(
                            b.get("tool_use_id").unwrap_or(&Value::Null),
                            "a tool result's tool_use_id",
                        )?;
                        let text = anthropic_text(
                            b.get("content").unwrap_or(&Value::Null),
                            "tool result",
                        )?;
                        out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                    }
                    Some("document") => return Err(unsupported("document blocks")),
                    Some(other) => return Err(unsupported(format!("`{other}` blocks"))),
                    None => return Err(invalid("a content block has no type")),
                }
            }
            let content = match parts.as_slice() {
                [] => return Ok(()),
                [one] if one["type"] == "text" => one["text"].clone(),
                _ => Value::Array(parts),
            };
            out.push(json!({"role": "user", "content": content}));
        }
        "assistant" => {
            let mut text = String::new();
            let mut calls = Vec::new();
            for b in blocks.iter() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(str_of(&b["text"], "a text block's text")?),
                    Some("tool_use") => calls.push(tool_call(b)?),
                    // Reasoning of an earlier turn: OpenAI chat takes none back.
                    Some("thinking" | "redacted_thinking") => {}
                    Some("image") => return Err(unsupported("an image in an assistant message")),
                    Some(other) => return Err(unsupported(format!("`{other}` blocks"))),
                    None => return Err(invalid("a content block has no type")),
                }
            }
            let mut msg = Map::new();
            msg.insert("role".into(), "assistant".into());
            msg.insert(
                "content".into(),
                if text.is_empty() && !calls.is_empty() {
                    Value::Null
                } else {
                    Value::String(text)
                },
            );
            if !calls.is_empty() {
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            out.push(Value::Object(msg));
        }
        other => return Err(invalid(format!("unknown message role `{other}`"))),
    }
    Ok(())
}

/// An OpenAI tool call for an Anthropic `tool_use` block.
pub(super) fn tool_call(block: &Value) -> Result<Value> {
    let id = str_of(
        block.get("id").unwrap_or(&Value::Null),
        "a tool_use block's id",
    )?;
    let name = str_of(
        block.get("name").unwrap_or(&Value::Null),
        "a tool_use block's name",
    )?;
    let input = match block.get("input") {
        None | Some(Value::Null) => json!({}),
        Some(v) => v.clone(),
    };
    let arguments = serde_json::to_string(&input)
        .map_err(|_| invalid("a tool_use block's input could not be serialised"))?;
    Ok(json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

fn image_part(block: &Value) -> Result<Value> {
    let source = block
        .get("source")
        .ok_or_else(|| invalid("an image block has no source"))?;
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = str_of(
                source.get("media_type").unwrap_or(&Value::Null),
                "an image's media_type",
            )?;
            let data = str_of(
                source.get("data").unwrap_or(&Value::Null),
                "an image's data",
            )?;
            format!("data:{media};base64,{data}")
        }
        Some("url") => {
            str_of(source.get("url").unwrap_or(&Value::Null), "an image's url")?.to_owned()
        }
        Some(other) => return Err(unsupported(format!("an image source of type `{other}`"))),
        None => return Err(invalid("an image source has no type")),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn anthropic_tool(tool: Value) -> Result<Value> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str)
        && kind != "custom"
    {
        return Err(unsupported(format!("the server tool `{kind}`")));
    }
    let name = str_of(tool.get("name").unwrap_or(&Value::Null), "a tool's name")?;
    let mut f = Map::new();
    f.insert("name".into(), name.into());
    if let Some(d) = tool.get("description").filter(|d| !d.is_null()) {
        f.insert("description".into(), d.clone());
    }
    if let Some(schema) = tool.get("input_schema").filter(|d| !d.is_null()) {
        f.insert("parameters".into(), schema.clone());
    }
    Ok(json!({"type": "function", "function": f}))
}
