//! What the circuit breaker's tests share: requests for a model, breaker
//! keys, and an inner service whose status the test sets.

#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use llm_tower::{circuit_breaker::BreakerKey, request::RequestMeta};
use tower::{Service, service_fn};

pub fn request(model: &str) -> Request<String> {
    let mut req = Request::post("http://llm.test/v1/chat/completions")
        .body(String::new())
        .unwrap();
    req.extensions_mut()
        .insert(RequestMeta::new(None).with_model(model));
    req
}

pub fn key(model: &str) -> BreakerKey {
    BreakerKey::new(None, Some(model.into()))
}

pub type Answer = Result<Response<Full<Bytes>>, Infallible>;

/// An inner service whose status the test sets; counts its calls.
#[derive(Clone, Default)]
pub struct ScriptedProvider {
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

impl ScriptedProvider {
    pub fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn service(
        &self,
    ) -> impl Service<
        Request<String>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = std::future::Ready<Answer>,
    > + Clone {
        let this = self.clone();
        this.set(200);
        service_fn(move |_req: Request<String>| {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let status = this.status.load(Ordering::SeqCst);
            std::future::ready(Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()))
        })
    }
}
