//! A route's `records`: how its batches are read (format, level field, sampling key, decoding
//! limits) and each level's rule with its budgets.

use crate::budget::BudgetClock;
use serde_saphyr::Spanned;

use super::budgets::{byte_quota, level_budget, request_quota};
use super::{Compiler, DEFAULT_MAX_DECODED, DEFAULT_MAX_RATIO, line};
use crate::policy::Limits;
use crate::policy::raw::{
    RawByteBudget, RawLevelLimits, RawLevelRule, RawRecords, RawRequestBudget, RawScope,
};
use crate::records::{Level, LevelRule, RecordsPolicy, Sample, SampleBy};

/// Resolves a route's `records` into how its batches are read and filtered. `previous` is the
/// same route's in the policy being replaced, whose unchanged level budgets carry over.
pub(super) fn compile_records<C: BudgetClock>(
    c: &mut Compiler<C>,
    raw: &Spanned<RawRecords>,
    at: &str,
    limits: &Limits,
    previous: Option<&RecordsPolicy<C>>,
) -> RecordsPolicy<C> {
    let r = &raw.value;
    let level_field = level_field(c, r, at);
    let sample_by = sample_by(c, r, at);
    let max_ratio = match &r.max_ratio {
        Some(s) if s.value == 0 => {
            c.problem(line(s), format!("{at}.max_ratio"), "must be at least 1");
            1
        }
        Some(s) => s.value,
        None => DEFAULT_MAX_RATIO,
    };
    let rules = level_rules(c, r, at, limits, previous);
    if rules.iter().all(LevelRule::keeps_all) {
        c.warnings.push(format!(
            "{at}: every level keeps all its records; the batch is parsed for nothing"
        ));
    }
    RecordsPolicy {
        format: r.format,
        level_field,
        rules,
        unknown_level: r.unknown_level.unwrap_or(Level::Info),
        on_malformed: r.on_malformed.unwrap_or_default(),
        sample_by,
        max_decoded: r.max_decoded.map_or(DEFAULT_MAX_DECODED, |s| s.0),
        max_ratio: u64::from(max_ratio),
    }
}

/// Resolves `level_field`: where a JSON record keeps its level. OTLP has a field of its own for
/// it, so there the path stays empty.
fn level_field<C: BudgetClock>(c: &mut Compiler<C>, r: &RawRecords, at: &str) -> Vec<Box<[u8]>> {
    match (&r.level_field, r.format.is_otlp()) {
        (Some(f), true) => {
            c.problem(
                line(f),
                format!("{at}.level_field"),
                "OTLP formats read severityNumber and severityText; remove level_field",
            );
            Vec::new()
        }
        (Some(f), false) => field_path(c, f, &format!("{at}.level_field")),
        (None, true) => Vec::new(),
        (None, false) => vec![b"level"[..].into()],
    }
}

/// Resolves `sample_by`: what keeps a sample's records together. An OTLP record has one
/// correlating field, its trace id, under either of its spellings.
fn sample_by<C: BudgetClock>(c: &mut Compiler<C>, r: &RawRecords, at: &str) -> SampleBy {
    match (&r.sample_by, r.format.is_otlp()) {
        (None, _) => SampleBy::Record,
        (Some(f), true) if matches!(f.value.as_str(), "traceId" | "trace_id") => {
            SampleBy::Field(vec![b"traceId"[..].into()])
        }
        (Some(f), true) => {
            c.problem(
                line(f),
                format!("{at}.sample_by"),
                format!("{:?}: OTLP records can be sampled by traceId only", f.value),
            );
            SampleBy::Record
        }
        (Some(f), false) => SampleBy::Field(field_path(c, f, &format!("{at}.sample_by"))),
    }
}

/// Resolves `levels`: every level's rule, `keep` for a level the file does not name.
fn level_rules<C: BudgetClock>(
    c: &mut Compiler<C>,
    r: &RawRecords,
    at: &str,
    limits: &Limits,
    previous: Option<&RecordsPolicy<C>>,
) -> [LevelRule<C>; Level::COUNT] {
    Level::ALL.map(|level| match r.levels.get(level) {
        None => LevelRule::default(),
        Some(rule) => match &rule.value {
            RawLevelRule::Keep => LevelRule::default(),
            RawLevelRule::Drop => LevelRule {
                drop: true,
                ..LevelRule::default()
            },
            RawLevelRule::Limits(lim) => {
                let at = format!("{at}.levels.{level}");
                let previous = previous.map(|p| p.rule(level));
                level_rule(c, lim, &at, line(rule), limits, previous)
            }
        },
    })
}

/// Resolves one level's limits: its sample share and its record and byte budgets.
fn level_rule<C: BudgetClock>(
    c: &mut Compiler<C>,
    lim: &RawLevelLimits,
    at: &str,
    l: Option<usize>,
    limits: &Limits,
    previous: Option<&LevelRule<C>>,
) -> LevelRule<C> {
    if lim.sample.is_none() && lim.rate.is_none() && lim.bytes.is_none() {
        c.problem(
            l,
            at,
            "set at least one of sample, rate and bytes (or write keep or drop)",
        );
    }
    if lim.burst.is_some() && lim.rate.is_none() {
        c.problem(l, format!("{at}.burst"), "burst needs a rate");
    }
    if lim.bytes_burst.is_some() && lim.bytes.is_none() {
        c.problem(l, format!("{at}.bytes_burst"), "bytes_burst needs bytes");
    }
    if lim.per.is_some() && lim.rate.is_none() && lim.bytes.is_none() {
        c.problem(l, format!("{at}.per"), "per needs a rate or bytes");
    }
    let per = lim.per.unwrap_or_default();
    let max_keys = limits.max_tracked_keys;
    let clock = c.clock;
    let records = lim.rate.and_then(|rate| {
        let raw = RawRequestBudget {
            rate,
            burst: lim.burst.clone(),
            scope: RawScope::Local,
        };
        let old = previous.and_then(|r| r.records.as_ref());
        request_quota(c, &raw, at).map(|q| level_budget(old, per, q, max_keys, clock))
    });
    let bytes = lim.bytes.map(|rate| {
        let raw = RawByteBudget {
            rate,
            burst: lim.bytes_burst,
            scope: RawScope::Local,
        };
        let old = previous.and_then(|r| r.bytes.as_ref());
        let q = byte_quota(c, &raw, at, "bytes_burst", None);
        level_budget(old, per, q, max_keys, clock)
    });
    LevelRule {
        drop: false,
        sample: lim.sample.map(|f| Sample::per_million(f.per_million)),
        records,
        bytes,
    }
}

/// A dotted field path (`log.level`) as the JSON scanner's key list.
fn field_path<C: BudgetClock>(
    c: &mut Compiler<C>,
    f: &Spanned<String>,
    at: &str,
) -> Vec<Box<[u8]>> {
    let keys: Vec<Box<[u8]>> = f.value.split('.').map(|k| k.as_bytes().into()).collect();
    if keys.iter().any(|k| k.is_empty()) || keys.len() > 8 {
        c.problem(
            line(f),
            at,
            format!(
                "{:?} is not a field path (keys joined by '.', at most 8)",
                f.value
            ),
        );
    }
    keys
}
