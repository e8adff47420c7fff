//! A [`reqwest::Client`] as the service under the layers.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    BoxError,
    classify::{Failure, FailureClass},
    request::ReplayBody,
};

/// A [`reqwest::Client`] as a `tower::Service<http::Request<ReplayBody>>`,
/// so the layers can wrap it.
///
/// `reqwest::Client` is a service of `reqwest::Request`s; the layers send
/// `http::Request`s with a replayable body and read `http::Response`s whose
/// body streams. This adapter converts one into the other, without
/// buffering: the response body is reqwest's own, passed on frame by frame
/// as [`ReqwestBody`]. The status, the headers and the response's
/// extensions are kept; the request's extensions travel with the request
/// into reqwest.
///
/// reqwest's errors (connect, timeout, a body cut mid-transfer) are
/// classified by [`DefaultClassifier`](crate::classify::DefaultClassifier):
/// `Connect`, `Timeout`, `Connect` and `StreamError` for a body that cannot
/// be decoded.
///
/// ```no_run
/// use std::time::Duration;
///
/// use llm_tower::{
///     client::ReqwestService,
///     metering::MeterLayer,
///     request::PrepareLayer,
/// };
/// use tower::ServiceBuilder;
///
/// // The layers own the timeouts and the retries: reqwest only connects.
/// let client = reqwest::Client::builder()
///     .connect_timeout(Duration::from_secs(10))
///     .redirect(reqwest::redirect::Policy::none())
///     .build()?;
/// let svc = ServiceBuilder::new()
///     .layer(PrepareLayer::new())
///     .layer(MeterLayer::new())
///     .service(ReqwestService::new(client));
/// # let _ = svc;
/// # Ok::<(), reqwest::Error>(())
/// ```
///
/// # TLS
///
/// This crate enables no TLS feature of reqwest: the client's TLS is chosen
/// where it is built, by the features of the application's own `reqwest`
/// dependency (`rustls`, `native-tls` …), which cargo unifies with this
/// one. With reqwest's `rustls-no-provider`, install a rustls crypto
/// provider before building the client.
///
/// # Timeouts
///
/// reqwest's `timeout` and `read_timeout` run on the real clock and end the
/// call with a `reqwest::Error`, classified as `Timeout`. The layers'
/// [`TimeoutLayer`](https://docs.rs/llm-tower/latest/llm_tower/timeout/struct.TimeoutLayer.html)
/// knows phases (first token, idle) and the call's deadline, so prefer it
/// and leave reqwest only a connect timeout.
#[derive(Clone, Debug)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// The client, mutably.
    pub fn get_mut(&mut self) -> &mut reqwest::Client {
        &mut self.client
    }

    /// Unwraps the client.
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

impl From<reqwest::Client> for ReqwestService {
    fn from(client: reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

impl Service<http::Request<ReplayBody>> for ReqwestService {
    type Response = http::Response<ReqwestBody>;
    type Error = BoxError;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<reqwest::Request>::poll_ready(&mut self.client, cx).map_err(BoxError::from)
    }

    fn call(&mut self, req: http::Request<ReplayBody>) -> Self::Future {
        // The bytes are shared, not copied: a retry sends the same buffer.
        let req = req.map(|body| reqwest::Body::from(body.bytes().clone()));
        let state = match reqwest::Request::try_from(req) {
            Ok(req) => State::Sending {
                pending: Service::<reqwest::Request>::call(&mut self.client, req),
            },
            // A URI that is not a URL reqwest accepts.
            Err(error) => State::Invalid { error: Some(error) },
        };
        ReqwestFuture { state }
    }
}

/// reqwest's response future, which reqwest names only as its client's
/// `Service::Future`.
type Pending = <reqwest::Client as Service<reqwest::Request>>::Future;

pin_project! {
    /// The response future of [`ReqwestService`].
    pub struct ReqwestFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Sending { #[pin] pending: Pending },
        Invalid { error: Option<reqwest::Error> },
    }
}

impl fmt::Debug for ReqwestFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestFuture").finish_non_exhaustive()
    }
}

impl Future for ReqwestFuture {
    type Output = Result<http::Response<ReqwestBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sending { pending } => match pending.poll(cx) {
                Poll::Ready(Ok(res)) => {
                    // Status, headers and extensions as they came.
                    let res: http::Response<reqwest::Body> = res.into();
                    Poll::Ready(Ok(res.map(|inner| ReqwestBody { inner })))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
                Poll::Pending => Poll::Pending,
            },
            StateProj::Invalid { error } => Poll::Ready(Err(error
                .take()
                .expect("ReqwestFuture polled after completion")
                .into())),
        }
    }
}

pin_project! {
    /// The body of a response from [`ReqwestService`]: reqwest's streaming
    /// body, its errors boxed.
    pub struct ReqwestBody {
        #[pin]
        inner: reqwest::Body,
    }
}

impl ReqwestBody {
    /// reqwest's body.
    pub fn into_inner(self) -> reqwest::Body {
        self.inner
    }
}

impl fmt::Debug for ReqwestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestBody").finish_non_exhaustive()
    }
}

impl Body for ReqwestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx).map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a `reqwest::Error` says, for the default classifier; `None` when
/// `e` is not one or its source says more.
pub(crate) fn classify_reqwest(e: &(dyn StdError + 'static)) -> Option<Failure> {
    let e = e.downcast_ref::<reqwest::Error>()?;
    // A connect timeout is both: the time limit is what happened.
    if e.is_timeout() {
        return Some(Failure::new(FailureClass::Timeout));
    }
    if e.is_connect() {
        return Some(Failure::new(FailureClass::Connect));
    }
    // The body came but cannot be read as what it says it is.
    if e.is_decode() {
        return Some(Failure::new(FailureClass::StreamError));
    }
    // The transfer broke off: the connection, not the answer.
    if e.is_body() {
        return Some(Failure::new(FailureClass::Connect));
    }
    // A request error wraps hyper's or the socket's, which say more.
    None
}
