//! The Redis [`Store`].

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisResult, Script, ScriptInvocation, ServerErrorKind, Value};

use super::{
    Acquire, Balance, Bucket, Cell, Quota, Reservation, Reserve, Reserved, Span, Store, StoreError,
    Take,
};
use crate::clock::{Clock, TokioClock};

/// The default time allowed to each operation, round trip included: the
/// layers' own bound on a store operation
/// ([`DEFAULT_STORE_TIMEOUT`](super::DEFAULT_STORE_TIMEOUT)), so that the
/// store's error, not the layer's timeout, says what went wrong.
pub const DEFAULT_TIMEOUT: Duration = super::DEFAULT_STORE_TIMEOUT;

/// The default prefix, the hash tag of every key.
pub const DEFAULT_PREFIX: &str = "llm-tower";

/// Added to every key's time to live, in milliseconds: state is read against
/// the callers' clocks, while Redis expires keys on its own, so a key is
/// kept a minute past the time its state stops mattering, which absorbs any
/// skew between the hosts' clocks.
const TTL_MARGIN_MS: u64 = 60_000;

/// The largest integer a Lua number (a double) holds exactly.
const MAX_EXACT: u64 = 1 << 53;

/// How many more times an operation loads its script again when the
/// server keeps losing it (`SCRIPT FLUSH`, restarts) as it runs.
const MAX_RELOADS: u32 = 3;

/// Lease ends are rounded up to a whole second, as in [`MemoryStore`](super::MemoryStore).
const LEASE_GRANULE_US: u64 = 1_000_000;

macro_rules! script {
    ($name:ident, $file:literal) => {
        static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(concat!(include_str!("common.lua"), include_str!($file))));
    };
    ($name:ident, $file:literal, budget) => {
        static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("common.lua"),
                include_str!("budget.lua"),
                include_str!($file)
            ))
        });
    };
}

script!(TAKE, "take.lua");
script!(REFUND, "refund.lua");
script!(CHARGE, "charge.lua");
script!(HOLD, "hold.lua");
script!(ACQUIRE, "acquire.lua");
script!(SET_FLAG, "set_flag.lua");
script!(FLAG, "flag.lua");
script!(CLEAR_FLAG, "clear_flag.lua");
script!(RESERVE, "reserve.lua", budget);
script!(SETTLE, "settle.lua", budget);
script!(BALANCE, "balance.lua", budget);

