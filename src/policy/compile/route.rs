//! `routes`: the table's own rules (unique names, a catch-all, nothing after it) and each
//! route's name, matcher and payload budgets. A route's `records` and its header and query
//! names have files of their own.

use std::collections::HashSet;

use crate::budget::BudgetClock;
use serde_saphyr::Spanned;

use super::budgets::{byte_quota, payload_budget, payload_keyed, placement, request_quota};
use super::records::compile_records;
use super::sources::{client_key, compile_clamp};
use super::{Compiler, DEFAULT_RECORDS_MAX_BODY, RouteDefaults, line};
use crate::budget::Payload;
use crate::budget::{BudgetKind, Scope};
use crate::policy::raw::{RawMatch, RawRoute};
use crate::policy::{Limits, Route};
use crate::route::{MethodSet, PathMatcher};
use crate::units::ByteSize;

const MAX_ROUTE_NAME: usize = 64;

/// Resolves `routes`: every route, with unique names and a catch-all that no route follows.
pub(super) fn compile_routes<C: BudgetClock>(
    c: &mut Compiler<C>,
    raw: &[RawRoute],
    defaults: &RouteDefaults,
    limits: &Limits,
) -> Vec<Route<C>> {
    if raw.is_empty() {
        c.problem(
            None,
            "routes",
            "at least one route is required, ending with a catch-all",
        );
    }
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.len());
    let mut catch_all: Option<usize> = None;
    for (i, r) in raw.iter().enumerate() {
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
        let route = compile_route(c, r, &at, defaults, limits);
        if route.methods == MethodSet::ANY && route.path.is_everything() {
            catch_all.get_or_insert(i);
        }
        routes.push(route);
    }
    if catch_all.is_none() && !raw.is_empty() {
        c.problem(
            None,
            "routes",
            "the last route must be a catch-all (match: { path_prefix: / } with no methods) so every request has a budget",
        );
    }
    routes
}

/// Resolves one route: name, matcher, client key, timeout, records, clamp and payload, with
/// the policy's `defaults` for what it leaves out.
fn compile_route<C: BudgetClock>(
    c: &mut Compiler<C>,
    r: &RawRoute,
    at: &str,
    defaults: &RouteDefaults,
    limits: &Limits,
) -> Route<C> {
    check_route_name(c, &r.name, at);
    let methods = match_methods(c, &r.matcher, at);
    let path = match_path(c, r, at);
    let client_key = match &r.client_key {
        Some(k) => client_key(c, k, &format!("{at}.client_key")),
        None => defaults.key.clone(),
    };
    // The same route in the policy this one replaces: its unchanged budgets are kept.
    let was = c.previous.route(&r.name.value);
    let records = r.records.as_ref().map(|raw| {
        let old = was.and_then(|w| w.records.as_ref());
        compile_records(c, raw, &format!("{at}.records"), limits, old)
    });
    let clamp = r
        .verbosity_clamp
        .as_ref()
        .map(|raw| compile_clamp(c, raw, &format!("{at}.verbosity_clamp")));
    let payload = compile_payload(c, r, at, limits, was.map(|w| &w.payload));
    Route {
        name: r.name.value.clone(),
        methods,
        path,
        priority: r.priority.unwrap_or_default(),
        mode: r.mode.unwrap_or(defaults.mode),
        client_key,
        timeout: r.timeout.map_or(defaults.timeout, |d| d.0),
        payload,
        records,
        clamp,
    }
}

/// Checks a route's name, which metrics and responses carry as is.
fn check_route_name<C: BudgetClock>(c: &mut Compiler<C>, name: &Spanned<String>, at: &str) {
    let n = &name.value;
    let valid = !n.is_empty()
        && n.len() <= MAX_ROUTE_NAME
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        c.problem(
            line(name),
            format!("{at}.name"),
            format!("{n:?} is not a route name (lowercase letters, digits, '_' and '-', at most {MAX_ROUTE_NAME})"),
        );
    }
}

