//! `Content-Encoding` of telemetry batches: gzip and zstd, decoded under a hard cap and
//! re-encoded the same way for the upstream.
//!
//! Decoding reads at most `cap + 1` bytes of output, so a decompression bomb costs the guard
//! `cap` bytes of memory and is refused; the cap is the smaller of the route's `max_decoded` and
//! `max_ratio` times the encoded size.

use std::io::Read;

use http::HeaderMap;
use http::header::CONTENT_ENCODING;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Metric label and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// An encoding other than gzip or zstd, or several stacked: 415.
    #[error("unsupported Content-Encoding {0:?} (accepted: gzip, zstd, identity; one at a time)")]
    Unsupported(String),
    /// The decoded body would exceed the cap: 413.
    #[error("decoded body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// The body is not valid for its encoding: 400.
    #[error("body is not valid {0}")]
    Corrupt(&'static str),
}

/// The request's content coding. Absent or `identity` is [`Encoding::Identity`]; a list of
/// codings (stacked) or several headers are refused.
pub fn request_encoding(headers: &HeaderMap) -> Result<Encoding, CodecError> {
    let mut values = headers.get_all(CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return Ok(Encoding::Identity);
    };
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    if values.next().is_some() || text.contains(',') {
        return Err(CodecError::Unsupported(text));
    }
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(CodecError::Unsupported(text)),
    }
}

/// Decodes `body`, producing at most `cap` bytes.
pub fn decode(encoding: Encoding, body: &[u8], cap: u64) -> Result<Vec<u8>, CodecError> {
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(body.to_vec()),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Encoding::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|_| CodecError::Corrupt("zstd"))?;
            decoder
                .window_log_max(zstd_window_log(cap))
                .map_err(|_| CodecError::Corrupt("zstd"))?;
            Box::new(decoder)
        }
    };
    // Guess the output size from a typical ratio, within the cap.
    let guess = (body.len() as u64).saturating_mul(8).min(cap);
    let mut out = Vec::with_capacity(usize::try_from(guess).unwrap_or(0));
    reader
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|_| CodecError::Corrupt(encoding.as_str()))?;
    if out.len() as u64 > cap {
        return Err(CodecError::TooLarge { limit: cap });
    }
    Ok(out)
}

/// The largest zstd window a frame may ask for when decoding up to `cap` bytes: the cap, and at
/// least 8 MiB (what encoders up to level 19 use without knowing the size). libzstd allocates
/// the window the frame header asks for before decoding anything (up to 128 MiB by default), so
/// without this a few bytes could make the guard allocate 128 MiB per request. A frame asking
/// for more is refused as corrupt.
fn zstd_window_log(cap: u64) -> u32 {
    let needed = u64::BITS - cap.saturating_sub(1).leading_zeros();
    needed.clamp(23, 31)
}

/// Encodes `data` for the upstream. Fast settings: the batch is on its way to a neighbour on
/// the same host, so speed matters more than ratio.
pub fn encode(encoding: Encoding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match encoding {
        Encoding::Identity => Ok(data.to_vec()),
        Encoding::Gzip => {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 4),
                flate2::Compression::fast(),
            );
            enc.write_all(data)?;
            enc.finish()
        }
        Encoding::Zstd => zstd::bulk::compress(data, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_ENCODING, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn recognizes_one_coding_at_a_time() {
        assert_eq!(request_encoding(&headers(&[])), Ok(Encoding::Identity));
        assert_eq!(request_encoding(&headers(&["GZIP"])), Ok(Encoding::Gzip));
        assert_eq!(request_encoding(&headers(&["zstd"])), Ok(Encoding::Zstd));
        for bad in [
            &["br"][..],
            &["gzip, zstd"],
            &["gzip", "gzip"],
            &["deflate"],
        ] {
            assert!(
                matches!(
                    request_encoding(&headers(bad)),
                    Err(CodecError::Unsupported(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_zstd_frame_asking_for_a_window_over_the_cap_is_refused() {
        use std::io::Write;
        let data = b"{\"level\":\"debug\"}\n".repeat(64);
        // Streamed without a pledged size, the frame declares the whole 128 MiB window.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(27).unwrap();
        enc.write_all(&data).unwrap();
        let greedy = enc.finish().unwrap();
        assert!(matches!(
            decode(Encoding::Zstd, &greedy, 8 << 20),
            Err(CodecError::Corrupt("zstd"))
        ));
        // A cap that large allows it, and a normal frame decodes under any cap that fits it.
        assert_eq!(decode(Encoding::Zstd, &greedy, 128 << 20).unwrap(), data);
        let normal = encode(Encoding::Zstd, &data).unwrap();
        assert_eq!(decode(Encoding::Zstd, &normal, 2048).unwrap(), data);
        assert_eq!(zstd_window_log(8 << 20), 23);
        assert_eq!(zstd_window_log((8 << 20) + 1), 24);
        assert_eq!(zstd_window_log(1), 23);
    }

    #[test]
    fn round_trips_and_caps() {
        let data = b"{\"level\":\"debug\",\"msg\":\"hello\"}\n".repeat(1000);
        for enc in [Encoding::Gzip, Encoding::Zstd] {
            let packed = encode(enc, &data).unwrap();
            assert_eq!(decode(enc, &packed, data.len() as u64).unwrap(), data);
            assert_eq!(
                decode(enc, &packed, data.len() as u64 - 1),
                Err(CodecError::TooLarge {
                    limit: data.len() as u64 - 1
                })
            );
            assert_eq!(
                decode(enc, &packed[..packed.len() / 2], 1 << 20),
                Err(CodecError::Corrupt(enc.as_str()))
            );
            assert_eq!(
                decode(enc, b"definitely not compressed", 1 << 20),
                Err(CodecError::Corrupt(enc.as_str()))
            );
        }
    }
}
