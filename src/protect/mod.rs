//! Critical-route protection: nothing bulk telemetry does may fail or starve a critical request.
//!
//! Three parts, each a plain type with its own tests:
//! - [`slots`]: upstream concurrency partitioned by route priority, with a reserve only critical
//!   routes may use and short, bounded waits for bulk;
//! - [`controller`]: a brownout level set from the upstream's health (latency against a learned
//!   baseline, failure share), which tightens bulk traffic from the least valuable data up and
//!   relaxes with hysteresis;
//! - [`surge`]: per route and level, a verbosity surge detector against an EWMA baseline;
//! - [`adaptive`]: per class (normal, bulk), a gradient limiter that sets how many requests may
//!   be in flight to the upstream from the upstream's own latency.
//!
//! [`Protection`] ties them to the running guard: request threads take slots and report each
//! upstream exchange; one background task ([`run_controller`]) ticks the controller and the
//! surge detectors, publishes the level through an atomic and updates the gauges; the same
//! task calls [`Protection::adapt`] every `adaptive.interval`, which resizes the class pools.
//! Its state lives as long as the process, across policy reloads.

pub mod adaptive;
pub mod controller;
mod health;
pub mod overload;
mod priority;
pub mod slots;
pub mod surge;
#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge};
use serde::Serialize;

pub use adaptive::AdaptiveConfig;
pub use controller::{Brownout, BrownoutConfig, ClassSignal, Controller, Transition, Verdict};
pub use priority::Priority;
pub use slots::{NoSlot, Slot, SlotsConfig};
pub use surge::{SurgeConfig, SurgeDetector, SurgeEvent};

use crate::records::filter::Tighten;
use crate::records::{Level, Sample};
use health::{LatencyWindow, Window};

/// What a request shed for want of an upstream slot is told to wait: slots free up as fast as
/// the upstream answers, so a second is a sane retry.
const SLOT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The policy's `protect` section, compiled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProtectConfig {
    #[serde(flatten)]
    pub slots: SlotsConfig,
    pub brownout: BrownoutConfig,
    pub surge: SurgeConfig,
    pub adaptive: AdaptiveConfig,
}

impl ProtectConfig {
    /// The ceiling of each adaptive class, as [`adaptive::CLASSES`]: normal may use every slot
    /// not reserved for critical, bulk its `bulk_max_in_flight`.
    pub fn class_max(&self) -> [u32; 2] {
        let s = &self.slots;
        [
            s.max_in_flight.saturating_sub(s.critical_reserved).max(1),
            s.bulk_max_in_flight.max(1),
        ]
    }
}

/// The brownout's tightening of bulk batches at `level`.
pub fn tighten(level: Brownout, cfg: &BrownoutConfig) -> Tighten {
    let mut t = Tighten::NONE;
    if level >= Brownout::DropVerbose {
        t.0[Level::Trace.index()] = Some(Sample::per_million(0));
        t.0[Level::Debug.index()] = Some(Sample::per_million(0));
    }
    if level >= Brownout::SampleInfo {
        t.0[Level::Info.index()] = Some(cfg.info_sample);
    }
    if level >= Brownout::SampleWarn {
        t.0[Level::Warn.index()] = Some(cfg.warn_sample);
    }
    t
}

/// The tightening that keeps a bulk batch's error and fatal records only: what is left of a
/// batch the guard would otherwise shed.
pub fn errors_only() -> Tighten {
    let mut t = Tighten::NONE;
    for level in [Level::Trace, Level::Debug, Level::Info, Level::Warn] {
        t.0[level.index()] = Some(Sample::per_million(0));
    }
    t
}

/// Why a request was shed; the names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Its class's wait queue for upstream slots was full.
    QueueFull,
    /// It waited its class's whole `queue_timeout` for a slot.
    QueueTimeout,
    /// A bulk request while the brownout level is `shed_bulk`.
    Brownout,
    /// A bulk request while the guard itself is overloaded (see `protect::overload`).
    Overload,
}

impl ShedReason {
    pub const COUNT: usize = 4;
    pub const ALL: [ShedReason; ShedReason::COUNT] = [
        ShedReason::QueueFull,
        ShedReason::QueueTimeout,
        ShedReason::Brownout,
        ShedReason::Overload,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::Brownout => "brownout",
            ShedReason::Overload => "overload",
        }
    }
}

/// A request refused (503) to protect the upstream: no upstream slot for its class in time, or
/// a bulk request while the brownout sheds bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub class: Priority,
    pub reason: ShedReason,
    pub retry_after: Duration,
}

/// Shared protection state; one per process.
pub struct Protection {
    slots: slots::Slots,
    windows: [Window; Priority::COUNT],
    level: AtomicU8,
    /// Locked only by the controller task, once per tick.
    controller: Mutex<Controller>,
    /// Adaptive concurrency: the latency windows of normal and bulk, and their limiters
    /// (locked by the controller task and by a reload).
    latency: [LatencyWindow; 2],
    /// Whether adaptive concurrency is on: off, exchanges fill no latency window.
    adapting: AtomicBool,
    adaptive: Mutex<Adaptive>,
    gauges: Gauges,
}

