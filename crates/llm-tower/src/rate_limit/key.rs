//! Keys and priorities: which calls share a limit, and who goes first.

use std::{fmt, sync::Arc};

#[cfg(test)]
use http::HeaderMap;

use crate::request::RequestMeta;
pub(crate) use crate::util::{api_key_fnv, api_key_secret, api_key_text, concat};

/// The rate-limit key of a call, set in the request's extensions (a tenant,
/// a user, a deployment): calls with the same key share the limits of
/// [`Scope::Key`](super::Scope::Key). Without one, the key is the provider,
/// the model and a hash of the API key.
///
/// ```
/// use llm_tower::rate_limit::RateLimitKey;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(RateLimitKey::new("tenant-a"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RateLimitKey(Arc<str>);

impl RateLimitKey {
    /// A key.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        RateLimitKey(key.into())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn into_arc(self) -> Arc<str> {
        self.0
    }
}

impl fmt::Debug for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateLimitKey").field(&&*self.0).finish()
    }
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How urgent a call is, set in the request's extensions; interactive by
/// default.
///
/// When calls wait, interactive ones go first: a batch call may only use
/// [`batch_share`](super::RateLimitConfig::batch_share) of each limit, so
/// the rest is always there for interactive calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A user is waiting.
    #[default]
    Interactive,
    /// Background work that can wait.
    Batch,
}

/// A hash of the request's API key as it appears in keys, `-` when there
/// is none. The key itself is never kept.
#[cfg(test)]
pub(crate) fn api_key_hash(headers: &HeaderMap, query: Option<&str>) -> String {
    api_key_text(api_key_fnv(api_key_secret(headers, query)))
}

/// The provider's name, `-` when unknown.
pub(crate) fn provider_name(meta: Option<&RequestMeta>) -> &str {
    meta.and_then(RequestMeta::provider)
        .map_or("-", |p| p.name())
}

/// The model's name, `-` when unknown.
pub(crate) fn model_name(meta: Option<&RequestMeta>) -> &str {
    meta.and_then(RequestMeta::model).unwrap_or("-")
}

/// The default key: provider, model and API key hash.
pub(crate) fn default_key(provider: &str, model: &str, api_key: &str) -> Arc<str> {
    concat(&[provider, ":", model, ":", api_key]).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::fnv1a;

    #[test]
    fn api_keys_are_hashed_never_kept() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key_hash(&h, None), "-");
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        let a = api_key_hash(&h, None);
        assert_eq!(a.len(), 16);
        assert!(!a.contains("secret"));
        h.insert("authorization", "Bearer sk-other".parse().unwrap());
        assert_ne!(api_key_hash(&h, None), a);
        let g = api_key_hash(&HeaderMap::new(), Some("alt=sse&key=AIza123"));
        assert_ne!(g, "-");
        // Stable across runs and builds.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
