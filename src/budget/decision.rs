//! The admission decision for a request's payload budgets: pure, over numbers only, so the
//! proxy, benchmarks and offline simulation share it. Generic over the budgets' clock: the live
//! guard's is the real one, `simulate`'s a virtual one.

use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};

use super::{Budget, BudgetKind, KeyedBudget, Verdict};
use crate::error::GuardError;
use crate::policy::Payload;

/// Whether a charge applied the per-client budget or skipped it because the key cap was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    Tracked,
    Untracked,
}

/// Charges one request to a route's payload budgets.
///
/// Order: the size limit first (no state), then the client's budgets, then the route's, so a
/// client over its own budget never spends the budget the route shares. A body of undeclared
/// length is charged its bytes later, as it streams: the returned [`ByteCharge`] says to what.
/// `untracked` hears of every client budget skipped because its key store was full, whether or
/// not the request is admitted in the end.
pub fn admit<C: Clock>(
    p: &Payload<C>,
    key: Option<u64>,
    declared: Option<u64>,
    mut untracked: impl FnMut(BudgetKind),
) -> Result<ByteCharge<C>, GuardError> {
    if let (Some(limit), Some(len)) = (p.max_body, declared)
        && len > limit
    {
        return Err(GuardError::BodyTooLarge { limit });
    }
    let bytes = declared.unwrap_or(0);
    if let (Some(b), Some(k)) = (&p.client_requests, key) {
        let kind = BudgetKind::ClientRequests;
        if enforce(kind, b.check(k, 1), 1, b.quota().burst)? == Tracking::Untracked {
            untracked(kind);
        }
    }
    if let (Some(b), Some(k)) = (&p.client_bytes, key) {
        let kind = BudgetKind::ClientBytes;
        if enforce(kind, b.check(k, bytes), bytes, b.quota().burst)? == Tracking::Untracked {
            untracked(kind);
        }
    }
    if let Some(b) = &p.route_requests {
        enforce(BudgetKind::RouteRequests, b.check(1), 1, b.quota().burst)?;
    }
    if let Some(b) = &p.route_bytes {
        enforce(
            BudgetKind::RouteBytes,
            b.check(bytes),
            bytes,
            b.quota().burst,
        )?;
    }
    if declared.is_some() || !p.has_byte_budget() {
        return Ok(ByteCharge::default());
    }
    Ok(ByteCharge {
        client: p.client_bytes.clone().zip(key),
        route: p.route_bytes.clone(),
    })
}

/// Byte budgets a streamed body is charged to, client budget first.
#[derive(Clone)]
pub struct ByteCharge<C: Clock = DefaultClock> {
    pub client: Option<(Arc<KeyedBudget<C>>, u64)>,
    pub route: Option<Arc<Budget<C>>>,
}

impl<C: Clock> Default for ByteCharge<C> {
    fn default() -> Self {
        ByteCharge {
            client: None,
            route: None,
        }
    }
}

impl<C: Clock> ByteCharge<C> {
    pub fn is_empty(&self) -> bool {
        self.client.is_none() && self.route.is_none()
    }

    pub fn charge(&self, n: u64) -> Result<Tracking, GuardError> {
        let mut tracking = Tracking::Tracked;
        if let Some((budget, key)) = &self.client {
            let burst = budget.quota().burst;
            tracking = enforce(BudgetKind::ClientBytes, budget.check(*key, n), n, burst)?;
        }
        if let Some(budget) = &self.route {
            enforce(
                BudgetKind::RouteBytes,
                budget.check(n),
                n,
                budget.quota().burst,
            )?;
        }
        Ok(tracking)
    }
}

/// Turns a budget verdict into the request's fate.
pub fn enforce(
    kind: BudgetKind,
    verdict: Verdict,
    n: u64,
    burst: u64,
) -> Result<Tracking, GuardError> {
    match verdict {
        Verdict::Allow => Ok(Tracking::Tracked),
        Verdict::Untracked => Ok(Tracking::Untracked),
        Verdict::RetryAfter(retry_after) => Err(GuardError::OverBudget {
            budget: kind,
            retry_after,
        }),
        Verdict::NeverFits => Err(GuardError::ExceedsBurst {
            budget: kind,
            size: n,
            burst,
        }),
    }
}