/// Resolves `match.methods`; absent is any method, but an empty list is more likely a mistake.
fn match_methods<C: BudgetClock>(c: &mut Compiler<C>, m: &RawMatch, at: &str) -> MethodSet {
    match &m.methods {
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
    }
}

/// Resolves `match.path` or `match.path_prefix`, exactly one of which is set.
fn match_path<C: BudgetClock>(c: &mut Compiler<C>, r: &RawRoute, at: &str) -> PathMatcher {
    let m = &r.matcher;
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
    path.unwrap_or_else(|()| PathMatcher::Exact("/".into()))
}

/// Resolves `payload`: the body cap and the four budgets, each kept from `was` (the replaced
/// route's) when its definition is unchanged.
fn compile_payload<C: BudgetClock>(
    c: &mut Compiler<C>,
    r: &RawRoute,
    at: &str,
    limits: &Limits,
    was: Option<&Payload<C>>,
) -> Payload<C> {
    let p = &r.payload;
    let at = format!("{at}.payload");
    // A records route buffers its body to filter it, so it always has a cap.
    let max_body = match (p.max_body, &r.records) {
        (Some(s), _) => Some(s.0),
        (None, Some(_)) => Some(DEFAULT_RECORDS_MAX_BODY),
        (None, None) => None,
    };
    let max_keys = limits.max_tracked_keys;
    let name = r.name.value.as_str();
    let route_requests = p.route_requests.as_ref().and_then(|b| {
        let q = request_quota(c, b, &format!("{at}.route_requests"))?;
        let place = placement(c, b.scope, name, BudgetKind::RouteRequests);
        Some(payload_budget(
            c,
            was.and_then(|w| w.route_requests.as_ref()),
            q,
            place,
        ))
    });
    let client_requests = p.client_requests.as_ref().and_then(|b| {
        let q = request_quota(c, b, &format!("{at}.client_requests"))?;
        let place = placement(c, b.scope, name, BudgetKind::ClientRequests);
        let old = was.and_then(|w| w.client_requests.as_ref());
        Some(payload_keyed(c, old, q, max_keys, place))
    });
    let route_bytes = p.route_bytes.as_ref().map(|b| {
        let q = byte_quota(c, b, &format!("{at}.route_bytes"), "burst", max_body);
        let place = placement(c, b.scope, name, BudgetKind::RouteBytes);
        payload_budget(c, was.and_then(|w| w.route_bytes.as_ref()), q, place)
    });
    let client_bytes = p.client_bytes.as_ref().map(|b| {
        let q = byte_quota(c, b, &format!("{at}.client_bytes"), "burst", max_body);
        let place = placement(c, b.scope, name, BudgetKind::ClientBytes);
        let old = was.and_then(|w| w.client_bytes.as_ref());
        payload_keyed(c, old, q, max_keys, place)
    });
    let fleet_bytes = [
        (
            "route_bytes",
            route_bytes.as_ref().map(|b| (b.quota(), b.placement())),
        ),
        (
            "client_bytes",
            client_bytes.as_ref().map(|b| (b.quota(), b.placement())),
        ),
    ];
    for (field, budget) in fleet_bytes {
        if let (Some((q, place)), Some(max)) = (budget, max_body)
            && place.scope() == Scope::Fleet
        {
            let pods = c.fleet_settings.pods;
            let share = crate::budget::share(q, pods).burst;
            if max > share {
                c.warnings.push(format!(
                    "{at}.{field}: a guard's share of the burst ({} for {pods} pods) is smaller \
                     than max_body {}; a body in between waits for the fleet (429) whenever its \
                     guard has no lease to cover it",
                    ByteSize(share),
                    ByteSize(max)
                ));
            }
        }
    }
    Payload {
        max_body,
        route_requests,
        route_bytes,
        client_requests,
        client_bytes,
    }
}
