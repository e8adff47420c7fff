use std::fmt;

use super::cost::{Cost, NANOS_PER_USD};
use super::error::InvalidPrice;
use crate::usage::Usage;

/// The highest accepted price, in USD per million tokens ($1 a token).
/// Anything above is far more likely a unit mistake than a real price.
const MAX_USD_PER_MILLION: f64 = 1_000_000.0;

const TOKENS_PER_MILLION: u128 = 1_000_000;

/// The list price of one model, in USD per million tokens.
///
/// Prices are held as whole nano-dollars per million tokens, so costs are
/// computed in integers (see [`ModelPrice::cost`]). The getters return
/// the price of one million tokens as a [`Cost`].
///
/// ```
/// use llm_tower::pricing::ModelPrice;
///
/// let price = ModelPrice::new(3.0, 15.0)?
///     .with_cached_input(0.30)?
///     .with_cache_write(3.75)?;
/// assert_eq!(price.input().to_string(), "$3.00");
/// assert_eq!(price.cached_input().unwrap().to_string(), "$0.30");
/// # Ok::<(), llm_tower::pricing::InvalidPrice>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelPrice {
    input: u64,
    output: u64,
    cached_input: Option<u64>,
    cache_write: Option<u64>,
}

impl ModelPrice {
    /// A price of `input` and `output` USD per million tokens.
    ///
    /// # Errors
    ///
    /// [`InvalidPrice`] when either is negative, NaN, infinite or above
    /// 1,000,000 USD per million tokens.
    pub fn new(input: f64, output: f64) -> Result<Self, InvalidPrice> {
        Ok(ModelPrice {
            input: nanos_per_million("input", input)?,
            output: nanos_per_million("output", output)?,
            cached_input: None,
            cache_write: None,
        })
    }

    /// A price given in whole nano-dollars (10⁻⁹ USD) per million tokens;
    /// cannot fail.
    pub const fn from_nanos_per_million(input: u64, output: u64) -> Self {
        ModelPrice {
            input,
            output,
            cached_input: None,
            cache_write: None,
        }
    }

    /// Sets the price of input tokens read from the provider's prompt
    /// cache, in USD per million tokens. Without it, cached tokens cost
    /// the full input price.
    ///
    /// # Errors
    ///
    /// As for [`ModelPrice::new`].
    pub fn with_cached_input(mut self, usd_per_million: f64) -> Result<Self, InvalidPrice> {
        self.cached_input = Some(nanos_per_million("cached_input", usd_per_million)?);
        Ok(self)
    }

    /// Sets the price of input tokens written to the provider's prompt
    /// cache (Anthropic's five-minute cache write), in USD per million
    /// tokens. Without it, cache writes cost the full input price.
    ///
    /// # Errors
    ///
    /// As for [`ModelPrice::new`].
    pub fn with_cache_write(mut self, usd_per_million: f64) -> Result<Self, InvalidPrice> {
        self.cache_write = Some(nanos_per_million("cache_write", usd_per_million)?);
        Ok(self)
    }

    /// The price of one million uncached input tokens.
    pub const fn input(&self) -> Cost {
        Cost::from_nanos(self.input)
    }

    /// The price of one million output tokens, reasoning tokens included.
    pub const fn output(&self) -> Cost {
        Cost::from_nanos(self.output)
    }

    /// The price of one million input tokens read from the prompt cache,
    /// if the model has a discounted one.
    pub const fn cached_input(&self) -> Option<Cost> {
        match self.cached_input {
            Some(n) => Some(Cost::from_nanos(n)),
            None => None,
        }
    }

    /// The price of one million input tokens written to the prompt cache,
    /// if the model charges a distinct one.
    pub const fn cache_write(&self) -> Option<Cost> {
        match self.cache_write {
            Some(n) => Some(Cost::from_nanos(n)),
            None => None,
        }
    }

