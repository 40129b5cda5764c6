//! One run of the scenario: start the mock API (and, guarded, the guard in front of it), let the
//! fleet loose, sample the API and the fleet once a second, and turn the measurements into a
//! [`RunReport`].

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::backend::{Backend, BackendConfig};
use super::fleet::{self, Clock, FleetConfig, FleetMeter};
use super::report::{self, GuardState, Mode, PhaseReport, RunReport, TickSample};
use super::stats::{PerPhase, Phase};
use super::{DemoError, ScenarioOptions};
use crate::app::{App, Config, PolicySource};

/// The example policy, as shipped: the demo shows what it does, not a tuned copy.
const POLICY: &str = include_str!("../../policies/vehicle-api.yaml");
pub(super) const POLICY_NAME: &str = "policies/vehicle-api.yaml";
const TICK: Duration = Duration::from_secs(1);
const MIN_PRINTED_SAMPLE: f64 = 0.25;

/// Runs the scenario once in `mode`, printing a progress line per second if asked.
pub async fn run(opts: &ScenarioOptions, mode: Mode) -> Result<RunReport, DemoError> {
    let backend = Backend::start(BackendConfig::with_capacity(opts.capacity())).await?;
    let guard = match mode {
        Mode::Unguarded => None,
        Mode::Guarded => Some(start_guard(backend.addr()).await?),
    };
    let target = guard.as_ref().map_or(backend.addr(), App::proxy_addr);
    let result = drive(opts, mode, target, &backend, guard.as_ref()).await;
    if let Some(app) = guard {
        // The fleet is done, so nothing is in flight: this returns at once.
        app.shutdown().await;
    }
    result
}

/// The demo compresses an incident of hours into seconds, so the shipped policy's clocks are
/// sped up (and only those): `(setting, as shipped, in the demo)`.
pub(super) const TIMESCALE: &[(&str, &str, &str)] = &[
    (
        "brownout interval",
        "    interval: 1s\n    latency_factor",
        "    interval: 250ms\n    latency_factor",
    ),
    (
        "brownout raise_after",
        "raise_after: 2s",
        "raise_after: 500ms",
    ),
    (
        "brownout relax_after",
        "relax_after: 10s",
        "relax_after: 3s",
    ),
    ("brownout warmup", "    warmup: 10s", "    warmup: 2s"),
    ("surge hold", "hold: 30s", "hold: 1s\n    window: 2s"),
    ("surge warmup", "    warmup: 5m", "    warmup: 3s"),
];

/// The shipped policy with the demo's [`TIMESCALE`]; fails if the policy no longer has one of
/// the settings as shipped (the demo must not silently run untuned).
pub(super) fn demo_policy() -> Result<String, DemoError> {
    let mut text = POLICY.to_owned();
    for (what, shipped, demo) in TIMESCALE {
        if text.matches(shipped).count() != 1 {
            return Err(DemoError::Policy(what));
        }
        text = text.replacen(shipped, demo, 1);
    }
    Ok(text)
}

async fn start_guard(upstream: SocketAddr) -> Result<App, DemoError> {
    let policy = PolicySource::Text {
        name: POLICY_NAME.to_owned(),
        text: demo_policy()?,
    };
    Ok(App::start(Config::new(policy, format!("http://{upstream}"))).await?)
}

