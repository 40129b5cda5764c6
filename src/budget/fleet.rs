//! Fleet-scoped budgets: one budget shared by every guard of a fleet, through leases.
//!
//! The global GCRA state of a fleet budget lives in a shared store (Redis; the I/O is the
//! `fleet` adapter's). Each guard holds, per (budget, key), a [`Lease`]: a balance of tokens
//! taken from the global state in advance. The request path only subtracts from that balance;
//! it never waits on the store. When a balance falls to half of the lease size `N`, the key is
//! queued for one background refill, which tops the balance back up to `N` tokens (or fewer, if
//! the fleet has fewer left). `N = max(1, ⌈R·T/P⌉)`: `R` the budget's rate, `T` the refill
//! interval, `P` the live guards.
//!
//! A key this guard holds no lease for yet (new, or expired) is admitted against the guard's
//! *local share* of the budget (rate `R/P`, burst `⌈B/P⌉`) while its first lease is fetched,
//! and what it spends is owed: the balance goes negative and the refill settles the debt
//! before it grants anything. So is a charge larger than a whole lease (a body bigger than
//! `N` bytes on a byte budget) that the balance does not cover; if the share cannot take it
//! either, the charge is refused and the next refill asks for enough to cover it, so the
//! client's retry finds it leased. The same local share is the whole budget while the store is
//! unreachable ([`FleetLink::set_fleet_mode`]): the fallback is never unlimited.
//!
//! Bound: over any window `t` the fleet admits at most `R·t + B` tokens that the store granted
//! or was charged, plus what guards held or owed at the window's start: at most `N` leased and
//! `⌈B/P⌉` owed per guard, so `R·t + B + P·N + P·⌈B/P⌉` in all (docs/fleet.md).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use tokio::sync::mpsc;

use super::{Cells, KeyStore, Quota, Verdict, verdict};

/// Whether a budget is this guard's alone or shared by the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Local,
    Fleet,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Fleet => "fleet",
        }
    }
}

/// A fleet budget's quota for one of `pods` guards: rate `R/P`, burst `⌈B/P⌉` (at least 1).
pub fn share(q: Quota, pods: u32) -> Quota {
    let pods = pods.max(1);
    Quota {
        amount: q.amount,
        per: q.per.saturating_mul(pods),
        burst: q.burst.div_ceil(u64::from(pods)).max(1),
    }
}

/// Most refills queued at once; a key whose refill does not fit is asked again by its next
/// request.
pub const REFILL_QUEUE: usize = 4096;

/// The link between a guard's fleet budgets and the worker that talks to the store: whether the
/// store is reachable, how many guards are live, and the queue of keys to refill.
#[derive(Clone)]
pub struct FleetLink(Arc<LinkState>);

struct LinkState {
    fleet_mode: AtomicBool,
    /// Live guards as last counted; 0 until the first count.
    live: AtomicU32,
    refills: mpsc::Sender<Refill>,
    tables: Mutex<Vec<Weak<Leases>>>,
}

/// One key of one fleet budget, to refill.
pub struct Refill {
    pub leases: Arc<Leases>,
    pub key: u64,
}

impl FleetLink {
    /// A link in local mode (until the worker reaches the store), and the worker's end of the
    /// refill queue.
    pub fn new() -> (FleetLink, mpsc::Receiver<Refill>) {
        let (tx, rx) = mpsc::channel(REFILL_QUEUE);
        let link = FleetLink(Arc::new(LinkState {
            fleet_mode: AtomicBool::new(false),
            live: AtomicU32::new(0),
            refills: tx,
            tables: Mutex::new(Vec::new()),
        }));
        (link, rx)
    }

    pub fn in_fleet_mode(&self) -> bool {
        self.0.fleet_mode.load(Ordering::Acquire)
    }

    /// Enters or leaves fleet mode; returns whether that changed anything. Leaving drops every
    /// lease (the store cannot settle them), so a return starts from fresh leases.
    pub fn set_fleet_mode(&self, on: bool) -> bool {
        let was = self.0.fleet_mode.swap(on, Ordering::AcqRel);
        if was && !on {
            for t in self.leases() {
                t.clear();
            }
        }
        was != on
    }

    /// Live guards as last counted, 0 when not counted yet.
    pub fn live(&self) -> u32 {
        self.0.live.load(Ordering::Relaxed)
    }

