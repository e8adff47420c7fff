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
    /// past it the stream is handed over (and no longer retried). With
    /// [`Hold::Complete`], its `max_bytes` bounds the hold instead.
    pub first_token_hold_limit: usize,
    /// How long a stream is held back before it reaches the caller, and so
    /// which of its failures can still be retried: until its first token
    /// (the default) or until its end ([`Hold::Complete`]).
    pub hold: Hold,
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
            hold: Hold::FirstToken,
        }
    }
}

/// How long [`Retry`](super::Retry) holds a stream back before handing it
/// to the caller: what is held can still be retried, what was handed over
/// cannot (its failures reach the caller as a
/// [`StreamInterrupted`](super::StreamInterrupted)).
///
/// ```
/// use llm_tower::retry::{Hold, RetryConfig};
///
/// let config: RetryConfig =
///     serde_json::from_str(r#"{"hold": {"complete": {"max_bytes": 1048576}}}"#).unwrap();
/// assert_eq!(config.hold, Hold::Complete { max_bytes: 1 << 20 });
/// let config: RetryConfig = serde_json::from_str(r#"{"hold": "first_token"}"#).unwrap();
/// assert_eq!(config.hold, Hold::FirstToken);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Hold {
    /// Until the first token (the first event carrying model output), at
    /// most [`first_token_hold_limit`](RetryConfig::first_token_hold_limit)
    /// bytes: a stream that fails before it is retried, one that fails
    /// after it reaches the caller as a typed error. Interactive: the
    /// caller sees tokens as soon as the model writes them.
    #[default]
    FirstToken,
    /// Until the stream is complete (its finish reason or terminal event
    /// came), at most `max_bytes`: a cut, a dropped connection, a
    /// malformed event or an error event **anywhere** in the stream is
    /// retried like a failure before the first token (within
    /// `max_attempts`, the budget and the deadline), and the caller gets
    /// one clean, complete stream — every byte held, then the rest (the
    /// closing `[DONE]` or `message_stop`, usually in the same frame) —
    /// or, when retries are exhausted, the last failure as a typed error
    /// alone (nothing of the partial answer), so that a fallback layer
    /// further out can move the call on.
    ///
    /// The trade-off: **latency** — nothing reaches the caller until the
    /// model has finished, so a streaming client loses its incremental
    /// display (the stream still arrives as events, all at once); and
    /// **memory** — up to `max_bytes` (plus one frame) per call in flight.
    /// A stream larger than `max_bytes` is handed over as it is once the
    /// bytes held reach the bound, and from then on is treated as with
    /// `FirstToken`: a later failure reaches the caller as a
    /// [`StreamInterrupted`](super::StreamInterrupted). What follows the
    /// terminal event passes as it comes: a failure there (the connection
    /// dropped before `[DONE]`) reaches the caller the same way. Suited to
    /// batch and agent callers that only act on whole answers.
    Complete {
        /// The most bytes held; past it the stream is handed over. Must be
        /// above 0.
        max_bytes: usize,
    },
}

impl Hold {
    /// [`Hold::Complete`], bounded by `max_bytes`.
    pub fn complete(max_bytes: usize) -> Self {
        Hold::Complete { max_bytes }
    }

    /// The most bytes held, given the configured first-token limit.
    pub(crate) fn limit(self, first_token_hold_limit: usize) -> usize {
        match self {
            Hold::FirstToken => first_token_hold_limit,
            Hold::Complete { max_bytes } => max_bytes,
        }
    }

    /// Whether the stream is held until it is complete.
    pub(crate) fn until_complete(self) -> bool {
        matches!(self, Hold::Complete { .. })
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

    /// Sets [`hold`](Self::hold).
    pub fn hold(mut self, hold: Hold) -> Self {
        self.hold = hold;
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
        if let Hold::Complete { max_bytes: 0 } = self.hold {
            return Err(err((
                "hold.max_bytes",
                "hold.max_bytes is 0: no stream could be held until it is complete".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_defaults_to_the_first_token_and_reads_as_snake_case() {
        assert_eq!(RetryConfig::default().hold, Hold::FirstToken);
        let c = RetryConfig::new().hold(Hold::complete(4096));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["hold"],
            serde_json::json!({"complete": {"max_bytes": 4096}})
        );
        assert_eq!(serde_json::from_value::<RetryConfig>(json).unwrap(), c);
        let err = serde_json::from_str::<Hold>(r#"{"complete": {"max_byte": 1}}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_byte`"),
            "{err}"
        );
        assert_eq!(Hold::FirstToken.limit(10), 10);
        assert_eq!(Hold::complete(99).limit(10), 99);
    }

    #[test]
    fn hold_max_bytes_must_be_above_zero() {
        let err = RetryConfig::new()
            .hold(Hold::complete(0))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "hold.max_bytes");
        assert!(err.to_string().contains("hold.max_bytes is 0"), "{err}");
        RetryConfig::new()
            .hold(Hold::complete(1))
            .validate()
            .unwrap();
    }
}
