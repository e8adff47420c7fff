//! Prices per model, to turn [`Usage`](crate::usage::Usage) into [`Cost`].
//!
//! [`PriceTable::embedded`] holds list prices for the major OpenAI,
//! Anthropic and Gemini models, in USD per million tokens: input, output,
//! cached input and, for Anthropic, cache writes. [`PricingConfig`]
//! overrides and extends them from configuration. A model that is not in
//! the table has no price: [`PriceTable::cost`] returns [`Unpriced`], never
//! a cost of zero.
//!
//! ```
//! use llm_tower::pricing::{PriceTable, PricingConfig};
//! use llm_tower::usage::Usage;
//!
//! let config: PricingConfig = serde_json::from_str(r#"{
//!     "models": {
//!         "gpt-4o": { "input": 2.0, "output": 8.0 },
//!         "my-model": { "input": 1.0, "output": 2.0, "cached_input": 0.5 }
//!     }
//! }"#)?;
//! let table = PriceTable::embedded().merge(config.into_table()?);
//!
//! let usage = Usage::new(1_000_000, 1_000_000);
//! assert_eq!(table.cost("gpt-4o", &usage)?.to_string(), "$10.00"); // overridden
//! assert_eq!(table.cost("my-model", &usage)?.to_string(), "$3.00"); // added
//! assert_eq!(table.cost("o3", &usage)?.to_string(), "$10.00"); // embedded
//! assert_eq!(
//!     table.cost("not-a-model", &usage).unwrap_err().to_string(),
//!     "no price for model `not-a-model`",
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The embedded prices
//!
//! `prices.json`, compiled into the crate, holds the providers' published
//! list prices as last checked by the project, on the date given by
//! [`PriceTable::embedded_as_of`] (2025-11-24). Providers change prices,
//! add models and offer negotiated discounts, which is why every price can
//! be overridden: treat the embedded table as a sensible default, not as a
//! bill.
//!
//! Not modelled:
//!
//! - tiered, long-context pricing: Gemini 2.5 Pro and 1.5 Pro are priced
//!   for prompts up to 200k (respectively 128k) tokens, and Anthropic's
//!   long-context rates for Sonnet are not applied;
//! - batch and flex discounts, priority surcharges, audio or image tokens
//!   priced apart from text;
//! - Anthropic's one-hour cache writes (the five-minute price is used) and
//!   Gemini's cache storage per hour.
//!
//! # Resolving model names
//!
//! A name is looked up exactly first, without allocating. If it is not
//! found, it is normalised and looked up once more; normalisation removes
//! only decorations that name the same model:
//!
//! | form | example | resolves to |
//! |---|---|---|
//! | snapshot date | `gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929` | `gpt-4o`, `claude-sonnet-4-5` |
//! | `-latest` | `claude-3-5-haiku-latest` | `claude-3-5-haiku` |
//! | Gemini resource and version | `models/gemini-1.5-pro-002`, `gemini-2.5-flash-preview-05-20` | `gemini-1.5-pro`, `gemini-2.5-flash` |
//! | Bedrock | `us.anthropic.claude-3-haiku-20240307-v1:0` | `claude-3-haiku` |
//! | Vertex AI | `claude-sonnet-4-5@20250929` | `claude-sonnet-4-5` |
//!
//! Names are never matched by prefix: `gpt-4o-mini` is not `gpt-4o`,
//! `o3-mini` is not `o3`, and an unknown variant such as `o1-mini` is
//! unpriced rather than priced as its neighbour. A snapshot that was priced
//! differently from its alias has its own entry (`gpt-4o-2024-05-13`), and
//! exact entries always win.
//!
//! # Arithmetic
//!
//! Prices are held as whole nano-dollars (10⁻⁹ USD) per million tokens and
//! [`Cost`] as whole nano-dollars, so costs are exact integer sums with no
//! float drift. The cost of one call is computed in 128-bit integers and
//! rounded **up** to the next nano-dollar, so budgets never under-count;
//! sums saturate instead of overflowing.

mod config;
mod cost;
mod error;
mod price;
mod resolve;
mod table;

pub use config::{ModelPriceConfig, PricingConfig};
pub use cost::Cost;
#[cfg(feature = "budget")]
pub(crate) use cost::NANOS_PER_USD;
pub use error::{InvalidPrice, Unpriced};
pub use price::ModelPrice;
pub use table::PriceTable;
