//! `verbosity-guard demo`: a simulated fleet, a verbosity surge, and the guard containing it.
//! Placeholder until the simulator lands: it says so and fails rather than pretend.

use clap::Args;

use crate::policy::units::HumanDuration;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Simulated vehicles.
    #[arg(long, default_value_t = 100)]
    pub vehicles: usize,
    /// Length of each run (unguarded, then guarded).
    #[arg(long, default_value = "15s")]
    pub duration: HumanDuration,
    /// How much more telemetry each vehicle sends during the surge.
    #[arg(long, default_value_t = 20)]
    pub surge_factor: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the demo is not available in this build yet")]
    NotYet,
}

pub async fn run(_args: &DemoArgs) -> Result<(), DemoError> {
    Err(DemoError::NotYet)
}