/// The limiters of [`adaptive::CLASSES`] and how many intervals each one's window has been
/// gathering for.
struct Adaptive {
    cfg: AdaptiveConfig,
    max: [u32; 2],
    limiters: [adaptive::Limiter; 2],
    gathering: [u32; 2],
    /// The time origin the limiters count from.
    origin: std::time::Instant,
}

impl Adaptive {
    fn limits(&self) -> [u32; 2] {
        [0, 1].map(|i| self.limiters[i].limit(&self.cfg, self.max[i]))
    }
}

/// The series protection keeps current, one per class where indexed by [`Priority::index`]
/// (resolved by the metrics layer, which owns the families).
pub struct Gauges {
    pub in_flight: [IntGauge; Priority::COUNT],
    pub queued: [IntGauge; Priority::COUNT],
    pub level: IntGauge,
    pub raised: IntCounter,
    pub relaxed: IntCounter,
    /// `upstream_exchanges_total{class, result}`: [class][ok, failed].
    pub exchanges: [[IntCounter; 2]; Priority::COUNT],
    pub p90: [Gauge; Priority::COUNT],
    pub baseline: [Gauge; Priority::COUNT],
    pub failures: [Gauge; Priority::COUNT],
    /// Adaptive concurrency, per [`adaptive::CLASSES`]: the limit in force, and the min RTT.
    pub concurrency_limit: [IntGauge; 2],
    pub min_rtt: [Gauge; 2],
    /// 1 while bulk yields to in-flight critical requests.
    pub bulk_yielding: IntGauge,
}

impl Protection {
    pub fn new(cfg: &ProtectConfig, gauges: Gauges) -> Protection {
        let max = cfg.class_max();
        let on = cfg.adaptive.enabled;
        let adaptive = Adaptive {
            cfg: cfg.adaptive.clone(),
            max,
            limiters: max.map(adaptive::Limiter::new),
            gathering: [0; 2],
            origin: std::time::Instant::now(),
        };
        for (g, m) in gauges.concurrency_limit.iter().zip(max) {
            g.set(i64::from(m));
        }
        Protection {
            slots: slots::Slots::new(
                &cfg.slots,
                on,
                gauges.in_flight.clone(),
                gauges.queued.clone(),
            ),
            windows: std::array::from_fn(|_| Window::default()),
            level: AtomicU8::new(Brownout::Off as u8),
            controller: Mutex::new(Controller::new(cfg.brownout.clone())),
            latency: std::array::from_fn(|_| LatencyWindow::default()),
            adapting: AtomicBool::new(on),
            adaptive: Mutex::new(adaptive),
            gauges,
        }
    }

    /// New settings from a reloaded policy; slots in flight, the level and the learned
    /// baselines are kept.
    pub fn reconfigure(&self, cfg: &ProtectConfig) {
        let limits = match self.adaptive.lock() {
            Ok(mut a) => {
                if cfg.adaptive.enabled && !a.cfg.enabled {
                    // Turned (back) on: what the limiters knew is stale, and the windows start
                    // empty.
                    a.limiters = cfg.class_max().map(adaptive::Limiter::new);
                    a.gathering = [0; 2];
                    for w in &self.latency {
                        w.take();
                    }
                }
                a.cfg = cfg.adaptive.clone();
                a.max = cfg.class_max();
                let limits = a.limits();
                self.publish_limits(cfg.adaptive.enabled.then_some(limits), a.max);
                cfg.adaptive.enabled.then_some(limits)
            }
            Err(_) => None,
        };
        self.slots.reconfigure(&cfg.slots, limits);
        self.adapting.store(cfg.adaptive.enabled, Ordering::Relaxed);
        if limits.is_none() || !cfg.adaptive.bulk_yields_to_critical {
            self.set_bulk_yields(false);
        }
        if let Ok(mut c) = self.controller.lock() {
            c.reconfigure(cfg.brownout.clone());
            self.publish(c.level());
        }
    }

    /// The current brownout level: one relaxed atomic load.
    pub fn level(&self) -> Brownout {
        Brownout::from_u8(self.level.load(Ordering::Relaxed))
    }

