//! [`FallbackLayer`], its service [`Fallback`], and what a call that moved
//! tells: [`Answered`], [`AllTargetsFailed`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri, header};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{ServiceExt, util::BoxCloneService};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Target,
    body::{FallbackBody, TranslatedStream, translate_whole},
    degrade::{StaleAnswers, static_answer},
};
use crate::{
    BoxError,
    attempts::AttemptBudget,
    classify::{Classifier, DefaultClassifier, Failure, FailureClass, PeekBody, ResponseView},
    provider::{
        Endpoint, WireFormat,
        headers::{is_event_stream, names},
    },
    request::{CharEstimator, ReplayBody, RequestMeta},
    translate::{self, StreamTranslator},
};

/// The most of an error body read to classify it: 64 KiB.
const ERROR_BODY_LIMIT: usize = 64 << 10;

type TargetService = BoxCloneService<Request<ReplayBody>, Response<FallbackBody>, BoxError>;

/// What happened to a call in a [`FallbackLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackEvent {
    /// A target was passed over before anything was sent to it.
    Skipped {
        /// The target.
        target: String,
        /// Why it cannot serve the call.
        reason: String,
    },
    /// A target failed, and the call moves on.
    Failed {
        /// The target.
        target: String,
        /// How it failed.
        class: FailureClass,
    },
    /// A slow target's call also went to this one (hedging).
    Hedged {
        /// The target the hedge went to.
        target: String,
    },
    /// Every target failed, and the call was answered from the last resort
    /// configured: `stale` or `static`.
    Degraded {
        /// `stale` or `static`.
        how: &'static str,
    },
    /// A target answered the call.
    Answered {
        /// The target.
        target: String,
        /// Whether it is not the first target (the call moved).
        moved: bool,
    },
}

type Listener = Arc<dyn Fn(&FallbackEvent) + Send + Sync>;

struct Shared<C> {
    /// The first target's description: the caller's own, unless set.
    primary: Option<Target>,
    /// Each behind a lock, held only to clone it, so that services that are
    /// not `Sync` (a `BoxCloneService`, say) can be targets.
    targets: Vec<(Target, std::sync::Mutex<TargetService>)>,
    classifier: C,
    max_attempts: u32,
    also: Vec<FailureClass>,
    never: Vec<FailureClass>,
    listener: Option<Listener>,
    stale: Option<Arc<StaleAnswers>>,
    static_text: Option<String>,
    hedging: Option<Hedging>,
    /// Each target's recent answer times (the first target's first), for
    /// a hedging delay at a percentile.
    latencies: Vec<Mutex<Latencies>>,
}

impl<C> Shared<C> {
    fn emit(&self, event: FallbackEvent) {
        match &event {
            FallbackEvent::Skipped { target, reason } => {
                tracing::debug!(target: "llm_tower::fallback", target = %target, %reason, "fallback: target skipped");
            }
            FallbackEvent::Failed { target, class } => {
                tracing::info!(target: "llm_tower::fallback", target = %target, class = class.as_str(), "fallback: target failed, moving on");
            }
            FallbackEvent::Hedged { target } => {
                tracing::debug!(target: "llm_tower::fallback", target = %target, "fallback: hedge started");
            }
            FallbackEvent::Degraded { how } => {
                tracing::warn!(target: "llm_tower::fallback", how, "fallback: every target failed; answered degraded");
            }
            FallbackEvent::Answered { target, moved } => {
                tracing::debug!(target: "llm_tower::fallback", target = %target, moved, "fallback: answered");
            }
        }
        if let Some(l) = &self.listener {
            l(&event);
        }
    }

    /// Whether a failure moves the call to the next target.
    fn moves_on(&self, failure: &Failure) -> bool {
        let class = failure.class();
        if self.never.contains(&class) {
            return false;
        }
        failure.should_fall_back() || self.also.contains(&class)
    }
}

