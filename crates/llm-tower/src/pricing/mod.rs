//! Prices per model, to turn [`Usage`] into [`Cost`].
//!
//! The crate embeds list prices (USD per million tokens: input, output,
//! cached input and, for Anthropic, cache writes) for the major OpenAI,
//! Anthropic and Gemini models, as last checked by the project on the date
//! [`PriceTable::as_of`] returns. Prices change: override and extend them
//! from configuration. Tiered prices (Gemini's long-context rates, batch
//! discounts) are not modelled: the table holds the standard rate.
//!
//! A model the table does not know is *unpriced*, an error
//! ([`Unpriced`]), never silently free: a budget must decide what to do
//! about it.
//!
//! ```
//! use llm_tower::{pricing::{PriceTable, PricingConfig}, usage::Usage};
//!
//! let config: PricingConfig = serde_json::from_str(r#"{
//!     "models": {
//!         "gpt-4o": { "input": 2.0, "output": 8.0 },
//!         "my-finetune": { "input": 3.0, "output": 12.0, "cached_input": 1.5 }
//!     }
//! }"#)?;
//! let table = PriceTable::embedded().merge(config.into_table());
//!
//! let usage = Usage::new(1_000_000, 1_000_000);
//! assert_eq!(table.cost("gpt-4o", &usage)?.to_string(), "$10.00");
//! assert_eq!(table.cost("my-finetune", &usage)?.to_string(), "$15.00");
//! assert!(table.cost("some-new-model", &usage).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Names
//!
//! A model is found by its exact name first, then by the name without what
//! providers add to it: a date (`gpt-4o-2024-08-06`,
//! `claude-sonnet-4-5-20250929`), `-latest`, Gemini's `models/` prefix and
//! version suffixes (`-001`, `-preview-05-20`), Bedrock's and Vertex's
//! forms (`anthropic.claude-3-haiku-20240307-v1:0`,
//! `claude-sonnet-4-5@20250929`) and router prefixes (`openai/gpt-4o`).
//! Names never resolve across families: `gpt-4o-mini` is not `gpt-4o`.
//!
//! # Arithmetic
//!
//! Prices are kept as integer nano-dollars per million tokens and costs as
//! integer nano-dollars ([`Cost`]), so sums never drift. Each component
//! (uncached input, cached input, cache writes, output) is rounded up to
//! the nano-dollar: the safe side for budgets.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
    iter::Sum,
    ops::{Add, AddAssign},
    sync::{Arc, OnceLock},
};

use serde::Deserialize;

use crate::usage::Usage;

/// An amount of money in nano-dollars (10⁻⁹ USD), saturating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost(u64);

impl Cost {
    /// Nothing.
    pub const ZERO: Cost = Cost(0);

    /// A cost of `nanos` nano-dollars.
    pub const fn from_nanos(nanos: u64) -> Cost {
        Cost(nanos)
    }

    /// A cost in dollars, rounded up to the nano-dollar; `None` for a
    /// negative, non-finite or too large amount.
    pub fn from_usd(usd: f64) -> Option<Cost> {
        let nanos = (usd * 1e9).ceil();
        (usd.is_finite() && usd >= 0.0 && nanos < u64::MAX as f64).then_some(Cost(nanos as u64))
    }

    /// The cost in nano-dollars.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The cost in dollars, for display and metrics.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// `self + other`, saturating.
    pub const fn saturating_add(self, other: Cost) -> Cost {
        Cost(self.0.saturating_add(other.0))
    }

    /// `self - other`, zero at the least.
    pub const fn saturating_sub(self, other: Cost) -> Cost {
        Cost(self.0.saturating_sub(other.0))
    }
}

impl Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        self.saturating_add(other)
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        *self = *self + other;
    }
}

impl Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a Cost> for Cost {
    fn sum<I: Iterator<Item = &'a Cost>>(iter: I) -> Cost {
        iter.copied().sum()
    }
}

