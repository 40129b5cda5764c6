//! Header rewriting between client and upstream: hop-by-hop headers out (both ways),
//! `X-Forwarded-*` in (toward the upstream).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// `Proxy-*` family. They never cross the guard.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass of cheap name comparisons instead of a lookup per
    // hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Names listed in Connection are removed first; values are comma-separated tokens.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Appends `value` to a comma-separated forwarding header, as nginx's
/// `$proxy_add_x_forwarded_for` does: `client, proxy1` + `, value`. Multiple header lines are
/// folded into one, so readers that take only the first line still see the whole chain.
pub fn append_forwarded(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    let mut existing = headers.get_all(name).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(name.clone(), value);
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for v in existing {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(value.as_bytes());
    // Joining valid header values with ", " yields a valid header value.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Custom-Hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("x-custom-hop", "1"),
            ("x-vehicle-id", "v1"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-vehicle-id", "content-type"]);
    }

    #[test]
    fn forwarded_headers_append_to_existing_chains() {
        let mut h = HeaderMap::new();
        append_forwarded(
            &mut h,
            &X_FORWARDED_FOR,
            HeaderValue::from_static("10.0.0.1"),
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append_forwarded(
            &mut h,
            &X_FORWARDED_FOR,
            HeaderValue::from_static("127.0.0.1"),
        );
        let all: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 127.0.0.1"]);
    }
}