    pub fn set_live(&self, guards: u32) {
        self.0.live.store(guards, Ordering::Relaxed);
    }

    /// The lease tables of the budgets alive now (the current policy's, and a replaced one's
    /// until its last request ends).
    pub fn leases(&self) -> Vec<Arc<Leases>> {
        let Ok(mut tables) = self.0.tables.lock() else {
            return Vec::new();
        };
        tables.retain(|t| t.strong_count() > 0);
        tables.iter().filter_map(Weak::upgrade).collect()
    }

    fn register(&self, leases: &Arc<Leases>) {
        if let Ok(mut tables) = self.0.tables.lock() {
            tables.retain(|t| t.strong_count() > 0);
            tables.push(Arc::downgrade(leases));
        }
    }

    fn ask(&self, leases: &Arc<Leases>, key: u64, lease: &Lease) {
        if lease.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let refill = Refill {
            leases: leases.clone(),
            key,
        };
        if self.0.refills.try_send(refill).is_err() {
            lease.pending.store(false, Ordering::Release);
        }
    }
}

/// Where and how a fleet budget is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBudgetSpec {
    /// The store key of the budget; a client's state is at `{name}:{key:016x}`.
    pub name: String,
    /// Route name and budget (`client_requests`, ...), for metrics.
    pub route: String,
    pub budget: &'static str,
    pub keyed: bool,
    pub refill_interval: Duration,
    /// Guards assumed until the live count is known.
    pub pods: u32,
}

/// The leases one guard holds on one fleet budget, by key (route-wide budgets use key 0).
pub struct Leases {
    pub spec: FleetBudgetSpec,
    pub quota: Quota,
    max_keys: usize,
    link: FleetLink,
    map: DashMap<u64, Lease>,
    len: AtomicUsize,
}

/// One key's lease. `balance` is tokens held, negative when owed.
#[derive(Default)]
pub struct Lease {
    balance: AtomicI64,
    /// A first refill has answered: the balance alone decides.
    leased: AtomicBool,
    /// A refill is queued or in flight.
    pending: AtomicBool,
    /// Used since the last expiry sweep.
    touched: AtomicBool,
    /// Sweeps in a row this lease went unused.
    idle_sweeps: AtomicU32,
    /// How long a refused request should wait, from the store's last answer, in ms.
    retry_ms: AtomicU32,
    /// A refused charge larger than a lease: the next refill tops up to this instead.
    wanted: AtomicU64,
    /// The worker's clock (ns since its start) before which the next refill is not sent.
    not_before_ns: AtomicU64,
}

/// What a refill asks of the store for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Tokens spent on credit, charged whatever the store holds.
    pub owed: u64,
    /// Tokens wanted on top, granted up to what the store holds.
    pub want: u64,
}

/// A lease that went unused for two sweeps and was dropped: its tokens go back to the store (or,
/// when owed, are charged to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub key: u64,
    pub unused: u64,
    pub owed: u64,
}

impl Leases {
    pub fn new(
        spec: FleetBudgetSpec,
        quota: Quota,
        max_keys: usize,
        link: &FleetLink,
    ) -> Arc<Self> {
        let leases = Arc::new(Leases {
            spec,
            quota,
            max_keys,
            link: link.clone(),
            map: DashMap::new(),
            len: AtomicUsize::new(0),
        });
        link.register(&leases);
        leases
    }

    /// Guards to split the budget among: the live count, else the configured `pods`.
    pub fn pods(&self) -> u32 {
        match self.link.live() {
            0 => self.spec.pods.max(1),
            n => n,
        }
    }