/// Dollars with cents, and as many more digits as the amount needs:
/// `$12.50`, `$0.001234`, `$0.000000005`.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dollars = self.0 / 1_000_000_000;
        let nanos = self.0 % 1_000_000_000;
        let mut frac = format!("{nanos:09}");
        while frac.len() > 2 && frac.ends_with('0') {
            frac.pop();
        }
        write!(f, "${dollars}.{frac}")
    }
}

const NANOS_PER_USD: f64 = 1e9;

/// The price of one model, in nano-dollars per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelPrice {
    input: u64,
    output: u64,
    cached_input: Option<u64>,
    cache_write: Option<u64>,
}

fn per_million(field: &'static str, usd: f64) -> Result<u64, InvalidPrice> {
    let nanos = (usd * NANOS_PER_USD).round();
    if !usd.is_finite() || usd < 0.0 || nanos >= u64::MAX as f64 {
        return Err(InvalidPrice {
            model: None,
            field,
            value: usd,
        });
    }
    Ok(nanos as u64)
}

impl ModelPrice {
    /// A price of `input` and `output` USD per million tokens.
    pub fn new(input: f64, output: f64) -> Result<ModelPrice, InvalidPrice> {
        Ok(ModelPrice {
            input: per_million("input", input)?,
            output: per_million("output", output)?,
            cached_input: None,
            cache_write: None,
        })
    }

    /// Sets the price of input tokens read from the prompt cache, USD per
    /// million (the input price when not set).
    pub fn with_cached_input(mut self, usd: f64) -> Result<ModelPrice, InvalidPrice> {
        self.cached_input = Some(per_million("cached_input", usd)?);
        Ok(self)
    }

    /// Sets the price of input tokens written to the prompt cache, USD per
    /// million (the input price when not set).
    pub fn with_cache_write(mut self, usd: f64) -> Result<ModelPrice, InvalidPrice> {
        self.cache_write = Some(per_million("cache_write", usd)?);
        Ok(self)
    }

    /// USD per million input tokens.
    pub fn input(&self) -> f64 {
        self.input as f64 / NANOS_PER_USD
    }

    /// USD per million output tokens.
    pub fn output(&self) -> f64 {
        self.output as f64 / NANOS_PER_USD
    }

    /// USD per million cached input tokens, if priced apart.
    pub fn cached_input(&self) -> Option<f64> {
        self.cached_input.map(|n| n as f64 / NANOS_PER_USD)
    }

    /// USD per million cache-write tokens, if priced apart.
    pub fn cache_write(&self) -> Option<f64> {
        self.cache_write.map(|n| n as f64 / NANOS_PER_USD)
    }

    /// What `usage` costs at this price.
    pub fn cost(&self, usage: &Usage) -> Cost {
        fn part(tokens: u64, nanos_per_million: u64) -> u64 {
            let n = (u128::from(tokens) * u128::from(nanos_per_million)).div_ceil(1_000_000);
            u64::try_from(n).unwrap_or(u64::MAX)
        }
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let writes = usage.cache_write_tokens.min(usage.input_tokens - cached);
        [
            part(usage.uncached_input_tokens(), self.input),
            part(cached, self.cached_input.unwrap_or(self.input)),
            part(writes, self.cache_write.unwrap_or(self.input)),
            part(usage.output_tokens, self.output),
        ]
        .into_iter()
        .map(Cost)
        .sum()
    }
}

/// Prices by model name. Cheap to clone: the table is shared until changed.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    models: Arc<HashMap<Box<str>, ModelPrice>>,
    as_of: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Embedded {
    as_of: &'static str,
    #[allow(dead_code)]
    currency: &'static str,
    #[allow(dead_code)]
    unit: &'static str,
    models: BTreeMap<&'static str, RawPrice>,
}

static EMBEDDED: OnceLock<PriceTable> = OnceLock::new();

