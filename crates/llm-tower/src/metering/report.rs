//! What a metered call reports, and to whom.

use std::{fmt, sync::Arc};

use http::StatusCode;

use crate::{
    provider::{Provider, WireFormat},
    request::RequestMeta,
    usage::{FinishReason, Usage},
};

/// Where the token counts of a [`UsageReport`] come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageSource {
    /// The provider reported them, completely.
    Actual,
    /// Estimated: the provider's report never came, or came in part (what
    /// did come is used, the rest estimated).
    Estimated,
}

/// How a metered call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The body was read to its end (for a stream: its terminal event came).
    Completed,
    /// The provider sent an error inside the stream
    /// ([`StreamError`](super::StreamError)).
    StreamError,
    /// The stream ended without its terminal event
    /// ([`TruncatedStream`](super::TruncatedStream)).
    Truncated,
    /// An event that matters could not be read
    /// ([`MalformedStream`](super::MalformedStream)).
    Malformed,
    /// The response body itself failed (a connection reset, say).
    BodyError,
    /// The body was dropped before its end, and no layer said why (the
    /// caller stopped reading).
    DroppedEarly,
    /// A timeout of a layer further out gave the body up (recorded in its
    /// [`StreamProgress`](super::StreamProgress)).
    TimedOut,
    /// A layer further out gave the body up for another failure it
    /// recorded.
    Failed,
    /// The inner service failed: no response at all.
    TransportError,
    /// The response future was dropped before a response came.
    Cancelled,
}

/// The usage of one call that reached the meter, reported exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageReport {
    /// Tokens used.
    pub usage: Usage,
    /// Whether `usage` is the provider's own count.
    pub source: UsageSource,
    /// Why the model stopped, when the response said.
    pub finish_reason: Option<FinishReason>,
    /// How the call ended.
    pub outcome: Outcome,
    /// The provider, when recognised.
    pub provider: Option<Provider>,
    /// The requested model, when known.
    pub model: Option<Arc<str>>,
    /// The response status; `None` when no response came.
    pub status: Option<StatusCode>,
    /// SSE events with data seen (`0` for JSON bodies).
    pub events: u64,
}

impl UsageReport {
    /// A report with the given usage and outcome and nothing else known.
    pub fn new(usage: Usage, source: UsageSource, outcome: Outcome) -> Self {
        UsageReport {
            usage,
            source,
            finish_reason: None,
            outcome,
            provider: None,
            model: None,
            status: None,
            events: 0,
        }
    }

    /// `true` when the provider's own count is reported.
    pub fn is_actual(&self) -> bool {
        self.source == UsageSource::Actual
    }
}

/// Receives the [`UsageReport`] of every metered call it was registered
/// for: budget settlement, token-rate correction, logging.
///
/// Called from the body's `poll_frame` or from its `Drop`, so it must be
/// quick and must not panic; hand heavy work to a task.
///
/// Any `Fn(&UsageReport) + Send + Sync + 'static` is an observer.
pub trait UsageObserver: Send + Sync + 'static {
    /// Takes one report.
    fn on_usage(&self, report: &UsageReport);
}

impl<F> UsageObserver for F
where
    F: Fn(&UsageReport) + Send + Sync + 'static,
{
    fn on_usage(&self, report: &UsageReport) {
        self(report)
    }
}

/// The observers of one request, kept in its extensions: outer layers
/// [`register`](Self::register) before the call, the meter notifies them all
/// after. Cheap to clone (one reference count).
#[derive(Clone, Default)]
pub struct UsageObservers {
    list: List,
}

/// The observers, in registration order: one (the usual case: a single
/// layer registers) without a list of its own to allocate.
#[derive(Clone, Default)]
enum List {
    #[default]
    Empty,
    One(Arc<dyn UsageObserver>),
    Many(Arc<[Arc<dyn UsageObserver>]>),
}

impl UsageObservers {
    /// No observers.
    pub fn new() -> Self {
        UsageObservers::default()
    }

    /// Adds an observer.
    pub fn push(&mut self, observer: Arc<dyn UsageObserver>) {
        self.list = match std::mem::take(&mut self.list) {
            List::Empty => List::One(observer),
            List::One(first) => List::Many(Arc::from([first, observer])),
            List::Many(old) => List::Many(old.iter().cloned().chain([observer]).collect()),
        };
    }

    /// Adds an observer to a request's observers, creating them if needed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use llm_tower::metering::{UsageObservers, UsageReport};
    ///
    /// let mut req = http::Request::new(());
    /// UsageObservers::register(&mut req, Arc::new(|r: &UsageReport| println!("{:?}", r.usage)));
    /// assert_eq!(req.extensions().get::<UsageObservers>().unwrap().len(), 1);
    /// ```
    pub fn register<B>(req: &mut http::Request<B>, observer: Arc<dyn UsageObserver>) {
        req.extensions_mut()
            .get_or_insert_default::<UsageObservers>()
            .push(observer);
    }

    /// Removes and returns a request's observers (none if it had none).
    pub fn take<B>(req: &mut http::Request<B>) -> UsageObservers {
        req.extensions_mut()
            .remove::<UsageObservers>()
            .unwrap_or_default()
    }

    /// The observers, in registration order.
    fn as_slice(&self) -> &[Arc<dyn UsageObserver>] {
        match &self.list {
            List::Empty => &[],
            List::One(one) => std::slice::from_ref(one),
            List::Many(many) => many,
        }
    }

    /// How many observers there are.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// `true` when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives `report` to every observer, in registration order.
    pub fn notify(&self, report: &UsageReport) {
        for o in self.as_slice() {
            o.on_usage(report);
        }
    }
}

impl fmt::Debug for UsageObservers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageObservers")
            .field("len", &self.len())
            .finish()
    }
}

/// What a report needs from the request, captured once.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallInfo {
    pub(crate) format: Option<WireFormat>,
    pub(crate) stream: bool,
    pub(crate) provider: Option<Provider>,
    pub(crate) model: Option<Arc<str>>,
    pub(crate) estimated_input_tokens: u64,
}

impl CallInfo {
    pub(crate) fn from_meta(meta: Option<&RequestMeta>) -> Self {
        match meta {
            Some(m) => CallInfo {
                format: m.format(),
                stream: m.is_stream(),
                provider: m.provider().cloned(),
                model: m.model_arc().cloned(),
                estimated_input_tokens: m.estimated_input_tokens(),
            },
            None => CallInfo::default(),
        }
    }
}

/// Reports exactly once: the first [`report`](Self::report) call wins;
/// dropped without one, it reports the call as cancelled with the input
/// estimate.
#[derive(Debug)]
pub(crate) struct Reporter {
    pub(crate) info: CallInfo,
    observers: UsageObservers,
    done: bool,
}

impl Reporter {
    pub(crate) fn new(info: CallInfo, observers: UsageObservers) -> Self {
        Reporter {
            info,
            observers,
            done: false,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Hands the duty to report to a new reporter (the one of the body).
    pub(crate) fn hand_over(&mut self) -> Reporter {
        self.done = true;
        Reporter::new(
            std::mem::take(&mut self.info),
            std::mem::take(&mut self.observers),
        )
    }

    pub(crate) fn report(&mut self, mut report: UsageReport) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        report.provider = self.info.provider.clone();
        report.model = self.info.model.clone();
        self.observers.notify(&report);
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if !self.done {
            let usage = Usage::new(self.info.estimated_input_tokens, 0);
            self.report(UsageReport::new(
                usage,
                UsageSource::Estimated,
                Outcome::Cancelled,
            ));
        }
    }
}
