//! Deterministic sampling: a record is kept when a hash of its bytes (or of one field) falls
//! under the rate's threshold, so a retried batch keeps exactly the same records.
//!
//! The hash is fixed (not seeded per process) so every replica and every restart agrees. It is
//! not a defence against a sender that crafts records to pass the sample: such a sender could
//! just as well label them `error`. It only has to spread real records evenly.

/// A fraction of records to keep, as a threshold on a 64-bit hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Kept per million, for display.
    pub per_million: u32,
    threshold: u64,
}

impl Sample {
    /// `per_million` of a million records are kept (clamped to 1,000,000).
    pub fn per_million(per_million: u32) -> Sample {
        let per_million = per_million.min(1_000_000);
        let threshold = if per_million == 1_000_000 {
            u64::MAX
        } else {
            // < 2^64 because per_million < 1e6.
            ((u128::from(per_million) << 64) / 1_000_000) as u64
        };
        Sample {
            per_million,
            threshold,
        }
    }

    pub fn keeps(&self, hash: u64) -> bool {
        hash < self.threshold || self.threshold == u64::MAX
    }
}

/// A fast, stable 64-bit hash of `bytes`: 8 bytes per multiply, then a full avalanche.
pub fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // fmix64 from MurmurHash3: every input bit affects every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_the_configured_fraction() {
        let one_percent = Sample::per_million(10_000);
        let kept = (0..200_000)
            .filter(|i| {
                one_percent.keeps(hash(format!(r#"{{"seq":{i},"level":"debug"}}"#).as_bytes()))
            })
            .count();
        // 2000 expected; the hash is fixed, so this count is too.
        assert!((1_800..=2_200).contains(&kept), "{kept}");
        assert!(!Sample::per_million(0).keeps(0));
        assert!(Sample::per_million(1_000_000).keeps(u64::MAX));
    }

    const PINNED: u64 = 10_384_598_926_643_695_712;

    #[test]
    fn is_stable_and_sensitive_to_every_byte() {
        assert_eq!(hash(b"abc"), hash(b"abc"));
        assert_ne!(hash(b"abc"), hash(b"abd"));
        assert_ne!(hash(b""), hash(b"\0"));
        assert_ne!(hash(b"12345678x"), hash(b"12345678y"));
        // Pinned: a change of algorithm changes which records every replica samples.
        assert_eq!(hash(b"vehicle"), PINNED);
    }
}
