//! Raw policy → compiled [`Policy`]: resolve defaults, check invariants, build budgets.
//!
//! Every problem is collected (not just the first) and names its field path, with the line when
//! the raw value carries a span, so `check` can list all of them in one run.
//!
//! On reload the policy being replaced is passed in, and every budget whose definition did not
//! change is taken over from it, state and all, so a reload never hands out a fresh burst (see
//! [`Previous`]).
//!
//! This file resolves the top level; each section has a file of its own: `protect`, the route
//! table in `route` (a route's `records` in `records`, its header and query names in
//! `sources`), and every quota and budget carry-over in `budgets`. Problems are reported in the
//! order the sections are compiled (not always the order of the file: a route's `records` and
//! `verbosity_clamp` come before its `payload`), so the call order here and in each section is
//! part of the output that `policies/invalid/` pins.

mod budgets;
mod protect;
mod records;
mod route;
mod sources;

use std::time::Duration;

use crate::budget::BudgetClock;
use serde_saphyr::Spanned;

use super::raw::{RawFleet, RawLimits, RawPolicy, RawUpstream};
use super::{
    ClientKeySpec, FleetRuntime, FleetSettings, KeySource, Limits, Mode, Policy, PolicyError,
    Problem,
};
use budgets::Previous;
use protect::compile_protect;
use route::compile_routes;
use sources::client_key;

pub const DEFAULT_MAX_TRACKED_KEYS: u64 = 1_000_000;
pub const DEFAULT_KEY_EVICTION_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_body` of a route with `records` and no `payload.max_body`: its body is buffered.
pub const DEFAULT_RECORDS_MAX_BODY: u64 = 1 << 20;
pub const DEFAULT_MAX_DECODED: u64 = 8 << 20;
pub const DEFAULT_MAX_RATIO: u32 = 100;
const MIN_KEY_EVICTION_INTERVAL: Duration = Duration::from_millis(100);

struct Compiler<'p, C: BudgetClock> {
    problems: Vec<Problem>,
    warnings: Vec<String>,
    previous: Previous<'p, C>,
    /// Every new budget runs on this clock.
    clock: &'p C,
    /// How `scope: fleet` budgets run, and the resolved `fleet` section.
    fleet: &'p FleetRuntime,
    fleet_settings: FleetSettings,
}

impl<C: BudgetClock> Compiler<'_, C> {
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

/// What a route takes from the policy's top level unless it says otherwise.
struct RouteDefaults<'a> {
    key: &'a ClientKeySpec,
    timeout: Duration,
    mode: Mode,
}

/// Resolves a whole parsed policy into a [`Policy`], or fails with every problem found.
///
/// `file` names it in messages; `version_hash` identifies its text. `previous` is the policy
/// this one replaces, if any: its unchanged budgets carry over. New budgets run on `clock`.
pub fn compile<C: BudgetClock>(
    raw: RawPolicy,
    file: &str,
    version_hash: &str,
    previous: Option<&Policy<C>>,
    clock: &C,
    fleet: &FleetRuntime,
) -> Result<Policy<C>, PolicyError> {
    let mut c = Compiler {
        problems: Vec::new(),
        warnings: Vec::new(),
        previous: Previous::new(previous),
        clock,
        fleet,
        fleet_settings: default_fleet(file),
    };
    check_version(&mut c, &raw.version);
    c.fleet_settings = compile_fleet(&mut c, &raw.fleet, file);
    let limits = compile_limits(&mut c, &raw.limits);
    let default_timeout = upstream_timeout(&mut c, &raw.upstream);
    let protect = compile_protect(&mut c, &raw.protect);
    let default_key = match &raw.client_key {
        Some(k) => client_key(&mut c, k, "client_key"),
        None => ClientKeySpec {
            source: KeySource::PeerIp,
            fallback: Default::default(),
        },
    };
    let defaults = RouteDefaults {
        key: &default_key,
        timeout: default_timeout,
        mode: raw.mode.unwrap_or_default(),
    };
    let routes = compile_routes(&mut c, &raw.routes, &defaults, &limits);

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
        fleet: c.fleet_settings,
        routes,
        warnings: c.warnings,
    })
}

const DEFAULT_REFILL_INTERVAL: Duration = Duration::from_millis(100);
const REFILL_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(10));

fn default_fleet(file: &str) -> FleetSettings {
    let stem = std::path::Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let stem: String = stem
        .chars()
        .map(|ch| match ch {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' | '.' => ch,
            _ => '_',
        })
        .take(40)
        .collect();
    FleetSettings {
        pods: 1,
        refill_interval: DEFAULT_REFILL_INTERVAL,
        namespace: format!(
            "verbosity-guard:{}",
            if stem.is_empty() { "policy" } else { &stem }
        ),
    }
}

/// Resolves `fleet`: the expected guard count, the refill interval and the key namespace.
fn compile_fleet<C: BudgetClock>(c: &mut Compiler<C>, raw: &RawFleet, file: &str) -> FleetSettings {
    let mut f = default_fleet(file);
    match &raw.pods {
        Some(p) if p.value == 0 => c.problem(line(p), "fleet.pods", "must be at least 1"),
        Some(p) => f.pods = p.value,
        None => {}
    }
    if let Some(d) = raw.refill_interval {
        let (lo, hi) = REFILL_INTERVAL_RANGE;
        if d.0 < lo || d.0 > hi {
            c.problem(
                None,
                "fleet.refill_interval",
                "must be between 10ms and 10s",
            );
        }
        f.refill_interval = d.0;
    }
    if let Some(ns) = &raw.namespace {
        let ok = (1..=64).contains(&ns.value.len())
            && ns
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_:.-".contains(&b));
        if ok {
            f.namespace = ns.value.clone();
        } else {
            c.problem(
                line(ns),
                "fleet.namespace",
                "must be 1 to 64 of A-Z a-z 0-9 _ : . -",
            );
        }
    }
    f
}

/// Resolves `version`: only 1 is read, and a later one would mean fields read wrongly.
fn check_version<C: BudgetClock>(c: &mut Compiler<C>, version: &Spanned<u32>) {
    if version.value != 1 {
        c.problem(
            line(version),
            "version",
            format!(
                "unsupported version {} (this guard reads version 1)",
                version.value
            ),
        );
    }
}

/// Resolves `limits`: the per-budget key cap and the eviction interval.
fn compile_limits<C: BudgetClock>(c: &mut Compiler<C>, raw: &RawLimits) -> Limits {
    let max_keys = match &raw.max_tracked_keys {
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
    limits
}

/// Resolves `upstream.timeout`, the wait for response headers of a route that sets none.
fn upstream_timeout<C: BudgetClock>(c: &mut Compiler<C>, raw: &RawUpstream) -> Duration {
    let timeout = raw.timeout.map_or(DEFAULT_UPSTREAM_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        c.problem(None, "upstream.timeout", "must be greater than zero");
    }
    timeout
}
