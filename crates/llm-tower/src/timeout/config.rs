//! The limits of [`TimeoutLayer`](super::TimeoutLayer), as data.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use super::Phase;

/// Which limits apply to a call; every limit is optional.
///
/// Deserialises from human durations and validates them
/// ([`validate`](Self::validate)):
///
/// ```
/// use std::time::Duration;
/// use llm_tower::timeout::TimeoutConfig;
///
/// let config: TimeoutConfig = serde_json::from_str(r#"{
///     "total": "120s",
///     "attempt": "45s",
///     "first_token": "10s",
///     "idle": "15s",
///     "profiles": {
///         "o3*": { "attempt": "110s", "first_token": "90s" }
///     }
/// }"#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.limits_for(Some("o3-mini")).first_token, Some(Duration::from_secs(90)));
/// assert_eq!(config.limits_for(Some("gpt-4o")).first_token, Some(Duration::from_secs(10)));
///
/// let bad: TimeoutConfig = serde_json::from_str(r#"{"total": "30s", "attempt": "60s"}"#).unwrap();
/// assert_eq!(
///     bad.validate().unwrap_err().to_string(),
///     "timeout: attempt (1m) is longer than total (30s): it could never be used in full",
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// The whole call through the layer, until the end of the body. Placed
    /// outside retry, it bounds every attempt and wait together.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub total: Option<Duration>,
    /// One attempt, until the end of its body. Meant for a layer placed
    /// inside retry.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Duration>,
    /// From the call to the response headers.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<Duration>,
    /// From the call to the first SSE `data` event of a streaming answer
    /// (comments and keep-alives do not count).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub first_token: Option<Duration>,
    /// The longest silence between body chunks (any chunk counts, comments
    /// included), measured while the caller is reading.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
    /// From the response headers to the end of the body.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub stream: Option<Duration>,
    /// Limits for some models, by model name: exact (`gpt-4o-mini`) or a
    /// prefix ending in `*` (`o3*`). The exact name wins, then the longest
    /// prefix. A profile's limits replace the ones above; the limits it
    /// leaves out are inherited. Profiles cannot nest.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, TimeoutConfig>,
}

/// The limits in force for one call: a [`TimeoutConfig`] resolved for a
/// model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// See [`TimeoutConfig::total`].
    pub total: Option<Duration>,
    /// See [`TimeoutConfig::attempt`].
    pub attempt: Option<Duration>,
    /// See [`TimeoutConfig::first_byte`].
    pub first_byte: Option<Duration>,
    /// See [`TimeoutConfig::first_token`].
    pub first_token: Option<Duration>,
    /// See [`TimeoutConfig::idle`].
    pub idle: Option<Duration>,
    /// See [`TimeoutConfig::stream`].
    pub stream: Option<Duration>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The earlier of `total` and `attempt`, with its phase: the deadline of
    /// the call through this layer.
    pub(crate) fn call(&self) -> Option<(Phase, Duration)> {
        match (self.total, self.attempt) {
            (Some(t), Some(a)) if a < t => Some((Phase::Attempt, a)),
            (Some(t), _) => Some((Phase::Total, t)),
            (None, Some(a)) => Some((Phase::Attempt, a)),
            (None, None) => None,
        }
    }

    fn over(self, base: Limits) -> Limits {
        Limits {
            total: self.total.or(base.total),
            attempt: self.attempt.or(base.attempt),
            first_byte: self.first_byte.or(base.first_byte),
            first_token: self.first_token.or(base.first_token),
            idle: self.idle.or(base.idle),
            stream: self.stream.or(base.stream),
        }
    }

    fn named(&self) -> [(&'static str, Option<Duration>); 6] {
        [
            ("total", self.total),
            ("attempt", self.attempt),
            ("first_byte", self.first_byte),
            ("first_token", self.first_token),
            ("idle", self.idle),
            ("stream", self.stream),
        ]
    }

    /// Checks the limits: the field at fault and the rule, in words.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (name, d) in self.named() {
            if d == Some(Duration::ZERO) {
                return Err((
                    name,
                    format!(
                        "{name} is 0s, which would fail every call: leave it out to disable it"
                    ),
                ));
            }
        }
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let outer = [("total", self.total), ("attempt", self.attempt)];
        let longer = |(inner, di): (&'static str, Option<Duration>),
                      (o, dout): (&str, Option<Duration>)| {
            match (di, dout) {
                (Some(i), Some(out)) if i > out => Err((
                    inner,
                    format!(
                        "{inner} ({}) is longer than {o} ({}): it could never be used in full",
                        fmt(i),
                        fmt(out)
                    ),
                )),
                _ => Ok(()),
            }
        };
        longer(outer[1], outer[0])?;
        for inner in [
            ("first_byte", self.first_byte),
            ("first_token", self.first_token),
            ("idle", self.idle),
            ("stream", self.stream),
        ] {
            for o in outer {
                longer(inner, o)?;
            }
        }
        Ok(())
    }
}

/// A timeout configuration that cannot work: the field and the rule.
pub use crate::config::ConfigError;

impl TimeoutConfig {
    /// No limits.
    pub fn new() -> Self {
        TimeoutConfig::default()
    }

    /// Sets [`total`](Self::total).
    pub fn total(mut self, d: Duration) -> Self {
        self.total = Some(d);
        self
    }

    /// Sets [`attempt`](Self::attempt).
    pub fn attempt(mut self, d: Duration) -> Self {
        self.attempt = Some(d);
        self
    }

