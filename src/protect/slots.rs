//! Upstream concurrency partitioned by priority.
//!
//! `max_in_flight` slots toward the upstream are split in two pools: `critical_reserved` slots
//! only critical requests may take, and the shared rest. Critical requests take a reserved slot
//! first and borrow a shared one when the reserve is busy; normal and bulk requests only ever
//! take shared slots, and bulk additionally holds one of `bulk_max_in_flight` slots of its own,
//! so bulk can neither take the reserve nor the whole shared pool.
//!
//! A request that finds no slot waits, in arrival order, up to its class's `queue_timeout`
//! (bulk: short, critical: long), with at most `max_queued` waiting per class; past either it
//! is shed with 503. Pools are tokio semaphores: the fast path is one compare-and-swap per pool,
//! and a waiter holds no lock.
//!
//! A policy reload may resize the pools: growing adds permits at once; shrinking forgets idle
//! permits at once and the rest as requests in flight give theirs back (`debt`).
//!
//! With adaptive concurrency on (see [`super::adaptive`]), the bulk pool is sized to bulk's
//! adaptive limit instead of `bulk_max_in_flight`, and normal requests also hold a permit of a
//! `normal` pool sized to normal's limit, the way bulk holds one of its own. The shared pool
//! and the reserve keep their configured sizes, so critical requests are never limited by it.
//!
//! **Bulk yields to critical** while the adaptive limiter sees the upstream queueing
//! ([`Slots::set_bulk_yields`]): a bulk request that has its slot is not sent while a critical
//! request is in flight, and waits (within bulk's `queue_timeout`, counted as queued) until none
//! is. An upstream that serves in arrival order would otherwise queue the next critical request
//! behind it: with one bulk slot, a command would wait for the commands ahead of it *and* a
//! whole bulk exchange, instead of at most the bulk exchange already running.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use super::Priority;

/// The pool sizes and waits (policy `protect`, resolved).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotsConfig {
    pub max_in_flight: u32,
    pub critical_reserved: u32,
    pub bulk_max_in_flight: u32,
    /// Indexed by [`Priority::index`].
    #[serde(serialize_with = "serialize_waits")]
    pub queue_timeout: [Duration; Priority::COUNT],
    pub max_queued: [u32; Priority::COUNT],
}

fn serialize_waits<S: serde::Serializer>(
    d: &[Duration; Priority::COUNT],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(Priority::COUNT))?;
    for p in Priority::ALL {
        m.serialize_entry(p.as_str(), &d[p.index()].as_secs_f64())?;
    }
    m.end()
}

impl Default for SlotsConfig {
    fn default() -> Self {
        SlotsConfig {
            max_in_flight: 256,
            critical_reserved: 64,
            bulk_max_in_flight: 128,
            queue_timeout: [
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_millis(50),
            ],
            max_queued: [1024, 1024, 256],
        }
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// `max_queued` requests of its class were already waiting.
    QueueFull,
    /// It waited its class's whole `queue_timeout`.
    QueueTimeout,
}

/// One pool: a semaphore whose size can change while permits are out.
struct Pool {
    sem: Semaphore,
    size: AtomicU32,
    /// Permits to forget instead of returning, after a shrink that found them in use.
    debt: AtomicU32,
}

impl Pool {
    fn new(size: u32) -> Pool {
        Pool {
            sem: Semaphore::new(size as usize),
            size: AtomicU32::new(size),
            debt: AtomicU32::new(0),
        }
    }

    fn resize(&self, size: u32) {
        let old = self.size.swap(size, Ordering::Relaxed);
        if size > old {
            // Cancel debt first: those permits are still out and will come back.
            let mut grow = size - old;
            let _ = self
                .debt
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    let paid = d.min(grow);
                    grow -= paid;
                    Some(d - paid)
                });
            self.sem.add_permits(grow as usize);
        } else if size < old {
            let shrink = old - size;
            let forgotten = self.sem.forget_permits(shrink as usize) as u32;
            self.debt.fetch_add(shrink - forgotten, Ordering::Relaxed);
        }
    }

    /// Gives a permit back, or forgets it to pay a shrink's debt.
    fn release(&self, permit: SemaphorePermit<'_>) {
        let paid = self
            .debt
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok();
        if paid {
            permit.forget();
        }
    }
}

