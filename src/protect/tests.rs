//! The controller, the surge detector and the slots, driven by scripted signals: no sleeps,
//! no real time (slot waits run on tokio's paused clock).

use std::time::Duration;

use super::Priority;
use super::controller::{Brownout, BrownoutConfig, ClassSignal, Controller, Verdict};
use super::slots::{NoSlot, Slots, SlotsConfig};
use super::surge::{SurgeConfig, SurgeDetector, SurgeEvent};
use super::tighten;
use crate::demo::rng::Rng;
use crate::records::Level;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every class answering `n` requests at p90 `p90`, `failures` of them failed.
fn all(n: u64, p90: Duration, failures: u64) -> [ClassSignal; 3] {
    [ClassSignal {
        responses: n,
        failures,
        shed: 0,
        p90: Some(p90),
    }; 3]
}

fn warmed(cfg: &BrownoutConfig) -> Controller {
    let mut c = Controller::new(cfg.clone());
    for _ in 0..cfg.warmup {
        assert_eq!(c.tick(&all(100, ms(10), 0)).1, None);
    }
    assert_eq!(c.level(), Brownout::Off);
    c
}

#[test]
fn brownout_rises_one_step_per_raise_after_in_the_documented_order() {
    let cfg = BrownoutConfig::default();
    let mut c = warmed(&cfg);
    let congested = all(100, ms(200), 0);
    let mut seen = vec![c.level()];
    for tick in 1..=20 {
        let (verdict, t) = c.tick(&congested);
        assert_eq!(verdict, Verdict::Congested);
        if let Some(t) = t {
            assert_eq!(tick % cfg.raise_after, 0, "rose at tick {tick}");
            assert_eq!(t.cause, "upstream latency");
            seen.push(t.to);
        }
    }
    assert_eq!(
        seen,
        Brownout::ALL.to_vec(),
        "off, then each level once, up to shed_bulk"
    );
    assert_eq!(c.level(), Brownout::ShedBulk, "and no further");
}

#[test]
fn each_level_tightens_bulk_from_the_least_valuable_data_up() {
    let cfg = BrownoutConfig::default();
    let touched = |b: Brownout| -> Vec<Level> {
        let t = tighten(b, &cfg);
        Level::ALL.into_iter().filter(|&l| t.touches(l)).collect()
    };
    use Level::*;
    assert_eq!(touched(Brownout::Off), vec![]);
    assert_eq!(touched(Brownout::DropVerbose), vec![Trace, Debug]);
    assert_eq!(touched(Brownout::SampleInfo), vec![Trace, Debug, Info]);
    assert_eq!(
        touched(Brownout::SampleWarn),
        vec![Trace, Debug, Info, Warn]
    );
    // Error and fatal records are never sampled; at shed_bulk the request is refused whole.
    assert_eq!(touched(Brownout::ShedBulk), vec![Trace, Debug, Info, Warn]);
    let t = tighten(Brownout::SampleInfo, &cfg);
    assert_eq!(t.get(Debug).unwrap().per_million, 0, "debug dropped");
    assert_eq!(
        t.get(Info).unwrap().per_million,
        100_000,
        "info sampled to 10%"
    );
}

#[test]
fn failures_raise_the_level_even_before_latency_has_a_baseline() {
    let cfg = BrownoutConfig::default();
    let mut c = Controller::new(cfg.clone());
    // 20% of bulk exchanges fail; the others answer fine.
    let mut signals = all(100, ms(10), 0);
    signals[Priority::Bulk.index()].failures = 20;
    for _ in 0..cfg.raise_after {
        c.tick(&signals);
    }
    assert_eq!(c.level(), Brownout::DropVerbose);
}

#[test]
fn requests_finding_no_upstream_slot_mean_a_saturated_upstream() {
    let cfg = BrownoutConfig::default();
    let mut c = warmed(&cfg);
    // Latency looks fine (the guard bounds what the upstream is asked), but 15% of bulk
    // requests wait their whole queue timeout.
    let mut signals = all(100, ms(10), 0);
    signals[Priority::Bulk.index()].shed = 18;
    c.tick(&signals);
    let (verdict, t) = c.tick(&signals);
    assert_eq!(verdict, Verdict::Congested);
    assert_eq!(t.unwrap().cause, "upstream saturated");
}

