//! What the layer benches share: an always-ready body, and polling without
//! a runtime's scheduler (everything here is ready without being woken).

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http_body::{Body, Frame};

/// A body yielding prepared chunks; with `gaps`, it is pending once before
/// each chunk, as a network stream is (which arms idle timers).
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    gaps: bool,
    ready: bool,
}

impl Chunks {
    /// Always ready.
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Chunks {
            chunks: chunks.into_iter().collect(),
            gaps: false,
            ready: false,
        }
    }

    /// Pending once before each chunk.
    pub fn with_gaps(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Chunks {
            gaps: true,
            ..Chunks::new(chunks)
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.gaps && !std::mem::replace(&mut self.ready, true) {
            return Poll::Pending;
        }
        self.ready = false;
        Poll::Ready(self.chunks.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A runtime with a timer, for layers that arm one: enter it, then poll
/// with [`block`].
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// Polls `fut` to its end with a no-op waker.
pub fn block<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Reads `body` to its end with a no-op waker; returns the bytes seen.
pub fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => n += f.data_ref().map_or(0, Bytes::len),
            Poll::Ready(_) => return n,
            Poll::Pending => {}
        }
    }
}
