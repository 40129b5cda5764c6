//! The demo's result: measured figures per run and phase, the side-by-side table, and a
//! plain-language summary.
//!
//! Figures are computed here from raw measurements (the API's and the fleet's counters and
//! histograms, and the per-second timeline), so the table shows only what was measured. Rows that
//! depend on the log level iterate [`Level::ALL`], and per-run columns iterate the runs, so new
//! levels or runs add rows and columns without touching the layout code.

use std::fmt::Write as _;
use std::time::Duration;

use super::backend::PhaseWork;
use super::fleet::{FleetPhase, Outcome, Outcomes, OwnerStats};
use super::stats::{PerPhase, Phase};
use super::telemetry::{Level, LevelCounts};

/// Which path the fleet's traffic took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fleet → mock API.
    Unguarded,
    /// Fleet → verbosity-guard → mock API.
    Guarded,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Unguarded => "unguarded",
            Mode::Guarded => "guarded",
        }
    }
}

/// One second of a run, as printed on the progress line.
#[derive(Debug, Clone)]
pub struct TickSample {
    /// Start of the second, from the start of the run.
    pub at: Duration,
    /// `None` after the run's end, while requests still in flight finish.
    pub phase: Option<Phase>,
    /// Measured length of the sample (a tick can fire late on a busy machine).
    pub secs: f64,
    /// Telemetry bytes and records the API finished processing.
    pub bytes: u64,
    pub records: u64,
    /// Fraction of the API's worker time spent serving.
    pub utilization: f64,
    /// p99 of the API's answers in this second, queueing included.
    pub p99: Option<Duration>,
    pub commands_ok: u64,
    pub commands: u64,
    pub guard_rejections: u64,
    /// API workers in service at the end of the second.
    pub workers: usize,
    /// The guard's state at the end of the second (guarded runs).
    pub guard: Option<GuardState>,
}

/// What the guard's metrics said at a sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardState {
    /// `verbosity_guard_brownout_level`: 0 off … 4 shed_bulk.
    pub brownout: u8,
    /// `route/level` of every surge the guard detects.
    pub surging: Vec<String>,
}

/// What the progress lines show, printed above them once per run.
pub const PROGRESS_HEADER: &str = "run       time   phase  API: workers, telemetry and records \
processed /s, workers busy, p99 | owner commands 2xx/sent | refused by the guard (429/413/503) \
| brownout level | surging route/levels";

/// The brownout levels, for the legend under [`PROGRESS_HEADER`].
pub fn brownout_legend() -> String {
    let levels: Vec<String> = (0..=4).map(brownout_name).collect();
    format!(
        "brownout levels: {} (each also does what the levels below it do)",
        levels.join(", ")
    )
}

impl TickSample {
    /// `unguarded t= 7s SURGE  API 16 workers 9.8 MB/s 32.1k rec/s busy 100% p99 2.01 s | commands ok/sent 11/20 | guard refused 0`
    pub fn line(&self, mode: Mode) -> String {
        let phase = match self.phase {
            Some(Phase::Normal) => "normal",
            Some(Phase::Surge) => "SURGE",
            None => "drain",
        };
        let secs = self.secs.max(1e-3);
        let mut line = format!(
            "{:<9} t={:>3}s {:<6} API {:>2} workers {:>9} {:>7} rec/s busy {:>4} p99 {:>7} | commands ok/sent {:>3}/{:<3} | guard refused {:>5}",
            mode.as_str(),
            self.at.as_secs(),
            phase,
            self.workers,
            bytes_per_s(self.bytes as f64 / secs),
            count(self.records as f64 / secs),
            percent(self.utilization),
            duration(self.p99),
            self.commands_ok,
            self.commands,
            self.guard_rejections,
        );
        if let Some(g) = &self.guard {
            let _ = write!(
                line,
                " | brownout {} | surge {}",
                brownout_name(g.brownout),
                if g.surging.is_empty() {
                    "-".to_owned()
                } else {
                    g.surging.join(",")
                }
            );
        }
        line
    }
}

