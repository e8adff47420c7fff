//! What the retry layer decided about each failed attempt.

use std::{fmt, sync::Arc, time::Duration};

use http::StatusCode;

use crate::classify::FailureClass;

/// One decision of the retry layer: after a failed attempt, retry (after a
/// delay) or give up. Passed to the hook set with
/// [`RetryLayer::on_event`](super::RetryLayer::on_event), and logged with
/// `tracing`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// How it failed.
    pub class: FailureClass,
    /// Its HTTP status, if it got a response.
    pub status: Option<StatusCode>,
    /// What happens next.
    pub decision: Decision,
}

/// Retry, or give up and return what the failed attempt got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Another attempt after `delay`.
    Retry {
        /// The wait before it.
        delay: Duration,
        /// The provider set the delay (`retry-after` and the like);
        /// otherwise it is the backoff's.
        server_directed: bool,
    },
    /// No other attempt.
    GiveUp(GiveUp),
}

/// Why a failed attempt is the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUp {
    /// The failure is not worth retrying (a bad request, auth, quota,
    /// context length, content policy…).
    NotRetryable,
    /// `max_attempts` were made.
    AttemptsExhausted,
    /// The shared retry budget is spent.
    BudgetExhausted,
    /// The provider asked for a longer wait than `max_server_delay`.
    ServerDelayTooLong(Duration),
    /// The wait would end after the call's deadline.
    DeadlineTooClose(Duration),
}

impl GiveUp {
    /// A short stable name: `not_retryable`, `attempts_exhausted`,
    /// `budget_exhausted`, `server_delay_too_long`, `deadline_too_close`.
    pub fn as_str(&self) -> &'static str {
        match self {
            GiveUp::NotRetryable => "not_retryable",
            GiveUp::AttemptsExhausted => "attempts_exhausted",
            GiveUp::BudgetExhausted => "budget_exhausted",
            GiveUp::ServerDelayTooLong(_) => "server_delay_too_long",
            GiveUp::DeadlineTooClose(_) => "deadline_too_close",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hook called with every [`RetryEvent`].
pub(crate) type Hook = Arc<dyn Fn(&RetryEvent) + Send + Sync>;
