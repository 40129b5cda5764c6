//! `protect`: the upstream slots by priority, the brownout controller and surge detection.
//!
//! Every field has a default, so these functions start from [`ProtectConfig::default`] and
//! only overwrite what the file sets; the checks then run on the resolved values, since a
//! default can clash with a value the file did set (a `critical_reserved` above the default
//! `max_in_flight`, say).

use std::time::Duration;

use crate::budget::BudgetClock;
use serde_saphyr::Spanned;

use super::{Compiler, line};
use crate::policy::raw::{RawAdaptive, RawBrownout, RawProtect, RawSurge};
use crate::protect::{
    AdaptiveConfig, Brownout, BrownoutConfig, Priority, ProtectConfig, SlotsConfig, SurgeConfig,
};
use crate::records::Sample;
use crate::units::HumanDuration;

/// The brownout controller and the surge detector tick at most this often (a zero interval
/// would spin a core) and at least this often (a tick farther away is no protection, and
/// `interval * relax_after` must stay far from `Duration`'s limit).
const TICK_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

/// Resolves `protect`: slots, brownout and surge detection, each checked against itself.
pub(super) fn compile_protect<C: BudgetClock>(
    c: &mut Compiler<C>,
    raw: &RawProtect,
) -> ProtectConfig {
    let mut cfg = ProtectConfig::default();
    slot_sizes(c, raw, &mut cfg.slots);
    slot_queues(raw, &mut cfg.slots);
    brownout_ticks(c, &raw.brownout, &mut cfg.brownout);
    brownout_thresholds(c, &raw.brownout, &mut cfg.brownout);
    surge(c, &raw.surge, &mut cfg.surge);
    adaptive(c, &raw.adaptive, &cfg.slots, &mut cfg.adaptive);
    cfg
}

/// Resolves `max_in_flight`, `critical_reserved` and `bulk_max_in_flight`, which must leave
/// every class a slot.
fn slot_sizes<C: BudgetClock>(c: &mut Compiler<C>, raw: &RawProtect, s: &mut SlotsConfig) {
    if let Some(m) = &raw.max_in_flight {
        if m.value == 0 {
            c.problem(line(m), "protect.max_in_flight", "must be at least 1");
        }
        // The other two default to shares of max_in_flight, so they follow it.
        s.max_in_flight = m.value.max(1);
        s.critical_reserved = s.max_in_flight / 4;
        s.bulk_max_in_flight = (s.max_in_flight / 2).max(1);
    }
    if let Some(r) = &raw.critical_reserved {
        s.critical_reserved = r.value;
    }
    if s.critical_reserved >= s.max_in_flight {
        c.problem(
            raw.critical_reserved.as_ref().and_then(line),
            "protect.critical_reserved",
            format!(
                "{} leaves no slot of max_in_flight {} for normal and bulk routes",
                s.critical_reserved, s.max_in_flight
            ),
        );
    }
    let shared = s.max_in_flight.saturating_sub(s.critical_reserved).max(1);
    match &raw.bulk_max_in_flight {
        Some(b) if b.value == 0 => {
            c.problem(line(b), "protect.bulk_max_in_flight", "must be at least 1");
        }
        Some(b) if b.value > shared => c.problem(
            line(b),
            "protect.bulk_max_in_flight",
            format!(
                "{} is more than the {shared} slots left after critical_reserved",
                b.value
            ),
        ),
        Some(b) => s.bulk_max_in_flight = b.value,
        None => s.bulk_max_in_flight = s.bulk_max_in_flight.min(shared),
    }
}

/// Resolves `queue_timeout` and `max_queued`, per priority; any value is valid.
fn slot_queues(raw: &RawProtect, s: &mut SlotsConfig) {
    for p in Priority::ALL {
        let (t, q) = match p {
            Priority::Critical => (&raw.queue_timeout.critical, &raw.max_queued.critical),
            Priority::Normal => (&raw.queue_timeout.normal, &raw.max_queued.normal),
            Priority::Bulk => (&raw.queue_timeout.bulk, &raw.max_queued.bulk),
        };
        if let Some(t) = t {
            s.queue_timeout[p.index()] = t.0;
        }
        if let Some(&q) = q.as_ref() {
            s.max_queued[p.index()] = q;
        }
    }
}

