//! The deadline of a call, carried in the request's extensions.
//!
//! A [`TimeoutLayer`](crate::timeout) with a total or attempt limit sets a
//! [`Deadline`] on the requests it passes on, and layers further in read it
//! to know how much time is left: a retry does not wait out a backoff that
//! ends after it, a rate limiter does not queue a request that would still
//! be waiting when the caller gives up. A deadline only ever shrinks: a
//! layer further in may set an earlier one, never a later one.
//!
//! ```
//! use std::time::Duration;
//! use llm_tower::deadline::Deadline;
//! use tokio::time::Instant;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut req = http::Request::new(());
//! let now = Instant::now();
//! Deadline::shrink(&mut req, now + Duration::from_secs(30));
//! // A later deadline further in does not extend it…
//! Deadline::shrink(&mut req, now + Duration::from_secs(60));
//! assert_eq!(Deadline::get(&req).unwrap().remaining(now), Duration::from_secs(30));
//! // …an earlier one shortens it.
//! Deadline::shrink(&mut req, now + Duration::from_secs(10));
//! assert_eq!(Deadline::get(&req).unwrap().remaining(now), Duration::from_secs(10));
//! # }
//! ```

use std::time::Duration;

use tokio::time::Instant;

/// The instant by which a call must be finished, body included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Deadline { at }
    }

    /// The deadline of a request, if a layer set one.
    pub fn get<B>(req: &http::Request<B>) -> Option<Deadline> {
        req.extensions().get::<Deadline>().copied()
    }

    /// Sets the request's deadline to `at`, unless it already has an
    /// earlier one; returns the deadline in force.
    pub fn shrink<B>(req: &mut http::Request<B>, at: Instant) -> Deadline {
        let new = Deadline { at };
        match req.extensions_mut().get_mut::<Deadline>() {
            // Changed in place: no new allocation for a deadline set outside.
            Some(old) => {
                *old = (*old).min(new);
                *old
            }
            None => {
                req.extensions_mut().insert(new);
                new
            }
        }
    }

    /// The instant itself.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The time left at `now`; zero once past.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Whether it has passed at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.at
    }

    /// Whether work taking `duration` from `now` would end after it.
    pub fn cannot_fit(&self, now: Instant, duration: Duration) -> bool {
        now.checked_add(duration).is_none_or(|end| end > self.at)
    }
}
