//! Whole (non-streaming) answers from the target's format to the caller's.

use bytes::Bytes;

use super::TranslateError;
use crate::provider::WireFormat;

/// Rewrites a whole answer `body` of the target, written in `from`, in the
/// caller's format `to`. `model` is the model that answered, named in the
/// result.
pub fn translate(
    from: WireFormat,
    to: WireFormat,
    body: &[u8],
    model: &str,
) -> Result<Bytes, TranslateError> {
    let _ = (from, to, body, model);
    Err(TranslateError::unsupported(
        "response translation (not written yet)",
    ))
}
