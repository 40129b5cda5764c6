//! The records phase of a telemetry route: buffer the batch, decode it, filter its records by
//! level, and re-encode what is kept.
//!
//! The body is buffered up to the route's `max_body` (already enforced while reading) and, when
//! compressed, decoded up to the route's cap. A batch that loses no record goes upstream exactly
//! as received, still compressed; one that loses some is rewritten and re-encoded; one that
//! loses all of them is answered by the guard without calling the upstream.

use bytes::{Bytes, BytesMut};
use governor::clock::Clock;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::body::GuardedBody;
use crate::codec::{self, Encoding};
use crate::error::GuardError;
use crate::metrics::{BatchOutcome, RecordsMetrics, ShadowRecords};
use crate::records::filter::{self, Tally, Tighten};
use crate::records::{Batch, Format, Level, NotFormat, OnMalformed, RecordsPolicy, otlp};

pub static RECORDS_KEPT: HeaderName = HeaderName::from_static("x-verbosity-guard-records-kept");
pub static RECORDS_DROPPED: HeaderName =
    HeaderName::from_static("x-verbosity-guard-records-dropped");
pub static MAX_LEVEL: HeaderName = HeaderName::from_static("x-verbosity-guard-max-level");
/// Every header the guard writes; removed from client requests.
pub static OWN_HEADERS: [&HeaderName; 4] = [
    &RECORDS_KEPT,
    &RECORDS_DROPPED,
    &MAX_LEVEL,
    &super::shadow::SHADOW,
];

/// What the records phase decided.
pub enum Filtered {
    /// Send this body upstream; `summary` is absent when the batch was not parsed (malformed and
    /// forwarded as received).
    Forward {
        body: Bytes,
        summary: Option<Summary>,
    },
    /// Every record was dropped: this is the client's answer.
    Answer(Response<Full<Bytes>>),
}

/// Counts the guard reports in headers, to the upstream and back to the client.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub kept: u64,
    pub dropped: u64,
    /// Most verbose level currently accepted whole; see [`RecordsPolicy::max_accepted`].
    pub max_level: Option<Level>,
}

impl Summary {
    fn new(policy: &RecordsPolicy, tally: &Tally, tighten: &Tighten) -> Summary {
        Summary {
            kept: tally.forwarded(),
            dropped: tally.dropped(),
            max_level: policy.max_accepted(tally, tighten),
        }
    }

    /// Adds the kept and dropped counts (and, toward the client, the accepted level).
    pub fn write(&self, headers: &mut HeaderMap, with_level: bool) {
        headers.insert(RECORDS_KEPT.clone(), HeaderValue::from(self.kept));
        headers.insert(RECORDS_DROPPED.clone(), HeaderValue::from(self.dropped));
        if with_level {
            let level = self.max_level.map_or("none", Level::as_str);
            headers.insert(MAX_LEVEL.clone(), HeaderValue::from_static(level));
        }
    }
}

