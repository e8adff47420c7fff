//! Provider response headers: server-directed delays, rate-limit state and
//! request ids.
//!
//! Every function here returns "no value" for garbage and never panics.
//! Header names are written once, in [`names`], and read by every layer.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

/// The header names providers use, written once.
pub mod names {
    use http::HeaderName;

    /// `retry-after`: delay-seconds or an HTTP date.
    pub const RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;
    /// `retry-after-ms`: a delay in milliseconds (OpenAI, Azure).
    pub const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
    /// `x-should-retry: true|false` (OpenAI, Anthropic).
    pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
    /// OpenAI's request id.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// Anthropic's request id.
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
    /// Azure API Management's request id.
    pub const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");

    /// OpenAI `x-ratelimit-limit-requests`.
    pub const OPENAI_LIMIT_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-limit-requests");
    /// OpenAI `x-ratelimit-remaining-requests`.
    pub const OPENAI_REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    /// OpenAI `x-ratelimit-reset-requests` (a Go duration).
    pub const OPENAI_RESET_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-reset-requests");
    /// OpenAI `x-ratelimit-limit-tokens`.
    pub const OPENAI_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    /// OpenAI `x-ratelimit-remaining-tokens`.
    pub const OPENAI_REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-tokens");
    /// OpenAI `x-ratelimit-reset-tokens` (a Go duration).
    pub const OPENAI_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

    /// Anthropic `anthropic-ratelimit-requests-limit`.
    pub const ANTHROPIC_REQUESTS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-limit");
    /// Anthropic `anthropic-ratelimit-requests-remaining`.
    pub const ANTHROPIC_REQUESTS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-remaining");
    /// Anthropic `anthropic-ratelimit-requests-reset` (RFC 3339).
    pub const ANTHROPIC_REQUESTS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-requests-reset");
    /// Anthropic `anthropic-ratelimit-tokens-limit`.
    pub const ANTHROPIC_TOKENS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-limit");
    /// Anthropic `anthropic-ratelimit-tokens-remaining`.
    pub const ANTHROPIC_TOKENS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining");
    /// Anthropic `anthropic-ratelimit-tokens-reset` (RFC 3339).
    pub const ANTHROPIC_TOKENS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-tokens-reset");
    /// Anthropic `anthropic-ratelimit-input-tokens-limit`.
    pub const ANTHROPIC_INPUT_TOKENS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-input-tokens-limit");
    /// Anthropic `anthropic-ratelimit-input-tokens-remaining`.
    pub const ANTHROPIC_INPUT_TOKENS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-input-tokens-remaining");
    /// Anthropic `anthropic-ratelimit-input-tokens-reset` (RFC 3339).
    pub const ANTHROPIC_INPUT_TOKENS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-input-tokens-reset");
    /// Anthropic `anthropic-ratelimit-output-tokens-limit`.
    pub const ANTHROPIC_OUTPUT_TOKENS_LIMIT: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-output-tokens-limit");
    /// Anthropic `anthropic-ratelimit-output-tokens-remaining`.
    pub const ANTHROPIC_OUTPUT_TOKENS_REMAINING: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-output-tokens-remaining");
    /// Anthropic `anthropic-ratelimit-output-tokens-reset` (RFC 3339).
    pub const ANTHROPIC_OUTPUT_TOKENS_RESET: HeaderName =
        HeaderName::from_static("anthropic-ratelimit-output-tokens-reset");
}

/// Longest delay any header may ask for: a year. Beyond that a value is
/// garbage, not a plan.
const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

fn text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then_some(v)
}

/// A non-negative decimal number (`2`, `1.5`, `1500.25`) as a duration in
/// `unit`s; `None` for anything else, negative, or absurdly large.
fn decimal(s: &str, unit: Duration) -> Option<Duration> {
    if !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') || s.is_empty() {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    let d = Duration::try_from_secs_f64(v * unit.as_secs_f64()).ok()?;
    (d <= MAX_DELAY).then_some(d)
}

