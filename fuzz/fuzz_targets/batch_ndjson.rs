//! NDJSON batches: the batch invariants (`verbosity_guard_fuzz::batch`), the exact rewrite (the kept
//! lines, each ended by `\n`), and the level scanner against serde_json on every line serde_json
//! parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verbosity_guard::records::Format;
use verbosity_guard::records::json::MAX_DEPTH;
use verbosity_guard_fuzz::oracle::{self, Found};
use verbosity_guard_fuzz::{batch, spec::Spec};

fuzz_target!(|data: &[u8]| {
    let Some((body, run)) = batch::check(Format::Ndjson, data) else {
        return;
    };
    let want: Vec<u8> = batch::kept(&body, &run.records)
        .into_iter()
        .flat_map(|line| line.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(
        run.rewritten, want,
        "the kept lines, in order, byte for byte"
    );

    // Differential: the scanner's level is serde_json's.
    let spec = Spec::from_head(verbosity_guard_fuzz::split(data).0);
    let path = spec.level_field();
    for r in &run.records {
        let line = &body[r.range()];
        match oracle::level(line, &path) {
            // Issue 16 makes duplicate level keys malformed; until then the scanner takes the
            // first and serde_json the last, and such lines are not compared.
            Found::Unparsed | Found::DuplicateKeys => {}
            Found::NotObject => {
                assert!(
                    r.malformed,
                    "a JSON line that is not an object is malformed"
                );
                assert_eq!(r.level, spec.unknown_level());
            }
            Found::Object { level, depth } => {
                if r.malformed {
                    // The scanner follows MAX_DEPTH levels of nesting (documented); serde_json
                    // follows 128.
                    assert!(depth > MAX_DEPTH, "valid object called malformed: {line:?}");
                } else {
                    assert_eq!(
                        r.level,
                        level.unwrap_or(spec.unknown_level()),
                        "scanner and serde_json disagree on {:?}",
                        String::from_utf8_lossy(line)
                    );
                }
            }
        }
    }
});
