//! Surge detection: is a route's level sending far more than it usually does?
//!
//! One [`SurgeDetector`] follows one rate (records/s or bytes/s of one route and level). Each
//! tick it is given how much arrived since the last one and keeps two exponentially weighted
//! averages of the rate: a short one (`window`, the rate "now") and a long one (`baseline`, the
//! rate "usually"). The ratio of the two is the surge signal:
//! - for the first `warmup` the baseline is only learned, never judged, so a guard that just
//!   started raises no alarm;
//! - a surge starts when the ratio stays above `factor` for `hold`, and ends when it stays
//!   under `clear_factor` for `hold` (hysteresis: between the two it stays as it is);
//! - the baseline does not learn while the ratio is above `factor` (surging or about to), so a
//!   long surge never becomes the new normal;
//! - rates under `min_rate` are never a surge, so 0 → 3 records/s is not an alarm.
//!
//! Pure: time is what the caller says it is.

use std::time::Duration;

use serde::Serialize;

/// Settings (policy `protect.surge`).
#[derive(Debug, Clone, Serialize)]
pub struct SurgeConfig {
    pub enabled: bool,
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub interval: Duration,
    pub factor: f64,
    pub clear_factor: f64,
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub hold: Duration,
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub warmup: Duration,
    /// Half-life of the short-term rate.
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub window: Duration,
    /// Half-life of the baseline.
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub baseline_half_life: Duration,
    /// Records per second under which a level is never surging (bytes: × 256).
    pub min_rate: f64,
}

impl Default for SurgeConfig {
    fn default() -> Self {
        SurgeConfig {
            enabled: true,
            interval: Duration::from_secs(1),
            factor: 3.0,
            clear_factor: 1.5,
            hold: Duration::from_secs(30),
            warmup: Duration::from_secs(300),
            window: Duration::from_secs(10),
            baseline_half_life: Duration::from_secs(3600),
            min_rate: 1.0,
        }
    }
}

/// What a tick changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurgeEvent {
    Started,
    Cleared,
}

#[derive(Debug, Clone, Default)]
pub struct SurgeDetector {
    short: f64,
    baseline: f64,
    /// Time observed so far, up to the warmup.
    observed: Duration,
    /// How long the ratio has been past the threshold that would flip `active`.
    past_threshold: Duration,
    active: bool,
}

/// `1 - 2^(-dt/half_life)`: the weight of a new observation lasting `dt`.
fn weight(dt: Duration, half_life: Duration) -> f64 {
    if half_life.is_zero() {
        return 1.0;
    }
    1.0 - (-(dt.as_secs_f64() / half_life.as_secs_f64()) * std::f64::consts::LN_2).exp()
}

impl SurgeDetector {
    pub fn active(&self) -> bool {
        self.active
    }

    /// Short-term rate over the baseline; 0 until warmed up.
    pub fn ratio(&self, cfg: &SurgeConfig, min_rate: f64) -> f64 {
        if self.observed < cfg.warmup {
            return 0.0;
        }
        self.short / self.baseline.max(min_rate)
    }

    /// Learned usual rate, per second.
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// Feeds `amount` arrived over the last `dt`. `min_rate` is the rate (per second) under
    /// which nothing is a surge.
    pub fn observe(
        &mut self,
        cfg: &SurgeConfig,
        dt: Duration,
        amount: f64,
        min_rate: f64,
    ) -> Option<SurgeEvent> {
        if dt.is_zero() {
            return None;
        }
        let rate = amount / dt.as_secs_f64();
        let warming = self.observed < cfg.warmup;
        if self.observed.is_zero() {
            self.short = rate;
            self.baseline = rate;
        } else {
            self.short += weight(dt, cfg.window) * (rate - self.short);
        }
        if warming {
            // Learn the baseline as a plain average over the warmup, so the first seconds do
            // not weigh more than the rest.
            let seen = self.observed.as_secs_f64();
            let total = seen + dt.as_secs_f64();
            self.baseline = (self.baseline * seen + rate * dt.as_secs_f64()) / total;
            self.observed = (self.observed + dt).min(cfg.warmup);
            return None;
        }

        let ratio = self.short / self.baseline.max(min_rate);
        let above = ratio > cfg.factor && self.short > min_rate;
        if !above && !self.active {
            self.baseline += weight(dt, cfg.baseline_half_life) * (rate - self.baseline);
        }
        let crossing = if self.active {
            ratio < cfg.clear_factor
        } else {
            above
        };
        if !crossing {
            self.past_threshold = Duration::ZERO;
            return None;
        }
        self.past_threshold += dt;
        if self.past_threshold < cfg.hold {
            return None;
        }
        self.past_threshold = Duration::ZERO;
        self.active = !self.active;
        Some(if self.active {
            SurgeEvent::Started
        } else {
            SurgeEvent::Cleared
        })
    }
}
