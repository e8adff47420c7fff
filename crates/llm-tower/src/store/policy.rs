//! [`OnStoreFailure`]: what a layer does while its store fails, and the
//! crate-private machinery the layers share to apply it (a per-operation
//! timeout, and the failing/recovered state with its probe).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The per-operation timeout of the layers' store calls unless configured:
/// 250 ms, far above a healthy Redis round trip and short enough that a
/// hung store costs a call little.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);

/// While the store fails, a layer tries it again on the path of a call at
/// most this often; the other calls follow the policy at once.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What a layer does while its [`Store`](super::Store) fails: an operation
/// returned a [`StoreError`](super::StoreError) or did not answer within the
/// layer's `store_timeout`. See [When the store fails](super#when-the-store-fails).
///
/// In configuration: `"fail_closed"`, `"fail_open"`, or
/// `{"degraded": {"share": 0.25}}`.
///
/// ```
/// use llm_tower::store::OnStoreFailure;
///
/// let p: OnStoreFailure = serde_json::from_str(r#"{"degraded": {"share": 0.25}}"#).unwrap();
/// assert_eq!(p, OnStoreFailure::Degraded { share: 0.25 });
/// assert_eq!(serde_json::to_string(&OnStoreFailure::FailOpen).unwrap(), r#""fail_open""#);
/// assert!(OnStoreFailure::Degraded { share: 0.0 }.check().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OnStoreFailure {
    /// The call fails with the store's error: nothing goes unchecked.
    FailClosed,
    /// The call goes unchecked: no limit, no reservation.
    FailOpen,
    /// The layer checks the call against a private in-memory store of this
    /// process, with each limit multiplied by `share`: **a per-process
    /// limit**. With `N` processes sharing the store, `share = 1/N` keeps
    /// their sum under the limit; `1.0` keeps each process alone under it.
    Degraded {
        /// The fraction of each limit this process may use, in `(0, 1]`.
        share: f64,
    },
}

impl OnStoreFailure {
    /// Checks the policy: a degraded share is above 0 and at most 1.
    ///
    /// # Errors
    ///
    /// A message naming the share.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            OnStoreFailure::Degraded { share }
                if !(share.is_finite() && share > 0.0 && share <= 1.0) =>
            {
                Err(format!(
                    "degraded share is {share}: it must be above 0 and at most 1"
                ))
            }
            _ => Ok(()),
        }
    }

    /// A short name: `fail_closed`, `fail_open` or `degraded`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnStoreFailure::FailClosed => "fail_closed",
            OnStoreFailure::FailOpen => "fail_open",
            OnStoreFailure::Degraded { .. } => "degraded",
        }
    }

    /// `limit × share` for a degraded policy (at least 1 when `limit` is),
    /// `limit` otherwise.
    pub fn scale(&self, limit: u64) -> u64 {
        match *self {
            OnStoreFailure::Degraded { share } if limit != u64::MAX => {
                (((limit as f64) * share).floor() as u64).clamp(limit.min(1), limit)
            }
            _ => limit,
        }
    }
}

#[cfg(any(feature = "rate-limit", feature = "budget"))]
pub(crate) use guard::{Call, StoreGuard, Switch, bounded};

#[cfg(any(feature = "rate-limit", feature = "budget"))]
mod guard {
    use std::{
        future::Future,
        pin::Pin,
        sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        task::{Context, Poll},
        time::Duration,
    };

    use tokio::time::{Instant, Sleep};

    use super::{OnStoreFailure, PROBE_INTERVAL};
    use crate::store::StoreError;

