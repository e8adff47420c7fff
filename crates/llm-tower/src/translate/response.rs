//! Whole (non-streaming) answers from the target's format to the caller's.
//!
//! Same format: the body is returned unchanged. Across formats, OpenAI chat
//! completions ↔ Anthropic messages:
//!
//! | OpenAI chat (`chat.completion`) | Anthropic messages (`message`) |
//! |---|---|
//! | `id` | `id` (the target's id is kept) |
//! | `model` | `model` (the answering `model` given to [`translate`]) |
//! | `object: "chat.completion"`, `created` (now, toward OpenAI) | `type: "message"`, `role: "assistant"` |
//! | `choices[0].message.content` | `text` blocks (joined, toward OpenAI) |
//! | `choices[0].message.refusal` | a `text` block |
//! | `choices[0].message.tool_calls[]{id, function{name, arguments}}` | `tool_use` blocks `{id, name, input}` |
//! | `finish_reason` `stop` | `stop_reason` `end_turn` (or `stop_sequence`) |
//! | `length` | `max_tokens` (or `model_context_window_exceeded`) |
//! | `tool_calls` (or `function_call`) | `tool_use` |
//! | `content_filter` | `refusal` |
//! | `usage.prompt_tokens` (cached tokens included) | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` |
//! | `usage.prompt_tokens_details.cached_tokens` | `cache_read_input_tokens` |
//! | `usage.completion_tokens` | `output_tokens` |
//!
//! Toward Anthropic `cache_creation_input_tokens` is 0 (OpenAI does not
//! report cache writes), `stop_sequence` is `null` (OpenAI does not say
//! which sequence stopped the answer) and an unknown `finish_reason` is kept
//! verbatim. Toward OpenAI `total_tokens` is the
//! sum; Anthropic's `thinking` blocks are dropped (OpenAI chat shows no
//! reasoning); an unknown `stop_reason` (`pause_turn` …) becomes `stop`.
//! Only the first choice of an OpenAI answer is read (requests asking for
//! several are refused). Anthropic server-tool blocks are refused.
//!
//! Error bodies (an OpenAI `{"error": {…}}`, an Anthropic
//! `{"type": "error", "error": {…}}`) are translated too, the message kept:
//!
//! | Anthropic `error.type` | OpenAI `error.type`, `error.code` |
//! |---|---|
//! | `invalid_request_error`, `request_too_large` | `invalid_request_error`, `null` |
//! | `authentication_error` | `invalid_request_error`, `invalid_api_key` |
//! | `permission_error` | `invalid_request_error`, `permission_denied` |
//! | `not_found_error` | `invalid_request_error`, `model_not_found` |
//! | `rate_limit_error` | `requests`, `rate_limit_exceeded` |
//! | `billing_error` | `insufficient_quota`, `insufficient_quota` |
//! | `api_error`, `overloaded_error`, `timeout_error`, anything else | `server_error`, `null` |
//!
//! Toward Anthropic: OpenAI's code `rate_limit_exceeded` or type `requests`
//! / `tokens` → `rate_limit_error`; `insufficient_quota` → `billing_error`;
//! code `invalid_api_key` or type `authentication_error` →
//! `authentication_error`; `model_not_found` → `not_found_error`; type
//! `invalid_request_error` → `invalid_request_error`; anything else →
//! `api_error`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{
    TranslateError,
    request::{arguments_to_input, parse_object, to_bytes, tool_call, unsupported_format},
};
use crate::provider::WireFormat;

type Result<T> = std::result::Result<T, TranslateError>;

/// Rewrites a whole answer `body` of the target, written in `from`, in the
/// caller's format `to`. `model` is the model that answered, named in the
/// result.
///
/// Error bodies are translated as well. See the
/// [module documentation](self) for the mapping.
pub fn translate(from: WireFormat, to: WireFormat, body: &[u8], model: &str) -> Result<Bytes> {
    if from == to {
        return Ok(Bytes::copy_from_slice(body));
    }
    if let Some(e) = unsupported_format(from).or_else(|| unsupported_format(to)) {
        return Err(e);
    }
    let body = parse_object(body)?;
    let out = match (from, to) {
        (WireFormat::OpenAiChat, WireFormat::AnthropicMessages) => {
            if let Some(error) = body.get("error").filter(|e| !e.is_null()) {
                openai_error_to_anthropic(error)
            } else {
                openai_to_anthropic(&body, model)?
            }
        }
        (WireFormat::AnthropicMessages, WireFormat::OpenAiChat) => {
            if body.get("type").and_then(Value::as_str) == Some("error") {
                anthropic_error_to_openai(body.get("error").unwrap_or(&Value::Null))
            } else {
                anthropic_to_openai(&body, model)?
            }
        }
        _ => return Err(TranslateError::unsupported("this pair of formats")),
    };
    to_bytes(&out)
}

