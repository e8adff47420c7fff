//! The wire formats the mock speaks: which provider a request is for, what it
//! asks, and how each provider writes its answers, errors and headers.

pub(crate) mod anthropic;
pub(crate) mod gemini;
pub(crate) mod openai;

use std::{
    borrow::Cow,
    fmt,
    str::FromStr,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header::HeaderName};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    content::{Answer, ToolCall},
    quota::{Limit, Limits},
};

/// The wire format of a request, recognised from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// OpenAI chat completions: `POST /v1/chat/completions`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic messages: `POST /v1/messages`.
    Anthropic,
    /// Gemini: `POST /v1beta/models/{model}:generateContent` and
    /// `:streamGenerateContent?alt=sse`.
    Gemini,
}

impl Provider {
    /// The provider's name as written in the journal and in rule specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(Provider::OpenAi),
            "anthropic" => Ok(Provider::Anthropic),
            "gemini" => Ok(Provider::Gemini),
            other => Err(format!(
                "unknown provider `{other}` (expected openai, anthropic or gemini)"
            )),
        }
    }
}

/// Where a request goes: its provider, and for Gemini the model and the
/// streaming flag, which live in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) provider: Provider,
    pub(crate) path_model: Option<String>,
    pub(crate) path_stream: bool,
}

/// What the mock records and echoes in place of a `key` query parameter's
/// value.
pub(crate) const REDACTED: &str = "REDACTED";

/// `path_and_query` with the value of every `key` query parameter (Gemini's
/// API key) replaced by [`REDACTED`], so a key never lands in the journal,
/// the admin endpoint or an error message.
pub(crate) fn redact_key(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    if !query.split('&').any(|p| p.starts_with("key=")) {
        return Cow::Borrowed(path_and_query);
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    for (i, param) in query.split('&').enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        if param.starts_with("key=") {
            out.push_str("key=");
            out.push_str(REDACTED);
        } else {
            out.push_str(param);
        }
    }
    Cow::Owned(out)
}

/// Recognises the endpoint of a request path (query string included).
pub(crate) fn route(path_and_query: &str) -> Option<Route> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    match path {
        "/v1/chat/completions" | "/chat/completions" => Some(Route {
            provider: Provider::OpenAi,
            path_model: None,
            path_stream: false,
        }),
        "/v1/messages" => Some(Route {
            provider: Provider::Anthropic,
            path_model: None,
            path_stream: false,
        }),
        _ => {
            let rest = path
                .strip_prefix("/v1beta/models/")
                .or_else(|| path.strip_prefix("/v1/models/"))?;
            let (model, method) = rest.rsplit_once(':')?;
            let path_stream = match method {
                "generateContent" => false,
                // Gemini streams JSON arrays unless asked for SSE; the mock
                // speaks the SSE form, which every SDK requests.
                "streamGenerateContent" if query.split('&').any(|p| p == "alt=sse") => true,
                _ => return None,
            };
            Some(Route {
                provider: Provider::Gemini,
                path_model: Some(model.to_owned()),
                path_stream,
            })
        }
    }
}

/// What a chat request asks for, whatever its wire format.
#[derive(Debug, Clone)]
pub(crate) struct Chat {
    pub(crate) provider: Provider,
    pub(crate) model: String,
    pub(crate) stream: bool,
    /// OpenAI's `stream_options.include_usage`.
    pub(crate) include_usage: bool,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) input_tokens: u32,
    /// The tool call the request asks for (OpenAI `tool_choice: "required"`
    /// or a named function, Anthropic `tool_choice` `any` or `tool`), which
    /// answers in place of text.
    pub(crate) tool: Option<ToolCall>,
}

/// Why a request body was refused, written later in the provider's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) message: String,
    pub(crate) param: Option<&'static str>,
}

impl Invalid {
    fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Invalid {
            message: message.into(),
            param,
        }
    }
}

