//! Adaptive upstream concurrency through real sockets: a bulk route whose upstream slows down
//! has its concurrency limit cut below `bulk_max_in_flight`, critical requests still pass, and
//! the limit climbs back to its maximum once the upstream is fast again.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{TestGuard, TestUpstream, client, eventually_within, metric_value};

const BULK_MAX: f64 = 12.0;

const POLICY: &str = r#"version: 1
client_key: { header: x-vehicle-id }
protect:
  max_in_flight: 24
  critical_reserved: 4
  bulk_max_in_flight: 12
  queue_timeout: { bulk: 2s }
  brownout: { enabled: false }
  adaptive: { enabled: true, interval: 50ms, min_samples: 3 }
routes:
  - name: commands
    match: { path_prefix: /__slow/1/ }
    priority: critical
  - name: uploads
    match: { path_prefix: /__slow/ }
    priority: bulk
  - name: default
    match: { path_prefix: / }
"#;

fn limit(text: &str, class: &str) -> f64 {
    metric_value(
        text,
        "verbosity_guard_upstream_concurrency_limit",
        &[("class", class)],
    )
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_limit_falls_while_the_upstream_is_slow_and_recovers_when_it_is_fast() {
    let upstream = TestUpstream::start().await;
    let guard = TestGuard::start(POLICY, &upstream.url).await;
    assert_eq!(limit(&guard.scrape().await, "bulk"), BULK_MAX);

    // Bulk senders in a loop, each asking the upstream for `delay_ms` of service.
    let delay_ms = Arc::new(AtomicU64::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (url, delay, stop) = (guard.url.clone(), delay_ms.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let ms = delay.load(Ordering::Relaxed);
                let _ = http
                    .post(format!("{url}/__slow/{ms}"))
                    .body("x")
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
            }
        }));
    }

    // Fast: the min RTT is learned.
    eventually_within(Duration::from_secs(20), "a bulk min RTT", async || {
        let text = guard.scrape().await;
        metric_value(
            &text,
            "verbosity_guard_upstream_min_rtt_seconds",
            &[("class", "bulk")],
        )
        .is_some_and(|v| v > 0.0 && v < 0.02)
    })
    .await;

    // Slow: 40 ms against a ~2 ms baseline cuts the bulk limit.
    delay_ms.store(40, Ordering::Relaxed);
    eventually_within(
        Duration::from_secs(20),
        "the bulk limit to fall",
        async || limit(&guard.scrape().await, "bulk") <= BULK_MAX / 2.0,
    )
    .await;
    // Critical requests are not limited by it.
    let resp = client()
        .post(format!("{}/__slow/1/command", guard.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Fast again: the limit probes back up to its maximum.
    delay_ms.store(2, Ordering::Relaxed);
    eventually_within(
        Duration::from_secs(30),
        "the bulk limit to recover",
        async || limit(&guard.scrape().await, "bulk") == BULK_MAX,
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
}

#[tokio::test]
async fn turned_off_the_limits_are_the_configured_maximums_and_stay_there() {
    let upstream = TestUpstream::start().await;
    let policy = POLICY.replace(
        "adaptive: { enabled: true, interval: 50ms, min_samples: 3 }",
        "adaptive: { enabled: false }",
    );
    let guard = TestGuard::start(&policy, &upstream.url).await;
    let http = client();
    for _ in 0..20 {
        let resp = http
            .post(format!("{}/__slow/30", guard.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let text = guard.scrape().await;
    assert_eq!(limit(&text, "bulk"), BULK_MAX);
    assert_eq!(limit(&text, "normal"), 20.0);
    assert!(
        metric_value(
            &text,
            "verbosity_guard_upstream_min_rtt_seconds",
            &[("class", "bulk")]
        )
        .is_none_or(|v| v == 0.0)
    );
}
