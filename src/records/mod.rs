//! Log-level budgets inside telemetry batches.
//!
//! A batch goes through three pure steps:
//! 1. **parse** (one module per format): split the body into records and classify each one's
//!    level, without copying records;
//! 2. **decide** ([`filter::decide`]): run each record through its level's rule (keep, drop,
//!    sample, rate) and mark it kept or dropped;
//! 3. **rewrite** (the format module again): the kept records, in order, as a valid document of
//!    the same format. Records are never re-serialized: NDJSON lines and JSON array elements
//!    are copied byte for byte, OTLP log records as their original protobuf bytes.

pub mod clamp;
pub mod filter;
pub mod json;
pub mod level;
pub mod ndjson;
pub mod otlp;
pub mod sample;

use std::sync::Arc;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use serde::{Deserialize, Serialize};

use crate::budget::{Budget, KeyedBudget, Quota, Verdict};
pub use level::Level;
pub use sample::Sample;

/// How a route's batches are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// One JSON array of objects.
    JsonArray,
    /// OTLP `ExportLogsServiceRequest`, JSON encoding.
    OtlpJson,
    /// OTLP `ExportLogsServiceRequest`, protobuf encoding.
    OtlpProto,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::JsonArray => "json-array",
            Format::OtlpJson => "otlp-json",
            Format::OtlpProto => "otlp-proto",
        }
    }

    pub fn is_otlp(self) -> bool {
        matches!(self, Format::OtlpJson | Format::OtlpProto)
    }

    /// The format of one request on a route of this format: an OTLP route takes protobuf and
    /// JSON alike, as OTLP/HTTP receivers do, by the request's Content-Type; other formats, and
    /// OTLP requests without a recognized Content-Type, use the route's.
    pub fn for_content_type(self, content_type: Option<&[u8]>) -> Format {
        if !self.is_otlp() {
            return self;
        }
        let Some(ct) = content_type else {
            return self;
        };
        let essence = ct.split(|&b| b == b';').next().unwrap_or(ct).trim_ascii();
        if essence.eq_ignore_ascii_case(b"application/json") {
            Format::OtlpJson
        } else if essence.eq_ignore_ascii_case(b"application/x-protobuf")
            || essence.eq_ignore_ascii_case(b"application/protobuf")
        {
            Format::OtlpProto
        } else {
            self
        }
    }
}

/// What to do with a body that is not the route's format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnMalformed {
    /// Forward it untouched (and count it).
    #[default]
    Forward,
    /// Answer 400 with the reason.
    Reject,
}

/// Whose budget a level's rate is: the route's, shared by every client, or each client's own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    #[default]
    Route,
    Client,
}

/// A level's rate budget, in records or in bytes.
pub enum LevelBudget<C: Clock = DefaultClock> {
    Route(Arc<Budget<C>>),
    /// Per client key. When the key store is full, clients it does not hold share `overflow`,
    /// one budget of the same size, so an untracked client can never exceed one client's rate.
    Client {
        keyed: Arc<KeyedBudget<C>>,
        overflow: Arc<Budget<C>>,
    },
}

impl<C: Clock> LevelBudget<C> {
    pub fn quota(&self) -> Quota {
        match self {
            LevelBudget::Route(b) => b.quota(),
            LevelBudget::Client { keyed, .. } => keyed.quota(),
        }
    }

    pub fn per(&self) -> Per {
        match self {
            LevelBudget::Route(_) => Per::Route,
            LevelBudget::Client { .. } => Per::Client,
        }
    }

    /// Charges `n` units; `untracked` is set when the client's key could not be tracked.
    fn check(&self, key: Option<u64>, n: u64, untracked: &mut bool) -> Verdict {
        match (self, key) {
            (LevelBudget::Route(b), _) => b.check(n),
            (LevelBudget::Client { keyed, overflow }, Some(key)) => match keyed.check(key, n) {
                Verdict::Untracked => {
                    *untracked = true;
                    overflow.check(n)
                }
                v => v,
            },
            // Without a key (never the case: the route computes one when any rule needs it),
            // the overflow budget still bounds the records.
            (LevelBudget::Client { overflow, .. }, None) => overflow.check(n),
        }
    }

