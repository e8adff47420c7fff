//! How a stream failed: recorded in its
//! [`StreamProgress`](super::StreamProgress), and yielded to the caller by
//! retry's body once the first token has passed.

use std::fmt;

use crate::provider::ProviderError;

/// The provider sent an error inside a successful (`200`) stream, such as
/// Anthropic's `event: error` with an `overloaded_error`.
#[derive(Clone, Debug)]
pub struct StreamError {
    error: ProviderError,
}

impl StreamError {
    /// An error event carrying the given provider error.
    pub fn new(error: ProviderError) -> Self {
        StreamError { error }
    }

    /// The provider's error, as sent in the event.
    pub fn provider_error(&self) -> &ProviderError {
        &self.error
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("provider sent an error inside the stream")?;
        if let Some(t) = self
            .error
            .error_type()
            .or(self.error.code())
            .or(self.error.status())
        {
            write!(f, ": {t}")?;
        }
        if let Some(m) = self.error.message() {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StreamError {}

/// The stream ended without the terminal event its format requires
/// (`data: [DONE]`, `message_stop`, a final `finishReason`): the answer is
/// partial.
#[derive(Clone, Debug, Default)]
pub struct TruncatedStream {
    _priv: (),
}

impl TruncatedStream {
    /// A new truncation error.
    pub fn new() -> Self {
        TruncatedStream { _priv: () }
    }
}

impl fmt::Display for TruncatedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream ended before its terminal event")
    }
}

impl std::error::Error for TruncatedStream {}

/// A stream chunk was not what the format requires (an event whose data is
/// not JSON, say).
#[derive(Clone, Debug)]
pub struct MalformedStream {
    reason: Box<str>,
}

impl MalformedStream {
    /// A malformed-stream error with a short reason.
    pub fn new(reason: impl Into<Box<str>>) -> Self {
        MalformedStream {
            reason: reason.into(),
        }
    }

    /// What was wrong.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for MalformedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed stream: {}", self.reason)
    }
}

impl std::error::Error for MalformedStream {}
