//! The metered response body.

use std::{
    borrow::Cow,
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{Response, StatusCode, header::CONTENT_TYPE};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{
    MalformedStream, StreamError, TruncatedStream,
    progress::{Feeder, StreamProgress, observe},
    report::{CallInfo, Outcome, Reporter, UsageObservers, UsageReport, UsageSource},
};
use crate::{
    BoxError,
    provider::{WireFormat, headers::is_event_stream, usage::scan_json},
    request::RequestMeta,
    usage::{FinishReason, Usage},
};

/// The most of a JSON body kept for the usage scan: 1 MiB. Past it, the
/// meter stops keeping chunks and reports the estimate.
pub const JSON_RETAIN_LIMIT: usize = 1 << 20;

/// How a [`MeteredBody`] reads the body it wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// A complete JSON document: chunks are kept (as cheap clones, up to
    /// [`JSON_RETAIN_LIMIT`]) and scanned for usage at the end.
    Json,
    /// A `text/event-stream`: events are parsed as they pass.
    Sse,
    /// Not read at all (an error response, which uses no tokens).
    Unmetered,
}

impl BodyKind {
    /// Chooses from a response: a non-success status is
    /// [`Unmetered`](BodyKind::Unmetered); otherwise the `content-type`
    /// decides (`text/event-stream` or JSON); without one, the request's
    /// stream flag does.
    pub fn of_response<B>(res: &Response<B>, meta: Option<&RequestMeta>) -> BodyKind {
        Self::choose(res, meta.is_some_and(RequestMeta::is_stream))
    }

    pub(crate) fn choose<B>(res: &Response<B>, stream: bool) -> BodyKind {
        if !res.status().is_success() {
            return BodyKind::Unmetered;
        }
        if is_event_stream(res.headers()) {
            return BodyKind::Sse;
        }
        let ct = res
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.contains("json") || !stream {
            BodyKind::Json
        } else {
            BodyKind::Sse
        }
    }
}

pin_project! {
    /// A response body that meters usage as it passes.
    ///
    /// Every frame and error of the inner body is passed on unchanged and
    /// at once; nothing is collected for the caller, nothing is added. On
    /// the way it
    ///
    /// - follows an SSE stream through its [`StreamProgress`] — usage, the
    ///   finish reason, the first token, the terminal event, an error
    ///   event, a malformed event, a cut — parsing it itself unless a layer
    ///   further in already does (a stream is parsed once per response);
    /// - keeps cheap clones of a JSON body's chunks (up to
    ///   [`JSON_RETAIN_LIMIT`]) for a targeted usage scan at its end;
    /// - reports a [`UsageReport`] exactly once to the
    ///   [`UsageObservers`]: at the end of the body, at its first error, or
    ///   when it is dropped, with an [`Outcome`] that says how the stream
    ///   went ([`StreamError`], [`MalformedStream`] and [`TruncatedStream`]
    ///   are recorded, not yielded: turning them into an error for the
    ///   caller is a policy, applied by [`RetryLayer`]'s body).
    ///
    /// # Actual or estimated
    ///
    /// Usage is [`Actual`](UsageSource::Actual) when the format's final
    /// usage report arrived (for a stream: the chat usage chunk, the
    /// responses terminal event, Anthropic's `message_delta`, Gemini's
    /// `usageMetadata` at its finish reason), even if the stream failed
    /// later. Otherwise it is [`Estimated`](UsageSource::Estimated): the
    /// counts that did arrive (Anthropic's `message_start` gives the input)
    /// are kept, a missing input is the request's
    /// [`estimated_input_tokens`](RequestMeta::estimated_input_tokens), and
    /// the output is the larger of what was reported and the streamed text
    /// divided by four. A JSON body without usage estimates its output as
    /// its length divided by four, which overcounts: budgets err on the
    /// safe side. Error responses report zero actual usage.
    ///
    /// [`RetryLayer`]: https://docs.rs/llm-tower/latest/llm_tower/retry/struct.RetryLayer.html
    pub struct MeteredBody<B: Body> {
        #[pin]
        inner: B,
        // Before `meter`: dropped first, it publishes what it parsed for
        // the report `meter` makes when dropped.
        feeder: Option<Feeder>,
        meter: Metering<B::Data>,
    }
}

impl<B: Body> MeteredBody<B> {
    /// Wraps a success body of a request described by `meta`: SSE when the
    /// request asked for a stream, JSON otherwise.
    pub fn new(inner: B, meta: Option<&RequestMeta>, observers: UsageObservers) -> Self {
        let kind = if meta.is_some_and(RequestMeta::is_stream) {
            BodyKind::Sse
        } else {
            BodyKind::Json
        };
        Self::with_kind(inner, kind, meta, observers)
    }

    /// Wraps a body read as `kind`, for a `200 OK` response.
    pub fn with_kind(
        inner: B,
        kind: BodyKind,
        meta: Option<&RequestMeta>,
        observers: UsageObservers,
    ) -> Self {
        let reporter = Reporter::new(CallInfo::from_meta(meta), observers);
        let format = meta.and_then(RequestMeta::format);
        let (progress, feeder) = match kind {
            BodyKind::Unmetered => (None, None),
            _ => {
                let (p, f) = StreamProgress::detached(kind == BodyKind::Sse, format);
                (Some(p), Some(f))
            }
        };
        Self::from_parts(
            inner,
            kind,
            StatusCode::OK,
            format,
            reporter,
            progress,
            feeder,
        )
    }

