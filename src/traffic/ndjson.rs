//! The guard's traffic format: one JSON object per line, one request per object.
//!
//! ```json
//! {"ts":"2026-11-30T12:00:00.123Z","method":"POST","path":"/api/1/telemetry?x=1","headers":{"x-vehicle-id":"car-1","content-type":"application/x-ndjson"},"body":"{\"level\":\"info\"}\n"}
//! ```
//!
//! | field | | meaning |
//! |---|---|---|
//! | `ts` | required | when the request started: RFC 3339 (`2026-11-30T12:00:00.123Z`, any offset) or Unix seconds (`1795000000.123`) |
//! | `method` | required | `GET`, `POST`, ... |
//! | `path` | required | the request target, `/path?query`, or an absolute URL (its path and query are used) |
//! | `headers` | `{}` | name to value, or to a list of values for a repeated header; `content-length` and `transfer-encoding` are ignored |
//! | `body` | empty | the body as UTF-8 text |
//! | `body_base64` | | ... or in base64 |
//! | `body_file` | | ... or in a file, relative to the traffic file's directory |
//! | `body_size` | the body's length | the size the body had, when the recording kept less (or none) of it |
//! | `peer` | `0.0.0.0` | the client's IP address (used by `client_key` fallback `peer_ip`) |
//!
//! At most one of `body`, `body_base64` and `body_file`. Other fields are errors, so a typo is
//! not silently ignored. Blank lines are skipped. Requests are replayed in file order; one
//! earlier than the one before it is replayed at that one's time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    Entry, EntryError, Limits, Place, TrafficError, UNKNOWN_PEER, add_header, check_body,
    decode_base64, parse_method, parse_target, time,
};

/// One line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    ts: &'a RawValue,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    #[serde(borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body_base64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body_file: Option<Cow<'a, str>>,
    body_size: Option<u64>,
    #[serde(borrow)]
    peer: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Reads entries line by line; stops at the first problem.
pub struct Reader {
    lines: BufReader<std::io::Take<std::fs::File>>,
    file: String,
    dir: PathBuf,
    limits: Limits,
    line: u64,
    entries: u64,
    read: u64,
    buf: Vec<u8>,
    done: bool,
}

impl Reader {
    pub(super) fn new(
        lines: BufReader<std::io::Take<std::fs::File>>,
        file: String,
        dir: PathBuf,
        limits: Limits,
    ) -> Reader {
        Reader {
            lines,
            file,
            dir,
            limits,
            line: 0,
            entries: 0,
            read: 0,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Longest line accepted: a body at `max_body` written as JSON text with every byte escaped
    /// (`\u0001`: 6 bytes), plus room for the rest of the request.
    fn max_line(&self) -> u64 {
        self.limits
            .max_body
            .saturating_mul(6)
            .saturating_add(64 << 10)
    }

    fn fail(&mut self, err: TrafficError) -> Option<Result<Entry, TrafficError>> {
        self.done = true;
        Some(Err(err))
    }
}

impl Iterator for Reader {
    type Item = Result<Entry, TrafficError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            self.line += 1;
            let max_line = self.max_line();
            let n = match (&mut self.lines)
                .take(max_line.saturating_add(1))
                .read_until(b'\n', &mut self.buf)
            {
                Ok(0) => return None,
                Ok(n) => n as u64,
                Err(source) => {
                    let file = self.file.clone();
                    return self.fail(TrafficError::Read { file, source });
                }
            };
            self.read += n;
            if self.read > self.limits.max_size {
                let (file, limit) = (self.file.clone(), self.limits.max_size);
                return self.fail(TrafficError::TooLarge { file, limit });
            }
            if n > max_line && self.buf.last() != Some(&b'\n') {
                let err = self.entry_error(EntryError::LineTooLong { limit: max_line });
                return self.fail(err);
            }
            let text = self.buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&self.buf);
            if text.trim_ascii().is_empty() {
                continue;
            }
            self.entries += 1;
            if self.entries > self.limits.max_requests {
                let (file, limit) = (self.file.clone(), self.limits.max_requests);
                return self.fail(TrafficError::TooManyRequests { file, limit });
            }
            let place = Place::Line(self.line);
            return match parse_line(text, place, &self.dir, self.limits) {
                Ok(entry) => Some(Ok(entry)),
                Err(e) => {
                    let err = self.entry_error(e);
                    self.fail(err)
                }
            };
        }
        None
    }
}

impl Reader {
    fn entry_error(&self, source: EntryError) -> TrafficError {
        TrafficError::Entry {
            file: self.file.clone(),
            place: Place::Line(self.line),
            source,
        }
    }
}

