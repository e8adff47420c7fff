//! The provider's rate-limit headers on every response, read cheaply.
//!
//! [`RateLimitInfo::from_headers`] looks up each of the eighteen headers it
//! knows by name: on a response that carries none (most servers) or only
//! OpenAI's six (OpenAI, Azure and the servers speaking their format send
//! them on every response) one pass over the response's headers finds the
//! same values for a fraction of the cost. Anthropic's headers, whose
//! resets are instants, are still read by `from_headers` itself.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};

use crate::provider::headers::{Limit, RateLimitInfo, parse_go_duration};

/// OpenAI's headers, by their name after `x-ratelimit-`, in the order of
/// the slots of [`read`].
const OPENAI: [&str; 6] = [
    "limit-requests",
    "remaining-requests",
    "reset-requests",
    "limit-tokens",
    "remaining-tokens",
    "reset-tokens",
];

/// What [`RateLimitInfo::from_headers`] reads from `headers`, or `None`
/// when they hold no rate-limit header at all (nothing to read).
pub(crate) fn read(headers: &HeaderMap) -> Option<RateLimitInfo> {
    // The first value of each of OpenAI's headers: the one
    // `HeaderMap::get` gives (`iter` yields a name's values in order).
    let mut found: [Option<&HeaderValue>; 6] = [None; 6];
    let mut any = false;
    for (name, value) in headers {
        let name = name.as_str();
        if name.starts_with("anthropic-ratelimit-") {
            return Some(RateLimitInfo::from_headers(headers, SystemTime::now()));
        }
        let Some(rest) = name.strip_prefix("x-ratelimit-") else {
            continue;
        };
        any = true;
        if let Some(i) = OPENAI.iter().position(|&n| n == rest) {
            found[i].get_or_insert(value);
        }
    }
    if !any {
        return None;
    }
    // A count is digits only.
    let count = |v: Option<&HeaderValue>| {
        let v = text(v)?;
        v.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| v.parse::<u64>().ok())?
    };
    let group = |at: usize| {
        let limit = Limit {
            limit: count(found[at]),
            remaining: count(found[at + 1]),
            reset: text(found[at + 2]).and_then(parse_go_duration),
        };
        (limit != Limit::default()).then_some(limit)
    };
    Some(RateLimitInfo {
        requests: group(0),
        tokens: group(3),
        ..RateLimitInfo::default()
    })
}

/// A value as `from_headers` reads it: visible text, trimmed, not empty.
fn text(v: Option<&HeaderValue>) -> Option<&str> {
    // Visible ASCII, spaces and tabs only: `trim` would trim the same.
    let v = v?.to_str().ok()?.trim_ascii();
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &(k, v) in pairs {
            h.append(k, HeaderValue::from_static(v));
        }
        h
    }

    /// The same as `from_headers`, whatever the headers.
    #[test]
    fn reads_what_from_headers_reads() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("content-type", "application/json")],
            &[
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-reset-requests", "120ms"),
                ("x-ratelimit-limit-tokens", "30000"),
                ("x-ratelimit-remaining-tokens", "29000"),
                ("x-ratelimit-reset-tokens", "2s"),
            ],
            &[
                ("x-ratelimit-limit-requests", " 500 "),
                ("x-ratelimit-remaining-requests", "+4"),
                ("x-ratelimit-reset-tokens", "soon"),
            ],
            // A repeated header: the first value counts.
            &[
                ("x-ratelimit-remaining-tokens", "7"),
                ("x-ratelimit-remaining-tokens", "9"),
            ],
            &[("x-ratelimit-reset-requests", "1m30s")],
            &[
                ("x-ratelimit-unknown", "1"),
                ("x-ratelimit-limit-tokens", ""),
            ],
            &[
                ("x-ratelimit-limit-requests", "50"),
                ("anthropic-ratelimit-requests-limit", "60"),
                ("anthropic-ratelimit-input-tokens-remaining", "10"),
                ("anthropic-ratelimit-tokens-reset", "2030-01-01T00:00:00Z"),
            ],
        ];
        for &pairs in cases {
            let h = map(pairs);
            let expected = RateLimitInfo::from_headers(&h, SystemTime::now());
            let got = read(&h).unwrap_or_default();
            // Anthropic's resets are read against two different `now`s.
            let strip = |mut i: RateLimitInfo| {
                if let Some(t) = &mut i.tokens
                    && pairs.iter().any(|(k, _)| k.starts_with("anthropic"))
                {
                    t.reset = t.reset.map(|d| Duration::from_secs(d.as_secs() / 60));
                }
                i
            };
            assert_eq!(strip(got), strip(expected), "{pairs:?}");
            let none = !pairs.iter().any(|(k, _)| k.contains("ratelimit"));
            assert_eq!(read(&h).is_none(), none, "{pairs:?}");
        }
    }
}
