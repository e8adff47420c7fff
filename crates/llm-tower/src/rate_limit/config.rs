//! [`RateLimitConfig`]: the limits, the headroom, the queue.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Valid, Validate};
use crate::store::{DEFAULT_STORE_TIMEOUT, OnStoreFailure, Quota};

const LAYER: &str = "rate limit";

/// The most cells one call may take from: four dimensions at three scopes.
pub(crate) const MAX_CELLS: usize = 16;

/// How a [`RateLimitLayer`](super::RateLimitLayer) paces calls.
///
/// Every field has a default; the default configuration has no limit of its
/// own and runs on what the provider's rate-limit headers say (`adaptive`).
///
/// ```
/// use llm_tower::{config::Valid, rate_limit::RateLimitConfig};
///
/// let config: Valid<RateLimitConfig> = serde_json::from_str(r#"{
///     "limits": [
///         { "requests": 500, "tokens": 30000 },
///         { "scope": "global", "concurrency": 64 }
///     ],
///     "headroom": 0.9,
///     "max_wait": "30s"
/// }"#).unwrap();
/// assert_eq!(config.limits[0].requests, Some(500));
///
/// let err = serde_json::from_str::<Valid<RateLimitConfig>>(r#"{"headroom": 1.5}"#).unwrap_err();
/// assert!(err.to_string().contains("headroom"), "{err}");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The limits every call must fit under, all at once: a call refused by
    /// one takes nothing from the others. Empty by default.
    pub limits: Vec<Limit>,
    /// The fraction of each limit to use, in `(0, 1]`: 0.9 by default, so
    /// that clock skew, other clients of the same key and the provider's
    /// own rounding do not meet a 429.
    pub headroom: f64,
    /// The longest a call waits for its turn; a call whose turn is further
    /// away fails at once with [`RateLimited`](super::RateLimited). 60 s by
    /// default. The call's [`Deadline`](crate::deadline::Deadline), when it
    /// has one, bounds the wait too.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// The most calls waiting at once, 1024 by default. When the queue is
    /// full, a call goes at once or fails at once.
    pub max_queued: usize,
    /// Reads the provider's `x-ratelimit-*` and `anthropic-ratelimit-*`
    /// headers from every response and aligns the limits of the call's key
    /// with them: fewer remaining slows the layer down, a lower limit than
    /// configured replaces it, and a limit that is not configured is learned
    /// (per minute, with the headroom). A 429 with a server delay pauses the
    /// key for every call until then. On by default.
    pub adaptive: bool,
    /// The output tokens reserved for a call that sets no `max_tokens`:
    /// 1024 by default, or the entry of [`output_tokens`](Self::output_tokens)
    /// for its model. Never refuses a call: it is cut to what the limit holds.
    pub default_output_tokens: u64,
    /// Output tokens reserved per model when the call sets no cap, by model
    /// name prefix (the longest prefix wins): `{"gpt-4o": 2048}`.
    pub output_tokens: BTreeMap<String, u64>,
    /// What calls of [`Priority::Batch`](super::Priority::Batch) may use of
    /// each limit, in `(0, 1]`: 0.5 by default. The rest of the bucket is
    /// kept for interactive calls, which therefore go first when both wait.
    pub batch_share: f64,
    /// How unused output tokens are settled. See [`SettleOutput`].
    pub settle_output: SettleOutput,
    /// The prefix of every key this layer writes in its store,
    /// `llm-tower:rl` by default. Layers that share a store and a prefix
    /// share their limits.
    pub prefix: String,
    /// What a call does while the store fails (see [When the store
    /// fails](super#when-the-store-fails)): by default
    /// [`Degraded { share: 1.0 }`](OnStoreFailure::Degraded) — each
    /// process keeps pacing its calls under the whole limit by itself.
    ///
    /// Why not the others: a rate limiter exists to avoid 429s, and the
    /// provider enforces the real limit anyway; failing closed would turn
    /// a store outage into an outage of every call. Failing open would
    /// also drop what keeps a stack from storming the provider — the
    /// pacing, the pause after a 429, the alignment with its headers —
    /// which a degraded layer keeps, per process. A share of 1.0 is the
    /// one share that is right whatever the number of processes: it
    /// never refuses a call one process alone could send. Set
    /// `1/processes` to keep the sum under the limit.
    pub on_store_failure: OnStoreFailure,
    /// The longest one store operation may take; a slower one is a store
    /// failure. 250 ms by default.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            limits: Vec::new(),
            headroom: 0.9,
            max_wait: Duration::from_secs(60),
            max_queued: 1024,
            adaptive: true,
            default_output_tokens: 1024,
            output_tokens: BTreeMap::new(),
            batch_share: 0.5,
            settle_output: SettleOutput::Auto,
            prefix: "llm-tower:rl".into(),
            on_store_failure: OnStoreFailure::Degraded { share: 1.0 },
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }
}

