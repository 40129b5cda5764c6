//! Recorded traffic: the files `simulate` replays and `serve --record` writes.
//!
//! Two formats, told apart by content: a file whose first JSON key is `log` is a HAR 1.2
//! archive (as browsers and proxies export it, see [`har`]); anything else is read as the
//! guard's NDJSON format, one request per line (see [`ndjson`]). Both become the same
//! [`Entry`]: when, method, target, headers, body, and the client's address.
//!
//! Everything is bounded ([`Limits`]): the file's size, the number of requests, each body's
//! size (and so each NDJSON line's). A problem names the file and the line (NDJSON) or the
//! entry (HAR).

pub mod har;
pub mod ndjson;
pub mod time;

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method};

/// Bounds on what a traffic file may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest traffic file (a HAR file is read whole; NDJSON streams, line by line).
    pub max_size: u64,
    /// Most requests in one file.
    pub max_requests: u64,
    /// Largest request body (decoded from base64, or read from a `body_file`).
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 1 << 30,
            max_requests: 10_000_000,
            max_body: 16 << 20,
        }
    }
}

/// The client address of requests that do not say (HAR has no field for it).
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it started, in nanoseconds since the Unix epoch.
    pub at: u64,
    pub method: Method,
    /// The request target in origin form (path and query), as the client sent it.
    pub target: PathAndQuery,
    /// Without `content-length` and `transfer-encoding`: the body's size is `body_size`.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The size the body had when the request was made. Larger than `body.len()` when the
    /// recording kept only part of it (or none): the entry is *partial*.
    pub body_size: u64,
    pub peer: IpAddr,
    /// Where it is in its file, for messages.
    pub place: Place,
}

impl Entry {
    /// True when the recorded body is not the whole body.
    pub fn is_partial(&self) -> bool {
        self.body_size > self.body.len() as u64
    }
}

/// Where an entry is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// NDJSON: the line, from 1.
    Line(u64),
    /// HAR: the index in `log.entries`.
    Entry(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Entry(i) => write!(f, "log.entries[{i}]"),
        }
    }
}

/// The two formats a traffic file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Har,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Har => "har",
        }
    }
}

