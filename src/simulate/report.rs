//! What a replay found, per route and per level, and its two renderings: a table for people
//! and JSON for machines (`--format json`).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::decide::{BatchOutcome, Reason, UNROUTED};
use crate::policy::Mode;
use crate::protect::Brownout;
use crate::protect::Priority;
use crate::records::Level;
use crate::records::filter::{DropReason, Tally};
use crate::traffic;

const SECOND: u64 = 1_000_000_000;

/// The most of something seen within any one second of virtual time: a sliding window over
/// the last second's events (amounts at the same instant are merged).
#[derive(Debug, Default, Clone)]
pub struct Peak {
    window: VecDeque<(u64, u64)>,
    sum: u64,
    peak: u64,
}

impl Peak {
    /// `n` more at virtual time `at` (nanoseconds, never decreasing).
    pub fn add(&mut self, at: u64, n: u64) {
        if n == 0 {
            return;
        }
        while let Some(&(t, m)) = self.window.front() {
            if t + SECOND > at {
                break;
            }
            self.sum -= m;
            self.window.pop_front();
        }
        match self.window.back_mut() {
            Some((t, m)) if *t == at => *m += n,
            _ => self.window.push_back((at, n)),
        }
        self.sum += n;
        self.peak = self.peak.max(self.sum);
    }

    /// The highest total over any window of one second, so a rate per second.
    pub fn get(&self) -> u64 {
        self.peak
    }
}

/// Offered and forwarded, with their peaks per second.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    pub offered: u64,
    pub forwarded: u64,
    pub peak_offered: Peak,
    pub peak_forwarded: Peak,
}

impl Flow {
    pub fn offer(&mut self, at: u64, n: u64) {
        self.offered += n;
        self.peak_offered.add(at, n);
    }

    pub fn forward(&mut self, at: u64, n: u64) {
        self.forwarded += n;
        self.peak_forwarded.add(at, n);
    }

    fn json(&self) -> Value {
        json!({
            "offered": self.offered,
            "forwarded": self.forwarded,
            "peak_per_s": { "offered": self.peak_offered.get(), "forwarded": self.peak_forwarded.get() },
        })
    }
}

/// One level of one route.
#[derive(Debug, Default, Clone)]
pub struct LevelReport {
    /// Records offered: in batches read by the records rules, and in requests refused whole.
    pub records: Flow,
    pub bytes: Flow,
    /// Records that reached the level rules (the live guard's `records_received_total`).
    pub received: u64,
    pub received_bytes: u64,
    /// By [`DropReason`], indexed like `DropReason::ALL`.
    pub dropped: [u64; DropReason::COUNT],
    pub dropped_bytes: [u64; DropReason::COUNT],
    /// Records inside requests the guard refused whole (413, 429, 503, ...): never forwarded,
    /// and not seen by the level rules.
    pub refused: u64,
    pub refused_bytes: u64,
    /// Records whose level could not be read (given the route's `unknown_level`).
    pub malformed: u64,
}

impl LevelReport {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum::<u64>() + self.refused
    }

    pub fn dropped_bytes_total(&self) -> u64 {
        self.dropped_bytes.iter().sum::<u64>() + self.refused_bytes
    }
}

/// One route.
#[derive(Debug, Clone)]
pub struct RouteReport {
    pub name: String,
    pub mode: Mode,
    pub priority: Priority,
    pub has_records: bool,
    pub requests: Flow,
    /// Request body bytes.
    pub body: Flow,
    /// By the `rejections_total` reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// By the `batches_total` outcome.
    pub batches: BTreeMap<&'static str, u64>,
    /// Requests held to route budgets only, because a client budget's key store was full.
    pub untracked: u64,
    /// Requested verbosities the route's clamp lowered.
    pub clamped: u64,
    /// Batches whose records could not be counted: the recording kept only part of the body.
    pub partial: u64,
    pub levels: [LevelReport; Level::COUNT],
}

impl RouteReport {
    pub fn new(name: &str, mode: Mode, priority: Priority, has_records: bool) -> RouteReport {
        RouteReport {
            name: name.to_owned(),
            mode,
            priority,
            has_records,
            requests: Flow::default(),
            body: Flow::default(),
            rejected: BTreeMap::new(),
            batches: BTreeMap::new(),
            untracked: 0,
            clamped: 0,
            partial: 0,
            levels: Default::default(),
        }
    }

    /// Requests whose every record was dropped: the guard would answer them itself.
    pub fn all_dropped(&self) -> u64 {
        let outcome = BatchOutcome::AllDropped.as_str();
        self.batches.get(outcome).copied().unwrap_or(0)
    }

