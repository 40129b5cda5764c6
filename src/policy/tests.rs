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

/// Budget reuse on reload: a budget whose definition did not change carries over (same `Arc`,
/// same state); any change to its definition gives a fresh one.
mod reuse {
    use std::sync::Arc;

    use super::*;
    use crate::budget::Verdict;

    fn policy(max_keys: u64, commands: &str, telemetry_info: &str) -> String {
        format!(
            r#"
version: 1
client_key: {{ header: x-vehicle-id }}
limits: {{ max_tracked_keys: {max_keys} }}
routes:
  - name: commands
    match: {{ path_prefix: /cmd }}
    payload: {{ route_requests: {commands}, client_requests: {{ rate: 1/m, burst: 2 }} }}
  - name: telemetry
    match: {{ path_prefix: /t }}
    payload: {{ route_bytes: {{ rate: 1MiB/s }}, client_bytes: {{ rate: 64KiB/s }} }}
    records:
      format: ndjson
      levels:
        info: {telemetry_info}
        warn: {{ rate: 5/m, per: route }}
        debug: {{ bytes: 1KiB/s, per: client }}
  - name: default
    match: {{ path_prefix: / }}
"#
        )
    }

    const COMMANDS: &str = "{ rate: 1/m, burst: 3 }";
    const INFO: &str = "{ rate: 10/m, per: client }";

    fn route<'p>(p: &'p Policy, name: &str) -> &'p Route {
        p.routes().iter().find(|r| r.name == name).unwrap()
    }

    fn level(p: &Policy, l: Level) -> &crate::records::LevelRule {
        route(p, "telemetry").records.as_ref().unwrap().rule(l)
    }

    fn same_level(a: &Option<LevelBudget>, b: &Option<LevelBudget>) -> bool {
        match (a, b) {
            (Some(LevelBudget::Route(a)), Some(LevelBudget::Route(b))) => Arc::ptr_eq(a, b),
            (
                Some(LevelBudget::Client {
                    keyed: ka,
                    overflow: oa,
                }),
                Some(LevelBudget::Client {
                    keyed: kb,
                    overflow: ob,
                }),
            ) => Arc::ptr_eq(ka, kb) && Arc::ptr_eq(oa, ob),
            (None, None) => true,
            _ => false,
        }
    }

    fn reload(old: &Policy, text: &str) -> Policy {
        parse_replacing(text, "p.yaml", Some(old), &FleetRuntime::ALONE).unwrap()
    }

    #[test]
    fn unchanged_budgets_carry_over_with_their_state() {
        let old = parse(&policy(100, COMMANDS, INFO), "p.yaml").unwrap();
        let cmd = route(&old, "commands");
        let requests = cmd.payload.client_requests.as_ref().unwrap();
        assert_eq!(requests.check(7, 1), Verdict::Allow);
        assert_eq!(requests.check(7, 1), Verdict::Allow);
        assert!(matches!(requests.check(7, 1), Verdict::RetryAfter(_)));

        // Only a comment differs: a new version, every budget carried over.
        let new = reload(&old, &format!("# edited\n{}", policy(100, COMMANDS, INFO)));
        assert_ne!(new.version_hash, old.version_hash);
        assert_eq!(new.budgets_shared_with(&old), (7, 7));
        let requests = route(&new, "commands")
            .payload
            .client_requests
            .as_ref()
            .unwrap();
        assert!(
            matches!(requests.check(7, 1), Verdict::RetryAfter(_)),
            "an exhausted budget is still exhausted after the reload: no fresh burst"
        );
        assert_eq!(
            requests.check(8, 1),
            Verdict::Allow,
            "other keys unaffected"
        );
        for l in [Level::Info, Level::Warn, Level::Debug] {
            assert!(same_level(&level(&new, l).records, &level(&old, l).records));
            assert!(same_level(&level(&new, l).bytes, &level(&old, l).bytes));
        }
    }

    #[test]
    fn a_changed_definition_gets_a_fresh_budget_and_nothing_else_does() {
        let old = parse(&policy(100, COMMANDS, INFO), "p.yaml").unwrap();
        let burst = reload(&old, &policy(100, "{ rate: 1/m, burst: 4 }", INFO));
        let rate = reload(&old, &policy(100, "{ rate: 2/m, burst: 3 }", INFO));
        let period = reload(&old, &policy(100, "{ rate: 1/s, burst: 3 }", INFO));
        for new in [&burst, &rate, &period] {
            let (o, n) = (route(&old, "commands"), route(new, "commands"));
            let (o_rr, n_rr) = (&o.payload.route_requests, &n.payload.route_requests);
            assert!(!Arc::ptr_eq(o_rr.as_ref().unwrap(), n_rr.as_ref().unwrap()));
            assert!(Arc::ptr_eq(
                o.payload.client_requests.as_ref().unwrap(),
                n.payload.client_requests.as_ref().unwrap()
            ));
            assert_eq!(new.budgets_shared_with(&old), (6, 7));
        }

        // A level budget that moves from per-route to per-client (same rate) starts afresh.
        let per = reload(&old, &policy(100, COMMANDS, "{ rate: 10/m, per: route }"));
        assert!(matches!(
            level(&per, Level::Info).records,
            Some(LevelBudget::Route(_))
        ));
        assert!(!same_level(
            &level(&per, Level::Info).records,
            &level(&old, Level::Info).records
        ));
        assert!(same_level(
            &level(&per, Level::Warn).records,
            &level(&old, Level::Warn).records
        ));
    }

    #[test]
    fn a_new_key_cap_renews_per_client_budgets_only() {
        let old = parse(&policy(100, COMMANDS, INFO), "p.yaml").unwrap();
        let new = reload(&old, &policy(200, COMMANDS, INFO));
        let (o, n) = (route(&old, "commands"), route(&new, "commands"));
        assert!(Arc::ptr_eq(
            o.payload.route_requests.as_ref().unwrap(),
            n.payload.route_requests.as_ref().unwrap()
        ));
        let keyed = n.payload.client_requests.as_ref().unwrap();
        assert!(!Arc::ptr_eq(
            o.payload.client_requests.as_ref().unwrap(),
            keyed
        ));
        assert_eq!(keyed.max_keys(), 200);
        assert!(same_level(
            &level(&new, Level::Warn).records,
            &level(&old, Level::Warn).records
        ));
        assert!(!same_level(
            &level(&new, Level::Info).records,
            &level(&old, Level::Info).records
        ));
        // route_requests, route_bytes, the warn route budget: 3 of 7.
        assert_eq!(new.budgets_shared_with(&old), (3, 7));
    }

    #[test]
    fn budgets_follow_the_route_name_not_its_position() {
        let old = parse(&policy(100, COMMANDS, INFO), "p.yaml").unwrap();
        let text = policy(100, COMMANDS, INFO);
        let renamed = reload(&old, &text.replace("name: commands", "name: orders"));
        assert_eq!(
            renamed.budgets_shared_with(&old),
            (5, 7),
            "telemetry's carry over"
        );
        assert!(route(&renamed, "orders").payload.route_requests.is_some());

        // Moved to another place in the table, same name: carried over.
        let moved = text.replace(
            "  - name: default",
            "  - name: extra\n    match: { path: /x }\n  - name: default",
        );
        let moved = moved.replacen(
            "  - name: commands",
            "  - name: first\n    match: { path: /first }\n  - name: commands",
            1,
        );
        let moved = reload(&old, &moved);
        assert_eq!(moved.budgets_shared_with(&old), (7, 7));
    }

    #[test]
    fn a_failed_compile_leaves_the_old_budgets_alone() {
        let old = parse(&policy(100, COMMANDS, INFO), "p.yaml").unwrap();
        let broken = policy(100, COMMANDS, INFO).replace("name: telemetry", "name: Telemetry");
        assert!(parse_replacing(&broken, "p.yaml", Some(&old), &FleetRuntime::ALONE).is_err());
        let requests = route(&old, "commands")
            .payload
            .client_requests
            .as_ref()
            .unwrap();
        assert_eq!(Arc::strong_count(requests), 1, "nothing kept a reference");
    }
}

