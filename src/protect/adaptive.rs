//! Adaptive upstream concurrency: how many `normal` and how many `bulk` requests may be in
//! flight to the upstream, set from the upstream's own latency. A pure gradient limiter, one per
//! class, fed one latency window at a time (in the spirit of Envoy's adaptive concurrency filter
//! and Netflix concurrency-limits' gradient limiters).
//!
//! - **The no-load baseline** is the class's minimum RTT, measured by a *probe*: the class is
//!   held to `min_limit` requests in flight for [`PROBE_WINDOWS`] windows, and the lowest of
//!   their medians is the min RTT (the first windows still see exchanges started at the old
//!   limit). A later window with a lower median lowers it at once. The first probe starts with
//!   the class's first traffic (a guard that starts in the middle of a surge would otherwise
//!   learn the surge's queueing as normal), and one runs every `min_rtt_interval` after, so a
//!   baseline that went stale (the upstream got slower for good) is measured again.
//! - **Shrink as latency grows.** A window whose median is above the *target*,
//!   `max(min_rtt × tolerance, min_rtt + jitter)`, is queueing inside the upstream: the limit is
//!   multiplied by the gradient `target / median`, at most quartering it per window
//!   ([`MIN_GRADIENT`]).
//! - **Probe back up while healthy.** A window at or under the target adds `⌈√limit⌉` (additive:
//!   from 1 to 128 in about twenty windows).
//! - **Bounded.** The limit stays within `[min_limit, max]`, where `max` is the class's configured
//!   ceiling (`bulk_max_in_flight` for bulk; the slots not reserved for critical for normal).
//!
//! - **Bulk yields to critical** from a window that shrank bulk's limit until one that grows
//!   it (`bulk_yields_to_critical`, applied by [`super::slots`]): a bulk request is not sent
//!   while a critical one is in flight, since the upstream is queueing.
//!
//! Critical requests are never limited by this: they keep their reserve and their share of the
//! pool. A window with no answered exchange holds the limit (failures carry no service latency;
//! they are the brownout controller's signal).

use std::time::Duration;

use serde::Serialize;

use super::Priority;

/// The classes with an adaptive limit, in the order of [`Adaptive`]'s arrays.
pub const CLASSES: [Priority; 2] = [Priority::Normal, Priority::Bulk];

/// Index of `class` in [`CLASSES`]; `None` for critical, which is never limited.
pub fn slot_of(class: Priority) -> Option<usize> {
    match class {
        Priority::Critical => None,
        Priority::Normal => Some(0),
        Priority::Bulk => Some(1),
    }
}

/// The limiter's settings (policy `protect.adaptive`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptiveConfig {
    pub enabled: bool,
    /// How often a class's limit is updated from its latency window.
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub interval: Duration,
    /// A window's median up to this multiple of the min RTT is not queueing.
    pub tolerance: f64,
    /// ... nor is one up to this much above the min RTT (keeps scheduling noise on a fast
    /// upstream from looking like queueing).
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub jitter: Duration,
    /// Lowest limit, and the concurrency a probe measures the min RTT at. Default 3, as
    /// Envoy's `min_concurrency`: a probe holds the class there while requests started before
    /// it drain, and one exchange held long (a slow or long-polling endpoint) must not stall
    /// its whole class meanwhile. An upstream that can degrade to one worker wants 1.
    pub min_limit: u32,
    /// Fewest answered exchanges for a window to be judged; a thinner window keeps
    /// accumulating, for at most [`MAX_WINDOW_INTERVALS`] intervals.
    pub min_samples: u64,
    /// Time between two min RTT probes.
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub min_rtt_interval: Duration,
    /// While bulk's last judged window was over its target, bulk is not sent while a critical
    /// request is in flight (see [`super::slots`]).
    pub bulk_yields_to_critical: bool,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: false,
            interval: Duration::from_millis(100),
            tolerance: 1.5,
            jitter: Duration::from_millis(2),
            min_limit: 3,
            min_samples: 5,
            min_rtt_interval: Duration::from_secs(30),
            bulk_yields_to_critical: true,
        }
    }
}

/// A window thinner than `min_samples` is judged anyway after this many intervals, if it has
/// at least one answered exchange.
pub const MAX_WINDOW_INTERVALS: u32 = 10;

/// What a class's answered exchanges did over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub answered: u64,
    /// Median latency of the answered exchanges.
    pub median: Option<Duration>,
}

/// The deepest cut of one window: the limit is at most quartered. Deeper than gradient2's and
/// Envoy's halving, because an upstream that lost most of its capacity at once must stop being
/// fed within a few windows (every request in flight there is a wait for a critical one).
pub const MIN_GRADIENT: f64 = 0.25;

/// Ready windows a probe judges; the min RTT is the lowest of their medians, since the first
/// ones still see exchanges that started at the old limit (they can only be slower).
pub const PROBE_WINDOWS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Judging windows against the min RTT; the next probe is due at `probe_at`.
    Tracking { probe_at: Duration },
    /// Held at `min_limit` to measure the min RTT; `resume` is the limit to go back to.
    Probing {
        resume: f64,
        windows: u32,
        lowest: Option<Duration>,
        /// When it gives up waiting for windows (a class with too little traffic to measure).
        until: Duration,
    },
}

