//! The guard's background tasks: the protection controller (brownout and surge detectors) and
//! the eviction of idle client keys. Each runs on the main runtime, off the request workers,
//! until [`App`](super::App) aborts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::protect::{SurgeConfig, SurgeDetector, SurgeEvent};
use crate::proxy::{Shared, Snapshot};
use crate::records::Level;

/// The surge detectors of every route and level with records, keyed by route name so that a
/// policy reload keeps what they learned.
#[derive(Default)]
struct Surges {
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
    fn tick(&mut self, snap: &Snapshot, metrics: &Metrics, cfg: &SurgeConfig, dt: Duration) {
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

/// The controller task: ticks the brownout controller every `protect.brownout.interval`, the
/// surge detectors every `protect.surge.interval` and the adaptive concurrency limiters every
/// `protect.adaptive.interval`, reading the settings of the policy in force at each tick.
pub async fn run_controller(shared: Arc<Shared>) {
    let mut surges = Surges::default();
    let start = tokio::time::Instant::now();
    let mut next_brownout = start;
    let mut next_surge = start;
    let mut last_surge = start;
    let mut next_adaptive = start;
    loop {
        let (brownout_every, surge_every, adaptive_every) = {
            let snap = shared.policy.load();
            let p = &snap.policy.protect;
            (p.brownout.interval, p.surge.interval, p.adaptive.interval)
        };
        let next = next_brownout.min(next_surge).min(next_adaptive);
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        if now >= next_brownout {
            shared.protection.tick();
            next_brownout = now + brownout_every;
        }
        if now >= next_adaptive {
            shared.protection.adapt();
            next_adaptive = now + adaptive_every;
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

/// Evicts idle client keys on the policy's interval. The pass walks every key, so it runs on
/// the blocking pool, off the request workers. (The tracked-keys gauges are read at scrape time.)
pub async fn evict_idle_keys(shared: Arc<Shared>) {
    loop {
        let interval = shared.policy.load().policy.limits.key_eviction_interval;
        tokio::time::sleep(interval).await;
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || evict_pass(&shared)).await;
    }
}

/// Forgets every client key of the active policy whose budget is back to a fresh state.
pub fn evict_pass(shared: &Shared) {
    shared.policy.load().policy.evict_idle_keys();
}
