//! Payload budgets end to end: max_body (413), request and byte rates route-wide and per client
//! key (429 + Retry-After), bodies that can never fit (413), and the key cap.
//!
//! Rates here are per minute with small bursts, so nothing refills during a test: every
//! expected admission and rejection is exact, with no dependence on timing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::net::SocketAddr;

use support::{
    TestGuard, TestUpstream, chunked, client, eventually, json, policy_with_route, raw_exchange,
};

fn addr(g: &TestGuard) -> SocketAddr {
    g.app.proxy_addr()
}

async fn post(g: &TestGuard, path: &str, key: Option<&str>, len: usize) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", g.url))
        .body(vec![b'x'; len]);
    if let Some(k) = key {
        req = req.header("x-vehicle-id", k);
    }
    req.send().await.unwrap()
}

async fn assert_429(resp: reqwest::Response, route: &str, budget: &str) {
    assert_eq!(resp.status(), 429, "expected 429 from {budget}");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&retry),
        "Retry-After {retry} is whole seconds within the budget period"
    );
    let body = json(resp).await;
    assert_eq!(body["error"], "budget_exceeded");
    assert_eq!(body["route"], route);
    assert_eq!(body["budget"], budget);
    assert_eq!(body["retry_after_s"], retry);
}

#[tokio::test]
async fn declared_body_over_max_body_gets_413_before_any_byte_is_read() {
    let up = TestUpstream::start().await;
    let route =
        "  - name: upload\n    match: { path_prefix: /upload }\n    payload: { max_body: 1KiB }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;

    // Headers only: the guard must answer from Content-Length without waiting for the body.
    let (_conn, head) = raw_exchange(
        addr(&g),
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    let resp = post(&g, "/upload", None, 1025).await;
    assert_eq!(resp.status(), 413);
    let body = json(resp).await;
    assert_eq!(
        (body["error"].as_str(), body["limit"].as_u64()),
        (Some("body_too_large"), Some(1024))
    );

    // Exactly at the limit passes; it is the first request the upstream ever sees.
    assert_eq!(post(&g, "/upload", None, 1024).await.status(), 200);
    assert_eq!(up.next_request().await.body.len(), 1024);
}

#[tokio::test]
async fn a_client_still_uploading_receives_the_413_instead_of_a_reset() {
    let up = TestUpstream::start().await;
    let route =
        "  - name: upload\n    match: { path_prefix: /upload }\n    payload: { max_body: 1KiB }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    // 8 MiB is far more than the socket buffers hold: the client is still writing when the
    // guard answers. Without lingering close it would see a connection reset.
    for _ in 0..3 {
        let resp = post(&g, "/upload", None, 8 << 20).await;
        assert_eq!(resp.status(), 413);
        assert_eq!(json(resp).await["error"], "body_too_large");
    }
}

#[tokio::test]
async fn chunked_body_over_max_body_is_cut_off_at_the_limit() {
    let up = TestUpstream::start().await;
    let route =
        "  - name: upload\n    match: { path_prefix: /upload }\n    payload: { max_body: 4KiB }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    let chunks = chunked((0..16).map(|_| vec![b'y'; 1024]));
    let resp = client()
        .post(format!("{}/upload", g.url))
        .body(chunks)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(json(resp).await["error"], "body_too_large");
    let seen = up.next_request().await;
    assert!(
        seen.body.len() <= 4096,
        "upstream got {} bytes past the limit",
        seen.body.len()
    );
}

#[tokio::test]
async fn route_request_rate_is_shared_by_all_clients() {
    let up = TestUpstream::start().await;
    let route = "  - name: cmd\n    match: { path_prefix: /cmd }\n    payload: { route_requests: { rate: 1/m, burst: 3 } }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    for key in ["a", "b", "c"] {
        assert_eq!(post(&g, "/cmd", Some(key), 0).await.status(), 200);
    }
    assert_429(
        post(&g, "/cmd", Some("d"), 0).await,
        "cmd",
        "route_requests",
    )
    .await;
    // Other routes are untouched.
    assert_eq!(post(&g, "/other", Some("d"), 0).await.status(), 200);
}

#[tokio::test]
async fn client_request_rate_is_per_key_and_keys_are_isolated() {
    let up = TestUpstream::start().await;
    let route = "  - name: cmd\n    match: { path_prefix: /cmd }\n    payload: { client_requests: { rate: 1/m, burst: 2 } }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    for _ in 0..2 {
        assert_eq!(post(&g, "/cmd", Some("car-a"), 0).await.status(), 200);
    }
    assert_429(
        post(&g, "/cmd", Some("car-a"), 0).await,
        "cmd",
        "client_requests",
    )
    .await;
    // A different vehicle, and a client with no key (budgeted by peer address), are unaffected.
    for _ in 0..2 {
        assert_eq!(post(&g, "/cmd", Some("car-b"), 0).await.status(), 200);
        assert_eq!(post(&g, "/cmd", None, 0).await.status(), 200);
    }
    assert_429(post(&g, "/cmd", None, 0).await, "cmd", "client_requests").await;
}

#[tokio::test]
async fn route_byte_rate_charges_declared_bodies() {
    let up = TestUpstream::start().await;
    let route = "  - name: tel\n    match: { path_prefix: /tel }\n    payload: { route_bytes: { rate: 1KiB/m, burst: 4KiB } }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    assert_eq!(post(&g, "/tel", Some("a"), 3072).await.status(), 200);
    assert_429(
        post(&g, "/tel", Some("b"), 2048).await,
        "tel",
        "route_bytes",
    )
    .await;
    // What is left still fits a smaller body.
    assert_eq!(post(&g, "/tel", Some("c"), 1000).await.status(), 200);

    // Bigger than the whole burst: can never fit, so 413 rather than a pointless retry.
    let resp = post(&g, "/tel", Some("a"), 5000).await;
    assert_eq!(resp.status(), 413);
    let body = json(resp).await;
    assert_eq!(body["error"], "body_exceeds_burst");
    assert_eq!(
        (body["budget"].as_str(), body["burst"].as_u64()),
        (Some("route_bytes"), Some(4096))
    );
}

