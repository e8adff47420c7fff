//! The budget's refusals, and their HTTP form.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use http::{HeaderValue, Response, header};

use super::config::{RefusalStatus, Scope, Unit, Window};
use crate::{pricing::Cost, provider::WireFormat};

/// An amount of a [`Unit`]: dollars (as a [`Cost`]) or tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Amount {
    /// Dollars.
    Usd(Cost),
    /// Tokens.
    Tokens(u64),
}

impl Amount {
    pub(crate) fn of(unit: Unit, n: u64) -> Self {
        match unit {
            Unit::Usd => Amount::Usd(Cost::from_nanos(n)),
            Unit::Tokens => Amount::Tokens(n),
        }
    }

    /// The amount in its unit: nano-dollars or tokens.
    pub fn get(self) -> u64 {
        match self {
            Amount::Usd(c) => c.as_nanos(),
            Amount::Tokens(n) => n,
        }
    }

    /// What it counts.
    pub fn unit(self) -> Unit {
        match self {
            Amount::Usd(_) => Unit::Usd,
            Amount::Tokens(_) => Unit::Tokens,
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Usd(c) => write!(f, "{c}"),
            Amount::Tokens(n) => write!(f, "{n} tokens"),
        }
    }
}

/// A call refused by a hard budget limit, before anything was sent: its
/// worst-case cost does not fit in what is left.
///
/// Classified as [`FailureClass::QuotaExhausted`](crate::classify::FailureClass::QuotaExhausted)
/// with the code [`BUDGET_EXCEEDED`](crate::classify::BUDGET_EXCEEDED): not
/// retried, not counted against the provider's health, and a reason to move
/// to another target (a cheaper model may fit). For a gateway,
/// [`to_response`](Self::to_response) makes the provider-style error
/// response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub(crate) scope: Scope,
    pub(crate) key: Arc<str>,
    pub(crate) limit: Amount,
    pub(crate) spent: u64,
    pub(crate) reserved: u64,
    pub(crate) asked: u64,
    pub(crate) window: Option<Window>,
    pub(crate) resets_at: Option<SystemTime>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) status: RefusalStatus,
}

impl BudgetExceeded {
    /// The scope whose limit refused the call.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Which calls of the scope: `*` for the global scope, the tenant, the
    /// organisation, the model or the provider, or the API key's hash.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The limit (for a per-request cap, the cap).
    pub fn limit(&self) -> Amount {
        self.limit
    }

    /// What was spent in the window (zero for a per-request cap).
    pub fn spent(&self) -> Amount {
        Amount::of(self.limit.unit(), self.spent)
    }

    /// What calls in flight have reserved in the window.
    pub fn reserved(&self) -> Amount {
        Amount::of(self.limit.unit(), self.reserved)
    }

    /// What this call would have reserved: its worst case.
    pub fn asked(&self) -> Amount {
        Amount::of(self.limit.unit(), self.asked)
    }

    /// The limit's window; `None` for a per-request cap.
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// `true` when a per-request cap refused the call: no wait helps.
    pub fn is_per_request(&self) -> bool {
        self.window.is_none()
    }

    /// When a calendar window ends and its budget starts afresh; `None` for
    /// a total, a rolling window or a per-request cap.
    pub fn resets_at(&self) -> Option<SystemTime> {
        self.resets_at
    }