/// Resolves the brownout's `enabled`, `interval` and the durations it counts in intervals
/// (`raise_after`, `relax_after`, `warmup`).
fn brownout_ticks<C: BudgetClock>(c: &mut Compiler<C>, b: &RawBrownout, out: &mut BrownoutConfig) {
    out.enabled = b.enabled.unwrap_or(true);
    if let Some(d) = b.interval {
        out.interval = d.0;
    }
    tick_in_range(c, out.interval, "protect.brownout.interval");
    // The controller counts ticks, so a duration becomes the ticks that cover it, at least one.
    let ticks = |d: Duration, interval: Duration| -> u32 {
        let n = d.as_nanos().div_ceil(interval.as_nanos().max(1));
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    };
    let raise = b
        .raise_after
        .map_or(out.interval * out.raise_after, |d| d.0);
    let relax = b
        .relax_after
        .map_or(out.interval * out.relax_after, |d| d.0);
    if relax < raise {
        c.problem(
            None,
            "protect.brownout.relax_after",
            "must be at least raise_after (relaxing slower than raising is the hysteresis)",
        );
    }
    out.raise_after = ticks(raise, out.interval);
    out.relax_after = ticks(relax, out.interval);
    out.warmup = ticks(
        b.warmup.map_or(out.interval * out.warmup, |d| d.0),
        out.interval,
    );
}

/// Resolves what the brownout judges congestion by and how far it goes: latency factors,
/// error and shed rates, samples, and `max_level`.
fn brownout_thresholds<C: BudgetClock>(
    c: &mut Compiler<C>,
    b: &RawBrownout,
    out: &mut BrownoutConfig,
) {
    out.latency_factor = factor_above_one(
        c,
        &b.latency_factor,
        out.latency_factor,
        "protect.brownout.latency_factor",
    );
    if let Some(f) = &b.recover_factor {
        out.recover_factor = f.value;
    }
    if !(out.recover_factor >= 1.0 && out.recover_factor <= out.latency_factor) {
        c.problem(
            b.recover_factor.as_ref().and_then(line),
            "protect.brownout.recover_factor",
            format!(
                "must be at least 1 and at most latency_factor ({})",
                out.latency_factor
            ),
        );
    }
    if let Some(d) = b.latency_floor {
        out.latency_floor = d.0;
    }
    out.error_rate = b.error_rate.map_or(out.error_rate, share);
    out.shed_rate = b.shed_rate.map_or(out.shed_rate, share);
    min_samples(
        c,
        &b.min_samples,
        "protect.brownout.min_samples",
        &mut out.min_samples,
    );
    if let Some(f) = b.info_sample {
        out.info_sample = Sample::per_million(f.per_million);
    }
    if let Some(f) = b.warn_sample {
        out.warn_sample = Sample::per_million(f.per_million);
    }
    if let Some(l) = b.max_level {
        if l == Brownout::Off {
            c.problem(
                None,
                "protect.brownout.max_level",
                "off is not a level to reach; write enabled: false to turn brownout off",
            );
        }
        out.max_level = l;
    }
}

/// Resolves `surge`: its timing, and the factors that start and end a surge.
fn surge<C: BudgetClock>(c: &mut Compiler<C>, r: &RawSurge, out: &mut SurgeConfig) {
    out.enabled = r.enabled.unwrap_or(true);
    let set = |slot: &mut Duration, v: Option<HumanDuration>| {
        if let Some(d) = v {
            *slot = d.0;
        }
    };
    set(&mut out.interval, r.interval);
    tick_in_range(c, out.interval, "protect.surge.interval");
    set(&mut out.hold, r.hold);
    set(&mut out.warmup, r.warmup);
    set(&mut out.window, r.window);
    set(&mut out.baseline_half_life, r.baseline_half_life);
    out.factor = factor_above_one(c, &r.factor, out.factor, "protect.surge.factor");
    if let Some(f) = &r.clear_factor {
        out.clear_factor = f.value;
    }
    if !(out.clear_factor >= 1.0 && out.clear_factor < out.factor) {
        c.problem(
            r.clear_factor.as_ref().and_then(line),
            "protect.surge.clear_factor",
            format!("must be at least 1 and below factor ({})", out.factor),
        );
    }
    if let Some(rate) = r.min_rate {
        out.min_rate = rate.per_second();
    }
}

