//! OTLP JSON: `resourceLogs[].scopeLogs[].logRecords[]`, records kept as raw JSON.
//!
//! serde_json walks the envelopes and hands every other value out as a borrowed `RawValue`, a
//! slice of the body: each log record, and each envelope field the guard does not look into
//! (`resource`, `scope`, `schemaUrl`, unknown ones), is forwarded byte for byte and in order.
//! The batch keeps only offsets into the body, so it does not borrow it. Keys are accepted in
//! lowerCamelCase and in the proto's snake_case (`resourceLogs`, `resource_logs`), as proto3
//! JSON parsers do. Records are classified with the lazy scanner; serde_json has already
//! checked that each is valid JSON, within its recursion limit.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{trace_hash_hex, write_json_string};
use crate::records::json::{self as scan, Classifier, Malformed, Scalar};
use crate::records::{Level, NotFormat, Record, SampleBy, sample};

const NOT_OTLP_JSON: NotFormat = NotFormat("not an OTLP JSON ExportLogsServiceRequest");

/// A parsed OTLP JSON batch: the request object's shape, as offsets into the body.
pub struct JsonBatch {
    root: Object,
}

/// A JSON object's members, in order.
struct Object {
    members: Vec<Member>,
}

struct Member {
    key: Key,
    value: Value,
}

enum Key {
    /// The key as written, between its quotes.
    Span(u32, u32),
    /// A key written with escapes, unescaped (rare: re-escaped when written).
    Owned(Box<str>),
}

enum Value {
    /// Any value the guard does not look into, as written.
    Raw(u32, u32),
    /// `null` where a list of envelopes or records was expected (an empty list in proto3 JSON).
    Null,
    /// `resourceLogs` or `scopeLogs`.
    Envelopes(Vec<Object>),
    /// `logRecords`: `count` records of the batch from index `first`.
    Records { first: usize, count: usize },
}

/// Which envelope an object is, and so which of its keys holds the next level down.
#[derive(Clone, Copy)]
enum Layer {
    Request,
    ResourceLogs,
    ScopeLogs,
}

/// What a list-valued key holds.
#[derive(Clone, Copy)]
enum List {
    Envelopes(Layer),
    Records,
}

impl Layer {
    fn list(self, key: &str) -> Option<List> {
        match (self, key) {
            (Layer::Request, "resourceLogs" | "resource_logs") => {
                Some(List::Envelopes(Layer::ResourceLogs))
            }
            (Layer::ResourceLogs, "scopeLogs" | "scope_logs") => {
                Some(List::Envelopes(Layer::ScopeLogs))
            }
            (Layer::ScopeLogs, "logRecords" | "log_records") => Some(List::Records),
            _ => None,
        }
    }
}

/// Parses `body` as an OTLP JSON `ExportLogsServiceRequest` and classifies its records into
/// `out`, in order.
pub fn parse(
    body: &[u8],
    c: &Classifier<'_>,
    out: &mut Vec<Record>,
) -> Result<JsonBatch, NotFormat> {
    let mut ctx = Ctx { body, c, out };
    let mut de = serde_json::Deserializer::from_slice(body);
    let root = ObjectSeed {
        ctx: &mut ctx,
        layer: Layer::Request,
    }
    .deserialize(&mut de)
    .and_then(|root| de.end().map(|()| root))
    .map_err(|_| NOT_OTLP_JSON)?;
    Ok(JsonBatch { root })
}

/// What the visitors share: the body (to turn borrowed slices into offsets) and the records.
struct Ctx<'a> {
    body: &'a [u8],
    c: &'a Classifier<'a>,
    out: &'a mut Vec<Record>,
}

