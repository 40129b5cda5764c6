//! No spelling of a path escapes its route's budget: the guard normalizes before matching and
//! forwards the normalized path, and refuses escapes that would change the path's segments.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use support::{TestGuard, TestUpstream, json, policy_with_route, raw_exchange};

const COMMANDS: &str = "  - name: commands\n    match: { methods: [POST], path: \"/api/1/vehicles/{id}/command/{cmd}\" }\n    payload: { route_requests: { rate: 1/m, burst: 1 } }\n";

/// Sends a request line verbatim (clients would normalize these themselves) and returns the
/// status code.
async fn send_raw(g: &TestGuard, method: &str, target: &str) -> u16 {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (_conn, head) = raw_exchange(g.app.proxy_addr(), req.as_bytes()).await;
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"))
}

#[tokio::test]
async fn every_spelling_of_a_path_shares_one_budget() {
    let bypasses = [
        "//api/1/vehicles/7/command/unlock",
        "/api//1/vehicles/7/command/unlock",
        "/api/1/./vehicles/7/command/unlock",
        "/api/1/x/../vehicles/7/command/unlock",
        "/api/1/vehicles/7/command/unlock/.",
        "/%61pi/1/vehicles/7/command/unlock",
        "/api/1/vehicles/7/%63ommand/unlock",
        "/api/1/vehicles/7/command/%2e/unlock",
        "/api/1/vehicles/7/command/x/%2E%2E/unlock",
        "/../api/1/vehicles/7/command/unlock",
    ];
    for spelling in bypasses {
        let up = TestUpstream::start().await;
        let g = TestGuard::start(&policy_with_route(COMMANDS), &up.url).await;
        assert_eq!(
            send_raw(&g, "POST", "/api/1/vehicles/7/command/unlock").await,
            200
        );
        assert_eq!(
            send_raw(&g, "POST", spelling).await,
            429,
            "{spelling} escaped the commands budget"
        );
        assert_eq!(
            up.next_request().await.target,
            "/api/1/vehicles/7/command/unlock"
        );
    }
}

#[tokio::test]
async fn the_upstream_receives_the_normalized_path_with_the_query_intact() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(COMMANDS), &up.url).await;
    assert_eq!(send_raw(&g, "GET", "//a/./b/../c%7e?q=%2F&x=..").await, 200);
    assert_eq!(up.next_request().await.target, "/a/c~?q=%2F&x=..");
}

#[tokio::test]
async fn escapes_that_change_segments_are_refused() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(COMMANDS), &up.url).await;
    for target in [
        "/api/1/vehicles/7%2Fcommand/unlock",
        "/api/1/vehicles/7%2fcommand/unlock",
        "/api/1/vehicles/7%5Ccommand/unlock",
        "/api/1/vehicles/7/command/unlock%00",
        "/api/1/vehicles/7/command/un%zzlock",
    ] {
        assert_eq!(send_raw(&g, "POST", target).await, 400, "{target}");
    }
    let resp = support::client()
        .get(format!("{}/a%2Fb", g.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = json(resp).await;
    assert_eq!(body["error"], "invalid_path");
    assert_eq!(body["route"], "_invalid");
    // Nothing reached the upstream; the next request it sees is this one.
    assert_eq!(send_raw(&g, "GET", "/ok").await, 200);
    assert_eq!(up.next_request().await.target, "/ok");
}

#[tokio::test]
async fn ambiguous_spellings_are_refused_not_sent_to_the_catch_all() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy_with_route(COMMANDS), &up.url).await;
    for target in [
        // A raw backslash: '/' to some backends.
        "/api/1/vehicles/7\\command/unlock",
        "/api\\1/vehicles/7/command/unlock",
        // Path parameters: stripped by some backends before they match.
        "/api/1/vehicles/7/command;x=1/unlock",
        "/api;/1/vehicles/7/command/unlock",
        // Overlong '/' and '.', a lone continuation byte, a cut-short character.
        "/api/1/vehicles/7%C0%AFcommand/unlock",
        "/api/1/vehicles/7/%C0%AE%C0%AE/command/unlock",
        "/api/1/vehicles/7/command/unlock%80",
        "/api/1/vehicles/7/command/unlock%E2%82",
    ] {
        assert_eq!(send_raw(&g, "POST", target).await, 400, "{target}");
    }
    assert_eq!(
        g.metric(
            "verbosity_guard_rejections_total",
            &[("route", "_invalid"), ("reason", "invalid_path")]
        )
        .await,
        8.0
    );
    // Nothing reached the upstream (nor the catch-all's budget); valid UTF-8 escapes pass.
    assert_eq!(send_raw(&g, "GET", "/caf%C3%A9").await, 200);
    assert_eq!(up.next_request().await.target, "/caf%C3%A9");
}
