//! llm-tower's main demo: the same workload of LLM calls through a bare
//! client and through the recommended stack, against a chaotic provider.
//!
//! ```sh
//! cargo run --release -p llm-tower-demo
//! ```
//!
//! By default it starts the project's mock provider on `127.0.0.1` (no
//! account, key or network) with rate limits, 500/503/529s, slow first
//! tokens, cut streams, error events and a short outage, sends it a mix of
//! OpenAI and Anthropic calls, streaming and not, once through each side,
//! and prints a report side by side. `--help` lists the flags; `--json`
//! prints the report as one JSON object, `--plot FILE.svg` charts latency
//! over time, and `--base-url` runs the same workload against a real or
//! compatible endpoint instead.
//!
//! The stack moves a call its own provider cannot answer to the other one
//! (OpenAI `gpt-4o-mini` ↔ Anthropic `claude-haiku-4-5` on the same mock),
//! translated both ways; with `--base-url`, `--fallback-provider`,
//! `--fallback-base-url` and `--fallback-model` name a fallback target.
//!
//! The stack paces its calls with a rate limiter: on the provider's
//! rate-limit headers by default, under `--rpm N` / `--tpm N` (requests and
//! tokens per minute per provider, model and key) when given. `--mock-rpm
//! N` / `--mock-tpm N` give the embedded mock a quota per model, as a
//! provider's tier, `--no-faults` turns its chaos off and `--provider`
//! sends it one wire format only, so that every call shares one quota
//! (with any of these flags the stack's total timeout grows from 15 s to
//! the rate limiter's `max_wait`, 60 s, since every attempt may queue):
//!
//! ```sh
//! cargo run --release -p llm-tower-demo -- --no-faults --provider openai \
//!     --mock-rpm 60 --requests 90 --concurrency 8 --rpm 60
//! ```
//!
//! The stack's outermost layer after prepare is a budget layer: with no
//! flag it only prices every attempt, so the report shows what each side
//! spent (the bare side's usage priced at the same table);
//! `--budget-usd X` / `--budget-tokens N` give it a global hard limit over
//! the run, and calls that no longer fit are refused, not sent:
//!
//! ```sh
//! cargo run --release -p llm-tower-demo -- --requests 1000 --concurrency 64 --budget-usd 0.022
//! ```
//!
//! `--store redis://HOST:PORT` keeps the stack's rate limiter and budget in
//! Redis instead of the process's memory, so that several demo processes
//! share one quota and one budget, e.g. two of them against one
//! standalone mock (`cargo run -p llm-tower-mock -- --port 8090 --rpm 60`):
//!
//! ```sh
//! cargo run --release -p llm-tower-demo -- --only stack \
//!     --base-url http://127.0.0.1:8090/v1 --provider openai --model gpt-4o-mini \
//!     --api-key sk-demo --rpm 60 --requests 60 --concurrency 8 \
//!     --store redis://127.0.0.1:6379
//! ```
//!
//! `RUST_LOG` turns on logs on stderr as in any Rust CLI (`RUST_LOG=debug`
//! shows every call and attempt through tower-http's `TraceLayer`); the
//! report on stdout is the same either way. API keys never appear in them.

use std::{fmt, net::IpAddr, path::PathBuf, process::ExitCode, str::FromStr, time::Duration};

use clap::Parser;
use llm_tower_demo::{
    ApiFormat, Chaos, DemoStore, Endpoint, Options, Side, StoreUrl, Target, Tuning, Workload, plot,
    run,
};
use tracing_subscriber::EnvFilter;

/// `--hold`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HoldArg {
    /// Until the first token.
    FirstToken,
    /// Until the stream is complete (at most 1 MiB held).
    Complete,
}

/// The most of a stream held with `--hold complete`: 1 MiB.
const DEMO_HOLD_BYTES: usize = 1 << 20;