    /// How long until the same call could fit if nothing else changes: the
    /// time to a calendar window's end, or until a rolling window's oldest
    /// spend stops counting; `None` when waiting does not help.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// A provider-style error response for a gateway: status 429 (with
    /// `retry-after` when known) or 402, as the configuration's
    /// [`refusal_status`](super::BudgetConfig::refusal_status) says, and a
    /// body in the caller's wire format (OpenAI's `{"error": {…}}` by
    /// default, Anthropic's `{"type": "error", …}` for Anthropic messages).
    ///
    /// ```
    /// # use llm_tower::budget::BudgetExceeded;
    /// fn respond(e: &BudgetExceeded) -> http::Response<String> {
    ///     e.to_response(None)
    /// }
    /// ```
    pub fn to_response(&self, format: Option<WireFormat>) -> Response<String> {
        let message = self.to_string();
        let status = self.status.status();
        let body = match format {
            Some(WireFormat::AnthropicMessages) => {
                let kind = match self.status {
                    RefusalStatus::TooManyRequests => "rate_limit_error",
                    RefusalStatus::PaymentRequired => "billing_error",
                };
                serde_json::json!({
                    "type": "error",
                    "error": { "type": kind, "message": message },
                })
            }
            Some(WireFormat::GeminiGenerateContent) => serde_json::json!({
                "error": {
                    "code": status.as_u16(),
                    "message": message,
                    "status": "RESOURCE_EXHAUSTED",
                },
            }),
            _ => serde_json::json!({
                "error": {
                    "message": message,
                    "type": "insufficient_quota",
                    "param": null,
                    "code": "budget_exceeded",
                },
            }),
        };
        let mut res = Response::new(body.to_string());
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == RefusalStatus::TooManyRequests
            && let Some(wait) = self.retry_after
        {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "budget exceeded: {} `{}`: ", self.scope, self.key)?;
        match self.window {
            None => write!(
                f,
                "this call may cost up to {}, over the per-request cap of {}",
                self.asked(),
                self.limit
            ),
            Some(window) => {
                write!(
                    f,
                    "{} per {window}, {} spent and {} reserved; this call may cost up to {}",
                    self.limit,
                    self.spent(),
                    self.reserved(),
                    self.asked()
                )?;
                if let Some(at) = self.resets_at {
                    write!(f, "; resets at {}", humantime::format_rfc3339_seconds(at))?;
                } else if let Some(wait) = self.retry_after {
                    write!(
                        f,
                        "; room again in {}",
                        humantime::format_duration(round(wait))
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for BudgetExceeded {}

/// A duration rounded up to whole seconds, for messages.
fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// The budget could not be checked: its store failed or timed out, and the
/// policy is [fail closed](crate::store::OnStoreFailure::FailClosed) (the
/// default). The call was not sent.
#[derive(Debug)]
pub struct BudgetUnavailable {
    pub(crate) source: crate::store::StoreError,
}

impl fmt::Display for BudgetUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("budget unavailable: its store failed, so the call was not sent")
    }
}

impl std::error::Error for BudgetUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal() -> BudgetExceeded {
        BudgetExceeded {
            scope: Scope::Tenant,
            key: "acme".into(),
            limit: Amount::Usd(Cost::from_nanos(5_000_000_000)),
            spent: 4_990_000_000,
            reserved: 5_000_000,
            asked: 20_000_000,
            window: Some(Window::Day),
            resets_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(20_424 * 86_400)),
            retry_after: Some(Duration::from_millis(3_600_500)),
            status: RefusalStatus::TooManyRequests,
        }
    }

    #[test]
    fn says_what_and_when() {
        assert_eq!(
            refusal().to_string(),
            "budget exceeded: tenant `acme`: $5.00 per day, $4.99 spent and $0.005 reserved; \
             this call may cost up to $0.02; resets at 2025-12-02T00:00:00Z"
        );
    }

    #[test]
    fn maps_to_provider_errors() {
        let e = refusal();
        let res = e.to_response(None);
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "3601");
        let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(body["error"]["code"], "budget_exceeded");
        assert_eq!(body["error"]["type"], "insufficient_quota");

        let mut e402 = refusal();
        e402.status = RefusalStatus::PaymentRequired;
        let res = e402.to_response(Some(WireFormat::AnthropicMessages));
        assert_eq!(res.status(), 402);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
        let body: serde_json::Value = serde_json::from_str(res.body()).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "billing_error");
    }
}