/// Moves a call to the next target when one cannot answer — another model,
/// another provider (the request and the answer translated, so the caller
/// receives the format it sent). See the [module docs](super).
///
/// The layer's inner service is the first target; [`target`](Self::target)
/// adds the others, in order, each with a service of its own (its own
/// retry, breaker, rate limit, timeout and client).
pub struct FallbackLayer<C = DefaultClassifier> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for FallbackLayer<C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for FallbackLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("primary", &self.shared.primary)
            .field(
                "targets",
                &self
                    .shared
                    .targets
                    .iter()
                    .map(|(t, _)| t)
                    .collect::<Vec<_>>(),
            )
            .field("max_attempts", &self.shared.max_attempts)
            .finish_non_exhaustive()
    }
}

impl FallbackLayer {
    /// A layer with no other target yet, the [`DefaultClassifier`], and a
    /// budget of 6 upstream attempts per call (retries of every target
    /// included).
    pub fn new() -> Self {
        Self::with_classifier(DefaultClassifier::new())
    }
}

impl Default for FallbackLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Classifier> FallbackLayer<C> {
    /// A layer deciding with `classifier` when to move on.
    pub fn with_classifier(classifier: C) -> Self {
        FallbackLayer {
            shared: Arc::new(Shared {
                primary: None,
                targets: Vec::new(),
                classifier,
                max_attempts: 6,
                also: Vec::new(),
                never: Vec::new(),
                listener: None,
                stale: None,
                static_text: None,
                hedging: None,
                latencies: vec![Mutex::new(Latencies::default())],
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared<C>)) -> Self {
        let shared = Arc::get_mut(&mut self.shared)
            .expect("configure a FallbackLayer before cloning it or making services");
        f(shared);
        self
    }

    /// Describes the first target (the layer's inner service): its
    /// context window and capabilities, checked before sending to it.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn primary(self, target: Target) -> Self {
        self.edit(|s| s.primary = Some(target))
    }

    /// Adds the next target and its service.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn target<S, B>(self, target: Target, service: S) -> Self
    where
        S: Service<Request<ReplayBody>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = std::sync::Mutex::new(boxed(service));
        self.edit(|s| {
            s.targets.push((target, service));
            s.latencies.push(Mutex::new(Latencies::default()));
        })
    }

