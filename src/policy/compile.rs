//! Raw policy → compiled [`Policy`]: resolve defaults, check invariants, build budgets.
//!
//! Every problem is collected (not just the first) and names its field path, with the line when
//! the raw value carries a span, so `check` can list all of them in one run.
//!
//! On reload the policy being replaced is passed in, and every budget whose definition did not
//! change is taken over from it, state and all, so a reload never hands out a fresh burst (see
//! [`Previous`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use http::HeaderName;
use serde_saphyr::Spanned;

use super::raw::{
    RawByteBudget, RawClamp, RawClientKey, RawLevelLimits, RawLevelRule, RawPolicy, RawProtect,
    RawRecords, RawRequestBudget, RawRoute,
};
use super::{ClientKeySpec, KeySource, Limits, Mode, Policy, PolicyError, Problem, Route};
use crate::budget::{Budget, KeyedBudget, Payload, Quota};
use crate::protect::{Brownout, Priority, ProtectConfig};
use crate::records::clamp::Clamp;
use crate::records::{Level, LevelBudget, LevelRule, Per, RecordsPolicy, Sample, SampleBy};
use crate::route::{MethodSet, PathMatcher};
use crate::units::ByteSize;

pub const DEFAULT_MAX_TRACKED_KEYS: u64 = 1_000_000;
pub const DEFAULT_KEY_EVICTION_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_body` of a route with `records` and no `payload.max_body`: its body is buffered.
pub const DEFAULT_RECORDS_MAX_BODY: u64 = 1 << 20;
pub const DEFAULT_MAX_DECODED: u64 = 8 << 20;
pub const DEFAULT_MAX_RATIO: u32 = 100;
const MIN_KEY_EVICTION_INTERVAL: Duration = Duration::from_millis(100);
const MAX_ROUTE_NAME: usize = 64;

struct Compiler<'p, C: Clock + Clone> {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    previous: Previous<'p, C>,
    /// Every new budget runs on this clock.
    clock: &'p C,
}

impl<C: Clock + Clone> Compiler<'_, C> {
    fn problem(
        &mut self,
        line: Option<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            line,
            path: path.into(),
            message: message.into(),
        });
    }
}

fn line<T>(s: &Spanned<T>) -> Option<usize> {
    Some(s.referenced.line() as usize).filter(|&l| l > 0)
}

/// Compiles a parsed policy. `file` names it in messages; `version_hash` identifies its text.
/// `previous` is the policy this one replaces, if any: its unchanged budgets carry over. New
/// budgets run on `clock`.
pub fn compile<C: Clock + Clone>(
    raw: RawPolicy,
    file: &str,
    version_hash: &str,
    previous: Option<&Policy<C>>,
    clock: &C,
) -> Result<Policy<C>, PolicyError> {
    let mut c = Compiler {
        problems: Vec::new(),
        warnings: Vec::new(),
        previous: Previous::new(previous),
        clock,
    };
    if raw.version.value != 1 {
        c.problem(
            line(&raw.version),
            "version",
            format!(
                "unsupported version {} (this guard reads version 1)",
                raw.version.value
            ),
        );
    }

    let max_keys = match &raw.limits.max_tracked_keys {
        Some(s) if s.value == 0 => {
            c.problem(line(s), "limits.max_tracked_keys", "must be at least 1");
            1
        }
        Some(s) => s.value,
        None => DEFAULT_MAX_TRACKED_KEYS,
    };
    let limits = Limits {
        max_tracked_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
        key_eviction_interval: raw
            .limits
            .key_eviction_interval
            .map_or(DEFAULT_KEY_EVICTION_INTERVAL, |d| d.0),
    };
    if limits.key_eviction_interval < MIN_KEY_EVICTION_INTERVAL {
        c.problem(
            None,
            "limits.key_eviction_interval",
            "must be at least 100ms",
        );
    }
    let default_timeout = raw
        .upstream
        .timeout
        .map_or(DEFAULT_UPSTREAM_TIMEOUT, |d| d.0);
    if default_timeout.is_zero() {
        c.problem(None, "upstream.timeout", "must be greater than zero");
    }
    let protect = compile_protect(&mut c, &raw.protect);
    let default_key = match &raw.client_key {
        Some(k) => client_key(&mut c, k, "client_key"),
        None => ClientKeySpec {
            source: KeySource::PeerIp,
            fallback: Default::default(),
        },
    };

    if raw.routes.is_empty() {
        c.problem(
            None,
            "routes",
            "at least one route is required, ending with a catch-all",
        );
    }
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut catch_all: Option<usize> = None;
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if let Some(first) = catch_all {
            c.problem(
                line(&r.name),
                &at,
                format!(
                    "route {:?} can never match: routes[{first}] before it takes every request",
                    r.name.value
                ),
            );
        }
        if !names.insert(r.name.value.as_str()) {
            c.problem(
                line(&r.name),
                format!("{at}.name"),
                format!("duplicate route name {:?}", r.name.value),
            );
        }
        let defaults = RouteDefaults {
            key: &default_key,
            timeout: default_timeout,
            mode: raw.mode.unwrap_or_default(),
        };
        let route = compile_route(&mut c, r, &at, &defaults, &limits);
        if route.methods == MethodSet::ANY && route.path.is_everything() {
            catch_all.get_or_insert(i);
        }
        routes.push(route);
    }
    if catch_all.is_none() && !raw.routes.is_empty() {
        c.problem(
            None,
            "routes",
            "the last route must be a catch-all (match: { path_prefix: / } with no methods) so every request has a budget",
        );
    }

    if !c.problems.is_empty() {
        return Err(PolicyError::Invalid {
            file: file.to_owned(),
            problems: c.problems,
        });
    }
    Ok(Policy {
        source: file.to_owned(),
        version_hash: version_hash.to_owned(),
        limits,
        protect,
        routes,
        warnings: c.warnings,
    })
}

/// The brownout controller and the surge detector tick at most this often (a zero interval
/// would spin a core) and at least this often (a tick farther away is no protection, and
/// `interval * relax_after` must stay far from `Duration`'s limit).
const TICK_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

fn tick_in_range<C: Clock + Clone>(c: &mut Compiler<C>, interval: Duration, path: &str) {
    let (min, max) = TICK_RANGE;
    if !(min..=max).contains(&interval) {
        c.problem(
            None,
            path,
            format!("must be between 10ms and 1h, not {interval:?}"),
        );
    }
}

/// A multiplier that must be above 1 (`latency_factor`, `surge.factor`): the value given, or
/// `default`.
fn factor_above_one<C: Clock + Clone>(
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

/// `protect`: every field defaults; sizes must leave room for each class, factors must order.
fn compile_protect<C: Clock + Clone>(c: &mut Compiler<C>, raw: &RawProtect) -> ProtectConfig {
    let mut cfg = ProtectConfig::default();
    let s = &mut cfg.slots;
    if let Some(m) = &raw.max_in_flight {
        if m.value == 0 {
            c.problem(line(m), "protect.max_in_flight", "must be at least 1");
        }
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

    let b = &raw.brownout;
    let out = &mut cfg.brownout;
    out.enabled = b.enabled.unwrap_or(true);
    if let Some(d) = b.interval {
        out.interval = d.0;
    }
    tick_in_range(c, out.interval, "protect.brownout.interval");
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
    if let Some(n) = &b.min_samples {
        if n.value == 0 {
            c.problem(
                line(n),
                "protect.brownout.min_samples",
                "must be at least 1",
            );
        }
        out.min_samples = n.value.max(1);
    }
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

    let r = &raw.surge;
    let out = &mut cfg.surge;
    out.enabled = r.enabled.unwrap_or(true);
    let set = |slot: &mut Duration, v: Option<crate::units::HumanDuration>| {
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
    cfg
}

/// What a route takes from the policy's top level unless it says otherwise.
struct RouteDefaults<'a> {
    key: &'a ClientKeySpec,
    timeout: Duration,
    mode: Mode,
}

fn compile_route<C: Clock + Clone>(
    c: &mut Compiler<C>,
    r: &RawRoute,
    at: &str,
    defaults: &RouteDefaults,
    limits: &Limits,
) -> Route<C> {
    let name = &r.name.value;
    let valid_name = !name.is_empty()
        && name.len() <= MAX_ROUTE_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid_name {
        c.problem(
            line(&r.name),
            format!("{at}.name"),
            format!("{name:?} is not a route name (lowercase letters, digits, '_' and '-', at most {MAX_ROUTE_NAME})"),
        );
    }

    let m = &r.matcher;
    let methods = match &m.methods {
        None => MethodSet::ANY,
        Some(list) if list.is_empty() => {
            c.problem(
                None,
                format!("{at}.match.methods"),
                "must list at least one method (omit it to match any)",
            );
            MethodSet::ANY
        }
        Some(list) => match MethodSet::parse(list.iter().map(|s| s.value.as_str())) {
            Ok(set) => set,
            Err(bad) => {
                let l = list.iter().find(|s| s.value == bad).and_then(line);
                c.problem(
                    l,
                    format!("{at}.match.methods"),
                    format!("{bad:?} is not an HTTP method"),
                );
                MethodSet::ANY
            }
        },
    };
    let path = match (&m.path, &m.path_prefix) {
        (Some(p), None) => PathMatcher::exact_or_template(&p.value)
            .map_err(|e| c.problem(line(p), format!("{at}.match.path"), e.to_string())),
        (None, Some(p)) => PathMatcher::prefix(&p.value)
            .map_err(|e| c.problem(line(p), format!("{at}.match.path_prefix"), e.to_string())),
        _ => {
            c.problem(
                line(&r.name),
                format!("{at}.match"),
                "exactly one of `path` and `path_prefix` is required",
            );
            Err(())
        }
    };
    // A placeholder keeps compiling the rest of the route so all its problems are reported.
    let path = path.unwrap_or_else(|()| PathMatcher::Exact("/".into()));

    let client_key = match &r.client_key {
        Some(k) => client_key(c, k, &format!("{at}.client_key")),
        None => defaults.key.clone(),
    };
    let timeout = r.timeout.map_or(defaults.timeout, |d| d.0);

    let p = &r.payload;
    let at_p = format!("{at}.payload");
    let max_body = match (p.max_body, &r.records) {
        (Some(s), _) => Some(s.0),
        (None, Some(_)) => Some(DEFAULT_RECORDS_MAX_BODY),
        (None, None) => None,
    };
    let prev_records = c.previous.route(name).and_then(|r| r.records.as_ref());
    let records = r
        .records
        .as_ref()
        .map(|raw| compile_records(c, raw, &format!("{at}.records"), limits, prev_records));
    let clamp = r
        .verbosity_clamp
        .as_ref()
        .map(|raw| compile_clamp(c, raw, &format!("{at}.verbosity_clamp")));
    // The budgets the same route had in the policy this one replaces, kept when unchanged.
    let was = c.previous.route(name).map(|r| &r.payload);
    let max_keys = limits.max_tracked_keys;
    let clock = c.clock;
    let route_requests = p
        .route_requests
        .as_ref()
        .and_then(|b| request_quota(c, b, &format!("{at_p}.route_requests")))
        .map(|q| reuse_budget(was.and_then(|w| w.route_requests.as_ref()), q, clock));
    let client_requests = p
        .client_requests
        .as_ref()
        .and_then(|b| request_quota(c, b, &format!("{at_p}.client_requests")))
        .map(|q| {
            reuse_keyed(
                was.and_then(|w| w.client_requests.as_ref()),
                q,
                max_keys,
                clock,
            )
        });
    let route_bytes = p
        .route_bytes
        .as_ref()
        .map(|b| byte_quota(c, b, &format!("{at_p}.route_bytes"), max_body))
        .map(|q| reuse_budget(was.and_then(|w| w.route_bytes.as_ref()), q, clock));
    let client_bytes = p
        .client_bytes
        .as_ref()
        .map(|b| byte_quota(c, b, &format!("{at_p}.client_bytes"), max_body))
        .map(|q| {
            reuse_keyed(
                was.and_then(|w| w.client_bytes.as_ref()),
                q,
                max_keys,
                clock,
            )
        });

    Route {
        name: name.clone(),
        methods,
        path,
        priority: r.priority.unwrap_or_default(),
        mode: r.mode.unwrap_or(defaults.mode),
        client_key,
        timeout,
        payload: Payload {
            max_body,
            route_requests,
            route_bytes,
            client_requests,
            client_bytes,
        },
        records,
        clamp,
    }
}

fn compile_records<C: Clock + Clone>(
    c: &mut Compiler<C>,
    raw: &Spanned<RawRecords>,
    at: &str,
    limits: &Limits,
    previous: Option<&RecordsPolicy<C>>,
) -> RecordsPolicy<C> {
    let r = &raw.value;
    let otlp = r.format.is_otlp();
    let level_field = match (&r.level_field, otlp) {
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
    };
    let sample_by = match (&r.sample_by, otlp) {
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
    };
    let max_ratio = match &r.max_ratio {
        Some(s) if s.value == 0 => {
            c.problem(line(s), format!("{at}.max_ratio"), "must be at least 1");
            1
        }
        Some(s) => s.value,
        None => DEFAULT_MAX_RATIO,
    };
    let rules = Level::ALL.map(|level| match r.levels.get(level) {
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
    });
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

fn level_rule<C: Clock + Clone>(
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
        };
        let old = previous.and_then(|r| r.records.as_ref());
        request_quota(c, &raw, &format!("{at}.burst"))
            .map(|q| level_budget(old, per, q, max_keys, clock))
    });
    let bytes = lim.bytes.map(|rate| {
        let raw = RawByteBudget {
            rate,
            burst: lim.bytes_burst,
        };
        let old = previous.and_then(|r| r.bytes.as_ref());
        let q = byte_quota(c, &raw, &format!("{at}.bytes"), None);
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
fn field_path<C: Clock + Clone>(
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

fn compile_clamp<C: Clock + Clone>(
    c: &mut Compiler<C>,
    raw: &Spanned<RawClamp>,
    at: &str,
) -> Clamp {
    let r = &raw.value;
    if r.header.is_none() && r.query.is_none() {
        c.problem(line(raw), at, "set `header`, `query` or both");
    }
    let header = r.header.as_ref().and_then(|h| {
        HeaderName::from_bytes(h.value.to_ascii_lowercase().as_bytes())
            .map_err(|_| {
                c.problem(
                    line(h),
                    format!("{at}.header"),
                    format!("{:?} is not a header name", h.value),
                )
            })
            .ok()
    });
    let query = r.query.as_ref().and_then(|q| {
        if q.value.is_empty() {
            c.problem(line(q), format!("{at}.query"), "must not be empty");
            None
        } else {
            Some(q.value.as_str().into())
        }
    });
    Clamp {
        header,
        query,
        max: r.max,
    }
}

fn client_key<C: Clock + Clone>(c: &mut Compiler<C>, k: &RawClientKey, at: &str) -> ClientKeySpec {
    let fallback = k.fallback.unwrap_or_default();
    let source = match (&k.header, &k.query) {
        (Some(h), None) => match HeaderName::from_bytes(h.value.to_ascii_lowercase().as_bytes()) {
            Ok(name) => KeySource::Header(name),
            Err(_) => {
                c.problem(
                    line(h),
                    format!("{at}.header"),
                    format!("{:?} is not a header name", h.value),
                );
                KeySource::PeerIp
            }
        },
        (None, Some(q)) if q.value.is_empty() => {
            c.problem(line(q), format!("{at}.query"), "must not be empty");
            KeySource::PeerIp
        }
        (None, Some(q)) => KeySource::Query(q.value.as_str().into()),
        (None, None) => KeySource::PeerIp,
        (Some(h), Some(_)) => {
            c.problem(line(h), at, "set at most one of `header` and `query`");
            KeySource::PeerIp
        }
    };
    ClientKeySpec { source, fallback }
}

fn request_quota<C: Clock + Clone>(
    c: &mut Compiler<C>,
    b: &RawRequestBudget,
    at: &str,
) -> Option<Quota> {
    let burst = match &b.burst {
        Some(s) if s.value == 0 => {
            c.problem(line(s), format!("{at}.burst"), "must be at least 1");
            return None;
        }
        Some(s) => u64::from(s.value),
        None => default_burst(b.rate.amount, b.rate.per),
    };
    Some(Quota {
        amount: b.rate.amount,
        per: b.rate.per,
        burst,
    })
}

fn byte_quota<C: Clock + Clone>(
    c: &mut Compiler<C>,
    b: &RawByteBudget,
    at: &str,
    max_body: Option<u64>,
) -> Quota {
    let burst = match b.burst {
        Some(ByteSize(0)) => {
            c.problem(None, format!("{at}.burst"), "must be greater than zero");
            1
        }
        Some(ByteSize(n)) => n,
        None => default_burst(b.rate.bytes, b.rate.per),
    };
    if let Some(max) = max_body.filter(|&m| m > burst) {
        c.warnings.push(format!(
            "{at}: burst {} is smaller than max_body {}; bodies between the two always get 413",
            ByteSize(burst),
            ByteSize(max)
        ));
    }
    Quota {
        amount: b.rate.bytes,
        per: b.rate.per,
        burst,
    }
}

/// One second's worth of the rate, at least one unit.
fn default_burst(amount: u64, per: Duration) -> u64 {
    let per_sec = u128::from(amount) * 1_000_000_000 / per.as_nanos().max(1);
    u64::try_from(per_sec).unwrap_or(u64::MAX).max(1)
}

/// The policy being replaced, indexed by route name. A budget is identified by its route's name
/// and its place in the route (which payload budget, or which level's record or byte budget);
/// it carries over when its definition is the same: same quota (rate, period and burst), same
/// `per` for level budgets, and for per-client budgets the same key cap. Anything else gets a
/// fresh budget, since its old state would mean something else under the new definition.
struct Previous<'p, C: Clock + Clone> {
    routes: HashMap<&'p str, &'p Route<C>>,
}

impl<'p, C: Clock + Clone> Previous<'p, C> {
    fn new(policy: Option<&'p Policy<C>>) -> Previous<'p, C> {
        let routes = policy
            .map(|p| p.routes().iter().map(|r| (r.name.as_str(), r)).collect())
            .unwrap_or_default();
        Previous { routes }
    }

    fn route(&self, name: &str) -> Option<&'p Route<C>> {
        self.routes.get(name).copied()
    }
}

/// A route-wide payload budget: the previous route's, if its quota is `q`, else a fresh one.
fn reuse_budget<C: Clock + Clone>(
    old: Option<&Arc<Budget<C>>>,
    q: Quota,
    clock: &C,
) -> Arc<Budget<C>> {
    match old {
        Some(b) if b.quota() == q => b.clone(),
        _ => Arc::new(Budget::new(q, clock.clone())),
    }
}

/// A per-client budget: the previous route's, if its quota and key cap are unchanged, else a
/// fresh one.
fn reuse_keyed<C: Clock + Clone>(
    old: Option<&Arc<KeyedBudget<C>>>,
    q: Quota,
    max_keys: usize,
    clock: &C,
) -> Arc<KeyedBudget<C>> {
    match old {
        Some(b) if b.quota() == q && b.max_keys() == max_keys => b.clone(),
        _ => Arc::new(KeyedBudget::new(q, max_keys, clock.clone())),
    }
}

/// A level's record or byte budget. A per-client one carries over together with its overflow
/// budget (the one untracked clients share), which has the same quota.
fn level_budget<C: Clock + Clone>(
    old: Option<&LevelBudget<C>>,
    per: Per,
    q: Quota,
    max_keys: usize,
    clock: &C,
) -> LevelBudget<C> {
    match (per, old) {
        (Per::Route, Some(LevelBudget::Route(b))) => {
            LevelBudget::Route(reuse_budget(Some(b), q, clock))
        }
        (Per::Route, _) => LevelBudget::Route(reuse_budget(None, q, clock)),
        (Per::Client, Some(LevelBudget::Client { keyed, overflow }))
            if keyed.quota() == q && keyed.max_keys() == max_keys =>
        {
            LevelBudget::Client {
                keyed: keyed.clone(),
                overflow: overflow.clone(),
            }
        }
        (Per::Client, _) => LevelBudget::Client {
            keyed: reuse_keyed(None, q, max_keys, clock),
            overflow: reuse_budget(None, q, clock),
        },
    }
}
