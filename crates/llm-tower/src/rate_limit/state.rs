//! What every clone of a rate-limit layer shares: the store, the learned
//! limits, the queue, the counters; and how one call is planned, admitted
//! and settled.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicU64, AtomicUsize,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use foldhash::fast::RandomState;
use http::{HeaderMap, StatusCode};
use tokio::sync::Semaphore;

use super::{
    Limit, MINUTE, Priority, RateLimitConfig, RateLimitEvent, RequestTooLarge, Scope, SettleOutput,
    config::MAX_CELLS,
    key::{
        api_key_fnv, api_key_secret, api_key_text, concat, default_key, model_name, provider_name,
    },
};
use crate::{
    metering::{StreamProgress, UsageObserver, UsageReport},
    provider::{
        Provider,
        headers::{RateLimitInfo, server_delay},
    },
    request::RequestMeta,
    store::{
        Acquire as Acquired, Call, Cell, MemoryStore, OnStoreFailure, Quota, Store, StoreError,
        StoreGuard, Switch, bounded,
    },
    usage::Usage,
    util::run_now_or_spawn,
};

/// The most keys whose learned limits are kept; beyond, idle ones go.
const MAX_KEYS: usize = 10_000;

pub(crate) type Listener = Box<dyn Fn(&RateLimitEvent) + Send + Sync>;

/// A dimension of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dim {
    Requests,
    Tokens,
    Input,
    Output,
}

impl Dim {
    pub(crate) const ALL: [Dim; 4] = [Dim::Requests, Dim::Tokens, Dim::Input, Dim::Output];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dim::Requests => "requests",
            Dim::Tokens => "tokens",
            Dim::Input => "input_tokens",
            Dim::Output => "output_tokens",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn of(self, limit: &Limit) -> Option<u64> {
        match self {
            Dim::Requests => limit.requests,
            Dim::Tokens => limit.tokens,
            Dim::Input => limit.input_tokens,
            Dim::Output => limit.output_tokens,
        }
    }

    fn reported(self, info: &RateLimitInfo) -> Option<crate::provider::headers::Limit> {
        match self {
            Dim::Requests => info.requests,
            Dim::Tokens => info.tokens,
            Dim::Input => info.input_tokens,
            Dim::Output => info.output_tokens,
        }
    }
}

/// Limits learned from one key's responses: `0` is unknown.
#[derive(Default)]
pub(crate) struct Learned {
    limits: [AtomicU64; 4],
    /// Seconds since the layer's start, when last used.
    used: AtomicU64,
}

/// Counters, read by [`RateLimitHandle::stats`](super::RateLimitHandle::stats).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) admitted: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) waited_ns: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) provider_429: AtomicU64,
    pub(crate) settled: AtomicU64,
    pub(crate) adapted: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) store_fail_open: AtomicU64,
    pub(crate) store_degraded: AtomicU64,
}

/// Where a call took from its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The shared store.
    Shared,
    /// The layer's private store, the shared one failing (degraded).
    Local,
    /// Nowhere: the shared store failing, the call went unlimited (fail
    /// open).
    Open,
}

pub(crate) struct Shared<St> {
    pub(crate) config: RateLimitConfig,
    pub(crate) store: St,
    /// Whether the store fails, and the policy meanwhile.
    pub(crate) guard: StoreGuard,
    /// The private store of a degraded policy.
    local: Option<MemoryStore>,
    pub(crate) learned: DashMap<Arc<str>, Arc<Learned>, RandomState>,
    /// Bumped whenever a learned limit changes, appears or goes: the
    /// cached [`KeyPlan`]s built before are stale.
    generation: AtomicU64,
    /// The per-key part of recent plans, by a hash of their [`Ident`].
    plans: DashMap<u64, Arc<KeyPlan>, std::hash::BuildHasherDefault<Prehashed>>,
    /// Hashes an [`Ident`] for `plans`, with a random key (keys come from
    /// users).
    ident_hasher: RandomState,
    /// Digests API keys for [`Ident`], with another random seed.
    secret_hasher: RandomState,
    pub(crate) semaphores: DashMap<Box<str>, Arc<Semaphore>, RandomState>,
    pub(crate) waiting: AtomicUsize,
    pub(crate) counters: Counters,
    pub(crate) listener: ArcSwapOption<Listener>,
    /// Whether `listener` was ever set: most layers have none, and this
    /// spares every event the load of an empty `listener`.
    pub(crate) has_listener: std::sync::atomic::AtomicBool,
    pub(crate) origin: tokio::time::Instant,
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// A limit in force for a call: scope id, scope, dimension, limit, window.
type InForce<'a> = (&'a str, Scope, Dim, u64, Duration);