    /// The most upstream attempts a call makes in all, every target's
    /// retries included (an [`AttemptBudget`] shared with the layers
    /// inside): 6 by default.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn max_attempts(self, n: u32) -> Self {
        self.edit(|s| s.max_attempts = n)
    }

    /// Moves on after failures of `class` too (the classifier says no:
    /// content policy, bad requests, auth errors …).
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn also_move_on(self, class: FailureClass) -> Self {
        self.edit(|s| s.also.push(class))
    }

    /// Never moves on after failures of `class`.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn never_move_on(self, class: FailureClass) -> Self {
        self.edit(|s| s.never.push(class))
    }

    /// When every target fails, answers with the last good answer to the
    /// same request (same format, same body) if it is at most `max_age`
    /// old; keeps the last `capacity` good answers (each at most
    /// [`MAX_STALE_ANSWER`](super::MAX_STALE_ANSWER) bytes; a stream only
    /// once complete). The answer says so: the
    /// [`DEGRADED_HEADER`](super::DEGRADED_HEADER) header and
    /// [`Degraded::Stale`](super::Degraded) in its extensions, an event and
    /// a warning. Off by default.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn stale_answers(self, capacity: usize, max_age: std::time::Duration) -> Self {
        self.edit(|s| s.stale = Some(Arc::new(StaleAnswers::new(capacity, max_age))))
    }

    /// When every target fails (and no stale answer serves), answers `text`
    /// in the caller's format, JSON or stream, marked as
    /// [`Degraded::Static`](super::Degraded). Off by default.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn static_answer(self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.edit(|s| s.static_text = Some(text))
    }

    /// Hedging, for calls marked with [`Hedge`] in their extensions: when a
    /// target has not answered (for a stream: produced its first token,
    /// held by its retry layer) within `delay`, the call also goes to the
    /// next target that can take it; the first answer wins and the other
    /// is dropped at once (its connection closed, its usage still metered
    /// by its meter). At most `max_ratio` hedges per eligible call (0.1:
    /// 10% more attempts), and only within the call's attempt budget. A
    /// hedge goes through the target's own stack, whose breaker and rate
    /// limiter refuse it as they would any call. Off by default.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn hedge(self, delay: Duration, max_ratio: f64) -> Self {
        self.edit(|s| {
            s.hedging = Some(Hedging {
                delay,
                percentile: None,
                max_ratio,
                calls: AtomicU64::new(0),
                hedges: AtomicU64::new(0),
            })
        })
    }

    /// [`hedge`](Self::hedge) with a delay measured per target: the
    /// `percentile` (0.95: the 95th) of the time its last
    /// 100 answers took to come, once it has 20; `delay` until then, and
    /// never less than `delay / 4`.
    ///
    /// # Panics
    ///
    /// If `percentile` is not within (0, 1], or if called after the layer
    /// was cloned or made a service.
    pub fn hedge_at_percentile(self, percentile: f64, delay: Duration, max_ratio: f64) -> Self {
        assert!(
            percentile > 0.0 && percentile <= 1.0,
            "hedge_at_percentile: the percentile {percentile} is not within (0, 1]"
        );
        self.edit(|s| {
            s.hedging = Some(Hedging {
                delay,
                percentile: Some(percentile),
                max_ratio,
                calls: AtomicU64::new(0),
                hedges: AtomicU64::new(0),
            })
        })
    }

    /// Calls `f` with every [`FallbackEvent`], besides the `tracing` events.
    ///
    /// # Panics
    ///
    /// If called after the layer was cloned or made a service.
    pub fn on_event(self, f: impl Fn(&FallbackEvent) + Send + Sync + 'static) -> Self {
        self.edit(|s| s.listener = Some(Arc::new(f)))
    }
}

fn boxed<S, B>(service: S) -> TargetService
where
    S: Service<Request<ReplayBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneService::new(
        service
            .map_response(|res: Response<B>| res.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into),
    )
}

impl<S, C> Layer<S> for FallbackLayer<C> {
    type Service = Fallback<S, C>;

    fn layer(&self, inner: S) -> Fallback<S, C> {
        Fallback {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`FallbackLayer`].
pub struct Fallback<S, C = DefaultClassifier> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Fallback<S, C> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Fallback<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, C, B> Service<Request<ReplayBody>> for Fallback<S, C>
where
    S: Service<Request<ReplayBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Response = Response<FallbackBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each target's readiness is taken when the call comes to it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReplayBody>) -> ResponseFuture {
        let primary = boxed(self.inner.clone());
        ResponseFuture {
            inner: Box::pin(run(self.shared.clone(), primary, req)),
        }
    }
}

/// The future of [`Fallback`].
pub struct ResponseFuture {
    #[allow(clippy::type_complexity)]
    inner: Pin<Box<dyn Future<Output = Result<Response<FallbackBody>, BoxError>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<FallbackBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The target that answered a call, in the response's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The target's name (`primary` for the layer's inner service unless
    /// described with [`FallbackLayer::primary`]).
    pub target: String,
    /// The model that answered, when known.
    pub model: Option<String>,
    /// Whether the call moved (another target than the first answered).
    pub moved: bool,
}

/// What became of one target of a call that no target answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetOutcome {
    /// The target.
    pub target: String,
    /// What happened: `skipped: <why>`, or the class of its failure.
    pub outcome: String,
}

/// No target answered the call: each one tried or skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllTargetsFailed {
    /// Every target, in order.
    pub targets: Vec<TargetOutcome>,
}

impl fmt::Display for AllTargetsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("all targets failed:")?;
        for (i, t) in self.targets.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{} ({})", t.target, t.outcome)?;
        }
        Ok(())
    }
}

impl std::error::Error for AllTargetsFailed {}

