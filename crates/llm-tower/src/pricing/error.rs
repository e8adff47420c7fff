use std::fmt;

/// The model has no price: neither its name nor its normalised name is in
/// the [`PriceTable`](super::PriceTable).
///
/// Returned instead of a zero cost, so that an unknown model is never
/// silently free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpriced {
    model: Box<str>,
}

impl Unpriced {
    pub(crate) fn new(model: &str) -> Self {
        Unpriced {
            model: model.into(),
        }
    }

    /// The model name as it was asked for.
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

/// A price that is negative, not a number, infinite or implausibly large.
///
/// Names the field (`input`, `output`, `cached_input`, `cache_write`) and,
/// when the price came from a [`PricingConfig`](super::PricingConfig), the
/// model.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidPrice {
    model: Option<Box<str>>,
    field: &'static str,
    value: f64,
}

impl InvalidPrice {
    pub(super) fn new(field: &'static str, value: f64) -> Self {
        InvalidPrice {
            model: None,
            field,
            value,
        }
    }

    pub(super) fn for_model(mut self, model: &str) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The model whose price is invalid, when known.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The invalid field: `input`, `output`, `cached_input` or
    /// `cache_write`.
    pub fn field(&self) -> &str {
        self.field
    }

    /// The rejected value, in USD per million tokens.
    pub fn value(&self) -> f64 {
        self.value
    }
}

impl fmt::Display for InvalidPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}` price", self.field)?;
        if let Some(model) = &self.model {
            write!(f, " for model `{model}`")?;
        }
        let why = if self.value.is_nan() {
            "is not a number"
        } else if self.value.is_infinite() {
            "is infinite"
        } else if self.value < 0.0 {
            "is negative"
        } else {
            "is above the limit of 1000000 USD per million tokens (a unit mistake?)"
        };
        write!(f, ": {} {why}", self.value)
    }
}

impl std::error::Error for InvalidPrice {}