/// Parses a chat request body the way its provider validates it.
pub(crate) fn parse(route: &Route, body: &[u8]) -> Result<Chat, Invalid> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        Invalid::new(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    let Value::Object(obj) = &json else {
        return Err(Invalid::new("the request body must be a JSON object", None));
    };
    let provider = route.provider;
    let model = match &route.path_model {
        Some(m) => m.clone(),
        None => match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => return Err(Invalid::new("model: Field required", Some("model"))),
        },
    };
    let (messages_field, max_field) = match provider {
        Provider::OpenAi => ("messages", "max_completion_tokens"),
        Provider::Anthropic => ("messages", "max_tokens"),
        Provider::Gemini => ("contents", "maxOutputTokens"),
    };
    match obj.get(messages_field) {
        Some(Value::Array(a)) if !a.is_empty() => {}
        _ => {
            return Err(Invalid::new(
                format!("{messages_field}: must be a non-empty array"),
                Some(if provider == Provider::Gemini {
                    "contents"
                } else {
                    "messages"
                }),
            ));
        }
    }
    let max_tokens = match provider {
        Provider::OpenAi => obj
            .get(max_field)
            .or_else(|| obj.get("max_tokens"))
            .and_then(Value::as_u64),
        Provider::Anthropic => match obj.get(max_field).and_then(Value::as_u64) {
            Some(n) => Some(n),
            None => {
                return Err(Invalid::new(
                    "max_tokens: Field required",
                    Some("max_tokens"),
                ));
            }
        },
        Provider::Gemini => obj
            .get("generationConfig")
            .and_then(|c| c.get(max_field))
            .and_then(Value::as_u64),
    };
    let stream = match provider {
        Provider::Gemini => route.path_stream,
        _ => obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Chat {
        provider,
        model,
        stream,
        include_usage,
        max_tokens: max_tokens.map(|n| n.min(u64::from(u32::MAX)) as u32),
        input_tokens: input_tokens(obj, messages_field),
        tool: tool_call(provider, obj),
    })
}

/// The tool a request asks to be called, if any: the one `tool_choice`
/// names, else the first of `tools` when `tool_choice` asks for any. Its
/// arguments are deterministic: `{"query": "<the prompt's first words>"}`.
fn tool_call(provider: Provider, obj: &serde_json::Map<String, Value>) -> Option<ToolCall> {
    let tools = obj.get("tools")?.as_array()?;
    let name_of = |t: &Value| -> Option<String> {
        match provider {
            Provider::OpenAi => t.get("function")?.get("name")?.as_str().map(str::to_owned),
            Provider::Anthropic => t.get("name")?.as_str().map(str::to_owned),
            Provider::Gemini => None,
        }
    };
    let first = || tools.iter().find_map(name_of);
    let choice = obj.get("tool_choice")?;
    let name = match provider {
        Provider::OpenAi => match choice {
            Value::String(s) if s == "required" => first()?,
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                o.get("function")?.get("name")?.as_str()?.to_owned()
            }
            _ => return None,
        },
        Provider::Anthropic => match choice.get("type").and_then(Value::as_str)? {
            "any" => first()?,
            "tool" => choice.get("name")?.as_str()?.to_owned(),
            _ => return None,
        },
        Provider::Gemini => return None,
    };
    let query = prompt(obj)
        .split_whitespace()
        .take(5)
        .collect::<Vec<_>>()
        .join(" ");
    Some(ToolCall::new(name, &serde_json::json!({ "query": query })))
}

/// The text of the last user message: a string, or its text parts joined.
fn prompt(obj: &serde_json::Map<String, Value>) -> String {
    let Some(message) = obj.get("messages").and_then(Value::as_array).and_then(|m| {
        m.iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    }) else {
        return String::new();
    };
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A provider-like count of the prompt: about four characters a token, plus
/// a few tokens of framing per message, as providers bill them.
fn input_tokens(obj: &serde_json::Map<String, Value>, messages_field: &str) -> u32 {
    fn chars(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(chars).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "type")
                .map(|(_, v)| chars(v))
                .sum(),
            _ => 0,
        }
    }
    let messages = obj
        .get(messages_field)
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let text = obj.get(messages_field).map_or(0, chars)
        + obj.get("system").map_or(0, chars)
        + obj.get("systemInstruction").map_or(0, chars);
    let tokens = text.div_ceil(4) + 3 * messages + 3;
    tokens.min(u32::MAX as usize) as u32
}

/// The kinds of error every provider can answer, each written in its own
/// format by [`error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// 429, retry after the given delay.
    RateLimited(Duration),
    /// A single request larger than the whole per-minute token quota.
    RequestTooLarge,
    /// 429 (OpenAI, Gemini) or 400 (Anthropic): no credit left.
    InsufficientQuota,
    /// 400: the prompt and the output cap do not fit the context window.
    ContextLength,
    /// 529 (Anthropic) or 503.
    Overloaded,
    /// Any other status, with that status's usual error.
    Status(StatusCode),
}

