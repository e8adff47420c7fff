//! The demo's numbers checked against the mock's journal, its JSON and SVG
//! output, its remote mode against a key-checking mock, and its flags.
//!
//! The in-process tests run on tokio's paused clock: the mock's pacing, its
//! slow first tokens, the outage and every retry wait cost no real time,
//! and the outcome does not depend on the machine's speed.

use std::{process::Command, time::Duration};

use llm_tower_demo::{
    ApiFormat, Chaos, Endpoint, Options, Side, Target, Tuning, Workload, progress_bar, run,
    run_side,
};
use llm_tower_mock::{MockServer, Rule};

const N: usize = 30;

fn workload(seed: u64) -> Workload {
    let chaos = Chaos::fast(seed);
    Workload {
        requests: N,
        concurrency: 4,
        seed,
        all_stream: false,
        pace: chaos.pace(4),
    }
}

/// Runs one side against a fresh chaotic mock (outage from call 10 on) and
/// returns the report with the mock's journal.
async fn side_against_mock(
    side: Side,
    seed: u64,
) -> (llm_tower_demo::SideReport, Vec<llm_tower_mock::Entry>) {
    let chaos = Chaos::fast(seed);
    let mock = std::sync::Arc::new(chaos.start().await.unwrap());
    let m = mock.clone();
    let endpoint = Endpoint::mock(&mock).with_trigger(10, move || {
        let now = m.elapsed();
        m.push_rule(Rule::outage(now..now + Duration::from_millis(500)))
            .unwrap();
    });
    let report = run_side(
        side,
        &workload(seed),
        &endpoint,
        &Tuning::for_mock(),
        &progress_bar(false),
    )
    .await
    .unwrap();
    drop(endpoint);
    let journal = mock.journal().entries();
    (report, journal)
}

#[tokio::test(start_paused = true)]
async fn attempts_counted_by_the_demo_are_the_attempts_the_mock_journaled() {
    for seed in [7, 11, 42] {
        let (bare, bare_journal) = side_against_mock(Side::Bare, seed).await;
        let (stack, stack_journal) = side_against_mock(Side::Stack, seed).await;

        for (r, journal) in [(&bare, &bare_journal), (&stack, &stack_journal)] {
            let side = r.side;
            assert_eq!(r.calls, N, "{side} seed {seed}");
            assert_eq!(
                r.succeeded + r.failed,
                N as u64,
                "{side} seed {seed}: every call succeeded or failed"
            );
            assert_eq!(
                r.attempts,
                journal.len() as u64,
                "{side} seed {seed}: attempts counted == attempts journaled"
            );
            assert_eq!(
                r.records.iter().map(|c| u64::from(c.attempts)).sum::<u64>(),
                r.attempts,
                "{side} seed {seed}: per-call attempts add up"
            );
            assert!(
                journal.iter().any(|e| !e.faults.is_empty()),
                "{side} seed {seed}: the mock injected faults"
            );
            assert_eq!(
                r.faults_injected, None,
                "run_side alone does not read a journal"
            );
        }

        // The bare client sends each call once and never retries.
        assert_eq!(bare.attempts, N as u64, "seed {seed}");
        assert_eq!(bare.retries_total(), 0);
        assert_eq!(bare.max_attempts_per_call, 1);
        assert!(bare.failed > 0, "seed {seed}: chaos breaks some bare calls");

        // The stack's extra attempts are exactly its retries and its moves
        // to a fallback target, every attempt at a target carries the same
        // body, and it ends up ahead.
        let targets_called: u64 = stack.records.iter().map(|r| r.targets.len() as u64).sum();
        assert!(targets_called >= N as u64, "seed {seed}");
        assert_eq!(
            stack.attempts + stack.breaker_refusals.unwrap(),
            targets_called + stack.retries_total(),
            "seed {seed}: one attempt per target a call went to plus one per retry, sent or \
             refused by the breaker"
        );
        assert!(stack.retries_total() > 0, "seed {seed}");
        let calls_seen: std::collections::HashSet<_> =
            stack_journal.iter().map(|e| &e.fingerprint).collect();
        // A call's body per target: retries resend the same one.
        assert!(
            calls_seen.len() as u64 <= targets_called,
            "seed {seed}: retries resend the same call"
        );
        assert!(
            stack.records.iter().all(|r| !r.ok() || r.attempts >= 1),
            "seed {seed}: every answer came from an attempt"
        );
        assert!(
            stack.succeeded > bare.succeeded,
            "seed {seed}: stack {} vs bare {}",
            stack.succeeded,
            bare.succeeded
        );
        assert!(
            stack.tokens.input > 0 && stack.tokens.output > 0,
            "seed {seed}"
        );
        assert!(
            bare.tokens.input > 0 && bare.tokens.output > 0,
            "seed {seed}"
        );
        assert!(
            stack.breaker_transitions.is_some(),
            "the stack has a breaker"
        );
        assert_eq!(
            bare.breaker_transitions, None,
            "the bare side has none: n/a"
        );
        // Every answer named the target that gave it.
        let answers: u64 = stack.answered_by_target.as_ref().unwrap().values().sum();
        assert!(answers >= stack.succeeded, "seed {seed}");
        assert!(bare.answered_by_target.is_none() && bare.fallbacks.is_none());
    }
}

