//! A route's `records` rules, drawn by `arbitrary` from the head of a fuzzer input.
//!
//! The rules are built as the engine defines them ([`RecordsPolicy`], the same types `compile`
//! produces), on a fresh `FakeRelativeClock`: every budget starts full, and two policies built
//! from one spec decide one batch alike.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use governor::clock::FakeRelativeClock;
use verbosity_guard::budget::{Budget, KeyedBudget, Quota};
use verbosity_guard::codec::Encoding;
use verbosity_guard::records::filter::Tighten;
use verbosity_guard::records::{
    Format, Level, LevelBudget, LevelRule, OnMalformed, RecordsPolicy, Sample, SampleBy,
};

/// Bytes of an input's head that `arbitrary` reads the settings from.
pub const HEAD: usize = 32;

pub type Clock = FakeRelativeClock;

/// One level's rule.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum RuleSpec {
    Keep,
    Drop,
    /// Per thousand.
    Sample(u16),
    /// A record budget with this burst, the route's or each client's.
    Records {
        burst: u8,
        per_client: bool,
    },
    /// A byte budget with this burst.
    Bytes {
        burst: u16,
        per_client: bool,
    },
    /// Sample, then a record budget.
    SampleThenRecords {
        per_thousand: u16,
        burst: u8,
    },
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Spec {
    pub rules: [RuleSpec; Level::COUNT],
    unknown: u8,
    /// Which level field path JSON formats use.
    field: u8,
    sample_by_field: bool,
    reject_malformed: bool,
    /// A brownout's tightening, per level, per thousand.
    tighten: [Option<u16>; Level::COUNT],
    pub key: Option<u8>,
    encoding: u8,
    /// `max_decoded` in KiB (plus one) and `max_ratio`.
    max_decoded_kib: u8,
    max_ratio: u8,
}

impl Spec {
    /// The settings in `head` (missing bytes read as zeroes: keep everything).
    pub fn from_head(head: &[u8]) -> Spec {
        Spec::arbitrary(&mut Unstructured::new(head)).unwrap_or_else(|_| Spec::keep_all())
    }

    /// Every level kept, nothing tightened: the policy a reparse uses.
    pub fn keep_all() -> Spec {
        Spec {
            rules: [RuleSpec::Keep; Level::COUNT],
            unknown: 2,
            field: 0,
            sample_by_field: false,
            reject_malformed: false,
            tighten: [None; Level::COUNT],
            key: None,
            encoding: 0,
            max_decoded_kib: 255,
            max_ratio: 255,
        }
    }

    pub fn level_field(&self) -> Vec<Box<[u8]>> {
        let path: &[&[u8]] = match self.field % 3 {
            0 => &[b"level"],
            1 => &[b"log", b"level"],
            _ => &[b"severity"],
        };
        path.iter().map(|k| Box::from(*k)).collect()
    }

    pub fn unknown_level(&self) -> Level {
        Level::ALL[usize::from(self.unknown) % Level::COUNT]
    }

    pub fn encoding(&self) -> Encoding {
        match self.encoding % 4 {
            1 => Encoding::Gzip,
            2 => Encoding::Zstd,
            _ => Encoding::Identity,
        }
    }

    pub fn tighten(&self) -> Tighten {
        Tighten(
            self.tighten
                .map(|t| t.map(|pt| Sample::per_million(u32::from(pt) * 1000))),
        )
    }

    pub fn key(&self) -> Option<u64> {
        self.key.map(u64::from)
    }

    /// The rules as a route's compiled `records` section, read as `format`.
    pub fn policy(&self, format: Format) -> RecordsPolicy<Clock> {
        let clock = FakeRelativeClock::default();
        RecordsPolicy {
            format,
            level_field: self.level_field(),
            rules: self.rules.map(|r| rule(r, &clock)),
            unknown_level: self.unknown_level(),
            on_malformed: match self.reject_malformed {
                true => OnMalformed::Reject,
                false => OnMalformed::Forward,
            },
            sample_by: match (self.sample_by_field, format.is_otlp()) {
                (false, _) => SampleBy::Record,
                (true, true) => SampleBy::Field(vec![Box::from(&b"traceId"[..])]),
                (true, false) => SampleBy::Field(vec![Box::from(&b"trace_id"[..])]),
            },
            max_decoded: (u64::from(self.max_decoded_kib) + 1) << 10,
            max_ratio: u64::from(self.max_ratio).max(1),
        }
    }
}

fn rule(spec: RuleSpec, clock: &Clock) -> LevelRule<Clock> {
    let per_minute = |burst: u64| Quota {
        amount: 1,
        per: Duration::from_secs(60),
        burst: burst.max(1),
    };
    let budget = |quota: Quota, per_client: bool| match per_client {
        false => LevelBudget::Route(Arc::new(Budget::new(quota, clock.clone()))),
        true => LevelBudget::Client {
            // Two keys fit: a third client shares the overflow budget.
            keyed: Arc::new(KeyedBudget::new(quota, 2, clock.clone())),
            overflow: Arc::new(Budget::new(quota, clock.clone())),
        },
    };
    let sample = |per_thousand: u16| Some(Sample::per_million(u32::from(per_thousand) * 1000));
    let mut r = LevelRule::default();
    match spec {
        RuleSpec::Keep => {}
        RuleSpec::Drop => r.drop = true,
        RuleSpec::Sample(pt) => r.sample = sample(pt),
        RuleSpec::Records { burst, per_client } => {
            r.records = Some(budget(per_minute(u64::from(burst)), per_client));
        }
        RuleSpec::Bytes { burst, per_client } => {
            r.bytes = Some(budget(per_minute(u64::from(burst)), per_client));
        }
        RuleSpec::SampleThenRecords {
            per_thousand,
            burst,
        } => {
            r.sample = sample(per_thousand);
            r.records = Some(budget(per_minute(u64::from(burst)), false));
        }
    }
    r
}