/// One line into an entry; `dir` is where `body_file` paths start.
pub fn parse_line(
    text: &[u8],
    place: Place,
    dir: &Path,
    limits: Limits,
) -> Result<Entry, EntryError> {
    let line: Line = serde_json::from_slice(text).map_err(EntryError::Json)?;
    let at = parse_ts(line.ts)?;
    let method = parse_method("method", &line.method)?;
    let target = parse_target("path", &line.path)?;
    let mut headers = HeaderMap::new();
    for (name, values) in &line.headers {
        match values {
            OneOrMany::One(v) => add_header(&mut headers, name, v)?,
            OneOrMany::Many(vs) => {
                for v in vs {
                    add_header(&mut headers, name, v)?;
                }
            }
        }
    }
    let body = match (line.body, line.body_base64, line.body_file) {
        (None, None, None) => Bytes::new(),
        (Some(text), None, None) => {
            check_body(text.len() as u64, limits.max_body)?;
            Bytes::from(text.into_owned())
        }
        (None, Some(b64), None) => decode_base64("body_base64", &b64, limits.max_body)?,
        (None, None, Some(file)) => read_body_file(&dir.join(&*file), limits.max_body)?,
        _ => return Err(EntryError::SeveralBodies),
    };
    let body_len = body.len() as u64;
    let body_size = match line.body_size {
        Some(size) if size < body_len => {
            return Err(EntryError::BodySize {
                size,
                body: body_len,
            });
        }
        Some(size) => size,
        None => body_len,
    };
    let peer = match line.peer {
        None => UNKNOWN_PEER,
        Some(p) => p.parse().map_err(|_| EntryError::Peer {
            value: p.into_owned(),
        })?,
    };
    Ok(Entry {
        at,
        method,
        target,
        headers,
        body,
        body_size,
        peer,
        place,
    })
}

/// `ts`: an RFC 3339 string or a number of Unix seconds.
fn parse_ts(raw: &RawValue) -> Result<u64, EntryError> {
    let text = raw.get();
    let bad = || EntryError::Time {
        field: "ts",
        value: text.to_owned(),
    };
    if text.starts_with('"') {
        let s: Cow<str> = serde_json::from_str(text).map_err(|_| bad())?;
        return time::parse_rfc3339(&s).ok_or_else(bad);
    }
    let secs: f64 = text.parse().map_err(|_| bad())?;
    if !(0.0..1.8e10).contains(&secs) {
        return Err(bad());
    }
    // Whole seconds and the fraction apart, so nanoseconds survive f64 rounding as well as
    // they can (a float holds ~16 digits: microseconds for present-day times).
    let whole = secs.trunc();
    let nanos = ((secs - whole) * 1e9).round() as u64;
    Ok(whole as u64 * 1_000_000_000 + nanos.min(999_999_999))
}

fn read_body_file(path: &Path, limit: u64) -> Result<Bytes, EntryError> {
    let err = |source| EntryError::BodyFile {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut body = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(err)?;
    check_body(body.len() as u64, limit)?;
    Ok(Bytes::from(body))
}

/// A request as `serve --record` writes it.
pub struct Record<'a> {
    pub at: u64,
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub peer: IpAddr,
    /// The recorded body: all of it, or its first bytes when `body_size` is larger.
    pub body: &'a [u8],
    pub body_size: u64,
}

#[derive(Serialize)]
struct OutLine<'a> {
    ts: String,
    method: &'a str,
    path: &'a str,
    headers: BTreeMap<&'a str, OneOrMany>,
    peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_size: Option<u64>,
}

/// Appends `r` to `out` as one line (with its newline). A UTF-8 body is written as text,
/// anything else in base64; `body_size` only when the body is partial.
pub fn write_line(out: &mut Vec<u8>, r: &Record) {
    use base64::Engine as _;
    let mut headers: BTreeMap<&str, OneOrMany> = BTreeMap::new();
    for (name, value) in r.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            None => {
                headers.insert(name.as_str(), OneOrMany::One(value));
            }
            Some(OneOrMany::Many(vs)) => vs.push(value),
            Some(one) => {
                if let OneOrMany::One(first) = std::mem::replace(one, OneOrMany::Many(Vec::new())) {
                    *one = OneOrMany::Many(vec![first, value]);
                }
            }
        }
    }
    let (body, body_base64) = match std::str::from_utf8(r.body) {
        _ if r.body.is_empty() => (None, None),
        Ok(text) => (Some(text), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(r.body)),
        ),
    };
    let line = OutLine {
        ts: time::format_rfc3339(r.at),
        method: r.method.as_str(),
        path: r.target,
        headers,
        peer: r.peer.to_string(),
        body,
        body_base64,
        body_size: (r.body_size > r.body.len() as u64).then_some(r.body_size),
    };
    // Strings, numbers and maps of strings cannot fail to serialize; were it to, no half line
    // is left behind.
    let start = out.len();
    match serde_json::to_writer(&mut *out, &line) {
        Ok(()) => out.push(b'\n'),
        Err(_) => out.truncate(start),
    }
}
