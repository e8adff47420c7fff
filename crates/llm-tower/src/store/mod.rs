//! Shared state behind limits, budgets and breakers.