/// `simulate` compiles the policy on a virtual clock: every budget, payload and level, follows
/// it and nothing else, so time only passes when the clock is advanced.
#[test]
fn a_policy_compiled_on_a_fake_clock_refills_only_when_the_clock_moves() {
    use governor::clock::FakeRelativeClock;

    use crate::budget::admit;
    use crate::records::filter::decide;

    let text = r#"
version: 1
routes:
  - name: telemetry
    match: { path_prefix: /t }
    payload: { client_requests: { rate: 1/s, burst: 2 } }
    records:
      format: ndjson
      levels: { info: { rate: 1/s, burst: 1 } }
  - name: default
    match: { path_prefix: / }
"#;
    let clock = FakeRelativeClock::default();
    let p = parse_with_clock(text, "p.yaml", &clock, &FleetRuntime::ALONE).unwrap();
    let route = &p.routes()[0];
    let admitted = |n| {
        (0..n)
            .filter(|_| admit(&route.payload, Some(7), Some(10), |_| {}).is_ok())
            .count()
    };
    assert_eq!(
        admitted(5),
        2,
        "the burst, then nothing: no real time counts"
    );
    let records = route.records.as_ref().unwrap();
    let body = b"{\"level\":\"info\"}\n{\"level\":\"info\"}\n";
    let mut batch = crate::records::Batch::parse(records, body).unwrap();
    assert_eq!(decide(&mut batch.records, records, Some(7)).forwarded(), 1);

    clock.advance(Duration::from_secs(1));
    assert_eq!(admitted(5), 1, "one second of rate");
    let mut batch = crate::records::Batch::parse(records, body).unwrap();
    assert_eq!(decide(&mut batch.records, records, Some(7)).forwarded(), 1);
}

#[test]
fn mode_defaults_to_enforce_and_a_route_overrides_the_policy() {
    let p = parse(MINIMAL, "p.yaml").unwrap();
    assert_eq!(p.routes()[0].mode, Mode::Enforce);
    let text = "version: 1\nmode: shadow\nroutes:\n  - name: a\n    match: { path_prefix: /a }\n    mode: enforce\n  - name: default\n    match: { path_prefix: / }\n";
    let p = parse(text, "p.yaml").unwrap();
    let modes: Vec<_> = p.routes().iter().map(|r| r.mode).collect();
    assert_eq!(modes, [Mode::Enforce, Mode::Shadow]);
    assert_eq!(p.to_json()["routes"][1]["mode"], "shadow");
}
