//! Graceful drain: on shutdown (SIGTERM/SIGINT for the binary) the guard stops accepting,
//! reports unready, lets in-flight requests finish, then exits.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::{PATIENCE, TestGuard, TestUpstream, client, policy_with_route};

const ROUTE: &str = "  - name: api\n    match: { path_prefix: /api }\n";

#[tokio::test]
async fn in_flight_requests_finish_during_the_drain() {
    let up = TestUpstream::start().await;
    let TestGuard { app, url, admin } = TestGuard::start(&policy_with_route(ROUTE), &up.url).await;
    let proxy = app.proxy_addr();
    let in_flight = tokio::spawn(client().get(format!("{url}/__hold")).send());
    up.next_request().await; // the request is now held at the upstream

    app.begin_shutdown();
    let ready = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "a draining guard is not ready");

    up.release();
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the in-flight request completed");
    assert!(
        tokio::time::timeout(PATIENCE, app.drained()).await.unwrap(),
        "drain finished in time"
    );
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "no new connections after the drain"
    );
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_zero() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_with_route(ROUTE)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_verbosity-guard"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "3",
        ])
        .arg("--policy")
        .arg(&policy)
        .args(["--upstream", &up.url])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = KillIfPanicking(child.id());
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut wait_for = async |needle: &str| -> serde_json::Value {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let line = lines.recv().await.expect("guard exited early");
                if line.contains(needle) {
                    return serde_json::from_str(&line).expect("JSON log line");
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    };

    let started = wait_for("verbosity-guard listening").await;
    let proxy = started["fields"]["proxy_addr"].as_str().unwrap().to_owned();
    assert_eq!(started["fields"]["workers"], 3, "{started}");
    assert_eq!(
        worker_threads(child.id()),
        3,
        "--workers 3 must start 3 serving threads"
    );
    let in_flight = tokio::spawn(client().get(format!("http://{proxy}/__hold")).send());
    up.next_request().await;

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for("shutting down").await;
    up.release();
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Kills the guard if the test fails half-way, so a failed run leaves no process behind (it
/// would keep the test harness's output pipe open).
struct KillIfPanicking(u32);

impl Drop for KillIfPanicking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// Threads of process `pid` that serve requests (named `guard-worker-N`), read from /proc.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("guard-worker-"))
        .count()
}
