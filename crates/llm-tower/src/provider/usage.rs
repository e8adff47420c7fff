//! Usage, finish reasons, terminal events and in-stream errors in each
//! provider's response format.
//!
//! Two entry points, one per response shape:
//!
//! - [`scan_json`] reads a complete non-streaming JSON body. It does a
//!   *targeted* scan: it finds the usage key (`"usage"`, Gemini's
//!   `"usageMetadata"`) with a substring search from the end of the body and
//!   deserializes only that value; the finish reason is found the same way.
//!   Only when the targeted scan finds nothing usable does it parse the
//!   whole body.
//! - [`StreamUsage`] follows an SSE stream event by event (fed by
//!   [`SseParser`](crate::metering::SseParser)). Token deltas are recognised
//!   by a substring search and never parsed as JSON; only the events that
//!   carry usage, a finish reason or an error are.
//!
//! | format | usage | finish reason | terminal event | in-stream error |
//! |---|---|---|---|---|
//! | OpenAI chat | `usage` (streams: a last chunk with `"choices":[]`, only with `stream_options.include_usage`) | `choices[0].finish_reason` | `data: [DONE]` | `data: {"error": …}` |
//! | OpenAI responses | `usage` (streams: `response.usage` of the terminal event) | `status`, `incomplete_details.reason` | `response.completed`, `response.incomplete`, `response.failed` | `event: error`, `response.failed` |
//! | Anthropic | `usage`; streams: `message_start` then cumulative `message_delta` | `stop_reason` | `message_stop` | `event: error` |
//! | Gemini | `usageMetadata` (streams: the last one seen) | `candidates[0].finishReason` | none: a chunk with a `finishReason` | `data: {"error": …}` |
//!
//! A key is recognised only where JSON allows a key: a match preceded by a
//! backslash (an escaped quote, so inside a string) or not followed by a
//! colon (a string value) is skipped. Nothing here panics, whatever the
//! bytes.

use std::{borrow::Cow, fmt, sync::LazyLock};

use memchr::memmem;
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use super::{ProviderError, WireFormat};
use crate::usage::{FinishReason, Usage};

/// What a complete JSON response body says about usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyUsage {
    /// The usage the provider reported, if it reported any.
    pub usage: Option<Usage>,
    /// The normalised finish reason, if the body has one.
    pub finish_reason: Option<FinishReason>,
}

/// Reads usage and the finish reason from a non-streaming JSON body.
///
/// `format` says which provider shape to expect; `None` infers it from the
/// body (see [`infer_json_format`]).
///
/// ```
/// use llm_tower::{provider::{usage::scan_json, WireFormat}, usage::{FinishReason, Usage}};
///
/// let body = br#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hi"}],
///   "stop_reason":"end_turn","usage":{"input_tokens":10,"cache_read_input_tokens":90,
///   "cache_creation_input_tokens":0,"output_tokens":5}}"#;
/// let scan = scan_json(Some(WireFormat::AnthropicMessages), body);
/// let usage = scan.usage.unwrap();
/// assert_eq!((usage.input_tokens, usage.cached_input_tokens, usage.output_tokens), (100, 90, 5));
/// assert_eq!(scan.finish_reason, Some(FinishReason::Stop));
/// ```
pub fn scan_json(format: Option<WireFormat>, body: &[u8]) -> BodyUsage {
    let format = format.or_else(|| infer_json_format(body));
    let key = match format {
        Some(WireFormat::GeminiGenerateContent) => &*USAGE_METADATA,
        _ => &*USAGE,
    };
    let usage = key
        .values_rev(body)
        .take(8)
        .filter_map(|pos| parse_at::<RawUsage>(body, pos))
        .find(RawUsage::has_counts);
    let finish_reason = finish_reason(format, body);
    match usage {
        Some(raw) => BodyUsage {
            usage: Some(raw.to_usage()),
            finish_reason,
        },
        None => full_parse(body).unwrap_or(BodyUsage {
            usage: None,
            finish_reason,
        }),
    }
}

/// Guesses the wire format of a JSON response body from its keys.
pub fn infer_json_format(body: &[u8]) -> Option<WireFormat> {
    if USAGE_METADATA.first_value(body).is_some() || CANDIDATES.first_value(body).is_some() {
        Some(WireFormat::GeminiGenerateContent)
    } else if CHOICES.first_value(body).is_some() {
        Some(WireFormat::OpenAiChat)
    } else if STOP_REASON.first_value(body).is_some() {
        Some(WireFormat::AnthropicMessages)
    } else if OUTPUT.first_value(body).is_some() || STATUS.first_value(body).is_some() {
        Some(WireFormat::OpenAiResponses)
    } else {
        None
    }
}

/// Guesses the wire format of an SSE stream from one of its events: events
/// named `message_*`, `content_block_*` or `ping` are Anthropic's,
/// `response.*` OpenAI responses', `data: [DONE]` and `choices` OpenAI
/// chat's, `usageMetadata` and `candidates` Gemini's.
pub fn infer_stream_format(event: Option<&str>, data: &[u8]) -> Option<WireFormat> {
    let by_name = |name: &str| {
        if name.starts_with("message_") || name.starts_with("content_block_") || name == "ping" {
            Some(WireFormat::AnthropicMessages)
        } else if name.starts_with("response.") {
            Some(WireFormat::OpenAiResponses)
        } else {
            None
        }
    };
    if let Some(f) = event.and_then(by_name) {
        return Some(f);
    }
    if trim(data) == b"[DONE]" || CHOICES.first_value(data).is_some() {
        Some(WireFormat::OpenAiChat)
    } else if USAGE_METADATA.first_value(data).is_some() || CANDIDATES.first_value(data).is_some() {
        Some(WireFormat::GeminiGenerateContent)
    } else {
        event_type(data).as_deref().and_then(by_name)
    }
}

/// What an SSE event means for the stream as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamSignal {
    /// Nothing wrong: keep going.
    Continue,
    /// The provider sent an error inside the stream.
    Error(ProviderError),
    /// An event that matters could not be read.
    Malformed(&'static str),
}

