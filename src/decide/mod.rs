//! The decision core: what the policy says about a request, as typed verdicts.
//!
//! Each phase is a plain function over the request head (`http` types, no hyper), the compiled
//! policy and the budgets' state, and returns a value or a [`Reject`]:
//! - [`route`]: normalize the path and pick the route;
//! - [`identify`]: the client's key, when a per-client budget needs it;
//! - [`admit`]: brownout, then the payload budgets;
//! - [`BodyRules`]: `max_body` and byte budgets for a body of undeclared length, frame by frame;
//! - [`records::judge`]: a telemetry batch decoded, parsed and decided record by record.
//!
//! Nothing here acts on a verdict or counts it. The live guard (`proxy`) carries verdicts out in
//! enforce mode and only counts them in shadow mode; `simulate` runs the very same phases on a
//! virtual clock and reports them. Outcomes are values ([`Reason`], [`BatchOutcome`],
//! [`Tally`](crate::records::filter::Tally)) that the layers above count.

mod body;
mod reason;
pub mod records;
mod reject;

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use governor::clock::Clock;
use http::request;

pub use body::BodyRules;
pub use reason::{Reason, UpstreamFailure};
pub use records::BatchOutcome;
pub use reject::Reject;

use crate::budget::{self, BudgetKind, ByteCharge};
use crate::policy::{ClientKeySpec, KeyFallback, KeySource, Policy, Route};
use crate::protect::{self, Brownout, BrownoutConfig, Priority, Shed, ShedReason};
use crate::records::Format;
use crate::records::filter::Tighten;
use crate::route::normalize_path;

/// The route label of a request refused before it could be routed (its path was invalid).
pub const UNROUTED: &str = "_invalid";