/// The request for `target`: the model replaced, the body translated when
/// the format differs, the URL and credentials of the target.
fn request_for(
    req: &Request<ReplayBody>,
    from: Option<WireFormat>,
    target: &Target,
) -> Result<Request<ReplayBody>, BoxError> {
    let mut out = req.clone();
    let same = from == Some(target.format);
    if !same || target.model.is_some() {
        let model = target
            .model
            .clone()
            .or_else(|| {
                RequestMeta::get(req)
                    .and_then(RequestMeta::model)
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                BoxError::from("fallback: the target names no model and the request has none")
            })?;
        let from = from.ok_or_else(|| {
            BoxError::from(
                "fallback: the request's wire format is unknown: put PrepareLayer outside",
            )
        })?;
        let spec = translate::Target::new(target.format, model)
            .default_max_tokens(target.max_output.unwrap_or(4096));
        let body = translate::request::translate(from, req.body().bytes(), &spec)?;
        let mut meta = RequestMeta::parse(
            Some(Endpoint {
                provider: target.provider.clone(),
                format: target.format,
            }),
            target.endpoint.as_ref().map_or(req.uri().path(), Uri::path),
            &body,
            &CharEstimator::new(),
        );
        // The same prompt: the caller's estimate (its estimator may be exact).
        if let Some(original) = RequestMeta::get(req) {
            meta = meta.with_estimated_input_tokens(original.estimated_input_tokens());
        }
        out.headers_mut().insert(
            header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len() as u64),
        );
        *out.body_mut() = ReplayBody::new(body);
        out.extensions_mut().insert(meta);
    }
    if let Some(uri) = &target.endpoint {
        *out.uri_mut() = uri.clone();
        out.headers_mut().remove(header::HOST);
    }
    set_headers(out.headers_mut(), &target.headers, !same);
    if target.format == WireFormat::AnthropicMessages
        && !out.headers().contains_key("anthropic-version")
    {
        out.headers_mut().insert(
            "anthropic-version",
            http::HeaderValue::from_static("2023-06-01"),
        );
    }
    Ok(out)
}

/// Sets a target's own headers. The caller's credentials never go to
/// another provider's format, nor next to credentials the target sets.
fn set_headers(headers: &mut HeaderMap, own: &HeaderMap, other_format: bool) {
    if other_format || own.keys().any(names::is_secret) {
        for name in &names::SECRETS {
            headers.remove(name);
        }
    }
    for (name, value) in own {
        headers.insert(name.clone(), value.clone());
    }
}

/// What one target made of a call.
enum Step {
    /// It answered: the answer, in the caller's format.
    Answered(Response<FallbackBody>),
    /// It failed in a way another target may help with.
    MoveOn {
        /// Its HTTP answer, when it gave one (the caller's, if it is the
        /// last).
        last: Option<Response<FallbackBody>>,
        outcome: TargetOutcome,
        /// Its context window, when the failure was a context too long.
        too_long_for: Option<u64>,
    },
    /// It failed in a way no other target can help with: the caller's.
    Stop(Result<Response<FallbackBody>, BoxError>),
}

