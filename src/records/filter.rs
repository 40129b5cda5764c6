//! The pure batch filter: every record through its level's rule, in order.
//!
//! Rates are charged per level and per batch, not per record: the first `k` candidates of a
//! level that fit its budget are kept and the rest dropped, which is what charging them one by
//! one in order would do, in `O(log n)` budget operations instead of `n`. The record rate is
//! charged before the byte rate; records the byte rate then refuses have still spent their
//! record budget.

use governor::clock::Clock;

use super::{Level, Record, RecordsPolicy, Sample};

/// Why a record was not forwarded. The names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The level's rule is `drop`.
    Rule,
    /// Not in the level's sample.
    Sample,
    /// Over the level's record or byte rate.
    Rate,
    /// The batch was malformed and the route rejects malformed batches.
    Malformed,
    /// Tightened away by the brownout controller while the upstream is in distress.
    Brownout,
    /// Cut by the guard's own shedding: a bulk batch with no upstream slot in time goes on
    /// with its error and fatal records only (see [`cut_below`]).
    Shed,
}

impl DropReason {
    pub const COUNT: usize = 6;
    /// In the order of the enum: `ALL[r as usize] == r`.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Rule,
        DropReason::Sample,
        DropReason::Rate,
        DropReason::Malformed,
        DropReason::Brownout,
        DropReason::Shed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Rule => "drop_rule",
            DropReason::Sample => "sample",
            DropReason::Rate => "rate",
            DropReason::Malformed => "malformed",
            DropReason::Brownout => "brownout",
            DropReason::Shed => "shed",
        }
    }
}

/// One level's counts for one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelTally {
    pub received: u64,
    pub received_bytes: u64,
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    pub dropped_rule: u64,
    pub dropped_sample: u64,
    pub dropped_rate: u64,
    pub dropped_malformed: u64,
    pub dropped_brownout: u64,
    pub dropped_shed: u64,
    /// Bytes of the dropped records, by reason, indexed like [`DropReason::ALL`].
    pub dropped_bytes: [u64; DropReason::COUNT],
    /// Records whose level could not be read (counted in `received` of the unknown level).
    pub malformed: u64,
}

impl LevelTally {
    pub fn dropped(&self) -> u64 {
        self.dropped_rule
            + self.dropped_sample
            + self.dropped_rate
            + self.dropped_malformed
            + self.dropped_brownout
            + self.dropped_shed
    }

    pub fn dropped_by(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Rule => self.dropped_rule,
            DropReason::Sample => self.dropped_sample,
            DropReason::Rate => self.dropped_rate,
            DropReason::Malformed => self.dropped_malformed,
            DropReason::Brownout => self.dropped_brownout,
            DropReason::Shed => self.dropped_shed,
        }
    }

    /// Bytes of the records dropped for `reason`.
    pub fn dropped_bytes_by(&self, reason: DropReason) -> u64 {
        self.dropped_bytes[reason as usize]
    }

    fn drop(&mut self, reason: DropReason, bytes: u64) {
        self.dropped_bytes[reason as usize] += bytes;
        match reason {
            DropReason::Rule => self.dropped_rule += 1,
            DropReason::Sample => self.dropped_sample += 1,
            DropReason::Rate => self.dropped_rate += 1,
            DropReason::Malformed => self.dropped_malformed += 1,
            DropReason::Brownout => self.dropped_brownout += 1,
            DropReason::Shed => self.dropped_shed += 1,
        }
    }
}

/// A batch's counts, per level. `received = forwarded + dropped` for every level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub levels: [LevelTally; Level::COUNT],
    /// Some client key had to share the overflow budget because the key store was full.
    pub untracked: bool,
}

impl Tally {
    pub fn level(&self, level: Level) -> &LevelTally {
        &self.levels[level.index()]
    }

    pub fn received(&self) -> u64 {
        self.levels.iter().map(|l| l.received).sum()
    }

    pub fn forwarded(&self) -> u64 {
        self.levels.iter().map(|l| l.forwarded).sum()
    }

    pub fn dropped(&self) -> u64 {
        self.levels.iter().map(LevelTally::dropped).sum()
    }

    pub fn malformed(&self) -> u64 {
        self.levels.iter().map(|l| l.malformed).sum()
    }

    /// Counts `records` as received and dropped for `reason` without deciding anything (a
    /// rejected batch).
    pub fn drop_all(records: &[Record], reason: DropReason) -> Tally {
        let mut t = Tally::default();
        for r in records {
            let l = &mut t.levels[r.level.index()];
            l.received += 1;
            l.received_bytes += r.bytes();
            l.malformed += u64::from(r.malformed);
            l.drop(reason, r.bytes());
        }
        t
    }
}