/// One limit: what may pass per window at one scope.
///
/// Each field left out is no limit. A window is one minute by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    /// Which calls share the limit.
    pub scope: Scope,
    /// The window of the per-window limits, one minute by default.
    #[serde(with = "humantime_serde::option")]
    pub window: Option<Duration>,
    /// Requests per window.
    pub requests: Option<u64>,
    /// Input and output tokens together per window (OpenAI's TPM).
    pub tokens: Option<u64>,
    /// Input tokens per window (Anthropic's ITPM).
    pub input_tokens: Option<u64>,
    /// Output tokens per window (Anthropic's OTPM).
    pub output_tokens: Option<u64>,
    /// Calls in flight at once. Counted in this process.
    pub concurrency: Option<u32>,
}

/// Which calls share a [`Limit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Calls with the same key: by default the provider, the model and a
    /// hash of the API key; a [`RateLimitKey`](super::RateLimitKey) in the
    /// request's extensions or the layer's
    /// [`key_fn`](super::RateLimitLayer::key_fn) replace it. The provider's
    /// rate-limit headers are read into this scope.
    #[default]
    Key,
    /// Calls to the same provider with the same API key, every model
    /// together (an organisation's limit).
    Provider,
    /// Every call through the layer.
    Global,
}

impl Scope {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Provider => "provider",
            Scope::Global => "global",
        }
    }
}

/// How the output tokens a call reserved but did not use are settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleOutput {
    /// As the provider counts them: Anthropic estimates output from
    /// `max_tokens` and corrects it with the actual output
    /// ([`Actual`](Self::Actual)); OpenAI and Azure count a call's
    /// `max_tokens` against the tokens per minute when it arrives and keep
    /// it, and so may the OpenAI-compatible servers and proxies, so every
    /// other provider keeps the cap ([`Cap`](Self::Cap)), the safe side.
    #[default]
    Auto,
    /// Unused output is given back.
    Actual,
    /// The reserved output stays counted; only output above it is added.
    Cap,
}

impl RateLimitConfig {
    /// The default configuration: adaptive, no limit of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a limit.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Sets the [`headroom`](Self::headroom).
    pub fn headroom(mut self, fraction: f64) -> Self {
        self.headroom = fraction;
        self
    }

    /// Sets the [`max_wait`](Self::max_wait).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Sets the [`max_queued`](Self::max_queued).
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }

    /// Sets [`adaptive`](Self::adaptive).
    pub fn adaptive(mut self, on: bool) -> Self {
        self.adaptive = on;
        self
    }

    /// Sets the [`default_output_tokens`](Self::default_output_tokens).
    pub fn default_output_tokens(mut self, tokens: u64) -> Self {
        self.default_output_tokens = tokens;
        self
    }

    /// Sets the output tokens reserved for models whose name starts with
    /// `prefix` when a call sets no cap.
    pub fn output_tokens_for(mut self, prefix: impl Into<String>, tokens: u64) -> Self {
        self.output_tokens.insert(prefix.into(), tokens);
        self
    }

    /// Sets the [`batch_share`](Self::batch_share).
    pub fn batch_share(mut self, fraction: f64) -> Self {
        self.batch_share = fraction;
        self
    }

    /// Sets [`settle_output`](Self::settle_output).
    pub fn settle_output(mut self, settle: SettleOutput) -> Self {
        self.settle_output = settle;
        self
    }

    /// Sets the store key [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets what a call does while the store fails
    /// ([`on_store_failure`](Self::on_store_failure)).
    pub fn on_store_failure(mut self, policy: OnStoreFailure) -> Self {
        self.on_store_failure = policy;
        self
    }

    /// Sets the [`store_timeout`](Self::store_timeout).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<Valid<Self>, ConfigError> {
        Valid::new(self)
    }

    /// The output tokens reserved for `model` when the call sets no cap.
    pub(crate) fn default_output_for(&self, model: Option<&str>) -> u64 {
        model
            .and_then(|m| {
                crate::util::longest_prefix(
                    m,
                    self.output_tokens.iter().map(|(p, &n)| (p.as_str(), n)),
                )
            })
            .unwrap_or(self.default_output_tokens)
    }

    /// A limit scaled by the headroom, as a quota; at least one unit.
    pub(crate) fn quota(&self, limit: u64, window: Duration) -> Option<Quota> {
        let scaled = ((limit as f64) * self.headroom).floor() as u64;
        Quota::new(scaled.max(1), window).ok()
    }
}

