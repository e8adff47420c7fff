//! The retry budget shared by every clone of a layer.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Retry throttling in the style of gRPC's: a bucket of tokens that every
/// retry of an outage drains by one and every success refills by
/// `token_ratio`; retries stop while it holds half its tokens or fewer.
///
/// A token is taken only for a retry actually made: not for a failure that
/// is given up for another reason (the last attempt, a failure not worth
/// retrying, a wait past the deadline), nor for a refusal of an open
/// breaker further in. A `429` rate limit with an exact server-directed
/// delay (`retry-after`, `retry-after-ms`, an exhausted limit's reset) is
/// not an outage either: the provider is healthy and says when the call
/// fits, so waiting that long costs it nothing, and such a retry is free.
/// Outages — server errors, overload, timeouts, broken connections, rate
/// limits without a delay — pay.
///
/// Under a sustained outage every attempt fails, the bucket drains, and
/// retries stop after about `max_tokens / 2` of them: an outage cannot turn
/// into a retry storm. While calls succeed, each success earns back a
/// fraction of a retry, so retries of outages stay at most `token_ratio`
/// of successes plus `max_tokens / 2`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// The bucket's size, and its content at start.
    pub max_tokens: u32,
    /// What one success puts back, from 0 to 1.
    pub token_ratio: f64,
}

impl Default for BudgetConfig {
    /// 20 tokens (10 retries in a row before throttling), 0.2 per success.
    fn default() -> Self {
        BudgetConfig {
            max_tokens: 20,
            token_ratio: 0.2,
        }
    }
}

impl BudgetConfig {
    /// Checks the values: the field at fault and the rule, in words.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_tokens < 2 {
            return Err((
                "budget.max_tokens",
                "budget.max_tokens must be at least 2".into(),
            ));
        }
        if !(self.token_ratio > 0.0 && self.token_ratio <= 1.0) {
            return Err((
                "budget.token_ratio",
                format!("budget.token_ratio {} is not in (0, 1]", self.token_ratio),
            ));
        }
        Ok(())
    }
}

/// Fixed point: thousandths of a token.
const MILLI: u64 = 1000;

/// The live bucket: one atomic, no lock.
#[derive(Debug)]
pub(crate) struct Budget {
    milli: AtomicU64,
    max: u64,
    refill: u64,
}

impl Budget {
    pub(crate) fn new(config: BudgetConfig) -> Self {
        let max = u64::from(config.max_tokens) * MILLI;
        Budget {
            milli: AtomicU64::new(max),
            max,
            refill: ((config.token_ratio * MILLI as f64).round() as u64).max(1),
        }
    }

    /// A success: put back a fraction of a token.
    pub(crate) fn on_success(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t < self.max).then(|| (t + self.refill).min(self.max))
            });
    }

    /// A retry about to be made: takes a token and returns true when more
    /// than half the bucket is left after taking it; otherwise takes
    /// nothing and returns false (throttled). Each call sees the bucket
    /// atomically, so concurrent retries cannot all pass.
    pub(crate) fn try_retry(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                let after = t.checked_sub(MILLI)?;
                (after > self.max / 2).then_some(after)
            })
            .is_ok()
    }

    /// Tokens left, in thousandths.
    #[cfg(test)]
    pub(crate) fn milli(&self) -> u64 {
        self.milli.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_drains_it_and_successes_refill_it() {
        let b = Budget::new(BudgetConfig {
            max_tokens: 10,
            token_ratio: 0.5,
        });
        let allowed = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(allowed, 4, "10 tokens: retries while more than 5 remain");
        assert_eq!(b.milli(), 6000, "a refused retry takes nothing");
        for _ in 0..2 {
            b.on_success();
        }
        assert_eq!(b.milli(), 7000);
        assert!(b.try_retry(), "6 left after taking one");
        assert!(!b.try_retry(), "5 left: throttled");
        for _ in 0..1000 {
            b.on_success();
        }
        assert_eq!(b.milli(), 10_000, "never above its size");
    }
}
