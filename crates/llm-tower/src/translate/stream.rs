//! Streamed answers from the target's event sequence to the caller's.
//!
//! [`StreamTranslator`] reads the target's SSE bytes with the crate's own
//! [`SseParser`] (chunks may split an event anywhere) and writes whole
//! events of the caller's format. Each target event is parsed once, into
//! borrowed fields; the caller's events are written straight into one
//! output buffer.
//!
//! # Anthropic messages → OpenAI chat completions
//!
//! | target event | caller's chunk |
//! |---|---|
//! | `message_start` | the role chunk (`delta: {role: assistant, content: ""}`); `id` is `chatcmpl-` + the message id, `model` the message's model (else the translator's), `created` the translator's clock |
//! | `content_block_start` text | nothing (its text, when not empty) |
//! | `content_block_delta` `text_delta` | `delta.content` |
//! | `content_block_start` `tool_use` | `delta.tool_calls[{index, id, type: function, function: {name, arguments: ""}}]`, `index` counting tool calls only |
//! | `content_block_delta` `input_json_delta` | `delta.tool_calls[{index, function: {arguments}}]` (empty fragments: nothing) |
//! | `thinking`, `redacted_thinking` blocks, `signature_delta`, `citations_delta` | **dropped**: chat completions has no field for them (no `reasoning_content`: it is not OpenAI's, and thinking signatures could not be carried back) |
//! | `message_delta` with a `stop_reason` | a chunk with `finish_reason` (`end_turn`, `stop_sequence`, `pause_turn` → `stop`; `max_tokens`, `model_context_window_exceeded` → `length`; `tool_use` → `tool_calls`; `refusal` → `content_filter`; anything else → `stop`) |
//! | `message_stop` (or the end of the target's stream after the stop reason) | the usage chunk (`choices: []`, as `stream_options.include_usage` gives; see [`StreamTranslator::include_usage`]), then `data: [DONE]` |
//! | `ping`, `content_block_stop`, unknown event types | nothing |
//! | `error` | `data: {"error": {message, type, param, code}}`, and the caller's stream ends there |
//!
//! Usage: `prompt_tokens` is Anthropic's `input_tokens` plus its cache reads
//! and writes (OpenAI's count includes cached tokens), cache reads go to
//! `prompt_tokens_details.cached_tokens`; `completion_tokens` is the last
//! (cumulative) `output_tokens`.
//!
//! Refused ([`TranslateError::Unsupported`]): any other content block type
//! (server tools and their results) or delta type.
//!
//! # OpenAI chat completions → Anthropic messages
//!
//! | target chunk | caller's events |
//! |---|---|
//! | the first chunk with a choice or usage | `message_start` (id `msg_` + the chunk id, the chunk's model, empty content, usage with the input tokens when the chunk carries usage, else 0) |
//! | role-only and empty deltas | nothing |
//! | `delta.content` (and `delta.refusal`, which is text too) | `content_block_start` text once, then `content_block_delta` `text_delta` |
//! | `delta.tool_calls` | the open block's `content_block_stop`, a `content_block_start` `tool_use {id, name, input: {}}` per tool call, then `input_json_delta` with the argument fragments |
//! | `reasoning_content`, `reasoning`, `logprobs` | **dropped**: Anthropic thinking blocks need a signature no OpenAI server gives |
//! | `finish_reason` | the open block's `content_block_stop`; then, once usage is known (a `choices: []` chunk), at `[DONE]` or at the end of the target's stream, `message_delta {stop_reason, usage}` and `message_stop` (`stop` → `end_turn`, `length` → `max_tokens`, `tool_calls`/`function_call` → `tool_use`, `content_filter` → `refusal`, anything else → `end_turn`) |
//! | `data: {"error": …}`, or any event named `error` | `event: error` with `{type: error, error: {type, message}}`, and the caller's stream ends there |
//!
//! `message_delta.usage` carries `output_tokens` (`completion_tokens`),
//! `input_tokens` (`prompt_tokens` minus cached ones: Anthropic's count
//! excludes cache reads) and `cache_read_input_tokens`. A target stream
//! that never reports usage (a compatible server ignoring
//! `stream_options`) still gets a `message_delta`, with `output_tokens: 0`:
//! Anthropic's SDKs require the field.
//!
//! Refused ([`TranslateError::Unsupported`]): a choice other than the first
//! (`n > 1`), `audio` deltas, the legacy `function_call` delta, and
//! argument fragments of a tool call after the next one began (Anthropic
//! blocks cannot be reopened). Tool calls are told apart by `index`, or by
//! `id` when a server numbers every call 0; a tool call without an id gets
//! one made of the message id and its index. Chunks before the first one
//! with a choice or usage (Azure's content filter results) start nothing.
//!
//! # Same format
//!
//! The target's bytes pass through untouched, event boundaries and model
//! name included: the events name the model that answered.
//!
//! # A stream cut short
//!
//! When the target's stream ends ([`StreamTranslator::finish`]) before its
//! finish reason, nothing is invented: no finish reason, no usage chunk,
//! no `[DONE]`, no `content_block_stop`, `message_delta` or
//! `message_stop`. The caller's stream ends without its terminal events,
//! which the crate's own parser ([`StreamUsage`](crate::provider::usage::StreamUsage),
//! [`StreamProgress`](crate::metering::StreamProgress)) reports as
//! truncated, as any client does. An event cut in half at the end is
//! discarded, as the SSE rules say. `[DONE]` without a finish reason is
//! treated the same way.
//!
//! Error types are mapped so the crate's classifier puts both sides in
//! the same class: Anthropic `overloaded_error` ↔ OpenAI `server_error`
//! with code `server_is_overloaded`, `rate_limit_error` ↔ code
//! `rate_limit_exceeded`, `api_error` ↔ `server_error`,
//! `authentication_error` ↔ code `invalid_api_key`; others pass through.
//!
//! Errors: an event of the target that is not valid JSON of its format is
//! [`TranslateError::Invalid`]. After an error, the translator returns the
//! same error for every later call.

