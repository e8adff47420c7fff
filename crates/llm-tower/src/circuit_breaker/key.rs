//! What a breaker is kept per.

use std::{fmt, sync::Arc};

use crate::{provider::Provider, request::RequestMeta};

/// The key of one breaker: by default the provider and model of the request
/// (from its [`RequestMeta`]), or any name a key function gives.
///
/// Building one from a request clones two `Arc`s at most: no allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BreakerKey {
    provider: Option<Provider>,
    name: Option<Arc<str>>,
}

impl BreakerKey {
    /// The key of a provider and model.
    pub fn new(provider: Option<Provider>, model: Option<Arc<str>>) -> Self {
        BreakerKey {
            provider,
            name: model,
        }
    }

    /// A key named by the caller (a region, a deployment, a tenant…).
    pub fn named(name: impl Into<Arc<str>>) -> Self {
        BreakerKey {
            provider: None,
            name: Some(name.into()),
        }
    }

    /// The default key of a request: its provider and model.
    pub fn of_request<B>(req: &http::Request<B>) -> Self {
        match RequestMeta::get(req) {
            Some(m) => BreakerKey::new(m.provider().cloned(), m.model_arc().cloned()),
            None => BreakerKey::new(None, None),
        }
    }

    /// The provider, if the key has one.
    pub fn provider(&self) -> Option<&Provider> {
        self.provider.as_ref()
    }

    /// The model or name, if the key has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether this key, used as a pattern by
    /// [`isolate`](super::CircuitBreakerHandle::isolate) and
    /// [`reset`](super::CircuitBreakerHandle::reset), names the breaker of
    /// `key`: a part it lacks matches anything. So
    /// `BreakerKey::named("gpt-4o")` covers `openai/gpt-4o` and
    /// `azure/gpt-4o`, `BreakerKey::new(Some(provider), None)` every model of
    /// that provider, and `BreakerKey::new(None, None)` every breaker.
    ///
    /// ```
    /// use llm_tower::{circuit_breaker::BreakerKey, provider::Provider};
    ///
    /// let call = BreakerKey::new(Some(Provider::OpenAi), Some("gpt-4o".into()));
    /// assert!(BreakerKey::named("gpt-4o").covers(&call));
    /// assert!(BreakerKey::new(Some(Provider::OpenAi), None).covers(&call));
    /// assert!(!BreakerKey::new(Some(Provider::Anthropic), None).covers(&call));
    /// assert!(!call.covers(&BreakerKey::named("gpt-4o")));
    /// ```
    pub fn covers(&self, key: &BreakerKey) -> bool {
        self.provider
            .as_ref()
            .is_none_or(|p| key.provider.as_ref() == Some(p))
            && self
                .name
                .as_ref()
                .is_none_or(|n| key.name.as_ref() == Some(n))
    }

    /// The breaker shared by new keys once the map is full (see
    /// [`max_keys`](super::CircuitBreakerConfig::max_keys)).
    pub(crate) fn overflow() -> Self {
        BreakerKey::named("<overflow>")
    }
}

impl fmt::Display for BreakerKey {
    /// `openai/gpt-4o`, `anthropic`, `my-name`, or `*` for neither.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.provider, &self.name) {
            (Some(p), Some(n)) => write!(f, "{p}/{n}"),
            (Some(p), None) => write!(f, "{p}"),
            (None, Some(n)) => f.write_str(n),
            (None, None) => f.write_str("*"),
        }
    }
}
