//! A lazy JSON scanner: finds one field of a record without parsing the rest.
//!
//! A telemetry record is a few hundred bytes of which the guard needs one value, the level.
//! Parsing the whole record (serde_json into a borrowed struct) runs at ~0.45 GB/s; walking the
//! top-level keys and skipping values runs several times faster, because strings are skipped
//! with `memchr` and nothing is decoded or allocated. The scanner understands JSON's structure
//! (strings, escapes, nesting), so a `"level"` inside a string or a nested object is never
//! taken for the record's level. It does not validate what it skips: numbers and literals are
//! taken as runs of bytes and bracket kinds are not paired. Those records reach the upstream
//! byte for byte, as sent, and the upstream's parser judges them.

use memchr::memchr2;

use super::{Level, Record, SampleBy, sample};

/// Most levels of nesting the scanner follows; deeper documents are malformed.
pub const MAX_DEPTH: usize = 64;

/// The input is not the JSON the scanner expected here. Deliberately carries no detail: the
/// caller knows which record it was scanning and reports that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A scalar found at a field path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// The raw bytes between the quotes; `escaped` when they contain a backslash.
    Str { raw: &'a [u8], escaped: bool },
    /// A number or literal (`true`, `null`, ...) as written.
    Bare(&'a [u8]),
    /// An object or array.
    Container,
}

#[inline]
fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = buf.get(i) {
        i += 1;
    }
    i
}

/// `i` is just past an opening quote; returns the index of the closing quote.
#[inline]
fn string_end(buf: &[u8], mut i: usize) -> Result<usize, Malformed> {
    loop {
        let at = i + memchr2(b'"', b'\\', buf.get(i..).ok_or(Malformed)?).ok_or(Malformed)?;
        if buf[at] == b'"' {
            return Ok(at);
        }
        i = at + 2;
    }
}

/// `i` is at the first byte of a value; returns the index just past it.
pub fn skip_value(buf: &[u8], i: usize) -> Result<usize, Malformed> {
    match buf.get(i) {
        Some(b'"') => Ok(string_end(buf, i + 1)? + 1),
        Some(b'{' | b'[') => skip_container(buf, i),
        Some(_) => {
            let mut j = i;
            while let Some(&b) = buf.get(j) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            if j == i { Err(Malformed) } else { Ok(j) }
        }
        None => Err(Malformed),
    }
}

/// `i` is at `{` or `[`; returns the index past the matching close, following at most
/// [`MAX_DEPTH`] levels.
fn skip_container(buf: &[u8], mut i: usize) -> Result<usize, Malformed> {
    let mut depth = 0usize;
    while let Some(&b) = buf.get(i) {
        match b {
            b'"' => i = string_end(buf, i + 1)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Malformed);
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(Malformed)
}

/// Looks up `path` (one key per nesting level) in the object that starts at `buf[i]`.
/// `Ok(None)` when a key on the path is absent or an intermediate value is not an object.
///
/// A key on the path that appears twice in its object makes the document malformed: parsers
/// disagree on which one counts (most take the last), so first-wins would let a record pass
/// for a level the upstream does not read. Finding the key therefore does not stop the walk:
/// the rest of the object's keys are skipped over (strings by `memchr`) to make sure. An
/// escaped key (`"lev\u0065l"`) is decoded to compare it; unescaped keys compare as bytes.
pub fn lookup<'a, K: AsRef<[u8]>>(
    buf: &'a [u8],
    mut i: usize,
    path: &[K],
) -> Result<Option<Scalar<'a>>, Malformed> {
    let Some((want, rest)) = path.split_first() else {
        return Ok(None);
    };
    let want = want.as_ref();
    if buf.get(i) != Some(&b'{') {
        return Err(Malformed);
    }
    i = skip_ws(buf, i + 1);
    if buf.get(i) == Some(&b'}') {
        return Ok(None);
    }
    let mut found = None;
    loop {
        if buf.get(i) != Some(&b'"') {
            return Err(Malformed);
        }
        let key_end = string_end(buf, i + 1)?;
        let key = &buf[i + 1..key_end];
        i = skip_ws(buf, key_end + 1);
        if buf.get(i) != Some(&b':') {
            return Err(Malformed);
        }
        i = skip_ws(buf, i + 1);
        let end = if key_is(key, want) {
            if found.is_some() {
                return Err(Malformed);
            }
            let (value, end) = value_at(buf, i, rest)?;
            found = Some(value);
            end
        } else {
            skip_value(buf, i)?
        };
        i = skip_ws(buf, end);
        match buf.get(i) {
            Some(b',') => i = skip_ws(buf, i + 1),
            Some(b'}') => return Ok(found.flatten()),
            _ => return Err(Malformed),
        }
    }
}

