//! The brownout controller: a pure state machine that turns per-class upstream health signals
//! into a [`Brownout`] level, one tick at a time.
//!
//! Each tick it gets, per priority class, what the upstream did in the last interval (responses,
//! failures, p90 latency) and judges the interval *congested*, *healthy* or in between:
//! - congested: some class's failure share (5xx answers, failed exchanges) is above
//!   `error_rate`, or its share of requests that found no upstream slot in their wait (an
//!   upstream saturated at the concurrency the guard allows it) is above `shed_rate`, or (once
//!   its baseline has warmed up) its p90 latency is above `latency_factor` × its baseline;
//! - healthy: every class with enough responses is under `recover_factor` × baseline and under
//!   half of both shares;
//! - in between: neither, which holds the level and restarts both streaks.
//!
//! The level rises one step after `raise_after` congested ticks in a row and falls one step
//! after `relax_after` healthy ticks in a row. Raising fast and relaxing slowly is the
//! hysteresis: a backend on the edge is given time to recover before bulk comes back, and the
//! gap between the two factors keeps a noisy but healthy signal from ever rising.
//!
//! A class's baseline is an exponentially weighted average of its p90 latency over the ticks
//! that were not congested for it (it learns a better baseline four times faster than a worse
//! one, so a slow start does not stick). A class with fewer than `min_samples` responses in a
//! tick is not judged that tick. A tick with no judged class counts as healthy: with bulk shed
//! there may be no traffic left to judge, and relaxing step by step is how the guard probes
//! whether the upstream has recovered.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Priority;
use crate::records::Sample;

/// How far bulk traffic is tightened, least valuable data first. Critical routes are never
/// browned out, and neither are normal ones: brownout only ever takes from `bulk` routes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    Deserialize,
    Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Brownout {
    /// Policy budgets only.
    #[default]
    Off = 0,
    /// `trace` and `debug` records on bulk routes are dropped.
    DropVerbose = 1,
    /// ... and `info` records are sampled down to `info_sample`.
    SampleInfo = 2,
    /// ... and `warn` records are sampled down to `warn_sample`.
    SampleWarn = 3,
    /// Bulk requests are refused whole with 503 and `Retry-After`.
    ShedBulk = 4,
}

impl Brownout {
    pub const ALL: [Brownout; 5] = [
        Brownout::Off,
        Brownout::DropVerbose,
        Brownout::SampleInfo,
        Brownout::SampleWarn,
        Brownout::ShedBulk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Brownout::Off => "off",
            Brownout::DropVerbose => "drop_verbose",
            Brownout::SampleInfo => "sample_info",
            Brownout::SampleWarn => "sample_warn",
            Brownout::ShedBulk => "shed_bulk",
        }
    }

    pub fn from_u8(v: u8) -> Brownout {
        Brownout::ALL[usize::from(v).min(Brownout::ALL.len() - 1)]
    }

    fn up(self) -> Brownout {
        Brownout::from_u8(self as u8 + 1)
    }

    fn down(self) -> Brownout {
        Brownout::from_u8((self as u8).saturating_sub(1))
    }
}

/// The controller's settings (policy `protect.brownout`).
#[derive(Debug, Clone, Serialize)]
pub struct BrownoutConfig {
    pub enabled: bool,
    /// Time between two ticks.
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub interval: Duration,
    pub latency_factor: f64,
    pub recover_factor: f64,
    /// Latencies at or under this never count as congestion, however low the baseline.
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub latency_floor: Duration,
    /// Failure share (5xx, refused, reset, timed out) above which a tick is congested.
    pub error_rate: f64,
    /// Share of requests finding no upstream slot in their wait above which a tick is
    /// congested: shedding whole bulk batches is what tightening them should prevent.
    pub shed_rate: f64,
    /// Congested ticks in a row before the level rises a step.
    pub raise_after: u32,
    /// Healthy ticks in a row before the level falls a step.
    pub relax_after: u32,
    /// Ticks with enough responses before a class's latency is judged.
    pub warmup: u32,
    /// Fewest responses of a class in a tick for it to be judged.
    pub min_samples: u64,
    /// Weight of a new tick in the baseline average.
    pub baseline_weight: f64,
    #[serde(serialize_with = "serialize_sample")]
    pub info_sample: Sample,
    #[serde(serialize_with = "serialize_sample")]
    pub warn_sample: Sample,
    pub max_level: Brownout,
}

impl Default for BrownoutConfig {
    fn default() -> Self {
        BrownoutConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            latency_factor: 2.0,
            recover_factor: 1.5,
            latency_floor: Duration::from_millis(25),
            error_rate: 0.1,
            shed_rate: 0.01,
            raise_after: 2,
            relax_after: 10,
            warmup: 10,
            min_samples: 10,
            baseline_weight: 0.05,
            info_sample: Sample::per_million(100_000),
            warn_sample: Sample::per_million(250_000),
            max_level: Brownout::ShedBulk,
        }
    }
}

fn serialize_sample<S: serde::Serializer>(sample: &Sample, s: S) -> Result<S::Ok, S::Error> {
    let f = crate::units::Fraction {
        per_million: sample.per_million,
    };
    s.collect_str(&f)
}