    /// An upstream slot for a request of `class` (see [`slots`]), or the 503 that sheds it.
    /// Not finding one counts as a saturated upstream for the controller.
    pub async fn slot(&self, class: Priority) -> Result<Slot<'_>, Shed> {
        self.slots.acquire(class).await.map_err(|no_slot| {
            self.windows[class.index()].shed();
            Shed {
                class,
                reason: match no_slot {
                    NoSlot::QueueFull => ShedReason::QueueFull,
                    NoSlot::QueueTimeout => ShedReason::QueueTimeout,
                },
                retry_after: SLOT_RETRY_AFTER,
            }
        })
    }

    /// An upstream slot for `class` if one is free now, without waiting (shadow requests).
    pub fn try_slot(&self, class: Priority) -> Option<Slot<'_>> {
        self.slots.try_acquire(class)
    }

    /// One upstream exchange of `class` ended after `latency`; `failed` for a 5xx answer or a
    /// refused, reset or timed-out exchange.
    pub fn observe(&self, class: Priority, latency: Duration, failed: bool) {
        self.windows[class.index()].observe(latency, failed);
        if let (Some(i), false) = (adaptive::slot_of(class), failed)
            && self.adapting.load(Ordering::Relaxed)
        {
            self.latency[i].observe(latency);
        }
        self.gauges.exchanges[class.index()][usize::from(failed)].inc();
    }

    /// Takes this interval's signals and runs the controller once. Returns the verdict and
    /// any change of level (already published).
    pub fn tick(&self) -> (Verdict, Option<Transition>) {
        let signals = Priority::ALL.map(|p| self.windows[p.index()].take());
        let Ok(mut c) = self.controller.lock() else {
            return (Verdict::Neutral, None);
        };
        let (verdict, transition) = c.tick(&signals);
        for p in Priority::ALL {
            let (i, s) = (p.index(), &signals[p.index()]);
            if let Some(p90) = s.p90 {
                self.gauges.p90[i].set(p90.as_secs_f64());
            }
            if let Some(b) = c.baseline(p) {
                self.gauges.baseline[i].set(b.as_secs_f64());
            }
            if s.responses > 0 {
                self.gauges.failures[i].set(s.failures as f64 / s.responses as f64);
            }
        }
        if let Some(t) = transition {
            self.publish(t.to);
            if t.to > t.from {
                self.gauges.raised.inc();
                crate::warn_limited!(
                    level = t.to.as_str(),
                    cause = t.cause,
                    "upstream in distress: brownout raised"
                );
            } else {
                self.gauges.relaxed.inc();
                tracing::info!(
                    level = t.to.as_str(),
                    "upstream recovering: brownout relaxed"
                );
            }
        }
        (verdict, transition)
    }

    /// Runs the adaptive limiters once (every `adaptive.interval`): each class whose window
    /// holds enough answered exchanges is judged, and the class pools are resized to the
    /// limits. Does nothing with adaptive concurrency off.
    pub fn adapt(&self) {
        let Ok(mut a) = self.adaptive.lock() else {
            return;
        };
        if !a.cfg.enabled {
            return;
        }
        let now = a.origin.elapsed();
        for i in 0..adaptive::CLASSES.len() {
            a.gathering[i] = a.gathering[i].saturating_add(1);
            let window =
                if adaptive::Limiter::ready(&a.cfg, self.latency[i].answered(), a.gathering[i]) {
                    a.gathering[i] = 0;
                    self.latency[i].take()
                } else {
                    // Not judged yet; an empty window only lets a due probe start.
                    adaptive::Window::default()
                };
            let Adaptive {
                cfg, max, limiters, ..
            } = &mut *a;
            let step = limiters[i].update(cfg, max[i], now, window);
            if adaptive::CLASSES[i] == Priority::Bulk {
                // Queueing in the upstream (bulk over its target) makes bulk yield to critical
                // until a window says it is gone; a probe or an unjudged window changes nothing.
                match step {
                    adaptive::Step::Shrank => self.set_bulk_yields(cfg.bulk_yields_to_critical),
                    adaptive::Step::Grew => self.set_bulk_yields(false),
                    _ => {}
                }
            }
        }
        let limits = a.limits();
        self.slots.set_limits(limits);
        self.publish_limits(Some(limits), a.max);
        for (i, l) in a.limiters.iter().enumerate() {
            if let Some(rtt) = l.min_rtt() {
                self.gauges.min_rtt[i].set(rtt.as_secs_f64());
            }
        }
    }

    fn set_bulk_yields(&self, on: bool) {
        self.slots.set_bulk_yields(on);
        self.gauges.bulk_yielding.set(i64::from(on));
    }

    /// Sets the limit gauges: the limits, or the ceilings with adaptive concurrency off.
    fn publish_limits(&self, limits: Option<[u32; 2]>, max: [u32; 2]) {
        let shown = limits.unwrap_or(max);
        for (g, l) in self.gauges.concurrency_limit.iter().zip(shown) {
            g.set(i64::from(l));
        }
    }

    fn publish(&self, level: Brownout) {
        self.level.store(level as u8, Ordering::Relaxed);
        self.gauges.level.set(level as i64);
    }
}

/// How long a bulk client shed by the brownout should wait: until the level could next relax.
pub fn retry_after(cfg: &BrownoutConfig) -> Duration {
    cfg.interval * cfg.relax_after
}
