//! An exact input-token counter for OpenAI chat bodies, on tiktoken-rs.

use std::{borrow::Cow, sync::OnceLock};

use serde::Deserialize;
use serde_json::value::RawValue;
use tiktoken_rs::{CoreBPE, tokenizer::Tokenizer};

use super::estimate::{CharEstimator, EstimateInput, TokenEstimator};
use crate::provider::WireFormat;

/// Tokens of framing around every message (`<|start|>{role}…<|end|>`), per
/// OpenAI's cookbook "How to count tokens with tiktoken".
const PER_MESSAGE: u64 = 3;
/// Extra tokens for a message that carries a `name`, per the cookbook.
const PER_NAME: u64 = 1;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`), counted
/// once per request, per the cookbook.
const REPLY_PRIMING: u64 = 3;

/// Counts the input tokens of OpenAI chat completions bodies with OpenAI's
/// own tokenizer (tiktoken, through the `tiktoken-rs` crate), as OpenAI's
/// cookbook "How to count tokens with tiktoken" counts chat prompts.
///
/// Requires the `tiktoken` feature. Plug it in with
/// [`PrepareLayer::estimator`](super::PrepareLayer::estimator):
///
/// ```
/// use llm_tower::request::{PrepareLayer, TiktokenEstimator};
///
/// let prepare = PrepareLayer::new().estimator(TiktokenEstimator::new());
/// ```
///
/// # What is counted
///
/// For a body of the OpenAI chat format
/// ([`WireFormat::OpenAiChat`]):
///
/// - per message, 3 tokens of framing, plus the tokens of its `role`, its
///   `content` (a string, or the `text` of each text part of an array), its
///   `refusal`, and its `name` (plus 1 token when a name is given);
/// - 3 tokens once, for the priming of the reply;
/// - each image, audio or file part of a content array at a fixed count
///   ([`per_image`](Self::per_image), 1,000 by default, as for
///   [`CharEstimator`]): the real count depends on the image's size and
///   detail, which the body does not always say;
/// - an approximation for what the cookbook does not cover: the tool
///   definitions (`tools`, and the older `functions`) as the tokens of their
///   JSON text, and the tool calls of assistant messages as the tokens of
///   their function names and arguments. OpenAI renders both in a format of
///   its own, so these counts are close, not exact.
///
/// Text is encoded as plain text: special-token markup in a prompt (such as
/// `<|endoftext|>`) counts as the ordinary tokens of its characters, never
/// as one special token.
///
/// # The encoding
///
/// The encoding follows the model, by tiktoken-rs's own model table:
/// `o200k_base` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series,
/// `cl100k_base` for gpt-4 and gpt-3.5-turbo, and so on. A model the table
/// does not know, or no model at all, uses `o200k_base`, the encoding of
/// OpenAI's current models; a model of another vendor behind an
/// OpenAI-compatible server, or an Azure deployment with a name of its own,
/// is then counted approximately.
///
/// Each encoding is built once per process, the first time a request needs
/// it, and shared by every estimator (building one takes a noticeable
/// fraction of a second; [`preload`](Self::preload) does it ahead of the
/// first request).
///
/// # Fallback
///
/// tiktoken is OpenAI's tokenizer: a body of another wire format (Anthropic,
/// Gemini, OpenAI responses), of an unrecognised endpoint, or one that does
/// not parse as a chat completions request is estimated by the fallback
/// [`CharEstimator`] instead (see [`fallback`](Self::fallback)).
#[derive(Clone, Copy, Debug)]
pub struct TiktokenEstimator {
    per_image: u64,
    fallback: CharEstimator,
}

impl TiktokenEstimator {
    /// The estimator with 1,000 tokens per image and the default
    /// [`CharEstimator`] as its fallback.
    pub const fn new() -> Self {
        TiktokenEstimator {
            per_image: 1_000,
            fallback: CharEstimator::new(),
        }
    }

    /// Sets the tokens counted per image, audio or file part of a chat
    /// message. It does not change the fallback's count (set that with
    /// [`fallback`](Self::fallback)).
    pub const fn per_image(mut self, tokens: u64) -> Self {
        self.per_image = tokens;
        self
    }

