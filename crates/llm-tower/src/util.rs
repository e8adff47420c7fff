//! Small helpers shared by the layers that keep state in a [`Store`](crate::store::Store).

#![cfg_attr(not(any(feature = "rate-limit", feature = "budget")), allow(dead_code))]

use http::HeaderMap;

use crate::provider::headers::names;

/// FNV-1a, 64 bits: stable across processes, builds and Rust versions, so
/// that processes sharing a store derive the same keys.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The request's API key (from `authorization`, `x-api-key`, `api-key`,
/// `x-goog-api-key` or Gemini's `?key=`), `None` when there is none. Only
/// hashes of it are kept.
pub(crate) fn api_key_secret<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Option<&'a [u8]> {
    // Most requests carry few headers: look each name up only when any.
    let from_headers = if headers.is_empty() {
        None
    } else {
        [
            &http::header::AUTHORIZATION,
            &names::X_API_KEY,
            &names::API_KEY,
            &names::X_GOOG_API_KEY,
        ]
        .into_iter()
        .find_map(|name| headers.get(name).map(|v| v.as_bytes()))
    };
    from_headers.or_else(|| {
        query?
            .split('&')
            .find_map(|pair| pair.strip_prefix("key="))
            .map(str::as_bytes)
    })
}

/// The FNV-1a hash of the request's API key, `None` when there is none.
pub(crate) fn api_key_fnv(secret: Option<&[u8]>) -> Option<u64> {
    secret.map(fnv1a)
}

/// An API key's hash as it appears in keys: 16 hex digits, `-` for none.
pub(crate) fn api_key_text(hash: Option<u64>) -> String {
    match hash {
        Some(h) => format!("{h:016x}"),
        None => "-".into(),
    }
}

/// The value of the longest prefix of `model` among `entries`; on a tie,
/// the last one listed. How per-model settings are looked up by name.
pub(crate) fn longest_prefix<'a>(
    model: &str,
    entries: impl IntoIterator<Item = (&'a str, u64)>,
) -> Option<u64> {
    entries
        .into_iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, n)| n)
}

/// `parts` joined, allocated once at its length: the keys of every call
/// are built this way, without `format!`'s growing buffer.
pub(crate) fn concat(parts: &[&str]) -> Box<str> {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s.into_boxed_str()
}

/// Runs `work` now if it completes at once (the in-memory store always
/// does), else on the tokio runtime; dropped, with a warning, when there is
/// none.
#[cfg(any(
    feature = "rate-limit",
    feature = "budget",
    feature = "circuit-breaker"
))]
pub(crate) fn run_now_or_spawn(
    what: &'static str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use std::{
        future::Future,
        pin::Pin,
        task::{Context, Poll, Waker},
    };

    let mut work: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(work);
    let mut cx = Context::from_waker(Waker::noop());
    if work.as_mut().poll(&mut cx) == Poll::Ready(()) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(work);
        }
        Err(_) => tracing::warn!(
            target: "llm_tower::store",
            what,
            "no tokio runtime to finish a store update on; what it reserved expires by itself"
        ),
    }
}
