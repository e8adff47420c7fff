//! One breaker: its state in one atomic word, its windows, its transitions.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicU32, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use rand::Rng;
use tokio::time::Instant;

use super::{
    BreakerKey, CircuitBreakerConfig, CircuitOpen,
    config::SlidingWindow,
    share::Health,
    window::{CallRing, Counts, TimeRing, Window},
};

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast until the open time is over.
    Open,
    /// A few probes go through; their outcome closes or reopens it.
    HalfOpen,
    /// Forced open by hand ([`CircuitBreakerHandle::isolate`](super::CircuitBreakerHandle::isolate)),
    /// until reset.
    Isolated,
}

impl BreakerState {
    /// `closed`, `open`, `half_open` or `isolated`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Isolated => "isolated",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, as passed to
/// [`on_transition`](super::CircuitBreakerLayer::on_transition) and logged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The breaker's key.
    pub key: BreakerKey,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// Why: `consecutive_failures`, `failure_rate`, `slow_calls`,
    /// `open_time_over`, `probe_failed`, `probes_succeeded`, `isolated`,
    /// `reset`, or `opened_elsewhere` — another layer or process sharing
    /// the breaker's health through a store opened it (see
    /// [sharing](super#sharing-health-across-processes)).
    pub reason: &'static str,
    /// For a transition to open: how long it stays open.
    pub open_for: Option<Duration>,
}

// The state word: mode in bits 0-1, probes in flight in 2-17, successful
// probes in 18-33, generation in 34-63. The generation changes at every
// transition, so a late outcome of an earlier state is ignored.
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const ISOLATED: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u64);

impl Word {
    fn new(mode: u64, inflight: u64, successes: u64, generation: u64) -> Self {
        Word(mode | (inflight << 2) | (successes << 18) | (generation << 34))
    }
    fn mode(self) -> u64 {
        self.0 & 0b11
    }
    fn inflight(self) -> u64 {
        (self.0 >> 2) & 0xFFFF
    }
    fn successes(self) -> u64 {
        (self.0 >> 18) & 0xFFFF
    }
    fn generation(self) -> u64 {
        self.0 >> 34
    }
    fn next(self, mode: u64) -> Self {
        Word::new(mode, 0, 0, (self.generation() + 1) & ((1 << 30) - 1))
    }
    fn state(self) -> BreakerState {
        match self.mode() {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Isolated,
        }
    }
}

/// How a call was let through.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Admission {
    Closed { generation: u64 },
    Probe { generation: u64 },
}

/// What a call's outcome says about the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// A failure that counts against the provider's health.
    Failure,
    /// Neither: a bad request, a cancelled call, a failure not counted.
    Neutral,
}

/// The hook called with every transition.
pub(crate) type Listener = Box<dyn Fn(&Transition) + Send + Sync>;

/// The policy every breaker of a layer follows, its clock and its
/// listener.
pub(crate) struct Policy {
    pub(crate) config: CircuitBreakerConfig,
    pub(crate) origin: Instant,
    /// Set at any time, by any clone of the layer; read at transitions
    /// only.
    pub(crate) listener: ArcSwapOption<Listener>,
    /// The store the breakers share their health through, when
    /// [`share`](CircuitBreakerConfig::share) is on and the layer has one.
    pub(crate) health: Option<Arc<Health>>,
}

impl Policy {
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Logs `t` and calls the listener. Never called under a breaker's
    /// lock: a listener may steer the breakers (reset, isolate).
    pub(crate) fn notify(&self, t: Transition) {
        match t.to {
            BreakerState::Open | BreakerState::Isolated => tracing::warn!(
                key = %t.key, from = %t.from, to = %t.to, reason = t.reason,
                open_for_ms = t.open_for.map(|d| d.as_millis() as u64),
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                key = %t.key, from = %t.from, to = %t.to, reason = t.reason,
                "circuit breaker transition"
            ),
        }
        if let Some(l) = self.listener.load_full() {
            l(&t);
        }
    }
}

/// One breaker.
pub(crate) struct Breaker {
    key: BreakerKey,
    word: AtomicU64,
    /// When the open time ends, in nanoseconds since the policy's origin;
    /// written before the state word that publishes it.
    open_until: AtomicU64,
    /// Trips since the breaker last closed, for the growing open time.
    trips: AtomicU32,
    consecutive: AtomicU32,
    window: Option<Window>,
    /// The map's epoch at its last use, for eviction.
    last_used: AtomicU64,
    /// Held only to change state, never on the closed path, and never
    /// while the listener runs.
    transitions: Mutex<()>,
    /// Its shared health, when the layer shares it: `None` otherwise, and
    /// then the closed path never looks further.
    share: Option<Box<Shared>>,
}

