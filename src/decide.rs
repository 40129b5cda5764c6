//! The decisions about a request that are made from its head, before any body byte is read:
//! normalize the path, route, identify the client, brownout, payload budgets. Plain functions
//! over the request head and the compiled policy, with no hyper types: the live guard runs them
//! in enforce and in shadow mode, and `simulate` runs the very same ones on a virtual clock.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use governor::clock::Clock;
use http::header::{self, HeaderValue};
use http::request;

use crate::budget::BudgetKind;
use crate::budget::decision::{self, ByteCharge};
use crate::error::{ErrorStyle, GuardError, ShedReason};
use crate::policy::{ClientKeySpec, KeyFallback, KeySource, Policy, Priority, Route};
use crate::protect::{self, Brownout, BrownoutConfig};
use crate::records::Format;
use crate::records::filter::Tighten;
use crate::route::normalize_path;

/// A request matched to its route.
pub struct Routed<'p, C: Clock> {
    /// The route's index in the policy.
    pub index: usize,
    pub route: &'p Route<C>,
    /// The normalized path, when it differs from the request's (`None` is the common case: the
    /// path already was normal, and nothing was allocated).
    pub normalized: Option<String>,
    /// How an error answer is written (OTLP senders get the `Status` their protocol defines).
    pub style: ErrorStyle,
}

/// Normalizes the path, so that no spelling of it can reach another route's budget, and picks
/// the first route that takes it (the table ends with a catch-all). A path that cannot be
/// normalized is refused in every mode: it cannot be routed, nor forwarded safely.
pub fn route<'p, C: Clock>(
    policy: &'p Policy<C>,
    parts: &request::Parts,
) -> Result<Routed<'p, C>, GuardError> {
    let normalized = match normalize_path(parts.uri.path())? {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    let path = normalized.as_deref().unwrap_or(parts.uri.path());
    let (index, route) = policy.route(&parts.method, path);
    let mut style = ErrorStyle::Json;
    if let Some(records) = route.records.as_ref().filter(|r| r.format.is_otlp()) {
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        style = match records
            .format
            .for_content_type(content_type.map(HeaderValue::as_bytes))
        {
            Format::OtlpJson => ErrorStyle::OtlpJson,
            _ => ErrorStyle::OtlpProto,
        };
    }
    Ok(Routed {
        index,
        route,
        normalized,
        style,
    })
}

/// The client's key, only when some budget of the route is kept per client.
pub fn identify<C: Clock>(
    route: &Route<C>,
    parts: &request::Parts,
    peer: IpAddr,
    hasher: &std::hash::RandomState,
) -> Result<Option<u64>, GuardError> {
    match route.needs_client_key() {
        true => client_key(&route.client_key, parts, peer, hasher).map(Some),
        false => Ok(None),
    }
}

/// The brownout level now: the live guard's [`Protection`] (one atomic load), or a level held
/// for a whole `simulate` run. What a level does comes from the policy's `protect.brownout`.
///
/// [`Protection`]: crate::protect::Protection
pub trait BrownoutState {
    fn level(&self) -> Brownout;
}

/// A request that passed the head's decisions.
pub struct Admitted<C: Clock> {
    /// How the brownout tightens this request's batch (none outside bulk routes).
    pub tighten: Tighten,
    /// Byte budgets still to charge as the body streams (bodies without a Content-Length).
    pub charge: ByteCharge<C>,
}

impl<C: Clock> Default for Admitted<C> {
    /// Nothing tightened, nothing left to charge.
    fn default() -> Self {
        Admitted {
            tighten: Tighten::NONE,
            charge: ByteCharge::default(),
        }
    }
}