use std::{borrow::Cow, time::SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::TranslateError;
use crate::{metering::SseParser, provider::WireFormat};

/// Turns the SSE stream of a target (format `from`) into the caller's SSE
/// stream (format `to`), chunk by chunk: feed it the target's bytes as they
/// come, send what it returns.
///
/// See the [module documentation](self) for what is translated, dropped
/// and refused.
///
/// ```
/// use llm_tower::{provider::WireFormat, translate::StreamTranslator};
///
/// let mut t = StreamTranslator::new(WireFormat::AnthropicMessages, WireFormat::OpenAiChat, "claude-x")?;
/// let target = concat!(
///     "event: message_start\n",
///     r#"data: {"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":3}}}"#,
///     "\n\nevent: content_block_start\n",
///     r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
///     "\n\nevent: content_block_delta\n",
///     r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
///     "\n\nevent: message_delta\n",
///     r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
///     "\n\nevent: message_stop\n",
///     r#"data: {"type":"message_stop"}"#,
///     "\n\n",
/// );
/// // Any chunking: here, an event split in two.
/// let (a, b) = target.as_bytes().split_at(100);
/// let mut out = Vec::new();
/// out.extend_from_slice(&t.feed(a)?);
/// out.extend_from_slice(&t.feed(b)?);
/// out.extend_from_slice(&t.finish()?);
/// let out = String::from_utf8(out).unwrap();
/// assert!(out.contains(r#""delta":{"content":"Hi"}"#));
/// assert!(out.contains(r#""finish_reason":"stop""#));
/// assert!(out.ends_with("data: [DONE]\n\n"));
/// # Ok::<(), llm_tower::translate::TranslateError>(())
/// ```
#[derive(Debug)]
pub struct StreamTranslator {
    parser: SseParser,
    conv: Conv,
    out: Vec<u8>,
    failed: Option<TranslateError>,
}

#[derive(Debug)]
enum Conv {
    Pass,
    AnthropicToOpenAi(Box<AnthropicToOpenAi>),
    OpenAiToAnthropic(Box<OpenAiToAnthropic>),
}

impl StreamTranslator {
    /// A translator from the target's `from` stream to the caller's `to`
    /// stream; `model` is the model that answers, named in the events when
    /// the target's own events name none.
    ///
    /// Translates between [`WireFormat::OpenAiChat`] and
    /// [`WireFormat::AnthropicMessages`], and passes any format through to
    /// itself; other pairs are [`TranslateError::Unsupported`].
    pub fn new(from: WireFormat, to: WireFormat, model: &str) -> Result<Self, TranslateError> {
        let conv = match (from, to) {
            _ if from == to => Conv::Pass,
            (WireFormat::AnthropicMessages, WireFormat::OpenAiChat) => {
                Conv::AnthropicToOpenAi(Box::new(AnthropicToOpenAi::new(model)))
            }
            (WireFormat::OpenAiChat, WireFormat::AnthropicMessages) => {
                Conv::OpenAiToAnthropic(Box::new(OpenAiToAnthropic::new(model)))
            }
            (WireFormat::OpenAiChat | WireFormat::AnthropicMessages, _) => {
                return Err(TranslateError::unsupported(format!(
                    "a stream for a {} caller",
                    format_name(to)
                )));
            }
            _ => {
                return Err(TranslateError::unsupported(format!(
                    "a {} stream",
                    format_name(from)
                )));
            }
        };
        Ok(StreamTranslator {
            parser: SseParser::new(),
            conv,
            out: Vec::new(),
            failed: None,
        })
    }

    /// Sets the `created` time (Unix seconds) of the OpenAI chunks written
    /// for an Anthropic target; by default, the time the translator was
    /// made. Other directions ignore it.
    pub fn created(mut self, unix_seconds: u64) -> Self {
        if let Conv::AnthropicToOpenAi(c) = &mut self.conv {
            c.created = unix_seconds;
        }
        self
    }

    /// Whether the OpenAI stream written for an Anthropic target ends with
    /// a usage chunk (`choices: []`), as OpenAI sends when the request set
    /// `stream_options.include_usage`. On by default (Anthropic always
    /// reports usage); turn it off for callers that did not ask for it.
    /// Other directions ignore it.
    pub fn include_usage(mut self, include: bool) -> Self {
        if let Conv::AnthropicToOpenAi(c) = &mut self.conv {
            c.include_usage = include;
        }
        self
    }

    /// Feeds the target's next bytes; returns the caller's bytes to send
    /// now (possibly empty).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, TranslateError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut result = Ok(());
        match &mut self.conv {
            Conv::Pass => return Ok(Bytes::copy_from_slice(chunk)),
            Conv::AnthropicToOpenAi(c) => {
                let out = &mut self.out;
                self.parser.feed(chunk, |ev| {
                    if result.is_ok() {
                        result = c.on_event(ev.event, ev.data, out);
                    }
                });
            }
            Conv::OpenAiToAnthropic(c) => {
                let out = &mut self.out;
                self.parser.feed(chunk, |ev| {
                    if result.is_ok() {
                        result = c.on_event(ev.event, ev.data, out);
                    }
                });
            }
        }
        self.take(result)
    }

    /// The target's stream ended: returns the caller's last bytes — the
    /// terminal events when the target sent its finish reason, nothing when
    /// it was cut short (see the [module documentation](self)).
    pub fn finish(&mut self) -> Result<Bytes, TranslateError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match &mut self.conv {
            Conv::Pass => {}
            Conv::AnthropicToOpenAi(c) => c.finish(&mut self.out),
            Conv::OpenAiToAnthropic(c) => c.finish(&mut self.out),
        }
        self.take(Ok(()))
    }

    fn take(&mut self, result: Result<(), TranslateError>) -> Result<Bytes, TranslateError> {
        match result {
            Ok(()) => Ok(Bytes::from(std::mem::take(&mut self.out))),
            Err(e) => {
                self.out.clear();
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }
}

fn format_name(f: WireFormat) -> &'static str {
    match f {
        WireFormat::OpenAiChat => "openai chat",
        WireFormat::OpenAiResponses => "openai responses",
        WireFormat::AnthropicMessages => "anthropic messages",
        WireFormat::GeminiGenerateContent => "gemini",
    }
}

/// The event's type: its `event:` field, else its data's `type`.
fn event_name<'a>(event: Option<&'a str>, data: &'a Option<Cow<'a, str>>) -> &'a str {
    event.or(data.as_deref()).unwrap_or("")
}

fn invalid_json() -> TranslateError {
    TranslateError::invalid("a stream event is not valid JSON of its format")
}

/// Writes `s` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a str is always serializable.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{n}");
}

/// An Anthropic event: `event: name`, then its data.
fn anthropic_event(out: &mut Vec<u8>, name: &str, body: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    body(out);
    out.extend_from_slice(b"\n\n");
}

// ---------------------------------------------------------------------------
// Anthropic → OpenAI

#[derive(Deserialize)]
struct AEvent<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<AMessage<'a>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    content_block: Option<ABlock<'a>>,
    #[serde(default, borrow)]
    delta: Option<ADelta<'a>>,
    #[serde(default)]
    usage: Option<AUsage>,
    #[serde(default, borrow)]
    error: Option<AError<'a>>,
}

#[derive(Deserialize)]
struct AMessage<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<AUsage>,
}

#[derive(Deserialize)]
struct ABlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
struct ADelta<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

/// Anthropic's usage counters; later reports replace earlier ones field by
/// field (they are cumulative).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct AUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl AUsage {
    fn merge(&mut self, newer: &AUsage) {
        self.input_tokens = newer.input_tokens.or(self.input_tokens);
        self.output_tokens = newer.output_tokens.or(self.output_tokens);
        self.cache_read_input_tokens = newer
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.cache_creation_input_tokens = newer
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
    }
}

#[derive(Deserialize)]
struct AError<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ABlockKind {
    Text,
    /// A tool call, with its ordinal among tool calls.
    Tool(u32),
    /// Thinking: dropped.
    Skip,
}

#[derive(Debug)]
struct AnthropicToOpenAi {
    model: String,
    created: u64,
    include_usage: bool,
    /// `{"id":…,"object":…,"created":…,"model":…,"choices":`, once started.
    prefix: Option<Vec<u8>>,
    /// Content blocks by Anthropic index.
    blocks: Vec<(u64, ABlockKind)>,
    tools: u32,
    usage: Option<AUsage>,
    finished: bool,
    done: bool,
}