/// Reads the whole body. `max_body` is enforced by the body itself; `capacity` is a hint.
pub async fn read_to_end(body: &mut GuardedBody, capacity: usize) -> Result<Bytes, GuardError> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                buf.reserve(capacity.max(f.len() + data.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// A buffered batch read under its route's rules: decoded, parsed and decided, nothing done
/// about it yet. What the live guard then does (rewrite, answer, or in shadow mode only count)
/// and what `simulate` reports both start from this.
pub struct Inspected {
    /// The request's Content-Encoding; `decoded` holds the body decoded from it.
    pub encoding: Encoding,
    /// The format the body was read as (an OTLP route tells JSON from protobuf by Content-Type).
    pub format: Format,
    pub decoded: Bytes,
    /// The records, each marked kept or dropped, with the batch's counts; or why the body is
    /// not the format.
    pub parsed: Result<(Batch, Tally), NotFormat>,
}

/// Decodes, parses and decides a buffered batch under the route's `records` rules, tightened by
/// `tighten` while the upstream is browned out. The level budgets of `key` (the client) and of
/// the route are charged. Fails only on the body's coding (unsupported, corrupt, too large once
/// decoded); a body that is not the format is an answer, not an error.
pub fn inspect<C: Clock>(
    policy: &RecordsPolicy<C>,
    headers: &HeaderMap,
    key: Option<u64>,
    tighten: &Tighten,
    body: &Bytes,
) -> Result<Inspected, GuardError> {
    let encoding = codec::request_encoding(headers)?;
    let decoded = match encoding {
        Encoding::Identity => body.clone(),
        enc => {
            let cap = policy
                .max_decoded
                .min((body.len() as u64).saturating_mul(policy.max_ratio));
            Bytes::from(codec::decode(enc, body, cap)?)
        }
    };
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    let format = policy.format.for_content_type(content_type);
    let parsed = Batch::parse_bytes_as(policy, format, &decoded, tighten).map(|mut batch| {
        let tally = filter::decide_tightened(&mut batch.records, policy, key, tighten);
        (batch, tally)
    });
    Ok(Inspected {
        encoding,
        format,
        decoded,
        parsed,
    })
}

/// Runs a buffered batch through the route's `records` rules (see [`inspect`]) and enforces
/// what they decided: the batch as received when nothing is dropped, rewritten and re-encoded
/// when some records are, the guard's own answer when every record is.
pub fn filter(
    policy: &RecordsPolicy,
    metrics: &RecordsMetrics,
    headers: &HeaderMap,
    key: Option<u64>,
    tighten: &Tighten,
    body: Bytes,
) -> Result<Filtered, GuardError> {
    let Inspected {
        encoding,
        format,
        decoded,
        parsed,
    } = inspect(policy, headers, key, tighten, &body)?;
    metrics.decoded(encoding);
    let (batch, tally) = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => {
            return match policy.on_malformed {
                OnMalformed::Forward => {
                    metrics.batch(BatchOutcome::MalformedForwarded);
                    Ok(Filtered::Forward {
                        body,
                        summary: None,
                    })
                }
                OnMalformed::Reject => {
                    metrics.batch(BatchOutcome::MalformedRejected);
                    Err(GuardError::MalformedBatch {
                        format: format.as_str(),
                        reason,
                    })
                }
            };
        }
    };
    metrics.record(&tally);
    let summary = Summary::new(policy, &tally, tighten);

    if tally.dropped() == 0 {
        metrics.batch(BatchOutcome::Untouched);
        return Ok(Filtered::Forward {
            body,
            summary: Some(summary),
        });
    }
    if tally.forwarded() == 0 {
        metrics.batch(BatchOutcome::AllDropped);
        return Ok(Filtered::Answer(all_dropped(format, &tally, summary)));
    }
    metrics.batch(BatchOutcome::Rewritten);
    Ok(Filtered::Forward {
        body: Bytes::from(rewrite(&batch, &decoded, encoding)?),
        summary: Some(summary),
    })
}

/// What enforce mode would have done with a batch a shadow route forwards as received.
pub enum ShadowBatch {
    /// It would have refused the request, for this reason (a rejection metric label).
    Refused(&'static str),
    /// It would have kept `kept` records and dropped `dropped`.
    Read { kept: u64, dropped: u64 },
    /// Not the format, and forwarded as received in either mode.
    Unread,
}

/// A shadow route's batch: decided exactly as [`filter`] decides it (level budgets charged),
/// counted as forwarded whole in the enforce families and as what enforce mode would have
/// dropped in the shadow ones. Nothing is rewritten: the caller forwards `body` as received.
pub fn shadow<C: Clock>(
    policy: &RecordsPolicy<C>,
    metrics: &RecordsMetrics,
    shadow: &ShadowRecords,
    headers: &HeaderMap,
    key: Option<u64>,
    tighten: &Tighten,
    body: &Bytes,
) -> ShadowBatch {
    let inspected = match inspect(policy, headers, key, tighten, body) {
        Ok(i) => i,
        Err(e) => return ShadowBatch::Refused(e.label()),
    };
    metrics.decoded(inspected.encoding);
    metrics.batch(match &inspected.parsed {
        Ok(_) => BatchOutcome::Untouched,
        Err(_) => BatchOutcome::MalformedForwarded,
    });
    match inspected.parsed {
        Ok((_, tally)) => {
            metrics.record_forwarded_whole(&tally);
            shadow.record(&tally);
            let (kept, dropped) = (tally.forwarded(), tally.dropped());
            if dropped > 0 {
                shadow.batch(match kept {
                    0 => BatchOutcome::AllDropped,
                    _ => BatchOutcome::Rewritten,
                });
            }
            ShadowBatch::Read { kept, dropped }
        }
        Err(reason) => match policy.on_malformed {
            OnMalformed::Forward => ShadowBatch::Unread,
            OnMalformed::Reject => {
                shadow.batch(BatchOutcome::MalformedRejected);
                let err = GuardError::MalformedBatch {
                    format: inspected.format.as_str(),
                    reason,
                };
                ShadowBatch::Refused(err.label())
            }
        },
    }
}

/// The kept records of a batch, re-encoded like the request was.
pub fn rewrite(batch: &Batch, decoded: &[u8], encoding: Encoding) -> Result<Vec<u8>, GuardError> {
    let rewritten = batch.rewrite(decoded);
    match encoding {
        Encoding::Identity => Ok(rewritten),
        enc => codec::encode(enc, &rewritten)
            .map_err(|_| GuardError::Internal("cannot re-encode the batch")),
    }
}

/// The answer to a batch with nothing left to forward. OTLP senders get the success response
/// their protocol defines, with the dropped records counted as rejected (a partial success), so
/// exporters do not retry them; other senders get 202 and a JSON summary.
fn all_dropped(format: Format, tally: &Tally, summary: Summary) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match format {
        Format::OtlpProto | Format::OtlpJson => otlp_response(format, tally),
        Format::Ndjson | Format::JsonArray => {
            let mut dropped = serde_json::Map::new();
            for level in Level::ALL {
                let n = tally.level(level).dropped();
                if n > 0 {
                    dropped.insert(level.as_str().into(), n.into());
                }
            }
            let json = serde_json::json!({
                "status": "all_dropped",
                "received": tally.received(),
                "forwarded": 0,
                "dropped": tally.dropped(),
                "dropped_by_level": dropped,
                "max_level": summary.max_level,
            });
            let mut bytes = serde_json::to_vec(&json).unwrap_or_default();
            bytes.push(b'\n');
            (StatusCode::ACCEPTED, "application/json", bytes)
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    summary.write(resp.headers_mut(), true);
    resp
}

fn otlp_response(format: Format, tally: &Tally) -> (StatusCode, &'static str, Vec<u8>) {
    let rejected = i64::try_from(tally.dropped()).unwrap_or(i64::MAX);
    let message = "dropped by verbosity-guard log-level budgets";
    match format {
        Format::OtlpProto => (
            StatusCode::OK,
            "application/x-protobuf",
            otlp::export_response_proto(rejected, message),
        ),
        _ => (
            StatusCode::OK,
            "application/json",
            otlp::export_response_json(rejected, message),
        ),
    }
}
