//! Provider response headers: server-directed delays, rate-limit state and
//! request ids.
//!
//! Every function here returns "no value" for garbage and never panics: a
//! value that is not visible ASCII, negative, not a number, `NaN`, infinite,
//! in an unknown unit or longer than [`MAX_DELAY`] reads as absent.
//!
//! Header names are written once, in [`names`], and read from there by every
//! layer.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, HeaderValue};
//! use llm_tower::provider::headers::{self, RateLimitInfo, names};
//!
//! let mut h = HeaderMap::new();
//! h.insert(names::X_RATELIMIT_REMAINING_REQUESTS, HeaderValue::from_static("0"));
//! h.insert(names::X_RATELIMIT_RESET_REQUESTS, HeaderValue::from_static("6m0s"));
//! h.insert(names::X_REQUEST_ID, HeaderValue::from_static("req_123"));
//!
//! let now = SystemTime::now();
//! let info = RateLimitInfo::from_headers(&h, now);
//! assert_eq!(info.exhausted_reset(), Some(Duration::from_secs(360)));
//! assert_eq!(headers::retry_after(&h, now), None);
//! assert_eq!(headers::server_delay(&h, now), Some(Duration::from_secs(360)));
//! assert_eq!(headers::request_id(&h), Some("req_123"));
//! ```

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

use self::names::*;

/// Names of the response (and a few request) headers the crate reads.
///
/// `http::HeaderName`s, so they can be used directly with
/// [`HeaderMap::get`] and [`HeaderMap::insert`].
pub mod names {
    use http::HeaderName;

    /// `retry-after`: delay-seconds or an HTTP date (RFC 9110).
    pub const RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;
    /// `retry-after-ms`: a delay in milliseconds (OpenAI, Azure OpenAI).
    pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
    /// `x-should-retry: true|false`: the server's verdict on retrying (OpenAI,
    /// Anthropic).
    pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

    /// `x-request-id`: OpenAI's request id.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `request-id`: Anthropic's request id.
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
    /// `apim-request-id`: Azure API Management's request id (Azure OpenAI).
    pub const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");

    /// `x-ratelimit-limit-requests` (OpenAI).
    pub const X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-limit-requests");
    /// `x-ratelimit-remaining-requests` (OpenAI).
    pub const X_RATELIMIT_REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    /// `x-ratelimit-reset-requests`, a Go duration (OpenAI).
    pub const X_RATELIMIT_RESET_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-reset-requests");
    /// `x-ratelimit-limit-tokens` (OpenAI).
    pub const X_RATELIMIT_LIMIT_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-limit-tokens");
    /// `x-ratelimit-remaining-tokens` (OpenAI).
    pub const X_RATELIMIT_REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-tokens");
    /// `x-ratelimit-reset-tokens`, a Go duration (OpenAI).
    pub const X_RATELIMIT_RESET_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-reset-tokens");

    /// `anthropic-ratelimit-requests-limit`.
    pub const ANTHROPIC_RATELIMIT_REQUESTS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-limit");
    /// `anthropic-ratelimit-requests-remaining`.
    pub const ANTHROPIC_RATELIMIT_REQUESTS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-remaining");
    /// `anthropic-ratelimit-requests-reset`, an RFC 3339 instant.
    pub const ANTHROPIC_RATELIMIT_REQUESTS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-reset");
    /// `anthropic-ratelimit-tokens-limit`.
    pub const ANTHROPIC_RATELIMIT_TOKENS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-limit");
    /// `anthropic-ratelimit-tokens-remaining`.
    pub const ANTHROPIC_RATELIMIT_TOKENS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining");
    /// `anthropic-ratelimit-tokens-reset`, an RFC 3339 instant.
    pub const ANTHROPIC_RATELIMIT_TOKENS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-reset");
    /// `anthropic-ratelimit-input-tokens-limit`.
    pub const ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-input-tokens-limit");
    /// `anthropic-ratelimit-input-tokens-remaining`.
    pub const ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining");
    /// `anthropic-ratelimit-input-tokens-reset`, an RFC 3339 instant.
    pub const ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-input-tokens-reset");
    /// `anthropic-ratelimit-output-tokens-limit`.
    pub const ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-output-tokens-limit");
    /// `anthropic-ratelimit-output-tokens-remaining`.
    pub const ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining");
    /// `anthropic-ratelimit-output-tokens-reset`, an RFC 3339 instant.
    pub const ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-output-tokens-reset");

    /// `anthropic-version`, sent on every Anthropic request.
    pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
    /// `x-api-key`: Anthropic's API key header. A secret.
    pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    /// `api-key`: Azure OpenAI's API key header. A secret.
    pub const API_KEY: HeaderName = HeaderName::from_static("api-key");
    /// `x-goog-api-key`: Gemini's API key header. A secret.
    pub const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
    /// `authorization`: the bearer token of OpenAI and most compatible
    /// servers. A secret.
    pub const AUTHORIZATION: HeaderName = http::header::AUTHORIZATION;

    /// The request headers that carry a credential and must never be logged:
    /// `authorization`, `proxy-authorization`, `x-api-key`, `api-key`,
    /// `x-goog-api-key`.
    ///
    /// [`PrepareLayer`](crate::request::PrepareLayer) marks their values
    /// sensitive, so tower-http's `TraceLayer` and `Debug` print
    /// `Sensitive` instead.
    pub const SECRETS: [HeaderName; 5] = [
        AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        X_API_KEY,
        API_KEY,
        X_GOOG_API_KEY,
    ];

    /// Whether a header carries a credential and must never be logged: one
    /// of [`SECRETS`].
    pub fn is_secret(name: &HeaderName) -> bool {
        SECRETS.iter().any(|s| s == name)
    }
}