impl Validate for RateLimitConfig {
    type Error = ConfigError;

    fn check(&self) -> Result<(), ConfigError> {
        let err = |field: String, message: String| Err(ConfigError::new(LAYER, field, message));
        let fraction = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        if !fraction(self.headroom) {
            return err(
                "headroom".into(),
                format!(
                    "headroom is {}: it must be above 0 and at most 1",
                    self.headroom
                ),
            );
        }
        if !fraction(self.batch_share) {
            return err(
                "batch_share".into(),
                format!(
                    "batch_share is {}: it must be above 0 and at most 1",
                    self.batch_share
                ),
            );
        }
        if let Err(e) = self.on_store_failure.check() {
            return err("on_store_failure".into(), format!("on_store_failure: {e}"));
        }
        if self.store_timeout.is_zero() {
            return err(
                "store_timeout".into(),
                "store_timeout is zero: every operation of a remote store would fail".into(),
            );
        }
        if self.default_output_tokens == 0 {
            return err(
                "default_output_tokens".into(),
                "default_output_tokens is 0: a call with no cap would reserve no output".into(),
            );
        }
        if self.prefix.is_empty() {
            return err(
                "prefix".into(),
                "prefix is empty: keys would collide with other users of the store".into(),
            );
        }
        let mut cells = 0;
        for (i, limit) in self.limits.iter().enumerate() {
            let window = limit.window.unwrap_or(super::MINUTE);
            let field = |name: &str| format!("limits[{i}].{name}");
            if limit.window == Some(Duration::ZERO) {
                return err(field("window"), format!("{} is zero", field("window")));
            }
            let counts = [
                ("requests", limit.requests),
                ("tokens", limit.tokens),
                ("input_tokens", limit.input_tokens),
                ("output_tokens", limit.output_tokens),
            ];
            for (name, value) in counts {
                let Some(v) = value else { continue };
                cells += 1;
                if v == 0 {
                    return err(
                        field(name),
                        format!(
                            "{} is 0: it would refuse every call; leave it out",
                            field(name)
                        ),
                    );
                }
                if let Err(e) = Quota::new(v, window) {
                    return err(field(name), format!("{}: {e}", field(name)));
                }
            }
            if limit.concurrency == Some(0) {
                return err(
                    field("concurrency"),
                    format!("{} is 0: it would refuse every call", field("concurrency")),
                );
            }
            if counts.iter().all(|(_, v)| v.is_none()) && limit.concurrency.is_none() {
                return err(
                    format!("limits[{i}]"),
                    format!(
                        "limits[{i}] sets no limit: give requests, tokens, input_tokens, output_tokens or concurrency"
                    ),
                );
            }
            if let Some(j) = self.limits[..i]
                .iter()
                .position(|l| l.scope == limit.scope && l.window.unwrap_or(super::MINUTE) == window)
            {
                return err(
                    format!("limits[{i}].scope"),
                    format!(
                        "limits[{i}].scope: limits[{j}] already has scope {} and the same window; merge them",
                        limit.scope.as_str()
                    ),
                );
            }
        }
        // Four more may be learned from the provider's headers.
        if cells + 4 > MAX_CELLS {
            return err(
                "limits".into(),
                format!(
                    "limits: {cells} per-window limits is more than one call can take from (at most {})",
                    MAX_CELLS - 4
                ),
            );
        }
        Ok(())
    }
}

impl Limit {
    /// A limit on calls of the same key, per minute.
    pub fn per_minute() -> Self {
        Limit::default()
    }

    /// A limit at `scope`, per minute.
    pub fn at(scope: Scope) -> Self {
        Limit {
            scope,
            ..Limit::default()
        }
    }

    /// Sets the window.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// Requests per window.
    pub fn requests(mut self, n: u64) -> Self {
        self.requests = Some(n);
        self
    }

    /// Input and output tokens per window.
    pub fn tokens(mut self, n: u64) -> Self {
        self.tokens = Some(n);
        self
    }

    /// Input tokens per window.
    pub fn input_tokens(mut self, n: u64) -> Self {
        self.input_tokens = Some(n);
        self
    }

    /// Output tokens per window.
    pub fn output_tokens(mut self, n: u64) -> Self {
        self.output_tokens = Some(n);
        self
    }

