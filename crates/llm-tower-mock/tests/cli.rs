//! The command-line binary: it serves on the port it prints, takes faults
//! from flags and files, and refuses bad flags with a reason.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_llm-tower-mock");

/// Kills the server when the test ends, whatever happens.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary on a free port and returns it with its base URL.
fn start(args: &[&str]) -> (Server, String) {
    let mut child = Command::new(BIN)
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("llm-tower-mock listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    (Server(child), url)
}

#[tokio::test]
async fn flags_script_the_faults_and_the_journal_is_served() {
    let (_server, url) = start(&["--seed", "3", "-f", "status=503,times=1", "--rpm", "100"]);
    let c = client();
    let body = openai("gpt-4o", false, "from the command line");
    let first = post(&c, &url, OPENAI, &body).await;
    assert_eq!(first.status, 503);
    let second = post(&c, &url, OPENAI, &body).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-ratelimit-limit-requests"), Some("100"));
    let journal = get(&c, &format!("{url}/__mock/journal")).await.json();
    assert_eq!(journal.as_array().unwrap().len(), 2);
    assert_eq!(journal[0]["faults"][0], "status_503");
    assert_eq!(journal[1]["attempt"], 2);
}

#[tokio::test]
async fn input_and_output_token_flags_are_served_as_anthropic_headers() {
    let (_server, url) = start(&["--itpm", "30000", "--otpm", "8000"]);
    let c = client();
    let r = post(
        &c,
        &url,
        ANTHROPIC,
        &anthropic("claude-haiku-4-5", false, "x"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("anthropic-ratelimit-input-tokens-limit"),
        Some("30000")
    );
    assert_eq!(
        r.header("anthropic-ratelimit-output-tokens-limit"),
        Some("8000")
    );
    // The output limit is the more restrictive one.
    assert_eq!(r.header("anthropic-ratelimit-tokens-limit"), Some("8000"));
}

#[tokio::test]
async fn a_config_file_is_read() {
    let path = std::env::temp_dir().join(format!("llm-tower-mock-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "seed = 9\n[[rules]]\nfault = { kind = \"overloaded\" }\nmatch = { provider = \"anthropic\" }\n",
    )
    .unwrap();
    let (_server, url) = start(&["--config", path.to_str().unwrap()]);
    let c = client();
    let r = post(
        &c,
        &url,
        ANTHROPIC,
        &anthropic("claude-haiku-4-5", false, "x"),
    )
    .await;
    assert_eq!(r.status, 529);
    let r = post(&c, &url, OPENAI, &openai("gpt-4o", false, "x")).await;
    assert_eq!(r.status, 200);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bad_flags_exit_non_zero_with_a_reason() {
    for (args, needle) in [
        (&["-f", "explode"][..], "unknown fault `explode`"),
        (&["--rpm", "0"], "refuses everything"),
        (&["--itpm", "0"], "refuses everything"),
        (&["--otpm", "0"], "refuses everything"),
        (&["--otpm", "lots"], "invalid value"),
        (&["--host", "0.0.0.0"], "not a loopback address"),
        (&["--config", "/nonexistent/mock.toml"], "cannot read"),
        (&["--token-interval", "fast"], "invalid value"),
    ] {
        let out = Command::new(BIN)
            .args(["--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Nobody reads the banner (stdout closed at once, as `| head -0` would):
/// the mock goes on serving instead of dying on the broken pipe.
#[tokio::test]
async fn a_closed_stdout_does_not_stop_the_mock() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let server = Server(child);
    let url = format!("http://127.0.0.1:{port}");
    // Polls until it listens (real time: a separate process).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let r = post(&client(), &url, OPENAI, &openai("gpt-4o", false, "x")).await;
    assert_eq!(r.status, 200);
    drop(server);
}