/// A breaker's part in the shared health.
struct Shared {
    /// Its flag in the store.
    flag: Arc<str>,
    /// When its closed state last looked at the flag, in nanoseconds since
    /// the policy's origin, plus one; 0: never.
    checked: AtomicU64,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("key", &self.key)
            .field("state", &Word(self.word.load(Relaxed)).state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker; `flag`: its key in the shared health store, when
    /// the layer shares its health.
    pub(crate) fn new(
        key: BreakerKey,
        config: &CircuitBreakerConfig,
        epoch: u64,
        flag: Option<Arc<str>>,
    ) -> Self {
        let window = match (config.failure_rate, config.slow_calls) {
            (Some(r), _) => Some(match r.window {
                SlidingWindow::Calls { calls } => Window::Calls(CallRing::new(calls)),
                SlidingWindow::Time { duration } => Window::Time(TimeRing::new(duration)),
            }),
            (None, Some(_)) => Some(Window::Calls(CallRing::new(50))),
            (None, None) => None,
        };
        Breaker {
            key,
            word: AtomicU64::new(Word::new(CLOSED, 0, 0, 0).0),
            open_until: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window,
            last_used: AtomicU64::new(epoch),
            transitions: Mutex::new(()),
            share: flag.map(|flag| {
                Box::new(Shared {
                    flag,
                    checked: AtomicU64::new(0),
                })
            }),
        }
    }

    /// Whether the breaker shares its health. A plain field read: the
    /// closed path of a layer that does not share goes no further.
    #[inline]
    pub(crate) fn is_shared(&self) -> bool {
        self.share.is_some()
    }

    /// When a closed, shared breaker is due to look at its flag (its last
    /// look is `share_refresh` old, or it never looked): its flag's key,
    /// and the look is recorded, so that one caller per period looks.
    pub(crate) fn share_due(&self, policy: &Policy) -> Option<Arc<str>> {
        let share = self.share.as_deref()?;
        let health = policy.health.as_deref()?;
        if Word(self.word.load(Acquire)).mode() != CLOSED {
            return None;
        }
        let now = policy.nanos(Instant::now()).saturating_add(1);
        let last = share.checked.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < health.refresh_ns {
            return None;
        }
        share
            .checked
            .compare_exchange(last, now, Relaxed, Relaxed)
            .ok()
            .map(|_| share.flag.clone())
    }

    /// Another layer or process opened this key's breaker, for `left`
    /// more: a closed breaker opens here for as long, without counting a
    /// trip of its own (the open time of its next trip does not grow).
    pub(crate) fn open_elsewhere(&self, policy: &Policy, left: Duration) {
        let g = self.lock();
        let cur = Word(self.word.load(Acquire));
        if cur.mode() != CLOSED {
            return;
        }
        let until = policy
            .nanos(Instant::now())
            .saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.open_until.store(until, Relaxed);
        self.word.store(cur.next(OPEN).0, Release);
        drop(g);
        policy.notify(Transition {
            key: self.key.clone(),
            from: BreakerState::Closed,
            to: BreakerState::Open,
            reason: "opened_elsewhere",
            open_for: Some(left),
        });
    }

    /// Tells the other sharers this breaker opened for `open_for`.
    fn share_open(&self, policy: &Policy, open_for: Duration) {
        if let (Some(share), Some(health)) = (&self.share, &policy.health) {
            health.set(share.flag.clone(), open_for);
        }
    }

    /// Tells the other sharers this breaker closed: its flag goes, and its
    /// own next look is a period away.
    fn share_close(&self, policy: &Policy) {
        if let (Some(share), Some(health)) = (&self.share, &policy.health) {
            share
                .checked
                .store(policy.nanos(Instant::now()).saturating_add(1), Relaxed);
            health.clear(share.flag.clone());
        }
    }

    pub(crate) fn key(&self) -> &BreakerKey {
        &self.key
    }

    /// Records a use in `epoch`: one relaxed load, and a store once per
    /// epoch.
    pub(crate) fn touch(&self, epoch: u64) {
        if self.last_used.load(Relaxed) != epoch {
            self.last_used.store(epoch, Relaxed);
        }
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Relaxed)
    }

    /// Whether dropping it loses nothing: closed (its counts are the only
    /// loss), or isolated (the isolation is kept apart, and applies again
    /// to a new breaker of its key). Never open or half-open.
    pub(crate) fn evictable(&self) -> bool {
        matches!(Word(self.word.load(Acquire)).mode(), CLOSED | ISOLATED)
    }

