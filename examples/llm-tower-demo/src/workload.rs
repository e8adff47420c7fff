//! The workload: logical calls, where they go, and the runner of one side.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use http::Request;
use indicatif::ProgressBar;
use llm_tower::{
    BoxError,
    budget::BudgetExceeded,
    classify::{Classifier, DefaultClassifier, ResponseView},
    fallback::AllTargetsFailed,
    metering::{UsageObservers, UsageReport},
};
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    report::{CallRecord, SideReport},
    stack::{self, CallAttempts, CallTargets, DemoService, SideStats, Tuning},
};

/// Which client a side runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// hyper-util's client with only the prepare and metering layers.
    Bare,
    /// The recommended stack of llm-tower's layers.
    Stack,
}

impl Side {
    /// `bare` or `stack`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Bare => "bare",
            Side::Stack => "stack",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApiFormat {
    /// OpenAI chat completions, `POST {base}/chat/completions`.
    #[value(name = "openai")]
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic messages, `POST {base}/v1/messages`.
    Anthropic,
}

impl ApiFormat {
    /// `openai` or `anthropic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai",
            ApiFormat::Anthropic => "anthropic",
        }
    }

    /// The model the embedded mock is asked for in this format.
    pub fn default_model(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "gpt-4o-mini",
            ApiFormat::Anthropic => "claude-haiku-4-5",
        }
    }
}

impl fmt::Display for ApiFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something to do when the workload reaches a given call (the demo opens
/// the mock's outage window this way, so it falls inside every run).
type Trigger = (usize, Arc<dyn Fn() + Send + Sync>);

/// Where a call moves when its own provider cannot answer: another
/// provider's (or model's) endpoint, model and key.
#[derive(Clone)]
pub struct FallbackEndpoint {
    /// Its wire format.
    pub format: ApiFormat,
    /// Its base URL, as the provider's SDK takes it.
    pub base: String,
    /// The model asked for.
    pub model: String,
    api_key: String,
}

impl fmt::Debug for FallbackEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackEndpoint")
            .field("format", &self.format)
            .field("base", &self.base)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl FallbackEndpoint {
    /// The target's name in the report and the fallback events:
    /// `provider/model`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.format, self.model)
    }

    /// The full URL of its endpoint.
    pub fn url(&self) -> String {
        match self.format {
            ApiFormat::OpenAi => format!("{}/chat/completions", self.base),
            ApiFormat::Anthropic => format!("{}/v1/messages", self.base),
        }
    }

    /// Its credential header: `(name, value)`.
    pub fn credential(&self) -> (&'static str, String) {
        match self.format {
            ApiFormat::OpenAi => ("authorization", format!("Bearer {}", self.api_key)),
            ApiFormat::Anthropic => ("x-api-key", self.api_key.clone()),
        }
    }
}

/// Where the calls go: base URLs per wire format, the key, the model, and
/// the fallback target of each format's calls.
#[derive(Clone)]
pub struct Endpoint {
    openai_base: Option<String>,
    anthropic_base: Option<String>,
    api_key: String,
    model: Option<String>,
    /// The fallback target of OpenAI calls.
    openai_fallback: Option<FallbackEndpoint>,
    /// The fallback target of Anthropic calls.
    anthropic_fallback: Option<FallbackEndpoint>,
    trigger: Option<Trigger>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("openai_base", &self.openai_base)
            .field("anthropic_base", &self.anthropic_base)
            .field("model", &self.model)
            .field("openai_fallback", &self.openai_fallback)
            .field("anthropic_fallback", &self.anthropic_fallback)
            .field("trigger", &self.trigger.as_ref().map(|t| t.0))
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The embedded mock: both wire formats, each provider's default model;
    /// each format's calls fall back to the other provider on the same mock
    /// (OpenAI `gpt-4o-mini` to Anthropic `claude-haiku-4-5` and back).
    pub fn mock(mock: &llm_tower_mock::MockServer) -> Self {
        let target = |format: ApiFormat, base: String| FallbackEndpoint {
            format,
            base,
            model: format.default_model().to_owned(),
            api_key: "sk-demo".to_owned(),
        };
        Endpoint {
            openai_base: Some(mock.openai_base_url()),
            anthropic_base: Some(mock.url()),
            api_key: "sk-demo".to_owned(),
            model: None,
            openai_fallback: Some(target(ApiFormat::Anthropic, mock.url())),
            anthropic_fallback: Some(target(ApiFormat::OpenAi, mock.openai_base_url())),
            trigger: None,
        }
    }

