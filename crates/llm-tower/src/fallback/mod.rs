//! When one model or provider cannot answer, another does:
//! [`FallbackLayer`].
//!
//! The layer's inner service is the first target; [`FallbackLayer::target`]
//! adds the others in order, each a [`Target`] (a model, optionally another
//! provider's endpoint and credentials, what it can serve) with a service
//! of its own — the recommended per-target stack is `Retry →
//! CircuitBreaker → RateLimit → Timeout(attempt) → Meter → client`.
//!
//! # Per call
//!
//! 1. A target that cannot serve the call is skipped before anything is
//!    sent: a prompt and output cap larger than its context window, more
//!    output than it writes, images, tools or JSON mode it does not take.
//! 2. The request is made for the target: the same format gets the model
//!    replaced in the body; another format gets the request translated
//!    ([`translate`](crate::translate)); the target's URL and headers are
//!    set. The caller's credentials never go to another provider's format:
//!    such a target sets its own.
//! 3. The answer of a target of another format is translated back, JSON
//!    and streams, so the caller receives the format it sent, with the
//!    model that answered named; [`Answered`] in the response's extensions
//!    names the target.
//! 4. A failure moves the call on when the [classifier](crate::classify)
//!    says another target could help ([`Failure::should_fall_back`](crate::classify::Failure::should_fall_back)):
//!    quota exhausted, an open breaker, overload or server errors after the
//!    target's retries, timeouts, rate limits refused locally. Bad requests,
//!    auth errors and content-policy refusals do not move on unless asked
//!    ([`also_move_on`](FallbackLayer::also_move_on)); a context-length
//!    error moves on only to a target with a larger window.
//! 5. One [`AttemptBudget`](crate::attempts::AttemptBudget) covers the
//!    retries of every target and the moves between them
//!    ([`max_attempts`](FallbackLayer::max_attempts)): however the layers
//!    are nested, a call never makes more upstream attempts.
//! 6. When no target answers, the caller receives the last HTTP answer (as
//!    retry does), or [`AllTargetsFailed`] naming each target and why.
//!
//! 7. Opt-in, as a last resort when every target failed: a recent good
//!    answer to the same request ([`stale_answers`](FallbackLayer::stale_answers)),
//!    or an answer the user wrote ([`static_answer`](FallbackLayer::static_answer)),
//!    always marked ([`DEGRADED_HEADER`], [`Degraded`] in the extensions,
//!    an event and a warning): never silent.
//!
//! # Streams
//!
//! A stream is held by each target's retry layer, as its
//! [`Hold`](crate::retry::Hold) says: until its first token by default (a
//! failure after it reaches the caller as a typed error and does not move
//! the call), or until it is complete with `Hold::Complete`, so that a
//! stream failing anywhere is retried and then moved to the next target
//! whole, and the caller receives one clean stream.
//!
//! # Hedging
//!
//! Opt-in, for calls marked [`Hedge`]: a target slow to answer (for a
//! stream, to produce its first token) gets company — the call also goes
//! to the next target, the first answer wins, the other is dropped at once.
//! Bounded by a ratio of extra attempts and by the call's attempt budget
//! ([`hedge`](FallbackLayer::hedge)).

mod body;
mod degrade;
mod layer;
mod target;

pub use body::{FallbackBody, TRANSLATE_LIMIT};
pub use degrade::{DEGRADED_HEADER, Degraded, MAX_STALE_ANSWER};
pub use layer::{
    AllTargetsFailed, Answered, Fallback, FallbackEvent, FallbackLayer, Hedge, ResponseFuture,
    TargetOutcome,
};
pub use target::Target;