/// Failed calls of a side, one line each: index, format, streaming, the
/// class, the targets it went to and its attempts.
fn failed_calls(side: &llm_tower_demo::SideReport) -> Vec<String> {
    side.records
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            format!(
                "call {} ({}, {}): {}{} after {} attempts, status {:?}, targets {:?}, {:?} from start, took {:?}",
                r.index,
                r.format,
                if r.stream { "stream" } else { "json" },
                r.failure.as_deref().unwrap_or_default(),
                if r.after_output { " after output" } else { "" },
                r.attempts,
                r.status,
                r.targets,
                r.start,
                r.latency,
            )
        })
        .collect()
}

/// The goal: with a fallback target, the stack answers at least
/// 99.5% of the calls on the default chaotic profile (its pace, faults and
/// outage), over several seeds, as the demo runs them by default (200
/// calls at concurrency 16).
///
/// Not reachable yet, and why: the mock cuts 2% of the streams cleanly
/// after three tokens (`Truncate { after: 3 }`), and the layers hold a
/// stream only until its first token (`Hold::Complete` is not written
/// yet): past it, the caller has output and neither retry nor fallback
/// can try again. So the goal holds for every call that failed before any
/// output reached its caller (all of them are answered), and the failures
/// after output are printed and bounded.
#[tokio::test(start_paused = true)]
async fn with_fallback_the_stack_answers_at_least_99_5_percent_on_the_default_chaos() {
    let (mut calls, mut failed, mut after_output, mut moved) = (0, Vec::new(), 0, 0);
    for seed in 1..=5 {
        let chaos = Chaos::new(seed);
        let options = Options {
            workload: Workload {
                requests: 200,
                concurrency: 16,
                seed,
                all_stream: false,
                pace: chaos.pace(16),
            },
            target: Target::Mock(chaos),
            sides: vec![Side::Stack],
            tuning: Tuning::for_mock(),
            progress: false,
        };
        let report = run(&options).await.unwrap();
        let stack = report.stack.as_ref().unwrap();
        calls += stack.calls;
        moved += stack.answered_after_fallback.unwrap();
        after_output += stack.failed_after_output;
        eprintln!(
            "seed {seed}: {:.1}%, fallbacks {:?}, answers {:?}, gave up {:?}",
            stack.success_rate,
            stack.fallbacks.as_ref().unwrap(),
            stack.answered_by_target.as_ref().unwrap(),
            stack.gave_up
        );
        failed.extend(
            failed_calls(stack)
                .into_iter()
                .map(|f| format!("seed {seed}: {f}")),
        );
    }
    for f in &failed {
        eprintln!("{f}");
    }
    assert!(
        moved > 0,
        "some calls were answered by their fallback target"
    );
    let rate = |failed: usize| 100.0 * (calls - failed) as f64 / calls as f64;
    let overall = rate(failed.len());
    let before_output = rate(failed.len() - after_output as usize);
    eprintln!(
        "{overall:.2}% of {calls} calls answered; {before_output:.2}% counting only the failures \
         before output ({after_output} failed after it)"
    );
    // Streams are held until complete (the demo's setting): none fails
    // after output reached the caller.
    assert_eq!(after_output, 0, "{before_output:.2}%");
    assert!(
        overall >= 99.5,
        "{overall:.2}% of {calls} calls; failed:\n{}",
        failed.join("\n")
    );
}

