//! One budget of upstream attempts per call, shared by every layer that
//! makes attempts: [`AttemptBudget`].
//!
//! Retry layers nested in one another — a retry per fallback target inside
//! a retry of the whole call, say — would multiply their attempts: three
//! attempts each, nested twice, is nine calls to the provider. Instead, the
//! outermost layer that makes attempts puts an [`AttemptBudget`] in the
//! request's extensions, sized by its own limit; every layer inside finds it
//! (the request's clones share it) and draws each attempt it makes from it,
//! besides its own limit. However the layers are nested, a call never makes
//! more upstream attempts than the outermost one allows.
//!
//! Each attempt is counted once, by the layer that starts it: the call's
//! first attempt when the budget is made (the layer making it is about to
//! send it), every later one — a retry, a move to another target, a hedge —
//! when a layer decides to make it ([`try_take`](AttemptBudget::try_take)).
//! A layer inside that merely passes an attempt on (the first attempt of a
//! retry layer nested in another) takes nothing for it. An attempt that
//! reached nobody (refused by an open circuit breaker) is given back by
//! the layer that refused it.
//!
//! ```
//! use llm_tower::attempts::AttemptBudget;
//!
//! let mut req = http::Request::new(());
//! // The outermost layer sizes it, its first attempt counted…
//! let budget = AttemptBudget::get_or_insert(&mut req, 3);
//! assert_eq!(budget.used(), 1);
//! // …a layer inside finds the same one, whatever limit it has itself.
//! let inner = AttemptBudget::get_or_insert(&mut req, 10);
//! assert!(inner.try_take() && budget.try_take());
//! assert!(!inner.try_take(), "three in all");
//! inner.give_back();
//! assert_eq!(budget.remaining(), 1);
//! ```

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

/// The upstream attempts a call may still make, in its request's
/// extensions. Clones share the count. See the [module docs](self).
#[derive(Clone)]
pub struct AttemptBudget {
    inner: Arc<Inner>,
}

struct Inner {
    total: u32,
    used: AtomicU32,
}

impl AttemptBudget {
    /// A budget of `total` attempts for a call about to make its first:
    /// that one is counted already. With `total` 0, none may be made.
    pub fn new(total: u32) -> Self {
        AttemptBudget {
            inner: Arc::new(Inner {
                total,
                used: AtomicU32::new(1),
            }),
        }
    }

    /// The budget of a request, if a layer set one.
    pub fn get<B>(req: &http::Request<B>) -> Option<&AttemptBudget> {
        req.extensions().get::<AttemptBudget>()
    }

    /// The request's budget, or, when it has none (the caller is the
    /// outermost layer that makes attempts), a new one of `total` attempts
    /// — the first counted — inserted now.
    pub fn get_or_insert<B>(req: &mut http::Request<B>, total: u32) -> AttemptBudget {
        req.extensions_mut()
            .get_or_insert_with(|| AttemptBudget::new(total))
            .clone()
    }

    /// Takes one attempt; `false` when none is left.
    pub fn try_take(&self) -> bool {
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.inner.total).then_some(used + 1)
            })
            .is_ok()
    }

    /// Gives back an attempt that reached nobody.
    pub fn give_back(&self) {
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_sub(1)
            });
    }

    /// The attempts the call may make in all.
    pub fn total(&self) -> u32 {
        self.inner.total
    }

    /// The attempts taken so far.
    pub fn used(&self) -> u32 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// The attempts left.
    pub fn remaining(&self) -> u32 {
        self.inner.total.saturating_sub(self.used())
    }

    /// Whether more attempts were counted than allowed: a budget of 0,
    /// whose first attempt must not be made.
    pub fn is_overdrawn(&self) -> bool {
        self.used() > self.inner.total
    }
}

impl fmt::Debug for AttemptBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptBudget")
            .field("total", &self.total())
            .field("used", &self.used())
            .finish()
    }
}

/// A call had no upstream attempt left to make: layers further out already
/// made every attempt its [`AttemptBudget`] allows. Not retried, and not a
/// reason to move to another target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptsExhausted {
    pub(crate) total: u32,
}

impl AttemptsExhausted {
    /// The attempts the call was allowed in all.
    pub fn total(&self) -> u32 {
        self.total
    }
}

impl fmt::Display for AttemptsExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no attempt left: the call already made the {} upstream attempts it is allowed",
            self.total
        )
    }
}

impl std::error::Error for AttemptsExhausted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_total_from_many_threads() {
        // 101 in all, the first counted: 100 more to take.
        let budget = AttemptBudget::new(101);
        let taken = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if budget.try_take() {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.load(Ordering::Relaxed), 100);
        assert_eq!(budget.remaining(), 0);
        budget.give_back();
        assert!(budget.try_take());
        // Never below zero.
        let fresh = AttemptBudget::new(1);
        fresh.give_back();
        fresh.give_back();
        assert_eq!(fresh.used(), 0);
        assert_eq!(format!("{fresh:?}"), "AttemptBudget { total: 1, used: 0 }");
        assert!(AttemptBudget::new(0).is_overdrawn());
        assert!(!AttemptBudget::new(1).is_overdrawn());
    }
}