/// The longest delay any function here returns: `i64::MAX` nanoseconds
/// (about 292 years), the range of Go's `time.Duration`.
///
/// A longer value is treated as garbage, so that a caller may always add a
/// returned delay to an instant without overflow.
pub const MAX_DELAY: Duration = Duration::from_nanos(i64::MAX as u64);

/// The delay a server asks for before the next attempt, from
/// `retry-after-ms` (milliseconds, preferred when present and valid), or
/// `retry-after` (delay-seconds or an HTTP date, relative to `now`).
///
/// An HTTP date in the past gives [`Duration::ZERO`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue};
/// use llm_tower::provider::headers::{retry_after, names};
///
/// let mut h = HeaderMap::new();
/// h.insert(names::RETRY_AFTER, HeaderValue::from_static("2"));
/// assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(2)));
/// h.insert(names::RETRY_AFTER_MS, HeaderValue::from_static("1500"));
/// assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_millis(1500)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after_ms(headers).or_else(|| retry_after_header(headers, now))
}

/// `retry-after-ms` alone: milliseconds, an integer or a decimal
/// (`1500.5`).
pub fn retry_after_ms(headers: &HeaderMap) -> Option<Duration> {
    let v = header_str(headers, &RETRY_AFTER_MS)?;
    decimal_nanos(v, NANOS_PER_MILLI).and_then(nanos_to_duration)
}

/// `retry-after` alone: delay-seconds (an integer, or a decimal such as
/// `1.5`), or an HTTP date, relative to `now` (a past date gives
/// [`Duration::ZERO`]).
pub fn retry_after_header(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = header_str(headers, &RETRY_AFTER)?;
    if v.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        decimal_nanos(v, NANOS_PER_SEC).and_then(nanos_to_duration)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        until(at, now)
    }
}

/// Whether a response is a server-sent event stream
/// (`content-type: text/event-stream`, parameters allowed).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// The delay the server directs before the next attempt: [`retry_after`]
/// when given, else the [`exhausted_reset`](RateLimitInfo::exhausted_reset)
/// of the rate-limit headers (the time until an exhausted quota refills).
pub fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after(headers, now)
        .or_else(|| RateLimitInfo::from_headers(headers, now).exhausted_reset())
}

/// `x-should-retry: true|false` (OpenAI, Anthropic; case-insensitive), which overrides
/// classification. Any other value gives `None`.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let v = header_str(headers, &X_SHOULD_RETRY)?;
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The provider's request id: `x-request-id` (OpenAI, most compatible
/// servers), else `request-id` (Anthropic), else `apim-request-id` (Azure
/// OpenAI's gateway).
///
/// A value that is empty or not visible ASCII is skipped, so it can be
/// logged as is.
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    [X_REQUEST_ID, REQUEST_ID, APIM_REQUEST_ID]
        .iter()
        .find_map(|name| {
            header_str(headers, name).filter(|v| v.bytes().all(|b| b.is_ascii_graphic()))
        })
}

/// Parses a Go `time.Duration` string, as OpenAI sends in
/// `x-ratelimit-reset-*`: `1s`, `6m0s`, `12ms`, `23h47m36.648s`.
///
/// The format is a sequence of decimal numbers (an optional fraction
/// included), each with a unit: `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`,
/// `h`. `"0"` is the only number accepted without a unit. Signs, spaces,
/// other units and durations over [`MAX_DELAY`] give `None`. Fractions
/// finer than a nanosecond are truncated.
///
/// ```
/// use std::time::Duration;
/// use llm_tower::provider::headers::parse_go_duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_go_duration("-1s"), None);
/// assert_eq!(parse_go_duration("15"), None);
/// ```
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // `find` gives char boundaries, so the splits cannot panic.
        let (number, tail) =
            rest.split_at(rest.find(|c: char| !is_number(c)).unwrap_or(rest.len()));
        let (unit, tail) = tail.split_at(tail.find(is_number).unwrap_or(tail.len()));
        let unit = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => NANOS_PER_MICRO,
            "ms" => NANOS_PER_MILLI,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            _ => return None,
        };
        total = total.checked_add(decimal_nanos(number, unit)?)?;
        rest = tail;
    }
    nanos_to_duration(total)
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

impl Limit {
    /// Whether the provider reports nothing left (`remaining == 0`).
    pub fn is_exhausted(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Fills the fields `self` lacks from `other`.
    fn or(self, other: Limit) -> Limit {
        Limit {
            limit: self.limit.or(other.limit),
            remaining: self.remaining.or(other.remaining),
            reset: self.reset.or(other.reset),
        }
    }
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
    /// (Anthropic's RFC 3339) become durations relative to `now`, zero for
    /// an instant already past.
    ///
    /// A limit is `Some` when at least one of its headers parsed; a value
    /// that does not parse leaves its field `None`.
    ///
    /// One pass over the header names first: a response that carries no
    /// rate-limit header (most servers') costs no lookup, and one with
    /// OpenAI's only skips Anthropic's twelve.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> RateLimitInfo {
        let (mut openai, mut anthropic) = (false, false);
        for name in headers.keys() {
            let name = name.as_str();
            openai |= name.starts_with("x-ratelimit-");
            anthropic |= name.starts_with("anthropic-ratelimit-");
        }
        if !openai && !anthropic {
            return RateLimitInfo::default();
        }
        let read = |group: &LimitHeaders, present: bool| {
            if present {
                group.read(headers, now)
            } else {
                None
            }
        };
        let either = |a: Option<Limit>, b: Option<Limit>| match (a, b) {
            (Some(a), Some(b)) => Some(a.or(b)),
            (a, b) => a.or(b),
        };
        RateLimitInfo {
            requests: either(
                read(&OPENAI_REQUESTS, openai),
                read(&ANTHROPIC_REQUESTS, anthropic),
            ),
            tokens: either(
                read(&OPENAI_TOKENS, openai),
                read(&ANTHROPIC_TOKENS, anthropic),
            ),
            input_tokens: read(&ANTHROPIC_INPUT_TOKENS, anthropic),
            output_tokens: read(&ANTHROPIC_OUTPUT_TOKENS, anthropic),
        }
    }