/// How an answer the guard makes itself is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorStyle {
    /// The guard's JSON body.
    #[default]
    Json,
    /// OTLP/HTTP requires a `google.rpc.Status` body on every 4xx and 5xx, encoded like the
    /// request: protobuf ...
    OtlpProto,
    /// ... or JSON.
    OtlpJson,
}

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
) -> Result<Routed<'p, C>, Reject> {
    let normalized = match normalize_path(parts.uri.path())? {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    let path = normalized.as_deref().unwrap_or(parts.uri.path());
    let (index, route) = policy.route(&parts.method, path);
    let mut style = ErrorStyle::Json;
    if let Some(rules) = route.records.as_ref().filter(|r| r.format.is_otlp()) {
        style = match records::format_of(rules.format, &parts.headers) {
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

/// The request's framing and host, which the guard and the upstream must read alike. Checked
/// on every request the live guard serves (`simulate` replays requests that already crossed a
/// wire): two header lookups, nothing allocated.
///
/// - A `Transfer-Encoding` other than exactly `chunked` (one line, one coding) is refused:
///   the guard would forward the body re-chunked with the other codings gone (RFC 9112 §6.1
///   has a server answer 501 to a coding it does not understand).
/// - An HTTP/1.1 request must carry exactly one `Host`, and no request more than one
///   (RFC 9112 §3.2): with two, the upstream can read a different host from the one in
///   `X-Forwarded-Host`.
pub fn framing(parts: &request::Parts) -> Result<(), Reject> {
    let headers = &parts.headers;
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(te) = codings.next()
        && (!te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
            || codings.next().is_some())
    {
        return Err(Reject::UnsupportedTransferCoding);
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(Reject::BadHost),
        (None, None) if parts.version == http::Version::HTTP_11 => Err(Reject::BadHost),
        _ => Ok(()),
    }
}

/// The client's key, only when some budget of the route is kept per client.
pub fn identify<C: Clock>(
    route: &Route<C>,
    parts: &request::Parts,
    peer: IpAddr,
    hasher: &KeyHasher,
) -> Result<Option<u64>, Reject> {
    match route.needs_client_key() {
        true => client_key(&route.client_key, parts, peer, hasher).map(Some),
        false => Ok(None),
    }
}

/// A request that passed the head's decisions.
pub struct Admitted<C: Clock = governor::clock::DefaultClock> {
    /// How the brownout tightens this request's batch (none outside bulk routes).
    pub tighten: Tighten,
    /// Byte budgets still to charge as the body streams (bodies without a Content-Length).
    pub charge: ByteCharge<C>,
    /// A bulk batch the brownout would have shed, cut to its error and fatal records by
    /// `tighten` instead: it goes upstream at normal priority, and is shed with this after all
    /// if nothing is left of it (see [`records::salvaged`]).
    pub salvage: Option<Shed>,
}

impl<C: Clock> Admitted<C> {
    /// The priority its upstream slot is taken at: a salvaged bulk batch goes as normal.
    pub fn class(&self, route: Priority) -> Priority {
        match self.salvage {
            Some(_) => Priority::Normal,
            None => route,
        }
    }
}

impl<C: Clock> Default for Admitted<C> {
    /// Nothing tightened, nothing left to charge.
    fn default() -> Self {
        Admitted {
            tighten: Tighten::NONE,
            charge: ByteCharge::default(),
            salvage: None,
        }
    }
}

/// Brownout, then the payload budgets.
///
/// `brownout` is the level now: the live guard's (one atomic load) or one held for a whole
/// `simulate` run. While the upstream is in distress, bulk routes are shed whole at the top
/// level and their batches tightened below it, as `cfg` (the request's policy's
/// `protect.brownout`) says; critical and normal routes never. Shedding comes before the
/// budgets so a shed request spends none of them. Then the payload budgets: size first (no
/// state), then the client's budgets, then the route's, so one client's excess never spends the
/// budget the route shares (see [`budget::admit`]). `untracked` hears of every client budget
/// skipped because its key store was full.
pub fn admit<C: Clock>(
    route: &Route<C>,
    key: Option<u64>,
    brownout: Brownout,
    cfg: &BrownoutConfig,
    declared: Option<u64>,
    untracked: impl FnMut(BudgetKind),
) -> Result<Admitted<C>, Reject> {
    let (tighten, salvage) = match route.priority {
        Priority::Bulk => match brownout {
            Brownout::Off => (Tighten::NONE, None),
            level if level >= Brownout::ShedBulk => {
                let shed = Shed {
                    class: Priority::Bulk,
                    reason: ShedReason::Brownout,
                    retry_after: protect::retry_after(cfg),
                };
                // A telemetry batch goes on with its error and fatal records only; any other
                // bulk request is shed whole.
                if route.records.is_none() {
                    return Err(Reject::Shed(shed));
                }
                (protect::errors_only(), Some(shed))
            }
            level => (protect::tighten(level, cfg), None),
        },
        _ => (Tighten::NONE, None),
    };
    let charge = budget::admit(&route.payload, key, declared, untracked)?;
    Ok(Admitted {
        tighten,
        charge,
        salvage,
    })
}

/// Hashes client identities into the 64-bit keys per-client budgets are kept under.
///
/// SipHash-1-3 with a fixed key: every guard of a fleet maps a client to the same key, which
/// names its fleet budget's state in Redis. A known hash key gives a client nothing: the key
/// stores hash their `u64` keys again with a per-process random state (no flooding one map
/// shard), and to share another client's budget it would have to find a second identity with
/// the same 64-bit hash, about 2^64 tries.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher;

impl BuildHasher for KeyHasher {
    type Hasher = siphasher::sip::SipHasher13;

    fn build_hasher(&self) -> Self::Hasher {
        siphasher::sip::SipHasher13::new_with_keys(0x7665_7262_6f73_6974, 0x792d_6775_6172_6421)
    }
}

/// Hashes the client's identity for per-client budgets, following the route's key spec, with
/// the [`KeyHasher`].
pub fn client_key(
    spec: &ClientKeySpec,
    parts: &request::Parts,
    peer: IpAddr,
    hasher: &KeyHasher,
) -> Result<u64, Reject> {
    let mut h = hasher.build_hasher();
    let found = match &spec.source {
        KeySource::Header(name) => {
            // Every line must say the same: the upstream may read any one of them.
            let mut lines = parts.headers.get_all(name).iter();
            let first = lines.next().map(|v| v.as_bytes().trim_ascii());
            if lines.any(|v| Some(v.as_bytes().trim_ascii()) != first) {
                return Err(Reject::AmbiguousClientKey);
            }
            first
                .filter(|v| !v.is_empty())
                .map(|v| {
                    h.write_u8(1);
                    h.write(v);
                })
                .is_some()
        }
        KeySource::Query(name) => hash_query_param(parts.uri.query(), name, &mut h),
        KeySource::PeerIp => false,
    };
    if !found {
        match (&spec.source, spec.fallback) {
            (KeySource::PeerIp, _) | (_, KeyFallback::PeerIp) => {
                // The address's bytes, not its `Hash` impl, whose output Rust does not promise
                // to keep across releases.
                match peer {
                    IpAddr::V4(a) => {
                        h.write_u8(3);
                        h.write(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        h.write_u8(5);
                        h.write(&a.octets());
                    }
                }
            }
            (_, KeyFallback::Shared) => h.write_u8(4),
            (_, KeyFallback::Reject) => return Err(Reject::MissingClientKey),
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