    /// Counts a batch under its `batches_total` outcome.
    pub fn batch(&mut self, outcome: BatchOutcome) {
        *self.batches.entry(outcome.as_str()).or_default() += 1;
    }

    /// Counts a request refused for `reason`.
    pub fn reject(&mut self, reason: Reason) {
        *self.rejected.entry(reason.as_str()).or_default() += 1;
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    pub fn shed_total(&self) -> u64 {
        self.rejected
            .iter()
            .filter(|(r, _)| r.starts_with("shed_"))
            .map(|(_, n)| n)
            .sum()
    }

    /// A batch the level rules decided.
    pub fn decided(&mut self, at: u64, tally: &Tally) {
        for level in Level::ALL {
            let (t, l) = (tally.level(level), &mut self.levels[level.index()]);
            if t.received == 0 {
                continue;
            }
            l.records.offer(at, t.received);
            l.bytes.offer(at, t.received_bytes);
            l.records.forward(at, t.forwarded);
            l.bytes.forward(at, t.forwarded_bytes);
            l.received += t.received;
            l.received_bytes += t.received_bytes;
            l.malformed += t.malformed;
            for (i, reason) in DropReason::ALL.into_iter().enumerate() {
                l.dropped[i] += t.dropped_by(reason);
                l.dropped_bytes[i] += t.dropped_bytes_by(reason);
            }
        }
    }

    /// The records of a request refused whole, per level: (records, bytes).
    pub fn refused_records(&mut self, at: u64, counts: &[(u64, u64); Level::COUNT]) {
        for (l, &(n, bytes)) in self.levels.iter_mut().zip(counts) {
            l.records.offer(at, n);
            l.bytes.offer(at, bytes);
            l.refused += n;
            l.refused_bytes += bytes;
        }
    }

    /// The route's object in the JSON report: its requests, body bytes, batches and levels.
    fn json(&self) -> Value {
        let levels: Vec<Value> = Level::ALL
            .iter()
            .zip(&self.levels)
            .filter(|(_, l)| l.records.offered > 0)
            .map(|(&level, l)| l.json(level))
            .collect();
        json!({
            "route": self.name,
            "mode": self.mode,
            "priority": self.priority,
            "requests": {
                "offered": self.requests.offered,
                "forwarded": self.requests.forwarded,
                "all_dropped": self.all_dropped(),
                "rejected": self.rejected,
                "peak_per_s": {
                    "offered": self.requests.peak_offered.get(),
                    "forwarded": self.requests.peak_forwarded.get(),
                },
            },
            "body_bytes": self.body.json(),
            "batches": self.batches,
            "untracked_key_requests": self.untracked,
            "verbosity_clamped": self.clamped,
            "partial_bodies": self.partial,
            "levels": levels,
        })
    }

    /// Writes the route's row of the requests table, then its rejection reasons and notes.
    fn write_requests_row(&self, out: &mut String) {
        let q = &self.requests;
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11}",
            self.name,
            self.mode.as_str(),
            q.offered,
            q.forwarded,
            self.all_dropped(),
            self.rejected_total(),
            q.peak_offered.get(),
            q.peak_forwarded.get(),
            bytes(self.body.offered),
            bytes(self.body.forwarded),
            format!("{}/s", bytes(self.body.peak_forwarded.get())),
        );
        if !self.rejected.is_empty() {
            let reasons: Vec<String> = self
                .rejected
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(out, "{:<16}   rejected: {}", "", reasons.join(", "));
        }
        let notes = self.notes();
        if !notes.is_empty() {
            let _ = writeln!(out, "{:<16}   {}", "", notes.join(", "));
        }
    }

    /// The line under the route's requests row: what the guard did besides admit and refuse.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.untracked > 0 {
            notes.push(format!("{} untracked keys", self.untracked));
        }
        if self.clamped > 0 {
            notes.push(format!("{} verbosities clamped", self.clamped));
        }
        if self.partial > 0 {
            notes.push(format!(
                "{} partial bodies (records not counted)",
                self.partial
            ));
        }
        if let Some(n) = self.batches.get(BatchOutcome::MalformedForwarded.as_str()) {
            notes.push(format!("{n} malformed batches forwarded"));
        }
        notes
    }

    /// Writes the route's rows of the records table, most severe level first; levels that saw
    /// no records have none.
    fn write_level_rows(&self, out: &mut String) {
        for level in Level::ALL.into_iter().rev() {
            let l = &self.levels[level.index()];
            if l.records.offered == 0 {
                continue;
            }
            let row = format!(
                "{:<16} {:<6} {:>9} {:>16} {:>16} {:>9} {:>10} {:>10} {:>10}  {}",
                self.name,
                level.as_str(),
                l.records.offered,
                share(l.records.forwarded, l.records.offered),
                share(l.dropped_total(), l.records.offered),
                l.records.peak_offered.get(),
                l.records.peak_forwarded.get(),
                bytes(l.bytes.offered),
                bytes(l.bytes.forwarded),
                l.drop_reasons(),
            );
            // A level nothing dropped ends in an empty last column: no trailing blanks.
            let _ = writeln!(out, "{}", row.trim_end());
        }
    }
}

