//! Adapters that put an HTTP client under the layers.
//!
//! Every layer of this crate wraps a `tower::Service<http::Request<ReplayBody>>`
//! whose responses are `http::Response<B>` with a streaming body `B`.
//! hyper-util's legacy client is one already; the adapters here make other
//! clients one.
//!
//! | adapter | client | feature |
//! |---|---|---|
//! | [`ReqwestService`] | a [`reqwest::Client`](https://docs.rs/reqwest/latest/reqwest/struct.Client.html) | `reqwest` |
//!
//! [`ReplayBody`]: crate::request::ReplayBody

#[cfg(feature = "reqwest")]
mod reqwest;

#[cfg(feature = "reqwest")]
pub(crate) use self::reqwest::classify_reqwest;
#[cfg(feature = "reqwest")]
pub use self::reqwest::{ReqwestBody, ReqwestFuture, ReqwestService};
