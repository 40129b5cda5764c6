//! OTLP protobuf: envelopes decoded with prost, log records kept as slices of the body.
//!
//! A length-delimited message field is, on the wire, the same as a `bytes` field, so the
//! envelope messages here declare `log_records` (and `resource`, `scope`) as `Bytes`. Decoded
//! from a `Bytes` body, prost hands out sub-slices of it: no record is copied or allocated, and
//! a record's byte range is where its slice points. Each record is classified by decoding a
//! three-field head message from it; prost skips every other field without decoding it.
//!
//! What a rewrite does not keep: envelope fields the structs here do not declare (none in
//! OTLP 1.7 but the reserved ones), and all but the last occurrence of a `resource` or `scope`
//! sent twice (which protobuf would merge; no encoder writes that). Records are never
//! re-encoded.

use bytes::Bytes;
use prost::Message;

use super::trace_hash;
use crate::records::json::{self as scan, Classifier};
use crate::records::{Level, NotFormat, Record, SampleBy, sample};

/// `ExportLogsServiceRequest` with raw records.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RawRequest {
    #[prost(message, repeated, tag = "1")]
    pub(super) resource_logs: Vec<RawResourceLogs>,
}

/// `ResourceLogs` with its `Resource` left encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RawResourceLogs {
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub(super) resource: Option<Bytes>,
    #[prost(message, repeated, tag = "2")]
    pub(super) scope_logs: Vec<RawScopeLogs>,
    /// A `string`, kept as bytes: forwarded as sent, not validated.
    #[prost(bytes = "bytes", tag = "3")]
    pub(super) schema_url: Bytes,
}

/// `ScopeLogs` with its `InstrumentationScope` and its records left encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RawScopeLogs {
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub(super) scope: Option<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub(super) log_records: Vec<Bytes>,
    #[prost(bytes = "bytes", tag = "3")]
    pub(super) schema_url: Bytes,
}

/// The fields of a `LogRecord` the guard reads. `severity_text` is a `string` on the wire,
/// read as bytes: [`Level::from_text`] does not need UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct Head {
    #[prost(int32, tag = "2")]
    severity_number: i32,
    #[prost(bytes = "bytes", tag = "3")]
    severity_text: Bytes,
    #[prost(bytes = "bytes", tag = "9")]
    trace_id: Bytes,
}

/// A parsed protobuf batch: the envelopes, holding the records as slices of the body.
pub struct ProtoBatch {
    request: RawRequest,
}

/// Decodes `body` as an `ExportLogsServiceRequest` and classifies its records into `out`, in
/// order. A record whose own encoding is broken is a malformed record, not a broken batch.
pub fn parse(
    body: &Bytes,
    c: &Classifier<'_>,
    out: &mut Vec<Record>,
) -> Result<ProtoBatch, NotFormat> {
    let request = RawRequest::decode(body.clone())
        .map_err(|_| NotFormat("not an OTLP protobuf ExportLogsServiceRequest"))?;
    let n: usize = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    out.reserve(n);
    for rec in request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
    {
        let (start, end) = span(body, rec)?;
        out.push(classify(c, rec, start, end));
    }
    Ok(ProtoBatch { request })
}

/// Where `rec` lies in `body`. prost slices records out of the body, so this is pointer
/// arithmetic; it is checked, and an empty record (whose slice may point anywhere) is put at 0.
fn span(body: &[u8], rec: &[u8]) -> Result<(u32, u32), NotFormat> {
    let start = (rec.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|&s| s.checked_add(rec.len()).is_some_and(|e| e <= body.len()));
    let start = match start {
        Some(s) => s,
        None if rec.is_empty() => 0,
        None => return Err(NotFormat("OTLP record outside the body")),
    };
    let offset = |i| scan::offset(i).map_err(|_| NotFormat("batch larger than 4 GiB"));
    Ok((offset(start)?, offset(start + rec.len())?))
}

fn classify(c: &Classifier<'_>, rec: &Bytes, start: u32, end: u32) -> Record {
    let (level, malformed, head) = match Head::decode(rec.clone()) {
        Ok(head) => (
            Level::from_otlp_severity(i64::from(head.severity_number))
                .or_else(|| Level::from_text(&head.severity_text)),
            false,
            Some(head),
        ),
        Err(_) => (None, true, None),
    };
    let level = level.unwrap_or(c.unknown);
    let hash = match (c.hashes[level.index()], c.sample_by) {
        (false, _) => 0,
        (true, SampleBy::Record) => sample::hash(rec),
        (true, SampleBy::Field(_)) => head
            .and_then(|h| trace_hash(&h.trace_id))
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

impl ProtoBatch {
    /// The request with only the records whose `keep` is set (`records` as parsed, in order),
    /// each as its original bytes, and without the envelopes that became empty.
    pub fn rewrite(&self, records: &[Record], out: &mut Vec<u8>) {
        let mut keep = records.iter().map(|r| r.keep);
        let mut kept_request = RawRequest::default();
        for rl in &self.request.resource_logs {
            let (mut held, mut kept) = (0, 0);
            let mut scope_logs = Vec::with_capacity(rl.scope_logs.len());
            for sl in &rl.scope_logs {
                let log_records: Vec<Bytes> = sl
                    .log_records
                    .iter()
                    .filter(|_| keep.next().unwrap_or(false))
                    .cloned()
                    .collect();
                held += sl.log_records.len();
                kept += log_records.len();
                if log_records.is_empty() && !sl.log_records.is_empty() {
                    continue;
                }
                scope_logs.push(RawScopeLogs {
                    scope: sl.scope.clone(),
                    log_records,
                    schema_url: sl.schema_url.clone(),
                });
            }
            if held > 0 && kept == 0 {
                continue;
            }
            kept_request.resource_logs.push(RawResourceLogs {
                resource: rl.resource.clone(),
                scope_logs,
                schema_url: rl.schema_url.clone(),
            });
        }
        out.reserve(kept_request.encoded_len());
        // A `Vec` grows as needed: encoding into it cannot run out of space.
        let _ = kept_request.encode(out);
    }
}