/// Follows one SSE response stream, event by event: usage, finish reason,
/// terminal event, in-stream errors.
///
/// Feed it every dispatched event with [`on_event`](Self::on_event). Token
/// deltas cost a few substring searches; only events that carry usage, a
/// finish reason or an error are deserialized, and only the values that
/// matter in them.
///
/// ```
/// use llm_tower::provider::{usage::{StreamSignal, StreamUsage}, WireFormat};
///
/// let mut s = StreamUsage::new(Some(WireFormat::AnthropicMessages));
/// let start = br#"{"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}"#;
/// assert_eq!(s.on_event(Some("message_start"), start), StreamSignal::Continue);
/// s.on_event(Some("message_delta"), br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#);
/// s.on_event(Some("message_stop"), br#"{"type":"message_stop"}"#);
/// assert!(s.is_complete() && s.has_final_usage());
/// assert_eq!(s.usage().unwrap().total_tokens(), 19);
/// ```
#[derive(Clone, Debug, Default)]
pub struct StreamUsage {
    format: Option<WireFormat>,
    raw: RawUsage,
    usage_seen: bool,
    input_seen: bool,
    final_usage: bool,
    finish: Option<FinishReason>,
    complete: bool,
    events: u64,
    output_events: u64,
    text_bytes: u64,
    revision: u64,
}

impl StreamUsage {
    /// A tracker for a stream of the given format; `None` infers the format
    /// from the first events that reveal it.
    pub fn new(format: Option<WireFormat>) -> Self {
        StreamUsage {
            format,
            ..StreamUsage::default()
        }
    }

    /// Takes one dispatched SSE event: its type (`None` for the default
    /// `message`) and its data.
    pub fn on_event(&mut self, event: Option<&str>, data: &[u8]) -> StreamSignal {
        if data.is_empty() {
            return StreamSignal::Continue;
        }
        self.events += 1;
        if self.format.is_none() {
            self.format = infer_stream_format(event, data);
        }
        if event == Some("error") {
            return StreamSignal::Error(provider_error(data));
        }
        let Some(format) = self.format else {
            // A stream in no known format: any event with data is progress.
            self.output_events += 1;
            return StreamSignal::Continue;
        };
        // Every event of these formats is one JSON value (bar chat's
        // `[DONE]`): an event cut in half is never skipped silently.
        let done = format == WireFormat::OpenAiChat && trim(data) == b"[DONE]";
        if !done && !is_json(data) {
            return StreamSignal::Malformed("event data is not valid JSON");
        }
        match format {
            WireFormat::OpenAiChat => self.chat(data),
            WireFormat::OpenAiResponses => self.responses(event, data),
            WireFormat::AnthropicMessages => self.anthropic(event, data),
            WireFormat::GeminiGenerateContent => self.gemini(data),
        }
    }

    fn chat(&mut self, data: &[u8]) -> StreamSignal {
        if trim(data) == b"[DONE]" {
            self.complete = true;
            return StreamSignal::Continue;
        }
        if ERROR.non_null_value(data).is_some() {
            return StreamSignal::Error(provider_error(data));
        }
        if !is_object(data) {
            return StreamSignal::Malformed("chat chunk is not a JSON object");
        }
        if let Some(pos) = USAGE.non_null_value(data) {
            match parse_at::<RawUsage>(data, pos) {
                Some(raw) => self.take_usage(raw, true, true),
                None => return StreamSignal::Malformed("chat chunk usage is not token counts"),
            }
        }
        if let Some(pos) = FINISH_REASON.non_null_value(data) {
            self.set_finish(data, pos);
            // A stream that delivered its finish reason is complete, with
            // or without the `[DONE]` some compatible servers never send.
            self.complete = true;
        }
        if DELTA.first_value(data).is_some() {
            // Output is text, a refusal, reasoning or a tool call; the role
            // chunk and empty deltas are not.
            let text = first_text(data, &[&CONTENT, &REFUSAL, &REASONING_CONTENT, &REASONING]);
            if text > 0 || TOOL_CALLS.non_null_value(data).is_some() {
                self.output(text);
            }
        }
        StreamSignal::Continue
    }

    fn responses(&mut self, event: Option<&str>, data: &[u8]) -> StreamSignal {
        let name = event_name(event, data);
        match &*name {
            "response.completed" | "response.incomplete" => {
                if !is_object(data) {
                    return StreamSignal::Malformed("terminal response event is not JSON");
                }
                if let Some(raw) = USAGE
                    .values_rev(data)
                    .take(4)
                    .filter_map(|pos| parse_at::<RawUsage>(data, pos))
                    .find(RawUsage::has_counts)
                {
                    self.take_usage(raw, true, true);
                }
                self.finish = responses_finish(data);
                self.complete = true;
                StreamSignal::Continue
            }
            "response.failed" => {
                self.complete = true;
                StreamSignal::Error(responses_error(data))
            }
            "error" => StreamSignal::Error(provider_error(data)),
            n if n.ends_with(".delta") => {
                let text = DELTA
                    .first_value(data)
                    .map_or(0, |pos| string_len(data, pos));
                if text > 0 {
                    self.output(text);
                }
                StreamSignal::Continue
            }
            _ => StreamSignal::Continue,
        }
    }

    fn anthropic(&mut self, event: Option<&str>, data: &[u8]) -> StreamSignal {
        let name = event_name(event, data);
        match &*name {
            "content_block_delta" => {
                // Text, tool input, thinking or a citation; an empty
                // `partial_json` opening a tool's input is not output yet.
                let text = first_text(data, &[&TEXT, &PARTIAL_JSON, &THINKING]);
                if text > 0 || CITATION.non_null_value(data).is_some() {
                    self.output(text);
                }
            }
            "content_block_start" if anthropic_block_has_output(data) => self.output(0),
            "error" => return StreamSignal::Error(provider_error(data)),
            "message_start" | "message_delta" => {
                if !is_object(data) {
                    return StreamSignal::Malformed("message event is not JSON");
                }
                let last = name == "message_delta";
                if let Some(pos) = USAGE.non_null_value(data) {
                    match parse_at::<RawUsage>(data, pos) {
                        Some(raw) => self.take_usage(raw, last, false),
                        None => {
                            return StreamSignal::Malformed("message usage is not token counts");
                        }
                    }
                }
                if last && let Some(pos) = STOP_REASON.non_null_value(data) {
                    self.set_finish(data, pos);
                    // The stop reason is the answer's end; only the
                    // closing `message_stop` may still be missing.
                    self.complete = true;
                }
            }
            "message_stop" => self.complete = true,
            _ => {}
        }
        StreamSignal::Continue
    }

