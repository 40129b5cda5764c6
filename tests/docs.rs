//! The documentation checked against the code.
//!
//! The policy, CLI and metrics references in `docs/` hold blocks generated from the code, between
//! `<!-- generated:NAME begin -->` and `<!-- generated:NAME end -->`. Each test here renders its
//! page's blocks and fails on any difference; with `VERBOSITY_GUARD_UPDATE_DOCS=1` set it
//! rewrites the blocks in place instead. The prose around the blocks is written by hand.
//!
//! Links are checked too: every relative link in `README.md`, `ARCHITECTURE.md` and `docs/*.md`
//! names a file that exists (and a heading in it, when it has an anchor), and every alert in
//! `deploy/prometheus/alerts.yaml` names its runbook's heading.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_json::Value;
use support::{files, repo};
use verbosity_guard::cli::Cli;
use verbosity_guard::metrics::FAMILIES;
use verbosity_guard::policy::schema::policy_schema;

const UPDATE_VAR: &str = "VERBOSITY_GUARD_UPDATE_DOCS";

/// A path as the repository names it, for messages.
fn relative(path: &Path) -> String {
    let path = path.strip_prefix(repo("")).unwrap_or(path);
    path.display().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A table cell: one line, with `|` escaped (also inside code spans, as GitHub reads tables).
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn code(text: &str) -> String {
    format!("`{text}`")
}

// ---- generated blocks

/// Where the text of block `name` is in a page: between its begin and end markers.
fn block_range(page: &str, text: &str, name: &str) -> std::ops::Range<usize> {
    let begin = format!("<!-- generated:{name} begin -->\n");
    let end = format!("<!-- generated:{name} end -->");
    let start = text
        .find(&begin)
        .unwrap_or_else(|| panic!("{page}: no `{}` marker", begin.trim_end()))
        + begin.len();
    let len = text[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("{page}: no `{end}` marker after the begin marker"));
    start..start + len
}

/// Checks (or, with `VERBOSITY_GUARD_UPDATE_DOCS=1`, rewrites) the generated blocks of one page.
/// The page must hold exactly the blocks named, each once.
fn check_generated<N: AsRef<str>>(page: &str, blocks: &[(N, String)]) {
    let path = repo(page);
    let text = read(&path);
    let mut found: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("<!-- generated:")?
                .strip_suffix(" begin -->")
        })
        .collect();
    let mut expected: Vec<&str> = blocks.iter().map(|(n, _)| n.as_ref()).collect();
    found.sort_unstable();
    expected.sort_unstable();
    assert_eq!(found, expected, "{page}: the generated blocks, each once");
    let stale: Vec<_> = blocks
        .iter()
        .filter_map(|(name, rendered)| {
            let name = name.as_ref();
            let range = block_range(page, &text, name);
            let first_line = text[..range.start].lines().count() + 1;
            first_difference(page, name, first_line, &text[range], rendered)
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    if !updating() {
        panic!(
            "{}\nrun `{UPDATE_VAR}=1 cargo test --test docs` to regenerate",
            stale.join("\n")
        );
    }
    let mut updated = text.clone();
    for (name, rendered) in blocks {
        let range = block_range(page, &updated, name.as_ref());
        updated.replace_range(range, rendered);
    }
    // Written aside and renamed, so the tests reading this page meanwhile never see half of it.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, updated).unwrap_or_else(|e| panic!("{page}: {e}"));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{page}: {e}"));
    eprintln!("{page}: regenerated {} block(s)", stale.len());
}

/// Whether this run rewrites stale blocks: only with the variable set to exactly `1`, and never
/// in CI, where a stale block must fail.
fn updating() -> bool {
    std::env::var(UPDATE_VAR).as_deref() == Ok("1") && std::env::var_os("CI").is_none()
}

/// Where a block differs from its rendering: the first line that is not the same, or `None`.
fn first_difference(
    page: &str,
    name: &str,
    first_line: usize,
    current: &str,
    rendered: &str,
) -> Option<String> {
    if current == rendered {
        return None;
    }
    let (mut cur, mut new) = (current.lines(), rendered.lines());
    let mut n = first_line;
    loop {
        match (cur.next(), new.next()) {
            (Some(a), Some(b)) if a == b => n += 1,
            (None, None) => {
                return Some(format!(
                    "{page}:{n}: generated block `{name}` differs in its last newline"
                ));
            }
            (a, b) => {
                return Some(format!(
                    "{page}:{n}: generated block `{name}` is out of date\n  in the file:   {}\n  from the code: {}",
                    a.unwrap_or("(end of block)"),
                    b.unwrap_or("(end of block)"),
                ));
            }
        }
    }
}

// ---- docs/policy.md: the policy file's fields, from its JSON Schema

/// `allOf: [X]` and `anyOf: [X, null]` (how schemars writes a documented or optional field) as X.
fn unwrap_optional(schema: &Value) -> &Value {
    for key in ["allOf", "anyOf"] {
        if let Some(alternatives) = schema[key].as_array() {
            let mut not_null = alternatives.iter().filter(|a| a["type"] != "null");
            if let (Some(one), None) = (not_null.next(), not_null.next()) {
                return unwrap_optional(one);
            }
        }
    }
    schema
}

fn ref_name(schema: &Value) -> Option<&str> {
    schema["$ref"].as_str()?.rsplit('/').next()
}

fn is_object(schema: &Value) -> bool {
    schema["properties"].is_object()
}

/// The definitions of object type a field leads to (through lists, alternatives and other
/// definitions), with the path suffix that reaches them (`[]` for a list's items).
fn object_refs<'a>(
    field: &'a Value,
    defs: &'a Value,
    suffix: &str,
    out: &mut Vec<(&'a str, String)>,
) {
    let field = unwrap_optional(field);
    if let Some(name) = ref_name(field) {
        if is_object(&defs[name]) {
            out.push((name, suffix.to_owned()));
        } else {
            object_refs(&defs[name], defs, suffix, out);
        }
    } else if field.get("items").is_some() {
        object_refs(&field["items"], defs, &format!("{suffix}[]"), out);
    } else if let Some(alternatives) = field["oneOf"].as_array() {
        for a in alternatives {
            object_refs(a, defs, suffix, out);
        }
    }
}

/// `parent.field`, or `field` at the top level.
fn field_path(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// An object of the policy, at the first path where it occurs.
struct PolicyObject<'a> {
    path: String,
    schema: &'a Value,
    also_at: Vec<String>,
}

/// Every object reachable from `schema`, depth first; a definition used in several places is
/// listed once, at its first path, with the others in `also_at`.
fn policy_objects<'a>(
    path: String,
    schema: &'a Value,
    defs: &'a Value,
    seen: &mut BTreeMap<&'a str, usize>,
    out: &mut Vec<PolicyObject<'a>>,
) {
    out.push(PolicyObject {
        path: path.clone(),
        schema,
        also_at: Vec::new(),
    });
    for (field, field_schema) in schema["properties"].as_object().into_iter().flatten() {
        let mut refs = Vec::new();
        object_refs(field_schema, defs, "", &mut refs);
        for (name, suffix) in refs {
            let def = &defs[name];
            let sub = field_path(&path, field) + &suffix;
            match seen.get(name) {
                Some(&i) => out[i].also_at.push(sub),
                None => {
                    seen.insert(name, out.len());
                    policy_objects(sub, def, defs, seen, out);
                }
            }
        }
    }
}

