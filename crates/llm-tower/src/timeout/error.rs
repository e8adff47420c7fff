//! The error of [`Timeout`](super::Timeout): which phase elapsed, and when.

use std::{fmt, time::Duration};

/// The part of a call a limit covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The whole call through this layer, body included
    /// ([`TimeoutConfig::total`](super::TimeoutConfig::total)).
    Total,
    /// One attempt, body included
    /// ([`TimeoutConfig::attempt`](super::TimeoutConfig::attempt)).
    Attempt,
    /// From the call to the response headers.
    FirstByte,
    /// From the call to the first SSE `data` event of a streaming answer.
    FirstToken,
    /// Between two body chunks.
    Idle,
    /// From the response headers to the end of the body.
    Stream,
    /// The request arrived with a [`Deadline`](crate::deadline::Deadline)
    /// already past: nothing was sent.
    Deadline,
}

impl Phase {
    /// A short name: `total`, `attempt`, `first_byte`, `first_token`,
    /// `idle`, `stream`, `deadline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Total => "total",
            Phase::Attempt => "attempt",
            Phase::FirstByte => "first_byte",
            Phase::FirstToken => "first_token",
            Phase::Idle => "idle",
            Phase::Stream => "stream",
            Phase::Deadline => "deadline",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Phase::Total => "call",
            Phase::Attempt => "attempt",
            Phase::FirstByte => "time to first byte",
            Phase::FirstToken => "time to first token",
            Phase::Idle => "idle time between chunks",
            Phase::Stream => "stream duration",
            Phase::Deadline => "deadline",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A limit of [`TimeoutLayer`](super::TimeoutLayer) elapsed.
///
/// Says which [`Phase`], what its limit was and how long after the call
/// started it fired. Returned boxed, as a [`BoxError`](crate::BoxError);
/// find it with `err.downcast_ref::<Elapsed>()`. The default classifier
/// counts it as a [`Timeout`](crate::classify::FailureClass::Timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elapsed {
    phase: Phase,
    limit: Duration,
    after: Duration,
}

impl Elapsed {
    pub(crate) fn new(phase: Phase, limit: Duration, after: Duration) -> Self {
        Elapsed {
            phase,
            limit,
            after,
        }
    }

    /// The phase whose limit elapsed.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The limit that elapsed (for [`Phase::Deadline`], zero: the time left).
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Time from the call into the layer to the timeout.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.phase == Phase::Deadline {
            return f.write_str("deadline already passed: request not sent");
        }
        write!(
            f,
            "{} timed out: limit {} elapsed after {}",
            self.phase.describe(),
            humantime::format_duration(self.limit),
            humantime::format_duration(self.after),
        )
    }
}

impl std::error::Error for Elapsed {}