/// What is wrong with one request of a traffic file.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("not a JSON request object: {0}")]
    Json(#[source] serde_json::Error),
    #[error(
        "{field}: {value} is not an RFC 3339 date-time (2026-11-30T12:00:00.123Z) or Unix seconds"
    )]
    Time { field: &'static str, value: String },
    #[error("{field}: {value:?} is not an HTTP method")]
    Method { field: &'static str, value: String },
    #[error("{field}: {value:?} is not a request target (write /path?query or http://host/path)")]
    Target { field: &'static str, value: String },
    #[error("header {name:?}: not a valid header name and value")]
    Header { name: String },
    #[error("headers.{name}: write a string or a list of strings")]
    HeaderShape { name: String },
    #[error("give at most one of body, body_base64 and body_file")]
    SeveralBodies,
    #[error("{field}: not base64: {source}")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("body_file {path}: {source}")]
    BodyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the body ({size} bytes or more) is larger than {limit} bytes (raise --max-body)")]
    BodyTooLarge { size: u64, limit: u64 },
    #[error("body_size {size} is smaller than the body given ({body} bytes)")]
    BodySize { size: u64, body: u64 },
    #[error("peer: {value:?} is not an IP address")]
    Peer { value: String },
    #[error("the line is longer than {limit} bytes (6 x --max-body + 64 KiB)")]
    LineTooLong { limit: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}: larger than {limit} bytes (raise --max-traffic-size)")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: more than {limit} requests (raise --max-requests)")]
    TooManyRequests { file: String, limit: u64 },
    #[error("{file}: not a HAR archive: {source}")]
    Har {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: {place}: {source}")]
    Entry {
        file: String,
        place: Place,
        #[source]
        source: EntryError,
    },
}

/// An open traffic file, read request by request.
pub struct Traffic {
    format: Format,
    inner: Inner,
}

enum Inner {
    Ndjson(ndjson::Reader),
    Har(std::vec::IntoIter<Entry>),
}

impl Traffic {
    /// Opens `path` and tells its format. A HAR file is read and checked whole here; an NDJSON
    /// file line by line as it is iterated, so a problem on line 10 million surfaces there.
    pub fn open(path: &Path, limits: Limits) -> Result<Traffic, TrafficError> {
        let file_name = path.display().to_string();
        let read_err = |source| TrafficError::Read {
            file: file_name.clone(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        if len > limits.max_size {
            return Err(TrafficError::TooLarge {
                file: file_name,
                limit: limits.max_size,
            });
        }
        // `take` bounds the read even if the file grows while it is read.
        let mut reader =
            BufReader::with_capacity(64 << 10, file.take(limits.max_size.saturating_add(1)));
        // `body_file` paths start at the traffic file's directory.
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let format = match looks_like_har(reader.fill_buf().map_err(read_err)?) {
            true => Format::Har,
            false => Format::Ndjson,
        };
        let inner = match format {
            Format::Har => {
                let mut text = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                reader.read_to_end(&mut text).map_err(read_err)?;
                if text.len() as u64 > limits.max_size {
                    return Err(TrafficError::TooLarge {
                        file: file_name,
                        limit: limits.max_size,
                    });
                }
                Inner::Har(har::read(&text, &file_name, limits)?.into_iter())
            }
            Format::Ndjson => Inner::Ndjson(ndjson::Reader::new(reader, file_name, dir, limits)),
        };
        Ok(Traffic { format, inner })
    }

    pub fn format(&self) -> Format {
        self.format
    }
}

impl Iterator for Traffic {
    type Item = Result<Entry, TrafficError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Ndjson(r) => r.next(),
            Inner::Har(entries) => entries.next().map(Ok),
        }
    }
}

/// True when the text starts (after a BOM and white space) with `{` and the key `"log"`.
fn looks_like_har(start: &[u8]) -> bool {
    let start = start.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(start);
    let rest = start.trim_ascii_start();
    rest.strip_prefix(b"{")
        .is_some_and(|r| r.trim_ascii_start().starts_with(b"\"log\""))
}

/// Origin form of a request target written as a path (`/a?b`) or an absolute URL.
fn parse_target(field: &'static str, text: &str) -> Result<PathAndQuery, EntryError> {
    let bad = || EntryError::Target {
        field,
        value: text.to_owned(),
    };
    // A fragment never reaches a server.
    let text = text.split('#').next().unwrap_or(text);
    let uri: http::Uri = text.parse().map_err(|_| bad())?;
    let absolute = uri.scheme().is_some() && uri.authority().is_some();
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') && (absolute || text.starts_with('/')) => {
            Ok(pq.clone())
        }
        None if absolute => Ok(PathAndQuery::from_static("/")),
        _ => Err(bad()),
    }
}

fn parse_method(field: &'static str, text: &str) -> Result<Method, EntryError> {
    Method::from_bytes(text.as_bytes()).map_err(|_| EntryError::Method {
        field,
        value: text.to_owned(),
    })
}

/// Adds a header, leaving out the framing ones: a replayed body's size is its `body_size`.
fn add_header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), EntryError> {
    let bad = || EntryError::Header {
        name: name.to_owned(),
    };
    let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
        return Ok(());
    }
    let value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
    headers.append(name, value);
    Ok(())
}

fn decode_base64(field: &'static str, text: &str, limit: u64) -> Result<Bytes, EntryError> {
    use base64::Engine as _;
    // 3 bytes per 4 characters: refuse before decoding what could not fit.
    let estimate = (text.len() as u64 / 4) * 3;
    if estimate > limit.saturating_add(3) {
        return Err(EntryError::BodyTooLarge {
            size: estimate,
            limit,
        });
    }
    let body = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(text.trim())
        .map_err(|source| EntryError::Base64 { field, source })?;
    check_body(body.len() as u64, limit)?;
    Ok(Bytes::from(body))
}

fn check_body(size: u64, limit: u64) -> Result<(), EntryError> {
    match size > limit {
        true => Err(EntryError::BodyTooLarge { size, limit }),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests;