/// A field's type in words: `object`, a unit type's name, the values of an enum, ...
fn type_of(schema: &Value, defs: &Value) -> String {
    let schema = unwrap_optional(schema);
    if let Some(name) = ref_name(schema) {
        let def = &defs[name];
        return if is_object(def) {
            "object".to_owned()
        } else if def.get("pattern").is_some() {
            name.to_owned()
        } else {
            type_of(def, defs)
        };
    }
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| code(v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        return alternatives
            .iter()
            .map(|a| a["const"].as_str().map_or_else(|| type_of(a, defs), code))
            .collect::<Vec<_>>()
            .join(" | ");
    }
    let ty = match &schema["type"] {
        Value::Array(types) => types.iter().find(|t| *t != "null").and_then(Value::as_str),
        t => t.as_str(),
    };
    match ty.unwrap_or("any") {
        "array" => format!("list of {}", type_of(&schema["items"], defs)),
        "integer" => match (schema["minimum"].as_u64(), schema["maximum"].as_u64()) {
            (Some(min), Some(max)) if min == max => code(&min.to_string()),
            (Some(min), Some(max)) => format!("integer {min} to {max}"),
            (Some(min), None) if min > 0 => format!("integer ≥ {min}"),
            _ => "integer".to_owned(),
        },
        "string" => match schema["pattern"].as_str() {
            Some(pattern) => format!("string matching {}", code(pattern)),
            None => "string".to_owned(),
        },
        other => other.to_owned(),
    }
}

