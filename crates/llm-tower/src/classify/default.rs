use std::{error::Error as StdError, time::SystemTime};

use http::StatusCode;

use super::{Classification, Classifier, Failure, FailureClass, InvalidContent, ResponseView};
use crate::{
    metering::{MalformedStream, StreamError, TruncatedStream},
    provider::{
        ProviderError,
        headers::{server_delay, should_retry},
    },
    request::BodyTooLarge,
};

/// The provider-aware classifier every layer uses unless told otherwise.
///
/// | response or error | class | retried | health | fall back |
/// |---|---|---|---|---|
/// | `429 rate_limit_exceeded`, `rate_limit_error`, `RESOURCE_EXHAUSTED` | `RateLimited` | yes | no | yes |
/// | `429 insufficient_quota`, Anthropic "credit balance is too low" | `QuotaExhausted` | no | no | yes |
/// | `503`, `529`, `overloaded_error`, `UNAVAILABLE` | `Overloaded` | yes | yes | yes |
/// | `500`, `502`, `504`, other `5xx` | `ServerError` | yes | yes | yes |
/// | `408`, client timeouts | `Timeout` | yes | yes | yes |
/// | `409` (lock conflict) | `ServerError` | yes | no | yes |
/// | connection refused, reset, closed | `Connect` | yes | yes | yes |
/// | `400 context_length_exceeded`, "prompt is too long" | `ContextLength` | no | no | yes |
/// | `content_policy_violation`, `content_filter` | `ContentPolicy` | no | no | no |
/// | `401`, `403` | `Auth` | no | no | yes |
/// | `404` (unknown model) | `BadRequest` | no | no | yes |
/// | `400`, `413`, `422`, other `4xx` | `BadRequest` | no | no | no |
/// | `event: error` inside a `200` stream | by its error type, else `StreamError` | yes | yes | yes |
/// | stream cut before its terminal event | `TruncatedStream` | yes | yes | yes |
/// | [`InvalidContent`] (empty, malformed JSON, refusal) | `InvalidContent` | yes | no | yes |
/// | [`InvalidContent`] truncated (`finish_reason: length`) | `InvalidContent`, code `truncated` | no | no | yes |
/// | the rate limiter's `RateLimited` (its turn too far away) | `RateLimited`, code `local_rate_limit` | no | no | yes |
/// | the rate limiter's `RequestTooLarge` | `BadRequest`, code `request_too_large` | no | no | yes |
/// | `AttemptsExhausted` (the call's attempt budget spent) | `Other`, code `attempts_exhausted` | no | no | no |
///
/// A server delay comes from `retry-after-ms` or `retry-after`, or else
/// from the reset of an exhausted `x-ratelimit-*` / `anthropic-ratelimit-*`
/// limit ([`server_delay`]), or else from a Gemini body's `RetryInfo`. A
/// Gemini `RESOURCE_EXHAUSTED` naming a daily quota is `QuotaExhausted`.
/// `x-should-retry: false` stops the retry of any failure.
/// `x-should-retry: true` makes a transient failure retryable (rate
/// limited, overloaded, server error, timeout, connect, stream error,
/// truncated stream, other) but never revives `QuotaExhausted`, `Auth`,
/// `BadRequest`, `ContextLength` or `ContentPolicy`: those fail again
/// however often they are sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassifier {
    _priv: (),
}

/// The [`Failure::code`] of a call refused by an open circuit breaker.
pub const CIRCUIT_OPEN: &str = "circuit_open";

/// The [`Failure::code`] of a call the rate limiter refused because its
/// turn was further away than it may wait.
pub const LOCAL_RATE_LIMIT: &str = "local_rate_limit";

/// The [`Failure::code`] of a call with no upstream attempt left in its
/// [`AttemptBudget`](crate::attempts::AttemptBudget).
pub const ATTEMPTS_EXHAUSTED: &str = "attempts_exhausted";

/// The [`Failure::code`] of a call larger than its rate limit can hold.
pub const REQUEST_TOO_LARGE: &str = "request_too_large";

/// The [`Failure::code`] of a call or attempt refused by a budget: its
/// worst-case cost does not fit in what is left.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";

/// The [`Failure::code`] of a call to a model without a price, refused by
/// a budget.
pub const UNPRICED_MODEL: &str = "unpriced_model";

