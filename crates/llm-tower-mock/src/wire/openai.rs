//! OpenAI chat completions: answers, chunks and error bodies.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{ErrorAnswer, ErrorKind, Event, Invalid, Success, sse};
use crate::content::ToolCall;

const FINGERPRINT: &str = "fp_mock_0001";

fn finish_reason(s: &Success<'_>) -> &'static str {
    if s.answer.tool.is_some() {
        "tool_calls"
    } else if s.answer.truncated {
        "length"
    } else {
        "stop"
    }
}

fn usage(s: &Success<'_>) -> Value {
    let input = s.answer.input_tokens;
    let output = s.answer.output_tokens();
    json!({
        "prompt_tokens": input,
        "completion_tokens": output,
        "total_tokens": input + output,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

pub(super) fn answer(s: &Success<'_>) -> Value {
    let message = match &s.answer.tool {
        Some(tool) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": s.tool_call_id(),
                "type": "function",
                "function": {"name": tool.name, "arguments": tool.arguments}
            }],
            "refusal": null,
            "annotations": []
        }),
        None => json!({
            "role": "assistant",
            "content": s.answer.text(),
            "refusal": null,
            "annotations": []
        }),
    };
    json!({
        "id": s.id,
        "object": "chat.completion",
        "created": s.created,
        "model": s.chat.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(s)
        }],
        "usage": usage(s),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT
    })
}

/// A `chat.completion.chunk` with the given choices; `usage: null` is written
/// on every chunk when usage was asked for, as OpenAI does.
fn chunk(s: &Success<'_>, choices: Value, usage: Option<Value>) -> Value {
    let mut v = json!({
        "id": s.id,
        "object": "chat.completion.chunk",
        "created": s.created,
        "model": s.chat.model,
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
    });
    if s.chat.include_usage {
        v["usage"] = usage.unwrap_or(Value::Null);
    }
    v
}

fn delta(s: &Success<'_>, delta: Value, finish: Option<&str>) -> Value {
    chunk(
        s,
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
        None,
    )
}

/// Role chunk, one chunk per token, the finish chunk, the usage chunk
/// (`choices: []`, only with `stream_options.include_usage`), then `[DONE]`.
/// A tool call: the role chunk opens it (`id`, `type`, `name`, empty
/// `arguments`), then one chunk per fragment of its arguments.
pub(super) fn events(s: &Success<'_>) -> Vec<Event> {
    let mut out = Vec::with_capacity(s.answer.tokens.len() + 4);
    if let Some(tool) = &s.answer.tool {
        out.push(Event::frame(sse(
            None,
            &delta(
                s,
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": s.tool_call_id(),
                        "type": "function",
                        "function": {"name": tool.name, "arguments": ""}
                    }],
                    "refusal": null
                }),
                None,
            ),
        )));
        for f in &tool.fragments {
            out.push(Event::tokens(
                sse(
                    None,
                    &delta(
                        s,
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}),
                        None,
                    ),
                ),
                ToolCall::fragment_tokens(f),
            ));
        }
    } else {
        out.push(Event::frame(sse(
            None,
            &delta(
                s,
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ),
        )));
    }
    for t in &s.answer.tokens {
        out.push(Event::tokens(
            sse(None, &delta(s, json!({"content": t}), None)),
            1,
        ));
    }
    out.push(Event::frame(sse(
        None,
        &delta(s, json!({}), Some(finish_reason(s))),
    )));
    if s.chat.include_usage {
        out.push(Event::frame(sse(
            None,
            &chunk(s, json!([]), Some(usage(s))),
        )));
    }
    out.push(Event::frame(Bytes::from_static(DONE)));
    out
}

/// OpenAI's terminal event.
pub(super) const DONE: &[u8] = b"data: [DONE]\n\n";

/// A chunk whose delta is `{"content": ""}`: no output, only proof of life.
pub(super) fn empty_delta(s: &Success<'_>) -> Bytes {
    sse(None, &delta(s, json!({"content": ""}), None))
}

/// What OpenAI writes into a stream that fails after it started.
pub(super) fn stream_error() -> Bytes {
    sse(
        None,
        &json!({"error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": null,
            "code": null
        }}),
    )
}

fn body(message: &str, ty: &str, param: Option<&str>, code: Option<&str>) -> Bytes {
    serde_json::to_vec(&json!({"error": {
        "message": message,
        "type": ty,
        "param": param,
        "code": code,
    }}))
    .expect("JSON values serialise")
    .into()
}

pub(super) fn invalid(invalid: &Invalid) -> ErrorAnswer {
    ErrorAnswer {
        status: StatusCode::BAD_REQUEST,
        body: body(
            &invalid.message,
            "invalid_request_error",
            invalid.param,
            None,
        ),
    }
}

pub(super) fn error(kind: ErrorKind, message: Option<&str>) -> ErrorAnswer {
    let (status, default_message, ty, param, code) = match kind {
        ErrorKind::RateLimited(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests. Please try again later.",
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        ErrorKind::RequestTooLarge => (
            StatusCode::TOO_MANY_REQUESTS,
            "Request too large for tokens per min (TPM).",
            "tokens",
            None,
            Some("rate_limit_exceeded"),
        ),
        ErrorKind::InsufficientQuota => (
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        ),
        ErrorKind::ContextLength => (
            StatusCode::BAD_REQUEST,
            "This model's maximum context length was exceeded. Please reduce the length of the messages.",
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        ErrorKind::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is overloaded or not ready yet.",
            "server_error",
            None,
            None,
        ),
        ErrorKind::Status(status) => {
            let (m, ty, code) = match status.as_u16() {
                400 => ("Invalid request.", "invalid_request_error", None),
                401 => (
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                ),
                403 => (
                    "You are not allowed to access this resource.",
                    "invalid_request_error",
                    Some("unsupported_country_region_territory"),
                ),
                404 => (
                    "The model does not exist or you do not have access to it.",
                    "invalid_request_error",
                    Some("model_not_found"),
                ),
                408 => ("Request timed out.", "timeout", None),
                409 => ("Conflict.", "invalid_request_error", None),
                413 => ("Request entity too large.", "invalid_request_error", None),
                422 => ("Unprocessable entity.", "invalid_request_error", None),
                429 => (
                    "Rate limit reached for requests. Please try again later.",
                    "requests",
                    Some("rate_limit_exceeded"),
                ),
                503 => (
                    "The server is overloaded or not ready yet.",
                    "server_error",
                    None,
                ),
                s if s >= 500 => (
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                ),
                _ => ("The request failed.", "invalid_request_error", None),
            };
            (status, m, ty, None, code)
        }
    };
    ErrorAnswer {
        status,
        body: body(message.unwrap_or(default_message), ty, param, code),
    }
}

/// Formats a duration as Go's `time.Duration` prints it, in milliseconds
/// rounded up (a client that waits that long finds the limit reset).
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_print_like_go() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(1), "1ms"),
            (Duration::from_millis(12), "12ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(85_656_648), "23h47m36.648s"),
            (Duration::from_secs(3600), "1h0m0s"),
        ] {
            assert_eq!(go_duration(d), s, "{d:?}");
        }
    }
}