impl PriceTable {
    /// The prices embedded in the crate (see [`as_of`](Self::as_of)).
    pub fn embedded() -> PriceTable {
        EMBEDDED
            .get_or_init(|| {
                let data: Embedded = serde_json::from_str(include_str!("prices.json"))
                    .expect("the embedded price table is valid JSON of the expected shape");
                let mut models = HashMap::with_capacity(data.models.len());
                for (name, raw) in data.models {
                    let price = raw
                        .validate(name)
                        .expect("the embedded price table holds valid prices");
                    models.insert(Box::from(name), price);
                }
                PriceTable {
                    models: Arc::new(models),
                    as_of: Some(data.as_of),
                }
            })
            .clone()
    }

    /// A table with no prices: every model unpriced until added.
    pub fn empty() -> PriceTable {
        PriceTable::default()
    }

    /// The date the embedded prices were last checked (`YYYY-MM-DD`), or
    /// `None` for a table that did not start from them.
    pub fn as_of(&self) -> Option<&'static str> {
        self.as_of
    }

    /// Adds or replaces the price of `model`.
    pub fn with_price(mut self, model: &str, price: ModelPrice) -> PriceTable {
        Arc::make_mut(&mut self.models).insert(model.into(), price);
        self
    }

    /// Adds every price of `other`, replacing those of the same models.
    pub fn merge(mut self, other: PriceTable) -> PriceTable {
        let models = Arc::make_mut(&mut self.models);
        for (name, price) in other.models.iter() {
            models.insert(name.clone(), *price);
        }
        self
    }

    /// The number of priced models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// `true` when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The priced model names, in no particular order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(|k| &**k)
    }

    /// The price of `model`, by its exact name or, failing that, its name
    /// without dates and versions (see the [module docs](self#names)).
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        let mut name = Cow::Borrowed(model);
        for _ in 0..4 {
            match normalise(&name) {
                Some(shorter) => {
                    if let Some(p) = self.models.get(shorter.as_str()) {
                        return Some(p);
                    }
                    name = Cow::Owned(shorter);
                }
                None => break,
            }
        }
        None
    }

    /// What `usage` of `model` costs; [`Unpriced`] for a model the table
    /// does not know.
    pub fn cost(&self, model: &str, usage: &Usage) -> Result<Cost, Unpriced> {
        self.price(model)
            .map(|p| p.cost(usage))
            .ok_or_else(|| Unpriced {
                model: model.into(),
            })
    }
}

/// One step of shortening a model name; `None` when nothing more can go.
fn normalise(name: &str) -> Option<String> {
    let mut s = name.trim();
    for prefix in [
        "models/",
        "openai/",
        "anthropic/",
        "google/",
        "gemini/",
        "anthropic.",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
        }
    }
    // Vertex `@20250929`, Bedrock `-v1:0`.
    if let Some(at) = s.find('@') {
        s = &s[..at];
    }
    if let Some(i) = s.rfind("-v") {
        let tail = &s[i + 2..];
        if tail.contains(':') && tail.bytes().all(|b| b.is_ascii_digit() || b == b':') {
            s = &s[..i];
        }
    }
    s = s.strip_suffix("-latest").unwrap_or(s);
    // Gemini previews and experiments: `-preview-05-20`, `-exp-03-25`.
    for marker in ["-preview", "-exp"] {
        if let Some(i) = s.find(marker) {
            s = &s[..i];
        }
    }
    s = strip_date(s);
    // Gemini stable versions: `-001`, `-002`.
    if let Some(i) = s.rfind('-') {
        let tail = &s[i + 1..];
        if tail.len() == 3 && tail.bytes().all(|b| b.is_ascii_digit()) {
            s = &s[..i];
        }
    }
    (s != name && !s.is_empty()).then(|| s.to_owned())
}