impl Ctx<'_> {
    /// Where `s`, a slice serde_json borrowed from the body, lies in it.
    fn span(&self, s: &[u8]) -> Option<(u32, u32)> {
        let start = (s.as_ptr() as usize).checked_sub(self.body.as_ptr() as usize)?;
        let end = start
            .checked_add(s.len())
            .filter(|&e| e <= self.body.len())?;
        Some((scan::offset(start).ok()?, scan::offset(end).ok()?))
    }

    fn raw_span<E: de::Error>(&self, raw: &RawValue) -> Result<(u32, u32), E> {
        self.span(raw.get().as_bytes())
            .ok_or_else(|| E::custom("value outside the body"))
    }

    fn key(&self, key: Cow<'_, str>) -> Key {
        match key {
            Cow::Borrowed(k) => match self.span(k.as_bytes()) {
                Some((s, e)) => Key::Span(s, e),
                None => Key::Owned(k.into()),
            },
            Cow::Owned(k) => Key::Owned(k.into_boxed_str()),
        }
    }
}

/// An object key, borrowed from the body unless it had escapes.
struct KeyStr<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for KeyStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyStr<'de>, E> {
                Ok(KeyStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One envelope object (or the request itself).
struct ObjectSeed<'s, 'a> {
    ctx: &'s mut Ctx<'a>,
    layer: Layer,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, '_> {
    type Value = Object;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Object, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_, '_> {
    type Value = Object;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an OTLP envelope object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        let mut members = Vec::new();
        while let Some(KeyStr(key)) = map.next_key()? {
            let value = match self.layer.list(&key) {
                Some(list) => map.next_value_seed(ListSeed {
                    ctx: &mut *self.ctx,
                    list,
                })?,
                None => {
                    let raw: &'de RawValue = map.next_value()?;
                    let (s, e) = self.ctx.raw_span(raw)?;
                    Value::Raw(s, e)
                }
            };
            let key = self.ctx.key(key);
            members.push(Member { key, value });
        }
        Ok(Object { members })
    }
}

/// A list of envelopes or of records, or `null`.
struct ListSeed<'s, 'a> {
    ctx: &'s mut Ctx<'a>,
    list: List,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of OTLP envelopes or log records")
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        match self.list {
            List::Envelopes(layer) => {
                let mut objects = Vec::new();
                while let Some(o) = seq.next_element_seed(ObjectSeed {
                    ctx: &mut *self.ctx,
                    layer,
                })? {
                    objects.push(o);
                }
                Ok(Value::Envelopes(objects))
            }
            List::Records => {
                let first = self.ctx.out.len();
                while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                    let (s, e) = self.ctx.raw_span(raw)?;
                    let record = classify(self.ctx.c, raw.get().as_bytes(), s, e);
                    self.ctx.out.push(record);
                }
                Ok(Value::Records {
                    first,
                    count: self.ctx.out.len() - first,
                })
            }
        }
    }
}

const SEVERITY_NUMBER: [&[u8]; 2] = [b"severityNumber", b"severity_number"];
const SEVERITY_TEXT: [&[u8]; 2] = [b"severityText", b"severity_text"];
const TRACE_ID: [&[u8]; 2] = [b"traceId", b"trace_id"];

/// The record `rec` (at `start..end` in the body), already checked to be valid JSON.
fn classify(c: &Classifier<'_>, rec: &[u8], start: u32, end: u32) -> Record {
    let trimmed = scan::trim(rec);
    let (level, malformed) = match level(trimmed) {
        Ok(level) => (level, false),
        Err(Malformed) => (None, true),
    };
    let level = level.unwrap_or(c.unknown);
    let hash = match (c.hashes[level.index()], c.sample_by) {
        (false, _) => 0,
        (true, SampleBy::Record) => sample::hash(rec),
        (true, SampleBy::Field(_)) => match member(trimmed, &TRACE_ID) {
            Ok(Some(Scalar::Str { raw, .. })) => trace_hash_hex(raw),
            _ => None,
        }
        .unwrap_or_else(|| sample::hash(rec)),
    };
    Record {
        start,
        end,
        level,
        malformed,
        hash,
        keep: false,
    }
}

