//! Measurement primitives shared by the mock API and the fleet: the phase a request belongs to,
//! a fixed-size latency histogram, and a lock helper.
//!
//! Everything here has a fixed size, so a long or heavy run cannot grow memory: a histogram is
//! ~700 counters whatever it records.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The two phases of a run. Stats are kept per phase so the report can show the surge against
/// the normal baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Normal,
    Surge,
}

impl Phase {
    pub const ALL: [Phase; 2] = [Phase::Normal, Phase::Surge];
    pub const COUNT: usize = Phase::ALL.len();

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Surge => "surge",
        }
    }

    /// Reads the value of the [`PHASE_HEADER`]; anything unknown counts as normal traffic.
    pub fn from_header(value: Option<&[u8]>) -> Phase {
        match value {
            Some(b"surge") => Phase::Surge,
            _ => Phase::Normal,
        }
    }
}

/// The simulator stamps every request with the phase it was generated in, so the mock API's
/// counts can be matched exactly against what was sent, even for requests that finish after the
/// phase ended. The guard passes it through like any other header.
pub const PHASE_HEADER: &str = "x-demo-phase";

/// One value per phase.
#[derive(Debug, Clone, Default)]
pub struct PerPhase<T>(pub [T; Phase::COUNT]);

impl<T> std::ops::Index<Phase> for PerPhase<T> {
    type Output = T;
    fn index(&self, p: Phase) -> &T {
        &self.0[p.index()]
    }
}

impl<T> std::ops::IndexMut<Phase> for PerPhase<T> {
    fn index_mut(&mut self, p: Phase) -> &mut T {
        &mut self.0[p.index()]
    }
}

/// Sub-buckets per power of two: 32 gives under 3.2% relative error, plenty for p50/p99.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies are clamped here (microseconds); nothing in the demo waits longer than a minute.
const MAX_MICROS: u64 = 60_000_000;
const BUCKETS: usize = bucket_of(MAX_MICROS) + 1;
// A histogram stays small enough to keep one per second of a run.
const _: () = assert!(BUCKETS < 1000);

/// A log-linear latency histogram in microseconds (HDR-style): exact below 32 µs, then 32
/// buckets per power of two.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

const fn bucket_of(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros();
    let shift = exp - SUB_BITS;
    let mantissa = (micros >> shift) - SUB;
    ((shift as u64 + 1) * SUB + mantissa) as usize
}

/// The smallest value that falls in bucket `i`.
fn bucket_floor(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    (SUB + i % SUB) << shift
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros())
            .unwrap_or(u64::MAX)
            .min(MAX_MICROS);
        if let Some(c) = self.counts.get_mut(bucket_of(micros)) {
            *c += 1;
            self.total += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The `q` quantile (0..=1), as the middle of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        // The rank of the wanted sample, 1-based: p99 of 100 samples is the 99th.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (bucket_floor(i), bucket_floor(i + 1));
                return Some(Duration::from_micros(lo + (hi - lo) / 2));
            }
        }
        None
    }
}

/// Locks a stats mutex. Stats stay usable if a holder panicked (nothing here can leave them
/// half-updated in a way that matters for a report), so poisoning is ignored instead of
/// propagated as a panic.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_monotonic() {
        let mut last = 0;
        for v in [0, 1, 31, 32, 33, 63, 64, 65, 1000, 123_456, MAX_MICROS] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            assert!(bucket_floor(b) <= v && v < bucket_floor(b + 1), "{v}");
            last = b;
        }
    }

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64();
        let p99 = h.quantile(0.99).unwrap().as_secs_f64();
        assert!((p50 - 0.050).abs() < 0.050 * 0.04, "{p50}");
        assert!((p99 - 0.099).abs() < 0.099 * 0.04, "{p99}");
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(Duration::from_millis(1));
        b.record(Duration::from_secs(2));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!(a.quantile(1.0).unwrap() > Duration::from_secs(1));
        // Clamped, not lost.
        a.record(Duration::from_secs(3600));
        assert_eq!(a.count(), 3);
    }
}