/// A [`Store`] in Redis: limits and budgets shared by every process that
/// connects to the same server with the same prefix.
///
/// ```no_run
/// use std::time::Duration;
/// use llm_tower::store::RedisStore;
///
/// # async fn f() -> Result<(), llm_tower::store::StoreError> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// // Or, with every option:
/// let store = RedisStore::builder("redis://:secret@redis.internal:6379")
///     .prefix("llm-tower:prod")
///     .timeout(Duration::from_millis(100))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
///
/// # One script per operation
///
/// Every [`Store`] method is one Lua script, sent by its hash (`EVALSHA`)
/// and loaded again when the server has lost it (a restart, `SCRIPT
/// FLUSH`): one round trip on the happy path. A script decides and updates
/// every key it touches in one atomic step, so an [`acquire`](Store::acquire)
/// or a [`reserve`](Store::reserve) is all or nothing across its cells or
/// buckets, and across processes.
///
/// # Keys and Redis Cluster
///
/// Every key is `{<prefix>}:<family>:<key>`, where the family is `c` for a
/// rate-limit cell, `b` for a budget bucket, `f` for a flag, plus one key
/// `{<prefix>}:incarnation` (the counter of budget incarnations). The whole
/// prefix is the key's hash tag: one operation touches several keys at
/// once (a global cell and per-key cells, several budgets), and Redis
/// Cluster runs a script only on keys of one slot.
///
/// With the `redis-cluster` feature, [`RedisStore::cluster_builder`]
/// connects to a Redis (or Valkey) Cluster through redis' cluster client,
/// which sends each script to the shard that holds the prefix's slot,
/// follows `MOVED` and `ASK` redirections, and loads the scripts on every
/// primary. **All the keys of one store sit in one slot** (one shard): use
/// several prefixes (several stores) to spread unrelated limits over the
/// shards. A plain [`RedisStore::builder`] pointed at one node of a cluster
/// does not follow redirections, and fails on the slots other nodes hold.
///
/// ```no_run
/// # #[cfg(feature = "redis-cluster")]
/// # async fn f() -> Result<(), llm_tower::store::StoreError> {
/// use llm_tower::store::RedisStore;
///
/// let store = RedisStore::cluster_builder(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
///     .prefix("llm-tower:prod")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
///
/// # TLS
///
/// With the `redis-tls` feature, a `rediss://` URL connects over TLS
/// (rustls, with the ring provider): the server's certificate is checked
/// against the system's root certificates (and `SSL_CERT_FILE`), or
/// against a CA of your own
/// ([`tls_root_certificate`](RedisStoreBuilder::tls_root_certificate)); a
/// server that authenticates its clients gets
/// [`tls_client_certificate`](RedisStoreBuilder::tls_client_certificate).
/// Without the feature, a `rediss://` URL is refused at
/// [`connect`](RedisStoreBuilder::connect), saying so; certificates with a
/// plain `redis://` URL are refused too.
///
/// ```no_run
/// # #[cfg(feature = "redis-tls")]
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use llm_tower::store::RedisStore;
///
/// let store = RedisStore::builder("rediss://:secret@redis.internal:6380")
///     .tls_root_certificate(std::fs::read("/etc/redis/ca.pem")?)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
///
/// # Time
///
/// Time comes from the store's [`Clock`] ([`TokioClock`] by default), never
/// from the server: each call passes [`Clock::wall`] in, as **microseconds
/// since the Unix epoch** (Lua numbers are doubles, exact up to 2⁵³:
/// nanoseconds since the epoch would not be). Managed services refuse
/// `TIME` in scripts, and tests drive the clock. Processes sharing a store
/// should have synchronised clocks (NTP): a host whose clock runs ahead
/// sees cells refill early.
///
/// Counting in microseconds, the store rounds each quota's emission
/// interval `T` down to whole microseconds, at least 1 µs (a quota of more
/// than a million units per second is enforced at a million), and waits
/// and `retry_after`s are whole microseconds. Budget amounts are exact up
/// to 2⁵³ (9·10¹⁵ nano-dollars, nine million dollars).
///
/// # Expiry
///
/// Every key has a time to live in Redis, a minute longer than its state
/// matters (for skew between the clocks of the hosts and the server's):
///
/// - a rate-limit cell until it is full again (`TAT − now`);
/// - a flag until it ends;
/// - a [`Span::Fixed`] bucket `ttl` after its creation, and **never** with
///   `ttl: None` (a total for the key's whole life);
/// - a [`Span::Rolling`] bucket until its last lease ends and its last
///   spend stops counting (at most `window` + a slot + the lease);
/// - the incarnation counter 30 days after the last bucket was made.
///
/// A reservation never settled is released when its lease ends (leases are
/// kept inside their bucket, grouped by the second they end, as in
/// [`MemoryStore`](super::MemoryStore)), and disappears with its bucket.
///
/// # Semantics
///
/// Those of [`MemoryStore`](super::MemoryStore), with time counted from the
/// Unix epoch rather than from the store's creation: rolling slots and
/// lease ends are aligned on the epoch. [`Reserved::span`] is the span
/// given to `reserve` (use one span per key). Incarnations are drawn from a
/// counter shared by every process on the prefix.
///
/// # Failures
///
/// Each operation has a timeout (250 ms by default): a server that is down,
/// slow or restarting never hangs a call, which returns a [`StoreError`].
/// The connection is re-established in the background (redis'
/// `ConnectionManager`; on a cluster, its cluster client reconnects to each
/// node and refreshes the map of slots when a node moves or fails).
///
/// # Clone
///
/// Clones share one connection, which multiplexes concurrent calls.
pub struct RedisStore<C: Clock = TokioClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    conn: Conn,
    clock: C,
    /// `{prefix}:`
    prefix: String,
    timeout: Duration,
    /// The URL with its password hidden.
    url: String,
}

/// The connection under a store: one server, or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

