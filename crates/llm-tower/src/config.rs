//! Configurations checked once: [`Valid`], the proof a layer is built from.
//!
//! A layer's constructor cannot fail, as in tower and tower-http: it takes
//! a `Valid<Config>`, and the only ways to get one check the configuration
//! first — [`Valid::new`] (or the config's own `build`), `TryFrom` on the
//! layer, or deserializing a `Valid<Config>`, which validates what it read
//! the same way.
//!
//! ```
//! # #[cfg(feature = "retry")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use llm_tower::{config::Valid, retry::{RetryConfig, RetryLayer}};
//!
//! // Built in code: checked here, once; the layer cannot fail.
//! let layer = RetryLayer::new(RetryConfig::new().max_attempts(4).build()?);
//!
//! // Read from a file: checked as it is read, with the field named.
//! let err = serde_json::from_str::<Valid<RetryConfig>>(r#"{"max_attempts": 0}"#).unwrap_err();
//! assert!(err.to_string().contains("max_attempts"));
//! let config: Valid<RetryConfig> = serde_json::from_str(r#"{"max_attempts": 5}"#)?;
//! let _ = (layer, RetryLayer::new(config));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "retry"))]
//! # fn main() {}
//! ```

use std::{borrow::Cow, fmt, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration that cannot work: which layer, which field, and the
/// rule it breaks.
///
/// ```
/// # #[cfg(feature = "retry")] {
/// use llm_tower::retry::RetryConfig;
///
/// let e = RetryConfig::new().max_attempts(0).build().unwrap_err();
/// assert_eq!((e.layer(), e.field()), ("retry", "max_attempts"));
/// assert_eq!(e.to_string(), "retry: max_attempts is 0: at least the first attempt must be allowed");
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    layer: &'static str,
    field: Cow<'static, str>,
    message: String,
}

impl ConfigError {
    #[cfg_attr(
        not(any(feature = "retry", feature = "timeout", feature = "circuit-breaker")),
        allow(dead_code)
    )]
    pub(crate) fn new(
        layer: &'static str,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            layer,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The layer whose configuration it is: `retry`, `timeout`,
    /// `circuit breaker`.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The field at fault, as a path in the configuration
    /// (`max_attempts`, `backoff.cap`, `profiles.o3*.first_token`).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The rule broken, in words, naming the field.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.layer, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration that can check itself.
pub trait Validate: Sized {
    /// Why a configuration cannot work: names the field and the rule.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks every value.
    fn check(&self) -> Result<(), Self::Error>;
}

/// A configuration that passed its [`check`](Validate::check): what a
/// layer's infallible constructor takes.
///
/// It derefs to the configuration, and [`into_inner`](Self::into_inner)
/// gives it back to change it (and check it again).
#[derive(Clone, PartialEq)]
pub struct Valid<T>(T);

impl<T: Validate> Valid<T> {
    /// Checks `config`.
    pub fn new(config: T) -> Result<Self, T::Error> {
        config.check()?;
        Ok(Valid(config))
    }
}

impl<T> Valid<T> {
    /// The configuration.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// The configuration, to change it.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Valid<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Valid<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The defaults, which are always valid.
impl<T: Validate + Default> Default for Valid<T> {
    fn default() -> Self {
        Valid::new(T::default()).expect("the default configuration is valid")
    }
}

impl<T: Serialize> Serialize for Valid<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Deserializes the configuration, then checks it: a file is held to the
/// same rules as code.
impl<'de, T: Deserialize<'de> + Validate> Deserialize<'de> for Valid<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let config = T::deserialize(d)?;
        Valid::new(config).map_err(serde::de::Error::custom)
    }
}

#[cfg(all(test, feature = "full"))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer},
        retry::{RetryConfig, RetryLayer},
        timeout::{TimeoutConfig, TimeoutLayer},
    };

    #[test]
    fn every_way_in_checks_the_configuration() {
        // Built in code.
        let e = RetryConfig::new().max_attempts(0).build().unwrap_err();
        assert!(e.to_string().contains("max_attempts"), "{e}");
        // Through the layer's TryFrom.
        let e = TimeoutLayer::try_from(
            TimeoutConfig::new()
                .total(Duration::from_secs(1))
                .attempt(Duration::from_secs(2)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("attempt"), "{e}");
        let e = CircuitBreakerLayer::try_from(CircuitBreakerConfig::new().max_keys(0)).unwrap_err();
        assert!(e.to_string().contains("max_keys"), "{e}");
        // Read from a file, with human durations.
        let e = serde_json::from_str::<Valid<TimeoutConfig>>(r#"{"total": "1s", "attempt": "2s"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("attempt"), "{e}");
        let ok: Valid<TimeoutConfig> =
            serde_json::from_str(r#"{"total": "60s", "attempt": "20s"}"#).unwrap();
        assert_eq!(ok.get().total, Some(Duration::from_secs(60)));
        let _ = TimeoutLayer::new(ok);
    }

    #[test]
    fn errors_name_the_layer_and_the_field() {
        let cases: [(ConfigError, &str, &str); 6] = [
            (
                RetryConfig::new().max_attempts(0).build().unwrap_err(),
                "retry",
                "max_attempts",
            ),
            (
                RetryConfig::new()
                    .backoff(crate::retry::Backoff {
                        base: Duration::from_secs(2),
                        cap: Duration::from_secs(1),
                        ..Default::default()
                    })
                    .build()
                    .unwrap_err(),
                "retry",
                "backoff.cap",
            ),
            (
                TimeoutConfig::new()
                    .total(Duration::from_secs(1))
                    .first_token(Duration::from_secs(5))
                    .build()
                    .unwrap_err(),
                "timeout",
                "first_token",
            ),
            (
                TimeoutConfig::new()
                    .profile("o3*", TimeoutConfig::new().idle(Duration::ZERO))
                    .build()
                    .unwrap_err(),
                "timeout",
                "profiles.o3*.idle",
            ),
            (
                CircuitBreakerConfig::new().max_keys(0).build().unwrap_err(),
                "circuit breaker",
                "max_keys",
            ),
            (
                CircuitBreakerConfig::new()
                    .half_open(crate::circuit_breaker::HalfOpen {
                        probes: 0,
                        ..Default::default()
                    })
                    .build()
                    .unwrap_err(),
                "circuit breaker",
                "half_open.probes",
            ),
        ];
        for (e, layer, field) in cases {
            assert_eq!((e.layer(), e.field()), (layer, field), "{e}");
            assert!(e.to_string().starts_with(layer), "{e}");
            assert!(
                e.message().contains(field.rsplit('.').next().unwrap()),
                "{e}"
            );
        }
    }

    #[test]
    fn the_defaults_are_valid_and_round_trip() {
        let _ = (RetryLayer::default(), CircuitBreakerLayer::default());
        let config = Valid::<RetryConfig>::default();
        let text = serde_json::to_string(&config).unwrap();
        let back: Valid<RetryConfig> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.into_inner(), RetryConfig::default());
    }
}