    /// Wraps the body of `res`, read as [`BodyKind::of_response`] says, with
    /// the response's status in the report. A success response gets a
    /// [`StreamProgress`] in its extensions (or keeps the one a layer
    /// further in attached).
    pub fn wrap_response(
        res: Response<B>,
        meta: Option<&RequestMeta>,
        observers: UsageObservers,
    ) -> Response<Self> {
        let reporter = Reporter::new(CallInfo::from_meta(meta), observers);
        Self::wrap_with(res, reporter)
    }

    pub(crate) fn wrap_with(mut res: Response<B>, reporter: Reporter) -> Response<Self> {
        let kind = BodyKind::choose(&res, reporter.info.stream);
        let status = res.status();
        let format = reporter.info.format;
        let (progress, feeder) = match kind {
            BodyKind::Unmetered => (None, None),
            _ => match StreamProgress::attach_with(&mut res, format, reporter.info.stream) {
                Some((p, f)) => (Some(p), f),
                None => (None, None),
            },
        };
        res.map(|b| Self::from_parts(b, kind, status, format, reporter, progress, feeder))
    }

    fn from_parts(
        inner: B,
        kind: BodyKind,
        status: StatusCode,
        format: Option<WireFormat>,
        reporter: Reporter,
        progress: Option<StreamProgress>,
        feeder: Option<Feeder>,
    ) -> Self {
        let mode = match (kind, &progress) {
            (BodyKind::Json, _) => Mode::Json {
                format,
                first: None,
                rest: Vec::new(),
                overflow: false,
            },
            (BodyKind::Sse, Some(p)) if p.is_stream() => Mode::Sse,
            // A layer further in read the body as JSON after all: so do we.
            (BodyKind::Sse, Some(_)) => Mode::Json {
                format,
                first: None,
                rest: Vec::new(),
                overflow: false,
            },
            _ => Mode::Unmetered,
        };
        MeteredBody {
            inner,
            feeder,
            meter: Metering {
                mode,
                done: false,
                status,
                bytes: 0,
                reporter,
                progress,
            },
        }
    }

    /// How the body is read.
    pub fn kind(&self) -> BodyKind {
        match self.meter.mode {
            Mode::Json { .. } => BodyKind::Json,
            Mode::Sse => BodyKind::Sse,
            Mode::Unmetered => BodyKind::Unmetered,
        }
    }

    /// SSE events with data seen so far (`0` unless SSE).
    pub fn events_seen(&self) -> u64 {
        match (&self.meter.mode, &self.meter.progress) {
            (Mode::Sse, Some(p)) => p.events(),
            _ => 0,
        }
    }

    /// Whether part of the answer has arrived: a stream's first token
    /// ([`StreamProgress::has_output`]), or any byte of a JSON body.
    pub fn first_token_seen(&self) -> bool {
        match (&self.meter.mode, &self.meter.progress) {
            (Mode::Sse, Some(p)) => p.has_output(),
            (Mode::Json { .. }, _) => self.meter.bytes > 0,
            _ => false,
        }
    }

    /// Where the body stands: the handle shared with every layer wrapping
    /// it (`None` for an error response).
    pub fn progress(&self) -> Option<&StreamProgress> {
        self.meter.progress.as_ref()
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body,
    B::Data: AsRef<[u8]> + Clone,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        let meter = this.meter;
        if meter.done {
            return Poll::Ready(None);
        }
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        observe(this.feeder, &frame, || this.inner.is_end_stream());
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    meter.feed(data);
                }
                // A consumer may stop at `is_end_stream`: conclude now.
                if this.inner.is_end_stream() {
                    meter.end_of_stream();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                meter.conclude(Outcome::BodyError);
                meter.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                meter.end_of_stream();
                meter.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.meter.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for MeteredBody<B>
where
    B: Body + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredBody")
            .field("inner", &self.inner)
            .field("kind", &self.kind())
            .field("status", &self.meter.status)
            .finish_non_exhaustive()
    }
}

enum Mode<D> {
    Json {
        format: Option<WireFormat>,
        /// Most bodies come in one chunk: kept without allocating.
        first: Option<D>,
        rest: Vec<D>,
        overflow: bool,
    },
    /// Followed through the [`StreamProgress`].
    Sse,
    Unmetered,
}

/// Everything but the inner body; reports on drop if nothing else did.
struct Metering<D> {
    mode: Mode<D>,
    done: bool,
    status: StatusCode,
    bytes: u64,
    reporter: Reporter,
    progress: Option<StreamProgress>,
}

