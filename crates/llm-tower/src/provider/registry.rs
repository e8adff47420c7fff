//! Recognising the provider and wire format of a request.

use super::{Endpoint, Provider, WireFormat, headers::names};

/// Recognises [`Endpoint`]s from requests: the well-known provider hosts, and
/// OpenAI-compatible servers configured by base URL.
#[derive(Clone, Debug, Default)]
pub struct ProviderRegistry {
    compatible: Vec<Compatible>,
}

#[derive(Clone, Debug)]
struct Compatible {
    provider: Provider,
    /// Lowercase, without a trailing dot.
    host: String,
    /// `None` for the scheme's default port.
    port: Option<u16>,
    /// Without a trailing slash; empty for the root.
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
    ///
    /// Configured servers take precedence over the well-known hosts (a
    /// gateway on an Azure host is the gateway), and the longest matching
    /// base path wins when several share a host. The host matches case
    /// insensitively; an explicit default port (`:443` for `https`) is the
    /// same as none.
    pub fn with_compatible(mut self, name: &str, base_url: &str) -> Result<Self, InvalidEndpoint> {
        if name.is_empty() {
            return Err(InvalidEndpoint {
                reason: "the provider name is empty".into(),
            });
        }
        let uri: http::Uri = base_url.parse().map_err(|e| InvalidEndpoint {
            reason: format!("{base_url:?} is not a URL: {e}"),
        })?;
        let authority = uri.authority().ok_or_else(|| InvalidEndpoint {
            reason: format!("{base_url:?} has no host"),
        })?;
        let (host, port) = split_authority(authority.as_str(), uri.scheme_str());
        if host.is_empty() {
            return Err(InvalidEndpoint {
                reason: format!("{base_url:?} has no host"),
            });
        }
        self.compatible.push(Compatible {
            provider: Provider::Compatible(name.into()),
            host: host.to_ascii_lowercase(),
            port,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
        });
        Ok(self)
    }

    /// Recognises the destination of a request from its URI (host and path)
    /// and, for requests without a host, from its headers.
    pub fn detect<B>(&self, req: &http::Request<B>) -> Option<Endpoint> {
        self.detect_parts(req.uri(), req.headers())
    }

    /// Like [`detect`](Self::detect), from a URI and headers.
    ///
    /// In order:
    /// 1. a configured compatible server whose host, port and base path
    ///    match (the longest base path wins);
    /// 2. a well-known provider host (`api.openai.com`, `*.openai.azure.com`,
    ///    `api.anthropic.com`, `generativelanguage.googleapis.com` …), with
    ///    the format from the path, or the provider's main format when the
    ///    path names none (`/v1/models`, `/v1/embeddings`);
    /// 3. for any other host (or none): a recognised path, attributed by the
    ///    request's headers (`anthropic-version`, `x-goog-api-key`,
    ///    `api-key`), Azure's `/openai/deployments/` path, or the format.
    ///    An OpenAI-format request with no such hint is
    ///    [`Provider::Compatible`], named by the host's address
    ///    (`127.0.0.1:8080`), so its state is kept apart from OpenAI's.
    ///
    /// The host is the URI's authority, else the `Host` header (as servers
    /// see requests).
    pub fn detect_parts(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Option<Endpoint> {
        let path = clean_path(uri.path());
        let format = WireFormat::from_path(path);
        let authority = match uri.authority() {
            Some(a) => Some(split_authority(a.as_str(), uri.scheme_str())),
            None => headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| split_authority(h.trim(), None)),
        };
        if let Some((host, port)) = authority {
            if let Some(c) = self.compatible_for(host, port, path) {
                return Some(Endpoint {
                    provider: c.provider.clone(),
                    format: format.unwrap_or(WireFormat::OpenAiChat),
                });
            }
            if let Some(provider) = well_known_host(host) {
                let format = format.unwrap_or(match provider {
                    Provider::Anthropic => WireFormat::AnthropicMessages,
                    Provider::Gemini => WireFormat::GeminiGenerateContent,
                    _ => WireFormat::OpenAiChat,
                });
                return Some(Endpoint { provider, format });
            }
        }
        // Unknown host: the path and headers still tell who the client
        // meant to call.
        let format = format?;
        let provider = if headers.contains_key(names::ANTHROPIC_VERSION) {
            Provider::Anthropic
        } else if headers.contains_key(names::X_GOOG_API_KEY) {
            Provider::Gemini
        } else if headers.contains_key(names::API_KEY) || path.starts_with("/openai/deployments/") {
            Provider::AzureOpenAi
        } else {
            match format {
                WireFormat::AnthropicMessages => Provider::Anthropic,
                WireFormat::GeminiGenerateContent => Provider::Gemini,
                // An OpenAI-format server nobody configured: a compatible
                // server known by its address, so its state is kept apart
                // from OpenAI's.
                WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
                    Provider::Compatible(match authority {
                        Some((host, Some(port))) => format!("{host}:{port}").into(),
                        Some((host, None)) => host.into(),
                        None => "unknown".into(),
                    })
                }
            }
        };
        Some(Endpoint { provider, format })
    }

    fn compatible_for(&self, host: &str, port: Option<u16>, path: &str) -> Option<&Compatible> {
        self.compatible
            .iter()
            .filter(|c| {
                c.port == port
                    && c.host.eq_ignore_ascii_case(host)
                    && path_under(path, &c.path_prefix)
            })
            .max_by_key(|c| c.path_prefix.len())
    }
}

