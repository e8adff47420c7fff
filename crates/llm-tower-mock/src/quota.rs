//! Per-minute quotas enforced the way providers do: continuously refilled,
//! answered with the real wait.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

/// Requests and tokens per minute, per model, like a provider's tier.
///
/// Capacity refills continuously: a limit of 60 requests per minute gives
/// one request back every second, and a full minute's worth may be spent at
/// once. Tokens count the prompt and the output cap (`max_tokens`) when the
/// request arrives, as OpenAI counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per minute; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
}

impl Quota {
    /// No limit yet; add them with [`requests`](Self::requests) and
    /// [`tokens`](Self::tokens).
    pub fn per_minute() -> Self {
        Quota::default()
    }

    /// Requests per minute.
    pub fn requests(mut self, n: u32) -> Self {
        self.requests_per_minute = Some(n);
        self
    }

    /// Tokens per minute.
    pub fn tokens(mut self, n: u32) -> Self {
        self.tokens_per_minute = Some(n);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.requests_per_minute == Some(0) || self.tokens_per_minute == Some(0) {
            return Err("a quota of 0 per minute refuses everything: leave it out instead".into());
        }
        Ok(())
    }

    fn is_limited(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }
}

/// One continuously refilled limit, kept as the time it is next fully
/// spent up to (a theoretical arrival time, as in GCRA).
#[derive(Debug, Clone, Copy)]
struct Cell {
    limit: u32,
    tat: Instant,
}

impl Cell {
    /// The time `n` units take to refill.
    fn cost(limit: u32, n: u64) -> Duration {
        let nanos = (MINUTE.as_nanos() * u128::from(n)).div_ceil(u128::from(limit));
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }

    /// `Ok(new tat)` when `n` fit now, else how long until they do; `None`
    /// when `n` can never fit.
    fn check(&self, now: Instant, n: u64) -> Option<Result<Instant, Duration>> {
        if n > u64::from(self.limit) {
            return None;
        }
        let tat = self.tat.max(now) + Cell::cost(self.limit, n);
        let allowed_until = now + MINUTE;
        Some(if tat <= allowed_until {
            Ok(tat)
        } else {
            Err(tat - allowed_until)
        })
    }

    fn state(&self, now: Instant) -> Limit {
        let backlog = self.tat.saturating_duration_since(now);
        let spent = (backlog.as_nanos() * u128::from(self.limit)).div_ceil(MINUTE.as_nanos());
        Limit {
            limit: self.limit,
            remaining: self
                .limit
                .saturating_sub(spent.min(u128::from(u32::MAX)) as u32),
            reset: backlog,
        }
    }
}

/// What a limit looks like right now, for rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Time until the limit is back to full.
    pub(crate) reset: Duration,
}

/// The rate-limit state after a request was counted or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) requests: Option<Limit>,
    pub(crate) tokens: Option<Limit>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Try again after this long: the exact time until the request fits.
    Wait(Duration),
    /// Larger than a whole minute's tokens: it will never fit.
    TooLarge,
}

#[derive(Debug, Default)]
struct Cells {
    requests: Option<Cell>,
    tokens: Option<Cell>,
}

/// Quota state, one pair of cells per model.
#[derive(Debug, Default)]
pub(crate) struct Quotas {
    quota: Quota,
    models: HashMap<String, Cells>,
}

impl Quotas {
    pub(crate) fn new(quota: Quota) -> Self {
        Quotas {
            quota,
            models: HashMap::new(),
        }
    }

    pub(crate) fn is_limited(&self) -> bool {
        self.quota.is_limited()
    }

    /// Counts a request of `tokens` for `model` at `now`, or refuses it;
    /// either way returns the limits as they stand after.
    pub(crate) fn admit(
        &mut self,
        model: &str,
        tokens: u32,
        now: Instant,
    ) -> (Result<(), Refusal>, Limits) {
        if !self.quota.is_limited() {
            return (Ok(()), Limits::default());
        }
        let quota = self.quota;
        let cells = self
            .models
            .entry(model.to_owned())
            .or_insert_with(|| Cells {
                requests: quota
                    .requests_per_minute
                    .map(|limit| Cell { limit, tat: now }),
                tokens: quota
                    .tokens_per_minute
                    .map(|limit| Cell { limit, tat: now }),
            });
        let req = cells.requests.map(|c| c.check(now, 1));
        let tok = cells.tokens.map(|c| c.check(now, u64::from(tokens)));
        let verdict = match (req, tok) {
            (_, Some(None)) | (Some(None), _) => Err(Refusal::TooLarge),
            (r, t) => {
                let wait = [r, t]
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(Result::err)
                    .max();
                match wait {
                    Some(w) => Err(Refusal::Wait(w)),
                    None => {
                        if let (Some(c), Some(Some(Ok(tat)))) = (cells.requests.as_mut(), r) {
                            c.tat = tat;
                        }
                        if let (Some(c), Some(Some(Ok(tat)))) = (cells.tokens.as_mut(), t) {
                            c.tat = tat;
                        }
                        Ok(())
                    }
                }
            }
        };
        let limits = Limits {
            requests: cells.requests.map(|c| c.state(now)),
            tokens: cells.tokens.map(|c| c.state(now)),
        };
        (verdict, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_exact_waits() {
        let mut q = Quotas::new(Quota::per_minute().requests(60).tokens(1000));
        let t0 = Instant::now();
        for i in 0..60 {
            let (v, l) = q.admit("m", 10, t0);
            assert_eq!(v, Ok(()), "request {i}");
            assert_eq!(l.requests.unwrap().remaining, 59 - i);
        }
        // The 61st waits exactly one refill interval.
        let (v, l) = q.admit("m", 10, t0);
        assert_eq!(v, Err(Refusal::Wait(Duration::from_secs(1))));
        assert_eq!(l.requests.unwrap().remaining, 0);
        assert_eq!(l.requests.unwrap().reset, Duration::from_secs(60));
        // Not a nanosecond early…
        let early = t0 + Duration::from_secs(1) - Duration::from_nanos(1);
        assert!(
            matches!(q.admit("m", 10, early).0, Err(Refusal::Wait(w)) if w == Duration::from_nanos(1))
        );
        // …and then it fits.
        assert_eq!(q.admit("m", 10, t0 + Duration::from_secs(1)).0, Ok(()));
        // Another model has its own cells.
        assert_eq!(q.admit("other", 10, t0).0, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_bind_and_a_refusal_spends_nothing() {
        let mut q = Quotas::new(Quota::per_minute().tokens(600));
        let t0 = Instant::now();
        assert_eq!(q.admit("m", 500, t0).0, Ok(()));
        // 100 left: 200 more need 100 tokens back, 10 s at 10 per second.
        assert_eq!(
            q.admit("m", 200, t0).0,
            Err(Refusal::Wait(Duration::from_secs(10)))
        );
        assert_eq!(q.admit("m", 100, t0).0, Ok(()), "the refusal spent nothing");
        assert_eq!(q.admit("m", 601, t0).0, Err(Refusal::TooLarge));
    }
}
