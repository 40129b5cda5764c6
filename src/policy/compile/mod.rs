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

use governor::clock::Clock;
use serde_saphyr::Spanned;

use super::raw::{RawLimits, RawPolicy, RawUpstream};
use super::{ClientKeySpec, KeySource, Limits, Mode, Policy, PolicyError, Problem};
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
    check_version(&mut c, &raw.version);
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
        routes,
        warnings: c.warnings,
    })
}

/// Resolves `version`: only 1 is read, and a later one would mean fields read wrongly.
fn check_version<C: Clock + Clone>(c: &mut Compiler<C>, version: &Spanned<u32>) {
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
fn compile_limits<C: Clock + Clone>(c: &mut Compiler<C>, raw: &RawLimits) -> Limits {
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
fn upstream_timeout<C: Clock + Clone>(c: &mut Compiler<C>, raw: &RawUpstream) -> Duration {
    let timeout = raw.timeout.map_or(DEFAULT_UPSTREAM_TIMEOUT, |d| d.0);
    if timeout.is_zero() {
        c.problem(None, "upstream.timeout", "must be greater than zero");
    }
    timeout
}