    /// A real or compatible endpoint, its base URL as the provider's
    /// official SDK takes it (`http://host/v1` for OpenAI, `http://host` for
    /// Anthropic). `https://` is spoken with rustls, trusting the platform's
    /// root certificates or those of `SSL_CERT_FILE`.
    pub fn remote(
        base_url: &str,
        format: ApiFormat,
        model: &str,
        api_key: &str,
    ) -> Result<Self, String> {
        let base = check_base_url(base_url, "--base-url")?;
        if model.trim().is_empty() {
            return Err("--model is empty".to_owned());
        }
        let (openai_base, anthropic_base) = match format {
            ApiFormat::OpenAi => (Some(base), None),
            ApiFormat::Anthropic => (None, Some(base)),
        };
        Ok(Endpoint {
            openai_base,
            anthropic_base,
            api_key: api_key.to_owned(),
            model: Some(model.to_owned()),
            openai_fallback: None,
            anthropic_fallback: None,
            trigger: None,
        })
    }

    /// Moves the calls to this endpoint when theirs cannot answer
    /// (`--fallback-base-url`, `--fallback-provider`, `--fallback-model`,
    /// `--fallback-api-key`): checked as [`remote`](Self::remote) checks
    /// its own. It serves the calls of every format the endpoint speaks.
    pub fn with_fallback(
        mut self,
        base_url: &str,
        format: ApiFormat,
        model: &str,
        api_key: &str,
    ) -> Result<Self, String> {
        let base = check_base_url(base_url, "--fallback-base-url")?;
        if model.trim().is_empty() {
            return Err("--fallback-model is empty".to_owned());
        }
        let target = FallbackEndpoint {
            format,
            base,
            model: model.to_owned(),
            api_key: api_key.to_owned(),
        };
        if self.openai_base.is_some() {
            self.openai_fallback = Some(target.clone());
        }
        if self.anthropic_base.is_some() {
            self.anthropic_fallback = Some(target);
        }
        Ok(self)
    }

    /// The fallback target of the calls in `format`, if any.
    pub fn fallback_for(&self, format: ApiFormat) -> Option<&FallbackEndpoint> {
        match format {
            ApiFormat::OpenAi => self.openai_fallback.as_ref(),
            ApiFormat::Anthropic => self.anthropic_fallback.as_ref(),
        }
    }

    /// The name of the calls' own target in `format`, in the report and
    /// the fallback events: `provider/model`.
    pub fn primary_name(&self, format: ApiFormat) -> String {
        let model = self.model.as_deref().unwrap_or(format.default_model());
        format!("{format}/{model}")
    }

    /// Calls in `format` only (when the endpoint speaks it; otherwise
    /// unchanged).
    pub fn only(mut self, format: ApiFormat) -> Self {
        match format {
            ApiFormat::OpenAi if self.openai_base.is_some() => self.anthropic_base = None,
            ApiFormat::Anthropic if self.anthropic_base.is_some() => self.openai_base = None,
            _ => {}
        }
        self
    }

    /// Runs `action` once, just before call number `at_call` starts.
    pub fn with_trigger(
        mut self,
        at_call: usize,
        action: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        self.trigger = Some((at_call, Arc::new(action)));
        self
    }

    /// Where the calls go, for the report: `URL (format, model M)`, and
    /// `, falling back to URL (format, model M)` when they may move.
    pub fn describe(&self) -> String {
        let (base, format, fallback) = match (&self.openai_base, &self.anthropic_base) {
            (Some(o), None) => (o.as_str(), "openai", &self.openai_fallback),
            (None, Some(a)) => (a.as_str(), "anthropic", &self.anthropic_fallback),
            _ => return "both wire formats".to_owned(),
        };
        let mut out = match &self.model {
            Some(m) => format!("{base} ({format}, model {m})"),
            None => format!("{base} ({format})"),
        };
        if let Some(f) = fallback {
            out.push_str(&format!(
                ", falling back to {} ({}, model {})",
                f.base, f.format, f.model
            ));
        }
        out
    }

