//! The upstream connection pool: connections are reused, one the upstream closed while idle
//! costs no request, and one whose upstream answered before reading the request body still
//! delivers that body and leaves the pool usable.
//!
//! The upstream here is a raw TCP server, so each test controls exactly when a connection
//! closes and how much of a request it reads before answering.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

use support::{TestGuard, client, policy_with_route};

const ROUTE: &str = "  - name: api\n    match: { path_prefix: /api }\n";

#[derive(Clone, Copy)]
enum Mode {
    /// Reads each request whole, answers, and waits for the next one.
    KeepAlive,
    /// Answers one request, then closes the connection (without saying so in a header).
    CloseAfterEach,
    /// Answers as soon as the head has arrived, then reads the body only once released (see
    /// [`RawUpstream::release`]) and keeps the connection.
    AnswerBeforeBody,
}

/// What the raw upstream reports.
enum Event {
    /// A connection was closed by the upstream.
    Closed,
    /// A request body was read to its end: its length.
    Body(usize),
}

struct RawUpstream {
    url: String,
    connections: Arc<AtomicUsize>,
    events: mpsc::UnboundedReceiver<Event>,
    release: Arc<Notify>,
}

impl RawUpstream {
    async fn start(mode: Mode) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, events) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let (count, hold) = (connections.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, mode, tx.clone(), hold.clone()));
            }
        });
        RawUpstream {
            url,
            connections,
            events,
            release,
        }
    }

    /// Lets an `AnswerBeforeBody` connection read the body it has answered.
    fn release(&self) {
        self.release.notify_one();
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(support::PATIENCE, self.events.recv())
            .await
            .expect("the upstream reported nothing in time")
            .expect("the upstream stopped")
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

async fn serve(
    mut stream: TcpStream,
    mode: Mode,
    events: mpsc::UnboundedSender<Event>,
    release: Arc<Notify>,
) {
    let mut buf = Vec::new();
    loop {
        // The head: up to the blank line.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        buf.drain(..head_end);
        if matches!(mode, Mode::AnswerBeforeBody) && length > 0 {
            if stream.write_all(OK).await.is_err() {
                return;
            }
            release.notified().await;
        }
        while buf.len() < length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let _ = events.send(Event::Body(length));
        if !(matches!(mode, Mode::AnswerBeforeBody) && length > 0)
            && stream.write_all(OK).await.is_err()
        {
            return;
        }
        if matches!(mode, Mode::CloseAfterEach) {
            drop(stream);
            let _ = events.send(Event::Closed);
            return;
        }
    }
}

/// A GET on `c`'s keep-alive connection: one client connection lands on one worker, and so
/// on one upstream pool.
async fn get_ok(c: &reqwest::Client, url: &str) {
    let resp = c.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
}

/// Requests the guard answered with 502/504 on the `api` route.
async fn upstream_errors(g: &TestGuard) -> f64 {
    let outcome = [("route", "api"), ("outcome", "upstream_error")];
    g.metric("verbosity_guard_requests_total", &outcome).await
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = RawUpstream::start(Mode::KeepAlive).await;
    let g = TestGuard::start(&policy_with_route(ROUTE), &up.url).await;
    // One client connection: every request lands on the same worker, and so the same pool.
    let c = client();
    for i in 0..5 {
        get_ok(&c, &format!("{}/api/{i}", g.url)).await;
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_costs_no_request() {
    let mut up = RawUpstream::start(Mode::CloseAfterEach).await;
    let g = TestGuard::start(&policy_with_route(ROUTE), &up.url).await;
    let c = client();
    for i in 0..4 {
        get_ok(&c, &format!("{}/api/{i}", g.url)).await;
        // The pooled connection is closed by now; the next request must not fail on it.
        assert!(matches!(up.next_event().await, Event::Body(0)));
        assert!(matches!(up.next_event().await, Event::Closed));
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 4);
    assert_eq!(upstream_errors(&g).await, 0.0);
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_body_still_gets_all_of_it() {
    let mut up = RawUpstream::start(Mode::AnswerBeforeBody).await;
    let g = TestGuard::start(&policy_with_route(ROUTE), &up.url).await;
    let c = client();
    // More than the loopback socket buffers hold while the upstream is not reading.
    let body = vec![b'x'; 32 << 20];
    let resp = c
        .post(format!("{}/api/upload", g.url))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok");
    // The connection was still sending the body when the response ended: it finishes.
    up.release();
    assert!(matches!(up.next_event().await, Event::Body(n) if n == 32 << 20));
    // And the pool still serves.
    for i in 0..3 {
        get_ok(&c, &format!("{}/api/{i}", g.url)).await;
        assert!(matches!(up.next_event().await, Event::Body(0)));
    }
    assert_eq!(upstream_errors(&g).await, 0.0);
}
