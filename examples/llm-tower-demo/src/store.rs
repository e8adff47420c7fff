//! Where the stack's rate limiter and budget keep their state: in the
//! process (`--store memory`, the default) or in Redis (`--store
//! redis://HOST:PORT[/DB]`), so that several demo processes share one
//! quota and one budget.

use std::{fmt, str::FromStr, time::Duration};

use llm_tower::store::{
    Acquire, Balance, Bucket, Cell, MemoryStore, Quota, RedisStore, Reservation, Reserve, Span,
    Store, StoreError, Take,
};

/// The prefix of every key the demo writes in Redis: demo processes on the
/// same server and database share it, and with it their limits and budgets.
pub const REDIS_PREFIX: &str = "llm-tower-demo";

/// The time allowed to connecting to Redis and to each operation: more
/// than the library's default (250 ms), since a laptop's Redis may stall
/// briefly under the demo's bursts.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The store of the stack's rate limiter and budget.
///
/// `Memory` in a [`Tuning`](crate::Tuning) means a fresh [`MemoryStore`]
/// for every stack built from it (see [`for_stack`](Self::for_stack)), as
/// the layers make by default; `Redis` is one connection shared by every
/// stack, made once at start.
#[derive(Clone, Debug)]
pub enum DemoStore {
    /// In this process.
    Memory(MemoryStore),
    /// In Redis, shared by every process connected to it.
    Redis(RedisStore),
}

impl Default for DemoStore {
    fn default() -> Self {
        DemoStore::Memory(MemoryStore::new())
    }
}

impl DemoStore {
    /// Connects to the Redis server at `url` with the demo's prefix
    /// ([`REDIS_PREFIX`]) and timeout ([`REDIS_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the server does not answer.
    pub async fn redis(url: &str) -> Result<Self, StoreError> {
        Self::redis_with_prefix(url, REDIS_PREFIX).await
    }

    /// [`redis`](Self::redis) with another prefix: stores with different
    /// prefixes share nothing (the tests give each run its own).
    ///
    /// # Errors
    ///
    /// When the URL or the prefix is invalid, or the server does not answer.
    pub async fn redis_with_prefix(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let store = RedisStore::builder(url)
            .prefix(prefix)
            .timeout(REDIS_TIMEOUT)
            .connect()
            .await?;
        Ok(DemoStore::Redis(store))
    }

    /// The store of one stack: a fresh [`MemoryStore`] (each stack its own
    /// limits and budget, as before there was a choice), or this Redis
    /// connection (shared).
    pub fn for_stack(&self) -> Self {
        match self {
            DemoStore::Memory(_) => DemoStore::Memory(MemoryStore::new()),
            DemoStore::Redis(r) => DemoStore::Redis(r.clone()),
        }
    }

    /// `memory`, or the Redis URL with its password hidden.
    pub fn describe(&self) -> String {
        match self {
            DemoStore::Memory(_) => "memory".to_owned(),
            DemoStore::Redis(r) => r.url().to_owned(),
        }
    }

    /// Whether the state lives in Redis.
    pub fn is_shared(&self) -> bool {
        matches!(self, DemoStore::Redis(_))
    }
}