impl AnthropicToOpenAi {
    fn new(model: &str) -> Self {
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        AnthropicToOpenAi {
            model: model.to_owned(),
            created,
            include_usage: true,
            prefix: None,
            blocks: Vec::new(),
            tools: 0,
            usage: None,
            finished: false,
            done: false,
        }
    }

    fn on_event(
        &mut self,
        event: Option<&str>,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        if self.done {
            return Ok(());
        }
        let ev: AEvent<'_> = serde_json::from_slice(data).map_err(|_| invalid_json())?;
        match event_name(event, &ev.kind) {
            "message_start" => {
                let Some(m) = ev.message else {
                    return Err(TranslateError::invalid("message_start without a message"));
                };
                if self.prefix.is_some() {
                    return Err(TranslateError::invalid("a second message_start"));
                }
                let model = m.model.as_deref().filter(|m| !m.is_empty());
                let model = model.unwrap_or(self.model.as_str());
                let mut p = Vec::with_capacity(128);
                p.extend_from_slice(b"{\"id\":");
                push_json_str(
                    &mut p,
                    &format!("chatcmpl-{}", m.id.as_deref().unwrap_or("")),
                );
                p.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
                push_u64(&mut p, self.created);
                p.extend_from_slice(b",\"model\":");
                push_json_str(&mut p, model);
                p.extend_from_slice(b",\"choices\":");
                self.prefix = Some(p);
                if let Some(u) = m.usage {
                    self.usage.get_or_insert_default().merge(&u);
                }
                self.chunk(
                    out,
                    |o| {
                        o.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
                    },
                    None,
                );
            }
            "content_block_start" => {
                self.started()?;
                let (Some(index), Some(block)) = (ev.index, ev.content_block) else {
                    return Err(TranslateError::invalid(
                        "content_block_start without an index or a block",
                    ));
                };
                let kind = match &*block.kind {
                    "text" => ABlockKind::Text,
                    "tool_use" => {
                        self.tools += 1;
                        ABlockKind::Tool(self.tools - 1)
                    }
                    "thinking" | "redacted_thinking" => ABlockKind::Skip,
                    other => {
                        return Err(TranslateError::unsupported(format!(
                            "an anthropic {other} content block"
                        )));
                    }
                };
                self.blocks.push((index, kind));
                match kind {
                    ABlockKind::Text => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            self.text(out, &text);
                        }
                    }
                    ABlockKind::Tool(ordinal) => {
                        let (Some(id), Some(name)) = (block.id, block.name) else {
                            return Err(TranslateError::invalid(
                                "tool_use block without id or name",
                            ));
                        };
                        let input = match block.input {
                            Some(Value::Object(m)) if !m.is_empty() => {
                                serde_json::to_string(&m).unwrap_or_default()
                            }
                            _ => String::new(),
                        };
                        self.chunk(
                            out,
                            |o| {
                                o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                                push_u64(o, ordinal.into());
                                o.extend_from_slice(b",\"id\":");
                                push_json_str(o, &id);
                                o.extend_from_slice(
                                    b",\"type\":\"function\",\"function\":{\"name\":",
                                );
                                push_json_str(o, &name);
                                o.extend_from_slice(b",\"arguments\":");
                                push_json_str(o, &input);
                                o.extend_from_slice(b"}}]}");
                            },
                            None,
                        );
                    }
                    ABlockKind::Skip => {}
                }
            }
            "content_block_delta" => {
                self.started()?;
                let (Some(index), Some(delta)) = (ev.index, ev.delta) else {
                    return Err(TranslateError::invalid(
                        "content_block_delta without an index or a delta",
                    ));
                };
                let Some(&(_, kind)) = self.blocks.iter().rev().find(|(i, _)| *i == index) else {
                    return Err(TranslateError::invalid("a delta for a block never started"));
                };
                match (delta.kind.as_deref().unwrap_or(""), kind) {
                    ("text_delta", ABlockKind::Text) => {
                        if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                            self.text(out, &text);
                        }
                    }
                    ("input_json_delta", ABlockKind::Tool(ordinal)) => {
                        if let Some(part) = delta.partial_json.filter(|t| !t.is_empty()) {
                            self.chunk(
                                out,
                                |o| {
                                    o.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                                    push_u64(o, ordinal.into());
                                    o.extend_from_slice(b",\"function\":{\"arguments\":");
                                    push_json_str(o, &part);
                                    o.extend_from_slice(b"}}]}");
                                },
                                None,
                            );
                        }
                    }
                    ("thinking_delta" | "signature_delta", ABlockKind::Skip)
                    | ("citations_delta", ABlockKind::Text) => {}
                    (
                        "text_delta" | "input_json_delta" | "thinking_delta" | "signature_delta",
                        _,
                    ) => {
                        return Err(TranslateError::invalid(
                            "a content block delta of another block's type",
                        ));
                    }
                    (other, _) => {
                        return Err(TranslateError::unsupported(format!(
                            "an anthropic {other} content block delta"
                        )));
                    }
                }
            }
            "message_delta" => {
                self.started()?;
                if let Some(u) = ev.usage {
                    self.usage.get_or_insert_default().merge(&u);
                }
                if let Some(reason) = ev.delta.and_then(|d| d.stop_reason)
                    && !self.finished
                {
                    self.finished = true;
                    let reason = openai_finish_reason(&reason);
                    self.chunk(out, |o| o.extend_from_slice(b"{}"), Some(reason));
                }
            }
            "message_stop" => {
                self.started()?;
                self.end(out);
            }
            "error" => {
                let (kind, message) = match &ev.error {
                    Some(e) => (e.kind.as_deref(), e.message.as_deref()),
                    None => (None, None),
                };
                let (kind, code) = openai_error_type(kind.unwrap_or("api_error"));
                out.extend_from_slice(b"data: {\"error\":{\"message\":");
                push_json_str(out, message.unwrap_or("stream error"));
                out.extend_from_slice(b",\"type\":");
                push_json_str(out, kind);
                out.extend_from_slice(b",\"param\":null,\"code\":");
                match code {
                    Some(c) => push_json_str(out, c),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b"}}\n\n");
                self.done = true;
            }
            // `ping`, `content_block_stop`, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn started(&self) -> Result<(), TranslateError> {
        match self.prefix {
            Some(_) => Ok(()),
            None => Err(TranslateError::invalid("an event before message_start")),
        }
    }

    fn text(&self, out: &mut Vec<u8>, text: &str) {
        self.chunk(
            out,
            |o| {
                o.extend_from_slice(b"{\"content\":");
                push_json_str(o, text);
                o.push(b'}');
            },
            None,
        );
    }

    /// One chunk with one choice, whose delta `delta` writes.
    fn chunk(&self, out: &mut Vec<u8>, delta: impl FnOnce(&mut Vec<u8>), finish: Option<&str>) {
        let Some(prefix) = &self.prefix else {
            return;
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(prefix);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":");
        delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => push_json_str(out, f),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The usage chunk and `[DONE]`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        if let (true, Some(prefix), Some(u)) = (self.include_usage, &self.prefix, self.usage) {
            let read = u.cache_read_input_tokens.unwrap_or(0);
            let prompt = u
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(u.cache_creation_input_tokens.unwrap_or(0));
            let completion = u.output_tokens.unwrap_or(0);
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(prefix);
            out.extend_from_slice(b"[],\"usage\":{\"prompt_tokens\":");
            push_u64(out, prompt);
            out.extend_from_slice(b",\"completion_tokens\":");
            push_u64(out, completion);
            out.extend_from_slice(b",\"total_tokens\":");
            push_u64(out, prompt.saturating_add(completion));
            out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
            push_u64(out, read);
            out.extend_from_slice(b"}}}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        // Complete without `message_stop`: the stop reason was the end.
        if self.finished {
            self.end(out);
        }
        self.done = true;
    }
}

fn openai_finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's error type and code for an Anthropic error type, chosen so the
/// crate's classifier puts both in the same class.
fn openai_error_type(anthropic: &str) -> (&str, Option<&'static str>) {
    match anthropic {
        "overloaded_error" => ("server_error", Some("server_is_overloaded")),
        "api_error" => ("server_error", None),
        "rate_limit_error" => ("requests", Some("rate_limit_exceeded")),
        "authentication_error" => ("invalid_request_error", Some("invalid_api_key")),
        other => (other, None),
    }
}

// ---------------------------------------------------------------------------
// OpenAI → Anthropic

#[derive(Deserialize)]
struct OChunk<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<OChoice<'a>>>,
    #[serde(default)]
    usage: Option<OUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct OChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default, borrow)]
    delta: Option<ODelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ODelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<OToolCall<'a>>>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    audio: Option<Value>,
}

