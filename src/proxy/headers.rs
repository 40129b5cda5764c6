//! Header rewriting between client and upstream: hop-by-hop headers out (both ways),
//! `X-Forwarded-*` in (toward the upstream).

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// `Proxy-*` family. They never cross the guard. Bit `i` of [`strip`]'s mask is `HOP_BY_HOP[i]`.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];
const PROXY_FAMILY: u16 = 1 << 7;
const LISTED: u16 = 1 << 8;
/// Bits `FORWARDED + f as u16` say which [`Forwarded`] headers the message already carries.
const FORWARDED: u16 = 9;
/// The bits below [`FORWARDED`]: the headers `strip` removes.
const STRIPPED: u16 = (1 << FORWARDED) - 1;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The forwarding headers the guard appends toward the upstream.
#[derive(Debug, Clone, Copy)]
pub enum Forwarded {
    For = 0,
    Proto = 1,
    Host = 2,
}

impl Forwarded {
    fn name(self) -> &'static HeaderName {
        match self {
            Forwarded::For => &X_FORWARDED_FOR,
            Forwarded::Proto => &X_FORWARDED_PROTO,
            Forwarded::Host => &X_FORWARDED_HOST,
        }
    }

    fn bit(self) -> u16 {
        1 << (FORWARDED + self as u16)
    }
}

/// What [`strip`]'s pass over the names saw and left in place: which [`Forwarded`] headers
/// are there to be appended to.
#[derive(Debug, Clone, Copy)]
pub struct Seen(u16);

/// Which of `strip`'s sets `name` is in, as a mask bit (0 for none). Header names are stored
/// lowercase, so this is a string match: no hashing, no `HeaderName` comparisons.
fn classify(name: &str, also: &[&HeaderName]) -> u16 {
    match name {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "te" => 1 << 2,
        "trailer" => 1 << 3,
        "transfer-encoding" => 1 << 4,
        "upgrade" => 1 << 5,
        "proxy-connection" => 1 << 6,
        "x-forwarded-for" => Forwarded::For.bit(),
        "x-forwarded-proto" => Forwarded::Proto.bit(),
        "x-forwarded-host" => Forwarded::Host.bit(),
        n if n.starts_with("proxy-") => PROXY_FAMILY,
        n if also.iter().any(|a| a.as_str() == n) => LISTED,
        _ => 0,
    }
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, &[]);
}

/// `Connection` tokens that name no header (`close`), or one removed anyway: the names of
/// [`HOP_BY_HOP`], spelled out so the check compares bytes without a `HeaderName` in sight.
const FIXED_TOKENS: [&[u8]; 8] = [
    b"close",
    b"connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-connection",
];

fn is_fixed_token(token: &[u8]) -> bool {
    FIXED_TOKENS
        .iter()
        .any(|f| f.len() == token.len() && f.eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, every header the `Connection` header names, and the headers in
/// `also`. One pass over the names finds what is there, so a message that carries none of them
/// (most requests) costs only that pass, and one that does (most upstream responses carry
/// `Connection: keep-alive`) costs a removal per name present. Nothing is allocated.
pub fn strip(headers: &mut HeaderMap, also: &[&HeaderName]) -> Seen {
    let found = headers
        .keys()
        .fold(0, |found, name| found | classify(name.as_str(), also));
    let seen = Seen(found);
    if found & STRIPPED == 0 {
        return seen;
    }
    // Most `Connection` headers name only `keep-alive` or `close`: looked at in place, as
    // bytes. Only one that names other headers is walked again to remove them.
    let names_others = found & 1 != 0
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|t| !t.is_empty() && !is_fixed_token(t))
        });
    if names_others {
        // Each value is a cheap clone (a shared buffer), so the map can be changed while
        // reading it. Tokens are visible ASCII in a valid value, or the value names nothing.
        let mut i = 0;
        while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
            i += 1;
            for token in value.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                if !token.is_empty() && !is_fixed_token(token.as_bytes()) {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if found & PROXY_FAMILY != 0 {
        while let Some(name) = headers
            .keys()
            .find(|k| k.as_str().starts_with("proxy-"))
            .cloned()
        {
            headers.remove(&name);
        }
    }
    if found & LISTED != 0 {
        for name in also {
            headers.remove(*name);
        }
    }
    seen
}

/// Appends `value` to a comma-separated forwarding header, as nginx's
/// `$proxy_add_x_forwarded_for` does: `client, proxy1` + `, value`. Multiple header lines are
/// folded into one, so readers that take only the first line still see the whole chain.
/// `seen` is what [`strip`] found in the same headers: a header it did not see is added
/// without looking for it.
pub fn append_forwarded(headers: &mut HeaderMap, which: Forwarded, value: HeaderValue, seen: Seen) {
    let name = which.name();
    if seen.0 & which.bit() == 0 {
        headers.append(name, value);
        return;
    }
    match headers.entry(name) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut chain) => {
            let mut joined = Vec::with_capacity(64);
            for v in chain.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(value.as_bytes());
            // Joining valid header values with ", " yields a valid header value.
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                chain.insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_gives_each_hop_by_hop_name_its_bit() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(classify(name.as_str(), &[]), 1 << i, "{name}");
        }
        assert_eq!(classify("proxy-authorization", &[]), PROXY_FAMILY);
        for f in [Forwarded::For, Forwarded::Proto, Forwarded::Host] {
            assert_eq!(classify(f.name().as_str(), &[]), f.bit(), "{f:?}");
        }
        let own = HeaderName::from_static("x-own");
        assert_eq!(classify("x-own", &[&own]), LISTED);
        assert_eq!(classify("x-vehicle-id", &[&own]), 0);
    }

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
    fn strips_every_connection_line_every_proxy_header_and_the_listed_names() {
        static OWN: HeaderName = HeaderName::from_static("x-own");
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close"),
            ("connection", "x-a , x-b"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("x-own", "forged"),
            ("x-kept", "3"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip(&mut h, &[&OWN]);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);

        // The listed names go even when no hop-by-hop header is there.
        let mut h = HeaderMap::new();
        h.insert(&OWN, HeaderValue::from_static("forged"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip(&mut h, &[&OWN]);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn the_fixed_tokens_are_close_and_the_hop_by_hop_names() {
        let mut names: Vec<&[u8]> = HOP_BY_HOP.iter().map(|h| h.as_str().as_bytes()).collect();
        names.push(b"close");
        let mut fixed = FIXED_TOKENS.to_vec();
        names.sort_unstable();
        fixed.sort_unstable();
        assert_eq!(names, fixed);
    }

    #[test]
    fn a_connection_header_naming_only_fixed_tokens_removes_nothing_else() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "Keep-Alive, close"),
            ("keep-alive", "timeout=5"),
            ("close", "not hop-by-hop, and not named by a token here"),
            ("x-kept", "1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["close", "x-kept"]);
    }

    #[test]
    fn forwarded_headers_append_to_existing_chains() {
        let mut h = HeaderMap::new();
        let seen = strip(&mut h, &[]);
        append_forwarded(
            &mut h,
            Forwarded::For,
            HeaderValue::from_static("10.0.0.1"),
            seen,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        let seen = strip(&mut h, &[]);
        append_forwarded(
            &mut h,
            Forwarded::For,
            HeaderValue::from_static("127.0.0.1"),
            seen,
        );
        let all: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 127.0.0.1"]);
    }
}
