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

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use llm_tower_demo::{
    ApiFormat, Chaos, Endpoint, Options, Side, Target, Tuning, Workload, plot, run,
};

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
    /// Anthropic; https:// (rustls, the platform's roots or SSL_CERT_FILE's)
    /// or http://. Needs --provider, --model and --api-key.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// The API key of --base-url (sent as `authorization: Bearer` or
    /// `x-api-key`).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The wire format of --base-url.
    #[arg(long, value_enum)]
    provider: Option<ApiFormat>,
    /// The model to ask --base-url for.
    #[arg(long, value_name = "M")]
    model: Option<String>,
}

/// Checks the flags clap cannot, and builds the run's options.
fn options(args: &Args) -> Result<Options, String> {
    let mut workload = Workload {
        requests: args.requests as usize,
        concurrency: args.concurrency as usize,
        seed: args.seed,
        all_stream: args.stream,
        pace: Duration::ZERO,
    };
    let (target, tuning) = match &args.base_url {
        None => {
            if args.provider.is_some() || args.model.is_some() || args.api_key.is_some() {
                return Err("--provider, --model and --api-key go with --base-url".to_owned());
            }
            let chaos = Chaos::new(args.seed);
            workload.pace = chaos.pace(workload.concurrency);
            (Target::Mock(chaos), Tuning::for_mock())
        }
        Some(url) => {
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
                args.api_key.as_deref().expect("checked"),
            )?;
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
        tuning,
        progress: !args.json,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let options = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
