//! One failure vocabulary for every layer.
//!
//! A [`Classifier`] turns the outcome of one attempt, a response or an
//! error, into a [`Classification`]: success, or a [`Failure`] that says
//! what went wrong ([`FailureClass`]) and what to do about it — retry or
//! not, after which server-directed delay, whether it counts against the
//! provider's health, whether another target is worth trying. Retry, the
//! circuit breaker and fallback all read the same answer, so they never
//! disagree about what a `429` means; replace the classifier and all of
//! them follow.
//!
//! The [`DefaultClassifier`] knows each provider's statuses, error codes and
//! headers: a `429` with `code: insufficient_quota` is
//! [`FailureClass::QuotaExhausted`] (never retried: retrying burns time
//! forever) while `rate_limit_exceeded` is [`FailureClass::RateLimited`];
//! Anthropic's `529 overloaded_error` is [`FailureClass::Overloaded`];
//! `x-should-retry` overrides the verdict.
//!
//! Error bodies are small and decide the class, so they are read up to a
//! limit with [`PeekBody`] and handed back intact in a [`PeekedBody`].
//! Success bodies are never buffered for classification.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use llm_tower::classify::{Classifier, DefaultClassifier, FailureClass, ResponseView};
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert("retry-after", "2".parse().unwrap());
//! let body = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
//! let view = ResponseView::new(http::StatusCode::TOO_MANY_REQUESTS, &headers)
//!     .with_body(body)
//!     .with_now(SystemTime::UNIX_EPOCH);
//! let failure = DefaultClassifier::new().classify_response(&view).into_failure().unwrap();
//! assert_eq!(failure.class(), FailureClass::RateLimited);
//! assert!(failure.is_retryable());
//! assert_eq!(failure.retry_after(), Some(Duration::from_secs(2)));
//! ```

mod content;
mod default;
mod peek;
#[cfg(feature = "tower-http")]
mod tower_http;

use std::{fmt, sync::Arc, time::Duration, time::SystemTime};

use http::{HeaderMap, StatusCode};

pub use self::content::{ContentProblem, InvalidContent};
pub use self::default::{
    ATTEMPTS_EXHAUSTED, BUDGET_EXCEEDED, CIRCUIT_OPEN, DefaultClassifier, LOCAL_RATE_LIMIT,
    REQUEST_TOO_LARGE, UNPRICED_MODEL,
};
pub use self::peek::{DEFAULT_ERROR_BODY_LIMIT, PeekBody, PeekedBody};
#[cfg(feature = "tower-http")]
pub use self::tower_http::{HttpClassifier, StreamEos};
use crate::provider::WireFormat;

/// What kind of failure an attempt ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureClass {
    /// Too many requests or tokens for now (`429 rate_limit_exceeded`,
    /// Anthropic `rate_limit_error`, Gemini `RESOURCE_EXHAUSTED`): wait and
    /// retry.
    RateLimited,
    /// The account's quota or credit is used up (`429 insufficient_quota`):
    /// retrying cannot help; another provider can.
    QuotaExhausted,
    /// The provider is overloaded (`503`, Anthropic `529 overloaded_error`,
    /// Gemini `UNAVAILABLE`).
    Overloaded,
    /// The provider failed (`500`, `502`, `504` and other `5xx`).
    ServerError,
    /// The attempt timed out (`408`, or a client-side timeout).
    Timeout,
    /// The connection could not be made or broke before a response.
    Connect,
    /// The prompt is longer than the model's context window: never retried
    /// as is; a larger-context model may take it.
    ContextLength,
    /// The request or the output was refused by a safety system.
    ContentPolicy,
    /// Authentication or permission failed (`401`, `403`).
    Auth,
    /// The request is invalid (`400`, `404`, `413`, `422` and other `4xx`).
    BadRequest,
    /// The provider sent an error inside a successful stream.
    StreamError,
    /// The stream ended before its terminal event.
    TruncatedStream,
    /// The answer arrived but is unusable (empty, not the JSON that was
    /// asked for, cut by the token cap), as judged by content validation.
    InvalidContent,
    /// Anything else.
    Other,
}

impl FailureClass {
    /// Every class, for tables and exhaustive tests.
    pub const ALL: [FailureClass; 14] = [
        FailureClass::RateLimited,
        FailureClass::QuotaExhausted,
        FailureClass::Overloaded,
        FailureClass::ServerError,
        FailureClass::Timeout,
        FailureClass::Connect,
        FailureClass::ContextLength,
        FailureClass::ContentPolicy,
        FailureClass::Auth,
        FailureClass::BadRequest,
        FailureClass::StreamError,
        FailureClass::TruncatedStream,
        FailureClass::InvalidContent,
        FailureClass::Other,
    ];

