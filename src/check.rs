//! `verbosity-guard check`: validate policy files and summarize the valid ones on one screen.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::budget::{BudgetKind, Quota, Scope};
use crate::policy::{self, Mode, Policy, Route};
use crate::protect::{BrownoutConfig, Priority, ProtectConfig, SurgeConfig};
use crate::records::{Level, LevelRule, Per};
use crate::units::{ByteRate, ByteSize, Fraction, HumanDuration, Rate};

pub struct CheckReport {
    /// True when every file is valid.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(files: &[PathBuf]) -> CheckReport {
    let mut report = CheckReport {
        ok: true,
        stdout: String::new(),
        stderr: String::new(),
    };
    for file in files {
        match policy::load(file) {
            Ok(p) => summarize(&p, &mut report.stdout),
            Err(e) => {
                report.ok = false;
                let _ = writeln!(report.stderr, "{e}");
            }
        }
    }
    report
}

/// Writes a valid policy's summary: its heading, one row per route, protection, warnings.
fn summarize(p: &Policy, out: &mut String) {
    let _ = writeln!(
        out,
        "{}: ok, {} routes, version {}",
        p.source,
        p.routes().len(),
        p.version_hash
    );
    let _ = writeln!(
        out,
        "  {:<16} {:<9} {:<12} {:<42} {:<9} budgets",
        "route", "priority", "methods", "path", "max_body"
    );
    for r in p.routes() {
        write_route(r, out);
    }
    write_protect(&p.protect, out);
    write_fleet(p, out);
    for w in &p.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
}

/// Writes one route's row of the table, then its shadow, records and clamp lines under it.
fn write_route(r: &Route, out: &mut String) {
    let _ = writeln!(
        out,
        "  {:<16} {:<9} {:<12} {:<42} {:<9} {}",
        r.name,
        r.priority.as_str(),
        r.methods.names().join(","),
        // `PathMatcher`'s `Display` ignores the width: pad its string instead.
        r.path.to_string(),
        r.payload
            .max_body
            .map_or("-".into(), |b| ByteSize(b).to_string()),
        budgets(r),
    );
    if r.mode == Mode::Shadow {
        let _ = writeln!(
            out,
            "  {:<16} shadow: decisions counted, requests forwarded as received",
            ""
        );
    }
    if let Some(rec) = &r.records {
        let levels: Vec<String> = Level::ALL
            .iter()
            .rev()
            .map(|&l| format!("{l} {}", level_rule(rec.rule(l))))
            .collect();
        let _ = writeln!(
            out,
            "  {:<16} records {}: {}",
            "",
            rec.format.as_str(),
            levels.join("; ")
        );
    }
    if let Some(c) = &r.clamp {
        let _ = writeln!(out, "  {:<16} verbosity clamped to {}", "", c.max);
    }
}

/// The `budgets` column of a route's row: each payload budget it sets, or `-` for none.
fn budgets(r: &Route) -> String {
    let budgets: Vec<String> = BudgetKind::ALL
        .iter()
        .filter_map(|&k| {
            let fleet = r
                .payload
                .placement(k)
                .is_some_and(|p| p.scope() == Scope::Fleet);
            let b = budget(k, r.payload.quota(k)?);
            Some(if fleet { format!("{b} fleet-wide") } else { b })
        })
        .collect();
    if budgets.is_empty() {
        "-".into()
    } else {
        budgets.join("; ")
    }
}

/// One entry of the `budgets` column: `client_bytes 1MiB/s burst 1MiB`, in the budget's unit.
fn budget(k: BudgetKind, q: Quota) -> String {
    let (rate, burst) = if k.is_bytes() {
        let rate = ByteRate {
            bytes: q.amount,
            per: q.per,
        };
        (rate.to_string(), ByteSize(q.burst).to_string())
    } else {
        let rate = Rate {
            amount: q.amount,
            per: q.per,
        };
        (rate.to_string(), q.burst.to_string())
    };
    format!("{} {rate} burst {burst}", k.as_str())
}