    fn gemini(&mut self, data: &[u8]) -> StreamSignal {
        // Errors may come wrapped in an array, as Gemini's error bodies do.
        if ERROR.non_null_value(data).is_some() {
            return StreamSignal::Error(provider_error(data));
        }
        if !is_object(data) {
            return StreamSignal::Malformed("gemini chunk is not a JSON object");
        }
        if CANDIDATES.first_value(data).is_some() {
            let text = TEXT
                .first_value(data)
                .map_or(0, |pos| string_len(data, pos));
            let call = [&*FUNCTION_CALL, &*INLINE_DATA, &*EXECUTABLE_CODE]
                .iter()
                .any(|k| k.non_null_value(data).is_some());
            if text > 0 || call {
                self.output(text);
            }
        }
        if let Some(pos) = FINISH_REASON_CAMEL.non_null_value(data) {
            self.set_finish(data, pos);
            self.complete = true;
        }
        if let Some(pos) = USAGE_METADATA.non_null_value(data) {
            match parse_at::<RawUsage>(data, pos) {
                // Each chunk's usage is complete as of that chunk: the last
                // one wins, and it is final once the finish reason came.
                Some(raw) => self.take_usage(raw, self.complete, true),
                None => return StreamSignal::Malformed("usageMetadata is not token counts"),
            }
        }
        StreamSignal::Continue
    }

    fn take_usage(&mut self, raw: RawUsage, last: bool, replace: bool) {
        self.revision += 1;
        if replace {
            self.raw = raw;
        } else {
            self.raw.merge(&raw);
        }
        self.usage_seen = true;
        self.input_seen |= raw.has_input();
        self.final_usage |= last;
    }

    fn set_finish(&mut self, data: &[u8], pos: usize) {
        self.revision += 1;
        if let Some(Some(reason)) = parse_at::<Option<Cow<'_, str>>>(data, pos) {
            self.finish = Some(FinishReason::from_provider(&reason));
        }
    }

    /// Counts an event carrying model output, with `text` bytes of text
    /// (as escaped).
    fn output(&mut self, text: usize) {
        self.output_events += 1;
        self.text_bytes += text as u64;
    }

    /// The wire format, given or inferred so far.
    pub fn format(&self) -> Option<WireFormat> {
        self.format
    }

    /// Whether the answer is complete: its finish reason or terminal event
    /// arrived (a chat `finish_reason` or `[DONE]`, Anthropic's
    /// `message_delta` with a `stop_reason` or `message_stop`,
    /// `response.completed` and co., a Gemini chunk with a
    /// `finishReason`). A stream that ends after its finish reason without
    /// the closing event some servers omit is complete, not truncated.
    ///
    /// A stream whose format was never recognised counts as complete once
    /// it carried any event: there is no terminal event to wait for.
    pub fn is_complete(&self) -> bool {
        match self.format {
            Some(_) => self.complete,
            None => self.events > 0,
        }
    }

    /// Whether the format's last usage report arrived (the chat usage chunk,
    /// the responses terminal event, Anthropic's `message_delta`, Gemini's
    /// `usageMetadata` at or after the finish reason), so
    /// [`usage`](Self::usage) is final.
    pub fn has_final_usage(&self) -> bool {
        self.final_usage
    }

    /// Whether the provider reported input tokens (Anthropic's
    /// `message_start` does, before any output).
    pub fn has_input(&self) -> bool {
        self.input_seen
    }

    /// The usage reported so far, normalised; `None` before any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage_seen.then(|| self.raw.to_usage())
    }

    /// The finish reason, once the stream sent one.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    /// Changes whenever the usage or the finish reason changes: a reader
    /// holding a copy knows when it is stale.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Events with data seen so far.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// Events that carried model output, so far. The first one is the
    /// stream's *first token*, for every layer:
    ///
    /// | format | output | not output |
    /// |---|---|---|
    /// | OpenAI chat | a `delta` with non-empty `content`, `refusal`, `reasoning_content` or `reasoning`, or with `tool_calls` | the role chunk, empty deltas, the finish and usage chunks |
    /// | OpenAI responses | a `*.delta` event with a non-empty `delta` | `response.created`, `response.in_progress`, items opened |
    /// | Anthropic | `content_block_delta` with non-empty `text`, `partial_json` or `thinking`, or a `citation`; `content_block_start` of a block that carries content (a tool call, non-empty text) | `message_start`, `ping`, an empty text block opened, `message_delta` |
    /// | Gemini | a candidate part with non-empty `text`, a `functionCall`, `inlineData` or `executableCode` | chunks with only metadata |
    ///
    /// In a stream whose format is not known, every event with data counts.
    pub fn output_events(&self) -> u64 {
        self.output_events
    }

    /// Output tokens guessed from the answer's text (its JSON-escaped bytes
    /// divided by four, rounded up): the estimate when usage never came.
    pub fn estimated_output_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(4)
    }
}

