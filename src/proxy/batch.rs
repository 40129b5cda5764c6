//! The records phase of a telemetry route, on the wire: buffer the batch, carry out what the
//! decision core ([`decide::records`](crate::decide::records)) decided, and tell both sides.
//!
//! The body is buffered up to the route's `max_body` (already enforced while reading) and, when
//! compressed, decoded up to the route's cap. A batch that loses no record goes upstream exactly
//! as received, still compressed; one that loses some is rewritten and re-encoded; one that
//! loses all of them is answered by the guard without calling the upstream.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::body::GuardedBody;
use crate::decide::records::Judged;
use crate::decide::{BatchOutcome, Reject};
use crate::metrics::{RecordsMetrics, ShadowRecords};
use crate::protect::ShedReason;
use crate::records::filter::{Tally, Tighten};
use crate::records::{Format, Level, RecordsPolicy, otlp};

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

impl Filtered {
    /// The batch as received, not read as records (shadow mode, or not the format).
    pub fn unread(body: Bytes) -> Filtered {
        Filtered::Forward {
            body,
            summary: None,
        }
    }
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
pub async fn read_to_end(body: &mut GuardedBody, capacity: usize) -> Result<Bytes, Reject> {
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

/// Enforce mode: carries out what [`judge`](crate::decide::records::judge) decided about
/// `received`. The batch goes upstream as received when nothing is dropped (or it is malformed
/// and the route forwards such bodies), rewritten and re-encoded when some records are dropped;
/// when every record is dropped the guard answers itself; a malformed batch on a route that
/// rejects them is refused.
///
/// Every outcome is counted here except a batch of records on its way upstream: the caller
/// counts that one ([`count`]) once it has its upstream slot, since a bulk batch that finds
/// none is cut further ([`cut_to_errors`]) or refused.
pub fn carry_out(
    policy: &RecordsPolicy,
    metrics: &RecordsMetrics,
    judged: &Judged,
    received: Bytes,
    tighten: &Tighten,
) -> Result<Filtered, Reject> {
    if let Some(refusal) = judged.refusal() {
        count(metrics, judged);
        return Err(refusal);
    }
    let Some(tally) = judged.tally() else {
        // Malformed, and forwarded as received: there are no records to count.
        count(metrics, judged);
        return Ok(Filtered::unread(received));
    };
    let summary = Summary::new(policy, tally, tighten);
    match judged.forward(received)? {
        Some(body) => Ok(Filtered::Forward {
            body,
            summary: Some(summary),
        }),
        None => {
            count(metrics, judged);
            Ok(Filtered::Answer(all_dropped(judged.format, tally, summary)))
        }
    }
}

/// Counts a judged batch whose fate is settled: forwarded (in part), answered or refused for
/// being malformed.
pub fn count(metrics: &RecordsMetrics, judged: &Judged) {
    metrics.decoded(judged.encoding);
    metrics.batch(judged.outcome());
    if let Some(tally) = judged.tally() {
        metrics.record(tally);
    }
}

/// Counts a batch of records refused whole after it was read (shed with 503: its sender
/// retries it), per level under `reason`.
pub fn count_refused(metrics: &RecordsMetrics, judged: &Judged, reason: ShedReason) {
    metrics.decoded(judged.encoding);
    if let Some(tally) = judged.tally() {
        metrics.refused(tally, reason);
    }
}

/// What is left of a batch cut down to its error and fatal records.
pub enum Cut {
    /// Nothing: the batch had no error or fatal record.
    Nothing,
    /// All of it: every record it forwarded is an error or fatal one.
    Whole,
    /// The kept records, re-encoded, and the new counts.
    Rewritten(Bytes, Summary),
}

/// A bulk batch on its way upstream that found no upstream slot in time, cut down to its error
/// and fatal records.
pub fn cut_to_errors(policy: &RecordsPolicy, judged: &mut Judged) -> Result<Cut, Reject> {
    let before = judged.tally().map_or(0, Tally::forwarded);
    let left = judged.cut_to_errors();
    if left == 0 {
        return Ok(Cut::Nothing);
    }
    if left == before {
        return Ok(Cut::Whole);
    }
    let (Some(tally), Some(body)) = (judged.tally(), judged.forward(Bytes::new())?) else {
        return Ok(Cut::Nothing);
    };
    let summary = Summary::new(policy, tally, &crate::protect::errors_only());
    Ok(Cut::Rewritten(body, summary))
}

/// Shadow mode: counts what enforce mode would have done with a batch that is forwarded as
/// received. The enforce families count what happened (every record forwarded), the shadow ones
/// what enforce mode would have dropped.
pub fn count_shadow(metrics: &RecordsMetrics, shadow: Option<&ShadowRecords>, judged: &Judged) {
    metrics.decoded(judged.encoding);
    metrics.batch(match judged.tally() {
        Some(_) => BatchOutcome::Untouched,
        None => BatchOutcome::MalformedForwarded,
    });
    if let Some(tally) = judged.tally() {
        metrics.record_forwarded_whole(tally);
    }
    let Some(shadow) = shadow else {
        return;
    };
    if let Some(tally) = judged.tally() {
        shadow.record(tally);
    }
    shadow.batch(judged.outcome());
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