impl DefaultClassifier {
    /// The default classifier.
    pub const fn new() -> Self {
        DefaultClassifier { _priv: () }
    }
}

impl Classifier for DefaultClassifier {
    fn classify_response(&self, response: &ResponseView<'_>) -> Classification {
        let status = response.status;
        if status.is_success() || status.is_informational() || status.is_redirection() {
            return Classification::Success;
        }
        let error = response.body.and_then(ProviderError::parse);
        let mut failure = classify_status(status, error.as_ref()).with_status(status);
        if let Some(code) = error.as_ref().and_then(decisive_code) {
            failure = failure.with_code(code);
        }
        let now = response.now.unwrap_or_else(SystemTime::now);
        // Headers first; Gemini says it in the body's RetryInfo instead.
        let delay = server_delay(response.headers, now)
            .or_else(|| error.as_ref().and_then(ProviderError::retry_delay));
        failure = failure.with_retry_after(delay);
        match should_retry(response.headers) {
            // The provider may always stop a retry…
            Some(false) => failure = failure.with_retryable(false),
            // …but may only ask for one of a failure that can pass: a spent
            // quota, a refused key or a bad request fails again however
            // often it is sent.
            Some(true) if is_transient(failure.class()) => failure = failure.with_retryable(true),
            _ => {}
        }
        Classification::Failure(failure)
    }

    fn classify_error(&self, error: &(dyn StdError + 'static)) -> Failure {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(e) = cur {
            if let Some(f) = classify_one_error(e) {
                return f;
            }
            cur = e.source();
        }
        Failure::new(FailureClass::Other)
    }
}

