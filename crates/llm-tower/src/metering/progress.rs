//! [`StreamProgress`]: where a response body stands, parsed once and read
//! by every layer that wraps it.

use std::{
    error::Error as StdError,
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{
            AtomicU8, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    task::{Context, Poll, ready},
};

use bytes::Buf;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{BodyKind, MalformedStream, StreamError, TruncatedStream, sse::SseParser};
use crate::{
    BoxError,
    provider::{
        WireFormat,
        usage::{StreamSignal, StreamUsage},
    },
    request::RequestMeta,
    usage::{FinishReason, Usage},
};

const OUTPUT: u8 = 1;
const COMPLETE: u8 = 1 << 1;
const FAILED: u8 = 1 << 2;
const ENDED: u8 = 1 << 3;
const SSE: u8 = 1 << 4;
/// An event outgrew the parser's limit: the rest is passed on unjudged.
const GAVE_UP: u8 = 1 << 5;

/// Where one response body stands: its first token, its end, and how it
/// failed — parsed **once**, by the innermost layer that needs to know,
/// and shared with every layer that wraps the same body.
///
/// The handle lives in the response's extensions. The first layer on the
/// way out that cares about a stream's progress — the meter when it is
/// there, else the timeout, the breaker or retry, whichever is innermost —
/// finds none, [attaches](StreamProgress::attach) one and parses the body
/// as it passes; every layer further out finds it and only reads it. A
/// layer used alone therefore still works, and a stack of them never parses
/// a stream twice.
///
/// What it records is written once, in [`provider`](crate::provider)
/// ([`StreamUsage`]): the *first token* is the first event carrying model
/// output ([`StreamUsage::output_events`]), not Anthropic's
/// `message_start` or `ping`, nor an OpenAI role chunk or empty delta; a
/// stream is *complete* once its finish reason or terminal event came; an
/// error event, an event that is not valid JSON, and a stream that ends
/// before it is complete are *failures* ([`StreamError`],
/// [`MalformedStream`], [`TruncatedStream`]).
///
/// Observing is not acting: the handle records, and each layer decides what
/// a failure means for it (retry retries it before the first token and
/// hands it to the caller as a typed error after; the breaker counts it;
/// the meter reports it). A layer that gives a body up because of a
/// failure of its own — a timeout, say — [records it](Self::record_failure)
/// first, so the layers inside, about to be dropped, see the call for what
/// it was rather than a cancellation.
///
/// Cloning is one reference count; reading is one atomic load.
#[derive(Clone)]
pub struct StreamProgress {
    shared: Arc<Shared>,
}

struct Shared {
    flags: AtomicU8,
    first_output: OnceLock<Instant>,
    failure: OnceLock<Failed>,
    events: AtomicU64,
    bytes: AtomicU64,
    /// A copy of the stream's tracker, published by the feeder when its
    /// usage or finish reason changes and when the body ends: a few times
    /// per stream, never per frame. `None` for a body that is not a stream.
    usage: Mutex<Option<StreamUsage>>,
}

/// Feeds what a body just yielded to `feeder`, if there is one: a frame's
/// data, its end (`None`, or a frame after which `is_end` says the body is
/// over), its failure. The bodies of llm-tower's layers call it inline, so
/// following a stream adds no layer of its own.
pub(crate) fn observe<D: Buf, E>(
    feeder: &mut Option<Feeder>,
    frame: &Option<Result<Frame<D>, E>>,
    is_end: impl FnOnce() -> bool,
) {
    let Some(feeder) = feeder else {
        return;
    };
    match frame {
        Some(Ok(f)) => {
            if let Some(data) = f.data_ref() {
                feeder.feed_buf(data);
            }
            // A reader may stop at `is_end_stream`: end it now.
            if is_end() {
                feeder.end();
            }
        }
        Some(Err(_)) => feeder.body_failed(),
        None => feeder.end(),
    }
}

/// What the feeder parses with, its own: no lock per frame.
struct Parse {
    parser: SseParser,
    usage: StreamUsage,
    /// The tracker's revision last published.
    published: u64,
}

/// A failure recorded in the handle; the first one wins.
#[derive(Clone, Debug)]
enum Failed {
    Event(StreamError),
    Malformed(MalformedStream),
    Truncated(TruncatedStream),
    /// Recorded by a layer that gave the body up.
    Other(Arc<dyn StdError + Send + Sync>),
}

impl StreamProgress {
    fn new(sse: bool, format: Option<WireFormat>) -> Self {
        StreamProgress {
            shared: Arc::new(Shared {
                flags: AtomicU8::new(if sse { SSE } else { 0 }),
                first_output: OnceLock::new(),
                failure: OnceLock::new(),
                events: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                usage: Mutex::new(sse.then(|| StreamUsage::new(format))),
            }),
        }
    }

    fn feeder(&self, format: Option<WireFormat>) -> Feeder {
        Feeder {
            progress: self.clone(),
            parse: self.is_stream().then(|| {
                Box::new(Parse {
                    parser: SseParser::new(),
                    usage: StreamUsage::new(format),
                    published: 0,
                })
            }),
            done: false,
        }
    }

    /// A handle not attached to any response, and the right to feed it.
    pub(crate) fn detached(sse: bool, format: Option<WireFormat>) -> (StreamProgress, Feeder) {
        let progress = StreamProgress::new(sse, format);
        let feeder = progress.feeder(format);
        (progress, feeder)
    }

    /// The progress of a response's body, if a layer attached one.
    pub fn get<B>(res: &Response<B>) -> Option<&StreamProgress> {
        res.extensions().get::<StreamProgress>()
    }

    /// The progress of a successful response's body: the one a layer
    /// further in attached, or a new one, attached now, that the returned
    /// [`Feeder`] must be given every frame of the body (wrap the body in
    /// [`ProgressBody`] to do that). `None` for a response that is not a
    /// success: its body is an error, not an answer.
    ///
    /// `meta` tells the wire format and whether a stream was asked for;
    /// the `content-type` decides whether the body is parsed as SSE.
    pub fn attach<B>(
        res: &mut Response<B>,
        meta: Option<&RequestMeta>,
    ) -> Option<(StreamProgress, Option<Feeder>)> {
        Self::attach_with(
            res,
            meta.and_then(RequestMeta::format),
            meta.is_some_and(RequestMeta::is_stream),
        )
    }

    /// [`attach`](Self::attach), given the request's wire format and stream
    /// flag.
    pub fn attach_with<B>(
        res: &mut Response<B>,
        format: Option<WireFormat>,
        stream_request: bool,
    ) -> Option<(StreamProgress, Option<Feeder>)> {
        if !res.status().is_success() {
            return None;
        }
        if let Some(p) = res.extensions().get::<StreamProgress>() {
            return Some((p.clone(), None));
        }
        let sse = BodyKind::choose(res, stream_request) == BodyKind::Sse;
        let progress = StreamProgress::new(sse, format);
        res.extensions_mut().insert(progress.clone());
        let feeder = progress.feeder(format);
        Some((progress, Some(feeder)))
    }

    fn flags(&self) -> u8 {
        self.shared.flags.load(Acquire)
    }

    fn set(&self, flag: u8) {
        self.shared.flags.fetch_or(flag, Release);
    }

    /// Whether the body is an event stream (parsed event by event).
    pub fn is_stream(&self) -> bool {
        self.flags() & SSE != 0
    }

    /// Whether the first token (the first event carrying model output) has
    /// passed. Always `false` for a body that is not a stream.
    pub fn has_output(&self) -> bool {
        self.flags() & OUTPUT != 0
    }

    /// When the first token passed.
    pub fn first_output_at(&self) -> Option<Instant> {
        self.shared.first_output.get().copied()
    }

    /// Whether the stream delivered its finish reason or terminal event.
    pub fn is_complete(&self) -> bool {
        self.flags() & COMPLETE != 0
    }

    /// Whether the body has ended (its last frame passed, or it failed).
    pub fn is_ended(&self) -> bool {
        self.flags() & ENDED != 0
    }

    /// Whether a failure was recorded.
    pub fn has_failed(&self) -> bool {
        self.flags() & FAILED != 0
    }

    /// The failure recorded, if any: a [`StreamError`], a
    /// [`MalformedStream`], a [`TruncatedStream`], or the error a layer gave
    /// the body up for (see [`record_failure`](Self::record_failure)).
    pub fn failure(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        if !self.has_failed() {
            return None;
        }
        Some(match self.shared.failure.get()? {
            Failed::Event(e) => e,
            Failed::Malformed(e) => e,
            Failed::Truncated(e) => e,
            Failed::Other(e) => &**e,
        })
    }

    /// The failure recorded, as an error to yield: a copy of the typed
    /// error ([`StreamError`], [`MalformedStream`], [`TruncatedStream`]), or
    /// for a failure recorded by a layer, an error whose
    /// [`source`](StdError::source) is it.
    pub fn failure_error(&self) -> Option<BoxError> {
        if !self.has_failed() {
            return None;
        }
        Some(match self.shared.failure.get()? {
            Failed::Event(e) => Box::new(e.clone()),
            Failed::Malformed(e) => Box::new(e.clone()),
            Failed::Truncated(e) => Box::new(e.clone()),
            Failed::Other(e) => Box::new(Recorded(e.clone())),
        })
    }

    /// Records that a layer gives the body up because of `error` (a
    /// timeout, say), unless a failure is recorded already. The layers
    /// inside, whose bodies are about to be dropped, then report the call
    /// as failed for that reason rather than as abandoned by the caller.
    pub fn record_failure(&self, error: impl Into<BoxError>) {
        let error: Arc<dyn StdError + Send + Sync> = Arc::from(error.into());
        self.fail(Failed::Other(error));
    }

    fn fail(&self, failed: Failed) {
        if self.shared.failure.set(failed).is_ok() {
            self.set(FAILED);
        }
    }

    /// SSE events with data seen so far.
    pub fn events(&self) -> u64 {
        self.shared.events.load(Relaxed)
    }

    /// Bytes of body seen so far.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Relaxed)
    }

    /// The finish reason, once the stream sent one.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.with_usage(|u| u.finish_reason().cloned()).flatten()
    }

    /// The usage the stream reported so far (see [`StreamUsage::usage`]).
    pub fn usage(&self) -> Option<Usage> {
        self.with_usage(StreamUsage::usage).flatten()
    }

    /// Reads the stream's tracker (`None` for a body that is not parsed
    /// as a stream). Its usage and finish reason are current; its counts
    /// of events and text are as of the last change of usage, or the end.
    pub fn with_usage<T>(&self, f: impl FnOnce(&StreamUsage) -> T) -> Option<T> {
        let guard = self.shared.usage.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(f)
    }

    /// Whether parsing stopped at an event larger than the parser holds.
    pub fn gave_up(&self) -> bool {
        self.flags() & GAVE_UP != 0
    }
}