    /// Starts isolated, before anyone sees it: no transition.
    pub(crate) fn start_isolated(&self) {
        let cur = Word(self.word.load(Acquire));
        self.word.store(cur.next(ISOLATED).0, Release);
    }

    pub(crate) fn state(&self) -> BreakerState {
        Word(self.word.load(Acquire)).state()
    }

    /// The time left open at `now`, if open.
    pub(crate) fn open_for(&self, policy: &Policy, now: Instant) -> Option<Duration> {
        let w = Word(self.word.load(Acquire));
        (w.mode() == OPEN).then(|| {
            Duration::from_nanos(
                self.open_until
                    .load(Relaxed)
                    .saturating_sub(policy.nanos(now)),
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.transitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rejected(&self, state: BreakerState, retry_after: Option<Duration>) -> CircuitOpen {
        CircuitOpen::new(self.key.clone(), state, retry_after)
    }

    /// Lets a call through, or refuses it. Closed: one atomic load.
    pub(crate) fn admit(&self, policy: &Policy) -> Result<Admission, CircuitOpen> {
        let mut w = Word(self.word.load(Acquire));
        loop {
            match w.mode() {
                CLOSED => {
                    return Ok(Admission::Closed {
                        generation: w.generation(),
                    });
                }
                ISOLATED => return Err(self.rejected(BreakerState::Isolated, None)),
                OPEN => {
                    let now = policy.nanos(Instant::now());
                    let until = self.open_until.load(Relaxed);
                    if now < until {
                        return Err(self.rejected(
                            BreakerState::Open,
                            Some(Duration::from_nanos(until - now)),
                        ));
                    }
                    // The open time is over: this call is the first probe.
                    let g = self.lock();
                    let cur = Word(self.word.load(Acquire));
                    if cur != w {
                        w = cur;
                        continue;
                    }
                    let probing = Word::new(HALF_OPEN, 1, 0, w.next(HALF_OPEN).generation());
                    self.word.store(probing.0, Release);
                    drop(g);
                    policy.notify(Transition {
                        key: self.key.clone(),
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        reason: "open_time_over",
                        open_for: None,
                    });
                    return Ok(Admission::Probe {
                        generation: probing.generation(),
                    });
                }
                _ => {
                    if w.inflight() >= u64::from(policy.config.half_open.probes) {
                        return Err(self.rejected(BreakerState::HalfOpen, Some(Duration::ZERO)));
                    }
                    let next = Word(w.0 + (1 << 2));
                    match self
                        .word
                        .compare_exchange_weak(w.0, next.0, Release, Acquire)
                    {
                        Ok(_) => {
                            return Ok(Admission::Probe {
                                generation: w.generation(),
                            });
                        }
                        Err(cur) => w = Word(cur),
                    }
                }
            }
        }
    }

    /// Records the outcome of a call let through as `admission`.
    pub(crate) fn record(
        &self,
        policy: &Policy,
        admission: Admission,
        outcome: Outcome,
        slow: bool,
        now: Option<Instant>,
    ) {
        match admission {
            Admission::Closed { generation } => {
                self.record_closed(policy, generation, outcome, slow, now)
            }
            Admission::Probe { generation } => self.record_probe(policy, generation, outcome),
        }
    }

    fn record_closed(
        &self,
        policy: &Policy,
        generation: u64,
        outcome: Outcome,
        slow: bool,
        now: Option<Instant>,
    ) {
        let w = Word(self.word.load(Acquire));
        if w.mode() != CLOSED
            || w.generation() != generation
            || (outcome == Outcome::Neutral && !slow)
        {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let now_nanos = || policy.nanos(now.unwrap_or_else(Instant::now));
        let in_window = matches!(self.window, Some(Window::Time(_)));
        let at = if in_window { now_nanos() } else { 0 };
        if let Some(window) = &self.window {
            window.record(at, failed, slow);
        }
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Relaxed) + 1
        } else {
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            0
        };
        if !failed && !slow {
            return;
        }
        let config = &policy.config;
        let reason = if config
            .consecutive_failures
            .is_some_and(|n| consecutive >= n)
        {
            Some("consecutive_failures")
        } else {
            let counts = self
                .window
                .as_ref()
                .map_or(Counts::default(), |win| win.counts(at));
            let over = |hits: u32, threshold: f64, min: u32| {
                counts.calls >= min.max(1) && f64::from(hits) >= threshold * f64::from(counts.calls)
            };
            if config
                .failure_rate
                .is_some_and(|r| failed && over(counts.failures, r.threshold, r.min_calls))
            {
                Some("failure_rate")
            } else if config.slow_calls.is_some_and(|s| {
                let min = config.failure_rate.map_or(10, |r| r.min_calls);
                over(counts.slow, s.threshold, min)
            }) {
                Some("slow_calls")
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            self.trip(policy, w, reason);
        }
    }

    fn record_probe(&self, policy: &Policy, generation: u64, outcome: Outcome) {
        let mut w = Word(self.word.load(Acquire));
        loop {
            if w.mode() != HALF_OPEN || w.generation() != generation {
                return;
            }
            match outcome {
                Outcome::Failure => {
                    self.trip(policy, w, "probe_failed");
                    return;
                }
                Outcome::Success
                    if w.successes() + 1 >= u64::from(policy.config.half_open.successes) =>
                {
                    let g = self.lock();
                    if Word(self.word.load(Acquire)) != w {
                        w = Word(self.word.load(Acquire));
                        continue;
                    }
                    let t = self.close(w, "probes_succeeded");
                    drop(g);
                    self.share_close(policy);
                    policy.notify(t);
                    return;
                }
                _ => {
                    let successes = w.successes() + u64::from(outcome == Outcome::Success);
                    let next = Word::new(
                        HALF_OPEN,
                        w.inflight().saturating_sub(1),
                        successes,
                        w.generation(),
                    );
                    match self
                        .word
                        .compare_exchange_weak(w.0, next.0, Release, Acquire)
                    {
                        Ok(_) => return,
                        Err(cur) => w = Word(cur),
                    }
                }
            }
        }
    }

    /// Opens the breaker from state `from`, unless it changed meanwhile.
    fn trip(&self, policy: &Policy, from: Word, reason: &'static str) {
        let g = self.lock();
        let cur = Word(self.word.load(Acquire));
        if cur.mode() != from.mode() || cur.generation() != from.generation() {
            return;
        }
        let trips = self.trips.load(Relaxed) + 1;
        let open = &policy.config.open;
        let nominal = open.nominal(trips);
        let open_for = if open.jitter > 0.0 {
            let spread = rand::rng().random_range(-open.jitter..=open.jitter);
            nominal
                .mul_f64((1.0 + spread).max(0.0))
                .min(open.cap)
                .max(Duration::from_millis(1))
        } else {
            nominal
        };
        self.trips.store(trips, Relaxed);
        let until = policy
            .nanos(Instant::now())
            .saturating_add(open_for.as_nanos() as u64);
        self.open_until.store(until, Relaxed);
        self.word.store(cur.next(OPEN).0, Release);
        drop(g);
        self.share_open(policy, open_for);
        policy.notify(Transition {
            key: self.key.clone(),
            from: cur.state(),
            to: BreakerState::Open,
            reason,
            open_for: Some(open_for),
        });
    }

    /// Closes the breaker (the caller holds the transition lock), and
    /// returns the transition for the caller to announce once it lets go.
    fn close(&self, from: Word, reason: &'static str) -> Transition {
        if let Some(w) = &self.window {
            w.reset();
        }
        self.consecutive.store(0, Relaxed);
        self.trips.store(0, Relaxed);
        self.word.store(from.next(CLOSED).0, Release);
        Transition {
            key: self.key.clone(),
            from: from.state(),
            to: BreakerState::Closed,
            reason,
            open_for: None,
        }
    }

    /// Forces the breaker open until reset.
    pub(crate) fn isolate(&self, policy: &Policy) {
        let g = self.lock();
        let cur = Word(self.word.load(Acquire));
        if cur.mode() == ISOLATED {
            return;
        }
        self.word.store(cur.next(ISOLATED).0, Release);
        drop(g);
        policy.notify(Transition {
            key: self.key.clone(),
            from: cur.state(),
            to: BreakerState::Isolated,
            reason: "isolated",
            open_for: None,
        });
    }

    /// Closes the breaker and forgets its history.
    pub(crate) fn reset(&self, policy: &Policy) {
        let g = self.lock();
        let cur = Word(self.word.load(Acquire));
        let t = self.close(cur, "reset");
        drop(g);
        self.share_close(policy);
        policy.notify(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_packs_and_unpacks() {
        let w = Word::new(HALF_OPEN, 3, 7, (1 << 30) - 1);
        assert_eq!(
            (w.mode(), w.inflight(), w.successes(), w.generation()),
            (HALF_OPEN, 3, 7, (1 << 30) - 1)
        );
        assert_eq!(w.next(OPEN).generation(), 0, "the generation wraps");
        assert_eq!(w.next(CLOSED).state(), BreakerState::Closed);
    }
}
