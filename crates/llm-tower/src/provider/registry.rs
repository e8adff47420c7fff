//! Recognising the provider and wire format of a request.

use super::{Endpoint, Provider, WireFormat};

/// Recognises [`Endpoint`]s from requests: the well-known provider hosts, and
/// OpenAI-compatible servers configured by base URL.
#[derive(Clone, Debug, Default)]
pub struct ProviderRegistry {
    compatible: Vec<Compatible>,
}

#[derive(Clone, Debug)]
struct Compatible {
    provider: Provider,
    authority: String,
    path_prefix: String,
}

/// A compatible endpoint's base URL could not be used.
#[derive(Debug)]
pub struct InvalidEndpoint {
    reason: String,
}

impl std::fmt::Display for InvalidEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid provider endpoint: {}", self.reason)
    }
}

impl std::error::Error for InvalidEndpoint {}

impl ProviderRegistry {
    /// A registry that knows the well-known provider hosts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an OpenAI-compatible server, recognised by its base URL
    /// (`http://127.0.0.1:8080/v1`). Requests under that URL are attributed
    /// to [`Provider::Compatible`] with the given name.
    pub fn with_compatible(mut self, name: &str, base_url: &str) -> Result<Self, InvalidEndpoint> {
        let uri: http::Uri = base_url.parse().map_err(|e| InvalidEndpoint {
            reason: format!("{base_url:?} is not a URL: {e}"),
        })?;
        let authority = uri
            .authority()
            .ok_or_else(|| InvalidEndpoint {
                reason: format!("{base_url:?} has no host"),
            })?
            .as_str()
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(InvalidEndpoint {
                reason: "the provider name is empty".into(),
            });
        }
        self.compatible.push(Compatible {
            provider: Provider::Compatible(name.into()),
            authority,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
        });
        Ok(self)
    }

    /// Recognises the destination of a request.
    ///
    /// In order: a well-known provider host (the `Host` header stands in
    /// for a URI without one); a configured compatible server; then, for an
    /// unknown host, the path's wire format and the credentials header
    /// (`anthropic-version`, `x-goog-api-key`, Azure's `api-key`). An unknown
    /// host speaking OpenAI's format is [`Provider::Compatible`], named by
    /// its address (`127.0.0.1:8080`), so its state is kept apart from
    /// OpenAI's. `None` when neither host nor path is recognised.
    pub fn detect<B>(&self, req: &http::Request<B>) -> Option<Endpoint> {
        self.detect_parts(req.uri(), req.headers())
    }

    /// Like [`detect`](Self::detect), from a URI and headers.
    pub fn detect_parts(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Option<Endpoint> {
        let path = uri.path();
        let format = WireFormat::from_path(path);
        let host = uri.host().map(|h| h.to_ascii_lowercase()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_ascii_lowercase())
        });
        if let Some(host) = host.as_deref() {
            if let Some(provider) = well_known_host(host) {
                let format = format.unwrap_or(match provider {
                    Provider::Anthropic => WireFormat::AnthropicMessages,
                    Provider::Gemini => WireFormat::GeminiGenerateContent,
                    _ => WireFormat::OpenAiChat,
                });
                return Some(Endpoint { provider, format });
            }
        }
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .or_else(|| {
                headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_ascii_lowercase)
            });
        if let Some(authority) = authority.as_deref() {
            for c in &self.compatible {
                if c.authority == authority && path_under(path, &c.path_prefix) {
                    return Some(Endpoint {
                        provider: c.provider.clone(),
                        format: format.unwrap_or(WireFormat::OpenAiChat),
                    });
                }
            }
        }
        // Unknown host: the headers still tell who the client meant to call;
        // failing that, an OpenAI-format server is a compatible server known
        // by its address.
        let format = format?;
        let provider = if headers.contains_key("anthropic-version") {
            Provider::Anthropic
        } else if headers.contains_key("x-goog-api-key") {
            Provider::Gemini
        } else if headers.contains_key("api-key") {
            Provider::AzureOpenAi
        } else {
            match format {
                WireFormat::AnthropicMessages => Provider::Anthropic,
                WireFormat::GeminiGenerateContent => Provider::Gemini,
                WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
                    Provider::Compatible(authority.as_deref().unwrap_or("unknown").into())
                }
            }
        };
        Some(Endpoint { provider, format })
    }
}

