//! The records phase's decision about a buffered telemetry batch: decode it, parse it, run each
//! record through its level's rule, and say what becomes of the batch.
//!
//! The live guard carries the decision out (forward as received, rewrite, answer itself, or
//! refuse), a shadow route only counts it, and `simulate` reports it: all three start from
//! [`judge`].

use bytes::Bytes;
use governor::clock::Clock;
use http::HeaderMap;
use http::header::{CONTENT_TYPE, HeaderValue};

use super::Reject;
use crate::codec::{self, Encoding};
use crate::protect::Shed;
use crate::records::filter::{self, Tally, Tighten};
use crate::records::{Batch, Format, Level, NotFormat, OnMalformed, RecordsPolicy};

/// What happens to a telemetry batch; the names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every record kept: the body goes upstream as received.
    Untouched,
    /// Some records dropped: a rewritten batch goes upstream.
    Rewritten,
    /// Every record dropped: the guard answers and the upstream is not called.
    AllDropped,
    /// Not the route's format; forwarded as received.
    MalformedForwarded,
    /// Not the route's format; refused with 400.
    MalformedRejected,
}

impl BatchOutcome {
    pub const ALL: [BatchOutcome; 5] = [
        BatchOutcome::Untouched,
        BatchOutcome::Rewritten,
        BatchOutcome::AllDropped,
        BatchOutcome::MalformedForwarded,
        BatchOutcome::MalformedRejected,
    ];

    /// Position in [`BatchOutcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Untouched => "untouched",
            BatchOutcome::Rewritten => "rewritten",
            BatchOutcome::AllDropped => "all_dropped",
            BatchOutcome::MalformedForwarded => "malformed_forwarded",
            BatchOutcome::MalformedRejected => "malformed_rejected",
        }
    }
}

/// A buffered batch judged under its route's rules, nothing done about it yet.
pub struct Judged {
    /// The request's Content-Encoding; `decoded` holds the body decoded from it.
    pub encoding: Encoding,
    /// The format the body was read as (an OTLP route tells JSON from protobuf by Content-Type).
    pub format: Format,
    decoded: Bytes,
    /// The records, each marked kept or dropped, with the batch's counts; or why the body is
    /// not the format.
    parsed: Result<(Batch, Tally), NotFormat>,
    /// What the route does with a body that is not its format.
    on_malformed: OnMalformed,
}

/// Decodes, parses and decides a buffered batch under the route's `records` rules, tightened by
/// `tighten` while the upstream is browned out. The level budgets of `key` (the client) and of
/// the route are charged. Fails only on the body's coding (unsupported, corrupt, too large once
/// decoded); a body that is not the format is an outcome, not an error.
pub fn judge<C: Clock>(
    policy: &RecordsPolicy<C>,
    headers: &HeaderMap,
    key: Option<u64>,
    tighten: &Tighten,
    body: &Bytes,
) -> Result<Judged, Reject> {
    let Read {
        encoding,
        format,
        decoded,
        parsed,
    } = read(policy, headers, body, tighten)?;
    let parsed = parsed.map(|mut batch| {
        let tally = filter::decide_tightened(&mut batch.records, policy, key, tighten);
        (batch, tally)
    });
    Ok(Judged {
        encoding,
        format,
        decoded,
        parsed,
        on_malformed: policy.on_malformed,
    })
}

impl Judged {
    /// What happens to the batch.
    pub fn outcome(&self) -> BatchOutcome {
        match (&self.parsed, self.on_malformed) {
            (Ok((_, tally)), _) => match (tally.dropped(), tally.forwarded()) {
                (0, _) => BatchOutcome::Untouched,
                (_, 0) => BatchOutcome::AllDropped,
                _ => BatchOutcome::Rewritten,
            },
            (Err(_), OnMalformed::Forward) => BatchOutcome::MalformedForwarded,
            (Err(_), OnMalformed::Reject) => BatchOutcome::MalformedRejected,
        }
    }

    /// The refusal of a malformed batch on a route that rejects them.
    pub fn refusal(&self) -> Option<Reject> {
        match (&self.parsed, self.on_malformed) {
            (Err(reason), OnMalformed::Reject) => Some(Reject::MalformedBatch {
                format: self.format.as_str(),
                reason: *reason,
            }),
            _ => None,
        }
    }