/// The API's figures for a phase.
#[derive(Debug, Clone, Default)]
pub struct BackendFigures {
    pub bytes_per_s: f64,
    pub records_per_s: f64,
    /// Average and peak (over the phase's seconds) fraction of worker time spent serving.
    pub utilization: f64,
    pub peak_utilization: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

/// Owners' requests of one kind in a phase, as their apps saw them.
#[derive(Debug, Clone, Default)]
pub struct OwnerFigures {
    pub outcomes: Outcomes,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl OwnerFigures {
    fn from_stats(s: &OwnerStats) -> OwnerFigures {
        OwnerFigures {
            outcomes: s.outcomes,
            p50: s.latency.quantile(0.50),
            p99: s.latency.quantile(0.99),
        }
    }

    pub fn sent(&self) -> u64 {
        self.outcomes.total()
    }

    pub fn ok(&self) -> u64 {
        self.outcomes[Outcome::Ok]
    }

    /// Fraction answered 200; `None` when nothing was sent.
    pub fn success_rate(&self) -> Option<f64> {
        (self.sent() > 0).then(|| self.ok() as f64 / self.sent() as f64)
    }
}

/// The fleet's telemetry batches in a phase.
#[derive(Debug, Clone, Default)]
pub struct BatchFigures {
    /// Batches the vehicles produced (sent or dropped).
    pub generated: u64,
    /// Dropped in the vehicle: its uploads were all in flight.
    pub dropped: u64,
    /// Attempts beyond each batch's first (429, 503, 504 or no answer, sent again).
    pub retries: u64,
    /// Refused by the guard (429, 413, 503) on their first attempt.
    pub first_refused: u64,
    /// How the sent ones ended, after their retries.
    pub outcomes: Outcomes,
}

/// Records per level: produced by the fleet, processed by the API, and lost on the way (in
/// batches dropped in the vehicle or never accepted, after retries).
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub generated: LevelCounts,
    pub processed: LevelCounts,
    pub lost: LevelCounts,
}

impl Delivery {
    /// Records that never reached the API, for any reason.
    pub fn undelivered(&self, level: Level) -> u64 {
        self.generated[level].saturating_sub(self.processed[level])
    }

    /// Records left out of batches the API did accept: what the guard's policy downsampled.
    pub fn downsampled(&self, level: Level) -> u64 {
        self.undelivered(level).saturating_sub(self.lost[level])
    }

    /// `n` as a fraction of `level`'s records; `None` when there were none.
    pub fn fraction(&self, level: Level, n: u64) -> Option<f64> {
        let generated = self.generated[level];
        (generated > 0).then(|| n as f64 / generated as f64)
    }
}

/// Which of a level's records a section of the table counts.
type RecordCount = fn(&Delivery, Level) -> u64;

/// Everything measured about one phase of one run.
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    /// Length of the phase (requests still in flight at its end are counted in it).
    pub seconds: f64,
    /// Telemetry the fleet produced, per second.
    pub offered_bytes_per_s: f64,
    pub backend: BackendFigures,
    pub commands: OwnerFigures,
    pub reads: OwnerFigures,
    pub batches: BatchFigures,
    pub records: Delivery,
    /// Highest brownout level the guard reached (guarded runs).
    pub peak_brownout: Option<u8>,
    /// Route/levels the guard saw surging at some point of the phase (guarded runs).
    pub surges: Vec<String>,
}

impl PhaseReport {
    /// Builds a phase's figures from the run's measurements.
    pub fn measure(
        phase: Phase,
        work: &PhaseWork,
        fleet: &FleetPhase,
        timeline: &[TickSample],
    ) -> PhaseReport {
        let ticks: Vec<&TickSample> = timeline.iter().filter(|t| t.phase == Some(phase)).collect();
        let secs: f64 = ticks.iter().map(|t| t.secs).sum();
        let per_s = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
        let busy: f64 = ticks.iter().map(|t| t.utilization * t.secs).sum();
        PhaseReport {
            seconds: secs,
            offered_bytes_per_s: per_s(fleet.bytes as f64),
            backend: BackendFigures {
                bytes_per_s: per_s(ticks.iter().map(|t| t.bytes as f64).sum()),
                records_per_s: per_s(ticks.iter().map(|t| t.records as f64).sum()),
                utilization: per_s(busy),
                peak_utilization: ticks.iter().map(|t| t.utilization).fold(0.0, f64::max),
                p50: work.latency.quantile(0.50),
                p99: work.latency.quantile(0.99),
            },
            commands: OwnerFigures::from_stats(&fleet.commands),
            reads: OwnerFigures::from_stats(&fleet.reads),
            batches: BatchFigures {
                generated: fleet.batches.total() + fleet.dropped,
                dropped: fleet.dropped,
                retries: fleet.retries,
                first_refused: fleet.first_refused,
                outcomes: fleet.batches,
            },
            records: Delivery {
                generated: fleet.records,
                processed: work.levels,
                lost: fleet.lost,
            },
            peak_brownout: ticks
                .iter()
                .filter_map(|t| t.guard.as_ref())
                .map(|g| g.brownout)
                .max(),
            surges: {
                let mut all: Vec<String> = ticks
                    .iter()
                    .filter_map(|t| t.guard.as_ref())
                    .flat_map(|g| g.surging.iter().cloned())
                    .collect();
                all.sort();
                all.dedup();
                all
            },
        }
    }
}

