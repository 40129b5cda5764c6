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

mod fleet {
    use std::sync::Arc;
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::super::*;

    fn spec(keyed: bool) -> FleetBudgetSpec {
        FleetBudgetSpec {
            name: "ns:commands:client_requests".into(),
            route: "commands".into(),
            budget: "client_requests",
            keyed,
            refill_interval: Duration::from_millis(100),
            pods: 4,
        }
    }

    /// 100/s, burst 10, over 4 guards: N = ⌈100 · 0.1 / 4⌉ = 3; the share is 25/s, burst 3.
    fn budget(link: &FleetLink) -> (KeyedBudget<FakeRelativeClock>, Arc<Leases>) {
        let q = Quota {
            amount: 100,
            per: Duration::from_secs(1),
            burst: 10,
        };
        let leases = Leases::new(spec(true), q, 100, link);
        let b = KeyedBudget::fleet(leases.clone(), 100, FakeRelativeClock::default());
        (b, leases)
    }

    /// The same, in fleet mode, with key 7 holding a lease of 3 (its first request settled).
    fn leased(link: &FleetLink) -> (KeyedBudget<FakeRelativeClock>, Arc<Leases>) {
        link.set_fleet_mode(true);
        let (b, leases) = budget(link);
        assert_eq!(b.check(7, 1), Verdict::Allow);
        let ask = leases.ask(7).unwrap();
        leases.grant(7, ask, 3, Duration::ZERO, Duration::ZERO);
        (b, leases)
    }

    #[test]
    fn the_share_splits_rate_and_burst_and_never_reaches_zero() {
        let q = Quota {
            amount: 100,
            per: Duration::from_secs(1),
            burst: 10,
        };
        assert_eq!(
            share(q, 4),
            Quota {
                amount: 100,
                per: Duration::from_secs(4),
                burst: 3
            }
        );
        assert_eq!(share(q, 1000).burst, 1);
        assert_eq!(share(q, 0), q);
    }

    #[test]
    fn without_the_store_a_fleet_budget_is_its_local_share() {
        let (link, _rx) = FleetLink::new();
        let (b, leases) = budget(&link);
        let admitted = (0..20).filter(|_| b.check(7, 1) == Verdict::Allow).count();
        assert_eq!(admitted, 3, "the share's burst, ⌈10/4⌉");
        assert!(leases.is_empty(), "no lease is taken in local mode");
    }

    #[test]
    fn a_new_key_advances_on_its_share_and_owes_what_it_spent() {
        let (link, mut rx) = FleetLink::new();
        link.set_fleet_mode(true);
        let (b, leases) = budget(&link);
        assert_eq!(b.check(7, 1), Verdict::Allow);
        assert_eq!(b.check(7, 1), Verdict::Allow);
        let refill = rx.try_recv().expect("the first request queues a refill");
        assert_eq!(refill.key, 7);
        assert!(rx.try_recv().is_err(), "one refill per key at a time");
        let ask = leases.ask(7).unwrap();
        assert_eq!(ask, Ask { owed: 2, want: 3 });
        // The store settles the debt and grants the lease: the balance alone decides now.
        leases.grant(7, ask, 3, Duration::ZERO, Duration::ZERO);
        let admitted = (0..10).filter(|_| b.check(7, 1) == Verdict::Allow).count();
        assert_eq!(admitted, 3);
        assert!(matches!(b.check(7, 1), Verdict::RetryAfter(d) if d >= Duration::from_millis(100)));
        assert_eq!(
            rx.try_recv().map(|r| r.key).ok(),
            Some(7),
            "half spent: refill"
        );
    }

    #[test]
    fn a_charge_larger_than_a_lease_spends_the_share_or_gets_leased_next() {
        let (link, _rx) = FleetLink::new();
        let (b, leases) = leased(&link);
        // The balance (the owed 1 settled, 3 granted) covers a charge of 3.
        assert_eq!(b.check(7, 3), Verdict::Allow);
        // 5 is more than a lease (3) and than the share's burst (3): refused, and the next
        // refill asks for 5 so that the retry fits.
        assert!(matches!(b.check(7, 5), Verdict::RetryAfter(_)));
        let ask = leases.ask(7).unwrap();
        assert_eq!(ask, Ask { owed: 0, want: 5 });
        leases.grant(7, ask, 5, Duration::ZERO, Duration::ZERO);
        assert_eq!(b.check(7, 5), Verdict::Allow);
        assert_eq!(leases.ask(7).unwrap().want, 3, "back to plain leases");
    }

    #[test]
    fn a_charge_beyond_the_whole_burst_never_fits() {
        let (link, _rx) = FleetLink::new();
        link.set_fleet_mode(true);
        let (b, _) = budget(&link);
        assert_eq!(b.check(7, 11), Verdict::NeverFits);
    }

    #[test]
    fn unused_leases_expire_after_two_sweeps_and_give_their_tokens_back() {
        let (link, _rx) = FleetLink::new();
        let (_b, leases) = leased(&link);
        assert!(leases.sweep().is_empty(), "used since the last sweep");
        assert!(leases.sweep().is_empty(), "one idle sweep");
        let expired = leases.sweep();
        assert_eq!(
            expired,
            vec![Expired {
                key: 7,
                unused: 3,
                owed: 0
            }]
        );
        assert!(leases.is_empty());
    }

    #[test]
    fn leaving_fleet_mode_drops_every_lease() {
        let (link, _rx) = FleetLink::new();
        link.set_fleet_mode(true);
        let (b, leases) = budget(&link);
        assert_eq!(b.check(7, 1), Verdict::Allow);
        assert_eq!(leases.len(), 1);
        assert!(link.set_fleet_mode(false));
        assert!(leases.is_empty());
    }

    #[test]
    fn the_lease_size_follows_the_live_guard_count() {
        let (link, _rx) = FleetLink::new();
        let (_b, leases) = budget(&link);
        assert_eq!(leases.lease_size(), 3, "fleet.pods = 4 until counted");
        link.set_live(1);
        assert_eq!(leases.lease_size(), 10);
        link.set_live(100);
        assert_eq!(leases.lease_size(), 1, "never below one token");
    }
}
