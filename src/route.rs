//! Path normalization and route matching: the pure functions that decide which route, and so
//! which budgets, a request belongs to.
//!
//! Normalization runs before matching so that no spelling of a path (`//`, `.`/`..`, percent
//! escapes of unreserved characters) can reach a different route than its canonical form. The
//! normalized path is also what the upstream receives, so guard and upstream agree on what was
//! asked for. Already-normal paths (the common case) are returned borrowed, without allocating.

use std::borrow::Cow;

use http::Method;

/// Why a request path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent escape")]
    BadEscape,
    #[error("the path has an encoded '/' or '\\', which would change its segments")]
    EncodedSeparator,
    #[error("the path has an encoded NUL byte")]
    EncodedNul,
    #[error("the path has a '\\', which some backends read as '/'")]
    Backslash,
    #[error("the path has a ';' path parameter, which some backends strip before matching")]
    PathParameter,
    #[error("the path's percent escapes do not decode to valid UTF-8")]
    InvalidUtf8,
}

/// Returns the canonical form of an origin-form request path (no query).
///
/// - escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other escapes are
///   kept with uppercase hex;
/// - escaped `/`, `\` and NUL are refused, since backends disagree on what they mean; so are a
///   raw `\` (read as `/` by some), a `;` (path parameters, which some strip before matching:
///   `/a;x/b` is `/a/b` to them) and escapes that do not decode to valid UTF-8 (overlong forms
///   like `%C0%AF` are how `/` was smuggled past path checks);
/// - empty segments (`//`) are merged and `.`/`..` resolved as RFC 3986 §5.2.4 says, with `..`
///   never climbing above the root;
/// - a trailing slash is kept (`/a/` and `/a` are different resources).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when `normalize_path` would return its input unchanged. `\` and `;` make it false so
/// that the slow path refuses them: the one check costs nothing more on a normal path.
fn is_normal(p: &[u8]) -> bool {
    let mut seg_start = 1;
    for i in 1..=p.len() {
        if i == p.len() || p[i] == b'/' {
            let seg = &p[seg_start..i];
            if seg == b"." || seg == b".." || (seg.is_empty() && i != p.len()) {
                return false;
            }
            seg_start = i + 1;
        } else if matches!(p[i], b'%' | b'\\' | b';') {
            return false;
        }
    }
    true
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(p: &[u8]) -> Result<Vec<u8>, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(p.len());
    // The bytes of a run of escapes of non-ASCII bytes, which must decode to UTF-8.
    let mut utf8 = Utf8Run::default();
    let mut i = 0;
    while i < p.len() {
        if p[i] != b'%' {
            match p[i] {
                b'\\' => return Err(PathError::Backslash),
                b';' => return Err(PathError::PathParameter),
                b if b >= 0x80 => utf8.push(b)?,
                _ => utf8.end()?,
            }
            out.push(p[i]);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            p.get(i + 1).copied().and_then(hex_val),
            p.get(i + 2).copied().and_then(hex_val),
        ) else {
            return Err(PathError::BadEscape);
        };
        let b = hi << 4 | lo;
        match b {
            0x80.. => utf8.push(b)?,
            _ => utf8.end()?,
        }
        match b {
            0 => return Err(PathError::EncodedNul),
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            b if is_unreserved(b) => out.push(b),
            b => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
        i += 3;
    }
    utf8.end()?;
    Ok(out)
}

/// A run of non-ASCII bytes (escaped or not) being checked for UTF-8: at most one character's
/// four bytes are held, so the check allocates nothing and is bounded.
#[derive(Default)]
struct Utf8Run {
    buf: [u8; 4],
    len: usize,
}

impl Utf8Run {
    fn push(&mut self, b: u8) -> Result<(), PathError> {
        if self.len == self.buf.len() {
            self.end()?;
        }
        self.buf[self.len] = b;
        self.len += 1;
        // A complete character (the std check refuses overlong forms and surrogates) clears
        // the run; an incomplete one waits for its next byte.
        match std::str::from_utf8(&self.buf[..self.len]) {
            Ok(_) => self.len = 0,
            Err(e) if e.error_len().is_some() => return Err(PathError::InvalidUtf8),
            Err(_) => {}
        }
        Ok(())
    }

    /// The run ended (an ASCII byte or the path's end): a character cut short is invalid.
    fn end(&mut self) -> Result<(), PathError> {
        match std::mem::take(&mut self.len) {
            0 => Ok(()),
            _ => Err(PathError::InvalidUtf8),
        }
    }
}

fn remove_dot_segments(p: &[u8]) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in p[1..].split(|&b| b == b'/') {
        trailing_slash = matches!(seg, b"" | b"." | b"..");
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(p.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push(b'/');
    }
    // A path may hold UTF-8 (hyper and `http` accept it). It stays whole: segments are split at
    // '/', and decoding turned escapes into ASCII only, so the bytes are still UTF-8; the lossy
    // branch is never taken.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A set of HTTP methods as a bitmask over the nine standard methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

const METHODS: [(&str, Method); 9] = [
    ("GET", Method::GET),
    ("HEAD", Method::HEAD),
    ("POST", Method::POST),
    ("PUT", Method::PUT),
    ("DELETE", Method::DELETE),
    ("PATCH", Method::PATCH),
    ("OPTIONS", Method::OPTIONS),
    ("TRACE", Method::TRACE),
    ("CONNECT", Method::CONNECT),
];

impl MethodSet {
    pub const ANY: MethodSet = MethodSet(u16::MAX);

    /// Parses method names case-insensitively; returns the first unknown name on failure.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<MethodSet, &'a str> {
        let mut bits = 0;
        for name in names {
            let idx = METHODS
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name))
                .ok_or(name)?;
            bits |= 1 << idx;
        }
        Ok(MethodSet(bits))
    }

    pub fn contains(self, method: &Method) -> bool {
        if self == Self::ANY {
            return true;
        }
        METHODS
            .iter()
            .position(|(_, m)| m == method)
            .is_some_and(|idx| self.0 & (1 << idx) != 0)
    }

    pub fn names(self) -> Vec<&'static str> {
        if self == Self::ANY {
            return vec!["*"];
        }
        (0..METHODS.len())
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| METHODS[i].0)
            .collect()
    }
}