    /// Charges as many of the first `n` items as fit, in order; `cost(k)` is what the first `k`
    /// items cost together (non-decreasing in `k`). Returns how many fit. Binary lifting: at
    /// most `log2(n) + 2` charges, and exactly `cost(k)` is charged (rounded up to the
    /// budget's cell size per charge).
    pub fn charge_prefix(
        &self,
        key: Option<u64>,
        n: usize,
        cost: impl Fn(usize) -> u64,
        untracked: &mut bool,
    ) -> usize {
        if n == 0 {
            return 0;
        }
        if self.check(key, cost(n), untracked) == Verdict::Allow {
            return n;
        }
        let mut taken = 0;
        let mut step = 1usize << (usize::BITS - 1 - n.leading_zeros());
        while step > 0 {
            let next = taken + step;
            if next < n && self.check(key, cost(next) - cost(taken), untracked) == Verdict::Allow {
                taken = next;
            }
            step /= 2;
        }
        taken
    }
}

/// One level's rule. Applied in this order: `drop`, then `sample`, then the record rate, then
/// the byte rate. A rule with none of them keeps every record.
pub struct LevelRule<C: Clock = DefaultClock> {
    pub drop: bool,
    pub sample: Option<Sample>,
    pub records: Option<LevelBudget<C>>,
    pub bytes: Option<LevelBudget<C>>,
}

impl<C: Clock> Default for LevelRule<C> {
    fn default() -> Self {
        LevelRule {
            drop: false,
            sample: None,
            records: None,
            bytes: None,
        }
    }
}

impl<C: Clock> LevelRule<C> {
    /// True when every record of this level is forwarded whatever the budgets say.
    pub fn keeps_all(&self) -> bool {
        !self.drop && self.sample.is_none() && self.records.is_none() && self.bytes.is_none()
    }

    pub fn needs_client_key(&self) -> bool {
        [&self.records, &self.bytes]
            .into_iter()
            .flatten()
            .any(|b| b.per() == Per::Client)
    }
}

/// Where the sampling hash comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleBy {
    /// The record's bytes as sent.
    Record,
    /// One field's value (JSON formats: a field path; OTLP: the trace id), so all records of
    /// one trace are kept or dropped together. Records without the field hash their bytes.
    Field(Vec<Box<[u8]>>),
}

/// A route's compiled `records` section.
pub struct RecordsPolicy<C: Clock = DefaultClock> {
    pub format: Format,
    /// Path to the level inside a JSON record (`level`, `log.level`). Unused for OTLP, whose
    /// level is `severityNumber`, then `severityText`.
    pub level_field: Vec<Box<[u8]>>,
    /// Indexed by [`Level::index`].
    pub rules: [LevelRule<C>; Level::COUNT],
    /// The level of records whose level is missing, unrecognized or unreadable.
    pub unknown_level: Level,
    pub on_malformed: OnMalformed,
    pub sample_by: SampleBy,
    /// Largest decoded (decompressed) body.
    pub max_decoded: u64,
    /// Largest decoded size as a multiple of the encoded size.
    pub max_ratio: u64,
}

impl<C: Clock> RecordsPolicy<C> {
    pub fn rule(&self, level: Level) -> &LevelRule<C> {
        &self.rules[level.index()]
    }

    pub fn needs_client_key(&self) -> bool {
        self.rules.iter().any(LevelRule::needs_client_key)
    }

    /// Which levels need a sampling hash per record (to sample, or to be tightened).
    pub fn hashes(&self, tighten: &filter::Tighten) -> [bool; Level::COUNT] {
        std::array::from_fn(|i| {
            let rule = &self.rules[i];
            !rule.drop && (rule.sample.is_some() || tighten.touches(Level::ALL[i]))
        })
    }

    /// Every level budget, for eviction and the tracked-keys gauge.
    pub fn budgets(&self) -> impl Iterator<Item = (Level, &'static str, &LevelBudget<C>)> {
        Level::ALL.into_iter().flat_map(move |l| {
            let r = self.rule(l);
            [("records", &r.records), ("bytes", &r.bytes)]
                .into_iter()
                .filter_map(move |(kind, b)| b.as_ref().map(|b| (l, kind, b)))
        })
    }

    /// The most verbose level a sender may use without losing records to a rule: every level
    /// from it up to `fatal` is kept whole (no drop, no sample) and, if rated, did not run out
    /// in `tally`. `None` when even `fatal` is not.
    pub fn max_accepted(&self, tally: &filter::Tally, tighten: &filter::Tighten) -> Option<Level> {
        let mut accepted = None;
        for level in Level::ALL.into_iter().rev() {
            let r = self.rule(level);
            if r.drop
                || r.sample.is_some()
                || tighten.touches(level)
                || tally.level(level).dropped_rate > 0
            {
                break;
            }
            accepted = Some(level);
        }
        accepted
    }
}

