use std::{fmt, sync::Arc};

use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use super::estimate::{EstimateInput, PromptStats, TokenEstimator};
use crate::provider::{Endpoint, Provider, WireFormat};

/// What every layer needs to know about a request, parsed once from its
/// JSON body and kept in the request's extensions.
///
/// Cloning is cheap (the model name is shared). Read it with
/// [`RequestMeta::get`]; [`PrepareLayer`](super::PrepareLayer) inserts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMeta {
    endpoint: Option<Endpoint>,
    model: Option<Arc<str>>,
    stream: bool,
    max_output_tokens: Option<u64>,
    estimated_input_tokens: u64,
    prompt: PromptStats,
    wants_json: bool,
}

impl RequestMeta {
    /// Metadata for a request to `endpoint` with nothing else known.
    pub fn new(endpoint: Option<Endpoint>) -> Self {
        RequestMeta {
            endpoint,
            ..RequestMeta::default()
        }
    }

    /// Parses a request body once.
    ///
    /// `path` supplies what some formats put in the URL (Gemini's model and
    /// streaming, Azure's deployment). A body that is not JSON, or not an
    /// object, gives metadata with no model and no estimate: the provider
    /// will reject it, and that rejection is what the caller should see.
    pub fn parse(
        endpoint: Option<Endpoint>,
        path: &str,
        body: &[u8],
        estimator: &dyn TokenEstimator,
    ) -> Self {
        let format = endpoint.as_ref().map(|e| e.format);
        let raw = serde_json::from_slice::<RawBody<'_>>(body).unwrap_or_default();
        let mut prompt = PromptStats::default();
        let parts = [
            raw.messages.map(|m| m.0),
            raw.system.map(|w| w.0),
            raw.tools.map(|w| w.0),
        ];
        for part in parts.into_iter().flatten() {
            prompt.ascii_bytes += part.ascii_bytes;
            prompt.non_ascii_chars += part.non_ascii_chars;
            prompt.messages += part.messages;
            prompt.images += part.images;
        }
        let model: Option<Arc<str>> = match raw.model {
            Some(m) if !m.is_empty() => Some(m.into()),
            _ => format.and_then(|f| f.model_from_path(path)).map(Arc::from),
        };
        let stream = format
            .and_then(|f| f.stream_from_path(path))
            .unwrap_or(raw.stream == Some(true));
        let wants_json = raw
            .response_format
            .as_ref()
            .and_then(Loose::get)
            .and_then(|f| f.kind.get())
            .is_some_and(|k| k == "json_object" || k == "json_schema")
            || raw
                .generation_config
                .as_ref()
                .and_then(|g| g.response_mime_type.as_ref()?.get())
                .is_some_and(|m| m == "application/json");
        let max_output_tokens = raw
            .max_completion_tokens
            .0
            .or(raw.max_tokens.0)
            .or(raw.max_output_tokens.0)
            .or(raw
                .generation_config
                .as_ref()
                .and_then(|g| g.max_output_tokens.0));
        let estimated_input_tokens = estimator.estimate_input_tokens(&EstimateInput {
            format,
            model: model.as_deref(),
            body,
            stats: &prompt,
        });
        RequestMeta {
            endpoint,
            model,
            stream,
            max_output_tokens,
            estimated_input_tokens,
            prompt,
            wants_json,
        }
    }

    /// The metadata of a prepared request, if it has been prepared.
    pub fn get<B>(req: &http::Request<B>) -> Option<&RequestMeta> {
        req.extensions().get::<RequestMeta>()
    }

    /// Sets the model.
    pub fn with_model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Sets whether the response streams.
    pub fn with_stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// Sets the output-token cap.
    pub fn with_max_output_tokens(mut self, max: Option<u64>) -> Self {
        self.max_output_tokens = max;
        self
    }

    /// Sets whether the request asks for a JSON answer.
    pub fn with_wants_json(mut self, wants_json: bool) -> Self {
        self.wants_json = wants_json;
        self
    }

    /// Whether the request asks for a JSON answer: OpenAI's
    /// `response_format` of type `json_object` or `json_schema`, Gemini's
    /// `generationConfig.responseMimeType` of `application/json`.
    pub fn wants_json(&self) -> bool {
        self.wants_json
    }

    /// Sets the estimated input tokens.
    pub fn with_estimated_input_tokens(mut self, tokens: u64) -> Self {
        self.estimated_input_tokens = tokens;
        self
    }

    /// The recognised destination.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// The provider, when recognised.
    pub fn provider(&self) -> Option<&Provider> {
        self.endpoint.as_ref().map(|e| &e.provider)
    }

