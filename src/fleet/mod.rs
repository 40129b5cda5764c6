//! The fleet worker: the one task that talks to Redis for this guard's fleet budgets.
//!
//! It refills leases the request path queued ([`budget::FleetLink`](crate::budget::FleetLink)),
//! in batches of one pipelined round trip; hands back leases unused for two refill intervals;
//! sends a heartbeat every [`HEARTBEAT`] and counts the live guards from everyone's; and moves
//! the guard between fleet mode and the local fallback. Nothing on the request path waits on
//! it: when Redis fails or is slower than the response timeout, the guard falls back to its
//! local share at once and this task reconnects with backoff.
//!
//! The lease logic itself (balances, the share, the bound) is in `budget::fleet`; the scripts in
//! [`store`].

mod store;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::budget::{Ask, FleetLink, Leases, Refill};
use crate::policy::FleetSettings;
pub use store::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, Store};
use store::{CallError, LeaseCall};

/// How often a guard says it is alive; a guard not heard from for three of these is not
/// counted.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
const HEARTBEAT_TTL: Duration = Duration::from_millis(750);
/// Reconnect backoff: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// Most script calls in one round trip.
const MAX_BATCH: usize = 256;

/// The worker's inputs.
pub struct Worker {
    pub store: Store,
    pub link: FleetLink,
    pub refills: mpsc::Receiver<Refill>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The active policy's `fleet` section (read each heartbeat: a reload may change it).
    pub settings: Box<dyn Fn() -> FleetSettings + Send + Sync>,
    /// This guard's name in the heartbeat set.
    pub guard_id: String,
}

/// A refill held back until its key's next allowed refill.
struct Delayed {
    due: Instant,
    refill: Refill,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

impl Worker {
    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let epoch = Instant::now();
        let mut delayed: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refill_interval = (self.settings)().refill_interval;
        let mut sweep = tokio::time::interval(refill_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = BACKOFF.0;
        let mut reconnect_at = Instant::now();
        let mut warned = false;
        // Every series exists from the start, so a rate() or an alert sees the first event.
        let m = &self.metrics.fleet;
        for result in ["ok", "error", "timeout", "noscript"] {
            m.redis_calls.with_label_values(&[result]);
        }
        for to in ["fleet", "local"] {
            m.transitions.with_label_values(&[to]);
        }
        self.show_mode();
        loop {
            let next_due = delayed.peek().map(|d| d.0.due);
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
                Some(first) = self.refills.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.refills.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    let now = Instant::now();
                    let mut ready = Vec::with_capacity(batch.len());
                    for r in batch {
                        let due = epoch + r.leases.not_before(r.key);
                        if due > now {
                            delayed.push(Reverse(Delayed { due, refill: r }));
                        } else {
                            ready.push(r);
                        }
                    }
                    self.refill(ready, epoch).await;
                }
                _ = sleep_until(next_due), if next_due.is_some() => {
                    let now = Instant::now();
                    let mut ready = Vec::new();
                    while delayed.peek().is_some_and(|d| d.0.due <= now) && ready.len() < MAX_BATCH {
                        if let Some(Reverse(d)) = delayed.pop() {
                            ready.push(d.refill);
                        }
                    }
                    self.refill(ready, epoch).await;
                }
                _ = sweep.tick() => {
                    self.expire().await;
                    let t = (self.settings)().refill_interval;
                    if t != refill_interval {
                        refill_interval = t;
                        sweep = tokio::time::interval(t);
                        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                _ = heartbeat.tick() => {
                    if !self.store.is_connected() {
                        if Instant::now() < reconnect_at {
                            continue;
                        }
                        match self.store.connect().await {
                            Ok(()) => {
                                backoff = BACKOFF.0;
                                warned = false;
                            }
                            Err(e) => {
                                if !warned {
                                    tracing::warn!(
                                        "fleet Redis unreachable ({}); fleet budgets run at this \
                                         guard's local share until it answers",
                                        e.as_str()
                                    );
                                    warned = true;
                                }
                                reconnect_at = Instant::now() + backoff;
                                backoff = (backoff * 2).min(BACKOFF.1);
                                continue;
                            }
                        }
                    }
                    self.beat().await;
                }
            }
        }
    }

