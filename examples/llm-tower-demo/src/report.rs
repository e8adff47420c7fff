//! What each side did, and the report: a table for people, JSON for tools.

use std::{collections::BTreeMap, fmt::Write as _, ops::Range, time::Duration};

use llm_tower::pricing::Cost;
use serde::Serialize;

use crate::{
    stack::SideStats,
    workload::{ApiFormat, Side},
};

/// How one logical call went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Its position in the workload.
    pub index: usize,
    /// Its wire format.
    pub format: ApiFormat,
    /// Whether it streamed.
    pub stream: bool,
    /// When it started, from the side's start.
    pub start: Duration,
    /// From the call to the end of its body (or its error).
    pub latency: Duration,
    /// Attempts that went on the wire for it.
    pub attempts: u32,
    /// The final status, when a response came.
    pub status: Option<u16>,
    /// Why it failed (a failure class: `rate_limited`, `timeout` …), or
    /// `None` when it succeeded: a 2xx whose body was read to its end.
    /// When no target answered, the class of the last one's failure.
    pub failure: Option<String>,
    /// Whether it failed after output (a stream's first token) had reached
    /// the caller: past that point no layer can try again.
    pub after_output: bool,
    /// The targets the call went to, in order (the stack's; empty on the
    /// bare side).
    pub targets: Vec<String>,
    /// Whether the budget layer refused it (its worst case did not fit in
    /// what was left): not a failure of the provider. `failure` is then
    /// `budget_exceeded`.
    pub budget_refused: bool,
}

impl CallRecord {
    /// Whether the call succeeded.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// Whether it failed for another reason than a budget refusal.
    pub fn failed(&self) -> bool {
        !self.ok() && !self.budget_refused
    }
}

/// The failure class of a call the budget refused.
pub const BUDGET_REFUSED: &str = "budget_exceeded";

/// What the stack's budget layer did (`BudgetLayer`, `BudgetHandle::stats`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BudgetReport {
    /// The global hard limit in dollars over the run (`--budget-usd`);
    /// `null` without one.
    pub limit_usd: Option<f64>,
    /// The global hard limit in tokens over the run (`--budget-tokens`);
    /// `null` without one.
    pub limit_tokens: Option<u64>,
    /// What the settled attempts cost.
    pub spent_usd: f64,
    /// `spent_usd` as a percentage of `limit_usd` (`null` without one).
    pub spent_pct_of_limit: Option<f64>,
    /// The most the reservations of the attempts in flight have been at
    /// once (their worst cases).
    pub reserved_peak_usd: f64,
    /// Calls and attempts refused by a limit (a retry or a move to the
    /// fallback target that did not fit counts too).
    pub refused: u64,
    /// Calls that came in.
    pub calls: u64,
    /// Attempts reserved: first attempts, retries, fallback targets.
    pub attempts_reserved: u64,
    /// Attempts settled.
    pub settled: u64,
    /// Tokens the settled attempts used, input and output.
    pub tokens: u64,
}

/// A fault the mock injected, for the plot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMark {
    /// When the attempt arrived, from the side's start.
    pub at: Duration,
    /// The fault's name in the mock's journal (`rate_limited`, `drop` …).
    pub fault: String,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest call.
    pub max: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Self {
        let mut ms: Vec<f64> = samples
            .into_iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms[i.clamp(1, ms.len()) - 1]
        };
        Latency {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: ms[ms.len() - 1],
        }
    }
}

/// Tokens metered on every attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
}

/// What the stack's rate limiter did (`RateLimitLayer`): every attempt of
/// the retry layer takes its turn there.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RateLimitReport {
    /// Attempts that waited for their turn.
    pub queued: u64,
    /// How long the queued attempts that went waited, in milliseconds
    /// (zero when none waited).
    pub queue_wait_ms: Latency,
    /// Attempts refused because their turn was further away than the
    /// layer's `max_wait` or the call's deadline, or the queue was full
    /// (classified `local_rate_limit`; never sent).
    pub refused: u64,
    /// Attempts that could never fit the limits (`request_too_large`).
    pub too_large: u64,
    /// 429s the layer saw from the provider (it reads them inside the
    /// breaker; they also count in the side's `provider_429`).
    pub provider_429: u64,
    /// Pauses of a key for every call after a 429 with a server delay.
    pub pauses: u64,
    /// Limits learned or changed from the provider's rate-limit headers.
    pub adapted: u64,
}

