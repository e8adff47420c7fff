//! [`RetryConfig`]: the retry policy, as data.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Backoff, BudgetConfig};

/// Everything that decides whether, when and how often a call is retried.
///
/// ```
/// use std::time::Duration;
/// use llm_tower::retry::RetryConfig;
///
/// let config: RetryConfig = serde_json::from_str(r#"{
///     "max_attempts": 4,
///     "backoff": { "base": "250ms", "factor": 2.0, "cap": "10s", "jitter": "equal" },
///     "max_server_delay": "30s",
///     "budget": { "max_tokens": 10, "token_ratio": 0.1 },
///     "idempotency_header": "idempotency-key",
///     "content": { "empty": true, "malformed_json": true, "truncated": false }
/// }"#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.backoff.base, Duration::from_millis(250));
///
/// let bad: RetryConfig = serde_json::from_str(r#"{"max_attempts": 0}"#).unwrap();
/// assert_eq!(
///     bad.validate().unwrap_err().to_string(),
///     "retry: max_attempts is 0: at least the first attempt must be allowed",
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included: 3 is the first call and two
    /// retries, as the official SDKs do.
    pub max_attempts: u32,
    /// The delay between attempts when the provider does not say.
    pub backoff: Backoff,
    /// The longest server-directed delay (`retry-after`, `retry-after-ms`,
    /// an exhausted rate limit's reset) that is waited. A longer one is
    /// never shortened, since retrying earlier than the provider asked only
    /// earns another refusal: the last response is returned at once.
    #[serde(with = "humantime_serde")]
    pub max_server_delay: Duration,
    /// The shortest wait after a server-directed delay: a `retry-after: 0`,
    /// a reset already past or a clock skew would otherwise retry at once.
    /// 100 ms by default.
    #[serde(with = "humantime_serde")]
    pub server_delay_floor: Duration,
    /// Up to this much, at random, is added to every server-directed wait
    /// (after the floor), so that the callers a provider told to come back
    /// at the same instant do not all come back together. It only ever
    /// lengthens the provider's delay. 100 ms by default; zero for none.
    #[serde(with = "humantime_serde")]
    pub server_delay_jitter: Duration,
    /// The retry budget shared by every clone of the layer; `null` for none.
    pub budget: Option<BudgetConfig>,
    /// A request header that carries an idempotency key, the same on every
    /// attempt of a call. A key the caller set is kept; otherwise one is
    /// made. `None`: no header.
    pub idempotency_header: Option<String>,
    /// Content validation of whole (non-streaming) answers; off unless set.
    pub content: Option<ContentChecks>,
    /// Whether a call refused by an open circuit breaker further in (a
    /// failure with code [`CIRCUIT_OPEN`](crate::classify::CIRCUIT_OPEN))
    /// is tried again once the breaker lets probes through, if that fits the
    /// deadline and `max_server_delay`. Off by default: with a fallback
    /// layer outside, moving to another target at once is better. Without
    /// one, waiting for the breaker can save the call. Such a retry draws
    /// nothing from the budget and a refusal is not one of the
    /// `max_attempts` (nothing reached the provider); at most 64 refusals
    /// are waited out.
    pub wait_for_breaker: bool,
    /// The most of an error body read to classify it.
    pub error_body_limit: usize,
    /// The most of a stream held back while waiting for its first token:
    /// past it the stream is handed over (and no longer retried).
    pub first_token_hold_limit: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_server_delay: Duration::from_secs(60),
            server_delay_floor: Duration::from_millis(100),
            server_delay_jitter: Duration::from_millis(100),
            budget: Some(BudgetConfig::default()),
            idempotency_header: None,
            content: None,
            wait_for_breaker: false,
            error_body_limit: crate::classify::DEFAULT_ERROR_BODY_LIMIT,
            first_token_hold_limit: 64 << 10,
        }
    }
}

