//! Usage and finish reasons in each provider's response format.
