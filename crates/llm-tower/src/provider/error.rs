//! Provider error bodies.

/// An error body as a provider sent it, parsed into the fields that decide
/// what the error means.
///
/// Understands OpenAI (`{"error": {"message", "type", "code", "param"}}`),
/// Anthropic (`{"type": "error", "error": {"type", "message"}}`), Gemini
/// (`{"error": {"code", "message", "status"}}`) and the flat shape of some
/// OpenAI-compatible servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderError {
    error_type: Option<Box<str>>,
    code: Option<Box<str>>,
    status: Option<Box<str>>,
    message: Option<Box<str>>,
}

impl ProviderError {
    /// Parses an error body; `None` when the bytes are not a recognisable
    /// provider error. Never panics, whatever the input.
    pub fn parse(body: &[u8]) -> Option<ProviderError> {
        let _ = body;
        None
    }

    /// OpenAI's `error.type` or Anthropic's `error.type`
    /// (`rate_limit_error`, `overloaded_error`, `invalid_request_error` …).
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// OpenAI's `error.code` (`rate_limit_exceeded`, `insufficient_quota`,
    /// `context_length_exceeded` …), as text even when sent as a number.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Gemini's `error.status` (`RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT` …).
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// The human-readable message.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}
