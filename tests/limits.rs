//! Listener bounds: header read timeout, header size and count, body idle timeout, and the
//! connection cap. Each is configured small so the test is fast; the guard must close or answer
//! and count what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::time::Duration;

use support::{TestGuard, TestUpstream, policy_with_route, raw_exchange, read_to_close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTE: &str = "  - name: api\n    match: { path_prefix: /api }\n";

#[tokio::test]
async fn slow_headers_are_cut_off_and_counted() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, |c| {
        c.server.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = TcpStream::connect(g.app.proxy_addr()).await.unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    read_to_close(&mut s).await;
    assert_eq!(
        g.metric(
            "verbosity_guard_connection_errors_total",
            &[("kind", "header_timeout")]
        )
        .await,
        1.0
    );
    assert!(up.try_next_request().await.is_none());
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_by_the_header_timeout() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, |c| {
        c.server.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut s, head) = raw_exchange(
        g.app.proxy_addr(),
        b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The connection then sits idle and is closed, freeing its slot.
    read_to_close(&mut s).await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, |c| {
        c.server.max_header_bytes = 8 * 1024;
        c.server.max_headers = 10;
    })
    .await;
    let big = format!(
        "GET /api/x HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let (mut s, head) = raw_exchange(g.app.proxy_addr(), big.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    read_to_close(&mut s).await;

    let mut many = String::from("GET /api/x HTTP/1.1\r\nHost: t\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (mut s, head) = raw_exchange(g.app.proxy_addr(), many.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    read_to_close(&mut s).await;

    assert_eq!(
        g.metric(
            "verbosity_guard_connection_errors_total",
            &[("kind", "header_too_large")]
        )
        .await,
        2.0
    );
    assert!(up.try_next_request().await.is_none());
}

#[tokio::test]
async fn stalled_request_bodies_get_408() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, |c| {
        c.body_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut s, head) = raw_exchange(
        g.app.proxy_addr(),
        b"POST /api/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let rest = read_to_close(&mut s).await;
    assert!(rest.contains("\"error\":\"body_timeout\""), "{rest}");
    assert_eq!(
        g.metric(
            "verbosity_guard_rejections_total",
            &[("route", "api"), ("reason", "body_timeout")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_while_every_slot_is_busy() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, |c| {
        c.server.max_connections = 1;
    })
    .await;
    let addr = g.app.proxy_addr();
    // The only slot is held by a request in flight (idle connections would make room; see
    // tests/connections.rs).
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /__hold HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    up.next_request().await;

    // The kernel accepts the second connection, but the guard does not serve it while the
    // first holds the only slot.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /api/b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "second connection was served while the cap was reached"
    );

    // Once the first request is answered, its connection is idle and gives up the slot.
    up.release();
    let head = support::read_head(&mut first).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let rest = read_to_close(&mut second).await;
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
}