    /// The wire formats the calls are sent in.
    pub fn formats(&self) -> Vec<ApiFormat> {
        let mut f = Vec::new();
        if self.openai_base.is_some() {
            f.push(ApiFormat::OpenAi);
        }
        if self.anthropic_base.is_some() {
            f.push(ApiFormat::Anthropic);
        }
        f
    }

    /// The request of one call.
    pub fn request(&self, call: &CallSpec) -> Request<String> {
        let builder = Request::post(match call.format {
            ApiFormat::OpenAi => format!(
                "{}/chat/completions",
                self.openai_base.as_deref().unwrap_or_default()
            ),
            ApiFormat::Anthropic => format!(
                "{}/v1/messages",
                self.anthropic_base.as_deref().unwrap_or_default()
            ),
        })
        .header("content-type", "application/json");
        let (builder, body) = match call.format {
            ApiFormat::OpenAi => {
                let mut body = serde_json::json!({
                    "model": call.model,
                    "max_completion_tokens": call.max_tokens,
                    "messages": [
                        {"role": "system", "content": "You answer in one short paragraph."},
                        {"role": "user", "content": call.prompt},
                    ],
                });
                if call.stream {
                    body["stream"] = true.into();
                    body["stream_options"] = serde_json::json!({"include_usage": true});
                }
                (
                    builder.header("authorization", format!("Bearer {}", self.api_key)),
                    body,
                )
            }
            ApiFormat::Anthropic => {
                let mut body = serde_json::json!({
                    "model": call.model,
                    "max_tokens": call.max_tokens,
                    "system": "You answer in one short paragraph.",
                    "messages": [{"role": "user", "content": call.prompt}],
                });
                if call.stream {
                    body["stream"] = true.into();
                }
                (
                    builder
                        .header("x-api-key", self.api_key.as_str())
                        .header("anthropic-version", "2023-06-01"),
                    body,
                )
            }
        };
        builder
            .body(body.to_string())
            .expect("a valid method, URI and headers")
    }
}

/// Checks a base URL given with `flag`: http:// or https:// (with a trusted
/// root certificate), with a host. Returns it without a trailing `/`.
fn check_base_url(base_url: &str, flag: &str) -> Result<String, String> {
    let uri: http::Uri = base_url
        .parse()
        .map_err(|e| format!("{flag} `{base_url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if !crate::stack::has_tls_roots() => {
            return Err(format!(
                "{flag} `{base_url}`: no trusted root certificate found for https \
                 (install the system's CA certificates, or point SSL_CERT_FILE at a PEM bundle)"
            ));
        }
        Some("https") => {}
        _ => {
            return Err(format!(
                "{flag} `{base_url}` is not an http:// or https:// URL (e.g. https://api.openai.com/v1)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{flag} `{base_url}` has no host"));
    }
    Ok(base_url.trim_end_matches('/').to_owned())
}

/// The shape of the workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Logical calls, at least 1.
    pub requests: usize,
    /// Calls in flight at once, at least 1.
    pub concurrency: usize,
    /// Seeds the mix of formats and streaming, and the mock's chance.
    pub seed: u64,
    /// Every call streams; otherwise about half do.
    pub all_stream: bool,
    /// Call *i* starts no earlier than `i × pace` after the side's start:
    /// calls arrive at a steady rate, as a service's requests do, instead of
    /// as fast as failures free a slot. Zero: as fast as `concurrency` allows.
    pub pace: std::time::Duration,
}

/// One logical call of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSpec {
    /// Its position in the workload, from 0.
    pub index: usize,
    /// The wire format.
    pub format: ApiFormat,
    /// Whether it streams.
    pub stream: bool,
    /// The model asked for.
    pub model: String,
    /// The user prompt, distinct per call (so are the mock's fingerprints).
    pub prompt: String,
    /// The output cap.
    pub max_tokens: u32,
}

