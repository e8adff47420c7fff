//! Request bodies from one wire format to another.

use bytes::Bytes;

use super::{Target, TranslateError};
use crate::provider::WireFormat;

/// Rewrites the request `body`, written in `from`, for `target`: its format
/// and its model. Same format: only the model is replaced.
pub fn translate(from: WireFormat, body: &[u8], target: &Target) -> Result<Bytes, TranslateError> {
    let _ = (from, body, target);
    Err(TranslateError::unsupported(
        "request translation (not written yet)",
    ))
}
