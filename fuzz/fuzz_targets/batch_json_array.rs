//! JSON array batches: the batch invariants (`verbosity_guard_fuzz::batch`) and the exact rewrite: `[`,
//! the kept elements as sent joined by `,`, `]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verbosity_guard::records::Format;
use verbosity_guard_fuzz::batch;

fuzz_target!(|data: &[u8]| {
    let Some((body, run)) = batch::check(Format::JsonArray, data) else {
        return;
    };
    let mut want = vec![b'['];
    want.extend(batch::kept(&body, &run.records).join(&b','));
    want.push(b']');
    assert_eq!(
        run.rewritten, want,
        "the kept elements, in order, byte for byte"
    );
});
