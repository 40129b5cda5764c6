//! Rate budgets: governor GCRA limiters behind a small API with named outcomes.
//!
//! A [`Budget`] is route-wide; a [`KeyedBudget`] keeps one GCRA state per client key in a
//! [`KeyStore`] with a hard cap. Both are generic over governor's `Clock`, so tests and offline
//! simulation drive them with a fake clock and never sleep.
//!
//! Governor counts in `u32` cells and its refill interval floors at 1 ns, so byte budgets charge
//! in cells of `unit` bytes: the smallest power of two that keeps the refill at or below one
//! million cells per second and the burst within `u32`. A charge rounds up to whole cells, so
//! it over-counts by less than one unit per request (1 byte for rates up to ~1 MB/s).

mod fleet;
mod payload;
mod store;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{InsufficientCapacity, NotUntil, RateLimiter};

use fleet::Fleet;
pub use fleet::{
    Ask, Expired, FleetBudgetSpec, FleetLink, Lease, Leases, REFILL_QUEUE, Refill, Scope, share,
};
pub use payload::{ByteCharge, Payload, Refusal, Tracking, admit};
pub use store::KeyStore;

/// A clock budgets can run on: governor's, shareable across threads (fleet budgets rebuild
/// their local share on it).
pub trait BudgetClock: Clock + Clone + Send + Sync + 'static {}

impl<C: Clock + Clone + Send + Sync + 'static> BudgetClock for C {}

/// Which of a route's four budgets a decision concerns. The names are metric labels and appear
/// in rejection bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    RouteRequests,
    RouteBytes,
    ClientRequests,
    ClientBytes,
}

impl BudgetKind {
    pub const ALL: [BudgetKind; 4] = [
        BudgetKind::RouteRequests,
        BudgetKind::RouteBytes,
        BudgetKind::ClientRequests,
        BudgetKind::ClientBytes,
    ];

    /// Position in [`BudgetKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::RouteRequests => "route_requests",
            BudgetKind::RouteBytes => "route_bytes",
            BudgetKind::ClientRequests => "client_requests",
            BudgetKind::ClientBytes => "client_bytes",
        }
    }

    pub fn is_bytes(self) -> bool {
        matches!(self, BudgetKind::RouteBytes | BudgetKind::ClientBytes)
    }
}

/// The outcome of charging a budget. Each maps to exactly one response: forward, 429 with
/// `Retry-After`, 413, or (keyed only) forward under the route-wide budgets alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over budget now; this much later the same charge would fit.
    RetryAfter(Duration),
    /// The charge is larger than the burst and can never fit.
    NeverFits,
    /// The key store is full and this key is not in it: the keyed budget was not applied.
    Untracked,
}

/// A sustained rate with a burst, in requests or bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Quota {
    /// Units (requests or bytes) replenished every `per`.
    pub amount: u64,
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub per: Duration,
    /// Units available at once.
    pub burst: u64,
}

/// Most cells per second a budget refills; keeps the refill interval at ≥ 1 µs so the 1 ns
/// floor never distorts the rate by more than 0.1%.
const MAX_CELLS_PER_SEC: u128 = 1_000_000;

/// A [`Quota`] translated to governor cells.
#[derive(Debug, Clone, Copy)]
struct Cells {
    unit: u64,
    quota: governor::Quota,
}

impl Cells {
    fn new(q: Quota) -> Cells {
        let per_ns = q.per.as_nanos().max(1);
        let amount = u128::from(q.amount.max(1));
        let burst = u128::from(q.burst.max(1));
        let mut unit: u128 = 1;
        while amount * 1_000_000_000 / per_ns / unit > MAX_CELLS_PER_SEC
            || burst.div_ceil(unit) > u128::from(u32::MAX)
        {
            unit *= 2;
        }
        let period_ns = (per_ns * unit / amount).clamp(1, u128::from(u64::MAX));
        let burst_cells = burst.div_ceil(unit).clamp(1, u128::from(u32::MAX));
        // Both conversions are in range by the clamps above.
        let period = Duration::from_nanos(period_ns as u64);
        let burst_cells = NonZeroU32::new(burst_cells as u32).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst_cells);
        Cells {
            unit: unit as u64,
            quota,
        }
    }

    /// Cells charged for `n` units, or `None` when that is more than any burst could hold.
    fn charge(&self, n: u64) -> Option<NonZeroU32> {
        u32::try_from(n.div_ceil(self.unit))
            .ok()
            .and_then(NonZeroU32::new)
    }
}

fn verdict<I: governor::clock::Reference>(
    outcome: Result<Result<(), NotUntil<I>>, InsufficientCapacity>,
    now: I,
) -> Verdict {
    match outcome {
        Ok(Ok(())) => Verdict::Allow,
        Ok(Err(not_until)) => Verdict::RetryAfter(not_until.wait_time_from(now)),
        Err(InsufficientCapacity(_)) => Verdict::NeverFits,
    }
}

/// Where a budget's state lives, which decides whether a reloaded policy may keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This guard's own budget.
    Local,
    /// A fleet budget run by this guard alone at its share for `pods` guards (no store).
    Alone { pods: u32 },
    /// A fleet budget leased from the store.
    Leased(FleetBudgetSpec),
}

impl Placement {
    pub fn scope(&self) -> Scope {
        match self {
            Placement::Local => Scope::Local,
            Placement::Alone { .. } | Placement::Leased(_) => Scope::Fleet,
        }
    }
}

