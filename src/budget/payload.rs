//! A route's payload budgets and the admission decision over them: pure, over numbers only, so
//! the proxy, benchmarks and offline simulation share it. Generic over the budgets' clock: the
//! live guard's is the real one, `simulate`'s a virtual one.

use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};

use super::{Budget, BudgetKind, KeyedBudget, Placement, Quota, Verdict};

/// A route's payload budgets. Budgets are shared (`Arc`) so that a policy reload can hand an
/// unchanged budget, with its state, to the new policy.
pub struct Payload<C: Clock = DefaultClock> {
    pub max_body: Option<u64>,
    pub route_requests: Option<Arc<Budget<C>>>,
    pub route_bytes: Option<Arc<Budget<C>>>,
    pub client_requests: Option<Arc<KeyedBudget<C>>>,
    pub client_bytes: Option<Arc<KeyedBudget<C>>>,
}

impl<C: Clock> Default for Payload<C> {
    fn default() -> Self {
        Payload {
            max_body: None,
            route_requests: None,
            route_bytes: None,
            client_requests: None,
            client_bytes: None,
        }
    }
}

impl<C: Clock> Payload<C> {
    /// True when any per-client budget needs the request's client key.
    pub fn needs_client_key(&self) -> bool {
        self.client_requests.is_some() || self.client_bytes.is_some()
    }

    /// True when a byte budget must be charged as the body streams (no Content-Length).
    pub fn has_byte_budget(&self) -> bool {
        self.route_bytes.is_some() || self.client_bytes.is_some()
    }

    pub fn quota(&self, kind: BudgetKind) -> Option<Quota> {
        match kind {
            BudgetKind::RouteRequests => self.route_requests.as_ref().map(|b| b.quota()),
            BudgetKind::RouteBytes => self.route_bytes.as_ref().map(|b| b.quota()),
            BudgetKind::ClientRequests => self.client_requests.as_ref().map(|b| b.quota()),
            BudgetKind::ClientBytes => self.client_bytes.as_ref().map(|b| b.quota()),
        }
    }

    pub fn placement(&self, kind: BudgetKind) -> Option<&Placement> {
        match kind {
            BudgetKind::RouteRequests => self.route_requests.as_ref().map(|b| b.placement()),
            BudgetKind::RouteBytes => self.route_bytes.as_ref().map(|b| b.placement()),
            BudgetKind::ClientRequests => self.client_requests.as_ref().map(|b| b.placement()),
            BudgetKind::ClientBytes => self.client_bytes.as_ref().map(|b| b.placement()),
        }
    }

    pub fn keyed(&self) -> impl Iterator<Item = (BudgetKind, &Arc<KeyedBudget<C>>)> {
        [
            (BudgetKind::ClientRequests, &self.client_requests),
            (BudgetKind::ClientBytes, &self.client_bytes),
        ]
        .into_iter()
        .filter_map(|(k, b)| b.as_ref().map(|b| (k, b)))
    }
}

/// Why a request does not fit its payload budgets. Each maps to one answer: 413, 429 with
/// `Retry-After`, 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The declared (or streamed) body is larger than `max_body`.
    TooLarge { limit: u64 },
    /// Over `budget` now; `retry_after` later the same charge would fit.
    Over {
        budget: BudgetKind,
        retry_after: Duration,
    },
    /// A charge of `size` is larger than the budget's `burst` and can never fit.
    NeverFits {
        budget: BudgetKind,
        size: u64,
        burst: u64,
    },
}

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
) -> Result<ByteCharge<C>, Refusal> {
    if let (Some(limit), Some(len)) = (p.max_body, declared)
        && len > limit
    {
        return Err(Refusal::TooLarge { limit });
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

    pub fn charge(&self, n: u64) -> Result<Tracking, Refusal> {
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
fn enforce(kind: BudgetKind, verdict: Verdict, n: u64, burst: u64) -> Result<Tracking, Refusal> {
    match verdict {
        Verdict::Allow => Ok(Tracking::Tracked),
        Verdict::Untracked => Ok(Tracking::Untracked),
        Verdict::RetryAfter(retry_after) => Err(Refusal::Over {
            budget: kind,
            retry_after,
        }),
        Verdict::NeverFits => Err(Refusal::NeverFits {
            budget: kind,
            size: n,
            burst,
        }),
    }
}