#[test]
fn a_slow_start_raises_no_alarm_while_the_baseline_warms_up() {
    let cfg = BrownoutConfig::default();
    let mut c = Controller::new(cfg.clone());
    for _ in 0..cfg.warmup - 1 {
        c.tick(&all(100, ms(300), 0));
    }
    assert_eq!(c.level(), Brownout::Off);
    // It learned 300 ms as normal; it then learns the faster normal quickly.
    for _ in 0..40 {
        c.tick(&all(100, ms(10), 0));
    }
    assert_eq!(c.level(), Brownout::Off);
    let b = c.baseline(Priority::Critical).unwrap();
    assert!(b < ms(20), "baseline {b:?} came down");
}

#[test]
fn brownout_relaxes_one_step_per_relax_after_healthy_ticks() {
    let cfg = BrownoutConfig::default();
    let mut c = warmed(&cfg);
    for _ in 0..cfg.raise_after * 2 {
        c.tick(&all(100, ms(200), 0));
    }
    assert_eq!(c.level(), Brownout::SampleInfo);
    // In between (1.5×..2× the baseline): held, neither rising nor relaxing. (The baseline
    // slowly learns such a latency as the new normal, so this does not last forever.)
    for _ in 0..cfg.relax_after {
        assert_eq!(c.tick(&all(100, ms(45), 0)).0, Verdict::Neutral);
    }
    assert_eq!(c.level(), Brownout::SampleInfo);
    // Healthy: one step down after relax_after ticks, not before.
    for _ in 0..cfg.relax_after - 1 {
        assert_eq!(c.tick(&all(100, ms(10), 0)).1, None);
    }
    let t = c.tick(&all(100, ms(10), 0)).1.unwrap();
    assert_eq!(
        (t.from, t.to, t.cause),
        (Brownout::SampleInfo, Brownout::DropVerbose, "recovered")
    );
    // A congested tick in the middle restarts the healthy streak.
    for _ in 0..cfg.relax_after - 1 {
        c.tick(&all(100, ms(10), 0));
    }
    c.tick(&all(100, ms(200), 0));
    for _ in 0..cfg.relax_after - 1 {
        c.tick(&all(100, ms(10), 0));
    }
    assert_eq!(c.level(), Brownout::DropVerbose);
    c.tick(&all(100, ms(10), 0));
    assert_eq!(c.level(), Brownout::Off);
}

#[test]
fn a_noisy_but_healthy_upstream_never_browns_out() {
    let cfg = BrownoutConfig::default();
    let mut c = warmed(&cfg);
    let mut rng = Rng::new(7, 0);
    let mut neutral = 0;
    for _ in 0..20_000 {
        // p90 jitters between 0.5× and 1.9× the usual 10 ms; up to 9% of exchanges fail; some
        // ticks see too few requests to judge.
        let signals = Priority::ALL.map(|_| {
            let n = 5 + rng.below(200);
            ClassSignal {
                responses: n,
                failures: n * rng.below(10) / 100,
                shed: 0,
                p90: Some(Duration::from_secs_f64(0.010 * (0.5 + 1.4 * rng.unit()))),
            }
        });
        let (verdict, t) = c.tick(&signals);
        assert_eq!(t, None, "no transition under a healthy signal");
        neutral += usize::from(verdict == Verdict::Neutral);
    }
    assert!(neutral > 0, "the noise did reach the neutral band");
    assert_eq!(c.level(), Brownout::Off);
}

#[test]
fn ticks_without_enough_responses_count_as_healthy_so_a_shed_bulk_level_probes_back() {
    let cfg = BrownoutConfig::default();
    let mut c = warmed(&cfg);
    for _ in 0..cfg.raise_after * 4 {
        c.tick(&all(100, ms(200), 0));
    }
    assert_eq!(c.level(), Brownout::ShedBulk);
    for _ in 0..cfg.relax_after {
        c.tick(&all(3, ms(900), 3));
    }
    assert_eq!(c.level(), Brownout::SampleWarn);
}

#[test]
fn max_level_and_disabling_bound_the_controller() {
    let mut cfg = BrownoutConfig {
        max_level: Brownout::SampleInfo,
        ..BrownoutConfig::default()
    };
    let mut c = warmed(&cfg);
    for _ in 0..50 {
        c.tick(&all(100, ms(500), 50));
    }
    assert_eq!(c.level(), Brownout::SampleInfo);
    cfg.enabled = false;
    c.reconfigure(cfg);
    assert_eq!(c.level(), Brownout::Off);
    for _ in 0..50 {
        assert_eq!(c.tick(&all(100, ms(500), 50)).1, None);
    }
}

// ---- surge detection ----------------------------------------------------------------------

fn surge_cfg() -> SurgeConfig {
    SurgeConfig {
        warmup: Duration::from_secs(60),
        hold: Duration::from_secs(20),
        window: Duration::from_secs(5),
        ..SurgeConfig::default()
    }
}

