//! Breaker health shared through a [`Store`]: a flag per key, set when a
//! breaker trips, read now and then by the closed breakers of other layers
//! (and processes), cleared by a successful probe.
//!
//! The store is reached through [`Health`], an object-safe wrapper, so that
//! the layer, its services and its futures do not carry the store's type.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::store::{Store, StoreError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// The flag operations of a [`Store`], with owned keys and boxed futures.
trait Flags: Send + Sync + 'static {
    fn set_flag(&self, key: Arc<str>, ttl: Duration) -> BoxFuture<()>;
    fn flag(&self, key: Arc<str>) -> BoxFuture<Option<Duration>>;
    fn clear_flag(&self, key: Arc<str>) -> BoxFuture<()>;
}

impl<St: Store + Clone> Flags for St {
    fn set_flag(&self, key: Arc<str>, ttl: Duration) -> BoxFuture<()> {
        let store = self.clone();
        Box::pin(async move { store.set_flag(&key, ttl).await })
    }

    fn flag(&self, key: Arc<str>) -> BoxFuture<Option<Duration>> {
        let store = self.clone();
        Box::pin(async move { store.flag(&key).await })
    }

    fn clear_flag(&self, key: Arc<str>) -> BoxFuture<()> {
        let store = self.clone();
        Box::pin(async move { store.clear_flag(&key).await })
    }
}

/// The store a layer shares its breakers' health through, and how often a
/// closed breaker looks at it.
pub(crate) struct Health {
    flags: Box<dyn Flags>,
    /// `share_refresh`, in nanoseconds.
    pub(crate) refresh_ns: u64,
    /// The prefix of the flags' keys.
    prefix: Box<str>,
    /// Store operations that failed.
    errors: AtomicU64,
}

impl Health {
    pub(crate) fn new<St: Store + Clone>(store: St, refresh: Duration, prefix: &str) -> Self {
        Health {
            flags: Box::new(store),
            refresh_ns: refresh.as_nanos().min(u128::from(u64::MAX)) as u64,
            prefix: prefix.into(),
            errors: AtomicU64::new(0),
        }
    }

    /// The flag of the breaker `key`: `<prefix>:breaker:<key>:open`.
    pub(crate) fn flag_key(&self, key: &super::BreakerKey) -> Arc<str> {
        format!("{}:breaker:{key}:open", self.prefix).into()
    }

    /// Store operations that failed so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    fn failed(&self, what: &'static str, key: &str, e: &StoreError) {
        self.errors.fetch_add(1, Relaxed);
        tracing::warn!(
            target: "llm_tower::circuit_breaker",
            what, key, error = %e,
            "circuit breaker: shared health store failed; the breaker goes on its local state"
        );
    }

    /// Sets the flag `key` for `ttl`: now with an in-memory store, on a
    /// task with a remote one.
    pub(crate) fn set(self: &Arc<Self>, key: Arc<str>, ttl: Duration) {
        let this = self.clone();
        crate::util::run_now_or_spawn("circuit breaker: share an opening", async move {
            if let Err(e) = this.flags.set_flag(key.clone(), ttl).await {
                this.failed("set_flag", &key, &e);
            }
        });
    }

    /// Clears the flag `key`, as [`set`](Self::set) does.
    pub(crate) fn clear(self: &Arc<Self>, key: Arc<str>) {
        let this = self.clone();
        crate::util::run_now_or_spawn("circuit breaker: share a close", async move {
            if let Err(e) = this.flags.clear_flag(key.clone()).await {
                this.failed("clear_flag", &key, &e);
            }
        });
    }

    /// Reads the flag `key` and calls `then` with the time left on it, if
    /// any: before returning with an in-memory store, on a task with a
    /// remote one. A failure calls nothing (the breaker keeps its local
    /// state).
    pub(crate) fn read(
        self: &Arc<Self>,
        key: Arc<str>,
        then: impl FnOnce(Duration) + Send + 'static,
    ) {
        let this = self.clone();
        crate::util::run_now_or_spawn("circuit breaker: read shared health", async move {
            match this.flags.flag(key.clone()).await {
                Ok(Some(left)) if !left.is_zero() => then(left),
                Ok(_) => {}
                Err(e) => this.failed("flag", &key, &e),
            }
        });
    }
}
