//! What the fuzz targets share: a heap meter (memory bounds are invariants too), records
//! policies built from a few fuzzer bytes, the batch invariants every format target checks, and
//! the serde_json oracle the NDJSON target compares the level scanner with.
//!
//! Budgets run on governor's `FakeRelativeClock`, as in `simulate`: nothing here reads the
//! wall clock, so a crash replays exactly.

pub mod batch;
pub mod heap;
pub mod oracle;
pub mod spec;

/// Splits a fuzzer input into a fixed-size head (decoded by `arbitrary` into settings) and the
/// body. A fixed size keeps seed files simple: `HEAD` bytes of settings, then a fixture.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    data.split_at(data.len().min(spec::HEAD))
}
