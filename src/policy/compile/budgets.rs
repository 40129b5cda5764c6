//! Quotas from a file's budgets, and the budgets built from them: taken over from the policy
//! being replaced when their definition is unchanged, fresh otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::BudgetClock;

use super::{Compiler, line};
use crate::budget::{Budget, BudgetKind, FleetBudgetSpec, KeyedBudget, Leases, Placement, Quota};
use crate::policy::raw::{RawByteBudget, RawRequestBudget, RawScope};
use crate::policy::{FleetRuntime, Policy, Route};
use crate::records::{LevelBudget, Per};
use crate::units::ByteSize;

/// Resolves a request budget's quota (`at` is the budget or level holding its `burst`), or
/// `None` when its burst is zero (no request could pass).
pub(super) fn request_quota<C: BudgetClock>(
    c: &mut Compiler<C>,
    b: &RawRequestBudget,
    at: &str,
) -> Option<Quota> {
    let burst = match &b.burst {
        Some(s) if s.value == 0 => {
            c.problem(line(s), format!("{at}.burst"), "must be at least 1");
            return None;
        }
        Some(s) => u64::from(s.value),
        None => default_burst(b.rate.amount, b.rate.per),
    };
    Some(Quota {
        amount: b.rate.amount,
        per: b.rate.per,
        burst,
    })
}

/// Resolves a byte budget's quota; its burst is the field `burst_field` of `at` (`burst` in a
/// payload budget, `bytes_burst` in a level's rule). A burst below `max_body` is allowed but
/// warned about: the bodies in between can never pass.
pub(super) fn byte_quota<C: BudgetClock>(
    c: &mut Compiler<C>,
    b: &RawByteBudget,
    at: &str,
    burst_field: &str,
    max_body: Option<u64>,
) -> Quota {
    let burst = match b.burst {
        Some(ByteSize(0)) => {
            c.problem(
                None,
                format!("{at}.{burst_field}"),
                "must be greater than zero",
            );
            1
        }
        Some(ByteSize(n)) => n,
        None => default_burst(b.rate.bytes, b.rate.per),
    };
    if let Some(max) = max_body.filter(|&m| m > burst) {
        c.warnings.push(format!(
            "{at}: burst {} is smaller than max_body {}; bodies between the two always get 413",
            ByteSize(burst),
            ByteSize(max)
        ));
    }
    Quota {
        amount: b.rate.bytes,
        per: b.rate.per,
        burst,
    }
}

/// One second's worth of the rate, at least one unit.
fn default_burst(amount: u64, per: Duration) -> u64 {
    let per_sec = u128::from(amount) * 1_000_000_000 / per.as_nanos().max(1);
    u64::try_from(per_sec).unwrap_or(u64::MAX).max(1)
}

/// The policy being replaced, indexed by route name. A budget is identified by its route's name
/// and its place in the route (which payload budget, or which level's record or byte budget);
/// it carries over when its definition is the same: same quota (rate, period and burst), same
/// `per` for level budgets, and for per-client budgets the same key cap. Anything else gets a
/// fresh budget, since its old state would mean something else under the new definition.
pub(super) struct Previous<'p, C: BudgetClock> {
    routes: HashMap<&'p str, &'p Route<C>>,
}

impl<'p, C: BudgetClock> Previous<'p, C> {
    pub(super) fn new(policy: Option<&'p Policy<C>>) -> Previous<'p, C> {
        let routes = policy
            .map(|p| p.routes().iter().map(|r| (r.name.as_str(), r)).collect())
            .unwrap_or_default();
        Previous { routes }
    }

    pub(super) fn route(&self, name: &str) -> Option<&'p Route<C>> {
        self.routes.get(name).copied()
    }
}

/// Where a payload budget of `scope` runs: this guard's own, a share run alone, or leased from
/// the fleet's store under `{namespace}:{route}:{kind}`.
pub(super) fn placement<C: BudgetClock>(
    c: &Compiler<C>,
    scope: RawScope,
    route: &str,
    kind: BudgetKind,
) -> Placement {
    if scope == RawScope::Local {
        return Placement::Local;
    }
    let f = &c.fleet_settings;
    match c.fleet {
        FleetRuntime::Alone { pods } => Placement::Alone {
            pods: pods.unwrap_or(f.pods).max(1),
        },
        FleetRuntime::Linked(_) => Placement::Leased(FleetBudgetSpec {
            name: format!("{}:{route}:{}", f.namespace, kind.as_str()),
            route: route.to_owned(),
            budget: kind.as_str(),
            keyed: matches!(kind, BudgetKind::ClientRequests | BudgetKind::ClientBytes),
            refill_interval: f.refill_interval,
            pods: f.pods,
        }),
    }
}