/// What a builder connects to.
enum Target {
    Single(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl Target {
    /// The URLs with their passwords hidden, comma-separated.
    fn redacted(&self) -> String {
        match self {
            Target::Single(url) => redact_redis_url(url),
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(urls) => urls
                .iter()
                .map(|u| redact_redis_url(u))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The certificates of a TLS connection (`rediss://`), beyond the system's
/// roots.
#[derive(Default)]
struct TlsOptions {
    /// A root certificate (PEM) to trust instead of the system's.
    #[cfg(feature = "redis-tls")]
    root: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for servers that ask.
    #[cfg(feature = "redis-tls")]
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsOptions {
    #[cfg(feature = "redis-tls")]
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.root.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.root.clone(),
        })
    }

    /// Refuses a `rediss://` URL without TLS compiled in, and certificates
    /// given for plain URLs.
    fn check<'u>(
        &self,
        urls: impl Iterator<Item = &'u str>,
        redacted: &str,
    ) -> Result<(), StoreError> {
        let secure: Vec<bool> = urls
            .map(|u| u.trim_start().to_ascii_lowercase().starts_with("rediss://"))
            .collect();
        if cfg!(not(feature = "redis-tls")) && secure.iter().any(|s| *s) {
            return Err(StoreError::new(format!(
                "redis: {redacted} asks for TLS (rediss://), which needs llm-tower's \
                 `redis-tls` feature"
            )));
        }
        #[cfg(feature = "redis-tls")]
        if (self.root.is_some() || self.client.is_some()) && !secure.iter().all(|s| *s) {
            return Err(StoreError::new(format!(
                "redis: TLS certificates were given, but {redacted} is not a rediss:// URL"
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Tls");
        #[cfg(feature = "redis-tls")]
        {
            // Whether they are set, never what they hold (a key).
            d.field("root_certificate", &self.root.is_some())
                .field("client_certificate", &self.client.is_some());
        }
        d.finish()
    }
}

/// The options of a [`RedisStore`], from [`RedisStore::builder`] (or
/// `RedisStore::cluster_builder`, with the `redis-cluster` feature).
pub struct RedisStoreBuilder<C: Clock = TokioClock> {
    target: Target,
    tls: TlsOptions,
    prefix: String,
    timeout: Duration,
    clock: C,
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://[[user]:password@]host[:port][/db]`)
    /// with the default options.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the URL is invalid or the server does not answer
    /// within the timeout.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The options of a store on the server at `url`: prefix
    /// [`DEFAULT_PREFIX`], timeout [`DEFAULT_TIMEOUT`], [`TokioClock`].
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            target: Target::Single(url.to_owned()),
            tls: TlsOptions::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            clock: TokioClock::new(),
        }
    }

    /// Connects to the Redis Cluster that `nodes` belong to, with the
    /// default options. See [`cluster_builder`](Self::cluster_builder).
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if there is no node, a URL is invalid, or the
    /// cluster does not answer within the timeout.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub async fn connect_cluster<I>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::cluster_builder(nodes).connect().await
    }

    /// The options of a store on the Redis Cluster that `nodes` belong to
    /// (`redis://[[user]:password@]host[:port]` each; one node is enough,
    /// more are tried in turn when the first does not answer). The store
    /// learns the cluster's slots from them and sends every operation to
    /// the shard that holds its prefix's slot. Prefix [`DEFAULT_PREFIX`],
    /// timeout [`DEFAULT_TIMEOUT`], [`TokioClock`].
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_builder<I>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        RedisStoreBuilder {
            target: Target::Cluster(nodes.into_iter().map(|n| n.as_ref().to_owned()).collect()),
            tls: TlsOptions::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            clock: TokioClock::new(),
        }
    }
}

impl<C: Clock> RedisStoreBuilder<C> {
    /// The prefix of every key, also its hash tag: stores with different
    /// prefixes share nothing. It must not contain `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The time allowed to each operation, and to connecting.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Trusts `pem` (one or more certificates, PEM) as the root of the
    /// server's certificate chain, instead of the system's roots: for a
    /// server whose certificate a private CA signed. Only for `rediss://`
    /// URLs (a plain URL with certificates is refused at
    /// [`connect`](Self::connect)).
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root = Some(pem.into());
        self
    }

    /// Presents `certificate` (PEM) with its private `key` (PEM) to a
    /// server that authenticates its clients (`tls-auth-clients yes`):
    /// mutual TLS. Only for `rediss://` URLs. `Debug` never shows either.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_client_certificate(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((certificate.into(), key.into()));
        self
    }

