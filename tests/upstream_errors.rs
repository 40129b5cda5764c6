//! When the upstream fails, the client gets a short JSON 502 or 504, the failure is counted,
//! and the guard keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use support::{TestGuard, TestUpstream, client, json, policy_with_route};

const ROUTE: &str = "  - name: api\n    match: { path_prefix: /api }\n    timeout: 300ms\n";

#[tokio::test]
async fn refused_upstream_is_502_and_the_guard_stays_up() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let g = TestGuard::start(&policy_with_route(ROUTE), &format!("http://{closed}")).await;
    for _ in 0..3 {
        let resp = client()
            .get(format!("{}/api/x", g.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let body = json(resp).await;
        assert_eq!(
            (body["error"].as_str(), body["route"].as_str()),
            (Some("upstream_unavailable"), Some("api"))
        );
    }
    let errors = g
        .metric(
            "verbosity_guard_upstream_errors_total",
            &[("route", "api"), ("kind", "connect")],
        )
        .await;
    assert_eq!(errors, 3.0);
    let outcome = g
        .metric(
            "verbosity_guard_requests_total",
            &[("route", "api"), ("outcome", "upstream_error")],
        )
        .await;
    assert_eq!(outcome, 3.0);
}

#[tokio::test]
async fn upstream_that_drops_the_connection_is_502() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(ROUTE), &up.url).await;
    let resp = client()
        .get(format!("{}/__abort", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(json(resp).await["error"], "upstream_unavailable");
    assert_eq!(
        g.metric(
            "verbosity_guard_upstream_errors_total",
            &[("kind", "reset")]
        )
        .await,
        1.0
    );
    // The next request gets a fresh upstream connection and succeeds.
    assert_eq!(
        client()
            .get(format!("{}/api/ok", g.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn upstream_slower_than_the_route_timeout_is_504() {
    let up = TestUpstream::start().await;
    let route = "  - name: slow\n    match: { path_prefix: /__slow }\n    timeout: 200ms\n";
    let g = TestGuard::start(&policy_with_route(route), &up.url).await;
    let resp = client()
        .get(format!("{}/__slow/5000", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body = json(resp).await;
    assert_eq!(body["error"], "upstream_timeout");
    assert_eq!(body["timeout_s"], 0.2);
    assert_eq!(
        g.metric(
            "verbosity_guard_upstream_errors_total",
            &[("route", "slow"), ("kind", "timeout")]
        )
        .await,
        1.0
    );
    // A fast request right after is unaffected.
    assert_eq!(
        client()
            .get(format!("{}/__slow/1", g.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
