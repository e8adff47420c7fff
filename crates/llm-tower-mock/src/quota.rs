//! Per-minute quotas enforced the way providers do: continuously refilled,
//! answered with the real wait.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::content;

const MINUTE: Duration = Duration::from_secs(60);

/// Requests and tokens per minute, per model, like a provider's tier.
///
/// Capacity refills continuously: a limit of 60 requests per minute gives
/// one request back every second, and a full minute's worth may be spent at
/// once.
///
/// - [`tokens_per_minute`](Self::tokens_per_minute) counts the prompt and
///   the output cap (`max_tokens`) when the request arrives and keeps them,
///   as OpenAI counts its TPM.
/// - [`input_tokens_per_minute`](Self::input_tokens_per_minute) and
///   [`output_tokens_per_minute`](Self::output_tokens_per_minute) count as
///   Anthropic counts its ITPM and OTPM: the prompt is taken from the input
///   limit on arrival (the mock has no prompt cache, so every input token is
///   uncached and counts); the output limit is charged the output cap on
///   arrival (`max_tokens`, or the longest answer the mock writes, 40
///   tokens, when a request sets none) and, when the answer ends, is given
///   back what the answer did not use (the cap less the output tokens its
///   usage reports; all of it for an error answer).
///
/// Any of them may be combined, whatever the wire format; a request one of
/// them refuses takes nothing from the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per minute; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (prompt and output cap, counted on arrival and
    /// kept: OpenAI's TPM); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
    /// Input tokens per minute (Anthropic's ITPM); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens_per_minute: Option<u32>,
    /// Output tokens per minute (Anthropic's OTPM: the cap on arrival, the
    /// unused part given back at the end); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_minute: Option<u32>,
}

impl Quota {
    /// No limit yet; add them with [`requests`](Self::requests),
    /// [`tokens`](Self::tokens), [`input_tokens`](Self::input_tokens) and
    /// [`output_tokens`](Self::output_tokens).
    pub fn per_minute() -> Self {
        Quota::default()
    }

    /// Requests per minute.
    pub fn requests(mut self, n: u32) -> Self {
        self.requests_per_minute = Some(n);
        self
    }

    /// Tokens per minute, OpenAI's way: prompt and `max_tokens` counted on
    /// arrival and kept.
    pub fn tokens(mut self, n: u32) -> Self {
        self.tokens_per_minute = Some(n);
        self
    }

    /// Input tokens per minute, Anthropic's ITPM.
    pub fn input_tokens(mut self, n: u32) -> Self {
        self.input_tokens_per_minute = Some(n);
        self
    }

    /// Output tokens per minute, Anthropic's OTPM: `max_tokens` on arrival,
    /// the unused part given back when the answer ends.
    pub fn output_tokens(mut self, n: u32) -> Self {
        self.output_tokens_per_minute = Some(n);
        self
    }

    fn limits(&self) -> [Option<u32>; 4] {
        [
            self.requests_per_minute,
            self.tokens_per_minute,
            self.input_tokens_per_minute,
            self.output_tokens_per_minute,
        ]
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.limits().contains(&Some(0)) {
            return Err("a quota of 0 per minute refuses everything: leave it out instead".into());
        }
        Ok(())
    }

    fn is_limited(&self) -> bool {
        self.limits().iter().any(Option::is_some)
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

    /// Gives `n` units back: the limit is spent up to `cost(n)` earlier,
    /// never earlier than now.
    fn refund(&mut self, now: Instant, n: u64) {
        let back = Cell::cost(self.limit, n);
        self.tat = self.tat.checked_sub(back).unwrap_or(now).max(now);
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
    pub(crate) input_tokens: Option<Limit>,
    pub(crate) output_tokens: Option<Limit>,
}

/// What a request costs when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cost {
    /// The prompt, as the mock counts it.
    pub(crate) input: u32,
    /// The request's `max_tokens`, if it set one.
    pub(crate) max_tokens: Option<u32>,
}

impl Cost {
    /// What the tokens-per-minute limit counts: prompt and cap (none when
    /// the request sets no cap), as OpenAI counts them.
    fn tokens(&self) -> u64 {
        u64::from(self.input) + u64::from(self.max_tokens.unwrap_or(0))
    }

    /// What the output limit is charged on arrival: the cap, or the longest
    /// answer the mock writes when the request sets none.
    pub(crate) fn output(&self) -> u32 {
        self.max_tokens.unwrap_or(content::MAX_TOKENS)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Try again after this long: the exact time until the request fits.
    Wait(Duration),
    /// Larger than a whole minute's tokens: it will never fit.
    TooLarge,
}

/// The cells of one model, in the order of [`Quota::limits`]: requests,
/// tokens, input tokens, output tokens.
#[derive(Debug, Default)]
struct Cells([Option<Cell>; 4]);

const OUTPUT: usize = 3;

/// Quota state, one set of cells per model.
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