    /// `fut`, failed with a [`StoreError`] if it is still pending
    /// `timeout` after it first was. A future that answers on its first
    /// poll (the in-memory store's) reads no clock and arms no timer.
    pub(crate) fn bounded<F, T>(timeout: Duration, fut: F) -> Bounded<F>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        Bounded {
            fut,
            timeout,
            sleep: None,
        }
    }

    pin_project_lite::pin_project! {
        /// The future of [`bounded`].
        pub(crate) struct Bounded<F> {
            #[pin]
            fut: F,
            timeout: Duration,
            sleep: Option<Pin<Box<Sleep>>>,
        }
    }

    impl<F, T> Future for Bounded<F>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        type Output = Result<T, StoreError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.project();
            if let Poll::Ready(out) = this.fut.poll(cx) {
                return Poll::Ready(out);
            }
            if this.sleep.is_none() {
                // No runtime (a settlement polled once from a `Drop`
                // outside one): nothing can time it out, and nothing
                // will poll it again either.
                if tokio::runtime::Handle::try_current().is_err() {
                    return Poll::Pending;
                }
                *this.sleep = Some(Box::pin(tokio::time::sleep(*this.timeout)));
            }
            let sleep = this.sleep.as_mut().expect("armed above");
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(StoreError::new(format!(
                    "timed out after {:?}",
                    this.timeout
                )))),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    /// What happened to one guarded store operation.
    pub(crate) enum Call<T> {
        /// The shared store answered.
        Answered(T),
        /// The shared store failed or timed out.
        Failed(StoreError),
        /// The shared store is failing and was not tried: its next probe is
        /// not due.
        Skipped,
    }

    /// A change of the store's state that a guarded operation saw.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Switch {
        /// The store failed: the layer follows its policy from now on.
        Failed,
        /// The store answered again after `down_for`: the layer uses it
        /// again.
        Recovered {
            /// How long it was failing.
            down_for: Duration,
        },
    }

    /// Whether a layer's store is failing, and when to try it again.
    pub(crate) struct StoreGuard {
        pub(crate) policy: OnStoreFailure,
        pub(crate) timeout: Duration,
        failing: AtomicBool,
        /// Nanoseconds since `origin`: when the store started failing.
        since: AtomicU64,
        /// Nanoseconds since `origin`: the earliest next probe.
        next_probe: AtomicU64,
        origin: Instant,
    }

    impl StoreGuard {
        pub(crate) fn new(policy: OnStoreFailure, timeout: Duration) -> Self {
            StoreGuard {
                policy,
                timeout,
                failing: AtomicBool::new(false),
                since: AtomicU64::new(0),
                next_probe: AtomicU64::new(0),
                origin: Instant::now(),
            }
        }

        fn now(&self) -> u64 {
            self.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
        }

        /// Whether the store is failing now.
        pub(crate) fn failing(&self) -> bool {
            self.failing.load(Relaxed)
        }

        /// Whether a call may try the store: always while it is healthy; while
        /// it fails, one call per [`PROBE_INTERVAL`].
        fn may_try(&self) -> bool {
            if !self.failing.load(Relaxed) {
                return true;
            }
            let now = self.now();
            let next = self.next_probe.load(Relaxed);
            now >= next
                && self
                    .next_probe
                    .compare_exchange(
                        next,
                        now + PROBE_INTERVAL.as_nanos() as u64,
                        Relaxed,
                        Relaxed,
                    )
                    .is_ok()
        }

        /// Records an answer of the store.
        pub(crate) fn answered(&self) -> Option<Switch> {
            if !self.failing.load(Relaxed) {
                return None;
            }
            if self.failing.swap(false, Relaxed) {
                let down = self.now().saturating_sub(self.since.load(Relaxed));
                return Some(Switch::Recovered {
                    down_for: Duration::from_nanos(down),
                });
            }
            None
        }

        /// Records a failure of the store.
        pub(crate) fn failed(&self) -> Option<Switch> {
            let now = self.now();
            self.next_probe
                .store(now + PROBE_INTERVAL.as_nanos() as u64, Relaxed);
            if self.failing.load(Relaxed) {
                return None;
            }
            if !self.failing.swap(true, Relaxed) {
                self.since.store(now, Relaxed);
                return Some(Switch::Failed);
            }
            None
        }

        /// Runs `op` on the shared store, bounded by the timeout, on the
        /// path of a call: skipped while the store fails and no probe is
        /// due.
        pub(crate) async fn call<T, F>(&self, op: impl FnOnce() -> F) -> (Call<T>, Option<Switch>)
        where
            F: Future<Output = Result<T, StoreError>>,
        {
            if !self.may_try() {
                return (Call::Skipped, None);
            }
            self.run(op()).await
        }

        /// Runs `fut` on the shared store, bounded by the timeout, whatever
        /// its state (a settlement of what was taken from it).
        pub(crate) async fn run<T, F>(&self, fut: F) -> (Call<T>, Option<Switch>)
        where
            F: Future<Output = Result<T, StoreError>>,
        {
            match bounded(self.timeout, fut).await {
                Ok(v) => (Call::Answered(v), self.answered()),
                Err(e) => (Call::Failed(e), self.failed()),
            }
        }
    }
}