/// What one side did with the workload.
#[derive(Clone, Debug, Serialize)]
pub struct SideReport {
    /// Which side.
    pub side: Side,
    /// Logical calls made.
    pub calls: usize,
    /// Calls that got a 2xx and read their body to its end.
    pub succeeded: u64,
    /// The others, except those the budget refused.
    pub failed: u64,
    /// Calls the budget layer refused (not sent, or their retry or
    /// fallback not sent): `succeeded + failed + budget_refused == calls`.
    /// Always 0 on the bare side, which has no budget.
    pub budget_refused: u64,
    /// What the side's attempts cost (settled spend), in dollars: the
    /// budget layer's on the stack, the bare side's metered usage at the
    /// same prices (`PriceTable::embedded()`). Retries and fallbacks cost
    /// too.
    pub cost_usd: f64,
    /// `cost_usd / succeeded`: what each answer cost, its failed attempts
    /// included; `null` when no call succeeded.
    pub cost_per_success_usd: Option<f64>,
    /// The metered usage priced at `PriceTable::embedded()`, in dollars, on
    /// either side: on the stack, a check of the budget's `cost_usd`.
    pub metered_cost_usd: f64,
    /// Metered attempts with tokens whose model has no price (left out of
    /// the cost).
    pub unpriced_attempts: u64,
    /// The budget layer's counters; `null` for a side without one.
    pub budget: Option<BudgetReport>,
    /// `succeeded` as a percentage of `calls`.
    pub success_rate: f64,
    /// Requests that went on the wire, every attempt counted.
    pub attempts: u64,
    /// `attempts / calls`.
    pub attempts_per_call: f64,
    /// The most attempts one call made.
    pub max_attempts_per_call: u32,
    /// Retries, by the failure class of the attempt retried.
    pub retries: BTreeMap<String, u64>,
    /// Decisions to stop retrying after a failed attempt, by reason.
    pub gave_up: BTreeMap<String, u64>,
    /// Failed calls, by the class of their last failure (when no target
    /// answered, that of the last target's failure).
    pub failures: BTreeMap<String, u64>,
    /// Failed calls that failed after output (a stream's first token) had
    /// reached the caller, where no layer can try again yet.
    pub failed_after_output: u64,
    /// Circuit breaker transitions; `null` for a side without a breaker.
    pub breaker_transitions: Option<u64>,
    /// Attempts the breaker refused (never sent); `null` without a breaker.
    pub breaker_refusals: Option<u64>,
    /// Calls answered, by the target that answered (`provider/model`, as
    /// the fallback layer's `Answered` event names it); `null` for a side
    /// without fallback.
    pub answered_by_target: Option<BTreeMap<String, u64>>,
    /// Calls answered by their fallback target rather than their own;
    /// `null` without fallback.
    pub answered_after_fallback: Option<u64>,
    /// Targets that failed so that the call moved on, by failure class
    /// (`FallbackEvent::Failed`; a failure of the last target counts too,
    /// though nothing is left to move to); `null` without fallback.
    pub fallbacks: Option<BTreeMap<String, u64>>,
    /// Attempts the provider answered with a 429 (its quota or a rate
    /// limit), counted from the responses the side got.
    pub provider_429: u64,
    /// The rate limiter's counters; `null` for a side without one.
    pub rate_limit: Option<RateLimitReport>,
    /// Per logical call, body included, in milliseconds (calls refused by
    /// the budget left out).
    pub latency_ms: Latency,
    /// Tokens metered (every attempt that reached the provider).
    pub tokens: Tokens,
    /// Faults the mock injected into this side's attempts, by name (`null`
    /// against a real endpoint).
    pub faults_injected: Option<BTreeMap<String, u64>>,
    /// Wall time of the side, in milliseconds.
    pub elapsed_ms: f64,
    /// Every call, in workload order (not in the JSON).
    #[serde(skip)]
    pub records: Vec<CallRecord>,
    /// Every fault injected, for the plot (not in the JSON).
    #[serde(skip)]
    pub fault_marks: Vec<FaultMark>,
    /// The outage window, from the side's start, when there was one.
    #[serde(skip)]
    pub outage: Option<Range<Duration>>,
    /// Breaker states over time (`at`, state name), once the stack has a
    /// breaker.
    #[serde(skip)]
    pub breaker: Option<Vec<(Duration, String)>>,
}