    /// The clock whose wall time every operation passes to the server.
    pub fn clock<C2: Clock>(self, clock: C2) -> RedisStoreBuilder<C2> {
        RedisStoreBuilder {
            target: self.target,
            tls: self.tls,
            prefix: self.prefix,
            timeout: self.timeout,
            clock,
        }
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if a URL or the prefix is invalid, or if the
    /// server (or cluster) does not answer within the timeout.
    pub async fn connect(self) -> Result<RedisStore<C>, StoreError> {
        if self.prefix.contains('}') || self.prefix.contains('{') {
            return Err(StoreError::new("redis: the prefix must not contain braces"));
        }
        let url = self.target.redacted();
        let timeout = self.timeout;
        let conn = match &self.target {
            Target::Single(raw) => {
                self.tls.check(std::iter::once(raw.as_str()), &url)?;
                let invalid = |e| StoreError::with_source(format!("redis: invalid URL {url}"), e);
                #[cfg(feature = "redis-tls")]
                let client = match self.tls.certificates() {
                    Some(certificates) => redis::Client::build_with_tls(raw.as_str(), certificates),
                    None => redis::Client::open(raw.as_str()),
                }
                .map_err(invalid)?;
                #[cfg(not(feature = "redis-tls"))]
                let client = redis::Client::open(raw.as_str()).map_err(invalid)?;
                // One plain attempt first: the connection manager retries
                // a failed connection until the timeout, which would hide
                // why it failed (refused, a certificate, a password).
                let probe = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                within(
                    timeout,
                    &url,
                    client.get_multiplexed_async_connection_with_config(&probe),
                )
                .await?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(Duration::from_secs(1));
                let manager = within(
                    timeout,
                    &url,
                    ConnectionManager::new_with_config(client, config),
                )
                .await?;
                Conn::Single(manager)
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(StoreError::new("redis: a cluster needs at least one node"));
                }
                self.tls.check(nodes.iter().map(String::as_str), &url)?;
                let builder =
                    redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                        .connection_timeout(timeout)
                        .response_timeout(timeout);
                #[cfg(feature = "redis-tls")]
                let builder = match self.tls.certificates() {
                    Some(certificates) => builder.certs(certificates),
                    None => builder,
                };
                let client = builder.build().map_err(|e| {
                    StoreError::with_source(format!("redis: invalid cluster nodes {url}"), e)
                })?;
                Conn::Cluster(within(timeout, &url, client.get_async_connection()).await?)
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                clock: self.clock,
                prefix: format!("{{{}}}:", self.prefix),
                timeout: self.timeout,
                url,
            }),
        })
    }
}

/// Connecting, within `timeout`.
async fn within<T>(
    timeout: Duration,
    url: &str,
    connect: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| StoreError::new(format!("redis: no answer from {url} within {timeout:?}")))?
        .map_err(|e| {
            if e.is_timeout() {
                StoreError::with_source(
                    format!("redis: no answer from {url} within {timeout:?}"),
                    e,
                )
            } else {
                StoreError::with_source(format!("redis: cannot connect to {url}"), e)
            }
        })
}

