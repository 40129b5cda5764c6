//! Shadow mode end to end: a shadow route decides and counts exactly what the same route in
//! enforce mode carries out, and forwards every request as received.
//!
//! Budgets here refill at one unit per hour (`1/h`, `1B/h`) with bursts sized to the traffic,
//! so nothing refills while a test runs: the enforce run and the shadow run make the same
//! decisions whatever their timing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::collections::BTreeMap;

use support::{Recorded, TestGuard, TestUpstream, chunked, client, eventually, metric_value};

const POLICY: &str = r#"
version: 1
mode: MODE
client_key: { header: x-vehicle-id, fallback: reject }
protect: { brownout: { enabled: false } }
routes:
  - name: telemetry
    match: { methods: [POST], path_prefix: /api/1/telemetry }
    priority: bulk
    payload:
      max_body: 4KiB
      client_requests: { rate: 1/h, burst: 8 }
      route_bytes: { rate: 1B/h, burst: 6KiB }
    records:
      format: ndjson
      levels:
        trace: drop
        debug: { sample: 50% }
        info: { rate: 1/h, burst: 15, per: client }
        warn: { bytes: 1B/h, bytes_burst: 1KiB }
      on_malformed: reject
  - name: commands
    match: { methods: [POST], path: "/api/1/vehicles/{id}/command/{command}" }
    priority: critical
    payload:
      max_body: 1KiB
      client_requests: { rate: 1/h, burst: 5 }
      client_bytes: { rate: 1B/h, burst: 1KiB }
  - name: config
    match: { methods: [GET], path_prefix: /api/1/config }
    verbosity_clamp: { header: x-log-level, max: info }
  - name: default
    match: { path_prefix: / }
"#;

fn policy(mode: &str) -> String {
    POLICY.replace("MODE", mode)
}

/// One request of the deterministic traffic.
struct Req {
    method: reqwest::Method,
    path: String,
    vehicle: Option<String>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Sent chunked (no Content-Length), in frames of this many bytes.
    chunked: Option<usize>,
}

fn req(method: reqwest::Method, path: &str, vehicle: Option<&str>, body: Vec<u8>) -> Req {
    Req {
        method,
        path: path.to_owned(),
        vehicle: vehicle.map(str::to_owned),
        headers: Vec::new(),
        body,
        chunked: None,
    }
}

fn batch(i: usize) -> Vec<u8> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "info"];
    let n = 4 + i % 7;
    let mut out = String::new();
    for j in 0..n {
        let level = LEVELS[(i + j) % LEVELS.len()];
        let pad = "x".repeat((i * 7 + j * 13) % 90);
        out.push_str(&format!(
            "{{\"ts\":{i}{j},\"level\":\"{level}\",\"msg\":\"event {i}-{j} {pad}\"}}\n"
        ));
    }
    out.into_bytes()
}

/// Telemetry batches from three vehicles (some malformed, some without a key), commands of
/// every size around `max_body`, chunked commands over the byte budget, clamped config reads,
/// and a path that cannot be normalized.
fn traffic() -> Vec<Req> {
    use reqwest::Method;
    let mut out = Vec::new();
    for i in 0..72 {
        let car = format!("car-{}", i % 3);
        let r = match i % 6 {
            0..=2 => {
                let body = match i {
                    13 | 37 => b"this is not ndjson\n".to_vec(),
                    8 => b"{\"level\":\"trace\"}\n{\"level\":\"trace\",\"n\":2}\n".to_vec(),
                    _ => batch(i),
                };
                let vehicle = (i != 25).then_some(car.as_str());
                req(Method::POST, "/api/1/telemetry/batch", vehicle, body)
            }
            3 => {
                let size = 200 + (i * 97) % 1100;
                let path = format!("/api/1/vehicles/{}/command/honk", i % 3);
                req(Method::POST, &path, Some(&car), vec![b'c'; size])
            }
            4 => {
                let level = ["trace", "debug", "warn"][i % 3];
                let mut r = req(Method::GET, "/api/1/config/app", Some(&car), Vec::new());
                r.headers.push(("x-log-level", level.to_owned()));
                r
            }
            _ => {
                // One vehicle streams commands: the first fits its 1 KiB byte budget, every
                // later one runs out of it part-way, however the frames are cut.
                let mut r = req(
                    Method::POST,
                    "/api/1/vehicles/9/command/upload",
                    Some("car-stream"),
                    vec![b's'; 700],
                );
                r.chunked = Some(100);
                r
            }
        };
        out.push(r);
    }
    out.push(req(
        Method::POST,
        "/api/1/telemetry/a%2Fb",
        Some("car-0"),
        batch(1),
    ));
    out
}

