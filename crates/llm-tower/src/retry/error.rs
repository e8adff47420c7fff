//! The error of a stream that failed after reaching the caller.

use std::fmt;

use crate::BoxError;

/// A streamed answer failed after its first token reached the caller.
///
/// It is not retried (the caller already has part of the answer, and a new
/// attempt would send it again from the start). Its [`source`] is the error
/// that broke the stream: a
/// [`StreamError`](crate::metering::StreamError), a
/// [`TruncatedStream`](crate::metering::TruncatedStream), a timeout, a
/// dropped connection. The default classifier classifies it by that source,
/// but never as retryable or as a reason to fall back.
///
/// [`source`]: std::error::Error::source
#[derive(Debug)]
pub struct StreamInterrupted {
    source: BoxError,
}

impl StreamInterrupted {
    pub(crate) fn new(source: BoxError) -> Self {
        StreamInterrupted { source }
    }

    /// The error that broke the stream.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for StreamInterrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream interrupted after its first token (not retried): {}",
            self.source
        )
    }
}

impl std::error::Error for StreamInterrupted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
