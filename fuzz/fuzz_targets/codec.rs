//! gzip and zstd decoding under a cap (`codec::decode`), as the records phase calls it.
//!
//! Two inputs in one: the bytes as a compressed body (whatever a client sends), and the bytes
//! compressed by the guard's own encoder, repeated to make a bomb. Invariants: the output never
//! exceeds the cap; a body that decodes to more than the cap ends in `TooLarge` with that cap;
//! what fits comes back whole; and the heap the decoder's Rust side holds stays within the
//! cap plus the encoded body (zstd's own C allocations are bounded by `-malloc_limit_mb`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use verbosity_guard::codec::{self, CodecError, Encoding};
use verbosity_guard_fuzz::heap;

fn decode(enc: Encoding, body: &[u8], cap: u64) -> Result<Vec<u8>, CodecError> {
    let (out, used) = heap::peak(|| codec::decode(enc, body, cap));
    // The output buffer may grow past the cap by one doubling before the cap is seen.
    let bound = 2 * (cap as usize + 1) + 8 * body.len() + (256 << 10);
    assert!(used <= bound, "{used} heap bytes under cap {cap}");
    if let Ok(out) = &out {
        assert!(
            out.len() as u64 <= cap,
            "{} bytes out under cap {cap}",
            out.len()
        );
    }
    if let Err(CodecError::TooLarge { limit }) = &out {
        assert_eq!(*limit, cap);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let enc = match first & 1 {
        0 => Encoding::Gzip,
        _ => Encoding::Zstd,
    };
    // Caps from 0 to 64 KiB, as a route's `max_decoded` or `max_ratio` x size makes them.
    let cap = u64::from(first >> 1) * 512;

    // 1. Whatever a client sends.
    let _ = decode(enc, rest, cap);

    // 2. A known payload, many times over: the exact answer is known.
    let times = usize::from(first >> 4) * 64 + 1;
    let plain = rest.repeat(times.min((1 << 20) / rest.len().max(1)));
    let packed = codec::encode(enc, &plain).expect("encoding into memory");
    match decode(enc, &packed, cap) {
        Ok(out) => assert_eq!(out, plain),
        Err(CodecError::TooLarge { .. }) => assert!(plain.len() as u64 > cap),
        Err(e) => panic!("our own {enc:?} encoding refused: {e}"),
    }
});