/// What a client saw: status, the guard's record counts, and the error body's reason.
#[derive(Debug)]
struct Seen {
    status: u16,
    kept: Option<String>,
    dropped: Option<String>,
    /// The `rejections_total` reason of a guard-made error answer.
    reason: Option<String>,
}

async fn send(url: &str, r: &Req) -> Seen {
    let mut b = client().request(r.method.clone(), format!("{url}{}", r.path));
    if let Some(v) = &r.vehicle {
        b = b.header("x-vehicle-id", v);
    }
    for (k, v) in &r.headers {
        b = b.header(*k, v);
    }
    b = match r.chunked {
        Some(frame) => {
            let frames = chunked(r.body.chunks(frame).map(|c| c.to_vec()));
            b.body(frames)
        }
        None if !r.body.is_empty() => b.body(r.body.clone()),
        None => b,
    };
    let resp = b.send().await.unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (kept, dropped) = (
        header("x-verbosity-guard-records-kept"),
        header("x-verbosity-guard-records-dropped"),
    );
    let status = resp.status().as_u16();
    let from_guard = resp.headers().get("x-upstream-saw-path").is_none();
    let body = resp.bytes().await.unwrap();
    let reason = (status >= 400 && from_guard).then(|| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let label = match v["error"].as_str().unwrap() {
            "budget_exceeded" => v["budget"].as_str().unwrap(),
            "body_exceeds_burst" => "exceeds_burst",
            other => other,
        };
        label.to_owned()
    });
    Seen {
        status,
        kept,
        dropped,
        reason,
    }
}