#[tokio::test(start_paused = true)]
async fn the_full_run_reports_both_sides_as_one_json_object_a_table_and_a_chart() {
    let options = Options {
        workload: workload(3),
        target: Target::Mock(Chaos::fast(3)),
        sides: vec![Side::Bare, Side::Stack],
        tuning: Tuning::for_mock(),
        progress: false,
    };
    let report = run(&options).await.unwrap();

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(json.is_object());
    assert_eq!(json["requests"], N);
    for side in ["bare", "stack"] {
        let s = &json[side];
        assert_eq!(s["side"], side);
        assert_eq!(s["calls"], N);
        assert_eq!(
            s["succeeded"].as_u64().unwrap() + s["failed"].as_u64().unwrap(),
            N as u64
        );
        assert_eq!(s["breaker_transitions"].is_null(), side == "bare");
        assert!(
            s["latency_ms"]["p99"].as_f64().unwrap() >= s["latency_ms"]["p50"].as_f64().unwrap()
        );
        // The journal's faults, read by `run` from each side's own mock.
        let faults: u64 = s["faults_injected"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(faults > 0, "{side}");
    }
    assert!(json["stack"]["tokens"]["output"].as_u64().unwrap() > 0);
    // The fallback's keys: answers per target, fallbacks per failure class;
    // `null` on the bare side, which has no fallback.
    let answered = json["stack"]["answered_by_target"].as_object().unwrap();
    assert!(
        answered
            .keys()
            .all(|k| k == "openai/gpt-4o-mini" || k == "anthropic/claude-haiku-4-5"),
        "{answered:?}"
    );
    let answers: u64 = answered.values().map(|v| v.as_u64().unwrap()).sum();
    assert!(answers >= json["stack"]["succeeded"].as_u64().unwrap());
    assert!(json["stack"]["answered_after_fallback"].is_u64());
    assert!(json["stack"]["failed_after_output"].is_u64());
    let fallbacks = json["stack"]["fallbacks"].as_object().unwrap();
    assert!(
        fallbacks.values().all(serde_json::Value::is_u64),
        "{fallbacks:?}"
    );
    for key in ["answered_by_target", "answered_after_fallback", "fallbacks"] {
        assert!(json["bare"][key].is_null(), "bare.{key}");
    }
    // The stack no longer waits for the breaker everywhere: only at a
    // call's last target.
    let settings: Vec<&str> = json["changed_settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["setting"].as_str().unwrap())
        .collect();
    assert!(
        !settings.contains(&"retry.wait_for_breaker = true"),
        "{settings:?}"
    );
    assert!(
        settings.contains(&"retry.wait_for_breaker = true at a call's last target"),
        "{settings:?}"
    );
    // The outage was opened inside each side's run.
    for side in report.sides() {
        let outage = side.outage.clone().expect("an outage window");
        assert!(outage.start < Duration::from_secs_f64(side.elapsed_ms / 1000.0));
        assert!(side.fault_marks.iter().any(|m| m.fault == "overloaded"));
    }

    let table = report.to_table();
    for row in [
        "calls succeeded",
        "attempts per call",
        "retries",
        "breaker transitions",
        "answers by target",
        "answered after fallback",
        "fallbacks by reason",
        "latency p99",
        "tokens in / out",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    assert!(table.contains("n/a"));

    let svg = llm_tower_demo::plot::render(&report);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<circle").count() + svg.matches("<path d=").count(),
        2 * N + 2 * 3,
        "one mark per call, plus the three legend marks of each panel"
    );
    assert!(svg.contains("outage") && svg.contains("breaker: n/a"));
}

#[tokio::test(start_paused = true)]
async fn remote_mode_sends_each_providers_auth_headers() {
    for format in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
        let mock = MockServer::builder()
            .api_key("sk-right")
            .start()
            .await
            .unwrap();
        let base = match format {
            ApiFormat::OpenAi => mock.openai_base_url(),
            ApiFormat::Anthropic => mock.url(),
        };
        let w = Workload {
            requests: 6,
            concurrency: 2,
            seed: 1,
            all_stream: false,
            pace: Duration::ZERO,
        };
        for (key, ok) in [("sk-right", 6), ("sk-wrong", 0)] {
            let endpoint = Endpoint::remote(&base, format, "some-model", key).unwrap();
            let r = run_side(
                Side::Stack,
                &w,
                &endpoint,
                &Tuning::for_remote(),
                &progress_bar(false),
            )
            .await
            .unwrap();
            assert_eq!(r.succeeded, ok, "{format} {key}");
            if ok == 0 {
                assert_eq!(
                    r.failures.get("auth"),
                    Some(&6),
                    "{format}: {:?}",
                    r.failures
                );
                assert_eq!(r.retries_total(), 0, "auth failures are not retried");
            }
        }
        let models: Vec<_> = mock
            .journal()
            .entries()
            .into_iter()
            .filter(|e| e.status == 200)
            .map(|e| e.model.unwrap_or_default())
            .collect();
        assert_eq!(models, vec!["some-model"; 6], "{format}");
    }
}

/// Remote mode with `--fallback-*`: every OpenAI-format call to the
/// endpoint is overloaded, so each moves to the Anthropic fallback target
/// (its own key), and arrives in the caller's format.
#[tokio::test(start_paused = true)]
async fn remote_mode_moves_calls_to_the_fallback_target() {
    let mock = MockServer::builder()
        .rule(
            Rule::new(llm_tower_mock::Fault::Overloaded).provider(llm_tower_mock::Provider::OpenAi),
        )
        .start()
        .await
        .unwrap();
    let endpoint = Endpoint::remote(
        &mock.openai_base_url(),
        ApiFormat::OpenAi,
        "gpt-4o-mini",
        "sk-openai",
    )
    .unwrap()
    .with_fallback(
        &mock.url(),
        ApiFormat::Anthropic,
        "claude-haiku-4-5",
        "sk-ant",
    )
    .unwrap();
    let w = Workload {
        requests: 6,
        concurrency: 2,
        seed: 1,
        all_stream: false,
        pace: Duration::ZERO,
    };
    let r = run_side(
        Side::Stack,
        &w,
        &endpoint,
        &Tuning::for_remote(),
        &progress_bar(false),
    )
    .await
    .unwrap();
    assert_eq!(r.succeeded, 6, "{:?}", r.failures);
    assert_eq!(
        r.answered_by_target
            .as_ref()
            .unwrap()
            .get("anthropic/claude-haiku-4-5"),
        Some(&6)
    );
    assert_eq!(r.answered_after_fallback, Some(6));
    assert!(
        r.fallbacks.as_ref().unwrap()["overloaded"] >= 6,
        "{:?}",
        r.fallbacks
    );
    assert!(
        r.records
            .iter()
            .all(|c| c.targets == ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"])
    );
    let answered: Vec<_> = mock
        .journal()
        .entries()
        .into_iter()
        .filter(|e| e.status == 200)
        .map(|e| (e.path, e.model.unwrap_or_default()))
        .collect();
    assert_eq!(
        answered,
        vec![("/v1/messages".to_owned(), "claude-haiku-4-5".to_owned()); 6]
    );
}

#[test]
fn remote_urls_are_checked() {
    assert!(Endpoint::remote("http://127.0.0.1:8000/v1", ApiFormat::OpenAi, "m", "k").is_ok());
    // TLS by rustls; this machine's roots decide whether https can work.
    assert_eq!(
        Endpoint::remote("https://api.openai.com/v1", ApiFormat::OpenAi, "m", "k").is_ok(),
        llm_tower_demo::stack::has_tls_roots()
    );
    for bad in ["not a url", "ftp://host/v1", "/v1"] {
        let err = Endpoint::remote(bad, ApiFormat::OpenAi, "m", "k").unwrap_err();
        assert!(err.contains("--base-url"), "{bad}: {err}");
    }
}

fn demo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llm-tower-demo"))
        .args(args)
        .output()
        .expect("the demo binary runs")
}

#[test]
fn bad_flags_exit_non_zero_with_a_message() {
    let cases: &[&[&str]] = &[
        &["--requests", "0"],
        &["--concurrency", "0"],
        &["--requests", "many"],
        &["--only", "middle"],
        &["--base-url", "http://127.0.0.1:9/v1"],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
        ],
        &[
            "--base-url",
            "not a url",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "k",
        ],
        &[
            "--base-url",
            "ftp://api.openai.com/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "k",
        ],
        &[
            "--base-url",
            "http://api.example.com/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "sk-very-secret",
        ],
        &["--allow-insecure-http"],
        &["--model", "m"],
        &["--rpm", "0"],
        &["--mock-rpm", "0"],
        &["--mock-tpm", "-5"],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "k",
            "--mock-rpm",
            "60",
        ],
        &["--provider", "gemini", "--base-url", "http://127.0.0.1:9"],
        // The fallback flags: only with --base-url, all three together, the
        // URL checked as --base-url's.
        &["--fallback-model", "m"],
        &[
            "--fallback-provider",
            "anthropic",
            "--fallback-base-url",
            "http://127.0.0.1:9",
            "--fallback-model",
            "m",
        ],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "sk-very-secret",
            "--fallback-base-url",
            "http://127.0.0.1:9",
        ],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "sk-very-secret",
            "--fallback-api-key",
            "sk-very-secret",
        ],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "sk-very-secret",
            "--fallback-provider",
            "anthropic",
            "--fallback-base-url",
            "http://api.example.com",
            "--fallback-model",
            "claude-haiku-4-5",
        ],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "k",
            "--fallback-provider",
            "anthropic",
            "--fallback-base-url",
            "ftp://127.0.0.1:9",
            "--fallback-model",
            "claude-haiku-4-5",
        ],
        &[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "k",
            "--fallback-provider",
            "gemini",
            "--fallback-base-url",
            "http://127.0.0.1:9",
            "--fallback-model",
            "m",
        ],
        &["--no-such-flag"],
        // The budget: dollars above 0 and finite, tokens a whole number
        // above 0.
        &["--budget-usd", "-1"],
        &["--budget-usd", "0"],
        &["--budget-usd", "NaN"],
        &["--budget-usd", "inf"],
        &["--budget-usd", "ten"],
        &["--budget-tokens", "0"],
        &["--budget-tokens", "-5"],
        &["--budget-tokens", "2.5"],
    ];
    for args in cases {
        let out = demo(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("sk-very-secret"), "{args:?}: {stderr}");
    }
    let out = demo(&[
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--provider",
        "openai",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: --base-url needs --model, --api-key"),
        "{stderr}"
    );
}

