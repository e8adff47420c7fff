use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::config::{ModelPriceConfig, unique_models};
use super::cost::Cost;
use super::error::Unpriced;
use super::price::ModelPrice;
use super::resolve::normalize;
use crate::usage::Usage;

/// Prices by model name, with name normalisation.
///
/// Cheap to clone: the map is shared behind an [`Arc`] and copied only
/// when a shared table is changed. See the [module docs](super) for the
/// embedded prices and how names are resolved.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    models: Arc<BTreeMap<Box<str>, ModelPrice>>,
}

/// The embedded `prices.json`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedFile {
    as_of: String,
    #[serde(deserialize_with = "unique_models")]
    models: BTreeMap<String, ModelPriceConfig>,
}

struct Embedded {
    as_of: Box<str>,
    table: PriceTable,
}

const EMBEDDED_JSON: &str = include_str!("prices.json");

fn parse_embedded() -> Result<Embedded, String> {
    let file: EmbeddedFile = serde_json::from_str(EMBEDDED_JSON).map_err(|e| e.to_string())?;
    let mut models = BTreeMap::new();
    for (model, price) in file.models {
        let price = price.validate(&model).map_err(|e| e.to_string())?;
        models.insert(model.into_boxed_str(), price);
    }
    Ok(Embedded {
        as_of: file.as_of.into_boxed_str(),
        table: PriceTable {
            models: Arc::new(models),
        },
    })
}

fn embedded() -> &'static Embedded {
    static EMBEDDED: OnceLock<Embedded> = OnceLock::new();
    EMBEDDED.get_or_init(|| {
        // The file is compiled in and checked by a unit test, so this
        // cannot fail in a tested build.
        parse_embedded().unwrap_or_else(|e| panic!("embedded prices.json is invalid: {e}"))
    })
}

impl PriceTable {
    /// The prices embedded in this crate (see the [module docs](super)),
    /// parsed once and shared.
    pub fn embedded() -> Self {
        embedded().table.clone()
    }

    /// The date the embedded prices were last checked, `YYYY-MM-DD`.
    pub fn embedded_as_of() -> &'static str {
        &embedded().as_of
    }

    /// A table with no prices: every model is [`Unpriced`].
    pub fn empty() -> Self {
        PriceTable::default()
    }

    /// Sets the price of `model`, replacing any price it had.
    pub fn with_price(mut self, model: impl Into<Box<str>>, price: ModelPrice) -> Self {
        Arc::make_mut(&mut self.models).insert(model.into(), price);
        self
    }

    /// This table with every price of `other` added: `other`'s prices
    /// replace this table's for the same model, and its new models extend
    /// it.
    pub fn merge(mut self, other: PriceTable) -> Self {
        if self.models.is_empty() {
            return other;
        }
        let ours = Arc::make_mut(&mut self.models);
        match Arc::try_unwrap(other.models) {
            Ok(theirs) => ours.extend(theirs),
            Err(theirs) => ours.extend(theirs.iter().map(|(m, p)| (m.clone(), *p))),
        }
        self
    }

    /// The price of `model`, resolved as described in the
    /// [module docs](super).
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.resolve(model).map(|(_, price)| price)
    }

    /// The table entry `model` resolves to: its name and price.
    ///
    /// An exact match wins; otherwise the name is normalised (dates,
    /// `-latest`, platform forms and Gemini versions stripped) and looked
    /// up again. Never allocates.
    ///
    /// ```
    /// use llm_tower::pricing::PriceTable;
    ///
    /// let table = PriceTable::embedded();
    /// let (name, _) = table.resolve("anthropic.claude-3-haiku-20240307-v1:0").unwrap();
    /// assert_eq!(name, "claude-3-haiku");
    /// assert!(table.resolve("gpt-4o-mini-2024-07-18").is_some_and(|(n, _)| n == "gpt-4o-mini"));
    /// ```
    pub fn resolve(&self, model: &str) -> Option<(&str, &ModelPrice)> {
        if let Some((name, price)) = self.models.get_key_value(model) {
            return Some((name, price));
        }
        let normalized = normalize(model);
        if normalized.len() == model.len() {
            return None;
        }
        self.models
            .get_key_value(normalized)
            .map(|(name, price)| (&**name, price))
    }

    /// The cost of `usage` on `model`; see [`ModelPrice::cost`] for how it
    /// is computed and rounded.
    ///
    /// # Errors
    ///
    /// [`Unpriced`] when the model has no price: an unknown model is never
    /// free.
    pub fn cost(&self, model: &str, usage: &Usage) -> Result<Cost, Unpriced> {
        self.price(model)
            .map(|price| price.cost(usage))
            .ok_or_else(|| Unpriced::new(model))
    }

    /// The models and their prices, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelPrice)> + '_ {
        self.models.iter().map(|(name, price)| (&**name, price))
    }

    /// The number of models priced.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// `true` when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_prices_parse_and_validate() {
        let embedded = parse_embedded().unwrap();
        assert!(embedded.table.len() >= 29);
        let date = embedded.as_of.as_bytes();
        assert!(
            date.len() == 10
                && date[4] == b'-'
                && date[7] == b'-'
                && date
                    .iter()
                    .enumerate()
                    .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit()),
            "as_of is YYYY-MM-DD: {}",
            embedded.as_of
        );
        // The module docs state the date; keep them in step with the data.
        assert!(
            include_str!("mod.rs").contains(&format!("({})", embedded.as_of)),
            "the pricing module docs give the as_of date {}",
            embedded.as_of
        );
        for (model, price) in embedded.table.iter() {
            assert!(price.input() > Cost::ZERO, "{model}");
            assert!(price.output() > Cost::ZERO, "{model}");
            // A discount is never dearer than the full price.
            assert!(
                price.cached_input().is_none_or(|c| c <= price.input()),
                "{model}"
            );
            // A name with decorations is a snapshot priced apart from its
            // alias, which must exist.
            let alias = normalize(model);
            assert!(
                alias == model || embedded.table.price(alias).is_some(),
                "{model}"
            );
        }
    }
}
