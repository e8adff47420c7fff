//! The response future of [`Prepare`](super::Prepare).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Request;
use http_body::Body;
use http_body_util::{BodyExt, Limited, combinators::Collect};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{BodyTooLarge, PrepareLayer, ReplayBody};
use crate::BoxError;

pin_project! {
    /// Buffers the request body, then calls the inner service.
    pub struct ResponseFuture<B, S>
    where
        S: Service<Request<ReplayBody>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<B, S>,
        layer: PrepareLayer,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S>
    where
        S: Service<Request<ReplayBody>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Buffering {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<http::request::Parts>,
            inner: Option<S>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<B, S> ResponseFuture<B, S>
where
    S: Service<Request<ReplayBody>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(req: Request<B>, inner: S, layer: PrepareLayer) -> Self {
        let (parts, body) = req.into_parts();
        let limit = layer.limit();
        let state = if body.size_hint().lower() > limit as u64 {
            State::Failed {
                error: Some(BodyTooLarge { limit }.into()),
            }
        } else {
            State::Buffering {
                collect: Limited::new(body, limit).collect(),
                parts: Some(parts),
                inner: Some(inner),
            }
        };
        ResponseFuture { state, layer }
    }
}

impl<B, S> Future for ResponseFuture<B, S>
where
    S: Service<Request<ReplayBody>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Buffering {
                    collect,
                    parts,
                    inner,
                } => {
                    let collected = match ready!(collect.poll(cx)) {
                        Ok(collected) => collected,
                        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                            return Poll::Ready(Err(BodyTooLarge {
                                limit: this.layer.limit(),
                            }
                            .into()));
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    let parts = parts.take().expect("polled after completion");
                    let mut inner = inner.take().expect("polled after completion");
                    let req = this
                        .layer
                        .finish(parts, ReplayBody::new(collected.to_bytes()));
                    let future = inner.call(req);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

impl<B, S> fmt::Debug for ResponseFuture<B, S>
where
    S: Service<Request<ReplayBody>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