/// One run: unguarded or guarded.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub mode: Mode,
    pub phases: PerPhase<PhaseReport>,
    pub timeline: Vec<TickSample>,
}

impl RunReport {
    pub fn phase(&self, p: Phase) -> &PhaseReport {
        &self.phases[p]
    }

    /// Command success over the whole run; `None` if no command was sent.
    pub fn command_success_rate(&self) -> Option<f64> {
        let (mut ok, mut sent) = (0, 0);
        for p in Phase::ALL {
            ok += self.phases[p].commands.ok();
            sent += self.phases[p].commands.sent();
        }
        (sent > 0).then(|| ok as f64 / sent as f64)
    }
}

/// The scenario as run, for the table's header and the summary.
#[derive(Debug, Clone)]
pub struct Setup {
    pub vehicles: usize,
    pub surge_factor: u32,
    pub run_length: Duration,
    pub surge_at: Duration,
    /// When the API loses workers, and how many.
    pub incident: Option<(Duration, usize)>,
    /// The API's telemetry capacity, bytes/s.
    pub capacity: u64,
    pub workers: usize,
    pub queue_timeout: Duration,
}

/// Both runs of the scenario.
#[derive(Debug, Clone)]
pub struct Report {
    pub setup: Setup,
    pub unguarded: RunReport,
    pub guarded: RunReport,
}

const LABEL: usize = 38;
const CELL: usize = 15;

impl Report {
    fn runs(&self) -> [&RunReport; 2] {
        [&self.unguarded, &self.guarded]
    }

