//! The per-request decision path without I/O: normalize the path, match the route, hash the
//! client key, charge the payload budgets. `cargo bench --bench decision`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Method, Request};
use verbosity_guard::budget::{FleetLink, admit};
use verbosity_guard::decide::client_key;
use verbosity_guard::policy;
use verbosity_guard::route::normalize_path;

/// The shipped policy's routes with budgets raised so that every charge is admitted: the bench
/// measures the decision, not the 429 path.
fn policy() -> policy::Policy {
    policy::parse(&policy_text(), "bench.yaml").expect("bench policy compiles")
}

fn policy_text() -> String {
    include_str!("../policies/vehicle-api.yaml")
        .replace(
            "rate: 2/s, burst: 10",
            "rate: 100000000/s, burst: 100000000",
        )
        .replace(
            "rate: 20/s, burst: 40",
            "rate: 100000000/s, burst: 100000000",
        )
        .replace("rate: 1MiB/s, burst: 1MiB", "rate: 1000GiB/s, burst: 1GiB")
        .replace("rate: 50MiB/s, burst: 8MiB", "rate: 1000GiB/s, burst: 1GiB")
}

/// The same policy with every payload budget `scope: fleet`, served in fleet mode, and `warm`
/// run through it once so each key holds a lease far larger than the bench spends: the
/// request path then only spends leases, as a guard whose refills keep up does.
fn fleet_policy(warm: impl Fn(&policy::Policy)) -> policy::Policy {
    let text = policy_text()
        .replace("burst: 100000000 }", "burst: 100000000, scope: fleet }")
        .replace("burst: 1GiB }", "burst: 1GiB, scope: fleet }");
    let (link, mut refills) = FleetLink::new();
    link.set_fleet_mode(true);
    let fleet = policy::FleetRuntime::Linked(link);
    let p = policy::parse_replacing(&text, "bench.yaml", None, &fleet).expect("fleet policy");
    warm(&p);
    while let Ok(r) = refills.try_recv() {
        if let Some(ask) = r.leases.ask(r.key) {
            r.leases
                .grant(r.key, ask, 1 << 50, Duration::ZERO, Duration::ZERO);
        }
    }
    p
}

fn decision(c: &mut Criterion) {
    let policy = policy();
    let hasher = verbosity_guard::decide::KeyHasher;
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let requests: Vec<_> = (0..1024)
        .map(|i| {
            let (method, path) = match i % 4 {
                0 => (Method::POST, format!("/api/1/vehicles/{i}/command/unlock")),
                1 => (Method::POST, "/api/1/telemetry/batch".to_owned()),
                2 => (Method::GET, format!("/api/1/vehicles/{i}/vehicle_data")),
                _ => (Method::GET, "/favicon.ico".to_owned()),
            };
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("x-vehicle-id", format!("VIN{i:014}"))
                .body(())
                .unwrap();
            req.into_parts().0
        })
        .collect();

    let decide = |policy: &policy::Policy, parts: &http::request::Parts| {
        let path = normalize_path(parts.uri.path()).unwrap();
        let (_, route) = policy.route(&parts.method, &path);
        let key = route
            .payload
            .needs_client_key()
            .then(|| client_key(&route.client_key, parts, peer, &hasher).unwrap());
        admit(&route.payload, key, Some(512), |_| {}).is_ok()
    };
    let fleet = fleet_policy(|p| {
        for parts in &requests {
            assert!(decide(p, parts));
        }
    });

    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("route_match", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            let parts = &requests[i];
            let path = normalize_path(parts.uri.path()).unwrap();
            policy.route(&parts.method, &path).0
        })
    });
    g.bench_function("route_match_key_and_budgets", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            decide(&policy, &requests[i])
        })
    });
    // Within 5% of the above is the target (issue 14): a lease is an atomic subtraction where
    // a local budget is a GCRA compare-and-swap.
    g.bench_function("route_match_key_and_fleet_budgets", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            decide(&fleet, &requests[i])
        })
    });
    g.bench_function("normalize_dirty_path", |b| {
        b.iter(|| {
            normalize_path("//api/1/./vehicles/%37/x/../command/unlock")
                .unwrap()
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