    /// Whether an output limit is kept, so unused output is given back.
    pub(crate) fn limits_output(&self) -> bool {
        self.quota.output_tokens_per_minute.is_some()
    }

    /// Counts a request costing `cost` for `model` at `now`, or refuses it
    /// taking nothing from any limit; either way returns the limits as they
    /// stand after.
    pub(crate) fn admit(
        &mut self,
        model: &str,
        cost: Cost,
        now: Instant,
    ) -> (Result<(), Refusal>, Limits) {
        if !self.quota.is_limited() {
            return (Ok(()), Limits::default());
        }
        let quota = self.quota;
        let cells = self.models.entry(model.to_owned()).or_insert_with(|| {
            Cells(
                quota
                    .limits()
                    .map(|l| l.map(|limit| Cell { limit, tat: now })),
            )
        });
        let units = [
            1,
            cost.tokens(),
            u64::from(cost.input),
            u64::from(cost.output()),
        ];
        let checks: Vec<Option<Option<Result<Instant, Duration>>>> = cells
            .0
            .iter()
            .zip(units)
            .map(|(c, n)| c.map(|c| c.check(now, n)))
            .collect();
        let verdict = if checks.iter().any(|c| matches!(c, Some(None))) {
            Err(Refusal::TooLarge)
        } else {
            let wait = checks
                .iter()
                .flatten()
                .flatten()
                .filter_map(|r| r.err())
                .max();
            match wait {
                Some(w) => Err(Refusal::Wait(w)),
                None => {
                    for (cell, check) in cells.0.iter_mut().zip(&checks) {
                        if let (Some(c), Some(Some(Ok(tat)))) = (cell.as_mut(), check) {
                            c.tat = *tat;
                        }
                    }
                    Ok(())
                }
            }
        };
        let [requests, tokens, input_tokens, output_tokens] =
            cells.0.map(|c| c.map(|c| c.state(now)));
        let limits = Limits {
            requests,
            tokens,
            input_tokens,
            output_tokens,
        };
        (verdict, limits)
    }