impl<D: AsRef<[u8]> + Clone> Metering<D> {
    fn feed(&mut self, data: &D) {
        let bytes = data.as_ref();
        self.bytes += bytes.len() as u64;
        if let Mode::Json {
            first,
            rest,
            overflow,
            ..
        } = &mut self.mode
            && !*overflow
        {
            if self.bytes > JSON_RETAIN_LIMIT as u64 {
                *overflow = true;
                *first = None;
                *rest = Vec::new();
            } else if !bytes.is_empty() {
                match first {
                    None => *first = Some(data.clone()),
                    Some(_) => rest.push(data.clone()),
                }
            }
        }
    }
}

impl<D: AsRef<[u8]>> Metering<D> {
    /// The inner body ended: scan a JSON body, judge a stream, report.
    fn end_of_stream(&mut self) {
        let outcome = self.stream_outcome().unwrap_or(Outcome::Completed);
        self.conclude(outcome);
    }

    /// How a stream went, when its progress recorded a failure.
    fn stream_outcome(&self) -> Option<Outcome> {
        failure_outcome(self.progress.as_ref()?)
    }

    /// Reports once, however the body ended.
    fn conclude(&mut self, outcome: Outcome) {
        if self.reporter.is_done() {
            return;
        }
        let json = match (&self.mode, outcome) {
            (
                Mode::Json {
                    format,
                    first,
                    rest,
                    overflow: false,
                },
                Outcome::Completed,
            ) => {
                let body: Cow<'_, [u8]> = match first {
                    None => Cow::Borrowed(&[]),
                    Some(one) if rest.is_empty() => Cow::Borrowed(one.as_ref()),
                    Some(one) => {
                        let mut all = Vec::with_capacity(self.bytes as usize);
                        for c in std::iter::once(one).chain(rest) {
                            all.extend_from_slice(c.as_ref());
                        }
                        Cow::Owned(all)
                    }
                };
                let scan = scan_json(*format, &body);
                Some((scan.usage, scan.finish_reason))
            }
            _ => None,
        };
        self.report(outcome, json);
    }
}

impl<D> Metering<D> {
    fn report(&mut self, outcome: Outcome, json: Option<(Option<Usage>, Option<FinishReason>)>) {
        if self.reporter.is_done() {
            return;
        }
        let estimated_input = self.reporter.info.estimated_input_tokens;
        let mut events = 0;
        let estimate = |bytes: u64| Usage::new(estimated_input, bytes.div_ceil(4));
        let (usage, source, finish) = match (&self.mode, &self.progress) {
            (Mode::Unmetered, _) | (Mode::Sse, None) => {
                (Usage::default(), UsageSource::Actual, None)
            }
            (Mode::Json { .. }, _) => match json {
                Some((Some(usage), finish)) => (usage, UsageSource::Actual, finish),
                other => (
                    estimate(self.bytes),
                    UsageSource::Estimated,
                    other.and_then(|(_, f)| f),
                ),
            },
            (Mode::Sse, Some(p)) if p.gave_up() => {
                (estimate(self.bytes), UsageSource::Estimated, None)
            }
            (Mode::Sse, Some(p)) => p
                .with_usage(|stream| {
                    events = stream.events_seen();
                    let finish = stream.finish_reason().cloned();
                    match stream.usage() {
                        Some(usage) if stream.has_final_usage() => {
                            (usage, UsageSource::Actual, finish)
                        }
                        partial => {
                            let mut usage = partial.unwrap_or_default();
                            if !stream.has_input() {
                                usage.input_tokens = estimated_input;
                            }
                            usage.output_tokens =
                                usage.output_tokens.max(stream.estimated_output_tokens());
                            (usage, UsageSource::Estimated, finish)
                        }
                    }
                })
                .unwrap_or((estimate(self.bytes), UsageSource::Estimated, None)),
        };
        let mut report = UsageReport::new(usage, source, outcome);
        report.finish_reason = finish;
        report.status = Some(self.status);
        report.events = events;
        self.reporter.report(report);
    }
}

impl<D> Drop for Metering<D> {
    fn drop(&mut self) {
        if self.reporter.is_done() {
            return;
        }
        // A client may stop reading at the terminal event: that stream is
        // complete, not dropped. A layer further out that gave the body up
        // for a failure recorded why.
        let failed = self.progress.as_ref().and_then(failure_outcome);
        let outcome = match &self.progress {
            _ if failed.is_some() => failed.expect("checked"),
            Some(p) if matches!(self.mode, Mode::Sse) && p.is_complete() => Outcome::Completed,
            _ => Outcome::DroppedEarly,
        };
        self.report(outcome, None);
    }
}

/// The outcome a recorded failure means.
fn failure_outcome(p: &StreamProgress) -> Option<Outcome> {
    let e = p.failure()?;
    Some(if e.is::<StreamError>() {
        Outcome::StreamError
    } else if e.is::<MalformedStream>() {
        Outcome::Malformed
    } else if e.is::<TruncatedStream>() {
        Outcome::Truncated
    } else if is_timeout(e) {
        Outcome::TimedOut
    } else {
        Outcome::Failed
    })
}

/// Whether a failure a layer recorded is a timeout.
fn is_timeout(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cur {
        #[cfg(feature = "timeout")]
        if e.is::<crate::timeout::Elapsed>() {
            return true;
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        cur = e.source();
    }
    false
}
