//! Content validation of whole answers.

use serde::de::IgnoredAny;

use super::ContentChecks;
use crate::{
    classify::{ContentProblem, PeekedBody},
    provider::{answer::answer_text, usage::scan_json},
    request::RequestMeta,
    usage::FinishReason,
};

/// The first problem `checks` find in a whole answer read into `body`;
/// `None` for a usable answer, or one too long to have been read whole.
pub(crate) fn problem<B>(
    checks: &ContentChecks,
    meta: Option<&RequestMeta>,
    body: &PeekedBody<B>,
) -> Option<ContentProblem> {
    if !body.is_complete() {
        return None;
    }
    let bytes = body.peeked();
    let format = meta.and_then(RequestMeta::format);
    let finish = scan_json(format, bytes).finish_reason;
    if finish == Some(FinishReason::Length) {
        // Resending would be cut again at the same cap: a fallback's
        // matter, and only when asked for.
        return checks.truncated.then_some(ContentProblem::Truncated);
    }
    let answer = answer_text(format, bytes)?;
    if checks.refusal && (answer.refused || finish == Some(FinishReason::ContentFilter)) {
        return Some(ContentProblem::Refusal);
    }
    let text = answer.text.trim();
    if checks.empty && text.is_empty() && !answer.tool_calls && !answer.refused {
        return Some(ContentProblem::Empty);
    }
    if checks.malformed_json
        && meta.is_some_and(RequestMeta::wants_json)
        && !answer.tool_calls
        && serde_json::from_str::<IgnoredAny>(strip_fence(text)).is_err()
    {
        return Some(ContentProblem::MalformedJson);
    }
    None
}

/// A JSON answer wrapped in a Markdown code fence is still JSON.
fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}
