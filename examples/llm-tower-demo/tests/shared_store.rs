//! Two stacks sharing one Redis against one quota-limited mock meet
//! (almost) no 429s; with each its own memory store, each believing it has
//! the whole quota, they meet the quota's 429s.
//!
//! These run on the real clock (Redis keeps its own time: the paused clock
//! of the other demo tests cannot drive it) and scale the issue's
//! experiment so that it stays short: a quota of 120 requests a minute
//! (two a second), 132 calls in all, split over two stacks. Sharing, the
//! stacks take 108 at once (90% headroom) and the rest at 1.8 a second,
//! about 13 s; apart, each lets its 66 calls through at once, 132 against
//! a quota of 120.
//!
//! They need a Redis server: `LLM_TOWER_REDIS_URL`, or a `redis-server`
//! started for the test on a free port; without either they say SKIPPED on
//! stderr and pass, unless `LLM_TOWER_REQUIRE_REDIS=1`.

#[path = "../../../crates/llm-tower/tests/support/redis.rs"]
mod redis;
#[path = "../../../crates/llm-tower/tests/support/redis_tls.rs"]
mod redis_tls;
use redis as redis_support;

use std::{process::Command, sync::Arc, time::Duration};

use llm_tower_demo::{
    ApiFormat, Chaos, DemoStore, Endpoint, Side, SideReport, Tuning, Workload, progress_bar,
    run_side,
};
use llm_tower_mock::{MockServer, Quota};

/// The mock's quota and the stacks' `--rpm`.
const RPM: u32 = 120;
/// Calls per stack.
const CALLS: usize = 66;

/// A mock with no faults, fast answers and a quota of [`RPM`] requests a
/// minute per model.
async fn quota_mock() -> MockServer {
    Chaos::fast(9)
        .without_faults()
        .with_quota(Quota::per_minute().requests(RPM))
        .with_format(ApiFormat::OpenAi)
        .start()
        .await
        .expect("the mock starts")
}

/// Runs two stacks at once against `mock`, each with [`CALLS`] OpenAI
/// calls at concurrency 8 under `--rpm RPM`, their state in `store` (a
/// Redis store shared, or each its own memory store).
///
/// Their rate limiters ignore the mock's `x-ratelimit-*` headers
/// (`adaptive = false`): read, they let two memory stores partly
/// coordinate through the provider itself, once its quota is spent (the
/// README's two-process figures, at 60 requests a minute over a minute
/// and more, show what is left of the 429s then); ignored, a short run
/// shows what the store alone does.
async fn two_stacks(mock: &MockServer, store: &DemoStore) -> [SideReport; 2] {
    let endpoint = Endpoint::mock(mock).only(ApiFormat::OpenAi);
    let mut tuning = Tuning::for_mock()
        .with_limits(Some(u64::from(RPM)), None)
        .under_quota()
        .with_store(store.clone());
    tuning.rate_limit.adaptive = false;
    let runs: Vec<_> = [1, 2]
        .into_iter()
        .map(|seed| {
            let (endpoint, tuning) = (endpoint.clone(), tuning.clone());
            tokio::spawn(async move {
                let workload = Workload {
                    requests: CALLS,
                    concurrency: 8,
                    seed,
                    all_stream: false,
                    pace: Duration::ZERO,
                };
                run_side(
                    Side::Stack,
                    &workload,
                    &endpoint,
                    &tuning,
                    &progress_bar(false),
                )
                .await
                .expect("the stack builds")
            })
        })
        .collect();
    let mut out = Vec::new();
    for run in runs {
        out.push(run.await.expect("the run does not panic"));
    }
    out.try_into().expect("two runs")
}

