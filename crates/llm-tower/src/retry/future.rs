//! The response future of [`Retry`](super::Retry): one attempt after
//! another, until one answers or the policy gives up.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{
    RetryBody, RetryConfig,
    body::{Held, Holding},
    content,
    event::{Decision, GiveUp, RetryEvent},
    layer::Shared,
};
use crate::{
    BoxError,
    attempts::{AttemptBudget, AttemptsExhausted},
    classify::{
        CIRCUIT_OPEN, Classifier, Failure, FailureClass, InvalidContent, PeekBody, PeekedBody,
        ResponseView,
    },
    deadline::Deadline,
    metering::{Feeder, StreamProgress},
    provider::headers::is_event_stream,
    request::RequestMeta,
};

/// The most of a whole answer read for content validation: 1 MiB. A longer
/// answer is passed on unchecked.
const CONTENT_LIMIT: usize = 1 << 20;

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        // Waiting for the service to be ready for the next attempt.
        Ready,
        Calling { #[pin] fut: F },
        // An error response, read (bounded) to classify it. The states off
        // the happy path are boxed, to keep the future small to move.
        Peeking { peek: Box<PeekBody<B>> },
        // A stream, held until its first token (or until complete).
        Holding { hold: Box<Holding<B>> },
        // A whole answer, read for content validation.
        Validating { peek: Box<PeekBody<B>> },
        Waiting { sleep: Pin<Box<Sleep>> },
        // The call's attempt budget was spent before this layer's first
        // attempt (by layers further out).
        Exhausted,
        Done,
    }
}

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<S, ReqB, B, C>
    where
        S: Service<Request<ReqB>>,
    {
        shared: Arc<Shared<C>>,
        service: S,
        request: Request<ReqB>,
        attempt: u32,
        // Attempts an open breaker further in refused: nothing was sent.
        refusals: u32,
        // The call's upstream attempts, shared with the layers around and
        // inside.
        budget: AttemptBudget,
        previous_delay: Duration,
        span: tracing::Span,
        #[pin]
        state: State<S::Future, B>,
    }
}

impl<S, ReqB, B, C> ResponseFuture<S, ReqB, B, C>
where
    S: Service<Request<ReqB>>,
    ReqB: Clone,
{
    pub(crate) fn new(shared: Arc<Shared<C>>, mut service: S, mut request: Request<ReqB>) -> Self {
        // The first attempt is counted by whoever started it: the budget
        // counts it when it is made here, a layer further out when it made
        // the budget.
        let budget = AttemptBudget::get_or_insert(&mut request, shared.config.max_attempts);
        let span = attempt_span(&request, 1);
        let state = if !budget.is_overdrawn() {
            let _enter = span.enter();
            State::Calling {
                fut: service.call(request.clone()),
            }
        } else {
            State::Exhausted
        };
        ResponseFuture {
            shared,
            service,
            request,
            attempt: 1,
            refusals: 0,
            budget,
            previous_delay: Duration::ZERO,
            span,
            state,
        }
    }
}

fn attempt_span<B>(req: &Request<B>, attempt: u32) -> tracing::Span {
    let model = RequestMeta::get(req).and_then(RequestMeta::model);
    tracing::info_span!("llm.attempt", attempt, gen_ai.request.model = model)
}

/// The most refusals of an open breaker a call waits out, however they
/// fit its deadline: a bound for calls with no deadline.
const MAX_BREAKER_WAITS: u32 = 64;