impl LevelReport {
    /// The level's object in a route's `levels` in the JSON report.
    fn json(&self, level: Level) -> Value {
        json!({
            "level": level.as_str(),
            "records": {
                "offered": self.records.offered,
                "received": self.received,
                "forwarded": self.records.forwarded,
                "dropped": dropped_json(&self.dropped, self.refused),
                "malformed": self.malformed,
                "peak_per_s": {
                    "offered": self.records.peak_offered.get(),
                    "forwarded": self.records.peak_forwarded.get(),
                },
            },
            "bytes": {
                "offered": self.bytes.offered,
                "received": self.received_bytes,
                "forwarded": self.bytes.forwarded,
                "dropped": dropped_json(&self.dropped_bytes, self.refused_bytes),
                "peak_per_s": {
                    "offered": self.bytes.peak_offered.get(),
                    "forwarded": self.bytes.peak_forwarded.get(),
                },
            },
        })
    }

    /// The `dropped by reason` column of the records table: `rate 46, refused 92`.
    fn drop_reasons(&self) -> String {
        let mut reasons: Vec<String> = DropReason::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| self.dropped[*i] > 0)
            .map(|(i, d)| format!("{} {}", d.as_str(), self.dropped[i]))
            .collect();
        if self.refused > 0 {
            reasons.push(format!("refused {}", self.refused));
        }
        reasons.join(", ")
    }
}

/// A level's `dropped` object in the JSON report: the count of each reason that dropped any,
/// then `refused`; reasons that dropped nothing are left out.
fn dropped_json(counts: &[u64; DropReason::COUNT], refused: u64) -> Value {
    let mut m = serde_json::Map::new();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        if counts[i] > 0 {
            m.insert(r.as_str().into(), counts[i].into());
        }
    }
    if refused > 0 {
        m.insert("refused".into(), refused.into());
    }
    Value::Object(m)
}

/// A whole replay.
#[derive(Debug, Clone)]
pub struct Report {
    pub policy: String,
    pub version_hash: String,
    pub traffic: String,
    pub format: traffic::Format,
    pub brownout: Brownout,
    pub requests: u64,
    /// Unix nanoseconds of the earliest and latest request.
    pub first_at: Option<u64>,
    pub last_at: Option<u64>,
    /// Requests earlier than the one before them, replayed at that one's time.
    pub out_of_order: u64,
    /// Wall-clock time the replay took.
    pub elapsed: Duration,
    /// Like the policy's routes, then `_invalid` for requests whose path cannot be normalized.
    pub routes: Vec<RouteReport>,
}

impl Report {
    /// Virtual time from the first request to the last.
    pub fn span(&self) -> Duration {
        match (self.first_at, self.last_at) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => Duration::ZERO,
        }
    }

    pub fn route(&self, name: &str) -> Option<&RouteReport> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The routes the reports show: every route, and `_invalid` when some request went there.
    fn shown(&self) -> impl Iterator<Item = &RouteReport> {
        self.routes
            .iter()
            .filter(|r| r.requests.offered > 0 || r.name != UNROUTED)
    }

    pub fn to_json(&self, fail_if: &[super::Verdict]) -> Value {
        let routes: Vec<Value> = self.shown().map(RouteReport::json).collect();
        let conditions: Vec<Value> = fail_if
            .iter()
            .map(|v| {
                json!({
                    "condition": v.condition,
                    "value": v.value,
                    "unit": if v.percent { "percent" } else { "count" },
                    "breached": v.breached,
                })
            })
            .collect();
        json!({
            "policy": self.policy,
            "version_hash": self.version_hash,
            "traffic": self.traffic,
            "format": self.format.as_str(),
            "brownout": self.brownout,
            "requests": self.requests,
            "first": self.first_at.map(traffic::time::format_rfc3339),
            "last": self.last_at.map(traffic::time::format_rfc3339),
            "span_s": self.span().as_secs_f64(),
            "out_of_order": self.out_of_order,
            "replay_s": self.elapsed.as_secs_f64(),
            "routes": routes,
            "fail_if": conditions,
        })
    }

    /// The table `simulate` prints: requests per route, then records per route and level.
    pub fn to_table(&self, fail_if: &[super::Verdict]) -> String {
        let mut out = String::new();
        let shown: Vec<&RouteReport> = self.shown().collect();
        self.write_heading(&mut out);
        write_requests_table(&shown, &mut out);
        write_records_table(&shown, &mut out);
        self.write_notes(&shown, &mut out);
        write_fail_if(fail_if, &mut out);
        out
    }

    /// Writes the table's first line: policy, traffic, span, replay time and brownout level.
    fn write_heading(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{} (version {}) against {} ({}): {} requests over {} of traffic, replayed in {}; brownout {}",
            self.policy,
            self.version_hash,
            self.traffic,
            self.format.as_str().to_uppercase(),
            self.requests,
            duration(self.span()),
            duration(self.elapsed),
            self.brownout.as_str(),
        );
    }

    /// Writes the `note:` lines after the tables, after a blank line.
    fn write_notes(&self, shown: &[&RouteReport], out: &mut String) {
        let mut notes = Vec::new();
        if self.out_of_order > 0 {
            notes.push(format!(
                "{} requests were earlier than the request before them and were replayed at its time",
                self.out_of_order
            ));
        }
        if shown.iter().any(|r| r.mode == Mode::Shadow) {
            notes.push(
                "shadow routes are simulated as enforce mode decides: the live guard forwards their requests and counts these decisions in its shadow_* metrics".into(),
            );
        }
        notes.push(
            "not simulated: upstream slots and the brownout controller (no upstream here; --brownout fixes a level)".into(),
        );
        let _ = writeln!(out);
        for n in notes {
            let _ = writeln!(out, "note: {n}");
        }
    }
}

