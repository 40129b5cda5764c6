//! Critical-route protection: nothing bulk telemetry does may fail or starve a critical request.
//!
//! Three parts, each a plain type with its own tests:
//! - [`slots`]: upstream concurrency partitioned by route priority, with a reserve only critical
//!   routes may use and short, bounded waits for bulk;
//! - [`controller`]: a brownout level set from the upstream's health (latency against a learned
//!   baseline, failure share), which tightens bulk traffic from the least valuable data up and
//!   relaxes with hysteresis;
//! - [`surge`]: per route and level, a verbosity surge detector against an EWMA baseline.
//!
//! [`Protection`] ties them to the running guard: request threads take slots and report each
//! upstream exchange; one background task ([`run_controller`]) ticks the controller and the
//! surge detectors, publishes the level through an atomic and updates the gauges. Its state
//! lives as long as the process, across policy reloads.

pub mod controller;
mod health;
pub mod overload;
mod priority;
pub mod slots;
pub mod surge;
#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge};
use serde::Serialize;

pub use controller::{Brownout, BrownoutConfig, ClassSignal, Controller, Transition, Verdict};
pub use priority::Priority;
pub use slots::{NoSlot, Slot, SlotsConfig};
pub use surge::{SurgeConfig, SurgeDetector, SurgeEvent};

use crate::records::filter::Tighten;
use crate::records::{Level, Sample};
use health::Window;

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
    gauges: Gauges,
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
}

impl Protection {
    pub fn new(cfg: &ProtectConfig, gauges: Gauges) -> Protection {
        Protection {
            slots: slots::Slots::new(&cfg.slots, gauges.in_flight.clone(), gauges.queued.clone()),
            windows: std::array::from_fn(|_| Window::default()),
            level: AtomicU8::new(Brownout::Off as u8),
            controller: Mutex::new(Controller::new(cfg.brownout.clone())),
            gauges,
        }
    }

    /// New settings from a reloaded policy; slots in flight, the level and the learned
    /// baselines are kept.
    pub fn reconfigure(&self, cfg: &ProtectConfig) {
        self.slots.reconfigure(&cfg.slots);
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

    fn publish(&self, level: Brownout) {
        self.level.store(level as u8, Ordering::Relaxed);
        self.gauges.level.set(level as i64);
    }
}

/// How long a bulk client shed by the brownout should wait: until the level could next relax.
pub fn retry_after(cfg: &BrownoutConfig) -> Duration {
    cfg.interval * cfg.relax_after
}
