//! `--fail-if` conditions: thresholds on a replay's outcome that fail a CI job.
//!
//! ```text
//! condition := kind "(" selection [ "," reason ] ")" comparison number [ "%" ]
//! kind       := dropped | forwarded | dropped_bytes | forwarded_bytes     (records)
//!             | rejected | shed | all_dropped                             (requests)
//! selection  := "*" | ROUTE | LEVEL | ROUTE ":" LEVEL | "*" ":" LEVEL
//! comparison := ">" | ">=" | "<" | "<="
//! ```
//!
//! With `%` the number is a share of what was offered to the selection (records, record bytes,
//! or requests); without, a count. A share of nothing is 0%. Record kinds count records of
//! every route with `records` in the selection; `dropped` includes the records inside requests
//! the guard refused whole, so `dropped(warn) > 1%` means "more than 1% of warn records would
//! not reach the upstream". Their `reason` is a drop reason (`drop_rule`, `sample`, `rate`,
//! `brownout`, `malformed`, or `refused`). Request kinds take a route or `*`; `rejected`'s
//! reason is a `rejections_total` reason (`client_bytes`, `shed_brownout`, ...), `shed` counts
//! the `shed_*` ones. A name is a level when it is one of `trace debug info warn error fatal`,
//! else a route; write `ROUTE:*` for a route named like a level.
//!
//! Examples: `dropped(warn) > 1%`, `rejected(telemetry) > 0.5%`, `dropped(telemetry:info,
//! rate) > 1000`, `forwarded(*:error) < 100%`, `shed(*) > 0`.

use std::fmt;
use std::str::FromStr;

use super::report::{LevelReport, Report, RouteReport};
use crate::decide::Reason;
use crate::records::Level;
use crate::records::filter::DropReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dropped,
    Forwarded,
    DroppedBytes,
    ForwardedBytes,
    Rejected,
    Shed,
    AllDropped,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "dropped" => Kind::Dropped,
            "forwarded" => Kind::Forwarded,
            "dropped_bytes" => Kind::DroppedBytes,
            "forwarded_bytes" => Kind::ForwardedBytes,
            "rejected" => Kind::Rejected,
            "shed" => Kind::Shed,
            "all_dropped" => Kind::AllDropped,
            _ => return None,
        })
    }

    fn of_records(self) -> bool {
        matches!(
            self,
            Kind::Dropped | Kind::Forwarded | Kind::DroppedBytes | Kind::ForwardedBytes
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Above,
    AtLeast,
    Below,
    AtMost,
}

/// One `--fail-if` condition, as parsed (names are resolved against the replay).
#[derive(Debug, Clone)]
pub struct Condition {
    text: String,
    kind: Kind,
    /// `None`: every route.
    route: Option<String>,
    /// `None`: every level.
    level: Option<Level>,
    /// A name that is a level or a route, resolved once the policy's routes are known.
    name: Option<String>,
    reason: Option<String>,
    comparison: Comparison,
    threshold: f64,
    percent: bool,
}

/// Why a `--fail-if` condition is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--fail-if {text:?}: {problem}")]
pub struct ConditionError {
    text: String,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Problem {
    #[error("write kind(selection[, reason]) > number[%], e.g. dropped(warn) > 1%")]
    Shape,
    #[error(
        "{0:?} is not a kind (dropped, forwarded, dropped_bytes, forwarded_bytes, rejected, shed, all_dropped)"
    )]
    Kind(String),
    #[error("the comparison must be >, >=, < or <=")]
    Comparison,
    #[error("{0:?} is not a number")]
    Number(String),
    #[error("{0:?} is not a level (trace, debug, info, warn, error, fatal)")]
    Level(String),
    #[error("no route or level is called {0:?}")]
    Name(String),
    #[error("no route is called {0:?}")]
    Route(String),
    #[error("{0:?} is not a drop reason (drop_rule, sample, rate, brownout, malformed, refused)")]
    DropReason(String),
    #[error("requests have no level: select a route or *")]
    RequestLevel,
    #[error("{0:?} is not a rejection reason (one of: {reasons})", reasons = rejection_reasons())]
    RejectionReason(String),
    #[error("forwarded, forwarded_bytes, shed and all_dropped take no reason")]
    Reason,
}

impl Condition {
    fn error(&self, problem: Problem) -> ConditionError {
        ConditionError {
            text: self.text.clone(),
            problem,
        }
    }

    /// The value the condition compares: a share in percent, or a count.
    pub fn value(&self, report: &Report) -> Result<f64, ConditionError> {
        let (route, level) = self.resolve(report)?;
        let routes = report
            .routes
            .iter()
            .filter(|r| route.as_deref().is_none_or(|name| r.name == name));
        let (num, den) = if self.kind.of_records() {
            self.records(routes, level)?
        } else {
            self.requests(routes)?
        };
        Ok(match self.percent {
            true if den == 0 => 0.0,
            true => 100.0 * num as f64 / den as f64,
            false => num as f64,
        })
    }