/// The value at `buf[i]` of a key on the path (`rest` is what is left of the path), and the
/// index just past it.
fn value_at<'a, K: AsRef<[u8]>>(
    buf: &'a [u8],
    i: usize,
    rest: &[K],
) -> Result<(Option<Scalar<'a>>, usize), Malformed> {
    let end = skip_value(buf, i)?;
    let value = match (rest.is_empty(), buf.get(i)) {
        (false, Some(b'{')) => lookup(buf, i, rest)?,
        (false, _) => None,
        (true, Some(b'"')) => {
            let raw = &buf[i + 1..end - 1];
            Some(Scalar::Str {
                raw,
                escaped: raw.contains(&b'\\'),
            })
        }
        (true, Some(b'{' | b'[')) => Some(Scalar::Container),
        (true, _) => Some(Scalar::Bare(&buf[i..end])),
    };
    Ok((value, end))
}

/// Whether the raw key `key` (between its quotes) names `want`. An escaped key is decoded
/// (allocating, the rare case); one too long to decode to `want` (an escape is at most six
/// bytes per byte of `want`) is not.
fn key_is(key: &[u8], want: &[u8]) -> bool {
    if key == want {
        return true;
    }
    if !key.contains(&b'\\') || key.len() > 6 * want.len() {
        return false;
    }
    unescape(key).is_some_and(|k| k.as_bytes() == want)
}

