//! The policy file as written: a serde mirror of the YAML with unknown fields rejected.
//!
//! Nothing here is validated beyond its type and unit syntax; `compile` turns it into the runtime
//! [`Policy`](super::Policy). The doc comment on each field is the user manual for that field and
//! the README's policy reference follows it.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::units::{ByteRate, ByteSize, Fraction, HumanDuration, Rate};
use super::{KeyFallback, Priority};
use crate::records::{Format, Level, OnMalformed, Per};

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
    /// Critical-route protection: upstream slots by priority, brownout, surge detection.
    #[serde(default)]
    pub protect: RawProtect,
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

/// Upstream concurrency partitioned by route priority, the brownout controller and surge
/// detection. Every field has a default; the section may be omitted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtect {
    /// Upstream requests in flight at once, all routes together (default 256). Size it to what
    /// the upstream can serve concurrently: the reserve below only protects critical routes if
    /// the upstream is never asked for more than it can serve.
    pub max_in_flight: Option<Spanned<u32>>,
    /// Of `max_in_flight`, slots only `critical` routes may use (default a quarter). Critical
    /// requests also borrow the other slots when these are busy.
    pub critical_reserved: Option<Spanned<u32>>,
    /// Most `bulk` requests in flight at once (default half of `max_in_flight`).
    pub bulk_max_in_flight: Option<Spanned<u32>>,
    /// Longest wait for a slot, per priority (defaults critical 5s, normal 1s, bulk 50ms);
    /// after it the request gets 503 with `Retry-After`.
    #[serde(default)]
    pub queue_timeout: RawPerClass<HumanDuration>,
    /// Most requests waiting for a slot, per priority (defaults critical 1024, normal 1024,
    /// bulk 256); more get 503 at once.
    #[serde(default)]
    pub max_queued: RawPerClass<Spanned<u32>>,
    /// The brownout controller.
    #[serde(default)]
    pub brownout: RawBrownout,
    /// Verbosity surge detection.
    #[serde(default)]
    pub surge: RawSurge,
}

/// One value per route priority; absent ones keep their default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerClass<T> {
    pub critical: Option<T>,
    pub normal: Option<T>,
    pub bulk: Option<T>,
}

impl<T> Default for RawPerClass<T> {
    fn default() -> Self {
        RawPerClass {
            critical: None,
            normal: None,
            bulk: None,
        }
    }
}

/// The brownout controller: judges the upstream every `interval` and tightens bulk routes
/// step by step while it is in distress.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrownout {
    /// `false` keeps the level at `off` (slots still apply). Default `true`.
    pub enabled: Option<bool>,
    /// How often the upstream is judged (default 1s).
    pub interval: Option<HumanDuration>,
    /// A class's interval is congested when its p90 latency is above this multiple of its
    /// learned baseline (default 2).
    pub latency_factor: Option<Spanned<f64>>,
    /// ... and healthy again under this multiple (default 1.5; below `latency_factor`).
    pub recover_factor: Option<Spanned<f64>>,
    /// Latencies up to this are never congestion, however low the baseline (default 25ms).
    pub latency_floor: Option<HumanDuration>,
    /// An interval is congested when more than this share of a class's exchanges failed (5xx,
    /// refused, reset, timed out). Default `10%`.
    pub error_rate: Option<Fraction>,
    /// Congestion lasting this long raises the level one step (default 2s).
    pub raise_after: Option<HumanDuration>,
    /// Health lasting this long lowers it one step (default 10s; at least `raise_after`).
    pub relax_after: Option<HumanDuration>,
    /// Time a class's latency baseline learns before latency is judged (default 10s).
    pub warmup: Option<HumanDuration>,
    /// Fewest exchanges of a class in an interval for it to be judged (default 10).
    pub min_samples: Option<Spanned<u64>>,
    /// Share of `info` records kept from level `sample_info` up (default 10%).
    pub info_sample: Option<Fraction>,
    /// Share of `warn` records kept from level `sample_warn` up (default 25%).
    pub warn_sample: Option<Fraction>,
    /// Highest level the controller may reach: `drop_verbose`, `sample_info`, `sample_warn` or
    /// `shed_bulk` (default).
    pub max_level: Option<crate::protect::Brownout>,
}