/// Sends `attempt` to one target and judges what came back.
async fn try_target<C: Classifier>(
    shared: &Shared<C>,
    target: &Target,
    latencies: &Mutex<Latencies>,
    service: TargetService,
    attempt: Request<ReplayBody>,
    from: Option<WireFormat>,
    moved: bool,
) -> Step {
    let model = RequestMeta::get(&attempt)
        .and_then(RequestMeta::model)
        .map(str::to_owned);
    let translated = from.is_some_and(|f| f != target.format);
    let start = tokio::time::Instant::now();
    match service.oneshot(attempt).await {
        Ok(res) if res.status().is_success() => {
            latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(start.elapsed());
            shared.emit(FallbackEvent::Answered {
                target: target.name.clone(),
                moved,
            });
            match answer(res, target.format, from, translated, model.as_deref()).await {
                Ok(mut res) => {
                    res.extensions_mut().insert(Answered {
                        target: target.name.clone(),
                        model,
                        moved,
                    });
                    Step::Answered(res)
                }
                Err(e) => Step::Stop(Err(e)),
            }
        }
        Ok(res) => {
            let peeked = PeekBody::new(res, ERROR_BODY_LIMIT).await;
            let view = ResponseView::new(peeked.status(), peeked.headers())
                .with_body(peeked.body().peeked())
                .with_format(Some(target.format));
            let failure = shared
                .classifier
                .classify_response(&view)
                .into_failure()
                .unwrap_or_else(|| Failure::new(FailureClass::Other));
            let res = peeked.map(BodyExt::boxed_unsync);
            let res = match answer(res, target.format, from, translated, model.as_deref()).await {
                Ok(res) => res,
                Err(e) => return Step::Stop(Err(e)),
            };
            if !shared.moves_on(&failure) {
                return Step::Stop(Ok(res));
            }
            shared.emit(FallbackEvent::Failed {
                target: target.name.clone(),
                class: failure.class(),
            });
            Step::MoveOn {
                last: Some(res),
                outcome: TargetOutcome {
                    target: target.name.clone(),
                    outcome: failure.class().as_str().into(),
                },
                too_long_for: (failure.class() == FailureClass::ContextLength)
                    .then(|| target.context_window.unwrap_or(0)),
            }
        }
        Err(e) => {
            let failure = shared.classifier.classify_error(&*e);
            if !shared.moves_on(&failure) {
                return Step::Stop(Err(e));
            }
            shared.emit(FallbackEvent::Failed {
                target: target.name.clone(),
                class: failure.class(),
            });
            Step::MoveOn {
                last: None,
                outcome: TargetOutcome {
                    target: target.name.clone(),
                    outcome: format!("{}: {e}", failure.class().as_str()),
                },
                too_long_for: None,
            }
        }
    }
}

/// Polls two steps at once; the first answer wins (the other is dropped:
/// its connection closed, its meter reporting it cancelled). Without an
/// answer, both are waited for, the first one's result first.
async fn race(
    a: Pin<Box<dyn Future<Output = Step> + Send + '_>>,
    b: Pin<Box<dyn Future<Output = Step> + Send + '_>>,
) -> (Step, Option<Step>) {
    let mut a = Some(a);
    let mut b = Some(b);
    let mut done_a: Option<Step> = None;
    let mut done_b: Option<Step> = None;
    std::future::poll_fn(|cx| {
        if let Some(f) = a.as_mut()
            && let Poll::Ready(step) = f.as_mut().poll(cx)
        {
            a = None;
            if matches!(step, Step::Answered(_)) {
                b = None;
                return Poll::Ready((step, None));
            }
            done_a = Some(step);
        }
        if let Some(f) = b.as_mut()
            && let Poll::Ready(step) = f.as_mut().poll(cx)
        {
            b = None;
            if matches!(step, Step::Answered(_)) {
                a = None;
                return Poll::Ready((step, None));
            }
            done_b = Some(step);
        }
        if a.is_none() && b.is_none() {
            let first = done_a.take().expect("both done");
            return Poll::Ready((first, done_b.take()));
        }
        Poll::Pending
    })
    .await
}

/// Hedging: after `delay` without an answer from a target, the call also
/// goes to the next one; at most `max_ratio` hedges per eligible call.
pub(crate) struct Hedging {
    pub(crate) delay: Duration,
    pub(crate) percentile: Option<f64>,
    pub(crate) max_ratio: f64,
    pub(crate) calls: AtomicU64,
    pub(crate) hedges: AtomicU64,
}

/// The most answer times kept per target.
const LATENCY_WINDOW: usize = 100;
/// The answer times a target needs before its percentile is used.
const LATENCY_MIN_SAMPLES: usize = 20;

/// A target's recent answer times.
#[derive(Default)]
pub(crate) struct Latencies {
    recent: std::collections::VecDeque<Duration>,
}

impl Latencies {
    fn record(&mut self, d: Duration) {
        if self.recent.len() == LATENCY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.recent.len() < LATENCY_MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64) * p).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }
}

