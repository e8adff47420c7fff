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
    report::{CallInfo, Outcome, Reporter, UsageObservers, UsageReport, UsageSource},
    sse::SseParser,
};
use crate::{
    BoxError,
    provider::{
        WireFormat,
        headers::is_event_stream,
        usage::{StreamSignal, StreamUsage, scan_json},
    },
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

    fn choose<B>(res: &Response<B>, stream: bool) -> BodyKind {
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
    /// Every frame of the inner body is passed on unchanged and at once;
    /// nothing is collected for the caller. On the way it
    ///
    /// - parses SSE events incrementally and follows usage, the finish
    ///   reason and the terminal event ([`StreamUsage`]);
    /// - keeps cheap clones of a JSON body's chunks (up to
    ///   [`JSON_RETAIN_LIMIT`]) for a targeted usage scan at its end;
    /// - turns an error event inside the stream into a [`StreamError`], a
    ///   stream that ends without its terminal event into a
    ///   [`TruncatedStream`] and an unreadable event that matters into a
    ///   [`MalformedStream`], yielded after the frame that revealed them
    ///   (the bytes before them have reached the caller);
    /// - reports a [`UsageReport`] exactly once to the
    ///   [`UsageObservers`]: at the end of the body, at its first error, or
    ///   when it is dropped.
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
    pub struct MeteredBody<B: Body> {
        #[pin]
        inner: B,
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
        Self::from_parts(
            inner,
            kind,
            StatusCode::OK,
            meta.and_then(RequestMeta::format),
            reporter,
        )
    }

    /// Wraps the body of `res`, read as [`BodyKind::of_response`] says, with
    /// the response's status in the report.
    pub fn wrap_response(
        res: Response<B>,
        meta: Option<&RequestMeta>,
        observers: UsageObservers,
    ) -> Response<Self> {
        let reporter = Reporter::new(CallInfo::from_meta(meta), observers);
        Self::wrap_with(res, reporter)
    }

    pub(crate) fn wrap_with(res: Response<B>, reporter: Reporter) -> Response<Self> {
        let kind = BodyKind::choose(&res, reporter.info.stream);
        let status = res.status();
        let format = reporter.info.format;
        res.map(|b| Self::from_parts(b, kind, status, format, reporter))
    }

    fn from_parts(
        inner: B,
        kind: BodyKind,
        status: StatusCode,
        format: Option<WireFormat>,
        reporter: Reporter,
    ) -> Self {
        let mode = match kind {
            BodyKind::Json => Mode::Json {
                format,
                first: None,
                rest: Vec::new(),
                overflow: false,
            },
            BodyKind::Sse => Mode::Sse(Box::new(SseState {
                parser: SseParser::new(),
                stream: StreamUsage::new(format),
            })),
            BodyKind::Unmetered => Mode::Unmetered,
        };
        MeteredBody {
            inner,
            meter: Metering {
                mode,
                state: State::Running,
                status,
                bytes: 0,
                reporter,
            },
        }
    }

    /// How the body is read.
    pub fn kind(&self) -> BodyKind {
        match self.meter.mode {
            Mode::Json { .. } => BodyKind::Json,
            Mode::Sse(_) | Mode::GaveUp => BodyKind::Sse,
            Mode::Unmetered => BodyKind::Unmetered,
        }
    }

    /// SSE events with data seen so far (`0` unless SSE).
    pub fn events_seen(&self) -> u64 {
        match &self.meter.mode {
            Mode::Sse(sse) => sse.stream.events_seen(),
            _ => 0,
        }
    }

    /// Whether part of the answer has arrived: an SSE event carrying
    /// content (see [`StreamUsage::content_events`]), or any byte of a JSON
    /// body.
    pub fn first_token_seen(&self) -> bool {
        match &self.meter.mode {
            Mode::Sse(sse) => sse.stream.content_events() > 0,
            Mode::Json { .. } | Mode::GaveUp => self.meter.bytes > 0,
            Mode::Unmetered => false,
        }
    }

    /// The stream's usage tracker, for SSE bodies.
    pub fn stream_usage(&self) -> Option<&StreamUsage> {
        match &self.meter.mode {
            Mode::Sse(sse) => Some(&sse.stream),
            _ => None,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
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
        match &mut meter.state {
            State::Running => {}
            State::Done => return Poll::Ready(None),
            State::Failing(e) => {
                let e = e.take();
                meter.state = State::Done;
                return Poll::Ready(e.map(Err));
            }
        }
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    meter.feed(data);
                }
                // A consumer may stop at `is_end_stream`: conclude now.
                if matches!(meter.state, State::Running) && this.inner.is_end_stream() {
                    meter.end_of_stream();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                meter.conclude(Outcome::BodyError);
                meter.state = State::Done;
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                meter.end_of_stream();
                match std::mem::replace(&mut meter.state, State::Done) {
                    State::Failing(e) => Poll::Ready(e.map(Err)),
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.meter.state, State::Done)
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

enum State {
    Running,
    /// An error to yield at the next poll, then the end.
    Failing(Option<BoxError>),
    Done,
}

enum Mode<D> {
    Json {
        format: Option<WireFormat>,
        /// Most bodies come in one chunk: kept without allocating.
        first: Option<D>,
        rest: Vec<D>,
        overflow: bool,
    },
    /// Boxed: the parser's buffers would triple the size of every body.
    Sse(Box<SseState>),
    /// A stream event outgrew the parser's limit: bytes still pass, usage
    /// is estimated.
    GaveUp,
    Unmetered,
}

struct SseState {
    parser: SseParser,
    stream: StreamUsage,
}

/// Everything but the inner body; reports on drop if nothing else did.
struct Metering<D> {
    mode: Mode<D>,
    state: State,
    status: StatusCode,
    bytes: u64,
    reporter: Reporter,
}

impl<D: AsRef<[u8]> + Clone> Metering<D> {
    fn feed(&mut self, data: &D) {
        let bytes = data.as_ref();
        self.bytes += bytes.len() as u64;
        match &mut self.mode {
            Mode::Unmetered | Mode::GaveUp => {}
            Mode::Json {
                first,
                rest,
                overflow,
                ..
            } => {
                if !*overflow {
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
            Mode::Sse(sse) => {
                let SseState { parser, stream } = &mut **sse;
                let mut signal = StreamSignal::Continue;
                parser.feed(bytes, |ev| {
                    if signal == StreamSignal::Continue {
                        signal = stream.on_event(ev.event, ev.data);
                    }
                });
                if parser.is_overflowed() {
                    self.mode = Mode::GaveUp;
                    return;
                }
                let (outcome, error): (_, BoxError) = match signal {
                    StreamSignal::Continue => return,
                    StreamSignal::Error(e) => (Outcome::StreamError, StreamError::new(e).into()),
                    StreamSignal::Malformed(why) => {
                        (Outcome::Malformed, MalformedStream::new(why).into())
                    }
                };
                self.conclude(outcome);
                self.state = State::Failing(Some(error));
            }
        }
    }

    /// The inner body ended: scan a JSON body, check a stream's terminal
    /// event, report.
    fn end_of_stream(&mut self) {
        if let Mode::Sse(sse) = &self.mode {
            if !sse.stream.is_complete() {
                self.conclude(Outcome::Truncated);
                self.state = State::Failing(Some(TruncatedStream::new().into()));
                return;
            }
        }
        self.conclude(Outcome::Completed);
        self.state = State::Done;
    }
}

impl<D> Metering<D> {
    /// Reports once, however the body ended.
    fn conclude(&mut self, outcome: Outcome)
    where
        D: AsRef<[u8]>,
    {
        let scan = match (&self.mode, outcome) {
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
                Some(scan_json(*format, &body))
            }
            _ => None,
        };
        self.report(outcome, scan.map(|s| (s.usage, s.finish_reason)));
    }

    fn report(&mut self, outcome: Outcome, json: Option<(Option<Usage>, Option<FinishReason>)>) {
        if self.reporter.is_done() {
            return;
        }
        let estimated_input = self.reporter.info.estimated_input_tokens;
        let mut events = 0;
        let (usage, source, finish) = match &self.mode {
            Mode::Unmetered => (Usage::default(), UsageSource::Actual, None),
            Mode::GaveUp => (
                Usage::new(estimated_input, self.bytes.div_ceil(4)),
                UsageSource::Estimated,
                None,
            ),
            Mode::Json { .. } => match json {
                Some((Some(usage), finish)) => (usage, UsageSource::Actual, finish),
                other => (
                    Usage::new(estimated_input, self.bytes.div_ceil(4)),
                    UsageSource::Estimated,
                    other.and_then(|(_, f)| f),
                ),
            },
            Mode::Sse(sse) => {
                let stream = &sse.stream;
                events = stream.events_seen();
                let finish = stream.finish_reason().cloned();
                match stream.usage() {
                    Some(usage) if stream.has_final_usage() => (usage, UsageSource::Actual, finish),
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
            }
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
        // complete, not dropped.
        let outcome = match &self.mode {
            Mode::Sse(sse) if sse.stream.is_complete() => Outcome::Completed,
            _ => Outcome::DroppedEarly,
        };
        self.report(outcome, None);
    }
}