impl SideReport {
    /// Builds the report of a side from its calls and counters.
    /// `limits` are the budget's `(--budget-usd, --budget-tokens)`.
    pub fn new(
        side: Side,
        records: Vec<CallRecord>,
        stats: &SideStats,
        elapsed: Duration,
        (limit_usd, limit_tokens): (Option<f64>, Option<u64>),
    ) -> Self {
        let calls = records.len();
        let succeeded = records.iter().filter(|r| r.ok()).count() as u64;
        let budget_refused = records.iter().filter(|r| r.budget_refused).count() as u64;
        let failed = calls as u64 - succeeded - budget_refused;
        let attempts = stats.attempts();
        let mut failures = BTreeMap::new();
        for f in records
            .iter()
            .filter(|r| r.failed())
            .filter_map(|r| r.failure.as_ref())
        {
            *failures.entry(f.clone()).or_default() += 1;
        }
        let metered_cost_usd = Cost::from_nanos(stats.priced_nanos()).as_usd();
        let budget = stats.budget().map(|h| {
            let s = h.stats();
            let spent_usd = s.spent.as_usd();
            BudgetReport {
                limit_usd,
                limit_tokens,
                spent_usd,
                spent_pct_of_limit: limit_usd.map(|l| spent_usd * 100.0 / l),
                reserved_peak_usd: s.reserved_peak.as_usd(),
                refused: s.refused,
                calls: s.calls,
                attempts_reserved: s.attempts,
                settled: s.settled,
                tokens: s.tokens,
            }
        });
        let cost_usd = budget.as_ref().map_or(metered_cost_usd, |b| b.spent_usd);
        let (input, output) = stats.tokens();
        let rate_limit = stats.rate_limit().map(|h| {
            let s = h.stats();
            RateLimitReport {
                queued: s.queued,
                queue_wait_ms: Latency::of(stats.queue_waits()),
                refused: s.refused,
                too_large: s.too_large,
                provider_429: s.provider_429,
                pauses: stats.rate_limit_pauses(),
                adapted: s.adapted,
            }
        });
        SideReport {
            side,
            calls,
            succeeded,
            failed,
            budget_refused,
            cost_usd,
            cost_per_success_usd: (succeeded > 0).then(|| cost_usd / succeeded as f64),
            metered_cost_usd,
            unpriced_attempts: stats.unpriced_attempts(),
            budget,
            success_rate: pct(succeeded, calls as u64),
            attempts,
            attempts_per_call: if calls == 0 {
                0.0
            } else {
                attempts as f64 / calls as f64
            },
            max_attempts_per_call: records.iter().map(|r| r.attempts).max().unwrap_or(0),
            retries: stats.retries(),
            gave_up: stats.gave_up(),
            failures,
            failed_after_output: records
                .iter()
                .filter(|r| r.after_output && r.failed())
                .count() as u64,
            breaker_transitions: None,
            breaker_refusals: None,
            answered_by_target: None,
            answered_after_fallback: None,
            fallbacks: None,
            provider_429: stats.provider_429(),
            rate_limit,
            // Calls the budget refused took no time at the provider: left
            // out, so the percentiles stay those of the calls that went.
            latency_ms: Latency::of(
                records
                    .iter()
                    .filter(|r| !r.budget_refused)
                    .map(|r| r.latency),
            ),
            tokens: Tokens { input, output },
            faults_injected: None,
            elapsed_ms: elapsed.as_secs_f64() * 1000.0,
            records,
            fault_marks: Vec::new(),
            outage: None,
            breaker: None,
        }
    }

    /// Retries in all.
    pub fn retries_total(&self) -> u64 {
        self.retries.values().sum()
    }

    /// Adds the faults the mock journaled for this side: `entries` with
    /// arrival times measured from the side's start (`offset` is the mock's
    /// clock when the side started).
    pub fn with_journal(mut self, entries: &[llm_tower_mock::Entry], offset: Duration) -> Self {
        let mut counts = BTreeMap::new();
        for e in entries {
            for f in e.faults.iter().filter(|f| *f != "latency") {
                *counts.entry(f.clone()).or_default() += 1;
                self.fault_marks.push(FaultMark {
                    at: e.at.saturating_sub(offset),
                    fault: f.clone(),
                });
            }
        }
        self.faults_injected = Some(counts);
        self
    }
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

/// The whole run: its settings and each side's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `embedded mock` or the base URL called.
    pub target: String,
    /// Logical calls per side.
    pub requests: usize,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// The seed of the workload and the mock.
    pub seed: u64,
    /// `mix` (about half the calls stream) or `all`.
    pub stream: String,
    /// Where the stack's rate limiter and budget keep their state:
    /// `memory` (this process's own) or the Redis URL, password hidden.
    pub store: String,
    /// The bare client, unless `--only stack`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bare: Option<SideReport>,
    /// The recommended stack, unless `--only bare`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<SideReport>,
    /// The stack's settings that differ from the library's defaults, each
    /// with why (empty when the stack ran on the defaults).
    pub changed_settings: Vec<ChangedSetting>,
}

