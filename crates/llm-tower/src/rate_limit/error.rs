//! The errors of the rate limiter.

use std::{fmt, sync::Arc, time::Duration};

/// Why a call was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Its turn was further away than the layer's `max_wait`.
    MaxWait,
    /// Its turn was after the call's [`Deadline`](crate::deadline::Deadline).
    Deadline,
    /// The queue was full and the call could not go at once.
    QueueFull,
}

impl RefusalReason {
    /// A short name: `max_wait`, `deadline`, `queue_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::MaxWait => "max_wait",
            RefusalReason::Deadline => "deadline",
            RefusalReason::QueueFull => "queue_full",
        }
    }
}

/// The call cannot go within its wait: refused at once, with nothing taken
/// from any limit.
///
/// Classified as [`FailureClass::RateLimited`](crate::classify::FailureClass::RateLimited),
/// not retried (the wait was already longer than allowed), not counted
/// against the provider's health, and a reason to move to another target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimited {
    pub(crate) key: Arc<str>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) reason: RefusalReason,
}

impl RateLimited {
    /// The key of the call.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When the same call would go at once, if nothing else comes first;
    /// `None` when it waits for a call in flight to end (concurrency).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Why it was refused.
    pub fn reason(&self) -> RefusalReason {
        self.reason
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited ({}): key {}",
            self.reason.as_str(),
            self.key
        )?;
        if let Some(d) = self.retry_after {
            write!(f, ", retry after {d:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RateLimited {}

/// The call asks more than one of its limits can ever hold (a prompt and
/// output cap larger than a minute's tokens): it would never go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTooLarge {
    pub(crate) key: Arc<str>,
    pub(crate) dimension: &'static str,
    pub(crate) amount: u64,
    pub(crate) limit: u64,
}

impl RequestTooLarge {
    /// The key of the call.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limit it exceeds: `requests`, `tokens`, `input_tokens`,
    /// `output_tokens`.
    pub fn dimension(&self) -> &'static str {
        self.dimension
    }

    /// What the call asked for.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The most the limit holds (after headroom).
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl fmt::Display for RequestTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request too large for its rate limit: {} {} asked, at most {} per window (key {}); lower max_tokens or the prompt",
            self.amount, self.dimension, self.limit, self.key
        )
    }
}

impl std::error::Error for RequestTooLarge {}