/// How a route matches a normalized path.
///
/// Matching ignores one trailing slash: `/a/b/` is matched as `/a/b`, because many frameworks
/// serve both, so a trailing slash must not lead a request around its route's budget. The
/// upstream still receives the path as the client wrote it (normalized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatcher {
    /// Stored without a trailing slash (except the root).
    Exact(Box<str>),
    /// Stored without a trailing slash (except the root); matches on segment boundaries.
    Prefix(Box<str>),
    Template(Box<[Segment]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    /// `{name}`: any one non-empty segment.
    Param(Box<str>),
    /// `{*name}`: the non-empty rest of the path; only last.
    Rest(Box<str>),
}

/// Why a `path` or `path_prefix` in a policy is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?} must start with '/'")]
    NotAbsolute(String),
    #[error("{0:?} is not in normal form; write {1:?} (requests are normalized before matching)")]
    NotNormal(String, String),
    #[error("{0:?} has a malformed template segment {1:?}: use {{name}} or a final {{*name}}")]
    BadTemplate(String, String),
}

impl PathMatcher {
    /// Compiles `match.path`: an exact path, or a template when it has `{...}` segments.
    pub fn exact_or_template(pattern: &str) -> Result<PathMatcher, PatternError> {
        if !pattern.contains(['{', '}']) {
            return Ok(PathMatcher::Exact(
                without_trailing_slash(check_normal(pattern)?).into(),
            ));
        }
        check_normal(pattern)?;
        let bad = |seg: &str| PatternError::BadTemplate(pattern.into(), seg.into());
        let parts: Vec<&str> = pattern[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, seg) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let segment = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let (rest, name) = match name.strip_prefix('*') {
                        Some(n) => (true, n),
                        None => (false, name),
                    };
                    let ident = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ident || (rest && !last) {
                        return Err(bad(seg));
                    }
                    if rest {
                        Segment::Rest(name.into())
                    } else {
                        Segment::Param(name.into())
                    }
                }
                None if seg.contains(['{', '}']) || seg.is_empty() => return Err(bad(seg)),
                None => Segment::Literal((*seg).into()),
            };
            segments.push(segment);
        }
        Ok(PathMatcher::Template(segments.into()))
    }

    pub fn prefix(pattern: &str) -> Result<PathMatcher, PatternError> {
        let p = check_normal(pattern)?;
        let p = if p.len() > 1 {
            p.trim_end_matches('/')
        } else {
            p
        };
        Ok(PathMatcher::Prefix(p.into()))
    }

    pub fn is_everything(&self) -> bool {
        matches!(self, PathMatcher::Prefix(p) if &**p == "/")
    }

    /// Matches a normalized path.
    pub fn matches(&self, path: &str) -> bool {
        let path = without_trailing_slash(path);
        match self {
            PathMatcher::Exact(p) => **p == *path,
            PathMatcher::Prefix(p) => {
                p.len() == 1
                    || (path.starts_with(&**p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatcher::Template(segments) => match_template(segments, path),
        }
    }
}

impl std::fmt::Display for PathMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatcher::Exact(p) => write!(f, "{p}"),
            PathMatcher::Prefix(p) if p.len() == 1 => write!(f, "/*"),
            PathMatcher::Prefix(p) => write!(f, "{p}/*"),
            PathMatcher::Template(segments) => {
                for s in segments.iter() {
                    match s {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::Param(n) => write!(f, "/{{{n}}}")?,
                        Segment::Rest(n) => write!(f, "/{{*{n}}}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

fn without_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    }
}

fn check_normal(pattern: &str) -> Result<&str, PatternError> {
    match normalize_path(pattern) {
        Err(PathError::NotAbsolute) => Err(PatternError::NotAbsolute(pattern.into())),
        Ok(Cow::Borrowed(p)) => Ok(p),
        Ok(Cow::Owned(n)) => Err(PatternError::NotNormal(pattern.into(), n)),
        Err(_) => Err(PatternError::NotNormal(
            pattern.into(),
            "a path without escapes, '\\' or ';'".into(),
        )),
    }
}

fn match_template(segments: &[Segment], path: &str) -> bool {
    // `path` is normalized: it starts with '/' and has no empty inner segments.
    let mut rest = &path[1..];
    for (i, seg) in segments.iter().enumerate() {
        if let Segment::Rest(_) = seg {
            return !rest.is_empty();
        }
        let (head, tail) = rest
            .split_once('/')
            .map_or((rest, None), |(h, t)| (h, Some(t)));
        let ok = match seg {
            Segment::Literal(l) => **l == *head,
            _ => !head.is_empty(),
        };
        match (ok, tail) {
            (false, _) => return false,
            (true, Some(t)) => rest = t,
            (true, None) => return i + 1 == segments.len(),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/api/1/vehicles/42/command/unlock",
            "/a.b/c..d/.e",
        ] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn normalizes_every_spelling() {
        let cases = [
            ("//a///b", "/a/b"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/../../a", "/a"),
            ("/..", "/"),
            ("/%61pi/%7Euser", "/api/~user"),
            ("/%2e%2E/a", "/a"),
            ("/a/%2e%2e/b", "/b"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a/.%2e/b", "/b"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    /// Found by the `path` fuzz target: a non-normal path with UTF-8 in it came out with each
    /// byte turned into a character of its own (`/é/./x` became `/Ã©/x`), so the guard routed,
    /// and the upstream received, another path.
    #[test]
    fn utf8_survives_normalization() {
        assert_eq!(norm("/é/./x").as_deref(), Ok("/é/x"));
        assert_eq!(norm("//車/../ß%41/").as_deref(), Ok("/ßA/"));
        assert_eq!(norm("/a/😀/..").as_deref(), Ok("/a/"));
    }

    #[test]
    fn refuses_dangerous_escapes() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn refuses_ambiguous_spellings() {
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a;x/b"), Err(PathError::PathParameter));
        assert_eq!(norm("/a/b;"), Err(PathError::PathParameter));
        // Overlong '/', overlong '.', a lone continuation byte, a cut-short character, a
        // surrogate, a byte that is never UTF-8.
        for p in [
            "/a%C0%AFb",
            "/%C0%AE",
            "/a%80",
            "/a%C3",
            "/a%C3/b",
            "/%ED%A0%80",
            "/%FF",
        ] {
            assert_eq!(norm(p), Err(PathError::InvalidUtf8), "{p}");
        }
        // Valid UTF-8, four-byte characters and runs of them included, is kept escaped.
        assert_eq!(
            norm("/%F0%9F%9A%97%C3%A9x").as_deref(),
            Ok("/%F0%9F%9A%97%C3%A9x")
        );
        // An escaped ';' is data, not a parameter.
        assert_eq!(norm("/a%3bx").as_deref(), Ok("/a%3Bx"));
    }

    #[test]
    fn templates() {
        let t = PathMatcher::exact_or_template("/api/1/vehicles/{id}/command/{cmd}").unwrap();
        assert!(t.matches("/api/1/vehicles/42/command/unlock"));
        assert!(!t.matches("/api/1/vehicles/42/command"));
        assert!(!t.matches("/api/1/vehicles/42/command/unlock/x"));
        assert!(!t.matches("/api/1/vehicles/42/command/"));
        assert!(
            t.matches("/api/1/vehicles/42/command/unlock/"),
            "a trailing slash is no escape"
        );
        let e = PathMatcher::exact_or_template("/health/").unwrap();
        assert!(e.matches("/health") && e.matches("/health/") && !e.matches("/healthz"));
        assert!(PathMatcher::exact_or_template("/").unwrap().matches("/"));
        assert!(!t.matches("/api/1/vehicles/42/commands/unlock"));
        let r = PathMatcher::exact_or_template("/files/{*rest}").unwrap();
        assert!(r.matches("/files/a/b/c"));
        assert!(!r.matches("/files/"));
        assert!(!r.matches("/files"));
        for bad in ["/a/{", "/a/{}", "/a/{*x}/b", "/a/x{y}", "/a/{x-y}"] {
            assert!(PathMatcher::exact_or_template(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            PathMatcher::exact_or_template("/a//b"),
            Err(PatternError::NotNormal(_, n)) if n == "/a/b"
        ));
    }

    #[test]
    fn matchers_display_as_written() {
        for p in [
            "/api/1/vehicles/{id}/command/{cmd}",
            "/files/{*rest}",
            "/exact",
        ] {
            assert_eq!(PathMatcher::exact_or_template(p).unwrap().to_string(), p);
        }
        assert_eq!(PathMatcher::prefix("/api/").unwrap().to_string(), "/api/*");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let p = PathMatcher::prefix("/api/1/telemetry").unwrap();
        assert!(p.matches("/api/1/telemetry"));
        assert!(p.matches("/api/1/telemetry/"));
        assert!(p.matches("/api/1/telemetry/batch"));
        assert!(!p.matches("/api/1/telemetryx"));
        assert!(!p.matches("/api/1"));
        assert_eq!(
            PathMatcher::prefix("/api/").unwrap(),
            PathMatcher::prefix("/api").unwrap()
        );
        assert!(
            PathMatcher::prefix("/")
                .unwrap()
                .matches("/anything/at/all")
        );
        assert!(PathMatcher::prefix("/").unwrap().is_everything());
    }

    #[test]
    fn method_sets() {
        let m = MethodSet::parse(["post", "PUT"]).unwrap();
        assert!(m.contains(&Method::POST) && m.contains(&Method::PUT));
        assert!(!m.contains(&Method::GET));
        assert!(!m.contains(&Method::from_bytes(b"PURGE").unwrap()));
        assert!(MethodSet::ANY.contains(&Method::from_bytes(b"PURGE").unwrap()));
        assert_eq!(MethodSet::parse(["GET", "FETCH"]), Err("FETCH"));
        assert_eq!(m.names(), vec!["POST", "PUT"]);
    }
}