/// One record as the filter sees it: where it is, what level it has, whether it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Byte range in the (decoded) body: an NDJSON line, a JSON array element, an OTLP JSON
    /// log record object, or an OTLP protobuf `LogRecord`'s encoding (without its field tag
    /// and length).
    pub start: u32,
    pub end: u32,
    pub level: Level,
    /// The record could not be read; it was given the unknown level.
    pub malformed: bool,
    /// Sampling hash, computed only for levels that sample.
    pub hash: u64,
    pub keep: bool,
}

impl Record {
    pub fn bytes(&self) -> u64 {
        u64::from(self.end - self.start)
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The body is not the route's declared format. The reason is short and goes into the 400
/// body when the route rejects malformed batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotFormat(pub &'static str);

/// What a format needs to keep between parsing a batch and rewriting it.
enum Doc {
    Ndjson,
    JsonArray,
    OtlpProto(otlp::ProtoBatch),
    OtlpJson(otlp::JsonBatch),
}

/// A parsed batch: its records, classified, and what its format needs to rewrite it.
pub struct Batch {
    pub records: Vec<Record>,
    doc: Doc,
}

impl Batch {
    /// Splits `body` into records and classifies each under `policy`. An OTLP protobuf body is
    /// copied once first (its records are kept as slices of a shared buffer); a body already in
    /// a [`Bytes`] goes through [`Batch::parse_bytes`] without that copy.
    pub fn parse<C: Clock>(policy: &RecordsPolicy<C>, body: &[u8]) -> Result<Batch, NotFormat> {
        Batch::parse_shared(policy, body, None)
    }

    /// [`Batch::parse`] of a shared body: OTLP protobuf records become sub-slices of `body`,
    /// with no copy.
    pub fn parse_bytes<C: Clock>(
        policy: &RecordsPolicy<C>,
        body: &Bytes,
    ) -> Result<Batch, NotFormat> {
        Batch::parse_shared(policy, body, Some(body))
    }

    /// [`Batch::parse_bytes`] as `format` instead of the policy's (OTLP/HTTP sends protobuf and
    /// JSON to the same path and tells them apart by Content-Type), hashing the records that
    /// `tighten` may drop.
    pub fn parse_bytes_as<C: Clock>(
        policy: &RecordsPolicy<C>,
        format: Format,
        body: &Bytes,
        tighten: &filter::Tighten,
    ) -> Result<Batch, NotFormat> {
        Batch::parse_format(policy, format, body, Some(body), tighten)
    }

    fn parse_shared<C: Clock>(
        policy: &RecordsPolicy<C>,
        body: &[u8],
        shared: Option<&Bytes>,
    ) -> Result<Batch, NotFormat> {
        Batch::parse_format(policy, policy.format, body, shared, &filter::Tighten::NONE)
    }

    fn parse_format<C: Clock>(
        policy: &RecordsPolicy<C>,
        format: Format,
        body: &[u8],
        shared: Option<&Bytes>,
        tighten: &filter::Tighten,
    ) -> Result<Batch, NotFormat> {
        let mut records = Vec::new();
        let classifier = json::Classifier {
            level_field: &policy.level_field,
            unknown: policy.unknown_level,
            hashes: policy.hashes(tighten),
            sample_by: &policy.sample_by,
        };
        let doc = match format {
            Format::Ndjson => {
                ndjson::parse(body, &classifier, &mut records)?;
                Doc::Ndjson
            }
            Format::JsonArray => {
                ndjson::parse_array(body, &classifier, &mut records)?;
                Doc::JsonArray
            }
            Format::OtlpProto => {
                let copied;
                let shared = match shared {
                    Some(b) => b,
                    None => {
                        copied = Bytes::copy_from_slice(body);
                        &copied
                    }
                };
                Doc::OtlpProto(otlp::binary::parse(shared, &classifier, &mut records)?)
            }
            Format::OtlpJson => Doc::OtlpJson(otlp::json::parse(body, &classifier, &mut records)?),
        };
        Ok(Batch { records, doc })
    }

    /// The kept records of `body` (the body this batch was parsed from) as a document of the
    /// same format. An OTLP protobuf batch holds its records itself and does not read `body`.
    pub fn rewrite(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len());
        match &self.doc {
            Doc::Ndjson => ndjson::rewrite(body, &self.records, &mut out),
            Doc::JsonArray => ndjson::rewrite_array(body, &self.records, &mut out),
            Doc::OtlpProto(b) => b.rewrite(&self.records, &mut out),
            Doc::OtlpJson(b) => b.rewrite(body, &self.records, &mut out),
        }
        out
    }
}
