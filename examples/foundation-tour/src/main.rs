//! A tour of llm-tower's shared vocabulary: one call per scenario against
//! the project's mock provider on loopback, through the prepare and metering
//! layers over hyper-util's client, with each outcome classified, metered and
//! priced.
//!
//! ```sh
//! cargo run --release -p foundation-tour
//! ```
//!
//! No account, key or network is needed: `llm-tower-mock` answers on
//! `127.0.0.1` the way OpenAI, Anthropic and Gemini answer, and each
//! scenario asks it for its fault in an `x-mock-fault` header.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use llm_tower::{
    BoxError,
    classify::{
        Classifier, DEFAULT_ERROR_BODY_LIMIT, DefaultClassifier, Failure, PeekBody, ResponseView,
    },
    metering::{MeterLayer, StreamProgress, UsageObservers, UsageReport, UsageSource},
    pricing::PriceTable,
    provider::headers::request_id,
    request::{PrepareLayer, ReplayBody},
};
use llm_tower_mock::{FAULT_HEADER, MockServer};
use tower::{Service, ServiceBuilder, ServiceExt};

/// One call of the tour.
struct Scenario {
    name: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    /// The fault the mock is asked for, as a rule spec.
    fault: Option<&'static str>,
}

const OPENAI: &[(&str, &str)] = &[("authorization", "Bearer sk-demo")];
const ANTHROPIC: &[(&str, &str)] = &[
    ("x-api-key", "sk-ant-demo"),
    ("anthropic-version", "2023-06-01"),
];
const GEMINI: &[(&str, &str)] = &[("x-goog-api-key", "demo")];

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are a reliability engineer."},{"role":"user","content":"How should a client retry an LLM call?"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":200,"messages":[{"role":"user","content":"How should a client retry an LLM call?"}]}"#;
const MESSAGES_STREAM: &str = r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":512,"system":"You are terse.","messages":[{"role":"user","content":"When should a circuit breaker open?"}]}"#;
const GEMINI_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"How do I keep LLM spend down?"}]}],"generationConfig":{"maxOutputTokens":256}}"#;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "openai-json",
        path: "/v1/chat/completions",
        headers: OPENAI,
        body: CHAT,
        fault: None,
    },
    Scenario {
        name: "openai-stream",
        path: "/v1/chat/completions",
        headers: OPENAI,
        body: CHAT_STREAM,
        fault: None,
    },
    Scenario {
        name: "openai-stream-cut",
        path: "/v1/chat/completions",
        headers: OPENAI,
        body: CHAT_STREAM,
        fault: Some("truncate=3"),
    },
    Scenario {
        name: "openai-rate-limited",
        path: "/v1/chat/completions",
        headers: OPENAI,
        body: CHAT,
        fault: Some("rate-limited=1500ms"),
    },
    Scenario {
        name: "openai-quota",
        path: "/v1/chat/completions",
        headers: OPENAI,
        body: CHAT,
        fault: Some("insufficient-quota"),
    },
    Scenario {
        name: "openai-context",
        path: "/v1/chat/completions",
        headers: OPENAI,
        body: CHAT,
        fault: Some("context-length"),
    },
    Scenario {
        name: "anthropic-stream",
        path: "/v1/messages",
        headers: ANTHROPIC,
        body: MESSAGES_STREAM,
        fault: None,
    },
    Scenario {
        name: "anthropic-overloaded",
        path: "/v1/messages",
        headers: ANTHROPIC,
        body: MESSAGES_STREAM,
        fault: Some("overloaded"),
    },
    Scenario {
        name: "anthropic-error-event",
        path: "/v1/messages",
        headers: ANTHROPIC,
        body: MESSAGES_STREAM,
        fault: Some("error-event=0"),
    },
    Scenario {
        name: "gemini-stream",
        path: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        headers: GEMINI,
        body: GEMINI_BODY,
        fault: None,
    },
    Scenario {
        name: "gemini-exhausted",
        path: "/v1beta/models/gemini-2.5-flash:generateContent",
        headers: GEMINI,
        body: GEMINI_BODY,
        fault: Some("rate-limited=2s"),
    },
];

/// What the tour learned of one call.
struct Row {
    scenario: &'static str,
    provider: String,
    model: String,
    status: String,
    verdict: String,
    retry: String,
    report: Option<UsageReport>,
    request_id: String,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mock = MockServer::builder().seed(1).start().await?;
    let base = mock.url();
    let client = Client::builder(TokioExecutor::new()).build_http::<ReplayBody>();
    let mut svc = ServiceBuilder::new()
        // The mock is on loopback, so no host is known: Anthropic and Gemini
        // requests are recognised by their paths and headers, and OpenAI's
        // format by its path, as a compatible server named by its address.
        .layer(PrepareLayer::new())
        .layer(MeterLayer::new())
        .service(client);