    /// Sets the estimator used for bodies tiktoken does not count (other
    /// wire formats, bodies that do not parse).
    pub const fn fallback(mut self, fallback: CharEstimator) -> Self {
        self.fallback = fallback;
        self
    }

    /// Builds the encoding of `model` now rather than on the first request
    /// that needs it. Returns whether the encoding is available (it always
    /// is, unless tiktoken-rs failed to build its embedded table, in which
    /// case requests for that model are estimated by the fallback).
    pub fn preload(model: Option<&str>) -> bool {
        encoding(tokenizer_for(model)).is_some()
    }

    /// The tokens of an OpenAI chat completions body, or `None` when the
    /// body does not parse as one.
    fn count_chat(&self, model: Option<&str>, body: &[u8]) -> Option<u64> {
        let chat: ChatBody<'_> = serde_json::from_slice(body).ok()?;
        let bpe = encoding(tokenizer_for(model))?;
        let count = |text: &str| bpe.count_ordinary(text) as u64;
        let mut total = REPLY_PRIMING;
        for message in &chat.messages {
            total = total.saturating_add(self.count_message(message, &count));
        }
        for defs in [chat.tools, chat.functions].into_iter().flatten() {
            total = total.saturating_add(count(defs.get()));
        }
        Some(total)
    }

    fn count_message(&self, message: &ChatMessage<'_>, count: &impl Fn(&str) -> u64) -> u64 {
        let mut total = PER_MESSAGE;
        let mut add = |n: u64| total = total.saturating_add(n);
        if let Some(role) = &message.role {
            add(count(role));
        }
        if let Some(name) = &message.name {
            add(count(name).saturating_add(PER_NAME));
        }
        if let Some(refusal) = &message.refusal {
            add(count(refusal));
        }
        match &message.content {
            None => {}
            Some(Content::Text(text)) => add(count(text)),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    add(match part.kind.as_deref() {
                        Some("text") => part.text.as_deref().map_or(0, count),
                        Some("refusal") => part.refusal.as_deref().map_or(0, count),
                        _ => self.per_image,
                    });
                }
            }
        }
        let calls = message.tool_calls.iter().flatten();
        let calls = calls.filter_map(|c| c.function.as_ref());
        for call in calls.chain(&message.function_call) {
            for text in [&call.name, &call.arguments].into_iter().flatten() {
                add(count(text));
            }
        }
        total
    }
}

impl Default for TiktokenEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenEstimator for TiktokenEstimator {
    fn estimate_input_tokens(&self, input: &EstimateInput<'_>) -> u64 {
        let counted = match input.format {
            Some(WireFormat::OpenAiChat) => self.count_chat(input.model, input.body),
            _ => None,
        };
        counted.unwrap_or_else(|| self.fallback.estimate_input_tokens(input))
    }
}

/// The tokenizer of `model` by tiktoken-rs's table, `o200k_base` when the
/// table does not know it.
fn tokenizer_for(model: Option<&str>) -> Tokenizer {
    model
        .and_then(tiktoken_rs::tokenizer::get_tokenizer)
        .unwrap_or(Tokenizer::O200kBase)
}

/// The encoding of `tokenizer`, built on first use and kept for the
/// process. `None` if tiktoken-rs could not build it.
fn encoding(tokenizer: Tokenizer) -> Option<&'static CoreBPE> {
    type Cell = OnceLock<Option<CoreBPE>>;
    static O200K_BASE: Cell = OnceLock::new();
    static O200K_HARMONY: Cell = OnceLock::new();
    static CL100K_BASE: Cell = OnceLock::new();
    static P50K_BASE: Cell = OnceLock::new();
    static P50K_EDIT: Cell = OnceLock::new();
    static R50K_BASE: Cell = OnceLock::new();
    let (cell, build): (&'static Cell, fn() -> Option<CoreBPE>) = match tokenizer {
        Tokenizer::O200kBase => (&O200K_BASE, || tiktoken_rs::o200k_base().ok()),
        Tokenizer::O200kHarmony => (&O200K_HARMONY, || tiktoken_rs::o200k_harmony().ok()),
        Tokenizer::Cl100kBase => (&CL100K_BASE, || tiktoken_rs::cl100k_base().ok()),
        Tokenizer::P50kBase => (&P50K_BASE, || tiktoken_rs::p50k_base().ok()),
        Tokenizer::P50kEdit => (&P50K_EDIT, || tiktoken_rs::p50k_edit().ok()),
        Tokenizer::R50kBase | Tokenizer::Gpt2 => (&R50K_BASE, || tiktoken_rs::r50k_base().ok()),
    };
    cell.get_or_init(build).as_ref()
}

