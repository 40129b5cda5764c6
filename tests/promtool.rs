//! Prometheus' own linter on a real scrape: the guard, running the shipped policy, serves
//! traffic of every kind it counts (forwarded, refused, downsampled, shed), and
//! `promtool check metrics` must find nothing to say about `/metrics`.
//!
//! promtool comes from Debian's `prometheus` package (`apt-get install prometheus`), which
//! `.ci/run` installs. The test is marked ignored so that a plain `cargo test` lists it as
//! ignored, naming what it needs; `cargo test -- --include-ignored` (what `.ci/run` runs) runs
//! it, and then a missing promtool is a failure that says how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{TestGuard, TestUpstream, client, require_program};

const POLICY: &str = include_str!("../policies/vehicle-api.yaml");

/// Fails the test, saying how to install it, unless `promtool --version` runs.
fn require_promtool() {
    require_program(
        "promtool",
        &["--version"],
        "promtool: install it with `apt-get install prometheus` (Debian's package)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (apt-get install prometheus); run with --include-ignored"]
async fn promtool_check_metrics_passes_on_a_real_scrape() {
    require_promtool();
    let up = TestUpstream::start().await;
    let g = TestGuard::start(POLICY, &up.url).await;
    let http = client();
    // A batch that is downsampled (debug sampled, trace dropped), a command, a read, a path
    // the guard refuses, and a body over its route's max_body.
    let batch = "{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"debug\",\"msg\":\"b\"}\n{\"level\":\"trace\",\"msg\":\"c\"}\n";
    let sends = [
        http.post(format!("{}/api/1/telemetry/logs", g.url))
            .header("x-vehicle-id", "car-1")
            .body(batch),
        http.post(format!("{}/api/1/vehicles/1/command/honk_horn", g.url))
            .header("x-vehicle-id", "car-1"),
        http.get(format!("{}/api/1/vehicles/1/vehicle_data", g.url)),
        http.get(format!("{}/a%2Fb", g.url)),
        http.post(format!("{}/api/1/vehicles/1/command/x", g.url))
            .header("x-vehicle-id", "car-1")
            .body(vec![b'x'; 20_000]),
    ];
    for req in sends {
        req.send().await.unwrap();
    }
    let text = g.scrape().await;
    for family in [
        "verbosity_guard_records_dropped_total",
        "verbosity_guard_upstream_exchanges_total",
        "verbosity_guard_rejections_total",
        "verbosity_guard_upstream_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing from the scrape");
    }

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool check metrics complained:\n{said}"
    );
}
