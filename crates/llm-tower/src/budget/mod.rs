//! Spend limits in dollars and tokens that hold under any concurrency:
//! [`BudgetLayer`].
//!
//! A runaway loop, a retry storm or one tenant's burst can spend a month's
//! money in an hour. The budget layer refuses a call before it spends what
//! is not there, and counts what each call really cost.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use llm_tower::budget::{BudgetConfig, BudgetLayer, BudgetTenant, Limit, ScopeBudget, Window};
//!
//! let config = BudgetConfig::new()
//!     // $50 a day for the whole service…
//!     .scope(ScopeBudget::global().limit(Limit::usd(50.0, Window::Day)))
//!     // …$5 a day per tenant, and no single call over 50 cents.
//!     .scope(ScopeBudget::tenant().limit(Limit::usd(5.0, Window::Day)).max_request_usd(0.50))
//!     .build()?;
//! let budget = BudgetLayer::new(config);
//! let handle = budget.handle();
//!
//! // Each request names its tenant.
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(BudgetTenant::new("acme"));
//! # let _ = (budget, req);
//! println!("spent so far: {}", handle.stats().spent);
//! # Ok(()) }
//! ```
//!
//! # Scopes, limits and windows
//!
//! A [`ScopeBudget`] names which calls share its limits ([`Scope`]): all of
//! them, those of one API key (known by a hash), one tenant or organisation
//! ([`BudgetTenant`] in the request's extensions, or
//! [`BudgetLayer::tenant_fn`]), one model or one provider. A scope has any
//! number of [`Limit`]s, in dollars or tokens, each over a [`Window`]: the
//! total, a rolling window (the last hour), or a UTC calendar day, week or
//! month. Calendar windows roll over by themselves: the window's number is
//! part of the store key (`…:usd:d20414`), so there is no reset job to miss.
//! Every limit of every scope that applies to a call is checked together,
//! in one store operation, **all or nothing**.
//!
//! A hard limit refuses; a soft one ([`Limit::soft`]) only alerts. Both emit
//! [`BudgetEvent::Threshold`] once for each fraction in
//! [`alerts`](Limit::alerts) (50%, 80%, 100% by default) that a window's
//! spend crosses. Per-request caps ([`ScopeBudget::max_request_usd`],
//! [`max_request_tokens`](ScopeBudget::max_request_tokens)) refuse a call
//! whose worst case is above them.
//!
//! # Reserve, then settle
//!
//! Before an attempt is sent, its **worst case** is reserved in every
//! bucket: the input estimate (from [`PrepareLayer`](crate::request::PrepareLayer)'s
//! estimator) at the dearest input price (the plain, cached or cache-write
//! price, whichever is highest: a call may write its whole prompt to the
//! cache) plus the output cap — the request's
//! `max_tokens`, or the model's most output
//! ([`BudgetConfig::max_output_tokens`]) — at the output price, from the
//! [`PriceTable`](crate::pricing::PriceTable)
//! ([`ModelPrice::worst_cost`](crate::pricing::ModelPrice::worst_cost)).
//! N concurrent calls therefore cannot all pass a check only some of them
//! fit, and no usage settles above its reservation.
//!
//! After the attempt, its reservation is **settled exactly once** to what
//! it actually cost, from the usage the [meter](crate::metering) reports:
//! cached input, cache writes, reasoning and output at their own prices. A
//! stream cancelled or cut midway is billed for what it used (the meter's
//! count, or its estimate when the provider's never came); an error
//! response costs nothing and gives everything back; a call never sent
//! gives everything back. A reservation never settled (the process died)
//! is released by the store when its [`lease`](BudgetConfig::lease) ends.
//!
//! **The bound.** With an exact input estimate (e.g. the `tiktoken`
//! feature's estimator) every attempt costs at most what it reserved, so a
//! hard limit is never exceeded. With an approximate one, the spend may
//! pass a limit by at most what the calls in flight used beyond their
//! estimates; the next reservations are then refused until the window
//! moves on.
//!
//! # Every attempt pays for itself
//!
//! Retries, fallback targets and hedges are attempts too. The layer sits
//! outermost and puts an [`AttemptGate`](crate::metering::AttemptGate) in
//! the request's extensions; the [`Meter`](crate::metering::Meter) in front
//! of the HTTP client consults it before each attempt goes on the wire. The
//! first attempt uses the reservation the layer made when the call came in;
//! every other attempt reserves at its own model's price (a fallback to a
//! dearer model reserves more) and is refused — classified as
//! [`BUDGET_EXCEEDED`](crate::classify::BUDGET_EXCEEDED), so a fallback may
//! still try a cheaper target — when it does not fit. Without a meter
//! inside, the layer meters the response itself, and only the first attempt
//! is reserved.
//!
//! When the first attempt's worst case does not fit as the call arrives,
//! [`Arrival`] decides: refuse the call at once, or let each attempt's own
//! reservation decide, so that a fallback inside moves to a cheaper target
//! that fits. The default, [`Arrival::Auto`], refuses until the service has
//! seen a meter inside consult its reservations (then a call let through is
//! still reserved before anything is sent), and defers after that.
//!
//! # Unknown prices
//!
//! A model not in the price table is never silently free: each scope says
//! what to do ([`UnpricedPolicy`]): refuse the call (the default), price it
//! at a configured price, or count it in tokens only, with an event and a
//! counter.
//!
//! # Seeing the spend
//!
//! - [`BudgetHandle::status`] reads a scope's spend, reservations and what
//!   is left, per limit and window, from the store;
//!   [`BudgetHandle::stats`] this process's counters.
//! - [`CallCost`] in each response's extensions holds what the call cost,
//!   once its body has ended; `tracing` events carry it too.
//! - [`BudgetLayer::on_event`] receives every [`BudgetEvent`].
//!
//! All state is in the [`Store`](crate::store::Store) (one round trip to
//! reserve, one to settle), so processes sharing a store share budgets.
//!
//! # When the store fails
//!
//! Every store operation is bounded by
//! [`store_timeout`](BudgetConfig::store_timeout) (250 ms): a store that
//! hangs fails like one that errs. While it fails, calls follow
//! [`on_store_failure`](BudgetConfig::on_store_failure) (see
//! [`store`](crate::store#when-the-store-fails)):
//!
//! - **fail closed** (the default: money): the call is refused with
//!   [`BudgetUnavailable`] before anything is sent;
//! - **fail open**: the call goes unreserved — a `tracing` error and a
//!   [`BudgetEvent::Unchecked`] for each, counted in
//!   [`store_fail_open`](BudgetStats::store_fail_open); what it costs is
//!   counted in this process's [stats](BudgetHandle::stats) only, never in
//!   the shared budget;
//! - **degraded**: the call is reserved in a private in-memory store with
//!   each limit × share — a **per-process** budget, starting empty: with
//!   `N` processes up to `N × share` of a limit may be spent while the
//!   store fails, on top of what the shared budget had already seen
//!   ([`store_degraded`](BudgetStats::store_degraded)).
//!
//! The first failure emits [`BudgetEvent::StoreDown`]; one call a second
//! tries the shared store again, and the first that succeeds switches back
//! with [`BudgetEvent::StoreRecovered`]. Every failed operation emits
//! [`BudgetEvent::StoreFailed`] and counts in
//! [`store_errors`](BudgetStats::store_errors). A settlement that fails
//! fails nothing: its spend stays in this process's stats and the call's
//! [`CallCost`], the shared budget never sees it (it is not retried), and
//! the reservation's lease releases what it held. Spend reserved and
//! settled in the private store stays there: it is not copied to the
//! shared budget when the store recovers.

