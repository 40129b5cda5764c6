use std::time::Duration;

use http::Method;

use super::*;

const MINIMAL: &str = "version: 1\nroutes:\n  - name: default\n    match: { path_prefix: / }\n";

fn problems(text: &str) -> Vec<String> {
    match parse(text, "p.yaml") {
        Ok(_) => vec![],
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn minimal_policy_gets_defaults() {
    let p = parse(MINIMAL, "p.yaml").unwrap();
    assert_eq!(p.routes().len(), 1);
    let r = &p.routes()[0];
    assert_eq!(r.priority, Priority::Normal);
    assert_eq!(r.timeout, Duration::from_secs(30));
    assert_eq!(r.client_key.source, KeySource::PeerIp);
    assert_eq!(p.limits.max_tracked_keys, 1_000_000);
    assert_eq!(p.version_hash.len(), 16);
    assert_eq!(p.route(&Method::DELETE, "/x/y").1.name, "default");
}

#[test]
fn first_match_wins_and_budgets_resolve() {
    let text = r#"
version: 1
client_key: { header: X-Vehicle-Id }
routes:
  - name: commands
    match: { methods: [POST], path: "/api/1/vehicles/{id}/command/{cmd}" }
    priority: critical
    timeout: 5s
    payload:
      max_body: 16KiB
      client_requests: { rate: 10/s }
  - name: telemetry
    match: { path_prefix: /api/1/telemetry }
    client_key: { query: vin, fallback: reject }
    payload:
      client_bytes: { rate: 64KiB/s, burst: 512KiB }
      route_requests: { rate: 600/m, burst: 50 }
  - name: default
    match: { path_prefix: / }
"#;
    let p = parse(text, "p.yaml").unwrap();
    let (i, r) = p.route(&Method::POST, "/api/1/vehicles/7/command/unlock");
    assert_eq!(
        (i, r.name.as_str(), r.priority),
        (0, "commands", Priority::Critical)
    );
    assert_eq!(r.timeout, Duration::from_secs(5));
    assert_eq!(
        r.client_key.source,
        KeySource::Header(HeaderName::from_static("x-vehicle-id"))
    );
    assert_eq!(r.payload.max_body, Some(16384));
    let q = r.payload.quota(BudgetKind::ClientRequests).unwrap();
    assert_eq!(
        (q.amount, q.burst),
        (10, 10),
        "default burst is one second of rate"
    );
    assert_eq!(
        p.route(&Method::GET, "/api/1/vehicles/7/command/unlock")
            .1
            .name,
        "default"
    );
    let (_, t) = p.route(&Method::PUT, "/api/1/telemetry/x");
    assert_eq!(t.name, "telemetry");
    assert_eq!(t.client_key.fallback, KeyFallback::Reject);
    assert_eq!(
        t.payload.quota(BudgetKind::ClientBytes).unwrap().burst,
        512 * 1024
    );
    assert_eq!(
        t.payload.quota(BudgetKind::RouteRequests).unwrap().per,
        Duration::from_secs(60)
    );
    let json = p.to_json();
    assert_eq!(
        json["routes"][1]["budgets"]["client_bytes"]["burst"],
        512 * 1024
    );
}

#[test]
fn parse_errors_name_line_and_field() {
    let text = "version: 1\nroutes:\n  - name: a\n    match: { path_prefix: / }\n    payload:\n      max_body: 12XB\n";
    assert_eq!(
        problems(text),
        [
            r#"p.yaml:6: routes[0].payload.max_body: "12XB" is not a size (write e.g. 512B, 16KiB, 1MiB, 2GiB or 10kB, 5MB)"#
        ]
    );
    let text =
        "version: 1\nroutes:\n  - name: a\n    match: { path_prefix: / }\n    priorty: bulk\n";
    let p = problems(text);
    assert!(
        p[0].starts_with("p.yaml:5: routes[0].priorty: unknown field `priorty`"),
        "{p:?}"
    );
}

#[test]
fn compile_errors_are_all_listed() {
    let text = r#"
version: 2
routes:
  - name: Bad Name
    match: { path: "/a/{", methods: [FETCH] }
  - name: x
    match: { path_prefix: /x, path: /y }
  - name: x
    match: { path: /z }
    client_key: { header: a, query: b }
    payload: { client_requests: { rate: 1/s, burst: 0 } }
"#;
    let p = problems(text);
    let expected = [
        "p.yaml:2: version: unsupported version 2",
        "p.yaml:4: routes[0].name: \"Bad Name\" is not a route name",
        "p.yaml:5: routes[0].match.methods: \"FETCH\" is not an HTTP method",
        "p.yaml:5: routes[0].match.path: \"/a/{\" has a malformed template segment",
        "p.yaml:6: routes[1].match: exactly one of `path` and `path_prefix` is required",
        "p.yaml:8: routes[2].name: duplicate route name \"x\"",
        "p.yaml:10: routes[2].client_key: set at most one of `header` and `query`",
        "p.yaml:11: routes[2].payload.client_requests.burst: must be at least 1",
        "p.yaml: routes: the last route must be a catch-all",
    ];
    assert_eq!(p.len(), expected.len(), "{p:#?}");
    for (got, want) in p.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

#[test]
fn routes_after_the_catch_all_are_unreachable() {
    let text = format!("{MINIMAL}  - name: late\n    match: {{ path: /late }}\n");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("routes[1]: route \"late\" can never match"),
        "{p:?}"
    );
}

#[test]
fn small_byte_burst_is_a_warning() {
    let text = "version: 1\nroutes:\n  - name: a\n    match: { path_prefix: / }\n    payload: { max_body: 1MiB, client_bytes: { rate: 64KiB/s, burst: 512KiB } }\n";
    let p = parse(text, "p.yaml").unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("burst 512KiB is smaller than max_body 1MiB"));
}