/// Runs the same workload of LLM calls through a bare client and through
/// llm-tower's recommended stack, against a chaotic mock provider on
/// loopback (or a real endpoint), and reports side by side.
#[derive(Debug, Parser)]
#[command(name = "llm-tower-demo", version)]
struct Args {
    /// Logical calls per side.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Seed of the workload's mix and of the mock's faults.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Every call streams (default: a mix of streaming and not).
    #[arg(long)]
    stream: bool,
    /// How long each target's retry holds a stream back: until its first
    /// token (the library's default, for interactive callers: a stream cut
    /// after it reaches the caller cut), or until it is complete, so that a
    /// stream failing anywhere is retried, then moved whole to the fallback
    /// target (the demo's workload reads whole answers).
    #[arg(long, value_enum, default_value_t = HoldArg::Complete)]
    hold: HoldArg,
    /// Run one side only.
    #[arg(long, value_enum)]
    only: Option<Side>,
    /// Print the report as one JSON object on stdout, and nothing else.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart of per-call latency over time to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Call this endpoint instead of the embedded mock, its base URL as the
    /// provider's SDK takes it: https://HOST/v1 for OpenAI, https://HOST for
    /// Anthropic; https:// (rustls, the platform's roots or SSL_CERT_FILE's),
    /// or http:// to a loopback host (anywhere else only with
    /// --allow-insecure-http). Needs --provider, --model and --api-key.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// The API key of --base-url (sent as `authorization: Bearer` or
    /// `x-api-key`). Never printed.
    #[arg(long, value_name = "KEY")]
    api_key: Option<Secret>,
    /// Send --api-key (or --fallback-api-key) in clear text (plain
    /// http://) to a host that is not loopback.
    #[arg(long)]
    allow_insecure_http: bool,
    /// The wire format of --base-url; with the embedded mock, send every
    /// call in this format (default: a mix of both), so that they share
    /// one model's quota.
    #[arg(long, value_enum)]
    provider: Option<ApiFormat>,
    /// The model to ask --base-url for.
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// The stack's rate limiter: at most N requests per minute per
    /// provider, model and API key (default: no limit of its own, paced by
    /// the provider's rate-limit headers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    rpm: Option<u64>,
    /// The stack's rate limiter: at most N tokens (input and output cap)
    /// per minute per provider, model and API key.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tpm: Option<u64>,
    /// Give the embedded mock a quota of N requests per minute per model,
    /// answered with 429 and the exact wait, as a provider's tier.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    mock_rpm: Option<u32>,
    /// Give the embedded mock a quota of N tokens per minute per model
    /// (prompt plus max_tokens, counted on arrival as OpenAI does).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    mock_tpm: Option<u32>,
    /// The embedded mock injects no faults and no outage: only its quota
    /// (--mock-rpm, --mock-tpm), if any, refuses calls.
    #[arg(long)]
    no_faults: bool,
    /// With --base-url: the wire format of the fallback target, where a
    /// call moves when --base-url cannot answer (the embedded mock always
    /// falls back to its other provider). Needs --fallback-base-url and
    /// --fallback-model.
    #[arg(long, value_enum, value_name = "P")]
    fallback_provider: Option<ApiFormat>,
    /// The fallback target's base URL, as --base-url (https://, or http://
    /// to loopback unless --allow-insecure-http).
    #[arg(long, value_name = "URL")]
    fallback_base_url: Option<String>,
    /// The model to ask the fallback target for.
    #[arg(long, value_name = "M")]
    fallback_model: Option<String>,
    /// The fallback target's API key (default: --api-key). Never printed.
    #[arg(long, value_name = "KEY")]
    fallback_api_key: Option<Secret>,
    /// The stack's budget: a global hard limit of X dollars over the whole
    /// run (at the embedded price table's prices). A call, retry or
    /// fallback whose worst case no longer fits is refused before it is
    /// sent. Without it the budget layer refuses nothing and still prices
    /// every call.
    #[arg(long, value_name = "X", value_parser = parse_usd, allow_negative_numbers = true)]
    budget_usd: Option<f64>,
    /// The stack's budget: a global hard limit of N tokens (input and
    /// output) over the whole run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    budget_tokens: Option<u64>,
    /// Where the stack's rate limiter and budget keep their state: `memory`
    /// (each process its own), or redis://HOST:PORT[/DB]
    /// (redis://:PASSWORD@HOST:PORT with a password; rediss://HOST:PORT for
    /// TLS, trusting the system's root certificates and SSL_CERT_FILE),
    /// connected once at
    /// start, so that several demo processes pointed at the same server
    /// share one quota (--rpm, --tpm, what the provider's headers say) and
    /// one budget (--budget-usd, --budget-tokens). The password is never
    /// printed.
    #[arg(long, value_name = "URL", default_value = "memory")]
    store: StoreUrl,
    /// With a Redis --store: the prefix of the demo's keys there.
    /// Processes share limits and budgets only with the same prefix; a new
    /// prefix starts from a clean slate (a --budget-usd total stays in Redis
    /// under its prefix).
    #[arg(long, value_name = "P", default_value = llm_tower_demo::store::REDIS_PREFIX)]
    store_prefix: String,
}

