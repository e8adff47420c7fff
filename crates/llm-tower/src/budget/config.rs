//! The budget's configuration: scopes, their limits and windows, and what
//! an unpriced model costs.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{
    config::{ConfigError, Valid, Validate},
    pricing::{ModelPrice, ModelPriceConfig},
    store::{DEFAULT_STORE_TIMEOUT, OnStoreFailure},
};

const LAYER: &str = "budget";

/// The largest dollar amount a limit or cap may name: about $18 billion,
/// the most nano-dollars a `u64` holds.
pub const MAX_USD: f64 = 18_000_000_000.0;

/// The longest rolling window: a year.
pub const MAX_ROLLING: Duration = Duration::from_secs(366 * 24 * 3600);

/// The slots a rolling window is counted in: spend counts for at most
/// `window + window / 60` (see [`Span::Rolling`](crate::store::Span::Rolling)).
pub const ROLLING_SLOTS: u32 = 60;

/// The budget layer's configuration: which scopes have which limits.
///
/// ```
/// use llm_tower::budget::{BudgetConfig, Limit, ScopeBudget, Window};
///
/// // $50 a day for everyone; $5 an hour and $20 a month per tenant, with a
/// // soft warning at $15 a month.
/// let config = BudgetConfig::new()
///     .scope(ScopeBudget::global().limit(Limit::usd(50.0, Window::Day)))
///     .scope(
///         ScopeBudget::tenant()
///             .limit(Limit::usd(5.0, Window::Rolling(std::time::Duration::from_secs(3600))))
///             .limit(Limit::usd(20.0, Window::Month))
///             .max_request_usd(0.50),
///     )
///     .build()?;
///
/// // The same, from a file.
/// let same: llm_tower::config::Valid<BudgetConfig> = serde_json::from_str(r#"{
///     "scopes": [
///         { "scope": "global", "limits": [{ "usd": 50, "window": "day" }] },
///         { "scope": "tenant", "max_request_usd": 0.5, "limits": [
///             { "usd": 5, "window": "1h" },
///             { "usd": 20, "window": "month" }
///         ] }
///     ]
/// }"#)?;
/// assert_eq!(*same, *config);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// The scopes with their limits. Every scope that applies to a call is
    /// checked together, all or nothing.
    pub scopes: Vec<ScopeBudget>,
    /// How long a reservation holds if it is never settled (the process
    /// died, the future leaked): then the store releases it. Longer than
    /// any call may last. 15 minutes by default.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The output tokens a call without `max_tokens` is reserved for, when
    /// its model matches no entry of
    /// [`max_output_tokens`](Self::max_output_tokens). 16,384 by default.
    pub default_max_output_tokens: u64,
    /// The most output tokens a model can produce, by model name prefix
    /// (the longest matching prefix wins), for calls that set no cap. Added
    /// to, and overriding, the [embedded table](Self::embedded_max_output).
    pub max_output_tokens: BTreeMap<String, u64>,
    /// The HTTP status of [`BudgetExceeded::to_response`](super::BudgetExceeded::to_response):
    /// 429 (the default, what clients retry later) or 402.
    pub refusal_status: RefusalStatus,
    /// The prefix of every store key, `llm-tower:budget` by default: layers
    /// (and processes) sharing a store and a prefix share their budgets.
    pub prefix: String,
    /// What a call does when its first attempt's worst case does not fit
    /// as it arrives: [`Arrival::Auto`] by default.
    pub arrival: Arrival,
    /// What a call does while the store fails (see [When the store
    /// fails](super#when-the-store-fails)):
    /// [`FailClosed`](OnStoreFailure::FailClosed) by default — a budget
    /// guards money, and a call that cannot be checked is refused with
    /// [`BudgetUnavailable`](super::BudgetUnavailable).
    pub on_store_failure: OnStoreFailure,
    /// The longest one store operation may take; a slower one is a store
    /// failure. 250 ms by default.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
}

