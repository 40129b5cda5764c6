//! What the upstream did in the current controller interval, per priority class: responses,
//! failures and a latency histogram, written by request threads with relaxed atomic adds and
//! taken (read and reset) by the controller once per tick.
//!
//! The histogram has four buckets per octave from 32 µs (each ~19% wide) up to ~34 s; a tick's
//! p90 is read as the upper edge of its bucket, which is precise enough to compare against a
//! baseline with a factor of 1.5 or 2.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::controller::ClassSignal;

const BUCKETS: usize = 81;
/// Bucket 0 holds everything under 2^15 ns (~32.8 µs).
const BASE_SHIFT: u32 = 15;

fn bucket(latency: Duration) -> usize {
    let n = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    if n >> BASE_SHIFT == 0 {
        return 0;
    }
    let log2 = 63 - n.leading_zeros();
    // The two bits after the leading one pick the quarter of the octave.
    let quarter = (n >> (log2 - 2)) & 3;
    (1 + (log2 - BASE_SHIFT) as usize * 4 + quarter as usize).min(BUCKETS - 1)
}

/// The smallest latency of bucket `i + 1`: what bucket `i` holds is below it.
fn upper_edge(i: usize) -> Duration {
    let octave = (i / 4) as u32;
    let quarter = (i % 4) as u64;
    Duration::from_nanos((4 + quarter) << (octave + BASE_SHIFT - 2))
}

/// Exchanges counted per latency bucket, added to with relaxed atomics and taken (read and
/// reset) at once.
struct Histogram([AtomicU32; BUCKETS]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(std::array::from_fn(|_| AtomicU32::new(0)))
    }
}

impl Histogram {
    fn record(&self, latency: Duration) {
        self.0[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    fn take(&self) -> [u32; BUCKETS] {
        std::array::from_fn(|i| self.0[i].swap(0, Ordering::Relaxed))
    }
}

#[derive(Default)]
pub struct Window {
    responses: AtomicU64,
    failures: AtomicU64,
    shed: AtomicU64,
    latency: Histogram,
}

impl Window {
    /// One finished exchange. Failures count toward the failure share only: their latency is
    /// that of the failure (a refused connection is fast), not of the service.
    pub fn observe(&self, latency: Duration, failed: bool) {
        self.responses.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.latency.record(latency);
        }
    }

    /// A request found no upstream slot in its wait: the upstream is saturated at the
    /// concurrency the guard allows it.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// This interval's signal; the window starts over.
    pub fn take(&self) -> ClassSignal {
        let responses = self.responses.swap(0, Ordering::Relaxed);
        let failures = self.failures.swap(0, Ordering::Relaxed);
        let shed = self.shed.swap(0, Ordering::Relaxed);
        let p90 = quantile(&self.latency.take(), 9, 10);
        ClassSignal {
            responses,
            failures,
            shed,
            p90,
        }
    }
}

/// The latency under which `num/den` of the counted exchanges fall, as the upper edge of its
/// bucket; `None` for no exchange.
fn quantile(counts: &[u32; BUCKETS], num: u64, den: u64) -> Option<Duration> {
    let answered: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    (answered > 0).then(|| {
        let rank = answered.saturating_mul(num).div_ceil(den).max(1);
        let mut seen = 0;
        let i = counts
            .iter()
            .position(|&c| {
                seen += u64::from(c);
                seen >= rank
            })
            .unwrap_or(BUCKETS - 1);
        upper_edge(i)
    })
}

/// The adaptive limiter's view of one class: answered exchanges and their latency histogram,
/// over a window the limiter takes when it holds enough of them.
#[derive(Default)]
pub struct LatencyWindow {
    latency: Histogram,
}

impl LatencyWindow {
    /// One answered exchange (failures carry no service latency and are not counted).
    pub fn observe(&self, latency: Duration) {
        self.latency.record(latency);
    }

    /// Answered exchanges in the window so far.
    pub fn answered(&self) -> u64 {
        self.latency
            .0
            .iter()
            .map(|c| u64::from(c.load(Ordering::Relaxed)))
            .sum()
    }

    /// The window's count and median; the window starts over.
    pub fn take(&self) -> super::adaptive::Window {
        let counts = self.latency.take();
        super::adaptive::Window {
            answered: counts.iter().map(|&c| u64::from(c)).sum(),
            median: quantile(&counts, 1, 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_edges_bound_them() {
        let mut last = 0;
        for us in [
            1u64, 40, 100, 1_000, 9_000, 25_000, 100_000, 2_000_000, 30_000_000,
        ] {
            let d = Duration::from_micros(us);
            let b = bucket(d);
            assert!(b >= last, "{us}µs");
            assert!(d < upper_edge(b), "{us}µs below the edge of its bucket");
            if b > 0 {
                assert!(
                    d >= upper_edge(b - 1),
                    "{us}µs at or above the previous edge"
                );
            }
            last = b;
        }
        // A bucket is at most ~19% wide.
        for b in 2..BUCKETS - 1 {
            let ratio = upper_edge(b).as_secs_f64() / upper_edge(b - 1).as_secs_f64();
            assert!(ratio < 1.26, "bucket {b}: {ratio}");
        }
    }

    #[test]
    fn p90_of_a_window_is_within_a_bucket_and_the_window_resets() {
        let w = Window::default();
        for i in 0..100u64 {
            w.observe(Duration::from_millis(if i < 90 { 10 } else { 500 }), false);
        }
        w.observe(Duration::from_millis(1), true);
        let s = w.take();
        assert_eq!((s.responses, s.failures), (101, 1));
        let p90 = s.p90.unwrap();
        assert!(
            p90 >= Duration::from_millis(10) && p90 < Duration::from_millis(13),
            "{p90:?}"
        );
        assert_eq!(w.take(), ClassSignal::default());
    }

    #[test]
    fn a_latency_window_takes_its_median_and_starts_over() {
        let w = LatencyWindow::default();
        for i in 0..9u64 {
            w.observe(Duration::from_millis(if i < 5 { 4 } else { 100 }));
        }
        assert_eq!(w.answered(), 9);
        let got = w.take();
        assert_eq!(got.answered, 9);
        let median = got.median.unwrap();
        assert!(
            median >= Duration::from_millis(4) && median < Duration::from_millis(5),
            "{median:?}"
        );
        assert_eq!(w.answered(), 0);
        assert_eq!(w.take(), crate::protect::adaptive::Window::default());
    }
}