/// What to do after a failed attempt; `refusals` of the `attempt`s made so
/// far were refused by a breaker further in (this one included).
fn decide<C, ReqB>(
    shared: &Shared<C>,
    request: &Request<ReqB>,
    attempt: u32,
    refusals: u32,
    budget: &AttemptBudget,
    previous_delay: Duration,
    failure: &Failure,
) -> Decision {
    let config = &shared.config;
    // A breaker further in refused the attempt: nothing reached the
    // provider, and with `wait_for_breaker` the call waits for the
    // breaker's probes.
    let refused = failure.code() == Some(CIRCUIT_OPEN);
    let retryable = failure.is_retryable()
        || (refused && config.wait_for_breaker && failure.retry_after().is_some());
    let give_up = |why| Decision::GiveUp(why);
    if !retryable {
        return give_up(GiveUp::NotRetryable);
    }
    // Attempts that reached the provider; a refusal of the breaker reached
    // nobody and is not one of them, so that a call waiting for a breaker's
    // probe (which may itself wait in a rate limiter) keeps its attempts.
    if attempt - refusals >= config.max_attempts || refusals > MAX_BREAKER_WAITS {
        return give_up(GiveUp::AttemptsExhausted);
    }
    let mut rng = rand::rng();
    let (delay, server_directed) = match failure.retry_after() {
        Some(d) if d > config.max_server_delay => return give_up(GiveUp::ServerDelayTooLong(d)),
        // A half-open breaker with its probes taken: back off a little.
        Some(d) if refused && d.is_zero() => (
            config.backoff.delay(attempt, previous_delay, &mut rng),
            false,
        ),
        Some(d) => (server_wait(config, d, &mut rng), true),
        None => (
            config.backoff.delay(attempt, previous_delay, &mut rng),
            false,
        ),
    };
    if let Some(deadline) = Deadline::get(request)
        && deadline.cannot_fit(Instant::now(), delay)
    {
        return give_up(GiveUp::DeadlineTooClose(delay));
    }
    // Only a retry that is made is paid for, and only by an outage: a
    // refusal of the breaker reached nobody, and a rate limit that says
    // exactly when the call fits is a healthy provider's answer.
    let free = refused
        || (failure.class() == FailureClass::RateLimited && failure.retry_after().is_some());
    // The call's attempts in all, whatever layers are nested: layers
    // further out may have spent them.
    if !budget.try_take() {
        return give_up(GiveUp::AttemptsExhausted);
    }
    if !free && shared.budget.as_ref().is_some_and(|b| !b.try_retry()) {
        budget.give_back();
        return give_up(GiveUp::BudgetExhausted);
    }
    Decision::Retry {
        delay,
        server_directed,
    }
}

/// The wait for a server-directed delay `d`: never shorter than `d` nor
/// than the floor, plus a little jitter so that callers told the same
/// instant do not all come back at it.
fn server_wait(config: &RetryConfig, d: Duration, rng: &mut impl rand::Rng) -> Duration {
    let jitter = config.server_delay_jitter.mul_f64(rng.random::<f64>());
    d.max(config.server_delay_floor).saturating_add(jitter)
}

/// Tells tracing and the hook.
fn report<C>(shared: &Shared<C>, attempt: u32, failure: &Failure, decision: Decision) {
    let class = failure.class();
    let status = failure.status().map(|s| s.as_u16());
    match decision {
        Decision::Retry {
            delay,
            server_directed,
        } => tracing::info!(
            attempt,
            class = %class,
            status,
            delay_ms = delay.as_millis() as u64,
            reason = if server_directed { "server" } else { "backoff" },
            "retrying"
        ),
        Decision::GiveUp(why) => tracing::debug!(
            attempt,
            class = %class,
            status,
            reason = why.as_str(),
            "not retrying"
        ),
    }
    if let Some(hook) = &shared.hook {
        hook(&RetryEvent {
            attempt,
            class,
            status: failure.status(),
            decision,
        });
    }
}

