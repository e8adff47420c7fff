//! Response body metering: usage, finish reasons and stream errors,
//! observed as the body passes, never by collecting it.

mod error;

pub use self::error::{MalformedStream, StreamError, TruncatedStream};