/// Feeds `rate` per second for `secs` one-second ticks; returns the events with their tick.
fn feed(d: &mut SurgeDetector, cfg: &SurgeConfig, rate: f64, secs: u32) -> Vec<(u32, SurgeEvent)> {
    (0..secs)
        .filter_map(|s| {
            d.observe(cfg, Duration::from_secs(1), rate, cfg.min_rate)
                .map(|e| (s, e))
        })
        .collect()
}

#[test]
fn no_surge_is_declared_while_the_baseline_warms_up() {
    let cfg = surge_cfg();
    let mut d = SurgeDetector::default();
    assert_eq!(feed(&mut d, &cfg, 10.0, 30), vec![]);
    assert_eq!(
        feed(&mut d, &cfg, 1000.0, 29),
        vec![],
        "a jump inside the warmup"
    );
    assert!(!d.active());
    assert_eq!(d.ratio(&cfg, cfg.min_rate), 0.0);
}

#[test]
fn a_surge_starts_after_hold_and_clears_with_hysteresis() {
    let cfg = surge_cfg();
    let mut d = SurgeDetector::default();
    feed(&mut d, &cfg, 50.0, 120);
    assert!((d.baseline() - 50.0).abs() < 1.0, "{}", d.baseline());

    // 20× the usual rate: the short average crosses 3× within the first second, then `hold`.
    let events = feed(&mut d, &cfg, 1000.0, 40);
    assert_eq!(events.len(), 1, "{events:?}");
    let (at, e) = events[0];
    assert_eq!(e, SurgeEvent::Started);
    assert!((19..=22).contains(&at), "started at {at}s");
    assert!(d.ratio(&cfg, cfg.min_rate) > 10.0);

    // A long surge does not become the baseline.
    assert_eq!(feed(&mut d, &cfg, 1000.0, 600), vec![]);
    assert!(d.active());
    assert!(d.baseline() < 60.0, "{}", d.baseline());

    // Down to 2× (between clear_factor and factor): still a surge.
    assert_eq!(feed(&mut d, &cfg, 100.0, 120), vec![]);
    assert!(d.active());
    // Back to normal: cleared after the short average settles and `hold` passes.
    let events = feed(&mut d, &cfg, 50.0, 90);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, SurgeEvent::Cleared);
    assert!(!d.active());
}

#[test]
fn a_spike_shorter_than_hold_is_not_a_surge() {
    let cfg = surge_cfg();
    let mut d = SurgeDetector::default();
    feed(&mut d, &cfg, 50.0, 120);
    // 40× for 3 s: the short average stays above 3× for ~16 s, under the 20 s hold.
    feed(&mut d, &cfg, 2000.0, 3);
    assert_eq!(feed(&mut d, &cfg, 50.0, 120), vec![]);
    assert!(!d.active());
}

#[test]
fn rates_under_min_rate_never_surge() {
    let cfg = surge_cfg();
    let mut d = SurgeDetector::default();
    feed(&mut d, &cfg, 0.0, 120);
    // 0 → 0.9/s is "infinitely" more, but under min_rate (1/s).
    assert_eq!(feed(&mut d, &cfg, 0.9, 120), vec![]);
    // 0 → 20/s is a surge.
    assert_eq!(feed(&mut d, &cfg, 20.0, 60).len(), 1);
}

// ---- slots ---------------------------------------------------------------------------------

fn slots(max: u32, reserved: u32, bulk: u32) -> Slots {
    let cfg = SlotsConfig {
        max_in_flight: max,
        critical_reserved: reserved,
        bulk_max_in_flight: bulk,
        queue_timeout: [ms(1000), ms(200), ms(50)],
        max_queued: [8, 8, 2],
    };
    let gauges = || Priority::ALL.map(|_| prometheus::IntGauge::new("g", "g").unwrap());
    Slots::new(&cfg, gauges(), gauges())
}

#[tokio::test(start_paused = true)]
async fn bulk_can_never_take_the_critical_reserve() {
    let s = slots(4, 2, 4);
    let b1 = s.acquire(Priority::Bulk).await.unwrap();
    let _b2 = s.acquire(Priority::Bulk).await.unwrap();
    // The shared pool (2) is full: bulk waits its 50 ms and is shed, though 2 slots are free.
    let t = tokio::time::Instant::now();
    assert_eq!(
        s.acquire(Priority::Bulk).await.err(),
        Some(NoSlot::QueueTimeout)
    );
    assert_eq!(t.elapsed(), ms(50));
    assert_eq!(
        s.acquire(Priority::Normal).await.err(),
        Some(NoSlot::QueueTimeout)
    );
    // Critical takes both reserved slots at once.
    let c1 = s.acquire(Priority::Critical).await.unwrap();
    let _c2 = s.acquire(Priority::Critical).await.unwrap();
    // A third critical request queues and gets the first slot freed, even a shared one.
    let waiting = s.acquire(Priority::Critical);
    tokio::pin!(waiting);
    assert!(futures_poll(&mut waiting).await.is_none());
    drop(b1);
    assert!(waiting.await.is_ok());
    drop(c1);
}