/// Tightening on top of a route's rules while the upstream is in distress (see
/// `protect::Brownout`): per level, only this share of the records that the rules would keep
/// goes on to the level's rates (`0%` drops the level). Decided by the same hash as `sample`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tighten(pub [Option<Sample>; Level::COUNT]);

impl Tighten {
    pub const NONE: Tighten = Tighten([None; Level::COUNT]);

    pub fn get(&self, level: Level) -> Option<Sample> {
        self.0[level.index()]
    }

    /// True when some record of `level` may be dropped by the tightening.
    pub fn touches(&self, level: Level) -> bool {
        self.get(level).is_some_and(|s| s.per_million < 1_000_000)
    }
}

/// Marks each record kept or dropped under `policy`, charging the level budgets of `key` (the
/// client) and of the route. Returns the batch's counts.
pub fn decide<C: Clock>(
    records: &mut [Record],
    policy: &RecordsPolicy<C>,
    key: Option<u64>,
) -> Tally {
    decide_tightened(records, policy, key, &Tighten::NONE)
}

/// [`decide`], with `tighten` applied after each level's `drop` and `sample`, before its rates
/// (records a brownout removes spend no budget).
pub fn decide_tightened<C: Clock>(
    records: &mut [Record],
    policy: &RecordsPolicy<C>,
    key: Option<u64>,
    tighten: &Tighten,
) -> Tally {
    let mut tally = Tally::default();
    // Candidates per level after drop and sample: the rates decide among them.
    let mut candidates = [0usize; Level::COUNT];
    for r in records.iter_mut() {
        let rule = policy.rule(r.level);
        let t = &mut tally.levels[r.level.index()];
        t.received += 1;
        t.received_bytes += r.bytes();
        t.malformed += u64::from(r.malformed);
        r.keep = if rule.drop {
            t.drop(DropReason::Rule, r.bytes());
            false
        } else if rule.sample.is_some_and(|s| !s.keeps(r.hash)) {
            t.drop(DropReason::Sample, r.bytes());
            false
        } else if tighten.get(r.level).is_some_and(|s| !s.keeps(r.hash)) {
            t.drop(DropReason::Brownout, r.bytes());
            false
        } else {
            candidates[r.level.index()] += 1;
            true
        };
    }

    for level in Level::ALL {
        let rule = policy.rule(level);
        let n = candidates[level.index()];
        if n == 0 || (rule.records.is_none() && rule.bytes.is_none()) {
            continue;
        }
        let mut fit = n;
        if let Some(b) = &rule.records {
            fit = b.charge_prefix(key, fit, |k| k as u64, &mut tally.untracked);
        }
        if let Some(b) = &rule.bytes
            && fit > 0
        {
            // Byte cost of the first k candidates, as a prefix sum over this level's records.
            let prefix: Vec<u64> = std::iter::once(0)
                .chain(
                    candidate_lens(records, level)
                        .take(fit)
                        .scan(0u64, |acc, l| {
                            *acc += l;
                            Some(*acc)
                        }),
                )
                .collect();
            fit = b.charge_prefix(key, fit, |k| prefix[k], &mut tally.untracked);
        }
        if fit < n {
            let t = &mut tally.levels[level.index()];
            for r in records
                .iter_mut()
                .filter(|r| r.level == level && r.keep)
                .skip(fit)
            {
                r.keep = false;
                t.drop(DropReason::Rate, r.bytes());
            }
        }
    }

    for r in records.iter().filter(|r| r.keep) {
        let t = &mut tally.levels[r.level.index()];
        t.forwarded += 1;
        t.forwarded_bytes += r.bytes();
    }
    tally
}

/// Drops every kept record less severe than `from` for [`DropReason::Shed`], moving its counts
/// in `tally` from forwarded to dropped. Returns how many records are still kept.
pub fn cut_below(records: &mut [Record], tally: &mut Tally, from: Level) -> u64 {
    for r in records.iter_mut().filter(|r| r.keep && r.level < from) {
        r.keep = false;
        let t = &mut tally.levels[r.level.index()];
        t.forwarded -= 1;
        t.forwarded_bytes -= r.bytes();
        t.drop(DropReason::Shed, r.bytes());
    }
    tally.forwarded()
}

fn candidate_lens(records: &[Record], level: Level) -> impl Iterator<Item = u64> + '_ {
    records
        .iter()
        .filter(move |r| r.level == level && r.keep)
        .map(Record::bytes)
}