/// Splits `host[:port]` (or `[v6]:port`), dropping user info and a
/// trailing dot, and the port when it is the scheme's default. Never
/// allocates: it runs once per request.
fn split_authority<'a>(authority: &'a str, scheme: Option<&str>) -> (&'a str, Option<u16>) {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rfind(':') {
        // `[::1]` alone: the colon is inside the brackets.
        Some(i) if !authority[i..].contains(']') => {
            (&authority[..i], authority[i + 1..].parse::<u16>().ok())
        }
        _ => (authority, None),
    };
    let default = |p: u16| match scheme {
        Some(s) if s.eq_ignore_ascii_case("http") => p == 80,
        Some(s) if s.eq_ignore_ascii_case("https") => p == 443,
        // Host header: the scheme is unknown.
        _ => p == 80 || p == 443,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (host, port.filter(|&p| !default(p)))
}

/// The path without a query or fragment (in case a caller passes them) and
/// without one trailing slash.
fn clean_path(path: &str) -> &str {
    let path = path.find(['?', '#']).map_or(path, |i| &path[..i]);
    path.strip_suffix('/').unwrap_or(path)
}

fn path_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn well_known_host(host: &str) -> Option<Provider> {
    let is = |name: &str| host.eq_ignore_ascii_case(name);
    let under = |domain: &str| {
        let (h, d) = (host.as_bytes(), domain.as_bytes());
        h.len() > d.len() && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
    };
    if is("api.openai.com") || under(".api.openai.com") {
        Some(Provider::OpenAi)
    } else if is("api.anthropic.com") {
        Some(Provider::Anthropic)
    } else if is("generativelanguage.googleapis.com") {
        Some(Provider::Gemini)
    } else if under(".openai.azure.com")
        || under(".cognitiveservices.azure.com")
        || under(".services.ai.azure.com")
    {
        Some(Provider::AzureOpenAi)
    } else {
        None
    }
}