/// Writes the requests table, after a blank line: its header, then each shown route's rows.
fn write_requests_table(shown: &[&RouteReport], out: &mut String) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11}",
        "route",
        "mode",
        "requests",
        "forwarded",
        "all-drop",
        "rejected",
        "peak/s",
        "fwd peak/s",
        "body",
        "body fwd",
        "fwd peak/s"
    );
    for r in shown {
        r.write_requests_row(out);
    }
}

/// Writes the records table, after a blank line: its header, then the rows of each route that
/// was offered records. Nothing when none was.
fn write_records_table(shown: &[&RouteReport], out: &mut String) {
    let with_records: Vec<&RouteReport> = shown
        .iter()
        .copied()
        .filter(|r| r.levels.iter().any(|l| l.records.offered > 0))
        .collect();
    if with_records.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<6} {:>9} {:>16} {:>16} {:>9} {:>10} {:>10} {:>10}  dropped by reason",
        "route",
        "level",
        "records",
        "forwarded",
        "dropped",
        "peak/s",
        "fwd peak/s",
        "bytes",
        "bytes fwd",
    );
    for r in with_records {
        r.write_level_rows(out);
    }
}

/// Writes one `fail-if` line per condition, after a blank line: its value and verdict, the
/// values aligned. Nothing without conditions.
fn write_fail_if(fail_if: &[super::Verdict], out: &mut String) {
    if fail_if.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let width = fail_if.iter().map(|v| v.condition.len()).max().unwrap_or(0);
    for v in fail_if {
        let verdict = if v.breached { "BREACHED" } else { "ok" };
        let value = match v.percent {
            true => format!("{:.3}%", v.value),
            false => format!("{}", v.value),
        };
        let _ = writeln!(
            out,
            "fail-if {:<width$}  {value:>12}  {verdict}",
            v.condition
        );
    }
}

/// `12 (25.0%)`.
fn share(n: u64, of: u64) -> String {
    if of == 0 {
        return n.to_string();
    }
    format!("{n} ({:.1}%)", 100.0 * n as f64 / of as f64)
}

/// Bytes in binary units, one decimal.
fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (mul, unit) in UNITS {
        if n >= mul {
            return format!("{:.1}{unit}", n as f64 / mul as f64);
        }
    }
    format!("{n}B")
}

fn duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.0}ms", secs * 1e3)
    } else if secs < 120.0 {
        format!("{secs:.2}s")
    } else if secs < 7200.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_the_most_within_any_second() {
        let mut p = Peak::default();
        let ms = 1_000_000;
        for t in [0, 100, 900] {
            p.add(t * ms, 1);
        }
        assert_eq!(p.get(), 3);
        // At 1000 ms the event at 0 has left the window (which is the last second, open at
        // its start); at 1050 the one at 100 is still in it.
        p.add(1000 * ms, 1);
        assert_eq!(p.get(), 3);
        p.add(1050 * ms, 2);
        assert_eq!(p.get(), 5);
        p.add(5000 * ms, 1);
        assert_eq!(p.get(), 5);
    }
}
