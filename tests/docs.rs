//! The documentation checked against the code.
//!
//! The policy, CLI and metrics references in `docs/` hold blocks generated from the code, between
//! `<!-- generated:NAME begin -->` and `<!-- generated:NAME end -->`. Each test here renders its
//! page's blocks and fails on any difference; with `VERBOSITY_GUARD_UPDATE_DOCS=1` set it
//! rewrites the blocks in place instead. The prose around the blocks is written by hand.
//!
//! Links are checked too: every relative link in `README.md` and `docs/*.md` names a file that
//! exists (and a heading in it, when it has an anchor), and every alert in
//! `deploy/prometheus/alerts.yaml` names its runbook's heading.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_json::Value;
use verbosity_guard::cli::Cli;
use verbosity_guard::metrics::FAMILIES;
use verbosity_guard::policy::schema::policy_schema;

const UPDATE_VAR: &str = "VERBOSITY_GUARD_UPDATE_DOCS";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

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
fn check_generated(page: &str, blocks: &[(&str, String)]) {
    let path = repo(page);
    let text = read(&path);
    let mut updated = text.clone();
    let mut stale = Vec::new();
    for (name, rendered) in blocks {
        let range = block_range(page, &text, name);
        let current = &text[range.clone()];
        if current != rendered {
            let first_line = text[..range.start].lines().count() + 1;
            stale.push(first_difference(page, name, first_line, current, rendered));
            let range = block_range(page, &updated, name);
            updated.replace_range(range, rendered);
        }
    }
    let unknown: Vec<_> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("<!-- generated:")?
                .strip_suffix(" begin -->")
        })
        .filter(|name| !blocks.iter().any(|(n, _)| n == name))
        .collect();
    assert!(
        unknown.is_empty(),
        "{page}: unknown generated blocks {unknown:?}"
    );
    if stale.is_empty() {
        return;
    }
    if std::env::var_os(UPDATE_VAR).is_some() {
        std::fs::write(&path, updated).unwrap_or_else(|e| panic!("{page}: {e}"));
        eprintln!("{page}: regenerated {} block(s)", stale.len());
    } else {
        panic!(
            "{}\nrun `{UPDATE_VAR}=1 cargo test --test docs` to regenerate",
            stale.join("\n")
        );
    }
}