impl<C: Clock> fmt::Debug for RedisStoreBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &self.target.redacted())
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Clone for RedisStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// `url` with its password, if any, replaced by `***`: the password of the
/// user info (`redis://user:password@host`), and the `pass` or `password`
/// parameters of a Unix socket's URL (`unix:///run/redis.sock?pass=…`).
/// What [`RedisStore`]'s `Debug`, [`url`](RedisStore::url) and errors
/// show; for showing a Redis URL of your own (a configuration, a log line).
///
/// ```
/// assert_eq!(
///     llm_tower::store::redact_redis_url("redis://:hunter2@cache:6379/0"),
///     "redis://:***@cache:6379/0"
/// );
/// ```
pub fn redact_redis_url(url: &str) -> String {
    let url = redact_userinfo(url);
    let Some(q) = url.find('?') else {
        return url;
    };
    let (head, query) = url.split_at(q + 1);
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if matches!(name, "pass" | "password") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}{}", query.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = match rest[..authority_end].rfind('@') {
        Some(at) => at,
        // A password with `/`, `?` or `#` in it, not percent-encoded
        // (`redis://:pa/ss@host`): the user info still ends at the last
        // `@` when a `:` comes before the first of those. Hiding too much
        // of a URL with an `@` in its query is the safe mistake.
        None => match rest.rfind('@') {
            Some(at) if rest[..authority_end].contains(':') => at,
            _ => return url.to_owned(),
        },
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        // `redis://secret@host`: a lone user info may be a password.
        None if !userinfo.is_empty() => "",
        None => return url.to_owned(),
    };
    format!("{scheme}{user}:***{}", &rest[at..])
}

/// A number as an argument for a script, capped where Lua stays exact.
fn exact(n: u128) -> u64 {
    n.min(u128::from(MAX_EXACT)) as u64
}

/// A duration in whole microseconds, for a script.
fn micros(d: Duration) -> u64 {
    exact(d.as_micros())
}

/// `T` in microseconds, rounded down, at least 1.
fn interval_us(q: Quota) -> u64 {
    micros(q.emission_interval()).max(1)
}

/// `n·T` in microseconds.
fn cost_us(n: u64, q: Quota) -> u64 {
    exact(u128::from(n) * u128::from(interval_us(q)))
}

/// The span's kind and parameters for a script.
fn span_args(span: Span) -> [String; 3] {
    match span {
        Span::Fixed { ttl } => [
            "f".to_owned(),
            ttl.map_or_else(|| "-1".to_owned(), |t| micros(t).to_string()),
            "0".to_owned(),
        ],
        Span::Rolling { window, slots } => {
            let w = micros(window);
            [
                "r".to_owned(),
                w.to_string(),
                (w / u64::from(slots.max(1))).max(1).to_string(),
            ]
        }
    }
}

fn unexpected(what: &str) -> StoreError {
    StoreError::new(format!("redis: unexpected reply to {what}"))
}

/// A number in a reply: an integer, or a decimal string (beyond `u64`,
/// saturated). Negative numbers are `None`.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => {
            let s = std::str::from_utf8(b).ok()?;
            if s.starts_with('-') {
                return None;
            }
            s.parse::<u64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(|f| f as u64))
        }
        Value::SimpleString(s) => number(&Value::BulkString(s.clone().into_bytes())),
        _ => None,
    }
}

fn array<'v>(v: &'v Value, what: &str) -> Result<&'v [Value], StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        _ => Err(unexpected(what)),
    }
}

fn num_at(items: &[Value], i: usize, what: &str) -> Result<u64, StoreError> {
    items
        .get(i)
        .and_then(number)
        .ok_or_else(|| unexpected(what))
}

impl<C: Clock> RedisStore<C> {
    /// The connection's URL (a cluster's: its nodes' URLs, comma-separated),
    /// with passwords hidden.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Now on the store's clock, in microseconds since the Unix epoch.
    fn now_us(&self) -> u64 {
        let since = self
            .inner
            .clock
            .wall()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        micros(since)
    }

    fn key(&self, family: &str, key: &str) -> String {
        let prefix = &self.inner.prefix;
        let mut k = String::with_capacity(prefix.len() + family.len() + 1 + key.len());
        k.push_str(prefix);
        k.push_str(family);
        k.push(':');
        k.push_str(key);
        k
    }

    fn counter(&self) -> String {
        format!("{}incarnation", self.inner.prefix)
    }