impl<S, ReqB, B, C> Future for ResponseFuture<S, ReqB, B, C>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    ReqB: Clone,
    B: Body,
    B::Error: Into<BoxError>,
    C: Classifier,
{
    type Output = Result<Response<RetryBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        let classifier = &shared.classifier;
        let meta = RequestMeta::get(this.request);
        loop {
            // A failed attempt: its failure, and what the caller gets if it
            // is the last.
            let (failure, last): (Failure, Result<Response<RetryBody<B>>, BoxError>) = match this
                .state
                .as_mut()
                .project()
            {
                StateProj::Ready => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    *this.attempt += 1;
                    *this.span = attempt_span(this.request, *this.attempt);
                    let fut = {
                        let _enter = this.span.enter();
                        this.service.call(this.request.clone())
                    };
                    this.state.set(State::Calling { fut });
                    continue;
                }
                StateProj::Calling { fut } => {
                    let res = {
                        let _enter = this.span.enter();
                        ready!(fut.poll(cx))
                    };
                    match res {
                        Err(e) => {
                            let e: BoxError = e.into();
                            (classifier.classify_error(&*e), Err(e))
                        }
                        Ok(res) => {
                            let status = res.status();
                            if classifier.needs_body(status) {
                                let limit = shared.config.error_body_limit;
                                this.state.set(State::Peeking {
                                    peek: Box::new(PeekBody::new(res, limit)),
                                });
                            } else if status.is_success() && is_event_stream(res.headers()) {
                                let config = &shared.config;
                                let limit = config.hold.limit(config.first_token_hold_limit);
                                let until_complete = config.hold.until_complete();
                                let format = meta.and_then(RequestMeta::format);
                                this.state.set(State::Holding {
                                    hold: Box::new(Holding::new(
                                        res,
                                        format,
                                        limit,
                                        until_complete,
                                    )),
                                });
                            } else if status.is_success()
                                && shared.config.content.is_some()
                                && !meta.is_some_and(RequestMeta::is_stream)
                            {
                                this.state.set(State::Validating {
                                    peek: Box::new(PeekBody::new(res, CONTENT_LIMIT)),
                                });
                            } else {
                                return this.succeed(res.map(PeekedBody::passthrough), false, None);
                            }
                            continue;
                        }
                    }
                }
                StateProj::Peeking { peek } => {
                    let res = ready!(Pin::new(&mut **peek).poll(cx));
                    let view = ResponseView::new(res.status(), res.headers())
                        .with_body(res.body().peeked())
                        .with_format(meta.and_then(RequestMeta::format));
                    match classifier.classify_response(&view).into_failure() {
                        None => return this.succeed(res, false, None),
                        Some(f) => (f, Ok(res.map(|b| RetryBody::new(b, None, None)))),
                    }
                }
                StateProj::Holding { hold } => match ready!(Pin::new(&mut **hold).poll(cx)) {
                    (Held::Handover, res, feeder) => return this.succeed(res, true, feeder),
                    // Dropped with the attempt: what it parsed is published.
                    (Held::Failed(e), res, _feeder) => {
                        // Nothing of an answer reached the caller (no output
                        // yet, or none at all with `Hold::Complete`): if this
                        // is the last attempt, the caller gets the typed
                        // error alone, never a partial answer — and a
                        // fallback further out moves on.
                        let failure = classifier.classify_error(&*e);
                        drop(res);
                        (failure, Err(e))
                    }
                },
                StateProj::Validating { peek } => {
                    let res = ready!(Pin::new(&mut **peek).poll(cx));
                    let checks = shared.config.content.unwrap_or_default();
                    match content::problem(&checks, meta, res.body()) {
                        None => return this.succeed(res, false, None),
                        Some(problem) => (
                            classifier.classify_error(&InvalidContent::new(problem)),
                            Ok(res.map(|b| RetryBody::new(b, None, None))),
                        ),
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                    continue;
                }
                StateProj::Exhausted => {
                    this.state.set(State::Done);
                    return Poll::Ready(Err(Box::new(AttemptsExhausted {
                        total: this.budget.total(),
                    })));
                }
                StateProj::Done => panic!("retry future polled after completion"),
            };
            if failure.code() == Some(CIRCUIT_OPEN) {
                // Nothing was sent (the breaker gave the attempt back).
                *this.refusals += 1;
            }
            let decision = {
                let _enter = this.span.enter();
                let d = decide(
                    shared,
                    this.request,
                    *this.attempt,
                    *this.refusals,
                    this.budget,
                    *this.previous_delay,
                    &failure,
                );
                report(shared, *this.attempt, &failure, d);
                d
            };
            match decision {
                Decision::Retry { delay, .. } => {
                    // The failed attempt's response is dropped here, which
                    // closes its connection.
                    drop(last);
                    *this.previous_delay = delay;
                    this.state.set(State::Waiting {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                    });
                }
                Decision::GiveUp(_) => {
                    this.state.set(State::Done);
                    return Poll::Ready(last);
                }
            }
        }
    }
}

impl<S, ReqB, B, C> ResponseFutureProj<'_, S, ReqB, B, C>
where
    S: Service<Request<ReqB>>,
{
    /// An attempt answered: refill the budget, hand the answer over.
    fn succeed(
        &mut self,
        res: Response<PeekedBody<B>>,
        stream_handed_over: bool,
        feeder: Option<Feeder>,
    ) -> Poll<Result<Response<RetryBody<B>>, BoxError>> {
        if res.status().is_success()
            && let Some(b) = &self.shared.budget
        {
            b.on_success();
        }
        self.state.set(State::Done);
        let stream = stream_handed_over
            .then(|| StreamProgress::get(&res).cloned())
            .flatten();
        Poll::Ready(Ok(res.map(|b| RetryBody::new(b, stream, feeder))))
    }
}

impl<S, ReqB, B, C> fmt::Debug for ResponseFuture<S, ReqB, B, C>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