/// Strips a trailing `-YYYY-MM-DD` or `-YYYYMMDD`.
fn strip_date(s: &str) -> &str {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let b = s.as_bytes();
    if b.len() > 11 && b[b.len() - 11] == b'-' {
        let tail = &s[s.len() - 10..];
        let parts: Vec<&str> = tail.split('-').collect();
        if parts.len() == 3 && parts[0].len() == 4 && parts.iter().all(|p| digits(p)) {
            return &s[..s.len() - 11];
        }
    }
    if b.len() > 9 && b[b.len() - 9] == b'-' && digits(&s[s.len() - 8..]) {
        return &s[..s.len() - 9];
    }
    s
}

/// No price is known for a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpriced {
    model: Box<str>,
}

impl Unpriced {
    /// The model without a price.
    pub fn model(&self) -> &str {
        &self.model
    }
}

impl fmt::Display for Unpriced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no price for model `{}`", self.model)
    }
}

impl std::error::Error for Unpriced {}

/// A price was negative, not a number, infinite or absurdly large.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidPrice {
    model: Option<Box<str>>,
    field: &'static str,
    value: f64,
}

impl fmt::Display for InvalidPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(model) = &self.model {
            write!(f, "model `{model}`: ")?;
        }
        write!(
            f,
            "price `{}` must be a finite, non-negative number of USD per million tokens, got {}",
            self.field, self.value
        )
    }
}

impl std::error::Error for InvalidPrice {}

#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: f64,
    output: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
}

impl RawPrice {
    fn validate(self, model: &str) -> Result<ModelPrice, InvalidPrice> {
        let name = |mut e: InvalidPrice| {
            e.model = Some(model.into());
            e
        };
        let mut price = ModelPrice::new(self.input, self.output).map_err(name)?;
        if let Some(c) = self.cached_input {
            price = price.with_cached_input(c).map_err(name)?;
        }
        if let Some(w) = self.cache_write {
            price = price.with_cache_write(w).map_err(name)?;
        }
        Ok(price)
    }
}

/// Prices from configuration, USD per million tokens:
/// `{"models": {"name": {"input": 1.0, "output": 2.0, "cached_input": 0.5, "cache_write": 1.25}}}`.
///
/// Validated while deserializing: a negative, non-finite or unknown field
/// is an error naming the model and the field.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct PricingConfig {
    table: PriceTable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    models: BTreeMap<String, RawPrice>,
}

impl TryFrom<RawConfig> for PricingConfig {
    type Error = InvalidPrice;

    fn try_from(raw: RawConfig) -> Result<Self, InvalidPrice> {
        let mut table = PriceTable::empty();
        for (name, price) in raw.models {
            table = table.with_price(&name, price.validate(&name)?);
        }
        Ok(PricingConfig { table })
    }
}

