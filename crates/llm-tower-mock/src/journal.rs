//! The journal: one entry per attempt that reached the mock.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::wire::Provider;

/// One attempt as the mock saw and answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Arrival order, from 0.
    pub seq: u64,
    /// Arrival time since the server started (tokio time: paused in tests);
    /// `at_ms` in JSON, fractional milliseconds.
    #[serde(rename = "at_ms", with = "millis")]
    pub at: Duration,
    /// The HTTP method.
    pub method: String,
    /// The path and query, a `key` parameter's value (a Gemini API key)
    /// replaced by `REDACTED`.
    pub path: String,
    /// The wire format, when the path is a known endpoint.
    pub provider: Option<Provider>,
    /// The model asked for, when the body said.
    pub model: Option<String>,
    /// Whether a stream was asked for.
    pub stream: bool,
    /// A fingerprint of the body: equal for the attempts of one call.
    pub fingerprint: String,
    /// How many times this fingerprint has arrived, this one included.
    pub attempt: u32,
    /// The faults injected, in rule order (`latency` composes with others).
    pub faults: Vec<String>,
    /// The status answered.
    pub status: u16,
    /// The request id sent back, if the provider has one.
    pub request_id: Option<String>,
    /// The `idempotency-key` header of the request, if any.
    pub idempotency_key: Option<String>,
    /// Prompt tokens counted.
    pub input_tokens: Option<u32>,
    /// Output tokens the answer carries when sent whole.
    pub output_tokens: Option<u32>,
}

impl Entry {
    /// Whether the mock injected `fault` (by name: `rate_limited`,
    /// `status_503`, `drop` …) into this attempt.
    pub fn has_fault(&self, fault: &str) -> bool {
        self.faults.iter().any(|f| f == fault)
    }
}

/// Every attempt, shared by the server and its handles.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Journal {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // An entry is pushed whole: a panic elsewhere cannot leave it torn.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, entry: Entry) {
        self.lock().push(entry);
    }

    /// A copy of every entry, in arrival order.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    /// How many attempts arrived.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing arrived.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many entries satisfy `f`.
    pub fn count(&self, f: impl Fn(&Entry) -> bool) -> usize {
        self.lock().iter().filter(|e| f(e)).count()
    }

    /// Forgets every entry (sequence numbers go on).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// A duration as fractional milliseconds, readable by any JSON consumer.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}
