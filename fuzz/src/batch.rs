//! The invariants of the batch filter, for every format.
//!
//! A body goes through the engine's steps (`Batch::parse_bytes_as`, `filter::decide_tightened`,
//! `Batch::rewrite`) and, separately and with fresh budgets, through `decide::records::judge`
//! as the proxy and `simulate` call it (encoded as the spec says). Then:
//! - every record is counted once: per level, received = forwarded + dropped, and the counts
//!   are those of the records' own marks;
//! - the forwarded batch is the kept input records, byte for byte and in order;
//! - the forwarded batch is no larger than the received one;
//! - the heap the engine used is linear in the body (a fixed factor), and a decoded body never
//!   exceeds its cap;
//! - `judge` decides exactly what the engine decided.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use verbosity_guard::codec::{self, Encoding};
use verbosity_guard::decide::Reject;
use verbosity_guard::decide::records::judge;
use verbosity_guard::records::filter::{Tally, decide_tightened};
use verbosity_guard::records::{Batch, Format, Level, Record};

use crate::heap;
use crate::spec::Spec;

/// Most heap bytes the engine may hold per body byte while it parses, decides and rewrites a
/// batch (plus [`HEAP_SLACK`]). The worst case is many tiny records: each is a 24-byte `Record`
/// (and, for OTLP protobuf, a 32-byte `Bytes` inside a decoded envelope) in vectors that grow by
/// doubling.
pub const HEAP_PER_BYTE: usize = 160;
pub const HEAP_SLACK: usize = 64 << 10;

/// What the engine made of a body that is the format.
pub struct Run {
    pub records: Vec<Record>,
    pub tally: Tally,
    pub rewritten: Vec<u8>,
}

/// Checks every invariant on `data` (a head of settings, then the body) read as `format`.
/// Returns the engine's run when the body was the format, for format-specific checks.
pub fn check(format: Format, data: &[u8]) -> Option<(Bytes, Run)> {
    let (head, body) = crate::split(data);
    let spec = Spec::from_head(head);
    let body = Bytes::copy_from_slice(body);
    let policy = spec.policy(format);
    let tighten = spec.tighten();

    let (parsed, used) = heap::peak(|| {
        Batch::parse_bytes_as(&policy, format, &body, &tighten).map(|mut batch| {
            let tally = decide_tightened(&mut batch.records, &policy, spec.key(), &tighten);
            let rewritten = batch.rewrite(&body);
            (batch, tally, rewritten)
        })
    });
    assert!(
        used <= HEAP_PER_BYTE * body.len() + HEAP_SLACK,
        "{used} heap bytes for a {}-byte {} body",
        body.len(),
        format.as_str()
    );
    let run = parsed.ok().map(|(batch, tally, rewritten)| {
        accounting(&batch.records, &tally);
        Run {
            records: batch.records,
            tally,
            rewritten,
        }
    });
    if let Some(run) = &run
        && run.tally.dropped() > 0
    {
        assert!(
            run.rewritten.len() <= body.len(),
            "rewritten {} > received {}",
            run.rewritten.len(),
            body.len()
        );
    }
    through_judge(&spec, format, &body, run.as_ref());
    run.map(|r| (body, r))
}

/// Per level, the tally is the records' own marks, and received = forwarded + dropped.
fn accounting(records: &[Record], tally: &Tally) {
    for level in Level::ALL {
        let t = tally.level(level);
        let of_level = || records.iter().filter(|r| r.level == level);
        let kept = || of_level().filter(|r| r.keep);
        assert_eq!(t.received, of_level().count() as u64, "{level} received");
        assert_eq!(t.forwarded, kept().count() as u64, "{level} forwarded");
        assert_eq!(
            t.received,
            t.forwarded + t.dropped(),
            "{level} kept + dropped"
        );
        assert_eq!(t.received_bytes, of_level().map(Record::bytes).sum::<u64>());
        assert_eq!(t.forwarded_bytes, kept().map(Record::bytes).sum::<u64>());
        assert_eq!(
            t.malformed,
            of_level().filter(|r| r.malformed).count() as u64
        );
        assert_eq!(t.dropped_malformed, 0, "nothing is refused whole here");
    }
    assert_eq!(tally.received(), records.len() as u64);
    for r in records {
        assert!(r.start <= r.end, "record {}..{}", r.start, r.end);
    }
}