/// A payload budget of `q` at `placement`: the previous route's `old` when its definition is
/// unchanged, else a fresh one.
pub(super) fn payload_budget<C: BudgetClock>(
    c: &Compiler<C>,
    old: Option<&Arc<Budget<C>>>,
    q: Quota,
    placement: Placement,
) -> Arc<Budget<C>> {
    if let Some(b) = old.filter(|b| b.quota() == q && *b.placement() == placement) {
        return b.clone();
    }
    let clock = c.clock.clone();
    Arc::new(match (placement, c.fleet) {
        (Placement::Alone { pods }, _) => Budget::alone(q, pods, clock),
        (Placement::Leased(spec), FleetRuntime::Linked(link)) => {
            Budget::fleet(Leases::new(spec, q, 1, link), clock)
        }
        _ => Budget::new(q, clock),
    })
}

/// A per-client payload budget of `q` at `placement`, with `max_keys`: the previous route's
/// `old` when its definition is unchanged, else a fresh one.
pub(super) fn payload_keyed<C: BudgetClock>(
    c: &Compiler<C>,
    old: Option<&Arc<KeyedBudget<C>>>,
    q: Quota,
    max_keys: usize,
    placement: Placement,
) -> Arc<KeyedBudget<C>> {
    if let Some(b) =
        old.filter(|b| b.quota() == q && b.max_keys() == max_keys && *b.placement() == placement)
    {
        return b.clone();
    }
    let clock = c.clock.clone();
    Arc::new(match (placement, c.fleet) {
        (Placement::Alone { pods }, _) => KeyedBudget::alone(q, pods, max_keys, clock),
        (Placement::Leased(spec), FleetRuntime::Linked(link)) => {
            KeyedBudget::fleet(Leases::new(spec, q, max_keys, link), max_keys, clock)
        }
        _ => KeyedBudget::new(q, max_keys, clock),
    })
}

/// A route-wide budget: the previous route's, if its quota is `q` and it is local, else a
/// fresh one.
pub(super) fn reuse_budget<C: BudgetClock>(
    old: Option<&Arc<Budget<C>>>,
    q: Quota,
    clock: &C,
) -> Arc<Budget<C>> {
    match old {
        Some(b) if b.quota() == q && *b.placement() == Placement::Local => b.clone(),
        _ => Arc::new(Budget::new(q, clock.clone())),
    }
}

/// A per-client budget: the previous route's, if its quota and key cap are unchanged, else a
/// fresh one.
pub(super) fn reuse_keyed<C: BudgetClock>(
    old: Option<&Arc<KeyedBudget<C>>>,
    q: Quota,
    max_keys: usize,
    clock: &C,
) -> Arc<KeyedBudget<C>> {
    match old {
        Some(b)
            if b.quota() == q && b.max_keys() == max_keys && *b.placement() == Placement::Local =>
        {
            b.clone()
        }
        _ => Arc::new(KeyedBudget::new(q, max_keys, clock.clone())),
    }
}

/// A level's record or byte budget. A per-client one carries over together with its overflow
/// budget (the one untracked clients share), which has the same quota.
pub(super) fn level_budget<C: BudgetClock>(
    old: Option<&LevelBudget<C>>,
    per: Per,
    q: Quota,
    max_keys: usize,
    clock: &C,
) -> LevelBudget<C> {
    match (per, old) {
        (Per::Route, Some(LevelBudget::Route(b))) => {
            LevelBudget::Route(reuse_budget(Some(b), q, clock))
        }
        (Per::Route, _) => LevelBudget::Route(reuse_budget(None, q, clock)),
        (Per::Client, Some(LevelBudget::Client { keyed, overflow }))
            if keyed.quota() == q && keyed.max_keys() == max_keys =>
        {
            LevelBudget::Client {
                keyed: keyed.clone(),
                overflow: overflow.clone(),
            }
        }
        (Per::Client, _) => LevelBudget::Client {
            keyed: reuse_keyed(None, q, max_keys, clock),
            overflow: reuse_budget(None, q, clock),
        },
    }
}
