//! The level of a JSON record as serde_json reads it: the oracle the NDJSON target holds the
//! lazy scanner (`records::json`) to.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use verbosity_guard::records::Level;

/// What serde_json finds in one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Not JSON to serde_json: no oracle.
    Unparsed,
    /// Some object in it has a key twice. Issue 16 makes a record with duplicate level keys
    /// malformed; until that lands the scanner takes the first and serde_json the last, so
    /// these lines are left out of the comparison (see the NDJSON target).
    DuplicateKeys,
    /// Valid JSON that is not an object: no level.
    NotObject,
    /// An object: the level at the path (`None`: absent or not a level), and how deeply the
    /// record nests (the top object is depth 1).
    Object { level: Option<Level>, depth: usize },
}

pub fn level(line: &[u8], path: &[Box<[u8]>]) -> Found {
    let depth = match serde_json::from_slice::<Shape>(line) {
        Ok(s) => s.depth,
        Err(e) if e.to_string().starts_with(DUPLICATE) => return Found::DuplicateKeys,
        Err(_) => return Found::Unparsed,
    };
    let Ok(top) = serde_json::from_slice::<&RawValue>(line) else {
        // Valid JSON that cannot be borrowed whole (never: a line has no escapes outside
        // strings); treat it as no oracle.
        return Found::Unparsed;
    };
    if !top.get().starts_with('{') {
        return Found::NotObject;
    }
    let mut value = top;
    for key in path {
        let Ok(object) = serde_json::from_str::<BTreeMap<String, &RawValue>>(value.get()) else {
            return Found::Object { level: None, depth };
        };
        let Some(v) = std::str::from_utf8(key).ok().and_then(|k| object.get(k)) else {
            return Found::Object { level: None, depth };
        };
        value = v;
    }
    Found::Object {
        level: scalar_level(value.get()),
        depth,
    }
}

/// A string is read with [`Level::from_text`]; a number written as an integer (no fraction, no
/// exponent) with [`Level::from_number`]; anything else is no level.
fn scalar_level(raw: &str) -> Option<Level> {
    match raw.as_bytes().first()? {
        b'"' => {
            let text: String = serde_json::from_str(raw).ok()?;
            Level::from_text(text.as_bytes())
        }
        b'-' | b'0'..=b'9' if !raw.contains(['.', 'e', 'E']) => {
            raw.parse().ok().and_then(Level::from_number)
        }
        _ => None,
    }
}

const DUPLICATE: &str = "duplicate key";

/// Any JSON value, remembered only as its nesting depth; an object with a key twice is an
/// error.
struct Shape {
    depth: usize,
}

impl<'de> de::Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape { depth: 0 })
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape { depth: 0 })
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape { depth: 0 })
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape { depth: 0 })
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape { depth: 0 })
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape { depth: 0 })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut depth = 0;
        while let Some(s) = seq.next_element::<Shape>()? {
            depth = depth.max(s.depth);
        }
        Ok(Shape { depth: depth + 1 })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut keys = HashSet::new();
        let mut depth = 0;
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            depth = depth.max(map.next_value::<Shape>()?.depth);
        }
        Ok(Shape { depth: depth + 1 })
    }
}