    /// Whether no rate-limit header was read.
    pub fn is_empty(&self) -> bool {
        self.limits().next().is_none()
    }

    /// The longest `reset` among the exhausted limits (`remaining == 0`):
    /// the wait the rate-limit headers direct when no `retry-after` is
    /// given. `None` when no limit is exhausted or none says when it resets.
    pub fn exhausted_reset(&self) -> Option<Duration> {
        self.limits()
            .filter(|l| l.is_exhausted())
            .filter_map(|l| l.reset)
            .max()
    }

    /// The limits that were reported.
    fn limits(&self) -> impl Iterator<Item = &Limit> {
        [
            &self.requests,
            &self.tokens,
            &self.input_tokens,
            &self.output_tokens,
        ]
        .into_iter()
        .flatten()
    }
}

/// How a provider writes when a limit resets.
#[derive(Clone, Copy, Debug)]
enum ResetFormat {
    /// A Go duration from now (OpenAI).
    GoDuration,
    /// An RFC 3339 instant (Anthropic).
    Rfc3339,
}

/// The three headers of one limit.
#[derive(Debug)]
struct LimitHeaders {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
    reset_format: ResetFormat,
}

impl LimitHeaders {
    fn read(&self, headers: &HeaderMap, now: SystemTime) -> Option<Limit> {
        // Digits only: `u64::from_str` would also take a `+` sign.
        let count = |name: &HeaderName| {
            let v = header_str(headers, name)?;
            v.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| v.parse::<u64>().ok())?
        };
        let reset = header_str(headers, &self.reset).and_then(|v| match self.reset_format {
            ResetFormat::GoDuration => parse_go_duration(v),
            ResetFormat::Rfc3339 => until(parse_rfc3339(v)?, now),
        });
        let limit = Limit {
            limit: count(&self.limit),
            remaining: count(&self.remaining),
            reset,
        };
        (limit != Limit::default()).then_some(limit)
    }
}

const OPENAI_REQUESTS: LimitHeaders = LimitHeaders {
    limit: X_RATELIMIT_LIMIT_REQUESTS,
    remaining: X_RATELIMIT_REMAINING_REQUESTS,
    reset: X_RATELIMIT_RESET_REQUESTS,
    reset_format: ResetFormat::GoDuration,
};
const OPENAI_TOKENS: LimitHeaders = LimitHeaders {
    limit: X_RATELIMIT_LIMIT_TOKENS,
    remaining: X_RATELIMIT_REMAINING_TOKENS,
    reset: X_RATELIMIT_RESET_TOKENS,
    reset_format: ResetFormat::GoDuration,
};
const ANTHROPIC_REQUESTS: LimitHeaders = LimitHeaders {
    limit: ANTHROPIC_RATELIMIT_REQUESTS_LIMIT,
    remaining: ANTHROPIC_RATELIMIT_REQUESTS_REMAINING,
    reset: ANTHROPIC_RATELIMIT_REQUESTS_RESET,
    reset_format: ResetFormat::Rfc3339,
};
const ANTHROPIC_TOKENS: LimitHeaders = LimitHeaders {
    limit: ANTHROPIC_RATELIMIT_TOKENS_LIMIT,
    remaining: ANTHROPIC_RATELIMIT_TOKENS_REMAINING,
    reset: ANTHROPIC_RATELIMIT_TOKENS_RESET,
    reset_format: ResetFormat::Rfc3339,
};
const ANTHROPIC_INPUT_TOKENS: LimitHeaders = LimitHeaders {
    limit: ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT,
    remaining: ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING,
    reset: ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET,
    reset_format: ResetFormat::Rfc3339,
};
const ANTHROPIC_OUTPUT_TOKENS: LimitHeaders = LimitHeaders {
    limit: ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT,
    remaining: ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING,
    reset: ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET,
    reset_format: ResetFormat::Rfc3339,
};

const NANOS_PER_MICRO: u128 = 1_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A header's value as trimmed, non-empty visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then_some(v)
}