/// The same body through `judge`, as the live guard reads it: encoded as the spec says, with
/// the format's Content-Type, and fresh budgets. It must decide what the engine decided, keep
/// the decoded body under its cap, and forward the engine's output.
fn through_judge(spec: &Spec, format: Format, body: &Bytes, run: Option<&Run>) {
    let policy = spec.policy(format);
    let encoding = spec.encoding();
    let mut headers = HeaderMap::new();
    if encoding != Encoding::Identity {
        headers.insert(
            CONTENT_ENCODING,
            HeaderValue::from_static(encoding.as_str()),
        );
    }
    let content_type = match format {
        Format::OtlpProto => "application/x-protobuf",
        Format::OtlpJson => "application/json",
        Format::JsonArray => "application/json",
        Format::Ndjson => "application/x-ndjson",
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    let received = Bytes::from(codec::encode(encoding, body).expect("encoding into memory"));
    let cap = policy
        .max_decoded
        .min((received.len() as u64).saturating_mul(policy.max_ratio));

    let judged = match judge(&policy, &headers, spec.key(), &spec.tighten(), &received) {
        Ok(j) => j,
        Err(Reject::DecodedTooLarge { limit }) => {
            assert_ne!(encoding, Encoding::Identity);
            assert_eq!(limit, cap);
            assert!(
                body.len() as u64 > cap,
                "{} bytes refused under {cap}",
                body.len()
            );
            return;
        }
        Err(e) => panic!("judge refused a body it encoded itself: {e:?}"),
    };
    if encoding != Encoding::Identity {
        assert!(
            body.len() as u64 <= cap,
            "decoded {} over cap {cap}",
            body.len()
        );
    }
    assert_eq!(judged.format, format);
    assert_eq!(
        judged.tally(),
        run.map(|r| &r.tally),
        "judge and engine disagree"
    );
    let forwarded = judged
        .forward(received.clone())
        .expect("re-encoding in memory");
    let Some(run) = run else {
        // Not the format: forwarded as received, or refused.
        assert_eq!(judged.refusal().is_some(), forwarded.is_none());
        if let Some(f) = forwarded {
            assert_eq!(f, received);
        }
        return;
    };
    match (run.tally.dropped(), run.tally.forwarded()) {
        (0, _) => assert_eq!(forwarded.as_ref(), Some(&received), "untouched batch"),
        (_, 0) => assert!(forwarded.is_none(), "every record dropped"),
        _ => {
            let f = forwarded.expect("a rewritten batch");
            let decoded = codec::decode(encoding, &f, u64::MAX).expect("our own encoding");
            assert_eq!(
                decoded, run.rewritten,
                "judge forwards the engine's rewrite"
            );
        }
    }
}

/// The bytes of the kept records, in order.
pub fn kept<'a>(body: &'a [u8], records: &'a [Record]) -> Vec<&'a [u8]> {
    records
        .iter()
        .filter(|r| r.keep)
        .map(|r| &body[r.range()])
        .collect()
}

/// The records of `out` read back as `format` with every level kept: what an upstream parsing
/// the forwarded batch finds in it.
pub fn reparse(format: Format, out: &[u8]) -> Vec<Vec<u8>> {
    let policy = Spec::keep_all().policy(format);
    let out = Bytes::copy_from_slice(out);
    let batch = Batch::parse_bytes(&policy, &out).expect("a rewritten batch is the format");
    batch
        .records
        .iter()
        .map(|r| out[r.range()].to_vec())
        .collect()
}