/// The fields of a chat completions body that hold prompt text; the rest
/// is skipped.
#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionCall<'a>>,
}

/// A message's content: a string, or an array of parts.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use http::Request;
    use tower::ServiceExt;
    use tower_layer::Layer;
    use tower_test::mock;

    use super::*;
    use crate::{
        provider::{Endpoint, Provider},
        request::{PrepareLayer, ReplayBody, RequestMeta},
    };

    fn chat() -> Option<Endpoint> {
        Some(Endpoint {
            provider: Provider::OpenAi,
            format: WireFormat::OpenAiChat,
        })
    }

    fn estimate(endpoint: Option<Endpoint>, body: &str) -> u64 {
        RequestMeta::parse(
            endpoint,
            "/v1/chat/completions",
            body.as_bytes(),
            &TiktokenEstimator::new(),
        )
        .estimated_input_tokens()
    }

    /// The count tiktoken-rs itself gives for `text`, by another path than
    /// the estimator's.
    fn tokens(bpe: &CoreBPE, text: &str) -> u64 {
        bpe.encode_with_special_tokens(text).len() as u64
    }

    fn o200k() -> &'static CoreBPE {
        tiktoken_rs::o200k_base_singleton()
    }

    fn cl100k() -> &'static CoreBPE {
        tiktoken_rs::cl100k_base_singleton()
    }

    /// The example of OpenAI's cookbook "How to count tokens with
    /// tiktoken".
    const COOKBOOK_MESSAGES: &str = r#"[
        {"role":"system","content":"You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role":"system","name":"example_user","content":"New synergies will help drive top-line growth."},
        {"role":"system","name":"example_assistant","content":"Things working well together will increase revenue."},
        {"role":"system","name":"example_user","content":"Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
        {"role":"system","name":"example_assistant","content":"Let's talk later when we're less busy about how to do better."},
        {"role":"user","content":"This late pivot means we don't have time to boil the ocean for the client deliverable."}
    ]"#;

    #[test]
    fn tiktoken_counts_the_cookbook_example_as_documented() {
        // The cookbook documents 129 prompt tokens for gpt-3.5-turbo and
        // gpt-4 (cl100k_base) and 124 for gpt-4o (o200k_base), each
        // checked there against the usage the API reported.
        for (model, documented) in [
            ("gpt-4-0613", 129),
            ("gpt-3.5-turbo", 129),
            ("gpt-4o", 124),
            ("gpt-4o-mini", 124),
        ] {
            let body = format!(r#"{{"model":"{model}","messages":{COOKBOOK_MESSAGES}}}"#);
            assert_eq!(estimate(chat(), &body), documented, "{model}");

            // tiktoken-rs's own version of the cookbook's count agrees.
            let messages: Vec<serde_json::Value> =
                serde_json::from_str(COOKBOOK_MESSAGES).expect("valid test JSON");
            let messages: Vec<_> = messages
                .iter()
                .map(|m| {
                    let field = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    tiktoken_rs::ChatCompletionRequestMessage {
                        role: field("role").unwrap_or_default(),
                        name: field("name"),
                        content: field("content"),
                        ..Default::default()
                    }
                })
                .collect();
            let theirs =
                tiktoken_rs::num_tokens_from_messages(model, &messages).expect("chat model");
            assert_eq!(theirs as u64, documented, "{model}");
        }
    }

    #[test]
    fn tiktoken_counts_strings_exactly() {
        // Hard-coded counts of o200k_base and cl100k_base.
        let bpe = o200k();
        assert_eq!(tokens(bpe, "hello world"), 2);
        assert_eq!(tokens(cl100k(), "hello world"), 2);
        assert_eq!(tokens(cl100k(), "tiktoken is great!"), 6);

        let text = "Hello there, how are you? Ça va très bien, merci!";
        let body =
            format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{text}"}}]}}"#);
        assert_eq!(
            estimate(chat(), &body),
            PER_MESSAGE + tokens(bpe, "user") + tokens(bpe, text) + REPLY_PRIMING
        );
        // No messages: only the reply priming.
        assert_eq!(estimate(chat(), r#"{"model":"gpt-4o","messages":[]}"#), 3);
    }

    #[test]
    fn tiktoken_counts_text_parts_names_refusals_and_images() {
        let bpe = o200k();
        let body = r#"{"model":"gpt-4.1","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","name":"ada","content":[
                {"type":"text","text":"What is in this picture?"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}},
                {"type":"text","text":"And \"this\" one?\n"},
                {"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]},
            {"role":"assistant","content":null,"refusal":"I can't."}]}"#;
        let expected = REPLY_PRIMING
            + (PER_MESSAGE + tokens(bpe, "system") + tokens(bpe, "Be brief."))
            + (PER_MESSAGE
                + tokens(bpe, "user")
                + tokens(bpe, "ada")
                + PER_NAME
                + tokens(bpe, "What is in this picture?")
                + tokens(bpe, "And \"this\" one?\n")
                + 2 * 1_000)
            + (PER_MESSAGE + tokens(bpe, "assistant") + tokens(bpe, "I can't."));
        assert_eq!(estimate(chat(), body), expected);

        let est = TiktokenEstimator::new().per_image(85);
        let meta = RequestMeta::parse(chat(), "/v1/chat/completions", body.as_bytes(), &est);
        assert_eq!(meta.estimated_input_tokens(), expected - 2 * 1_000 + 2 * 85);
    }

    #[test]
    fn tiktoken_counts_tools_and_tool_calls_as_their_text() {
        let bpe = o200k();
        let tools = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]"#;
        let body = format!(
            r#"{{"model":"gpt-5","tools":{tools},"messages":[
                {{"role":"user","content":"Weather in Paris?"}},
                {{"role":"assistant","content":null,"tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},
                {{"role":"tool","tool_call_id":"call_1","content":"18°C, sunny"}}]}}"#
        );
        let expected = REPLY_PRIMING
            + tokens(bpe, tools)
            + (PER_MESSAGE + tokens(bpe, "user") + tokens(bpe, "Weather in Paris?"))
            + (PER_MESSAGE
                + tokens(bpe, "assistant")
                + tokens(bpe, "get_weather")
                + tokens(bpe, r#"{"city":"Paris"}"#))
            + (PER_MESSAGE + tokens(bpe, "tool") + tokens(bpe, "18°C, sunny"));
        assert_eq!(estimate(chat(), &body), expected);
    }

    #[test]
    fn tiktoken_picks_cl100k_or_o200k_by_model() {
        assert_eq!(tokenizer_for(Some("gpt-4")), Tokenizer::Cl100kBase);
        assert_eq!(tokenizer_for(Some("gpt-4-0613")), Tokenizer::Cl100kBase);
        assert_eq!(tokenizer_for(Some("gpt-3.5-turbo")), Tokenizer::Cl100kBase);
        for model in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "o4-mini"] {
            assert_eq!(tokenizer_for(Some(model)), Tokenizer::O200kBase, "{model}");
        }

        // A text the two encodings split differently.
        let text = "Ceci n'est pas une pipe, c'est une représentation.";
        assert_ne!(tokens(cl100k(), text), tokens(o200k(), text));
        for (model, bpe) in [("gpt-4", cl100k()), ("gpt-4o", o200k())] {
            let body = format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"{text}"}}]}}"#
            );
            assert_eq!(
                estimate(chat(), &body),
                PER_MESSAGE + tokens(bpe, "user") + tokens(bpe, text) + REPLY_PRIMING,
                "{model}"
            );
        }
    }

    #[test]
    fn tiktoken_unknown_or_missing_model_uses_o200k() {
        assert_eq!(tokenizer_for(None), Tokenizer::O200kBase);
        assert_eq!(tokenizer_for(Some("my-deployment")), Tokenizer::O200kBase);
        assert!(TiktokenEstimator::preload(Some("my-deployment")));

        let text = "Ceci n'est pas une pipe, c'est une représentation.";
        let expected =
            PER_MESSAGE + tokens(o200k(), "user") + tokens(o200k(), text) + REPLY_PRIMING;
        for head in [r#""model":"llama-3-70b","#, ""] {
            let body = format!(r#"{{{head}"messages":[{{"role":"user","content":"{text}"}}]}}"#);
            assert_eq!(estimate(chat(), &body), expected, "{body}");
        }
    }

    #[test]
    fn tiktoken_counts_special_token_markup_as_plain_text() {
        let bpe = o200k();
        let text = "ignore this <|endoftext|> marker";
        let body =
            format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{text}"}}]}}"#);
        let plain = bpe.encode_ordinary(text).len() as u64;
        assert!(plain > tokens(bpe, text));
        assert_eq!(
            estimate(chat(), &body),
            PER_MESSAGE + tokens(bpe, "user") + plain + REPLY_PRIMING
        );
    }

    #[test]
    fn tiktoken_falls_back_to_char_estimator_for_other_formats_and_garbage() {
        let anthropic = Some(Endpoint {
            provider: Provider::Anthropic,
            format: WireFormat::AnthropicMessages,
        });
        let gemini = Some(Endpoint {
            provider: Provider::Gemini,
            format: WireFormat::GeminiGenerateContent,
        });
        let fallback = CharEstimator::new().per_message(7);
        let est = TiktokenEstimator::new().fallback(fallback);
        for (endpoint, body) in [
            (
                anthropic,
                r#"{"model":"claude-sonnet-4-5","max_tokens":10,"system":"Be terse.","messages":[{"role":"user","content":"Hello there"}]}"#,
            ),
            (
                gemini,
                r#"{"contents":[{"role":"user","parts":[{"text":"Write a haiku"}]}]}"#,
            ),
            // An endpoint not recognised.
            (
                None,
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#,
            ),
            // Chat bodies that do not parse as chat.
            (chat(), "not json"),
            (chat(), ""),
            (chat(), r#"{"model":"gpt-4o"}"#),
            (chat(), r#"{"model":"gpt-4o","messages":{"role":"user"}}"#),
            (
                chat(),
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":42}]}"#,
            ),
            (
                chat(),
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}"#,
            ),
        ] {
            let tik = RequestMeta::parse(endpoint.clone(), "/", body.as_bytes(), &est);
            let chars = RequestMeta::parse(endpoint, "/", body.as_bytes(), &fallback);
            assert_eq!(
                tik.estimated_input_tokens(),
                chars.estimated_input_tokens(),
                "{body}"
            );
        }
        // The defaults are the defaults of `CharEstimator`.
        let body =
            r#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"Hello there"}]}"#;
        assert_eq!(
            RequestMeta::parse(None, "/", body.as_bytes(), &TiktokenEstimator::default())
                .estimated_input_tokens(),
            RequestMeta::parse(None, "/", body.as_bytes(), &CharEstimator::new())
                .estimated_input_tokens(),
        );
    }

    proptest::proptest! {
        #[test]
        fn tiktoken_never_panics_on_arbitrary_json_shapes(body in "[\\[\\]{}\":,a-z0-9 \\\\]{0,200}") {
            let _ = RequestMeta::parse(chat(), "/v1/chat/completions", body.as_bytes(), &TiktokenEstimator::new());
        }
    }

    #[tokio::test]
    async fn tiktoken_estimator_in_prepare_layer_fills_request_meta() {
        let body = format!(r#"{{"model":"gpt-4-0613","messages":{COOKBOOK_MESSAGES}}}"#);
        let (svc, mut handle) = mock::pair::<Request<ReplayBody>, &'static str>();
        let svc = PrepareLayer::new()
            .estimator(TiktokenEstimator::new())
            .layer(svc);
        let call = tokio::spawn(
            svc.oneshot(
                Request::post("https://api.openai.com/v1/chat/completions")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .expect("valid request"),
            ),
        );
        let (req, send) = handle.next_request().await.expect("a request");
        let meta = RequestMeta::get(&req).expect("prepared");
        assert_eq!(meta.format(), Some(WireFormat::OpenAiChat));
        assert_eq!(meta.estimated_input_tokens(), 129);
        send.send_response("ok");
        assert_eq!(call.await.expect("joined").expect("ok"), "ok");
    }
}