    /// The cost of `usage` at this price.
    ///
    /// Uncached input tokens ([`Usage::uncached_input_tokens`]) cost the
    /// input price; cached tokens the cached-input price and cache writes
    /// the cache-write price, each falling back to the input price when the
    /// model has none; output tokens (reasoning included) the output
    /// price.
    ///
    /// Computed exactly in integers and rounded **up** to the next whole
    /// nano-dollar, once per call: a budget never under-counts. Saturates
    /// at [`Cost::MAX`]; never panics.
    ///
    /// ```
    /// use llm_tower::pricing::{Cost, ModelPrice};
    /// use llm_tower::usage::Usage;
    ///
    /// let price = ModelPrice::new(2.50, 10.0)?;
    /// let cost = price.cost(&Usage::new(1_000_000, 1_000_000));
    /// assert_eq!(cost, Cost::from_nanos(12_500_000_000));
    /// // $2.50 per million is 2,500 nano-dollars a token.
    /// assert_eq!(price.cost(&Usage::new(1, 0)).as_nanos(), 2_500);
    ///
    /// // $0.0025 per million is 2.5 nano-dollars a token: rounded up.
    /// let fine = ModelPrice::new(0.0025, 0.0)?;
    /// assert_eq!(fine.cost(&Usage::new(1, 0)).as_nanos(), 3);
    /// # Ok::<(), llm_tower::pricing::InvalidPrice>(())
    /// ```
    pub fn cost(&self, usage: &Usage) -> Cost {
        let parts = [
            (usage.uncached_input_tokens(), self.input),
            (
                usage.cached_input_tokens,
                self.cached_input.unwrap_or(self.input),
            ),
            (
                usage.cache_write_tokens,
                self.cache_write.unwrap_or(self.input),
            ),
            (usage.output_tokens, self.output),
        ];
        // Each product fits in u128; only the sum can overflow.
        let nanos_times_million = parts
            .iter()
            .map(|&(tokens, price)| u128::from(tokens) * u128::from(price))
            .fold(0u128, u128::saturating_add);
        let nanos = nanos_times_million.div_ceil(TOKENS_PER_MILLION);
        Cost::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The most `input_tokens` and `output_tokens` can cost: every input
    /// token at the dearest input price (plain, cached or cache write,
    /// whichever is highest: a call may write its whole prompt to the
    /// cache), every output token at the output price. What a budget
    /// reserves before a call, so that no usage settles above it.
    ///
    /// ```
    /// use llm_tower::pricing::{Cost, ModelPrice};
    ///
    /// // Anthropic-style: cache writes at 1.25 times the input price.
    /// let price = ModelPrice::new(1.0, 5.0)?.with_cache_write(1.25)?;
    /// assert_eq!(price.worst_cost(1_000, 100), Cost::from_nanos(1_750_000));
    /// # Ok::<(), llm_tower::pricing::InvalidPrice>(())
    /// ```
    pub fn worst_cost(&self, input_tokens: u64, output_tokens: u64) -> Cost {
        let dearest_input = self
            .input
            .max(self.cached_input.unwrap_or(0))
            .max(self.cache_write.unwrap_or(0));
        let nanos_times_million = u128::from(input_tokens) * u128::from(dearest_input)
            + u128::from(output_tokens) * u128::from(self.output);
        let nanos = nanos_times_million.div_ceil(TOKENS_PER_MILLION);
        Cost::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Shows dollars per million tokens, as configured, not raw nano-dollars.
impl fmt::Debug for ModelPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ModelPrice");
        s.field("input", &format_args!("{}", self.input()));
        s.field("output", &format_args!("{}", self.output()));
        if let Some(cached) = self.cached_input() {
            s.field("cached_input", &format_args!("{cached}"));
        }
        if let Some(write) = self.cache_write() {
            s.field("cache_write", &format_args!("{write}"));
        }
        s.finish()
    }
}

/// Converts USD per million tokens to whole nano-dollars per million
/// tokens, rounding to the nearest nano-dollar (far below any real price
/// step).
fn nanos_per_million(field: &'static str, usd: f64) -> Result<u64, InvalidPrice> {
    // Also false for NaN and the infinities.
    if !(0.0..=MAX_USD_PER_MILLION).contains(&usd) {
        return Err(InvalidPrice::new(field, usd));
    }
    // In range by the check above: at most 10^15, exact in f64 and u64.
    Ok((usd * NANOS_PER_USD as f64).round() as u64)
}