/// Declares a record of optional counters and its deserializer. Keys are
/// matched as raw bytes (no UTF-8 check per key, no allocation); unknown
/// keys are skipped; a count that is not a non-negative integer reads as
/// absent rather than failing the whole record.
macro_rules! counters {
    ($(#[$m:meta])* struct $name:ident { $($field:ident: $ty:ty = $key:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        struct $name {
            $($field: Option<$ty>,)*
        }

        impl $name {
            fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
                #[allow(non_camel_case_types)]
                enum Field {
                    $($field,)*
                    __other,
                }
                fn which(key: &[u8]) -> Field {
                    match key {
                        $($key => Field::$field,)*
                        _ => Field::__other,
                    }
                }
                let mut out = $name::default();
                while let Some(field) = map.next_key_seed(KeySeed(which))? {
                    match field {
                        $(Field::$field => out.$field = map.next_value::<Lenient<$ty>>()?.0,)*
                        Field::__other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object of token counts")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$name, A::Error> {
                        $name::from_map(map)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

counters! {
    /// Usage counters as sent, before normalisation: every field of every
    /// format.
    struct RawUsage {
        // OpenAI chat (prompt includes cached).
        prompt_tokens: u64 = b"prompt_tokens",
        completion_tokens: u64 = b"completion_tokens",
        prompt_tokens_details: Details = b"prompt_tokens_details",
        completion_tokens_details: Details = b"completion_tokens_details",
        // OpenAI responses (input includes cached) and Anthropic (input
        // excludes cache reads and writes).
        input_tokens: u64 = b"input_tokens",
        output_tokens: u64 = b"output_tokens",
        input_tokens_details: Details = b"input_tokens_details",
        output_tokens_details: Details = b"output_tokens_details",
        cache_read_input_tokens: u64 = b"cache_read_input_tokens",
        cache_creation_input_tokens: u64 = b"cache_creation_input_tokens",
        // Gemini.
        prompt_token_count: u64 = b"promptTokenCount",
        candidates_token_count: u64 = b"candidatesTokenCount",
        cached_content_token_count: u64 = b"cachedContentTokenCount",
        thoughts_token_count: u64 = b"thoughtsTokenCount",
        tool_use_prompt_token_count: u64 = b"toolUsePromptTokenCount",
        total_token_count: u64 = b"totalTokenCount",
    }
}

counters! {
    /// OpenAI's `*_tokens_details`.
    struct Details {
        cached_tokens: u64 = b"cached_tokens",
        reasoning_tokens: u64 = b"reasoning_tokens",
    }
}

/// Reads a map key as raw bytes and classifies it.
struct KeySeed<F>(F);

impl<'de, F: FnOnce(&[u8]) -> T, T> DeserializeSeed<'de> for KeySeed<F> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_bytes(self)
    }
}

impl<F: FnOnce(&[u8]) -> T, T> Visitor<'_> for KeySeed<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<T, E> {
        Ok((self.0)(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok((self.0)(v.as_bytes()))
    }
}

/// A value that reads as `None` when it is not what was expected.
struct Lenient<T>(Option<T>);

/// What a lenient value accepts besides "anything else is `None`".
trait Accept: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl Accept for u64 {
    fn from_u64(v: u64) -> Option<u64> {
        Some(v)
    }
}

impl Accept for Details {
    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        Details::from_map(map).map(Some)
    }
}

impl<'de, T: Accept> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Accept> Visitor<'de> for V<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_u64(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Lenient(u64::try_from(v).ok().and_then(T::from_u64)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                let whole = v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64;
                Ok(Lenient(whole.then(|| T::from_u64(v as u64)).flatten()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                T::from_map(a).map(Lenient)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl RawUsage {
    fn has_counts(&self) -> bool {
        self.has_input()
            || self.completion_tokens.is_some()
            || self.output_tokens.is_some()
            || self.candidates_token_count.is_some()
            || self.total_token_count.is_some()
    }

    fn has_input(&self) -> bool {
        self.prompt_tokens.is_some()
            || self.input_tokens.is_some()
            || self.prompt_token_count.is_some()
    }

    /// Later fields replace earlier ones (Anthropic's `message_delta` counts
    /// are cumulative: the latest is the total, never a sum).
    fn merge(&mut self, newer: &RawUsage) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f; } )* };
        }
        take!(
            prompt_tokens,
            completion_tokens,
            prompt_tokens_details,
            completion_tokens_details,
            input_tokens,
            output_tokens,
            input_tokens_details,
            output_tokens_details,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            prompt_token_count,
            candidates_token_count,
            cached_content_token_count,
            thoughts_token_count,
            tool_use_prompt_token_count,
            total_token_count
        );
    }

    fn to_usage(self) -> Usage {
        let gemini = self.prompt_token_count.is_some()
            || self.candidates_token_count.is_some()
            || self.total_token_count.is_some();
        if gemini {
            let input = self
                .prompt_token_count
                .unwrap_or(0)
                .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0));
            let thoughts = self.thoughts_token_count.unwrap_or(0);
            let output = match self.candidates_token_count {
                Some(c) => c.saturating_add(thoughts),
                // Some chunks carry only the total.
                None => self.total_token_count.unwrap_or(0).saturating_sub(input),
            };
            return Usage {
                input_tokens: input,
                output_tokens: output,
                cached_input_tokens: self.cached_content_token_count.unwrap_or(0),
                cache_write_tokens: 0,
                reasoning_tokens: thoughts,
            };
        }
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        // `prompt_tokens` is OpenAI's total; gateways that translate
        // Anthropic may add the cache fields beside it, already included.
        // `input_tokens` is a total for OpenAI responses (which never sends
        // the cache fields) and excludes them for Anthropic.
        let input = match self.prompt_tokens {
            Some(p) => p,
            None => self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write),
        };
        let detail = |d: Option<Details>, f: fn(&Details) -> Option<u64>| d.as_ref().and_then(f);
        let cached = self
            .cache_read_input_tokens
            .or(detail(self.prompt_tokens_details, |d| d.cached_tokens))
            .or(detail(self.input_tokens_details, |d| d.cached_tokens))
            .unwrap_or(0);
        let reasoning = detail(self.completion_tokens_details, |d| d.reasoning_tokens)
            .or(detail(self.output_tokens_details, |d| d.reasoning_tokens))
            .unwrap_or(0);
        Usage {
            input_tokens: input,
            output_tokens: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cached_input_tokens: cached,
            cache_write_tokens: write,
            reasoning_tokens: reasoning,
        }
    }
}

