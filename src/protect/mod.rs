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
pub mod slots;
pub mod surge;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use prometheus::{Gauge, IntCounter, IntGauge};
use serde::Serialize;

pub use controller::{Brownout, BrownoutConfig, ClassSignal, Controller, Transition, Verdict};
pub use slots::{NoSlot, Slot, SlotsConfig};
pub use surge::{SurgeConfig, SurgeDetector, SurgeEvent};

use crate::error::{GuardError, ShedReason};
use crate::metrics::Metrics;
use crate::policy::Priority;
use crate::policy::store::Snapshot;
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

/// Shared protection state; one per process.
pub struct Protection {
    slots: slots::Slots,
    windows: [Window; Priority::COUNT],
    level: AtomicU8,
    /// Locked only by the controller task, once per tick.
    controller: Mutex<Controller>,
    gauges: Gauges,
}

struct Gauges {
    level: IntGauge,
    raised: IntCounter,
    relaxed: IntCounter,
    /// `upstream_exchanges_total{class, result}`: [class][ok, failed].
    exchanges: [[IntCounter; 2]; Priority::COUNT],
    p90: [Gauge; Priority::COUNT],
    baseline: [Gauge; Priority::COUNT],
    failures: [Gauge; Priority::COUNT],
}

impl Protection {
    pub fn new(cfg: &ProtectConfig, metrics: &Metrics) -> Protection {
        let class = |family: &prometheus::IntGaugeVec| {
            Priority::ALL.map(|p| family.with_label_values(&[p.as_str()]))
        };
        let float = |family: &prometheus::GaugeVec| {
            Priority::ALL.map(|p| family.with_label_values(&[p.as_str()]))
        };
        let m = &metrics.protect;
        Protection {
            slots: slots::Slots::new(&cfg.slots, class(&m.in_flight), class(&m.queued)),
            windows: std::array::from_fn(|_| Window::default()),
            level: AtomicU8::new(Brownout::Off as u8),
            controller: Mutex::new(Controller::new(cfg.brownout.clone())),
            gauges: Gauges {
                level: m.brownout_level.clone(),
                raised: m.brownout_transitions.with_label_values(&["raise"]),
                relaxed: m.brownout_transitions.with_label_values(&["relax"]),
                exchanges: Priority::ALL.map(|p| {
                    ["ok", "failed"].map(|r| m.exchanges.with_label_values(&[p.as_str(), r]))
                }),
                p90: float(&m.upstream_p90),
                baseline: float(&m.upstream_baseline),
                failures: float(&m.upstream_failure_ratio),
            },
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
    pub async fn slot(&self, class: Priority) -> Result<Slot<'_>, GuardError> {
        self.slots.acquire(class).await.map_err(|no_slot| {
            self.windows[class.index()].shed();
            GuardError::Shed {
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

impl crate::decide::BrownoutState for Protection {
    fn level(&self) -> Brownout {
        Protection::level(self)
    }
}

/// The surge detectors of every route and level with records, keyed by route name so that a
/// policy reload keeps what they learned.
#[derive(Default)]
pub struct Surges {
    routes: HashMap<String, RouteSurge>,
}

#[derive(Default)]
struct RouteSurge {
    /// Counter values at the last tick, per level: records, bytes.
    last: [(u64, u64); Level::COUNT],
    records: [SurgeDetector; Level::COUNT],
    bytes: [SurgeDetector; Level::COUNT],
}

/// Bytes per record assumed when turning `min_rate` (records/s) into a byte rate.
const MIN_RATE_BYTES_PER_RECORD: f64 = 256.0;

impl Surges {
    /// Feeds every route's per-level counters since the last tick, `dt` ago, to its detectors
    /// and updates the surge gauges.
    pub fn tick(&mut self, snap: &Snapshot, metrics: &Metrics, cfg: &SurgeConfig, dt: Duration) {
        let policy = &snap.policy;
        self.routes
            .retain(|name, _| policy.routes().iter().any(|r| &r.name == name));
        for (route, rm) in policy.routes().iter().zip(&snap.route_metrics) {
            let Some(records) = &rm.records else {
                continue;
            };
            let fresh = !self.routes.contains_key(&route.name);
            if fresh {
                self.routes
                    .insert(route.name.clone(), RouteSurge::default());
            }
            let Some(state) = self.routes.get_mut(&route.name) else {
                continue;
            };
            for level in Level::ALL {
                let i = level.index();
                let now = (records.received[i].get(), records.bytes_received[i].get());
                let (last_n, last_b) = std::mem::replace(&mut state.last[i], now);
                if fresh {
                    continue;
                }
                let n = now.0.saturating_sub(last_n) as f64;
                let b = now.1.saturating_sub(last_b) as f64;
                let labels = [route.name.as_str(), level.as_str()];
                for (det, amount, min, unit) in [
                    (&mut state.records[i], n, cfg.min_rate, "records"),
                    (
                        &mut state.bytes[i],
                        b,
                        cfg.min_rate * MIN_RATE_BYTES_PER_RECORD,
                        "bytes",
                    ),
                ] {
                    let event = det.observe(cfg, dt, amount, min);
                    if event == Some(SurgeEvent::Started) && unit == "records" {
                        metrics.protect.surges.with_label_values(&labels).inc();
                        crate::warn_limited!(
                            route = route.name.as_str(),
                            level = level.as_str(),
                            ratio = det.ratio(cfg, min),
                            "verbosity surge"
                        );
                    }
                    metrics
                        .protect
                        .surge_ratio
                        .with_label_values(&[labels[0], labels[1], unit])
                        .set(det.ratio(cfg, min));
                }
                let active = state.records[i].active() || state.bytes[i].active();
                metrics
                    .protect
                    .surge_active
                    .with_label_values(&labels)
                    .set(i64::from(active));
            }
        }
    }
}

/// The controller task: ticks the brownout controller every `protect.brownout.interval` and
/// the surge detectors every `protect.surge.interval`, reading the settings of the policy in
/// force at each tick.
pub async fn run_controller(shared: std::sync::Arc<crate::proxy::Shared>) {
    let mut surges = Surges::default();
    let start = tokio::time::Instant::now();
    let mut next_brownout = start;
    let mut next_surge = start;
    let mut last_surge = start;
    loop {
        let (brownout_every, surge_every) = {
            let snap = shared.policy.load();
            let p = &snap.policy.protect;
            (p.brownout.interval, p.surge.interval)
        };
        let next = next_brownout.min(next_surge);
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        if now >= next_brownout {
            shared.protection.tick();
            next_brownout = now + brownout_every;
        }
        if now >= next_surge {
            let snap = shared.policy.load();
            let cfg = &snap.policy.protect.surge;
            if cfg.enabled {
                surges.tick(&snap, &shared.metrics, cfg, now - last_surge);
            }
            last_surge = now;
            next_surge = now + surge_every;
        }
    }
}
