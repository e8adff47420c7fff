//! Prices per model.