#[derive(Deserialize)]
struct OToolCall<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<OFunction<'a>>,
}

#[derive(Deserialize)]
struct OFunction<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct OUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<ODetails>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct ODetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl OUsage {
    fn cached(&self) -> u64 {
        self.prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
    }

    /// Anthropic's `input_tokens`: without the cache reads.
    fn uncached_input(&self) -> u64 {
        self.prompt_tokens
            .unwrap_or(0)
            .saturating_sub(self.cached())
    }
}

/// The Anthropic content block open in the caller's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OBlock {
    Text,
    /// A tool call, with its OpenAI `index`.
    Tool(u64),
}

#[derive(Debug)]
struct OpenAiToAnthropic {
    model: String,
    /// The caller's message id, once `message_start` is written.
    id: Option<String>,
    /// The open block, with its Anthropic index.
    open: Option<(u64, OBlock)>,
    next_block: u64,
    /// OpenAI indexes of the tool calls already closed.
    closed_tools: Vec<u64>,
    /// The id of the open tool call.
    open_tool_id: Option<String>,
    stop: Option<&'static str>,
    usage: Option<OUsage>,
    done: bool,
}

impl OpenAiToAnthropic {
    fn new(model: &str) -> Self {
        OpenAiToAnthropic {
            model: model.to_owned(),
            id: None,
            open: None,
            next_block: 0,
            closed_tools: Vec::new(),
            open_tool_id: None,
            stop: None,
            usage: None,
            done: false,
        }
    }

    fn on_event(
        &mut self,
        event: Option<&str>,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TranslateError> {
        if self.done {
            return Ok(());
        }
        if event == Some("error") {
            // Some compatible servers name their error events; the crate's
            // parser takes any event so named for an error.
            let v: Value = serde_json::from_slice(data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()));
            let error = match v.get("error") {
                Some(e) if !e.is_null() => e,
                _ => &v,
            };
            self.error(out, error);
            return Ok(());
        }
        if data.trim_ascii() == b"[DONE]" {
            self.finish(out);
            return Ok(());
        }
        let chunk: OChunk<'_> = serde_json::from_slice(data).map_err(|_| invalid_json())?;
        if let Some(error) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            self.error(out, error);
            return Ok(());
        }
        // Azure opens with a chunk of content filter results only, no id,
        // no model, no choices: the message starts with the first chunk
        // that has a choice or usage.
        let has_choices = chunk.choices.as_ref().is_some_and(|c| !c.is_empty());
        if self.id.is_none() && (has_choices || chunk.usage.is_some()) {
            self.start(out, &chunk);
        }
        for choice in chunk.choices.iter().flatten() {
            if choice.index != 0 {
                return Err(TranslateError::unsupported("n > 1"));
            }
            if let Some(delta) = &choice.delta {
                self.delta(out, delta)?;
            }
            if let Some(reason) = choice.finish_reason.as_deref().filter(|r| !r.is_empty()) {
                self.close_block(out);
                self.stop.get_or_insert(anthropic_stop_reason(reason));
            }
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if self.stop.is_some() && self.usage.is_some() {
            self.end(out);
        }
        Ok(())
    }

    fn start(&mut self, out: &mut Vec<u8>, chunk: &OChunk<'_>) {
        let id = format!("msg_{}", chunk.id.as_deref().unwrap_or(""));
        let model = chunk.model.as_deref().filter(|m| !m.is_empty());
        let model = model.unwrap_or(self.model.as_str());
        let input = chunk.usage.as_ref().map_or(0, OUsage::uncached_input);
        anthropic_event(out, "message_start", |o| {
            o.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{\"id\":");
            push_json_str(o, &id);
            o.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
            push_json_str(o, model);
            o.extend_from_slice(
                b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":",
            );
            push_u64(o, input);
            o.extend_from_slice(b",\"output_tokens\":0}}}");
        });
        self.id = Some(id);
    }