/// `severityNumber` (a number, or an enum name as proto3 JSON allows), else `severityText`.
/// `Err` when the record is not an object (or nests deeper than the scanner follows).
fn level(rec: &[u8]) -> Result<Option<Level>, Malformed> {
    let number = match member(rec, &SEVERITY_NUMBER)? {
        Some(Scalar::Bare(n)) => parse_i64(n),
        Some(Scalar::Str {
            raw,
            escaped: false,
        }) => parse_i64(raw).or_else(|| severity_name(raw)),
        _ => None,
    };
    if let Some(level) = number.and_then(Level::from_otlp_severity) {
        return Ok(Some(level));
    }
    Ok(match member(rec, &SEVERITY_TEXT)? {
        Some(Scalar::Str {
            raw,
            escaped: false,
        }) => Level::from_text(raw),
        Some(Scalar::Str { raw, escaped: true }) => scan::unescaped_level(raw),
        _ => None,
    })
}

/// The first of `names` present among the record's top-level keys.
fn member<'a>(rec: &'a [u8], names: &[&[u8]]) -> Result<Option<Scalar<'a>>, Malformed> {
    for name in names {
        if let Some(found) = scan::lookup(rec, 0, &[*name])? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn parse_i64(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A `SeverityNumber` enum name (`SEVERITY_NUMBER_WARN2`) as its number.
fn severity_name(name: &[u8]) -> Option<i64> {
    let rest = name.strip_prefix(b"SEVERITY_NUMBER_")?;
    if rest == b"UNSPECIFIED" {
        return Some(0);
    }
    let (base, step) = match rest.split_last() {
        Some((&d @ b'2'..=b'4', base)) => (base, i64::from(d - b'1')),
        _ => (rest, 0),
    };
    let level = Level::ALL
        .into_iter()
        .find(|l| l.as_str().as_bytes().eq_ignore_ascii_case(base))?;
    Some(i64::from(level.otlp_severity()) + step)
}

impl JsonBatch {
    /// The request with only the records whose `keep` is set, each as written, and without the
    /// envelopes that became empty. `body` is the body this batch was parsed from.
    pub fn rewrite(&self, body: &[u8], records: &[Record], out: &mut Vec<u8>) {
        write_object(&self.root, body, records, out);
    }
}

/// Writes `o` and returns how many records it held and how many of them it kept.
fn write_object(o: &Object, body: &[u8], records: &[Record], out: &mut Vec<u8>) -> (usize, usize) {
    let raw = |s: u32, e: u32| body.get(s as usize..e as usize).unwrap_or_default();
    let (mut held, mut kept) = (0, 0);
    out.push(b'{');
    for (i, m) in o.members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match &m.key {
            Key::Span(s, e) => {
                out.push(b'"');
                out.extend_from_slice(raw(*s, *e));
                out.push(b'"');
            }
            Key::Owned(k) => write_json_string(out, k),
        }
        out.push(b':');
        match &m.value {
            Value::Raw(s, e) => out.extend_from_slice(raw(*s, *e)),
            Value::Null => out.extend_from_slice(b"null"),
            Value::Records { first, count } => {
                let recs = records.get(*first..first + count).unwrap_or_default();
                held += recs.len();
                out.push(b'[');
                for (j, r) in recs.iter().filter(|r| r.keep).enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(raw(r.start, r.end));
                    kept += 1;
                }
                out.push(b']');
            }
            Value::Envelopes(objects) => {
                out.push(b'[');
                let mut written = 0;
                for o in objects {
                    let mark = out.len();
                    if written > 0 {
                        out.push(b',');
                    }
                    let (h, k) = write_object(o, body, records, out);
                    held += h;
                    kept += k;
                    if h > 0 && k == 0 {
                        out.truncate(mark);
                    } else {
                        written += 1;
                    }
                }
                out.push(b']');
            }
        }
    }
    out.push(b'}');
    (held, kept)
}