/// What a call whose first attempt does not fit does when it arrives.
///
/// A fallback layer inside may send the call to a cheaper target that
/// fits; only a [`Meter`](crate::metering::Meter) inside, consulting each
/// attempt's reservation, makes that safe — without one, a call let
/// through would go out with nothing reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// [`Defer`](Self::Defer) once the service has seen a meter inside
    /// consult its reservations, [`Refuse`](Self::Refuse) until then (a
    /// service's first calls, or a stack without a meter).
    #[default]
    Auto,
    /// Refuse the call at once.
    Refuse,
    /// Let each attempt's own reservation decide (the first is then
    /// refused at the meter, and a fallback may move on). Use only with a
    /// meter in front of every client: a call answered without one is
    /// charged after the fact, and logged as an error.
    Defer,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            scopes: Vec::new(),
            lease: Duration::from_secs(15 * 60),
            default_max_output_tokens: 16_384,
            max_output_tokens: BTreeMap::new(),
            refusal_status: RefusalStatus::TooManyRequests,
            prefix: "llm-tower:budget".into(),
            arrival: Arrival::Auto,
            on_store_failure: OnStoreFailure::FailClosed,
            store_timeout: DEFAULT_STORE_TIMEOUT,
        }
    }
}

/// The most output tokens of the major models, by name prefix, as the
/// providers document them (checked 2025-11): what a call without
/// `max_tokens` may produce, and so what it is reserved for.
const EMBEDDED_MAX_OUTPUT: &[(&str, u64)] = &[
    ("gpt-3.5", 4_096),
    ("gpt-4", 8_192),
    ("gpt-4-turbo", 4_096),
    ("gpt-4o", 16_384),
    ("gpt-4.1", 32_768),
    ("gpt-5", 128_000),
    ("o1", 100_000),
    ("o3", 100_000),
    ("o4", 100_000),
    ("claude-3", 4_096),
    ("claude-3-5", 8_192),
    ("claude-3-7", 64_000),
    ("claude-sonnet-4", 64_000),
    ("claude-haiku-4", 64_000),
    ("claude-opus-4", 32_000),
    ("gemini-1.5", 8_192),
    ("gemini-2.0", 8_192),
    ("gemini-2.5", 65_536),
];

impl BudgetConfig {
    /// The defaults: no scope, so nothing is limited (the layer still
    /// prices every call).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a scope.
    pub fn scope(mut self, scope: ScopeBudget) -> Self {
        self.scopes.push(scope);
        self
    }

    /// Sets the [`lease`](Self::lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets the [`default_max_output_tokens`](Self::default_max_output_tokens).
    pub fn default_max_output_tokens(mut self, tokens: u64) -> Self {
        self.default_max_output_tokens = tokens;
        self
    }

    /// Sets the most output tokens of models whose name starts with `prefix`.
    pub fn max_output_tokens_for(mut self, prefix: impl Into<String>, tokens: u64) -> Self {
        self.max_output_tokens.insert(prefix.into(), tokens);
        self
    }

    /// Sets the [`refusal_status`](Self::refusal_status).
    pub fn refusal_status(mut self, status: RefusalStatus) -> Self {
        self.refusal_status = status;
        self
    }

    /// Sets the store key [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets what a call that does not fit on [`arrival`](Self::arrival)
    /// does.
    pub fn arrival(mut self, arrival: Arrival) -> Self {
        self.arrival = arrival;
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

    /// The embedded table of the most output tokens per model name prefix.
    pub fn embedded_max_output() -> impl Iterator<Item = (&'static str, u64)> {
        EMBEDDED_MAX_OUTPUT.iter().copied()
    }

    /// The output tokens a call to `model` without a cap is reserved for.
    pub(crate) fn max_output_for(&self, model: Option<&str>) -> u64 {
        let Some(model) = model else {
            return self.default_max_output_tokens;
        };
        // The configured entries come last: they win a tie.
        let configured = self.max_output_tokens.iter().map(|(p, &n)| (p.as_str(), n));
        crate::util::longest_prefix(model, EMBEDDED_MAX_OUTPUT.iter().copied().chain(configured))
            .unwrap_or(self.default_max_output_tokens)
    }
}

impl Validate for BudgetConfig {
    type Error = ConfigError;

