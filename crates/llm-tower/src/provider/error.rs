//! Provider error bodies.

/// An error body as a provider sent it, parsed into the fields that decide
/// what the error means.
///
/// Understands OpenAI (`{"error": {"message", "type", "code", "param"}}`),
/// Anthropic (`{"type": "error", "error": {"type", "message"}}`), Gemini
/// (`{"error": {"code", "message", "status"}}`) and the flat shape of some
/// OpenAI-compatible servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderError {
    error_type: Option<Box<str>>,
    code: Option<Box<str>>,
    status: Option<Box<str>>,
    message: Option<Box<str>>,
    retry_delay: Option<std::time::Duration>,
    daily_quota: bool,
}

impl ProviderError {
    /// Parses an error body; `None` when the bytes are not a recognisable
    /// provider error. Never panics, whatever the input.
    pub fn parse(body: &[u8]) -> Option<ProviderError> {
        // Gemini's streaming endpoints wrap the error in an array.
        let raw: Raw<'_> = match serde_json::from_slice::<OneOrMany<'_>>(body).ok()? {
            OneOrMany::One(raw) => raw,
            OneOrMany::Many(mut all) => all.drain(..).next()?,
        };
        let (mut inner, flat) = match raw.error {
            Some(Inner::Object(inner)) => (inner, false),
            // `{"error": "message"}`, as some compatible servers send.
            Some(Inner::Message(message)) => (
                Fields {
                    message: Some(message),
                    ..Fields::default()
                },
                false,
            ),
            None => (raw.flat, true),
        };
        // A flat object is an error only if it says so.
        if flat {
            if raw.kind.as_deref() != Some("error") && raw.object.as_deref() != Some("error") {
                return None;
            }
            if raw.kind.as_deref() != Some("error") {
                inner.kind = raw.kind;
            }
        }
        let details = match inner.details {
            Some(Details::List(d)) => d,
            _ => Vec::new(),
        };
        let retry_delay = details
            .iter()
            .filter(|d| {
                d.kind
                    .as_deref()
                    .is_some_and(|k| k.ends_with("google.rpc.RetryInfo"))
            })
            .find_map(|d| d.retry_delay.as_deref().and_then(parse_proto_duration));
        let daily_quota = details.iter().any(|d| {
            d.violations.iter().flatten().any(|v| {
                v.quota_id
                    .as_deref()
                    .is_some_and(|id| id.contains("PerDay"))
            })
        });
        let error = ProviderError {
            error_type: inner.kind.map(|t| t.into_owned().into()),
            code: inner.code.and_then(Code::into_text),
            status: inner.status.and_then(Code::into_text),
            message: inner.message.map(|t| t.into_owned().into()),
            retry_delay,
            daily_quota,
        };
        (error != ProviderError::default()).then_some(error)
    }

    /// A provider error with the given type, code and status, for tests and
    /// for callers that build errors themselves.
    pub fn new(error_type: Option<&str>, code: Option<&str>, status: Option<&str>) -> Self {
        ProviderError {
            error_type: error_type.map(Into::into),
            code: code.map(Into::into),
            status: status.map(Into::into),
            message: None,
            retry_delay: None,
            daily_quota: false,
        }
    }

    /// Sets the message.
    pub fn with_message(mut self, message: &str) -> Self {
        self.message = Some(message.into());
        self
    }

    /// OpenAI's `error.type` or Anthropic's `error.type`
    /// (`rate_limit_error`, `overloaded_error`, `invalid_request_error` …).
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref()
    }

    /// OpenAI's `error.code` (`rate_limit_exceeded`, `insufficient_quota`,
    /// `context_length_exceeded` …), as text even when sent as a number.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Gemini's `error.status` (`RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT` …).
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// The human-readable message.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The delay a Gemini error asks for in a `google.rpc.RetryInfo`
    /// detail (`"retryDelay": "2s"`).
    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        self.retry_delay
    }

    /// Whether a Gemini error names a daily quota as exhausted (a
    /// `google.rpc.QuotaFailure` whose `quotaId` contains `PerDay`): no
    /// retry today will get through.
    pub fn is_daily_quota(&self) -> bool {
        self.daily_quota
    }
}