    /// The side-by-side table and the summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_table(&mut out);
        out.push('\n');
        out.push_str(&wrap(&self.summary(), LABEL + 4 * CELL));
        out.push('\n');
        out
    }

    fn render_table(&self, out: &mut String) {
        let s = &self.setup;
        let _ = writeln!(
            out,
            "\n{} vehicles, surge x{} at t={}s of {}s per run; mock API capacity {} ({} workers, {} queue timeout){}\n",
            s.vehicles,
            s.surge_factor,
            s.surge_at.as_secs(),
            s.run_length.as_secs(),
            bytes_per_s(s.capacity as f64),
            s.workers,
            duration(Some(s.queue_timeout)),
            match s.incident {
                Some((at, lost)) => format!("; {lost} workers fail at t={}s", at.as_secs()),
                None => String::new(),
            },
        );
        let normal = format!("normal (t < {}s)", s.surge_at.as_secs());
        let surge = format!("SURGE (t >= {}s)", s.surge_at.as_secs());
        let _ = writeln!(
            out,
            "{:LABEL$}{:>w$}{:>w$}",
            "",
            normal,
            surge,
            w = 2 * CELL
        );
        let heads: Vec<String> = Phase::ALL
            .iter()
            .flat_map(|_| self.runs().map(|r| r.mode.as_str().to_owned()))
            .collect();
        self.row(out, "", &heads);
        let _ = writeln!(out, "{}", "-".repeat(LABEL + 4 * CELL));
        for (label, cell) in ROWS {
            self.row(out, label, &self.cells(*cell));
        }
        let sections: [(&str, RecordCount); 2] = [
            (
                "records left out by the guard's policy (% of the level's records)",
                Delivery::downsampled,
            ),
            (
                "records lost: batch dropped in the vehicle or never accepted, after retries",
                |d, l| d.lost[l],
            ),
        ];
        for (title, n) in sections {
            let _ = writeln!(out, "{title}");
            for level in Level::ALL {
                let label = format!("  {}", level.as_str());
                let cells = self.cells(|p| {
                    let k = n(&p.records, level);
                    match p.records.fraction(level, k) {
                        Some(f) => format!("{} ({})", count(k as f64), percent(f)),
                        None => "-".into(),
                    }
                });
                self.row(out, &label, &cells);
            }
        }
    }

    /// One cell per (phase, run), phases outermost, as the header reads.
    fn cells(&self, f: impl Fn(&PhaseReport) -> String) -> Vec<String> {
        Phase::ALL
            .iter()
            .flat_map(|&p| self.runs().map(|r| f(r.phase(p))))
            .collect()
    }

    fn row(&self, out: &mut String, label: &str, cells: &[String]) {
        let _ = write!(out, "{label:LABEL$}");
        for c in cells {
            let _ = write!(out, "{c:>CELL$}");
        }
        out.push('\n');
    }

    /// A paragraph saying what the table shows, in plain words.
    pub fn summary(&self) -> String {
        let (u, g) = (
            self.unguarded.phase(Phase::Surge),
            self.guarded.phase(Phase::Surge),
        );
        let cap = self.setup.capacity as f64;
        let mut s = format!(
            "The surge offered {} of telemetry, {:.1}x what the API can ingest ({}). ",
            bytes_per_s(u.offered_bytes_per_s),
            u.offered_bytes_per_s / cap,
            bytes_per_s(cap),
        );
        let _ = write!(
            s,
            "Unguarded, the API ran at {} of capacity, its p99 latency went from {} to {}, and {}{}. ",
            percent(u.backend.utilization),
            duration(self.unguarded.phase(Phase::Normal).backend.p99),
            duration(u.backend.p99),
            commands_phrase(&u.commands),
            if u.commands.ok() < u.commands.sent() {
                ": owners were locked out of their cars"
            } else {
                ""
            },
        );
        let _ = write!(
            s,
            "Behind verbosity-guard, the API stayed at {} of capacity (peak {}) with p99 {}, and {}. ",
            percent(g.backend.utilization),
            percent(g.backend.peak_utilization),
            duration(g.backend.p99),
            commands_phrase(&g.commands),
        );
        let left_out = |level| {
            g.records
                .fraction(level, g.records.downsampled(level))
                .map_or("-".into(), percent)
        };
        let _ = write!(
            s,
            "The guard downsampled each batch by level instead of refusing it: it left out {} of \
             debug records, {} of info, {} of warn and {} of error. ",
            left_out(Level::Debug),
            left_out(Level::Info),
            left_out(Level::Warn),
            left_out(Level::Error),
        );
        let lost: u64 = Level::ALL.iter().map(|&l| g.records.lost[l]).sum();
        let _ = write!(
            s,
            "It refused {} of {} batches whole at first (429/413/503); the vehicles sent them \
             again, as OTLP exporters do, and {} after retries.",
            g.batches.first_refused,
            g.batches.generated,
            match lost {
                0 => "no record was lost".to_owned(),
                _ => format!(
                    "{lost} records were lost ({} of them error records)",
                    g.records.lost[Level::Error]
                ),
            },
        );
        if let Some((at, lost)) = self.setup.incident {
            let _ = write!(
                s,
                " When {lost} of the API's workers failed at t={}s, the guard's brownout reached \
                 level {} and the surges it flagged were {}; commands kept their reserved \
                 upstream slots.",
                at.as_secs(),
                g.peak_brownout.map_or("-".into(), brownout_name),
                if g.surges.is_empty() {
                    "none".to_owned()
                } else {
                    g.surges.join(", ")
                },
            );
        }
        s
    }
}

/// `all 200 owner commands succeeded` or `102 of 200 owner commands failed (49% succeeded)`.
fn commands_phrase(c: &OwnerFigures) -> String {
    let (ok, sent) = (c.ok(), c.sent());
    if sent == 0 {
        "no owner commands were sent".into()
    } else if ok == sent {
        format!("all {sent} owner commands succeeded")
    } else {
        format!(
            "{} of {sent} owner commands failed ({} succeeded)",
            sent - ok,
            rate(c.success_rate())
        )
    }
}

type Cell = fn(&PhaseReport) -> String;

