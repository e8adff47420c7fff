use std::{any::Any, fmt};

use http::{HeaderMap, Response};
use tower_http::classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse, SharedClassifier};

use super::{Classifier, DefaultClassifier, Failure, FailureClass, ResponseView};
use crate::{BoxError, provider::headers::is_event_stream};

/// A [`Classifier`] as a tower-http [`ClassifyResponse`], so tower-http's
/// middleware (`TraceLayer`, say) logs and counts failures in this crate's
/// vocabulary.
///
/// tower-http classifies from status and headers only, so error bodies are
/// not read: a `429` is rate limited whether it says `insufficient_quota` or
/// not. Streaming (`text/event-stream`) successes are classified at their
/// end, where a metered body's `StreamError` or `TruncatedStream` shows up
/// as the body error.
///
/// ```
/// use llm_tower::classify::HttpClassifier;
/// use tower_http::trace::TraceLayer;
///
/// let layer = TraceLayer::new(HttpClassifier::new().into_make_classifier());
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, Default)]
pub struct HttpClassifier<C = DefaultClassifier> {
    inner: C,
}

impl HttpClassifier {
    /// The adapter around [`DefaultClassifier`].
    pub fn new() -> Self {
        HttpClassifier {
            inner: DefaultClassifier::new(),
        }
    }
}

impl<C> HttpClassifier<C> {
    /// The adapter around any classifier.
    pub fn with_classifier(inner: C) -> Self {
        HttpClassifier { inner }
    }
}

impl<C: Classifier + Clone> HttpClassifier<C> {
    /// Wraps the adapter in tower-http's [`SharedClassifier`], what
    /// `TraceLayer::new` takes.
    pub fn into_make_classifier(self) -> SharedClassifier<Self> {
        SharedClassifier::new(self)
    }
}

fn classify_any<C: Classifier>(inner: &C, error: &(dyn Any + 'static)) -> Failure {
    if let Some(boxed) = error.downcast_ref::<BoxError>() {
        return inner.classify_error(&**boxed);
    }
    if let Some(e) = error.downcast_ref::<std::io::Error>() {
        return inner.classify_error(e);
    }
    #[cfg(feature = "hyper")]
    if let Some(e) = error.downcast_ref::<hyper::Error>() {
        return inner.classify_error(e);
    }
    #[cfg(feature = "hyper")]
    if let Some(e) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
        return inner.classify_error(e);
    }
    Failure::new(FailureClass::Other)
}

impl<C: Classifier + Clone> ClassifyResponse for HttpClassifier<C> {
    type FailureClass = Failure;
    type ClassifyEos = StreamEos<C>;

    fn classify_response<B>(self, res: &Response<B>) -> ClassifiedResponse<Failure, StreamEos<C>> {
        let view = ResponseView::new(res.status(), res.headers());
        match self.inner.classify_response(&view).into_failure() {
            Some(failure) => ClassifiedResponse::Ready(Err(failure)),
            None if is_event_stream(res.headers()) => {
                ClassifiedResponse::RequiresEos(StreamEos { inner: self.inner })
            }
            None => ClassifiedResponse::Ready(Ok(())),
        }
    }

    fn classify_error<E>(self, error: &E) -> Failure
    where
        E: fmt::Display + 'static,
    {
        classify_any(&self.inner, error)
    }
}

/// Classifies the end of a streaming response for [`HttpClassifier`]: a
/// clean end is a success, a body error is classified by the classifier.
#[derive(Clone, Debug)]
pub struct StreamEos<C> {
    inner: C,
}

impl<C: Classifier> ClassifyEos for StreamEos<C> {
    type FailureClass = Failure;

    fn classify_eos(self, _trailers: Option<&HeaderMap>) -> Result<(), Failure> {
        Ok(())
    }

    fn classify_error<E>(self, error: &E) -> Failure
    where
        E: fmt::Display + 'static,
    {
        classify_any(&self.inner, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::TruncatedStream;
    use http::header::CONTENT_TYPE;

    #[test]
    fn statuses_and_stream_ends() {
        let c = HttpClassifier::new();
        let ok = Response::builder().status(200).body(()).unwrap();
        assert!(matches!(
            c.clone().classify_response(&ok),
            ClassifiedResponse::Ready(Ok(()))
        ));
        let limited = Response::builder().status(529).body(()).unwrap();
        match c.clone().classify_response(&limited) {
            ClassifiedResponse::Ready(Err(f)) => assert_eq!(f.class(), FailureClass::Overloaded),
            other => panic!("{other:?}"),
        }
        let sse = Response::builder()
            .header(CONTENT_TYPE, "text/event-stream; charset=utf-8")
            .body(())
            .unwrap();
        let ClassifiedResponse::RequiresEos(eos) = c.clone().classify_response(&sse) else {
            panic!("a stream is classified at its end")
        };
        let err: BoxError = Box::new(TruncatedStream::new());
        assert_eq!(
            eos.classify_error(&err).class(),
            FailureClass::TruncatedStream
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(c.classify_error(&io).class(), FailureClass::Connect);
    }
}