/// Most `tolerance`: past it the limiter would never see queueing.
const MAX_TOLERANCE: f64 = 100.0;

/// Resolves `adaptive`: its timing, tolerance and floor.
fn adaptive<C: BudgetClock>(
    c: &mut Compiler<C>,
    r: &RawAdaptive,
    slots: &SlotsConfig,
    out: &mut AdaptiveConfig,
) {
    out.enabled = r.enabled.unwrap_or(false);
    if let Some(d) = r.interval {
        out.interval = d.0;
    }
    tick_in_range(c, out.interval, "protect.adaptive.interval");
    if let Some(t) = &r.tolerance {
        if !(t.value > 1.0 && t.value <= MAX_TOLERANCE) {
            c.problem(
                line(t),
                "protect.adaptive.tolerance",
                format!("must be a number above 1 and at most {MAX_TOLERANCE}"),
            );
        }
        out.tolerance = t.value;
    }
    if let Some(d) = r.jitter {
        out.jitter = d.0;
    }
    if let Some(m) = &r.min_limit {
        if m.value == 0 || m.value > slots.bulk_max_in_flight {
            c.problem(
                line(m),
                "protect.adaptive.min_limit",
                format!(
                    "must be at least 1 and at most bulk_max_in_flight ({})",
                    slots.bulk_max_in_flight
                ),
            );
        }
        out.min_limit = m.value.max(1);
    }
    min_samples(
        c,
        &r.min_samples,
        "protect.adaptive.min_samples",
        &mut out.min_samples,
    );
    if let Some(d) = r.min_rtt_interval {
        out.min_rtt_interval = d.0;
    }
    if let Some(y) = r.bulk_yields_to_critical {
        out.bulk_yields_to_critical = y;
    }
    let ten = out.interval.checked_mul(10).unwrap_or(Duration::MAX);
    if out.min_rtt_interval < ten {
        c.problem(
            None,
            "protect.adaptive.min_rtt_interval",
            format!(
                "must be at least ten intervals ({ten:?}): each measurement holds the limit down"
            ),
        );
    }
}

/// Resolves a `min_samples` field (at least 1) into `out`.
fn min_samples<C: BudgetClock>(
    c: &mut Compiler<C>,
    n: &Option<Spanned<u64>>,
    path: &str,
    out: &mut u64,
) {
    if let Some(n) = n {
        if n.value == 0 {
            c.problem(line(n), path, "must be at least 1");
        }
        *out = n.value.max(1);
    }
}

/// Checks that a tick `interval` is within [`TICK_RANGE`].
fn tick_in_range<C: BudgetClock>(c: &mut Compiler<C>, interval: Duration, path: &str) {
    let (min, max) = TICK_RANGE;
    if !(min..=max).contains(&interval) {
        c.problem(
            None,
            path,
            format!("must be between 10ms and 1h, not {interval:?}"),
        );
    }
}

/// Resolves a multiplier that must be above 1 (`latency_factor`, `surge.factor`): the value
/// given, or `default`.
fn factor_above_one<C: BudgetClock>(
    c: &mut Compiler<C>,
    raw: &Option<Spanned<f64>>,
    default: f64,
    path: &str,
) -> f64 {
    let Some(f) = raw else {
        return default;
    };
    if !(f.value > 1.0 && f.value.is_finite()) {
        c.problem(line(f), path, "must be a number above 1");
    }
    f.value
}

/// A fraction as a share in `0.0..=1.0`.
fn share(f: crate::units::Fraction) -> f64 {
    f64::from(f.per_million) / 1e6
}
