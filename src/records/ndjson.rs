//! NDJSON batches (one JSON record per line) and JSON array batches.
//!
//! Both keep records byte for byte: a rewritten NDJSON batch is the kept lines, each ended by
//! `\n`; a rewritten array is `[` + the kept elements joined by `,` + `]`. Blank lines are not
//! records and are not forwarded in a rewritten batch.

use memchr::memchr;

use super::json::{self, Classifier};
use super::{NotFormat, Record};

/// Splits `body` into lines and classifies each. The body is not NDJSON when it has lines and
/// none of them is a readable JSON object.
pub fn parse(body: &[u8], c: &Classifier<'_>, out: &mut Vec<Record>) -> Result<(), NotFormat> {
    let mut start = 0usize;
    while start < body.len() {
        let end = memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
        if !json::trim(&body[start..end]).is_empty() {
            let (s, e) = (offset(start)?, offset(end)?);
            out.push(c.classify(body, s, e));
        }
        start = end + 1;
    }
    if !out.is_empty() && out.iter().all(|r| r.malformed) {
        return Err(NotFormat("no line is a JSON object"));
    }
    Ok(())
}

pub fn rewrite(body: &[u8], records: &[Record], out: &mut Vec<u8>) {
    for r in records.iter().filter(|r| r.keep) {
        out.extend_from_slice(&body[r.range()]);
        out.push(b'\n');
    }
}

/// Splits a JSON array into its elements and classifies each; a non-object element is a
/// malformed record. The body is not a JSON array when its outer structure is broken.
pub fn parse_array(
    body: &[u8],
    c: &Classifier<'_>,
    out: &mut Vec<Record>,
) -> Result<(), NotFormat> {
    let mut spans = Vec::new();
    json::split_array(body, &mut spans).map_err(|_| NotFormat("not a JSON array"))?;
    out.extend(spans.into_iter().map(|(s, e)| c.classify(body, s, e)));
    Ok(())
}

pub fn rewrite_array(body: &[u8], records: &[Record], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, r) in records.iter().filter(|r| r.keep).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&body[r.range()]);
    }
    out.push(b']');
}

fn offset(i: usize) -> Result<u32, NotFormat> {
    json::offset(i).map_err(|_| NotFormat("batch larger than 4 GiB"))
}