fn count(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

// ----------------------------------------------------------- OpenAI → Anthropic

fn openai_to_anthropic(body: &Map<String, Value>, model: &str) -> Result<Value> {
    let choice = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| TranslateError::invalid("the answer has no choices"))?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(text) = message.get("content").and_then(Value::as_str)
        && !text.is_empty()
    {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str)
        && !refusal.is_empty()
    {
        content.push(json!({"type": "text", "text": refusal}));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for call in calls {
            let f = call.get("function").unwrap_or(&Value::Null);
            let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            let input = arguments_to_input(f.get("arguments").unwrap_or(&Value::Null))?;
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
    }
    let stop_reason = match choice.get("finish_reason").and_then(Value::as_str) {
        None => Value::Null,
        Some("stop") => "end_turn".into(),
        Some("length") => "max_tokens".into(),
        Some("tool_calls" | "function_call") => "tool_use".into(),
        Some("content_filter") => "refusal".into(),
        Some(other) => other.into(),
    };
    let usage = body.get("usage").unwrap_or(&Value::Null);
    let prompt = count(usage.get("prompt_tokens"));
    let cached = count(usage.pointer("/prompt_tokens_details/cached_tokens"));
    let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
    Ok(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": prompt.saturating_sub(cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": count(usage.get("completion_tokens")),
        },
    }))
}

fn openai_error_to_anthropic(error: &Value) -> Value {
    let field = |k: &str| error.get(k).and_then(Value::as_str);
    let message = match error {
        Value::String(s) => s.as_str(),
        _ => field("message").unwrap_or("error"),
    };
    let kind = field("type").unwrap_or("");
    let code = field("code").unwrap_or("");
    let ty = if code == "rate_limit_exceeded" || kind == "requests" || kind == "tokens" {
        "rate_limit_error"
    } else if code == "insufficient_quota" || kind == "insufficient_quota" {
        "billing_error"
    } else if code == "invalid_api_key" || kind == "authentication_error" {
        "authentication_error"
    } else if code == "model_not_found" {
        "not_found_error"
    } else if kind == "invalid_request_error" {
        "invalid_request_error"
    } else {
        "api_error"
    };
    json!({"type": "error", "error": {"type": ty, "message": message}})
}

// ----------------------------------------------------------- Anthropic → OpenAI

fn anthropic_to_openai(body: &Map<String, Value>, model: &str) -> Result<Value> {
    let blocks = body
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::invalid("the answer's content is not an array"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => calls.push(tool_call(b)?),
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => {
                return Err(TranslateError::unsupported(format!(
                    "`{other}` blocks in an answer"
                )));
            }
            None => return Err(TranslateError::invalid("a content block has no type")),
        }
    }
    let finish_reason = match body.get("stop_reason").and_then(Value::as_str) {
        None => Value::Null,
        Some("max_tokens" | "model_context_window_exceeded") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some("refusal") => "content_filter".into(),
        Some(_) => "stop".into(),
    };
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let usage = body.get("usage").unwrap_or(&Value::Null);
    let cache_read = count(usage.get("cache_read_input_tokens"));
    let prompt = count(usage.get("input_tokens"))
        .saturating_add(cache_read)
        .saturating_add(count(usage.get("cache_creation_input_tokens")));
    let completion = count(usage.get("output_tokens"));
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
    Ok(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": {"cached_tokens": cache_read},
        },
    }))
}

fn anthropic_error_to_openai(error: &Value) -> Value {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let (ty, code) = match error.get("type").and_then(Value::as_str).unwrap_or("") {
        "invalid_request_error" | "request_too_large" => ("invalid_request_error", None),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        "permission_error" => ("invalid_request_error", Some("permission_denied")),
        "not_found_error" => ("invalid_request_error", Some("model_not_found")),
        "rate_limit_error" => ("requests", Some("rate_limit_exceeded")),
        "billing_error" => ("insufficient_quota", Some("insufficient_quota")),
        _ => ("server_error", None),
    };
    json!({"error": {"message": message, "type": ty, "param": null, "code": code}})
}
