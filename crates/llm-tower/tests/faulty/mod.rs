//! A test-only `Store` over `MemoryStore` whose behaviour is switched at
//! runtime: answer, fail every operation, or hang (never answer).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use llm_tower::store::{
    Acquire, Balance, Bucket, Cell, MemoryStore, Quota, Reservation, Reserve, Span, Store,
    StoreError, Take,
};

/// What the store does with the next operations.
#[allow(dead_code)] // Each test binary uses some of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// Answers, as the inner `MemoryStore` does.
    Ok = 0,
    /// Fails every operation with a `StoreError`.
    Fail = 1,
    /// Never answers: every operation's future stays pending.
    Hang = 2,
}

#[derive(Default)]
struct Inner {
    mode: AtomicU8,
    /// Operations asked of the store, in any mode.
    ops: AtomicUsize,
}

/// A switchable store; clones share the mode and the state.
#[derive(Clone, Default)]
pub(crate) struct FaultyStore {
    store: MemoryStore,
    inner: Arc<Inner>,
}

impl FaultyStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.inner.mode.store(mode as u8, SeqCst);
    }

    /// How many operations were asked of the store so far.
    pub(crate) fn ops(&self) -> usize {
        self.inner.ops.load(SeqCst)
    }

    /// The inner store, to read its state whatever the mode.
    #[allow(dead_code)]
    pub(crate) fn memory(&self) -> &MemoryStore {
        &self.store
    }

    /// Runs `op` on the inner store only when the mode is `Ok`: the
    /// in-memory store works when called, not when polled.
    fn run<T, F>(
        &self,
        op: impl FnOnce() -> F + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send
    where
        F: Future<Output = Result<T, StoreError>> + Send,
        T: Send,
    {
        self.inner.ops.fetch_add(1, SeqCst);
        let mode = self.inner.mode.load(SeqCst);
        async move {
            match mode {
                0 => op().await,
                1 => Err(StoreError::new("injected failure")),
                _ => std::future::pending().await,
            }
        }
    }
}

impl Store for FaultyStore {
    fn take(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<Take, StoreError>> + Send {
        self.run(move || self.store.take(key, amount, quota))
    }

    fn refund(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move || self.store.refund(key, amount, quota))
    }

    fn acquire(
        &self,
        cells: &[Cell<'_>],
        pause: Option<&str>,
        horizon: Duration,
    ) -> impl Future<Output = Result<Acquire, StoreError>> + Send {
        self.run(move || self.store.acquire(cells, pause, horizon))
    }

    fn charge(
        &self,
        key: &str,
        amount: u64,
        quota: Quota,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move || self.store.charge(key, amount, quota))
    }

    fn hold(
        &self,
        key: &str,
        quota: Quota,
        at_least: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move || self.store.hold(key, quota, at_least))
    }

    fn reserve(
        &self,
        buckets: &[Bucket<'_>],
        lease: Duration,
    ) -> impl Future<Output = Result<Reserve, StoreError>> + Send {
        self.run(move || self.store.reserve(buckets, lease))
    }

    fn settle(
        &self,
        reservation: &Reservation,
        actual: &[u64],
    ) -> impl Future<Output = Result<Vec<Balance>, StoreError>> + Send {
        self.run(move || self.store.settle(reservation, actual))
    }

    fn balance(
        &self,
        key: &str,
        span: Span,
    ) -> impl Future<Output = Result<Balance, StoreError>> + Send {
        self.run(move || self.store.balance(key, span))
    }

    fn set_flag(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move || self.store.set_flag(key, ttl))
    }

    fn flag(&self, key: &str) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send {
        self.run(move || self.store.flag(key))
    }

    fn clear_flag(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.run(move || self.store.clear_flag(key))
    }
}