    println!("mock provider on {base}\n");
    let mut rows = Vec::new();
    for scenario in SCENARIOS {
        rows.push(run(&mut svc, &base, scenario).await?);
    }
    print_table(&rows);
    Ok(())
}

async fn run<S, B>(svc: &mut S, base: &str, scenario: &Scenario) -> Result<Row, BoxError>
where
    S: Service<Request<String>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Unpin,
{
    let classifier = DefaultClassifier::new();
    let mut builder = Request::post(format!("{base}{}", scenario.path))
        .header("content-type", "application/json");
    if let Some(fault) = scenario.fault {
        builder = builder.header(FAULT_HEADER, fault);
    }
    for (k, v) in scenario.headers {
        builder = builder.header(*k, *v);
    }
    let mut req = builder.body(scenario.body.to_owned())?;

    // What the metering layer reports, exactly once per call.
    let seen: Arc<Mutex<Option<UsageReport>>> = Arc::default();
    let sink = seen.clone();
    UsageObservers::register(
        &mut req,
        Arc::new(move |r: &UsageReport| {
            *sink.lock().expect("not poisoned") = Some(r.clone());
        }),
    );

    let resp = svc.ready().await?.call(req).await?;
    let status = resp.status();
    let request_id = request_id(resp.headers()).unwrap_or("-").to_owned();
    let failure: Option<Failure> = if classifier.needs_body(status) {
        // Read the error body (bounded) to classify it; the caller would
        // still get every byte from the peeked body.
        let resp = PeekBody::new(resp, DEFAULT_ERROR_BODY_LIMIT).await;
        let view = ResponseView::new(status, resp.headers())
            .with_body(resp.body().peeked())
            .with_now(SystemTime::now());
        let verdict = classifier.classify_response(&view).into_failure();
        let _ = resp.into_body().collect().await;
        verdict
    } else {
        // The meter only observes: what went wrong inside a `200` stream (an
        // error event, a cut) is recorded in the body's progress, for the
        // layers that act on it — and for this tour, which reports it.
        let progress = StreamProgress::get(&resp).cloned();
        match resp.into_body().collect().await {
            Ok(_) => progress
                .and_then(|p| p.failure_error())
                .map(|e| classifier.classify_error(&*e)),
            Err(e) => Some(classifier.classify_error(&*e)),
        }
    };

    let report = seen.lock().expect("not poisoned").take();
    let (provider, model) = report
        .as_ref()
        .map(|r| {
            (
                r.provider
                    .as_ref()
                    .map_or("?".to_owned(), |p| p.to_string()),
                r.model.as_deref().unwrap_or("?").to_owned(),
            )
        })
        .unwrap_or_default();
    let (verdict, retry) = match &failure {
        None => ("ok".to_owned(), "-".to_owned()),
        Some(f) => (
            match f.code() {
                Some(code) => format!("{} ({code})", f.class()),
                None => f.class().to_string(),
            },
            match (f.is_retryable(), f.retry_after()) {
                (false, _) => "no".to_owned(),
                (true, Some(d)) => format!("after {}", fmt_delay(d)),
                (true, None) => "backoff".to_owned(),
            },
        ),
    };
    Ok(Row {
        scenario: scenario.name,
        provider,
        model,
        status: status.as_u16().to_string(),
        verdict,
        retry,
        report,
        request_id,
    })
}

fn fmt_delay(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "scenario",
        "provider",
        "model",
        "status",
        "verdict",
        "retry",
        "tokens in/out",
        "usage",
        "finish",
        "cost",
        "request id",
    ];
    let prices = PriceTable::embedded();
    let cells: Vec<[String; 11]> = rows
        .iter()
        .map(|r| {
            let cost = match &r.report {
                Some(rep) => match prices.cost(&r.model, &rep.usage) {
                    Ok(cost) => cost.to_string(),
                    Err(_) => "unpriced".to_owned(),
                },
                None => "-".to_owned(),
            };
            let (tokens, source, finish) = match &r.report {
                Some(rep) => (
                    format!("{}/{}", rep.usage.input_tokens, rep.usage.output_tokens),
                    match rep.source {
                        UsageSource::Actual => "actual".to_owned(),
                        _ => "estimated".to_owned(),
                    },
                    rep.finish_reason
                        .as_ref()
                        .map_or("-".to_owned(), |f| format!("{f:?}").to_lowercase()),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            [
                r.scenario.to_owned(),
                r.provider.clone(),
                r.model.clone(),
                r.status.clone(),
                r.verdict.clone(),
                r.retry.clone(),
                tokens,
                source,
                finish,
                cost,
                r.request_id.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: Vec<&str>| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}
