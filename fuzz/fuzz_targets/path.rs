//! Path normalization (`route::normalize_path`) and route matching (`decide::route` over the
//! example policy's routes).
//!
//! Raw mode (first byte even): the rest is a request path. Normalizing is idempotent; a
//! normalized path starts with `/` and holds no `//`, `/./` or `/../` (nor ends in `/.` or
//! `/..`); normalizing never changes a non-ASCII character; and a request routes as its
//! normalized path does.
//!
//! Spelling mode (first byte odd): `arbitrary` builds a path from segments and spells it
//! another way that RFC 3986 (and the guard's `//` rule) say is the same path: unreserved
//! characters percent-encoded, `.` segments, `x/..` detours, doubled slashes. Both spellings
//! must normalize alike and match the same route.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use verbosity_guard::decide;
use verbosity_guard::policy::{self, Policy};
use verbosity_guard::route::normalize_path;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let text = include_str!("../../policies/vehicle-api.yaml");
        policy::parse(text, "vehicle-api.yaml").expect("the example policy")
    })
}

/// The route a request with this method and target reaches, or `None` when it is refused.
fn route_of(method: &Method, target: &str) -> Option<usize> {
    let (parts, ()) = Request::builder()
        .method(method.clone())
        .uri(target)
        .body(())
        .ok()?
        .into_parts();
    decide::route(policy(), &parts).ok().map(|r| r.index)
}

fn check_normal(input: &str, n: &str) {
    assert!(n.starts_with('/'), "{input:?} -> {n:?}");
    for bad in ["//", "/./", "/../"] {
        assert!(!n.contains(bad), "{input:?} -> {n:?} holds {bad}");
    }
    assert!(
        !n.ends_with("/.") && !n.ends_with("/.."),
        "{input:?} -> {n:?}"
    );
    // Idempotent (a path with escapes comes back owned, but equal).
    let again = normalize_path(n).expect("a normalized path normalizes");
    assert_eq!(again, n, "not idempotent: {input:?} -> {n:?} -> {again:?}");
    // Percent-decoding only ever produces ASCII, and `..` only removes segments: the
    // non-ASCII characters that remain are the input's, in order.
    let mut left = input.chars().filter(|c| !c.is_ascii());
    for c in n.chars().filter(|c| !c.is_ascii()) {
        assert!(left.any(|l| l == c), "{input:?} -> {n:?} invented {c:?}");
    }
}

#[derive(Debug, Arbitrary)]
enum Seg {
    /// A segment picked from the policy's paths, so routes are hit.
    Known(u8),
    Text(String),
}

const KNOWN: [&str; 12] = [
    "api",
    "1",
    "vehicles",
    "42",
    "command",
    "honk_horn",
    "wake_up",
    "telemetry",
    "v1",
    "logs",
    "batch",
    "x.y",
];

#[derive(Debug, Arbitrary)]
struct Spelling {
    segments: Vec<Seg>,
    trailing_slash: bool,
    /// Per character: percent-encode it (if unreserved), with lowercase hex.
    encode: Vec<(bool, bool)>,
    /// Per segment: what to add before it.
    detours: Vec<u8>,
}

fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

impl Spelling {
    /// The path, and another spelling of it.
    fn build(&self) -> (String, String) {
        let (mut plain, mut other) = (String::new(), String::new());
        let mut encode = self.encode.iter().cycle();
        for (i, seg) in self.segments.iter().take(16).enumerate() {
            let text = match seg {
                Seg::Known(k) => KNOWN[usize::from(*k) % KNOWN.len()].to_owned(),
                // Characters that keep a segment one segment, of its own meaning.
                Seg::Text(t) => t
                    .chars()
                    .filter(|&c| is_unreserved(c) || matches!(c, '!' | '$' | '&' | '=' | ':' | '@'))
                    .take(12)
                    .collect(),
            };
            if text.is_empty() || text == "." || text == ".." {
                continue;
            }
            plain.push('/');
            plain.push_str(&text);
            match self.detours.get(i).copied().unwrap_or(0) % 4 {
                1 => other.push_str("/."),
                2 => other.push_str("/zz/.."),
                3 => other.push('/'),
                _ => {}
            }
            other.push('/');
            for c in text.chars() {
                match encode.next() {
                    Some(&(true, lower)) if is_unreserved(c) => {
                        let hex = format!("%{:02X}", c as u32);
                        other.push_str(&if lower { hex.to_lowercase() } else { hex });
                    }
                    _ => other.push(c),
                }
            }
        }
        if plain.is_empty() || self.trailing_slash {
            plain.push('/');
            other.push('/');
        }
        (plain, other)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let method =
        [Method::GET, Method::POST, Method::PUT, Method::HEAD][usize::from(mode >> 1) % 4].clone();
    if mode & 1 == 0 {
        let Ok(input) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(n) = normalize_path(input) {
            check_normal(input, &n);
        }
        // As a request target, the path is what the URI holds (no query, no fragment).
        let Ok(uri) = input.parse::<http::Uri>() else {
            return;
        };
        let path = uri.path();
        if let (Ok(n), Some(route)) = (normalize_path(path), route_of(&method, path)) {
            assert_eq!(Some(route), route_of(&method, &n), "{path:?} and {n:?}");
        }
        return;
    }
    let Ok(spelling) = Spelling::arbitrary(&mut Unstructured::new(rest)) else {
        return;
    };
    let (plain, other) = spelling.build();
    let a = normalize_path(&plain).expect("a plain path");
    let b = normalize_path(&other).expect("another spelling of a plain path");
    check_normal(&other, &b);
    assert_eq!(a, b, "{plain:?} and {other:?}");
    assert_eq!(
        route_of(&method, &plain),
        route_of(&method, &other),
        "{plain:?} and {other:?}"
    );
});
