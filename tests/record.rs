//! `serve --record`: what reaches the file is what clients sent, sampled by client, bounded in
//! body and file size, and replays with `simulate` to the live guard's counts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use support::{TestGuard, TestUpstream, chunked, client, eventually, metric_value};
use verbosity_guard::record::RecordConfig;
use verbosity_guard::records::Sample;
use verbosity_guard::traffic::{Entry, Limits, Traffic};

const POLICY: &str = r#"
version: 1
client_key: { header: x-vehicle-id }
protect: { brownout: { enabled: false } }
routes:
  - name: telemetry
    match: { methods: [POST], path_prefix: /api/1/telemetry }
    payload: { client_requests: { rate: 1/h, burst: 3 } }
    records:
      format: ndjson
      levels: { debug: drop, info: { rate: 1/h, burst: 5 } }
  - name: commands
    match: { methods: [POST], path_prefix: /api/1/vehicles }
    payload: { max_body: 1KiB, client_bytes: { rate: 1B/h, burst: 1KiB } }
  - name: default
    match: { path_prefix: / }
"#;

fn record_to(path: &Path, sample: u32, max_bytes: u64, max_body: u64) -> RecordConfig {
    RecordConfig {
        path: path.to_path_buf(),
        sample: Sample::per_million(sample),
        max_bytes,
        max_body,
    }
}

async fn start(policy: &str, up: &TestUpstream, record: RecordConfig) -> TestGuard {
    TestGuard::start_with(policy, &up.url, |c| c.record = Some(record)).await
}

/// Waits until the recorder has dealt with `n` requests (written or dropped).
async fn settled(g: &TestGuard, n: f64) {
    eventually("the recorder to settle", async || {
        let text = g.scrape().await;
        let total: f64 = ["written", "queue_full", "file_full", "write_error"]
            .iter()
            .map(|o| {
                metric_value(
                    &text,
                    "verbosity_guard_recorded_requests_total",
                    &[("outcome", o)],
                )
                .unwrap_or(0.0)
            })
            .sum();
        total >= n
    })
    .await;
}