impl Hedging {
    /// The delay before hedging a call to a target with these latencies.
    fn delay_for(&self, latencies: &Mutex<Latencies>) -> Duration {
        match self.percentile {
            None => self.delay,
            Some(p) => latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .percentile(p)
                .map_or(self.delay, |d| d.max(self.delay / 4)),
        }
    }

    /// Counts an eligible call.
    fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a hedge if the budget allows one more.
    fn try_hedge(&self) -> bool {
        let calls = self.calls.load(Ordering::Relaxed) as f64;
        self.hedges
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                ((h + 1) as f64 <= calls * self.max_ratio).then_some(h + 1)
            })
            .is_ok()
    }
}

/// A request marked in its extensions as eligible for hedging (an
/// idempotent call whose double cost is acceptable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hedge;

async fn run<C: Classifier>(
    shared: Arc<Shared<C>>,
    primary: TargetService,
    mut req: Request<ReplayBody>,
) -> Result<Response<FallbackBody>, BoxError> {
    let meta = RequestMeta::get(&req).cloned();
    let from = meta.as_ref().and_then(RequestMeta::format);
    let budget = AttemptBudget::get_or_insert(&mut req, shared.max_attempts);
    let has_tools = shared
        .targets
        .iter()
        .map(|(t, _)| t)
        .chain(shared.primary.as_ref())
        .any(|t| !t.tools)
        && body_has_tools(req.body().bytes());
    let primary_target = shared.primary.clone().unwrap_or_else(|| {
        let mut t = Target::new(
            "primary",
            meta.as_ref()
                .and_then(RequestMeta::provider)
                .cloned()
                .unwrap_or(crate::provider::Provider::OpenAi),
            from.unwrap_or(WireFormat::OpenAiChat),
        );
        t.model = None;
        t
    });
    let targets: Vec<&Target> = std::iter::once(&primary_target)
        .chain(shared.targets.iter().map(|(t, _)| t))
        .collect();
    let mut services: Vec<Option<TargetService>> = std::iter::once(Some(primary))
        .chain(
            shared
                .targets
                .iter()
                .map(|(_, s)| Some(s.lock().unwrap_or_else(|p| p.into_inner()).clone())),
        )
        .collect();
    let hedging = shared
        .hedging
        .as_ref()
        .filter(|_| req.extensions().get::<Hedge>().is_some());
    if let Some(h) = hedging {
        h.call();
    }
    let mut outcomes = Vec::new();
    let mut last: Option<Response<FallbackBody>> = None;
    let mut sent = false;
    // A context too long for a window moves on only to a larger one.
    let mut too_long_for: Option<u64> = None;

    // The request for target `index`, or why it cannot take the call.
    let prepare =
        |index: usize, too_long_for: Option<u64>| -> Result<Request<ReplayBody>, String> {
            let target = targets[index];
            let skip = match (&meta, too_long_for) {
                (_, Some(w)) if target.context_window.is_none_or(|t| t <= w) => {
                    Some(format!("its context window is no larger than {w}"))
                }
                (Some(m), _) => target.cannot_serve(m, has_tools),
                (None, _) => None,
            };
            if let Some(reason) = skip {
                return Err(reason);
            }
            request_for(&req, from, target).map_err(|e| e.to_string())
        };
    let mut index = 0;
    while index < targets.len() {
        let target = targets[index];
        let attempt = match prepare(index, too_long_for) {
            Ok(r) => r,
            Err(reason) => {
                // Nothing sent: the next target may take it.
                shared.emit(FallbackEvent::Skipped {
                    target: target.name.clone(),
                    reason: reason.clone(),
                });
                outcomes.push(TargetOutcome {
                    target: target.name.clone(),
                    outcome: format!("skipped: {reason}"),
                });
                index += 1;
                continue;
            }
        };
        // The call's first attempt is counted with the budget; each move
        // is a new one.
        if sent && !budget.try_take() {
            outcomes.push(TargetOutcome {
                target: target.name.clone(),
                outcome: "not tried: no attempt left".into(),
            });
            break;
        }
        sent = true;
        let service = services[index].take().expect("each target is tried once");
        let step = try_target(
            &shared,
            target,
            &shared.latencies[index],
            service,
            attempt,
            from,
            index > 0,
        );
        let mut next = index + 1;
        let steps = match hedging {
            None => (step.await, None),
            Some(h) => {
                let mut step = Box::pin(step);
                let delay = h.delay_for(&shared.latencies[index]);
                let first = tokio::time::timeout(delay, step.as_mut()).await;
                match first {
                    Ok(done) => (done, None),
                    Err(_) => {
                        // Slow: also try the next target that can take the
                        // call, if the hedge and attempt budgets allow.
                        let hedge = (next..targets.len())
                            .find_map(|j| prepare(j, too_long_for).ok().map(|r| (j, r)))
                            // Never to a target that says it cannot take a
                            // call now (its breaker open, its limiter
                            // refusing).
                            .filter(|(j, _)| targets[*j].is_available());
                        match hedge {
                            Some((j, hedge_req)) if h.try_hedge() && budget.try_take() => {
                                let other = targets[j];
                                tracing::debug!(target: "llm_tower::fallback", from = %target.name, to = %other.name, "fallback: hedging");
                                shared.emit(FallbackEvent::Hedged {
                                    target: other.name.clone(),
                                });
                                let service =
                                    services[j].take().expect("each target is tried once");
                                let hedge = Box::pin(try_target(
                                    &shared,
                                    other,
                                    &shared.latencies[j],
                                    service,
                                    hedge_req,
                                    from,
                                    true,
                                ));
                                next = j + 1;
                                race(step, hedge).await
                            }
                            _ => (step.await, None),
                        }
                    }
                }
            }
        };
        for step in [Some(steps.0), steps.1].into_iter().flatten() {
            match step {
                Step::Answered(mut res) => {
                    if let Some(stale) = &shared.stale {
                        res = stale.record(from, req.body().bytes(), res);
                    }
                    return Ok(res);
                }
                Step::Stop(result) => return result,
                Step::MoveOn {
                    last: l,
                    outcome,
                    too_long_for: t,
                } => {
                    outcomes.push(outcome);
                    last = l;
                    if t.is_some() {
                        too_long_for = t;
                    }
                }
            }
        }
        index = next;
    }
    // The last resort, when configured: never silent.
    if let Some(res) = shared
        .stale
        .as_ref()
        .and_then(|stale| stale.get(from, req.body().bytes()))
    {
        shared.emit(FallbackEvent::Degraded { how: "stale" });
        return Ok(res);
    }
    if let Some(text) = &shared.static_text {
        shared.emit(FallbackEvent::Degraded { how: "static" });
        let stream = meta.as_ref().is_some_and(RequestMeta::is_stream);
        return static_answer(text, from, stream);
    }
    // As retry does: the last HTTP answer, when the last failure was one.
    match last {
        Some(res) => Ok(res),
        None => Err(Box::new(AllTargetsFailed { targets: outcomes })),
    }
}

/// The target's answer in the caller's format.
async fn answer(
    res: Response<FallbackBody>,
    target: WireFormat,
    caller: Option<WireFormat>,
    translated: bool,
    model: Option<&str>,
) -> Result<Response<FallbackBody>, BoxError> {
    let Some(caller) = caller.filter(|_| translated) else {
        return Ok(res);
    };
    let model = model.unwrap_or_default();
    let (mut parts, body) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if is_event_stream(&parts.headers) && parts.status.is_success() {
        let translator = StreamTranslator::new(target, caller, model)?;
        TranslatedStream::new(body, translator).boxed_unsync()
    } else {
        translate_whole(body, target, caller, model).await?
    };
    Ok(Response::from_parts(parts, body))
}

/// Whether a request body has a non-empty `tools` array.
fn body_has_tools(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Tools {
        #[serde(default)]
        tools: Vec<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Tools>(body).is_ok_and(|t| !t.tools.is_empty())
}
