//! Cross-provider translation: an OpenAI chat completions request answered
//! by Anthropic's messages API, and the other way round, with the caller
//! receiving exactly the format it sent — JSON and streams.
//!
//! Used by the fallback layer when a target speaks another wire format than
//! the caller; usable alone (a gateway that exposes one format in front of
//! several providers).
//!
//! Three pieces, one per direction of travel:
//!
//! - [`request`]: the caller's request body, rewritten in the target's
//!   format for the target's model ([`Target`]).
//! - [`response`]: a whole (non-streaming) answer of the target, rewritten
//!   in the caller's format.
//! - [`stream`]: a streamed answer of the target, event by event, rewritten
//!   into the caller's event sequence ([`StreamTranslator`]).
//!
//! What cannot be carried over is refused with a clear
//! [`TranslateError::Unsupported`] naming it, never dropped silently.

pub mod request;
pub mod response;
pub mod stream;

use std::{borrow::Cow, fmt};

pub use self::stream::StreamTranslator;
use crate::provider::WireFormat;

/// What a translation needs to know about the target that will answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The target's wire format.
    pub format: WireFormat,
    /// The model the target is asked for (replaces the caller's).
    pub model: String,
    /// The output cap sent when the caller set none and the target's format
    /// requires one (Anthropic's `max_tokens`): the target's maximum output.
    pub default_max_tokens: u64,
}

impl Target {
    /// A target speaking `format`, asked for `model`, with a default output
    /// cap of 4096 tokens.
    pub fn new(format: WireFormat, model: impl Into<String>) -> Self {
        Target {
            format,
            model: model.into(),
            default_max_tokens: 4096,
        }
    }

    /// Sets the [`default_max_tokens`](Self::default_max_tokens).
    pub fn default_max_tokens(mut self, tokens: u64) -> Self {
        self.default_max_tokens = tokens;
        self
    }
}

/// Why a body could not be translated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranslateError {
    /// The body uses something the other format cannot express (an audio
    /// part, `n > 1`, a Gemini body …): named, so the caller knows.
    Unsupported {
        /// What, e.g. `"n > 1"`, `"audio input"`, `"openai responses format"`.
        what: Cow<'static, str>,
    },
    /// The body is not a valid request or answer of its format.
    Invalid {
        /// What is wrong, e.g. `"messages is not an array"`.
        reason: Cow<'static, str>,
    },
}

impl TranslateError {
    /// An [`Unsupported`](Self::Unsupported) error.
    pub fn unsupported(what: impl Into<Cow<'static, str>>) -> Self {
        TranslateError::Unsupported { what: what.into() }
    }

    /// An [`Invalid`](Self::Invalid) error.
    pub fn invalid(reason: impl Into<Cow<'static, str>>) -> Self {
        TranslateError::Invalid {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::Unsupported { what } => {
                write!(
                    f,
                    "cannot translate: {what} has no equivalent in the target's format"
                )
            }
            TranslateError::Invalid { reason } => write!(f, "cannot translate: {reason}"),
        }
    }
}

impl std::error::Error for TranslateError {}
