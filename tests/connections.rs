//! Idle connections (issue 16): HTTP/2 connections with no stream are closed by the header read
//! timeout, as idle HTTP/1 ones are, and idle connections of either kind never hold the
//! `--max-connections` cap against a new client. HTTP/2 is spoken here in hand-made frames, as a
//! client that never answers a PING would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::time::Duration;

use support::{PATIENCE, TestGuard, TestUpstream, eventually, policy_with_route, raw_exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const ROUTE: &str = "  - name: api\n    match: { path_prefix: /api }\n";
const TIMEOUT: Duration = Duration::from_millis(300);
/// The guard keeps idle times in whole milliseconds: a deadline may fall up to this much
/// before the instant the test measured from.
const GRAIN: Duration = Duration::from_millis(1);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET path` on authority `t` (static table names, no Huffman).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, 1, b't']);
    b
}

/// A new HTTP/2 connection that has sent its preface and an empty SETTINGS frame, and read the
/// guard's SETTINGS (so the guard has taken it as HTTP/2).
async fn h2_connect(g: &TestGuard) -> TcpStream {
    let mut s = TcpStream::connect(g.app.proxy_addr()).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    let settings = read_frames(&mut s, |f| f.0 == SETTINGS && f.1 == 0).await;
    assert!(settings.is_some(), "no SETTINGS from the guard");
    s
}

/// One frame's type, flags and stream id.
type Frame = (u8, u8, u32);

/// Reads frames until `stop` says so or the peer closes (`None` then). Fails after PATIENCE.
async fn read_frames(s: &mut TcpStream, mut stop: impl FnMut(&Frame) -> bool) -> Option<Frame> {
    tokio::time::timeout(PATIENCE, async {
        let mut head = [0u8; 9];
        loop {
            if s.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return None;
            }
            let f = (head[3], head[4], id);
            if stop(&f) {
                return Some(f);
            }
        }
    })
    .await
    .expect("the guard neither sent the frame nor closed in time")
}

/// Reads until the guard closes the connection; returns when the first GOAWAY came, if one did.
async fn goaway_then_close(s: &mut TcpStream) -> Option<Instant> {
    let mut goaway = None;
    read_frames(s, |f| {
        if f.0 == GOAWAY {
            goaway.get_or_insert_with(Instant::now);
        }
        false
    })
    .await;
    goaway
}

async fn guard(tweak: impl FnOnce(&mut verbosity_guard::app::Config)) -> (TestUpstream, TestGuard) {
    let up = TestUpstream::start().await;
    let g = TestGuard::start_with(&policy_with_route(ROUTE), &up.url, tweak).await;
    (up, g)
}

async fn closed(g: &TestGuard, reason: &str) -> f64 {
    g.metric(
        "verbosity_guard_connections_closed_total",
        &[("reason", reason)],
    )
    .await
}

#[tokio::test]
async fn an_h2_connection_that_only_sends_its_preface_is_closed_after_the_header_timeout() {
    let (_up, g) = guard(|c| c.server.header_read_timeout = TIMEOUT).await;
    let started = Instant::now();
    let mut s = h2_connect(&g).await;
    let goaway = goaway_then_close(&mut s)
        .await
        .expect("closed without a GOAWAY");
    assert!(
        goaway - started >= TIMEOUT - GRAIN,
        "GOAWAY before the timeout"
    );
    assert_eq!(closed(&g, "idle_timeout").await, 1.0);
}

#[tokio::test]
async fn an_h2_header_block_that_never_ends_is_closed_after_the_header_timeout() {
    let (up, g) = guard(|c| c.server.header_read_timeout = TIMEOUT).await;
    // The timeout counts from the connection's start.
    let started = Instant::now();
    let mut s = h2_connect(&g).await;
    // HEADERS without END_HEADERS: the request is incomplete until a CONTINUATION that never
    // comes.
    s.write_all(&frame(HEADERS, END_STREAM, 1, &get_block("/api/x")))
        .await
        .unwrap();
    let goaway = goaway_then_close(&mut s)
        .await
        .expect("closed without a GOAWAY");
    assert!(
        goaway - started >= TIMEOUT - GRAIN,
        "GOAWAY before the timeout"
    );
    assert_eq!(closed(&g, "idle_timeout").await, 1.0);
    assert!(up.try_next_request().await.is_none());
}

#[tokio::test]
async fn an_h2_connection_is_closed_once_idle_and_never_while_a_stream_is_open() {
    let (up, g) = guard(|c| c.server.header_read_timeout = TIMEOUT).await;
    let mut s = h2_connect(&g).await;
    s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/__hold"),
    ))
    .await
    .unwrap();
    up.next_request().await;

    // The stream is open (the upstream holds its answer) for three times the timeout: the
    // connection is not idle, so nothing is sent and it stays open.
    let early = tokio::time::timeout(3 * TIMEOUT, read_frames(&mut s, |f| f.0 == GOAWAY)).await;
    assert!(
        early.is_err(),
        "a connection with an open stream was closed"
    );

    // The idle time counts from the stream's end, which is after the release.
    let released = Instant::now();
    up.release();
    let end = read_frames(&mut s, |f| f.2 == 1 && f.1 & END_STREAM != 0).await;
    assert!(end.is_some(), "the held response was cut");
    let goaway = goaway_then_close(&mut s)
        .await
        .expect("closed without a GOAWAY");
    assert!(
        goaway - released >= TIMEOUT - GRAIN,
        "GOAWAY sooner than the timeout after its last stream"
    );
    assert_eq!(closed(&g, "idle_timeout").await, 1.0);
}

#[tokio::test]
async fn idle_h2_connections_do_not_hold_the_cap_against_a_new_client() {
    const CAP: usize = 64;
    // The default header timeout (10 s): only the cap can make room here.
    let (_up, g) = guard(|c| c.server.max_connections = CAP).await;
    let mut idle = Vec::new();
    for _ in 0..CAP + 8 {
        idle.push(h2_connect(&g).await);
    }
    // All of them are taken in: the eight over the cap by closing the eight idle longest.
    eventually("every HTTP/2 connection accepted", async || {
        g.metric("verbosity_guard_connections_total", &[]).await == (CAP + 8) as f64
    })
    .await;

    let started = Instant::now();
    let (_s, head) = raw_exchange(
        g.app.proxy_addr(),
        b"GET /api/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let waited = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(waited < Duration::from_secs(1), "answered after {waited:?}");

    // Room was made for the eight over the cap and then for the HTTP/1 client, by closing the
    // connections idle longest (the first opened), each with a GOAWAY; the youngest is open.
    let evicted = closed(&g, "evicted").await;
    assert!(evicted >= 9.0, "{evicted} evicted");
    for s in &mut idle[..9] {
        assert!(
            goaway_then_close(s).await.is_some(),
            "evicted without a GOAWAY"
        );
    }
    let youngest = idle.last_mut().unwrap();
    let read = tokio::time::timeout(TIMEOUT, read_frames(youngest, |f| f.0 == GOAWAY)).await;
    assert!(read.is_err(), "the youngest connection was closed");
}

#[tokio::test]
async fn an_http1_connection_with_a_request_in_flight_is_never_evicted() {
    let (up, g) = guard(|c| c.server.max_connections = 2).await;
    let addr = g.app.proxy_addr();
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /__hold HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    up.next_request().await;
    let (mut idle, head) = raw_exchange(addr, b"GET /api/a HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A third client: the idle keep-alive connection makes room, the busy one is left alone.
    let (_s, head) = raw_exchange(
        addr,
        b"GET /api/b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the idle connection was not closed"
    );
    assert_eq!(closed(&g, "evicted").await, 1.0);

    up.release();
    let head = support::read_head(&mut busy).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
