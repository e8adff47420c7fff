//! The mock provider as a command: point any client at it.
//!
//! ```sh
//! cargo run -p llm-tower-mock -- --port 8080 --chaos
//! cargo run -p llm-tower-mock -- --port 8080 --fault 'rate-limited=2s,p=0.2' --rpm 60
//! cargo run -p llm-tower-mock -- --config mock.toml
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use llm_tower_mock::{MockConfig, MockServer, Rule};

/// A fault-injecting mock LLM provider (OpenAI, Anthropic and Gemini wire
/// formats) on loopback.
///
/// OpenAI clients take http://HOST:PORT/v1 as their base URL, Anthropic
/// and Gemini clients http://HOST:PORT. The journal of every attempt is at
/// GET /__mock/journal; rules can be added at POST /__mock/rules.
#[derive(Debug, Parser)]
#[command(name = "llm-tower-mock", version)]
struct Args {
    /// Address to listen on. Only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 8080)]
    port: u16,
    /// A configuration file (.toml or .json); flags given too override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Seed of content and chance.
    #[arg(long)]
    seed: Option<u64>,
    /// A fault rule, repeatable: FAULT[=ARG][,p=P][,times=N][,model=M]
    /// [,provider=openai|anthropic|gemini][,stream=true|false][,during=10s..20s].
    /// Faults: rate-limited[=2s], insufficient-quota, context-length,
    /// overloaded, outage, status=503, latency=200ms[+100ms],
    /// slow-first-byte=5s, slow-first-token=5s[:KEEPALIVE], stall=TOKENS:10s,
    /// drop=N, truncate=N, malformed=N, error-event=N; OpenAI stream shapes
    /// empty-deltas=N, no-done.
    #[arg(long = "fault", short = 'f', value_name = "SPEC")]
    faults: Vec<Rule>,
    /// A ready chaos profile: rate limits, 500/503/529, slow first tokens,
    /// cut streams, and an outage from 20 s to 30 s.
    #[arg(long)]
    chaos: bool,
    /// Requests per minute, per model.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute, per model: prompt and max_tokens, counted on
    /// arrival and kept (OpenAI's TPM).
    #[arg(long)]
    tpm: Option<u32>,
    /// Input tokens per minute, per model (Anthropic's ITPM).
    #[arg(long)]
    itpm: Option<u32>,
    /// Output tokens per minute, per model (Anthropic's OTPM): max_tokens
    /// on arrival, the unused part given back when the answer ends.
    #[arg(long)]
    otpm: Option<u32>,
    /// Time before the headers of every answer (e.g. 50ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    first_byte: Option<Duration>,
    /// Time before each token of a stream (e.g. 10ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    token_interval: Option<Duration>,
    /// Require this API key (bearer, x-api-key or x-goog-api-key).
    #[arg(long)]
    api_key: Option<String>,
}

/// The rules of `--chaos`.
const CHAOS: &[&str] = &[
    "latency=20ms+80ms",
    "rate-limited=1s,p=0.08",
    "status=500,p=0.04",
    "overloaded,p=0.04",
    "slow-first-token=2s,p=0.05",
    "drop=5,p=0.04",
    "truncate=8,p=0.03",
    "error-event=0,p=0.03",
    "outage,during=20s..30s",
];

fn config(args: &Args) -> Result<MockConfig, String> {
    let mut config = match &args.config {
        Some(path) => MockConfig::from_file(path).map_err(|e| e.to_string())?,
        None => MockConfig::default(),
    };
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if args.chaos {
        config.rules.extend(
            CHAOS
                .iter()
                .map(|s| s.parse::<Rule>().expect("chaos rules parse")),
        );
    }
    config.rules.extend(args.faults.iter().cloned());
    if let Some(n) = args.rpm {
        config.quota.requests_per_minute = Some(n);
    }
    if let Some(n) = args.tpm {
        config.quota.tokens_per_minute = Some(n);
    }
    if let Some(n) = args.itpm {
        config.quota.input_tokens_per_minute = Some(n);
    }
    if let Some(n) = args.otpm {
        config.quota.output_tokens_per_minute = Some(n);
    }
    if let Some(d) = args.first_byte {
        config.timing.first_byte = d;
    }
    if let Some(d) = args.token_interval {
        config.timing.token_interval = d;
    }
    if let Some(k) = &args.api_key {
        config.api_key = Some(k.clone());
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !args.host.is_loopback() {
        eprintln!(
            "error: --host {} is not a loopback address; the mock only serves this machine",
            args.host
        );
        return ExitCode::from(2);
    }
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rules = config.rules.len();
    let mut server = match MockServer::bind(config, SocketAddr::new(args.host, args.port)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Written, not `println!`: a reader that closes the pipe after the
    // first line (a script, a test) must not kill the mock with a panic
    // on a broken pipe.
    say(&format!(
        "llm-tower-mock listening on {url}\n  OpenAI base URL:    {}\n  Anthropic base URL: {url}\n  journal:            {url}/__mock/journal\n  fault rules:        {rules}",
        server.openai_base_url(),
        url = server.url(),
    ));
    tokio::select! {
        _ = server.serve_forever() => ExitCode::from(1),
        _ = tokio::signal::ctrl_c() => {
            say(&format!("stopping after {} requests", server.journal().len()));
            ExitCode::SUCCESS
        }
    }
}

/// A line on stdout, if anyone still reads it.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chaos_profile_parses() {
        let args = Args::parse_from([
            "llm-tower-mock",
            "--chaos",
            "--rpm",
            "60",
            "-f",
            "status=503,times=1",
        ]);
        let c = config(&args).unwrap();
        assert_eq!(c.rules.len(), CHAOS.len() + 1);
        assert_eq!(c.quota.requests_per_minute, Some(60));
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(Args::try_parse_from(["llm-tower-mock", "-f", "explode"]).is_err());
        let args = Args::parse_from(["llm-tower-mock", "--rpm", "0"]);
        assert!(config(&args).unwrap_err().contains("refuses everything"));
        for flag in ["--itpm", "--otpm"] {
            let args = Args::parse_from(["llm-tower-mock", flag, "0"]);
            assert!(
                config(&args).unwrap_err().contains("refuses everything"),
                "{flag}"
            );
        }
    }

    #[test]
    fn input_and_output_token_flags_set_the_quota() {
        let args = Args::parse_from([
            "llm-tower-mock",
            "--rpm",
            "50",
            "--itpm",
            "30000",
            "--otpm",
            "8000",
        ]);
        let c = config(&args).unwrap();
        assert_eq!(
            c.quota,
            llm_tower_mock::Quota::per_minute()
                .requests(50)
                .input_tokens(30_000)
                .output_tokens(8_000)
        );
    }
}