    /// Runs `script` on `keys` and `args`, within the timeout.
    fn run(
        &self,
        what: &'static str,
        script: &'static LazyLock<Script>,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> impl Future<Output = Result<Value, StoreError>> + Send + 'static {
        let conn = self.inner.conn.clone();
        let timeout = self.inner.timeout;
        async move {
            let script: &'static Script = script;
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            for a in args {
                invocation.arg(a);
            }
            let invoke = async {
                match conn {
                    Conn::Single(mut con) => invoke(&invocation, &mut con).await,
                    #[cfg(feature = "redis-cluster")]
                    Conn::Cluster(mut con) => invoke(&invocation, &mut con).await,
                }
            };
            match tokio::time::timeout(timeout, invoke).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(StoreError::with_source(format!("redis: {what} failed"), e)),
                Err(_) => Err(StoreError::new(format!(
                    "redis: {what} timed out after {timeout:?}"
                ))),
            }
        }
    }
}

/// Runs `invocation` on `con`. `invoke_async` loads a missing script and
/// tries once more; a second `SCRIPT FLUSH` (or a restart) between its load
/// and that try would fail the operation: go on while the server keeps
/// losing the script (the caller's timeout bounds it all).
async fn invoke(
    invocation: &ScriptInvocation<'static>,
    con: &mut (impl ConnectionLike + Send),
) -> RedisResult<Value> {
    let mut reloads = 0;
    loop {
        match invocation.invoke_async::<Value>(con).await {
            Err(e)
                if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
                    && reloads < MAX_RELOADS =>
            {
                reloads += 1;
            }
            done => return done,
        }
    }
}

fn margin() -> String {
    TTL_MARGIN_MS.to_string()
}