    /// The wire format, when recognised.
    pub fn format(&self) -> Option<WireFormat> {
        self.endpoint.as_ref().map(|e| e.format)
    }

    /// The requested model (from the body, or the path where the format
    /// puts it there).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The requested model, shared.
    pub fn model_arc(&self) -> Option<&Arc<str>> {
        self.model.as_ref()
    }

    /// Whether the response will be a stream (SSE).
    pub fn is_stream(&self) -> bool {
        self.stream
    }

    /// The output-token cap (`max_completion_tokens`, `max_tokens`,
    /// `max_output_tokens` or Gemini's `generationConfig.maxOutputTokens`).
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_output_tokens
    }

    /// The estimated input tokens, from the configured
    /// [`TokenEstimator`].
    pub fn estimated_input_tokens(&self) -> u64 {
        self.estimated_input_tokens
    }

    /// What the parse measured of the prompt.
    pub fn prompt_stats(&self) -> &PromptStats {
        &self.prompt
    }
}

/// The fields of a request body that matter, across formats. Unknown fields
/// are skipped without being built.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBody<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    stream: Option<bool>,
    max_tokens: Lenient,
    max_completion_tokens: Lenient,
    max_output_tokens: Lenient,
    #[serde(rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    /// OpenAI and Anthropic `messages`, Gemini `contents`, responses `input`.
    #[serde(alias = "contents", alias = "input")]
    messages: Option<Messages>,
    /// Anthropic `system`, Gemini `systemInstruction`, responses
    /// `instructions`.
    #[serde(
        alias = "systemInstruction",
        alias = "system_instruction",
        alias = "instructions"
    )]
    system: Option<Walked>,
    tools: Option<Walked>,
    response_format: Option<Loose<ResponseFormat>>,
}

/// OpenAI's `response_format`.
#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: Loose<String>,
}

/// A value of the expected shape, or anything else read as nothing: a
/// strange value in one field must not hide the rest of the metadata.
#[derive(Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Is(T),
    Other(IgnoredAny),
}

impl<T> Loose<T> {
    fn get(&self) -> Option<&T> {
        match self {
            Loose::Is(t) => Some(t),
            Loose::Other(_) => None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GenerationConfig {
    #[serde(rename = "maxOutputTokens", alias = "max_output_tokens")]
    max_output_tokens: Lenient,
    #[serde(rename = "responseMimeType", alias = "response_mime_type")]
    response_mime_type: Option<Loose<String>>,
}

/// A non-negative integer, or nothing when the field holds anything else:
/// a strange value in one field must not hide the rest of the metadata.
#[derive(Default)]
struct Lenient(Option<u64>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lenient, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Lenient, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Lenient, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The prompt text under one field, measured without being copied.
struct Walked(PromptStats);

impl<'de> Deserialize<'de> for Walked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut stats = PromptStats::default();
        Walk {
            stats: &mut stats,
            key: Key::Text,
        }
        .deserialize(d)?;
        Ok(Walked(stats))
    }
}

/// Like [`Walked`], also counting the top-level items as messages.
struct Messages(PromptStats);

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PromptStats;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<PromptStats, A::Error> {
                let mut stats = PromptStats::default();
                loop {
                    let seed = Walk {
                        stats: &mut stats,
                        key: Key::Text,
                    };
                    if a.next_element_seed(seed)?.is_none() {
                        break;
                    }
                    stats.messages += 1;
                }
                Ok(stats)
            }
            fn visit_str<E>(self, v: &str) -> Result<PromptStats, E> {
                let mut stats = PromptStats::default();
                count_text(&mut stats, v);
                stats.messages = 1;
                Ok(stats)
            }
            fn visit_unit<E>(self) -> Result<PromptStats, E> {
                Ok(PromptStats::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<PromptStats, A::Error> {
                let mut stats = PromptStats::default();
                Walk {
                    stats: &mut stats,
                    key: Key::Text,
                }
                .visit_map(a)?;
                stats.messages = 1;
                Ok(stats)
            }
        }
        d.deserialize_any(V).map(Messages)
    }
}

/// What the key above a value says about the strings under it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    /// Text a model reads.
    Text,
    /// Framing (`type`, `role`, ids, MIME types): not prompt text.
    Framing,
    /// Inline binary data (`data`, `image_url`, `inlineData`): an image.
    Data,
}