impl fmt::Debug for StreamProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamProgress")
            .field("stream", &self.is_stream())
            .field("output", &self.has_output())
            .field("complete", &self.is_complete())
            .field("ended", &self.is_ended())
            .field("failure", &self.shared.failure.get())
            .finish()
    }
}

/// A failure a layer recorded, yielded again by another layer: its source
/// is the original error, which classifiers find by walking the chain.
#[derive(Debug)]
struct Recorded(Arc<dyn StdError + Send + Sync>);

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for Recorded {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

/// The right to feed a [`StreamProgress`]: held by the one body that
/// parses the stream. It owns the parser, so feeding takes no lock.
pub struct Feeder {
    progress: StreamProgress,
    parse: Option<Box<Parse>>,
    done: bool,
}

impl fmt::Debug for Feeder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feeder")
            .field("progress", &self.progress)
            .field("done", &self.done)
            .finish()
    }
}

impl Feeder {
    /// Parses one chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.feed_slices(&[std::io::IoSlice::new(chunk)]);
    }

    /// Parses one frame's data, however many chunks it is made of.
    pub fn feed_buf<D: Buf>(&mut self, data: &D) {
        let chunk = data.chunk();
        if chunk.len() == data.remaining() {
            // One contiguous chunk, as `Bytes` and hyper's frames are.
            return self.feed(chunk);
        }
        let mut slices = [std::io::IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut slices);
        self.feed_slices(&slices[..n]);
    }

    fn feed_slices(&mut self, slices: &[std::io::IoSlice<'_>]) {
        let p = &self.progress;
        let len: usize = slices.iter().map(|s| s.len()).sum();
        // The feeder is the only writer: no read-modify-write needed.
        let bytes = &p.shared.bytes;
        bytes.store(bytes.load(Relaxed) + len as u64, Relaxed);
        // After a failure the rest is passed on, not judged again.
        if self.done || p.has_failed() {
            return;
        }
        let Some(parse) = self.parse.as_deref_mut() else {
            return;
        };
        let Parse { parser, usage, .. } = parse;
        let mut signal = StreamSignal::Continue;
        for s in slices {
            parser.feed(s, |ev| {
                if signal == StreamSignal::Continue {
                    signal = usage.on_event(ev.event, ev.data);
                }
            });
        }
        p.shared.events.store(usage.events_seen(), Relaxed);
        let mut flags = 0;
        if usage.output_events() > 0 && !p.has_output() {
            let _ = p.shared.first_output.set(Instant::now());
            flags |= OUTPUT;
        }
        if usage.is_complete() {
            flags |= COMPLETE;
        }
        if parser.is_overflowed() {
            flags |= GAVE_UP;
        }
        let stale = usage.revision() != parse.published;
        if stale {
            self.publish();
        }
        let p = &self.progress;
        if flags != 0 {
            p.set(flags);
        }
        match signal {
            StreamSignal::Continue => {}
            StreamSignal::Error(e) => p.fail(Failed::Event(StreamError::new(e))),
            StreamSignal::Malformed(why) => p.fail(Failed::Malformed(MalformedStream::new(why))),
        }
    }

    /// Copies the tracker to the shared record.
    fn publish(&mut self) {
        let Some(parse) = self.parse.as_deref_mut() else {
            return;
        };
        parse.published = parse.usage.revision();
        let mut guard = self
            .progress
            .shared
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(u) => u.clone_from(&parse.usage),
            None => *guard = Some(parse.usage.clone()),
        }
    }

    /// The body ended: a stream that is not complete is truncated.
    pub fn end(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.publish();
        let p = &self.progress;
        let flags = p.flags();
        if flags & SSE != 0 && flags & (COMPLETE | GAVE_UP | FAILED) == 0 {
            p.fail(Failed::Truncated(TruncatedStream::new()));
        }
        p.set(ENDED);
    }

    /// The body failed: it is over, its error says why.
    pub fn body_failed(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.publish();
        }
        self.progress.set(ENDED);
    }

    /// The handle fed.
    pub fn progress(&self) -> &StreamProgress {
        &self.progress
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // Dropped before the end: what was parsed is what the layers
        // further out report.
        if !self.done {
            self.publish();
        }
    }
}