/// Runs the fleet against `target` and samples until every request has finished.
async fn drive(
    opts: &ScenarioOptions,
    mode: Mode,
    target: SocketAddr,
    backend: &Backend,
    guard: Option<&App>,
) -> Result<RunReport, DemoError> {
    let start = Instant::now();
    let clock = Clock {
        start,
        surge_at: start + opts.surge_at(),
        end: start + opts.duration,
    };
    let meter = FleetMeter::default();
    let cfg = FleetConfig {
        vehicles: opts.vehicles,
        surge_factor: opts.surge_factor,
        clock,
        target,
        seed: opts.seed,
        owner_rate: opts.owner_rate(),
    };
    let mut fleet = tokio::spawn(fleet::run(cfg, meter.clone()));
    let mut sampler = Sampler::new(clock, mode, backend, &meter, guard, opts.progress);
    // The incident: part of the API's workers fail, so it can serve less than before.
    let incident = async {
        if let Some((at, lost)) = opts.incident() {
            tokio::time::sleep_until(start + at).await;
            backend.lose_workers(lost).await;
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(incident);
    let mut ticks = tokio::time::interval_at(start + TICK, TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut fleet => {
                done?;
                break;
            }
            _ = ticks.tick() => sampler.sample(),
            () = &mut incident => {}
        }
    }
    // The last, partial second: in-flight requests finishing after the end.
    sampler.sample();
    let timeline = sampler.timeline;
    let work = backend.totals();
    let fleet = meter.totals();
    let phases =
        PerPhase(Phase::ALL.map(|p| PhaseReport::measure(p, &work[p], &fleet[p], &timeline)));
    Ok(RunReport {
        mode,
        phases,
        timeline,
    })
}

/// The guard's brownout level and the route/levels in a verbosity surge, read from its metrics
/// as an operator would see them.
fn guard_state(app: &App) -> GuardState {
    let mut state = GuardState::default();
    for family in app.registry().gather() {
        match family.name() {
            "verbosity_guard_brownout_level" => {
                if let Some(m) = family.get_metric().first() {
                    state.brownout = m.get_gauge().get_value() as u8;
                }
            }
            "verbosity_guard_surge_active" => {
                for m in family.get_metric() {
                    if m.get_gauge().get_value() > 0.0 {
                        let label = |name: &str| {
                            m.get_label()
                                .iter()
                                .find(|l| l.name() == name)
                                .map_or("", |l| l.value())
                                .to_owned()
                        };
                        state
                            .surging
                            .push(format!("{}/{}", label("route"), label("level")));
                    }
                }
            }
            _ => {}
        }
    }
    state.surging.sort();
    state
}

/// Takes a sample of the API and the fleet each second, prints it, and keeps it.
struct Sampler<'a> {
    clock: Clock,
    mode: Mode,
    backend: &'a Backend,
    meter: &'a FleetMeter,
    guard: Option<&'a App>,
    print: bool,
    last: Instant,
    timeline: Vec<TickSample>,
}

impl<'a> Sampler<'a> {
    fn new(
        clock: Clock,
        mode: Mode,
        backend: &'a Backend,
        meter: &'a FleetMeter,
        guard: Option<&'a App>,
        print: bool,
    ) -> Sampler<'a> {
        Sampler {
            clock,
            mode,
            backend,
            meter,
            guard,
            print,
            last: clock.start,
            timeline: Vec::new(),
        }
    }

    fn sample(&mut self) {
        let now = Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let at = self.last.duration_since(self.clock.start);
        let phase = (self.last < self.clock.end).then(|| self.clock.phase_at(self.last));
        self.last = now;
        let work = self.backend.take_tick();
        let fleet = self.meter.take_tick();
        let workers = self.backend.online_workers() as f64;
        let sample = TickSample {
            at,
            phase,
            secs,
            bytes: work.bytes,
            records: work.records,
            // A request's work is counted in the second it ends, so a second that closes long
            // requests can sum to more than the workers had: capped at all of them.
            utilization: (work.busy / (workers * secs)).min(1.0),
            p99: work.latency.quantile(0.99),
            commands_ok: fleet.commands_ok,
            commands: fleet.commands,
            guard_rejections: fleet.guard_rejections,
            workers: self.backend.online_workers(),
            guard: self.guard.map(guard_state),
        };
        // The last sample of a run can be a sliver of a second, whose rates mean little.
        if self.print && secs >= MIN_PRINTED_SAMPLE {
            // Progress is a courtesy: a closed stdout must not stop the run.
            let mut out = std::io::stdout().lock();
            if self.timeline.is_empty() {
                let _ = writeln!(out, "{}", report::PROGRESS_HEADER);
                if self.guard.is_some() {
                    let _ = writeln!(out, "{}", report::brownout_legend());
                }
            }
            let _ = writeln!(out, "{}", sample.line(self.mode));
        }
        self.timeline.push(sample);
    }
}