fn classify_key(k: &str) -> Key {
    match k {
        "type" | "role" | "id" | "tool_call_id" | "tool_use_id" | "media_type" | "mime_type"
        | "mimeType" | "detail" | "cache_control" | "format" | "file_id" | "fileUri"
        | "file_uri" => Key::Framing,
        "data" | "image_url" | "inlineData" | "inline_data" | "image" | "input_audio" => Key::Data,
        _ => Key::Text,
    }
}

fn count_text(stats: &mut PromptStats, s: &str) {
    let bytes = s.as_bytes();
    if bytes.is_ascii() {
        stats.ascii_bytes += bytes.len() as u64;
    } else {
        for c in s.chars() {
            if c.is_ascii() {
                stats.ascii_bytes += 1;
            } else {
                stats.non_ascii_chars += 1;
            }
        }
    }
}

struct Walk<'s> {
    stats: &'s mut PromptStats,
    key: Key,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(classify_key(v))
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        match self.key {
            Key::Text if v.starts_with("data:") => self.stats.images += 1,
            Key::Text => count_text(self.stats, v),
            Key::Data => self.stats.images += 1,
            Key::Framing => {}
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a
            .next_element_seed(Walk {
                stats: &mut *self.stats,
                key: self.key,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut data_counted = false;
        while let Some(key) = a.next_key_seed(KeySeed)? {
            let key = match (self.key, key) {
                // Everything under framing or data stays framing or data.
                (Key::Framing, _) => Key::Framing,
                (Key::Data, _) => Key::Framing,
                (Key::Text, k) => k,
            };
            if key == Key::Data && !data_counted {
                // One image part, however many fields carry its bytes.
                data_counted = true;
                self.stats.images += 1;
                a.next_value::<IgnoredAny>()?;
                continue;
            }
            if key == Key::Data {
                a.next_value::<IgnoredAny>()?;
                continue;
            }
            a.next_value_seed(Walk {
                stats: &mut *self.stats,
                key,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::CharEstimator;

    fn parse(endpoint: Option<Endpoint>, path: &str, body: &str) -> RequestMeta {
        RequestMeta::parse(endpoint, path, body.as_bytes(), &CharEstimator::new())
    }

    fn ep(provider: Provider, format: WireFormat) -> Option<Endpoint> {
        Some(Endpoint { provider, format })
    }

    #[test]
    fn debug_prints_the_model_not_the_prompt() {
        let meta = parse(
            ep(Provider::OpenAi, WireFormat::OpenAiChat),
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"hidden system"},{"role":"user","content":"my secret prompt"}]}"#,
        );
        let printed = format!("{meta:?}");
        assert!(printed.contains("gpt-4o-mini"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(!printed.contains("hidden"), "{printed}");
    }

    #[test]
    fn openai_chat() {
        let m = parse(
            ep(Provider::OpenAi, WireFormat::OpenAiChat),
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},
                "max_completion_tokens":256,"temperature":0.2,
                "messages":[{"role":"system","content":"Be brief."},
                            {"role":"user","content":[{"type":"text","text":"Hello there, how are you?"},
                              {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]}]}"#,
        );
        assert_eq!(m.model(), Some("gpt-4o-mini"));
        assert!(m.is_stream());
        assert_eq!(m.max_output_tokens(), Some(256));
        let s = m.prompt_stats();
        assert_eq!(s.messages, 2);
        assert_eq!(s.images, 1);
        assert_eq!(
            s.ascii_bytes,
            ("Be brief.".len() + "Hello there, how are you?".len()) as u64
        );
        assert_eq!(m.estimated_input_tokens(), 9 + 8 + 1_000);
    }

    #[test]
    fn json_mode_is_read_from_each_format_and_strange_values_hide_nothing() {
        let chat = ep(Provider::OpenAi, WireFormat::OpenAiChat);
        let gemini = ep(Provider::Gemini, WireFormat::GeminiGenerateContent);
        for (endpoint, path, body, json) in [
            (
                chat.clone(),
                "/v1/chat/completions",
                r#"{"model":"m","messages":[],"response_format":{"type":"json_object"}}"#,
                true,
            ),
            (
                chat.clone(),
                "/v1/chat/completions",
                r#"{"model":"m","messages":[],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}}"#,
                true,
            ),
            (
                chat.clone(),
                "/v1/chat/completions",
                r#"{"model":"m","messages":[],"response_format":{"type":"text"}}"#,
                false,
            ),
            (
                chat.clone(),
                "/v1/chat/completions",
                r#"{"model":"m","messages":[],"response_format":"json"}"#,
                false,
            ),
            (
                chat.clone(),
                "/v1/chat/completions",
                r#"{"model":"m","messages":[],"response_format":{"type":7}}"#,
                false,
            ),
            (
                gemini.clone(),
                "/v1beta/models/gemini-2.5-flash:generateContent",
                r#"{"contents":[],"generationConfig":{"responseMimeType":"application/json","maxOutputTokens":9}}"#,
                true,
            ),
            (
                gemini.clone(),
                "/v1beta/models/gemini-2.5-flash:generateContent",
                r#"{"contents":[],"generationConfig":{"responseMimeType":false,"maxOutputTokens":9}}"#,
                false,
            ),
        ] {
            let m = parse(endpoint, path, body);
            assert_eq!(m.wants_json(), json, "{body}");
            // The rest of the metadata survives a strange value.
            assert!(m.model().is_some(), "{body}");
        }
    }

    #[test]
    fn anthropic_messages() {
        let m = parse(
            ep(Provider::Anthropic, WireFormat::AnthropicMessages),
            "/v1/messages",
            r#"{"model":"claude-sonnet-4-5","max_tokens":1024,
                "system":[{"type":"text","text":"You are terse.","cache_control":{"type":"ephemeral"}}],
                "messages":[{"role":"user","content":"Héllo"},
                            {"role":"user","content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBOR"}}]}]}"#,
        );
        assert_eq!(m.model(), Some("claude-sonnet-4-5"));
        assert!(!m.is_stream());
        assert_eq!(m.max_output_tokens(), Some(1024));
        let s = m.prompt_stats();
        assert_eq!(s.messages, 2);
        assert_eq!(s.images, 1);
        assert_eq!(s.non_ascii_chars, 1);
        assert_eq!(s.ascii_bytes, ("You are terse.".len() + 4) as u64);
    }

    #[test]
    fn gemini_model_and_stream_come_from_the_path() {
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"Write a haiku"},{"inlineData":{"mimeType":"image/jpeg","data":"/9j/"}}]}],
                       "systemInstruction":{"parts":[{"text":"Poet"}]},
                       "generationConfig":{"maxOutputTokens":64,"temperature":1}}"#;
        let m = parse(
            ep(Provider::Gemini, WireFormat::GeminiGenerateContent),
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            body,
        );
        assert_eq!(m.model(), Some("gemini-2.5-flash"));
        assert!(m.is_stream());
        assert_eq!(m.max_output_tokens(), Some(64));
        assert_eq!(m.prompt_stats().images, 1);
        assert_eq!(
            m.prompt_stats().ascii_bytes,
            ("Write a haiku".len() + 4) as u64
        );
        let m = parse(
            ep(Provider::Gemini, WireFormat::GeminiGenerateContent),
            "/v1beta/models/gemini-2.5-flash:generateContent",
            body,
        );
        assert!(!m.is_stream());
    }

    #[test]
    fn responses_input_string_and_max_output_tokens() {
        let m = parse(
            ep(Provider::OpenAi, WireFormat::OpenAiResponses),
            "/v1/responses",
            r#"{"model":"o4-mini","input":"Say hi","instructions":"Be kind","max_output_tokens":50}"#,
        );
        assert_eq!(m.max_output_tokens(), Some(50));
        assert_eq!(m.prompt_stats().messages, 1);
        assert_eq!(m.prompt_stats().ascii_bytes, 13);
    }

    #[test]
    fn azure_deployment_is_the_model_when_the_body_has_none() {
        let m = parse(
            ep(Provider::AzureOpenAi, WireFormat::OpenAiChat),
            "/openai/deployments/my-gpt4o/chat/completions",
            r#"{"messages":[]}"#,
        );
        assert_eq!(m.model(), Some("my-gpt4o"));
    }

    #[test]
    fn strange_field_values_do_not_hide_the_rest() {
        let m = parse(
            None,
            "/",
            r#"{"model":"m","max_tokens":"lots","stream":true,"messages":null}"#,
        );
        assert_eq!(m.model(), Some("m"));
        assert_eq!(m.max_output_tokens(), None);
        assert!(m.is_stream());
    }

    #[test]
    fn garbage_gives_empty_metadata() {
        for body in ["", "not json", "[1,2]", "{\"model\":", "null"] {
            let m = parse(None, "/", body);
            assert_eq!(m.model(), None, "{body}");
            assert_eq!(m.estimated_input_tokens(), 0, "{body}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = RequestMeta::parse(None, "/v1/chat/completions", &body, &CharEstimator::new());
        }

        #[test]
        fn never_panics_on_arbitrary_json_shapes(body in "[\\[\\]{}\":,a-z0-9 \\\\]{0,200}") {
            let _ = RequestMeta::parse(None, "/", body.as_bytes(), &CharEstimator::new());
        }
    }
}