/// Where a block differs from its rendering: the first line that is not the same.
fn first_difference(
    page: &str,
    name: &str,
    first_line: usize,
    current: &str,
    rendered: &str,
) -> String {
    let mut cur = current.lines();
    let mut new = rendered.lines();
    for n in first_line.. {
        match (cur.next(), new.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => {
                return format!("{page}:{n}: generated block `{name}` differs in its last newline");
            }
            (a, b) => {
                return format!(
                    "{page}:{n}: generated block `{name}` is out of date\n  in the file:   {}\n  from the code: {}",
                    a.unwrap_or("(end of block)"),
                    b.unwrap_or("(end of block)"),
                );
            }
        }
    }
    unreachable!()
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

/// One table per object of the policy file (field path, type, default, description), then the
/// unit types.
fn render_policy_fields() -> String {
    let schema = policy_schema();
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
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
        out.push_str("| field | type | default | description |\n|---|---|---|---|\n");
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
            let default = match field_schema.get("default") {
                Some(value) => code(&value.to_string()),
                None if required.contains(field.as_str()) => "required".to_owned(),
                None => String::new(),
            };
            let description = field_schema["description"].as_str().unwrap_or_default();
            writeln!(
                out,
                "| {} | {} | {default} | {} |",
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
        &[("policy-fields", render_policy_fields())],
    );
}

// ---- docs/cli.md: every command's options, from clap

/// The options of one subcommand (or, for `global`, those every subcommand takes): option,
/// environment variable, default, help.
fn render_cli(name: &str) -> String {
    let root = Cli::command();
    let command = if name == "global" {
        &root
    } else {
        root.find_subcommand(name)
            .unwrap_or_else(|| panic!("no subcommand {name}"))
    };
    let mut out = String::new();
    if name != "global" {
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
    let mut names = vec!["global".to_owned()];
    names.extend(
        Cli::command()
            .get_subcommands()
            .map(|s| s.get_name().to_owned()),
    );
    let blocks: Vec<_> = names
        .iter()
        .map(|n| (format!("cli-{n}"), render_cli(n)))
        .collect();
    let blocks: Vec<_> = blocks
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    check_generated("docs/cli.md", &blocks);
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
fn broken(base: &Path, target: &str) -> Option<String> {
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
    let known = anchors(&path);
    (!known.contains(fragment)).then(|| format!("no heading #{fragment} in {}", relative(&path)))
}

fn markdown_pages() -> Vec<PathBuf> {
    let mut pages = vec![repo("README.md"), repo("ARCHITECTURE.md")];
    let docs = std::fs::read_dir(repo("docs")).expect("docs/");
    let mut docs: Vec<_> = docs
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

#[test]
fn relative_links_name_existing_files_and_headings() {
    let mut problems = Vec::new();
    for page in markdown_pages() {
        let text = read(&page);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                if let Some(why) = broken(&page, target) {
                    problems.push(format!("{}:{n}: ({target}): {why}", relative(&page)));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_alert_links_its_own_runbook_heading() {
    let path = "deploy/prometheus/alerts.yaml";
    let rules: Value =
        serde_saphyr::from_str(&read(&repo(path))).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut alerts = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let runbook = rule["annotations"]["runbook"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: {alert} has no runbook annotation"));
            let (file, fragment) = runbook
                .split_once('#')
                .unwrap_or_else(|| panic!("{path}: {alert}: runbook {runbook:?} names no heading"));
            // Relative to the repository's root, where the rules' readers start.
            let page = repo(file);
            assert!(
                page.is_file(),
                "{path}: {alert}: runbook {runbook:?}: no file {file}"
            );
            assert!(
                anchors(&page).contains(fragment),
                "{path}: {alert}: runbook {runbook:?}: no such heading in {file}"
            );
            assert_eq!(
                fragment,
                anchor(alert),
                "{path}: {alert}: its runbook is another alert's"
            );
        }
    }
    assert!(alerts > 0, "{path}: no alerts found");
}

/// The level table in docs/policy.md is a copy of `records::Level`'s mapping: every spelling it
/// lists maps to its row's level, and it lists every number and OTLP severity the code maps.
#[test]
fn level_table_matches_the_code() {
    use verbosity_guard::records::Level;
    let page = std::fs::read_to_string(repo("docs/policy.md")).expect("docs/policy.md");
    let rows: Vec<Vec<&str>> = page
        .lines()
        .filter(|l| l.starts_with("| `") && l.matches('|').count() == 5)
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .filter(|cells: &Vec<&str>| {
            Level::parse_name(cells[0].trim_matches('`')).is_some() && cells[3].contains('–')
        })
        .collect();
    assert_eq!(
        rows.len(),
        Level::COUNT,
        "one row per level in docs/policy.md"
    );
    let (mut numbers, mut severities) = (Vec::new(), Vec::new());
    for cells in &rows {
        let level = Level::parse_name(cells[0].trim_matches('`'));
        for text in cells[1].split_whitespace() {
            let text = text.trim_matches('`');
            assert_eq!(Level::from_text(text.as_bytes()), level, "text {text:?}");
        }
        for n in cells[2]
            .split(',')
            .map(|n| n.trim().parse::<i64>().unwrap())
        {
            assert_eq!(Level::from_number(n), level, "number {n}");
            numbers.push(n);
        }
        let (lo, hi) = cells[3].split_once('–').unwrap();
        for n in lo.trim().parse::<i64>().unwrap()..=hi.trim().parse::<i64>().unwrap() {
            assert_eq!(Level::from_otlp_severity(n), level, "severity {n}");
            severities.push(n);
        }
    }
    for n in -10..=100 {
        let listed = numbers.contains(&n);
        assert_eq!(Level::from_number(n).is_some(), listed, "number {n}");
        let listed = severities.contains(&n);
        assert_eq!(
            Level::from_otlp_severity(n).is_some(),
            listed,
            "severity {n}"
        );
    }
}
