//! The bodies of answers from a target of another wire format, rewritten in
//! the caller's.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use pin_project_lite::pin_project;

use crate::{
    BoxError,
    provider::WireFormat,
    translate::{self, StreamTranslator},
};

/// The body of every answer through a [`Fallback`](super::Fallback): boxed,
/// since targets have stacks of their own.
pub type FallbackBody = UnsyncBoxBody<Bytes, BoxError>;

/// The most of a whole (non-streaming) answer read to translate it: 16 MiB.
pub const TRANSLATE_LIMIT: usize = 16 << 20;

/// Reads a whole answer of `from` (at most [`TRANSLATE_LIMIT`] bytes) and
/// rewrites it in `to`.
pub(crate) async fn translate_whole(
    mut body: FallbackBody,
    from: WireFormat,
    to: WireFormat,
    model: &str,
) -> Result<FallbackBody, BoxError> {
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() + data.len() > TRANSLATE_LIMIT {
                return Err(BoxError::from(format!(
                    "fallback: an answer to translate is larger than {TRANSLATE_LIMIT} bytes"
                )));
            }
            bytes.extend_from_slice(&data);
        }
    }
    let translated = translate::response::translate(from, to, &bytes, model)?;
    Ok(http_body_util::Full::new(translated)
        .map_err(|never| match never {})
        .boxed_unsync())
}

pin_project! {
    /// A streamed answer of a target, rewritten event by event into the
    /// caller's format.
    pub(crate) struct TranslatedStream<B> {
        #[pin]
        inner: B,
        translator: StreamTranslator,
        done: bool,
    }
}

impl<B> TranslatedStream<B> {
    pub(crate) fn new(inner: B, translator: StreamTranslator) -> Self {
        TranslatedStream {
            inner,
            translator,
            done: false,
        }
    }
}

impl<B> Body for TranslatedStream<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers: nothing to translate.
                        continue;
                    };
                    let out = this.translator.feed(&data)?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    *this.done = true;
                    let out = this.translator.finish()?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
