//! OTLP log batches: `ExportLogsServiceRequest` in its protobuf and its JSON encoding.
//!
//! Both keep every log record as the bytes the sender wrote: the envelopes (`ResourceLogs`,
//! `ScopeLogs`) are decoded, each record is classified from a few of its fields without being
//! decoded whole, and a rewrite re-encodes only the envelopes around the kept records' original
//! bytes. A record's level is its `severity_number` (1–24), else its `severity_text` read
//! through [`Level::from_text`](super::Level::from_text), else the route's unknown level.
//!
//! A rewrite removes an envelope (a `ScopeLogs`, a `ResourceLogs`) when it held records and every
//! one of them was dropped. An envelope that held no record in the input is forwarded as it was,
//! unless it sits inside a removed one: the guard removes only what its own drops emptied.
//!
//! When sampling by field, a record's hash is its trace id's (the raw 16 bytes; JSON's hex is
//! decoded first, so both encodings sample a trace alike). A record without a trace id, or with
//! the all-zero (invalid) one, hashes its own bytes.

pub(super) mod binary;
#[doc(hidden)]
pub mod fixtures;
pub(super) mod json;
pub mod proto;

use prost::Message;

pub use binary::ProtoBatch;
pub use json::JsonBatch;

use super::sample;

/// The sampling hash of a trace id's bytes; `None` when it is empty or all zeroes, so the
/// record's own bytes are hashed instead.
fn trace_hash(id: &[u8]) -> Option<u64> {
    if id.iter().all(|&b| b == 0) {
        None
    } else {
        Some(sample::hash(id))
    }
}

/// [`trace_hash`] of a trace id written in hex (OTLP JSON). Text that is not hex is hashed as
/// written: it still groups the records that carry the same text.
fn trace_hash_hex(hex: &[u8]) -> Option<u64> {
    let mut buf = [0u8; 32];
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * buf.len() {
        return trace_hash(hex);
    }
    for (pair, out) in hex.chunks_exact(2).zip(buf.iter_mut()) {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => *out = hi << 4 | lo,
            _ => return trace_hash(hex),
        }
    }
    trace_hash(&buf[..hex.len() / 2])
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The protobuf `ExportLogsServiceResponse` the guard answers with when it dropped every
/// record of a batch: a partial success that rejected `rejected` records, with `message`.
pub fn export_response_proto(rejected: i64, message: &str) -> Vec<u8> {
    proto::ExportLogsServiceResponse {
        partial_success: Some(proto::ExportLogsPartialSuccess {
            rejected_log_records: rejected,
            error_message: message.to_owned(),
        }),
    }
    .encode_to_vec()
}

/// [`export_response_proto`] in OTLP JSON. The proto3 JSON mapping writes an int64 as a decimal
/// string (`"rejectedLogRecords":"12"`); receivers accept numbers too, but the string is what
/// the mapping specifies and what protobuf JSON printers emit.
pub fn export_response_json(rejected: i64, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + message.len());
    out.extend_from_slice(b"{\"partialSuccess\":{\"rejectedLogRecords\":\"");
    out.extend_from_slice(rejected.to_string().as_bytes());
    out.extend_from_slice(b"\",\"errorMessage\":");
    write_json_string(&mut out, message);
    out.extend_from_slice(b"}}");
    out
}

/// A `google.rpc.Status` with `code` and `message`, the error body OTLP/HTTP requires.
pub fn status_proto(code: i32, message: &str) -> Vec<u8> {
    proto::Status {
        code,
        message: message.to_owned(),
    }
    .encode_to_vec()
}

/// [`status_proto`] in OTLP JSON.
pub fn status_json(code: i32, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + message.len());
    out.extend_from_slice(b"{\"code\":");
    out.extend_from_slice(code.to_string().as_bytes());
    out.extend_from_slice(b",\"message\":");
    write_json_string(&mut out, message);
    out.push(b'}');
    out
}

/// `s` as a JSON string literal.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a `str` into a `Vec` cannot fail: the writer never errors and a string is
    // always representable.
    let _ = serde_json::to_writer(out, s);
}

#[cfg(test)]
mod tests;
