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