/// The delay a server asks for before the next attempt, from
/// `retry-after-ms` (milliseconds, preferred when present), or `retry-after`
/// (delay-seconds or an HTTP date, relative to `now`).
///
/// A date in the past asks for no delay (`Duration::ZERO`); garbage gives
/// `None`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(d) =
        text(headers, &names::RETRY_AFTER_MS).and_then(|v| decimal(v, Duration::from_millis(1)))
    {
        return Some(d);
    }
    let v = text(headers, &names::RETRY_AFTER)?;
    if let Some(d) = decimal(v, Duration::from_secs(1)) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let d = at.duration_since(now).unwrap_or(Duration::ZERO);
    (d <= MAX_DELAY).then_some(d)
}

/// OpenAI's `x-should-retry: true|false`, which overrides classification.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let v = text(headers, &names::X_SHOULD_RETRY)?;
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The provider's request id (`x-request-id` for OpenAI, `request-id` for
/// Anthropic, `apim-request-id` for Azure as a last resort).
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    [
        names::X_REQUEST_ID,
        names::REQUEST_ID,
        names::APIM_REQUEST_ID,
    ]
    .iter()
    .find_map(|n| text(headers, n))
}

/// Parses a Go-style duration as OpenAI sends it in
/// `x-ratelimit-reset-*`: `1s`, `6m0s`, `12ms`, `23h47m36.648s`.
///
/// Accepts sequences of a decimal number and a unit (`ns`, `us`, `µs`,
/// `μs`, `ms`, `s`, `m`, `h`), and a bare `0`. Negative values, unknown
/// units and overflows give `None`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .position(|b| !(b.is_ascii_digit() || b == b'.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let unit_len = tail
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(tail.len(), |(i, _)| i);
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u64 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if frac.contains('.') {
            return None;
        }
        let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut nanos = u128::from(int) * u128::from(nanos_per_unit);
        // The fraction, digit by digit, exact to the nanosecond.
        let mut scale = u128::from(nanos_per_unit);
        for d in frac.bytes().take(30) {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        let part = Duration::from_nanos(u64::try_from(nanos).ok()?);
        total = total.checked_add(part)?;
        rest = tail;
    }
    Some(total)
}

