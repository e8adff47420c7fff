//! A Redis server for tests: `LLM_TOWER_REDIS_URL`, or a `redis-server`
//! started on a free port for the test (killed when dropped). Without
//! either, [`server`] says loudly that the test is skipped and returns
//! `None`, unless `LLM_TOWER_REQUIRE_REDIS=1`, which makes it a failure.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A Redis server to test against.
#[derive(Debug)]
pub struct RedisServer {
    url: String,
    port: Option<u16>,
    child: Option<Child>,
}

impl RedisServer {
    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the server was started for the test (it can be killed,
    /// restarted and sent `DEBUG`), rather than external.
    pub fn is_local(&self) -> bool {
        self.port.is_some()
    }

    /// Kills the server started for the test (nothing for an external one).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Writes the data set to disk (`SAVE`), for a restart to load it as
    /// Redis does after a restart with persistence. `false` for an external
    /// server, or when the server did not confirm.
    pub fn save(&self) -> bool {
        let Some(port) = self.port else { return false };
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"SAVE\r\n").is_err() {
            return false;
        }
        let mut buf = [0; 5];
        s.read_exact(&mut buf).is_ok() && &buf == b"+OK\r\n"
    }

    /// Starts the test's server again on the same port: a restart. It has
    /// no scripts loaded, and holds what the last [`save`](Self::save)
    /// wrote (nothing otherwise). `false` for an external server.
    pub fn restart(&mut self) -> bool {
        self.kill();
        let Some(port) = self.port else { return false };
        match start(port) {
            Some(child) => {
                self.child = Some(child);
                true
            }
            None => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(port) = self.port {
            let dir =
                std::env::temp_dir().join(format!("llm-tower-redis-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A key prefix no other test, process or run uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("test:{test}:{}:{nanos}", std::process::id())
}

/// A server for one test, or `None` (with a loud message) if there is none
/// and `LLM_TOWER_REQUIRE_REDIS` is not `1`.
pub fn server() -> Option<RedisServer> {
    if let Ok(url) = std::env::var("LLM_TOWER_REDIS_URL")
        && !url.is_empty()
    {
        return Some(RedisServer {
            url,
            port: None,
            child: None,
        });
    }
    own_server()
}

/// A server the test starts itself, whatever `LLM_TOWER_REDIS_URL` says:
/// for tests that stop, restart or slow it down. `None` (with a loud
/// message) when no `redis-server` can be started and
/// `LLM_TOWER_REQUIRE_REDIS` is not `1`.
pub fn own_server() -> Option<RedisServer> {
    for _ in 0..3 {
        let Some(port) = free_port() else { break };
        if let Some(child) = start(port) {
            return Some(RedisServer {
                url: format!("redis://127.0.0.1:{port}"),
                port: Some(port),
                child: Some(child),
            });
        }
        if !has_redis_server() {
            break;
        }
    }
    skipped(
        "Redis (set LLM_TOWER_REDIS_URL or install redis-server; \
         or the test needs a server of its own)",
    );
    None
}

/// Starts `redis-server` on `port` with `extra` arguments, answering at
/// `url`; `None` if it does not answer PING on `port` within 5 s.
pub fn start_server(port: u16, extra: &[String], url: String) -> Option<RedisServer> {
    let child = start_with(port, extra)?;
    Some(RedisServer {
        url,
        port: Some(port),
        child: Some(child),
    })
}

/// Fails the test when `LLM_TOWER_REQUIRE_REDIS=1`; says loudly that the
/// tests needing `what` are skipped otherwise.
pub fn skipped(what: &str) {
    if std::env::var("LLM_TOWER_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("no {what}, and LLM_TOWER_REQUIRE_REDIS=1");
    }
    // Written to the process's stderr directly, past the test harness's
    // capture, so that a skip is seen even when the tests pass; once per
    // test binary.
    static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.iter().any(|w| w == what) {
        said.push(what.to_owned());
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: no {what}: the tests of this binary that need it pass without running ***\n"
        );
    }
}

/// A Redis Cluster of three primaries to test against.
#[derive(Debug)]
pub struct RedisCluster {
    urls: Vec<String>,
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// The nodes' URLs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}

/// A cluster for one test: `LLM_TOWER_REDIS_CLUSTER` (its nodes' URLs,
/// comma-separated), or three `redis-server`s in cluster mode started for
/// the test (killed when dropped). `None`, with a loud message, when there
/// is neither and `LLM_TOWER_REQUIRE_REDIS` is not `1`.
pub fn cluster() -> Option<RedisCluster> {
    if let Ok(urls) = std::env::var("LLM_TOWER_REDIS_CLUSTER")
        && !urls.is_empty()
    {
        return Some(RedisCluster {
            urls: urls.split(',').map(str::to_owned).collect(),
            nodes: Vec::new(),
        });
    }
    if let Some(cluster) = own_cluster() {
        return Some(cluster);
    }
    skipped(
        "a Redis Cluster (set LLM_TOWER_REDIS_CLUSTER, or install redis-server 7 and redis-cli)",
    );
    None
}

/// Three primaries on free ports (each with a free port for its cluster
/// bus, `cluster-port`, Redis 7), joined by `redis-cli --cluster create`,
/// once every node says `cluster_state:ok`.
fn own_cluster() -> Option<RedisCluster> {
    if major_version().is_none_or(|v| v < 7) {
        return None;
    }
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (port, bus) = (free_port()?, free_port()?);
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            &bus.to_string(),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ]
        .map(str::to_owned);
        let child = start_with(port, &extra)?;
        nodes.push(RedisServer {
            url: format!("redis://127.0.0.1:{port}"),
            port: Some(port),
            child: Some(child),
        });
    }
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port.unwrap_or_default()))
        .collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !created {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if nodes.iter().all(|n| cluster_ok(n.port.unwrap_or_default())) {
            return Some(RedisCluster {
                urls: nodes.iter().map(|n| n.url.clone()).collect(),
                nodes,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
}

fn has_redis_server() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port nothing listens on now.
pub fn free_port() -> Option<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    Some(listener.local_addr().ok()?.port())
}

/// The major version of the installed `redis-server`, if it says.
fn major_version() -> Option<u32> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    v.split('.').next()?.parse().ok()
}

/// Starts `redis-server` on `port` and waits (at most 5 s) until it
/// answers PING. From Redis 7 on, `DEBUG` (the tests' slow server) is
/// allowed from local connections.
fn start(port: u16) -> Option<Child> {
    start_with(port, &[])
}

/// [`start`], with more arguments for the server.
fn start_with(port: u16, extra: &[String]) -> Option<Child> {
    // Its own directory (a restart on the same port reads what `save`
    // wrote there), never the test's working directory.
    let dir = std::env::temp_dir().join(format!("llm-tower-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir.to_str()?,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if major_version().is_some_and(|v| v >= 7) {
        args.extend(["--enable-debug-command".to_owned(), "local".to_owned()]);
    }
    args.extend_from_slice(extra);
    let mut child = Command::new("redis-server")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if ping(port) {
            return Some(child);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