fn classify_one_error(e: &(dyn StdError + 'static)) -> Option<Failure> {
    if let Some(stream) = e.downcast_ref::<StreamError>() {
        let pe = stream.provider_error();
        let mut f = match class_of_provider_error(pe) {
            // An error event is the provider's word, whatever its kind: it
            // came inside a `200`, so anything not clearly the caller's
            // fault says something about the provider.
            Some(class) => Failure::new(class),
            None => Failure::new(FailureClass::StreamError),
        };
        if let Some(code) = decisive_code(pe) {
            f = f.with_code(code);
        }
        return Some(f);
    }
    if let Some(invalid) = e.downcast_ref::<InvalidContent>() {
        let failure =
            Failure::new(FailureClass::InvalidContent).with_code(invalid.problem().as_str());
        // Cut by the output cap: the same request is cut again, at full
        // cost. A fallback with a larger cap or another model may do.
        return Some(match invalid.problem() {
            crate::classify::ContentProblem::Truncated => failure.with_retryable(false),
            _ => failure,
        });
    }
    if e.is::<TruncatedStream>() {
        return Some(Failure::new(FailureClass::TruncatedStream));
    }
    if e.is::<MalformedStream>() {
        return Some(Failure::new(FailureClass::StreamError));
    }
    if e.is::<BodyTooLarge>() {
        return Some(Failure::new(FailureClass::BadRequest).with_fallback(false));
    }
    #[cfg(feature = "reqwest")]
    if let Some(f) = crate::client::classify_reqwest(e) {
        return Some(f);
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return Some(Failure::new(FailureClass::Timeout));
    }
    #[cfg(feature = "tower-timeout")]
    if e.is::<tower::timeout::error::Elapsed>() {
        return Some(Failure::new(FailureClass::Timeout));
    }
    #[cfg(feature = "circuit-breaker")]
    if let Some(open) = e.downcast_ref::<crate::circuit_breaker::CircuitOpen>() {
        // Nothing was sent: retrying at once into an open breaker only fails
        // again, and the breaker's own outcome must not count twice. Its
        // delay is the time until it lets a probe through.
        return Some(
            Failure::new(FailureClass::Overloaded)
                .with_code(CIRCUIT_OPEN)
                .with_retryable(false)
                .with_retry_after(open.retry_after())
                .with_counts_against_health(false)
                .with_fallback(true),
        );
    }
    if e.is::<crate::attempts::AttemptsExhausted>() {
        // The call's own limit, whoever meets it: nothing to retry, nowhere
        // to move to.
        return Some(
            Failure::new(FailureClass::Other)
                .with_code(ATTEMPTS_EXHAUSTED)
                .with_retryable(false)
                .with_counts_against_health(false)
                .with_fallback(false),
        );
    }
    #[cfg(feature = "rate-limit")]
    if let Some(limited) = e.downcast_ref::<crate::rate_limit::RateLimited>() {
        // Nothing was sent, and the wait was already longer than the call
        // may wait: retrying only waits again. Another target may go now.
        return Some(
            Failure::new(FailureClass::RateLimited)
                .with_code(LOCAL_RATE_LIMIT)
                .with_retryable(false)
                .with_retry_after(limited.retry_after())
                .with_counts_against_health(false)
                .with_fallback(true),
        );
    }
    #[cfg(feature = "rate-limit")]
    if e.is::<crate::rate_limit::RequestTooLarge>() {
        return Some(
            Failure::new(FailureClass::BadRequest)
                .with_code(REQUEST_TOO_LARGE)
                .with_retryable(false)
                .with_counts_against_health(false)
                .with_fallback(true),
        );
    }
    #[cfg(feature = "budget")]
    if e.is::<crate::budget::BudgetExceeded>() {
        // Nothing was sent; sending it again does not make the budget
        // larger. Another target may be cheaper.
        return Some(
            Failure::new(FailureClass::QuotaExhausted)
                .with_code(BUDGET_EXCEEDED)
                .with_retryable(false)
                .with_counts_against_health(false)
                .with_fallback(true),
        );
    }
    #[cfg(feature = "budget")]
    if e.is::<crate::budget::BudgetUnavailable>() {
        return Some(
            Failure::new(FailureClass::Other)
                .with_retryable(false)
                .with_counts_against_health(false)
                .with_fallback(false),
        );
    }
    if e.is::<crate::pricing::Unpriced>() {
        // A budget refused a model it cannot price; another may be priced.
        return Some(
            Failure::new(FailureClass::BadRequest)
                .with_code(UNPRICED_MODEL)
                .with_retryable(false)
                .with_counts_against_health(false)
                .with_fallback(true),
        );
    }
    #[cfg(feature = "retry")]
    if let Some(interrupted) = e.downcast_ref::<crate::retry::StreamInterrupted>() {
        // Part of the answer reached the caller: classified by its cause,
        // but neither retried nor sent elsewhere.
        let mut cur: Option<&(dyn StdError + 'static)> = Some(interrupted.cause());
        let mut failure = Failure::new(FailureClass::StreamError);
        while let Some(e) = cur {
            if let Some(f) = classify_one_error(e) {
                failure = f;
                break;
            }
            cur = e.source();
        }
        return Some(failure.with_retryable(false).with_fallback(false));
    }
    #[cfg(feature = "timeout")]
    if let Some(elapsed) = e.downcast_ref::<crate::timeout::Elapsed>() {
        let failure = Failure::new(FailureClass::Timeout).with_code(elapsed.phase().as_str());
        // Nothing was sent: the provider's health is not in question.
        return Some(match elapsed.phase() {
            crate::timeout::Phase::Deadline => failure
                .with_retryable(false)
                .with_counts_against_health(false),
            _ => failure,
        });
    }
    #[cfg(feature = "hyper")]
    if let Some(f) = classify_hyper(e) {
        return f;
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        return match e.kind() {
            TimedOut => Some(Failure::new(FailureClass::Timeout)),
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            | UnexpectedEof | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            | NetworkDown => Some(Failure::new(FailureClass::Connect)),
            _ => None,
        };
    }
    None
}

/// hyper's and hyper-util's errors (feature `hyper`): `Some(verdict)` when
/// `e` is one of them (`Some(None)`: its source says more), `None` when it
/// is not.
#[cfg(feature = "hyper")]
fn classify_hyper(e: &(dyn StdError + 'static)) -> Option<Option<Failure>> {
    if let Some(e) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
        // A refused connection; otherwise its source says more.
        return Some(e.is_connect().then(|| Failure::new(FailureClass::Connect)));
    }
    let e = e.downcast_ref::<hyper::Error>()?;
    Some(if e.is_timeout() {
        Some(Failure::new(FailureClass::Timeout))
    } else if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        Some(Failure::new(FailureClass::Connect))
    } else {
        None
    })
}

/// Whether a failure of `class` can pass by itself, so that the provider's
/// `x-should-retry: true` may make it retryable. Never a spent quota, an
/// auth error, a bad request, a context-length error or a content-policy
/// refusal.
fn is_transient(class: FailureClass) -> bool {
    match class {
        // The provider cannot know what the answer's checks will say.
        FailureClass::InvalidContent => false,
        // Unknown to the classifier: the provider's word decides.
        FailureClass::Other => true,
        // Otherwise exactly the classes retried by default.
        c => c.is_retryable(),
    }
}

/// The class of a response with this status and (optional) error body.
fn classify_status(status: StatusCode, error: Option<&ProviderError>) -> Failure {
    if let Some(class) = error.and_then(class_of_provider_error) {
        let f = Failure::new(class);
        // A `404` is an unknown model or path: another target may know it.
        return if status == StatusCode::NOT_FOUND {
            f.with_fallback(true)
        } else {
            f
        };
    }
    match status.as_u16() {
        429 => Failure::new(FailureClass::RateLimited),
        503 | 529 => Failure::new(FailureClass::Overloaded),
        408 => Failure::new(FailureClass::Timeout),
        // The official SDKs retry a lock conflict; it says nothing about
        // the provider's health.
        409 => Failure::new(FailureClass::ServerError).with_counts_against_health(false),
        401 | 403 => Failure::new(FailureClass::Auth),
        404 => Failure::new(FailureClass::BadRequest).with_fallback(true),
        400..=499 => Failure::new(FailureClass::BadRequest),
        500..=599 => Failure::new(FailureClass::ServerError),
        _ => Failure::new(FailureClass::Other),
    }
}

/// What a provider's error code, type or status says on its own, when it
/// says something decisive. `None` leaves the decision to the HTTP status.
fn class_of_provider_error(e: &ProviderError) -> Option<FailureClass> {
    // Gemini reports a spent daily quota as an ordinary RESOURCE_EXHAUSTED.
    if e.is_daily_quota() {
        return Some(FailureClass::QuotaExhausted);
    }
    for key in [e.code(), e.error_type(), e.status()].into_iter().flatten() {
        let class = match key {
            "insufficient_quota" | "billing_not_active" | "billing_hard_limit_reached" => {
                FailureClass::QuotaExhausted
            }
            "rate_limit_exceeded" | "rate_limit_error" | "RESOURCE_EXHAUSTED" => {
                FailureClass::RateLimited
            }
            "overloaded_error" | "UNAVAILABLE" | "server_is_overloaded" | "engine_overloaded" => {
                FailureClass::Overloaded
            }
            "context_length_exceeded" | "string_above_max_length" => FailureClass::ContextLength,
            "content_policy_violation" | "content_filter" | "ResponsibleAIPolicyViolation" => {
                FailureClass::ContentPolicy
            }
            "invalid_api_key"
            | "authentication_error"
            | "permission_error"
            | "UNAUTHENTICATED"
            | "PERMISSION_DENIED" => FailureClass::Auth,
            "DEADLINE_EXCEEDED" | "timeout_error" => FailureClass::Timeout,
            "request_too_large" => FailureClass::BadRequest,
            "not_found_error" | "model_not_found" | "NOT_FOUND" => FailureClass::BadRequest,
            _ => continue,
        };
        return Some(class);
    }
    // Some providers say it only in words.
    let message = e.message()?;
    let lower = message.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if has("maximum context length")
        || has("context length")
        || has("context window")
        || has("prompt is too long")
        || has("exceeds the maximum number of tokens")
        || has("input is too long")
    {
        Some(FailureClass::ContextLength)
    } else if has("credit balance is too low")
        || has("exceeded your current quota, please check your plan")
    {
        Some(FailureClass::QuotaExhausted)
    } else {
        None
    }
}

/// The provider's most specific word for the error (numbers are HTTP
/// statuses repeated, not codes).
fn decisive_code(e: &ProviderError) -> Option<&str> {
    let word = |s: &&str| !s.bytes().all(|b| b.is_ascii_digit());
    e.code()
        .filter(word)
        .or(e.error_type())
        .or(e.status().filter(word))
}