mod config;
mod error;
mod layer;
mod state;

use std::sync::Arc;

pub use config::{
    Arrival, BudgetConfig, Limit, MAX_ROLLING, MAX_USD, ROLLING_SLOTS, RefusalStatus, Scope,
    ScopeBudget, Unit, UnpricedPolicy, Window,
};
pub use error::{Amount, BudgetExceeded, BudgetUnavailable};
pub use layer::{
    Budget, BudgetBody, BudgetHandle, BudgetLayer, BudgetStats, LimitStatus, ResponseFuture,
};
pub use state::CallCost;

use crate::{pricing::Cost, usage::Usage};

/// The tenant of a call, and the organisation it belongs to, for the
/// [`Scope::Tenant`] and [`Scope::Organisation`] limits. Put it in the
/// request's extensions, or return it from [`BudgetLayer::tenant_fn`].
///
/// ```
/// use llm_tower::budget::BudgetTenant;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(BudgetTenant::new("acme").organisation("acme-holding"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BudgetTenant {
    tenant: Option<Arc<str>>,
    organisation: Option<Arc<str>>,
}

impl BudgetTenant {
    /// The tenant `tenant`.
    pub fn new(tenant: impl Into<Arc<str>>) -> Self {
        BudgetTenant {
            tenant: Some(tenant.into()),
            organisation: None,
        }
    }