fn finish_reason(format: Option<WireFormat>, body: &[u8]) -> Option<FinishReason> {
    let at = |pos: Option<usize>| {
        let reason = parse_at::<Option<Cow<'_, str>>>(body, pos?)??;
        Some(FinishReason::from_provider(&reason))
    };
    match format {
        // The first occurrence is `choices[0]`'s, or `candidates[0]`'s.
        Some(WireFormat::OpenAiChat) => at(FINISH_REASON.first_value(body)),
        Some(WireFormat::GeminiGenerateContent) => at(FINISH_REASON_CAMEL.first_value(body)),
        // The top-level key comes after the content, where a tool's input
        // could hold a key of the same name.
        Some(WireFormat::AnthropicMessages) => at(STOP_REASON.values_rev(body).next()),
        Some(WireFormat::OpenAiResponses) => responses_finish(body),
        None => None,
    }
}

/// A responses object's top-level `status` comes before its output items
/// (which have statuses of their own): the first one is the response's.
fn responses_finish(body: &[u8]) -> Option<FinishReason> {
    let status = parse_at::<Option<Cow<'_, str>>>(body, STATUS.first_value(body)?)??;
    if status == "incomplete" {
        #[derive(Deserialize)]
        struct Incomplete<'a> {
            #[serde(borrow)]
            reason: Option<Cow<'a, str>>,
        }
        let reason = INCOMPLETE_DETAILS
            .non_null_value(body)
            .and_then(|pos| parse_at::<Incomplete<'_>>(body, pos))
            .and_then(|d| d.reason);
        return Some(FinishReason::from_provider(
            reason.as_deref().unwrap_or("incomplete"),
        ));
    }
    Some(FinishReason::from_provider(&status))
}

/// The error of a `response.failed` event (`response.error`).
fn responses_error(data: &[u8]) -> ProviderError {
    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<Cow<'a, str>>,
        code: Option<Cow<'a, str>>,
        message: Option<Cow<'a, str>>,
    }
    match ERROR
        .non_null_value(data)
        .and_then(|pos| parse_at::<Fields<'_>>(data, pos))
    {
        Some(f) if f.kind.is_some() || f.code.is_some() => {
            let e = ProviderError::new(f.kind.as_deref(), f.code.as_deref(), None);
            match f.message {
                Some(m) => e.with_message(&m),
                None => e,
            }
        }
        _ => ProviderError::new(None, Some("response_failed"), None),
    }
}

/// The provider error in an error event's data; an error event whose data
/// is not a recognisable error is still an error.
fn provider_error(data: &[u8]) -> ProviderError {
    ProviderError::parse(data).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&data[..data.len().min(256)]);
        ProviderError::new(Some("stream_error"), None, None).with_message(&text)
    })
}

/// The top-level `"type"` of an event's data (the first key of Anthropic
/// and responses events).
/// The event's name, from its `event:` field or else its data's `type`.
fn event_name<'a>(event: Option<&'a str>, data: &'a [u8]) -> Cow<'a, str> {
    match event {
        Some(name) => Cow::Borrowed(name),
        None => event_type(data).unwrap_or(Cow::Borrowed("")),
    }
}

fn event_type(data: &[u8]) -> Option<Cow<'_, str>> {
    parse_at::<Option<Cow<'_, str>>>(data, TYPE.first_value(data)?)?
}

/// Full typed parse, for bodies where the targeted scan found nothing.
fn full_parse(body: &[u8]) -> Option<BodyUsage> {
    #[derive(Deserialize)]
    struct Full<'a> {
        #[serde(default, alias = "usageMetadata")]
        usage: Option<RawUsage>,
        #[serde(default, borrow)]
        choices: Option<Vec<Reason<'a>>>,
        #[serde(default, borrow)]
        candidates: Option<Vec<Reason<'a>>>,
        #[serde(default, borrow)]
        stop_reason: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Reason<'a> {
        #[serde(default, borrow, alias = "finishReason")]
        finish_reason: Option<Cow<'a, str>>,
    }
    let full: Full<'_> = serde_json::from_slice(body).ok()?;
    fn first(v: Option<Vec<Reason<'_>>>) -> Option<Cow<'_, str>> {
        v?.into_iter().next()?.finish_reason
    }
    let reason = first(full.choices)
        .or_else(|| first(full.candidates))
        .or(full.stop_reason);
    let usage = full.usage.filter(RawUsage::has_counts);
    Some(BodyUsage {
        usage: usage.map(|u| u.to_usage()),
        finish_reason: reason.map(|r| FinishReason::from_provider(&r)),
    })
}

/// A JSON key (quoted), with a prebuilt searcher.
struct Key {
    fwd: memmem::Finder<'static>,
    len: usize,
}

impl Key {
    fn new(quoted: &'static [u8]) -> Self {
        Key {
            fwd: memmem::Finder::new(quoted),
            len: quoted.len(),
        }
    }

    /// The value position of the first real occurrence of the key.
    fn first_value(&self, hay: &[u8]) -> Option<usize> {
        let mut from = 0;
        while let Some(i) = self.fwd.find(&hay[from..]) {
            let start = from + i;
            if let Some(pos) = value_pos(hay, start, self.len) {
                return Some(pos);
            }
            from = start + 1;
        }
        None
    }

    /// Like [`first_value`](Self::first_value), `None` when the value is
    /// `null`.
    fn non_null_value(&self, hay: &[u8]) -> Option<usize> {
        self.first_value(hay).filter(|&p| hay[p] != b'n')
    }

    /// The value positions of real occurrences, from the end.
    ///
    /// Searches forward (vectorised) within windows taken from the end,
    /// which beats a backward search, and stops at the first window with a
    /// match: the usage of a large body is read without scanning it all.
    fn values_rev<'h>(&'h self, hay: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
        const WINDOW: usize = 4096;
        // Every match found so far starts at or after `end`.
        let mut end = hay.len();
        std::iter::from_fn(move || {
            while end > 0 {
                let lo = end.saturating_sub(WINDOW);
                let hi = (end + self.len - 1).min(hay.len());
                let mut last = None;
                let mut from = lo;
                while let Some(i) = self.fwd.find(&hay[from..hi]) {
                    last = Some(from + i);
                    from += i + 1;
                }
                match last {
                    Some(start) => {
                        end = start;
                        if let Some(pos) = value_pos(hay, start, self.len) {
                            return Some(pos);
                        }
                    }
                    None => end = lo,
                }
            }
            None
        })
    }
}

