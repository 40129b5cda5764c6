//! The layering in ARCHITECTURE.md holds in the code: every top-level module of `src/` is in
//! the `layers` table exactly once, and every `crate::` path in a module names a module on a
//! lower row. Unit tests (`tests.rs` files, `#[cfg(test)] mod tests` blocks) are exempt.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Each module's row in the table, 0 at the bottom.
fn layers(root: &Path) -> BTreeMap<String, usize> {
    let doc = fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    let rows: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut rank = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let (_, modules) = row
            .split_once(':')
            .unwrap_or_else(|| panic!("a layers row is `name: modules`: {row:?}"));
        for m in modules.split_whitespace() {
            let previous = rank.insert(m.to_owned(), rows.len() - 1 - i);
            assert!(
                previous.is_none(),
                "{m} is listed twice in the layers table"
            );
        }
    }
    rank
}

/// The top-level modules of `src/`, with their source files.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        // `x.rs` and `x/` are one module: their files go together.
        collect(&path, out.entry(name).or_default());
    }
    out
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            collect(&entry.unwrap().path(), files);
        }
    } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
        files.push(path.to_owned());
    }
}

/// The module names a source file reaches with `crate::name` (in code or doc links), unit
/// tests cut off.
fn imports(text: &str) -> Vec<String> {
    // An inline unit-test module; `mod tests;` (a tests.rs file, skipped) is not one.
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::{c, d}}`: the first name of each item at the top level.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        out.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rank = layers(root);
    let modules = modules(&root.join("src"));
    let mut problems = Vec::new();
    for name in modules.keys() {
        if !rank.contains_key(name) {
            problems.push(format!(
                "src/{name} is not in ARCHITECTURE.md's layers table"
            ));
        }
    }
    for name in rank.keys() {
        if !modules.contains_key(name) {
            problems.push(format!(
                "the layers table lists {name}, which src/ does not have"
            ));
        }
    }
    for (name, files) in &modules {
        let Some(&own) = rank.get(name) else { continue };
        for file in files {
            let text = fs::read_to_string(file).unwrap();
            for used in imports(&text) {
                let Some(&theirs) = rank.get(&used) else {
                    continue; // a macro (`crate::warn_limited!`) or `self`-like path, not a module
                };
                if used != *name && theirs >= own {
                    problems.push(format!(
                        "{} imports crate::{used}, which is not below {name} in ARCHITECTURE.md",
                        file.strip_prefix(root).unwrap_or(file).display()
                    ));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_grouped_and_nested_paths() {
    let found = imports(
        "#[cfg(test)]\nmod tests;\nuse crate::{policy, metrics::{Metrics, Kind}, route};\n/// [`x`](crate::proxy::Shared)\nfn f() { crate::warn_limited!(\"x\"); }\n#[cfg(test)]\nmod tests { use crate::app; }\n",
    );
    assert_eq!(
        found,
        ["policy", "metrics", "route", "proxy", "warn_limited"]
    );
}
