//! Graceful drain: on shutdown (SIGTERM/SIGINT for the binary) the guard stops accepting,
//! reports unready, lets in-flight requests finish, then exits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::time::Duration;

use support::{GuardProcess, PATIENCE, TestGuard, TestUpstream, client, policy_with_route};

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
async fn idle_keep_alive_connections_are_closed_by_the_drain() {
    let up = TestUpstream::start().await;
    // Idle connections would otherwise close on their own only after the header timeout (the
    // keep-alive idle limit) or the drain deadline, both far beyond PATIENCE here.
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, |c| {
        c.server.header_read_timeout = Duration::from_secs(120);
        c.drain_timeout = Duration::from_secs(120);
    })
    .await;
    let TestGuard { app, url, .. } = g;
    // Several clients, each leaving an idle keep-alive connection in its pool.
    let clients: Vec<_> = (0..4).map(|_| client()).collect();
    for c in &clients {
        let resp = c.get(format!("{url}/api/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    app.begin_shutdown();
    // Finishing within PATIENCE means every idle connection was told to close.
    assert!(
        tokio::time::timeout(PATIENCE, app.drained()).await.unwrap(),
        "drain finished in time"
    );
    drop(clients);
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_zero() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_with_route(ROUTE)).unwrap();
    let mut guard = GuardProcess::spawn([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "3",
        "--upstream",
        &up.url,
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let (started, _) = guard.wait_for("verbosity-guard listening").await;
    let proxy = started["fields"]["proxy_addr"].as_str().unwrap().to_owned();
    assert_eq!(started["fields"]["workers"], 3, "{started}");
    assert_eq!(
        worker_threads(guard.pid()),
        3,
        "--workers 3 must start 3 serving threads"
    );
    let in_flight = tokio::spawn(client().get(format!("http://{proxy}/__hold")).send());
    up.next_request().await;

    guard.signal("TERM");
    guard.wait_for("shutting down").await;
    up.release();
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);
    assert_eq!(guard.exit_code().await, Some(0));
}

/// Threads of process `pid` that serve requests (named `guard-worker-N`), read from /proc.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("guard-worker-"))
        .count()
}
