//! The chaotic provider: the embedded mock with a fault profile.

use std::time::Duration;

use llm_tower_mock::{Fault, MockServer, Quota, Rule, StartError};

use crate::workload::ApiFormat;

/// The mock's pace and faults.
///
/// Every rule is drawn from the seed and the request, so the first attempt
/// of call *i* meets the same fault on both sides; only the outage is placed
/// in time (by [`run`](crate::run), when a third of the calls have started).
#[derive(Clone, Debug)]
pub struct Chaos {
    /// Seeds the answers and every chance.
    pub seed: u64,
    /// Time before the headers of every answer.
    pub first_byte: Duration,
    /// Time before each token of a stream.
    pub token_interval: Duration,
    /// Added latency, drawn between zero and this, for every answer.
    pub jitter: Duration,
    /// How slow a slow first token is.
    pub slow_first_token: Duration,
    /// How long the outage lasts.
    pub outage: Duration,
    /// Whether the mock injects the faults and the outage; off, it answers
    /// every call that its quota lets through (`--no-faults`).
    pub faults: bool,
    /// The mock's requests and tokens per minute, per model, as a
    /// provider's tier (`--mock-rpm`, `--mock-tpm`): none by default.
    pub quota: Quota,
    /// Call the mock in this wire format only (`--provider`), so every call
    /// shares one model's quota; both formats by default.
    pub format: Option<ApiFormat>,
}

impl Chaos {
    /// A realistic pace: 30 ms to the headers, 4 ms per token, up to 40 ms
    /// of jitter; first tokens that hang for 3 s; a 500 ms outage.
    pub fn new(seed: u64) -> Self {
        Chaos {
            seed,
            first_byte: Duration::from_millis(30),
            token_interval: Duration::from_millis(4),
            jitter: Duration::from_millis(40),
            slow_first_token: Duration::from_secs(3),
            outage: Duration::from_millis(500),
            faults: true,
            quota: Quota::per_minute(),
            format: None,
        }
    }

    /// No faults and no outage (`--no-faults`).
    pub fn without_faults(mut self) -> Self {
        self.faults = false;
        self
    }

    /// The mock's quota, per model.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Calls in `format` only.
    pub fn with_format(mut self, format: ApiFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// The mock as the report names it: `the embedded chaotic mock`, with
    /// its quota when it has one.
    pub fn describe(&self) -> String {
        let mut out = if self.faults {
            "the embedded chaotic mock".to_owned()
        } else {
            "the embedded mock (no faults)".to_owned()
        };
        let mut quota = Vec::new();
        if let Some(n) = self.quota.requests_per_minute {
            quota.push(format!("{n} requests"));
        }
        if let Some(n) = self.quota.tokens_per_minute {
            quota.push(format!("{n} tokens"));
        }
        if !quota.is_empty() {
            out.push_str(&format!(
                ", quota {} per minute per model",
                quota.join(" and ")
            ));
        }
        if let Some(f) = self.format {
            out.push_str(&format!(", {f} calls only"));
        }
        out
    }

    /// The same faults at a fast pace, for tests.
    pub fn fast(seed: u64) -> Self {
        Chaos {
            first_byte: Duration::from_millis(2),
            token_interval: Duration::ZERO,
            jitter: Duration::from_millis(2),
            ..Chaos::new(seed)
        }
    }

    /// The fault rules, tried in order (the first that fires decides, except
    /// latency, which adds to whatever follows).
    pub fn rules(&self) -> Vec<Rule> {
        if !self.faults {
            return vec![Rule::new(Fault::Latency {
                delay: Duration::ZERO,
                jitter: self.jitter,
            })];
        }
        vec![
            Rule::new(Fault::Latency {
                delay: Duration::ZERO,
                jitter: self.jitter,
            }),
            // Rate limits with a server-directed delay.
            Rule::new(Fault::rate_limited(Duration::from_secs(1))).probability(0.05),
            // Server errors and overloads: 500, 503, and 529 (Anthropic's
            // overloaded; OpenAI answers 503 for it).
            Rule::new(Fault::status(500)).probability(0.03),
            Rule::new(Fault::status(503)).probability(0.02),
            Rule::new(Fault::Overloaded).probability(0.03),
            // Streams only: a first token that hangs, a cut before the first
            // token, a clean end after a few tokens with no terminal event,
            // an error event as the first event.
            Rule::new(Fault::slow_first_token(self.slow_first_token)).probability(0.04),
            Rule::new(Fault::Drop { after: 0 }).probability(0.03),
            Rule::new(Fault::Truncate { after: 3 }).probability(0.02),
            Rule::new(Fault::ErrorEvent { after: 0 }).probability(0.03),
        ]
    }

    /// The pace of arrivals for `concurrency` slots: a call every
    /// `240 ms / concurrency`, so that at this profile's healthy pace about
    /// half the slots are busy and the rest absorb slow answers and retries.
    pub fn pace(&self, concurrency: usize) -> Duration {
        Duration::from_millis(240) / concurrency.clamp(1, 240) as u32
    }

    /// Starts a mock with this profile (and quota) on `127.0.0.1`.
    pub async fn start(&self) -> Result<MockServer, StartError> {
        self.rules()
            .into_iter()
            .fold(MockServer::builder().seed(self.seed), |b, r| b.rule(r))
            .first_byte(self.first_byte)
            .token_interval(self.token_interval)
            .quota(self.quota)
            .start()
            .await
    }
}