    /// Calls in flight at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }
}

/// Example limits of a few providers' tiers, per minute, as published when
/// this was written. They change and differ by account: check your own in
/// the provider's console and use these as a starting point.
pub mod presets {
    use super::Limit;

    /// OpenAI, usage tier 1, `gpt-4o`: 500 requests and 30,000 tokens per
    /// minute.
    pub fn openai_tier1_gpt_4o() -> Limit {
        Limit::per_minute().requests(500).tokens(30_000)
    }

    /// OpenAI, usage tier 1, `gpt-4o-mini`: 500 requests and 200,000
    /// tokens per minute.
    pub fn openai_tier1_gpt_4o_mini() -> Limit {
        Limit::per_minute().requests(500).tokens(200_000)
    }

    /// OpenAI, usage tier 5, `gpt-4o`: 10,000 requests and 30,000,000
    /// tokens per minute.
    pub fn openai_tier5_gpt_4o() -> Limit {
        Limit::per_minute().requests(10_000).tokens(30_000_000)
    }

    /// Anthropic, tier 1, Claude Sonnet: 50 requests, 30,000 input tokens
    /// and 8,000 output tokens per minute.
    pub fn anthropic_tier1_sonnet() -> Limit {
        Limit::per_minute()
            .requests(50)
            .input_tokens(30_000)
            .output_tokens(8_000)
    }

    /// Anthropic, tier 4, Claude Sonnet: 4,000 requests, 2,000,000 input
    /// tokens and 400,000 output tokens per minute.
    pub fn anthropic_tier4_sonnet() -> Limit {
        Limit::per_minute()
            .requests(4_000)
            .input_tokens(2_000_000)
            .output_tokens(400_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let cases: [(RateLimitConfig, &str); 9] = [
            (
                RateLimitConfig::new().on_store_failure(OnStoreFailure::Degraded { share: 1.5 }),
                "on_store_failure",
            ),
            (
                RateLimitConfig::new().store_timeout(Duration::ZERO),
                "store_timeout",
            ),
            (RateLimitConfig::new().headroom(0.0), "headroom"),
            (RateLimitConfig::new().headroom(f64::NAN), "headroom"),
            (RateLimitConfig::new().batch_share(1.5), "batch_share"),
            (
                RateLimitConfig::new().limit(Limit::per_minute().requests(0)),
                "limits[0].requests",
            ),
            (
                RateLimitConfig::new().limit(Limit::per_minute()),
                "limits[0]",
            ),
            (
                RateLimitConfig::new()
                    .limit(Limit::per_minute().requests(5))
                    .limit(Limit::per_minute().tokens(5)),
                "limits[1].scope",
            ),
            (
                RateLimitConfig::new()
                    .limit(Limit::per_minute().window(Duration::ZERO).requests(1)),
                "limits[0].window",
            ),
        ];
        for (config, field) in cases {
            let e = config.build().unwrap_err();
            assert_eq!((e.layer(), e.field()), (LAYER, field), "{e}");
            assert!(e.message().contains(field), "{e}");
        }
    }

    #[test]
    fn defaults_round_trip_and_presets_are_valid() {
        let config = RateLimitConfig::default();
        let text = serde_json::to_string(&config).unwrap();
        let back: RateLimitConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        for preset in [
            presets::openai_tier1_gpt_4o(),
            presets::openai_tier1_gpt_4o_mini(),
            presets::openai_tier5_gpt_4o(),
            presets::anthropic_tier1_sonnet(),
            presets::anthropic_tier4_sonnet(),
        ] {
            RateLimitConfig::new().limit(preset).build().unwrap();
        }
    }

    #[test]
    fn default_output_by_longest_prefix() {
        let c = RateLimitConfig::new()
            .output_tokens_for("gpt-4o", 2048)
            .output_tokens_for("gpt-4o-mini", 512);
        assert_eq!(c.default_output_for(Some("gpt-4o-mini-2024")), 512);
        assert_eq!(c.default_output_for(Some("gpt-4o-2024")), 2048);
        assert_eq!(c.default_output_for(Some("claude")), 1024);
        assert_eq!(c.default_output_for(None), 1024);
    }

    #[test]
    fn headroom_scales_quotas() {
        let c = RateLimitConfig::new();
        assert_eq!(c.quota(60, Duration::from_secs(60)).unwrap().limit(), 54);
        assert_eq!(c.quota(1, Duration::from_secs(60)).unwrap().limit(), 1);
    }
}