/// One cell a call takes from: its store key, quota, dimension and scope.
#[derive(Clone, Debug)]
pub(crate) struct PlanCell {
    pub(crate) key: Box<str>,
    pub(crate) quota: Quota,
    pub(crate) dim: Dim,
    pub(crate) scope: Scope,
}

/// What identifies the per-key part of a plan: the explicit key, or the
/// model (for the default key); the provider and the API key (the provider
/// scope, and the default key).
///
/// The API key is known by a digest under a random seed
/// ([`Shared::secret_digest`]): the key itself is never kept, and its
/// FNV-1a (the name keys give it, stable across processes) costs several
/// instructions a byte of a long key, so it is computed only when a plan
/// is built. Two API keys are taken for one when their 64-bit digests
/// agree, as likely as their FNV-1a agreeing, which makes them share their
/// limits anyway.
#[derive(Hash)]
struct Ident<'a> {
    explicit: Option<&'a str>,
    provider: &'a str,
    model: Option<&'a str>,
    digest: Option<u64>,
}

/// An [`Ident`], owned, with the API key's FNV-1a.
struct IdentBuf {
    explicit: Option<Arc<str>>,
    provider: Box<str>,
    model: Option<Box<str>>,
    digest: Option<u64>,
    fnv: Option<u64>,
}

impl IdentBuf {
    fn matches(&self, id: &Ident<'_>) -> bool {
        self.digest == id.digest
            && self.explicit.as_deref() == id.explicit
            && *self.provider == *id.provider
            && self.model.as_deref() == id.model
    }
}

/// The per-key part of a plan, the same for every call of a key: its
/// store keys, quotas and semaphores. Built once and cached in
/// [`Shared::plans`] until the learned limits change.
pub(crate) struct KeyPlan {
    ident: IdentBuf,
    /// [`Shared::generation`] when built.
    generation: u64,
    pub(crate) key: Arc<str>,
    pub(crate) cells: Box<[PlanCell]>,
    pub(crate) pause: Box<str>,
    pub(crate) semaphores: Box<[Arc<Semaphore>]>,
    /// The key's learned limits, when any were when built: touched by
    /// every call, so that a key in use is never evicted.
    learned: Option<Arc<Learned>>,
}

/// Everything a call needs from the layer, worked out in `call`: the
/// key's cached part, and the call's own amounts.
pub(crate) struct Plan {
    /// Shared with the call's [`Settlement`].
    pub(crate) keyed: Arc<KeyPlan>,
    pub(crate) priority: Priority,
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) refund_output: bool,
    pub(crate) uncached_input: bool,
}

/// What a call reserving `input` and `output` tokens takes from a cell of
/// `dim`.
fn amount(dim: Dim, input: u64, output: u64) -> u64 {
    match dim {
        Dim::Requests => 1,
        Dim::Tokens => input.saturating_add(output),
        Dim::Input => input,
        Dim::Output => output,
    }
}

/// How many cells an acquire keeps on the stack: what most configurations
/// have (requests and tokens, per key and global).
const INLINE_CELLS: usize = 4;

