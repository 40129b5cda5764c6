//! `verbosity-guard simulate`: replays recorded traffic against a policy on a virtual clock.
//!
//! The policy is compiled with every budget on governor's `FakeRelativeClock`
//! ([`policy::parse_with_clock`]); before each request the clock is moved to the request's
//! time, so a day of traffic replays in seconds and budgets refill exactly as they would have
//! between the requests. Each request then goes through the live guard's own decision core, in
//! the live guard's order: [`decide::route`] (normalize, route), [`decide::identify`] (client
//! key), [`decide::admit`] (brownout, payload budgets), and [`decide::records::judge`] (decode,
//! parse, level rules) — nothing is re-implemented here, only counted.
//!
//! What cannot be replayed without an upstream is not: upstream slots and the brownout
//! controller, which react to the upstream's latency. `--brownout LEVEL` fixes the level for
//! the whole replay instead (default `off`), to see what a brownout would do to the traffic.
//! Every body counts as declared (a Content-Length), since a recording holds it whole.

pub mod fail_if;
pub mod report;

use std::hash::RandomState;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use governor::clock::{Clock, FakeRelativeClock};
use http::{Request, Uri};

use crate::decide::records as batch;
use crate::decide::{self, Reason, Reject, UNROUTED};
use crate::policy::{self, Policy, PolicyError, Route};
use crate::protect::{Brownout, Priority};
use crate::traffic::{self, Entry, Traffic, TrafficError};
pub use fail_if::{Condition, ConditionError};
pub use report::Report;

/// What to replay, against what.
#[derive(Debug, Clone)]
pub struct Options {
    pub policy: PathBuf,
    pub traffic: PathBuf,
    /// The brownout level held for the whole replay.
    pub brownout: Brownout,
    pub limits: traffic::Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Traffic(#[from] TrafficError),
    /// A `--fail-if` condition names a route the policy does not have (checked before the
    /// replay starts).
    #[error(transparent)]
    Condition(#[from] ConditionError),
}

/// A `--fail-if` condition and how the replay fared against it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub condition: String,
    /// The share in percent, or the count, the condition compares.
    pub value: f64,
    /// `value` is a share in percent (else a count).
    pub percent: bool,
    pub breached: bool,
}

/// Replays the traffic file against the policy file and judges the `--fail-if` conditions.
/// The conditions are checked against the policy's routes before anything is replayed.
pub fn run(
    opts: &Options,
    conditions: &[Condition],
) -> Result<(Report, Vec<Verdict>), SimulateError> {
    let name = opts.policy.display().to_string();
    let text = policy::read(&opts.policy)?;
    let clock = FakeRelativeClock::default();
    let policy = policy::parse_with_clock(&text, &name, &clock)?;
    let traffic = Traffic::open(&opts.traffic, opts.limits)?;
    let mut report = empty_report(&policy, &traffic, &opts.traffic, opts.brownout);
    for c in conditions {
        c.value(&report)?;
    }
    replay(&policy, &clock, traffic, &mut report)?;
    let verdicts = conditions
        .iter()
        .map(|c| {
            let value = c.value(&report)?;
            Ok(Verdict {
                condition: c.to_string(),
                value,
                percent: c.is_share(),
                breached: c.breached(value),
            })
        })
        .collect::<Result<_, ConditionError>>()?;
    Ok((report, verdicts))
}

/// A report of nothing yet, one row per route of `policy`.
pub fn empty_report<C: Clock>(
    policy: &Policy<C>,
    traffic: &Traffic,
    traffic_path: &Path,
    brownout: Brownout,
) -> Report {
    let mut routes: Vec<_> = policy
        .routes()
        .iter()
        .map(|r| report::RouteReport::new(&r.name, r.mode, r.priority, r.records.is_some()))
        .collect();
    routes.push(report::RouteReport::new(
        UNROUTED,
        policy::Mode::Enforce,
        Priority::Normal,
        false,
    ));
    Report {
        policy: policy.source.clone(),
        version_hash: policy.version_hash.clone(),
        traffic: traffic_path.display().to_string(),
        format: traffic.format(),
        brownout,
        requests: 0,
        first_at: None,
        last_at: None,
        out_of_order: 0,
        elapsed: Duration::ZERO,
        routes,
    }
}

/// Replays `traffic` against `policy`, whose budgets run on `clock`, into `report` (made by
/// [`empty_report`] for this policy).
pub fn replay(
    policy: &Policy<FakeRelativeClock>,
    clock: &FakeRelativeClock,
    traffic: Traffic,
    report: &mut Report,
) -> Result<(), SimulateError> {
    let started = Instant::now();
    // The controller is not simulated: the level does not move.
    let brownout = report.brownout;
    // The same per-process keying the live guard uses: keys only tell clients apart.
    let hasher = RandomState::new();
    let eviction = policy.limits.key_eviction_interval;
    let mut now = 0u64;
    let mut next_eviction = eviction.as_nanos() as u64;
    for entry in traffic {
        let entry = entry?;
        let first = *report.first_at.get_or_insert(entry.at);
        report.last_at = Some(report.last_at.map_or(entry.at, |l| l.max(entry.at)));
        let at = entry.at.saturating_sub(first);
        if at > now {
            clock.advance(Duration::from_nanos(at - now));
            now = at;
        } else if at < now {
            report.out_of_order += 1;
        }
        // Idle keys are forgotten on the policy's interval, as the live guard does; it only
        // matters once a key store is full.
        if now >= next_eviction {
            policy.evict_idle_keys();
            next_eviction = now + eviction.as_nanos() as u64;
        }
        report.requests += 1;
        replay_one(policy, &hasher, brownout, now, entry, report);
    }
    report.elapsed = started.elapsed();
    Ok(())
}

/// One request through the decision core, counted where it ends.
fn replay_one<C: Clock>(
    policy: &Policy<C>,
    hasher: &RandomState,
    brownout: Brownout,
    at: u64,
    entry: Entry,
    report: &mut Report,
) {
    let mut request = Request::new(());
    *request.method_mut() = entry.method.clone();
    *request.uri_mut() = Uri::from(entry.target.clone());
    *request.headers_mut() = entry.headers.clone();
    let (parts, ()) = request.into_parts();
    let size = entry.body_size;

    let (route, r) = match decide::route(policy, &parts) {
        Ok(routed) => (routed.route, &mut report.routes[routed.index]),
        Err(e) => {
            let unrouted = report.routes.len() - 1;
            let r = &mut report.routes[unrouted];
            r.requests.offer(at, 1);
            r.body.offer(at, size);
            r.reject(e.reason());
            return;
        }
    };
    r.requests.offer(at, 1);
    r.body.offer(at, size);
    let request = Replayed {
        policy,
        route,
        parts: &parts,
        entry: &entry,
        at,
    };
    match request.decide(hasher, brownout, r) {
        Ok(Some(forwarded)) => {
            r.requests.forward(at, 1);
            r.body.forward(at, forwarded);
        }
        // Every record dropped: the guard answers these itself, nothing reaches the upstream.
        Ok(None) => {}
        Err(e) => {
            r.reject(e.reason());
            // The records of a batch refused whole, counted as such (a malformed one has none).
            if let Some(records) = &route.records
                && !entry.is_partial()
                && e.reason() != Reason::MalformedBatch
                && let Some(counts) = batch::count_unjudged(records, &parts.headers, &entry.body)
            {
                r.refused_records(at, &counts);
            }
        }
    }
}

/// A routed request of the traffic file.
struct Replayed<'a, C: Clock> {
    policy: &'a Policy<C>,
    route: &'a Route<C>,
    parts: &'a http::request::Parts,
    entry: &'a Entry,
    at: u64,
}