/// `--budget-usd`: a finite number of dollars above 0, at most the budget
/// layer's largest limit.
fn parse_usd(s: &str) -> Result<f64, String> {
    let usd: f64 = s
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("`{s}` is not a number of dollars (e.g. 0.25)"))?;
    if !usd.is_finite() {
        return Err(format!("`{s}` is not a finite number of dollars"));
    }
    if usd <= 0.0 {
        return Err(format!(
            "`{s}`: a budget is more than $0 (a limit of $0 or less would refuse every call)"
        ));
    }
    if usd > llm_tower::budget::MAX_USD {
        return Err(format!(
            "`{s}`: a budget is at most ${}",
            llm_tower::budget::MAX_USD
        ));
    }
    Ok(usd)
}

/// A credential from the command line: `Debug` and `Display` print `***`,
/// so printing [`Args`] never shows it.
#[derive(Clone)]
struct Secret(String);

impl Secret {
    /// The credential itself, to send.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Refuses to send a key in clear text to a host other than loopback
/// (`localhost`, `127.0.0.0/8`, `::1`) unless `allow` (the user passed
/// `--allow-insecure-http`). A URL that does not parse is left to
/// [`Endpoint::remote`], which says why.
fn check_clear_text(flag: &str, base_url: &str, allow: bool) -> Result<(), String> {
    let Ok(uri) = base_url.parse::<http::Uri>() else {
        return Ok(());
    };
    if allow || uri.scheme_str() != Some("http") {
        return Ok(());
    }
    let Some(host) = uri.host() else {
        return Ok(());
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        return Ok(());
    }
    Err(format!(
        "{flag} `{base_url}` would send an API key in clear text (plain http) to `{host}`, \
         which is not loopback; use https://, or pass --allow-insecure-http if this network \
         is trusted"
    ))
}

/// The fallback target of remote mode, `(URL, provider, model)`, when
/// `--fallback-base-url` is given with `--fallback-provider` and
/// `--fallback-model`; none when no `--fallback-*` flag is.
fn fallback(args: &Args) -> Result<Option<(&str, ApiFormat, &str)>, String> {
    let (url, provider, model) = (
        args.fallback_base_url.as_deref(),
        args.fallback_provider,
        args.fallback_model.as_deref(),
    );
    if url.is_none() && provider.is_none() && model.is_none() {
        if args.fallback_api_key.is_some() {
            return Err("--fallback-api-key goes with --fallback-base-url".to_owned());
        }
        return Ok(None);
    }
    let missing: Vec<&str> = [
        ("--fallback-base-url", url.is_none()),
        ("--fallback-provider", provider.is_none()),
        ("--fallback-model", model.is_none()),
    ]
    .into_iter()
    .filter_map(|(flag, missing)| missing.then_some(flag))
    .collect();
    match (url, provider, model) {
        (Some(u), Some(p), Some(m)) => Ok(Some((u, p, m))),
        _ => Err(format!(
            "a fallback target needs --fallback-base-url, --fallback-provider and \
             --fallback-model: {} missing",
            missing.join(", ")
        )),
    }
}

/// Checks the flags clap cannot, and builds the run's options.
fn options(args: &Args) -> Result<Options, String> {
    if args.store.redis_url().is_none() && args.store_prefix != llm_tower_demo::store::REDIS_PREFIX
    {
        return Err("--store-prefix goes with --store redis://…".to_owned());
    }
    if args.store_prefix.is_empty() || args.store_prefix.contains(['{', '}']) {
        return Err(format!(
            "--store-prefix `{}`: a prefix is not empty and has no braces",
            args.store_prefix
        ));
    }
    let mut workload = Workload {
        requests: args.requests as usize,
        concurrency: args.concurrency as usize,
        seed: args.seed,
        all_stream: args.stream,
        pace: Duration::ZERO,
    };
    let (target, tuning) = match &args.base_url {
        None => {
            if args.model.is_some() || args.api_key.is_some() || args.allow_insecure_http {
                return Err(
                    "--model, --api-key and --allow-insecure-http go with --base-url".to_owned(),
                );
            }
            if args.fallback_provider.is_some()
                || args.fallback_base_url.is_some()
                || args.fallback_model.is_some()
                || args.fallback_api_key.is_some()
            {
                return Err(
                    "--fallback-provider, --fallback-base-url, --fallback-model and \
                     --fallback-api-key go with --base-url (the embedded mock's calls fall back \
                     to its other provider on their own)"
                        .to_owned(),
                );
            }
            let mut chaos = Chaos::new(args.seed);
            let mut quota = llm_tower_mock::Quota::per_minute();
            quota.requests_per_minute = args.mock_rpm;
            quota.tokens_per_minute = args.mock_tpm;
            chaos = chaos.with_quota(quota);
            if args.no_faults {
                chaos = chaos.without_faults();
            }
            if let Some(format) = args.provider {
                chaos = chaos.with_format(format);
            }
            workload.pace = chaos.pace(workload.concurrency);
            let mut tuning = Tuning::for_mock();
            if [args.mock_rpm, args.mock_tpm].iter().any(Option::is_some)
                || [args.rpm, args.tpm].iter().any(Option::is_some)
            {
                tuning = tuning.under_quota();
            }
            (Target::Mock(chaos), tuning)
        }
        Some(url) => {
            if args.mock_rpm.is_some() || args.mock_tpm.is_some() || args.no_faults {
                return Err(
                    "--mock-rpm, --mock-tpm and --no-faults go with the embedded mock, not --base-url"
                        .to_owned(),
                );
            }
            let missing: Vec<&str> = [
                ("--provider", args.provider.is_none()),
                ("--model", args.model.is_none()),
                ("--api-key", args.api_key.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, missing)| missing.then_some(flag))
            .collect();
            if !missing.is_empty() {
                return Err(format!("--base-url needs {}", missing.join(", ")));
            }
            let endpoint = Endpoint::remote(
                url,
                args.provider.expect("checked"),
                args.model.as_deref().expect("checked"),
                args.api_key.as_ref().expect("checked").expose(),
            )?;
            check_clear_text("--base-url", url, args.allow_insecure_http)?;
            let endpoint = match fallback(args)? {
                None => endpoint,
                Some((url, provider, model)) => {
                    let key = args
                        .fallback_api_key
                        .as_ref()
                        .or(args.api_key.as_ref())
                        .expect("checked");
                    let endpoint = endpoint.with_fallback(url, provider, model, key.expose())?;
                    check_clear_text("--fallback-base-url", url, args.allow_insecure_http)?;
                    endpoint
                }
            };
            (Target::Remote(endpoint), Tuning::for_remote())
        }
    };
    Ok(Options {
        workload,
        target,
        sides: match args.only {
            Some(side) => vec![side],
            None => vec![Side::Bare, Side::Stack],
        },
        tuning: tuning
            .with_limits(args.rpm, args.tpm)
            .with_budget(args.budget_usd, args.budget_tokens)
            .with_hold(match args.hold {
                HoldArg::FirstToken => llm_tower::retry::Hold::FirstToken,
                HoldArg::Complete => llm_tower::retry::Hold::complete(DEMO_HOLD_BYTES),
            }),
        progress: !args.json,
    })
}

/// Logs to stderr as `RUST_LOG` says, as Rust CLI tools do; nothing at all
/// when it is unset. Returns whether logging is on.
fn init_logs() -> bool {
    if std::env::var_os(EnvFilter::DEFAULT_ENV).is_none() {
        return false;
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    true
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let logging = init_logs();
    let mut options = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs and a progress bar would garble each other on stderr.
    options.progress &= !logging;
    if let Some(url) = args.store.redis_url() {
        match DemoStore::redis_with_prefix(url, &args.store_prefix).await {
            Ok(store) => options.tuning = options.tuning.with_store(store),
            Err(e) => {
                eprintln!(
                    "error: --store {}: cannot use the Redis server: {e}{}",
                    args.store,
                    std::error::Error::source(&e)
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let report = match run(&options).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(path) = &args.plot {
        if let Err(e) = std::fs::write(path, plot::render(&report)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        if !args.json {
            println!("\nchart written to {}", path.display());
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("llm-tower-demo").chain(flags.iter().copied()))
            .expect("valid flags")
    }

    fn remote(url: &str, extra: &[&str]) -> Result<Options, String> {
        let mut flags = vec![
            "--base-url",
            url,
            "--provider",
            "openai",
            "--model",
            "m",
            "--api-key",
            "sk-very-secret",
        ];
        flags.extend_from_slice(extra);
        options(&args(&flags))
    }

    #[test]
    fn the_api_key_is_never_printed() {
        let a = args(&[
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--api-key",
            "sk-very-secret",
        ]);
        let printed = format!("{a:?}");
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
        assert_eq!(a.api_key.as_ref().unwrap().to_string(), "***");
        assert_eq!(a.api_key.as_ref().unwrap().expose(), "sk-very-secret");
        let options = remote("http://127.0.0.1:9/v1", &[]).unwrap();
        assert!(!format!("{options:?}").contains("sk-very-secret"));
    }

    #[test]
    fn the_key_goes_in_clear_text_only_to_loopback_or_when_allowed() {
        for url in [
            "http://127.0.0.1:8000/v1",
            "http://127.1.2.3/v1",
            "http://localhost:8000/v1",
            "http://LOCALHOST/v1",
            "http://[::1]:8000/v1",
        ] {
            assert!(remote(url, &[]).is_ok(), "{url}");
        }
        for url in [
            "http://10.0.0.5:8000/v1",
            "http://api.example.com/v1",
            "http://[2001:db8::1]/v1",
            "http://localhost.example.com/v1",
        ] {
            let err = remote(url, &[]).unwrap_err();
            assert!(err.contains("clear text"), "{url}: {err}");
            assert!(err.contains("--allow-insecure-http"), "{url}: {err}");
            assert!(!err.contains("sk-very-secret"), "{url}: {err}");
            assert!(remote(url, &["--allow-insecure-http"]).is_ok(), "{url}");
        }
    }

    #[test]
    fn rate_limit_and_mock_quota_flags_configure_the_run() {
        let o = options(&args(&[
            "--rpm",
            "60",
            "--tpm",
            "9000",
            "--mock-rpm",
            "60",
            "--no-faults",
            "--provider",
            "openai",
        ]))
        .unwrap();
        let limits = &o.tuning.rate_limit.limits;
        assert_eq!(limits.len(), 1);
        assert_eq!(
            (limits[0].requests, limits[0].tokens),
            (Some(60), Some(9000))
        );
        assert_eq!(limits[0].scope, llm_tower::rate_limit::Scope::Key);
        assert_eq!(o.tuning.rate_limit.headroom, 0.9, "the layer's default");
        let Target::Mock(chaos) = &o.target else {
            panic!("the embedded mock")
        };
        assert_eq!(chaos.quota.requests_per_minute, Some(60));
        assert_eq!(chaos.quota.tokens_per_minute, None);
        assert!(!chaos.faults);
        assert_eq!(chaos.format, Some(ApiFormat::OpenAi));
        let changed = o.tuning.changed_settings();
        assert!(
            changed
                .iter()
                .any(|c| c.setting.contains("rate_limit") && c.setting.contains("requests 60")),
            "{changed:?}"
        );

        assert_eq!(
            o.tuning.total,
            Duration::from_secs(60),
            "room for the queue"
        );
        let plain = options(&args(&[])).unwrap();
        assert_eq!(plain.tuning.total, Duration::from_secs(15));
        assert!(
            plain.tuning.rate_limit.limits.is_empty(),
            "adaptive by default"
        );
        assert!(
            !plain
                .tuning
                .changed_settings()
                .iter()
                .any(|c| c.setting.contains("rate_limit"))
        );
        // --rpm paces a remote endpoint too.
        let o = remote("http://127.0.0.1:9/v1", &["--rpm", "500"]).unwrap();
        assert_eq!(o.tuning.rate_limit.limits[0].requests, Some(500));
        let err = remote("http://127.0.0.1:9/v1", &["--mock-rpm", "60"]).unwrap_err();
        assert!(err.contains("--mock-rpm"), "{err}");
    }

    #[test]
    fn a_remote_fallback_target_is_checked_as_the_base_url_is() {
        let fb = |url: &str, extra: &[&str]| {
            let mut flags = vec![
                "--fallback-base-url",
                url,
                "--fallback-provider",
                "anthropic",
                "--fallback-model",
                "claude-haiku-4-5",
            ];
            flags.extend_from_slice(extra);
            remote("http://127.0.0.1:9/v1", &flags)
        };
        let o = fb("http://127.0.0.1:10", &[]).unwrap();
        let Target::Remote(endpoint) = &o.target else {
            panic!("remote")
        };
        let f = endpoint
            .fallback_for(ApiFormat::OpenAi)
            .expect("a fallback");
        assert_eq!(f.url(), "http://127.0.0.1:10/v1/messages");
        assert_eq!(f.name(), "anthropic/claude-haiku-4-5");
        // The same key unless --fallback-api-key.
        assert_eq!(f.credential().1, "sk-very-secret");
        let o = fb(
            "http://127.0.0.1:10",
            &["--fallback-api-key", "sk-ant-other"],
        )
        .unwrap();
        let Target::Remote(endpoint) = &o.target else {
            panic!("remote")
        };
        let f = endpoint.fallback_for(ApiFormat::OpenAi).unwrap();
        assert_eq!(f.credential(), ("x-api-key", "sk-ant-other".to_owned()));
        assert!(!format!("{o:?}").contains("sk-ant-other"));
        assert!(
            endpoint
                .describe()
                .contains("falling back to http://127.0.0.1:10")
        );

        // Plain http to another host only when allowed.
        let err = fb("http://api.example.com", &[]).unwrap_err();
        assert!(err.contains("--fallback-base-url"), "{err}");
        assert!(err.contains("--allow-insecure-http"), "{err}");
        assert!(!err.contains("sk-very-secret"), "{err}");
        assert!(fb("http://api.example.com", &["--allow-insecure-http"]).is_ok());
        for bad in ["not a url", "ftp://host", "/v1"] {
            let err = fb(bad, &[]).unwrap_err();
            assert!(err.contains("--fallback-base-url"), "{bad}: {err}");
        }
        let err = remote(
            "http://127.0.0.1:9/v1",
            &[
                "--fallback-base-url",
                "http://127.0.0.1:10",
                "--fallback-provider",
                "anthropic",
                "--fallback-model",
                " ",
            ],
        )
        .unwrap_err();
        assert!(err.contains("--fallback-model"), "{err}");

        // Incomplete: each missing flag named.
        let err = remote(
            "http://127.0.0.1:9/v1",
            &["--fallback-base-url", "http://127.0.0.1:10"],
        )
        .unwrap_err();
        assert!(
            err.contains("--fallback-provider") && err.contains("--fallback-model"),
            "{err}"
        );
        let err = remote("http://127.0.0.1:9/v1", &["--fallback-api-key", "k"]).unwrap_err();
        assert!(err.contains("--fallback-base-url"), "{err}");
        // Not with the embedded mock.
        let err = options(&args(&["--fallback-model", "m"])).unwrap_err();
        assert!(err.contains("--base-url"), "{err}");
        // None: no fallback target.
        let o = remote("http://127.0.0.1:9/v1", &[]).unwrap();
        let Target::Remote(endpoint) = &o.target else {
            panic!("remote")
        };
        assert!(endpoint.fallback_for(ApiFormat::OpenAi).is_none());
    }

    #[test]
    fn budget_flags_set_the_stacks_global_limits() {
        let plain = options(&args(&[])).unwrap();
        assert_eq!(
            (plain.tuning.budget_usd, plain.tuning.budget_tokens),
            (None, None)
        );
        assert!(
            !plain
                .tuning
                .changed_settings()
                .iter()
                .any(|c| c.setting.starts_with("budget:"))
        );
        plain
            .tuning
            .budget_config()
            .build()
            .expect("no limits: valid");
        let o = options(&args(&["--budget-usd", "0.25", "--budget-tokens", "5000"])).unwrap();
        assert_eq!(o.tuning.budget_usd, Some(0.25));
        assert_eq!(o.tuning.budget_tokens, Some(5000));
        o.tuning.budget_config().build().expect("valid");
        let changed = o.tuning.changed_settings();
        assert!(
            changed.iter().any(|c| c.setting.contains("$0.25")),
            "{changed:?}"
        );
        assert!(
            changed.iter().any(|c| c.setting.contains("5000 tokens")),
            "{changed:?}"
        );
        assert_eq!(parse_usd("$1.5"), Ok(1.5));
        for bad in ["-1", "0", "0.0", "NaN", "inf", "-inf", "abc", "", "1e300"] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
        for bad in [
            &["--budget-usd", "-0.5"][..],
            &["--budget-usd", "nan"],
            &["--budget-tokens", "0"],
            &["--budget-tokens", "-3"],
            &["--budget-tokens", "1.5"],
        ] {
            let flags = std::iter::once("llm-tower-demo").chain(bad.iter().copied());
            assert!(Args::try_parse_from(flags).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn store_flag_takes_memory_or_a_redis_url() {
        let plain = args(&[]);
        assert_eq!(plain.store, StoreUrl::Memory, "memory by default");
        assert_eq!(plain.store_prefix, "llm-tower-demo");
        let o = options(&plain).unwrap();
        assert!(!o.tuning.store.is_shared());
        assert_eq!(o.tuning.store.describe(), "memory");
        assert!(
            !o.tuning
                .changed_settings()
                .iter()
                .any(|c| c.setting.starts_with("store"))
        );
        assert_eq!(args(&["--store", "memory"]).store, StoreUrl::Memory);

        let a = args(&[
            "--store",
            "redis://:s3cret@127.0.0.1:6379/2",
            "--store-prefix",
            "team-a",
        ]);
        assert_eq!(
            a.store.redis_url(),
            Some("redis://:s3cret@127.0.0.1:6379/2")
        );
        assert_eq!(a.store_prefix, "team-a");
        assert!(!format!("{a:?}").contains("s3cret"), "{a:?}");
        // Connected in main, once: the options carry no connection yet.
        assert!(options(&a).is_ok());
        let a = args(&["--store", "rediss://cache.internal:6380"]);
        assert_eq!(a.store.redis_url(), Some("rediss://cache.internal:6380"));

        for bad in [
            "http://127.0.0.1:6379",
            "redis://",
            "redis://host:port",
            "127.0.0.1:6379",
            "mem",
        ] {
            let flags = ["llm-tower-demo", "--store", bad];
            let err = Args::try_parse_from(flags).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(
                err.to_string().contains("redis://HOST:PORT"),
                "{bad}: {err}"
            );
        }
        let err = options(&args(&["--store-prefix", "x"])).unwrap_err();
        assert!(err.contains("--store"), "{err}");
        let err = options(&args(&[
            "--store",
            "redis://127.0.0.1:6379",
            "--store-prefix",
            "a{b}",
        ]))
        .unwrap_err();
        assert!(err.contains("braces"), "{err}");
    }

    #[test]
    fn allow_insecure_http_goes_with_base_url() {
        let err = options(&args(&["--allow-insecure-http"])).unwrap_err();
        assert!(err.contains("--allow-insecure-http"), "{err}");
    }
}
