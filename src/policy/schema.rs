//! The JSON Schema of policy files, printed by `verbosity-guard schema` for editors and CI.
//!
//! It is derived from the [`raw`](super::raw) serde types the parser itself uses, so a field
//! cannot be added to the parser without appearing here, and each field's doc comment is its
//! description. The few types that deserialize by hand get their schema by hand below: the
//! unit strings (`16KiB`, `10/s`, `64KiB/s`, `30s`, `1%`) as strings with a pattern, and a level
//! rule as `keep`, `drop` or a map of limits.
//!
//! The schema checks shape, names, enums and unit syntax. The guard checks more than a schema
//! can say (a catch-all route last, unique names, a sample of at most 100%, a burst that is not
//! zero), so `verbosity-guard check` stays the authority; the patterns accept a little more than
//! the parser where the difference is a value rather than a spelling.
//!
//! Draft 7 is used because every editor's YAML and JSON language server understands it.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::raw::{RawLevelLimits, RawLevelRule, RawPolicy};
use crate::units::{ByteRate, ByteSize, Fraction, HumanDuration, Rate};

/// The policy file's JSON Schema (draft 7).
pub fn policy_schema() -> serde_json::Value {
    SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawPolicy>()
        .to_value()
}

const SIZE_SUFFIX: &str = "(B|KiB|MiB|GiB|kB|KB|MB|GB)";
const PERIOD: &str = "(s|sec|m|min|h|hour)";
/// A whole number greater than zero (leading zeros allowed, as `u64::from_str` allows them).
const POSITIVE: &str = "0*[1-9][0-9]*";

fn string_schema(description: &str, pattern: String, examples: &[&str]) -> Schema {
    json_schema!({
        "type": "string",
        "description": description,
        "pattern": pattern,
        "examples": examples,
    })
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "A number of bytes with a unit: B, KiB, MiB, GiB (powers of 1024) or kB/KB, MB, GB \
             (powers of 1000). Bare numbers are refused.",
            format!(r"^\s*[0-9]+\s*{SIZE_SUFFIX}\s*$"),
            &["512B", "16KiB", "1MiB", "10kB"],
        )
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "An amount greater than zero per period: per second (s, sec), minute (m, min) or \
             hour (h, hour).",
            format!(r"^\s*{POSITIVE}\s*/\s*{PERIOD}\s*$"),
            &["10/s", "600/m", "3600/h"],
        )
    }
}

impl JsonSchema for ByteRate {
    fn schema_name() -> Cow<'static, str> {
        "ByteRate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "A size greater than zero per period, e.g. bytes per second. Sizes as in `Size`; \
             periods s, m, h.",
            format!(r"^\s*{POSITIVE}\s*{SIZE_SUFFIX}\s*/\s*{PERIOD}\s*$"),
            &["64KiB/s", "50MiB/s", "1GiB/m"],
        )
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "A duration greater than zero in milliseconds (ms), seconds (s), minutes (m) or \
             hours (h).",
            format!(r"^\s*{POSITIVE}\s*(ms|s|m|h)\s*$"),
            &["250ms", "30s", "5m", "1h"],
        )
    }
}

impl JsonSchema for Fraction {
    fn schema_name() -> Cow<'static, str> {
        "Fraction".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "A share of at most one: a percentage from 0% to 100% or a ratio n/d with n <= d.",
            r"^\s*(([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*%|[0-9]+\s*/\s*[0-9]+)\s*$".to_owned(),
            &["1%", "0.5%", "1/100"],
        )
    }
}

impl JsonSchema for RawLevelRule {
    fn schema_name() -> Cow<'static, str> {
        "LevelRule".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let limits = generator.subschema_for::<RawLevelLimits>();
        json_schema!({
            "description": "`keep` every record of the level, `drop` every one, or limit them \
                            with a map of sample, rate, burst, per, bytes, bytes_burst.",
            "oneOf": [
                { "type": "string", "enum": ["keep", "drop"] },
                limits,
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use serde_json::{Value, json};

    use super::*;
    use crate::units::UnitError;

    fn validator(schema: &Value) -> jsonschema::Validator {
        jsonschema::validator_for(schema).expect("the schema is a valid draft 7 schema")
    }

    /// The schema of one definition, with the root's definitions so its `$ref`s resolve.
    fn definition(name: &str) -> Value {
        let root = policy_schema();
        let mut def = root["definitions"][name].clone();
        def["definitions"] = root["definitions"].clone();
        def["$schema"] = root["$schema"].clone();
        def
    }

    /// The pattern and the parser agree on spelling: every string the parser takes matches,
    /// and the strings it refuses for their spelling do not.
    fn agrees<T: FromStr<Err = UnitError>>(name: &str, good: &[&str], bad: &[&str]) {
        let v = validator(&definition(name));
        for s in good {
            assert!(T::from_str(s).is_ok(), "{name}: parser refuses {s:?}");
            assert!(v.is_valid(&json!(s)), "{name}: schema refuses {s:?}");
        }
        for s in bad {
            assert!(T::from_str(s).is_err(), "{name}: parser takes {s:?}");
            assert!(!v.is_valid(&json!(s)), "{name}: schema takes {s:?}");
        }
        assert!(
            !v.is_valid(&json!(1024)),
            "{name}: bare numbers are refused"
        );
    }

    #[test]
    fn unit_patterns_agree_with_the_parser() {
        agrees::<ByteSize>(
            "Size",
            &[
                "512B", "16KiB", " 1 MiB ", "2GiB", "10kB", "10KB", "5MB", "0B",
            ],
            &["12XB", "", "KiB", "1.5MiB", "-1B", "1024", "16kib"],
        );
        agrees::<Rate>(
            "Rate",
            &["10/s", "600/m", "7/h", "1 / sec", "5/min", "2/hour"],
            &["0/s", "10/d", "10s", "/s", "1.5/s", "10KiB/s"],
        );
        agrees::<ByteRate>(
            "ByteRate",
            &["64KiB/s", "50MiB/s", "1GiB/m", "1B/h"],
            &["0KiB/s", "64/s", "64KiB", "64KiB/d"],
        );
        agrees::<HumanDuration>(
            "Duration",
            &["250ms", "30s", "5m", "1h"],
            &["0s", "5", "1.5s", "5d", "ms"],
        );
        agrees::<Fraction>(
            "Fraction",
            &["1%", "0.5%", "100%", "0%", "1/100", "1/3", ".5%"],
            &["", "1", "x%", "-1%", "1/x"],
        );
    }

    #[test]
    fn fields_carry_their_doc_comments() {
        let schema = policy_schema();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
        assert_eq!(schema["title"], "verbosity-guard policy");
        assert_eq!(
            schema["additionalProperties"], false,
            "unknown fields are errors"
        );
        let route = &schema["definitions"]["Route"];
        assert!(
            route["properties"]["name"]["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("Route name")),
            "{route:#}"
        );
        assert_eq!(route["required"], json!(["name", "match"]));
        let records = &schema["definitions"]["Records"]["properties"];
        assert!(records["format"].to_string().contains("otlp-proto"));
    }

    #[test]
    fn level_rules_are_keep_drop_or_limits() {
        let v = validator(&definition("LevelRule"));
        for ok in [
            json!("keep"),
            json!("drop"),
            json!({ "rate": "50/s", "per": "client" }),
        ] {
            assert!(v.is_valid(&ok), "{ok}");
        }
        for bad in [
            json!("sample"),
            json!({ "rates": "50/s" }),
            json!({ "per": "vehicle" }),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
        }
    }
}
