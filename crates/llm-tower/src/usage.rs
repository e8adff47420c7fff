//! Token usage and finish reasons, normalised across providers.
//!
//! Providers count tokens differently: OpenAI's `prompt_tokens` include cached
//! tokens, Anthropic's `input_tokens` exclude cache reads and cache writes.
//! [`Usage`] always holds the *total* input, with the cached and cache-write
//! parts as subsets, so cost and limits are computed one way everywhere.

/// Tokens used by one call.
///
/// `input_tokens` is the total number of input tokens, including
/// `cached_input_tokens` (read from the provider's prompt cache) and
/// `cache_write_tokens` (written to it). `output_tokens` includes
/// `reasoning_tokens`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// Total input (prompt) tokens, cached and cache-write tokens included.
    pub input_tokens: u64,
    /// Output (completion) tokens, reasoning tokens included.
    pub output_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// The part of `input_tokens` written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// The part of `output_tokens` spent on hidden reasoning.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Usage with the given input and output tokens and nothing else.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// Input plus output tokens.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Input tokens billed at the full input price: neither cached nor
    /// written to the cache.
    pub const fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens)
            .saturating_sub(self.cache_write_tokens)
    }
}

/// Why the model stopped producing output, normalised across providers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinishReason {
    /// A natural end or a stop sequence (OpenAI `stop`, Anthropic `end_turn`
    /// and `stop_sequence`, Gemini `STOP`).
    Stop,
    /// The output-token cap was reached (OpenAI `length`, Anthropic
    /// `max_tokens`, Gemini `MAX_TOKENS`): the answer is truncated.
    Length,
    /// The model asked for a tool (OpenAI `tool_calls`/`function_call`,
    /// Anthropic `tool_use`).
    ToolCalls,
    /// Output was withheld by a safety system (OpenAI `content_filter`,
    /// Anthropic `refusal`, Gemini `SAFETY`, `RECITATION`, `BLOCKLIST`,
    /// `PROHIBITED_CONTENT`, `SPII`).
    ContentFilter,
    /// Any other reason, verbatim.
    Other(Box<str>),
}

impl FinishReason {
    /// Maps a provider's finish or stop reason onto the normalised set.
    ///
    /// Recognises the spellings of OpenAI, Anthropic and Gemini; anything
    /// else is kept verbatim in [`FinishReason::Other`].
    pub fn from_provider(raw: &str) -> Self {
        match raw {
            "stop" | "end_turn" | "stop_sequence" | "STOP" | "completed" => FinishReason::Stop,
            "length" | "max_tokens" | "MAX_TOKENS" | "max_output_tokens" => FinishReason::Length,
            "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
            "content_filter" | "refusal" | "SAFETY" | "RECITATION" | "BLOCKLIST"
            | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.into()),
        }
    }

    /// `true` when the output was cut by the token cap.
    pub fn is_truncated(&self) -> bool {
        matches!(self, FinishReason::Length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_of_every_provider() {
        for (raw, want) in [
            ("stop", FinishReason::Stop),
            ("end_turn", FinishReason::Stop),
            ("STOP", FinishReason::Stop),
            ("length", FinishReason::Length),
            ("max_tokens", FinishReason::Length),
            ("MAX_TOKENS", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("tool_calls", FinishReason::ToolCalls),
            ("SAFETY", FinishReason::ContentFilter),
            ("refusal", FinishReason::ContentFilter),
            ("content_filter", FinishReason::ContentFilter),
        ] {
            assert_eq!(FinishReason::from_provider(raw), want, "{raw}");
        }
        assert_eq!(
            FinishReason::from_provider("pause_turn"),
            FinishReason::Other("pause_turn".into())
        );
    }

    #[test]
    fn uncached_input_never_underflows() {
        let u = Usage {
            input_tokens: 10,
            cached_input_tokens: 8,
            cache_write_tokens: 5,
            ..Usage::default()
        };
        assert_eq!(u.uncached_input_tokens(), 0);
        assert_eq!(Usage::new(3, 4).total_tokens(), 7);
    }
}