/// A route-wide budget: one GCRA state shared by every request of the route.
pub struct Budget<C: Clock = DefaultClock> {
    quota: Quota,
    placement: Placement,
    cells: Cells,
    limiter: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    fleet: Option<Fleet<C>>,
}

impl<C: Clock> Budget<C> {
    pub fn new(quota: Quota, clock: C) -> Self {
        let cells = Cells::new(quota);
        Budget {
            quota,
            placement: Placement::Local,
            cells,
            limiter: RateLimiter::direct_with_clock(cells.quota, clock),
            fleet: None,
        }
    }

    /// A fleet budget of `quota` run alone, at its share for `pods` guards.
    pub fn alone(quota: Quota, pods: u32, clock: C) -> Self {
        let mut b = Budget::new(share(quota, pods), clock);
        b.quota = quota;
        b.placement = Placement::Alone { pods };
        b
    }

    /// A fleet budget of `leases.quota`, leased from the fleet's shared state.
    pub fn fleet(leases: Arc<Leases>, clock: C) -> Self
    where
        C: Clone + Send + Sync + 'static,
    {
        let mut b = Budget::new(leases.quota, clock.clone());
        b.placement = Placement::Leased(leases.spec.clone());
        b.fleet = Some(Fleet::new(leases, clock));
        b
    }

    /// The quota as declared; a fleet budget's whole-fleet quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The lease table of a fleet-scoped budget.
    pub fn leases(&self) -> Option<&Arc<Leases>> {
        self.fleet.as_ref().map(Fleet::leases)
    }

    /// Charges `n` units (requests or bytes). Zero is always allowed and charges nothing.
    pub fn check(&self, n: u64) -> Verdict {
        if n == 0 {
            return Verdict::Allow;
        }
        if let Some(f) = &self.fleet {
            return f.check(0, n);
        }
        let Some(cells) = self.cells.charge(n) else {
            return Verdict::NeverFits;
        };
        let outcome = self.limiter.check_n(cells);
        verdict(outcome, self.limiter.clock().now())
    }
}

/// A per-client budget: one GCRA state per key, at most `max_keys` keys.
pub struct KeyedBudget<C: Clock = DefaultClock> {
    quota: Quota,
    placement: Placement,
    cells: Cells,
    keys: KeyStore,
    max_keys: usize,
    limiter: RateLimiter<u64, KeyStore, C, NoOpMiddleware<C::Instant>>,
    fleet: Option<Fleet<C>>,
}

impl<C: Clock> KeyedBudget<C> {
    pub fn new(quota: Quota, max_keys: usize, clock: C) -> Self {
        let cells = Cells::new(quota);
        let keys = KeyStore::default();
        KeyedBudget {
            quota,
            placement: Placement::Local,
            cells,
            max_keys,
            limiter: RateLimiter::new(cells.quota, keys.clone(), clock),
            keys,
            fleet: None,
        }
    }

    /// A per-client fleet budget of `quota` run alone, at its share for `pods` guards.
    pub fn alone(quota: Quota, pods: u32, max_keys: usize, clock: C) -> Self {
        let mut b = KeyedBudget::new(share(quota, pods), max_keys, clock);
        b.quota = quota;
        b.placement = Placement::Alone { pods };
        b
    }

    /// A per-client fleet budget, leased from the fleet's shared state.
    pub fn fleet(leases: Arc<Leases>, max_keys: usize, clock: C) -> Self
    where
        C: Clone + Send + Sync + 'static,
    {
        let mut b = KeyedBudget::new(leases.quota, max_keys, clock.clone());
        b.placement = Placement::Leased(leases.spec.clone());
        b.fleet = Some(Fleet::new(leases, clock));
        b
    }

    /// The quota as declared; a fleet budget's whole-fleet quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The lease table of a fleet-scoped budget.
    pub fn leases(&self) -> Option<&Arc<Leases>> {
        self.fleet.as_ref().map(Fleet::leases)
    }

    /// Most keys this budget tracks.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Charges `n` units to `key`. When the store is full and `key` is new, nothing is charged
    /// and the answer is [`Verdict::Untracked`]. The cap is checked before inserting, so racing
    /// inserts can overshoot it by at most the number of requests decided at the same instant.
    pub fn check(&self, key: u64, n: u64) -> Verdict {
        if n == 0 {
            return Verdict::Allow;
        }
        if let Some(f) = &self.fleet {
            return f.check(key, n);
        }
        if self.keys.len() >= self.max_keys && !self.keys.contains(key) {
            return Verdict::Untracked;
        }
        let Some(cells) = self.cells.charge(n) else {
            return Verdict::NeverFits;
        };
        let outcome = self.limiter.check_key_n(&key, cells);
        verdict(outcome, self.limiter.clock().now())
    }

    /// Forgets keys whose state is indistinguishable from a fresh one and returns how many are
    /// still tracked. Run on an interval; the cost is a pass over the keys.
    pub fn evict_idle(&self) -> usize {
        if let Some(f) = &self.fleet {
            return f.evict_idle();
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.keys.recount()
    }

    pub fn tracked_keys(&self) -> usize {
        if let Some(f) = &self.fleet {
            return f.tracked_keys();
        }
        self.keys.len()
    }
}

#[cfg(test)]
mod tests;