    /// A short stable name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::QuotaExhausted => "quota_exhausted",
            FailureClass::Overloaded => "overloaded",
            FailureClass::ServerError => "server_error",
            FailureClass::Timeout => "timeout",
            FailureClass::Connect => "connect",
            FailureClass::ContextLength => "context_length",
            FailureClass::ContentPolicy => "content_policy",
            FailureClass::Auth => "auth",
            FailureClass::BadRequest => "bad_request",
            FailureClass::StreamError => "stream_error",
            FailureClass::TruncatedStream => "truncated_stream",
            FailureClass::InvalidContent => "invalid_content",
            FailureClass::Other => "other",
        }
    }

    /// Whether a failure of this class is worth another attempt at the same
    /// target, by default.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureClass::RateLimited
                | FailureClass::Overloaded
                | FailureClass::ServerError
                | FailureClass::Timeout
                | FailureClass::Connect
                | FailureClass::StreamError
                | FailureClass::TruncatedStream
                | FailureClass::InvalidContent
        )
    }

    /// Whether a failure of this class says the provider is unhealthy, by
    /// default (what a circuit breaker counts).
    pub const fn counts_against_health(self) -> bool {
        matches!(
            self,
            FailureClass::Overloaded
                | FailureClass::ServerError
                | FailureClass::Timeout
                | FailureClass::Connect
                | FailureClass::StreamError
                | FailureClass::TruncatedStream
        )
    }

    /// Whether another target (model or provider) is worth trying after a
    /// failure of this class, by default. A malformed request fails
    /// everywhere, and a refused one should not be shopped around.
    pub const fn should_fall_back(self) -> bool {
        !matches!(
            self,
            FailureClass::BadRequest | FailureClass::ContentPolicy | FailureClass::Other
        )
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure: its class and what the layers should do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    class: FailureClass,
    retryable: bool,
    retry_after: Option<Duration>,
    counts_against_health: bool,
    fallback: bool,
    status: Option<StatusCode>,
    code: Option<Box<str>>,
}

impl Failure {
    /// A failure of `class` with that class's defaults.
    pub fn new(class: FailureClass) -> Self {
        Failure {
            class,
            retryable: class.is_retryable(),
            retry_after: None,
            counts_against_health: class.counts_against_health(),
            fallback: class.should_fall_back(),
            status: None,
            code: None,
        }
    }

    /// The class.
    pub fn class(&self) -> FailureClass {
        self.class
    }

    /// Whether another attempt at the same target may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The delay the server asked for before the next attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the failure counts against the provider's health.
    pub fn counts_against_health(&self) -> bool {
        self.counts_against_health
    }

    /// Whether another target is worth trying.
    pub fn should_fall_back(&self) -> bool {
        self.fallback
    }

    /// The HTTP status, when the failure was a response.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The provider's error code, type or status that decided the class
    /// (`insufficient_quota`, `overloaded_error`, `RESOURCE_EXHAUSTED` …).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Sets whether the failure is retryable.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets the server-directed delay.
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }

    /// Sets whether the failure counts against the provider's health.
    pub fn with_counts_against_health(mut self, counts: bool) -> Self {
        self.counts_against_health = counts;
        self
    }

    /// Sets whether another target is worth trying.
    pub fn with_fallback(mut self, fallback: bool) -> Self {
        self.fallback = fallback;
        self
    }

    /// Sets the HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the provider's error code.
    pub fn with_code(mut self, code: impl Into<Box<str>>) -> Self {
        self.code = Some(code.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class.as_str())?;
        if let Some(status) = self.status {
            write!(f, " ({})", status.as_u16())?;
        }
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        Ok(())
    }
}

/// The verdict on one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The attempt succeeded.
    Success,
    /// The attempt failed.
    Failure(Failure),
}

impl Classification {
    /// `true` for [`Classification::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Classification::Success)
    }

    /// The failure, if any.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Classification::Success => None,
            Classification::Failure(f) => Some(f),
        }
    }

    /// The failure, if any, by value.
    pub fn into_failure(self) -> Option<Failure> {
        match self {
            Classification::Success => None,
            Classification::Failure(f) => Some(f),
        }
    }
}

impl From<Failure> for Classification {
    fn from(f: Failure) -> Self {
        Classification::Failure(f)
    }
}

/// What a classifier sees of a response: status, headers and, for
/// statuses the classifier asked for, the first bytes of the body.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ResponseView<'a> {
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// The body read so far (see [`Classifier::needs_body`]), or `None`.
    pub body: Option<&'a [u8]>,
    /// The wire format of the request, when known.
    pub format: Option<WireFormat>,
    /// The current wall-clock time, for HTTP-date `retry-after` values;
    /// `None` reads the system clock, and only when a failure needs it.
    pub now: Option<SystemTime>,
}

impl<'a> ResponseView<'a> {
    /// A view of a response with no body, in no known format, read at
    /// [`SystemTime::now`] if a date needs it.
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> Self {
        ResponseView {
            status,
            headers,
            body: None,
            format: None,
            now: None,
        }
    }

    /// Sets the body read so far.
    pub fn with_body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    /// Sets the wire format.
    pub fn with_format(mut self, format: Option<WireFormat>) -> Self {
        self.format = format;
        self
    }

    /// Sets the current wall-clock time (use the stack's clock, so tests
    /// with paused time stay deterministic).
    pub fn with_now(mut self, now: SystemTime) -> Self {
        self.now = Some(now);
        self
    }
}

/// Turns the outcome of one attempt into a [`Classification`].
///
/// Implement it to change what the layers consider a failure; wrap
/// [`DefaultClassifier`] to change only a few verdicts.
pub trait Classifier: Send + Sync + 'static {
    /// Classifies a response.
    fn classify_response(&self, response: &ResponseView<'_>) -> Classification;

    /// Classifies an error: a transport error, a timeout, a typed error of
    /// a layer, or a body error of a metered stream.
    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Failure;

    /// Whether the body of a response with this status is needed to classify
    /// it (it is then read up to a limit, and handed back intact). By
    /// default, the bodies of non-success statuses.
    fn needs_body(&self, status: StatusCode) -> bool {
        !status.is_success()
    }
}

impl<C: Classifier + ?Sized> Classifier for Arc<C> {
    fn classify_response(&self, response: &ResponseView<'_>) -> Classification {
        (**self).classify_response(response)
    }

    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Failure {
        (**self).classify_error(error)
    }

    fn needs_body(&self, status: StatusCode) -> bool {
        (**self).needs_body(status)
    }
}
