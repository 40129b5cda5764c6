//! One run of the scenario: start the mock API (and, guarded, the guard in front of it), let the
//! fleet loose, sample the API and the fleet once a second, and turn the measurements into a
//! [`RunReport`].

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::backend::{Backend, BackendConfig};
use super::fleet::{self, Clock, FleetConfig, FleetMeter};
use super::report::{Mode, PhaseReport, RunReport, TickSample};
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
    let result = drive(opts, mode, target, &backend).await;
    if let Some(app) = guard {
        // The fleet is done, so nothing is in flight: this returns at once.
        app.shutdown().await;
    }
    result
}

async fn start_guard(upstream: SocketAddr) -> Result<App, DemoError> {
    let policy = PolicySource::Text {
        name: POLICY_NAME.to_owned(),
        text: POLICY.to_owned(),
    };
    Ok(App::start(Config::new(policy, format!("http://{upstream}"))).await?)
}

/// Runs the fleet against `target` and samples until every request has finished.
async fn drive(
    opts: &ScenarioOptions,
    mode: Mode,
    target: SocketAddr,
    backend: &Backend,
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
    let mut sampler = Sampler::new(clock, mode, backend, &meter, opts.progress);
    let mut ticks = tokio::time::interval_at(start + TICK, TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = &mut fleet => {
                done?;
                break;
            }
            _ = ticks.tick() => sampler.sample(),
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

/// Takes a sample of the API and the fleet each second, prints it, and keeps it.
struct Sampler<'a> {
    clock: Clock,
    mode: Mode,
    backend: &'a Backend,
    meter: &'a FleetMeter,
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
        print: bool,
    ) -> Sampler<'a> {
        Sampler {
            clock,
            mode,
            backend,
            meter,
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
        let workers = self.backend.config().workers as f64;
        let sample = TickSample {
            at,
            phase,
            secs,
            bytes: work.bytes,
            records: work.records,
            utilization: work.busy / (workers * secs),
            p99: work.latency.quantile(0.99),
            commands_ok: fleet.commands_ok,
            commands: fleet.commands,
            guard_rejections: fleet.guard_rejections,
        };
        // The last sample of a run can be a sliver of a second, whose rates mean little.
        if self.print && secs >= MIN_PRINTED_SAMPLE {
            // Progress is a courtesy: a closed stdout must not stop the run.
            let _ = writeln!(std::io::stdout().lock(), "{}", sample.line(self.mode));
        }
        self.timeline.push(sample);
    }
}
