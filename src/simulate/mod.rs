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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use governor::clock::{Clock, FakeRelativeClock};
use http::{Request, Uri};

use crate::decide::records as batch;
use crate::decide::{self, Admitted, Reject, UNROUTED};
use crate::policy::{self, Policy, PolicyError, Route};
use crate::protect::{Brownout, Priority};
use crate::records::{Level, RecordsPolicy};
use crate::traffic::{self, Entry, Traffic, TrafficError};
use bytes::Bytes;
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
    /// Fleet budgets are replayed at the share of one of this many guards (1: the whole).
    pub pods: u32,
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
    let fleet = policy::FleetRuntime::Alone {
        pods: Some(opts.pods.max(1)),
    };
    let policy = policy::parse_with_clock(&text, &name, &clock, &fleet)?;
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
    let run = Run {
        policy,
        hasher: crate::decide::KeyHasher,
        brownout: report.brownout,
    };
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
        run.replay_one(now, entry, report);
    }
    report.elapsed = started.elapsed();
    Ok(())
}

/// What every request of a replay shares.
struct Run<'p, C: Clock> {
    policy: &'p Policy<C>,
    /// The same per-process keying the live guard uses: keys only tell clients apart.
    hasher: crate::decide::KeyHasher,
    /// The controller is not simulated: the level does not move.
    brownout: Brownout,
}

impl<C: Clock> Run<'_, C> {
    /// One request through the decision core, counted where it ends.
    fn replay_one(&self, at: u64, entry: Entry, report: &mut Report) {
        let (size, partial) = (entry.body_size, entry.is_partial());
        let mut request = Request::new(());
        *request.method_mut() = entry.method;
        *request.uri_mut() = Uri::from(entry.target);
        *request.headers_mut() = entry.headers;
        let (parts, ()) = request.into_parts();

        let (route, r) = match decide::route(self.policy, &parts) {
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

        let (key, admitted) = match self.head(route, &parts, entry.peer, size, r) {
            Ok(admitted) => admitted,
            Err(e) => {
                r.reject(e.reason());
                // A batch refused whole from its head: its records are counted as refused.
                if let Some(records) = &route.records
                    && !partial
                    && let Some(counts) =
                        batch::count_unjudged(records, &parts.headers, &entry.body)
                {
                    r.refused_records(at, &counts);
                }
                return;
            }
        };
        if let Some(clamp) = &route.clamp {
            r.clamped += u64::from(clamp.count(&parts.headers, &parts.uri));
        }

        let forwarded = match (&route.records, size) {
            (Some(_), 1..) if partial => {
                // The recording did not keep the whole batch: its records cannot be counted.
                r.partial += 1;
                Ok(Some(size))
            }
            (Some(records), 1..) => {
                judge_batch(records, &parts.headers, key, &admitted, entry.body, at, r)
            }
            _ => Ok(Some(size)),
        };
        match forwarded {
            Ok(Some(bytes)) => {
                r.requests.forward(at, 1);
                r.body.forward(at, bytes);
            }
            // Every record dropped: the guard answers these itself, nothing reaches the upstream.
            Ok(None) => {}
            Err(e) => r.reject(e.reason()),
        }
    }

    /// The head's phases, in the live guard's order: identify, then admit (brownout and payload
    /// budgets); client budgets skipped for a full key store are counted in `r`.
    fn head(
        &self,
        route: &Route<C>,
        parts: &http::request::Parts,
        peer: std::net::IpAddr,
        size: u64,
        r: &mut report::RouteReport,
    ) -> Result<(Option<u64>, Admitted<C>), Reject> {
        let key = decide::identify(route, parts, peer, &self.hasher)?;
        let mut untracked = false;
        let cfg = &self.policy.protect.brownout;
        let admitted = decide::admit(route, key, self.brownout, cfg, Some(size), |_| {
            untracked = true
        });
        r.untracked += u64::from(untracked);
        Ok((key, admitted?))
    }
}

/// The live guard's records phase: the batch judged and counted; the size of what would go
/// upstream, `None` when the guard would answer itself, or the refusal.
fn judge_batch<C: Clock>(
    records: &RecordsPolicy<C>,
    headers: &http::HeaderMap,
    key: Option<u64>,
    admitted: &Admitted<C>,
    body: Bytes,
    at: u64,
    r: &mut report::RouteReport,
) -> Result<Option<u64>, Reject> {
    let judged = batch::judge(records, headers, key, &admitted.tighten, &body)?;
    if let Err(shed) = batch::salvaged(&judged, admitted.salvage.as_ref()) {
        // A salvaged bulk batch with no error record left is shed whole after all.
        if let Some(tally) = judged.tally() {
            let counts =
                Level::ALL.map(|l| (tally.level(l).received, tally.level(l).received_bytes));
            r.refused_records(at, &counts);
        }
        return Err(shed);
    }
    if let Some(refusal) = judged.refusal() {
        r.batch(judged.outcome());
        return Err(refusal);
    }
    let forwarded = judged.forward(body)?.map(|b| b.len() as u64);
    r.batch(judged.outcome());
    if let Some(tally) = judged.tally() {
        r.decided(at, tally);
    }
    Ok(forwarded)
}