/// The cells of one acquire: on the stack up to [`INLINE_CELLS`].
// The large variant is the point: no allocation for the usual acquire.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Cells<'a> {
    Inline([Cell<'a>; INLINE_CELLS], usize),
    Heap(Vec<Cell<'a>>),
}

impl<'a> std::ops::Deref for Cells<'a> {
    type Target = [Cell<'a>];

    fn deref(&self) -> &[Cell<'a>] {
        match self {
            Cells::Inline(cells, len) => &cells[..*len],
            Cells::Heap(cells) => cells,
        }
    }
}

impl Plan {
    pub(crate) fn key(&self) -> &Arc<str> {
        &self.keyed.key
    }

    pub(crate) fn pause(&self) -> &str {
        &self.keyed.pause
    }

    /// What the call takes from a cell of `dim`.
    pub(crate) fn amount(&self, dim: Dim) -> u64 {
        amount(dim, self.input, self.output)
    }

    /// The cells to acquire.
    pub(crate) fn cells<'a>(&'a self, config: &RateLimitConfig, degraded: bool) -> Cells<'a> {
        let cell = |c: &'a PlanCell| -> Cell<'a> {
            let quota = if degraded {
                local_quota(config.on_store_failure, c.quota)
            } else {
                c.quota
            };
            let keep = match self.priority {
                Priority::Interactive => 0,
                Priority::Batch => {
                    let limit = quota.limit();
                    let share = (limit as f64 * config.batch_share).floor() as u64;
                    limit - share.clamp(1, limit)
                }
            };
            Cell::new(&c.key, self.amount(c.dim), quota).keep(keep)
        };
        let plan = &self.keyed.cells;
        match plan.first() {
            Some(first) if plan.len() <= INLINE_CELLS => {
                let mut cells = [cell(first); INLINE_CELLS];
                for (slot, c) in cells.iter_mut().zip(plan.iter()).skip(1) {
                    *slot = cell(c);
                }
                Cells::Inline(cells, plan.len())
            }
            _ => Cells::Heap(plan.iter().map(cell).collect()),
        }
    }

    /// The cell that can never hold the call.
    pub(crate) fn too_large(&self, index: usize) -> RequestTooLarge {
        let c = &self.keyed.cells[index];
        RequestTooLarge {
            key: self.key().clone(),
            dimension: c.dim.as_str(),
            amount: self.amount(c.dim),
            limit: c.quota.limit(),
        }
    }
}

/// `quota` with its limit times the degraded share of `policy`.
pub(crate) fn local_quota(policy: OnStoreFailure, quota: Quota) -> Quota {
    Quota::new(policy.scale(quota.limit()), quota.window()).unwrap_or(quota)
}

/// A hasher for keys that are hashes already ([`Shared::plans`]).
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed; this is for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<St: Store> Shared<St> {
    pub(crate) fn new(config: RateLimitConfig, store: St) -> Self {
        let policy = config.on_store_failure;
        Shared {
            guard: StoreGuard::new(policy, config.store_timeout),
            local: matches!(policy, OnStoreFailure::Degraded { .. }).then(MemoryStore::new),
            config,
            store,
            learned: DashMap::default(),
            generation: AtomicU64::new(0),
            plans: DashMap::default(),
            ident_hasher: RandomState::default(),
            secret_hasher: RandomState::default(),
            semaphores: DashMap::default(),
            waiting: AtomicUsize::new(0),
            counters: Counters::default(),
            listener: ArcSwapOption::empty(),
            has_listener: std::sync::atomic::AtomicBool::new(false),
            origin: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn emit(&self, event: RateLimitEvent) {
        event.trace();
        if !self.has_listener.load(Acquire) {
            return;
        }
        if let Some(listener) = &*self.listener.load() {
            listener(&event);
        }
    }

    fn cell_key(&self, scope_id: &str, dim: Dim, window: Duration) -> Box<str> {
        let mut millis = [0; 20];
        // A quota's window is at most about 146 years: its milliseconds fit.
        let millis = decimal(window.as_millis() as u64, &mut millis);
        concat(&[
            &self.config.prefix,
            ":",
            scope_id,
            ":",
            dim.as_str(),
            ":",
            millis,
        ])
    }

    /// Works out the key, the cells and the amounts of one call.
    pub(crate) fn plan(
        &self,
        parts_key: Option<Arc<str>>,
        headers: &HeaderMap,
        query: Option<&str>,
        meta: Option<&RequestMeta>,
        priority: Priority,
    ) -> Plan {
        let config = &self.config;
        let keyed = self.key_plan(parts_key, headers, query, meta);
        if let Some(l) = &keyed.learned {
            l.used.store(self.now_secs(), Relaxed);
        }
        let input = meta.map_or(0, RequestMeta::estimated_input_tokens);
        let capped = meta.and_then(RequestMeta::max_output_tokens);
        let model = meta.and_then(RequestMeta::model);
        // Output reserved: the cap, else the model's default cut to what
        // the limits hold, so that a missing cap never refuses a call.
        let output = match capped {
            Some(cap) => cap,
            None => {
                let mut out = config.default_output_for(model);
                for c in keyed.cells.iter() {
                    match c.dim {
                        Dim::Tokens => out = out.min(c.quota.limit().saturating_sub(input)),
                        Dim::Output => out = out.min(c.quota.limit()),
                        _ => {}
                    }
                }
                out
            }
        };
        let provider = meta.and_then(RequestMeta::provider);
        let refund_output = match config.settle_output {
            SettleOutput::Actual => true,
            SettleOutput::Cap => false,
            // Only Anthropic is known to give unused output back; OpenAI,
            // Azure and the servers and proxies speaking their format count
            // the cap, and the cap is the safe side for the rest.
            SettleOutput::Auto => matches!(provider, Some(Provider::Anthropic)),
        };
        Plan {
            keyed,
            priority,
            input,
            output,
            refund_output,
            uncached_input: matches!(provider, Some(Provider::Anthropic)),
        }
    }

    /// The per-key part of a call's plan: from the cache when it is there
    /// and current, else built (and cached).
    ///
    /// The cache is looked up by a keyed hash of what identifies the key,
    /// compared in full on a hit, so that no call builds a string on the
    /// happy path. It holds at most [`MAX_KEYS`] plans, and is emptied when
    /// full; a plan built before the learned limits last changed
    /// ([`generation`](Self::generation)) is built again.
    fn key_plan(
        &self,
        parts_key: Option<Arc<str>>,
        headers: &HeaderMap,
        query: Option<&str>,
        meta: Option<&RequestMeta>,
    ) -> Arc<KeyPlan> {
        let secret = api_key_secret(headers, query);
        let id = Ident {
            explicit: parts_key.as_deref(),
            provider: provider_name(meta),
            // The default key's model; an explicit key stands for it.
            model: parts_key.is_none().then(|| model_name(meta)),
            digest: self.secret_digest(secret),
        };
        let hash = std::hash::BuildHasher::hash_one(&self.ident_hasher, &id);
        // Read before the learned limits the plan is built from: a change
        // after this makes the plan stale.
        let generation = self.generation.load(Acquire);
        let cached = self
            .plans
            .get(&hash)
            .filter(|p| p.generation == generation && p.ident.matches(&id))
            .map(|p| p.clone());
        if let Some(plan) = cached {
            return plan;
        }
        let ident = IdentBuf {
            explicit: parts_key.clone(),
            provider: id.provider.into(),
            model: id.model.map(Box::from),
            digest: id.digest,
            fnv: api_key_fnv(secret),
        };
        let plan = Arc::new(self.build_key_plan(parts_key, ident, generation));
        if self.plans.len() >= MAX_KEYS {
            self.plans.clear();
        }
        self.plans.insert(hash, plan.clone());
        plan
    }

    /// An API key's digest, under a random seed.
    fn secret_digest(&self, secret: Option<&[u8]>) -> Option<u64> {
        secret.map(|s| std::hash::BuildHasher::hash_one(&self.secret_hasher, s))
    }

    fn build_key_plan(
        &self,
        parts_key: Option<Arc<str>>,
        ident: IdentBuf,
        generation: u64,
    ) -> KeyPlan {
        let config = &self.config;
        let api_key = api_key_text(ident.fnv);
        let key = parts_key.unwrap_or_else(|| {
            default_key(
                &ident.provider,
                ident.model.as_deref().unwrap_or("-"),
                &api_key,
            )
        });
        let provider_id = concat(&["p:", &ident.provider, ":", &api_key]);
        let key_id = concat(&["k:", &key]);
        let learned = if config.adaptive {
            self.learned.get(&key).map(|l| l.clone())
        } else {
            None
        };

        // The limits in force: (scope id, dim, limit, window).
        let mut limits: Vec<InForce<'_>> = Vec::with_capacity(8);
        let mut semaphores = Vec::new();
        for limit in &config.limits {
            let window = limit.window.unwrap_or(MINUTE);
            let id = match limit.scope {
                Scope::Key => &*key_id,
                Scope::Provider => &*provider_id,
                Scope::Global => "g",
            };
            for dim in Dim::ALL {
                if let Some(n) = dim.of(limit) {
                    limits.push((id, limit.scope, dim, n, window));
                }
            }
            if let Some(n) = limit.concurrency {
                semaphores.push(self.semaphore(id, n));
            }
        }
        if let Some(learned) = &learned {
            for dim in Dim::ALL {
                let n = learned.limits[dim.index()].load(Relaxed);
                if n == 0 {
                    continue;
                }
                // Never above the configured limit; replaces it when lower.
                match limits
                    .iter_mut()
                    .find(|l| l.1 == Scope::Key && l.2 == dim && l.4 == MINUTE)
                {
                    Some(l) => l.3 = l.3.min(n),
                    None => limits.push((&*key_id, Scope::Key, dim, n, MINUTE)),
                }
            }
        }
        limits.truncate(MAX_CELLS);

        let cells = limits
            .iter()
            .filter_map(|&(id, scope, dim, n, window)| {
                let quota = config.quota(n, window)?;
                Some(PlanCell {
                    key: self.cell_key(id, dim, window),
                    quota,
                    dim,
                    scope,
                })
            })
            .collect();
        KeyPlan {
            ident,
            generation,
            pause: concat(&[&config.prefix, ":", &key_id, ":pause"]),
            key,
            cells,
            semaphores: semaphores.into(),
            learned,
        }
    }

    fn semaphore(&self, id: &str, permits: u32) -> Arc<Semaphore> {
        let name = format!("{id}:{permits}");
        if let Some(s) = self.semaphores.get(name.as_str()) {
            return s.clone();
        }
        if self.semaphores.len() >= MAX_KEYS {
            // Cached plans hold their semaphores: let go of them first.
            self.plans.clear();
            // Idle semaphores: every permit back, nobody else holding one.
            // Idle: only the map holds it (every waiter and every permit
            // out holds an `Arc`).
            self.semaphores.retain(|_, s| Arc::strong_count(s) > 1);
        }
        self.semaphores
            .entry(name.into())
            .or_insert_with(|| Arc::new(Semaphore::new(permits as usize)))
            .clone()
    }

    fn now_secs(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// Reads a response's rate-limit headers into the call's key: learned
    /// limits, the provider's view of what remains, and a 429's pause.
    ///
    /// What it writes to the store runs at once on the in-memory store, and
    /// on a task for a remote one: the response is not held back by it.
    pub(crate) fn observe(self: &Arc<Self>, plan: &Plan, status: StatusCode, headers: &HeaderMap)
    where
        St: Clone,
    {
        let limited = status == StatusCode::TOO_MANY_REQUESTS;
        if limited {
            self.counters.provider_429.fetch_add(1, Relaxed);
        }
        if !self.config.adaptive {
            return;
        }
        let now = SystemTime::now();
        let mut info = RateLimitInfo::from_headers(headers, now);
        let pause = if limited {
            server_delay(headers, now).filter(|d| !d.is_zero())
        } else {
            None
        };
        if info.input_tokens.is_some() || info.output_tokens.is_some() {
            // Anthropic's `tokens` is then the most restrictive of its input
            // and output limits, not a limit on their sum.
            info.tokens = None;
        }
        if info.is_empty() && pause.is_none() {
            return;
        }
        self.learn(plan, &info);
        let keyed = &plan.keyed;
        // What to raise each of the key's per-minute cells to: the call's,
        // and those just learned.
        let hold = |quota: Quota, reported: Option<crate::provider::headers::Limit>| {
            // Used at the provider; our cell keeps the headroom margin.
            let used = reported
                .and_then(|r| Some(r.limit?.saturating_sub(r.remaining?)))
                .map_or(Duration::ZERO, |used| {
                    let limit = reported.and_then(|r| r.limit).unwrap_or(0);
                    let margin = ((limit as f64) * self.config.headroom).floor() as u64;
                    let held = used.saturating_sub(margin.saturating_sub(quota.limit()));
                    quota
                        .emission_interval()
                        .saturating_mul(held.min(u64::from(u32::MAX)) as u32)
                });
            // A limit the 429's headers say is spent is empty when the
            // pause ends: calls resume at its pace rather than in a burst.
            // The others keep what the headers say they hold; a 429 that
            // says nothing pauses the key (the flag) and empties nothing.
            let exhausted = reported.is_some_and(|r| r.remaining == Some(0));
            let paused = match pause {
                Some(delay) if exhausted => delay + quota.tolerance() - quota.emission_interval(),
                _ => Duration::ZERO,
            };
            used.max(paused)
        };
        // The plan's cells, by index, then the cells just learned.
        let mut held = [Duration::ZERO; MAX_CELLS];
        for (i, c) in keyed.cells.iter().enumerate() {
            if c.scope == Scope::Key {
                let reported = (c.quota.window() == MINUTE)
                    .then(|| c.dim.reported(&info))
                    .flatten();
                held[i] = hold(c.quota, reported);
            }
        }
        let mut learned: Vec<(Box<str>, Quota, Duration)> = Vec::new();
        for dim in Dim::ALL {
            let Some(reported) = dim.reported(&info) else {
                continue;
            };
            let known = keyed
                .cells
                .iter()
                .any(|c| c.scope == Scope::Key && c.dim == dim && c.quota.window() == MINUTE);
            if known {
                continue;
            }
            if let Some(quota) = reported
                .limit
                .filter(|&n| n > 0)
                .and_then(|n| self.config.quota(n, MINUTE))
            {
                let at_least = hold(quota, Some(reported));
                if !at_least.is_zero() {
                    let key = self.cell_key(&concat(&["k:", &keyed.key]), dim, MINUTE);
                    learned.push((key, quota, at_least));
                }
            }
        }
        if let Some(delay) = pause {
            self.emit(RateLimitEvent::Paused {
                key: plan.key().clone(),
                delay,
            });
        }
        if held.iter().all(|d| d.is_zero()) && learned.is_empty() && pause.is_none() {
            return;
        }
        let shared = self.clone();
        let keyed = keyed.clone();
        run_now_or_spawn("rate-limit settlement", async move {
            // While the store fails, a degraded layer writes what the
            // provider said into its private store; the others drop it.
            let via = match (shared.guard.failing(), &shared.local) {
                (false, _) => Via::Shared,
                (true, Some(_)) => Via::Local,
                (true, None) => return,
            };
            if let Some(delay) = pause {
                shared.set_pause(via, &keyed.pause, delay).await;
            }
            let holds = keyed
                .cells
                .iter()
                .zip(held)
                .map(|(c, d)| (&*c.key, c.quota, d));
            let learned = learned.iter().map(|(k, q, d)| (&**k, *q, *d));
            for (key, quota, at_least) in holds.chain(learned) {
                if at_least.is_zero() {
                    continue;
                }
                shared.hold(via, key, quota, at_least).await;
            }
        });
    }

    fn learn(&self, plan: &Plan, info: &RateLimitInfo) {
        let learned = match self.learned.get(plan.key()) {
            Some(l) => l,
            None => {
                if self.learned.len() >= MAX_KEYS {
                    let now = self.now_secs();
                    self.learned
                        .retain(|_, l| now.saturating_sub(l.used.load(Relaxed)) < 600);
                    if self.learned.len() >= MAX_KEYS {
                        self.learned.clear();
                    }
                }
                let learned = self
                    .learned
                    .entry(plan.key().clone())
                    .or_default()
                    .downgrade();
                // Plans built without it (or with what was evicted) are
                // stale: they would not touch it.
                self.generation.fetch_add(1, Release);
                learned
            }
        };
        // The call's plan touched it already when it held it.
        if !plan
            .keyed
            .learned
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &learned))
        {
            learned.used.store(self.now_secs(), Relaxed);
        }
        for dim in Dim::ALL {
            let Some(limit) = dim.reported(info).and_then(|l| l.limit).filter(|&n| n > 0) else {
                continue;
            };
            let slot = &learned.limits[dim.index()];
            // Most responses repeat what is known: nothing to write then.
            if slot.load(Relaxed) == limit {
                continue;
            }
            let old = slot.swap(limit, Relaxed);
            if old != limit {
                self.generation.fetch_add(1, Release);
                self.counters.adapted.fetch_add(1, Relaxed);
                self.emit(RateLimitEvent::Adapted {
                    key: plan.key().clone(),
                    dimension: dim.as_str(),
                    limit,
                    remaining: dim.reported(info).and_then(|l| l.remaining),
                });
            }
        }
    }

    /// Counts and logs a failed operation of the shared store.
    pub(crate) fn store_error(&self, e: &StoreError) {
        self.counters.store_errors.fetch_add(1, Relaxed);
        tracing::warn!(target: "llm_tower::rate_limit", error = %e, "rate-limit store failed");
    }

    /// Reports a change of the store's state.
    fn switched(&self, switch: Option<Switch>, error: Option<&StoreError>) {
        match switch {
            None => {}
            Some(Switch::Failed) => {
                let error = error.map_or_else(String::new, ToString::to_string);
                self.emit(RateLimitEvent::StoreDown {
                    error,
                    policy: self.guard.policy.as_str(),
                });
            }
            Some(Switch::Recovered { down_for }) => {
                self.emit(RateLimitEvent::StoreRecovered { down_for });
            }
        }
    }

    /// What came of a shared-store operation that is not on a call's path:
    /// a failure is counted, logged and may switch the layer; it fails
    /// nothing.
    fn after<T>(&self, (call, switch): (Call<T>, Option<Switch>)) -> Option<T> {
        match call {
            Call::Answered(v) => {
                self.switched(switch, None);
                Some(v)
            }
            Call::Failed(e) => {
                self.store_error(&e);
                self.switched(switch, Some(&e));
                None
            }
            Call::Skipped => None,
        }
    }

    /// Takes the call's cells: from the shared store, or as the policy
    /// says while it fails (tried again once per probe interval).
    pub(crate) async fn acquire(
        &self,
        plan: &Plan,
        horizon: Duration,
    ) -> Result<(Acquired, Via), StoreError> {
        let config = &self.config;
        let (call, switch) = self
            .guard
            .call(|| async move {
                // The cells live on the stack only for the acquire.
                let cells = plan.cells(config, false);
                self.store
                    .acquire(&cells, Some(plan.pause()), horizon)
                    .await
            })
            .await;
        let error = match call {
            Call::Answered(answer) => {
                self.switched(switch, None);
                return Ok((answer, Via::Shared));
            }
            Call::Failed(e) => {
                self.store_error(&e);
                self.switched(switch, Some(&e));
                e
            }
            Call::Skipped => {
                StoreError::new("unavailable: it failed, and is tried again once a second")
            }
        };
        match (config.on_store_failure, &self.local) {
            (OnStoreFailure::FailOpen, _) => {
                self.counters.store_fail_open.fetch_add(1, Relaxed);
                tracing::debug!(target: "llm_tower::rate_limit", key = %plan.key(), "rate limit: store failing, call let through unlimited");
                Ok((
                    Acquired::Granted {
                        wait: Duration::ZERO,
                    },
                    Via::Open,
                ))
            }
            (OnStoreFailure::Degraded { .. }, Some(local)) => {
                self.counters.store_degraded.fetch_add(1, Relaxed);
                let cells = plan.cells(config, true);
                let answer = local.acquire(&cells, Some(plan.pause()), horizon).await?;
                Ok((answer, Via::Local))
            }
            _ => Err(error),
        }
    }

    /// The time left on the pause flag `key`, where the call took.
    pub(crate) async fn pause_left(&self, via: Via, key: &str) -> Option<Duration> {
        match via {
            Via::Open => None,
            Via::Local => match &self.local {
                Some(local) => local.flag(key).await.ok().flatten(),
                None => None,
            },
            Via::Shared => self
                .after(self.guard.run(self.store.flag(key)).await)
                .flatten(),
        }
    }

    async fn set_pause(&self, via: Via, key: &str, delay: Duration) {
        match (via, &self.local) {
            (Via::Shared, _) => {
                self.after(self.guard.run(self.store.set_flag(key, delay)).await);
            }
            (Via::Local, Some(local)) => {
                let _ = local.set_flag(key, delay).await;
            }
            _ => {}
        }
    }

    async fn hold(&self, via: Via, key: &str, quota: Quota, at_least: Duration) {
        match (via, &self.local) {
            (Via::Shared, _) => {
                self.after(self.guard.run(self.store.hold(key, quota, at_least)).await);
            }
            (Via::Local, Some(local)) => {
                let quota = local_quota(self.config.on_store_failure, quota);
                let _ = local.hold(key, quota, at_least).await;
            }
            _ => {}
        }
    }

    /// Gives `n` units back to a cell (`refund`), or takes `n` more,
    /// where the call took them.
    pub(crate) async fn adjust(&self, via: Via, key: &str, quota: Quota, refund: bool, n: u64) {
        match (via, &self.local) {
            (Via::Shared, _) => {
                let op = async {
                    if refund {
                        self.store.refund(key, n, quota).await
                    } else {
                        self.store.charge(key, n, quota).await
                    }
                };
                self.after(self.guard.run(op).await);
            }
            (Via::Local, Some(local)) => {
                let quota = local_quota(self.config.on_store_failure, quota);
                let _ = if refund {
                    local.refund(key, n, quota).await
                } else {
                    local.charge(key, n, quota).await
                };
            }
            _ => {}
        }
    }

    /// A shared-store read for the handle, bounded by the timeout.
    pub(crate) async fn read<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded(self.guard.timeout, fut).await
    }
}

/// What a call took, given back or completed exactly once: by the meter's
/// report when there is a meter inside, else when the last holder lets go.
pub(crate) struct Settlement<St: Store + Clone> {
    pub(crate) shared: Arc<Shared<St>>,
    /// Where the call took.
    via: Via,
    /// The call's plan, handed over by the call once it is admitted.
    pub(crate) plan: Plan,
    /// The call's permits while it is not settled; `None` once it is.
    pending: Mutex<Option<Vec<tokio::sync::OwnedSemaphorePermit>>>,
    /// The response's progress, for a settlement without a meter.
    pub(crate) progress: std::sync::OnceLock<StreamProgress>,
}

impl<St: Store + Clone> Settlement<St> {
    pub(crate) fn new(
        shared: Arc<Shared<St>>,
        plan: Plan,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
        via: Via,
    ) -> Self {
        Settlement {
            shared,
            via,
            plan,
            pending: Mutex::new(Some(permits)),
            progress: std::sync::OnceLock::new(),
        }
    }

    /// Settles with `usage`, or with what was reserved when unknown; the
    /// permits go back after.
    pub(crate) fn settle(&self, usage: Option<Usage>) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(permits) = pending {
            self.settle_once(usage);
            drop(permits);
        }
    }

    fn settle_once(&self, usage: Option<Usage>) {
        let shared = &self.shared;
        let plan = &self.plan;
        shared.counters.settled.fetch_add(1, Relaxed);
        let Some(usage) = usage else {
            shared.emit(RateLimitEvent::Settled {
                key: plan.key().clone(),
                reserved: plan.input + plan.output,
                used: None,
            });
            return;
        };
        let input = if plan.uncached_input {
            usage.input_tokens.saturating_sub(usage.cached_input_tokens)
        } else {
            usage.input_tokens
        };
        let output = if plan.refund_output {
            usage.output_tokens
        } else {
            usage.output_tokens.max(plan.output)
        };
        // What each cell is owed (negative) or owes, by index.
        let mut deltas = [0i128; MAX_CELLS];
        for (i, c) in plan.keyed.cells.iter().enumerate() {
            let actual = match c.dim {
                Dim::Requests => continue,
                Dim::Tokens => input.saturating_add(output),
                Dim::Input => input,
                Dim::Output => output,
            };
            let reserved = plan.amount(c.dim);
            deltas[i] = i128::from(actual) - i128::from(reserved);
        }
        shared.emit(RateLimitEvent::Settled {
            key: plan.key().clone(),
            reserved: plan.input + plan.output,
            used: Some(input + output),
        });
        if deltas.iter().all(|&d| d == 0) || self.via == Via::Open {
            return;
        }
        let shared = shared.clone();
        let keyed = plan.keyed.clone();
        let via = self.via;
        let work = async move {
            for (c, delta) in keyed.cells.iter().zip(deltas) {
                if delta == 0 {
                    continue;
                }
                let n = delta.unsigned_abs().min(u128::from(u64::MAX)) as u64;
                shared.adjust(via, &c.key, c.quota, delta < 0, n).await;
            }
        };
        run_now_or_spawn("rate-limit settlement", work);
    }
}