/// The text of a JSON string written as `raw` (between its quotes); `None` if it is not a
/// valid string.
fn unescape(raw: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// Splits a JSON array into its elements' byte ranges, in order, into `out`. The whole input
/// must be one array (surrounding whitespace allowed).
pub fn split_array(buf: &[u8], out: &mut Vec<(u32, u32)>) -> Result<(), Malformed> {
    let mut i = skip_ws(buf, 0);
    if buf.get(i) != Some(&b'[') {
        return Err(Malformed);
    }
    i = skip_ws(buf, i + 1);
    if buf.get(i) == Some(&b']') {
        return trailing_ws_only(buf, i + 1);
    }
    loop {
        let end = skip_value(buf, i)?;
        out.push((offset(i)?, offset(end)?));
        i = skip_ws(buf, end);
        match buf.get(i) {
            Some(b',') => i = skip_ws(buf, i + 1),
            Some(b']') => return trailing_ws_only(buf, i + 1),
            _ => return Err(Malformed),
        }
    }
}

fn trailing_ws_only(buf: &[u8], i: usize) -> Result<(), Malformed> {
    if skip_ws(buf, i) == buf.len() {
        Ok(())
    } else {
        Err(Malformed)
    }
}

/// Batches are bounded by `max_body`, far below 4 GiB; a larger offset is refused, not wrapped.
pub fn offset(i: usize) -> Result<u32, Malformed> {
    u32::try_from(i).map_err(|_| Malformed)
}

/// Trims JSON whitespace from both ends.
pub fn trim(buf: &[u8]) -> &[u8] {
    let start = skip_ws(buf, 0);
    let mut end = buf.len();
    while end > start && matches!(buf[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    &buf[start..end]
}

/// Classifies JSON records (NDJSON lines, array elements) under one route's `records` rules.
pub struct Classifier<'p> {
    pub level_field: &'p [Box<[u8]>],
    pub unknown: Level,
    /// Levels whose records need a sampling hash.
    pub hashes: [bool; Level::COUNT],
    pub sample_by: &'p SampleBy,
}

impl Classifier<'_> {
    /// The record at `body[start..end]`. A record that cannot be read gets the unknown level
    /// and is marked malformed; it is never an error.
    pub fn classify(&self, body: &[u8], start: u32, end: u32) -> Record {
        let rec = &body[start as usize..end as usize];
        let trimmed = trim(rec);
        // The scanner stops at the level; a record must also close where it ends, which
        // catches the usual damage (a truncated line) without validating all of it.
        let found = match trimmed.last() {
            Some(b'}') => lookup(trimmed, 0, self.level_field),
            _ => Err(Malformed),
        };
        let (level, malformed) = match found {
            Ok(Some(Scalar::Str {
                raw,
                escaped: false,
            })) => (Level::from_text(raw), false),
            Ok(Some(Scalar::Str { raw, escaped: true })) => (unescaped_level(raw), false),
            Ok(Some(Scalar::Bare(n))) => (
                std::str::from_utf8(n)
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .and_then(Level::from_number),
                false,
            ),
            Ok(Some(Scalar::Container) | None) => (None, false),
            Err(Malformed) => (None, true),
        };
        let level = level.unwrap_or(self.unknown);
        let hash = match (self.hashes[level.index()], self.sample_by) {
            (false, _) => 0,
            (true, SampleBy::Record) => sample::hash(rec),
            (true, SampleBy::Field(path)) => match lookup(trimmed, 0, path) {
                Ok(Some(Scalar::Str { raw, .. } | Scalar::Bare(raw))) => sample::hash(raw),
                _ => sample::hash(rec),
            },
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
}

/// A level written with escapes (`"w\u0061rn"`): rare, so decoding it may allocate. The whole
/// string is decoded, however long: spaces around a level are trimmed, and may be escaped too.
pub(super) fn unescaped_level(raw: &[u8]) -> Option<Level> {
    Level::from_text(unescape(raw)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<Box<[u8]>> {
        p.split('.').map(|s| s.as_bytes().into()).collect()
    }

    fn find<'a>(rec: &'a str, p: &str) -> Result<Option<Scalar<'a>>, Malformed> {
        lookup(rec.as_bytes(), 0, &path(p))
    }

    fn s(raw: &str) -> Option<Scalar<'_>> {
        Some(Scalar::Str {
            raw: raw.as_bytes(),
            escaped: raw.contains('\\'),
        })
    }

    #[test]
    fn finds_top_level_and_nested_fields() {
        assert_eq!(
            find(r#"{"level":"warn","msg":"x"}"#, "level"),
            Ok(s("warn"))
        );
        assert_eq!(
            find(r#"{ "ts" : 1 , "level" : "info" }"#, "level"),
            Ok(s("info"))
        );
        assert_eq!(
            find(r#"{"log":{"level":"error"},"level":"debug"}"#, "log.level"),
            Ok(s("error"))
        );
        assert_eq!(
            find(r#"{"severity":3}"#, "severity"),
            Ok(Some(Scalar::Bare(b"3")))
        );
        assert_eq!(
            find(r#"{"level":{"x":1}}"#, "level"),
            Ok(Some(Scalar::Container))
        );
        assert_eq!(find(r#"{}"#, "level"), Ok(None));
        assert_eq!(find(r#"{"lvl":"warn"}"#, "level"), Ok(None));
        assert_eq!(find(r#"{"log":"flat"}"#, "log.level"), Ok(None));
    }

    #[test]
    fn never_takes_a_level_from_a_string_or_a_nested_object() {
        let rec = r#"{"msg":"\"level\":\"error\"","ctx":{"level":"fatal"},"arr":[{"level":"error"}],"level":"debug"}"#;
        assert_eq!(find(rec, "level"), Ok(s("debug")));
        let rec = r#"{"msg":"level","ctx":{"level":"fatal"}}"#;
        assert_eq!(find(rec, "level"), Ok(None));
        let rec = r#"{"msg":"a \\","level":"warn"}"#;
        assert_eq!(find(rec, "level"), Ok(s("warn")));
    }

    /// Found by the `batch_ndjson` fuzz target's differential check: serde_json (and so the
    /// upstream) reads an escaped key as its text, the scanner did not, and a record's level
    /// went unseen.
    #[test]
    fn escaped_keys_are_read_as_their_text() {
        assert_eq!(find(r#"{"lev\u0065l":"error"}"#, "level"), Ok(s("error")));
        assert_eq!(
            find(r#"{"\u006cevel":1,"x":2}"#, "level"),
            Ok(Some(Scalar::Bare(b"1")))
        );
        assert_eq!(
            find(r#"{"log":{"\u006c\u0065vel":"warn"}}"#, "log.level"),
            Ok(s("warn"))
        );
        // Escapes of other text, or broken escapes, are not the key.
        assert_eq!(find(r#"{"lev\u0065ls":"error"}"#, "level"), Ok(None));
        assert_eq!(find(r#"{"lev\x65l":"error"}"#, "level"), Ok(None));
    }

    /// Found next to it: a level written with escapes was read only up to 64 bytes, so
    /// `"\u0077\u0061\u0072\u006e"` followed by escaped spaces was no level to the guard
    /// and `warn` to serde_json.
    #[test]
    fn long_escaped_levels_are_decoded_whole() {
        let raw = format!("\\u0077\\u0061\\u0072\\u006e{}", "\\u0020".repeat(20));
        assert_eq!(unescaped_level(raw.as_bytes()), Some(Level::Warn));
        assert_eq!(unescaped_level(br"w\u0061rn"), Some(Level::Warn));
        assert_eq!(unescaped_level(br"\ud800"), None);
    }

    #[test]
    fn a_key_of_the_path_twice_is_malformed_never_first_wins() {
        for (rec, path) in [
            (r#"{"level":"error","level":"trace"}"#, "level"),
            (r#"{"level":"error","msg":"x","level":"error"}"#, "level"),
            (r#"{"level":"error","lev\u0065l":"trace"}"#, "level"),
            (r#"{"lev\u0065l":"trace","level":"error"}"#, "level"),
            (r#"{"log":{"level":"error","level":"trace"}}"#, "log.level"),
            (
                r#"{"log":{"level":"error"},"log":{"level":"trace"}}"#,
                "log.level",
            ),
            (r#"{"log":{"level":"error"},"log":1}"#, "log.level"),
        ] {
            assert_eq!(find(rec, path), Err(Malformed), "{rec}");
        }
        // Other keys may repeat, and a level key inside a nested object is another key.
        let rec = r#"{"a":1,"a":2,"level":"warn","ctx":{"level":"x"},"lev\u0065":1}"#;
        assert_eq!(find(rec, "level"), Ok(s("warn")));
        // The escaped key alone is found.
        let rec = r#"{"lev\u0065l":"warn"}"#;
        assert_eq!(find(rec, "level"), Ok(s("warn")));
    }

    #[test]
    fn refuses_broken_records() {
        for rec in [
            r#"{"level":"warn"#,
            r#"{"a":1 "level":"warn"}"#,
            r#"["level","warn"]"#,
            r#"{"a":{"b":1},"level"}"#,
            r#"{"a":{"b":1}"#,
            "",
        ] {
            assert_eq!(find(rec, "level"), Err(Malformed), "{rec}");
        }
        let deep = format!(
            "{{\"a\":{}{},\"level\":\"info\"}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert_eq!(find(&deep, "level"), Err(Malformed));
    }

    #[test]
    fn splits_arrays_into_elements() {
        let body = br#" [ {"a":"],"} , 2 ,"x",[1,[2]] ] "#;
        let mut out = Vec::new();
        split_array(body, &mut out).unwrap();
        let parts: Vec<_> = out
            .iter()
            .map(|&(a, b)| std::str::from_utf8(&body[a as usize..b as usize]).unwrap())
            .collect();
        assert_eq!(parts, [r#"{"a":"],"}"#, "2", r#""x""#, "[1,[2]]"]);
        out.clear();
        assert_eq!(split_array(b"[]", &mut out), Ok(()));
        assert!(out.is_empty());
        for bad in [&b"[1,"[..], b"{}", b"[1] x", b"[1 2]", b""] {
            assert_eq!(split_array(bad, &mut Vec::new()), Err(Malformed));
        }
    }
}