#[test]
fn json_mode_prints_one_json_object_and_nothing_else() {
    // Real time, at the default pace: a few seconds at most.
    let out = demo(&[
        "--requests",
        "12",
        "--concurrency",
        "4",
        "--json",
        "--seed",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is exactly one JSON value");
    assert_eq!(json["bare"]["calls"], 12);
    assert_eq!(json["stack"]["calls"], 12);
    assert!(out.stderr.is_empty(), "no progress bar with --json");

    let out = demo(&["--requests", "5", "--only", "stack", "--json", "--stream"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json.get("bare").is_none());
    assert_eq!(json["stack"]["calls"], 5);
    assert_eq!(json["stream"], "all");
}

/// The demo's remote mode over HTTPS, as a user runs it: the binary, a
/// `https://` base URL, and the server's certificate trusted through
/// `SSL_CERT_FILE` as curl and OpenSSL do. The server is the mock behind a
/// TLS front on 127.0.0.1 with a certificate made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mode_speaks_https_trusting_ssl_cert_file() {
    use llm_tower_mock::tls::{Certificate, front};

    let cert = Certificate::for_localhost();
    let cert_file = std::env::temp_dir().join(format!("llm-tower-demo-{}.pem", std::process::id()));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    let mock = MockServer::builder()
        .api_key("sk-tls")
        .start()
        .await
        .unwrap();
    let front = front(mock.addr(), cert.server_config()).await.unwrap();

    let base = format!("https://{front}/v1");
    let trusted = cert_file.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_llm-tower-demo"))
            .args([
                "--base-url",
                &base,
                "--provider",
                "openai",
                "--model",
                "gpt-4o-mini",
                "--api-key",
                "sk-tls",
                "--requests",
                "6",
                "--concurrency",
                "2",
                "--json",
            ])
            .env("SSL_CERT_FILE", &trusted)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&cert_file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for side in ["bare", "stack"] {
        assert_eq!(report[side]["succeeded"], 6, "{side}: {stdout}");
    }
    assert_eq!(
        mock.journal().len(),
        12,
        "every call went through the TLS front"
    );
}

/// A run against the mock with a quota of `mock_rpm` requests per minute
/// (no faults, OpenAI calls only, so every call shares one model's quota),
/// `requests` calls at concurrency 8, with the stack's rate limiter under
/// `rpm` when given (else adaptive).
async fn quota_run(mock_rpm: u32, requests: usize, rpm: Option<u64>) -> llm_tower_demo::Report {
    let quota = llm_tower_mock::Quota::per_minute().requests(mock_rpm);
    quota_run_with(quota, ApiFormat::OpenAi, requests, (rpm, None)).await
}

/// [`quota_run`] with any quota, wire format and `(--rpm, --tpm)`.
async fn quota_run_with(
    quota: llm_tower_mock::Quota,
    format: ApiFormat,
    requests: usize,
    (rpm, tpm): (Option<u64>, Option<u64>),
) -> llm_tower_demo::Report {
    let chaos = Chaos::fast(9)
        .without_faults()
        .with_quota(quota)
        .with_format(format);
    quota_run_on(chaos, requests, (rpm, tpm)).await
}

/// [`quota_run`] against the mock `chaos`.
async fn quota_run_on(
    chaos: Chaos,
    requests: usize,
    (rpm, tpm): (Option<u64>, Option<u64>),
) -> llm_tower_demo::Report {
    let options = Options {
        workload: Workload {
            requests,
            concurrency: 8,
            seed: 9,
            all_stream: false,
            pace: chaos.pace(8),
        },
        target: Target::Mock(chaos),
        sides: vec![Side::Bare, Side::Stack],
        tuning: Tuning::for_mock().with_limits(rpm, tpm).under_quota(),
        progress: false,
    };
    run(&options).await.unwrap()
}

/// The experiment on the paused clock: a 60 requests/minute quota,
/// 90 calls. The bare client meets the quota's 429s; the stack, paced at
/// `--rpm 60`, completes every call with next to none, in about the time
/// the quota allows (60 at once, then one a second).
#[tokio::test(start_paused = true)]
async fn under_a_quota_the_paced_stack_completes_every_call_and_the_bare_client_meets_429s() {
    let report = quota_run(60, 90, Some(60)).await;
    let (bare, stack) = (
        report.bare.as_ref().unwrap(),
        report.stack.as_ref().unwrap(),
    );
    let quota_faults = |s: &llm_tower_demo::SideReport| {
        s.faults_injected
            .as_ref()
            .and_then(|f| f.get("quota").copied())
            .unwrap_or(0)
    };

    // The bare side: one attempt per call, so its 429s are its failures.
    assert!(bare.provider_429 >= 20, "bare: {} 429s", bare.provider_429);
    assert_eq!(
        bare.provider_429,
        quota_faults(bare),
        "bare: as the mock journaled"
    );
    assert_eq!(bare.failures.get("rate_limited"), Some(&bare.provider_429));
    assert!(bare.rate_limit.is_none());

    // The stack: every call, next to no 429s, none refused.
    assert_eq!(stack.succeeded, 90, "stack: {:?}", stack.failures);
    assert!(
        stack.provider_429 <= 2,
        "stack: {} 429s",
        stack.provider_429
    );
    assert_eq!(
        stack.provider_429,
        quota_faults(stack),
        "stack: as the mock journaled"
    );
    let rl = stack
        .rate_limit
        .as_ref()
        .expect("the stack has a rate limiter");
    assert_eq!(rl.refused, 0);
    assert_eq!(rl.provider_429, stack.provider_429);
    assert!(rl.queued >= 20, "{rl:?}");
    assert!(rl.queue_wait_ms.p50 > 0.0, "{rl:?}");
    assert!(rl.queue_wait_ms.p99 >= rl.queue_wait_ms.p50, "{rl:?}");
    // 54 at once (90% of 60), then one every 1.11 s: about 40 s.
    let wall = stack.elapsed_ms / 1000.0;
    assert!((30.0..60.0).contains(&wall), "stack wall time {wall} s");

    // The report carries it all.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["bare"]["provider_429"], bare.provider_429);
    assert!(json["bare"]["rate_limit"].is_null());
    let r = &json["stack"]["rate_limit"];
    for key in [
        "queued",
        "refused",
        "too_large",
        "provider_429",
        "pauses",
        "adapted",
    ] {
        assert!(r[key].is_u64(), "rate_limit.{key}: {r}");
    }
    for key in ["p50", "p99"] {
        assert!(r["queue_wait_ms"][key].is_f64(), "queue_wait_ms.{key}: {r}");
    }
    assert!(
        json["changed_settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["setting"].as_str().unwrap().contains("requests 60")),
        "{}",
        json["changed_settings"]
    );
    let table = report.to_table();
    for row in [
        "429s from the provider",
        "attempts queued by rate limiter",
        "queue wait p99",
        "attempts refused by rate limiter",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    assert!(report.target.contains("60 requests"), "{}", report.target);
}

/// Without `--rpm`, the stack's rate limiter learns the quota from the
/// mock's `x-ratelimit-*` headers and its 429s.
#[tokio::test(start_paused = true)]
async fn under_a_quota_the_adaptive_stack_completes_every_call() {
    let report = quota_run(60, 90, None).await;
    let (bare, stack) = (
        report.bare.as_ref().unwrap(),
        report.stack.as_ref().unwrap(),
    );
    assert!(bare.provider_429 >= 20, "bare: {} 429s", bare.provider_429);
    assert_eq!(stack.succeeded, 90, "stack: {:?}", stack.failures);
    let rl = stack.rate_limit.as_ref().unwrap();
    assert!(rl.adapted > 0, "{rl:?}");
    assert!(
        stack.provider_429 < bare.provider_429,
        "stack {} vs bare {}",
        stack.provider_429,
        bare.provider_429
    );
}

/// `--tpm` against the mock's tokens-per-minute quota, which counts the
/// prompt and `max_tokens` on arrival, in either wire format.
#[tokio::test(start_paused = true)]
async fn under_a_token_quota_the_paced_stack_completes_every_call() {
    for format in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
        let quota = llm_tower_mock::Quota::per_minute().tokens(6000);
        let report = quota_run_with(quota, format, 90, (None, Some(6000))).await;
        let (bare, stack) = (
            report.bare.as_ref().unwrap(),
            report.stack.as_ref().unwrap(),
        );
        eprintln!("{format}\n{}", report.to_table());
        assert!(
            bare.provider_429 >= 20,
            "{format} bare: {} 429s",
            bare.provider_429
        );
        assert_eq!(stack.succeeded, 90, "{format} stack: {:?}", stack.failures);
        assert!(
            stack.provider_429 <= 2,
            "{format} stack: {} 429s",
            stack.provider_429
        );
    }
}

/// The chaotic mock with a quota: its injected 429s pause the key for every
/// call, and calls whose attempt failed take a new turn at the back of the
/// queue; the total timeout under a quota leaves room for that, so the
/// rate limiter refuses nothing and the stack meets none of the quota's
/// 429s.
#[tokio::test(start_paused = true)]
async fn under_a_quota_and_chaos_the_stack_queues_within_its_deadline() {
    let chaos = Chaos::fast(7)
        .with_quota(llm_tower_mock::Quota::per_minute().requests(60))
        .with_format(ApiFormat::OpenAi);
    let report = quota_run_on(chaos, 90, (Some(60), None)).await;
    let (bare, stack) = (
        report.bare.as_ref().unwrap(),
        report.stack.as_ref().unwrap(),
    );
    let journaled = |s: &llm_tower_demo::SideReport, fault: &str| {
        s.faults_injected
            .as_ref()
            .and_then(|f| f.get(fault).copied())
            .unwrap_or(0)
    };
    for s in [bare, stack] {
        // One 429 may carry both faults in the journal (the quota answers
        // first, the chaos rule was drawn too).
        let (quota, chaos) = (journaled(s, "quota"), journaled(s, "rate_limited"));
        assert!(
            (quota.max(chaos)..=quota + chaos).contains(&s.provider_429),
            "{}: {} 429s counted, the mock journaled {quota} quota and {chaos} rate_limited",
            s.side,
            s.provider_429
        );
    }
    assert!(journaled(bare, "quota") >= 20, "{:?}", bare.faults_injected);
    assert_eq!(journaled(stack, "quota"), 0, "{:?}", stack.faults_injected);
    let rl = stack.rate_limit.as_ref().unwrap();
    assert_eq!(rl.refused, 0, "{rl:?}");
    assert!(rl.pauses > 0, "the injected 429s paused the key: {rl:?}");
    assert!(
        stack.succeeded >= 85 && stack.succeeded > bare.succeeded,
        "stack {} vs bare {}: {:?}",
        stack.succeeded,
        bare.succeeded,
        stack.failures
    );
}

/// [`run`] of both sides against the fast chaotic mock (seed 3), with the
/// budget's `(--budget-usd, --budget-tokens)`.
async fn budget_run(usd: Option<f64>, tokens: Option<u64>) -> llm_tower_demo::Report {
    let options = Options {
        workload: workload(3),
        target: Target::Mock(Chaos::fast(3)),
        sides: vec![Side::Bare, Side::Stack],
        tuning: Tuning::for_mock().with_budget(usd, tokens),
        progress: false,
    };
    run(&options).await.unwrap()
}

fn side_json(report: &llm_tower_demo::Report, side: &str) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    json[side].clone()
}

/// Without budget flags the budget layer is in the stack with no limit:
/// it refuses nothing, and prices every attempt; the bare side's usage is
/// priced at the same prices. Both sides report their spend.
#[tokio::test(start_paused = true)]
async fn without_a_budget_nothing_is_refused_and_both_sides_report_their_spend() {
    let report = budget_run(None, None).await;
    for side in ["bare", "stack"] {
        let s = side_json(&report, side);
        assert_eq!(s["budget_refused"], 0, "{side}");
        let cost = s["cost_usd"].as_f64().unwrap();
        assert!(cost > 0.0, "{side}: {cost}");
        assert_eq!(
            s["unpriced_attempts"], 0,
            "{side}: the mock's models are priced"
        );
        let per = s["cost_per_success_usd"].as_f64().unwrap();
        let ok = s["succeeded"].as_f64().unwrap();
        assert!((per * ok - cost).abs() < 1e-12, "{side}");
    }
    let (bare, stack) = (
        report.bare.as_ref().unwrap(),
        report.stack.as_ref().unwrap(),
    );
    assert!(bare.budget.is_none());
    let b = stack
        .budget
        .as_ref()
        .expect("the stack always has a budget layer");
    assert_eq!((b.limit_usd, b.limit_tokens, b.refused), (None, None, 0));
    assert_eq!(b.calls, N as u64);
    // Every attempt sent was reserved, retries and fallbacks included (a
    // call's first reservation is made when it comes in, so a first
    // attempt the breaker refused counts too); the budget's spend is the
    // metered usage at the same prices.
    assert!(
        b.attempts_reserved >= stack.attempts,
        "{b:?} vs {}",
        stack.attempts
    );
    assert!(b.settled <= b.attempts_reserved, "{b:?}");
    assert!(b.settled >= stack.succeeded, "{b:?}");
    assert!((b.spent_usd - stack.metered_cost_usd).abs() < 1e-9, "{b:?}");
    assert_eq!(b.tokens, stack.tokens.input + stack.tokens.output);
    assert!(b.reserved_peak_usd > 0.0);
    let table = report.to_table();
    for row in [
        "calls refused by budget",
        "spend (settled)",
        "per successful call",
        "budget limit",
        "reserved peak",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
}

/// `--budget-usd` at about a third of what the stack spends without one:
/// the budget refuses calls (counted as refused, not as the provider's
/// failures), the stack's spend stays within the limit, and the bare
/// side, which has no limit, spends more.
#[tokio::test(start_paused = true)]
async fn a_dollar_budget_refuses_calls_and_holds_the_spend_under_its_limit() {
    let unlimited = budget_run(None, None).await;
    let full = unlimited.stack.as_ref().unwrap().cost_usd;
    let limit = full / 3.0;
    let report = budget_run(Some(limit), None).await;
    let (bare, stack) = (side_json(&report, "bare"), side_json(&report, "stack"));
    eprintln!("{}", report.to_table());

    let refused = stack["budget_refused"].as_u64().unwrap();
    assert!(refused > 0, "{stack}");
    let cost = stack["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost <= limit, "spent {cost} of {limit}");
    assert!(
        bare["cost_usd"].as_f64().unwrap() > cost,
        "bare {} vs stack {cost}",
        bare["cost_usd"]
    );
    assert_eq!(bare["budget_refused"], 0);
    assert!(bare["budget"].is_null());
    let b = &stack["budget"];
    assert_eq!(b["limit_usd"].as_f64(), Some(limit));
    assert!(b["limit_tokens"].is_null());
    assert_eq!(b["spent_usd"].as_f64(), Some(cost));
    assert!(b["refused"].as_u64().unwrap() >= refused, "{b}");
    for key in ["reserved_peak_usd", "spent_pct_of_limit"] {
        assert!(b[key].is_f64(), "{key}: {b}");
    }
    for key in ["attempts_reserved", "settled", "tokens", "calls"] {
        assert!(b[key].is_u64(), "{key}: {b}");
    }

    // Refused, not failed: the breakdown adds up, and the provider's
    // failures do not include the budget's refusals.
    let s = report.stack.as_ref().unwrap();
    assert_eq!(s.succeeded + s.failed + s.budget_refused, N as u64);
    assert!(
        !s.failures.contains_key("budget_exceeded"),
        "{:?}",
        s.failures
    );
    assert!(
        !s.failures.contains_key("quota_exhausted"),
        "{:?}",
        s.failures
    );
    assert_eq!(
        s.records.iter().filter(|r| r.budget_refused).count() as u64,
        refused
    );
    // A call refused before anything was sent made no attempt.
    assert!(
        s.records
            .iter()
            .filter(|r| r.budget_refused)
            .any(|r| r.attempts == 0)
    );
    let table = report.to_table();
    assert!(
        table.contains(&format!("{:.1}%)", cost * 100.0 / limit)),
        "{table}"
    );
    assert!(
        report
            .changed_settings
            .iter()
            .any(|c| c.setting.starts_with("budget: global hard limit $")),
        "{:?}",
        report.changed_settings
    );
}

/// `--budget-tokens`: a global limit in tokens, input and output.
#[tokio::test(start_paused = true)]
async fn a_token_budget_refuses_calls_and_holds_the_tokens_under_its_limit() {
    let unlimited = budget_run(None, None).await;
    let all = unlimited
        .stack
        .as_ref()
        .unwrap()
        .budget
        .as_ref()
        .unwrap()
        .tokens;
    let limit = all / 3;
    let report = budget_run(None, Some(limit)).await;
    let stack = side_json(&report, "stack");
    assert!(stack["budget_refused"].as_u64().unwrap() > 0, "{stack}");
    let b = &stack["budget"];
    assert_eq!(b["limit_tokens"].as_u64(), Some(limit));
    assert!(b["limit_usd"].is_null());
    assert!(b["tokens"].as_u64().unwrap() <= limit, "{b}");
    assert!(stack["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(side_json(&report, "bare")["budget_refused"], 0);
    assert!(report.to_table().contains(&format!("of {limit} tokens")));
}

/// The binary with `--budget-usd`, as a user runs it: refusals in the
/// JSON, the spend within the limit, the bare side over it.
#[test]
fn budget_flags_reach_the_json_report() {
    let out = demo(&[
        "--requests",
        "16",
        "--concurrency",
        "4",
        "--json",
        "--seed",
        "5",
        "--budget-usd",
        "0.0003",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (bare, stack) = (&json["bare"], &json["stack"]);
    assert!(stack["budget_refused"].as_u64().unwrap() > 0, "{stack}");
    let cost = stack["cost_usd"].as_f64().unwrap();
    assert!(cost <= 0.0003, "{cost}");
    assert!(bare["cost_usd"].as_f64().unwrap() > cost, "{bare}");
    assert_eq!(bare["budget_refused"], 0);
    assert_eq!(stack["budget"]["limit_usd"].as_f64(), Some(0.0003));
}