pub struct Slots {
    reserved: Pool,
    shared: Pool,
    bulk: Pool,
    /// Normal's adaptive limit; only taken while `limit_normal` is set.
    normal: Pool,
    limit_normal: AtomicBool,
    /// Critical slots held now; `critical_idle` wakes yielding bulk when it reaches zero.
    critical: AtomicU32,
    critical_idle: Notify,
    bulk_yields: AtomicBool,
    waits: std::sync::RwLock<([Duration; Priority::COUNT], [u32; Priority::COUNT])>,
    in_flight: [IntGauge; Priority::COUNT],
    queued: [IntGauge; Priority::COUNT],
}

/// A held upstream slot; dropping it frees the slot.
pub struct Slot<'a> {
    slots: &'a Slots,
    class: Priority,
    main: Option<(&'a Pool, SemaphorePermit<'a>)>,
    /// The pool of the class's own limit (bulk; normal while adaptive), decided when the
    /// request asks, so that a reload turning the limit on or off never unbalances a pool.
    own_pool: Option<&'a Pool>,
    own: Option<SemaphorePermit<'a>>,
    /// Counted in flight (from [`Slot::granted`] until the drop).
    granted: bool,
}

impl Slot<'_> {
    /// The class gauge (and, for critical, the count bulk yields to) counts a slot from here
    /// until its drop.
    fn granted(mut self) -> Self {
        self.slots.in_flight[self.class.index()].inc();
        if self.class == Priority::Critical {
            self.slots.critical.fetch_add(1, Ordering::AcqRel);
        }
        self.granted = true;
        self
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let (Some(pool), Some(permit)) = (self.own_pool, self.own.take()) {
            pool.release(permit);
        }
        if let Some((pool, permit)) = self.main.take() {
            pool.release(permit);
        }
        if self.granted {
            self.slots.in_flight[self.class.index()].dec();
            if self.class == Priority::Critical
                && self.slots.critical.fetch_sub(1, Ordering::AcqRel) == 1
            {
                self.slots.critical_idle.notify_waiters();
            }
        }
    }
}

/// Counts a waiting request in its class's queue gauge while it waits.
struct Queued<'a>(&'a IntGauge);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Slots {
    /// Pools at their configured sizes; `adaptive` makes normal requests hold a permit of
    /// normal's limit (at its ceiling until [`Slots::set_limits`] says otherwise).
    pub fn new(
        cfg: &SlotsConfig,
        adaptive: bool,
        in_flight: [IntGauge; Priority::COUNT],
        queued: [IntGauge; Priority::COUNT],
    ) -> Slots {
        let shared = cfg.max_in_flight.saturating_sub(cfg.critical_reserved);
        Slots {
            reserved: Pool::new(cfg.critical_reserved),
            shared: Pool::new(shared),
            bulk: Pool::new(cfg.bulk_max_in_flight),
            normal: Pool::new(shared),
            limit_normal: AtomicBool::new(adaptive),
            critical: AtomicU32::new(0),
            critical_idle: Notify::new(),
            bulk_yields: AtomicBool::new(false),
            waits: std::sync::RwLock::new((cfg.queue_timeout, cfg.max_queued)),
            in_flight,
            queued,
        }
    }

    /// New sizes and waits (a policy reload); requests in flight keep their slots. `limits`
    /// are the adaptive [normal, bulk] limits, `None` with adaptive concurrency off (bulk's
    /// pool is then `bulk_max_in_flight` and normal has no limit of its own).
    pub fn reconfigure(&self, cfg: &SlotsConfig, limits: Option<[u32; 2]>) {
        self.reserved.resize(cfg.critical_reserved);
        let shared = cfg.max_in_flight.saturating_sub(cfg.critical_reserved);
        self.shared.resize(shared);
        match limits {
            Some(l) => self.set_limits(l),
            None => {
                self.bulk.resize(cfg.bulk_max_in_flight);
                self.normal.resize(shared);
            }
        }
        self.limit_normal.store(limits.is_some(), Ordering::Relaxed);
        if let Ok(mut w) = self.waits.write() {
            *w = (cfg.queue_timeout, cfg.max_queued);
        }
    }

    /// The adaptive [normal, bulk] limits: resizes the two class pools (a shrink takes effect
    /// as requests in flight return their permits).
    pub fn set_limits(&self, [normal, bulk]: [u32; 2]) {
        self.normal.resize(normal);
        self.bulk.resize(bulk);
    }

    /// Whether bulk yields to critical (the adaptive limiter sees the upstream queueing, and
    /// the policy lets bulk yield). Turning it off releases bulk requests waiting on it.
    pub fn set_bulk_yields(&self, on: bool) {
        let was = self.bulk_yields.swap(on, Ordering::AcqRel);
        if was && !on {
            self.critical_idle.notify_waiters();
        }
    }

