//! Properties of the batch filter over random batches and random level rules: every record is
//! either forwarded or dropped, kept records come out in order and unchanged, the output is a
//! valid document of the same format, and the same input under the same policy keeps the same
//! records; cutting a decided batch down to its error records (the guard's own shedding) keeps
//! exactly the kept error and fatal records and accounts for the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use proptest::prelude::*;
use verbosity_guard::policy;
use verbosity_guard::records::filter::{DropReason, cut_below, decide};
use verbosity_guard::records::{Batch, Level, RecordsPolicy};

/// How one record names its level.
#[derive(Debug, Clone)]
enum LevelSpelling {
    Name(&'static str),
    Number(i64),
    Missing,
    /// `"level"` only inside a string and a nested object.
    Decoy,
    /// A truncated line (NDJSON only).
    Broken,
}

fn spelling() -> impl Strategy<Value = LevelSpelling> {
    prop_oneof![
        prop::sample::select(vec![
            "trace", "debug", "info", "warn", "error", "fatal", "WARNING", "W", "err", "crit",
            "loud",
        ])
        .prop_map(LevelSpelling::Name),
        (0i64..70).prop_map(LevelSpelling::Number),
        Just(LevelSpelling::Missing),
        Just(LevelSpelling::Decoy),
        Just(LevelSpelling::Broken),
    ]
}

fn render(spelling: &LevelSpelling, msg: &str) -> String {
    let msg = serde_json::to_string(msg).unwrap();
    match spelling {
        LevelSpelling::Name(l) => format!(r#"{{"msg":{msg},"level":"{l}"}}"#),
        LevelSpelling::Number(n) => format!(r#"{{"level":{n},"msg":{msg}}}"#),
        LevelSpelling::Missing => format!(r#"{{"msg":{msg}}}"#),
        LevelSpelling::Decoy => {
            format!(r#"{{"msg":"\"level\":\"error\"","ctx":{{"level":"error"}},"m":{msg}}}"#)
        }
        LevelSpelling::Broken => format!(r#"{{"level":"error","msg":{msg}"#),
    }
}

fn rule() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("keep".to_owned()),
        Just("drop".to_owned()),
        (0u32..=100).prop_map(|p| format!("{{ sample: {p}% }}")),
        (1u32..5).prop_map(|b| format!("{{ rate: 1/m, burst: {b} }}")),
        (1u32..5).prop_map(|b| format!("{{ rate: 1/m, burst: {b}, per: client }}")),
        (40u32..400).prop_map(|b| format!("{{ bytes: 1KiB/m, bytes_burst: {b}B }}")),
        (1u32..90, 1u32..4).prop_map(|(p, b)| format!("{{ sample: {p}%, rate: 1/m, burst: {b} }}")),
    ]
}

fn policy_yaml(format: &str, rules: &[String]) -> String {
    let levels: String = Level::ALL
        .iter()
        .zip(rules)
        .map(|(l, r)| format!("        {l}: {r}\n"))
        .collect();
    format!(
        "version: 1\nroutes:\n  - name: t\n    match: {{ path_prefix: / }}\n    records:\n      format: {format}\n      unknown_level: debug\n      levels:\n{levels}"
    )
}

fn compile(yaml: &str) -> policy::Policy {
    policy::parse(yaml, "prop.yaml").unwrap()
}

fn records_of(p: &policy::Policy) -> &RecordsPolicy {
    p.routes()[0].records.as_ref().unwrap()
}

fn run(
    p: &RecordsPolicy,
    body: &[u8],
) -> (Vec<bool>, Vec<u8>, verbosity_guard::records::filter::Tally) {
    let mut batch = Batch::parse(p, body).expect("a batch of records");
    let tally = decide(&mut batch.records, p, Some(7));
    let keep = batch.records.iter().map(|r| r.keep).collect();
    (keep, batch.rewrite(body), tally)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ndjson_filter_keeps_records_intact_and_accounts_for_all(
        recs in prop::collection::vec((spelling(), "[ -~é\\\\\"]{0,40}"), 1..60),
        rules in prop::collection::vec(rule(), Level::COUNT),
    ) {
        // At least one readable record, or the batch is "not NDJSON" as a whole.
        let mut lines: Vec<String> = recs.iter().map(|(s, m)| render(s, m)).collect();
        lines.push(render(&LevelSpelling::Name("info"), "anchor"));
        let body = lines.join("\n");
        let p = compile(&policy_yaml("ndjson", &rules));
        let (keep, out, tally) = run(records_of(&p), body.as_bytes());

        prop_assert_eq!(tally.received(), lines.len() as u64);
        for l in &tally.levels {
            prop_assert_eq!(l.received, l.forwarded + l.dropped());
        }
        prop_assert_eq!(tally.forwarded(), keep.iter().filter(|&&k| k).count() as u64);
        let want: Vec<&str> = lines.iter().zip(&keep).filter(|(_, k)| **k).map(|(l, _)| l.as_str()).collect();
        let got = String::from_utf8(out).unwrap();
        let got: Vec<&str> = got.lines().collect();
        prop_assert_eq!(got, want);

        // Same input, same policy, fresh budgets: the same records.
        let again = compile(&policy_yaml("ndjson", &rules));
        let (keep2, _, _) = run(records_of(&again), body.as_bytes());
        prop_assert_eq!(keep, keep2);
    }

    #[test]
    fn json_array_filter_outputs_a_valid_array_of_the_kept_elements(
        recs in prop::collection::vec((spelling(), "[ -~é\\\\\"]{0,40}"), 0..60),
        rules in prop::collection::vec(rule(), Level::COUNT),
    ) {
        let elems: Vec<String> = recs
            .iter()
            .map(|(s, m)| match s {
                // Arrays must be valid JSON as a whole; a broken record becomes a bare number.
                LevelSpelling::Broken => "42".to_owned(),
                s => render(s, m),
            })
            .collect();
        let body = format!("[{}]", elems.join(" , "));
        let p = compile(&policy_yaml("json-array", &rules));
        let (keep, out, tally) = run(records_of(&p), body.as_bytes());

        prop_assert_eq!(tally.received(), elems.len() as u64);
        let parsed: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&out).unwrap();
        let want: Vec<&str> = elems.iter().zip(&keep).filter(|(_, k)| **k).map(|(e, _)| e.as_str()).collect();
        let got: Vec<&str> = parsed.iter().map(|r| r.get()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn cutting_a_batch_to_its_errors_keeps_exactly_its_kept_error_records(
        recs in prop::collection::vec((spelling(), "[ -~]{0,20}"), 1..60),
        rules in prop::collection::vec(rule(), Level::COUNT),
    ) {
        let mut lines: Vec<String> = recs.iter().map(|(s, m)| render(s, m)).collect();
        lines.push(render(&LevelSpelling::Name("error"), "anchor"));
        let body = lines.join("\n");
        let p = compile(&policy_yaml("ndjson", &rules));
        let p = records_of(&p);
        let mut batch = Batch::parse(p, body.as_bytes()).expect("a batch of records");
        let mut tally = decide(&mut batch.records, p, Some(7));
        let before: Vec<bool> = batch.records.iter().map(|r| r.keep).collect();

        let left = cut_below(&mut batch.records, &mut tally, Level::Error);

        let mut shed = 0;
        for (r, was) in batch.records.iter().zip(&before) {
            prop_assert_eq!(r.keep, *was && r.level >= Level::Error);
            shed += u64::from(*was && !r.keep);
        }
        prop_assert_eq!(left, batch.records.iter().filter(|r| r.keep).count() as u64);
        prop_assert_eq!(tally.forwarded(), left);
        for l in &tally.levels {
            prop_assert_eq!(l.received, l.forwarded + l.dropped());
        }
        let cut: u64 = tally.levels.iter().map(|l| l.dropped_by(DropReason::Shed)).sum();
        prop_assert_eq!(cut, shed);
    }
}
