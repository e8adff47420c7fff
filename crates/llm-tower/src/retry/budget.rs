//! The retry budget shared by every clone of a layer.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Retry throttling in the style of gRPC's: a bucket of tokens that every
/// failed attempt drains by one and every success refills by `token_ratio`;
/// retries stop while it holds half its tokens or fewer.
///
/// Under a sustained outage every attempt fails, the bucket drains, and
/// retries stop after about `max_tokens / 2` of them: an outage cannot turn
/// into a retry storm. While calls succeed, each success earns back a
/// fraction of a retry, so retries stay at most `token_ratio` of successes
/// plus `max_tokens / 2`.
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
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_tokens < 2 {
            return Err("budget.max_tokens must be at least 2".into());
        }
        if !(self.token_ratio > 0.0 && self.token_ratio <= 1.0) {
            return Err(format!(
                "budget.token_ratio {} is not in (0, 1]",
                self.token_ratio
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

    /// A failed attempt: take a token; true when a retry is still allowed
    /// (more than half the bucket left after taking it). Each failure sees
    /// the bucket atomically, so concurrent failures cannot all pass.
    pub(crate) fn on_failure(&self) -> bool {
        let before = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(MILLI))
            })
            .unwrap_or(0);
        before.saturating_sub(MILLI) > self.max / 2
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
        let allowed = (0..100).filter(|_| b.on_failure()).count();
        assert_eq!(allowed, 4, "10 tokens: retries while more than 5 remain");
        assert_eq!(b.milli(), 0);
        for _ in 0..14 {
            b.on_success();
        }
        assert_eq!(b.milli(), 7000);
        assert!(b.on_failure(), "6 left after taking one");
        assert!(!b.on_failure(), "5 left: throttled");
        for _ in 0..1000 {
            b.on_success();
        }
        assert_eq!(b.milli(), 10_000, "never above its size");
    }
}
