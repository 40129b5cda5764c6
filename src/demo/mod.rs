//! `verbosity-guard demo`: a simulated fleet, a verbosity surge, and the guard containing it.
//!
//! Everything runs in this process on 127.0.0.1: a mock vehicle API with finite capacity
//! ([`backend`]), a fleet of vehicles and owners ([`fleet`]) and, for the second run, the guard
//! itself, started with `App::start` and the shipped `policies/vehicle-api.yaml`. The same
//! scenario (normal traffic, then every vehicle switching to debug logging a third of the way in)
//! runs unguarded and then guarded, and [`report`] prints what was measured side by side.
//!
//! The library entry point is [`run_scenario`], which returns the [`Report`]; [`run`] is the
//! command, which also prints it.

pub mod backend;
pub mod client;
pub mod fleet;
pub mod report;
pub mod rng;
mod scenario;
pub mod stats;
pub mod telemetry;

use std::io::Write as _;
use std::time::Duration;

use clap::Args;

pub use report::{Mode, Report, RunReport};

use crate::units::{ByteRate, HumanDuration, UnitError};

/// The mock API is sized for its fleet: 100 kB/s of telemetry per vehicle, so a normal fleet
/// (~15 kB/s per vehicle) uses ~15% of it, whatever `--vehicles` says.
const CAPACITY_PER_VEHICLE: u64 = 100_000;
/// Owners' requests per second at most (commands and state reads), and per vehicle: one per
/// vehicle per second keeps each car's owner well inside the commands route's per-vehicle budget.
const OWNER_RATE: f64 = 30.0;
const OWNER_RATE_PER_VEHICLE: f64 = 1.5;
const MAX_VEHICLES: usize = 10_000;
const MAX_SURGE_FACTOR: u32 = 100;
const MIN_DURATION: Duration = Duration::from_secs(3);
const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Simulated vehicles.
    #[arg(long, default_value_t = 100)]
    pub vehicles: usize,
    /// Length of each run (unguarded, then guarded); the surge starts a third of the way in.
    #[arg(long, default_value = "15s")]
    pub duration: HumanDuration,
    /// How much more telemetry each vehicle sends during the surge.
    #[arg(long, default_value_t = 20)]
    pub surge_factor: u32,
    /// Telemetry the mock API can ingest, e.g. 10MB/s (default: 100kB/s per vehicle).
    #[arg(long, value_parser = parse_byte_rate)]
    pub backend_capacity: Option<ByteRate>,
    /// Seed for the fleet's behaviour; the same seed gives the same traffic shape.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print only the final table, not a progress line per second.
    #[arg(long)]
    pub quiet: bool,
    /// Run without the incident (three quarters of the API's workers failing at 60% of the
    /// run, which is what makes the guard's brownout step in).
    #[arg(long)]
    pub no_incident: bool,
}