pin_project! {
    /// A body that feeds a [`StreamProgress`] as its frames pass, when it
    /// holds the [`Feeder`]; otherwise it passes them on untouched. Every
    /// frame and error of the inner body passes through as it is.
    pub struct ProgressBody<B> {
        #[pin]
        inner: B,
        feeder: Option<Feeder>,
    }
}

impl<B> ProgressBody<B> {
    /// Wraps `inner`, feeding `feeder` if given.
    pub fn new(inner: B, feeder: Option<Feeder>) -> Self {
        ProgressBody { inner, feeder }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for ProgressBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressBody")
            .field("inner", &self.inner)
            .field("feeds", &self.feeder.is_some())
            .finish()
    }
}

impl<B: Body> Body for ProgressBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        observe(this.feeder, &frame, || this.inner.is_end_stream());
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse_response() -> Response<()> {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(())
            .unwrap()
    }

    #[test]
    fn the_innermost_layer_attaches_and_the_others_read() {
        let mut res = sse_response();
        let (inner, feeder) = StreamProgress::attach_with(&mut res, None, true).unwrap();
        let mut feeder = feeder.expect("the first layer feeds");
        let (outer, none) = StreamProgress::attach_with(&mut res, None, true).unwrap();
        assert!(none.is_none(), "a layer further out only reads");
        feeder.feed(b"event: ping\ndata: {\"type\": \"ping\"}\n\n");
        assert!(outer.is_stream() && !outer.has_output());
        feeder.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n");
        assert!(outer.has_output() && outer.first_output_at().is_some());
        assert_eq!((inner.events(), outer.events()), (2, 2));
        // Not a success: nothing to follow.
        let mut err = sse_response();
        *err.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        assert!(StreamProgress::attach_with(&mut err, None, true).is_none());
    }

    #[test]
    fn an_incomplete_stream_is_truncated_at_its_end_and_the_first_failure_wins() {
        let (p, mut f) = StreamProgress::detached(true, Some(WireFormat::OpenAiChat));
        f.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n");
        f.end();
        assert!(p.is_ended());
        assert!(p.failure().unwrap().is::<TruncatedStream>());
        p.record_failure(std::io::Error::other("later"));
        assert!(
            p.failure_error().unwrap().is::<TruncatedStream>(),
            "the first one stays"
        );

        let (p, mut f) = StreamProgress::detached(true, Some(WireFormat::OpenAiChat));
        f.feed(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        f.end();
        assert!(
            p.is_complete() && !p.has_failed(),
            "complete without [DONE]"
        );
    }

    #[test]
    fn a_progress_body_feeds_what_passes_and_changes_nothing() {
        use http_body_util::{BodyExt, Full};
        let text =
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n";
        let mut res = sse_response().map(|()| Full::new(bytes::Bytes::from(text)));
        let (progress, feeder) = StreamProgress::attach_with(&mut res, None, true).unwrap();
        let body = ProgressBody::new(res.into_body(), feeder);
        let out = futures_executor_block_on(body.collect())
            .unwrap()
            .to_bytes();
        assert_eq!(out, text.as_bytes());
        assert!(progress.has_output() && progress.is_complete() && progress.is_ended());
        assert_eq!(
            progress.finish_reason(),
            Some(crate::usage::FinishReason::Stop)
        );
    }

    /// Polls a future that is ready without waking.
    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }

    #[test]
    fn a_failure_a_layer_records_is_found_through_the_source_chain() {
        let (p, _f) = StreamProgress::detached(true, None);
        p.record_failure(std::io::Error::new(std::io::ErrorKind::TimedOut, "late"));
        let e = p.failure_error().unwrap();
        let source = e.source().expect("the recorded error");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::TimedOut
        );
        // A JSON body is not a stream: its end is no truncation.
        let (p, mut f) = StreamProgress::detached(false, None);
        f.feed(b"{\"choices\":[]}");
        f.end();
        assert!(!p.has_failed() && p.is_ended() && !p.has_output());
        assert_eq!(p.bytes(), 14);
    }
}
