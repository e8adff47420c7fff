use std::fmt;

use crate::provider::WireFormat;

/// What the single parse of a request body measured of its prompt.
///
/// Counts every piece of text a model reads (messages, system prompt,
/// instructions, tool definitions); images and other inline data are counted
/// separately so their base64 payload does not pass for text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptStats {
    /// Bytes of ASCII text.
    pub ascii_bytes: u64,
    /// Characters of non-ASCII text (each at least one token in practice).
    pub non_ascii_chars: u64,
    /// Messages (or Gemini contents, or responses input items).
    pub messages: u64,
    /// Inline images and other binary parts.
    pub images: u64,
}

/// What a [`TokenEstimator`] is given: the request's format, model, raw
/// body, and the [`PromptStats`] already measured from it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct EstimateInput<'a> {
    /// The wire format, when recognised.
    pub format: Option<WireFormat>,
    /// The model, when named.
    pub model: Option<&'a str>,
    /// The whole request body.
    pub body: &'a [u8],
    /// Measurements from the single parse of the body.
    pub stats: &'a PromptStats,
}

impl<'a> EstimateInput<'a> {
    /// An input for the given stats and body.
    pub fn new(body: &'a [u8], stats: &'a PromptStats) -> Self {
        EstimateInput {
            format: None,
            model: None,
            body,
            stats,
        }
    }
}

/// Estimates the input tokens of a request before it is sent.
///
/// Rate limits and budgets reserve with this estimate and settle with the
/// actual usage afterwards, so an estimate only needs to be close; the
/// default [`CharEstimator`] costs a few nanoseconds. An exact counter (a
/// tokenizer) can implement this trait and read [`EstimateInput::body`].
pub trait TokenEstimator: Send + Sync + 'static {
    /// The estimated number of input tokens.
    fn estimate_input_tokens(&self, input: &EstimateInput<'_>) -> u64;
}

/// The default estimator: about four ASCII characters per token, one token
/// per non-ASCII character, plus fixed overheads per message and per image.
///
/// It errs on the high side for non-English text, which is the safe side
/// for limits and budgets.
#[derive(Clone, Copy)]
pub struct CharEstimator {
    per_message: u64,
    per_image: u64,
}

impl CharEstimator {
    /// The estimator with its default overheads: 4 tokens per message and
    /// 1,000 per image.
    pub const fn new() -> Self {
        CharEstimator {
            per_message: 4,
            per_image: 1_000,
        }
    }

    /// Sets the tokens counted per message for role and framing.
    pub const fn per_message(mut self, tokens: u64) -> Self {
        self.per_message = tokens;
        self
    }

    /// Sets the tokens counted per inline image.
    pub const fn per_image(mut self, tokens: u64) -> Self {
        self.per_image = tokens;
        self
    }
}

impl Default for CharEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CharEstimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CharEstimator")
            .field("per_message", &self.per_message)
            .field("per_image", &self.per_image)
            .finish()
    }
}

impl TokenEstimator for CharEstimator {
    fn estimate_input_tokens(&self, input: &EstimateInput<'_>) -> u64 {
        let s = input.stats;
        s.ascii_bytes.div_ceil(4)
            + s.non_ascii_chars
            + s.messages * self.per_message
            + s.images * self.per_image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_estimator_counts_text_messages_and_images() {
        let stats = PromptStats {
            ascii_bytes: 401,
            non_ascii_chars: 10,
            messages: 2,
            images: 1,
        };
        let est = CharEstimator::new().per_image(500);
        assert_eq!(
            est.estimate_input_tokens(&EstimateInput::new(b"", &stats)),
            101 + 10 + 8 + 500
        );
    }
}
