use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::error::InvalidPrice;
use super::price::ModelPrice;
use super::table::PriceTable;

/// Price overrides and additions, as read from configuration.
///
/// ```json
/// { "models": { "my-model": { "input": 1.0, "output": 2.0, "cached_input": 0.5 } } }
/// ```
///
/// Unknown fields and duplicate model names are rejected when
/// deserializing; prices are validated by [`PricingConfig::into_table`]
/// (or `PriceTable::try_from`). Merge the result over
/// [`PriceTable::embedded`] to override and extend the embedded prices.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// Prices by model name, in USD per million tokens.
    #[serde(default, deserialize_with = "unique_models")]
    pub models: BTreeMap<String, ModelPriceConfig>,
}

/// One model's price as written in configuration, in USD per million
/// tokens; validated into a [`ModelPrice`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPriceConfig {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens, reasoning included.
    pub output: f64,
    /// Input tokens read from the prompt cache; the input price if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Input tokens written to the prompt cache; the input price if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

impl ModelPriceConfig {
    /// Validates this price; errors name `model` and the field.
    pub(crate) fn validate(self, model: &str) -> Result<ModelPrice, InvalidPrice> {
        let mut price = ModelPrice::new(self.input, self.output);
        if let Some(cached) = self.cached_input {
            price = price.and_then(|p| p.with_cached_input(cached));
        }
        if let Some(write) = self.cache_write {
            price = price.and_then(|p| p.with_cache_write(write));
        }
        price.map_err(|e| e.for_model(model))
    }
}

impl PricingConfig {
    /// Validates every price into a table of these models only.
    ///
    /// # Errors
    ///
    /// [`InvalidPrice`], naming the model and the field, for the first
    /// negative, NaN, infinite or implausibly large price.
    pub fn into_table(self) -> Result<PriceTable, InvalidPrice> {
        self.models
            .into_iter()
            .try_fold(PriceTable::empty(), |table, (model, price)| {
                let price = price.validate(&model)?;
                Ok(table.with_price(model, price))
            })
    }
}

impl TryFrom<PricingConfig> for PriceTable {
    type Error = InvalidPrice;

    fn try_from(config: PricingConfig) -> Result<Self, InvalidPrice> {
        config.into_table()
    }
}

/// Deserializes a model map, rejecting a name given twice (which a plain
/// map would silently resolve to the last value).
pub(super) fn unique_models<'de, D>(
    deserializer: D,
) -> Result<BTreeMap<String, ModelPriceConfig>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Models;

    impl<'de> Visitor<'de> for Models {
        type Value = BTreeMap<String, ModelPriceConfig>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map from model name to price")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut models = BTreeMap::new();
            while let Some((model, price)) = map.next_entry::<String, ModelPriceConfig>()? {
                match models.entry(model) {
                    Entry::Vacant(slot) => {
                        slot.insert(price);
                    }
                    Entry::Occupied(slot) => {
                        return Err(A::Error::custom(format_args!(
                            "duplicate model `{}`",
                            slot.key()
                        )));
                    }
                }
            }
            Ok(models)
        }
    }

    deserializer.deserialize_map(Models)
}