/// An error answer: status, body, and any extra headers.
#[derive(Debug)]
pub(crate) struct ErrorAnswer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// Writes an error in the provider's own format.
pub(crate) fn error(provider: Provider, kind: ErrorKind, message: Option<&str>) -> ErrorAnswer {
    match provider {
        Provider::OpenAi => openai::error(kind, message),
        Provider::Anthropic => anthropic::error(kind, message),
        Provider::Gemini => gemini::error(kind, message),
    }
}

/// Writes a refused request in the provider's own format.
pub(crate) fn invalid(provider: Provider, invalid: &Invalid) -> ErrorAnswer {
    match provider {
        Provider::OpenAi => openai::invalid(invalid),
        _ => error(
            provider,
            ErrorKind::Status(StatusCode::BAD_REQUEST),
            Some(&invalid.message),
        ),
    }
}

/// One server-sent event of a stream, and how many output tokens it carries.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) bytes: Bytes,
    pub(crate) tokens: u32,
}

impl Event {
    /// An event without output text.
    pub(crate) fn frame(bytes: Bytes) -> Self {
        Event { bytes, tokens: 0 }
    }

    /// An event carrying `tokens` output tokens.
    pub(crate) fn tokens(bytes: Bytes, tokens: u32) -> Self {
        Event { bytes, tokens }
    }
}

/// Writes an SSE event with an optional event name.
pub(crate) fn sse(event: Option<&str>, data: &Value) -> Bytes {
    let data = serde_json::to_string(data).expect("JSON values serialise");
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n").into(),
        None => format!("data: {data}\n\n").into(),
    }
}

/// Everything a successful answer needs to be written.
#[derive(Debug)]
pub(crate) struct Success<'a> {
    pub(crate) chat: &'a Chat,
    pub(crate) answer: &'a Answer,
    /// The answer's id (`chatcmpl-…`, `msg_…`, Gemini's `responseId`).
    pub(crate) id: &'a str,
    /// Unix seconds, for OpenAI's `created`.
    pub(crate) created: u64,
}

impl Success<'_> {
    /// The id of the answer's tool call, drawn from the answer's id:
    /// `call_…` for OpenAI, `toolu_01…` for Anthropic.
    pub(crate) fn tool_call_id(&self) -> String {
        let n = crate::content::fingerprint((self.id, "tool-call-id"));
        match self.chat.provider {
            Provider::Anthropic => format!("toolu_01{}", crate::content::base62_id(n, 22)),
            _ => format!("call_{}", crate::content::base62_id(n, 24)),
        }
    }
}

/// The whole JSON answer of a non-streaming request.
pub(crate) fn json_answer(s: &Success<'_>) -> Bytes {
    let v = match s.chat.provider {
        Provider::OpenAi => openai::answer(s),
        Provider::Anthropic => anthropic::answer(s),
        Provider::Gemini => gemini::answer(s),
    };
    serde_json::to_vec(&v)
        .expect("JSON values serialise")
        .into()
}

/// The events of a streaming answer, terminal event included, in the
/// provider's documented order.
pub(crate) fn stream_answer(s: &Success<'_>) -> Vec<Event> {
    match s.chat.provider {
        Provider::OpenAi => openai::events(s),
        Provider::Anthropic => anthropic::events(s),
        Provider::Gemini => gemini::events(s),
    }
}

/// What a provider sends to keep a quiet stream alive: Anthropic's
/// `event: ping`, an OpenAI chat chunk whose delta is `{"content": ""}` (as
/// OpenAI-compatible servers send), a Gemini SSE comment. None of them
/// carries output.
pub(crate) fn keepalive(s: &Success<'_>) -> Bytes {
    match s.chat.provider {
        Provider::OpenAi => openai::empty_delta(s),
        Provider::Anthropic => anthropic::ping(),
        Provider::Gemini => Bytes::from_static(b": keep-alive\n\n"),
    }
}

/// Whether `event` is OpenAI's terminal `data: [DONE]`.
pub(crate) fn is_done(event: &Event) -> bool {
    event.bytes.as_ref() == openai::DONE
}

/// The error event a provider sends inside a `200` stream.
pub(crate) fn stream_error(provider: Provider) -> Bytes {
    match provider {
        Provider::OpenAi => openai::stream_error(),
        Provider::Anthropic => anthropic::stream_error(),
        Provider::Gemini => gemini::stream_error(),
    }
}