const TOPICS: &[&str] = &[
    "how a client should retry a rate-limited LLM call",
    "why a stream must be held until its first token",
    "what a circuit breaker protects",
    "how to keep token spend inside a budget",
    "when to fall back to a smaller model",
    "what a retry budget is for",
    "how to read a retry-after header",
    "why a total deadline belongs outside retry",
];

/// SplitMix64: a tiny, good-enough mixer for a reproducible workload.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Workload {
    /// The calls, the same for both sides (and for a given seed, every run).
    pub fn calls(&self, endpoint: &Endpoint) -> Vec<CallSpec> {
        let formats = endpoint.formats();
        (0..self.requests)
            .map(|index| {
                let r = mix(self.seed ^ mix(index as u64));
                let format = formats[(r % formats.len().max(1) as u64) as usize];
                let stream = self.all_stream || (r >> 8).is_multiple_of(2);
                let topic = TOPICS[((r >> 16) % TOPICS.len() as u64) as usize];
                CallSpec {
                    index,
                    format,
                    stream,
                    model: endpoint
                        .model
                        .clone()
                        .unwrap_or_else(|| format.default_model().to_owned()),
                    prompt: format!("Call {index} (seed {}): explain {topic}.", self.seed),
                    max_tokens: 64,
                }
            })
            .collect()
    }
}

/// Runs the workload through one side and reports what happened.
///
/// Each of `workload.concurrency` workers takes the next call, sends it,
/// reads its whole body and records the outcome, until every call is done;
/// `progress` advances once per call. Fails only when the stack cannot be
/// built from `tuning`.
pub async fn run_side(
    side: Side,
    workload: &Workload,
    endpoint: &Endpoint,
    tuning: &Tuning,
    progress: &ProgressBar,
) -> Result<SideReport, BoxError> {
    let stats = Arc::new(SideStats::default());
    let svc = match side {
        Side::Bare => stack::bare(stats.clone()),
        Side::Stack => stack::recommended(tuning, endpoint, stats.clone())?,
    };
    let calls: Arc<[CallSpec]> = workload.calls(endpoint).into();
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    progress.set_length(calls.len() as u64);
    progress.set_position(0);
    progress.set_prefix(side.as_str());
    progress.set_message("ok 0  failed 0");
    let start = Instant::now();

    let workers: Vec<_> = (0..workload.concurrency.clamp(1, calls.len().max(1)))
        .map(|_| {
            let mut svc = svc.clone();
            let (calls, next, ok, failed, refused) = (
                calls.clone(),
                next.clone(),
                ok.clone(),
                failed.clone(),
                refused.clone(),
            );
            let (endpoint, stats, progress) = (endpoint.clone(), stats.clone(), progress.clone());
            let pace = workload.pace;
            tokio::spawn(async move {
                let mut records = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(call) = calls.get(i) else { break };
                    if !pace.is_zero() {
                        tokio::time::sleep_until(start + pace * i as u32).await;
                    }
                    if let Some((at, action)) = &endpoint.trigger
                        && *at == i
                    {
                        action();
                    }
                    let record = one_call(&mut svc, &endpoint, call, &stats, start).await;
                    if record.ok() {
                        &ok
                    } else if record.budget_refused {
                        &refused
                    } else {
                        &failed
                    }
                    .fetch_add(1, Ordering::Relaxed);
                    progress.set_message(format!(
                        "ok {}  failed {}  refused {}",
                        ok.load(Ordering::Relaxed),
                        failed.load(Ordering::Relaxed),
                        refused.load(Ordering::Relaxed)
                    ));
                    progress.inc(1);
                    records.push(record);
                }
                records
            })
        })
        .collect();
    let mut records = Vec::with_capacity(calls.len());
    for w in workers {
        records.extend(w.await?);
    }
    let elapsed = start.elapsed();
    records.sort_by_key(|r| r.index);
    let limits = match side {
        Side::Bare => (None, None),
        Side::Stack => (tuning.budget_usd, tuning.budget_tokens),
    };
    let mut report = SideReport::new(side, records, &stats, elapsed, limits);
    if side == Side::Stack && stack::HAS_BREAKER {
        report.breaker_transitions = Some(stats.breaker_transitions());
        report.breaker_refusals = Some(stats.refused_by_breaker());
        report.breaker = Some(stats.breaker_timeline(start));
        report.answered_by_target = Some(stats.answered());
        report.answered_after_fallback = Some(stats.answered_after_fallback());
        report.fallbacks = Some(stats.fallbacks());
    }
    Ok(report)
}

