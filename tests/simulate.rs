//! `verbosity-guard simulate` through the real binary: the same traffic counted by a live guard
//! and by a replay, a day of traffic on the virtual clock, a browser's HAR export, and the
//! `--fail-if` exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{TestGuard, TestUpstream, client, gzip, metric_value};

const BIN: &str = env!("CARGO_BIN_EXE_verbosity-guard");

/// Budgets refill at one unit per hour: see the comparison test for why.
const POLICY: &str = r#"
version: 1
client_key: { header: x-vehicle-id, fallback: peer_ip }
protect: { brownout: { enabled: false } }
routes:
  - name: telemetry
    match: { methods: [POST], path_prefix: /api/1/telemetry }
    priority: bulk
    payload:
      max_body: 4KiB
      client_requests: { rate: 1/h, burst: 12 }
      route_bytes: { rate: 1B/h, burst: 20KiB }
    records:
      format: ndjson
      on_malformed: reject
      levels:
        trace: drop
        debug: { sample: 25% }
        info: { rate: 1/h, burst: 20, per: client }
        warn: { bytes: 1B/h, bytes_burst: 2KiB }
  - name: commands
    match: { methods: [POST], path: "/api/1/vehicles/{id}/command/{command}" }
    priority: critical
    payload:
      max_body: 1KiB
      client_requests: { rate: 1/h, burst: 6 }
      client_bytes: { rate: 1B/h, burst: 1KiB }
  - name: default
    match: { path_prefix: / }
    payload: { route_requests: { rate: 1/h, burst: 15 } }
"#;

fn batch(i: usize) -> String {
    const LEVELS: [&str; 7] = ["trace", "debug", "info", "warn", "error", "info", "debug"];
    (0..3 + i % 9)
        .map(|j| {
            let level = LEVELS[(i * 3 + j) % LEVELS.len()];
            let pad = "p".repeat((i * 11 + j * 5) % 70);
            format!("{{\"level\":\"{level}\",\"msg\":\"{i}/{j} {pad}\"}}\n")
        })
        .collect()
}

/// One request of the generated traffic, in the NDJSON format.
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// Telemetry from five vehicles (plain and gzip, a few without a key, so keyed by peer, two
/// malformed), commands around their size limit, reads of other paths, and a path that cannot be
/// normalized.
fn generated() -> Vec<Req> {
    (0..160)
        .map(|i| {
            let mut headers = Vec::new();
            if i % 23 != 7 {
                headers.push(("x-vehicle-id", format!("VIN{:03}", i % 5)));
            }
            let (method, path, body) = match i % 8 {
                0..=4 => {
                    // Two batches cut off mid-record: malformed, so refused whole.
                    let text = match i {
                        17 | 97 => "{\"level\":\"error\",\"msg\":\"cut".to_owned(),
                        _ => batch(i),
                    };
                    headers.push(("content-type", "application/x-ndjson".into()));
                    let body = if i % 3 == 0 {
                        headers.push(("content-encoding", "gzip".into()));
                        gzip(text.as_bytes())
                    } else {
                        text.into_bytes()
                    };
                    ("POST", "/api/1/telemetry/batch".to_owned(), body)
                }
                5 => (
                    "POST",
                    format!("/api/1/vehicles/{}/command/unlock", i % 5),
                    vec![b'u'; 100 + (i * 37) % 1200],
                ),
                6 if i == 62 => ("GET", "/files/a%2Fb".to_owned(), Vec::new()),
                _ => (
                    "GET",
                    format!("/api/1/vehicles/{}/state?x={i}", i % 5),
                    Vec::new(),
                ),
            };
            Req {
                method,
                path,
                headers,
                body,
            }
        })
        .collect()
}

