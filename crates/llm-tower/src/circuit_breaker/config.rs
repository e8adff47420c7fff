//! [`CircuitBreakerConfig`]: when a breaker trips, how long it stays open,
//! how it probes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::FailureClass;

/// Everything that decides when a breaker opens and how it closes again.
///
/// ```
/// use llm_tower::circuit_breaker::CircuitBreakerConfig;
///
/// let config: CircuitBreakerConfig = serde_json::from_str(r#"{
///     "consecutive_failures": 5,
///     "failure_rate": { "threshold": 0.5, "min_calls": 20, "window": { "calls": 100 } },
///     "slow_calls": { "duration": "20s", "threshold": 0.8 },
///     "open": { "base": "10s", "factor": 2.0, "cap": "5m", "jitter": 0.1 },
///     "half_open": { "probes": 2, "successes": 2 },
///     "count": ["server_error", "overloaded", "timeout", "connect", "stream_error", "rate_limited"]
/// }"#).unwrap();
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Open after this many counted failures in a row; `null` to disable.
    pub consecutive_failures: Option<u32>,
    /// Open when the rate of counted failures over a sliding window reaches
    /// a threshold; `null` to disable.
    pub failure_rate: Option<RateTrip>,
    /// Open when too many calls are slow; `null` (the default) to disable.
    pub slow_calls: Option<SlowTrip>,
    /// How long the breaker stays open.
    pub open: OpenDuration,
    /// How it probes once the open time is over.
    pub half_open: HalfOpen,
    /// The failure classes that count against the provider's health, by
    /// name (`server_error`, `overloaded`, `rate_limited` …). `null`: the
    /// classifier's word
    /// ([`counts_against_health`](crate::classify::Failure::counts_against_health)):
    /// server errors, overload, timeouts, connection and stream errors; not
    /// bad requests, auth errors or rate limits.
    pub count: Option<Vec<String>>,
    /// The most breakers kept at once, 10 000 by default. When a new key
    /// comes with the map full, the least recently used breakers that can
    /// go (closed ones, and isolated ones, whose isolation is kept apart)
    /// are dropped, an eighth of the map at a time; open and half-open
    /// breakers are never dropped. If none can go, new keys share one
    /// overflow breaker (key `<overflow>`) until room is made.
    pub max_keys: usize,
    /// A closed breaker unused for this long is dropped, with its counts
    /// (10 min by default). Checked when new keys arrive, at most four
    /// times per period, so it may stay up to about 1.5 times as long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Share the breakers' health through the layer's store (off by
    /// default): a breaker that trips sets a flag
    /// `<prefix>:breaker:<key>:open` for its open time, and a closed
    /// breaker of the same key in another layer or process that finds the
    /// flag opens for the time left on it. Needs a layer made
    /// [`with_store`](super::CircuitBreakerLayer::with_store); see
    /// [sharing](super#sharing-health-across-processes).
    pub share: bool,
    /// How often, at most, a closed breaker looks at its shared flag (1 s
    /// by default): a breaker opened elsewhere is seen here within this
    /// time (plus a store round trip). `0s` looks on every call — a store
    /// call per request. Only read when [`share`](Self::share) is on.
    #[serde(with = "humantime_serde")]
    pub share_refresh: Duration,
    /// The prefix of the keys the layer writes in its store when it
    /// [shares](Self::share), `llm-tower` by default. Layers that share a
    /// store and a prefix share their breakers' health.
    pub prefix: String,
}

/// The default [`max_keys`](CircuitBreakerConfig::max_keys).
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The default [`share_refresh`](CircuitBreakerConfig::share_refresh): 1 s.
pub const DEFAULT_SHARE_REFRESH: Duration = Duration::from_secs(1);

/// The default [`prefix`](CircuitBreakerConfig::prefix): `llm-tower`.
pub const DEFAULT_PREFIX: &str = "llm-tower";

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            consecutive_failures: Some(5),
            failure_rate: Some(RateTrip::default()),
            slow_calls: None,
            open: OpenDuration::default(),
            half_open: HalfOpen::default(),
            count: None,
            max_keys: DEFAULT_MAX_KEYS,
            idle_timeout: Duration::from_secs(600),
            share: false,
            share_refresh: DEFAULT_SHARE_REFRESH,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// A trip on the rate of failures over a sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateTrip {
    /// The failure rate that opens the breaker, from 0 to 1.
    pub threshold: f64,
    /// No rate is judged on fewer calls than this in the window.
    pub min_calls: u32,
    /// The window.
    pub window: SlidingWindow,
}

