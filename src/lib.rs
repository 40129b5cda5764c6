//! verbosity-guard: a sidecar reverse proxy that keeps telemetry surges from taking a
//! vehicle-fleet API down. `ARCHITECTURE.md` shows the layers these modules form (each imports
//! only the ones below it); `docs/` holds the reference.

pub mod app;
pub mod budget;
pub mod check;
pub mod cli;
pub mod codec;
pub mod decide;
pub mod demo;
pub mod echo;
pub mod fleet;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod protect;
pub mod proxy;
pub mod record;
pub mod records;
pub mod route;
pub mod simulate;
pub mod traffic;
pub mod units;