/// What one class's upstream exchanges did during one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassSignal {
    /// Exchanges that ended (answered or failed).
    pub responses: u64,
    /// Of them: 5xx answers, refused or reset connections, timeouts.
    pub failures: u64,
    /// Requests that found no upstream slot within their wait (not counted in `responses`):
    /// the upstream is saturated at the concurrency the guard allows it.
    pub shed: u64,
    /// 90th percentile latency of the answered ones.
    pub p90: Option<Duration>,
}

/// How a tick was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Congested,
    Neutral,
    Healthy,
}

/// A change of level, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Brownout,
    pub to: Brownout,
    /// What made the tick congested (or `recovered`).
    pub cause: &'static str,
}

#[derive(Debug, Clone, Copy, Default)]
struct Baseline {
    /// Seconds; meaningful once `ticks > 0`.
    latency: f64,
    ticks: u32,
}

#[derive(Debug)]
pub struct Controller {
    cfg: BrownoutConfig,
    level: Brownout,
    baselines: [Baseline; Priority::COUNT],
    congested: u32,
    healthy: u32,
}

impl Controller {
    pub fn new(cfg: BrownoutConfig) -> Controller {
        Controller {
            cfg,
            level: Brownout::Off,
            baselines: [Baseline::default(); Priority::COUNT],
            congested: 0,
            healthy: 0,
        }
    }

    pub fn level(&self) -> Brownout {
        self.level
    }

    /// The learned p90 baseline of `class`, once it has one.
    pub fn baseline(&self, class: Priority) -> Option<Duration> {
        let b = &self.baselines[class.index()];
        (b.ticks > 0).then(|| Duration::from_secs_f64(b.latency))
    }

    /// Keeps the learned baselines and the level, with new settings (a policy reload).
    pub fn reconfigure(&mut self, cfg: BrownoutConfig) {
        self.level = self.level.min(cfg.max_level);
        if !cfg.enabled {
            self.level = Brownout::Off;
        }
        self.cfg = cfg;
    }

    /// Judges one tick's signals, indexed by [`Priority::index`], and moves the level.
    pub fn tick(
        &mut self,
        signals: &[ClassSignal; Priority::COUNT],
    ) -> (Verdict, Option<Transition>) {
        let (verdict, cause) = self.judge(signals);
        if !self.cfg.enabled {
            return (verdict, None);
        }
        match verdict {
            Verdict::Congested => {
                self.healthy = 0;
                self.congested += 1;
            }
            Verdict::Healthy => {
                self.congested = 0;
                self.healthy += 1;
            }
            Verdict::Neutral => {
                self.congested = 0;
                self.healthy = 0;
            }
        }
        let from = self.level;
        if self.congested >= self.cfg.raise_after && self.level < self.cfg.max_level {
            self.congested = 0;
            self.level = self.level.up();
        } else if self.healthy >= self.cfg.relax_after && self.level > Brownout::Off {
            self.healthy = 0;
            self.level = self.level.down();
        }
        let transition = (self.level != from).then_some(Transition {
            from,
            to: self.level,
            cause,
        });
        (verdict, transition)
    }

    fn judge(&mut self, signals: &[ClassSignal; Priority::COUNT]) -> (Verdict, &'static str) {
        let cfg = &self.cfg;
        let mut congested: Option<&'static str> = None;
        let mut all_healthy = true;
        for (signal, baseline) in signals.iter().zip(self.baselines.iter_mut()) {
            let attempts = signal.responses + signal.shed;
            if attempts < cfg.min_samples.max(1) {
                continue;
            }
            let failure_share = signal.failures as f64 / signal.responses.max(1) as f64;
            let shed_share = signal.shed as f64 / attempts as f64;
            if failure_share > cfg.error_rate {
                congested.get_or_insert("upstream failures");
            } else if shed_share > cfg.shed_rate {
                congested.get_or_insert("upstream saturated");
            } else if failure_share > cfg.error_rate / 2.0 || shed_share > cfg.shed_rate / 2.0 {
                all_healthy = false;
            }
            let Some(p90) = signal.p90.map(|d| d.as_secs_f64()) else {
                continue;
            };
            let warm = baseline.ticks >= cfg.warmup;
            let reference = baseline.latency.max(cfg.latency_floor.as_secs_f64());
            let slow = warm && p90 > reference * cfg.latency_factor;
            if slow {
                congested.get_or_insert("upstream latency");
            } else {
                if warm && p90 > reference * cfg.recover_factor {
                    all_healthy = false;
                }
                // Learn only from intervals that were not congested for this class, and learn
                // improvements faster than degradations.
                if baseline.ticks == 0 {
                    baseline.latency = p90;
                } else {
                    let w = if p90 < baseline.latency {
                        (cfg.baseline_weight * 4.0).min(1.0)
                    } else {
                        cfg.baseline_weight
                    };
                    baseline.latency += w * (p90 - baseline.latency);
                }
                baseline.ticks = baseline.ticks.saturating_add(1);
            }
        }
        match congested {
            Some(cause) => (Verdict::Congested, cause),
            None if all_healthy => (Verdict::Healthy, "recovered"),
            None => (Verdict::Neutral, ""),
        }
    }
}
