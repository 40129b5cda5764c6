//! After a known sequence of requests, every metric the issue names has the exact value it
//! should, with labels only from bounded sets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use support::{TestGuard, TestUpstream, client, metric_value};

const POLICY: &str = "version: 1
client_key: { header: x-vehicle-id }
routes:
  - name: tel
    match: { path_prefix: /tel }
    payload:
      max_body: 1KiB
      client_requests: { rate: 1/m, burst: 2 }
  - name: default
    match: { path_prefix: / }
";

#[tokio::test]
async fn metrics_count_a_known_sequence_exactly() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(POLICY, &up.url).await;
    let c = client();
    let post = |key: &'static str, len: usize| {
        c.post(format!("{}/tel", g.url))
            .header("x-vehicle-id", key)
            .body(vec![b'x'; len])
            .send()
    };
    assert_eq!(post("a", 100).await.unwrap().status(), 200);
    assert_eq!(post("a", 200).await.unwrap().status(), 200);
    assert_eq!(post("a", 10).await.unwrap().status(), 429);
    assert_eq!(post("b", 2000).await.unwrap().status(), 413);
    assert_eq!(
        c.get(format!("{}/other", g.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/a%2fb", g.url))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let text = g.scrape().await;
    let m = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let expect = [
        (
            "verbosity_guard_requests_total",
            vec![("route", "tel"), ("outcome", "forwarded")],
            2.0,
        ),
        (
            "verbosity_guard_requests_total",
            vec![("route", "tel"), ("outcome", "rejected")],
            2.0,
        ),
        (
            "verbosity_guard_requests_total",
            vec![("route", "default"), ("outcome", "forwarded")],
            1.0,
        ),
        (
            "verbosity_guard_requests_total",
            vec![("route", "_invalid"), ("outcome", "rejected")],
            1.0,
        ),
        (
            "verbosity_guard_request_body_bytes_total",
            vec![("route", "tel")],
            300.0,
        ),
        (
            "verbosity_guard_forwarded_body_bytes_total",
            vec![("route", "tel")],
            300.0,
        ),
        (
            "verbosity_guard_rejections_total",
            vec![("route", "tel"), ("reason", "client_requests")],
            1.0,
        ),
        (
            "verbosity_guard_rejections_total",
            vec![("route", "tel"), ("reason", "body_too_large")],
            1.0,
        ),
        (
            "verbosity_guard_rejections_total",
            vec![("route", "_invalid"), ("reason", "invalid_path")],
            1.0,
        ),
        (
            "verbosity_guard_upstream_duration_seconds_count",
            vec![("route", "tel")],
            2.0,
        ),
        (
            "verbosity_guard_upstream_duration_seconds_count",
            vec![("route", "default")],
            1.0,
        ),
        (
            "verbosity_guard_tracked_keys",
            vec![("route", "tel"), ("budget", "client_requests")],
            1.0,
        ),
        ("verbosity_guard_in_flight_requests", vec![], 0.0),
    ];
    for (name, labels, want) in expect {
        assert_eq!(m(name, &labels), Some(want), "{name}{labels:?}\n{text}");
    }
    let info = text
        .lines()
        .find(|l| l.starts_with("verbosity_guard_policy_info{"))
        .unwrap();
    assert!(
        info.contains("source=\"test-policy.yaml\"") && info.ends_with(" 1"),
        "{info}"
    );
    assert!(m("verbosity_guard_policy_loaded_timestamp_seconds", &[]).unwrap() > 1.7e9);
    assert!(m("verbosity_guard_connections_total", &[]).unwrap() >= 1.0);

    // Cardinality: no client key and no raw path ever becomes a label value.
    for forbidden in ["\"a\"", "\"b\"", "/tel", "/other", "%2f"] {
        assert!(
            !text.contains(forbidden),
            "{forbidden} leaked into metric labels"
        );
    }
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(POLICY, &up.url).await;
    let get = |path: &str| reqwest::get(format!("{}{path}", g.admin));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let policy = support::json(get("/policy").await.unwrap()).await;
    assert_eq!(policy["version_hash"].as_str().map(str::len), Some(16));
    assert_eq!(policy["routes"][0]["name"], "tel");
    assert_eq!(policy["routes"][0]["max_body"], 1024);
    assert_eq!(
        policy["routes"][0]["budgets"]["client_requests"]["burst"],
        2
    );
    assert_eq!(policy["routes"][1]["path"], "/*");
    assert_eq!(get("/nope").await.unwrap().status(), 404);
}
