use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    ReplayBody, RequestMeta,
    estimate::{CharEstimator, TokenEstimator},
    future::ResponseFuture,
};
use crate::{
    BoxError,
    provider::{ProviderRegistry, headers::names},
};

/// The default request body limit: 4 MiB, enough for long prompts and a
/// few inline images.
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// Buffers request bodies into a [`ReplayBody`] and inserts the
/// [`RequestMeta`] parsed from them, for every layer below.
///
/// It also marks the values of credential headers
/// ([`names::SECRETS`]) sensitive, so `Debug` and tower-http's `TraceLayer`
/// never print an API key.
///
/// Place it outermost. A body over the limit fails the call with
/// [`BodyTooLarge`](super::BodyTooLarge) before anything is sent.
#[derive(Clone)]
pub struct PrepareLayer {
    config: Arc<Config>,
}

struct Config {
    limit: usize,
    registry: ProviderRegistry,
    estimator: Arc<dyn TokenEstimator>,
}

impl PrepareLayer {
    /// A layer with the default limit ([`DEFAULT_BODY_LIMIT`]), the
    /// well-known providers and the [`CharEstimator`].
    pub fn new() -> Self {
        PrepareLayer {
            config: Arc::new(Config {
                limit: DEFAULT_BODY_LIMIT,
                registry: ProviderRegistry::new(),
                estimator: Arc::new(CharEstimator::new()),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        if Arc::get_mut(&mut self.config).is_none() {
            let c = &*self.config;
            self.config = Arc::new(Config {
                limit: c.limit,
                registry: c.registry.clone(),
                estimator: c.estimator.clone(),
            });
        }
        Arc::get_mut(&mut self.config).expect("unique after copy")
    }

    /// Sets the largest request body accepted, in bytes.
    pub fn body_limit(mut self, limit: usize) -> Self {
        self.config_mut().limit = limit;
        self
    }

    /// Sets the registry that recognises providers (add OpenAI-compatible
    /// servers to it).
    pub fn registry(mut self, registry: ProviderRegistry) -> Self {
        self.config_mut().registry = registry;
        self
    }

    /// Sets the estimator of input tokens.
    pub fn estimator(mut self, estimator: impl TokenEstimator) -> Self {
        self.config_mut().estimator = Arc::new(estimator);
        self
    }

    /// Turns buffered request parts into a prepared request.
    pub(crate) fn finish(
        &self,
        mut parts: http::request::Parts,
        body: ReplayBody,
    ) -> Request<ReplayBody> {
        let c = &*self.config;
        // Credentials print as `Sensitive` in `Debug` and in tower-http's
        // `TraceLayer`, whoever logs the request below.
        for (name, value) in parts.headers.iter_mut() {
            if names::is_secret(name) {
                value.set_sensitive(true);
            }
        }
        let endpoint = c.registry.detect_parts(&parts.uri, &parts.headers);
        let meta = RequestMeta::parse(endpoint, parts.uri.path(), body.bytes(), &*c.estimator);
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(meta);
        req
    }

    pub(crate) fn limit(&self) -> usize {
        self.config.limit
    }
}

impl Default for PrepareLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PrepareLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrepareLayer")
            .field("body_limit", &self.config.limit)
            .field("registry", &self.config.registry)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for PrepareLayer {
    type Service = Prepare<S>;

    fn layer(&self, inner: S) -> Prepare<S> {
        Prepare {
            inner,
            layer: self.clone(),
        }
    }
}

/// Buffers a request, parses its metadata once, and passes it on. See
/// [`PrepareLayer`].
#[derive(Clone, Debug)]
pub struct Prepare<S> {
    inner: S,
    layer: PrepareLayer,
}

impl<S> Prepare<S> {
    /// Wraps `inner` with the given configuration.
    pub fn new(inner: S, layer: PrepareLayer) -> Self {
        Prepare { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for Prepare<S>
where
    S: Service<Request<ReplayBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<B, S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes into the future; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(req, inner, self.layer.clone())
    }
}

/// Buffers and prepares one request without a service: the same work
/// [`Prepare`] does, for code that drives its own client.
pub async fn prepare<B>(
    req: Request<B>,
    layer: &PrepareLayer,
) -> Result<Request<ReplayBody>, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = ReplayBody::buffer(body, layer.limit()).await?;
    Ok(layer.finish(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        provider::{Provider, WireFormat},
        request::BodyTooLarge,
    };
    use tower::ServiceExt;
    use tower_test::mock;

    #[tokio::test]
    async fn inserts_metadata_and_replayable_body() {
        let (svc, mut handle) = mock::pair::<Request<ReplayBody>, &'static str>();
        let svc = PrepareLayer::new().layer(svc);
        let call = tokio::spawn(svc.oneshot(
            Request::post("https://api.anthropic.com/v1/messages")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"model":"claude-haiku-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
                )))
                .unwrap(),
        ));
        let (req, send) = handle.next_request().await.unwrap();
        let meta = RequestMeta::get(&req).unwrap();
        assert_eq!(meta.provider(), Some(&Provider::Anthropic));
        assert_eq!(meta.format(), Some(WireFormat::AnthropicMessages));
        assert_eq!(meta.model(), Some("claude-haiku-4-5"));
        assert_eq!(meta.max_output_tokens(), Some(10));
        assert!(req.body().bytes().starts_with(b"{\"model\""));
        send.send_response("ok");
        assert_eq!(call.await.unwrap().unwrap(), "ok");
    }

    #[tokio::test]
    async fn credential_headers_are_marked_sensitive() {
        let (svc, mut handle) = mock::pair::<Request<ReplayBody>, &'static str>();
        let svc = PrepareLayer::new().layer(svc);
        let call = tokio::spawn(
            svc.oneshot(
                Request::post("https://api.openai.com/v1/chat/completions")
                    .header("authorization", "Bearer sk-secret-1")
                    .header("x-api-key", "sk-secret-2")
                    .header("api-key", "sk-secret-3")
                    .header("x-goog-api-key", "sk-secret-4")
                    .header("x-api-key", "sk-secret-5")
                    .header("x-request-id", "req_visible")
                    .body(String::from(r#"{"model":"gpt-4o-mini","messages":[]}"#))
                    .unwrap(),
            ),
        );
        let (req, send) = handle.next_request().await.unwrap();
        for name in &names::SECRETS {
            for value in req.headers().get_all(name) {
                assert!(value.is_sensitive(), "{name}");
            }
        }
        assert_eq!(req.headers().get_all("x-api-key").iter().count(), 2);
        assert!(!req.headers()["x-request-id"].is_sensitive());
        let printed = format!("{req:?}");
        assert!(!printed.contains("sk-secret"), "{printed}");
        assert!(printed.contains("req_visible"), "{printed}");
        send.send_response("ok");
        call.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn prepare_marks_credential_headers_sensitive() {
        let req = prepare(
            Request::post("https://api.anthropic.com/v1/messages")
                .header("x-api-key", "sk-secret")
                .body(String::new())
                .unwrap(),
            &PrepareLayer::new(),
        )
        .await
        .unwrap();
        assert!(req.headers()["x-api-key"].is_sensitive());
    }

    #[tokio::test]
    async fn oversized_body_fails_before_the_inner_service_is_called() {
        let (svc, mut handle) = mock::pair::<Request<ReplayBody>, &'static str>();
        let svc = PrepareLayer::new().body_limit(8).layer(svc);
        let err = svc
            .oneshot(
                Request::post("https://api.openai.com/v1/chat/completions")
                    .body(String::from("0123456789"))
                    .unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.downcast_ref::<BodyTooLarge>().unwrap().limit(), 8);
        handle.allow(0);
        assert!(
            futures_util::FutureExt::now_or_never(handle.next_request())
                .is_none_or(|r| r.is_none())
        );
    }
}