/// Which problems of a whole answer count as retryable content errors
/// ([`InvalidContent`](crate::classify::InvalidContent)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentChecks {
    /// No text and no tool call.
    pub empty: bool,
    /// JSON was asked for (see
    /// [`RequestMeta::wants_json`](crate::request::RequestMeta::wants_json))
    /// and the text is not JSON.
    pub malformed_json: bool,
    /// Cut by the output cap (`finish_reason: length`); off by default.
    /// When on, such an answer is an [`InvalidContent`](crate::classify::InvalidContent)
    /// with code `truncated` that is **not** retried (the same request with
    /// the same `max_tokens` is cut again, at full cost) but asks for a
    /// fallback (a larger output cap or another model). When off, it is
    /// returned as it came. Either way the other checks skip a cut answer:
    /// an empty or half-written JSON answer cut by the cap is not resent.
    pub truncated: bool,
    /// A refusal or a safety stop; off by default, since the same prompt
    /// usually gets the same refusal.
    pub refusal: bool,
}

impl Default for ContentChecks {
    fn default() -> Self {
        ContentChecks {
            empty: true,
            malformed_json: true,
            truncated: false,
            refusal: false,
        }
    }
}

/// A retry configuration that cannot work: the field and the rule.
pub use crate::config::ConfigError;

impl RetryConfig {
    /// The defaults: 3 attempts, 500 ms doubling to 8 s with full jitter,
    /// server delays up to 60 s, a shared budget.
    pub fn new() -> Self {
        RetryConfig::default()
    }

    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets [`backoff`](Self::backoff).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`max_server_delay`](Self::max_server_delay).
    pub fn max_server_delay(mut self, d: Duration) -> Self {
        self.max_server_delay = d;
        self
    }

    /// Sets [`server_delay_floor`](Self::server_delay_floor).
    pub fn server_delay_floor(mut self, d: Duration) -> Self {
        self.server_delay_floor = d;
        self
    }

    /// Sets [`server_delay_jitter`](Self::server_delay_jitter).
    pub fn server_delay_jitter(mut self, d: Duration) -> Self {
        self.server_delay_jitter = d;
        self
    }

    /// Sets [`budget`](Self::budget).
    pub fn budget(mut self, budget: Option<BudgetConfig>) -> Self {
        self.budget = budget;
        self
    }

    /// Sets [`idempotency_header`](Self::idempotency_header).
    pub fn idempotency_header(mut self, name: impl Into<String>) -> Self {
        self.idempotency_header = Some(name.into());
        self
    }

    /// Sets [`wait_for_breaker`](Self::wait_for_breaker).
    pub fn wait_for_breaker(mut self, wait: bool) -> Self {
        self.wait_for_breaker = wait;
        self
    }

    /// Sets [`content`](Self::content).
    pub fn content(mut self, checks: ContentChecks) -> Self {
        self.content = Some(checks);
        self
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err =
            |(field, message): (&'static str, String)| ConfigError::new("retry", field, message);
        if self.max_attempts == 0 {
            return Err(err((
                "max_attempts",
                "max_attempts is 0: at least the first attempt must be allowed".into(),
            )));
        }
        self.backoff.validate().map_err(err)?;
        if let Some(b) = &self.budget {
            b.validate().map_err(err)?;
        }
        if let Some(h) = &self.idempotency_header {
            http::HeaderName::try_from(h.as_str()).map_err(|_| {
                err((
                    "idempotency_header",
                    format!("idempotency_header `{h}` is not a header name"),
                ))
            })?;
        }
        if self.error_body_limit == 0 {
            return Err(err((
                "error_body_limit",
                "error_body_limit is 0: errors could not be classified".into(),
            )));
        }
        Ok(())
    }
}

impl crate::config::Validate for RetryConfig {
    type Error = ConfigError;

    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl RetryConfig {
    /// Checks the configuration once, for a layer's infallible
    /// constructor: `…Layer::new(config.build()?)`.
    pub fn build(self) -> Result<crate::config::Valid<Self>, ConfigError> {
        crate::config::Valid::new(self)
    }
}