fn parse_byte_rate(s: &str) -> Result<ByteRate, UnitError> {
    s.parse()
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the guard: {0}")]
    Start(#[from] crate::app::StartError),
    #[error("demo I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid demo option: {0}")]
    InvalidOption(&'static str),
    #[error("{0} is no longer set as the demo expects in policies/vehicle-api.yaml")]
    Policy(&'static str),
    #[error("a demo task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What to run; [`DemoArgs`] minus presentation, plus what tests want to set.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub vehicles: usize,
    /// Length of each run.
    pub duration: Duration,
    pub surge_factor: u32,
    /// Telemetry bytes per second the mock API can ingest; `None` sizes it to the fleet.
    pub backend_capacity: Option<u64>,
    pub seed: u64,
    /// Print a progress line per second to stdout.
    pub progress: bool,
    /// Three quarters of the API's workers fail at 60% of the run.
    pub incident: bool,
}

impl Default for ScenarioOptions {
    /// The command's defaults, without progress lines.
    fn default() -> Self {
        ScenarioOptions {
            vehicles: 100,
            duration: Duration::from_secs(15),
            surge_factor: 20,
            backend_capacity: None,
            seed: 1,
            progress: false,
            incident: true,
        }
    }
}

impl ScenarioOptions {
    pub fn from_args(args: &DemoArgs) -> ScenarioOptions {
        ScenarioOptions {
            vehicles: args.vehicles,
            duration: args.duration.into(),
            surge_factor: args.surge_factor,
            backend_capacity: args.backend_capacity.map(|r| r.per_second().round() as u64),
            seed: args.seed,
            progress: !args.quiet,
            incident: !args.no_incident,
        }
    }

    fn validate(&self) -> Result<(), DemoError> {
        if !(1..=MAX_VEHICLES).contains(&self.vehicles) {
            return Err(DemoError::InvalidOption(
                "--vehicles must be between 1 and 10000",
            ));
        }
        if !(1..=MAX_SURGE_FACTOR).contains(&self.surge_factor) {
            return Err(DemoError::InvalidOption(
                "--surge-factor must be between 1 and 100",
            ));
        }
        if !(MIN_DURATION..=MAX_DURATION).contains(&self.duration) {
            return Err(DemoError::InvalidOption(
                "--duration must be between 3s and 10m",
            ));
        }
        if self.backend_capacity == Some(0) {
            return Err(DemoError::InvalidOption(
                "--backend-capacity must be greater than zero",
            ));
        }
        Ok(())
    }

    fn capacity(&self) -> u64 {
        self.backend_capacity
            .unwrap_or(self.vehicles as u64 * CAPACITY_PER_VEHICLE)
    }

    /// A third of the run, on a whole second so that each progress line is in one phase.
    fn surge_at(&self) -> Duration {
        Duration::from_secs((self.duration.as_secs_f64() / 3.0).round().max(1.0) as u64)
    }

    /// When the incident starts and how many workers the API loses, if there is one.
    fn incident(&self) -> Option<(Duration, usize)> {
        let at = Duration::from_secs((self.duration.as_secs_f64() * 0.6).round() as u64);
        let workers = backend::BackendConfig::with_capacity(self.capacity()).workers;
        self.incident.then_some((at, workers * 3 / 4))
    }

    fn owner_rate(&self) -> f64 {
        OWNER_RATE.min(self.vehicles as f64 * OWNER_RATE_PER_VEHICLE)
    }

    fn setup(&self) -> report::Setup {
        let api = backend::BackendConfig::with_capacity(self.capacity());
        report::Setup {
            vehicles: self.vehicles,
            surge_factor: self.surge_factor,
            run_length: self.duration,
            surge_at: self.surge_at(),
            incident: self.incident(),
            capacity: api.capacity,
            workers: api.workers,
            queue_timeout: api.queue_timeout,
        }
    }
}

/// Runs the scenario unguarded, then guarded, and returns what was measured.
pub async fn run_scenario(opts: &ScenarioOptions) -> Result<Report, DemoError> {
    opts.validate()?;
    let unguarded = scenario::run(opts, Mode::Unguarded).await?;
    let guarded = scenario::run(opts, Mode::Guarded).await?;
    Ok(Report {
        setup: opts.setup(),
        unguarded,
        guarded,
    })
}

/// The `demo` command: runs the scenario and prints the comparison.
pub async fn run(args: &DemoArgs) -> Result<(), DemoError> {
    let opts = ScenarioOptions::from_args(args);
    opts.validate()?;
    if opts.progress {
        let s = opts.setup();
        let _ = writeln!(
            std::io::stdout().lock(),
            "Two runs of {}s: {} vehicles and their owners against a mock API that ingests {}; \
             at t={}s every vehicle switches to debug logging (x{} volume).\n\
             {}Run 1 sends straight to the API, run 2 through verbosity-guard ({}, its clocks \
             sped up for the demo: {}).\n",
            s.run_length.as_secs(),
            s.vehicles,
            report::bytes_per_s(s.capacity as f64),
            s.surge_at.as_secs(),
            s.surge_factor,
            match s.incident {
                Some((at, lost)) => format!(
                    "At t={}s {lost} of the API's {} workers fail.\n",
                    at.as_secs(),
                    s.workers
                ),
                None => String::new(),
            },
            scenario::POLICY_NAME,
            scenario::TIMESCALE
                .iter()
                .map(|(what, _, demo)| format!(
                    "{what} {}",
                    demo.split(':')
                        .nth(1)
                        .unwrap_or("")
                        .split('\n')
                        .next()
                        .unwrap_or("")
                        .trim()
                ))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let report = run_scenario(&opts).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(report.render().as_bytes())?;
    out.flush()?;
    Ok(())
}
