//! `verbosity-guard schema`: the printed JSON Schema accepts every shipped policy and refuses the
//! broken policies whose fault is one of shape or spelling (the rest only `check` can see).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::files;

fn printed_schema() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_verbosity-guard"))
        .arg("schema")
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("schema prints JSON")
}

fn yaml_as_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_shipped_policy_validates_against_the_printed_schema() {
    let schema = printed_schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let validator = jsonschema::validator_for(&schema).expect("a valid draft 7 schema");
    for file in files("policies", "yaml") {
        let policy = yaml_as_json(&file);
        let errors: Vec<String> = validator
            .iter_errors(&policy)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
}

#[test]
fn the_schema_refuses_what_it_can_see_is_wrong() {
    let validator = jsonschema::validator_for(&printed_schema()).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/invalid");
    for name in [
        "bad-byte-rate",
        "bad-format",
        "bad-level-rule",
        "bad-mode",
        "bad-rate",
        "bad-route-name",
        "bad-size",
        "bad-version",
        "bare-number",
        "missing-match",
        "unknown-field",
        "unknown-level",
        "zero-burst",
        "zero-timeout",
    ] {
        let policy = yaml_as_json(&dir.join(format!("{name}.yaml")));
        assert!(
            !validator.is_valid(&policy),
            "{name}.yaml should not validate"
        );
    }
}

#[test]
fn the_committed_schema_copy_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/policy.schema.json");
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == printed_schema(),
        "policies/policy.schema.json is stale: run `cargo run -- schema > policies/policy.schema.json`"
    );
}