/// One class's limiter. Time is a [`Duration`] since any fixed origin.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: f64,
    min_rtt: Option<Duration>,
    phase: Phase,
}

/// What an update did, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No judgment: an empty window, or a probe still measuring.
    Hold,
    Grew,
    Shrank,
    /// A probe began (the limit is `min_limit` until it ends).
    ProbeStarted,
    /// A probe measured the min RTT; the limit is back to what it was.
    Probed,
}

impl Limiter {
    /// A limiter at `max` with no baseline: the class's first answered window starts a probe.
    pub fn new(max: u32) -> Limiter {
        Limiter {
            limit: f64::from(max.max(1)),
            min_rtt: None,
            phase: Phase::Tracking {
                probe_at: Duration::ZERO,
            },
        }
    }

    /// The current limit, within `[min_limit, max]`.
    pub fn limit(&self, cfg: &AdaptiveConfig, max: u32) -> u32 {
        let max = max.max(1);
        let floor = cfg.min_limit.clamp(1, max);
        if let Phase::Probing { .. } = self.phase {
            return floor;
        }
        // `as` saturates; the limit is kept finite and non-negative.
        (self.limit.floor() as u32).clamp(floor, max)
    }

    /// The measured no-load latency, once a probe measured one.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Whether a window of `answered` exchanges gathered over `intervals` update intervals is
    /// ready to be judged.
    pub fn ready(cfg: &AdaptiveConfig, answered: u64, intervals: u32) -> bool {
        answered >= cfg.min_samples.max(1) || (answered > 0 && intervals >= MAX_WINDOW_INTERVALS)
    }

    /// Judges one window (a ready one, or an empty one, which only lets a due probe start) at
    /// `now` against the class's ceiling `max`.
    pub fn update(&mut self, cfg: &AdaptiveConfig, max: u32, now: Duration, w: Window) -> Step {
        let max_f = f64::from(max.max(1));
        let floor = f64::from(cfg.min_limit.clamp(1, max.max(1)));
        self.limit = self.limit.clamp(floor, max_f);
        let median = w.median.filter(|_| w.answered > 0);
        match self.phase {
            Phase::Probing {
                resume,
                windows,
                lowest,
                until,
            } => {
                let lowest = match (lowest, median) {
                    (Some(l), Some(m)) => Some(l.min(m)),
                    (l, m) => l.or(m),
                };
                let windows = windows + u32::from(median.is_some());
                if windows < PROBE_WINDOWS && now < until {
                    self.phase = Phase::Probing {
                        resume,
                        windows,
                        lowest,
                        until,
                    };
                    return Step::Hold;
                }
                // Measured, or given up on: what it saw is the baseline (or the old one stays).
                self.min_rtt = lowest.or(self.min_rtt);
                self.limit = resume.clamp(floor, max_f);
                self.phase = Phase::Tracking {
                    probe_at: now.saturating_add(cfg.min_rtt_interval),
                };
                Step::Probed
            }
            Phase::Tracking { probe_at } => {
                let Some(min_rtt) = self.min_rtt else {
                    // No baseline yet: the first traffic is measured before anything is judged.
                    if median.is_none() {
                        return Step::Hold;
                    }
                    return self.start_probe(cfg, now);
                };
                if now >= probe_at {
                    return self.start_probe(cfg, now);
                }
                let Some(median) = median else {
                    return Step::Hold;
                };
                // A lower median is a better baseline, whatever the probe said.
                let min_rtt = min_rtt.min(median);
                self.min_rtt = Some(min_rtt);
                let target = target(cfg, min_rtt);
                if median <= target {
                    self.limit = (self.limit + self.limit.sqrt().ceil()).min(max_f);
                    Step::Grew
                } else {
                    let gradient =
                        (target.as_secs_f64() / median.as_secs_f64()).clamp(MIN_GRADIENT, 1.0);
                    self.limit = (self.limit * gradient).max(floor);
                    Step::Shrank
                }
            }
        }
    }

    /// Holds the class at `min_limit` for [`PROBE_WINDOWS`] ready windows, or for as long as
    /// that takes a class with just enough traffic (`PROBE_WINDOWS × MAX_WINDOW_INTERVALS`
    /// intervals), never longer: an idle class is not left held down.
    fn start_probe(&mut self, cfg: &AdaptiveConfig, now: Duration) -> Step {
        let longest = cfg
            .interval
            .checked_mul(PROBE_WINDOWS * MAX_WINDOW_INTERVALS)
            .unwrap_or(Duration::MAX);
        self.phase = Phase::Probing {
            resume: self.limit,
            windows: 0,
            lowest: None,
            until: now.saturating_add(longest),
        };
        Step::ProbeStarted
    }

    /// Makes a probe due at once (tests; a future admin action).
    pub fn probe_now(&mut self, now: Duration) {
        if let Phase::Tracking { .. } = self.phase {
            self.phase = Phase::Tracking { probe_at: now };
        }
    }
}

/// The latency under which a window is not queueing: `max(min_rtt × tolerance, min_rtt +
/// jitter)`.
pub fn target(cfg: &AdaptiveConfig, min_rtt: Duration) -> Duration {
    let scaled = Duration::try_from_secs_f64(min_rtt.as_secs_f64() * cfg.tolerance.max(1.0))
        .unwrap_or(Duration::MAX);
    scaled.max(min_rtt.saturating_add(cfg.jitter))
}
