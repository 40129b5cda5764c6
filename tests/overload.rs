//! Self-protection (issue 15): while the guard itself is under pressure, bulk requests are shed
//! right after their head (503, Retry-After, nothing parsed or charged; a small body discarded
//! so the connection lives on, a large one left unread with `Connection: close`), and critical
//! and normal requests are served as usual. Each pressure is forced here with a tiny
//! threshold, so the test does not depend on how loaded the machine is.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::time::Duration;

use support::{TestGuard, TestUpstream, client, eventually, raw_exchange, read_to_close};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use verbosity_guard::app::Config;
use verbosity_guard::protect::overload::OverloadLimits;

const POLICY: &str = r#"version: 1
client_key: { header: x-vehicle-id }
routes:
  - name: commands
    match: { methods: [POST], path_prefix: /command }
    priority: critical
  - name: telemetry
    match: { methods: [POST], path_prefix: /telemetry }
    priority: bulk
    records: { format: ndjson }
  - name: default
    match: { path_prefix: / }
"#;

async fn guard(limits: OverloadLimits) -> (TestUpstream, TestGuard) {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(POLICY, &up.url, |c: &mut Config| c.overload = limits).await;
    (up, g)
}

const BATCH: &str = "{\"level\":\"error\",\"msg\":\"a\"}\n";

/// A bulk batch sent raw, with a pipelined request behind it on the same connection.
fn pipelined_batch() -> String {
    format!(
        "POST /telemetry HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{BATCH}GET /after HTTP/1.1\r\nHost: t\r\n\r\n",
        BATCH.len()
    )
}

/// Reads until `needle` has arrived (or the peer closes); returns what was read.
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(support::PATIENCE, async {
        while !String::from_utf8_lossy(&got).contains(needle) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("nothing more in time");
    String::from_utf8_lossy(&got).into_owned()
}

/// An owner's command (a critical route) through the guard; its status.
async fn command(g: &TestGuard) -> u16 {
    client()
        .post(format!("{}/command/unlock", g.url))
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn shed(g: &TestGuard, pressure: &str) -> (f64, f64) {
    let by_pressure = g
        .metric(
            "verbosity_guard_overload_shed_total",
            &[("pressure", pressure)],
        )
        .await;
    let by_class = g
        .metric(
            "verbosity_guard_shed_total",
            &[("class", "bulk"), ("reason", "overload")],
        )
        .await;
    (by_pressure, by_class)
}

#[tokio::test]
async fn a_late_event_loop_sheds_bulk_after_its_head_and_serves_critical() {
    // Any lag at all is over 1 µs: tokio's timers fire on a 1 ms wheel.
    let (up, g) = guard(OverloadLimits {
        max_lag: Some(Duration::from_micros(1)),
        ..OverloadLimits::default()
    })
    .await;
    eventually("the worker's lag to be measured", async || {
        g.metric(
            "verbosity_guard_worker_event_loop_lag_seconds",
            &[("worker", "0")],
        )
        .await
            > 0.0
    })
    .await;

    let (mut s, head) = raw_exchange(g.app.proxy_addr(), pipelined_batch().as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{head}");
    assert!(
        lower.contains("x-verbosity-guard-refused: shed_overload"),
        "{head}"
    );
    // The small body was read and discarded, so the connection stays open and the pipelined
    // request behind the batch is served, not lost.
    assert!(!lower.contains("connection: close"), "{head}");
    let rest = read_until(&mut s, "HTTP/1.1 200").await;
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert_eq!(up.next_request().await.target, "/after");

    // A body too large to discard is left unread: the answer closes the connection, and says
    // so, so the client sends what it pipelined again instead of losing it.
    let big = "x".repeat(70 * 1024);
    let request = format!(
        "POST /telemetry HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    let (mut s, head) = raw_exchange(g.app.proxy_addr(), request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    read_to_close(&mut s).await;

    assert_eq!(
        command(&g).await,
        200,
        "critical is never shed for pressure"
    );
    assert_eq!(shed(&g, "event_loop_lag").await, (2.0, 2.0));
}

#[tokio::test]
async fn buffered_batches_over_the_threshold_shed_further_bulk_until_they_are_done() {
    let (up, g) = guard(OverloadLimits {
        max_lag: None,
        max_buffered: Some(100),
        max_memory: None,
    })
    .await;
    // A batch of 200 declared bytes, still arriving: it is counted as buffered from its head.
    let mut slow = TcpStream::connect(g.app.proxy_addr()).await.unwrap();
    slow.write_all(
        b"POST /telemetry HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\nContent-Length: 200\r\n\r\n",
    )
    .await
    .unwrap();
    eventually("the slow batch to be counted as buffered", async || {
        g.metric("verbosity_guard_buffered_body_bytes", &[]).await == 200.0
    })
    .await;

    let (_s, head) = raw_exchange(g.app.proxy_addr(), pipelined_batch().as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(shed(&g, "buffered_bytes").await, (1.0, 1.0));
    assert_eq!(command(&g).await, 200);
    up.next_request().await;

    // The slow batch ends (200 bytes of records) and is released: bulk passes again.
    let line = "{\"level\":\"info\",\"msg\":\"012345678901234567890123\"}\n";
    assert_eq!(line.len(), 50);
    slow.write_all(line.repeat(4).as_bytes()).await.unwrap();
    let head = support::read_head(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    up.next_request().await;
    eventually("the buffered bytes to be released", async || {
        g.metric("verbosity_guard_buffered_body_bytes", &[]).await == 0.0
    })
    .await;
    let (_s, head) = raw_exchange(g.app.proxy_addr(), pipelined_batch().as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn memory_over_the_threshold_sheds_bulk() {
    // Every process is bigger than a kilobyte.
    let (_up, g) = guard(OverloadLimits {
        max_lag: None,
        max_buffered: None,
        max_memory: Some(1024),
    })
    .await;
    eventually("resident memory to be read", async || {
        g.metric("verbosity_guard_resident_memory_bytes", &[]).await > 1024.0
    })
    .await;
    let (_s, head) = raw_exchange(g.app.proxy_addr(), pipelined_batch().as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert_eq!(shed(&g, "memory").await, (1.0, 1.0));
}
