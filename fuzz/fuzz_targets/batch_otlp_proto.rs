//! OTLP proto batches: the batch invariants (`verbosity_guard_fuzz::batch`), and the rewritten
//! request read back: its records are the kept input records, byte for byte and in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verbosity_guard::records::Format;
use verbosity_guard_fuzz::batch;

fuzz_target!(|data: &[u8]| {
    let Some((body, run)) = batch::check(Format::OtlpProto, data) else {
        return;
    };
    let want = batch::kept(&body, &run.records);
    let got = batch::reparse(Format::OtlpProto, &run.rewritten);
    assert_eq!(got, want, "the kept records, in order, byte for byte");
});
