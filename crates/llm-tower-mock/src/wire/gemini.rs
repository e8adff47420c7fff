//! Gemini `generateContent`: answers, SSE chunks and error bodies.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{ErrorAnswer, ErrorKind, Event, Success, sse};

/// Tokens per streamed chunk: Gemini sends text in pieces of a few words.
const TOKENS_PER_CHUNK: usize = 4;

fn finish_reason(s: &Success<'_>) -> &'static str {
    if s.answer.truncated {
        "MAX_TOKENS"
    } else {
        "STOP"
    }
}

fn usage(s: &Success<'_>, output: u32) -> Value {
    let input = s.answer.input_tokens;
    json!({
        "promptTokenCount": input,
        "candidatesTokenCount": output,
        "totalTokenCount": input + output,
    })
}

fn response(s: &Success<'_>, text: &str, finish: Option<&str>, output: u32) -> Value {
    let mut candidate = json!({
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    });
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage(s, output),
        "modelVersion": s.chat.model,
        "responseId": s.id,
    })
}

pub(super) fn answer(s: &Success<'_>) -> Value {
    response(
        s,
        &s.answer.text(),
        Some(finish_reason(s)),
        s.answer.output_tokens(),
    )
}

/// One chunk per few tokens, each with running usage; the last carries the
/// finish reason. Gemini has no separate terminal event.
pub(super) fn events(s: &Success<'_>) -> Vec<Event> {
    let chunks: Vec<&[String]> = s.answer.tokens.chunks(TOKENS_PER_CHUNK).collect();
    let mut sent = 0u32;
    let last = chunks.len().saturating_sub(1);
    let mut out: Vec<Event> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            sent += c.len() as u32;
            let finish = (i == last).then(|| finish_reason(s));
            Event::tokens(
                sse(None, &response(s, &c.concat(), finish, sent)),
                c.len() as u32,
            )
        })
        .collect();
    if out.is_empty() {
        out.push(Event::frame(sse(
            None,
            &response(s, "", Some(finish_reason(s)), 0),
        )));
    }
    out
}

pub(super) fn stream_error() -> Bytes {
    sse(
        None,
        &json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}),
    )
}

pub(super) fn error(kind: ErrorKind, message: Option<&str>) -> ErrorAnswer {
    let retry = match kind {
        ErrorKind::RateLimited(d) => Some(d),
        _ => None,
    };
    let (status, grpc, default_message) = match kind {
        ErrorKind::RateLimited(_) | ErrorKind::RequestTooLarge => (
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        ),
        ErrorKind::InsufficientQuota => (
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        ErrorKind::ContextLength => (
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "The input token count exceeds the maximum number of tokens allowed.",
        ),
        ErrorKind::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        ErrorKind::Status(status) => {
            let (g, m) = match status.as_u16() {
                400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
                401 => (
                    "UNAUTHENTICATED",
                    "API key not valid. Please pass a valid API key.",
                ),
                403 => ("PERMISSION_DENIED", "The caller does not have permission."),
                404 => ("NOT_FOUND", "Requested entity was not found."),
                429 => (
                    "RESOURCE_EXHAUSTED",
                    "Resource has been exhausted (e.g. check quota).",
                ),
                500 => ("INTERNAL", "An internal error has occurred."),
                503 => ("UNAVAILABLE", "The service is currently unavailable."),
                504 => ("DEADLINE_EXCEEDED", "The request timed out."),
                s if s >= 500 => ("INTERNAL", "An internal error has occurred."),
                _ => ("FAILED_PRECONDITION", "The request failed."),
            };
            (status, g, m)
        }
    };
    let mut error = json!({
        "code": status.as_u16(),
        "message": message.unwrap_or(default_message),
        "status": grpc,
    });
    if kind == ErrorKind::InsufficientQuota {
        // A daily quota: Gemini names the exhausted quota in a QuotaFailure.
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
            }],
        }]);
    }
    if let Some(d) = retry {
        // Gemini says when to come back in a RetryInfo detail, whole seconds
        // rounded up.
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", d.as_nanos().div_ceil(1_000_000_000)),
        }]);
    }
    ErrorAnswer {
        status,
        body: serde_json::to_vec(&json!({ "error": error }))
            .expect("JSON values serialise")
            .into(),
    }
}