    /// Cuts the batch down to its error and fatal records (the guard's own shedding; see
    /// [`filter::cut_below`]). Returns how many records are left to forward: 0 for a batch
    /// that was not read as records.
    pub fn cut_to_errors(&mut self) -> u64 {
        match &mut self.parsed {
            Ok((batch, tally)) => filter::cut_below(&mut batch.records, tally, Level::Error),
            Err(_) => 0,
        }
    }

    /// The counts of a batch that was read.
    pub fn tally(&self) -> Option<&Tally> {
        self.parsed.as_ref().ok().map(|(_, tally)| tally)
    }

    /// The body that goes upstream: `received` itself when nothing was dropped or the batch is
    /// forwarded unread, the kept records re-encoded like the request when some were dropped,
    /// `None` when there is nothing to forward (every record dropped, or refused).
    pub fn forward(&self, received: Bytes) -> Result<Option<Bytes>, Reject> {
        let (batch, tally) = match &self.parsed {
            Ok(parsed) => parsed,
            Err(_) => return Ok((self.on_malformed == OnMalformed::Forward).then_some(received)),
        };
        Ok(match (tally.dropped(), tally.forwarded()) {
            (0, _) => Some(received),
            (_, 0) => None,
            _ => Some(Bytes::from(rewrite(batch, &self.decoded, self.encoding)?)),
        })
    }
}

/// A bulk batch salvaged from a shed (see [`Admitted::salvage`](super::Admitted)) with nothing
/// left to forward is shed after all: its sender retries it whole, and no record is lost. So is
/// one that could not be read as records: there is no error record to tell apart, and
/// forwarding it whole would let any malformed body past the shed.
pub fn salvaged(judged: &Judged, salvage: Option<&Shed>) -> Result<(), Reject> {
    match (salvage, judged.tally()) {
        (None, _) => Ok(()),
        (Some(_), Some(tally)) if tally.forwarded() > 0 => Ok(()),
        (Some(shed), _) => Err(Reject::Shed(*shed)),
    }
}

/// A body read as its route's format: decoded, then parsed (records classified, none decided).
struct Read {
    encoding: Encoding,
    format: Format,
    decoded: Bytes,
    parsed: Result<Batch, NotFormat>,
}

fn read<C: Clock>(
    policy: &RecordsPolicy<C>,
    headers: &HeaderMap,
    body: &Bytes,
    tighten: &Tighten,
) -> Result<Read, Reject> {
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
    let format = format_of(policy.format, headers);
    let parsed = Batch::parse_bytes_as(policy, format, &decoded, tighten);
    Ok(Read {
        encoding,
        format,
        decoded,
        parsed,
    })
}

/// The format a request on a route of `format` is read as: an OTLP route tells JSON from
/// protobuf by the request's Content-Type.
pub fn format_of(format: Format, headers: &HeaderMap) -> Format {
    format.for_content_type(headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes))
}

/// The kept records of a batch, re-encoded like the request was.
fn rewrite(batch: &Batch, decoded: &[u8], encoding: Encoding) -> Result<Vec<u8>, Reject> {
    let rewritten = batch.rewrite(decoded);
    match encoding {
        Encoding::Identity => Ok(rewritten),
        enc => codec::encode(enc, &rewritten)
            .map_err(|_| Reject::Internal("cannot re-encode the batch")),
    }
}

/// The records of a batch refused whole, per level (records, bytes): parsed without any budget
/// charged, since the live guard never reads such a body. `None` when it cannot be read.
pub fn count_unjudged<C: Clock>(
    policy: &RecordsPolicy<C>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<[(u64, u64); Level::COUNT]> {
    let batch = read(policy, headers, body, &Tighten::NONE)
        .ok()?
        .parsed
        .ok()?;
    let mut counts = [(0, 0); Level::COUNT];
    for rec in &batch.records {
        let c = &mut counts[rec.level.index()];
        c.0 += 1;
        c.1 += rec.bytes();
    }
    Some(counts)
}