/// Parses an RFC 3339 timestamp (`2024-06-26T18:32:05Z`,
/// `2024-06-26T18:32:05.123+02:00`).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if !s.is_ascii() || s.len() < 20 {
        return None;
    }
    // humantime reads `Z` and `+00:00`; other offsets are applied here.
    let (base, offset) = match s.as_bytes()[s.len() - 6] {
        sign @ (b'+' | b'-') if s.as_bytes()[s.len() - 3] == b':' => {
            let h: u64 = s[s.len() - 5..s.len() - 3].parse().ok()?;
            let m: u64 = s[s.len() - 2..].parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            (
                &s[..s.len() - 6],
                Some((sign == b'+', Duration::from_secs(h * 3600 + m * 60))),
            )
        }
        _ => (s, None),
    };
    let at = match offset {
        None => humantime::parse_rfc3339(base).ok()?,
        Some((ahead, off)) => {
            let local = humantime::parse_rfc3339(&format!("{base}Z")).ok()?;
            // Local time ahead of UTC means the instant is earlier.
            if ahead {
                local.checked_sub(off)?
            } else {
                local.checked_add(off)?
            }
        }
    };
    Some(at)
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
    fn read(
        headers: &HeaderMap,
        names: [&HeaderName; 3],
        reset: impl Fn(&str) -> Option<Duration>,
    ) -> Option<Limit> {
        let count = |n: &HeaderName| text(headers, n).and_then(|v| v.parse::<u64>().ok());
        let limit = Limit {
            limit: count(names[0]),
            remaining: count(names[1]),
            reset: text(headers, names[2]).and_then(reset),
        };
        (limit != Limit::default()).then_some(limit)
    }

    /// `true` when nothing remains.
    pub fn is_exhausted(&self) -> bool {
        self.remaining == Some(0)
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
    /// (Anthropic's RFC 3339) become durations relative to `now`, zero when
    /// already past.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> RateLimitInfo {
        use names::*;
        let go = |v: &str| parse_go_duration(v).filter(|d| *d <= MAX_DELAY);
        let instant = |v: &str| {
            let d = parse_rfc3339(v)?
                .duration_since(now)
                .unwrap_or(Duration::ZERO);
            (d <= MAX_DELAY).then_some(d)
        };
        let openai_requests = Limit::read(
            headers,
            [
                &OPENAI_LIMIT_REQUESTS,
                &OPENAI_REMAINING_REQUESTS,
                &OPENAI_RESET_REQUESTS,
            ],
            go,
        );
        let openai_tokens = Limit::read(
            headers,
            [
                &OPENAI_LIMIT_TOKENS,
                &OPENAI_REMAINING_TOKENS,
                &OPENAI_RESET_TOKENS,
            ],
            go,
        );
        let anthropic = |n: [&HeaderName; 3]| Limit::read(headers, n, instant);
        RateLimitInfo {
            requests: openai_requests.or_else(|| {
                anthropic([
                    &ANTHROPIC_REQUESTS_LIMIT,
                    &ANTHROPIC_REQUESTS_REMAINING,
                    &ANTHROPIC_REQUESTS_RESET,
                ])
            }),
            tokens: openai_tokens.or_else(|| {
                anthropic([
                    &ANTHROPIC_TOKENS_LIMIT,
                    &ANTHROPIC_TOKENS_REMAINING,
                    &ANTHROPIC_TOKENS_RESET,
                ])
            }),
            input_tokens: anthropic([
                &ANTHROPIC_INPUT_TOKENS_LIMIT,
                &ANTHROPIC_INPUT_TOKENS_REMAINING,
                &ANTHROPIC_INPUT_TOKENS_RESET,
            ]),
            output_tokens: anthropic([
                &ANTHROPIC_OUTPUT_TOKENS_LIMIT,
                &ANTHROPIC_OUTPUT_TOKENS_REMAINING,
                &ANTHROPIC_OUTPUT_TOKENS_RESET,
            ]),
        }
    }

    /// `true` when no rate-limit header was understood.
    pub fn is_empty(&self) -> bool {
        *self == RateLimitInfo::default()
    }

    /// Every limit reported, with its name (`requests`, `tokens`,
    /// `input_tokens`, `output_tokens`).
    pub fn limits(&self) -> impl Iterator<Item = (&'static str, &Limit)> {
        [
            ("requests", &self.requests),
            ("tokens", &self.tokens),
            ("input_tokens", &self.input_tokens),
            ("output_tokens", &self.output_tokens),
        ]
        .into_iter()
        .filter_map(|(name, l)| l.as_ref().map(|l| (name, l)))
    }

    /// The longest reset among the limits with nothing remaining: the wait
    /// the headers imply when no `retry-after` is given.
    pub fn exhausted_reset(&self) -> Option<Duration> {
        self.limits()
            .filter(|(_, l)| l.is_exhausted())
            .filter_map(|(_, l)| l.reset)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap()
    }

    #[test]
    fn go_durations_as_openai_sends_them() {
        for (s, want) in [
            ("1s", Duration::from_secs(1)),
            ("6m0s", Duration::from_secs(360)),
            ("12ms", Duration::from_millis(12)),
            (
                "23h47m36.648s",
                Duration::from_millis(((23 * 60 + 47) * 60 + 36) * 1000 + 648),
            ),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("1.5s", Duration::from_millis(1500)),
            ("1.002s", Duration::from_millis(1002)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("100ns", Duration::from_nanos(100)),
            ("2h", Duration::from_secs(7200)),
            (".5s", Duration::from_millis(500)),
            (
                "1h0m0.001s",
                Duration::from_secs(3600) + Duration::from_millis(1),
            ),
        ] {
            assert_eq!(parse_go_duration(s), Some(want), "{s}");
        }
    }

    #[test]
    fn go_duration_garbage() {
        for s in [
            "",
            "s",
            "1",
            "-1s",
            "1x",
            "1.2.3s",
            "abc",
            "1e3s",
            "inf",
            "NaN",
            ".s",
            "1 s",
            "s1",
            "99999999999999999999h",
            "18446744073709551615h",
        ] {
            assert_eq!(parse_go_duration(s), None, "{s:?}");
        }
    }

    #[test]
    fn retry_after_in_every_format() {
        let n = now();
        assert_eq!(
            retry_after(&map(&[("retry-after", "2")]), n),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", " 30 ")]), n),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", "1.5")]), n),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after-ms", "1500")]), n),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after-ms", "1500.5")]), n),
            Some(Duration::from_micros(1_500_500))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", "20"), ("retry-after-ms", "250")]), n),
            Some(Duration::from_millis(250))
        );
        // A broken retry-after-ms falls back to retry-after.
        assert_eq!(
            retry_after(&map(&[("retry-after", "3"), ("retry-after-ms", "soon")]), n),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", "Wed, 21 Oct 2015 07:28:42 GMT")]), n),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            retry_after(&map(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]), n),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_garbage() {
        let n = now();
        for v in [
            "-1",
            "abc",
            "1e400",
            "",
            "NaN",
            "inf",
            "-0.5",
            "1e3",
            "99999999999999999999",
            "0x10",
            "2 s",
        ] {
            assert_eq!(
                retry_after(&map(&[("retry-after", v)]), n),
                None,
                "retry-after {v:?}"
            );
            assert_eq!(
                retry_after(&map(&[("retry-after-ms", v)]), n),
                None,
                "retry-after-ms {v:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_bytes(b"\xff\xfe2").unwrap(),
        );
        assert_eq!(retry_after(&h, n), None);
        assert_eq!(retry_after(&HeaderMap::new(), n), None);
    }

    #[test]
    fn should_retry_values() {
        assert_eq!(
            should_retry(&map(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry(&map(&[("x-should-retry", "FALSE")])),
            Some(false)
        );
        assert_eq!(
            should_retry(&map(&[("x-should-retry", " True ")])),
            Some(true)
        );
        for v in ["yes", "1", "", "truee"] {
            assert_eq!(should_retry(&map(&[("x-should-retry", v)])), None, "{v:?}");
        }
        assert_eq!(should_retry(&HeaderMap::new()), None);
    }

    #[test]
    fn request_ids() {
        assert_eq!(
            request_id(&map(&[("x-request-id", "req_abc123")])),
            Some("req_abc123")
        );
        assert_eq!(
            request_id(&map(&[("request-id", "req_01XYZ")])),
            Some("req_01XYZ")
        );
        assert_eq!(
            request_id(&map(&[
                ("apim-request-id", "0f1e"),
                ("x-request-id", "req_1")
            ])),
            Some("req_1")
        );
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_bytes(b"\xffbad").unwrap());
        assert_eq!(request_id(&h), None);
    }

    #[test]
    fn openai_rate_limit_headers() {
        let h = map(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "23h47m36.648s"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now());
        assert_eq!(
            info.requests,
            Some(Limit {
                limit: Some(10000),
                remaining: Some(9999),
                reset: Some(Duration::from_millis(6))
            })
        );
        let tokens = info.tokens.unwrap();
        assert_eq!(tokens.limit, Some(30000));
        assert!(tokens.is_exhausted());
        assert_eq!(info.exhausted_reset(), parse_go_duration("23h47m36.648s"));
        assert_eq!(info.input_tokens, None);
    }

    #[test]
    fn anthropic_rate_limit_headers() {
        let now = humantime::parse_rfc3339("2024-06-26T18:32:00Z").unwrap();
        let h = map(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-06-26T18:32:05Z"),
            ("anthropic-ratelimit-tokens-limit", "80000"),
            ("anthropic-ratelimit-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-tokens-reset",
                "2024-06-26T18:32:30.500Z",
            ),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-06-26T20:32:01+02:00",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "8000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2024-06-26T18:31:00Z",
            ),
        ]);
        let info = RateLimitInfo::from_headers(&h, now);
        assert_eq!(info.requests.unwrap().reset, Some(Duration::from_secs(5)));
        assert_eq!(
            info.tokens.unwrap().reset,
            Some(Duration::from_millis(30_500))
        );
        assert_eq!(
            info.input_tokens.unwrap().reset,
            Some(Duration::from_secs(1))
        );
        assert_eq!(info.output_tokens.unwrap().reset, Some(Duration::ZERO));
        assert_eq!(info.exhausted_reset(), Some(Duration::from_millis(30_500)));
        assert_eq!(info.limits().count(), 4);
    }

    #[test]
    fn rate_limit_garbage_is_no_value() {
        let h = map(&[
            ("x-ratelimit-limit-requests", "-5"),
            ("x-ratelimit-remaining-requests", "lots"),
            ("x-ratelimit-reset-requests", "soon"),
            ("anthropic-ratelimit-tokens-reset", "yesterday"),
            ("anthropic-ratelimit-tokens-limit", "1e9"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now());
        assert!(info.is_empty(), "{info:?}");
        assert_eq!(info.exhausted_reset(), None);
        // Some garbage, some sense: the sense is kept.
        let h = map(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "1x"),
        ]);
        let info = RateLimitInfo::from_headers(&h, now());
        assert_eq!(info.tokens.unwrap().remaining, Some(0));
        assert_eq!(info.exhausted_reset(), None);
    }

    #[test]
    fn rfc3339_offsets() {
        let z = parse_rfc3339("2024-06-26T18:32:05Z").unwrap();
        assert_eq!(parse_rfc3339("2024-06-26T20:32:05+02:00"), Some(z));
        assert_eq!(parse_rfc3339("2024-06-26T13:02:05-05:30"), Some(z));
        assert_eq!(parse_rfc3339("2024-06-26T18:32:05+00:00"), Some(z));
        for bad in [
            "",
            "2024-06-26",
            "2024-06-26T18:32:05+25:00",
            "2024-06-26T18:32:05+ab:cd",
            "ééééééééééééééééééééééé",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn go_duration_never_panics(s in "\\PC{0,40}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn go_duration_shaped_input_never_panics(s in "[0-9.hmsuµn]{0,30}") {
            let _ = parse_go_duration(&s);
        }

        #[test]
        fn go_duration_round_trips(nanos in 0u64..(100 * 3600 * 1_000_000_000)) {
            // Printed the way Go prints durations of a second or more.
            let d = Duration::from_nanos(nanos);
            let (h, m) = (d.as_secs() / 3600, d.as_secs() / 60 % 60);
            let s = format!("{}.{:09}", d.as_secs() % 60, d.subsec_nanos());
            let printed = if h > 0 { format!("{h}h{m}m{s}s") } else if m > 0 { format!("{m}m{s}s") } else { format!("{s}s") };
            proptest::prop_assert_eq!(parse_go_duration(&printed), Some(d));
        }

        #[test]
        fn header_parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                for name in [
                    names::RETRY_AFTER, names::RETRY_AFTER_MS, names::X_SHOULD_RETRY, names::X_REQUEST_ID,
                    names::OPENAI_RESET_TOKENS, names::OPENAI_LIMIT_TOKENS, names::ANTHROPIC_TOKENS_RESET,
                    names::ANTHROPIC_REQUESTS_REMAINING,
                ] {
                    h.insert(name, v.clone());
                }
                let _ = retry_after(&h, now());
                let _ = retry_after(&h, SystemTime::UNIX_EPOCH);
                let _ = should_retry(&h);
                let _ = request_id(&h);
                let _ = RateLimitInfo::from_headers(&h, now()).exhausted_reset();
            }
        }

        #[test]
        fn rfc3339_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }
    }
}