/// Brownout, then the payload budgets.
///
/// While the upstream is in distress, bulk routes are shed whole at the top level and their
/// batches tightened below it, as `cfg` (the request's policy's `protect.brownout`) says;
/// critical and normal routes never. Shedding comes before the budgets so a shed request spends
/// none of them. Then the payload budgets: size first (no state), then the client's budgets,
/// then the route's, so one client's excess never spends the budget the route shares (see
/// [`decision::admit`]). `untracked` hears of every client budget skipped because its key
/// store was full.
pub fn admit<C: Clock>(
    route: &Route<C>,
    key: Option<u64>,
    brownout: &impl BrownoutState,
    cfg: &BrownoutConfig,
    declared: Option<u64>,
    untracked: impl FnMut(BudgetKind),
) -> Result<Admitted<C>, GuardError> {
    let tighten = match route.priority {
        Priority::Bulk => match brownout.level() {
            Brownout::Off => Tighten::NONE,
            level if level >= Brownout::ShedBulk => {
                return Err(GuardError::Shed {
                    class: Priority::Bulk,
                    reason: ShedReason::Brownout,
                    retry_after: protect::retry_after(cfg),
                });
            }
            level => protect::tighten(level, cfg),
        },
        _ => Tighten::NONE,
    };
    let charge = decision::admit(&route.payload, key, declared, untracked)?;
    Ok(Admitted { tighten, charge })
}

/// Hashes the client's identity for per-client budgets, following the route's key spec. The
/// hash is keyed per process (SipHash), so clients cannot choose colliding identities.
pub fn client_key(
    spec: &ClientKeySpec,
    parts: &request::Parts,
    peer: IpAddr,
    hasher: &std::hash::RandomState,
) -> Result<u64, GuardError> {
    let mut h = hasher.build_hasher();
    let found = match &spec.source {
        KeySource::Header(name) => parts
            .headers
            .get(name)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .map(|v| {
                h.write_u8(1);
                h.write(v);
            })
            .is_some(),
        KeySource::Query(name) => hash_query_param(parts.uri.query(), name, &mut h),
        KeySource::PeerIp => false,
    };
    if !found {
        match (&spec.source, spec.fallback) {
            (KeySource::PeerIp, _) | (_, KeyFallback::PeerIp) => {
                h.write_u8(3);
                std::hash::Hash::hash(&peer, &mut h);
            }
            (_, KeyFallback::Shared) => h.write_u8(4),
            (_, KeyFallback::Reject) => return Err(GuardError::MissingClientKey),
        }
    }
    Ok(h.finish())
}

/// Feeds the percent-decoded value of the first `name=` parameter in `query` to `h`. Decoding
/// first means `vin=%41` and `vin=A` are the same client. Returns false when absent or empty.
fn hash_query_param(query: Option<&str>, name: &str, h: &mut impl Hasher) -> bool {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then_some(v)
        })
    else {
        return false;
    };
    if value.is_empty() {
        return false;
    }
    h.write_u8(2);
    let v = value.as_bytes();
    let mut i = 0;
    while i < v.len() {
        let (byte, used) = match v[i] {
            b'+' => (b' ', 1),
            b'%' => match (
                v.get(i + 1).and_then(|&b| hex(b)),
                v.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                _ => (b'%', 1),
            },
            b => (b, 1),
        };
        h.write_u8(byte);
        i += used;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    fn key(query: &str, s: &RandomState) -> Option<u64> {
        let mut h = s.build_hasher();
        hash_query_param(Some(query), "vin", &mut h).then(|| h.finish())
    }

    #[test]
    fn query_keys_are_decoded_before_hashing() {
        let s = RandomState::new();
        assert_eq!(key("vin=ABC", &s), key("a=1&vin=%41BC", &s));
        assert_eq!(key("vin=a+b", &s), key("vin=a%20b", &s));
        assert_ne!(key("vin=ABC", &s), key("vin=ABD", &s));
        assert_eq!(key("vin=", &s), None);
        assert_eq!(key("vinx=1", &s), None);
        assert_eq!(key("vin=A&vin=B", &s), key("vin=A", &s));
    }
}