/// Where the value of a key found at `start` begins: after the colon and
/// any whitespace. `None` when the match is inside a string (an escaped
/// quote) or is itself a string value (no colon after it).
fn value_pos(hay: &[u8], start: usize, len: usize) -> Option<usize> {
    if start > 0 && hay[start - 1] == b'\\' {
        return None;
    }
    let mut i = skip_ws(hay, start + len);
    if hay.get(i) != Some(&b':') {
        return None;
    }
    i = skip_ws(hay, i + 1);
    (i < hay.len()).then_some(i)
}

fn skip_ws(hay: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = hay.get(i) {
        i += 1;
    }
    i
}

fn trim(data: &[u8]) -> &[u8] {
    data.trim_ascii()
}

/// Whether `data` is one whole JSON object or array: it opens with `{` or
/// `[`, closes every string, brace and bracket it opens, in order, and ends
/// there.
///
/// This is a structural scan, not a full validation (numbers and literals
/// are not checked): what breaks a streamed event in practice is a cut — a
/// chunk split, a connection dropped mid-event, two events run together —
/// and a cut always leaves a string, a brace or a bracket open, or text
/// after the close. It runs at memory speed: the bytes inside strings,
/// most of an event, are skipped with `memchr`. The values the meter needs
/// from an event (usage, errors, finish reasons) are deserialized by
/// serde_json, and an event whose value does not parse is malformed too.
fn is_json(data: &[u8]) -> bool {
    let d = data.trim_ascii();
    // The closer each open brace or bracket expects; events nest a few
    // levels, anything deeper is judged by serde_json.
    let mut stack = [0u8; 32];
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = d.get(i) {
        i += 1;
        match b {
            b'"' if depth > 0 => {
                // To the closing quote, skipping escaped characters.
                loop {
                    match d[i..].iter().position(|&c| c == b'"' || c == b'\\') {
                        None => return false,
                        Some(k) if d[i + k] == b'"' => {
                            i += k + 1;
                            break;
                        }
                        Some(k) => i += k + 2,
                    }
                    if i > d.len() {
                        return false;
                    }
                }
            }
            b'{' | b'[' => {
                if depth == stack.len() {
                    return serde_json::from_slice::<IgnoredAny>(d).is_ok();
                }
                stack[depth] = if b == b'{' { b'}' } else { b']' };
                depth += 1;
            }
            b'}' | b']' => {
                if depth == 0 || stack[depth - 1] != b {
                    return false;
                }
                depth -= 1;
                if depth == 0 {
                    return i == d.len();
                }
            }
            _ if depth == 0 => return false,
            _ => {}
        }
    }
    false
}

/// The length of the first non-empty string among the values of `keys`
/// (looked up in order), 0 when none is.
fn first_text(data: &[u8], keys: &[&LazyLock<Key>]) -> usize {
    keys.iter()
        .filter_map(|k| k.first_value(data))
        .map(|pos| string_len(data, pos))
        .find(|&n| n > 0)
        .unwrap_or(0)
}

/// Whether an Anthropic `content_block_start` opens a block that already
/// carries output: a tool call (its name), or text or thinking that is not
/// empty.
fn anthropic_block_has_output(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Block<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        text: Option<Cow<'a, str>>,
        #[serde(borrow)]
        thinking: Option<Cow<'a, str>>,
    }
    let Some(block) = CONTENT_BLOCK
        .non_null_value(data)
        .and_then(|pos| parse_at::<Block<'_>>(data, pos))
    else {
        return false;
    };
    match block.kind.as_deref() {
        Some("text") => block.text.is_some_and(|t| !t.is_empty()),
        Some("thinking") => block.thinking.is_some_and(|t| !t.is_empty()),
        Some(_) => true,
        None => false,
    }
}

fn is_object(data: &[u8]) -> bool {
    data.get(skip_ws(data, 0)) == Some(&b'{')
}

/// Deserializes the one JSON value at `pos`, ignoring what follows it.
fn parse_at<'de, T: Deserialize<'de>>(hay: &'de [u8], pos: usize) -> Option<T> {
    let mut de = serde_json::Deserializer::from_slice(hay.get(pos..)?);
    T::deserialize(&mut de).ok()
}

/// The length in bytes (as escaped) of the JSON string at `pos`; 0 when
/// there is no string there.
fn string_len(hay: &[u8], pos: usize) -> usize {
    if hay.get(pos) != Some(&b'"') {
        return 0;
    }
    let body = &hay[pos + 1..];
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'"', &body[from..]) {
        let q = from + i;
        let backslashes = body[..q].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return q;
        }
        from = q + 1;
    }
    body.len()
}

macro_rules! keys {
    ($($name:ident = $key:literal;)*) => {
        $( static $name: LazyLock<Key> = LazyLock::new(|| Key::new($key)); )*
    };
}

