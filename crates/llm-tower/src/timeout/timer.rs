//! One timer per call, armed lazily and moved cheaply.

use std::{future::Future, pin::Pin, task::Context, time::Duration};

use tokio::time::{Instant, Sleep, sleep_until};

use super::Phase;

/// A timer that costs nothing until a call has to wait.
///
/// The sleep is boxed and made on the first wait: an answer that is ready
/// at once registers no timer, and the futures and bodies that carry a
/// `Timer` stay small to move.
///
/// It aims at a `target` for a phase. Moving the target later keeps the
/// registration where it is: the sleep wakes early once and is then re-armed
/// at the target. A stream whose idle deadline moves forward at every chunk
/// so costs one timer operation per idle period, not one per chunk.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    target: Option<(Instant, Phase, Duration)>,
}

impl Timer {
    /// Aims the timer at `at`, for `phase` whose limit is `limit`.
    pub(crate) fn arm(&mut self, at: Instant, phase: Phase, limit: Duration) {
        match &mut self.sleep {
            Some(sleep) => {
                if at < sleep.deadline() {
                    sleep.as_mut().reset(at);
                }
            }
            None => self.sleep = Some(Box::pin(sleep_until(at))),
        }
        self.target = Some((at, phase, limit));
    }

    /// The phase and limit that fired, if the target has been reached.
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Option<(Phase, Duration)> {
        let (sleep, (target, phase, limit)) = self.sleep.as_mut().zip(self.target)?;
        loop {
            sleep.as_mut().poll(cx).is_ready().then_some(())?;
            if sleep.deadline() >= target {
                return Some((phase, limit));
            }
            // Woke before the target moved on: aim at it now.
            sleep.as_mut().reset(target);
        }
    }
}
