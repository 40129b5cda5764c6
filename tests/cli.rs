//! The binary as users run it: `check` exit codes and messages, every shipped policy valid,
//! every policy in `policies/invalid/` refused with the message written at its top, and `serve`
//! refusing bad input with exit code 65.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::process::{Command, Output};

use support::files;

const BIN: &str = env!("CARGO_BIN_EXE_verbosity-guard");
const EXIT_BAD_INPUT: i32 = 65;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("binary runs")
}

#[test]
fn every_shipped_policy_checks_and_is_summarized() {
    for file in files("policies", "yaml") {
        let out = run(&["check", file.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok, "), "{stdout}");
    }
    let out = run(&["check", "policies/vehicle-api.yaml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "commands",
        "critical",
        "/api/1/vehicles/{id}/command/{command}",
        "telemetry",
        "client_bytes 1MiB/s burst 1MiB",
        "records ndjson: fatal keep; error keep; warn 40/s burst 200 per client",
        "debug sample 1%; trace drop",
    ] {
        assert!(
            stdout.contains(expected),
            "summary lacks {expected:?}:\n{stdout}"
        );
    }
}

#[test]
fn every_invalid_policy_fails_with_its_expected_message() {
    for file in files("policies/invalid", "yaml") {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let out = run(&["check", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_BAD_INPUT),
            "{}",
            file.display()
        );
        for want in expected {
            assert!(
                stderr.lines().any(|l| l.contains(&format!("/{want}"))),
                "{}: expected a line with {want:?}, got:\n{stderr}",
                file.display()
            );
        }
    }
}

#[test]
fn check_with_any_invalid_file_fails_but_reports_the_valid_ones() {
    let out = run(&[
        "check",
        "policies/vehicle-api.yaml",
        "policies/invalid/bad-size.yaml",
    ]);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    assert!(String::from_utf8_lossy(&out.stdout).contains("policies/vehicle-api.yaml: ok"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"12XB\" is not a size"));

    let out = run(&["check", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does/not/exist.yaml: cannot read"));

    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn serve_refuses_bad_input_with_exit_65() {
    let out = run(&[
        "serve",
        "--policy",
        "policies/invalid/no-catch-all.yaml",
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the last route must be a catch-all"));

    for upstream in [
        "https://127.0.0.1:9",
        "http://127.0.0.1:9/base",
        "not a url",
    ] {
        let out = run(&[
            "serve",
            "--policy",
            "policies/vehicle-api.yaml",
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ]);
        assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT), "{upstream}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("upstream"),
            "{upstream}"
        );
    }
}

#[test]
fn flags_can_come_from_the_environment() {
    let out = Command::new(BIN)
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .env("VERBOSITY_GUARD_POLICY", "policies/invalid/bad-size.yaml")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-size.yaml:9"));
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_policy_says_the_os_error_once() {
    let out = run(&[
        "serve",
        "--policy",
        "does/not/exist.yaml",
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    let err = stderr(&out);
    assert!(err.contains("does/not/exist.yaml: cannot read"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn a_busy_port_names_its_listener_and_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for (flag, listener) in [("--listen", "proxy"), ("--admin", "admin")] {
        let (listen, admin) = if flag == "--listen" {
            (busy.as_str(), "127.0.0.1:0")
        } else {
            ("127.0.0.1:0", busy.as_str())
        };
        let out = run(&[
            "serve",
            "--policy",
            "policies/vehicle-api.yaml",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            listen,
            "--admin",
            admin,
            "--no-watch",
        ]);
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = stderr(&out);
        let want = format!("cannot listen on {busy} (the {listener} listener, {flag}): ");
        assert!(err.contains(&want), "{flag}: expected {want:?} in:\n{err}");
        assert_eq!(err.matches("os error").count(), 1, "{err}");
    }
}

#[test]
fn a_scheme_less_upstream_gets_the_url_it_meant() {
    let out = run(&[
        "serve",
        "--policy",
        "policies/vehicle-api.yaml",
        "--upstream",
        "localhost:8000",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(EXIT_BAD_INPUT));
    let err = stderr(&out);
    assert!(err.contains("did you mean http://localhost:8000?"), "{err}");
}

#[test]
fn listen_takes_localhost_or_asks_for_an_ip_address() {
    use clap::Parser;
    use verbosity_guard::cli::{Cli, Command};
    let parse = |flag: &str, value: &str| {
        Cli::try_parse_from([
            "verbosity-guard",
            "serve",
            "--policy",
            "p.yaml",
            "--upstream",
            "http://127.0.0.1:8000",
            flag,
            value,
        ])
    };
    for flag in ["--listen", "--admin"] {
        let Command::Serve(args) = parse(flag, "localhost:8080").unwrap().command else {
            panic!("serve");
        };
        let addr = if flag == "--listen" {
            args.listen
        } else {
            args.admin
        };
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap(), "{flag}");
        for bad in ["example.com:8080", "localhost", "localhost:http"] {
            let err = parse(flag, bad).unwrap_err().to_string();
            assert!(
                err.contains("use an IP address") || err.contains("is not a port number"),
                "{flag} {bad}: {err}"
            );
        }
    }
    // As the binary says it: a usage error, exit 2.
    let out = run(&[
        "serve",
        "--policy",
        "policies/vehicle-api.yaml",
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        "example.com:8080",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("use an IP address, e.g. 127.0.0.1:8080"));
}
