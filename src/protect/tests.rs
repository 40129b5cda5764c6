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

fn slots_cfg(max: u32, reserved: u32, bulk: u32) -> SlotsConfig {
    SlotsConfig {
        max_in_flight: max,
        critical_reserved: reserved,
        bulk_max_in_flight: bulk,
        queue_timeout: [ms(1000), ms(200), ms(50)],
        max_queued: [8, 8, 2],
    }
}

fn gauges() -> [prometheus::IntGauge; Priority::COUNT] {
    Priority::ALL.map(|_| prometheus::IntGauge::new("g", "g").unwrap())
}

fn slots(max: u32, reserved: u32, bulk: u32) -> Slots {
    Slots::new(&slots_cfg(max, reserved, bulk), false, gauges(), gauges())
}

/// Asserts that a request of `class` waits exactly `wait` and is shed for it.
async fn times_out(s: &Slots, class: Priority, wait: Duration) {
    let t = tokio::time::Instant::now();
    assert_eq!(s.acquire(class).await.err(), Some(NoSlot::QueueTimeout));
    assert_eq!(t.elapsed(), wait);
}

#[tokio::test(start_paused = true)]
async fn bulk_can_never_take_the_critical_reserve() {
    let s = slots(4, 2, 4);
    let b1 = s.acquire(Priority::Bulk).await.unwrap();
    let _b2 = s.acquire(Priority::Bulk).await.unwrap();
    // The shared pool (2) is full: bulk waits its 50 ms and is shed, though 2 slots are free.
    times_out(&s, Priority::Bulk, ms(50)).await;
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
    s.reconfigure(
        &SlotsConfig {
            max_in_flight: 2,
            critical_reserved: 0,
            bulk_max_in_flight: 2,
            queue_timeout: [ms(10); 3],
            max_queued: [8; 3],
        },
        None,
    );
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
async fn yielding_bulk_waits_for_in_flight_critical_requests_within_its_queue_timeout() {
    let (in_flight, queued) = (gauges(), gauges());
    let s = Slots::new(&slots_cfg(8, 2, 4), true, in_flight.clone(), queued.clone());
    let bulk_in_flight = || in_flight[Priority::Bulk.index()].get();

    // Not yielding: bulk goes at once, a critical request in flight or not.
    let c = s.acquire(Priority::Critical).await.unwrap();
    drop(s.acquire(Priority::Bulk).await.unwrap());

    // Yielding: bulk waits, counted as queued and not in flight, until no critical request is.
    s.set_bulk_yields(true);
    let c2 = s.acquire(Priority::Critical).await.unwrap();
    assert!(
        s.try_acquire(Priority::Bulk).is_none(),
        "a yielding bulk request finds no free slot"
    );
    let waiting = s.acquire(Priority::Bulk);
    tokio::pin!(waiting);
    assert!(futures_poll(&mut waiting).await.is_none());
    assert_eq!(
        (queued[Priority::Bulk.index()].get(), bulk_in_flight()),
        (1, 0)
    );
    drop(c);
    assert!(
        futures_poll(&mut waiting).await.is_none(),
        "one critical is still in flight"
    );
    let t = tokio::time::Instant::now();
    drop(c2);
    let b = waiting.await.unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(
        (queued[Priority::Bulk.index()].get(), bulk_in_flight()),
        (0, 1)
    );
    drop(b);
    // With no critical request in flight it goes at once; normal never yields.
    drop(s.acquire(Priority::Bulk).await.unwrap());
    let c = s.acquire(Priority::Critical).await.unwrap();
    drop(s.acquire(Priority::Normal).await.unwrap());

    // A critical request in flight longer than bulk's queue_timeout sheds it, leaking nothing.
    times_out(&s, Priority::Bulk, ms(50)).await;
    assert_eq!(
        (queued[Priority::Bulk.index()].get(), bulk_in_flight()),
        (0, 0)
    );

    // Turning it off lets a waiting bulk request go.
    let waiting = s.acquire(Priority::Bulk);
    tokio::pin!(waiting);
    assert!(futures_poll(&mut waiting).await.is_none());
    s.set_bulk_yields(false);
    assert!(waiting.await.is_ok());
    drop(c);
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

#[tokio::test(start_paused = true)]
async fn adaptive_limits_bound_normal_and_bulk_but_never_critical() {
    let cfg = SlotsConfig {
        queue_timeout: [ms(1000), ms(20), ms(20)],
        max_queued: [8, 8, 8],
        ..slots_cfg(8, 2, 4)
    };
    let s = Slots::new(&cfg, true, gauges(), gauges());
    s.set_limits([2, 1]);
    let _b = s.acquire(Priority::Bulk).await.unwrap();
    assert_eq!(
        s.acquire(Priority::Bulk).await.err(),
        Some(NoSlot::QueueTimeout)
    );
    let n1 = s.acquire(Priority::Normal).await.unwrap();
    let _n2 = s.acquire(Priority::Normal).await.unwrap();
    assert!(s.try_acquire(Priority::Normal).is_none());
    // Critical takes its reserve and every shared slot left idle (2 + 3): the limits only
    // ever hold normal and bulk back.
    let critical: Vec<_> = (0..5).map(|_| s.try_acquire(Priority::Critical)).collect();
    assert!(critical.iter().all(Option::is_some));
    drop(critical);
    // A limit raised takes effect at once; shrunk, as slots come back.
    s.set_limits([3, 1]);
    let n3 = s.acquire(Priority::Normal).await.unwrap();
    s.set_limits([1, 1]);
    drop((n1, n3));
    assert!(s.try_acquire(Priority::Normal).is_none());
    // Turned off by a reload: normal is bounded by the shared pool only, bulk by its maximum.
    s.reconfigure(&cfg, None);
    let more: Vec<_> = (0..3).map(|_| s.try_acquire(Priority::Bulk)).collect();
    assert!(
        more.iter().all(Option::is_some),
        "bulk back at 4 with one held"
    );
    assert!(s.try_acquire(Priority::Normal).is_some());
}

// --- adaptive concurrency ------------------------------------------------------------------

mod adaptive {
    use std::time::Duration;

    use super::ms;
    use crate::protect::adaptive::{AdaptiveConfig, Limiter, PROBE_WINDOWS, Step, Window, target};

    const MAX: u32 = 64;

    /// The defaults, with a floor of one request in flight.
    fn one() -> AdaptiveConfig {
        AdaptiveConfig {
            min_limit: 1,
            ..AdaptiveConfig::default()
        }
    }

    fn window(n: u64, median: Duration) -> Window {
        Window {
            answered: n,
            median: Some(median),
        }
    }

    /// Runs a probe that `start`s at `t` and whose windows see `medians`; returns the time after.
    fn probe(l: &mut Limiter, cfg: &AdaptiveConfig, mut t: Duration, medians: &[u64]) -> Duration {
        assert_eq!(
            l.update(cfg, MAX, t, window(20, ms(500))),
            Step::ProbeStarted
        );
        assert_eq!(l.limit(cfg, MAX), cfg.min_limit);
        for (i, &m) in medians.iter().enumerate() {
            t += ms(100);
            let step = l.update(cfg, MAX, t, window(20, ms(m)));
            let last = i + 1 == PROBE_WINDOWS as usize;
            assert_eq!(step, if last { Step::Probed } else { Step::Hold });
            if !last {
                assert_eq!(l.limit(cfg, MAX), cfg.min_limit);
            }
        }
        t
    }

    /// A limiter whose first probe measured a 10 ms min RTT; back at `MAX`.
    fn learned(cfg: &AdaptiveConfig) -> (Limiter, Duration) {
        let mut l = Limiter::new(MAX);
        assert_eq!(l.limit(cfg, MAX), MAX);
        assert_eq!(l.update(cfg, MAX, ms(100), Window::default()), Step::Hold);
        let t = probe(&mut l, cfg, ms(200), &[40, 10, 12]);
        assert_eq!(l.min_rtt(), Some(ms(10)));
        assert_eq!(l.limit(cfg, MAX), MAX);
        (l, t)
    }

    #[test]
    fn the_target_is_the_larger_of_the_factor_and_the_jitter() {
        let cfg = one();
        assert_eq!(target(&cfg, ms(10)), ms(15));
        assert_eq!(
            target(&cfg, Duration::from_micros(200)),
            Duration::from_micros(2200)
        );
    }

    #[test]
    fn the_first_traffic_is_probed_at_min_limit_and_the_drained_windows_do_not_count() {
        let cfg = AdaptiveConfig {
            min_limit: 2,
            ..AdaptiveConfig::default()
        };
        let mut l = Limiter::new(MAX);
        // No traffic: nothing to measure, no probe.
        for i in 1..5 {
            assert_eq!(
                l.update(&cfg, MAX, ms(100 * i), Window::default()),
                Step::Hold
            );
        }
        assert_eq!(l.limit(&cfg, MAX), MAX);
        // The first window (a surge at the full limit) starts the probe; the slowest windows,
        // still draining it, do not set the baseline.
        probe(&mut l, &cfg, ms(500), &[300, 9, 20]);
        assert_eq!(l.min_rtt(), Some(ms(9)));
        assert_eq!(l.limit(&cfg, MAX), MAX);
    }

    #[test]
    fn a_probe_of_a_class_without_traffic_gives_up_and_leaves_it_unheld() {
        let cfg = one();
        let mut l = Limiter::new(MAX);
        // A few exchanges, then nothing: the probe they started cannot gather its windows.
        assert_eq!(
            l.update(&cfg, MAX, ms(100), window(2, ms(3))),
            Step::ProbeStarted
        );
        let mut t = ms(100);
        let mut held = 0;
        while l.limit(&cfg, MAX) == 1 {
            t += ms(100);
            l.update(&cfg, MAX, t, Window::default());
            held += 1;
            assert!(held <= 30, "held at min_limit for more than 30 intervals");
        }
        assert_eq!(l.limit(&cfg, MAX), MAX);
        assert_eq!(l.min_rtt(), None);
        // Given up on with a window or two seen, what they saw is the baseline.
        l.update(&cfg, MAX, t, window(2, ms(3)));
        assert_eq!(l.limit(&cfg, MAX), 1);
        t += ms(100);
        l.update(&cfg, MAX, t, window(2, ms(4)));
        while l.limit(&cfg, MAX) == 1 {
            t += ms(100);
            l.update(&cfg, MAX, t, Window::default());
        }
        assert_eq!(l.min_rtt(), Some(ms(4)));
    }

    #[test]
    fn the_limit_shrinks_as_latency_grows_and_at_most_quarters_per_window() {
        let cfg = one();
        let (mut l, mut t) = learned(&cfg);
        // 20 ms against a 15 ms target: a gradient of 0.75.
        t += ms(100);
        assert_eq!(l.update(&cfg, MAX, t, window(20, ms(20))), Step::Shrank);
        assert_eq!(l.limit(&cfg, MAX), 48);
        // Far past the target: quartered, not more.
        t += ms(100);
        assert_eq!(l.update(&cfg, MAX, t, window(20, ms(500))), Step::Shrank);
        assert_eq!(l.limit(&cfg, MAX), 12);
        // Rising latency keeps shrinking it down to min_limit, never under.
        for _ in 0..20 {
            t += ms(100);
            l.update(&cfg, MAX, t, window(20, ms(500)));
        }
        assert_eq!(l.limit(&cfg, MAX), 1);
        assert_eq!(AdaptiveConfig::default().min_limit, 3);
        assert_eq!(l.limit(&AdaptiveConfig::default(), MAX), 3);
    }

    #[test]
    fn the_limit_grows_back_additively_while_healthy_up_to_the_ceiling() {
        let cfg = one();
        let (mut l, mut t) = learned(&cfg);
        for _ in 0..20 {
            t += ms(100);
            l.update(&cfg, MAX, t, window(20, ms(500)));
        }
        assert_eq!(l.limit(&cfg, MAX), 1);
        let mut seen = vec![1];
        while l.limit(&cfg, MAX) < MAX {
            t += ms(100);
            assert_eq!(l.update(&cfg, MAX, t, window(20, ms(12))), Step::Grew);
            seen.push(l.limit(&cfg, MAX));
            assert!(
                seen.len() < 30,
                "grows in a bounded number of windows: {seen:?}"
            );
        }
        assert_eq!(&seen[..6], &[1, 2, 4, 6, 9, 12]);
        // Healthy windows at the ceiling stay at the ceiling, and a lower ceiling (a reload)
        // bounds it at once.
        t += ms(100);
        l.update(&cfg, MAX, t, window(20, ms(12)));
        assert_eq!(l.limit(&cfg, MAX), MAX);
        assert_eq!(l.limit(&cfg, 8), 8);
        t += ms(100);
        l.update(&cfg, 8, t, window(20, ms(20)));
        assert_eq!(l.limit(&cfg, 8), 6);
    }

    #[test]
    fn an_empty_window_holds_and_a_thin_one_waits() {
        let cfg = one();
        let (mut l, t) = learned(&cfg);
        assert_eq!(l.update(&cfg, MAX, t, Window::default()), Step::Hold);
        assert_eq!(l.limit(&cfg, MAX), MAX);
        assert!(!Limiter::ready(&cfg, 4, 1));
        assert!(Limiter::ready(&cfg, 5, 1));
        assert!(!Limiter::ready(&cfg, 0, 100));
        assert!(Limiter::ready(&cfg, 1, 10));
    }

    #[test]
    fn a_lower_median_lowers_the_min_rtt_at_once() {
        let cfg = one();
        let (mut l, t) = learned(&cfg);
        assert_eq!(
            l.update(&cfg, MAX, t + ms(100), window(20, ms(4))),
            Step::Grew
        );
        assert_eq!(l.min_rtt(), Some(ms(4)));
    }

    #[test]
    fn the_min_rtt_is_measured_again_at_min_limit_every_min_rtt_interval() {
        let cfg = one();
        let (mut l, mut t) = learned(&cfg);
        let probed_at = t;
        // The upstream became 4x slower for good: the stale 10 ms baseline drives the limit to
        // its floor...
        while t + ms(100) < probed_at + cfg.min_rtt_interval {
            t += ms(100);
            assert_eq!(l.update(&cfg, MAX, t, window(20, ms(40))), Step::Shrank);
        }
        assert_eq!(l.limit(&cfg, MAX), 1);
        // ... until the next probe measures the new one: 40 ms is healthy again, and the limit
        // probes back up from where the probe found it.
        t = probe(&mut l, &cfg, t + ms(100), &[45, 40, 42]);
        assert_eq!(l.min_rtt(), Some(ms(40)));
        assert_eq!(l.limit(&cfg, MAX), 1);
        let probed_at = t;
        for _ in 0..5 {
            t += ms(100);
            assert_eq!(l.update(&cfg, MAX, t, window(20, ms(40))), Step::Grew);
        }
        assert!(l.limit(&cfg, MAX) > 4, "{}", l.limit(&cfg, MAX));
        // And the next probe is a whole min_rtt_interval after the last one.
        while t + ms(100) < probed_at + cfg.min_rtt_interval {
            t += ms(100);
            assert_ne!(
                l.update(&cfg, MAX, t, window(20, ms(40))),
                Step::ProbeStarted
            );
        }
        t += ms(100);
        assert_eq!(
            l.update(&cfg, MAX, t, window(20, ms(40))),
            Step::ProbeStarted
        );
    }

    #[test]
    fn a_probe_resumes_at_the_limit_it_interrupted() {
        let cfg = one();
        let (mut l, mut t) = learned(&cfg);
        t += ms(100);
        l.update(&cfg, MAX, t, window(20, ms(20)));
        assert_eq!(l.limit(&cfg, MAX), 48);
        l.probe_now(t);
        assert_eq!(
            l.update(&cfg, MAX, t, Window::default()),
            Step::ProbeStarted
        );
        assert_eq!(l.limit(&cfg, MAX), 1);
        // An empty window during a probe holds it.
        t += ms(100);
        assert_eq!(l.update(&cfg, MAX, t, Window::default()), Step::Hold);
        assert_eq!(l.limit(&cfg, MAX), 1);
        for _ in 0..PROBE_WINDOWS {
            t += ms(100);
            l.update(&cfg, MAX, t, window(20, ms(9)));
        }
        assert_eq!(l.limit(&cfg, MAX), 48);
        assert_eq!(l.min_rtt(), Some(ms(9)));
    }

    #[test]
    fn the_limit_is_bounded_for_any_window() {
        let cfg = AdaptiveConfig {
            min_limit: 2,
            ..AdaptiveConfig::default()
        };
        let mut l = Limiter::new(10);
        let mut t = Duration::ZERO;
        let mut rng = crate::demo::rng::Rng::new(7, 0);
        for i in 0..5000u64 {
            t += ms(100);
            let max = 1 + (rng.next_u64() % 12) as u32;
            let median = Duration::from_micros(1 + rng.next_u64() % 2_000_000);
            let n = rng.next_u64() % 30;
            if i % 997 == 0 {
                l.probe_now(t);
            }
            l.update(&cfg, max, t, window(n, median));
            let got = l.limit(&cfg, max);
            assert!(
                got >= cfg.min_limit.min(max) && got <= max,
                "{got} of {max}"
            );
        }
    }
}
