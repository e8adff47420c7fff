//! The last resort when every target failed, opt-in and never silent: a
//! recent answer to the same request (stale), or an answer the user wrote
//! (static).

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::body::FallbackBody;
use crate::{
    BoxError,
    metering::StreamProgress,
    provider::WireFormat,
    translate::{self, StreamTranslator},
};

/// The header on a degraded answer: `stale` or `static`.
pub const DEGRADED_HEADER: &str = "x-llm-tower-degraded";

/// The most bytes of one answer kept for stale answers: 1 MiB.
pub const MAX_STALE_ANSWER: usize = 1 << 20;

/// How a degraded answer was made, in its response's extensions (and the
/// [`DEGRADED_HEADER`] header).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Degraded {
    /// A recent good answer to the same request, this old.
    Stale {
        /// Its age.
        age: Duration,
    },
    /// The answer configured with
    /// [`static_answer`](super::FallbackLayer::static_answer).
    Static,
}

/// Recent good answers, by request.
pub(crate) struct StaleAnswers {
    capacity: usize,
    max_age: Duration,
    hasher: foldhash::fast::RandomState,
    inner: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    map: HashMap<u64, Stored>,
    order: VecDeque<u64>,
}

struct Stored {
    len: usize,
    content_type: Option<HeaderValue>,
    body: Bytes,
    at: Instant,
}

impl StaleAnswers {
    pub(crate) fn new(capacity: usize, max_age: Duration) -> Self {
        StaleAnswers {
            capacity,
            max_age,
            hasher: foldhash::fast::RandomState::default(),
            inner: Mutex::new(Cache::default()),
        }
    }

    /// The key of a request: its format and body. The body's length is kept
    /// beside the hash, and checked, so that a collision needs both.
    fn key(&self, format: Option<WireFormat>, body: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(format.map_or(0, |f| f as u8 + 1));
        h.write(body);
        h.finish()
    }

    fn put(&self, key: u64, len: usize, content_type: Option<HeaderValue>, body: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let mut cache = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if cache.map.len() >= self.capacity && !cache.map.contains_key(&key) {
            while let Some(old) = cache.order.pop_front() {
                if cache.map.remove(&old).is_some() {
                    break;
                }
            }
        }
        cache.order.retain(|k| *k != key);
        cache.order.push_back(key);
        cache.map.insert(
            key,
            Stored {
                len,
                content_type,
                body,
                at: Instant::now(),
            },
        );
    }

    /// A stale answer to the request, if one is recent enough.
    pub(crate) fn get(
        &self,
        format: Option<WireFormat>,
        request: &[u8],
    ) -> Option<Response<FallbackBody>> {
        let key = self.key(format, request);
        let cache = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let stored = cache.map.get(&key)?;
        let age = stored.at.elapsed();
        if stored.len != request.len() || age > self.max_age {
            return None;
        }
        let mut res = Response::new(full(stored.body.clone()));
        if let Some(ct) = &stored.content_type {
            res.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
        }
        res.headers_mut()
            .insert(DEGRADED_HEADER, HeaderValue::from_static("stale"));
        res.extensions_mut().insert(Degraded::Stale { age });
        Some(res)
    }

    /// Wraps a good answer's body so that, read to a clean end, it is kept.
    pub(crate) fn record(
        self: &Arc<Self>,
        format: Option<WireFormat>,
        request: &[u8],
        res: Response<FallbackBody>,
    ) -> Response<FallbackBody> {
        let key = self.key(format, request);
        let len = request.len();
        let progress = StreamProgress::get(&res).cloned();
        let content_type = res.headers().get(header::CONTENT_TYPE).cloned();
        let cache = self.clone();
        res.map(|inner| {
            Recording {
                inner,
                buf: Some(BytesMut::new()),
                done: Some(Box::new(move |bytes: Bytes| {
                    // A stream that failed, or ended before its terminal
                    // event, is no answer to give again.
                    let whole = progress
                        .as_ref()
                        .is_none_or(|p| !p.has_failed() && (!p.is_stream() || p.is_complete()));
                    if whole {
                        cache.put(key, len, content_type, bytes);
                    }
                })),
            }
            .boxed_unsync()
        })
    }
}

type Done = Box<dyn FnOnce(Bytes) + Send>;

pin_project! {
    /// A body passed on as it is, its bytes kept (bounded) until its clean
    /// end.
    struct Recording<B> {
        #[pin]
        inner: B,
        buf: Option<BytesMut>,
        done: Option<Done>,
    }
}

impl<B> Body for Recording<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(buf)) = (f.data_ref(), this.buf.as_mut()) {
                    if buf.len() + data.len() > MAX_STALE_ANSWER {
                        *this.buf = None;
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
            }
            Some(Err(_)) => *this.buf = None,
            None => {
                if let (Some(buf), Some(done)) = (this.buf.take(), this.done.take()) {
                    done(buf.freeze());
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn full(bytes: Bytes) -> FallbackBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The configured static answer, in the caller's format, as JSON or as a
/// stream.
pub(crate) fn static_answer(
    text: &str,
    format: Option<WireFormat>,
    stream: bool,
) -> Result<Response<FallbackBody>, BoxError> {
    let format = format.unwrap_or(WireFormat::OpenAiChat);
    let model = "llm-tower-static";
    let (content_type, body) = if stream {
        let content = serde_json::to_string(text)?;
        let openai = format!(
            "data: {{\"id\":\"chatcmpl-static\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":{content}}},\"finish_reason\":null}}]}}\n\n\
             data: {{\"id\":\"chatcmpl-static\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
             data: {{\"id\":\"chatcmpl-static\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0}}}}\n\n\
             data: [DONE]\n\n"
        );
        let bytes = if format == WireFormat::OpenAiChat {
            Bytes::from(openai)
        } else {
            let mut t = StreamTranslator::new(WireFormat::OpenAiChat, format, model)?;
            let mut out = BytesMut::from(&t.feed(openai.as_bytes())?[..]);
            out.extend_from_slice(&t.finish()?);
            out.freeze()
        };
        ("text/event-stream", bytes)
    } else {
        let openai = serde_json::json!({
            "id": "chatcmpl-static",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })
        .to_string();
        let bytes = if format == WireFormat::OpenAiChat {
            Bytes::from(openai)
        } else {
            translate::response::translate(
                WireFormat::OpenAiChat,
                format,
                openai.as_bytes(),
                model,
            )?
        };
        ("application/json", bytes)
    };
    let mut res = Response::new(full(body));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(DEGRADED_HEADER, HeaderValue::from_static("static"));
    res.extensions_mut().insert(Degraded::Static);
    Ok(res)
}