impl WireFormat {
    /// Recognises the wire format from a request path (a query string, if
    /// any, is ignored).
    ///
    /// `…/messages` is Anthropic's, except under `/threads/` (OpenAI's
    /// Assistants API has `/v1/threads/{id}/messages`).
    pub fn from_path(path: &str) -> Option<WireFormat> {
        let path = clean_path(path);
        if path.ends_with("/chat/completions") {
            Some(WireFormat::OpenAiChat)
        } else if path.ends_with("/responses") {
            Some(WireFormat::OpenAiResponses)
        } else if path.ends_with("/messages") && !path.contains("/threads/") {
            Some(WireFormat::AnthropicMessages)
        } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
            Some(WireFormat::GeminiGenerateContent)
        } else {
            None
        }
    }

    /// The model named in the path, where the format puts it there: Gemini's
    /// `…/models/{model}:generateContent` (also Vertex AI's
    /// `…/publishers/google/models/{model}:…` and `…/tunedModels/{model}:…`),
    /// Azure's `…/deployments/{deployment}/chat/completions`.
    pub fn model_from_path(self, path: &str) -> Option<&str> {
        let path = clean_path(path);
        let model = match self {
            WireFormat::GeminiGenerateContent => {
                let last = &path[path.rfind('/')? + 1..];
                &last[..last.find(':')?]
            }
            WireFormat::OpenAiChat | WireFormat::OpenAiResponses => {
                let rest = &path[path.find("/deployments/")? + "/deployments/".len()..];
                &rest[..rest.find('/')?]
            }
            WireFormat::AnthropicMessages => return None,
        };
        (!model.is_empty()).then_some(model)
    }

    /// Whether the path alone says the response streams (Gemini's
    /// `:streamGenerateContent`); `None` when the body decides.
    pub fn stream_from_path(self, path: &str) -> Option<bool> {
        match self {
            WireFormat::GeminiGenerateContent => {
                Some(clean_path(path).ends_with(":streamGenerateContent"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Request, Uri};

    fn endpoint(provider: Provider, format: WireFormat) -> Option<Endpoint> {
        Some(Endpoint { provider, format })
    }

    fn compatible(name: &str) -> Provider {
        Provider::Compatible(name.into())
    }

    fn detect(reg: &ProviderRegistry, uri: &str) -> Option<Endpoint> {
        reg.detect_parts(&uri.parse::<Uri>().unwrap(), &HeaderMap::new())
    }

    fn detect_with(
        reg: &ProviderRegistry,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Option<Endpoint> {
        let mut req = Request::post(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        reg.detect(&req.body(()).unwrap())
    }

    fn mock() -> ProviderRegistry {
        ProviderRegistry::new()
            .with_compatible("mock", "http://127.0.0.1:8080/v1")
            .unwrap()
    }

    use Provider::{Anthropic, AzureOpenAi, Gemini, OpenAi};
    use WireFormat::{AnthropicMessages, GeminiGenerateContent, OpenAiChat, OpenAiResponses};

    #[test]
    fn openai() {
        let r = ProviderRegistry::new();
        assert_eq!(
            detect(&r, "https://api.openai.com/v1/chat/completions"),
            endpoint(OpenAi, OpenAiChat)
        );
        assert_eq!(
            detect(&r, "https://api.openai.com/v1/responses"),
            endpoint(OpenAi, OpenAiResponses)
        );
        assert_eq!(
            detect(&r, "https://API.OpenAI.com:443/v1/chat/completions"),
            endpoint(OpenAi, OpenAiChat)
        );
        assert_eq!(
            detect(&r, "https://api.openai.com./v1/chat/completions"),
            endpoint(OpenAi, OpenAiChat)
        );
        assert_eq!(
            detect(&r, "https://eu.api.openai.com/v1/responses"),
            endpoint(OpenAi, OpenAiResponses)
        );
        // Other endpoints of a known host: the provider's main format.
        assert_eq!(
            detect(&r, "https://api.openai.com/v1/embeddings"),
            endpoint(OpenAi, OpenAiChat)
        );
        // Assistants' messages are not Anthropic's.
        assert_eq!(
            detect(&r, "https://api.openai.com/v1/threads/thread_abc/messages"),
            endpoint(OpenAi, OpenAiChat)
        );
        // Look-alike hosts are not OpenAI.
        assert_eq!(
            detect(&r, "https://api.openai.com.evil.example/v1/embeddings"),
            None
        );
        assert_eq!(detect(&r, "https://notapi.openai.com/v1/embeddings"), None);
    }

    #[test]
    fn azure_openai() {
        let r = ProviderRegistry::new();
        for uri in [
            "https://my-resource.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            "https://My-Resource.OpenAI.Azure.com:443/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            "https://my-resource.cognitiveservices.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview",
            "https://my-project.services.ai.azure.com/openai/deployments/gpt-4o/chat/completions",
        ] {
            assert_eq!(detect(&r, uri), endpoint(AzureOpenAi, OpenAiChat), "{uri}");
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(OpenAiChat.model_from_path(uri.path()), Some("gpt-4o"));
        }
        assert_eq!(
            detect(
                &r,
                "https://my-resource.openai.azure.com/openai/v1/responses?api-version=preview"
            ),
            endpoint(AzureOpenAi, OpenAiResponses)
        );
        // The bare domain is not a resource.
        assert_eq!(detect(&r, "https://openai.azure.com/v1/embeddings"), None);
    }

    #[test]
    fn anthropic() {
        let r = ProviderRegistry::new();
        assert_eq!(
            detect(&r, "https://api.anthropic.com/v1/messages"),
            endpoint(Anthropic, AnthropicMessages)
        );
        assert_eq!(
            detect(&r, "https://api.anthropic.com/v1/messages/"),
            endpoint(Anthropic, AnthropicMessages)
        );
        // Anthropic's OpenAI-compatible endpoint speaks OpenAI's format.
        assert_eq!(
            detect(&r, "https://api.anthropic.com/v1/chat/completions"),
            endpoint(Anthropic, OpenAiChat)
        );
        assert_eq!(
            detect(&r, "https://api.anthropic.com/v1/messages/count_tokens"),
            endpoint(Anthropic, AnthropicMessages)
        );
    }

    #[test]
    fn gemini() {
        let r = ProviderRegistry::new();
        let uri = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
        assert_eq!(detect(&r, uri), endpoint(Gemini, GeminiGenerateContent));
        let path = uri.parse::<Uri>().unwrap().path().to_owned();
        assert_eq!(
            GeminiGenerateContent.model_from_path(&path),
            Some("gemini-2.5-flash")
        );
        assert_eq!(GeminiGenerateContent.stream_from_path(&path), Some(true));
        let uri = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent";
        assert_eq!(detect(&r, uri), endpoint(Gemini, GeminiGenerateContent));
        // Gemini's OpenAI-compatible endpoint.
        let uri = "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions";
        assert_eq!(detect(&r, uri), endpoint(Gemini, OpenAiChat));
    }

    #[test]
    fn compatible_server() {
        let r = mock();
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v1/chat/completions"),
            endpoint(compatible("mock"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v1/responses"),
            endpoint(compatible("mock"), OpenAiResponses)
        );
        // Any path under the base URL belongs to it.
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v1/models"),
            endpoint(compatible("mock"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v1"),
            endpoint(compatible("mock"), OpenAiChat)
        );
        // Not under the base path, another port, another host: not the mock;
        // the path still says OpenAI chat, from a server known by its address.
        for (uri, addr) in [
            (
                "http://127.0.0.1:8080/v10/chat/completions",
                "127.0.0.1:8080",
            ),
            ("http://127.0.0.1:8080/chat/completions", "127.0.0.1:8080"),
            (
                "http://127.0.0.1:8081/v1/chat/completions",
                "127.0.0.1:8081",
            ),
            (
                "http://127.0.0.2:8080/v1/chat/completions",
                "127.0.0.2:8080",
            ),
        ] {
            assert_eq!(
                detect(&r, uri),
                endpoint(compatible(addr), OpenAiChat),
                "{uri}"
            );
        }
        assert_eq!(detect(&r, "http://127.0.0.1:8081/v1/models"), None);
        // Anthropic's format on a compatible server.
        assert_eq!(
            detect(&r, "http://127.0.0.1:8080/v1/messages"),
            endpoint(compatible("mock"), AnthropicMessages)
        );
    }

    #[test]
    fn compatible_base_url_variants() {
        let r = ProviderRegistry::new()
            .with_compatible("vllm", "HTTP://GPU-Box.local:8000/v1/")
            .unwrap()
            .with_compatible("together", "https://api.together.xyz/v1")
            .unwrap()
            .with_compatible("root", "http://localhost:11434")
            .unwrap()
            .with_compatible("v6", "http://[::1]:9000/v1")
            .unwrap();
        assert_eq!(
            detect(&r, "http://gpu-box.local:8000/v1/chat/completions"),
            endpoint(compatible("vllm"), OpenAiChat)
        );
        // Explicit default port on either side.
        assert_eq!(
            detect(&r, "https://api.together.xyz:443/v1/chat/completions"),
            endpoint(compatible("together"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://localhost:11434/api/chat"),
            endpoint(compatible("root"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://localhost:11434/v1/chat/completions"),
            endpoint(compatible("root"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://[::1]:9000/v1/chat/completions"),
            endpoint(compatible("v6"), OpenAiChat)
        );
        let r = ProviderRegistry::new()
            .with_compatible("gw", "https://gw.example:443/v1")
            .unwrap();
        assert_eq!(
            detect(&r, "https://gw.example/v1/chat/completions"),
            endpoint(compatible("gw"), OpenAiChat)
        );
    }

    #[test]
    fn longest_base_path_wins_and_config_beats_well_known_hosts() {
        let r = ProviderRegistry::new()
            .with_compatible("gw", "http://gw.internal/v1")
            .unwrap()
            .with_compatible("gw-groq", "http://gw.internal/v1/groq")
            .unwrap()
            .with_compatible("azure-gw", "https://corp.openai.azure.com/gateway")
            .unwrap();
        assert_eq!(
            detect(&r, "http://gw.internal/v1/groq/chat/completions"),
            endpoint(compatible("gw-groq"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://gw.internal/v1/groqx/chat/completions"),
            endpoint(compatible("gw"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "http://gw.internal/v1/chat/completions"),
            endpoint(compatible("gw"), OpenAiChat)
        );
        assert_eq!(
            detect(&r, "https://corp.openai.azure.com/gateway/chat/completions"),
            endpoint(compatible("azure-gw"), OpenAiChat)
        );
        assert_eq!(
            detect(
                &r,
                "https://corp.openai.azure.com/openai/deployments/d/chat/completions"
            ),
            endpoint(AzureOpenAi, OpenAiChat)
        );
    }

    #[test]
    fn host_header_when_the_uri_has_no_authority() {
        let r = mock();
        let cases = [
            (
                "api.openai.com",
                "/v1/chat/completions",
                endpoint(OpenAi, OpenAiChat),
            ),
            (
                "API.ANTHROPIC.COM:443",
                "/v1/messages",
                endpoint(Anthropic, AnthropicMessages),
            ),
            (
                "generativelanguage.googleapis.com",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                endpoint(Gemini, GeminiGenerateContent),
            ),
            (
                "res.openai.azure.com",
                "/openai/deployments/d/chat/completions?api-version=2024-10-21",
                endpoint(AzureOpenAi, OpenAiChat),
            ),
            (
                "127.0.0.1:8080",
                "/v1/chat/completions",
                endpoint(compatible("mock"), OpenAiChat),
            ),
            (
                "127.0.0.1:8080",
                "/v1/models",
                endpoint(compatible("mock"), OpenAiChat),
            ),
            ("127.0.0.1", "/v1/models", None),
        ];
        for (host, path, want) in cases {
            assert_eq!(
                detect_with(&r, path, &[("host", host)]),
                want,
                "{host} {path}"
            );
        }
        // IPv6 Host header with a port.
        let r = ProviderRegistry::new()
            .with_compatible("v6", "http://[::1]:9000/v1")
            .unwrap();
        assert_eq!(
            detect_with(&r, "/v1/chat/completions", &[("host", "[::1]:9000")]),
            endpoint(compatible("v6"), OpenAiChat)
        );
        // The URI's authority wins over the Host header.
        assert_eq!(
            detect_with(
                &r,
                "https://api.anthropic.com/v1/messages",
                &[("host", "api.openai.com")]
            ),
            endpoint(Anthropic, AnthropicMessages)
        );
    }

    #[test]
    fn unknown_hosts_tell_by_path_and_headers() {
        let r = ProviderRegistry::new();
        let proxy = "http://llm-proxy.internal";
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Option<Endpoint>,
        );
        let cases: &[Case] = &[
            (
                "/v1/chat/completions",
                &[],
                endpoint(compatible("llm-proxy.internal"), OpenAiChat),
            ),
            (
                "/v1/responses",
                &[],
                endpoint(compatible("llm-proxy.internal"), OpenAiResponses),
            ),
            ("/v1/messages", &[], endpoint(Anthropic, AnthropicMessages)),
            (
                "/v1/messages",
                &[("anthropic-version", "2023-06-01")],
                endpoint(Anthropic, AnthropicMessages),
            ),
            (
                "/v1/chat/completions",
                &[("anthropic-version", "2023-06-01")],
                endpoint(Anthropic, OpenAiChat),
            ),
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                &[],
                endpoint(Gemini, GeminiGenerateContent),
            ),
            (
                "/v1beta/openai/chat/completions",
                &[("x-goog-api-key", "k")],
                endpoint(Gemini, OpenAiChat),
            ),
            (
                "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
                &[],
                endpoint(AzureOpenAi, OpenAiChat),
            ),
            (
                "/v1/chat/completions",
                &[("api-key", "k")],
                endpoint(AzureOpenAi, OpenAiChat),
            ),
            ("/v1/models", &[("anthropic-version", "2023-06-01")], None),
            ("/v1/embeddings", &[], None),
            ("/", &[], None),
            ("/v1/threads/t/messages", &[], None),
        ];
        for (path, headers, want) in cases {
            assert_eq!(
                detect_with(&r, &format!("{proxy}{path}"), headers),
                *want,
                "{path} {headers:?}"
            );
            // Same without an authority or Host header, where a compatible
            // server has no address to be named by.
            let anonymous = want.clone().map(|e| match e.provider {
                Provider::Compatible(_) => Endpoint {
                    provider: compatible("unknown"),
                    ..e
                },
                _ => e,
            });
            assert_eq!(
                detect_with(&r, path, headers),
                anonymous,
                "{path} {headers:?}"
            );
        }
    }

    #[test]
    fn invalid_compatible_endpoints() {
        for (name, url) in [
            ("x", "not a url"),
            ("x", "/v1"),
            ("", "http://127.0.0.1:8080/v1"),
            ("x", ""),
        ] {
            let err = ProviderRegistry::new()
                .with_compatible(name, url)
                .unwrap_err();
            assert!(
                err.to_string().starts_with("invalid provider endpoint: "),
                "{err}"
            );
        }
    }

    #[test]
    fn wire_format_from_path() {
        for (path, want) in [
            ("/v1/chat/completions", Some(OpenAiChat)),
            ("/chat/completions", Some(OpenAiChat)),
            ("/v1/chat/completions/", Some(OpenAiChat)),
            ("/v1/chat/completions?foo=bar", Some(OpenAiChat)),
            ("/openai/deployments/d/chat/completions", Some(OpenAiChat)),
            ("/v1/responses", Some(OpenAiResponses)),
            ("/v1/messages", Some(AnthropicMessages)),
            ("/anthropic/v1/messages", Some(AnthropicMessages)),
            ("/v1/threads/thread_1/messages", None),
            (
                "/v1beta/models/gemini-2.5-flash:generateContent",
                Some(GeminiGenerateContent),
            ),
            (
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                Some(GeminiGenerateContent),
            ),
            ("/v1beta/models/gemini-2.5-flash:countTokens", None),
            ("/v1beta/models/gemini-2.5-flash", None),
            ("/v1/completions", None),
            ("/v1/embeddings", None),
            ("/v1/chat/completionsx", None),
            ("", None),
            ("/", None),
        ] {
            assert_eq!(WireFormat::from_path(path), want, "{path}");
        }
    }

    #[test]
    fn model_from_path() {
        for (format, path, want) in [
            (
                GeminiGenerateContent,
                "/v1beta/models/gemini-2.5-flash:generateContent",
                Some("gemini-2.5-flash"),
            ),
            (
                GeminiGenerateContent,
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                Some("gemini-2.5-flash"),
            ),
            (
                GeminiGenerateContent,
                "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:generateContent",
                Some("gemini-2.0-flash-001"),
            ),
            (
                GeminiGenerateContent,
                "/v1beta/tunedModels/my-tuned:generateContent",
                Some("my-tuned"),
            ),
            (
                GeminiGenerateContent,
                "/v1beta/models/:generateContent",
                None,
            ),
            (
                GeminiGenerateContent,
                "/v1beta/models/gemini-2.5-flash",
                None,
            ),
            (GeminiGenerateContent, "", None),
            (
                OpenAiChat,
                "/openai/deployments/gpt-4o/chat/completions",
                Some("gpt-4o"),
            ),
            (
                OpenAiChat,
                "/openai/deployments/my.deploy-1/chat/completions?api-version=2024-10-21",
                Some("my.deploy-1"),
            ),
            (
                OpenAiResponses,
                "/openai/deployments/o3/responses",
                Some("o3"),
            ),
            (OpenAiChat, "/openai/deployments//chat/completions", None),
            (OpenAiChat, "/openai/deployments/gpt-4o", None),
            (OpenAiChat, "/v1/chat/completions", None),
            (AnthropicMessages, "/v1/messages", None),
            (AnthropicMessages, "/v1/deployments/x/messages", None),
        ] {
            assert_eq!(format.model_from_path(path), want, "{format:?} {path}");
        }
    }

    #[test]
    fn stream_from_path() {
        assert_eq!(
            GeminiGenerateContent.stream_from_path("/v1beta/models/m:streamGenerateContent"),
            Some(true)
        );
        assert_eq!(
            GeminiGenerateContent
                .stream_from_path("/v1beta/models/m:streamGenerateContent?alt=sse"),
            Some(true)
        );
        assert_eq!(
            GeminiGenerateContent.stream_from_path("/v1beta/models/m:generateContent"),
            Some(false)
        );
        assert_eq!(OpenAiChat.stream_from_path("/v1/chat/completions"), None);
        assert_eq!(AnthropicMessages.stream_from_path("/v1/messages"), None);
        assert_eq!(OpenAiResponses.stream_from_path("/v1/responses"), None);
    }

    #[test]
    fn split_authority_forms() {
        for (authority, scheme, want) in [
            ("api.openai.com", Some("https"), ("api.openai.com", None)),
            (
                "api.openai.com:443",
                Some("https"),
                ("api.openai.com", None),
            ),
            (
                "api.openai.com:80",
                Some("https"),
                ("api.openai.com", Some(80)),
            ),
            ("api.openai.com:8443", None, ("api.openai.com", Some(8443))),
            ("api.openai.com.:443", None, ("api.openai.com", None)),
            ("user:pw@host:8080", Some("http"), ("host", Some(8080))),
            ("[::1]", None, ("[::1]", None)),
            ("[::1]:9000", None, ("[::1]", Some(9000))),
            ("host:", None, ("host", None)),
            ("host:notaport", None, ("host", None)),
            ("", None, ("", None)),
        ] {
            assert_eq!(split_authority(authority, scheme), want, "{authority}");
        }
    }

    #[test]
    fn odd_host_headers_never_panic() {
        let r = mock();
        for host in [
            "",
            ":",
            "@",
            "[",
            "]:",
            "[::1",
            "a@b@c:1",
            ":::::",
            "é",
            "127.0.0.1:99999",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::HOST,
                HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
            );
            let _ = r.detect_parts(&Uri::from_static("/v1/chat/completions"), &h);
        }
        let mut h = HeaderMap::new();
        h.insert(
            http::header::HOST,
            HeaderValue::from_bytes(b"\xff:8080").unwrap(),
        );
        assert_eq!(
            r.detect_parts(&Uri::from_static("/v1/chat/completions"), &h),
            endpoint(compatible("unknown"), OpenAiChat)
        );
    }

    proptest::proptest! {
        #[test]
        fn paths_never_panic(path in proptest::prelude::any::<String>()) {
            for format in [OpenAiChat, OpenAiResponses, AnthropicMessages, GeminiGenerateContent] {
                let _ = format.model_from_path(&path);
                let _ = format.stream_from_path(&path);
            }
            let _ = WireFormat::from_path(&path);
        }

        #[test]
        fn host_headers_never_panic(
            host in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            path in "/[a-z0-9/:.?=-]{0,40}",
        ) {
            let r = mock();
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&host) {
                h.insert(http::header::HOST, v);
            }
            if let Ok(uri) = path.parse::<Uri>() {
                let _ = r.detect_parts(&uri, &h);
            }
        }
    }
}