#[tokio::test]
async fn client_byte_rate_is_per_key() {
    let up = TestUpstream::start().await;
    let route = "  - name: tel\n    match: { path_prefix: /tel }\n    payload: { client_bytes: { rate: 1KiB/m, burst: 4KiB } }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    assert_eq!(post(&g, "/tel", Some("a"), 3072).await.status(), 200);
    assert_429(
        post(&g, "/tel", Some("a"), 2048).await,
        "tel",
        "client_bytes",
    )
    .await;
    assert_eq!(post(&g, "/tel", Some("b"), 3072).await.status(), 200);
}

#[tokio::test]
async fn chunked_bodies_are_charged_as_they_stream() {
    let up = TestUpstream::start().await;
    let route = "  - name: tel\n    match: { path_prefix: /tel }\n    payload: { client_bytes: { rate: 1KiB/m, burst: 4KiB } }\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    let chunks = chunked((0..8).map(|_| vec![b'z'; 1024]));
    let resp = client()
        .post(format!("{}/tel", g.url))
        .header("x-vehicle-id", "a")
        .body(chunks)
        .send()
        .await
        .unwrap();
    assert_429(resp, "tel", "client_bytes").await;
    assert!(up.next_request().await.body.len() <= 4096);
}

#[tokio::test]
async fn full_key_store_falls_back_to_route_budgets_and_counts_it() {
    let up = TestUpstream::start().await;
    let policy = "version: 1
client_key: { header: x-vehicle-id }
limits: { max_tracked_keys: 2 }
routes:
  - name: cmd
    match: { path_prefix: /cmd }
    payload:
      client_requests: { rate: 1/m, burst: 1 }
      route_requests: { rate: 1/m, burst: 5 }
  - name: default
    match: { path_prefix: / }
";
    let g = TestGuard::start(policy, &up.url).await;
    assert_eq!(post(&g, "/cmd", Some("a"), 0).await.status(), 200);
    assert_eq!(post(&g, "/cmd", Some("b"), 0).await.status(), 200);
    // Tracked keys keep their budget.
    assert_429(
        post(&g, "/cmd", Some("a"), 0).await,
        "cmd",
        "client_requests",
    )
    .await;
    // A third key finds the store full: no per-client budget, the route budget still applies.
    for _ in 0..3 {
        assert_eq!(post(&g, "/cmd", Some("c"), 0).await.status(), 200);
    }
    assert_429(
        post(&g, "/cmd", Some("c"), 0).await,
        "cmd",
        "route_requests",
    )
    .await;
    let untracked = g
        .metric(
            "verbosity_guard_untracked_key_requests_total",
            &[("route", "cmd"), ("budget", "client_requests")],
        )
        .await;
    assert_eq!(untracked, 4.0);
}

#[tokio::test]
async fn query_parameter_keys_are_decoded_and_missing_keys_can_be_refused() {
    let up = TestUpstream::start().await;
    let policy = "version: 1
routes:
  - name: cmd
    match: { path_prefix: /cmd }
    client_key: { query: vin, fallback: reject }
    payload: { client_requests: { rate: 1/m, burst: 1 } }
  - name: default
    match: { path_prefix: / }
";
    let g = TestGuard::start(policy, &up.url).await;
    assert_eq!(post(&g, "/cmd?vin=ABC", None, 0).await.status(), 200);
    // Same vehicle, spelled with an escape: same budget.
    assert_429(
        post(&g, "/cmd?x=1&vin=%41BC", None, 0).await,
        "cmd",
        "client_requests",
    )
    .await;
    assert_eq!(post(&g, "/cmd?vin=XYZ", None, 0).await.status(), 200);
    let resp = post(&g, "/cmd", None, 0).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(json(resp).await["error"], "missing_client_key");
}

#[tokio::test]
async fn idle_client_keys_are_evicted() {
    let up = TestUpstream::start().await;
    let policy = "version: 1
client_key: { header: x-vehicle-id }
limits: { key_eviction_interval: 1h }
routes:
  - name: cmd
    match: { path_prefix: /cmd }
    payload: { client_requests: { rate: 1000/s, burst: 1 } }
  - name: default
    match: { path_prefix: / }
";
    let g = TestGuard::start(policy, &up.url).await;
    let tracked = async || {
        g.metric(
            "verbosity_guard_tracked_keys",
            &[("route", "cmd"), ("budget", "client_requests")],
        )
        .await
    };
    assert_eq!(post(&g, "/cmd", Some("a"), 0).await.status(), 200);
    assert_eq!(post(&g, "/cmd", Some("b"), 0).await.status(), 200);
    assert_eq!(tracked().await, 2.0);
    // A key is idle once its budget has refilled, 1 ms after its request at 1000/s on the
    // guard's real clock (governor's, which the test cannot move). So eviction passes run until
    // both keys are gone; each pass is the one the background task runs every
    // `key_eviction_interval` (1h here, so it never runs by itself during the test).
    // (That busy keys are kept is tested on a fake clock in budget::tests.)
    eventually("both idle keys to be evicted", async || {
        g.app.evict_idle_keys();
        tracked().await == 0.0
    })
    .await;
}