/// The traffic as an NDJSON file: one request every 5 ms from `start` (Unix seconds).
fn write_ndjson(dir: &Path, traffic: &[Req], start: f64) -> PathBuf {
    use base64::Engine as _;
    let mut out = String::new();
    for (i, r) in traffic.iter().enumerate() {
        let mut line = json!({
            "ts": start + i as f64 * 0.005,
            "method": r.method,
            "path": r.path,
            "headers": r.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
            "peer": "127.0.0.1",
        });
        if !r.body.is_empty() {
            line["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&r.body)
                .into();
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    let path = dir.join("traffic.ndjson");
    std::fs::write(&path, out).unwrap();
    path
}

fn simulate(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("simulate")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn simulate_json(policy: &Path, traffic: &Path) -> Value {
    let out = simulate(&[
        "--policy",
        policy.to_str().unwrap(),
        "--traffic",
        traffic.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn route<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("no route {name} in the report"))
}

fn level<'a>(route: &'a Value, level: &str) -> Option<&'a Value> {
    route["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["level"] == level)
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// The live guard and the replay must agree on every count, because they make the same
/// decisions: the replay runs the guard's own decision core, and the budgets give both the
/// same state at every request. That last part holds because every budget refills at one unit
/// per hour: the live run takes a few seconds of wall time and the file spans 0.8 s of virtual
/// time, so neither sees a single unit refilled and both decide on the bursts alone. (With
/// per-second rates they would diverge: the live guard's clock would run at the speed the
/// test sends, the virtual one at the file's timestamps.)
#[tokio::test]
async fn simulated_counts_equal_a_live_guards_on_the_same_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let traffic = generated();
    let file = write_ndjson(dir.path(), &traffic, 1_795_000_000.0);

    let up = TestUpstream::start().await;
    let g = TestGuard::start(POLICY, &up.url).await;
    for r in &traffic {
        let mut req = client().request(r.method.parse().unwrap(), format!("{}{}", g.url, r.path));
        for (k, v) in &r.headers {
            req = req.header(*k, v);
        }
        if !r.body.is_empty() {
            req = req.body(r.body.clone());
        }
        req.send().await.unwrap();
    }
    let live = g.scrape().await;
    let sim = simulate_json(&policy, &file);
    assert_eq!(sim["requests"], traffic.len());
    assert_eq!(sim["format"], "ndjson");

    let metric = |name: &str, labels: &[(&str, &str)]| {
        metric_value(&live, &format!("verbosity_guard_{name}"), labels).unwrap_or(0.0)
    };
    let mut compared = 0;
    for name in ["telemetry", "commands", "default", "_invalid"] {
        let r = route(&sim, name);
        let q = &r["requests"];
        let at = |outcome| metric("requests_total", &[("route", name), ("outcome", outcome)]);
        assert_eq!(n(&q["forwarded"]), at("forwarded"), "{name} forwarded");
        assert_eq!(
            n(&q["all_dropped"]),
            at("all_dropped"),
            "{name} all_dropped"
        );
        let rejected = q["rejected"].as_object().unwrap();
        let total: f64 = rejected.values().map(n).sum();
        assert_eq!(total, at("rejected"), "{name} rejected");
        for (reason, count) in rejected {
            let live = metric("rejections_total", &[("route", name), ("reason", reason)]);
            assert_eq!(n(count), live, "{name} rejected {reason}");
            compared += 1;
        }
        if name == "_invalid" {
            continue;
        }
        assert_eq!(
            n(&r["body_bytes"]["forwarded"]),
            metric("forwarded_body_bytes_total", &[("route", name)]),
            "{name} body bytes forwarded"
        );
        for (outcome, count) in r["batches"].as_object().unwrap() {
            let live = metric("batches_total", &[("route", name), ("outcome", outcome)]);
            assert_eq!(n(count), live, "{name} batches {outcome}");
        }
    }
    let t = route(&sim, "telemetry");
    // Vehicle VIN002's request budget is spent by the time the second one (i = 97) comes.
    assert_eq!(n(&t["batches"]["malformed_rejected"]), 1.0, "{t}");
    for lvl in ["trace", "debug", "info", "warn", "error"] {
        let l = level(t, lvl).unwrap_or_else(|| panic!("no {lvl} records"));
        let labels = [("route", "telemetry"), ("level", lvl)];
        for (unit, received, forwarded) in [
            (
                "records",
                "records_received_total",
                "records_forwarded_total",
            ),
            (
                "bytes",
                "record_bytes_received_total",
                "record_bytes_forwarded_total",
            ),
        ] {
            assert_eq!(
                n(&l[unit]["received"]),
                metric(received, &labels),
                "{lvl} {unit}"
            );
            assert_eq!(
                n(&l[unit]["forwarded"]),
                metric(forwarded, &labels),
                "{lvl} {unit}"
            );
        }
        for reason in ["drop_rule", "sample", "rate"] {
            let labels = [("route", "telemetry"), ("level", lvl), ("reason", reason)];
            let records = n(&l["records"]["dropped"][reason]);
            assert_eq!(
                records,
                metric("records_dropped_total", &labels),
                "{lvl} {reason}"
            );
            let bytes = n(&l["bytes"]["dropped"][reason]);
            assert_eq!(
                bytes,
                metric("record_bytes_dropped_total", &labels),
                "{lvl} {reason}"
            );
            compared += usize::from(records > 0.0);
        }
        // Records inside refused requests: the live guard never reads them; the replay does,
        // without charging anything, so that `dropped(level)` covers every record lost.
        let refused = n(&l["records"]["dropped"]["refused"]);
        assert_eq!(
            n(&l["records"]["offered"]),
            n(&l["records"]["received"]) + refused
        );
    }
    // The traffic is varied enough for the comparison to mean something.
    assert!(compared >= 8, "only {compared} non-trivial counts compared");
    let rate = ["info", "warn"]
        .iter()
        .any(|l| n(&level(t, l).unwrap()["records"]["dropped"]["rate"]) > 0.0);
    assert!(rate, "no record dropped by a rate");
    for reason in [
        "client_requests",
        "route_bytes",
        "client_bytes",
        "body_too_large",
    ] {
        let found = ["telemetry", "commands"].iter().any(|r| {
            route(&sim, r)["requests"]["rejected"][reason]
                .as_u64()
                .unwrap_or(0)
                > 0
        });
        assert!(found, "no request refused for {reason}");
    }
    assert!(n(&route(&sim, "default")["requests"]["rejected"]["route_requests"]) > 0.0);
    assert_eq!(
        n(&route(&sim, "_invalid")["requests"]["rejected"]["invalid_path"]),
        1.0
    );
}

/// A day of traffic, one request every 10 s from each of 10 vehicles, against a budget of one
/// request per minute per vehicle: exactly one in six is admitted. Replayed on the virtual
/// clock, it takes a moment, not a day.
#[test]
fn a_day_of_traffic_replays_on_the_virtual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: 1\nclient_key: { header: x-vehicle-id }\nroutes:\n  - name: default\n    match: { path_prefix: / }\n    payload: { client_requests: { rate: 1/m, burst: 1 } }\n",
    )
    .unwrap();
    let mut text = String::new();
    let start = 1_795_000_000u64;
    for step in 0..(24 * 360) {
        for v in 0..10 {
            // RFC 3339 and Unix seconds, mixed, a little apart.
            let secs = start + step * 10;
            let ts = match v % 2 {
                0 => json!(secs as f64 + f64::from(v) * 0.001),
                _ => json!(format!("{}Z", &rfc3339(secs)[..19])),
            };
            let line = json!({ "ts": ts, "method": "GET", "path": "/x", "headers": { "x-vehicle-id": format!("v{v}") } });
            text.push_str(&line.to_string());
            text.push('\n');
        }
    }
    let file = dir.path().join("day.ndjson");
    std::fs::write(&file, text).unwrap();
    let started = std::time::Instant::now();
    let report = simulate_json(&policy, &file);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(report["requests"], 86_400);
    let span = n(&report["span_s"]);
    assert!((86_389.0..86_400.0).contains(&span), "{span}");
    let q = &route(&report, "default")["requests"];
    assert_eq!(
        q["forwarded"], 14_400,
        "one request per vehicle per minute: {q}"
    );
    assert_eq!(q["rejected"]["client_requests"], 72_000);
    assert_eq!(q["peak_per_s"]["offered"], 10);
}

/// RFC 3339 (seconds) of Unix seconds, for the test's own timestamps.
fn rfc3339(secs: u64) -> String {
    verbosity_guard::traffic::time::format_rfc3339(secs * 1_000_000_000)
}

#[test]
fn a_browser_har_export_replays_against_the_shipped_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let report = simulate_json(
        &root.join("policies/vehicle-api.yaml"),
        &root.join("examples/fleet-console.har"),
    );
    assert_eq!(report["format"], "har");
    assert_eq!(report["requests"], 16);
    assert_eq!(report["first"], "2026-11-30T11:59:59.900000Z");
    assert_eq!(report["last"], "2026-11-30T12:00:00.810000Z");
    // Twelve commands within 110 ms: the burst of ten, then 429.
    let commands = &route(&report, "commands")["requests"];
    assert_eq!(commands["offered"], 12);
    assert_eq!(commands["forwarded"], 10);
    assert_eq!(commands["rejected"]["client_requests"], 2);
    assert_eq!(commands["peak_per_s"]["offered"], 12);
    assert_eq!(route(&report, "vehicle-state")["requests"]["forwarded"], 1);
    assert_eq!(route(&report, "default")["requests"]["forwarded"], 1);
    // Two batches, one of them gzip in base64; WARNING and ERROR are warn and error.
    let t = route(&report, "telemetry");
    assert_eq!(t["requests"]["forwarded"], 2);
    assert_eq!(t["batches"]["rewritten"], 1);
    assert_eq!(t["batches"]["untouched"], 1);
    let records = |l: &str| {
        level(t, l)
            .map(|l| l["records"].clone())
            .unwrap_or_default()
    };
    assert_eq!(records("error")["forwarded"], 2);
    assert_eq!(records("warn")["forwarded"], 3);
    assert_eq!(records("info")["forwarded"], 3);
    assert_eq!(records("trace")["dropped"]["drop_rule"], 1);
    assert_eq!(records("debug")["dropped"]["sample"], 1);
}

fn fixture_args() -> [String; 4] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        "--policy".into(),
        root.join("policies/vehicle-api.yaml").display().to_string(),
        "--traffic".into(),
        root.join("examples/fleet-console.har")
            .display()
            .to_string(),
    ]
}

