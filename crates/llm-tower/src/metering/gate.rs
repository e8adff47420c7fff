//! Attempt gates: an outer layer's say on every attempt the
//! [`Meter`](super::Meter) is about to send. See the
//! [module docs](super#attempt-gates).

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use http::{HeaderMap, Request, Uri};

use super::UsageObserver;
use crate::{BoxError, request::RequestMeta};

/// An attempt about to be sent, as a [`Gate`] sees it: its metadata (the
/// model after any fallback rewrite), its headers (its credentials) and its
/// URI.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    meta: Option<&'a RequestMeta>,
    headers: &'a HeaderMap,
    uri: &'a Uri,
}

impl<'a> Attempt<'a> {
    /// The attempt of `req`.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Attempt {
            meta: RequestMeta::get(req),
            headers: req.headers(),
            uri: req.uri(),
        }
    }

    /// The attempt's [`RequestMeta`], `None` when the request has none.
    pub fn meta(&self) -> Option<&'a RequestMeta> {
        self.meta
    }

    /// The attempt's headers (credentials are marked sensitive; read, never
    /// log them).
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The attempt's URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }
}

/// The future of [`Admission::Later`]: resolves to the observer of the
/// attempt's report, or to the error the attempt fails with.
pub type AdmitFuture = Pin<
    Box<dyn Future<Output = Result<Option<Arc<dyn UsageObserver>>, BoxError>> + Send + 'static>,
>;

/// What a [`Gate`] answers for one attempt.
pub enum Admission {
    /// Send the attempt now. The observer, if any, receives this attempt's
    /// [`UsageReport`](super::UsageReport), after the request's own
    /// [`UsageObservers`](super::UsageObservers).
    Now(Option<Arc<dyn UsageObserver>>),
    /// Send the attempt once the future resolves to `Ok(observer)` (the
    /// observer as with [`Now`](Self::Now)). If it resolves to `Err`, the
    /// attempt fails with that error, nothing is sent and no report is made.
    ///
    /// The meter holds its inner service, polled ready, while it waits.
    ///
    /// If the caller gives the attempt up while the future is pending (its
    /// response future is dropped, by a timeout say), the future is dropped
    /// unfinished and the attempt is never sent: **a gate must release what
    /// it reserved for the attempt when its future is dropped** before
    /// resolving (a drop guard in the future does it).
    Later(AdmitFuture),
    /// Do not send: the attempt fails with this error, and no report is
    /// made.
    Refuse(BoxError),
}

impl Admission {
    /// [`Later`](Self::Later), boxing `future`.
    pub fn later<F>(future: F) -> Self
    where
        F: Future<Output = Result<Option<Arc<dyn UsageObserver>>, BoxError>> + Send + 'static,
    {
        Admission::Later(Box::pin(future))
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admission::Now(observer) => f
                .debug_struct("Now")
                .field("observer", &observer.is_some())
                .finish(),
            Admission::Later(_) => f.debug_struct("Later").finish_non_exhaustive(),
            Admission::Refuse(error) => f.debug_tuple("Refuse").field(error).finish(),
        }
    }
}

/// Decides whether the [`Meter`](super::Meter) may send an attempt: an
/// outer layer's rule for every attempt of a call (each retry, each
/// fallback target, each hedge), put in the request by [`AttemptGate`].
///
/// Any `Fn(&Attempt<'_>) -> Admission + Send + Sync + 'static` is a gate.
pub trait Gate: Send + Sync + 'static {
    /// Called once per attempt, before it is sent, with the attempt (its
    /// metadata holds the model after any fallback rewrite).
    ///
    /// Called from the meter's `call`: it must be quick and must not
    /// block; anything that waits belongs in [`Admission::Later`].
    fn admit(&self, attempt: &Attempt<'_>) -> Admission;
}

impl<F> Gate for F
where
    F: Fn(&Attempt<'_>) -> Admission + Send + Sync + 'static,
{
    fn admit(&self, attempt: &Attempt<'_>) -> Admission {
        self(attempt)
    }
}

/// A [`Gate`] in a request's extensions, consulted by the
/// [`Meter`](super::Meter) for every attempt before it is sent. Clones share
/// the gate (one `Arc`): the request's clones made for retries carry the
/// same one.
///
/// ```
/// use llm_tower::metering::{Admission, Attempt, AttemptGate};
///
/// let mut req = http::Request::new(());
/// AttemptGate::insert(
///     &mut req,
///     AttemptGate::new(|_attempt: &Attempt<'_>| Admission::Now(None)),
/// );
/// assert!(AttemptGate::take(&mut req).is_some());
/// assert!(AttemptGate::take(&mut req).is_none(), "taken");
/// ```
#[derive(Clone)]
pub struct AttemptGate(Arc<dyn Gate>);

impl AttemptGate {
    /// Wraps `gate`.
    pub fn new(gate: impl Gate) -> Self {
        AttemptGate(Arc::new(gate))
    }

    /// Wraps a gate already shared.
    pub fn from_arc(gate: Arc<dyn Gate>) -> Self {
        AttemptGate(gate)
    }

    /// Asks the gate about one attempt.
    pub fn admit(&self, attempt: &Attempt<'_>) -> Admission {
        self.0.admit(attempt)
    }

    /// Puts `gate` in the request's extensions, replacing any gate there.
    pub fn insert<B>(req: &mut http::Request<B>, gate: AttemptGate) {
        req.extensions_mut().insert(gate);
    }

    /// Removes and returns the request's gate. The meter takes it, so a
    /// second meter further in does not gate the same attempt twice (as
    /// with [`UsageObservers::take`](super::UsageObservers::take)).
    pub fn take<B>(req: &mut http::Request<B>) -> Option<AttemptGate> {
        req.extensions_mut().remove::<AttemptGate>()
    }
}

impl fmt::Debug for AttemptGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptGate").finish_non_exhaustive()
    }
}
