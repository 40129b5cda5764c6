use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;

fn quota(amount: u64, per_secs: u64, burst: u64) -> Quota {
    Quota {
        amount,
        per: Duration::from_secs(per_secs),
        burst,
    }
}

/// Advances a fake clock through one simulated minute in `step`s, admitting `charge`-sized
/// requests greedily, and returns the units admitted.
fn admitted_in_a_minute(
    check: impl Fn(u64) -> Verdict,
    clock: &FakeRelativeClock,
    charge: u64,
    step: Duration,
) -> u64 {
    let mut admitted = 0;
    let steps = Duration::from_secs(60).as_nanos() / step.as_nanos();
    for _ in 0..=steps {
        while check(charge) == Verdict::Allow {
            admitted += charge;
        }
        clock.advance(step);
    }
    admitted
}

fn assert_within_one_percent(admitted: u64, q: Quota) {
    let expected = q.amount as f64 * 60.0 / q.per.as_secs_f64() + q.burst as f64;
    let err = (admitted as f64 - expected).abs() / expected;
    assert!(
        err <= 0.01,
        "admitted {admitted}, expected {expected} (error {:.3}%)",
        err * 100.0
    );
}

#[test]
fn request_budget_admits_rate_times_minute_plus_burst() {
    let clock = FakeRelativeClock::default();
    let q = quota(10, 1, 20);
    let b = Budget::new(q, clock.clone());
    let admitted = admitted_in_a_minute(|n| b.check(n), &clock, 1, Duration::from_millis(7));
    assert_within_one_percent(admitted, q);
}

#[test]
fn per_minute_rates_are_accurate() {
    let clock = FakeRelativeClock::default();
    let q = quota(600, 60, 5);
    let b = Budget::new(q, clock.clone());
    let admitted = admitted_in_a_minute(|n| b.check(n), &clock, 1, Duration::from_millis(13));
    assert_within_one_percent(admitted, q);
}

#[test]
fn small_byte_budget_is_accurate() {
    let clock = FakeRelativeClock::default();
    let q = quota(64 * 1024, 1, 512 * 1024);
    let b = Budget::new(q, clock.clone());
    let admitted = admitted_in_a_minute(|n| b.check(n), &clock, 1000, Duration::from_millis(10));
    assert_within_one_percent(admitted, q);
}

#[test]
fn large_byte_budget_uses_bigger_cells_and_stays_accurate() {
    let clock = FakeRelativeClock::default();
    let q = quota(50 << 20, 1, 8 << 20);
    let b = Budget::new(q, clock.clone());
    assert!(b.cells.unit > 1, "50 MiB/s needs cells larger than a byte");
    let admitted = admitted_in_a_minute(
        |n| b.check(n),
        &clock,
        64 * 1024 + 17,
        Duration::from_millis(5),
    );
    assert_within_one_percent(admitted, q);
}

#[test]
fn keyed_budget_is_accurate_per_key() {
    let clock = FakeRelativeClock::default();
    let q = quota(5, 1, 10);
    let b = KeyedBudget::new(q, 100, clock.clone());
    let admitted = admitted_in_a_minute(|n| b.check(42, n), &clock, 1, Duration::from_millis(9));
    assert_within_one_percent(admitted, q);
}

#[test]
fn retry_after_is_the_wait_until_the_charge_fits() {
    let clock = FakeRelativeClock::default();
    let b = Budget::new(quota(2, 1, 1), clock.clone());
    assert_eq!(b.check(1), Verdict::Allow);
    assert_eq!(b.check(1), Verdict::RetryAfter(Duration::from_millis(500)));
    clock.advance(Duration::from_millis(200));
    assert_eq!(b.check(1), Verdict::RetryAfter(Duration::from_millis(300)));
    clock.advance(Duration::from_millis(300));
    assert_eq!(b.check(1), Verdict::Allow);
}

#[test]
fn charge_larger_than_burst_never_fits_and_zero_is_free() {
    let clock = FakeRelativeClock::default();
    let b = Budget::new(quota(1024, 1, 4096), clock.clone());
    assert_eq!(b.check(4097), Verdict::NeverFits);
    assert_eq!(b.check(u64::MAX), Verdict::NeverFits);
    assert_eq!(b.check(4096), Verdict::Allow);
    assert_eq!(b.check(0), Verdict::Allow);
    let k = KeyedBudget::new(quota(1, 1, 1), 10, clock);
    assert_eq!(k.check(1, 2), Verdict::NeverFits);
    assert_eq!(k.check(1, 0), Verdict::Allow);
}

#[test]
fn keys_are_isolated() {
    let clock = FakeRelativeClock::default();
    let b = KeyedBudget::new(quota(1, 1, 2), 10, clock);
    assert_eq!(b.check(1, 1), Verdict::Allow);
    assert_eq!(b.check(1, 1), Verdict::Allow);
    assert!(matches!(b.check(1, 1), Verdict::RetryAfter(_)));
    assert_eq!(b.check(2, 1), Verdict::Allow);
    assert_eq!(b.check(2, 1), Verdict::Allow);
}

#[test]
fn full_store_leaves_new_keys_untracked_until_idle_keys_are_evicted() {
    let clock = FakeRelativeClock::default();
    let b = KeyedBudget::new(quota(1, 1, 1), 2, clock.clone());
    assert_eq!(b.check(1, 1), Verdict::Allow);
    assert_eq!(b.check(2, 1), Verdict::Allow);
    assert_eq!(b.tracked_keys(), 2);
    // A third key does not fit: untracked, and nothing is charged or stored.
    assert_eq!(b.check(3, 1), Verdict::Untracked);
    assert_eq!(b.check(3, 1), Verdict::Untracked);
    assert_eq!(b.tracked_keys(), 2);
    // Tracked keys keep their budget.
    assert!(matches!(b.check(1, 1), Verdict::RetryAfter(_)));
    // Nothing is idle yet: both keys spent their burst within the last second.
    assert_eq!(b.evict_idle(), 2);
    clock.advance(Duration::from_secs(2));
    assert_eq!(b.evict_idle(), 0);
    assert_eq!(b.check(3, 1), Verdict::Allow);
    assert_eq!(b.tracked_keys(), 1);
}