    fn delta(&mut self, out: &mut Vec<u8>, delta: &ODelta<'_>) -> Result<(), TranslateError> {
        if delta.audio.as_ref().is_some_and(|a| !a.is_null()) {
            return Err(TranslateError::unsupported("audio output"));
        }
        if delta.function_call.as_ref().is_some_and(|f| !f.is_null()) {
            return Err(TranslateError::unsupported("a legacy function_call"));
        }
        for text in [&delta.content, &delta.refusal].into_iter().flatten() {
            if text.is_empty() {
                continue;
            }
            let index = match self.open {
                Some((i, OBlock::Text)) => i,
                _ => {
                    self.close_block(out);
                    let i = self.open_block(OBlock::Text);
                    anthropic_event(out, "content_block_start", |o| {
                        o.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
                        push_u64(o, i);
                        o.extend_from_slice(
                            b",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}",
                        );
                    });
                    i
                }
            };
            anthropic_event(out, "content_block_delta", |o| {
                o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
                push_u64(o, index);
                o.extend_from_slice(b",\"delta\":{\"type\":\"text_delta\",\"text\":");
                push_json_str(o, text);
                o.extend_from_slice(b"}}");
            });
        }
        for (position, call) in delta.tool_calls.iter().flatten().enumerate() {
            let tool = call.index.unwrap_or(position as u64);
            let function = call.function.as_ref();
            let new_id = call.id.as_deref().filter(|i| !i.is_empty());
            // Some servers number every call 0 and tell them apart by id.
            let same_call = new_id.is_none_or(|id| self.open_tool_id.as_deref() == Some(id));
            let index = match self.open {
                Some((i, OBlock::Tool(t))) if t == tool && same_call => i,
                _ => {
                    if new_id.is_none() && self.closed_tools.contains(&tool) {
                        return Err(TranslateError::unsupported(
                            "argument fragments of a tool call after the next one began",
                        ));
                    }
                    let Some(name) = function.and_then(|f| f.name.as_deref()) else {
                        return Err(TranslateError::invalid("a tool call without a name"));
                    };
                    let id = match new_id {
                        Some(id) => id.to_owned(),
                        None => format!("{}_{tool}", self.id.as_deref().unwrap_or("msg_")),
                    };
                    self.close_block(out);
                    let i = self.open_block(OBlock::Tool(tool));
                    self.open_tool_id = Some(id.clone());
                    anthropic_event(out, "content_block_start", |o| {
                        o.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
                        push_u64(o, i);
                        o.extend_from_slice(b",\"content_block\":{\"type\":\"tool_use\",\"id\":");
                        push_json_str(o, &id);
                        o.extend_from_slice(b",\"name\":");
                        push_json_str(o, name);
                        o.extend_from_slice(b",\"input\":{}}}");
                    });
                    i
                }
            };
            if let Some(args) = function
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            {
                anthropic_event(out, "content_block_delta", |o| {
                    o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
                    push_u64(o, index);
                    o.extend_from_slice(
                        b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":",
                    );
                    push_json_str(o, args);
                    o.extend_from_slice(b"}}");
                });
            }
        }
        Ok(())
    }

    fn open_block(&mut self, block: OBlock) -> u64 {
        let i = self.next_block;
        self.next_block += 1;
        self.open = Some((i, block));
        i
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        let Some((i, block)) = self.open.take() else {
            return;
        };
        if let OBlock::Tool(t) = block {
            self.closed_tools.push(t);
        }
        anthropic_event(out, "content_block_stop", |o| {
            o.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
            push_u64(o, i);
            o.push(b'}');
        });
    }

    /// `message_delta` and `message_stop`, once the stop reason is known.
    fn end(&mut self, out: &mut Vec<u8>) {
        let Some(stop) = self.stop.filter(|_| !self.done) else {
            return;
        };
        self.done = true;
        let usage = self.usage;
        anthropic_event(out, "message_delta", |o| {
            o.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":");
            push_json_str(o, stop);
            o.extend_from_slice(b",\"stop_sequence\":null},\"usage\":{");
            match usage {
                Some(u) => {
                    o.extend_from_slice(b"\"input_tokens\":");
                    push_u64(o, u.uncached_input());
                    o.extend_from_slice(b",\"cache_read_input_tokens\":");
                    push_u64(o, u.cached());
                    o.extend_from_slice(b",\"output_tokens\":");
                    push_u64(o, u.completion_tokens.unwrap_or(0));
                }
                None => o.extend_from_slice(b"\"output_tokens\":0"),
            }
            o.extend_from_slice(b"}}");
        });
        anthropic_event(out, "message_stop", |o| {
            o.extend_from_slice(b"{\"type\":\"message_stop\"}");
        });
    }

    fn error(&mut self, out: &mut Vec<u8>, error: &Value) {
        let (kind, message) = match error {
            Value::Object(e) => {
                let field = |k: &str| e.get(k).and_then(Value::as_str);
                let kind = anthropic_error_type(field("code"), field("type"));
                (kind, field("message").unwrap_or("stream error"))
            }
            Value::String(m) => ("api_error", m.as_str()),
            _ => ("api_error", "stream error"),
        };
        anthropic_event(out, "error", |o| {
            o.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
            push_json_str(o, kind);
            o.extend_from_slice(b",\"message\":");
            push_json_str(o, message);
            o.extend_from_slice(b"}}");
        });
        self.done = true;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        // The end of the stream (or `[DONE]`) after the finish reason: no
        // usage is coming. Before it: truncated, nothing to add.
        self.end(out);
        self.done = true;
    }
}