    /// Sets [`first_byte`](Self::first_byte).
    pub fn first_byte(mut self, d: Duration) -> Self {
        self.first_byte = Some(d);
        self
    }

    /// Sets [`first_token`](Self::first_token).
    pub fn first_token(mut self, d: Duration) -> Self {
        self.first_token = Some(d);
        self
    }

    /// Sets [`idle`](Self::idle).
    pub fn idle(mut self, d: Duration) -> Self {
        self.idle = Some(d);
        self
    }

    /// Sets [`stream`](Self::stream).
    pub fn stream(mut self, d: Duration) -> Self {
        self.stream = Some(d);
        self
    }

    /// Adds a profile for models matching `pattern` (exact, or a prefix
    /// ending in `*`).
    pub fn profile(mut self, pattern: impl Into<String>, limits: TimeoutConfig) -> Self {
        self.profiles.insert(pattern.into(), limits);
        self
    }

    /// The part of this configuration for a layer outside retry: `total`
    /// only (in every profile too).
    pub fn whole_call(&self) -> TimeoutConfig {
        self.map_limits(|c| TimeoutConfig {
            total: c.total,
            ..TimeoutConfig::default()
        })
    }

    /// The part of this configuration for a layer inside retry: everything
    /// but `total` (in every profile too).
    pub fn per_attempt(&self) -> TimeoutConfig {
        self.map_limits(|c| TimeoutConfig {
            total: None,
            profiles: BTreeMap::new(),
            ..c.clone()
        })
    }

    fn map_limits(&self, f: impl Fn(&TimeoutConfig) -> TimeoutConfig) -> TimeoutConfig {
        let mut out = f(self);
        out.profiles = self
            .profiles
            .iter()
            .map(|(k, p)| (k.clone(), f(p)))
            .collect();
        out
    }

    /// This configuration's own limits, without profiles.
    pub fn limits(&self) -> Limits {
        Limits {
            total: self.total,
            attempt: self.attempt,
            first_byte: self.first_byte,
            first_token: self.first_token,
            idle: self.idle,
            stream: self.stream,
        }
    }

    /// The limits for a call to `model`: its profile over the defaults.
    pub fn limits_for(&self, model: Option<&str>) -> Limits {
        let base = self.limits();
        match model.and_then(|m| self.profile_for(m)) {
            Some(p) => p.limits().over(base),
            None => base,
        }
    }

    fn profile_for(&self, model: &str) -> Option<&TimeoutConfig> {
        if let Some(p) = self.profiles.get(model) {
            return Some(p);
        }
        self.profiles
            .iter()
            .filter_map(|(k, p)| Some((k.strip_suffix('*')?, p)))
            .filter(|(prefix, _)| model.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, p)| p)
    }

    /// Checks every limit: none is zero, `attempt` fits in `total`, and each
    /// phase fits in both; the same for every profile once merged.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: String, message: String| ConfigError::new("timeout", field, message);
        self.limits()
            .validate()
            .map_err(|(field, message)| err(field.into(), message))?;
        for (name, p) in &self.profiles {
            if !p.profiles.is_empty() {
                return Err(err(
                    format!("profiles.{name}.profiles"),
                    format!("profile `{name}` has profiles of its own"),
                ));
            }
            if name.is_empty() || name == "*" {
                return Err(err(
                    format!("profiles.{name}"),
                    format!(
                        "profile `{name}` matches every model: set the limits at the top level"
                    ),
                ));
            }
            p.limits()
                .over(self.limits())
                .validate()
                .map_err(|(field, e)| {
                    err(
                        format!("profiles.{name}.{field}"),
                        format!("profile `{name}`: {e}"),
                    )
                })?;
        }
        Ok(())
    }

    /// Resolves the profiles once, for the layer's hot path.
    pub(crate) fn compile(&self) -> Compiled {
        let base = self.limits();
        let mut prefixes: Vec<(Box<str>, Limits)> = Vec::new();
        let mut exact: Vec<(Box<str>, Limits)> = Vec::new();
        for (k, p) in &self.profiles {
            let limits = p.limits().over(base);
            match k.strip_suffix('*') {
                Some(prefix) => prefixes.push((prefix.into(), limits)),
                None => exact.push((k.as_str().into(), limits)),
            }
        }
        // Longest prefix first, so the first match is the most specific.
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Compiled {
            base,
            exact,
            prefixes,
        }
    }
}

/// A [`TimeoutConfig`] ready for lookups.
#[derive(Debug)]
pub(crate) struct Compiled {
    base: Limits,
    exact: Vec<(Box<str>, Limits)>,
    prefixes: Vec<(Box<str>, Limits)>,
}

impl Compiled {
    pub(crate) fn limits_for(&self, model: Option<&str>) -> Limits {
        let Some(model) = model else { return self.base };
        self.exact
            .iter()
            .find(|(k, _)| &**k == model)
            .or_else(|| self.prefixes.iter().find(|(k, _)| model.starts_with(&**k)))
            .map_or(self.base, |(_, l)| *l)
    }
}

impl crate::config::Validate for TimeoutConfig {
    type Error = ConfigError;

    fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }
}

impl TimeoutConfig {
    /// Checks the configuration once, for a layer's infallible
    /// constructor: `…Layer::new(config.build()?)`.
    pub fn build(self) -> Result<crate::config::Valid<Self>, ConfigError> {
        crate::config::Valid::new(self)
    }
}
