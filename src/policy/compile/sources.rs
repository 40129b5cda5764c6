//! The header and query parameter names a policy reads a request by: the client key's and the
//! verbosity clamp's. Both are checked the same way, so they share [`header_name`] and
//! [`query_name`] and their messages.

use crate::budget::BudgetClock;
use http::HeaderName;
use serde_saphyr::Spanned;

use super::{Compiler, line};
use crate::policy::raw::{RawClamp, RawClientKey};
use crate::policy::{ClientKeySpec, KeySource};
use crate::records::clamp::Clamp;

/// Resolves a `client_key` (the policy's or a route's): where a request's key is read from.
pub(super) fn client_key<C: BudgetClock>(
    c: &mut Compiler<C>,
    k: &RawClientKey,
    at: &str,
) -> ClientKeySpec {
    let fallback = k.fallback.unwrap_or_default();
    // A bad name still yields a source, so the rest of the policy is checked too.
    let source = match (&k.header, &k.query) {
        (Some(h), None) => {
            header_name(c, h, &format!("{at}.header")).map_or(KeySource::PeerIp, KeySource::Header)
        }
        (None, Some(q)) => {
            query_name(c, q, &format!("{at}.query")).map_or(KeySource::PeerIp, KeySource::Query)
        }
        (None, None) => KeySource::PeerIp,
        (Some(h), Some(_)) => {
            c.problem(line(h), at, "set at most one of `header` and `query`");
            KeySource::PeerIp
        }
    };
    ClientKeySpec { source, fallback }
}

/// Resolves a route's `verbosity_clamp`: which header and query parameter it caps, and at what.
pub(super) fn compile_clamp<C: BudgetClock>(
    c: &mut Compiler<C>,
    raw: &Spanned<RawClamp>,
    at: &str,
) -> Clamp {
    let r = &raw.value;
    if r.header.is_none() && r.query.is_none() {
        c.problem(line(raw), at, "set `header`, `query` or both");
    }
    let header = r
        .header
        .as_ref()
        .and_then(|h| header_name(c, h, &format!("{at}.header")));
    let query = r
        .query
        .as_ref()
        .and_then(|q| query_name(c, q, &format!("{at}.query")));
    Clamp {
        header,
        query,
        max: r.max,
    }
}

/// A header name, matched however the file cased it (requests carry it lowercased).
fn header_name<C: BudgetClock>(
    c: &mut Compiler<C>,
    h: &Spanned<String>,
    at: &str,
) -> Option<HeaderName> {
    HeaderName::from_bytes(h.value.to_ascii_lowercase().as_bytes())
        .map_err(|_| c.problem(line(h), at, format!("{:?} is not a header name", h.value)))
        .ok()
}

/// A query parameter name; an empty one would match no parameter.
fn query_name<C: BudgetClock>(
    c: &mut Compiler<C>,
    q: &Spanned<String>,
    at: &str,
) -> Option<Box<str>> {
    if q.value.is_empty() {
        c.problem(line(q), at, "must not be empty");
        return None;
    }
    Some(q.value.as_str().into())
}
