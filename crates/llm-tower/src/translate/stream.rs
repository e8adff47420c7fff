//! Streamed answers from the target's event sequence to the caller's.

use bytes::Bytes;

use super::TranslateError;
use crate::provider::WireFormat;

/// Turns the SSE stream of a target (format `from`) into the caller's SSE
/// stream (format `to`), chunk by chunk: feed it the target's bytes as they
/// come, send what it returns.
#[derive(Debug)]
pub struct StreamTranslator {
    from: WireFormat,
    to: WireFormat,
}

impl StreamTranslator {
    /// A translator from the target's `from` stream to the caller's `to`
    /// stream; `model` is the model that answers, named in the events.
    pub fn new(from: WireFormat, to: WireFormat, model: &str) -> Result<Self, TranslateError> {
        let _ = model;
        Ok(StreamTranslator { from, to })
    }

    /// Feeds the target's next bytes; returns the caller's bytes to send
    /// now (possibly empty).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, TranslateError> {
        let _ = (chunk, self.from, self.to);
        Err(TranslateError::unsupported(
            "stream translation (not written yet)",
        ))
    }

    /// The target's stream ended: returns the caller's last bytes.
    pub fn finish(&mut self) -> Result<Bytes, TranslateError> {
        Ok(Bytes::new())
    }
}