/// `digits[.digits]` (`1`, `1.5`, `.5`, `1.`) times `unit` nanoseconds,
/// exactly, in integers: no float can turn `NaN`, `inf` or `1e400` into a
/// value, and nothing here can panic. Fraction digits finer than a
/// nanosecond are dropped.
fn decimal_nanos(s: &str, unit: u128) -> Option<u128> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let mut n: u128 = 0;
    for b in int.bytes() {
        n = n.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    // unit <= 3.6e12 and 18 digits < 1e18, so the product fits in a u128.
    let (mut f, mut scale) = (0u128, 1u128);
    for b in frac.bytes().take(18) {
        f = f * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    n.checked_mul(unit)?.checked_add(f * unit / scale)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let nanos = u64::try_from(nanos).ok()?;
    let d = Duration::from_nanos(nanos);
    (d <= MAX_DELAY).then_some(d)
}

/// The time from `now` until `at`: zero when `at` is past, `None` when
/// absurdly far.
fn until(at: SystemTime, now: SystemTime) -> Option<Duration> {
    let d = at.duration_since(now).unwrap_or(Duration::ZERO);
    (d <= MAX_DELAY).then_some(d)
}

/// An RFC 3339 timestamp with its offset: `2024-06-26T18:32:05Z`,
/// `2024-06-26T18:32:05.123+02:00`. A timestamp without an offset is
/// rejected, as RFC 3339 requires one.
///
/// `humantime` parses the date, time and fraction, but only knows UTC (and
/// would read any `+hh:mm` after a fraction as UTC), so the offset is taken
/// off here first.
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let (local, offset_secs, ahead) = if let Some(local) = s.strip_suffix(['Z', 'z']) {
        (local, 0, true)
    } else {
        let tail = b.get(b.len().checked_sub(6)?..)?;
        let ahead = match tail[0] {
            b'+' => true,
            b'-' => false,
            _ => return None,
        };
        let digit = |i: usize| tail[i].is_ascii_digit().then(|| u64::from(tail[i] - b'0'));
        let hours = digit(1)? * 10 + digit(2)?;
        let minutes = digit(4)? * 10 + digit(5)?;
        if tail[3] != b':' || hours > 23 || minutes > 59 {
            return None;
        }
        // The sign is ASCII, so `len - 6` is a char boundary.
        (&s[..s.len() - 6], hours * 3600 + minutes * 60, ahead)
    };
    // Only the characters of a date and time, so that humantime cannot
    // read a second offset or zone inside.
    let lb = local.as_bytes();
    if lb.get(10) != Some(&b'T')
        || !lb
            .iter()
            .all(|&c| c.is_ascii_digit() || matches!(c, b'-' | b':' | b'.' | b'T'))
    {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    let offset = Duration::from_secs(offset_secs);
    // Local time is ahead of UTC by a positive offset.
    if ahead {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn map(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn bytes_map(name: &HeaderName, value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name.clone(), HeaderValue::from_bytes(value).unwrap());
        h
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    /// 2015-10-21T07:28:00Z, the `retry-after` example of RFC 9110.
    fn rfc_now() -> SystemTime {
        UNIX_EPOCH + secs(1_445_412_480)
    }

    /// 2024-06-26T18:32:00Z.
    fn anthropic_now() -> SystemTime {
        UNIX_EPOCH + secs(1_719_426_720)
    }

    const GARBAGE: &[&str] = &[
        "-1",
        "abc",
        "1e400",
        "1e3",
        "",
        " ",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "+inf",
        "infinity",
        "+1",
        "1.2.3",
        ".",
        "0x10",
        "1 2",
        "1,5",
        "1s",
        "99999999999999999999999999999999999999999",
        "340282366920938463463374607431768211456",
    ];

    // --- retry-after ----------------------------------------------------

    #[test]
    fn retry_after_seconds() {
        let now = rfc_now();
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER, "2")]), now),
            Some(secs(2))
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER, "0")]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER, " 30 ")]), now),
            Some(secs(30))
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER, "1.5")]), now),
            Some(ms(1500))
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER, "0.25")]), now),
            Some(ms(250))
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER, "86400")]), now),
            Some(secs(86_400))
        );
    }

    #[test]
    fn retry_after_ms_integer_and_decimal() {
        let now = rfc_now();
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER_MS, "1500")]), now),
            Some(ms(1500))
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER_MS, "1500.5")]), now),
            Some(Duration::from_micros(1_500_500))
        );
        assert_eq!(
            retry_after(&map(&[(&RETRY_AFTER_MS, "0")]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after_ms(&map(&[(&RETRY_AFTER_MS, "20")])),
            Some(ms(20))
        );
    }

    #[test]
    fn retry_after_ms_is_preferred_when_valid() {
        let now = rfc_now();
        let h = map(&[(&RETRY_AFTER, "2"), (&RETRY_AFTER_MS, "1500")]);
        assert_eq!(retry_after(&h, now), Some(ms(1500)));
        for bad in GARBAGE {
            let h = map(&[(&RETRY_AFTER, "2"), (&RETRY_AFTER_MS, bad)]);
            assert_eq!(
                retry_after(&h, now),
                Some(secs(2)),
                "retry-after-ms: {bad:?}"
            );
        }
    }

    #[test]
    fn retry_after_http_date() {
        let now = rfc_now();
        let h = map(&[(&RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        assert_eq!(retry_after(&h, now - secs(90)), Some(secs(90)));
        // A date in the past is "now", not garbage.
        assert_eq!(retry_after(&h, now + secs(3600)), Some(Duration::ZERO));
        // The obsolete formats HTTP still allows.
        let h = map(&[(&RETRY_AFTER, "Wednesday, 21-Oct-15 07:28:30 GMT")]);
        assert_eq!(retry_after(&h, now), Some(secs(30)));
        let h = map(&[(&RETRY_AFTER, "Wed Oct 21 07:29:00 2015")]);
        assert_eq!(retry_after(&h, now), Some(secs(60)));
        // Not a date.
        let h = map(&[(&RETRY_AFTER, "Wed, 32 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&h, now), None);
        let h = map(&[(&RETRY_AFTER, "tomorrow")]);
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn retry_after_garbage_is_none() {
        let now = rfc_now();
        for bad in GARBAGE {
            for name in [&RETRY_AFTER, &RETRY_AFTER_MS] {
                assert_eq!(
                    retry_after(&map(&[(name, bad)]), now),
                    None,
                    "{name}: {bad:?}"
                );
            }
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        for raw in [&b"\xff"[..], b"2\xff", b"\xe2\x82\xac", b"1\t5", b"\x80"] {
            for name in [&RETRY_AFTER, &RETRY_AFTER_MS] {
                assert_eq!(
                    retry_after(&bytes_map(name, raw), now),
                    None,
                    "{name}: {raw:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_absurd_is_none() {
        let now = rfc_now();
        // u64 seconds fit a Duration but not MAX_DELAY.
        let h = map(&[(&RETRY_AFTER, "18446744073709551615")]);
        assert_eq!(retry_after(&h, now), None);
        let h = map(&[(&RETRY_AFTER_MS, "18446744073709551615000")]);
        assert_eq!(retry_after(&h, now), None);
        // Within range: kept, the caller caps.
        let h = map(&[(&RETRY_AFTER, "9223372036")]);
        assert_eq!(retry_after(&h, now), Some(secs(9_223_372_036)));
        // Far-future date: absurd.
        let h = map(&[(&RETRY_AFTER, "Fri, 31 Dec 9999 23:59:59 GMT")]);
        assert_eq!(retry_after(&h, UNIX_EPOCH), None);
    }

    #[test]
    fn server_delay_prefers_retry_after_then_exhausted_reset() {
        let now = rfc_now();
        let h = map(&[
            (&X_RATELIMIT_REMAINING_TOKENS, "0"),
            (&X_RATELIMIT_RESET_TOKENS, "12ms"),
        ]);
        assert_eq!(server_delay(&h, now), Some(ms(12)));
        let mut h2 = h.clone();
        h2.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(server_delay(&h2, now), Some(secs(3)));
        // Not exhausted: no directed wait.
        let h = map(&[
            (&X_RATELIMIT_REMAINING_TOKENS, "10"),
            (&X_RATELIMIT_RESET_TOKENS, "12ms"),
        ]);
        assert_eq!(server_delay(&h, now), None);
    }

    // --- x-should-retry -------------------------------------------------

    #[test]
    fn should_retry_values() {
        for (v, want) in [
            ("true", Some(true)),
            ("false", Some(false)),
            ("TRUE", Some(true)),
            (" False ", Some(false)),
            ("1", None),
            ("yes", None),
            ("", None),
            ("truee", None),
        ] {
            assert_eq!(should_retry(&map(&[(&X_SHOULD_RETRY, v)])), want, "{v:?}");
        }
        assert_eq!(should_retry(&HeaderMap::new()), None);
        assert_eq!(should_retry(&bytes_map(&X_SHOULD_RETRY, b"tr\xffue")), None);
    }

    // --- request ids ----------------------------------------------------

    #[test]
    fn request_id_per_provider() {
        let openai = map(&[(&X_REQUEST_ID, "req_0123456789abcdef")]);
        assert_eq!(request_id(&openai), Some("req_0123456789abcdef"));
        let anthropic = map(&[(&REQUEST_ID, "req_011CPn4oPbi1i7G2vAujgHbd")]);
        assert_eq!(request_id(&anthropic), Some("req_011CPn4oPbi1i7G2vAujgHbd"));
        let azure = map(&[(&APIM_REQUEST_ID, "2c5b0cb4-92b1-4e34-a6b3-7a3c6f4a3d0f")]);
        assert_eq!(
            request_id(&azure),
            Some("2c5b0cb4-92b1-4e34-a6b3-7a3c6f4a3d0f")
        );
        // x-request-id first, apim-request-id last.
        let both = map(&[
            (&APIM_REQUEST_ID, "apim"),
            (&REQUEST_ID, "anth"),
            (&X_REQUEST_ID, "oai"),
        ]);
        assert_eq!(request_id(&both), Some("oai"));
        let two = map(&[(&APIM_REQUEST_ID, "apim"), (&REQUEST_ID, "anth")]);
        assert_eq!(request_id(&two), Some("anth"));
        assert_eq!(request_id(&HeaderMap::new()), None);
    }

    #[test]
    fn request_id_rejects_invisible_values() {
        assert_eq!(request_id(&map(&[(&X_REQUEST_ID, "")])), None);
        assert_eq!(request_id(&map(&[(&X_REQUEST_ID, "a b")])), None);
        assert_eq!(request_id(&bytes_map(&X_REQUEST_ID, b"req\xff")), None);
        assert_eq!(request_id(&map(&[(&X_REQUEST_ID, "req\tid")])), None);
        assert_eq!(
            request_id(&map(&[(&X_REQUEST_ID, "  req_1 ")])),
            Some("req_1")
        );
        // A bad first header does not hide a good second one.
        let mut h = bytes_map(&X_REQUEST_ID, b"\xe2\x82\xac");
        h.insert(REQUEST_ID, HeaderValue::from_static("req_2"));
        assert_eq!(request_id(&h), Some("req_2"));
    }

    #[test]
    fn secret_header_names() {
        for name in [&AUTHORIZATION, &X_API_KEY, &API_KEY, &X_GOOG_API_KEY] {
            assert!(names::is_secret(name), "{name}");
        }
        assert!(names::is_secret(&http::header::PROXY_AUTHORIZATION));
        assert!(names::is_secret(&HeaderName::from_static("x-goog-api-key")));
        for name in [
            &X_REQUEST_ID,
            &ANTHROPIC_VERSION,
            &http::header::CONTENT_TYPE,
        ] {
            assert!(!names::is_secret(name), "{name}");
        }
    }

    // --- Go durations ---------------------------------------------------

    #[test]
    fn go_durations_openai_sends() {
        for (s, want) in [
            ("1s", secs(1)),
            ("6m0s", secs(360)),
            ("12ms", ms(12)),
            ("23h47m36.648s", secs(23 * 3600 + 47 * 60 + 36) + ms(648)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("1.5s", ms(1500)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("500μs", Duration::from_micros(500)),
            ("100ns", Duration::from_nanos(100)),
            ("2h", secs(7200)),
            ("1h0m0s", secs(3600)),
            ("2m59.56s", secs(179) + ms(560)),
            ("7.66s", ms(7660)),
            ("1.5h", secs(5400)),
            (".5s", ms(500)),
            ("1.s", secs(1)),
            ("1h1h", secs(7200)),
            ("1.0000000001s", secs(1)),
            ("0.0000000019s", Duration::from_nanos(1)),
            ("2562047h47m16.854775807s", MAX_DELAY),
        ] {
            assert_eq!(parse_go_duration(s), Some(want), "{s:?}");
        }
    }

    #[test]
    fn go_duration_garbage_is_none() {
        for s in [
            "",
            "15",
            "1",
            "00",
            "-1s",
            "+1s",
            "-0",
            "s",
            "ms",
            "1x",
            "1S",
            "1 s",
            " 1s",
            "1s ",
            "1m-1s",
            "1.2.3s",
            ".s",
            "1e3s",
            "NaN",
            "inf",
            "infs",
            "1sec",
            "1hr",
            "1d",
            "1µ",
            "1\u{0}s",
            "2562047h47m16.854775808s",
            "99999999999999999999999999999999999999999h",
            "1e400",
            "abc",
            "-1",
        ] {
            assert_eq!(parse_go_duration(s), None, "{s:?}");
        }
    }

    // --- rate limits ----------------------------------------------------

    #[test]
    fn openai_rate_limits() {
        let h = map(&[
            (&X_RATELIMIT_LIMIT_REQUESTS, "60"),
            (&X_RATELIMIT_REMAINING_REQUESTS, "59"),
            (&X_RATELIMIT_RESET_REQUESTS, "1s"),
            (&X_RATELIMIT_LIMIT_TOKENS, "150000"),
            (&X_RATELIMIT_REMAINING_TOKENS, "149984"),
            (&X_RATELIMIT_RESET_TOKENS, "6m0s"),
        ]);
        let info = RateLimitInfo::from_headers(&h, rfc_now());
        assert_eq!(
            info.requests,
            Some(Limit {
                limit: Some(60),
                remaining: Some(59),
                reset: Some(secs(1))
            })
        );
        assert_eq!(
            info.tokens,
            Some(Limit {
                limit: Some(150_000),
                remaining: Some(149_984),
                reset: Some(secs(360))
            })
        );
        assert_eq!(info.input_tokens, None);
        assert_eq!(info.output_tokens, None);
        assert!(!info.is_empty());
        assert_eq!(info.exhausted_reset(), None);
    }

    #[test]
    fn anthropic_rate_limits() {
        let now = anthropic_now();
        let h = map(&[
            (&ANTHROPIC_RATELIMIT_REQUESTS_LIMIT, "50"),
            (&ANTHROPIC_RATELIMIT_REQUESTS_REMAINING, "0"),
            (&ANTHROPIC_RATELIMIT_REQUESTS_RESET, "2024-06-26T18:32:05Z"),
            (&ANTHROPIC_RATELIMIT_TOKENS_LIMIT, "100000"),
            (&ANTHROPIC_RATELIMIT_TOKENS_REMAINING, "0"),
            (&ANTHROPIC_RATELIMIT_TOKENS_RESET, "2024-06-26T18:33:00Z"),
            (&ANTHROPIC_RATELIMIT_INPUT_TOKENS_LIMIT, "80000"),
            (&ANTHROPIC_RATELIMIT_INPUT_TOKENS_REMAINING, "80000"),
            (
                &ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET,
                "2024-06-26T18:40:00Z",
            ),
            (&ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_LIMIT, "16000"),
            (&ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_REMAINING, "15000"),
            (
                &ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET,
                "2024-06-26T18:32:01.5Z",
            ),
        ]);
        let info = RateLimitInfo::from_headers(&h, now);
        assert_eq!(
            info.requests,
            Some(Limit {
                limit: Some(50),
                remaining: Some(0),
                reset: Some(secs(5))
            })
        );
        assert_eq!(
            info.tokens,
            Some(Limit {
                limit: Some(100_000),
                remaining: Some(0),
                reset: Some(secs(60))
            })
        );
        assert_eq!(info.input_tokens.unwrap().reset, Some(secs(480)));
        assert_eq!(info.output_tokens.unwrap().reset, Some(ms(1500)));
        // The longest reset among exhausted limits, not the input limit's
        // 8 minutes (it is not exhausted).
        assert_eq!(info.exhausted_reset(), Some(secs(60)));
        // A reset already past saturates at zero.
        let later = RateLimitInfo::from_headers(&h, now + secs(3600));
        assert_eq!(later.requests.unwrap().reset, Some(Duration::ZERO));
        assert_eq!(later.exhausted_reset(), Some(Duration::ZERO));
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        let at = UNIX_EPOCH + secs(1_719_426_725); // 2024-06-26T18:32:05Z
        for (s, want) in [
            ("2024-06-26T18:32:05Z", Some(at)),
            ("2024-06-26T18:32:05z", Some(at)),
            ("2024-06-26T18:32:05+00:00", Some(at)),
            ("2024-06-26T18:32:05-00:00", Some(at)),
            ("2024-06-26T20:32:05+02:00", Some(at)),
            ("2024-06-26T13:02:05-05:30", Some(at)),
            ("2024-06-26T18:32:05.250Z", Some(at + ms(250))),
            ("2024-06-26T20:32:05.250+02:00", Some(at + ms(250))),
            (
                "2024-06-26T18:32:05.123456789Z",
                Some(at + Duration::from_nanos(123_456_789)),
            ),
            ("2024-06-26T18:32:05", None),
            ("2024-06-26 18:32:05Z", None),
            ("2024-06-26T18:32:05ZZ", None),
            ("2024-06-26T18:32:05.5+05:30Z", None),
            ("2024-06-26T18:32:05+24:00", None),
            ("2024-06-26T18:32:05+02:60", None),
            ("2024-06-26T18:32:05+0200", None),
            ("2024-13-26T18:32:05Z", None),
            ("2024-06-26T25:32:05Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("Z", None),
            ("+00:00", None),
            ("", None),
            ("2024-06-26Té8:32:05Z", None),
        ] {
            assert_eq!(parse_rfc3339(s), want, "{s:?}");
        }
    }

    #[test]
    fn a_group_is_some_when_one_header_parses() {
        let now = anthropic_now();
        let h = map(&[(&X_RATELIMIT_REMAINING_REQUESTS, "3")]);
        let info = RateLimitInfo::from_headers(&h, now);
        assert_eq!(
            info.requests,
            Some(Limit {
                remaining: Some(3),
                ..Limit::default()
            })
        );
        assert_eq!(info.tokens, None);

        // Garbage in every header of a group: the group is absent.
        let h = map(&[
            (&X_RATELIMIT_LIMIT_TOKENS, "abc"),
            (&X_RATELIMIT_REMAINING_TOKENS, "-1"),
            (&X_RATELIMIT_RESET_TOKENS, "15"),
            (&ANTHROPIC_RATELIMIT_TOKENS_RESET, "yesterday"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now);
        assert!(info.is_empty(), "{info:?}");
        assert_eq!(info.exhausted_reset(), None);

        // Garbage in one field leaves the others.
        let h = map(&[
            (&X_RATELIMIT_LIMIT_TOKENS, "1e400"),
            (&X_RATELIMIT_REMAINING_TOKENS, "0"),
            (&X_RATELIMIT_RESET_TOKENS, "NaN"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now);
        assert_eq!(
            info.tokens,
            Some(Limit {
                remaining: Some(0),
                ..Limit::default()
            })
        );
        // Exhausted but no reset: no directed wait.
        assert_eq!(info.exhausted_reset(), None);
        assert!(RateLimitInfo::from_headers(&HeaderMap::new(), now).is_empty());
    }

    #[test]
    fn rate_limit_garbage_never_parses() {
        let now = anthropic_now();
        for bad in GARBAGE
            .iter()
            .copied()
            .chain(["1.5", "18446744073709551616", "0x1"])
        {
            for group in [
                &OPENAI_REQUESTS,
                &OPENAI_TOKENS,
                &ANTHROPIC_REQUESTS,
                &ANTHROPIC_TOKENS,
                &ANTHROPIC_INPUT_TOKENS,
                &ANTHROPIC_OUTPUT_TOKENS,
            ] {
                let h = map(&[
                    (&group.limit, bad),
                    (&group.remaining, bad),
                    (&group.reset, bad),
                ]);
                let info = RateLimitInfo::from_headers(&h, now);
                // "1s" is a valid Go duration; it is garbage for everything else.
                let go_ok = matches!(group.reset_format, ResetFormat::GoDuration)
                    && parse_go_duration(bad).is_some();
                assert_eq!(
                    info.is_empty(),
                    !go_ok,
                    "{}: {bad:?} -> {info:?}",
                    group.limit
                );
            }
        }
        let mut h = HeaderMap::new();
        for name in [
            &X_RATELIMIT_LIMIT_REQUESTS,
            &ANTHROPIC_RATELIMIT_TOKENS_RESET,
        ] {
            h.insert(name.clone(), HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        }
        assert!(RateLimitInfo::from_headers(&h, now).is_empty());
    }

    #[test]
    fn openai_and_anthropic_headers_merge_field_by_field() {
        let now = anthropic_now();
        let h = map(&[
            (&X_RATELIMIT_LIMIT_REQUESTS, "60"),
            (&ANTHROPIC_RATELIMIT_REQUESTS_LIMIT, "50"),
            (&ANTHROPIC_RATELIMIT_REQUESTS_REMAINING, "0"),
            (&ANTHROPIC_RATELIMIT_REQUESTS_RESET, "2024-06-26T18:32:05Z"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now);
        assert_eq!(
            info.requests,
            Some(Limit {
                limit: Some(60),
                remaining: Some(0),
                reset: Some(secs(5))
            })
        );
    }

    #[test]
    fn exhausted_reset_is_the_longest() {
        let info = RateLimitInfo {
            requests: Some(Limit {
                remaining: Some(0),
                reset: Some(secs(1)),
                ..Limit::default()
            }),
            tokens: Some(Limit {
                remaining: Some(0),
                reset: Some(secs(30)),
                ..Limit::default()
            }),
            input_tokens: Some(Limit {
                remaining: Some(1),
                reset: Some(secs(99)),
                ..Limit::default()
            }),
            output_tokens: None,
        };
        assert_eq!(info.exhausted_reset(), Some(secs(30)));
        assert!(RateLimitInfo::default().is_empty());
        assert_eq!(RateLimitInfo::default().exhausted_reset(), None);
    }

    // --- properties -----------------------------------------------------

    /// Formats a duration the way Go's `time.Duration.String` does.
    fn go_format(d: Duration) -> String {
        fn fixed(n: u128, unit: u128, digits: usize) -> String {
            let (int, frac) = (n / unit, n % unit);
            if frac == 0 {
                return int.to_string();
            }
            let frac = format!("{frac:0digits$}");
            format!("{int}.{}", frac.trim_end_matches('0'))
        }
        let n = d.as_nanos();
        if n == 0 {
            return "0s".into();
        }
        if n < 1_000 {
            return format!("{n}ns");
        }
        if n < 1_000_000 {
            return format!("{}µs", fixed(n, 1_000, 3));
        }
        if n < 1_000_000_000 {
            return format!("{}ms", fixed(n, 1_000_000, 6));
        }
        let h = n / (3600 * NANOS_PER_SEC);
        let m = n / (60 * NANOS_PER_SEC) % 60;
        let s = fixed(n % (60 * NANOS_PER_SEC), NANOS_PER_SEC, 9);
        match (h, m) {
            (0, 0) => format!("{s}s"),
            (0, m) => format!("{m}m{s}s"),
            (h, m) => format!("{h}h{m}m{s}s"),
        }
    }

    #[test]
    fn go_format_matches_go() {
        assert_eq!(go_format(secs(360)), "6m0s");
        assert_eq!(go_format(ms(12)), "12ms");
        assert_eq!(go_format(secs(85_656) + ms(648)), "23h47m36.648s");
        assert_eq!(go_format(Duration::from_nanos(1_500)), "1.5µs");
        assert_eq!(go_format(secs(7200)), "2h0m0s");
        assert_eq!(go_format(MAX_DELAY), "2562047h47m16.854775807s");
    }

    fn any_header_name() -> impl Strategy<Value = HeaderName> {
        prop::sample::select(vec![
            RETRY_AFTER,
            RETRY_AFTER_MS,
            X_SHOULD_RETRY,
            X_REQUEST_ID,
            REQUEST_ID,
            APIM_REQUEST_ID,
            X_RATELIMIT_LIMIT_REQUESTS,
            X_RATELIMIT_REMAINING_REQUESTS,
            X_RATELIMIT_RESET_REQUESTS,
            X_RATELIMIT_LIMIT_TOKENS,
            X_RATELIMIT_REMAINING_TOKENS,
            X_RATELIMIT_RESET_TOKENS,
            ANTHROPIC_RATELIMIT_REQUESTS_RESET,
            ANTHROPIC_RATELIMIT_TOKENS_LIMIT,
            ANTHROPIC_RATELIMIT_TOKENS_REMAINING,
            ANTHROPIC_RATELIMIT_TOKENS_RESET,
            ANTHROPIC_RATELIMIT_INPUT_TOKENS_RESET,
            ANTHROPIC_RATELIMIT_OUTPUT_TOKENS_RESET,
        ])
    }

    fn any_now() -> impl Strategy<Value = SystemTime> {
        (0u64..=4_102_444_800, 0u32..1_000_000_000)
            .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
    }

    fn every_parser(h: &HeaderMap, now: SystemTime) {
        if let Some(d) = retry_after(h, now) {
            assert!(d <= MAX_DELAY);
        }
        let _ = server_delay(h, now);
        let _ = should_retry(h);
        if let Some(id) = request_id(h) {
            assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()));
        }
        let info = RateLimitInfo::from_headers(h, now);
        let _ = (info.is_empty(), info.exhausted_reset());
    }

    proptest! {
        #[test]
        fn go_duration_never_panics(s in any::<String>()) {
            if let Some(d) = parse_go_duration(&s) {
                prop_assert!(d <= MAX_DELAY);
            }
        }

        #[test]
        fn go_duration_shaped_input_never_panics(s in "[0-9.]{0,25}(ns|us|µs|μs|ms|s|m|h|x|)([0-9.]{0,25}(ns|us|µs|ms|s|m|h)){0,4}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn rfc3339_never_panics(s in any::<String>()) {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn rfc3339_shaped_input_never_panics(s in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2}|[+-:.0-9Z]{0,7})") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn headers_never_panic_on_strings(name in any_header_name(), value in any::<String>(), now in any_now()) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert(name, v);
                every_parser(&h, now);
            }
        }

        #[test]
        fn headers_never_panic_on_bytes(
            values in prop::collection::vec((any_header_name(), prop::collection::vec(any::<u8>(), 0..40)), 0..8),
            now in any_now(),
        ) {
            let mut h = HeaderMap::new();
            for (name, bytes) in values {
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    h.append(name, v);
                }
            }
            every_parser(&h, now);
        }

        #[test]
        fn numeric_headers_never_panic(
            name in any_header_name(),
            value in "[-+]?[0-9]{0,30}(\\.[0-9]{0,30})?([eE][-+]?[0-9]{1,4})?|NaN|inf|-inf",
            now in any_now(),
        ) {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(&value).unwrap());
            every_parser(&h, now);
        }

        #[test]
        fn go_duration_round_trips(nanos in 0..=i64::MAX as u64) {
            let d = Duration::from_nanos(nanos);
            let s = go_format(d);
            prop_assert_eq!(parse_go_duration(&s), Some(d), "{}", s);
        }

        #[test]
        fn go_duration_round_trips_at_millisecond_precision(
            h in 0u64..100_000, m in 0u64..60, s in 0u64..60, millis in 0u64..1000,
        ) {
            // OpenAI prints resets with at most three decimals.
            let text = format!("{h}h{m}m{s}.{millis:03}s");
            let want = secs(h * 3600 + m * 60 + s) + ms(millis);
            prop_assert_eq!(parse_go_duration(&text), Some(want), "{}", text);
        }

        #[test]
        fn retry_after_integer_seconds_round_trip(n in 0u64..=9_223_372_036, now in any_now()) {
            let h = map(&[(&RETRY_AFTER, n.to_string().as_str())]);
            prop_assert_eq!(retry_after(&h, now), Some(secs(n)));
        }

        #[test]
        fn retry_after_http_date_round_trips(offset in 0u64..10_000_000, now_s in 0u64..4_000_000_000) {
            let now = UNIX_EPOCH + secs(now_s);
            let h = map(&[(&RETRY_AFTER, httpdate::fmt_http_date(now + secs(offset)).as_str())]);
            prop_assert_eq!(retry_after(&h, now), Some(secs(offset)));
        }

        #[test]
        fn rfc3339_round_trips(s in 0u64..253_402_300_799, nanos in 0u32..1_000_000_000, now_s in 0u64..4_000_000_000) {
            let at = UNIX_EPOCH + Duration::new(s, nanos);
            let text = humantime::format_rfc3339_nanos(at).to_string();
            prop_assert_eq!(parse_rfc3339(&text), Some(at), "{}", text);
            let now = UNIX_EPOCH + secs(now_s);
            let h = map(&[(&ANTHROPIC_RATELIMIT_TOKENS_RESET, text.as_str())]);
            let reset = RateLimitInfo::from_headers(&h, now).tokens.and_then(|l| l.reset);
            let want = at.duration_since(now).unwrap_or(Duration::ZERO);
            prop_assert_eq!(reset, (want <= MAX_DELAY).then_some(want));
        }
    }
}