    /// Gives `unused` output tokens of an admitted request back to
    /// `model`'s output limit, at `now`.
    pub(crate) fn refund_output(&mut self, model: &str, unused: u32, now: Instant) {
        if unused == 0 {
            return;
        }
        if let Some(cell) = self
            .models
            .get_mut(model)
            .and_then(|c| c.0[OUTPUT].as_mut())
        {
            cell.refund(now, u64::from(unused));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of `n` prompt tokens and no output cap.
    fn tok(n: u32) -> Cost {
        Cost {
            input: n,
            max_tokens: None,
        }
    }

    fn capped(input: u32, max_tokens: u32) -> Cost {
        Cost {
            input,
            max_tokens: Some(max_tokens),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_exact_waits() {
        let mut q = Quotas::new(Quota::per_minute().requests(60).tokens(1000));
        let t0 = Instant::now();
        for i in 0..60 {
            let (v, l) = q.admit("m", tok(10), t0);
            assert_eq!(v, Ok(()), "request {i}");
            assert_eq!(l.requests.unwrap().remaining, 59 - i);
        }
        // The 61st waits exactly one refill interval.
        let (v, l) = q.admit("m", tok(10), t0);
        assert_eq!(v, Err(Refusal::Wait(Duration::from_secs(1))));
        assert_eq!(l.requests.unwrap().remaining, 0);
        assert_eq!(l.requests.unwrap().reset, Duration::from_secs(60));
        // Not a nanosecond early…
        let early = t0 + Duration::from_secs(1) - Duration::from_nanos(1);
        assert!(
            matches!(q.admit("m", tok(10), early).0, Err(Refusal::Wait(w)) if w == Duration::from_nanos(1))
        );
        // …and then it fits.
        assert_eq!(q.admit("m", tok(10), t0 + Duration::from_secs(1)).0, Ok(()));
        // Another model has its own cells.
        assert_eq!(q.admit("other", tok(10), t0).0, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_bind_and_a_refusal_spends_nothing() {
        let mut q = Quotas::new(Quota::per_minute().tokens(600));
        let t0 = Instant::now();
        assert_eq!(q.admit("m", tok(500), t0).0, Ok(()));
        // 100 left: 200 more need 100 tokens back, 10 s at 10 per second.
        assert_eq!(
            q.admit("m", tok(200), t0).0,
            Err(Refusal::Wait(Duration::from_secs(10)))
        );
        assert_eq!(
            q.admit("m", tok(100), t0).0,
            Ok(()),
            "the refusal spent nothing"
        );
        assert_eq!(q.admit("m", tok(601), t0).0, Err(Refusal::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn unused_output_is_given_back() {
        // 1,200 output tokens a minute: 20 a second.
        let mut q = Quotas::new(Quota::per_minute().output_tokens(1_200));
        let t0 = Instant::now();
        let (v, l) = q.admit("m", capped(10, 1_000), t0);
        assert_eq!(v, Ok(()));
        assert_eq!(l.output_tokens.unwrap().remaining, 200);
        assert_eq!(l.input_tokens, None);
        // Without the refund, a second call of 1,000 waits 40 s.
        assert_eq!(
            q.admit("m", capped(10, 1_000), t0).0,
            Err(Refusal::Wait(Duration::from_secs(40)))
        );
        // It used 50: 950 come back, and the second fits at once.
        q.refund_output("m", 950, t0);
        let (v, l) = q.admit("m", capped(10, 1_000), t0);
        assert_eq!(v, Ok(()));
        assert_eq!(l.output_tokens.unwrap().remaining, 150);
        // A refund never makes more than a full minute.
        q.refund_output("m", 5_000, t0);
        let (_, l) = q.admit("m", capped(10, 0), t0);
        assert_eq!(l.output_tokens.unwrap().remaining, 1_200);
        // No cap: the longest answer the mock writes is charged.
        let (_, l) = q.admit("m", tok(10), t0);
        assert_eq!(
            l.output_tokens.unwrap().remaining,
            1_200 - content::MAX_TOKENS
        );
        // Another model's limit is untouched by a refund here.
        q.refund_output("other", 100, t0);
        assert!(!q.models.contains_key("other"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_refund_is_never_before_now() {
        let mut q = Quotas::new(Quota::per_minute().output_tokens(600));
        let t0 = Instant::now();
        assert_eq!(q.admit("m", capped(1, 100), t0).0, Ok(()));
        // 10 s later the 100 have refilled: giving them back adds nothing.
        let t1 = t0 + Duration::from_secs(10);
        q.refund_output("m", 100, t1);
        let (_, l) = q.admit("m", capped(1, 600), t1);
        assert_eq!(l.output_tokens.unwrap().remaining, 0);
        assert_eq!(
            q.admit("m", capped(1, 60), t1).0,
            Err(Refusal::Wait(Duration::from_secs(6)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_by_any_limit_takes_from_none() {
        let mut q = Quotas::new(
            Quota::per_minute()
                .requests(10)
                .tokens(10_000)
                .input_tokens(600)
                .output_tokens(6_000),
        );
        let t0 = Instant::now();
        let (v, l) = q.admit("m", capped(500, 100), t0);
        assert_eq!(v, Ok(()));
        let after_first = l;
        // The input limit refuses (100 left, 200 asked: 10 s at 10 a
        // second); requests, tokens and output keep what they had.
        let (v, l) = q.admit("m", capped(200, 1_000), t0);
        assert_eq!(v, Err(Refusal::Wait(Duration::from_secs(10))));
        assert_eq!(l, after_first);
        // The output limit refuses: the input limit keeps its 100.
        let (v, l) = q.admit("m", capped(100, 6_000), t0);
        assert_eq!(v, Err(Refusal::Wait(Duration::from_secs(1))));
        assert_eq!(l, after_first);
        assert_eq!(l.input_tokens.unwrap().remaining, 100);
        // Larger than a minute of input: never.
        assert_eq!(q.admit("m", capped(601, 1), t0).0, Err(Refusal::TooLarge));
        assert_eq!(q.admit("m", capped(1, 6_001), t0).0, Err(Refusal::TooLarge));
        // What fits every limit goes, and takes from each.
        let (v, l) = q.admit("m", capped(100, 100), t0);
        assert_eq!(v, Ok(()));
        assert_eq!(l.requests.unwrap().remaining, 8);
        assert_eq!(l.tokens.unwrap().remaining, 10_000 - 800);
        assert_eq!(l.input_tokens.unwrap().remaining, 0);
        assert_eq!(l.output_tokens.unwrap().remaining, 5_800);
    }

    #[test]
    fn every_limit_is_validated() {
        for q in [
            Quota::per_minute().input_tokens(0),
            Quota::per_minute().output_tokens(0),
            Quota::per_minute().requests(1).tokens(0),
        ] {
            assert!(q.validate().unwrap_err().contains("refuses everything"));
        }
        assert!(
            Quota::per_minute()
                .input_tokens(1)
                .output_tokens(1)
                .validate()
                .is_ok()
        );
        let q: Quota = serde_json::from_str(
            r#"{"input_tokens_per_minute": 40000, "output_tokens_per_minute": 8000}"#,
        )
        .unwrap();
        assert_eq!(
            q,
            Quota::per_minute()
                .input_tokens(40_000)
                .output_tokens(8_000)
        );
    }
}
