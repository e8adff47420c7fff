//! [`Target`]: a model (and optionally another provider's endpoint) a call
//! may move to, and what it can serve.

use std::{fmt, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::{
    provider::{Provider, WireFormat},
    request::RequestMeta,
};

/// A target of a [`FallbackLayer`](super::FallbackLayer): the model to ask,
/// where, with which credentials, and what it can serve.
///
/// ```
/// use llm_tower::{fallback::Target, provider::{Provider, WireFormat}};
///
/// let claude = Target::new("claude", Provider::Anthropic, WireFormat::AnthropicMessages)
///     .model("claude-haiku-4-5")
///     .endpoint("https://api.anthropic.com/v1/messages".parse().unwrap())
///     .header("x-api-key", "sk-ant-…")
///     .context_window(200_000)
///     .max_output(8_192);
/// assert_eq!(claude.name(), "claude");
/// ```
#[derive(Clone)]
pub struct Target {
    pub(crate) name: String,
    pub(crate) provider: Provider,
    pub(crate) format: WireFormat,
    pub(crate) model: Option<String>,
    pub(crate) endpoint: Option<Uri>,
    pub(crate) headers: HeaderMap,
    pub(crate) context_window: Option<u64>,
    pub(crate) max_output: Option<u64>,
    pub(crate) tools: bool,
    pub(crate) images: bool,
    pub(crate) json_mode: bool,
    pub(crate) available: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Target {
    /// A target named `name` (in events and errors), served by `provider`
    /// in `format`. Until told otherwise it keeps the caller's model and
    /// URL, and serves any request.
    pub fn new(name: impl Into<String>, provider: Provider, format: WireFormat) -> Self {
        Target {
            name: name.into(),
            provider,
            format,
            model: None,
            endpoint: None,
            headers: HeaderMap::new(),
            context_window: None,
            max_output: None,
            tools: true,
            images: true,
            json_mode: true,
            available: None,
        }
    }

    /// Whether the target can take a call now — its breaker not open, its
    /// rate limiter not refusing —, asked before a hedge is sent to it: a
    /// hedge is never started to a target that says no (the call is not
    /// hedged). Not asked for ordinary moves, which its stack judges.
    ///
    /// ```
    /// # #[cfg(feature = "circuit-breaker")] {
    /// use llm_tower::{
    ///     circuit_breaker::{BreakerKey, BreakerState, CircuitBreakerLayer},
    ///     fallback::Target,
    ///     provider::{Provider, WireFormat},
    /// };
    ///
    /// let breaker = CircuitBreakerLayer::default();
    /// let handle = breaker.handle();
    /// let key = BreakerKey::new(Some(Provider::Anthropic), Some("claude-haiku-4-5".into()));
    /// let claude = Target::new("claude", Provider::Anthropic, WireFormat::AnthropicMessages)
    ///     .available(move || handle.state(&key) != BreakerState::Open);
    /// # let _ = claude; }
    /// ```
    pub fn available(mut self, f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.available = Some(Arc::new(f));
        self
    }

    /// Asks the [`available`](Self::available) check, if any.
    pub(crate) fn is_available(&self) -> bool {
        self.available.as_ref().is_none_or(|f| f())
    }

    /// The model asked for, replacing the caller's in the body.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The full URL of the target's endpoint (`https://api.anthropic.com/v1/messages`),
    /// replacing the caller's.
    pub fn endpoint(mut self, endpoint: Uri) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// A header set on the request sent to this target (credentials,
    /// `anthropic-version` …), replacing any the caller sent under that
    /// name; values are marked sensitive. When a target sets any credential
    /// header, the caller's credential headers are all removed.
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not a valid header name or value.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("a valid header name");
        let mut value = HeaderValue::from_str(value).expect("a valid header value");
        value.set_sensitive(true);
        self.headers.insert(name, value);
        self
    }

    /// The most input and output tokens together the model takes.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = Some(tokens);
        self
    }

    /// The most output tokens the model writes; also the cap sent when a
    /// translated request needs one and the caller set none.
    pub fn max_output(mut self, tokens: u64) -> Self {
        self.max_output = Some(tokens);
        self
    }

    /// Whether the target serves requests with tools (yes by default).
    pub fn tools(mut self, yes: bool) -> Self {
        self.tools = yes;
        self
    }

    /// Whether the target serves requests with images (yes by default).
    pub fn images(mut self, yes: bool) -> Self {
        self.images = yes;
        self
    }

    /// Whether the target serves JSON mode (yes by default).
    pub fn json_mode(mut self, yes: bool) -> Self {
        self.json_mode = yes;
        self
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target's wire format.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Why this target cannot serve the call described by `meta` (and
    /// whether its body has tools), if it cannot.
    pub(crate) fn cannot_serve(&self, meta: &RequestMeta, has_tools: bool) -> Option<String> {
        let input = meta.estimated_input_tokens();
        if let Some(window) = self.context_window {
            let output = meta.max_output_tokens().unwrap_or(0);
            if input.saturating_add(output) > window {
                return Some(format!(
                    "about {input} input tokens and {output} output tokens exceed its context window of {window}"
                ));
            }
        }
        if let (Some(max), Some(asked)) = (self.max_output, meta.max_output_tokens())
            && asked > max
        {
            return Some(format!(
                "{asked} output tokens asked, it writes at most {max}"
            ));
        }
        if !self.images && meta.prompt_stats().images > 0 {
            return Some("the request has images".into());
        }
        if !self.json_mode && meta.wants_json() {
            return Some("the request asks for JSON mode".into());
        }
        if !self.tools && has_tools {
            return Some("the request has tools".into());
        }
        None
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Headers hold credentials: names only.
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("format", &self.format)
            .field("model", &self.model)
            .field("endpoint", &self.endpoint)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("context_window", &self.context_window)
            .field("max_output", &self.max_output)
            .field("available", &self.available.is_some())
            .finish_non_exhaustive()
    }
}