    /// One heartbeat: counts the live guards and, on success, enters fleet mode.
    async fn beat(&mut self) {
        let settings = (self.settings)();
        let set = format!("{}:guards", settings.namespace);
        let m = &self.metrics.fleet;
        match self
            .store
            .heartbeat(&set, &self.guard_id, HEARTBEAT_TTL, m)
            .await
        {
            Ok(live) => {
                self.link.set_live(live.max(1));
                m.guards.set(i64::from(live));
                self.set_mode(true);
            }
            Err(_) => self.set_mode(false),
        }
        self.show_mode();
    }

    fn set_mode(&mut self, fleet: bool) {
        if self.link.set_fleet_mode(fleet) {
            let to = if fleet { "fleet" } else { "local" };
            self.metrics
                .fleet
                .transitions
                .with_label_values(&[to])
                .inc();
            if fleet {
                tracing::info!("fleet Redis answers; fleet budgets are shared again");
            } else {
                tracing::warn!("fleet Redis failed; fleet budgets run at this guard's local share");
            }
        }
        if !fleet {
            self.store.disconnect();
        }
    }

    /// Sets the mode gauge of every route with fleet budgets (and creates its lease series).
    fn show_mode(&self) {
        let fleet = self.link.in_fleet_mode();
        let m = &self.metrics.fleet;
        for t in self.link.leases() {
            m.set_mode(&t.spec.route, fleet);
            for event in ["granted", "expired"] {
                m.lease_tokens
                    .with_label_values(&[&t.spec.route, t.spec.budget, event]);
            }
        }
    }

    /// Refills a batch of keys in one round trip.
    async fn refill(&mut self, batch: Vec<Refill>, epoch: Instant) {
        if batch.is_empty() {
            return;
        }
        if !self.link.in_fleet_mode() {
            for r in &batch {
                r.leases.abandon(r.key);
            }
            return;
        }
        let mut asks: Vec<(Refill, Ask)> = Vec::with_capacity(batch.len());
        for r in batch {
            if let Some(ask) = r.leases.ask(r.key) {
                asks.push((r, ask));
            }
        }
        if asks.is_empty() {
            return;
        }
        let calls: Vec<LeaseCall> = asks
            .iter()
            .map(|(r, ask)| call(&r.leases, r.key, ask.owed, ask.want, 0))
            .collect();
        match self.store.lease(&calls, &self.metrics.fleet).await {
            Ok(granted) => {
                let now = epoch.elapsed();
                for ((r, ask), g) in asks.iter().zip(granted) {
                    r.leases.grant(r.key, *ask, g.tokens, g.retry, now);
                    self.metrics
                        .fleet
                        .lease_tokens
                        .with_label_values(&[&r.leases.spec.route, r.leases.spec.budget, "granted"])
                        .inc_by(g.tokens);
                }
            }
            Err(e) => {
                for (r, _) in &asks {
                    r.leases.abandon(r.key);
                }
                self.failed(e);
            }
        }
    }

    /// Drops leases unused for two refill intervals, handing their tokens back (and settling
    /// what they owe).
    async fn expire(&mut self) {
        let tables = self.link.leases();
        let mut calls = Vec::new();
        for t in &tables {
            for e in t.sweep() {
                if e.unused > 0 {
                    self.metrics
                        .fleet
                        .lease_tokens
                        .with_label_values(&[&t.spec.route, t.spec.budget, "expired"])
                        .inc_by(e.unused);
                }
                if self.link.in_fleet_mode() && (e.unused > 0 || e.owed > 0) {
                    calls.push(call(t, e.key, e.owed, 0, e.unused));
                }
            }
        }
        for chunk in calls.chunks(MAX_BATCH) {
            if let Err(e) = self.store.lease(chunk, &self.metrics.fleet).await {
                self.failed(e);
                return;
            }
        }
    }

    fn failed(&mut self, _e: CallError) {
        self.set_mode(false);
        self.show_mode();
    }
}

/// The script call for `key` of `leases`.
fn call(leases: &Arc<Leases>, key: u64, owed: u64, want: u64, back: u64) -> LeaseCall {
    let q = leases.quota;
    LeaseCall {
        key: leases.store_key(key),
        emission_us: q.per.as_secs_f64() * 1e6 / q.amount.max(1) as f64,
        burst: q.burst,
        owed,
        want,
        back,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