    /// An organisation without a tenant.
    pub fn of_organisation(organisation: impl Into<Arc<str>>) -> Self {
        BudgetTenant {
            tenant: None,
            organisation: Some(organisation.into()),
        }
    }

    /// Sets the organisation the tenant belongs to.
    pub fn organisation(mut self, organisation: impl Into<Arc<str>>) -> Self {
        self.organisation = Some(organisation.into());
        self
    }

    /// The tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The organisation, if any.
    pub fn organisation_name(&self) -> Option<&str> {
        self.organisation.as_deref()
    }

    pub(crate) fn tenant_arc(&self) -> Option<&Arc<str>> {
        self.tenant.as_ref()
    }

    pub(crate) fn organisation_arc(&self) -> Option<&Arc<str>> {
        self.organisation.as_ref()
    }
}

/// What happened in a [`BudgetLayer`], for [`BudgetLayer::on_event`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BudgetEvent {
    /// A call or an attempt was refused before it was sent.
    Refused(BudgetExceeded),
    /// A window's spend crossed one of a limit's alert fractions. Emitted
    /// once per threshold and window, by the settlement that crossed it.
    Threshold {
        /// The scope.
        scope: Scope,
        /// Which calls of the scope.
        key: Arc<str>,
        /// The limit.
        limit: Amount,
        /// Its window.
        window: Window,
        /// Whether the limit refuses calls.
        hard: bool,
        /// The fraction crossed (`0.8` for 80%).
        fraction: f64,
        /// What the window has spent now.
        spent: Amount,
    },
    /// An attempt was settled.
    Settled {
        /// Its model.
        model: Option<Arc<str>>,
        /// What it used.
        usage: Usage,
        /// What that cost; `None` for a model without a price.
        cost: Option<Cost>,
        /// What it had reserved (its worst case).
        reserved: Option<Cost>,
    },
    /// A call to a model without a price went through a scope that counts
    /// such calls in tokens only.
    Unpriced {
        /// The scope.
        scope: Scope,
        /// The model.
        model: Option<Arc<str>>,
    },
    /// A store operation failed or timed out: a reservation (what the
    /// call then does follows
    /// [`on_store_failure`](BudgetConfig::on_store_failure)), or a
    /// settlement (its spend is in this process's
    /// [stats](BudgetHandle::stats) only; the reservation's lease releases
    /// what it held). Once per failed operation.
    StoreFailed {
        /// The store's error.
        error: String,
    },
    /// The store started failing: calls follow the
    /// [`on_store_failure`](BudgetConfig::on_store_failure) policy until it
    /// answers again. Once per outage.
    StoreDown {
        /// The store's error.
        error: String,
        /// The policy now in force: `fail_closed`, `fail_open` or
        /// `degraded` (see [`OnStoreFailure`](crate::store::OnStoreFailure)).
        policy: &'static str,
    },
    /// The store answered again: budgets are shared again.
    StoreRecovered {
        /// How long it was failing.
        down_for: std::time::Duration,
    },
    /// A call or attempt went out unchecked, the store failing and the
    /// policy [fail open](crate::store::OnStoreFailure::FailOpen): its cost
    /// is counted in this process's [stats](BudgetHandle::stats) only.
    Unchecked {
        /// Its model.
        model: Option<Arc<str>>,
    },
}