/// Sends one call, reads its whole body, and says how it went.
async fn one_call(
    svc: &mut DemoService,
    endpoint: &Endpoint,
    call: &CallSpec,
    stats: &Arc<SideStats>,
    start: Instant,
) -> CallRecord {
    let mut req = endpoint.request(call);
    let attempts = CallAttempts::default();
    req.extensions_mut().insert(attempts.clone());
    let targets = CallTargets::default();
    req.extensions_mut().insert(targets.clone());
    let sink = stats.clone();
    UsageObservers::register(
        &mut req,
        Arc::new(move |r: &UsageReport| sink.record_usage(r)),
    );
    let began = Instant::now();
    let (result, output) = stack::send(svc, req).await;
    let latency = began.elapsed();
    let classifier = DefaultClassifier::new();
    let (status, failure) = match &result {
        Ok((status, _, _)) if status.is_success() => (Some(status.as_u16()), None),
        Ok((status, headers, body)) => {
            let view = ResponseView::new(*status, headers)
                .with_body(body)
                .with_now(SystemTime::now());
            let class = classifier
                .classify_response(&view)
                .into_failure()
                .map_or_else(
                    || format!("http_{}", status.as_u16()),
                    |f| f.class().as_str().to_owned(),
                );
            (Some(status.as_u16()), Some(class))
        }
        Err(e) => (None, Some(error_class(&classifier, &**e))),
    };
    let budget_refused = match &result {
        Err(e) => refused_by_budget(&**e),
        Ok(_) => false,
    };
    let failure = if budget_refused {
        Some(crate::report::BUDGET_REFUSED.to_owned())
    } else {
        failure
    };
    CallRecord {
        index: call.index,
        format: call.format,
        stream: call.stream,
        start: began.duration_since(start),
        latency,
        attempts: attempts.get(),
        status,
        after_output: !result.as_ref().is_ok_and(|r| r.0.is_success()) && output,
        failure,
        targets: targets.get(),
        budget_refused,
    }
}

/// Whether the budget layer refused the call: its error is a
/// [`BudgetExceeded`] (the call itself did not fit), or no target answered
/// and the last one tried was refused by the budget (a retry or a move to
/// the fallback target that did not fit, so its attempt was never sent).
fn refused_by_budget(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err.is::<BudgetExceeded>() {
            return true;
        }
        if let Some(all) = err.downcast_ref::<AllTargetsFailed>() {
            // Each `class: error`, `skipped: why` or `not tried: …`; a
            // refusal's error is the `BudgetExceeded`'s message.
            let tried =
                all.targets.iter().rev().find(|t| {
                    !t.outcome.starts_with("skipped") && !t.outcome.starts_with("not tried")
                });
            return tried.is_some_and(|t| t.outcome.contains("budget exceeded:"));
        }
        cause = err.source();
    }
    false
}

/// The failure class of a call's error; when no target answered
/// ([`AllTargetsFailed`]), that of the last target's failure.
fn error_class(classifier: &DefaultClassifier, e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(all) = err.downcast_ref::<AllTargetsFailed>() {
            // Each `class: error`, `skipped: why` or `not tried: …`.
            let tried =
                all.targets.iter().rev().find(|t| {
                    !t.outcome.starts_with("skipped") && !t.outcome.starts_with("not tried")
                });
            if let Some(class) = tried.and_then(|t| t.outcome.split(':').next()) {
                return class.trim().to_owned();
            }
        }
        cause = err.source();
    }
    classifier.classify_error(e).class().as_str().to_owned()
}