use std::borrow::Cow;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // Lives on the stack for one parse.
enum OneOrMany<'a> {
    #[serde(borrow)]
    One(Raw<'a>),
    Many(Vec<Raw<'a>>),
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    error: Option<Inner<'a>>,
    /// Anthropic's top level `"type": "error"`, or a flat error's type.
    #[serde(rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    /// vLLM-style `"object": "error"`.
    #[serde(default)]
    object: Option<Cow<'a, str>>,
    #[serde(flatten)]
    flat: Fields<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inner<'a> {
    #[serde(borrow)]
    Object(Fields<'a>),
    Message(Cow<'a, str>),
}

#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<Code<'a>>,
    /// Gemini's status name; Azure puts the HTTP status number here.
    #[serde(default)]
    status: Option<Code<'a>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    /// Gemini's `google.rpc` details.
    #[serde(borrow, default)]
    details: Option<Details<'a>>,
}

/// Gemini's error details, or anything else read as nothing.
#[derive(Deserialize)]
#[serde(untagged)]
enum Details<'a> {
    #[serde(borrow)]
    List(Vec<Detail<'a>>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Detail<'a> {
    #[serde(rename = "@type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "retryDelay", borrow)]
    retry_delay: Option<Cow<'a, str>>,
    violations: Option<Vec<Violation<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Violation<'a> {
    #[serde(rename = "quotaId", borrow)]
    quota_id: Option<Cow<'a, str>>,
}

/// A protobuf JSON duration: seconds with an optional fraction and an `s`
/// (`"2s"`, `"1.5s"`, `"0.250s"`).
fn parse_proto_duration(s: &str) -> Option<std::time::Duration> {
    let secs = s.strip_suffix('s')?;
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if frac.len() > 9 || frac.contains('.') {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(std::time::Duration::new(whole, nanos))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Code<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Number(serde_json::Number),
    Other(serde::de::IgnoredAny),
}

impl Code<'_> {
    fn into_text(self) -> Option<Box<str>> {
        match self {
            Code::Text(t) => Some(t.into_owned().into()),
            Code::Number(n) => Some(n.to_string().into()),
            Code::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_of_each_provider() {
        let e = ProviderError::parse(br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#).unwrap();
        assert_eq!(e.code(), Some("insufficient_quota"));
        assert_eq!(e.error_type(), Some("insufficient_quota"));
        let e = ProviderError::parse(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#).unwrap();
        assert_eq!(e.error_type(), Some("overloaded_error"));
        assert_eq!(e.message(), Some("Overloaded"));
        let e = ProviderError::parse(br#"[{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}]"#).unwrap();
        assert_eq!(e.status(), Some("RESOURCE_EXHAUSTED"));
        assert_eq!(e.code(), Some("429"));
        let e = ProviderError::parse(br#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#).unwrap();
        assert_eq!(e.error_type(), Some("BadRequestError"));
        assert_eq!(e.code(), Some("400"));
        let e = ProviderError::parse(br#"{"error":"model not found"}"#).unwrap();
        assert_eq!(e.message(), Some("model not found"));
    }

    #[test]
    fn gemini_details_give_the_delay_and_the_daily_quota() {
        let e = ProviderError::parse(br#"{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"m","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"21.5s"}]}}"#).unwrap();
        assert_eq!(
            e.retry_delay(),
            Some(std::time::Duration::from_millis(21_500))
        );
        assert!(e.is_daily_quota());
        let e = ProviderError::parse(br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}]}}"#).unwrap();
        assert!(!e.is_daily_quota(), "a per-minute quota comes back");
        // Strange details hide nothing else.
        let e = ProviderError::parse(
            br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":"nope"}}"#,
        )
        .unwrap();
        assert_eq!(
            (e.status(), e.retry_delay()),
            (Some("RESOURCE_EXHAUSTED"), None)
        );
        for (s, d) in [
            ("2s", Some((2, 0))),
            ("0.250s", Some((0, 250_000_000))),
            ("1.5", None),
            ("s", None),
            ("-1s", None),
            ("1.2.3s", None),
        ] {
            assert_eq!(
                parse_proto_duration(s),
                d.map(|(a, b)| std::time::Duration::new(a, b)),
                "{s}"
            );
        }
    }

    #[test]
    fn non_errors_are_none() {
        for body in [
            &b""[..],
            b"null",
            b"{}",
            b"[]",
            b"{\"id\":\"chatcmpl-1\"}",
            b"<html>502</html>",
            b"{\"error\":null}",
        ] {
            assert_eq!(
                ProviderError::parse(body),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = ProviderError::parse(&body);
        }

        #[test]
        fn never_panics_on_json_like_text(body in "[\\[\\]{}\":,a-z0-9 ]{0,200}") {
            let _ = ProviderError::parse(body.as_bytes());
        }
    }
}
