//! Adaptive upstream concurrency through real sockets: a bulk route whose upstream slows down
//! has its concurrency limit cut below `bulk_max_in_flight`, critical requests still pass, and
//! the limit climbs back to its maximum once the upstream is fast again; while the upstream
//! queues, bulk waits for in-flight critical requests before it is sent.

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

/// Bulk senders in a loop, each asking the upstream for `delay_ms` of service (2 ms to start).
struct BulkSenders {
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BulkSenders {
    /// Starts `n` senders and returns once the guard has learned bulk's (fast) min RTT.
    async fn start(guard: &TestGuard, n: usize) -> BulkSenders {
        let delay_ms = Arc::new(AtomicU64::new(2));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..n)
            .map(|_| {
                let (url, delay, stop) = (guard.url.clone(), delay_ms.clone(), stop.clone());
                tokio::spawn(async move {
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
                })
            })
            .collect();
        eventually_within(Duration::from_secs(20), "a bulk min RTT", async || {
            metric_value(
                &guard.scrape().await,
                "verbosity_guard_upstream_min_rtt_seconds",
                &[("class", "bulk")],
            )
            .is_some_and(|v| v > 0.0 && v < 0.02)
        })
        .await;
        BulkSenders {
            delay_ms,
            stop,
            tasks,
        }
    }

    /// Stops the senders and waits until none has a request out.
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_limit_falls_while_the_upstream_is_slow_and_recovers_when_it_is_fast() {
    let upstream = TestUpstream::start().await;
    let guard = TestGuard::start(POLICY, &upstream.url).await;
    assert_eq!(limit(&guard.scrape().await, "bulk"), BULK_MAX);

    // Fast: the min RTT is learned.
    let senders = BulkSenders::start(&guard, 16).await;

    // Slow: 40 ms against a ~2 ms baseline cuts the bulk limit.
    senders.delay_ms.store(40, Ordering::Relaxed);
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
    senders.delay_ms.store(2, Ordering::Relaxed);
    eventually_within(
        Duration::from_secs(30),
        "the bulk limit to recover",
        async || limit(&guard.scrape().await, "bulk") == BULK_MAX,
    )
    .await;

    senders.stop().await;
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

/// While bulk's latency says the upstream is queueing, a bulk request waits for the critical
/// request in flight to be answered before it is sent: an upstream that serves in arrival
/// order would queue the next command behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_upstream_queues_bulk_is_not_sent_while_a_critical_request_is_in_flight() {
    let upstream = TestUpstream::start().await;
    let policy = POLICY
        .replace(
            "adaptive: { enabled: true, interval: 50ms, min_samples: 3 }",
            "adaptive: { enabled: true, interval: 50ms, min_samples: 3, min_limit: 1 }",
        )
        .replace("path_prefix: /__slow/1/", "path: /__hold");
    let guard = TestGuard::start(&policy, &upstream.url).await;
    let yielding = async || {
        metric_value(
            &guard.scrape().await,
            "verbosity_guard_bulk_yielding_to_critical",
            &[],
        )
    };
    assert_eq!(yielding().await, Some(0.0));

    // Bulk learns a fast upstream, then finds it slow: it yields from then on.
    let senders = BulkSenders::start(&guard, 8).await;
    senders.delay_ms.store(40, Ordering::Relaxed);
    eventually_within(Duration::from_secs(20), "bulk to yield", async || {
        yielding().await == Some(1.0)
    })
    .await;
    senders.stop().await;
    // What the senders sent is out of the way.
    while upstream.try_next_request().await.is_some() {}

    // A command held at the upstream...
    let command = tokio::spawn({
        let url = guard.url.clone();
        async move { client().post(format!("{url}/__hold")).send().await }
    });
    assert_eq!(upstream.next_request().await.target, "/__hold");
    // ... keeps a bulk request waiting in the guard, not at the upstream.
    let bulk = tokio::spawn({
        let url = guard.url.clone();
        async move {
            client()
                .post(format!("{url}/__slow/1"))
                .body("late")
                .send()
                .await
        }
    });
    eventually_within(
        Duration::from_secs(5),
        "the bulk request to wait",
        async || {
            guard
                .metric("verbosity_guard_upstream_queued", &[("class", "bulk")])
                .await
                == 1.0
        },
    )
    .await;
    assert!(upstream.try_next_request().await.is_none());
    assert_eq!(
        guard
            .metric("verbosity_guard_upstream_in_flight", &[("class", "bulk")])
            .await,
        0.0
    );

    // Once the command is answered, the bulk request goes.
    upstream.release();
    assert_eq!(command.await.unwrap().unwrap().status(), 200);
    let sent = upstream.next_request().await;
    assert_eq!(
        (sent.target.as_str(), &sent.body[..]),
        ("/__slow/1", &b"late"[..])
    );
    assert_eq!(bulk.await.unwrap().unwrap().status(), 200);
}
