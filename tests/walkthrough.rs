//! The README's walkthrough, as a newcomer runs it: the level-budget step posts its batch
//! through the guard (the shipped policy) to the real `echo-upstream` binary and gets exactly
//! the output the README shows; the sample traffic under `examples/` replays against the
//! shipped policy, and every `simulate` report shown in the README and the docs is a real
//! run's (policy version hash included).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::{PATIENCE, TestGuard, repo};

const BIN: &str = env!("CARGO_BIN_EXE_verbosity-guard");
const POLICY: &str = "policies/vehicle-api.yaml";
const README: &str = "README.md";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `verbosity-guard echo-upstream` on a free port, killed when dropped.
struct Echo {
    child: Child,
    url: String,
}

impl Echo {
    fn start() -> Echo {
        let mut child = Command::new(BIN)
            .args(["echo-upstream", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        // Its first line says where it listens; it prints it once bound.
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("a first line");
        let url = first
            .trim()
            .strip_prefix("echo-upstream listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Echo { child, url }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of the README's ```sh block that holds `needle`, and of the ```text block after it.
fn block_after(page: &str, needle: &str) -> (String, String) {
    let at = page
        .find(needle)
        .unwrap_or_else(|| panic!("the page has no {needle:?}"));
    let command_end = at + page[at..].find("```").expect("the command block closes");
    let shown = page[command_end + 3..]
        .trim_start()
        .strip_prefix("```text\n")
        .unwrap_or_else(|| panic!("no ```text block of output after {needle:?}"));
    let block_start = page[..at].rfind("```sh\n").expect("a ```sh block");
    (
        page[block_start..command_end].to_owned(),
        shown[..shown.find("```").expect("the output block closes")].to_owned(),
    )
}

#[tokio::test]
async fn readme_level_budget_step_shows_what_the_echo_upstream_got() {
    let echo = Echo::start();
    let g = TestGuard::start_file(&repo(POLICY), &echo.url, |_| {}).await;
    let readme = read(README);
    let (command, shown) = block_after(&readme, "localhost:8080/api/1/telemetry");
    // The batch is the records the README's printf writes, one per line.
    let batch: String = command
        .split('\'')
        .filter(|s| s.starts_with("{\"level\""))
        .map(|record| format!("{record}\n"))
        .collect();
    assert_eq!(batch.lines().count(), 5, "the README's batch: {command}");
    assert!(command.contains("content-type: application/x-ndjson"));
    assert!(command.contains("x-vehicle-id: car-1"));

    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/api/1/telemetry", g.url))
        .header("content-type", "application/x-ndjson")
        .header("x-vehicle-id", "car-1")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    // What curl's -w prints after the body.
    let summary = format!(
        "kept {}, dropped {}\n",
        header("x-verbosity-guard-records-kept"),
        header("x-verbosity-guard-records-dropped")
    );
    let got = resp.text().await.unwrap() + &summary;
    assert_eq!(
        shown, got,
        "the README shows another output than a real run's"
    );
    assert!(got.contains("dropped 2"), "{got}");
}

/// The `--fail-if` conditions and the traffic file a report's own lines name, so a shown
/// report says how to run it again.
fn rerun_args(report: &str) -> Vec<String> {
    let first = report.lines().next().unwrap();
    let traffic = first
        .split(" against ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no traffic file in {first:?}"));
    let policy = first.split(' ').next().unwrap();
    let mut args: Vec<String> = ["simulate", "--policy", policy, "--traffic", traffic]
        .map(String::from)
        .into();
    for line in report.lines() {
        if let Some(rest) = line.strip_prefix("fail-if ") {
            // `fail-if COND   VALUE  ok|BREACHED`: the condition is all but the last two words.
            let words: Vec<&str> = rest.split_whitespace().collect();
            args.push("--fail-if".into());
            args.push(words[..words.len() - 2].join(" "));
        }
    }
    args
}

/// A report line with the replay's own duration (the one thing that varies) left out.
fn normalized(line: &str) -> String {
    match line.split_once(", replayed in ") {
        Some((before, after)) => {
            let rest = after.split_once(';').map_or("", |(_, r)| r);
            format!("{before}, replayed in _;{rest}")
        }
        None => line.trim_end().to_owned(),
    }
}

/// Every report shown under a `simulate` command on `page` is a real run's: each shown line
/// (a `...` line stands for lines left out) is a line of the real report, in order.
fn shown_reports_are_real(page_path: &str) -> usize {
    let page = read(page_path);
    let mut checked = 0;
    let mut rest = page.as_str();
    while let Some(at) = rest.find("```text\npolicies/") {
        let block = &rest[at + "```text\n".len()..];
        let report = &block[..block.find("```").expect("the block closes")];
        rest = &block[report.len()..];
        let args = rerun_args(report);
        let out = Command::new(BIN)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let breached = report.contains("BREACHED");
        assert_eq!(
            out.status.code(),
            Some(if breached { 3 } else { 0 }),
            "{page_path}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let real: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(normalized)
            .collect();
        let mut from = 0;
        for line in report.lines().filter(|l| l.trim() != "...") {
            let line = normalized(line);
            let found = real[from..].iter().position(|r| *r == line);
            let Some(i) = found else {
                panic!(
                    "{page_path}: `verbosity-guard {}` does not print, in this order:\n{line}\n\
                     real report:\n{}",
                    args.join(" "),
                    real.join("\n")
                );
            };
            from += i + 1;
        }
        checked += 1;
    }
    checked
}

#[test]
fn simulate_reports_in_the_readme_and_docs_are_real_runs() {
    assert!(
        shown_reports_are_real(README) >= 2,
        "{README}: a report for each sample"
    );
    assert!(shown_reports_are_real("docs/shadow-and-simulate.md") >= 1);
}

#[test]
fn sample_traffic_replays_against_the_shipped_policy() {
    for (traffic, format, requests) in [
        ("examples/fleet-surge.ndjson", "NDJSON", 177),
        ("examples/fleet-console.har", "HAR", 16),
    ] {
        let out = Command::new(BIN)
            .args(["simulate", "--policy", POLICY, "--traffic", traffic])
            .args(["--format", "json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{traffic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["requests"], requests, "{traffic} ({format})");
        assert_eq!(report["out_of_order"], 0, "{traffic}");
    }
    // The surge sample shows what it is for: debug and trace of the surge dropped, every
    // error forwarded, an impatient owner's honks beyond the burst refused.
    let out = Command::new(BIN)
        .args(["simulate", "--policy", POLICY])
        .args(["--traffic", "examples/fleet-surge.ndjson"])
        .args(["--fail-if", "forwarded(*:error) < 100%"])
        .args(["--fail-if", "forwarded(telemetry:debug) > 5%"])
        .args(["--fail-if", "forwarded(telemetry:trace) > 0"])
        .args(["--fail-if", "rejected(commands, client_requests) < 2"])
        .args(["--fail-if", "rejected(commands, client_requests) > 2"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