impl<St: Store + Clone> Drop for Settlement<St> {
    fn drop(&mut self) {
        let usage = self.progress.get().and_then(StreamProgress::usage);
        self.settle(usage);
    }
}

impl<St: Store + Clone> UsageObserver for Settlement<St> {
    fn on_usage(&self, report: &UsageReport) {
        self.settle(Some(report.usage));
    }
}

/// Gives back what a call took when it gives up before it is sent (a
/// waiter cancelled, a pause met after the wait), unless kept.
pub(crate) struct Taken<'a, St: Store + Clone> {
    shared: &'a Arc<Shared<St>>,
    plan: Option<&'a Plan>,
    via: Via,
}

impl<'a, St: Store + Clone> Taken<'a, St> {
    pub(crate) fn new(shared: &'a Arc<Shared<St>>, plan: &'a Plan, via: Via) -> Self {
        Taken {
            shared,
            plan: Some(plan),
            via,
        }
    }

    /// The call goes: what it took stays taken, to be settled where it
    /// was taken.
    pub(crate) fn keep(mut self) -> Via {
        self.plan = None;
        self.via
    }

    /// Where the call took.
    pub(crate) fn via(&self) -> Via {
        self.via
    }
}

impl<St: Store + Clone> Drop for Taken<'_, St> {
    fn drop(&mut self) {
        let Some(plan) = self.plan.take() else {
            return;
        };
        if self.via == Via::Open {
            return;
        }
        let shared = self.shared.clone();
        let keyed = plan.keyed.clone();
        let (input, output, via) = (plan.input, plan.output, self.via);
        run_now_or_spawn("rate-limit settlement", async move {
            for c in keyed.cells.iter() {
                let amount = amount(c.dim, input, output);
                shared.adjust(via, &c.key, c.quota, true, amount).await;
            }
        });
    }
}
