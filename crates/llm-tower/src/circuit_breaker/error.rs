//! [`CircuitOpen`]: the call was refused without being sent.

use std::{fmt, time::Duration};

use super::{BreakerKey, BreakerState};

/// The breaker refused the call: nothing was sent.
///
/// [`retry_after`](Self::retry_after) is the time until the breaker lets a
/// probe through: the rest of its open time, zero when it is half-open with
/// every probe taken, and `None` when it was isolated by hand. The default
/// classifier counts it as overloaded, not retryable (retrying into an open
/// breaker only fails again) and worth a fallback to another target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    key: BreakerKey,
    state: BreakerState,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(key: BreakerKey, state: BreakerState, retry_after: Option<Duration>) -> Self {
        CircuitOpen {
            key,
            state,
            retry_after,
        }
    }

    /// The breaker's key.
    pub fn key(&self) -> &BreakerKey {
        &self.key
    }

    /// Its state when it refused.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// The time until it lets a probe through; `None` while isolated.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (BreakerState::Isolated, _) => write!(f, "circuit for {} is isolated", self.key),
            (BreakerState::HalfOpen, _) => {
                write!(
                    f,
                    "circuit for {} is half-open and its probes are taken",
                    self.key
                )
            }
            (_, Some(d)) => write!(
                f,
                "circuit for {} is open: next probe in {}",
                self.key,
                humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
            ),
            (_, None) => write!(f, "circuit for {} is open", self.key),
        }
    }
}

impl std::error::Error for CircuitOpen {}