/// Writes the `fleet:` line, for a policy with fleet-wide budgets.
fn write_fleet(p: &Policy, out: &mut String) {
    let any = p.routes().iter().any(|r| {
        BudgetKind::ALL.iter().any(|&k| {
            r.payload
                .placement(k)
                .is_some_and(|p| p.scope() == Scope::Fleet)
        })
    });
    if any {
        let f = &p.fleet;
        let _ = writeln!(
            out,
            "  fleet: budgets shared through serve --fleet-redis under {}, refilled every {}; without Redis each guard enforces 1/{} of them",
            f.namespace,
            HumanDuration(f.refill_interval),
            f.pods
        );
    }
}

/// Writes the `protect:` line (upstream slots and waits), the `brownout:` line and the
/// `adaptive concurrency:` line.
fn write_protect(pr: &ProtectConfig, out: &mut String) {
    let s = &pr.slots;
    let wait = |c: Priority| HumanDuration(s.queue_timeout[c.index()]).to_string();
    let _ = writeln!(
        out,
        "  protect: {} upstream slots, {} reserved for critical, bulk at most {}; waits critical {}, normal {}, bulk {}",
        s.max_in_flight,
        s.critical_reserved,
        s.bulk_max_in_flight,
        wait(Priority::Critical),
        wait(Priority::Normal),
        wait(Priority::Bulk),
    );
    let _ = writeln!(
        out,
        "  brownout: {}; surge detection: {}",
        brownout(&pr.brownout),
        surge(&pr.surge),
    );
    let a = &pr.adaptive;
    if a.enabled {
        let [normal, bulk] = pr.class_max();
        let _ = writeln!(
            out,
            "  adaptive concurrency: normal {}..{normal}, bulk {}..{bulk} in flight, from latency over min RTT x{} (min RTT every {}){}",
            a.min_limit.min(normal),
            a.min_limit.min(bulk),
            a.tolerance,
            HumanDuration(a.min_rtt_interval),
            if a.bulk_yields_to_critical {
                "; bulk yields to critical while the upstream queues"
            } else {
                ""
            },
        );
    } else {
        let _ = writeln!(out, "  adaptive concurrency: off");
    }
}

/// The `brownout:` part of the brownout line: its highest level and interval, or `off`.
fn brownout(b: &BrownoutConfig) -> String {
    if !b.enabled {
        return "off".into();
    }
    format!(
        "up to {}, judged every {}",
        b.max_level.as_str(),
        HumanDuration(b.interval)
    )
}

/// The `surge detection:` part of the brownout line: factor, hold and warmup, or `off`.
fn surge(s: &SurgeConfig) -> String {
    if !s.enabled {
        return "off".into();
    }
    format!(
        "x{} for {} after {} warmup",
        s.factor,
        HumanDuration(s.hold),
        HumanDuration(s.warmup)
    )
}

fn level_rule(rule: &LevelRule) -> String {
    if rule.drop {
        return "drop".into();
    }
    let mut parts = Vec::new();
    if let Some(s) = rule.sample {
        parts.push(format!(
            "sample {}",
            Fraction {
                per_million: s.per_million
            }
        ));
    }
    if let Some(b) = &rule.records {
        let q = b.quota();
        let rate = Rate {
            amount: q.amount,
            per: q.per,
        };
        parts.push(format!("{rate} burst {} per {}", q.burst, per(b.per())));
    }
    if let Some(b) = &rule.bytes {
        let q = b.quota();
        let rate = ByteRate {
            bytes: q.amount,
            per: q.per,
        };
        parts.push(format!(
            "{rate} burst {} per {}",
            ByteSize(q.burst),
            per(b.per())
        ));
    }
    if parts.is_empty() {
        "keep".into()
    } else {
        parts.join(", ")
    }
}

fn per(p: Per) -> &'static str {
    match p {
        Per::Route => "route",
        Per::Client => "client",
    }
}