    /// Tokens one refill tops a balance up to: `max(1, ⌈R·T/P⌉)`.
    pub fn lease_size(&self) -> u64 {
        let q = self.quota;
        let num = u128::from(q.amount) * self.spec.refill_interval.as_nanos();
        let den = q.per.as_nanos().max(1) * u128::from(self.pods());
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX).max(1)
    }

    /// The store key of `key`'s state.
    pub fn store_key(&self, key: u64) -> String {
        if self.spec.keyed {
            format!("{}:{key:016x}", self.spec.name)
        } else {
            self.spec.name.clone()
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request path in fleet mode: the lease decides, or `advance` (the local share) for a
    /// key not leased yet. A new key past the key cap is [`Verdict::Untracked`].
    fn charge(self: &Arc<Self>, key: u64, n: u64, advance: impl FnOnce() -> Verdict) -> Verdict {
        let lease = match self.map.get(&key) {
            Some(l) => l,
            None => {
                if self.len() >= self.max_keys {
                    return Verdict::Untracked;
                }
                self.map
                    .entry(key)
                    .or_insert_with(|| {
                        self.len.fetch_add(1, Ordering::Relaxed);
                        Lease::default()
                    })
                    .downgrade()
            }
        };
        lease.touched.store(true, Ordering::Relaxed);
        let n_signed = i64::try_from(n).unwrap_or(i64::MAX);
        let size = self.lease_size();
        if lease.leased.load(Ordering::Acquire) {
            let before = lease.balance.fetch_sub(n_signed, Ordering::AcqRel);
            if before >= n_signed {
                let half = i64::try_from(size / 2).unwrap_or(i64::MAX);
                if before - n_signed <= half {
                    self.link.ask(self, key, &lease);
                }
                return Verdict::Allow;
            }
            lease.balance.fetch_add(n_signed, Ordering::AcqRel);
            if n <= size {
                self.link.ask(self, key, &lease);
                let retry =
                    Duration::from_millis(u64::from(lease.retry_ms.load(Ordering::Relaxed)));
                return Verdict::RetryAfter(retry.max(self.spec.refill_interval));
            }
        }
        // A key not leased yet, or a charge larger than a whole lease (a big body on a byte
        // budget) that the balance does not cover: the local share, on credit.
        let v = advance();
        if v == Verdict::Allow {
            lease.balance.fetch_sub(n_signed, Ordering::AcqRel);
        } else if n > size {
            // Too big for the share too: the next refill asks for enough to cover it.
            lease.wanted.fetch_max(n, Ordering::AcqRel);
        }
        self.link.ask(self, key, &lease);
        v
    }

    /// What to ask the store for `key`, or `None` (and the refill is over) when the balance is
    /// full or the lease is gone.
    pub fn ask(&self, key: u64) -> Option<Ask> {
        let lease = self.map.get(&key)?;
        let balance = lease.balance.load(Ordering::Acquire);
        let owed = u64::try_from(-balance.min(0)).unwrap_or(0);
        let held = u64::try_from(balance.max(0)).unwrap_or(0);
        let target = self.lease_size().max(lease.wanted.load(Ordering::Acquire));
        let want = target.saturating_sub(held);
        if owed == 0 && want == 0 {
            lease.pending.store(false, Ordering::Release);
            return None;
        }
        Some(Ask { owed, want })
    }

    /// Applies the store's answer to `ask`, received at `now` on the worker's clock: the debt is
    /// settled, `granted` tokens added, and the key may be refilled again. When the fleet is
    /// short (fewer granted than wanted), not before a refill interval, or the store's own
    /// `retry` if later: a hot key costs one call per interval, whatever its request rate.
    pub fn grant(&self, key: u64, ask: Ask, granted: u64, retry: Duration, now: Duration) {
        if let Some(lease) = self.map.get(&key) {
            if granted < ask.want {
                let next = now + self.spec.refill_interval.max(retry);
                let ns = u64::try_from(next.as_nanos()).unwrap_or(u64::MAX);
                lease.not_before_ns.store(ns, Ordering::Relaxed);
            }
            let add = ask.owed.saturating_add(granted);
            lease
                .balance
                .fetch_add(i64::try_from(add).unwrap_or(i64::MAX), Ordering::AcqRel);
            let ms = u32::try_from(retry.as_millis()).unwrap_or(u32::MAX);
            lease.retry_ms.store(ms, Ordering::Relaxed);
            lease.wanted.store(0, Ordering::Relaxed);
            lease.leased.store(true, Ordering::Release);
            lease.pending.store(false, Ordering::Release);
        }
    }

    /// When, on the worker's clock, `key` may be refilled next (zero: at once).
    pub fn not_before(&self, key: u64) -> Duration {
        self.map.get(&key).map_or(Duration::ZERO, |l| {
            Duration::from_nanos(l.not_before_ns.load(Ordering::Relaxed))
        })
    }

    /// Ends a refill that got no answer; the next request may ask again.
    pub fn abandon(&self, key: u64) {
        if let Some(lease) = self.map.get(&key) {
            lease.pending.store(false, Ordering::Release);
        }
    }

    /// One expiry sweep (run every refill interval): drops the leases unused for two sweeps in
    /// a row and returns them, so their tokens go back to the store.
    pub fn sweep(&self) -> Vec<Expired> {
        let mut expired = Vec::new();
        self.map.retain(|&key, lease| {
            if lease.touched.swap(false, Ordering::Relaxed) || lease.pending.load(Ordering::Acquire)
            {
                lease.idle_sweeps.store(0, Ordering::Relaxed);
                return true;
            }
            if lease.idle_sweeps.fetch_add(1, Ordering::Relaxed) < 1 {
                return true;
            }
            let balance = lease.balance.load(Ordering::Acquire);
            expired.push(Expired {
                key,
                unused: u64::try_from(balance.max(0)).unwrap_or(0),
                owed: u64::try_from(-balance.min(0)).unwrap_or(0),
            });
            false
        });
        self.len.store(self.map.len(), Ordering::Relaxed);
        expired
    }

    /// Drops every lease, unsettled: the store is unreachable.
    fn clear(&self) {
        self.map.clear();
        self.map.shrink_to_fit();
        self.len.store(0, Ordering::Relaxed);
    }
}

type ShareLimiter<C> = RateLimiter<u64, KeyStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// This guard's share of a fleet budget, for `pods` guards.
struct Share<C: Clock> {
    pods: u32,
    cells: Cells,
    keys: KeyStore,
    limiter: ShareLimiter<C>,
}

impl<C: Clock> Share<C> {
    fn new(q: Quota, pods: u32, clock: C) -> Self {
        let cells = Cells::new(share(q, pods));
        let keys = KeyStore::default();
        Share {
            pods,
            cells,
            limiter: RateLimiter::new(cells.quota, keys.clone(), clock),
            keys,
        }
    }

    fn check(&self, key: u64, n: u64) -> Verdict {
        match self.cells.charge(n) {
            // More than the share's burst: waits for the fleet, never 413 (the whole burst
            // would hold it).
            None => Verdict::RetryAfter(Duration::from_secs(1)),
            Some(cells) => match verdict(
                self.limiter.check_key_n(&key, cells),
                self.limiter.clock().now(),
            ) {
                Verdict::NeverFits => Verdict::RetryAfter(Duration::from_secs(1)),
                v => v,
            },
        }
    }
}

/// The fleet half of a budget: its leases and this guard's local share.
pub(super) struct Fleet<C: Clock> {
    leases: Arc<Leases>,
    share: ArcSwap<Share<C>>,
    /// Builds the share for a guard count, on the budget's clock.
    reshare: Box<dyn Fn(u32) -> Share<C> + Send + Sync>,
}

impl<C: Clock> Fleet<C> {
    pub(super) fn new(leases: Arc<Leases>, clock: C) -> Self
    where
        C: Clone + Send + Sync + 'static,
    {
        let quota = leases.quota;
        let reshare = move |pods| Share::new(quota, pods, clock.clone());
        Fleet {
            share: ArcSwap::from_pointee(reshare(leases.pods())),
            leases,
            reshare: Box::new(reshare),
        }
    }

    pub(super) fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    /// Charges `n` units to `key`.
    pub(super) fn check(&self, key: u64, n: u64) -> Verdict {
        if n > self.leases.quota.burst {
            return Verdict::NeverFits;
        }
        if !self.leases.link.in_fleet_mode() {
            let share = self.current_share();
            if share.keys.len() >= self.leases.max_keys && !share.keys.contains(key) {
                return Verdict::Untracked;
            }
            return share.check(key, n);
        }
        self.leases
            .charge(key, n, || self.current_share().check(key, n))
    }

    /// The share for the current guard count; rebuilt (state and all) when the count changes.
    fn current_share(&self) -> arc_swap::Guard<Arc<Share<C>>> {
        let pods = self.leases.pods();
        let share = self.share.load();
        if share.pods == pods {
            return share;
        }
        drop(share);
        self.share.store(Arc::new((self.reshare)(pods)));
        self.share.load()
    }

    pub(super) fn evict_idle(&self) -> usize {
        let share = self.share.load();
        share.limiter.retain_recent();
        share.limiter.shrink_to_fit();
        share.keys.recount().max(self.leases.len())
    }

    pub(super) fn tracked_keys(&self) -> usize {
        self.share.load().keys.len().max(self.leases.len())
    }
}
