//! What every connection shares: the active policy, published through one `ArcSwap`, the
//! metrics, the upstream's address, protection and the recorder.
//!
//! A request loads the snapshot once and uses it to the end, so a policy swap never changes the
//! rules under a request in flight. The snapshot also carries the per-route metric handles
//! resolved for that policy.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::protect::Protection;
use crate::record::Recorder;

use crate::metrics::{Metrics, RouteMetrics};
use crate::policy::Policy;

/// Where requests go: `host:port` of a plain-HTTP upstream.
#[derive(Debug, Clone)]
pub struct Target {
    pub authority: Authority,
}

/// State shared by every connection.
pub struct Shared {
    pub policy: PolicyStore,
    pub metrics: Arc<Metrics>,
    pub target: Target,
    /// Longest pause allowed between two frames of a request body.
    pub body_idle_timeout: Duration,
    /// Hashes client identities to budget keys, the same in every guard of a fleet.
    pub key_hasher: crate::decide::KeyHasher,
    /// Upstream slots by priority and the brownout level; outlives policy reloads.
    pub protection: Protection,
    /// `serve --record`: samples requests into a traffic file.
    pub recorder: Option<Recorder>,
    /// The guard's own pressure (see `protect::overload`).
    pub overload: crate::protect::overload::Overload,
}

pub struct Snapshot {
    pub policy: Policy,
    /// Indexed like `policy.routes()`.
    pub route_metrics: Vec<RouteMetrics>,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    fn new(policy: Policy, metrics: &Metrics) -> Snapshot {
        let route_metrics = policy.routes().iter().map(|r| metrics.route(r)).collect();
        Snapshot {
            policy,
            route_metrics,
            loaded_at: SystemTime::now(),
        }
    }
}

pub struct PolicyStore {
    current: ArcSwap<Snapshot>,
}

impl PolicyStore {
    pub fn new(policy: Policy, metrics: &Metrics) -> PolicyStore {
        let snapshot = Snapshot::new(policy, metrics);
        publish_info(&snapshot, metrics);
        PolicyStore {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The active snapshot; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `policy` the active one in a single atomic swap.
    pub fn install(&self, policy: Policy, metrics: &Metrics) {
        let snapshot = Snapshot::new(policy, metrics);
        publish_info(&snapshot, metrics);
        self.current.store(Arc::new(snapshot));
    }
}

fn publish_info(s: &Snapshot, metrics: &Metrics) {
    metrics.policy_info.reset();
    metrics
        .policy_info
        .with_label_values(&[s.policy.version_hash.as_str(), s.policy.source.as_str()])
        .set(1);
    let secs = s
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.policy_loaded.set(secs);
    metrics.route_mode.reset();
    for r in s.policy.routes() {
        metrics
            .route_mode
            .with_label_values(&[r.name.as_str(), r.mode.as_str()])
            .set(1);
    }
}
