//! What every clone of a rate-limit layer shares: the store, the learned
//! limits, the queue, the counters; and how one call is planned, admitted
//! and settled.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use http::{HeaderMap, StatusCode};
use tokio::sync::Semaphore;

use super::{
    Limit, MINUTE, Priority, RateLimitConfig, RateLimitEvent, RequestTooLarge, Scope, SettleOutput,
    config::MAX_CELLS,
    key::{api_key_hash, concat, default_key, provider_name},
};
use crate::{
    metering::{StreamProgress, UsageObserver, UsageReport},
    provider::{
        Provider,
        headers::{RateLimitInfo, server_delay},
    },
    request::RequestMeta,
    store::{Cell, Quota, Store},
    usage::Usage,
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
}

pub(crate) struct Shared<St> {
    pub(crate) config: RateLimitConfig,
    pub(crate) store: St,
    pub(crate) learned: DashMap<Arc<str>, Learned>,
    pub(crate) semaphores: DashMap<Box<str>, Arc<Semaphore>>,
    pub(crate) waiting: AtomicUsize,
    pub(crate) counters: Counters,
    pub(crate) listener: ArcSwapOption<Listener>,
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

/// One cell a call takes from, owned.
#[derive(Clone, Debug)]
pub(crate) struct PlanCell {
    pub(crate) key: Box<str>,
    pub(crate) amount: u64,
    pub(crate) quota: Quota,
    pub(crate) keep: u64,
    pub(crate) dim: Dim,
    pub(crate) scope: Scope,
}

/// Everything a call needs from the layer, worked out in `call`.
pub(crate) struct Plan {
    pub(crate) key: Arc<str>,
    pub(crate) priority: Priority,
    /// Shared with the call's [`Taken`] and [`Settlement`].
    pub(crate) cells: Arc<[PlanCell]>,
    pub(crate) pause: Box<str>,
    pub(crate) semaphores: Vec<Arc<Semaphore>>,
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) refund_output: bool,
    pub(crate) uncached_input: bool,
}

impl Plan {
    pub(crate) fn cells(&self) -> Vec<Cell<'_>> {
        self.cells
            .iter()
            .map(|c| Cell::new(&c.key, c.amount, c.quota).keep(c.keep))
            .collect()
    }

    /// The cell that can never hold the call.
    pub(crate) fn too_large(&self, index: usize) -> RequestTooLarge {
        let c = &self.cells[index];
        RequestTooLarge {
            key: self.key.clone(),
            dimension: c.dim.as_str(),
            amount: c.amount,
            limit: c.quota.limit(),
        }
    }
}