fn summary(label: &str, runs: &[SideReport]) -> String {
    runs.iter()
        .map(|r| {
            format!(
                "{label}: {} of {} succeeded, {} 429s, {:.1} s",
                r.succeeded,
                r.calls,
                r.provider_429,
                r.elapsed_ms / 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stacks_sharing_redis_meet_no_429s_and_two_with_memory_stores_do() {
    let Some(server) = redis::server() else {
        return;
    };
    let store = DemoStore::redis_with_prefix(server.url(), &redis::unique_prefix("two-stacks"))
        .await
        .expect("the test's Redis answers");
    assert!(store.is_shared());

    // Sharing one Redis: one queue for both, under the quota.
    let mock = quota_mock().await;
    let shared = two_stacks(&mock, &store).await;
    let said = summary("redis", &shared);
    eprintln!("{said}");
    let total_429: u64 = shared.iter().map(|r| r.provider_429).sum();
    for r in &shared {
        assert_eq!(r.succeeded, CALLS as u64, "{said}\n{:?}", r.failures);
        let rl = r.rate_limit.as_ref().expect("a rate limiter");
        assert_eq!(rl.refused, 0, "{said}");
    }
    assert!(total_429 <= 2, "{said}");
    let queued: u64 = shared
        .iter()
        .map(|r| r.rate_limit.as_ref().map_or(0, |rl| rl.queued))
        .sum();
    // 108 at once, then 24 more at 1.8 a second: about 13 s for both.
    assert!(queued >= 16, "{said}: {queued} queued");
    let wall = shared.iter().map(|r| r.elapsed_ms).fold(0.0, f64::max) / 1000.0;
    assert!((8.0..40.0).contains(&wall), "{said}");
    drop(mock);

    // Each its own memory store, each believing it has the whole quota:
    // together they send more than the quota holds.
    let mock = quota_mock().await;
    let apart = two_stacks(&mock, &DemoStore::default()).await;
    let said = summary("memory", &apart);
    eprintln!("{said}");
    let total_429: u64 = apart.iter().map(|r| r.provider_429).sum();
    assert!(total_429 >= 5, "{said}");
    // The stack still answers: a 429 carries its exact wait, and the
    // retry honours it.
    for r in &apart {
        assert_eq!(r.succeeded, CALLS as u64, "{said}\n{:?}", r.failures);
    }
}

/// The recipe of the README: two demo processes, `--only stack --store
/// redis://…`, against one mock (here the test's, as `--base-url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_demo_processes_sharing_redis_meet_no_429s() {
    let Some(server) = redis::server() else {
        return;
    };
    let mock = Arc::new(quota_mock().await);
    let base = mock.openai_base_url();
    let prefix = redis::unique_prefix("two-processes");
    let rpm = RPM.to_string();
    let calls = CALLS.to_string();
    let children: Vec<_> = [1, 2]
        .into_iter()
        .map(|seed| {
            let seed = seed.to_string();
            let args = [
                "--only",
                "stack",
                "--json",
                "--base-url",
                &base,
                "--provider",
                "openai",
                "--model",
                "gpt-4o-mini",
                "--api-key",
                "sk-test",
                "--rpm",
                &rpm,
                "--requests",
                &calls,
                "--concurrency",
                "8",
                "--seed",
                &seed,
                "--store",
                server.url(),
                "--store-prefix",
                &prefix,
            ];
            Command::new(env!("CARGO_BIN_EXE_llm-tower-demo"))
                .args(args)
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the demo starts")
        })
        .collect();
    let outputs: Vec<_> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().expect("the demo runs"))
            .collect()
    })
    .await
    .unwrap();
    let mut total_429 = 0;
    for out in &outputs {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        let shown = llm_tower_demo::store::redact(server.url());
        assert_eq!(json["store"], shown.as_str(), "{json}");
        assert!(
            json["changed_settings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["setting"]
                    .as_str()
                    .unwrap()
                    .starts_with("store = redis://")),
            "{}",
            json["changed_settings"]
        );
        let stack = &json["stack"];
        eprintln!(
            "process: {} of {} succeeded, {} 429s, {} ms",
            stack["succeeded"], stack["calls"], stack["provider_429"], stack["elapsed_ms"]
        );
        assert_eq!(stack["succeeded"], CALLS as u64, "{stack}");
        total_429 += stack["provider_429"].as_u64().unwrap();
    }
    assert!(total_429 <= 2, "{total_429} 429s in all");
    assert_eq!(mock.journal().len(), 2 * CALLS + total_429 as usize);
}

/// A server that does not answer is a clear error at start, not a run
/// whose every call fails.
#[test]
fn an_unreachable_redis_is_an_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_llm-tower-demo"))
        .args(["--only", "stack", "--requests", "1", "--store", &url])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--store redis://:***@127.0.0.1"),
        "{stderr}"
    );
    assert!(stderr.contains("Redis"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = Command::new(env!("CARGO_BIN_EXE_llm-tower-demo"))
        .args(["--store", "http://127.0.0.1:6379"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--store"), "{stderr}");
}

/// `--store rediss://…`: the demo reaches a Redis behind TLS whose CA the
/// system trusts (here through `SSL_CERT_FILE`), and refuses one it does
/// not, at start.
#[test]
fn a_redis_behind_tls_is_reached() {
    let Some((server, certs)) = redis_tls::server(false) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("llm-tower-demo-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &certs.ca).unwrap();
    let run = |cert_file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_llm-tower-demo"))
            .args(["--only", "stack", "--requests", "2", "--json"])
            .args(["--store", server.url(), "--store-prefix"])
            .arg(redis::unique_prefix("tls"))
            .env("SSL_CERT_FILE", cert_file)
            .env_remove("SSL_CERT_DIR")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = run(&ca);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["store"], server.url(), "{report}");

    // A CA nobody signed the server's certificate with.
    let (other, _, _) = redis_tls::certificates();
    let other_ca = dir.join("other.pem");
    std::fs::write(&other_ca, &other.ca).unwrap();
    let out = run(&other_ca);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--store rediss://127.0.0.1"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