/// One table per object of the policy file (field path, type, required, description), then the
/// unit types.
fn render_policy_fields() -> String {
    let schema = policy_schema();
    let defs = schema
        .get("definitions")
        .expect("the schema has definitions");
    let mut objects = Vec::new();
    policy_objects(
        String::new(),
        &schema,
        defs,
        &mut BTreeMap::new(),
        &mut objects,
    );
    let mut out = String::new();
    for object in &objects {
        let title = if object.path.is_empty() {
            "Top level".to_owned()
        } else {
            code(&object.path)
        };
        let def_description = object.schema["description"].as_str().unwrap_or_default();
        writeln!(out, "\n### {title}\n\n{}\n", cell(def_description)).unwrap();
        if !object.also_at.is_empty() {
            let paths: Vec<_> = object.also_at.iter().map(|p| code(p)).collect();
            writeln!(out, "The same object is also at {}.\n", paths.join(", ")).unwrap();
        }
        out.push_str("| field | type | required | description |\n|---|---|---|---|\n");
        let required: BTreeSet<&str> = object.schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (field, field_schema) in object.schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
        {
            let path = field_path(&object.path, field);
            // Defaults are in the descriptions: the schema carries none.
            let required = if required.contains(field.as_str()) {
                "yes"
            } else {
                ""
            };
            let description = field_schema["description"].as_str().unwrap_or_default();
            writeln!(
                out,
                "| {} | {} | {required} | {} |",
                code(&path),
                cell(&type_of(field_schema, defs)),
                cell(description)
            )
            .unwrap();
        }
    }
    out.push_str("\n### Value types\n\n| type | written as | examples |\n|---|---|---|\n");
    for (name, def) in defs.as_object().into_iter().flatten() {
        if def.get("pattern").is_some() {
            let examples: Vec<_> = def["examples"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(code)
                .collect();
            writeln!(
                out,
                "| {name} | {} | {} |",
                cell(def["description"].as_str().unwrap_or_default()),
                examples.join(", ")
            )
            .unwrap();
        }
    }
    out.push('\n');
    out
}

#[test]
fn policy_reference_matches_the_schema() {
    check_generated(
        "docs/policy.md",
        &[
            ("policy-fields", render_policy_fields()),
            ("levels", render_levels()),
        ],
    );
}

/// The level table: every spelling, number and OTLP severity `records::Level` reads, by level.
fn render_levels() -> String {
    use verbosity_guard::records::Level;
    let mut out = String::from(
        "| level | text | number in a JSON record | OTLP `severityNumber` |\n|---|---|---|---|\n",
    );
    for level in Level::ALL {
        let spellings = Level::SPELLINGS
            .iter()
            .filter(|(l, _)| *l == level)
            .flat_map(|(_, s)| s.iter())
            .map(|s| code(&String::from_utf8_lossy(s)))
            .collect::<Vec<_>>()
            .join(" ");
        // Both mappings are closed `match`es over small numbers: these ranges hold every arm.
        let numbers = (-10..=1000)
            .filter(|&n| Level::from_number(n) == Some(level))
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let severities: Vec<i64> = (-10..=100)
            .filter(|&n| Level::from_otlp_severity(n) == Some(level))
            .collect();
        let (lo, hi) = (severities[0], severities[severities.len() - 1]);
        writeln!(
            out,
            "| {} | {spellings} | {numbers} | {lo}–{hi} |",
            code(level.as_str())
        )
        .unwrap();
    }
    out
}

// ---- docs/cli.md: every command's options, from clap

/// The options of one subcommand (or, `global`, of the root: those every subcommand takes): option,
/// environment variable, default, help.
fn render_cli(command: &clap::Command, global: bool) -> String {
    let mut out = String::new();
    if !global {
        let about = command
            .get_long_about()
            .or(command.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        writeln!(out, "\n{}", cell(&about)).unwrap();
    }
    let args: Vec<_> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .collect();
    if args.is_empty() {
        out.push_str("\nNo options.\n\n");
        return out;
    }
    out.push_str("\n| option | env | default | meaning |\n|---|---|---|---|\n");
    for arg in args {
        let takes_value = arg.get_action().takes_values();
        let repeated = matches!(arg.get_action(), clap::ArgAction::Append);
        // An enum's values (`text|json`), else the value's name as `--help` shows it.
        let values: Vec<_> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        let value = match arg.get_value_names().and_then(|names| names.first()) {
            _ if !values.is_empty() => values.join("|"),
            Some(name) => name.to_string(),
            None => arg.get_id().as_str().to_uppercase(),
        };
        let mut option = match arg.get_long() {
            Some(long) if takes_value => format!("--{long} <{value}>"),
            Some(long) => format!("--{long}"),
            None => format!("<{value}>"),
        };
        if repeated {
            option.push_str("...");
        }
        let env = arg
            .get_env()
            .map_or_else(|| "—".to_owned(), |e| code(&e.to_string_lossy()));
        let defaults: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy())
            .collect();
        let default = if !defaults.is_empty() {
            code(&defaults.join(","))
        } else if arg.is_required_set() {
            "required".to_owned()
        } else if !takes_value {
            "off".to_owned()
        } else {
            "—".to_owned()
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        writeln!(
            out,
            "| {} | {env} | {default} | {} |",
            cell(&code(&option)),
            cell(&help)
        )
        .unwrap();
    }
    out.push('\n');
    out
}

#[test]
fn cli_reference_matches_clap() {
    let root = Cli::command();
    let mut rendered = vec![("cli-global".to_owned(), render_cli(&root, true))];
    for sub in root.get_subcommands() {
        rendered.push((format!("cli-{}", sub.get_name()), render_cli(sub, false)));
    }
    check_generated("docs/cli.md", &rendered);
}

// ---- docs/metrics.md: every metric family, from metrics::FAMILIES

/// One row per family: name, type, labels, help.
fn render_metrics() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for family in FAMILIES {
        let labels: Vec<_> = family.labels.iter().map(|l| code(l)).collect();
        let labels = if labels.is_empty() {
            "—".to_owned()
        } else {
            labels.join(", ")
        };
        writeln!(
            out,
            "| {} | {} | {labels} | {} |",
            code(family.name),
            family.kind.as_str(),
            cell(family.help)
        )
        .unwrap();
    }
    out
}

#[test]
fn metrics_reference_matches_the_families() {
    check_generated("docs/metrics.md", &[("metrics", render_metrics())]);
}

// ---- links and runbooks

/// GitHub's anchor for a heading: lowercase, spaces to `-`, other punctuation removed.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a markdown file outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The anchors of a markdown file's headings (a repeated heading gets `-1`, `-2`, ...).
fn anchors(path: &Path) -> BTreeSet<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(&read(path)) {
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(&line[hashes..]);
        let n = seen.entry(base.clone()).or_default();
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of a line's inline links, `[text](target)`, leaving out code spans.
fn link_targets(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 1 {
            continue;
        }
        let mut rest = part;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            out.push(rest[..end].split_whitespace().next().unwrap_or_default());
            rest = &rest[end..];
        }
    }
    out
}

