//! Anthropic messages: answers, events and error bodies.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{ErrorAnswer, ErrorKind, Event, Success, sse};
use crate::content::ToolCall;

fn stop_reason(s: &Success<'_>) -> &'static str {
    if s.answer.tool.is_some() {
        "tool_use"
    } else if s.answer.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn usage(input: u32, output: u32) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
        "service_tier": "standard"
    })
}

pub(super) fn answer(s: &Success<'_>) -> Value {
    json!({
        "id": s.id,
        "type": "message",
        "role": "assistant",
        "model": s.chat.model,
        "content": match &s.answer.tool {
            Some(tool) => json!([{
                "type": "tool_use",
                "id": s.tool_call_id(),
                "name": tool.name,
                "input": tool.input(),
            }]),
            None => json!([{"type": "text", "text": s.answer.text()}]),
        },
        "stop_reason": stop_reason(s),
        "stop_sequence": null,
        "usage": usage(s.answer.input_tokens, s.answer.output_tokens()),
    })
}

/// `message_start`, `content_block_start`, `ping`, one `content_block_delta`
/// per token (a tool call: one `input_json_delta` per fragment of its
/// input), `content_block_stop`, `message_delta` (cumulative usage),
/// `message_stop`: the order Anthropic documents.
pub(super) fn events(s: &Success<'_>) -> Vec<Event> {
    let mut out = Vec::with_capacity(s.answer.tokens.len() + 6);
    out.push(Event::frame(sse(
        Some("message_start"),
        &json!({"type": "message_start", "message": {
            "id": s.id,
            "type": "message",
            "role": "assistant",
            "model": s.chat.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(s.answer.input_tokens, 1),
        }}),
    )));
    let block = match &s.answer.tool {
        Some(tool) => {
            json!({"type": "tool_use", "id": s.tool_call_id(), "name": tool.name, "input": {}})
        }
        None => json!({"type": "text", "text": ""}),
    };
    out.push(Event::frame(sse(
        Some("content_block_start"),
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    )));
    out.push(Event::frame(ping()));
    for f in s.answer.tool.iter().flat_map(|t| &t.fragments) {
        out.push(Event::tokens(
            sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": f}}),
            ),
            ToolCall::fragment_tokens(f),
        ));
    }
    for t in &s.answer.tokens {
        out.push(Event::tokens(
            sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
            ),
            1,
        ));
    }
    out.push(Event::frame(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    )));
    out.push(Event::frame(sse(
        Some("message_delta"),
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(s), "stop_sequence": null},
            "usage": {"output_tokens": s.answer.output_tokens()},
        }),
    )));
    out.push(Event::frame(sse(
        Some("message_stop"),
        &json!({"type": "message_stop"}),
    )));
    out
}

/// Anthropic's keep-alive.
pub(super) fn ping() -> Bytes {
    sse(Some("ping"), &json!({"type": "ping"}))
}

/// The `event: error` Anthropic sends inside a `200` stream.
pub(super) fn stream_error() -> Bytes {
    sse(
        Some("error"),
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}

pub(super) fn error(kind: ErrorKind, message: Option<&str>) -> ErrorAnswer {
    let (status, ty, default_message) = match kind {
        ErrorKind::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit. Please try again later.",
        ),
        ErrorKind::RequestTooLarge => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "This request would exceed your organization's rate limit of tokens per minute.",
        ),
        ErrorKind::InsufficientQuota => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
        ),
        ErrorKind::ContextLength => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "prompt is too long: the prompt and max_tokens exceed the model's context window",
        ),
        ErrorKind::Overloaded => (
            StatusCode::from_u16(529).expect("529 is a valid status"),
            "overloaded_error",
            "Overloaded",
        ),
        ErrorKind::Status(status) => {
            let (ty, m) = match status.as_u16() {
                400 => ("invalid_request_error", "Invalid request."),
                401 => ("authentication_error", "invalid x-api-key"),
                402 => ("billing_error", "Billing problem."),
                403 => (
                    "permission_error",
                    "Your API key does not have permission to use the specified resource.",
                ),
                404 => (
                    "not_found_error",
                    "The requested resource could not be found.",
                ),
                413 => (
                    "request_too_large",
                    "Request exceeds the maximum allowed number of bytes.",
                ),
                429 => (
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit.",
                ),
                504 => ("timeout_error", "Request timed out."),
                529 => ("overloaded_error", "Overloaded"),
                s if s >= 500 => ("api_error", "Internal server error"),
                _ => ("invalid_request_error", "The request failed."),
            };
            (status, ty, m)
        }
    };
    ErrorAnswer {
        status,
        body: serde_json::to_vec(&json!({
            "type": "error",
            "error": {"type": ty, "message": message.unwrap_or(default_message)},
        }))
        .expect("JSON values serialise")
        .into(),
    }
}

/// When a limit is back to full, as Anthropic writes it: an RFC 3339
/// instant, rounded up to the second so that a client waiting until then
/// finds it reset.
pub(super) fn reset_instant(now: SystemTime, reset: Duration) -> String {
    let at = now + reset;
    let nanos = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let up = if nanos == 0 {
        at
    } else {
        at + (Duration::from_secs(1) - Duration::from_nanos(nanos.into()))
    };
    humantime::format_rfc3339_seconds(up).to_string()
}