/// Calls `$method` on whichever store this is.
macro_rules! delegate {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            DemoStore::Memory(s) => s.$method($($arg),*).await,
            DemoStore::Redis(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store for DemoStore {
    async fn take(&self, key: &str, amount: u64, quota: Quota) -> Result<Take, StoreError> {
        delegate!(self.take(key, amount, quota))
    }

    async fn refund(&self, key: &str, amount: u64, quota: Quota) -> Result<(), StoreError> {
        delegate!(self.refund(key, amount, quota))
    }

    async fn acquire(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> Result<Acquire, StoreError> {
        delegate!(self.acquire(cells, pause, horizon))
    }

    async fn charge(&self, key: &str, amount: u64, quota: Quota) -> Result<(), StoreError> {
        delegate!(self.charge(key, amount, quota))
    }

    async fn hold(&self, key: &str, quota: Quota, at_least: Duration) -> Result<(), StoreError> {
        delegate!(self.hold(key, quota, at_least))
    }

    async fn reserve(
        &self,
        buckets: &[Bucket<'_>],
        lease: Duration,
    ) -> Result<Reserve, StoreError> {
        delegate!(self.reserve(buckets, lease))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> Result<Vec<Balance>, StoreError> {
        delegate!(self.settle(reservation, actual))
    }

    async fn balance(&self, key: &str, span: Span) -> Result<Balance, StoreError> {
        delegate!(self.balance(key, span))
    }

    async fn set_flag(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        delegate!(self.set_flag(key, ttl))
    }

    async fn flag(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        delegate!(self.flag(key))
    }

    async fn clear_flag(&self, key: &str) -> Result<(), StoreError> {
        delegate!(self.clear_flag(key))
    }
}

/// `--store`: `memory`, or the URL of a Redis server. Its `Debug` and
/// `Display` hide a password.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreUrl {
    /// Each process its own [`MemoryStore`].
    #[default]
    Memory,
    /// `redis://` or `rediss://` (TLS, with the system's root certificates
    /// and those `SSL_CERT_FILE` names), checked for shape only:
    /// whether a server answers is known when connecting.
    Redis(String),
}

impl StoreUrl {
    /// The URL to connect to, password included; none for `memory`.
    pub fn redis_url(&self) -> Option<&str> {
        match self {
            StoreUrl::Memory => None,
            StoreUrl::Redis(url) => Some(url),
        }
    }
}

impl FromStr for StoreUrl {
    type Err = String;

    /// `memory`, or `redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("memory") {
            return Ok(StoreUrl::Memory);
        }
        let shown = redact(s);
        let bad = |why: &str| {
            format!(
                "`{shown}`: {why}; expected `memory` or redis://HOST:PORT[/DB] \
                 (rediss:// for TLS, redis://:PASSWORD@HOST:PORT for a password)"
            )
        };
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(bad("not `memory` and not a URL"));
        };
        if !scheme.eq_ignore_ascii_case("redis") && !scheme.eq_ignore_ascii_case("rediss") {
            return Err(bad(&format!(
                "the scheme `{scheme}` is not redis or rediss"
            )));
        }
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, tail)) => (h, tail.strip_prefix(':')),
                None => return Err(bad("an IPv6 host without its `]`")),
            }
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if let Some(port) = port
            && port.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err(bad(&format!("`{port}` is not a port")));
        }
        if path.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not supported"));
        }
        let db = path.trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(bad(&format!("`{db}` is not a database number")));
        }
        Ok(StoreUrl::Redis(s.to_owned()))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// `url` with its password, if any, replaced by `***` (the library's
/// redaction, which `RedisStore` uses too).
pub fn redact(url: &str) -> String {
    llm_tower::store::redact_redis_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_hide_passwords() {
        assert_eq!("memory".parse::<StoreUrl>(), Ok(StoreUrl::Memory));
        assert_eq!("MEMORY".parse::<StoreUrl>(), Ok(StoreUrl::Memory));
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1:6379/",
            "redis://127.0.0.1:6379/3",
            "redis://localhost",
            "rediss://redis.internal:6380/0",
            "redis://:s3cret@127.0.0.1:6379",
            "redis://user:s3cret@127.0.0.1:6379/1",
            "redis://[::1]:6379",
        ] {
            let url: StoreUrl = ok.parse().unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(url.redis_url(), Some(ok));
            assert!(!url.to_string().contains("s3cret"), "{url}");
            assert!(!format!("{url:?}").contains("s3cret"), "{url:?}");
        }
        assert_eq!(
            "redis://user:s3cret@h:1/2"
                .parse::<StoreUrl>()
                .unwrap()
                .to_string(),
            "redis://user:***@h:1/2"
        );
        assert_eq!(redact("redis://s3cret@h:1"), "redis://:***@h:1");
        for bad in [
            "",
            "redis",
            "http://127.0.0.1:6379",
            "unix:///tmp/redis.sock",
            "redis://",
            "redis://:6379",
            "redis://host:port",
            "redis://host:0",
            "redis://host:70000",
            "redis://host:6379/db",
            "redis://host:6379/0?x=1",
            "redis://[::1:6379",
        ] {
            assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
        }
        let err = "http://:s3cret@h:1".parse::<StoreUrl>().unwrap_err();
        assert!(err.contains("scheme `http`"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