    fn check(&self) -> Result<(), ConfigError> {
        if let Err(e) = self.on_store_failure.check() {
            return Err(ConfigError::new(
                LAYER,
                "on_store_failure",
                format!("on_store_failure: {e}"),
            ));
        }
        if self.store_timeout.is_zero() {
            return Err(ConfigError::new(
                LAYER,
                "store_timeout",
                "store_timeout is zero: every operation of a remote store would fail",
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(ConfigError::new(
                LAYER,
                "lease",
                "lease is under a second: reservations would be released while their calls run",
            ));
        }
        if self.default_max_output_tokens == 0 {
            return Err(ConfigError::new(
                LAYER,
                "default_max_output_tokens",
                "default_max_output_tokens is 0: a call without a cap may still produce output",
            ));
        }
        if let Some((prefix, _)) = self.max_output_tokens.iter().find(|(_, n)| **n == 0) {
            return Err(ConfigError::new(
                LAYER,
                format!("max_output_tokens.{prefix}"),
                format!("max_output_tokens.{prefix} is 0: a model produces at least one token"),
            ));
        }
        if self.prefix.is_empty() {
            return Err(ConfigError::new(
                LAYER,
                "prefix",
                "prefix is empty: budgets would share keys with everything else in the store",
            ));
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            scope.check(i)?;
            if let Some(j) = self.scopes[..i].iter().position(|s| s.scope == scope.scope) {
                return Err(ConfigError::new(
                    LAYER,
                    format!("scopes[{i}].scope"),
                    format!(
                        "scopes[{i}] and scopes[{j}] are both `{}`: put their limits in one scope",
                        scope.scope.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Which calls share a [`ScopeBudget`]'s limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every call through the layer (and through every layer sharing its
    /// store and prefix).
    Global,
    /// Calls with the same API key, known only by a hash of it.
    ApiKey,
    /// Calls of the same tenant: a [`BudgetTenant`](super::BudgetTenant) in
    /// the request's extensions, or the layer's
    /// [`tenant_fn`](super::BudgetLayer::tenant_fn). A call without a tenant
    /// is not limited by this scope.
    Tenant,
    /// Calls of the same organisation, which holds tenants: the
    /// `organisation` of the call's [`BudgetTenant`](super::BudgetTenant).
    Organisation,
    /// Calls to the same model, as each attempt names it (a fallback to
    /// another model counts there).
    Model,
    /// Calls to the same provider.
    Provider,
}

impl Scope {
    /// The scope's name: `global`, `api_key`, `tenant`, `organisation`,
    /// `model`, `provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::ApiKey => "api_key",
            Scope::Tenant => "tenant",
            Scope::Organisation => "organisation",
            Scope::Model => "model",
            Scope::Provider => "provider",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits of one [`Scope`], its per-request caps, and what it does
/// with a model that has no price.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeBudget {
    /// Which calls share the limits.
    pub scope: Scope,
    /// The limits: a call must fit under every hard one.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// The most one call may cost at worst (its reservation), in dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_usd: Option<f64>,
    /// The most tokens one call may use at worst (input estimate plus its
    /// output cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_tokens: Option<u64>,
    /// What a call to a model without a price does under this scope:
    /// refused by default.
    #[serde(default)]
    pub unpriced: UnpricedPolicy,
}

impl ScopeBudget {
    /// A scope with no limits yet.
    pub fn new(scope: Scope) -> Self {
        ScopeBudget {
            scope,
            limits: Vec::new(),
            max_request_usd: None,
            max_request_tokens: None,
            unpriced: UnpricedPolicy::Refuse,
        }
    }

    /// [`Scope::Global`].
    pub fn global() -> Self {
        Self::new(Scope::Global)
    }

    /// [`Scope::ApiKey`].
    pub fn api_key() -> Self {
        Self::new(Scope::ApiKey)
    }

    /// [`Scope::Tenant`].
    pub fn tenant() -> Self {
        Self::new(Scope::Tenant)
    }

    /// [`Scope::Organisation`].
    pub fn organisation() -> Self {
        Self::new(Scope::Organisation)
    }

    /// [`Scope::Model`].
    pub fn model() -> Self {
        Self::new(Scope::Model)
    }

    /// [`Scope::Provider`].
    pub fn provider() -> Self {
        Self::new(Scope::Provider)
    }

    /// Adds a limit.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Sets the [`max_request_usd`](Self::max_request_usd).
    pub fn max_request_usd(mut self, usd: f64) -> Self {
        self.max_request_usd = Some(usd);
        self
    }

    /// Sets the [`max_request_tokens`](Self::max_request_tokens).
    pub fn max_request_tokens(mut self, tokens: u64) -> Self {
        self.max_request_tokens = Some(tokens);
        self
    }

    /// Sets what an [`unpriced`](Self::unpriced) model does.
    pub fn unpriced(mut self, unpriced: UnpricedPolicy) -> Self {
        self.unpriced = unpriced;
        self
    }

    fn check(&self, i: usize) -> Result<(), ConfigError> {
        if let Some(usd) = self.max_request_usd {
            check_usd(usd, || format!("scopes[{i}].max_request_usd"), false)?;
        }
        if self.max_request_tokens == Some(0) {
            return Err(ConfigError::new(
                LAYER,
                format!("scopes[{i}].max_request_tokens"),
                format!("scopes[{i}].max_request_tokens is 0: no call could go"),
            ));
        }
        if let UnpricedPolicy::Price(price) = &self.unpriced {
            price.validate("").map_err(|e| {
                ConfigError::new(
                    LAYER,
                    format!("scopes[{i}].unpriced.price.{}", e.field()),
                    format!("scopes[{i}].unpriced.price: {e}"),
                )
            })?;
        }
        for (j, limit) in self.limits.iter().enumerate() {
            limit.check(i, j)?;
            if let Some(k) = self.limits[..j]
                .iter()
                .position(|l| l.unit() == limit.unit() && l.window == limit.window)
            {
                return Err(ConfigError::new(
                    LAYER,
                    format!("scopes[{i}].limits[{j}]"),
                    format!(
                        "scopes[{i}].limits[{j}] and limits[{k}] are both {} per {}: keep one",
                        limit.unit().as_str(),
                        limit.window
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What a call to a model with no price does under a scope. Never free:
/// every choice is explicit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnpricedPolicy {
    /// The call is refused with [`Unpriced`](crate::pricing::Unpriced)
    /// before anything is sent (the default).
    #[default]
    Refuse,
    /// The call is priced at this price.
    Price(ModelPriceConfig),
    /// The scope's dollar limits do not see the call (it cannot be priced);
    /// its token limits do. Each such call emits
    /// [`BudgetEvent::Unpriced`](super::BudgetEvent::Unpriced) and is
    /// counted in [`BudgetStats::unpriced`](super::BudgetStats::unpriced).
    TokensOnly,
}

/// What a [`Limit`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Dollars, counted in nano-dollars.
    Usd,
    /// Input and output tokens together.
    Tokens,
}

impl Unit {
    /// `usd` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Usd => "usd",
            Unit::Tokens => "tokens",
        }
    }
}

/// One limit of a scope: dollars or tokens per window.
///
/// A hard limit refuses a call whose reservation does not fit; a soft one
/// lets it through. Both emit
/// [`BudgetEvent::Threshold`](super::BudgetEvent::Threshold) once for each
/// fraction of [`alerts`](Self::alerts) the spend crosses in a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The limit in dollars (this or `tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// The limit in tokens, input and output together (this or `usd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The window the limit applies to.
    pub window: Window,
    /// Whether the limit refuses calls (`true`, the default) or only
    /// alerts.
    #[serde(default = "yes")]
    pub hard: bool,
    /// Fractions of the limit at which an alert is emitted: 50%, 80% and
    /// 100% by default.
    #[serde(default = "default_alerts")]
    pub alerts: Vec<f64>,
}

fn yes() -> bool {
    true
}

fn default_alerts() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

impl Limit {
    /// A hard limit of `usd` dollars per `window`.
    pub fn usd(usd: f64, window: Window) -> Self {
        Limit {
            usd: Some(usd),
            tokens: None,
            window,
            hard: true,
            alerts: default_alerts(),
        }
    }

    /// A hard limit of `tokens` tokens per `window`.
    pub fn tokens(tokens: u64, window: Window) -> Self {
        Limit {
            usd: None,
            tokens: Some(tokens),
            window,
            hard: true,
            alerts: default_alerts(),
        }
    }

    /// Makes the limit soft: it alerts and never refuses.
    pub fn soft(mut self) -> Self {
        self.hard = false;
        self
    }

    /// Sets the [`alerts`](Self::alerts).
    pub fn alerts(mut self, fractions: impl IntoIterator<Item = f64>) -> Self {
        self.alerts = fractions.into_iter().collect();
        self
    }

    /// What the limit counts.
    pub fn unit(&self) -> Unit {
        if self.usd.is_some() {
            Unit::Usd
        } else {
            Unit::Tokens
        }
    }

    /// The limit in its unit: nano-dollars or tokens.
    pub(crate) fn amount(&self) -> u64 {
        match (self.usd, self.tokens) {
            (Some(usd), _) => usd_to_nanos(usd),
            (None, Some(tokens)) => tokens,
            (None, None) => 0,
        }
    }

    fn check(&self, i: usize, j: usize) -> Result<(), ConfigError> {
        let at = format!("scopes[{i}].limits[{j}]");
        match (self.usd, self.tokens) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    LAYER,
                    at.clone(),
                    format!("{at} sets both usd and tokens: make them two limits"),
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    LAYER,
                    at.clone(),
                    format!("{at} sets neither usd nor tokens"),
                ));
            }
            (Some(usd), None) => check_usd(usd, || format!("{at}.usd"), true)?,
            (None, Some(_)) => {}
        }
        if let Window::Rolling(d) = self.window
            && (d < Duration::from_secs(1) || d > MAX_ROLLING)
        {
            return Err(ConfigError::new(
                LAYER,
                format!("{at}.window"),
                format!("{at}.window is {d:?}: a rolling window is from 1s to 366 days"),
            ));
        }
        if let Some(a) = self
            .alerts
            .iter()
            .find(|a| !(a.is_finite() && **a > 0.0 && **a <= 100.0))
        {
            return Err(ConfigError::new(
                LAYER,
                format!("{at}.alerts"),
                format!(
                    "{at}.alerts has {a}: each is a fraction of the limit, above 0 and at most 100"
                ),
            ));
        }
        Ok(())
    }
}

fn check_usd(usd: f64, field: impl Fn() -> String, zero: bool) -> Result<(), ConfigError> {
    let ok = usd.is_finite() && usd <= MAX_USD && (usd > 0.0 || (zero && usd == 0.0));
    if ok {
        return Ok(());
    }
    let f = field();
    let min = if zero { "0" } else { "above 0" };
    Err(ConfigError::new(
        LAYER,
        f.clone(),
        format!("{f} is {usd}: dollars are {min} and at most {MAX_USD}"),
    ))
}

/// Dollars to whole nano-dollars, rounded to the nearest, as prices are
/// ($2.01 is 2,010,000,000, not one short of it: `2.01 * 1e9` is a hair
/// below in binary).
pub(crate) fn usd_to_nanos(usd: f64) -> u64 {
    // Checked to be in range by validation.
    (usd * crate::pricing::NANOS_PER_USD as f64).round() as u64
}

/// The window a [`Limit`] applies to.
///
/// In configuration: `"total"`, `"day"`, `"week"`, `"month"`, or a
/// duration such as `"1h"` or `"30m"` for a rolling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// Everything, for as long as the store keeps it.
    Total,
    /// The last `d`, at any moment: what was spent counts for `d` (and at
    /// most `d / 60` more: see [`Span::Rolling`](crate::store::Span::Rolling)).
    Rolling(Duration),
    /// The UTC calendar day, from midnight.
    Day,
    /// The UTC calendar week, from Monday midnight.
    Week,
    /// The UTC calendar month, from the first at midnight.
    Month,
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Total => f.write_str("total"),
            Window::Day => f.write_str("day"),
            Window::Week => f.write_str("week"),
            Window::Month => f.write_str("month"),
            Window::Rolling(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "total" => Ok(Window::Total),
            "day" => Ok(Window::Day),
            "week" => Ok(Window::Week),
            "month" => Ok(Window::Month),
            other => humantime::parse_duration(other)
                .map(Window::Rolling)
                .map_err(|_| {
                    de::Error::custom(format_args!(
                        "window `{other}`: expected total, day, week, month or a duration such as 1h"
                    ))
                }),
        }
    }
}

/// The HTTP status a refusal maps to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalStatus {
    /// 429 Too Many Requests, with `retry-after` when the window's end is
    /// known: what clients already handle.
    #[default]
    #[serde(rename = "429")]
    TooManyRequests,
    /// 402 Payment Required.
    #[serde(rename = "402")]
    PaymentRequired,
}

impl RefusalStatus {
    /// The status code.
    pub fn status(self) -> http::StatusCode {
        match self {
            RefusalStatus::TooManyRequests => http::StatusCode::TOO_MANY_REQUESTS,
            RefusalStatus::PaymentRequired => http::StatusCode::PAYMENT_REQUIRED,
        }
    }
}

impl ScopeBudget {
    /// The configured price of unpriced models, if that is the policy.
    pub(crate) fn unpriced_price(&self) -> Option<ModelPrice> {
        match self.unpriced {
            // Validated with the configuration.
            UnpricedPolicy::Price(p) => p.validate("").ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_are_rounded_to_the_nearest_nano_dollar() {
        // 2.01 · 1e9 is 2,009,999,999.99… in binary.
        assert_eq!(usd_to_nanos(2.01), 2_010_000_000);
        assert_eq!(usd_to_nanos(0.027), 27_000_000);
        assert_eq!(usd_to_nanos(1e-9), 1);
    }

    fn err(json: &str) -> String {
        serde_json::from_str::<Valid<BudgetConfig>>(json)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_names_the_field() {
        assert!(err(r#"{"lease": "0s"}"#).contains("lease"));
        assert!(
            err(r#"{"on_store_failure": {"degraded": {"share": 0}}}"#)
                .contains("on_store_failure: degraded share is 0")
        );
        assert!(err(r#"{"on_store_failure": "fail_somehow"}"#).contains("fail_somehow"));
        assert!(err(r#"{"store_timeout": "0s"}"#).contains("store_timeout"));
        assert!(
            err(r#"{"scopes": [{"scope": "global", "limits": [{"usd": 1, "tokens": 5, "window": "day"}]}]}"#)
                .contains("scopes[0].limits[0] sets both usd and tokens")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "global", "limits": [{"window": "day"}]}]}"#)
                .contains("sets neither")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "global", "limits": [{"usd": -1, "window": "day"}]}]}"#)
                .contains("scopes[0].limits[0].usd is -1")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "global", "limits": [{"usd": 1, "window": "fortnight"}]}]}"#)
                .contains("window `fortnight`")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "global", "limits": [{"usd": 1, "window": "0s"}]}]}"#)
                .contains("rolling window")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "tenant", "limits": [{"usd": 1, "window": "day"}, {"usd": 2, "window": "day"}]}]}"#)
                .contains("both usd per day")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "tenant"}, {"scope": "tenant"}]}"#)
                .contains("scopes[1] and scopes[0] are both `tenant`")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "tenant", "limits": [{"usd": 1, "window": "day", "alerts": [0]}]}]}"#)
                .contains("alerts")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "tenant", "max_request_usd": 0}]}"#)
                .contains("max_request_usd")
        );
        assert!(
            err(r#"{"scopes": [{"scope": "tenant", "unpriced": {"price": {"input": -1, "output": 1}}}]}"#)
                .contains("scopes[0].unpriced.price")
        );
        assert!(err(r#"{"prefix": ""}"#).contains("prefix"));
        assert!(err(r#"{"scopes": [{"scope": "team"}]}"#).contains("team"));
    }

    #[test]
    fn windows_round_trip() {
        for (text, window) in [
            ("\"total\"", Window::Total),
            ("\"day\"", Window::Day),
            ("\"week\"", Window::Week),
            ("\"month\"", Window::Month),
            ("\"1h\"", Window::Rolling(Duration::from_secs(3600))),
        ] {
            let w: Window = serde_json::from_str(text).unwrap();
            assert_eq!(w, window);
            assert_eq!(serde_json::to_string(&w).unwrap(), text);
        }
        let config = BudgetConfig::new()
            .scope(
                ScopeBudget::tenant()
                    .limit(Limit::usd(5.0, Window::Day).soft().alerts([0.9]))
                    .unpriced(UnpricedPolicy::TokensOnly),
            )
            .build()
            .unwrap();
        let text = serde_json::to_string(&*config).unwrap();
        let back: Valid<BudgetConfig> = serde_json::from_str(&text).unwrap();
        assert_eq!(*back, *config);
    }

    #[test]
    fn max_output_by_longest_prefix() {
        let config = BudgetConfig::new().max_output_tokens_for("gpt-4o-mini", 1_000);
        assert_eq!(config.max_output_for(Some("gpt-4o-2024-08-06")), 16_384);
        assert_eq!(config.max_output_for(Some("gpt-4o-mini")), 1_000);
        assert_eq!(config.max_output_for(Some("claude-sonnet-4-5")), 64_000);
        assert_eq!(config.max_output_for(Some("my-model")), 16_384);
        assert_eq!(config.max_output_for(None), 16_384);
        let over = BudgetConfig::new().max_output_tokens_for("gpt-4o", 2);
        assert_eq!(
            over.max_output_for(Some("gpt-4o")),
            2,
            "configured wins a tie"
        );
    }

    #[test]
    fn dollars_are_exact_nanos() {
        assert_eq!(Limit::usd(5.0, Window::Day).amount(), 5_000_000_000);
        assert_eq!(Limit::usd(0.000_000_001, Window::Day).amount(), 1);
        assert_eq!(Limit::tokens(7, Window::Total).amount(), 7);
    }
}