impl Default for RateTrip {
    /// 50% of at least 10 calls among the last 50.
    fn default() -> Self {
        RateTrip {
            threshold: 0.5,
            min_calls: 10,
            window: SlidingWindow::Calls { calls: 50 },
        }
    }
}

/// A trip on the rate of slow calls, judged over the failure-rate window
/// (or the last 50 calls without one).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowTrip {
    /// A call that takes longer than this is slow: until the end of its
    /// body, or for a stream, until its first token (a long answer that
    /// streams steadily is not a slow provider; a stall mid-stream is left
    /// to the timeout layer).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The rate of slow calls that opens the breaker, from 0 to 1.
    pub threshold: f64,
}

/// The sliding window of the failure rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SlidingWindow {
    /// The last `calls` calls (at most 1024).
    Calls {
        /// How many calls.
        calls: u32,
    },
    /// The calls of the last `duration`, in ten buckets.
    Time {
        /// How long.
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

/// How long an open breaker refuses calls: `base`, then `factor` times
/// longer at each trip that follows without a close, up to `cap`, each
/// time moved by up to `jitter` of itself either way.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenDuration {
    /// The first open time.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// The growth per repeated trip, at least 1.
    pub factor: f64,
    /// The longest open time.
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    /// The random share, from 0 to 1: 0.1 moves each open time by up to
    /// 10% either way, so that many breakers do not probe together.
    pub jitter: f64,
}

impl Default for OpenDuration {
    /// 15 s, doubling to 5 min, ±10%.
    fn default() -> Self {
        OpenDuration {
            base: Duration::from_secs(15),
            factor: 2.0,
            cap: Duration::from_secs(300),
            jitter: 0.1,
        }
    }
}

impl OpenDuration {
    /// The open time of trip `trip` (1 for the first) before jitter.
    pub fn nominal(&self, trip: u32) -> Duration {
        let power = self.factor.powi(trip.saturating_sub(1).min(1024) as i32);
        let secs = self.base.as_secs_f64() * power;
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// How many probes an open breaker lets through once its time is over,
/// and how many must succeed to close it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HalfOpen {
    /// Calls let through at once while half-open; the others fail fast.
    pub probes: u32,
    /// Successful probes that close the breaker.
    pub successes: u32,
}

impl Default for HalfOpen {
    fn default() -> Self {
        HalfOpen {
            probes: 1,
            successes: 1,
        }
    }
}

/// A breaker configuration that cannot work: the field and the rule.
pub use crate::config::ConfigError;

pub(crate) const MAX_WINDOW_CALLS: u32 = 1024;

impl CircuitBreakerConfig {
    /// The defaults: open after 5 failures in a row or 50% of at least 10
    /// of the last 50 calls; 15 s open, doubling to 5 min; one probe.
    pub fn new() -> Self {
        CircuitBreakerConfig::default()
    }

    /// Sets [`consecutive_failures`](Self::consecutive_failures).
    pub fn consecutive_failures(mut self, n: Option<u32>) -> Self {
        self.consecutive_failures = n;
        self
    }

    /// Sets [`failure_rate`](Self::failure_rate).
    pub fn failure_rate(mut self, trip: Option<RateTrip>) -> Self {
        self.failure_rate = trip;
        self
    }

    /// Sets [`slow_calls`](Self::slow_calls).
    pub fn slow_calls(mut self, trip: Option<SlowTrip>) -> Self {
        self.slow_calls = trip;
        self
    }

    /// Sets [`open`](Self::open).
    pub fn open(mut self, open: OpenDuration) -> Self {
        self.open = open;
        self
    }

    /// Sets [`half_open`](Self::half_open).
    pub fn half_open(mut self, half_open: HalfOpen) -> Self {
        self.half_open = half_open;
        self
    }

    /// Sets [`max_keys`](Self::max_keys).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets [`share`](Self::share).
    pub fn share(mut self, share: bool) -> Self {
        self.share = share;
        self
    }

    /// Sets [`share_refresh`](Self::share_refresh).
    pub fn share_refresh(mut self, d: Duration) -> Self {
        self.share_refresh = d;
        self
    }

    /// Sets the store key [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`count`](Self::count) from classes.
    pub fn count(mut self, classes: &[FailureClass]) -> Self {
        self.count = Some(classes.iter().map(|c| c.as_str().to_owned()).collect());
        self
    }