impl PricingConfig {
    /// The configured prices as a table, to [`merge`](PriceTable::merge)
    /// over [`PriceTable::embedded`] or to use alone.
    pub fn into_table(self) -> PriceTable {
        self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    #[test]
    fn embedded_table_is_valid_and_dated() {
        let t = PriceTable::embedded();
        assert!(t.len() >= 28, "{}", t.len());
        let as_of = t.as_of().unwrap();
        assert_eq!(as_of.len(), 10);
        for model in t.models() {
            let p = t.price(model).unwrap();
            assert!(p.input() > 0.0 && p.output() > 0.0, "{model}");
            assert!(p.cached_input().unwrap_or(0.0) <= p.input(), "{model}");
        }
    }

    #[test]
    fn exact_costs() {
        let t = PriceTable::embedded();
        assert_eq!(
            t.cost("gpt-4o", &Usage::new(M, M)).unwrap(),
            Cost::from_nanos(12_500_000_000)
        );
        assert_eq!(
            t.cost("gpt-4o", &Usage::new(M, M)).unwrap().to_string(),
            "$12.50"
        );
        // Cached input at its own price.
        let cached = Usage {
            input_tokens: M,
            cached_input_tokens: M / 2,
            ..Usage::default()
        };
        assert_eq!(t.cost("gpt-4o", &cached).unwrap().to_string(), "$1.875");
        // Anthropic cache reads and writes.
        let anthropic = Usage {
            input_tokens: 3 * M,
            cached_input_tokens: M,
            cache_write_tokens: M,
            output_tokens: M,
            ..Usage::default()
        };
        assert_eq!(
            t.cost("claude-sonnet-4-5", &anthropic).unwrap().to_string(),
            "$22.05" // 3 + 0.30 + 3.75 + 15
        );
        // Output includes reasoning, at the output price.
        let reasoning = Usage {
            output_tokens: 1000,
            reasoning_tokens: 900,
            ..Usage::default()
        };
        assert_eq!(
            t.cost("o3", &reasoning).unwrap(),
            Cost::from_nanos(8_000_000)
        );
    }

    #[test]
    fn tiny_counts_round_up_to_the_nano_dollar() {
        let t = PriceTable::embedded();
        // gpt-5-nano input: $0.05 per million tokens, 50 nano-dollars each.
        assert_eq!(
            t.cost("gpt-5-nano", &Usage::new(1, 0)).unwrap(),
            Cost::from_nanos(50)
        );
        assert_eq!(t.cost("gpt-5-nano", &Usage::new(0, 0)).unwrap(), Cost::ZERO);
        // 1,500 nano-dollars per million: a token costs 0.0015, billed as 1.
        let t = PriceTable::empty().with_price("cheap", ModelPrice::new(0.0000015, 0.0).unwrap());
        assert_eq!(
            t.cost("cheap", &Usage::new(1, 0)).unwrap(),
            Cost::from_nanos(1)
        );
        assert_eq!(
            t.cost("cheap", &Usage::new(1000, 0)).unwrap(),
            Cost::from_nanos(2)
        );
        assert_eq!(
            t.cost("cheap", &Usage::new(2000, 0)).unwrap(),
            Cost::from_nanos(3)
        );
    }

    #[test]
    fn provider_names_resolve() {
        let t = PriceTable::embedded();
        for (name, want) in [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4.1-2025-04-14", "gpt-4.1"),
            ("openai/gpt-4.1-nano", "gpt-4.1-nano"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
            ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
            ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
            ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
            ("models/gemini-2.5-flash", "gemini-2.5-flash"),
            ("gemini-2.0-flash-001", "gemini-2.0-flash"),
            ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
            (
                "gemini-2.5-flash-lite-preview-06-17",
                "gemini-2.5-flash-lite",
            ),
            ("models/gemini-1.5-pro-002", "gemini-1.5-pro"),
        ] {
            assert_eq!(t.price(name), t.price(want), "{name}");
            assert!(t.price(name).is_some(), "{name}");
        }
    }

    #[test]
    fn families_never_cross() {
        let t = PriceTable::embedded();
        assert_ne!(t.price("gpt-4o-mini"), t.price("gpt-4o"));
        assert_ne!(t.price("gpt-4.1-nano"), t.price("gpt-4.1"));
        assert_ne!(t.price("o3-mini"), t.price("o3"));
        let only = PriceTable::empty().with_price("gpt-4o", ModelPrice::new(1.0, 1.0).unwrap());
        for name in [
            "gpt-4o-mini",
            "gpt-4o-audio-preview",
            "gpt-4",
            "o3-mini",
            "gpt-4o-mini-2024-07-18",
        ] {
            // `gpt-4o-audio-preview` would lose `-preview` but keep `-audio`.
            assert!(only.price(name).is_none(), "{name}");
        }
    }

    #[test]
    fn unknown_models_are_unpriced_not_free() {
        let err = PriceTable::embedded()
            .cost("llama-3-70b", &Usage::new(10, 10))
            .unwrap_err();
        assert_eq!(err.model(), "llama-3-70b");
        assert_eq!(err.to_string(), "no price for model `llama-3-70b`");
        assert!(
            PriceTable::empty()
                .cost("gpt-4o", &Usage::default())
                .is_err()
        );
    }

    #[test]
    fn overrides_replace_and_extend() {
        let config: PricingConfig = serde_json::from_str(
            r#"{"models":{"gpt-4o":{"input":1.0,"output":2.0},"local":{"input":0,"output":0}}}"#,
        )
        .unwrap();
        let t = PriceTable::embedded().merge(config.into_table());
        assert_eq!(
            t.cost("gpt-4o", &Usage::new(M, M)).unwrap().to_string(),
            "$3.00"
        );
        assert_eq!(t.cost("local", &Usage::new(M, M)).unwrap(), Cost::ZERO);
        assert_eq!(t.as_of(), PriceTable::embedded().as_of());
        // The embedded table itself is untouched.
        assert_eq!(
            PriceTable::embedded()
                .cost("gpt-4o", &Usage::new(M, M))
                .unwrap()
                .to_string(),
            "$12.50"
        );
    }

    #[test]
    fn bad_config_is_rejected_with_the_model_and_field() {
        for (json, want) in [
            (
                r#"{"models":{"m":{"input":-1,"output":2}}}"#,
                "model `m`: price `input`",
            ),
            (
                r#"{"models":{"m":{"input":1,"output":2,"cached_input":-0.5}}}"#,
                "price `cached_input`",
            ),
            (r#"{"models":{"m":{"input":1e400,"output":2}}}"#, ""),
            (
                r#"{"models":{"m":{"input":1,"output":2,"typo":3}}}"#,
                "unknown field `typo`",
            ),
            (r#"{"models":{"m":{"input":1}}}"#, "missing field `output`"),
            (r#"{"modles":{}}"#, "unknown field `modles`"),
        ] {
            let err = serde_json::from_str::<PricingConfig>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        assert!(ModelPrice::new(f64::NAN, 1.0).is_err());
        assert!(ModelPrice::new(1.0, f64::INFINITY).is_err());
    }

    #[test]
    fn cost_display() {
        assert_eq!(Cost::from_nanos(0).to_string(), "$0.00");
        assert_eq!(Cost::from_nanos(1_234_000).to_string(), "$0.001234");
        assert_eq!(Cost::from_nanos(5).to_string(), "$0.000000005");
        assert_eq!(Cost::from_nanos(12_500_000_000).to_string(), "$12.50");
        assert_eq!(Cost::from_usd(0.25), Some(Cost::from_nanos(250_000_000)));
        assert_eq!(Cost::from_usd(-1.0), None);
        assert_eq!(
            Cost::from_nanos(u64::MAX) + Cost::from_nanos(1),
            Cost::from_nanos(u64::MAX)
        );
        let total: Cost = [Cost::from_nanos(1), Cost::from_nanos(2)].iter().sum();
        assert_eq!(total, Cost::from_nanos(3));
    }

    proptest::proptest! {
        #[test]
        fn cost_is_monotonic_and_never_panics(
            input in 0u64..u64::MAX / 2,
            cached in 0u64..u64::MAX / 2,
            writes in 0u64..u64::MAX / 2,
            output in 0u64..u64::MAX / 2,
            extra in 0u64..1_000_000,
        ) {
            let t = PriceTable::embedded();
            let usage = Usage { input_tokens: input, cached_input_tokens: cached, cache_write_tokens: writes, output_tokens: output, reasoning_tokens: 0 };
            for model in ["gpt-4o", "claude-opus-4-1", "gemini-2.5-pro"] {
                let base = t.cost(model, &usage).unwrap();
                let more_out = Usage { output_tokens: output + extra, ..usage };
                let more_in = Usage { input_tokens: input + extra, ..usage };
                proptest::prop_assert!(t.cost(model, &more_out).unwrap() >= base);
                proptest::prop_assert!(t.cost(model, &more_in).unwrap() >= base);
            }
        }

        #[test]
        fn name_resolution_never_panics(name in "\\PC{0,40}") {
            let _ = PriceTable::embedded().price(&name);
        }
    }
}