fn run_with(extra: &[&str]) -> Output {
    let args = fixture_args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    simulate(&all)
}

#[test]
fn fail_if_thresholds_set_the_exit_code() {
    // 2 of 12 commands refused is 16.7%; no warn record dropped.
    let ok = run_with(&[
        "--fail-if",
        "rejected(commands) > 20%",
        "--fail-if",
        "dropped(warn) > 0",
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let table = String::from_utf8(ok.stdout).unwrap();
    assert!(
        table.contains("fail-if rejected(commands) > 20%"),
        "{table}"
    );
    assert!(table.contains("16.667%  ok"), "{table}");

    let breached = run_with(&[
        "--fail-if",
        "rejected(commands) > 10%",
        "--fail-if",
        "dropped(telemetry:trace, drop_rule) >= 1",
        "--fail-if",
        "forwarded(*:error) < 100%",
    ]);
    assert_eq!(breached.status.code(), Some(3));
    let stderr = String::from_utf8(breached.stderr).unwrap();
    assert!(
        stderr.contains("\"rejected(commands) > 10%\" holds"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"dropped(telemetry:trace, drop_rule) >= 1\" holds"),
        "{stderr}"
    );
    assert!(!stderr.contains("forwarded(*:error)"), "{stderr}");
    let table = String::from_utf8(breached.stdout).unwrap();
    assert!(table.contains("BREACHED"), "{table}");

    // The variable takes several conditions separated by ';'.
    let args = fixture_args();
    let env = Command::new(BIN)
        .arg("simulate")
        .args(&args)
        .env("VERBOSITY_GUARD_FAIL_IF", "dropped(warn) > 1%; shed(*) > 0")
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(env.stdout)
            .unwrap()
            .matches("fail-if ")
            .count(),
        2
    );

    // A route the policy does not have, or a condition that does not parse: usage, 2.
    let unknown = run_with(&["--fail-if", "rejected(telemetri) > 1%"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8(unknown.stderr).unwrap();
    assert!(
        stderr.contains("no route or level is called \"telemetri\""),
        "{stderr}"
    );
    assert!(unknown.stdout.is_empty(), "checked before the replay");
    let bad = run_with(&["--fail-if", "dropped(warn) ~ 1%"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8(bad.stderr)
            .unwrap()
            .contains("the comparison must be")
    );
}

#[test]
fn bad_input_exits_65_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.ndjson");
    std::fs::write(
        &file,
        "{\"ts\":1,\"method\":\"GET\",\"path\":\"/\"}\n{\"ts\":1,\"method\":\"GET\"}\n",
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy = root.join("policies/vehicle-api.yaml");
    let out = simulate(&[
        "--policy",
        policy.to_str().unwrap(),
        "--traffic",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("{}: line 2: ", file.display())) && stderr.contains("`path`"),
        "{stderr}"
    );
    let out = simulate(&[
        "--policy",
        root.join("policies/invalid/bad-size.yaml")
            .to_str()
            .unwrap(),
        "--traffic",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("bad-size.yaml:")
    );
}