    /// Whether a request of `class` that has its slot must wait before it is sent.
    fn must_yield(&self, class: Priority) -> bool {
        class == Priority::Bulk
            && self.bulk_yields.load(Ordering::Acquire)
            && self.critical.load(Ordering::Acquire) > 0
    }

    /// Returns once no critical request is in flight, or bulk no longer yields.
    async fn critical_clear(&self) {
        loop {
            let mut notified = std::pin::pin!(self.critical_idle.notified());
            // Registered before the check, so a drop to zero in between is not missed.
            notified.as_mut().enable();
            if !self.must_yield(Priority::Bulk) {
                return;
            }
            notified.await;
        }
    }

    fn waits(&self, class: Priority) -> (Duration, u32) {
        match self.waits.read() {
            Ok(w) => (w.0[class.index()], w.1[class.index()]),
            Err(_) => (Duration::ZERO, 0),
        }
    }

    /// A slot for a request of `class`, waiting for one if none is free.
    pub async fn acquire(&self, class: Priority) -> Result<Slot<'_>, NoSlot> {
        // Fast path: a free slot, no timer, no queue.
        let mut slot = self.empty(class);
        let filled = self.try_fill(&mut slot);
        if filled && !self.must_yield(class) {
            return Ok(slot.granted());
        }

        let (timeout, max_queued) = self.waits(class);
        let queued = &self.queued[class.index()];
        if queued.get() >= i64::from(max_queued) {
            return Err(NoSlot::QueueFull);
        }
        queued.inc();
        let _queued = Queued(queued);
        let wait = async {
            if let Some(pool) = slot.own_pool
                && slot.own.is_none()
            {
                slot.own = pool.sem.acquire().await.ok();
            }
            if !filled {
                slot.main = self.wait_main(class).await;
            }
            if slot.main.is_some() && class == Priority::Bulk {
                self.critical_clear().await;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(()) if slot.main.is_some() => Ok(slot.granted()),
            _ => Err(NoSlot::QueueTimeout),
        }
    }

    /// Waits for a main permit: critical takes the first of the reserve and the shared pool.
    async fn wait_main(&self, class: Priority) -> Option<(&Pool, SemaphorePermit<'_>)> {
        match class {
            Priority::Critical => tokio::select! {
                p = self.reserved.sem.acquire() => p.ok().map(|p| (&self.reserved, p)),
                p = self.shared.sem.acquire() => p.ok().map(|p| (&self.shared, p)),
            },
            _ => self
                .shared
                .sem
                .acquire()
                .await
                .ok()
                .map(|p| (&self.shared, p)),
        }
    }

    /// A slot for a request of `class` if one is free now; never waits or queues. A bulk
    /// request that must yield to critical finds none. Shadow requests take their slots this
    /// way: they hold one when there is one (they are real upstream load), and are not delayed
    /// when there is none.
    pub fn try_acquire(&self, class: Priority) -> Option<Slot<'_>> {
        if self.must_yield(class) {
            return None;
        }
        let mut slot = self.empty(class);
        // Dropping an incomplete `slot` gives back what it did take.
        self.try_fill(&mut slot).then(|| slot.granted())
    }

    fn empty(&self, class: Priority) -> Slot<'_> {
        let own_pool = match class {
            Priority::Bulk => Some(&self.bulk),
            Priority::Normal if self.limit_normal.load(Ordering::Relaxed) => Some(&self.normal),
            _ => None,
        };
        Slot {
            slots: self,
            class,
            main: None,
            own_pool,
            own: None,
            granted: false,
        }
    }

    /// Takes, if free now, what `slot` still lacks: its class's own permit first (bulk; normal
    /// under adaptive concurrency), then a main one. True when the slot is complete. An own
    /// permit taken stays in `slot` even when no main permit is free, so a wait that follows
    /// only waits for the main one.
    fn try_fill<'a>(&'a self, slot: &mut Slot<'a>) -> bool {
        if let Some(pool) = slot.own_pool
            && slot.own.is_none()
        {
            slot.own = pool.sem.try_acquire().ok();
            if slot.own.is_none() {
                return false;
            }
        }
        slot.main = self.try_main(slot.class);
        slot.main.is_some()
    }

    fn try_main(&self, class: Priority) -> Option<(&Pool, SemaphorePermit<'_>)> {
        if class == Priority::Critical
            && let Ok(p) = self.reserved.sem.try_acquire()
        {
            return Some((&self.reserved, p));
        }
        self.shared
            .sem
            .try_acquire()
            .ok()
            .map(|p| (&self.shared, p))
    }
}