/// Why `file#fragment` (relative to `base`) does not resolve, if it does not.
/// The headings of each page, read once per page.
#[derive(Default)]
struct Anchors(BTreeMap<PathBuf, BTreeSet<String>>);

impl Anchors {
    fn of(&mut self, path: &Path) -> &BTreeSet<String> {
        self.0
            .entry(path.to_owned())
            .or_insert_with(|| anchors(path))
    }
}

fn broken(anchors: &mut Anchors, base: &Path, target: &str) -> Option<String> {
    let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
    let path = if file.is_empty() {
        base.to_owned()
    } else {
        base.parent()?.join(file)
    };
    if !path.exists() {
        return Some(format!("{} does not exist", relative(&path)));
    }
    if fragment.is_empty() || path.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let known = anchors.of(&path);
    (!known.contains(fragment)).then(|| format!("no heading #{fragment} in {}", relative(&path)))
}

fn markdown_pages() -> Vec<PathBuf> {
    let mut pages = vec![
        repo("README.md"),
        repo("ARCHITECTURE.md"),
        repo("examples/README.md"),
    ];
    pages.extend(files("docs", "md"));
    pages
}

#[test]
fn relative_links_name_existing_files_and_headings() {
    let (mut problems, mut checked, mut anchors) = (Vec::new(), 0, Anchors::default());
    for page in markdown_pages() {
        let text = read(&page);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                if let Some(why) = broken(&mut anchors, &page, target) {
                    problems.push(format!("{}:{n}: ({target}): {why}", relative(&page)));
                }
            }
        }
    }
    assert!(
        checked > 0,
        "no relative links found: the link scanner is broken"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

/// The page every `runbook_url` points into, as published at the rules' base URL.
const RUNBOOKS: &str = "docs/runbooks.md";

#[test]
fn every_alert_links_its_own_runbook_heading() {
    let path = "deploy/prometheus/alerts.yaml";
    let rules: Value =
        serde_saphyr::from_str(&read(&repo(path))).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut alerts = 0;
    let mut bases = BTreeSet::new();
    let runbooks = anchors(&repo(RUNBOOKS));
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: {alert} has no runbook_url annotation"));
            // Absolute, so that it opens from a notification: a published runbooks.md (the
            // base, set by deploy/prometheus/set-runbook-base.sh) and the alert's heading.
            let (base, fragment) = url
                .split_once('#')
                .unwrap_or_else(|| panic!("{path}: {alert}: runbook_url {url:?} names no heading"));
            assert!(
                base.starts_with("https://") || base.starts_with("http://"),
                "{path}: {alert}: runbook_url {url:?} is not an absolute URL"
            );
            assert!(
                base.ends_with("/runbooks.md") && !base.contains(char::is_whitespace),
                "{path}: {alert}: runbook_url {url:?}: the base must be where {RUNBOOKS} is \
                 published, ending in /runbooks.md"
            );
            bases.insert(base.to_owned());
            assert!(
                runbooks.contains(fragment),
                "{path}: {alert}: runbook_url {url:?}: no such heading in {RUNBOOKS}"
            );
            assert_eq!(
                fragment,
                anchor(alert),
                "{path}: {alert}: its runbook is another alert's"
            );
        }
    }
    assert!(alerts > 0, "{path}: no alerts found");
    assert_eq!(
        bases.len(),
        1,
        "{path}: every runbook_url has the same base (set-runbook-base.sh rewrites one): {bases:?}"
    );
}

#[test]
fn the_link_scanner_sees_links_and_headings_outside_code() {
    assert_eq!(
        link_targets("see [a](x.md#y), `[b](z.md)` and [c](https://e.com)"),
        ["x.md#y", "https://e.com"]
    );
    assert_eq!(
        anchor(" Hot reload: `SIGHUP` & files"),
        "hot-reload-sighup--files"
    );
    let text = "# A\n```\n# not a heading [x](y)\n```\ntext [l](m)\n";
    let lines: Vec<_> = prose_lines(text).into_iter().map(|(_, l)| l).collect();
    assert_eq!(lines, ["# A", "text [l](m)"]);
}