/// The table's rows before the per-level ones, in order.
const ROWS: &[(&str, Cell)] = &[
    ("telemetry offered by the fleet", |p| {
        bytes_per_s(p.offered_bytes_per_s)
    }),
    ("API: telemetry processed", |p| {
        bytes_per_s(p.backend.bytes_per_s)
    }),
    ("API: records processed /s", |p| {
        count(p.backend.records_per_s)
    }),
    ("API: workers busy (avg / peak)", |p| {
        format!(
            "{} / {}",
            percent(p.backend.utilization),
            percent(p.backend.peak_utilization)
        )
    }),
    ("API: latency p50", |p| duration(p.backend.p50)),
    ("API: latency p99", |p| duration(p.backend.p99)),
    ("owner commands: ok / sent", |p| {
        format!("{}/{}", p.commands.ok(), p.commands.sent())
    }),
    ("owner commands: success", |p| {
        rate(p.commands.success_rate())
    }),
    ("owner commands: latency p99", |p| duration(p.commands.p99)),
    ("guard: peak brownout level", |p| {
        p.peak_brownout.map_or("-".into(), brownout_name)
    }),
    ("guard: route/levels in surge", |p| match p.peak_brownout {
        None => "-".into(),
        Some(_) => p.surges.len().to_string(),
    }),
    ("owner state reads: ok / sent", |p| {
        format!("{}/{}", p.reads.ok(), p.reads.sent())
    }),
    ("owner state reads: success", |p| {
        rate(p.reads.success_rate())
    }),
    ("telemetry batches generated", |p| {
        p.batches.generated.to_string()
    }),
    ("  dropped in vehicle (queue full)", |p| {
        p.batches.dropped.to_string()
    }),
    ("  refused by guard at first attempt", |p| {
        p.batches.first_refused.to_string()
    }),
    ("  attempts sent again (retries)", |p| {
        p.batches.retries.to_string()
    }),
    ("in the end, after retries:", |_| String::new()),
    ("  accepted by the API (200)", |p| {
        p.batches.outcomes[Outcome::Ok].to_string()
    }),
    ("  refused by guard: over budget 429", |p| {
        p.batches.outcomes[Outcome::Throttled].to_string()
    }),
    ("  refused by guard: too large 413", |p| {
        p.batches.outcomes[Outcome::TooLarge].to_string()
    }),
    ("  shed by guard to protect API (503)", |p| {
        p.batches.outcomes[Outcome::GuardShed].to_string()
    }),
    ("  shed by the API (503)", |p| {
        p.batches.outcomes[Outcome::Shed].to_string()
    }),
    ("  timed out / failed", |p| {
        (p.batches.outcomes[Outcome::TimedOut] + p.batches.outcomes[Outcome::Failed]).to_string()
    }),
];

/// `2 sample_info`.
pub fn brownout_name(level: u8) -> String {
    format!(
        "{level} {}",
        crate::protect::Brownout::from_u8(level).as_str()
    )
}

/// `9.8 MB/s` (decimal units, as network rates are usually quoted).
pub fn bytes_per_s(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB/s", b / 1e6)
    } else {
        format!("{:.0} kB/s", b / 1e3)
    }
}

/// `950`, `12.3k`, `1.2M`.
pub fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// `55 ms`, `2.01 s`, `-` when nothing was measured.
pub fn duration(d: Option<Duration>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d < Duration::from_secs(1) => format!("{} ms", d.as_millis()),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
    }
}

/// `62%`; one decimal just below 100% so that 99.6% does not read as "100%".
pub fn percent(f: f64) -> String {
    let p = f * 100.0;
    if p > 99.0 && p < 99.95 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), percent)
}

/// Wraps a paragraph at `width` columns.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_well() {
        assert_eq!(bytes_per_s(9_812_000.0), "9.8 MB/s");
        assert_eq!(bytes_per_s(640_000.0), "640 kB/s");
        assert_eq!(count(950.0), "950");
        assert_eq!(count(32_150.0), "32.1k");
        assert_eq!(duration(Some(Duration::from_millis(55))), "55 ms");
        assert_eq!(duration(Some(Duration::from_millis(2010))), "2.01 s");
        assert_eq!(duration(None), "-");
        assert_eq!(percent(0.62), "62%");
        assert_eq!(percent(0.996), "99.6%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.9996), "100%");
    }

    #[test]
    fn wrap_keeps_words_whole() {
        let w = wrap("aaa bbb ccc ddd", 7);
        assert_eq!(w, "aaa bbb\nccc ddd");
    }

    #[test]
    fn undelivered_records_split_into_left_out_and_lost_and_never_go_negative() {
        let mut d = Delivery::default();
        d.generated[Level::Info] = 10;
        d.processed[Level::Info] = 12;
        assert_eq!(d.undelivered(Level::Info), 0);
        assert_eq!(d.fraction(Level::Debug, 0), None);
        d.generated[Level::Warn] = 100;
        d.processed[Level::Warn] = 70;
        d.lost[Level::Warn] = 10;
        assert_eq!(d.undelivered(Level::Warn), 30);
        assert_eq!(d.downsampled(Level::Warn), 20);
        assert_eq!(d.fraction(Level::Warn, 20), Some(0.2));
    }
}
