//! Every breaker of a layer, by key: bounded, evicting, and isolations kept
//! apart so that eviction never loses them.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{AcqRel, Acquire, Relaxed, Release},
        },
    },
    time::Duration,
};

use dashmap::{DashMap, mapref::entry::Entry};
use tokio::time::Instant;

use super::{
    BreakerKey, BreakerState, Transition,
    state::{Breaker, Policy},
};

/// The breakers of one layer.
///
/// A sharded map: an existing key is found under a shard's read lock (no
/// global lock, no copy); a new key is one insert. Eviction runs on the
/// path of new keys only, in sweeps whose cost is amortized over the keys
/// that made them (see [`max_keys`](super::CircuitBreakerConfig::max_keys)
/// and [`idle_timeout`](super::CircuitBreakerConfig::idle_timeout)).
pub(crate) struct Breakers {
    map: DashMap<BreakerKey, Arc<Breaker>>,
    /// How many entries `map` holds (its own `len` visits every shard).
    len: AtomicUsize,
    /// The current epoch: a breaker records the epoch of its last use, and
    /// every sweep starts a new one.
    epoch: AtomicU64,
    /// Isolations, as patterns ([`BreakerKey::covers`]): applied to every
    /// breaker they cover, now and when one is made.
    rules: Mutex<Vec<BreakerKey>>,
    has_rules: AtomicBool,
    sweeper: Mutex<Sweeper>,
    /// Shared by new keys while the map is full of breakers that cannot go.
    overflow: Arc<Breaker>,
    max_keys: usize,
    idle: Duration,
}

struct Sweeper {
    /// When each epoch still of interest began, oldest first.
    epochs: VecDeque<(u64, Instant)>,
    /// Breakers last used before this epoch are idle past the timeout.
    idle_cut: u64,
    /// Overflowed calls since a sweep at the cap freed nothing: the next
    /// such sweep waits for enough of them to be worth its cost.
    overflowed: usize,
}

impl Breakers {
    pub(crate) fn new(policy: &Policy) -> Self {
        let config = &policy.config;
        Breakers {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            rules: Mutex::new(Vec::new()),
            has_rules: AtomicBool::new(false),
            sweeper: Mutex::new(Sweeper {
                epochs: VecDeque::from([(0, Instant::now())]),
                idle_cut: 0,
                overflowed: 0,
            }),
            overflow: Arc::new(Breaker::new(BreakerKey::overflow(), config, 0, None)),
            max_keys: config.max_keys,
            idle: config.idle_timeout,
        }
    }

    /// How many breakers are kept.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// The breaker of `key`, made if new. An existing key: a shard read
    /// lock, a hash lookup, an `Arc` clone and a relaxed load.
    pub(crate) fn get(&self, key: &BreakerKey, policy: &Policy) -> Arc<Breaker> {
        if let Some(b) = self.map.get(key) {
            let b = Arc::clone(b.value());
            b.touch(self.epoch.load(Relaxed));
            return b;
        }
        self.insert(key, policy)
    }

    /// The breaker of exactly `key`, if kept.
    pub(crate) fn existing(&self, key: &BreakerKey) -> Option<Arc<Breaker>> {
        self.map.get(key).map(|b| Arc::clone(b.value()))
    }

    /// Every breaker kept (and the overflow breaker when it is not closed).
    pub(crate) fn all(&self) -> Vec<Arc<Breaker>> {
        let mut v: Vec<_> = self.map.iter().map(|e| Arc::clone(e.value())).collect();
        if self.overflow.state() != BreakerState::Closed {
            v.push(self.overflow.clone());
        }
        v
    }

    fn rules(&self) -> MutexGuard<'_, Vec<BreakerKey>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an isolation covers `key`.
    pub(crate) fn isolated(&self, key: &BreakerKey) -> bool {
        self.has_rules.load(Acquire) && self.rules().iter().any(|r| r.covers(key))
    }

    #[cold]
    fn insert(&self, key: &BreakerKey, policy: &Policy) -> Arc<Breaker> {
        let now = Instant::now();
        self.sweep(now, false);
        if self.len() >= self.max_keys {
            self.sweep(now, true);
            if self.len() >= self.max_keys {
                return self.overflowed(key, policy);
            }
        }
        let epoch = self.epoch.load(Relaxed);
        let flag = policy.health.as_ref().map(|h| h.flag_key(key));
        let fresh = Arc::new(Breaker::new(key.clone(), &policy.config, epoch, flag));
        if self.isolated(key) {
            fresh.start_isolated();
        }
        let b = match self.map.entry(key.clone()) {
            Entry::Occupied(e) => return Arc::clone(e.get()),
            Entry::Vacant(e) => {
                e.insert(fresh.clone());
                self.len.fetch_add(1, Relaxed);
                fresh
            }
        };
        // An isolation added while this breaker was made, and that missed
        // it in the map.
        if self.isolated(key) {
            b.isolate(policy);
        }
        b
    }