    /// True when the threshold is a share (`%`), false when a count.
    pub fn is_share(&self) -> bool {
        self.percent
    }

    /// True when the replay breaches the condition.
    pub fn breached(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::Above => value > self.threshold,
            Comparison::AtLeast => value >= self.threshold,
            Comparison::Below => value < self.threshold,
            Comparison::AtMost => value <= self.threshold,
        }
    }

    /// The route and level selected, with a bare name resolved.
    fn resolve(&self, report: &Report) -> Result<(Option<String>, Option<Level>), ConditionError> {
        let known = |name: &str| report.route(name).is_some();
        match &self.name {
            Some(name) => match Level::parse_name(name) {
                Some(l) => Ok((None, Some(l))),
                None if known(name) => Ok((Some(name.clone()), None)),
                None => Err(self.error(Problem::Name(name.clone()))),
            },
            None => match &self.route {
                Some(r) if !known(r) => Err(self.error(Problem::Route(r.clone()))),
                r => Ok((r.clone(), self.level)),
            },
        }
    }

    fn records<'a>(
        &self,
        routes: impl Iterator<Item = &'a RouteReport>,
        level: Option<Level>,
    ) -> Result<(u64, u64), ConditionError> {
        let reason = match self.reason.as_deref() {
            None => None,
            Some("refused") => Some(None),
            Some(r) => match DropReason::ALL.iter().position(|d| d.as_str() == r) {
                Some(i) => Some(Some(i)),
                None => return Err(self.error(Problem::DropReason(r.to_owned()))),
            },
        };
        let bytes = matches!(self.kind, Kind::DroppedBytes | Kind::ForwardedBytes);
        let dropped = matches!(self.kind, Kind::Dropped | Kind::DroppedBytes);
        let (mut num, mut den) = (0, 0);
        let selected = |l: &(usize, &LevelReport)| level.is_none_or(|want| want.index() == l.0);
        for l in routes.flat_map(|r| r.levels.iter().enumerate().filter(selected)) {
            let l = l.1;
            let (offered, forwarded) = match bytes {
                true => (l.bytes.offered, l.bytes.forwarded),
                false => (l.records.offered, l.records.forwarded),
            };
            let (by_reason, refused) = match bytes {
                true => (&l.dropped_bytes, l.refused_bytes),
                false => (&l.dropped, l.refused),
            };
            den += offered;
            num += match (dropped, reason) {
                (false, _) => forwarded,
                (true, None) => by_reason.iter().sum::<u64>() + refused,
                (true, Some(None)) => refused,
                (true, Some(Some(i))) => by_reason[i],
            };
        }
        Ok((num, den))
    }

    fn requests<'a>(
        &self,
        routes: impl Iterator<Item = &'a RouteReport>,
    ) -> Result<(u64, u64), ConditionError> {
        if self.level.is_some() {
            return Err(self.error(Problem::RequestLevel));
        }
        let (mut num, mut den) = (0, 0);
        for r in routes {
            den += r.requests.offered;
            num += match (self.kind, self.reason.as_deref()) {
                (Kind::Rejected, None) => r.rejected_total(),
                (Kind::Rejected, Some(reason)) => r.rejected.get(reason).copied().unwrap_or(0),
                (Kind::Shed, _) => r.shed_total(),
                _ => r.all_dropped(),
            };
        }
        Ok((num, den))
    }
}

impl FromStr for Condition {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Condition, ConditionError> {
        let err = |problem| ConditionError {
            text: text.to_owned(),
            problem,
        };
        let (kind, rest) = text.split_once('(').ok_or_else(|| err(Problem::Shape))?;
        let (inside, rest) = rest.split_once(')').ok_or_else(|| err(Problem::Shape))?;
        let kind = kind.trim();
        let kind = Kind::parse(kind).ok_or_else(|| err(Problem::Kind(kind.to_owned())))?;
        let (selection, reason) = parse_inside(kind, inside).map_err(err)?;
        let (route, level, name) = parse_selection(kind, selection).map_err(err)?;
        let (comparison, rest) = parse_comparison(rest).map_err(err)?;
        let (threshold, percent) = parse_threshold(rest).map_err(err)?;
        Ok(Condition {
            text: text.trim().to_owned(),
            kind,
            route,
            level,
            name,
            reason,
            comparison,
            threshold,
            percent,
        })
    }
}

