//! The demo's claims, measured end to end on real sockets: a verbosity surge locks owners out of
//! an unguarded API, and behind the guard (with the shipped policy) every command succeeds —
//! with the per-level budgets alone, and when the API also loses most of its workers, where the
//! brownout steps in.
//!
//! The scenario is sized so the outcome does not hinge on timing: unguarded, the surge offers
//! several times what the mock API can ingest; guarded, the per-level budgets forward well
//! under it (all errors, warn and info at a healthy rate, 1% of debug). The two runs are one
//! test so they do not share the two cores with each other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use std::time::Duration;

use verbosity_guard::demo::stats::Phase;
use verbosity_guard::demo::telemetry::Level;
use verbosity_guard::demo::{ScenarioOptions, run_scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_keeps_every_command_working_through_a_surge_and_an_api_incident() {
    let opts = ScenarioOptions {
        vehicles: 20,
        duration: Duration::from_secs(6),
        surge_factor: 40,
        incident: false,
        ..ScenarioOptions::default()
    };
    let report = run_scenario(&opts).await.unwrap();
    let table = report.render();
    let capacity = report.setup.capacity as f64;
    let (unguarded, guarded) = (&report.unguarded, &report.guarded);

    // The scenario happened as designed: normal traffic, then a surge far over capacity.
    let normal = unguarded.phase(Phase::Normal);
    assert!(normal.offered_bytes_per_s < 0.3 * capacity, "{table}");
    let surge = unguarded.phase(Phase::Surge);
    assert!(surge.offered_bytes_per_s > 4.0 * capacity, "{table}");
    assert!(surge.commands.sent() >= 20, "{table}");

    // Unguarded, owners are locked out.
    let unguarded_rate = unguarded.command_success_rate().unwrap();
    assert!(unguarded_rate < 1.0, "{table}");

    // Guarded, every command succeeds and the API stays under capacity, because the guard
    // downsampled the batches by level: the debug flood is shed, every error record arrives.
    assert_eq!(guarded.command_success_rate(), Some(1.0), "{table}");
    let surge = guarded.phase(Phase::Surge);
    assert!(surge.backend.utilization < 0.9, "{table}");
    // The policy never leaves an error record out of a batch, and the guard's own shedding
    // keeps a shed batch's error records (forwarded at normal priority) or refuses it whole
    // for the vehicle to send again: no error record is lost.
    let r = &surge.records;
    assert_eq!(r.downsampled(Level::Error), 0, "{table}");
    assert_eq!(r.lost[Level::Error], 0, "{table}");
    assert!(
        r.fraction(Level::Debug, r.undelivered(Level::Debug))
            .unwrap()
            > 0.9,
        "the debug flood does not reach the API\n{table}"
    );

    // Every vehicle's debug flood was seen as a surge, on both telemetry routes.
    let seen = &guarded.phase(Phase::Surge).surges;
    assert!(
        seen.iter().any(|s| s == "telemetry/debug"),
        "{seen:?}\n{table}"
    );

    // The default scenario: the API then loses three quarters of its workers. Commands still
    // all succeed behind the guard, because its brownout tightens bulk telemetry.
    let report = run_scenario(&ScenarioOptions {
        incident: true,
        ..opts
    })
    .await
    .unwrap();
    let table = report.render();
    assert!(
        report.unguarded.command_success_rate().unwrap() < 1.0,
        "{table}"
    );
    assert_eq!(report.guarded.command_success_rate(), Some(1.0), "{table}");
    let surge = report.guarded.phase(Phase::Surge);
    assert!(surge.peak_brownout >= Some(1), "{table}");
    assert_eq!(surge.records.downsampled(Level::Error), 0, "{table}");
    assert_eq!(surge.records.lost[Level::Error], 0, "{table}");
}