/// A setting of the stack that is not the library's default, and why.
#[derive(Clone, Debug, Serialize)]
pub struct ChangedSetting {
    /// The setting and the value used (`retry.max_attempts = 4`).
    pub setting: String,
    /// Why the demo changes it.
    pub why: String,
}

impl Report {
    /// The sides that ran, bare first.
    pub fn sides(&self) -> Vec<&SideReport> {
        self.bare.iter().chain(self.stack.iter()).collect()
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The report as a table, the sides side by side.
    pub fn to_table(&self) -> String {
        let sides = self.sides();
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut row = |label: &str, f: &dyn Fn(&SideReport) -> String| {
            rows.push((label.to_owned(), sides.iter().map(|s| f(s)).collect()));
        };
        row("calls succeeded", &|s| {
            format!("{}/{} ({:.1}%)", s.succeeded, s.calls, s.success_rate)
        });
        row("calls failed", &|s| s.failed.to_string());
        row("calls refused by budget", &|s| match &s.budget {
            Some(_) => s.budget_refused.to_string(),
            None => "n/a".to_owned(),
        });
        row("attempts sent", &|s| s.attempts.to_string());
        row("attempts per call", &|s| {
            format!(
                "{:.2} (max {})",
                s.attempts_per_call, s.max_attempts_per_call
            )
        });
        row("retries", &|s| s.retries_total().to_string());
        for class in keys(&sides, |s| &s.retries) {
            row(&format!("  {class}"), &|s| count(&s.retries, &class));
        }
        if sides.iter().any(|s| !s.gave_up.is_empty()) {
            row("gave up", &|s| s.gave_up.values().sum::<u64>().to_string());
            for why in keys(&sides, |s| &s.gave_up) {
                row(&format!("  {why}"), &|s| count(&s.gave_up, &why));
            }
        }
        row("failed calls by class", &|_| String::new());
        for class in keys(&sides, |s| &s.failures) {
            row(&format!("  {class}"), &|s| count(&s.failures, &class));
        }
        row("  (of which after output)", &|s| {
            s.failed_after_output.to_string()
        });
        row("attempts refused by breaker", &|s| {
            s.breaker_refusals
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
        });
        row("breaker transitions", &|s| {
            s.breaker_transitions
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
        });
        row("answers by target", &|s| {
            s.answered_by_target
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |m| m.values().sum::<u64>().to_string())
        });
        let empty = BTreeMap::new();
        for target in keys(&sides, |s| s.answered_by_target.as_ref().unwrap_or(&empty)) {
            row(&format!("  {target}"), &|s| {
                s.answered_by_target
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |m| count(m, &target))
            });
        }
        row("answered after fallback", &|s| {
            s.answered_after_fallback
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
        });
        row("fallbacks by reason", &|s| {
            s.fallbacks
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |m| m.values().sum::<u64>().to_string())
        });
        for class in keys(&sides, |s| s.fallbacks.as_ref().unwrap_or(&empty)) {
            row(&format!("  {class}"), &|s| {
                s.fallbacks
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |m| count(m, &class))
            });
        }
        row("429s from the provider", &|s| s.provider_429.to_string());
        row("attempts queued by rate limiter", &|s| {
            rl(s, |r| r.queued.to_string())
        });
        row("  queue wait p50", &|s| rl(s, |r| ms(r.queue_wait_ms.p50)));
        row("  queue wait p99", &|s| rl(s, |r| ms(r.queue_wait_ms.p99)));
        row("attempts refused by rate limiter", &|s| {
            rl(s, |r| {
                if r.too_large == 0 {
                    r.refused.to_string()
                } else {
                    format!("{} (+{} too large)", r.refused, r.too_large)
                }
            })
        });
        row("latency p50", &|s| ms(s.latency_ms.p50));
        row("latency p95", &|s| ms(s.latency_ms.p95));
        row("latency p99", &|s| ms(s.latency_ms.p99));
        row("latency max", &|s| ms(s.latency_ms.max));
        row("tokens in / out", &|s| {
            format!("{} / {}", s.tokens.input, s.tokens.output)
        });
        row("spend (settled)", &|s| {
            if s.unpriced_attempts == 0 {
                usd(s.cost_usd)
            } else {
                format!("{} (+{} unpriced)", usd(s.cost_usd), s.unpriced_attempts)
            }
        });
        row("  per successful call", &|s| {
            s.cost_per_success_usd
                .map_or_else(|| "-".to_owned(), |c| format!("${c:.6}"))
        });
        row("budget limit", &|s| {
            s.budget.as_ref().map_or_else(
                || "n/a".to_owned(),
                |b| {
                    let mut l = Vec::new();
                    if let Some(u) = b.limit_usd {
                        l.push(usd(u));
                    }
                    if let Some(t) = b.limit_tokens {
                        l.push(format!("{t} tokens"));
                    }
                    if l.is_empty() {
                        "none".to_owned()
                    } else {
                        l.join(" + ")
                    }
                },
            )
        });
        row("  spend against limit", &|s| {
            s.budget.as_ref().map_or_else(
                || "n/a".to_owned(),
                |b| {
                    let mut l = Vec::new();
                    if let (Some(u), Some(p)) = (b.limit_usd, b.spent_pct_of_limit) {
                        l.push(format!("{} of {} ({p:.1}%)", usd(b.spent_usd), usd(u)));
                    }
                    if let Some(t) = b.limit_tokens {
                        l.push(format!("{} of {t} tokens", b.tokens));
                    }
                    if l.is_empty() {
                        "-".to_owned()
                    } else {
                        l.join(", ")
                    }
                },
            )
        });
        row("  reserved peak", &|s| {
            s.budget
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |b| usd(b.reserved_peak_usd))
        });
        row("  calls/attempts refused", &|s| {
            s.budget
                .as_ref()
                .map_or_else(|| "n/a".to_owned(), |b| b.refused.to_string())
        });
        if sides.iter().any(|s| s.faults_injected.is_some()) {
            row("faults injected (journal)", &|s| {
                s.faults_injected
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |f| f.values().sum::<u64>().to_string())
            });
            let all: Vec<String> = keys(&sides, |s| s.faults_injected.as_ref().unwrap_or(&empty));
            for fault in all {
                row(&format!("  {fault}"), &|s| {
                    s.faults_injected
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |f| count(f, &fault))
                });
            }
        }
        row("wall time", &|s| format!("{:.1} s", s.elapsed_ms / 1000.0));

        let mut out = String::new();
        let _ = writeln!(
            out,
            "llm-tower demo: {} calls per side ({}), concurrency {}, seed {}, against {}\n",
            self.requests,
            if self.stream == "all" {
                "all streaming"
            } else {
                "streaming or not"
            },
            self.concurrency,
            self.seed,
            self.target
        );
        let header: Vec<String> = std::iter::once(String::new())
            .chain(sides.iter().map(|s| s.side.to_string()))
            .collect();
        let width0 = rows
            .iter()
            .map(|r| r.0.chars().count())
            .chain([header[0].len()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = (0..sides.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r.1[i].chars().count())
                    .chain([header[i + 1].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |out: &mut String, label: &str, cells: &[String]| {
            let mut l = format!("{label:<width0$}");
            for (c, w) in cells.iter().zip(&widths) {
                let _ = write!(l, "  {c:>w$}");
            }
            let _ = writeln!(out, "{}", l.trim_end());
        };
        line(&mut out, "", &header[1..]);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &"-".repeat(width0), &rule);
        for (label, cells) in &rows {
            line(&mut out, label, cells);
        }
        if self.stack.is_some() {
            if self.changed_settings.is_empty() {
                let _ = writeln!(out, "\nthe stack ran on the library's default settings");
            } else {
                let _ = writeln!(out, "\nthe stack's settings that differ from the defaults:");
                for c in &self.changed_settings {
                    let _ = writeln!(out, "  {}: {}", c.setting, c.why);
                }
            }
        }
        out
    }
}

fn keys<'a>(
    sides: &[&'a SideReport],
    f: impl Fn(&'a SideReport) -> &'a BTreeMap<String, u64>,
) -> Vec<String> {
    let mut k: Vec<String> = sides.iter().flat_map(|s| f(s).keys().cloned()).collect();
    k.sort();
    k.dedup();
    k
}

/// `f` of the side's rate limiter, or `n/a` for a side without one.
fn rl(s: &SideReport, f: impl Fn(&RateLimitReport) -> String) -> String {
    s.rate_limit.as_ref().map_or_else(|| "n/a".to_owned(), f)
}

fn count(m: &BTreeMap<String, u64>, k: &str) -> String {
    m.get(k).copied().unwrap_or(0).to_string()
}

/// Dollars with four decimals (`$0.0123`).
fn usd(v: f64) -> String {
    format!("${v:.4}")
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latency::of((1..=100).map(Duration::from_millis));
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
        let one = Latency::of([Duration::from_millis(7)]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Latency::of([]), Latency::default());
    }
}
