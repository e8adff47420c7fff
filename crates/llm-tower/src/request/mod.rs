//! The request side of the shared vocabulary: a replayable body, and the
//! metadata parsed once from it.
//!
//! Retry, fallback and hedging resend requests, so the stack works on
//! `http::Request<ReplayBody>`: the body is buffered once, up to a limit,
//! into cheaply cloneable bytes. The JSON body is parsed at most once, into a
//! small [`RequestMeta`] kept in the request's extensions, so no later layer
//! parses it again.
//!
//! [`PrepareLayer`] does both at the top of a stack:
//!
//! ```
//! use llm_tower::request::{PrepareLayer, ReplayBody, RequestMeta};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), llm_tower::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(PrepareLayer::new().body_limit(1 << 20))
//!     .service(service_fn(|req: http::Request<ReplayBody>| async move {
//!         let meta = RequestMeta::get(&req).expect("prepared");
//!         Ok::<_, llm_tower::BoxError>(format!("{:?} {}", meta.model(), meta.is_stream()))
//!     }));
//!
//! let req = http::Request::post("https://api.openai.com/v1/chat/completions")
//!     .body(r#"{"model":"gpt-4o","stream":true,"messages":[]}"#.to_owned())?;
//! assert_eq!(svc.oneshot(req).await?, r#"Some("gpt-4o") true"#);
//! # Ok(())
//! # }
//! ```

mod body;
mod estimate;
mod layer;
mod meta;
#[cfg(feature = "tiktoken")]
mod tiktoken;

pub mod future;

pub use self::body::{BodyTooLarge, ReplayBody};
pub use self::estimate::{CharEstimator, EstimateInput, PromptStats, TokenEstimator};
pub use self::layer::{DEFAULT_BODY_LIMIT, Prepare, PrepareLayer, prepare};
pub use self::meta::RequestMeta;
#[cfg(feature = "tiktoken")]
pub use self::tiktoken::TiktokenEstimator;