/// A malformed event: a data line whose JSON breaks off.
pub(crate) fn malformed_event(provider: Provider) -> Bytes {
    match provider {
        Provider::Anthropic => {
            Bytes::from_static(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_del\n\n")
        }
        Provider::OpenAi => Bytes::from_static(
            b"data: {\"id\":\"chunk\",\"choices\":[{\"delta\":{\"content\n\n",
        ),
        Provider::Gemini => {
            Bytes::from_static(b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\n\n")
        }
    }
}

/// The header that carries a provider's request id.
pub(crate) fn request_id_header(provider: Provider) -> Option<HeaderName> {
    match provider {
        Provider::OpenAi => Some(HeaderName::from_static("x-request-id")),
        Provider::Anthropic => Some(HeaderName::from_static("request-id")),
        Provider::Gemini => None,
    }
}

/// Headers every answer of a provider carries, whatever its status.
pub(crate) fn common_headers(provider: Provider, headers: &mut HeaderMap, processing_ms: u64) {
    if provider == Provider::OpenAi {
        headers.insert("openai-processing-ms", HeaderValue::from(processing_ms));
        headers.insert("openai-version", HeaderValue::from_static("2020-10-01"));
    }
}

/// The provider's rate-limit headers for the limits as they stand.
///
/// OpenAI: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets
/// as Go durations. Input and output token limits are an Anthropic notion
/// with no OpenAI header: enforced for OpenAI-format calls too, but not
/// reported.
///
/// Anthropic: `anthropic-ratelimit-{requests,input-tokens,output-tokens,
/// tokens}-{limit,remaining,reset}`, resets as RFC 3339 instants. With
/// input or output limits, `anthropic-ratelimit-tokens-*` is the most
/// restrictive token limit in effect (the lowest `remaining`), as Anthropic
/// documents it; without them it is the tokens-per-minute limit.
///
/// Gemini sends none.
pub(crate) fn rate_limit_headers(
    provider: Provider,
    limits: &Limits,
    now: SystemTime,
    headers: &mut HeaderMap,
) {
    let list: Vec<(&str, Option<Limit>)> = match provider {
        Provider::Gemini => return,
        Provider::OpenAi => vec![("requests", limits.requests), ("tokens", limits.tokens)],
        Provider::Anthropic => {
            let tokens = if limits.input_tokens.is_some() || limits.output_tokens.is_some() {
                [limits.tokens, limits.input_tokens, limits.output_tokens]
                    .into_iter()
                    .flatten()
                    .min_by_key(|l| l.remaining)
            } else {
                limits.tokens
            };
            vec![
                ("requests", limits.requests),
                ("input-tokens", limits.input_tokens),
                ("output-tokens", limits.output_tokens),
                ("tokens", tokens),
            ]
        }
    };
    for (kind, limit) in list {
        let Some(l) = limit else { continue };
        let reset = match provider {
            Provider::OpenAi => openai::go_duration(l.reset),
            _ => anthropic::reset_instant(now, l.reset),
        };
        for (field, value) in [
            ("limit", l.limit.to_string()),
            ("remaining", l.remaining.to_string()),
            ("reset", reset),
        ] {
            let name = match provider {
                Provider::OpenAi => format!("x-ratelimit-{field}-{kind}"),
                _ => format!("anthropic-ratelimit-{kind}-{field}"),
            };
            headers.insert(
                HeaderName::try_from(name).expect("valid header name"),
                HeaderValue::try_from(value).expect("ASCII value"),
            );
        }
    }
}

/// The server-directed delay of a `429`: `retry-after` in whole seconds
/// rounded up (never early), and OpenAI's `retry-after-ms`.
pub(crate) fn retry_after_headers(provider: Provider, delay: Duration, headers: &mut HeaderMap) {
    match provider {
        Provider::Gemini => {}
        _ => {
            let secs = delay.as_nanos().div_ceil(1_000_000_000) as u64;
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            if provider == Provider::OpenAi {
                let ms = delay.as_nanos().div_ceil(1_000_000) as u64;
                headers.insert("retry-after-ms", HeaderValue::from(ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_key_hides_every_key_parameter_and_keeps_the_rest() {
        assert_eq!(
            redact_key("/v1beta/models/m:streamGenerateContent?alt=sse&key=secret123"),
            "/v1beta/models/m:streamGenerateContent?alt=sse&key=REDACTED"
        );
        assert_eq!(
            redact_key("/x?key=secret123&monkey=1&key=other"),
            "/x?key=REDACTED&monkey=1&key=REDACTED"
        );
        assert!(matches!(redact_key("/v1/messages"), Cow::Borrowed(_)));
        assert!(matches!(redact_key("/x?monkey=1"), Cow::Borrowed(_)));
    }
}