/// Splits what is inside the parentheses into the selection and the reason, and checks that
/// `kind` takes that reason.
fn parse_inside(kind: Kind, inside: &str) -> Result<(&str, Option<String>), Problem> {
    let (selection, reason) = match inside.split_once(',') {
        Some((s, r)) => (s.trim(), Some(r.trim().to_owned())),
        None => (inside.trim(), None),
    };
    if selection.is_empty() || reason.as_deref() == Some("") {
        return Err(Problem::Shape);
    }
    match (kind, reason.as_deref()) {
        (Kind::Forwarded | Kind::ForwardedBytes | Kind::Shed | Kind::AllDropped, Some(_)) => {
            return Err(Problem::Reason);
        }
        // A misspelt reason would count nothing, and the gate would never fire.
        (Kind::Rejected, Some(r)) if rejection_reason(r).is_none() => {
            return Err(Problem::RejectionReason(r.to_owned()));
        }
        _ => {}
    }
    Ok((selection, reason))
}

/// The route, the level and the bare name (level or route, resolved later) a selection names;
/// `None` for `*` or for what it leaves out.
type Selection = (Option<String>, Option<Level>, Option<String>);

/// Reads a selection (`*`, `NAME`, `ROUTE:LEVEL`), refusing a level for a request kind.
fn parse_selection(kind: Kind, selection: &str) -> Result<Selection, Problem> {
    let (mut route, mut lvl, mut name) = (None, None, None);
    match selection.split_once(':') {
        Some((r, l)) => {
            let (r, l) = (r.trim(), l.trim());
            if r != "*" {
                route = Some(r.to_owned());
            }
            if l != "*" {
                lvl = Some(Level::parse_name(l).ok_or_else(|| Problem::Level(l.to_owned()))?);
            }
        }
        None if selection == "*" => {}
        None => name = Some(selection.to_owned()),
    }
    if !kind.of_records()
        && (lvl.is_some() || name.as_deref().and_then(Level::parse_name).is_some())
    {
        return Err(Problem::RequestLevel);
    }
    Ok((route, lvl, name))
}

/// The comparison after the closing parenthesis, and what follows it.
fn parse_comparison(rest: &str) -> Result<(Comparison, &str), Problem> {
    let rest = rest.trim();
    // Two-character operators first: `>=` also starts with `>`.
    if let Some(r) = rest.strip_prefix(">=") {
        Ok((Comparison::AtLeast, r))
    } else if let Some(r) = rest.strip_prefix("<=") {
        Ok((Comparison::AtMost, r))
    } else if let Some(r) = rest.strip_prefix('>') {
        Ok((Comparison::Above, r))
    } else if let Some(r) = rest.strip_prefix('<') {
        Ok((Comparison::Below, r))
    } else {
        Err(Problem::Comparison)
    }
}

/// The threshold after the comparison, and whether it is a share (`%`).
fn parse_threshold(rest: &str) -> Result<(f64, bool), Problem> {
    let rest = rest.trim();
    let (number, percent) = match rest.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (rest, false),
    };
    let threshold: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| Problem::Number(number.to_owned()))?;
    Ok((threshold, percent))
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl clap::builder::ValueParserFactory for Condition {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Condition>())
    }
}

/// A reason the replay can count: every rejection reason but the shadow-only one.
fn rejection_reason(label: &str) -> Option<Reason> {
    Reason::from_label(label).filter(|r| !r.is_shadow_only())
}

fn rejection_reasons() -> String {
    let names: Vec<_> = Reason::ALL
        .iter()
        .filter(|r| !r.is_shadow_only())
        .map(|r| r.as_str())
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_and_its_errors() {
        for ok in [
            "dropped(warn) > 1%",
            "rejected(telemetry) > 0.5%",
            "rejected(*, client_bytes) > 0",
            " dropped ( telemetry : info , rate ) >= 1000 ",
            "forwarded(*:error) < 100%",
            "shed(*) <= 0",
            "dropped_bytes(warn:*, refused) > 10 %",
        ] {
            assert!(ok.parse::<Condition>().is_ok(), "{ok}");
        }
        for (bad, message) in [
            ("dropped warn > 1%", "write kind(selection"),
            ("lost(warn) > 1%", "\"lost\" is not a kind"),
            ("dropped(warn) = 1%", "the comparison must be"),
            ("dropped(warn) > lots", "\"lots\" is not a number"),
            ("dropped(warn) > -1", "\"-1\" is not a number"),
            ("dropped(*:loud) > 1", "\"loud\" is not a level"),
            ("rejected(*:warn) > 1", "requests have no level"),
            ("rejected(warn) > 1", "requests have no level"),
            ("shed(*, brownout) > 1", "take no reason"),
            ("forwarded(warn, rate) > 1", "take no reason"),
            (
                "rejected(*, client_byte) > 1",
                "\"client_byte\" is not a rejection reason",
            ),
            ("dropped(warn,) > 1", "write kind(selection"),
        ] {
            let e = bad.parse::<Condition>().unwrap_err().to_string();
            assert!(e.starts_with(&format!("--fail-if {bad:?}: ")), "{e}");
            assert!(e.contains(message), "{bad}: {e}");
        }
    }
}