/// Verbosity surge detection per route and level, against a learned baseline.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSurge {
    /// `false` turns detection off. Default `true`.
    pub enabled: Option<bool>,
    /// How often rates are sampled (default 1s).
    pub interval: Option<HumanDuration>,
    /// A surge starts when the short-term rate stays above this multiple of the baseline for
    /// `hold` (default 3).
    pub factor: Option<Spanned<f64>>,
    /// ... and ends when it stays under this multiple for `hold` (default 1.5).
    pub clear_factor: Option<Spanned<f64>>,
    /// How long the rate must stay past a threshold to start or end a surge (default 30s).
    pub hold: Option<HumanDuration>,
    /// Time the baseline learns before anything is judged (default 5m).
    pub warmup: Option<HumanDuration>,
    /// Half-life of the short-term rate (default 10s).
    pub window: Option<HumanDuration>,
    /// Half-life of the baseline (default 1h).
    pub baseline_half_life: Option<HumanDuration>,
    /// Records per second under which a level never surges, e.g. `1/s` (default).
    pub min_rate: Option<Rate>,
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
    /// Log-level budgets inside the route's telemetry batches. The body is buffered (up to
    /// `payload.max_body`), filtered record by record and rewritten.
    pub records: Option<Spanned<RawRecords>>,
    /// Caps a verbosity the client asks for in a header or query parameter.
    pub verbosity_clamp: Option<Spanned<RawClamp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecords {
    /// `ndjson`, `json-array`, `otlp-json` or `otlp-proto`.
    pub format: Format,
    /// Dotted path to the level inside a JSON record (default `level`). Not used by OTLP
    /// formats, whose level is `severityNumber`, then `severityText`.
    pub level_field: Option<Spanned<String>>,
    /// The rule for each level; an absent level keeps all its records.
    #[serde(default)]
    pub levels: RawLevels,
    /// Level given to records whose level is missing or not in the level table (default info).
    pub unknown_level: Option<Level>,
    /// `forward` (default) a body that is not the declared format untouched, or `reject` it
    /// with 400.
    pub on_malformed: Option<OnMalformed>,
    /// What the sampling hash covers: the whole record (default), or one field's value so that
    /// related records are kept together. JSON formats: a dotted field path; OTLP: `traceId`.
    pub sample_by: Option<Spanned<String>>,
    /// Largest decoded body of a compressed (gzip or zstd) batch (default 8MiB).
    pub max_decoded: Option<ByteSize>,
    /// Largest decoded size as a multiple of the compressed size (default 100).
    pub max_ratio: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevels {
    pub trace: Option<Spanned<RawLevelRule>>,
    pub debug: Option<Spanned<RawLevelRule>>,
    pub info: Option<Spanned<RawLevelRule>>,
    pub warn: Option<Spanned<RawLevelRule>>,
    pub error: Option<Spanned<RawLevelRule>>,
    pub fatal: Option<Spanned<RawLevelRule>>,
}

impl RawLevels {
    pub fn get(&self, level: Level) -> Option<&Spanned<RawLevelRule>> {
        match level {
            Level::Trace => self.trace.as_ref(),
            Level::Debug => self.debug.as_ref(),
            Level::Info => self.info.as_ref(),
            Level::Warn => self.warn.as_ref(),
            Level::Error => self.error.as_ref(),
            Level::Fatal => self.fatal.as_ref(),
        }
    }
}

/// `keep`, `drop`, or a map of limits.
#[derive(Debug)]
pub enum RawLevelRule {
    Keep,
    Drop,
    Limits(RawLevelLimits),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevelLimits {
    /// Share of records kept, chosen by a hash so a retried batch keeps the same ones: `1%`.
    pub sample: Option<Fraction>,
    /// Records per period, e.g. `50/s`.
    pub rate: Option<Rate>,
    /// Records allowed at once above `rate` (default one second of it).
    pub burst: Option<Spanned<u32>>,
    /// Whose budget `rate` and `bytes` are: `route` (default, shared) or `client` (per key).
    pub per: Option<Per>,
    /// Record bytes per period, e.g. `64KiB/s`.
    pub bytes: Option<ByteRate>,
    /// Record bytes allowed at once above `bytes` (default one second of it).
    pub bytes_burst: Option<ByteSize>,
}

impl<'de> Deserialize<'de> for RawLevelRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawLevelRule;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "`keep`, `drop`, or a map with sample, rate, burst, per, bytes, bytes_burst",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawLevelRule, E> {
                match v {
                    "keep" => Ok(RawLevelRule::Keep),
                    "drop" => Ok(RawLevelRule::Drop),
                    _ => Err(E::custom(format!(
                        "{v:?} is not a level rule (write keep, drop, or a map such as {{ rate: 50/s, per: client }})"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawLevelRule, A::Error> {
                RawLevelLimits::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawLevelRule::Limits)
            }
        }
        d.deserialize_any(V)
    }
}

/// Rewrites a requested verbosity above `max` down to `max`. At least one of `header` and
/// `query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClamp {
    /// Request header carrying a log level, e.g. `x-log-level`.
    pub header: Option<Spanned<String>>,
    /// Query parameter carrying a log level, e.g. `log_level`.
    pub query: Option<Spanned<String>>,
    /// Most verbose level allowed through.
    pub max: Level,
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