    /// The classes of [`count`](Self::count), resolved.
    pub(crate) fn counted_classes(&self) -> Result<Option<Vec<FailureClass>>, String> {
        let Some(names) = &self.count else {
            return Ok(None);
        };
        names
            .iter()
            .map(|n| {
                FailureClass::ALL
                    .into_iter()
                    .find(|c| c.as_str() == n)
                    .ok_or_else(|| format!("count: unknown failure class `{n}`"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &str, message: String| {
            ConfigError::new("circuit breaker", field.to_owned(), message)
        };
        let rate = |what: &str, r: f64| {
            if r > 0.0 && r <= 1.0 {
                Ok(())
            } else {
                Err(err(what, format!("{what} {r} is not in (0, 1]")))
            }
        };
        if self.consecutive_failures == Some(0) {
            return Err(err(
                "consecutive_failures",
                "consecutive_failures is 0: every call would open the breaker".into(),
            ));
        }
        if self.consecutive_failures.is_none()
            && self.failure_rate.is_none()
            && self.slow_calls.is_none()
        {
            return Err(err(
                "consecutive_failures",
                "no trip is set: give consecutive_failures, failure_rate or slow_calls".into(),
            ));
        }
        if let Some(r) = &self.failure_rate {
            rate("failure_rate.threshold", r.threshold)?;
            if r.min_calls == 0 {
                return Err(err(
                    "failure_rate.min_calls",
                    "failure_rate.min_calls is 0: one failure would be a 100% rate".into(),
                ));
            }
            match r.window {
                SlidingWindow::Calls { calls } => {
                    if calls == 0 || calls > MAX_WINDOW_CALLS {
                        return Err(err(
                            "failure_rate.window.calls",
                            format!(
                                "failure_rate.window.calls {calls} is not between 1 and {MAX_WINDOW_CALLS}"
                            ),
                        ));
                    }
                    if r.min_calls > calls {
                        return Err(err(
                            "failure_rate.min_calls",
                            format!(
                                "failure_rate.min_calls ({}) is more than the window holds ({calls})",
                                r.min_calls
                            ),
                        ));
                    }
                }
                SlidingWindow::Time { duration } => {
                    if duration < Duration::from_millis(10) {
                        return Err(err(
                            "failure_rate.window.duration",
                            "failure_rate.window.duration is shorter than 10ms".into(),
                        ));
                    }
                }
            }
        }
        if let Some(s) = &self.slow_calls {
            rate("slow_calls.threshold", s.threshold)?;
            if s.duration.is_zero() {
                return Err(err(
                    "slow_calls.duration",
                    "slow_calls.duration is 0s: every call would be slow".into(),
                ));
            }
        }
        let o = &self.open;
        if o.base.is_zero() {
            return Err(err(
                "open.base",
                "open.base is 0s: the breaker would never stay open".into(),
            ));
        }
        if !(o.factor >= 1.0 && o.factor.is_finite()) {
            return Err(err(
                "open.factor",
                format!("open.factor {} is not a number of at least 1", o.factor),
            ));
        }
        if o.cap < o.base {
            return Err(err("open.cap", "open.cap is shorter than open.base".into()));
        }
        if !(0.0..=1.0).contains(&o.jitter) {
            return Err(err(
                "open.jitter",
                format!("open.jitter {} is not in [0, 1]", o.jitter),
            ));
        }
        if self.half_open.probes == 0 {
            return Err(err(
                "half_open.probes",
                "half_open.probes is 0: the breaker could never close".into(),
            ));
        }
        if self.half_open.successes == 0 {
            return Err(err(
                "half_open.successes",
                "half_open.successes is 0".into(),
            ));
        }
        if self.half_open.successes > u32::from(u16::MAX)
            || self.half_open.probes > u32::from(u16::MAX)
        {
            return Err(err(
                "half_open.probes",
                "half_open.probes and half_open.successes must be at most 65535".into(),
            ));
        }
        if self.max_keys == 0 {
            return Err(err(
                "max_keys",
                "max_keys is 0: no breaker could be kept".into(),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(err(
                "idle_timeout",
                "idle_timeout is 0s: every breaker would be dropped at once".into(),
            ));
        }
        if self.share && self.prefix.is_empty() {
            return Err(err(
                "prefix",
                "prefix is empty: shared flags would collide with other users of the store".into(),
            ));
        }
        self.counted_classes().map_err(|e| err("count", e))?;
        Ok(())
    }
}

impl crate::config::Validate for CircuitBreakerConfig {
    type Error = ConfigError;

    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl CircuitBreakerConfig {
    /// Checks the configuration once, for a layer's infallible
    /// constructor: `…Layer::new(config.build()?)`.
    pub fn build(self) -> Result<crate::config::Valid<Self>, ConfigError> {
        crate::config::Valid::new(self)
    }
}
