//! The text of a whole answer, read for content validation.

use serde_json::Value;

use super::WireFormat;
use super::usage::infer_json_format;

/// What a non-streaming answer says, as far as content validation cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnswerText {
    /// The text of the answer, its parts joined.
    pub text: String,
    /// The model asked for tools instead of (or besides) answering in text.
    pub tool_calls: bool,
    /// The model refused in so many words (OpenAI's `message.refusal`).
    pub refused: bool,
}

/// Reads the answer of a non-streaming JSON body: OpenAI chat
/// (`choices[0].message`), OpenAI responses (`output[].content[]`),
/// Anthropic (`content[]`) and Gemini (`candidates[0].content.parts[]`).
/// `None` when the body is not such an answer.
///
/// ```
/// use llm_tower::provider::{answer::answer_text, WireFormat};
///
/// let body = br#"{"choices":[{"message":{"role":"assistant","content":"{\"ok\":true}"},"finish_reason":"stop"}]}"#;
/// let answer = answer_text(Some(WireFormat::OpenAiChat), body).unwrap();
/// assert_eq!(answer.text, r#"{"ok":true}"#);
/// ```
pub fn answer_text(format: Option<WireFormat>, body: &[u8]) -> Option<AnswerText> {
    let format = format.or_else(|| infer_json_format(body))?;
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut out = AnswerText::default();
    let texts = |parts: &[Value], key: &str, text_type: Option<&str>| -> String {
        parts
            .iter()
            .filter(|p| text_type.is_none_or(|t| p.get("type").and_then(Value::as_str) == Some(t)))
            .filter_map(|p| p.get(key).and_then(Value::as_str))
            .collect()
    };
    match format {
        WireFormat::OpenAiChat => {
            let message = v.get("choices")?.get(0)?.get("message")?;
            out.text = match message.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => texts(parts, "text", None),
                _ => String::new(),
            };
            out.tool_calls = message
                .get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
                || message.get("function_call").is_some_and(|f| !f.is_null());
            out.refused = message.get("refusal").is_some_and(|r| !r.is_null());
        }
        WireFormat::OpenAiResponses => {
            for item in v.get("output")?.as_array()? {
                match item.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        let content = item.get("content").and_then(Value::as_array);
                        for part in content.into_iter().flatten() {
                            match part.get("type").and_then(Value::as_str) {
                                Some("output_text") => {
                                    out.text.push_str(
                                        part.get("text").and_then(Value::as_str).unwrap_or(""),
                                    );
                                }
                                Some("refusal") => out.refused = true,
                                _ => {}
                            }
                        }
                    }
                    Some("function_call") => out.tool_calls = true,
                    _ => {}
                }
            }
        }
        WireFormat::AnthropicMessages => {
            let content = v.get("content")?.as_array()?;
            out.text = texts(content, "text", Some("text"));
            out.tool_calls = content
                .iter()
                .any(|p| p.get("type").and_then(Value::as_str) == Some("tool_use"));
        }
        WireFormat::GeminiGenerateContent => {
            let parts = v
                .get("candidates")?
                .get(0)?
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array);
            let parts = parts.map(Vec::as_slice).unwrap_or_default();
            out.text = texts(parts, "text", None);
            out.tool_calls = parts.iter().any(|p| p.get("functionCall").is_some());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format() {
        let a = answer_text(
            Some(WireFormat::AnthropicMessages),
            br#"{"type":"message","content":[{"type":"text","text":"Hel"},{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"lo"}],"stop_reason":"tool_use"}"#,
        )
        .unwrap();
        assert_eq!((a.text.as_str(), a.tool_calls), ("Hello", true));
        let g = answer_text(
            None,
            br#"{"candidates":[{"content":{"parts":[{"text":"a"},{"text":"b"}],"role":"model"},"finishReason":"STOP"}]}"#,
        )
        .unwrap();
        assert_eq!(g.text, "ab");
        let o = answer_text(
            Some(WireFormat::OpenAiChat),
            br#"{"choices":[{"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert!(o.refused && o.text.is_empty());
        let r = answer_text(
            Some(WireFormat::OpenAiResponses),
            br#"{"output":[{"type":"reasoning"},{"type":"message","content":[{"type":"output_text","text":"Hi"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.text, "Hi");
        assert_eq!(answer_text(Some(WireFormat::OpenAiChat), b"not json"), None);
        assert_eq!(
            answer_text(Some(WireFormat::OpenAiChat), br#"{"error":{}}"#),
            None
        );
    }
}