fn read(path: &Path) -> Vec<Entry> {
    Traffic::open(path, Limits::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn what_was_sent_is_recorded_and_replays_to_the_live_counts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("live.ndjson");
    let up = TestUpstream::start().await;
    let g = start(POLICY, &up, record_to(&file, 1_000_000, 1 << 20, 1 << 20)).await;

    let batch =
        "{\"level\":\"info\",\"n\":1}\n{\"level\":\"debug\"}\n{\"level\":\"info\",\"n\":2}\n";
    let mut sent: Vec<(String, String, Vec<u8>)> = Vec::new();
    for i in 0..5 {
        // The 4th and 5th are over client_requests: refused before their body is read.
        let resp = client()
            .post(format!("{}/api/1/telemetry/batch", g.url))
            .header("x-vehicle-id", "car-1")
            .header("content-type", "application/x-ndjson")
            .header("authorization", "Bearer secret-token")
            .body(batch)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), if i < 3 { 200 } else { 429 });
        sent.push(("POST".into(), "/api/1/telemetry/batch".into(), batch.into()));
    }
    // Binary, streamed without a Content-Length, and a path as the client spelled it.
    let binary: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    let frames = chunked(binary.chunks(100).map(|c| c.to_vec()));
    let resp = client()
        .post(format!("{}/api/1/vehicles/7/./command//flash", g.url))
        .header("x-vehicle-id", "car-2")
        .body(frames)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The client's URL library resolves `.`, not `//`: the guard records the path as it
    // arrived, and forwards it normalized.
    sent.push((
        "POST".into(),
        "/api/1/vehicles/7/command//flash".into(),
        binary.clone(),
    ));
    for _ in 0..3 {
        assert_eq!(up.next_request().await.target, "/api/1/telemetry/batch");
    }
    assert_eq!(
        up.next_request().await.target,
        "/api/1/vehicles/7/command/flash"
    );
    let resp = client()
        .get(format!("{}/state?fields=a,b&x=%41", g.url))
        .header("cookie", "session=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sent.push(("GET".into(), "/state?fields=a,b&x=%41".into(), Vec::new()));

    settled(&g, sent.len() as f64).await;
    let mut recorded = read(&file);
    assert_eq!(recorded.len(), sent.len());
    // The writer writes in the order requests end: compare in send order by body and path.
    recorded.sort_by_key(|e| e.at);
    for (i, (e, (method, target, body))) in recorded.iter().zip(&sent).enumerate() {
        assert_eq!(e.method.as_str(), method, "entry {i}");
        assert_eq!(e.target.as_str(), target, "entry {i}");
        assert_eq!(e.peer.to_string(), "127.0.0.1");
        if !(3..5).contains(&i) {
            assert_eq!(&e.body[..], &body[..], "entry {i}: the body as sent");
            assert!(!e.is_partial(), "entry {i}");
        } else {
            // Refused from its headers: the body was never read, its size was declared.
            assert!(
                e.body.is_empty() && e.body_size == body.len() as u64,
                "entry {i}"
            );
        }
    }
    let auth = recorded[0].headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("redacted-") && !auth.contains("secret"),
        "{auth}"
    );
    assert_eq!(
        recorded[0].headers["authorization"], recorded[1].headers["authorization"],
        "the same credential is the same client"
    );
    assert!(
        recorded[6].headers["cookie"]
            .to_str()
            .unwrap()
            .starts_with("redacted-")
    );
    assert_eq!(recorded[0].headers["x-vehicle-id"], "car-1");

    // Replayed, the recording gives the live guard's counts.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let opts = verbosity_guard::simulate::Options {
        policy,
        traffic: file.clone(),
        brownout: verbosity_guard::protect::Brownout::Off,
        limits: Limits::default(),
        pods: 1,
    };
    let (report, _) = verbosity_guard::simulate::run(&opts, &[]).unwrap();
    let live = g.scrape().await;
    for route in ["telemetry", "commands", "default"] {
        let r = report.route(route).unwrap();
        let m = |outcome| {
            metric_value(
                &live,
                "verbosity_guard_requests_total",
                &[("route", route), ("outcome", outcome)],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(r.requests.forwarded as f64, m("forwarded"), "{route}");
        assert_eq!(r.rejected_total() as f64, m("rejected"), "{route}");
    }
    let info = &report.route("telemetry").unwrap().levels[2];
    let live_info = metric_value(
        &live,
        "verbosity_guard_records_forwarded_total",
        &[("route", "telemetry"), ("level", "info")],
    );
    assert_eq!(Some(info.records.forwarded as f64), live_info);
}

#[tokio::test]
async fn a_sample_keeps_whole_clients_and_bounds_file_and_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sampled.ndjson");
    let up = TestUpstream::start().await;
    let policy = "version: 1\nclient_key: { header: x-vehicle-id }\nroutes:\n  - name: keyed\n    match: { path_prefix: /keyed }\n    payload: { client_requests: { rate: 1000/s } }\n  - name: default\n    match: { path_prefix: / }\n";
    let g = start(policy, &up, record_to(&file, 500_000, 1 << 20, 64)).await;
    for round in 0..3 {
        for v in 0..100 {
            client()
                .post(format!("{}/keyed/{round}", g.url))
                .header("x-vehicle-id", format!("v{v}"))
                .body(vec![b'k'; 100])
                .send()
                .await
                .unwrap();
        }
    }
    for _ in 0..200 {
        client()
            .get(format!("{}/open", g.url))
            .send()
            .await
            .unwrap();
    }
    // Clients are recorded whole: wait until each one seen has its three requests.
    let per_client = |entries: &[Entry]| {
        let mut per: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in entries {
            if let Some(v) = e.headers.get("x-vehicle-id") {
                per.entry(v.to_str().unwrap().to_owned())
                    .or_default()
                    .insert(e.target.to_string());
            }
        }
        per
    };
    eventually("every sampled client's three requests", async || {
        let per = per_client(&read(&file));
        !per.is_empty() && per.values().all(|targets| targets.len() == 3)
    })
    .await;
    let entries = read(&file);
    let per_client = per_client(&entries);
    let mut unkeyed = 0;
    for e in &entries {
        match e.headers.get("x-vehicle-id") {
            // Bodies are cut at --record-max-body and keep their size.
            Some(_) => assert_eq!((e.body.len(), e.body_size), (64, 100)),
            None => unkeyed += 1,
        }
    }
    let clients = per_client.len();
    assert!(
        (20..=80).contains(&clients),
        "{clients} of 100 clients sampled at 50%"
    );
    assert!(
        (40..=160).contains(&unkeyed),
        "{unkeyed} of 200 unkeyed requests at 50%"
    );
}

#[tokio::test]
async fn the_recording_stops_at_its_size_cap_with_whole_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capped.ndjson");
    let up = TestUpstream::start().await;
    let g = start(POLICY, &up, record_to(&file, 1_000_000, 2048, 1 << 20)).await;
    for i in 0..30 {
        client()
            .get(format!("{}/page/{i}", g.url))
            .header("x-vehicle-id", "car")
            .send()
            .await
            .unwrap();
    }
    settled(&g, 30.0).await;
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 2048, "{size} bytes");
    let entries = read(&file);
    let text = g.scrape().await;
    let m = |outcome| {
        metric_value(
            &text,
            "verbosity_guard_recorded_requests_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    let (written, full) = (m("written"), m("file_full"));
    assert_eq!(entries.len() as f64, written);
    assert!(
        written > 0.0 && full > 0.0,
        "written {written}, file_full {full}"
    );
    assert_eq!(written + full, 30.0);
    assert_eq!(
        g.metric("verbosity_guard_record_file_bytes", &[]).await,
        size as f64
    );
}