impl<C: Clock> Replayed<'_, C> {
    /// The live guard's phases after routing, in its order: identify, admit (brownout and
    /// payload budgets), the verbosity clamp, and the records phase. The size of what would go
    /// upstream, `None` when the guard would answer itself, or the refusal.
    fn decide(
        &self,
        hasher: &RandomState,
        brownout: Brownout,
        r: &mut report::RouteReport,
    ) -> Result<Option<u64>, Reject> {
        let (route, parts, size) = (self.route, self.parts, self.entry.body_size);
        let key = decide::identify(route, parts, self.entry.peer, hasher)?;
        let mut untracked = false;
        let cfg = &self.policy.protect.brownout;
        let admitted = decide::admit(route, key, brownout, cfg, Some(size), |_| untracked = true);
        r.untracked += u64::from(untracked);
        let admitted = admitted?;
        if let Some(clamp) = &route.clamp {
            r.clamped += u64::from(clamp.count(&parts.headers, &parts.uri));
        }
        match (&route.records, size) {
            (Some(_), 1..) if self.entry.is_partial() => {
                // The recording did not keep the whole batch: its records cannot be counted.
                r.partial += 1;
                Ok(Some(size))
            }
            (Some(records), 1..) => {
                let body = &self.entry.body;
                let judged = batch::judge(records, &parts.headers, key, &admitted.tighten, body)?;
                r.batch(judged.outcome);
                if let Some(refusal) = judged.refusal() {
                    return Err(refusal);
                }
                if let Some(tally) = judged.tally() {
                    r.decided(self.at, tally);
                }
                Ok(judged.forward(body.clone())?.map(|b| b.len() as u64))
            }
            _ => Ok(Some(size)),
        }
    }
}