impl<C: Clock> Store for RedisStore<C> {
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send {
        let never = amount > quota.limit();
        let t = interval_us(quota);
        let args = vec![
            self.now_us().to_string(),
            cost_us(amount, quota).to_string(),
            t.to_string(),
            cost_us(quota.limit(), quota).to_string(),
            margin(),
        ];
        let run = (!never).then(|| self.run("take", &TAKE, vec![self.key("c", key)], args));
        async move {
            let Some(run) = run else {
                return Ok(Take::Never);
            };
            let v = run.await?;
            let items = array(&v, "take")?;
            let n = num_at(items, 1, "take")?;
            match num_at(items, 0, "take")? {
                1 => Ok(Take::Allowed { remaining: n }),
                _ => Ok(Take::Denied {
                    retry_after: Duration::from_micros(n),
                }),
            }
        }
    }

    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let args = vec![
            self.now_us().to_string(),
            cost_us(amount, quota).to_string(),
            margin(),
        ];
        let run = self.run("refund", &REFUND, vec![self.key("c", key)], args);
        async move { run.await.map(drop) }
    }

    fn acquire(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> impl Future<Output = Result<Acquire, StoreError>> + Send {
        let early = if let Some(index) = cells.iter().position(|c| c.amount > c.quota.limit()) {
            Some(Ok(Acquire::Never { index }))
        } else {
            let mut keys: Vec<&str> = cells.iter().map(|c| c.key).collect();
            keys.sort_unstable();
            keys.windows(2)
                .any(|w| w[0] == w[1])
                .then(|| Err(StoreError::new("acquire: two cells share a key")))
        };
        let run = early.is_none().then(|| {
            let mut keys: Vec<String> = cells.iter().map(|c| self.key("c", c.key)).collect();
            let mut args = Vec::with_capacity(5 + 3 * cells.len());
            args.push(self.now_us().to_string());
            args.push(micros(horizon).to_string());
            args.push(margin());
            args.push(cells.len().to_string());
            args.push(u8::from(pause.is_some()).to_string());
            for c in cells {
                let keep = c.keep.min(c.quota.limit() - c.amount);
                args.push(cost_us(c.amount + keep, c.quota).to_string());
                args.push(cost_us(c.amount, c.quota).to_string());
                args.push(cost_us(c.quota.limit(), c.quota).to_string());
            }
            if let Some(p) = pause {
                keys.push(self.key("f", p));
            }
            self.run("acquire", &ACQUIRE, keys, args)
        });
        async move {
            if let Some(early) = early {
                return early;
            }
            let v = run.expect("run when not early").await?;
            let items = array(&v, "acquire")?;
            let wait = Duration::from_micros(num_at(items, 1, "acquire")?);
            match num_at(items, 0, "acquire")? {
                1 => Ok(Acquire::Granted { wait }),
                _ => Ok(Acquire::Denied { retry_after: wait }),
            }
        }
    }

    fn charge(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let run = (amount > 0).then(|| {
            let args = vec![
                self.now_us().to_string(),
                cost_us(amount, quota).to_string(),
                margin(),
            ];
            self.run("charge", &CHARGE, vec![self.key("c", key)], args)
        });
        async move {
            match run {
                Some(run) => run.await.map(drop),
                None => Ok(()),
            }
        }
    }

    fn hold(
        &self,
        key: &str,
        _quota: Quota,
        at_least: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let run = (!at_least.is_zero()).then(|| {
            let args = vec![
                self.now_us().to_string(),
                micros(at_least).max(1).to_string(),
                margin(),
            ];
            self.run("hold", &HOLD, vec![self.key("c", key)], args)
        });
        async move {
            match run {
                Some(run) => run.await.map(drop),
                None => Ok(()),
            }
        }
    }

    fn reserve(
        &self,
        buckets: &[Bucket<'_>],
        lease: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send {
        let mut sorted: Vec<&str> = buckets.iter().map(|b| b.key).collect();
        sorted.sort_unstable();
        let duplicate = sorted.windows(2).any(|w| w[0] == w[1]);
        let now = self.now_us();
        let lease_end = exact(
            u128::from(now)
                .saturating_add(lease.as_micros())
                .div_ceil(u128::from(LEASE_GRANULE_US))
                * u128::from(LEASE_GRANULE_US),
        );
        let run = (!duplicate).then(|| {
            let mut keys: Vec<String> = buckets.iter().map(|b| self.key("b", b.key)).collect();
            keys.push(self.counter());
            let mut args = Vec::with_capacity(4 + 5 * buckets.len());
            args.push(now.to_string());
            args.push(lease_end.to_string());
            args.push(margin());
            args.push(buckets.len().to_string());
            for b in buckets {
                args.push(b.amount.to_string());
                args.push(b.limit.to_string());
                args.extend(span_args(b.span));
            }
            self.run("reserve", &RESERVE, keys, args)
        });
        let parts: Vec<(Arc<str>, u64, Span)> = buckets
            .iter()
            .map(|b| (Arc::from(b.key), b.amount, b.span))
            .collect();
        async move {
            let Some(run) = run else {
                return Err(StoreError::new("reserve: two buckets share a key"));
            };
            let v = run.await?;
            let items = array(&v, "reserve")?;
            if num_at(items, 0, "reserve")? == 1 {
                if items.len() != parts.len() + 1 {
                    return Err(unexpected("reserve"));
                }
                let parts: Box<[Reserved]> = parts
                    .into_iter()
                    .zip(&items[1..])
                    .map(|((key, amount, span), created)| {
                        let created = number(created).ok_or_else(|| unexpected("reserve"))?;
                        Ok(Reserved::new(key, amount, span, created, lease_end))
                    })
                    .collect::<Result<_, StoreError>>()?;
                return Ok(Reserve::Granted(Reservation::new(parts)));
            }
            let index =
                usize::try_from(num_at(items, 1, "reserve")?).map_err(|_| unexpected("reserve"))?;
            Ok(Reserve::Denied {
                index,
                spent: num_at(items, 2, "reserve")?,
                reserved: num_at(items, 3, "reserve")?,
                retry_after: items.get(4).and_then(number).map(Duration::from_micros),
            })
        }
    }

    fn settle(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> impl Future<Output = Result<Vec<Balance>, StoreError>> + Send {
        let parts = reservation.parts();
        let n = parts.len();
        let run = (actual.len() == n).then(|| {
            let mut keys: Vec<String> = parts.iter().map(|p| self.key("b", p.key())).collect();
            keys.push(self.counter());
            let mut args = Vec::with_capacity(3 + 7 * n);
            args.push(self.now_us().to_string());
            args.push(margin());
            args.push(n.to_string());
            for (p, a) in parts.iter().zip(actual) {
                args.push(p.created().to_string());
                args.push(p.lease().to_string());
                args.push(p.amount().to_string());
                args.push(a.to_string());
                args.extend(span_args(p.span()));
            }
            self.run("settle", &SETTLE, keys, args)
        });
        async move {
            let Some(run) = run else {
                return Err(StoreError::new(
                    "settle: needs one actual amount per bucket of the reservation",
                ));
            };
            let v = run.await?;
            let items = array(&v, "settle")?;
            if items.len() != 2 * n {
                return Err(unexpected("settle"));
            }
            items
                .chunks(2)
                .map(|pair| {
                    Ok(Balance {
                        spent: num_at(pair, 0, "settle")?,
                        reserved: num_at(pair, 1, "settle")?,
                    })
                })
                .collect()
        }
    }

    /// The balance of `key`, counted with the span the bucket was made
    /// with (`span` is not read).
    fn balance(
        &self,
        key: &str,
        _span: Span,
    ) -> impl Future<Output = Result<Balance, StoreError>> + Send {
        let run = self.run(
            "balance",
            &BALANCE,
            vec![self.key("b", key)],
            vec![self.now_us().to_string()],
        );
        async move {
            let v = run.await?;
            let items = array(&v, "balance")?;
            Ok(Balance {
                spent: num_at(items, 0, "balance")?,
                reserved: num_at(items, 1, "balance")?,
            })
        }
    }

    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let args = vec![self.now_us().to_string(), micros(ttl).to_string(), margin()];
        let run = self.run("set_flag", &SET_FLAG, vec![self.key("f", key)], args);
        async move { run.await.map(drop) }
    }

    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        let run = self.run(
            "flag",
            &FLAG,
            vec![self.key("f", key)],
            vec![self.now_us().to_string()],
        );
        async move {
            let v = run.await?;
            Ok(number(&v).map(Duration::from_micros))
        }
    }

    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let run = self.run("clear_flag", &CLEAR_FLAG, vec![self.key("f", key)], vec![]);
        async move { run.await.map(drop) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the `redis-tls` feature, a `rediss://` URL is refused with
    /// the reason, before any connection (CI runs this build's unit tests).
    #[cfg(not(feature = "redis-tls"))]
    #[tokio::test]
    async fn tls_urls_need_the_feature() {
        let err = RedisStore::connect("rediss://:hunter2@127.0.0.1:1")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("`redis-tls` feature"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn urls_never_show_passwords() {
        assert_eq!(
            redact_redis_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_redis_url("redis://:hunter2@redis.internal:6379/0"),
            "redis://:***@redis.internal:6379/0"
        );
        assert_eq!(
            redact_redis_url("rediss://alice:hunter2@redis.internal"),
            "rediss://alice:***@redis.internal"
        );
        assert_eq!(
            redact_redis_url("redis://hunter2@redis.internal"),
            "redis://:***@redis.internal"
        );
        assert_eq!(redact_redis_url("redis://h/0?x=a@b"), "redis://h/0?x=a@b");
        assert_eq!(
            redact_redis_url("redis://:pa/ss?#@h:6379"),
            "redis://:***@h:6379"
        );
        assert_eq!(redact_redis_url("redis://u:pa/ss@h/0"), "redis://u:***@h/0");
        assert_eq!(
            redact_redis_url("unix:///run/redis.sock?db=1&pass=hunter2"),
            "unix:///run/redis.sock?db=1&pass=***"
        );
        let builder = RedisStore::builder("redis://alice:hunter2@h:1").prefix("p");
        let debug = format!("{builder:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("alice:***@h:1"), "{debug}");
    }

    #[test]
    fn arguments_in_microseconds() {
        let q = Quota::new(3, Duration::from_secs(1)).unwrap();
        assert_eq!(interval_us(q), 333_333);
        assert_eq!(cost_us(3, q), 999_999);
        let fast = Quota::new(1_000, Duration::from_micros(1)).unwrap();
        assert_eq!(interval_us(fast), 1, "at least 1 µs");
        assert_eq!(micros(Duration::MAX), MAX_EXACT);
        assert_eq!(
            span_args(Span::Rolling {
                window: Duration::from_secs(60),
                slots: 6
            }),
            ["r", "60000000", "10000000"]
        );
        assert_eq!(span_args(Span::Fixed { ttl: None }), ["f", "-1", "0"]);
    }
}