    /// The map is full of breakers that cannot go.
    fn overflowed(&self, key: &BreakerKey, policy: &Policy) -> Arc<Breaker> {
        self.lock_sweeper().overflowed += 1;
        if self.isolated(key) {
            // Isolated by hand: refused, whatever the overflow's state.
            let b = Arc::new(Breaker::new(key.clone(), &policy.config, 0, None));
            b.start_isolated();
            return b;
        }
        self.overflow.touch(self.epoch.load(Relaxed));
        self.overflow.clone()
    }

    fn lock_sweeper(&self) -> MutexGuard<'_, Sweeper> {
        self.sweeper.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops idle breakers when a quarter of the idle timeout has passed
    /// since the last epoch began, or (`full`) the least recently used
    /// breakers that can go, an eighth of the map, when it is full. Either
    /// visits the whole map, so it runs only that often: at most four times
    /// per idle timeout, and at the cap once per `max_keys / 8` new keys.
    fn sweep(&self, now: Instant, full: bool) {
        let batch = (self.max_keys / 8).max(1);
        let mut s = self.lock_sweeper();
        let &(_, began) = s.epochs.back().expect("never empty");
        let due = now.saturating_duration_since(began) >= self.idle / 4;
        if full {
            if self.len() < self.max_keys || (s.overflowed > 0 && s.overflowed < batch) {
                return;
            }
        } else if !due {
            return;
        }
        // A new epoch: uses from now on are told apart from older ones.
        let epoch = self.epoch.fetch_add(1, AcqRel) + 1;
        s.epochs.push_back((epoch, now));
        // Breakers last used in an epoch that ended an idle timeout ago
        // are idle.
        let horizon = now.checked_sub(self.idle);
        while let (Some(&(e, _)), Some(&(_, next_began))) = (s.epochs.front(), s.epochs.get(1)) {
            if horizon.is_some_and(|h| next_began <= h) {
                s.idle_cut = e + 1;
                s.epochs.pop_front();
            } else {
                break;
            }
        }
        let idle_cut = s.idle_cut;
        let mut candidates: Vec<(u64, BreakerKey)> = Vec::new();
        let mut idle: Vec<BreakerKey> = Vec::new();
        for entry in self.map.iter() {
            let b = entry.value();
            if Arc::strong_count(b) > 1 || !b.evictable() {
                continue;
            }
            if b.last_used() < idle_cut {
                idle.push(entry.key().clone());
            } else if full {
                candidates.push((b.last_used(), entry.key().clone()));
            }
        }
        let mut freed = 0;
        for key in &idle {
            freed += usize::from(self.remove_if_evictable(key));
        }
        if full && freed < batch && !candidates.is_empty() {
            let n = (batch - freed).min(candidates.len());
            if n < candidates.len() {
                candidates.select_nth_unstable_by_key(n, |(used, _)| *used);
            }
            for (_, key) in &candidates[..n] {
                freed += usize::from(self.remove_if_evictable(key));
            }
        }
        if full {
            s.overflowed = usize::from(freed == 0);
        }
    }

    /// Removes the breaker of `key` if it can still go: nobody holds it
    /// (checked under the shard's write lock, so nobody can take it
    /// meanwhile) and it is closed or isolated.
    fn remove_if_evictable(&self, key: &BreakerKey) -> bool {
        let removed = self
            .map
            .remove_if(key, |_, b| Arc::strong_count(b) == 1 && b.evictable())
            .is_some();
        if removed {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Isolates every breaker `pattern` covers, now and to come.
    pub(crate) fn isolate(&self, pattern: &BreakerKey, policy: &Policy) {
        let added = {
            let mut rules = self.rules();
            let added = !rules.contains(pattern);
            if added {
                rules.push(pattern.clone());
                self.has_rules.store(true, Release);
            }
            added
        };
        let mut matched = false;
        for b in self.covered(pattern) {
            matched = true;
            b.isolate(policy);
        }
        if added && !matched {
            // No breaker yet: the transition is the pattern's own.
            policy.notify(Transition {
                key: pattern.clone(),
                from: BreakerState::Closed,
                to: BreakerState::Isolated,
                reason: "isolated",
                open_for: None,
            });
        }
    }

    /// Lifts the isolations `pattern` covers, and closes every breaker it
    /// covers, unless a broader isolation still holds it.
    pub(crate) fn reset(&self, pattern: &BreakerKey, policy: &Policy) {
        let lifted = {
            let mut rules = self.rules();
            let before = rules.len();
            rules.retain(|r| !pattern.covers(r));
            self.has_rules.store(!rules.is_empty(), Release);
            before != rules.len()
        };
        let mut matched = false;
        for b in self.covered(pattern) {
            matched = true;
            if !self.isolated(b.key()) {
                b.reset(policy);
            }
        }
        if lifted && !matched {
            policy.notify(Transition {
                key: pattern.clone(),
                from: BreakerState::Isolated,
                to: BreakerState::Closed,
                reason: "reset",
                open_for: None,
            });
        }
    }

    /// The breakers `pattern` covers, collected first so that no shard
    /// lock is held while they change state (a listener may come back).
    fn covered(&self, pattern: &BreakerKey) -> Vec<Arc<Breaker>> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|e| pattern.covers(e.key()))
            .map(|e| Arc::clone(e.value()))
            .collect();
        if pattern.covers(self.overflow.key()) {
            v.push(self.overflow.clone());
        }
        v
    }
}
