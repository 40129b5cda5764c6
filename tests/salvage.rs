//! The guard's own shedding never loses an error record (issue 15): a bulk telemetry batch that
//! finds no upstream slot in time is cut down to its error and fatal records, which go upstream
//! at normal priority; only when nothing is left, or no normal slot comes either, is the batch
//! refused (503, retried by its sender), its records counted as refused.
//!
//! The bulk slot is held by a request the upstream holds (`/__hold`), so the batch's wait runs
//! out deterministically.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use support::{TestGuard, TestUpstream, client, header};

/// `max_in_flight` total slots, one reserved for critical; bulk may hold one.
fn policy(max_in_flight: u32) -> String {
    format!(
        r#"version: 1
client_key: {{ header: x-vehicle-id }}
protect:
  max_in_flight: {max_in_flight}
  critical_reserved: 1
  bulk_max_in_flight: 1
  queue_timeout: {{ critical: 5s, normal: 100ms, bulk: 20ms }}
routes:
  - name: telemetry
    match: {{ methods: [POST], path_prefix: /telemetry }}
    priority: bulk
    records: {{ format: ndjson }}
  - name: hold
    match: {{ path: /__hold }}
    priority: bulk
  - name: default
    match: {{ path_prefix: / }}
"#
    )
}

fn batch(levels: &[(&str, usize)]) -> String {
    let mut b = String::new();
    for (level, n) in levels {
        for i in 0..*n {
            b.push_str(&format!("{{\"level\":\"{level}\",\"msg\":\"m{i}\"}}\n"));
        }
    }
    b
}

/// The guard in front of an upstream whose one bulk request in flight holds the bulk slot.
async fn held_bulk(max_in_flight: u32) -> (TestUpstream, TestGuard, tokio::task::JoinHandle<()>) {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&policy(max_in_flight), &up.url).await;
    let url = format!("{}/__hold", g.url);
    let holder = tokio::spawn(async move {
        let resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    });
    assert_eq!(up.next_request().await.target, "/__hold");
    (up, g, holder)
}

async fn post(g: &TestGuard, body: String) -> reqwest::Response {
    client()
        .post(format!("{}/telemetry", g.url))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn records(g: &TestGuard, family: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("route", "telemetry")];
    all.extend_from_slice(labels);
    g.metric(&format!("verbosity_guard_{family}"), &all).await
}

#[tokio::test]
async fn a_bulk_batch_with_no_slot_goes_on_with_its_error_records_at_normal_priority() {
    // Three slots: the critical reserve, the one the held request takes, one for normal.
    let (up, g, holder) = held_bulk(3).await;
    let resp = post(
        &g,
        batch(&[("debug", 4), ("error", 2), ("info", 3), ("fatal", 1)]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-kept"),
        "3"
    );
    assert_eq!(
        header(resp.headers(), "x-verbosity-guard-records-dropped"),
        "7"
    );

    // The upstream got the error and fatal records, unchanged and in order, and nothing else.
    let seen = up.next_request().await;
    assert_eq!(
        String::from_utf8(seen.body.to_vec()).unwrap(),
        batch(&[("error", 2), ("fatal", 1)])
    );
    assert_eq!(header(&seen.headers, "x-verbosity-guard-records-kept"), "3");

    for (level, n) in [("debug", 4.0), ("info", 3.0)] {
        let labels = [("level", level), ("reason", "shed")];
        assert_eq!(records(&g, "records_dropped_total", &labels).await, n);
    }
    for level in ["error", "fatal"] {
        let labels = [("level", level), ("reason", "shed")];
        assert_eq!(records(&g, "records_dropped_total", &labels).await, 0.0);
    }
    assert_eq!(
        records(&g, "records_forwarded_total", &[("level", "error")]).await,
        2.0
    );
    let salvaged = g
        .metric(
            "verbosity_guard_shed_salvaged_total",
            &[("reason", "queue_timeout")],
        )
        .await;
    assert_eq!(salvaged, 1.0);

    up.release();
    holder.await.unwrap();
}

#[tokio::test]
async fn a_bulk_batch_with_no_slot_and_no_error_record_is_refused_and_counted() {
    let (up, g, holder) = held_bulk(3).await;
    let resp = post(&g, batch(&[("debug", 4), ("warn", 1)])).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));

    for (level, n) in [("debug", 4.0), ("warn", 1.0)] {
        let labels = [("level", level), ("reason", "queue_timeout")];
        assert_eq!(records(&g, "records_refused_total", &labels).await, n);
    }
    // Refused whole: neither forwarded nor dropped, and the upstream saw nothing.
    assert_eq!(
        records(&g, "records_forwarded_total", &[("level", "debug")]).await,
        0.0
    );
    assert!(up.try_next_request().await.is_none());

    up.release();
    holder.await.unwrap();
}

#[tokio::test]
async fn a_bulk_batch_is_refused_only_when_no_normal_slot_comes_either() {
    // Two slots: the critical reserve and the one the held request takes.
    let (up, g, holder) = held_bulk(2).await;
    let resp = post(&g, batch(&[("debug", 2), ("error", 2)])).await;
    assert_eq!(resp.status(), 503);

    // Every record of the refused batch is counted refused, errors included: its sender
    // retries it whole, so none is lost.
    for (level, n) in [("debug", 2.0), ("error", 2.0)] {
        let labels = [("level", level), ("reason", "queue_timeout")];
        assert_eq!(records(&g, "records_refused_total", &labels).await, n);
    }
    assert!(up.try_next_request().await.is_none());

    up.release();
    holder.await.unwrap();
}
