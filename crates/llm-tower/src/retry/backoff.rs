//! Backoff between attempts: exponential, capped, with jitter.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How the random part of a delay is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Anywhere from zero to the exponential delay ("full jitter"): the
    /// least synchronised retries, the default.
    #[default]
    Full,
    /// Half the exponential delay, plus up to the other half at random.
    Equal,
    /// From `base` to three times the previous delay, capped: spreads like
    /// full jitter while growing from the last delay actually waited.
    Decorrelated,
    /// The exponential delay exactly. For tests; retries from many callers
    /// then arrive together.
    None,
}

/// Exponential backoff: attempt `n` (from 1, the first retry) waits about
/// `base × factor^(n-1)`, never more than `cap`, with [`Jitter`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The first delay.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The growth per retry, at least 1.
    pub factor: f64,
    /// The longest delay.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// How the delay is randomised.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// 500 ms doubling up to 8 s with full jitter, as the official SDKs do.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            factor: 2.0,
            cap: Duration::from_secs(8),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The delay before retry `retry` (1 for the first retry), given the
    /// delay waited before the previous one (for decorrelated jitter).
    pub fn delay(&self, retry: u32, previous: Duration, rng: &mut impl Rng) -> Duration {
        let exp = self.exponential(retry);
        match self.jitter {
            Jitter::None => exp,
            Jitter::Full => exp.mul_f64(rng.random::<f64>()),
            Jitter::Equal => exp / 2 + (exp / 2).mul_f64(rng.random::<f64>()),
            Jitter::Decorrelated => {
                let low = self.base.min(self.cap);
                let high = previous.max(self.base).saturating_mul(3).min(self.cap);
                if high <= low {
                    low
                } else {
                    low + (high - low).mul_f64(rng.random::<f64>())
                }
            }
        }
    }

    /// `base × factor^(retry-1)`, capped.
    pub fn exponential(&self, retry: u32) -> Duration {
        let power = self.factor.powi(retry.saturating_sub(1).min(1024) as i32);
        let secs = self.base.as_secs_f64() * power;
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Checks the values: the field at fault and the rule, in words.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.base.is_zero() {
            return Err((
                "backoff.base",
                "backoff.base is 0s: retries would hammer the provider".into(),
            ));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err((
                "backoff.factor",
                format!(
                    "backoff.factor {} is not a number of at least 1",
                    self.factor
                ),
            ));
        }
        if self.cap < self.base {
            return Err((
                "backoff.cap",
                format!(
                    "backoff.cap ({}) is shorter than backoff.base ({})",
                    humantime::format_duration(self.cap),
                    humantime::format_duration(self.base)
                ),
            ));
        }
        Ok(())
    }
}