fn path_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn well_known_host(host: &str) -> Option<Provider> {
    match host {
        "api.openai.com" => Some(Provider::OpenAi),
        "api.anthropic.com" => Some(Provider::Anthropic),
        "generativelanguage.googleapis.com" => Some(Provider::Gemini),
        _ if host.ends_with(".openai.azure.com")
            || host.ends_with(".cognitiveservices.azure.com")
            || host.ends_with(".services.ai.azure.com") =>
        {
            Some(Provider::AzureOpenAi)
        }
        _ => None,
    }
}

impl WireFormat {
    /// Recognises the wire format from a request path.
    pub fn from_path(path: &str) -> Option<WireFormat> {
        if path.ends_with("/chat/completions") {
            Some(WireFormat::OpenAiChat)
        } else if path.ends_with("/responses") {
            Some(WireFormat::OpenAiResponses)
        } else if path.ends_with("/messages") {
            Some(WireFormat::AnthropicMessages)
        } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
            Some(WireFormat::GeminiGenerateContent)
        } else {
            None
        }
    }

    /// The model named in the path, where the format puts it there: Gemini's
    /// `…/models/{model}:generateContent`, Azure's
    /// `…/deployments/{deployment}/chat/completions`.
    pub fn model_from_path(self, path: &str) -> Option<&str> {
        match self {
            WireFormat::GeminiGenerateContent => {
                let rest = &path[path.find("/models/")? + "/models/".len()..];
                let model = &rest[..rest.find(':')?];
                (!model.is_empty()).then_some(model)
            }
            WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
                let rest = &path[path.find("/deployments/")? + "/deployments/".len()..];
                let model = &rest[..rest.find('/')?];
                (!model.is_empty()).then_some(model)
            }
            WireFormat::AnthropicMessages => None,
        }
    }

    /// Whether the path alone says the response streams (Gemini's
    /// `:streamGenerateContent`); `None` when the body decides.
    pub fn stream_from_path(self, path: &str) -> Option<bool> {
        match self {
            WireFormat::GeminiGenerateContent => Some(path.ends_with(":streamGenerateContent")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(
        registry: &ProviderRegistry,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Option<Endpoint> {
        let mut req = http::Request::post(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        registry.detect(&req.body(()).unwrap())
    }

    fn ep(provider: Provider, format: WireFormat) -> Option<Endpoint> {
        Some(Endpoint { provider, format })
    }

    #[test]
    fn well_known_hosts() {
        let r = ProviderRegistry::new();
        assert_eq!(
            detect(&r, "https://api.openai.com/v1/chat/completions", &[]),
            ep(Provider::OpenAi, WireFormat::OpenAiChat)
        );
        assert_eq!(
            detect(&r, "https://API.OpenAI.com:443/v1/responses", &[]),
            ep(Provider::OpenAi, WireFormat::OpenAiResponses)
        );
        assert_eq!(
            detect(&r, "https://api.anthropic.com/v1/messages", &[]),
            ep(Provider::Anthropic, WireFormat::AnthropicMessages)
        );
        assert_eq!(
            detect(
                &r,
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                &[]
            ),
            ep(Provider::Gemini, WireFormat::GeminiGenerateContent)
        );
        assert_eq!(
            detect(
                &r,
                "https://my-resource.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                &[]
            ),
            ep(Provider::AzureOpenAi, WireFormat::OpenAiChat)
        );
        assert_eq!(
            detect(
                &r,
                "https://x.cognitiveservices.azure.com/openai/deployments/d/chat/completions",
                &[]
            ),
            ep(Provider::AzureOpenAi, WireFormat::OpenAiChat)
        );
        // A known host with an unknown path still names the provider.
        assert_eq!(
            detect(&r, "https://api.anthropic.com/v1/complete", &[]),
            ep(Provider::Anthropic, WireFormat::AnthropicMessages)
        );
        // A look-alike host is not the provider.
        assert_eq!(
            detect(&r, "https://api.openai.com.evil.example/v1/models", &[]),
            None
        );
    }

    #[test]
    fn configured_compatible_servers() {
        let r = ProviderRegistry::new()
            .with_compatible("mock", "http://127.0.0.1:8080/v1")
            .unwrap()
            .with_compatible("ollama", "http://localhost:11434/")
            .unwrap();
        let mock = Provider::Compatible("mock".into());
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v1/chat/completions", &[]),
            ep(mock.clone(), WireFormat::OpenAiChat)
        );
        // Another port, or outside the base path, is not that server.
        assert_eq!(
            detect(&r, "http://127.0.0.1:9090/v1/chat/completions", &[]),
            ep(
                Provider::Compatible("127.0.0.1:9090".into()),
                WireFormat::OpenAiChat
            )
        );
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v10/chat/completions", &[]),
            ep(
                Provider::Compatible("127.0.0.1:8080".into()),
                WireFormat::OpenAiChat
            )
        );
        assert_eq!(
            detect(&r, "http://localhost:11434/v1/chat/completions", &[]),
            ep(
                Provider::Compatible("ollama".into()),
                WireFormat::OpenAiChat
            )
        );
        // A server-side request: no authority in the URI, a Host header.
        assert_eq!(
            detect(&r, "/v1/chat/completions", &[("host", "127.0.0.1:8080")]),
            ep(mock, WireFormat::OpenAiChat)
        );
        assert_eq!(
            detect(&r, "/v1/messages", &[("host", "api.anthropic.com")]),
            ep(Provider::Anthropic, WireFormat::AnthropicMessages)
        );
    }

    #[test]
    fn unknown_hosts_are_recognised_by_path_and_headers() {
        let r = ProviderRegistry::new();
        assert_eq!(
            detect(
                &r,
                "http://127.0.0.1:1/v1/messages",
                &[("anthropic-version", "2023-06-01")]
            ),
            ep(Provider::Anthropic, WireFormat::AnthropicMessages)
        );
        assert_eq!(
            detect(
                &r,
                "http://127.0.0.1:1/v1beta/models/g:generateContent",
                &[]
            ),
            ep(Provider::Gemini, WireFormat::GeminiGenerateContent)
        );
        assert_eq!(
            detect(
                &r,
                "http://gw.internal/openai/deployments/d/chat/completions",
                &[("api-key", "k")]
            ),
            ep(Provider::AzureOpenAi, WireFormat::OpenAiChat)
        );
        assert_eq!(detect(&r, "http://127.0.0.1:1/healthz", &[]), None);
    }

    #[test]
    fn bad_compatible_endpoints_are_rejected() {
        for (name, url) in [
            ("mock", "not a url"),
            ("mock", "/v1"),
            ("", "http://127.0.0.1:1"),
        ] {
            let err = ProviderRegistry::new()
                .with_compatible(name, url)
                .unwrap_err();
            assert!(
                err.to_string().starts_with("invalid provider endpoint"),
                "{err}"
            );
        }
    }

    #[test]
    fn models_and_streaming_from_paths() {
        let g = WireFormat::GeminiGenerateContent;
        assert_eq!(
            g.model_from_path("/v1beta/models/gemini-2.5-pro:generateContent"),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            g.stream_from_path("/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
            Some(true)
        );
        assert_eq!(
            g.stream_from_path("/v1beta/models/gemini-2.5-pro:generateContent"),
            Some(false)
        );
        assert_eq!(g.model_from_path("/v1beta/models/:generateContent"), None);
        assert_eq!(g.model_from_path("/v1beta/tunedModels"), None);
        let chat = WireFormat::OpenAiChat;
        assert_eq!(
            chat.model_from_path("/openai/deployments/my-gpt/chat/completions"),
            Some("my-gpt")
        );
        assert_eq!(chat.model_from_path("/v1/chat/completions"), None);
        assert_eq!(chat.stream_from_path("/v1/chat/completions"), None);
        assert_eq!(WireFormat::from_path("/v1/embeddings"), None);
    }

    proptest::proptest! {
        #[test]
        fn path_helpers_never_panic(path in "\\PC{0,60}") {
            for f in [WireFormat::OpenAiChat, WireFormat::OpenAiResponses, WireFormat::AnthropicMessages, WireFormat::GeminiGenerateContent] {
                let _ = f.model_from_path(&path);
                let _ = f.stream_from_path(&path);
            }
            let _ = WireFormat::from_path(&path);
        }
    }
}
