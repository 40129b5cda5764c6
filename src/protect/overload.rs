//! The guard's own pressure, and shedding bulk before it costs anything when the pressure is
//! too high (in the spirit of Envoy's overload manager).
//!
//! Three signals, each with a threshold (`serve --overload-*`):
//! - **event-loop lag**, per worker: how late a timer that should fire every [`LAG_PERIOD`]
//!   actually fires. A worker whose ready tasks take longer than that to get through is behind:
//!   every request it serves, critical ones included, waits that long for its turn.
//! - **buffered body bytes**, the whole process: telemetry batches held in memory to be judged.
//! - **resident memory** of the process, read from `/proc/self/status` every [`MEMORY_PERIOD`].
//!
//! While any is over its threshold, a bulk request is refused right after its head (routed,
//! nothing read or parsed, no budget charged): 503 with `Retry-After`, reason
//! `shed_overload`, and `Connection: close` since its body is not read (see `guard`), so no
//! pipelined request is lost. Critical and normal requests are never refused for pressure: the
//! point is to keep the worker's time for them. A bulk batch refused here is not cut down to
//! its error records as slot and brownout sheds are (that would mean reading and parsing it,
//! the work overload must not do); its sender sends it again, so nothing is lost.
//!
//! The lag is kept per worker in a thread-local: the monitor runs on the worker's own runtime
//! and the check is a plain read on the request path.

use std::cell::Cell;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

/// How often each worker's event-loop lag is sampled.
pub const LAG_PERIOD: Duration = Duration::from_millis(10);
/// How often resident memory is read.
pub const MEMORY_PERIOD: Duration = Duration::from_millis(250);

/// The thresholds; `None` turns a signal off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadLimits {
    pub max_lag: Option<Duration>,
    pub max_buffered: Option<u64>,
    pub max_memory: Option<u64>,
}

impl Default for OverloadLimits {
    fn default() -> Self {
        OverloadLimits {
            max_lag: Some(Duration::from_millis(5)),
            max_buffered: Some(256 << 20),
            max_memory: None,
        }
    }
}

/// Which threshold is passed; the names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    Lag,
    Buffered,
    Memory,
}

impl Pressure {
    pub const COUNT: usize = 3;
    pub const ALL: [Pressure; Pressure::COUNT] =
        [Pressure::Lag, Pressure::Buffered, Pressure::Memory];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Lag => "event_loop_lag",
            Pressure::Buffered => "buffered_bytes",
            Pressure::Memory => "memory",
        }
    }
}

thread_local! {
    /// This worker's event-loop lag, as last sampled (zero off the workers).
    static LAG: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The process's pressure and its thresholds. The gauges are the pressure's only store: what
/// is judged is what is exported.
pub struct Overload {
    limits: OverloadLimits,
    /// `buffered_body_bytes`.
    buffered: IntGauge,
    /// `resident_memory_bytes`.
    memory: IntGauge,
}

impl Overload {
    pub fn new(limits: OverloadLimits, buffered: IntGauge, memory: IntGauge) -> Overload {
        Overload {
            limits,
            buffered,
            memory,
        }
    }

    /// The first threshold the calling worker is over, if any.
    #[inline]
    pub fn pressure(&self) -> Option<Pressure> {
        let over = |gauge: &IntGauge, limit: Option<u64>| {
            limit.is_some_and(|l| u64::try_from(gauge.get()).is_ok_and(|value| value > l))
        };
        if self.limits.max_lag.is_some_and(|l| LAG.with(Cell::get) > l) {
            Some(Pressure::Lag)
        } else if over(&self.buffered, self.limits.max_buffered) {
            Some(Pressure::Buffered)
        } else if over(&self.memory, self.limits.max_memory) {
            Some(Pressure::Memory)
        } else {
            None
        }
    }

    /// Counts `bytes` of a request body held in memory until the returned guard is dropped.
    pub fn hold(&self, bytes: u64) -> Held<'_> {
        // Held bodies are bounded by `max_body`, far below i64::MAX.
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.buffered.add(bytes);
        Held {
            overload: self,
            bytes,
        }
    }

    /// Reads resident memory every [`MEMORY_PERIOD`], forever.
    pub async fn watch_memory(&self) {
        let mut ticks = tokio::time::interval(MEMORY_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Some(rss) = resident_bytes() {
                self.memory.set(i64::try_from(rss).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Bytes counted as buffered by [`Overload::hold`].
pub struct Held<'a> {
    overload: &'a Overload,
    bytes: i64,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.overload.buffered.sub(self.bytes);
    }
}

/// Samples the calling worker's event-loop lag every [`LAG_PERIOD`], forever: how late the
/// timer fires, kept as the larger of the last sample and half the one before (a spike decays
/// over a few periods instead of flapping). Runs on the worker's own runtime.
pub async fn watch_lag(gauge: prometheus::Gauge) {
    let mut due = Instant::now() + LAG_PERIOD;
    let mut lag = Duration::ZERO;
    loop {
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        lag = late.max(lag / 2);
        LAG.with(|l| l.set(lag));
        gauge.set(lag.as_secs_f64());
        due = now + LAG_PERIOD;
    }
}

/// The process's resident set size, from `VmRSS` in `/proc/self/status` (Linux); `None`
/// elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