fn anthropic_stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's error type for an OpenAI error's code and type, chosen so
/// the crate's classifier puts both in the same class; unknown ones pass
/// through.
fn anthropic_error_type<'a>(code: Option<&'a str>, kind: Option<&'a str>) -> &'a str {
    for key in [code, kind].into_iter().flatten() {
        match key {
            "rate_limit_exceeded" | "requests" | "tokens" => return "rate_limit_error",
            "server_is_overloaded" | "engine_overloaded" => return "overloaded_error",
            "invalid_api_key" => return "authentication_error",
            _ => {}
        }
    }
    match kind {
        Some("server_error") | None => code.unwrap_or("api_error"),
        Some(kind) => kind,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        metering::{StreamError, StreamProgress, TruncatedStream},
        usage::FinishReason,
    };

    const A: WireFormat = WireFormat::AnthropicMessages;
    const O: WireFormat = WireFormat::OpenAiChat;

    /// An Anthropic target stream.
    fn anthropic(events: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            let name = e["type"].as_str().unwrap();
            out.extend_from_slice(format!("event: {name}\ndata: {e}\n\n").as_bytes());
        }
        out
    }

    /// An OpenAI target stream; `done` appends `data: [DONE]`.
    fn openai(chunks: &[Value], done: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
        }
        if done {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
        out
    }

    fn translator(from: WireFormat, to: WireFormat) -> StreamTranslator {
        StreamTranslator::new(from, to, "the-model")
            .unwrap()
            .created(1_700_000_000)
    }

    /// Feeds `input` cut at `cuts`, then finishes.
    fn run_cut(
        from: WireFormat,
        to: WireFormat,
        input: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<u8>, TranslateError> {
        let mut t = translator(from, to);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain([&input.len()]) {
            let c = c.clamp(at, input.len());
            out.extend_from_slice(&t.feed(&input[at..c])?);
            at = c;
        }
        out.extend_from_slice(&t.finish()?);
        Ok(out)
    }

    fn run(from: WireFormat, to: WireFormat, input: &[u8]) -> Vec<u8> {
        run_cut(from, to, input, &[]).unwrap()
    }

    /// The caller's events, as (type, data).
    fn events(bytes: &[u8]) -> Vec<(Option<String>, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(bytes, |e| {
            out.push((e.event.map(str::to_owned), e.data_str().unwrap().to_owned()))
        });
        assert!(!p.has_pending(), "whole events only");
        out
    }

    /// The caller's stream as the crate's own parser sees it.
    fn progress(format: WireFormat, bytes: &[u8]) -> StreamProgress {
        let (progress, mut feeder) = StreamProgress::detached(true, Some(format));
        feeder.feed(bytes);
        feeder.end();
        progress
    }

    /// Every chunk of a translated OpenAI stream, read by async-openai; the
    /// error event (which async-openai reports as an error) excepted.
    fn openai_chunks(bytes: &[u8]) -> Vec<Value> {
        use async_openai::types::chat::CreateChatCompletionStreamResponse;
        let evs = events(bytes);
        let mut chunks = Vec::new();
        for (i, (name, data)) in evs.iter().enumerate() {
            assert_eq!(*name, None);
            if data == "[DONE]" {
                assert_eq!(i, evs.len() - 1, "[DONE] is last");
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            if v.get("error").is_some() {
                assert_eq!(i, evs.len() - 1, "an error ends the stream");
                continue;
            }
            serde_json::from_str::<CreateChatCompletionStreamResponse>(data)
                .unwrap_or_else(|e| panic!("async-openai rejects {data}: {e}"));
            assert_eq!(v["object"], "chat.completion.chunk");
            chunks.push(v);
        }
        chunks
    }

    /// How an Anthropic event sequence ends.
    #[derive(Debug, PartialEq)]
    enum Ending {
        /// `message_stop`.
        Complete,
        /// An `error` event.
        Error,
        /// Nothing closing: a prefix of a valid sequence.
        Cut,
    }

    /// Checks the documented order: `message_start`, then
    /// (`content_block_start`, `content_block_delta`*, `content_block_stop`)*
    /// with indexes 0, 1, …, then `message_delta`, `message_stop`; `ping`
    /// anywhere after the start; `error` anywhere, last. Delta types match
    /// their block's type. Returns the events' data.
    fn check_anthropic(bytes: &[u8]) -> (Vec<Value>, Ending) {
        #[derive(PartialEq, Clone, Copy)]
        enum S {
            Start,
            Message,
            Block(u64, bool),
            Delta,
            Stopped,
        }
        let mut s = S::Start;
        let mut next = 0;
        let mut all = Vec::new();
        let evs = events(bytes);
        for (i, (name, data)) in evs.iter().enumerate() {
            let v: Value = serde_json::from_str(data).unwrap();
            let name = name.as_deref().expect("every event is named");
            assert_eq!(v["type"], name, "{data}");
            let index = v["index"].as_u64();
            s = match (s, name) {
                (_, "error") => {
                    assert_eq!(i, evs.len() - 1, "an error ends the stream");
                    assert!(v["error"]["type"].is_string() && v["error"]["message"].is_string());
                    all.push(v);
                    return (all, Ending::Error);
                }
                (S::Start, "message_start") => {
                    let m = &v["message"];
                    assert_eq!(m["type"], "message");
                    assert_eq!(m["role"], "assistant");
                    assert_eq!(m["content"], json!([]));
                    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
                    assert!(m["usage"]["input_tokens"].is_u64());
                    S::Message
                }
                (S::Start, _) => panic!("{name} before message_start"),
                (_, "ping") => s,
                (S::Message, "content_block_start") => {
                    assert_eq!(index, Some(next), "blocks are numbered in order");
                    next += 1;
                    let block = &v["content_block"];
                    let tool = match block["type"].as_str() {
                        Some("text") => false,
                        Some("tool_use") => {
                            assert!(block["id"].is_string() && block["name"].is_string());
                            assert_eq!(block["input"], json!({}));
                            true
                        }
                        other => panic!("block type {other:?}"),
                    };
                    S::Block(next - 1, tool)
                }
                (S::Block(b, tool), "content_block_delta") => {
                    assert_eq!(index, Some(b));
                    let want = if tool {
                        "input_json_delta"
                    } else {
                        "text_delta"
                    };
                    assert_eq!(v["delta"]["type"], want);
                    s
                }
                (S::Block(b, _), "content_block_stop") => {
                    assert_eq!(index, Some(b));
                    S::Message
                }
                (S::Message, "message_delta") => {
                    assert!(v["delta"]["stop_reason"].is_string());
                    assert!(v["usage"]["output_tokens"].is_u64());
                    S::Delta
                }
                (S::Delta, "message_stop") => S::Stopped,
                _ => panic!("{name} out of order"),
            };
            all.push(v);
        }
        let ending = if s == S::Stopped {
            Ending::Complete
        } else {
            Ending::Cut
        };
        (all, ending)
    }

    fn message_start(usage: Value) -> Value {
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message",
            "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage}})
    }

    fn a_text_stream() -> Vec<u8> {
        anthropic(&[
            message_start(json!({"input_tokens": 10, "cache_read_input_tokens": 90,
                "cache_creation_input_tokens": 5, "output_tokens": 1})),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hél"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo \"you\"\n"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ])
    }

    fn a_tool_stream() -> Vec<u8> {
        let delta =
            |i: u64, d: Value| json!({"type": "content_block_delta", "index": i, "delta": d});
        let json_delta =
            |i, p: &str| delta(i, json!({"type": "input_json_delta", "partial_json": p}));
        let tool = |i: u64, id: &str, name: &str| {
            json!({"type": "content_block_start", "index": i,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}})
        };
        let stop = |i: u64| json!({"type": "content_block_stop", "index": i});
        anthropic(&[
            message_start(json!({"input_tokens": 50, "output_tokens": 1})),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            delta(
                0,
                json!({"type": "thinking_delta", "thinking": "secret plan"}),
            ),
            delta(0, json!({"type": "signature_delta", "signature": "sig"})),
            stop(0),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            delta(1, json!({"type": "text_delta", "text": "Checking."})),
            stop(1),
            tool(2, "toolu_a", "get_weather"),
            json_delta(2, ""),
            json_delta(2, "{\"city\":"),
            json_delta(2, " \"Par"),
            json_delta(2, "is\"}"),
            stop(2),
            tool(3, "toolu_b", "get_time"),
            json_delta(3, "{\"tz\""),
            json_delta(3, ":\"CET\"}"),
            stop(3),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 40}}),
            json!({"type": "message_stop"}),
        ])
    }

    #[test]
    fn stream_anthropic_text_to_openai() {
        let out = run(A, O, &a_text_stream());
        let chunks = openai_chunks(&out);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        for c in &chunks {
            assert_eq!(c["id"], "chatcmpl-msg_01");
            assert_eq!(c["model"], "claude-sonnet-4-5");
            assert_eq!(c["created"], 1_700_000_000);
        }
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Héllo \"you\"\n");
        let n = chunks.len();
        assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[n - 1]["choices"], json!([]));
        assert_eq!(
            chunks[n - 1]["usage"],
            json!({"prompt_tokens": 105, "completion_tokens": 7, "total_tokens": 112,
                "prompt_tokens_details": {"cached_tokens": 90}})
        );

        let p = progress(O, &out);
        assert!(p.has_output() && p.is_complete() && !p.has_failed());
        assert_eq!(p.finish_reason(), Some(FinishReason::Stop));
        let u = p.usage().unwrap();
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens),
            (105, 90, 7)
        );
        // The same usage as the target's stream, read by the same parser.
        assert_eq!(
            progress(A, &a_text_stream()).usage().unwrap().input_tokens,
            105
        );
    }

    #[test]
    fn stream_anthropic_usage_chunk_is_optional() {
        let mut t = translator(A, O).include_usage(false);
        let mut out = t.feed(&a_text_stream()).unwrap().to_vec();
        out.extend_from_slice(&t.finish().unwrap());
        let chunks = openai_chunks(&out);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(progress(O, &out).is_complete());
    }

    #[test]
    fn stream_anthropic_tool_calls_to_openai() {
        let out = run(A, O, &a_tool_stream());
        assert!(
            !String::from_utf8_lossy(&out).contains("secret plan"),
            "thinking dropped"
        );
        let chunks = openai_chunks(&out);
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for c in &chunks {
            for tc in c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(i, calls.len(), "tool calls numbered among tool calls");
                    assert_eq!(tc["type"], "function");
                    let name = tc["function"]["name"].as_str().unwrap().to_owned();
                    calls.push((id.to_owned(), name, String::new()));
                }
                calls[i].2 += tc["function"]["arguments"].as_str().unwrap();
            }
        }
        assert_eq!(
            calls,
            [
                (
                    "toolu_a".into(),
                    "get_weather".into(),
                    r#"{"city": "Paris"}"#.into()
                ),
                (
                    "toolu_b".into(),
                    "get_time".into(),
                    r#"{"tz":"CET"}"#.into()
                ),
            ]
        );
        let n = chunks.len();
        assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[n - 1]["usage"]["completion_tokens"], 40);
        let p = progress(O, &out);
        assert!(p.has_output() && p.is_complete() && !p.has_failed());
        assert_eq!(p.finish_reason(), Some(FinishReason::ToolCalls));
        assert_eq!(p.usage().unwrap().input_tokens, 50);
    }

    #[test]
    fn stream_anthropic_error_to_openai() {
        let mut input = anthropic(&[
            message_start(json!({"input_tokens": 3, "output_tokens": 1})),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]);
        input.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        let out = run(A, O, &input);
        openai_chunks(&out);
        let evs = events(&out);
        let last: Value = serde_json::from_str(&evs.last().unwrap().1).unwrap();
        assert_eq!(last["error"]["message"], "Overloaded");
        assert!(!out.ends_with(b"[DONE]\n\n"));
        let p = progress(O, &out);
        assert!(p.has_output());
        let failure = p.failure().unwrap();
        let e = failure
            .downcast_ref::<StreamError>()
            .expect("a stream error");
        assert_eq!(e.provider_error().code(), Some("server_is_overloaded"));
    }

    #[test]
    fn stream_anthropic_cut_short_is_truncated() {
        let full = a_text_stream();
        // Cut inside the message_delta event: no stop reason arrived.
        let cut = full
            .windows(13)
            .position(|w| w == b"message_delta")
            .unwrap()
            + 20;
        let out = run(A, O, &full[..cut]);
        let chunks = openai_chunks(&out);
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );
        assert!(!out.ends_with(b"[DONE]\n\n"));
        let p = progress(O, &out);
        assert!(p.has_output() && !p.is_complete());
        assert!(p.failure().unwrap().is::<TruncatedStream>());
    }

    #[test]
    fn stream_anthropic_without_message_stop_still_ends() {
        let full = a_text_stream();
        let cut = full
            .windows(18)
            .position(|w| w == b"event: message_sto")
            .unwrap();
        let out = run(A, O, &full[..cut]);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        let chunks = openai_chunks(&out);
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 7);
        assert!(!progress(O, &out).has_failed());
    }

    fn chunk(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null})
    }

    fn usage_chunk() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                "prompt_tokens_details": {"cached_tokens": 80, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}})
    }

    fn o_text_chunks() -> Vec<Value> {
        vec![
            chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                None,
            ),
            chunk(json!({"content": ""}), None),
            chunk(json!({"content": "Hél"}), None),
            chunk(json!({"content": "lo \"you\"\n"}), None),
            chunk(json!({}), Some("stop")),
            usage_chunk(),
        ]
    }

    fn o_tool_stream() -> Vec<u8> {
        let call = |i: u64, id: &str, name: &str| {
            chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
                None,
            )
        };
        let args = |i: u64, a: &str| {
            chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": a}}]}),
                None,
            )
        };
        openai(
            &[
                chunk(json!({"role": "assistant", "content": null}), None),
                chunk(json!({"content": "Checking."}), None),
                call(0, "call_a", "get_weather"),
                args(0, "{\"city\":"),
                args(0, " \"Par"),
                args(0, "is\"}"),
                call(1, "call_b", "get_time"),
                args(1, "{\"tz\""),
                args(1, ":\"CET\"}"),
                chunk(json!({}), Some("tool_calls")),
                usage_chunk(),
            ],
            true,
        )
    }

    /// The blocks of a translated Anthropic stream: (type, id, name, text
    /// or input JSON).
    fn blocks(evs: &[Value]) -> Vec<(String, String, String, String)> {
        let mut out: Vec<(String, String, String, String)> = Vec::new();
        for v in evs {
            match v["type"].as_str().unwrap() {
                "content_block_start" => {
                    let b = &v["content_block"];
                    let s = |k: &str| b[k].as_str().unwrap_or("").to_owned();
                    out.push((s("type"), s("id"), s("name"), s("text")));
                }
                "content_block_delta" => {
                    let d = &v["delta"];
                    let part = d["text"].as_str().or(d["partial_json"].as_str()).unwrap();
                    out.last_mut().unwrap().3 += part;
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn stream_openai_text_to_anthropic() {
        let out = run(O, A, &openai(&o_text_chunks(), true));
        let (evs, ending) = check_anthropic(&out);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(evs[0]["message"]["id"], "msg_chatcmpl-1");
        assert_eq!(evs[0]["message"]["model"], "gpt-4o-2024-08-06");
        assert_eq!(
            blocks(&evs),
            [(
                "text".into(),
                String::new(),
                String::new(),
                "Héllo \"you\"\n".into()
            )]
        );
        let delta = &evs[evs.len() - 2];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 20, "cache_read_input_tokens": 80, "output_tokens": 5})
        );
        let p = progress(A, &out);
        assert!(p.has_output() && p.is_complete() && !p.has_failed());
        assert_eq!(p.finish_reason(), Some(FinishReason::Stop));
        let u = p.usage().unwrap();
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.output_tokens),
            (100, 80, 5)
        );
    }

    #[test]
    fn stream_openai_tool_calls_to_anthropic() {
        let out = run(O, A, &o_tool_stream());
        let (evs, ending) = check_anthropic(&out);
        assert_eq!(ending, Ending::Complete);
        let s = |v: &str| v.to_owned();
        assert_eq!(
            blocks(&evs),
            [
                (s("text"), s(""), s(""), s("Checking.")),
                (
                    s("tool_use"),
                    s("call_a"),
                    s("get_weather"),
                    s(r#"{"city": "Paris"}"#)
                ),
                (
                    s("tool_use"),
                    s("call_b"),
                    s("get_time"),
                    s(r#"{"tz":"CET"}"#)
                ),
            ]
        );
        assert_eq!(evs[evs.len() - 2]["delta"]["stop_reason"], "tool_use");
        let p = progress(A, &out);
        assert!(p.has_output() && p.is_complete() && !p.has_failed());
        assert_eq!(p.finish_reason(), Some(FinishReason::ToolCalls));
        assert_eq!(p.usage().unwrap().output_tokens, 5);
    }

    #[test]
    fn stream_openai_quirks_to_anthropic() {
        // Azure's content filter chunk first; every call numbered 0, told
        // apart by id; a whole call in one chunk.
        let filter = json!({"id": "", "object": "", "created": 0, "model": "", "choices": [],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]});
        let call = |id: &str, name: &str, args: &str| {
            chunk(
                json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                "function": {"name": name, "arguments": args}}]}),
                None,
            )
        };
        let input = openai(
            &[
                filter,
                chunk(json!({"role": "assistant"}), None),
                call("call_a", "f", "{\"a\":1}"),
                call("call_b", "g", "{}"),
                chunk(json!({}), Some("tool_calls")),
            ],
            true,
        );
        let out = run(O, A, &input);
        let (evs, ending) = check_anthropic(&out);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(evs[0]["message"]["id"], "msg_chatcmpl-1");
        let s = |v: &str| v.to_owned();
        assert_eq!(
            blocks(&evs),
            [
                (s("tool_use"), s("call_a"), s("f"), s(r#"{"a":1}"#)),
                (s("tool_use"), s("call_b"), s("g"), s("{}")),
            ]
        );
        // Fragments of a closed call cannot be carried over.
        let interleaved = openai(
            &[
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "f"}}]}),
                    None,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "g"}}]}),
                    None,
                ),
                chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                    None,
                ),
            ],
            true,
        );
        assert!(matches!(
            run_cut(O, A, &interleaved, &[]),
            Err(TranslateError::Unsupported { .. })
        ));
    }

    #[test]
    fn stream_openai_without_done_or_usage_still_ends() {
        let mut chunks = o_text_chunks();
        chunks.pop();
        let out = run(O, A, &openai(&chunks, false));
        let (evs, ending) = check_anthropic(&out);
        assert_eq!(ending, Ending::Complete);
        assert_eq!(evs[evs.len() - 2]["usage"], json!({"output_tokens": 0}));
        // With [DONE] but no usage: the same.
        assert_eq!(run(O, A, &openai(&chunks, true)), out);
        // Usage on the finish chunk itself: the end comes at once.
        let mut t = translator(O, A);
        let mut last = chunk(json!({}), Some("length"));
        last["usage"] = usage_chunk()["usage"].clone();
        chunks[4] = last;
        let now = t.feed(&openai(&chunks, false)).unwrap();
        assert_eq!(check_anthropic(&now).1, Ending::Complete);
        assert!(String::from_utf8_lossy(&now).contains("\"stop_reason\":\"max_tokens\""));
        assert!(t.finish().unwrap().is_empty());
    }

    #[test]
    fn stream_openai_error_to_anthropic() {
        let mut chunks = o_text_chunks();
        chunks.truncate(3);
        chunks.push(
            json!({"error": {"message": "The server had an error", "type": "server_error",
            "param": null, "code": null}}),
        );
        chunks.push(chunk(json!({"content": "ignored"}), None));
        let out = run(O, A, &openai(&chunks, true));
        let (evs, ending) = check_anthropic(&out);
        assert_eq!(ending, Ending::Error);
        assert_eq!(evs.last().unwrap()["error"]["type"], "api_error");
        let p = progress(A, &out);
        assert!(p.has_output());
        let e = p.failure().unwrap().downcast_ref::<StreamError>().unwrap();
        assert_eq!(e.provider_error().error_type(), Some("api_error"));
        // Rate limits keep their class.
        let limited = openai(
            &[json!({"error": {"message": "slow down", "type": "requests",
            "code": "rate_limit_exceeded"}})],
            false,
        );
        let (evs, _) = check_anthropic(&run(O, A, &limited));
        assert_eq!(evs[0]["error"]["type"], "rate_limit_error");
        // A named error event, whatever its data.
        let named = run(
            O,
            A,
            b"event: error\ndata: {\"message\":\"boom\",\"type\":\"server_error\"}\n\n",
        );
        let (evs, ending) = check_anthropic(&named);
        assert_eq!(ending, Ending::Error);
        assert_eq!(evs[0]["error"]["message"], "boom");
    }

    #[test]
    fn stream_openai_cut_short_is_truncated() {
        let mut chunks = o_text_chunks();
        chunks.truncate(4);
        let mut input = openai(&chunks, false);
        input.extend_from_slice(b"data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"del");
        let out = run(O, A, &input);
        let (_, ending) = check_anthropic(&out);
        assert_eq!(ending, Ending::Cut);
        let p = progress(A, &out);
        assert!(p.has_output() && !p.is_complete());
        assert!(p.failure().unwrap().is::<TruncatedStream>());
        // [DONE] without a finish reason: nothing invented either.
        let out = run(O, A, &openai(&chunks, true));
        assert_eq!(check_anthropic(&out).1, Ending::Cut);
    }

    #[test]
    fn stream_same_format_passes_through() {
        for (f, input) in [(A, a_text_stream()), (O, o_tool_stream())] {
            assert_eq!(run(f, f, &input), input);
        }
    }

    #[test]
    fn stream_refusals() {
        let gemini = WireFormat::GeminiGenerateContent;
        for (from, to) in [(gemini, O), (O, gemini), (WireFormat::OpenAiResponses, A)] {
            assert!(matches!(
                StreamTranslator::new(from, to, "m"),
                Err(TranslateError::Unsupported { .. })
            ));
        }
        let two = openai(
            &[json!({"id": "c", "choices": [{"index": 1, "delta": {"content": "x"}}]})],
            true,
        );
        let e = run_cut(O, A, &two, &[]).unwrap_err();
        assert_eq!(e, TranslateError::unsupported("n > 1"));
        let mut t = translator(O, A);
        assert!(t.feed(&two).is_err());
        assert_eq!(t.finish().unwrap_err(), e, "the error sticks");
        let server_tool = anthropic(&[
            message_start(json!({"input_tokens": 1})),
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}),
        ]);
        assert!(matches!(
            run_cut(A, O, &server_tool, &[]),
            Err(TranslateError::Unsupported { .. })
        ));
        assert!(matches!(
            run_cut(A, O, b"event: message_start\ndata: {\"type\":\n\n", &[]),
            Err(TranslateError::Invalid { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn stream_every_chunk_boundary_gives_the_same_output(
            which in 0usize..5,
            cuts in proptest::collection::vec(0usize..2000, 0..24),
        ) {
            let mut o_text = openai(&o_text_chunks(), true);
            o_text = String::from_utf8(o_text).unwrap().replace("\n", "\r\n").into_bytes();
            let (from, to, input) = match which {
                0 => (A, O, a_text_stream()),
                1 => (A, O, a_tool_stream()),
                2 => (O, A, o_text),
                3 => (O, A, o_tool_stream()),
                _ => (A, A, a_tool_stream()),
            };
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let whole = run(from, to, &input);
            proptest::prop_assert_eq!(run_cut(from, to, &input, &cuts).unwrap(), whole);
        }
    }

    #[test]
    fn stream_byte_by_byte() {
        for (from, to, input) in [(A, O, a_tool_stream()), (O, A, o_tool_stream())] {
            let cuts: Vec<usize> = (0..input.len()).collect();
            assert_eq!(
                run_cut(from, to, &input, &cuts).unwrap(),
                run(from, to, &input)
            );
        }
    }
}