/// Every series of `family` on the page, by its labels.
fn series(text: &str, family: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(family))
        .filter_map(|rest| rest.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

#[tokio::test]
async fn shadow_counts_equal_what_enforce_mode_does_on_the_same_traffic() {
    let traffic = traffic();

    let enforce_up = TestUpstream::start().await;
    let enforce = TestGuard::start(&policy("enforce"), &enforce_up.url).await;
    let mut enforced = Vec::new();
    for r in &traffic {
        enforced.push(send(&enforce.url, r).await);
    }

    let shadow_up = TestUpstream::start().await;
    let shadow = TestGuard::start(&policy("shadow"), &shadow_up.url).await;
    let mut shadowed = Vec::new();
    for r in &traffic {
        shadowed.push(send(&shadow.url, r).await);
    }

    // The traffic exercises every kind of decision, or the comparison below proves little.
    let reasons: Vec<_> = enforced
        .iter()
        .filter_map(|s| s.reason.as_deref())
        .collect();
    for expected in [
        "client_requests",
        "route_bytes",
        "client_bytes",
        "body_too_large",
        "malformed_batch",
        "missing_client_key",
        "invalid_path",
    ] {
        assert!(
            reasons.contains(&expected),
            "no {expected} in enforce mode: {reasons:?}"
        );
    }
    assert!(
        enforced.iter().any(|s| s.status == 202),
        "no all-dropped batch"
    );
    let dropped = series(
        &enforce.scrape().await,
        "verbosity_guard_records_dropped_total",
    );
    for reason in ["drop_rule", "sample", "rate"] {
        assert!(
            dropped.keys().any(|k| k.contains(reason)),
            "no record dropped by {reason}: {dropped:?}"
        );
    }
    assert!(
        enforced
            .iter()
            .any(|s| s.status == 200 && s.dropped.as_deref().is_some_and(|d| d != "0")),
        "no rewritten batch"
    );

    // Request by request: shadow mode answered only what it must, and told the upstream what
    // enforce mode did.
    let mut received = Vec::new();
    for (i, (r, (e, s))) in traffic
        .iter()
        .zip(enforced.iter().zip(&shadowed))
        .enumerate()
    {
        if e.reason.as_deref() == Some("invalid_path") {
            assert_eq!(
                s.status, 400,
                "request {i}: an invalid path is refused in shadow"
            );
            continue;
        }
        assert_eq!(
            s.status, 200,
            "request {i}: shadow forwards everything ({s:?})"
        );
        assert!(
            s.kept.is_none() && s.dropped.is_none(),
            "request {i}: no record counts toward a shadow client"
        );
        let seen: Recorded = shadow_up.next_request().await;
        assert_eq!(seen.target, r.path, "request {i}");
        assert_eq!(
            seen.body, r.body,
            "request {i}: body forwarded byte for byte"
        );
        for (k, v) in &r.headers {
            assert_eq!(seen.headers[*k], v.as_str(), "request {i}: {k} not clamped");
        }
        let mark = seen.headers["x-verbosity-guard-shadow"].to_str().unwrap();
        let expected = match (e.status, &e.reason, &e.dropped) {
            // A chunked command running out of its byte budget mid-body: decided after the
            // headers were sent, so counted but not in the header.
            (_, Some(reason), _) if r.chunked.is_some() && reason == "client_bytes" => {
                "pass".to_owned()
            }
            (_, Some(reason), _) => format!("would-reject={reason}"),
            (202, _, Some(d)) => format!("would-drop={d}, would-keep=0"),
            (200, _, Some(d)) if d != "0" => {
                format!("would-drop={d}, would-keep={}", e.kept.as_deref().unwrap())
            }
            _ => match r.headers.first() {
                Some((_, level)) if level != "warn" => "would-clamp=1".to_owned(),
                _ => "pass".to_owned(),
            },
        };
        assert_eq!(mark, expected, "request {i}: enforce mode answered {e:?}");
        received.push(i);
    }
    assert_eq!(received.len(), traffic.len() - 1);

    // The counters an operator compares before switching: equal, series by series.
    let (e_text, s_text) = (enforce.scrape().await, shadow.scrape().await);
    let compare = |enforce_family: &str, shadow_family: &str| {
        let e = series(&e_text, enforce_family);
        let s = series(&s_text, shadow_family);
        assert!(!e.is_empty(), "{enforce_family} is empty");
        assert_eq!(e, s, "{enforce_family} vs {shadow_family}");
    };
    // An invalid path is refused in both modes, so it is a real rejection of the shadow guard.
    let invalid = |text: &str| {
        let (invalid, rest): (BTreeMap<_, _>, BTreeMap<_, _>) =
            series(text, "verbosity_guard_rejections_total")
                .into_iter()
                .partition(|(labels, _)| labels.contains("invalid_path"));
        (invalid, rest)
    };
    let (e_invalid, e_rejected) = invalid(&e_text);
    let (s_invalid, s_rejected) = invalid(&s_text);
    assert_eq!(
        e_rejected,
        series(&s_text, "verbosity_guard_shadow_rejections_total")
    );
    assert_eq!((e_invalid.len(), &e_invalid), (1, &s_invalid));
    assert!(
        s_rejected.is_empty(),
        "the shadow guard refused {s_rejected:?}"
    );
    compare(
        "verbosity_guard_records_dropped_total",
        "verbosity_guard_shadow_records_dropped_total",
    );
    compare(
        "verbosity_guard_record_bytes_dropped_total",
        "verbosity_guard_shadow_record_bytes_dropped_total",
    );
    compare(
        "verbosity_guard_verbosity_clamped_total",
        "verbosity_guard_shadow_verbosity_clamped_total",
    );
    let changed = |text: &str, family: &str| {
        series(text, family)
            .into_iter()
            .filter(|(labels, _)| !labels.contains("untouched") && !labels.contains("forwarded"))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        changed(&e_text, "verbosity_guard_batches_total"),
        series(&s_text, "verbosity_guard_shadow_batches_total"),
    );
    // Both read the same records; the shadow guard forwarded all of them.
    let s_received = series(&s_text, "verbosity_guard_records_received_total");
    assert_eq!(
        series(&e_text, "verbosity_guard_records_received_total"),
        s_received
    );
    assert_eq!(
        series(&s_text, "verbosity_guard_records_forwarded_total"),
        s_received
    );
    assert!(series(&s_text, "verbosity_guard_records_dropped_total").is_empty());
    let m = |text: &str, route: &str, mode: &str| {
        metric_value(
            text,
            "verbosity_guard_route_mode",
            &[("route", route), ("mode", mode)],
        )
    };
    assert_eq!(m(&s_text, "telemetry", "shadow"), Some(1.0));
    assert_eq!(m(&e_text, "telemetry", "enforce"), Some(1.0));
    assert_eq!(m(&s_text, "telemetry", "enforce"), None);
}

#[tokio::test]
async fn a_shadow_route_still_refuses_what_it_cannot_forward_or_buffer() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy("shadow"), &up.url).await;
    let telemetry = format!("{}/api/1/telemetry/batch", g.url);

    // A records route buffers its batch: max_body still bounds that, declared or chunked.
    let resp = client()
        .post(&telemetry)
        .header("x-vehicle-id", "a")
        .body(vec![b'{'; 9000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let frames = chunked((0..9).map(|_| vec![b'{'; 1024]));
    let resp = client()
        .post(&telemetry)
        .header("x-vehicle-id", "a")
        .body(frames)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // A route that streams only counts it: the upstream gets the whole chunked body.
    let frames = chunked((0..3).map(|_| vec![b'b'; 1000]));
    let resp = client()
        .post(format!("{}/api/1/vehicles/1/command/big", g.url))
        .header("x-vehicle-id", "b")
        // A client cannot pass for the guard.
        .header("x-verbosity-guard-shadow", "pass")
        .body(frames)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.next_request().await;
    assert_eq!(seen.body.len(), 3000);
    assert_eq!(
        seen.headers
            .get_all("x-verbosity-guard-shadow")
            .iter()
            .count(),
        1
    );
    eventually("the mid-body decision is counted", async || {
        g.metric(
            "verbosity_guard_shadow_rejections_total",
            &[("route", "commands"), ("reason", "body_too_large")],
        )
        .await
            == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_shadow_request_takes_a_free_upstream_slot_but_never_waits_for_one() {
    let up = TestUpstream::start().await;
    let policy = "version: 1\nmode: shadow\nprotect: { max_in_flight: 4, critical_reserved: 1, bulk_max_in_flight: 1, brownout: { enabled: false } }\nroutes:\n  - name: default\n    match: { path_prefix: / }\n    priority: bulk\n";
    let g = TestGuard::start(policy, &up.url).await;
    let held = tokio::spawn({
        let url = format!("{}/__hold", g.url);
        async move { client().get(url).send().await.unwrap().status() }
    });
    // Once the upstream has it, the held request has the only bulk slot.
    let first = up.next_request().await;
    assert_eq!(first.headers["x-verbosity-guard-shadow"], "pass");

    let t = std::time::Instant::now();
    let resp = client().get(format!("{}/x", g.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < support::PATIENCE);
    let second = up.next_request().await;
    assert_eq!(
        second.headers["x-verbosity-guard-shadow"],
        "would-reject=shed_slot_busy"
    );
    up.release();
    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(
        g.metric(
            "verbosity_guard_shadow_rejections_total",
            &[("route", "default"), ("reason", "shed_slot_busy")],
        )
        .await,
        1.0
    );
    // Nothing was shed for real.
    assert_eq!(g.metric("verbosity_guard_shed_total", &[]).await, 0.0);
}
