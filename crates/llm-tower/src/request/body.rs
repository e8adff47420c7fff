use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::BoxError;

/// A request body buffered once into [`Bytes`], cheap to clone and resend.
///
/// Each clone yields the whole body from its start, so a retry or a fallback
/// resends exactly what the first attempt sent.
///
/// Its `Debug` prints the body's length, never its bytes: a prompt does not
/// belong in logs.
#[derive(Clone, Default)]
pub struct ReplayBody {
    bytes: Bytes,
    sent: bool,
}

impl ReplayBody {
    /// A body holding the given bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        ReplayBody {
            bytes: bytes.into(),
            sent: false,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The whole body, whether or not it has been polled.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Reads `body` to its end, keeping at most `limit` bytes.
    ///
    /// A body longer than `limit` is an error ([`BodyTooLarge`]), never a
    /// silent truncation; any error of the body itself is passed on.
    pub async fn buffer<B>(body: B, limit: usize) -> Result<ReplayBody, BoxError>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        if body.size_hint().lower() > limit as u64 {
            return Err(BodyTooLarge { limit }.into());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(ReplayBody::new(collected.to_bytes())),
            Err(e) if e.is::<LengthLimitError>() => Err(BodyTooLarge { limit }.into()),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Debug for ReplayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("len", &self.bytes.len())
            .field("sent", &self.sent)
            .finish()
    }
}

impl From<Bytes> for ReplayBody {
    fn from(bytes: Bytes) -> Self {
        ReplayBody::new(bytes)
    }
}

impl From<String> for ReplayBody {
    fn from(s: String) -> Self {
        ReplayBody::new(s)
    }
}

impl From<&'static str> for ReplayBody {
    fn from(s: &'static str) -> Self {
        ReplayBody::new(s)
    }
}

impl From<Vec<u8>> for ReplayBody {
    fn from(v: Vec<u8>) -> Self {
        ReplayBody::new(v)
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.sent || this.bytes.is_empty() {
            this.sent = true;
            return Poll::Ready(None);
        }
        this.sent = true;
        Poll::Ready(Some(Ok(Frame::data(this.bytes.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent || self.bytes.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sent {
            SizeHint::with_exact(0)
        } else {
            SizeHint::with_exact(self.bytes.len() as u64)
        }
    }
}

/// A request body was longer than the configured limit.
///
/// Raised instead of truncating the body; a gateway would answer `413`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyTooLarge {
    pub(super) limit: usize,
}

impl BodyTooLarge {
    /// The limit that was exceeded, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.limit)
    }
}

impl std::error::Error for BodyTooLarge {}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn clones_replay_the_whole_body() {
        let body = ReplayBody::buffer(http_body_util::Full::new(Bytes::from("hello")), 5)
            .await
            .unwrap();
        let copy = body.clone();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(copy.clone().collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(copy.bytes(), "hello");
    }

    #[test]
    fn debug_prints_the_size_not_the_prompt() {
        let body = ReplayBody::from(r#"{"messages":[{"content":"my secret prompt"}]}"#);
        let printed = format!("{body:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert_eq!(printed, "ReplayBody { len: 45, sent: false }");
    }

    #[tokio::test]
    async fn oversized_body_is_a_typed_error() {
        let err = ReplayBody::buffer(http_body_util::Full::new(Bytes::from("hello!")), 5)
            .await
            .unwrap_err();
        assert_eq!(err.downcast_ref::<BodyTooLarge>().unwrap().limit(), 5);
    }

    #[tokio::test]
    async fn oversized_stream_without_size_hint_is_a_typed_error() {
        let chunks = futures_util::stream::iter(
            ["abc", "def"].map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        );
        let err = ReplayBody::buffer(StreamBody::new(chunks), 5)
            .await
            .unwrap_err();
        assert!(err.is::<BodyTooLarge>(), "{err}");
    }

    #[tokio::test]
    async fn body_errors_are_passed_on() {
        let chunks = futures_util::stream::iter([
            Ok(Frame::data(Bytes::from("abc"))),
            Err(std::io::Error::other("reset")),
        ]);
        let err = ReplayBody::buffer(StreamBody::new(chunks), 100)
            .await
            .unwrap_err();
        assert!(err.is::<std::io::Error>(), "{err}");
    }
}
