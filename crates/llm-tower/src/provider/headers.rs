//! Provider response headers: server-directed delays, rate-limit state and
//! request ids.
//!
//! Every function here returns "no value" for garbage and never panics.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The delay a server asks for before the next attempt, from
/// `retry-after-ms` (milliseconds, preferred when present), or `retry-after`
/// (delay-seconds or an HTTP date, relative to `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let _ = (headers, now);
    None
}

/// OpenAI's `x-should-retry: true|false`, which overrides classification.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let _ = headers;
    None
}

/// The provider's request id (`x-request-id` for OpenAI, `request-id` for
/// Anthropic).
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    let _ = headers;
    None
}

/// Parses a Go-style duration as OpenAI sends it in
/// `x-ratelimit-reset-*`: `1s`, `6m0s`, `12ms`, `23h47m36.648s`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let _ = s;
    None
}

/// One rate limit as reported by the provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limit {
    /// The quota for the window.
    pub limit: Option<u64>,
    /// What is left of it.
    pub remaining: Option<u64>,
    /// Time until the quota is fully restored, relative to when the
    /// headers were read.
    pub reset: Option<Duration>,
}

/// The rate-limit state a response reports, from OpenAI's
/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` or Anthropic's
/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitInfo {
    /// Requests per window.
    pub requests: Option<Limit>,
    /// Tokens per window (input and output together).
    pub tokens: Option<Limit>,
    /// Input tokens per window (Anthropic).
    pub input_tokens: Option<Limit>,
    /// Output tokens per window (Anthropic).
    pub output_tokens: Option<Limit>,
}

impl RateLimitInfo {
    /// Reads every known rate-limit header; resets given as instants
    /// (Anthropic's RFC 3339) become durations relative to `now`.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> RateLimitInfo {
        let _ = (headers, now);
        RateLimitInfo::default()
    }

    /// The longest reset among the limits with nothing remaining: the wait
    /// the headers imply when no `retry-after` is given.
    pub fn exhausted_reset(&self) -> Option<Duration> {
        None
    }
}
