//! What the crate knows about LLM providers, written once and read by every
//! layer: who a request goes to ([`Provider`], [`WireFormat`],
//! [`ProviderRegistry`]), their response headers ([`headers`]), their error
//! bodies ([`ProviderError`]) and their usage formats ([`usage`]).

use std::sync::Arc;

pub mod answer;
pub mod headers;
pub mod usage;

mod error;

pub use self::error::ProviderError;

/// An LLM provider, as recognised from a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Provider {
    /// OpenAI (`api.openai.com`).
    OpenAi,
    /// Azure OpenAI (`*.openai.azure.com`, `*.cognitiveservices.azure.com`).
    AzureOpenAi,
    /// Anthropic (`api.anthropic.com`).
    Anthropic,
    /// Google Gemini (`generativelanguage.googleapis.com`).
    Gemini,
    /// An OpenAI-compatible server configured by name in a
    /// [`ProviderRegistry`] (vLLM, Ollama, a gateway, the mock provider …).
    Compatible(Arc<str>),
}

impl Provider {
    /// A short stable identifier: `openai`, `azure_openai`, `anthropic`,
    /// `gemini`, or the configured name of a compatible server.
    pub fn name(&self) -> &str {
        match self {
            Provider::OpenAi => "openai",
            Provider::AzureOpenAi => "azure_openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Compatible(name) => name,
        }
    }

    /// The OpenTelemetry GenAI `gen_ai.system` value for this provider.
    pub fn otel_system(&self) -> &str {
        match self {
            Provider::OpenAi => "openai",
            Provider::AzureOpenAi => "az.ai.openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gcp.gemini",
            Provider::Compatible(name) => name,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of a request and its response on the wire.
///
/// One provider may speak several formats (OpenAI has chat completions and
/// responses) and one format is spoken by many providers (every
/// OpenAI-compatible server speaks [`WireFormat::OpenAiChat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireFormat {
    /// OpenAI chat completions (`POST …/chat/completions`).
    OpenAiChat,
    /// OpenAI responses (`POST …/responses`).
    OpenAiResponses,
    /// Anthropic messages (`POST /v1/messages`).
    AnthropicMessages,
    /// Gemini `generateContent` and `streamGenerateContent`.
    GeminiGenerateContent,
}

/// A recognised destination: the provider and the wire format of a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Who serves the request.
    pub provider: Provider,
    /// The request and response format.
    pub format: WireFormat,
}

mod registry;

pub use self::registry::{InvalidEndpoint, ProviderRegistry};