keys! {
    USAGE = b"\"usage\"";
    USAGE_METADATA = b"\"usageMetadata\"";
    FINISH_REASON = b"\"finish_reason\"";
    FINISH_REASON_CAMEL = b"\"finishReason\"";
    STOP_REASON = b"\"stop_reason\"";
    STATUS = b"\"status\"";
    INCOMPLETE_DETAILS = b"\"incomplete_details\"";
    ERROR = b"\"error\"";
    CHOICES = b"\"choices\"";
    CANDIDATES = b"\"candidates\"";
    OUTPUT = b"\"output\"";
    DELTA = b"\"delta\"";
    CONTENT = b"\"content\"";
    TEXT = b"\"text\"";
    PARTIAL_JSON = b"\"partial_json\"";
    THINKING = b"\"thinking\"";
    CITATION = b"\"citation\"";
    CONTENT_BLOCK = b"\"content_block\"";
    REFUSAL = b"\"refusal\"";
    REASONING_CONTENT = b"\"reasoning_content\"";
    REASONING = b"\"reasoning\"";
    TOOL_CALLS = b"\"tool_calls\"";
    FUNCTION_CALL = b"\"functionCall\"";
    INLINE_DATA = b"\"inlineData\"";
    EXECUTABLE_CODE = b"\"executableCode\"";
    TYPE = b"\"type\"";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_chat_body() {
        let body = br#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "The \"usage\": {\"prompt_tokens\": 999} is not real.",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "length"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;
        let scan = scan_json(Some(WireFormat::OpenAiChat), body);
        let u = scan.usage.unwrap();
        assert_eq!(u.input_tokens, 1117);
        assert_eq!(u.cached_input_tokens, 1024);
        assert_eq!(u.output_tokens, 46);
        assert_eq!(u.reasoning_tokens, 12);
        assert_eq!(scan.finish_reason, Some(FinishReason::Length));
        assert_eq!(scan_json(None, body), scan);
    }

    #[test]
    fn openai_responses_body() {
        let body = br#"{"id":"resp_67cb","object":"response","created_at":1741386163,"status":"incomplete",
"error":null,"incomplete_details":{"reason":"max_output_tokens"},"model":"o3-2025-04-16",
"output":[{"type":"reasoning","id":"rs_1","summary":[]},{"type":"message","id":"msg_1","status":"incomplete","role":"assistant",
"content":[{"type":"output_text","text":"Partial","annotations":[]}]}],
"usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},"output_tokens":52,
"output_tokens_details":{"reasoning_tokens":40},"total_tokens":380},"user":null,"metadata":{}}"#;
        let scan = scan_json(Some(WireFormat::OpenAiResponses), body);
        assert_eq!(
            scan.usage.unwrap(),
            Usage {
                input_tokens: 328,
                output_tokens: 52,
                cached_input_tokens: 128,
                cache_write_tokens: 0,
                reasoning_tokens: 40
            }
        );
        assert_eq!(scan.finish_reason, Some(FinishReason::Length));
        assert_eq!(scan_json(None, body), scan);
    }

    #[test]
    fn anthropic_body_adds_cache_to_input() {
        // A tool input holding a key named like the usage key must not fool
        // the scan.
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5",
"content":[{"type":"tool_use","id":"toolu_1","name":"report","input":{"usage":{"input_tokens":1},"stop_reason":"x"}}],
"stop_reason":"tool_use","stop_sequence":null,
"usage":{"input_tokens":21,"cache_creation_input_tokens":188,"cache_read_input_tokens":1800,"output_tokens":393,"service_tier":"standard"}}"#;
        let scan = scan_json(Some(WireFormat::AnthropicMessages), body);
        let u = scan.usage.unwrap();
        assert_eq!(u.input_tokens, 21 + 188 + 1800);
        assert_eq!(u.cached_input_tokens, 1800);
        assert_eq!(u.cache_write_tokens, 188);
        assert_eq!(u.output_tokens, 393);
        assert_eq!(scan.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(scan_json(None, body), scan);
    }

    #[test]
    fn gemini_body() {
        let body = br#"{
  "candidates": [
    {
      "content": {"parts": [{"text": "Hello"}], "role": "model"},
      "finishReason": "MAX_TOKENS",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 9,
    "candidatesTokenCount": 40,
    "totalTokenCount": 149,
    "cachedContentTokenCount": 4,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
    "thoughtsTokenCount": 100
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "abc"
}"#;
        let scan = scan_json(Some(WireFormat::GeminiGenerateContent), body);
        let u = scan.usage.unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (9, 140));
        assert_eq!((u.cached_input_tokens, u.reasoning_tokens), (4, 100));
        assert_eq!(scan.finish_reason, Some(FinishReason::Length));
        assert_eq!(scan_json(None, body), scan);
    }

    #[test]
    fn gateway_prompt_tokens_already_include_cache() {
        let body = br#"{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":100,
"completion_tokens":5,"cache_read_input_tokens":80,"cache_creation_input_tokens":0}}"#;
        let u = scan_json(None, body).usage.unwrap();
        assert_eq!((u.input_tokens, u.cached_input_tokens), (100, 80));
    }

    #[test]
    fn body_without_usage_falls_back_and_finds_nothing() {
        let scan = scan_json(
            Some(WireFormat::OpenAiChat),
            br#"{"choices":[{"finish_reason":"stop"}],"usage":null}"#,
        );
        assert_eq!(scan.usage, None);
        assert_eq!(scan.finish_reason, Some(FinishReason::Stop));
        assert_eq!(scan_json(None, b"not json"), BodyUsage::default());
    }

    #[test]
    fn gemini_error_inside_a_stream() {
        let mut s = StreamUsage::new(Some(WireFormat::GeminiGenerateContent));
        let data = br#"[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]"#;
        match s.on_event(None, data) {
            StreamSignal::Error(e) => assert_eq!(e.status(), Some("UNAVAILABLE")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.on_event(None, b"<html>"),
            StreamSignal::Malformed("event data is not valid JSON")
        );
    }

    /// Feeds events, returning after which one (1-based) output began.
    fn first_output(format: WireFormat, events: &[(Option<&str>, &str)]) -> Option<usize> {
        let mut s = StreamUsage::new(Some(format));
        for (i, (event, data)) in events.iter().enumerate() {
            assert_eq!(
                s.on_event(*event, data.as_bytes()),
                StreamSignal::Continue,
                "{data}"
            );
            if s.output_events() > 0 {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn the_first_token_is_the_first_event_with_output() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}]}"#;
        let empty = r#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}"#;
        let nothing = r#"{"choices":[{"index":0,"delta":{},"finish_reason":null}]}"#;
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        let tool = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#;
        let refusal = r#"{"choices":[{"index":0,"delta":{"refusal":"I can't"}}]}"#;
        let reasoning = r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Let me think"}}]}"#;
        let chat = WireFormat::OpenAiChat;
        assert_eq!(
            first_output(
                chat,
                &[(None, role), (None, empty), (None, nothing), (None, text)]
            ),
            Some(4)
        );
        assert_eq!(first_output(chat, &[(None, role), (None, tool)]), Some(2));
        assert_eq!(first_output(chat, &[(None, refusal)]), Some(1));
        assert_eq!(first_output(chat, &[(None, reasoning)]), Some(1));
        assert_eq!(first_output(chat, &[(None, role), (None, empty)]), None);

        let a = WireFormat::AnthropicMessages;
        let start = r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}"#;
        let block =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        let ping = r#"{"type": "ping"}"#;
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
        let empty_json = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#;
        let tool = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#;
        let thinking = r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm"}}"#;
        let anthropic = |evs: &[(&str, &str)]| {
            let evs: Vec<_> = evs.iter().map(|(e, d)| (Some(*e), *d)).collect();
            first_output(a, &evs)
        };
        assert_eq!(
            anthropic(&[
                ("message_start", start),
                ("content_block_start", block),
                ("ping", ping),
                ("ping", ping),
                ("content_block_delta", delta)
            ]),
            Some(5)
        );
        assert_eq!(
            anthropic(&[
                ("message_start", start),
                ("content_block_delta", empty_json)
            ]),
            None
        );
        assert_eq!(
            anthropic(&[("message_start", start), ("content_block_start", tool)]),
            Some(2)
        );
        assert_eq!(anthropic(&[("content_block_delta", thinking)]), Some(1));

        let g = WireFormat::GeminiGenerateContent;
        let meta = r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"}}],"usageMetadata":{"promptTokenCount":3}}"#;
        let call = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}],"role":"model"}}]}"#;
        assert_eq!(first_output(g, &[(None, meta), (None, call)]), Some(2));
    }

    #[test]
    fn a_finish_reason_completes_a_stream_without_its_closing_event() {
        let mut s = StreamUsage::new(Some(WireFormat::OpenAiChat));
        s.on_event(
            None,
            br#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
        );
        assert!(!s.is_complete());
        s.on_event(
            None,
            br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        );
        assert!(s.is_complete(), "no [DONE] needed");
        let mut s = StreamUsage::new(Some(WireFormat::AnthropicMessages));
        s.on_event(Some("message_delta"), br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}"#);
        assert!(s.is_complete(), "no message_stop needed");
    }

    #[test]
    fn an_event_cut_in_half_is_malformed_in_every_json_format() {
        for format in [
            WireFormat::OpenAiChat,
            WireFormat::OpenAiResponses,
            WireFormat::AnthropicMessages,
            WireFormat::GeminiGenerateContent,
        ] {
            let mut s = StreamUsage::new(Some(format));
            assert_eq!(
                s.on_event(
                    Some("content_block_delta"),
                    br#"{"choices":[{"delta":{"content":"Hel"#
                ),
                StreamSignal::Malformed("event data is not valid JSON"),
                "{format:?}"
            );
        }
        let mut s = StreamUsage::new(Some(WireFormat::OpenAiChat));
        assert_eq!(s.on_event(None, b" [DONE] "), StreamSignal::Continue);
    }

    #[test]
    fn anthropic_error_without_an_event_name() {
        let mut s = StreamUsage::new(Some(WireFormat::AnthropicMessages));
        let data =
            br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
        match s.on_event(None, data) {
            StreamSignal::Error(e) => assert_eq!(e.error_type(), Some("api_error")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_found_from_the_end_across_windows() {
        let mut body = b"{\"usage\":1,".to_vec();
        body.extend(std::iter::repeat_n(b' ', 10_000));
        body.extend_from_slice(b"\"x\":\"\\\"usage\\\":3\",\"usage\" : 2, \"a\":\"usage\"}");
        let found: Vec<u8> = USAGE.values_rev(&body).map(|p| body[p]).collect();
        assert_eq!(found, b"21");
        assert_eq!(USAGE.first_value(&body).map(|p| body[p]), Some(b'1'));
        assert_eq!(USAGE.values_rev(b"\"usage\"").next(), None);
    }

    #[test]
    fn lenient_counts() {
        let body = br#"{"usage":{"prompt_tokens":12.0,"completion_tokens":"7","prompt_tokens_details":null,
"completion_tokens_details":{"reasoning_tokens":-1},"input_tokens_details":[1]}}"#;
        let u = scan_json(Some(WireFormat::OpenAiChat), body).usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.reasoning_tokens),
            (12, 0, 0)
        );
    }

    #[test]
    fn whole_json_values_and_cut_ones() {
        for ok in [
            &br#"{}"#[..],
            br#" {"a":[1,{"b":"}]\"\\"}],"c":null} "#,
            br#"[{"error":{"code":503}}]"#,
        ] {
            assert!(is_json(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"<html>",
            b"42",
            br#""text""#,
            br#"{"a":1}{"b":2}"#,
            br#"{"a":1}}"#,
            br#"{"a":[1}"#,
            br#"{"a":"\"}"#,
            br#"{"text":"Hel"#,
            br#"{"choices":[{"delta":{"content":"x"}"#,
        ] {
            assert!(!is_json(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn every_cut_of_an_event_is_malformed(
            text in "[a-z{}\\[\\]\"\\\\ ]{0,12}",
            n in 0u64..1_000_000,
            nested in proptest::collection::vec("[a-z\"{]{0,4}", 0..4),
        ) {
            let event = serde_json::json!({
                "type": "content_block_delta",
                "delta": {"type": "text_delta", "text": text},
                "n": n,
                "nested": nested.iter().map(|t| serde_json::json!({"t": [t]})).collect::<Vec<_>>(),
            })
            .to_string();
            let bytes = event.as_bytes();
            proptest::prop_assert!(is_json(bytes), "{}", event);
            for cut in 0..bytes.len() {
                proptest::prop_assert!(!is_json(&bytes[..cut]), "{}", &event[..cut]);
            }
        }
    }

    #[test]
    fn string_lengths_skip_escaped_quotes() {
        assert_eq!(string_len(br#""a\"b\\" x"#, 0), 6);
        assert_eq!(string_len(br#""abc"#, 0), 3);
        assert_eq!(string_len(b"12", 0), 0);
    }
}