impl<St: Store> Shared<St> {
    pub(crate) fn new(config: RateLimitConfig, store: St) -> Self {
        Shared {
            config,
            store,
            learned: DashMap::new(),
            semaphores: DashMap::new(),
            waiting: AtomicUsize::new(0),
            counters: Counters::default(),
            listener: ArcSwapOption::empty(),
            origin: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn emit(&self, event: RateLimitEvent) {
        event.trace();
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
        let api_key = api_key_hash(headers, query);
        let key = parts_key.unwrap_or_else(|| default_key(meta, &api_key));
        let provider_id = concat(&["p:", provider_name(meta), ":", &api_key]);
        let key_id = concat(&["k:", &key]);
        let input = meta.map_or(0, RequestMeta::estimated_input_tokens);
        let capped = meta.and_then(RequestMeta::max_output_tokens);
        let model = meta.and_then(RequestMeta::model);
        let learned = if config.adaptive {
            self.learned.get(&key).map(|l| {
                l.used.store(self.now_secs(), Relaxed);
                [0, 1, 2, 3].map(|i| l.limits[i].load(Relaxed))
            })
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
        if let Some(learned) = learned {
            for dim in Dim::ALL {
                let n = learned[dim.index()];
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

        let mut quotas: Vec<(Quota, &InForce<'_>)> = limits
            .iter()
            .filter_map(|l| Some((config.quota(l.3, l.4)?, l)))
            .collect();
        // Output reserved: the cap, else the model's default cut to what
        // the limits hold, so that a missing cap never refuses a call.
        let output = match capped {
            Some(cap) => cap,
            None => {
                let mut out = config.default_output_for(model);
                for (q, l) in &quotas {
                    match l.2 {
                        Dim::Tokens => out = out.min(q.limit().saturating_sub(input)),
                        Dim::Output => out = out.min(q.limit()),
                        _ => {}
                    }
                }
                out
            }
        };
        let cells = quotas
            .drain(..)
            .map(|(quota, &(id, scope, dim, _, window))| {
                let amount = match dim {
                    Dim::Requests => 1,
                    Dim::Tokens => input.saturating_add(output),
                    Dim::Input => input,
                    Dim::Output => output,
                };
                let keep = match priority {
                    Priority::Interactive => 0,
                    Priority::Batch => {
                        let share = (quota.limit() as f64 * config.batch_share).floor() as u64;
                        quota.limit() - share.clamp(1, quota.limit())
                    }
                };
                PlanCell {
                    key: self.cell_key(id, dim, window),
                    amount,
                    quota,
                    keep,
                    dim,
                    scope,
                }
            })
            .collect();
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
            pause: concat(&[&config.prefix, ":", &key_id, ":pause"]),
            key,
            priority,
            cells,
            semaphores,
            input,
            output,
            refund_output,
            uncached_input: matches!(provider, Some(Provider::Anthropic)),
        }
    }

    fn semaphore(&self, id: &str, permits: u32) -> Arc<Semaphore> {
        let name = format!("{id}:{permits}");
        if let Some(s) = self.semaphores.get(name.as_str()) {
            return s.clone();
        }
        if self.semaphores.len() >= MAX_KEYS {
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
        if info.input_tokens.is_some() || info.output_tokens.is_some() {
            // Anthropic's `tokens` is then the most restrictive of its input
            // and output limits, not a limit on their sum.
            info.tokens = None;
        }
        let pause = if limited {
            server_delay(headers, now).filter(|d| !d.is_zero())
        } else {
            None
        };
        if info.is_empty() && pause.is_none() {
            return;
        }
        self.learn(plan, &info);
        // The key's per-minute cells: the call's, and those just learned.
        let mut cells: Vec<(Box<str>, Quota, Option<crate::provider::headers::Limit>)> = plan
            .cells
            .iter()
            .filter(|c| c.scope == Scope::Key)
            .map(|c| {
                let reported = (c.quota.window() == MINUTE)
                    .then(|| c.dim.reported(&info))
                    .flatten();
                (c.key.clone(), c.quota, reported)
            })
            .collect();
        for dim in Dim::ALL {
            let Some(reported) = dim.reported(&info) else {
                continue;
            };
            let known = plan
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
                let key = self.cell_key(&format!("k:{}", plan.key), dim, MINUTE);
                cells.push((key, quota, Some(reported)));
            }
        }
        let mut holds: Vec<(Box<str>, Quota, Duration)> = Vec::new();
        for (key, quota, reported) in cells {
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
            let at_least = used.max(paused);
            if at_least.is_zero() {
                continue;
            }
            holds.push((key, quota, at_least));
        }
        if let Some(delay) = pause {
            self.emit(RateLimitEvent::Paused {
                key: plan.key.clone(),
                delay,
            });
        }
        if holds.is_empty() && pause.is_none() {
            return;
        }
        let shared = self.clone();
        let flag = pause.map(|d| (plan.pause.clone(), d));
        run_now_or_spawn(async move {
            if let Some((flag, delay)) = flag
                && let Err(e) = shared.store.set_flag(&flag, delay).await
            {
                shared.store_error(&e);
            }
            for (key, quota, at_least) in holds {
                if let Err(e) = shared.store.hold(&key, quota, at_least).await {
                    shared.store_error(&e);
                }
            }
        });
    }

    fn learn(&self, plan: &Plan, info: &RateLimitInfo) {
        let learned = match self.learned.get(&plan.key) {
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
                self.learned
                    .entry(plan.key.clone())
                    .or_default()
                    .downgrade()
            }
        };
        learned.used.store(self.now_secs(), Relaxed);
        for dim in Dim::ALL {
            let Some(limit) = dim.reported(info).and_then(|l| l.limit).filter(|&n| n > 0) else {
                continue;
            };
            let old = learned.limits[dim.index()].swap(limit, Relaxed);
            if old != limit {
                self.counters.adapted.fetch_add(1, Relaxed);
                self.emit(RateLimitEvent::Adapted {
                    key: plan.key.clone(),
                    dimension: dim.as_str(),
                    limit,
                    remaining: dim.reported(info).and_then(|l| l.remaining),
                });
            }
        }
    }

    pub(crate) fn store_error(&self, e: &crate::store::StoreError) {
        self.counters.store_errors.fetch_add(1, Relaxed);
        tracing::warn!(target: "llm_tower::rate_limit", error = %e, "rate-limit store failed");
    }
}

/// What a call took, given back or completed exactly once: by the meter's
/// report when there is a meter inside, else when the last holder lets go.
pub(crate) struct Settlement<St: Store + Clone> {
    pending: Mutex<Option<Pending<St>>>,
    /// The response's progress, for a settlement without a meter.
    pub(crate) progress: std::sync::OnceLock<StreamProgress>,
}

struct Pending<St: Store + Clone> {
    shared: Arc<Shared<St>>,
    key: Arc<str>,
    cells: Arc<[PlanCell]>,
    refund_output: bool,
    uncached_input: bool,
    input: u64,
    output: u64,
    _permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl<St: Store + Clone> Settlement<St> {
    pub(crate) fn new(
        shared: Arc<Shared<St>>,
        plan: &Plan,
        permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        Settlement {
            pending: Mutex::new(Some(Pending {
                shared,
                key: plan.key.clone(),
                cells: plan.cells.clone(),
                refund_output: plan.refund_output,
                uncached_input: plan.uncached_input,
                input: plan.input,
                output: plan.output,
                _permits: permits,
            })),
            progress: std::sync::OnceLock::new(),
        }
    }

    /// Settles with `usage`, or with what was reserved when unknown.
    pub(crate) fn settle(&self, usage: Option<Usage>) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(p) = pending {
            p.settle(usage);
        }
    }
}

impl<St: Store + Clone> Pending<St> {
    fn settle(self, usage: Option<Usage>) {
        let shared = self.shared.clone();
        shared.counters.settled.fetch_add(1, Relaxed);
        let Some(usage) = usage else {
            shared.emit(RateLimitEvent::Settled {
                key: self.key.clone(),
                reserved: self.input + self.output,
                used: None,
            });
            return;
        };
        let input = if self.uncached_input {
            usage.input_tokens.saturating_sub(usage.cached_input_tokens)
        } else {
            usage.input_tokens
        };
        let output = if self.refund_output {
            usage.output_tokens
        } else {
            usage.output_tokens.max(self.output)
        };
        let mut changes: Vec<(Box<str>, Quota, i128)> = Vec::new();
        for c in self.cells.iter() {
            let actual = match c.dim {
                Dim::Requests => continue,
                Dim::Tokens => input.saturating_add(output),
                Dim::Input => input,
                Dim::Output => output,
            };
            let delta = i128::from(actual) - i128::from(c.amount);
            if delta != 0 {
                changes.push((c.key.clone(), c.quota, delta));
            }
        }
        shared.emit(RateLimitEvent::Settled {
            key: self.key.clone(),
            reserved: self.input + self.output,
            used: Some(input + output),
        });
        if changes.is_empty() {
            return;
        }
        let store = shared.store.clone();
        let work = async move {
            for (key, quota, delta) in changes {
                let n = delta.unsigned_abs().min(u128::from(u64::MAX)) as u64;
                let r = if delta < 0 {
                    store.refund(&key, n, quota).await
                } else {
                    store.charge(&key, n, quota).await
                };
                if let Err(e) = r {
                    shared.store_error(&e);
                }
            }
        };
        run_now_or_spawn(work);
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
pub(crate) struct Taken<St: Store + Clone> {
    shared: Arc<Shared<St>>,
    cells: Option<Arc<[PlanCell]>>,
}

impl<St: Store + Clone> Taken<St> {
    pub(crate) fn new(shared: Arc<Shared<St>>, plan: &Plan) -> Self {
        Taken {
            shared,
            cells: Some(plan.cells.clone()),
        }
    }

    /// The call goes: what it took stays taken, to be settled.
    pub(crate) fn keep(mut self) {
        self.cells = None;
    }
}

impl<St: Store + Clone> Drop for Taken<St> {
    fn drop(&mut self) {
        let Some(cells) = self.cells.take() else {
            return;
        };
        let shared = self.shared.clone();
        run_now_or_spawn(async move {
            for c in cells.iter() {
                if let Err(e) = shared.store.refund(&c.key, c.amount, c.quota).await {
                    shared.store_error(&e);
                }
            }
        });
    }
}

/// Runs `work` now if it completes at once (the in-memory store always
/// does), else on the tokio runtime; dropped, with a warning, when there is
/// none.
fn run_now_or_spawn(work: impl Future<Output = ()> + Send + 'static) {
    let mut work: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(work);
    let mut cx = Context::from_waker(Waker::noop());
    if work.as_mut().poll(&mut cx) == Poll::Ready(()) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(work);
        }
        Err(_) => tracing::warn!(
            target: "llm_tower::rate_limit",
            "no tokio runtime to settle a rate-limit reservation on; it expires with its window"
        ),
    }
}
