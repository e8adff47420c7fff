//! The mock's configuration: data, from code, a TOML or JSON file, or flags.

use std::{fmt, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Quota, Rule};

/// Everything that decides how the mock answers.
///
/// Every field has a default, so a file need only say what it changes:
///
/// ```toml
/// seed = 7
/// context_window = 128000
///
/// [timing]
/// first_byte = "20ms"
/// token_interval = "5ms"
///
/// [quota]
/// requests_per_minute = 60
/// tokens_per_minute = 40000
///
/// [[rules]]
/// fault = { kind = "rate_limited", retry_after = "2s" }
/// probability = 0.1
///
/// [[rules]]
/// fault = { kind = "overloaded" }
/// window = { from = "10s", until = "15s" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Seeds the content and every chance: the same seed and script give
    /// the same run.
    pub seed: u64,
    /// Faults to inject, tried in order for each request.
    pub rules: Vec<Rule>,
    /// Requests and tokens per minute, per model.
    pub quota: Quota,
    /// How fast healthy answers come.
    pub timing: Timing,
    /// When set, requests must carry this key as their provider expects
    /// (`authorization: Bearer`, `x-api-key`, `x-goog-api-key`), or get a 401.
    pub api_key: Option<String>,
    /// The context window of every model, in tokens: a prompt plus output
    /// cap beyond it gets the provider's context-length error.
    pub context_window: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: 0,
            rules: Vec::new(),
            quota: Quota::default(),
            timing: Timing::default(),
            api_key: None,
            context_window: 128_000,
        }
    }
}

/// The pace of healthy answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// Time before the response headers of every answer.
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Time before each token event of a stream.
    #[serde(with = "humantime_serde")]
    pub token_interval: Duration,
}

/// A configuration that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl MockConfig {
    /// Reads a configuration from a `.toml` or `.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        let config: MockConfig = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text)
                .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?,
            Some("toml") => toml::from_str(&text)
                .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?,
            _ => {
                return Err(ConfigError::new(format!(
                    "{}: the configuration file must end in .toml or .json",
                    path.display()
                )));
            }
        };
        config
            .validate()
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Checks every value; the server refuses to start on an error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| ConfigError::new(format!("rule {} ({rule}): {e}", i + 1)))?;
        }
        self.quota.validate().map_err(ConfigError::new)?;
        if self.context_window == 0 {
            return Err(ConfigError::new("context_window must be at least 1 token"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fault;

    #[test]
    fn the_documented_file_parses() {
        let text = r#"
seed = 7
context_window = 128000

[timing]
first_byte = "20ms"
token_interval = "5ms"

[quota]
requests_per_minute = 60
tokens_per_minute = 40000

[[rules]]
fault = { kind = "rate_limited", retry_after = "2s" }
probability = 0.1

[[rules]]
fault = { kind = "overloaded" }
window = { from = "10s", until = "15s" }
"#;
        let c: MockConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.timing.token_interval, Duration::from_millis(5));
        assert_eq!(c.quota.requests_per_minute, Some(60));
        assert_eq!(
            c.rules[0].fault,
            Fault::rate_limited(Duration::from_secs(2))
        );
        assert_eq!(
            c.rules[1],
            Rule::outage(Duration::from_secs(10)..Duration::from_secs(15))
        );
        // JSON round trip.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<MockConfig>(&json).unwrap(), c);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let c = MockConfig {
            rules: vec![Rule::new(Fault::status(503)).probability(1.5)],
            ..MockConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "rule 1 (status_503): probability 1.5 is not between 0 and 1"
        );
        let c: Result<MockConfig, _> = toml::from_str("sed = 1");
        assert!(c.unwrap_err().to_string().contains("unknown field `sed`"));
        let c: Result<MockConfig, _> = toml::from_str("[[rules]]\nfault = { kind = \"explode\" }");
        assert!(
            c.unwrap_err()
                .to_string()
                .contains("unknown variant `explode`")
        );
    }
}