#[tokio::test(start_paused = true)]
async fn bulk_is_capped_below_the_shared_pool_so_normal_traffic_keeps_slots() {
    let s = slots(8, 2, 2);
    let _b = [
        s.acquire(Priority::Bulk).await.unwrap(),
        s.acquire(Priority::Bulk).await.unwrap(),
    ];
    assert_eq!(
        s.acquire(Priority::Bulk).await.err(),
        Some(NoSlot::QueueTimeout)
    );
    let mut normal = Vec::new();
    for _ in 0..4 {
        normal.push(s.acquire(Priority::Normal).await.unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_at_once() {
    let s = slots(1, 0, 1);
    let _held = s.acquire(Priority::Bulk).await.unwrap();
    let w1 = s.acquire(Priority::Bulk);
    let w2 = s.acquire(Priority::Bulk);
    tokio::pin!(w1, w2);
    assert!(futures_poll(&mut w1).await.is_none());
    assert!(futures_poll(&mut w2).await.is_none());
    let t = tokio::time::Instant::now();
    assert_eq!(
        s.acquire(Priority::Bulk).await.err(),
        Some(NoSlot::QueueFull)
    );
    assert_eq!(t.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn shrinking_the_pools_takes_effect_as_slots_come_back() {
    let s = slots(4, 0, 4);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(s.acquire(Priority::Normal).await.unwrap());
    }
    s.reconfigure(&SlotsConfig {
        max_in_flight: 2,
        critical_reserved: 0,
        bulk_max_in_flight: 2,
        queue_timeout: [ms(10); 3],
        max_queued: [8; 3],
    });
    // 3 in flight against a new size of 2: nothing more until two have come back.
    drop(held);
    let a = s.acquire(Priority::Normal).await.unwrap();
    let _b = s.acquire(Priority::Normal).await.unwrap();
    assert_eq!(
        s.acquire(Priority::Normal).await.err(),
        Some(NoSlot::QueueTimeout)
    );
    drop(a);
    assert!(s.acquire(Priority::Normal).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn try_acquire_takes_a_free_slot_under_the_same_rules_and_never_waits() {
    let s = slots(4, 2, 1);
    let bulk = s.try_acquire(Priority::Bulk).expect("a free bulk slot");
    // Bulk's own cap (1) is reached: no slot, and the shared permit was not taken either.
    assert!(s.try_acquire(Priority::Bulk).is_none());
    let normal = s
        .try_acquire(Priority::Normal)
        .expect("one shared slot left");
    // Shared pool full; normal never borrows the critical reserve.
    assert!(s.try_acquire(Priority::Normal).is_none());
    let _c = [
        s.try_acquire(Priority::Critical).unwrap(),
        s.try_acquire(Priority::Critical).unwrap(),
    ];
    assert!(s.try_acquire(Priority::Critical).is_none());
    drop((bulk, normal));
    // Both came back whole: a waiting acquire gets them at once.
    let t = tokio::time::Instant::now();
    let _b = s.acquire(Priority::Bulk).await.unwrap();
    let _n = s.try_acquire(Priority::Normal).unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO);
}

/// Polls `f` once: `Some` if it is ready.
async fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[test]
fn the_accepted_level_told_to_senders_follows_the_brownout() {
    let policy = crate::policy::parse(
        "version: 1\nroutes:\n  - name: t\n    match: { path_prefix: /t }\n    priority: bulk\n    records: { format: ndjson }\n  - name: d\n    match: { path_prefix: / }\n",
        "t.yaml",
    )
    .unwrap();
    let records = policy.routes()[0].records.as_ref().unwrap();
    let cfg = BrownoutConfig::default();
    let tally = crate::records::filter::Tally::default();
    let accepted = |b: Brownout| records.max_accepted(&tally, &tighten(b, &cfg));
    assert_eq!(accepted(Brownout::Off), Some(Level::Trace));
    assert_eq!(accepted(Brownout::DropVerbose), Some(Level::Info));
    assert_eq!(accepted(Brownout::SampleInfo), Some(Level::Warn));
    assert_eq!(accepted(Brownout::SampleWarn), Some(Level::Error));
}
