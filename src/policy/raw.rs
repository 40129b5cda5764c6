//! The policy file as written: a serde mirror of the YAML with unknown fields rejected.
//!
//! Nothing here is validated beyond its type and unit syntax; `compile` turns it into the runtime
//! [`Policy`](super::Policy). The doc comment on each field is the user manual for that field and
//! the README's policy reference follows it.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::units::{ByteRate, ByteSize, HumanDuration, Rate};
use super::{KeyFallback, Priority};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Schema version of the file. Only `1` exists.
    pub version: Spanned<u32>,
    /// Default way to tell clients apart for `client_*` budgets. Routes may override it.
    #[serde(default)]
    pub client_key: Option<RawClientKey>,
    /// Bounds on the guard's own state.
    #[serde(default)]
    pub limits: RawLimits,
    /// Defaults for talking to the upstream.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Route table. First match wins; the table must end with a catch-all route.
    pub routes: Vec<RawRoute>,
}

/// Where a request's client key comes from. At most one of `header` and `query`; with neither,
/// the key is the peer's IP address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    /// Request header holding the key, e.g. `x-vehicle-id`.
    pub header: Option<Spanned<String>>,
    /// Query parameter holding the key, e.g. `vin`. Percent-decoded before use.
    pub query: Option<Spanned<String>>,
    /// What to use when the header or parameter is missing or empty: `peer_ip` (default),
    /// `shared` (all such requests share one key) or `reject` (400).
    pub fallback: Option<KeyFallback>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Most client keys tracked per client budget (default 1000000). When full, new keys are not
    /// tracked: their requests are held to the route-wide budgets only, and counted.
    pub max_tracked_keys: Option<Spanned<u64>>,
    /// How often idle client keys are evicted (default 10s). A key is idle once its budget is
    /// indistinguishable from a fresh one.
    pub key_eviction_interval: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Default time to wait for the upstream's response headers (default 30s). Routes may
    /// override it with `timeout`. Exceeding it answers 504.
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Route name: lowercase letters, digits, `_` and `-`. Used in metrics and responses.
    pub name: Spanned<String>,
    /// Which requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// `critical`, `normal` (default) or `bulk`: how valuable this route's traffic is.
    pub priority: Option<Priority>,
    /// Overrides the policy-wide `client_key` for this route.
    pub client_key: Option<RawClientKey>,
    /// Overrides `upstream.timeout` for this route.
    pub timeout: Option<HumanDuration>,
    /// Payload budgets. Without it, the route only proxies.
    #[serde(default)]
    pub payload: RawPayload,
}

/// A request matches when its method is listed (or `methods` is absent) and its normalized path
/// matches. Exactly one of `path` and `path_prefix` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// HTTP methods, e.g. `[POST, PUT]`. Absent means any method.
    pub methods: Option<Vec<Spanned<String>>>,
    /// Exact path, or a template whose `{name}` segments match any one segment and whose final
    /// `{*name}` matches the rest, e.g. `/api/1/vehicles/{id}/command/{command}`.
    pub path: Option<Spanned<String>>,
    /// Path prefix matched on segment boundaries: `/api/1/telemetry` takes
    /// `/api/1/telemetry` and `/api/1/telemetry/batch` but not `/api/1/telemetryx`.
    pub path_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPayload {
    /// Largest request body accepted. Bigger declared bodies get 413 before any byte is read;
    /// chunked or lying bodies are cut off at the limit.
    pub max_body: Option<ByteSize>,
    /// Requests per period across all clients of the route.
    pub route_requests: Option<RawRequestBudget>,
    /// Body bytes per period across all clients of the route.
    pub route_bytes: Option<RawByteBudget>,
    /// Requests per period for each client key.
    pub client_requests: Option<RawRequestBudget>,
    /// Body bytes per period for each client key.
    pub client_bytes: Option<RawByteBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestBudget {
    /// Sustained rate, e.g. `10/s` or `600/m`.
    pub rate: Rate,
    /// Requests allowed at once above the sustained rate (default: one second of `rate`,
    /// at least 1).
    pub burst: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawByteBudget {
    /// Sustained byte rate, e.g. `64KiB/s`.
    pub rate: ByteRate,
    /// Bytes allowed at once above the sustained rate (default: one second of `rate`). A body
    /// larger than the burst can never fit and gets 413.
    pub burst: Option<ByteSize>,
}
