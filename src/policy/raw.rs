//! The policy file as written: a serde mirror of the YAML with unknown fields rejected.
//!
//! Nothing here is validated beyond its type and unit syntax; `compile` turns it into the runtime
//! [`Policy`](super::Policy). The doc comment on each field is the user manual for that field: the
//! same doc comments are the descriptions in the JSON Schema that `verbosity-guard schema` prints (derived here with `schemars`, so the schema
//! cannot drift from what the parser accepts). A `Spanned<T>` field (kept for error line numbers)
//! is described as plain `T`. `docs/policy.md`'s field reference is
//! generated from that schema (`tests/docs.rs`).

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{KeyFallback, Mode};
use crate::protect::Priority;
use crate::records::{Format, Level, OnMalformed, Per};
use crate::units::{ByteRate, ByteSize, Fraction, HumanDuration, Rate};

/// A verbosity-guard policy: how requests are routed and which payload and log-level budgets
/// each route enforces.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "verbosity-guard policy", rename = "Policy")]
pub struct RawPolicy {
    /// Schema version of the file. Only `1` exists.
    #[schemars(with = "u32", range(min = 1, max = 1))]
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
    /// Default `mode` of every route: `enforce` (default) carries decisions out; `shadow`
    /// makes and counts every decision but forwards each request as received, marked with an
    /// `x-verbosity-guard-shadow` header, so a policy can be tried on live traffic first.
    pub mode: Option<Mode>,
    /// Fleet-wide budgets: how guards share the budgets marked `scope: fleet`.
    #[serde(default)]
    pub fleet: RawFleet,
    /// Route table. First match wins; the table must end with a catch-all route.
    pub routes: Vec<RawRoute>,
}

/// How the guards of a fleet share the payload budgets marked `scope: fleet`, through the Redis
/// of `serve --fleet-redis`. Every field has a default; the section may be omitted.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Fleet")]
pub struct RawFleet {
    /// Guards expected in the fleet (default 1). Until the live count is known from Redis, and
    /// whenever Redis is unreachable or not configured, each guard enforces 1/pods of every
    /// fleet budget (rate and burst).
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub pods: Option<Spanned<u32>>,
    /// How often a guard tops up its leases; a lease holds this long of the guard's share of
    /// the rate (default 100ms; 10ms to 10s).
    pub refill_interval: Option<HumanDuration>,
    /// Prefix of every Redis key (default `verbosity-guard:` and the policy file's name without
    /// its extension). Guards share budgets only within one namespace.
    #[schemars(with = "Option<String>", regex(pattern = r"^[A-Za-z0-9_:.-]{1,64}$"))]
    pub namespace: Option<Spanned<String>>,
}

/// Who shares a payload budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawScope {
    /// This guard's alone (default).
    #[default]
    Local,
    /// One budget for every guard of the fleet, shared through Redis (see `fleet`).
    Fleet,
}

/// Where a request's client key comes from. At most one of `header` and `query`; with neither,
/// the key is the peer's IP address.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ClientKey")]
pub struct RawClientKey {
    /// Request header holding the key, e.g. `x-vehicle-id`.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    /// Query parameter holding the key, e.g. `vin`. Percent-decoded before use.
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    /// What to use when the header or parameter is missing or empty: `peer_ip` (default),
    /// `shared` (all such requests share one key) or `reject` (400).
    pub fallback: Option<KeyFallback>,
}

/// Bounds on the guard's own state.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Limits")]
pub struct RawLimits {
    /// Most client keys tracked per client budget (default 1000000). When full, new keys are not
    /// tracked: their requests are held to the route-wide budgets only, and counted.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub max_tracked_keys: Option<Spanned<u64>>,
    /// How often idle client keys are evicted (default 10s). A key is idle once its budget is
    /// indistinguishable from a fresh one.
    pub key_eviction_interval: Option<HumanDuration>,
}

/// Defaults for talking to the upstream.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Upstream")]
pub struct RawUpstream {
    /// Default time to wait for the upstream's response headers (default 30s). Routes may
    /// override it with `timeout`. Exceeding it answers 504.
    pub timeout: Option<HumanDuration>,
}

/// Upstream concurrency partitioned by route priority, the brownout controller and surge
/// detection. Every field has a default; the section may be omitted.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Protect")]
pub struct RawProtect {
    /// Upstream requests in flight at once, all routes together (default 256). Size it to what
    /// the upstream can serve concurrently: the reserve below only protects critical routes if
    /// the upstream is never asked for more than it can serve.
    #[schemars(with = "Option<u32>")]
    pub max_in_flight: Option<Spanned<u32>>,
    /// Of `max_in_flight`, slots only `critical` routes may use (default a quarter). Critical
    /// requests also borrow the other slots when these are busy.
    #[schemars(with = "Option<u32>")]
    pub critical_reserved: Option<Spanned<u32>>,
    /// Most `bulk` requests in flight at once (default half of `max_in_flight`).
    #[schemars(with = "Option<u32>")]
    pub bulk_max_in_flight: Option<Spanned<u32>>,
    /// Longest wait for a slot, per priority (defaults critical 5s, normal 1s, bulk 50ms);
    /// after it the request gets 503 with `Retry-After`.
    #[serde(default)]
    pub queue_timeout: RawPerClass<HumanDuration>,
    /// Most requests waiting for a slot, per priority (defaults critical 1024, normal 1024,
    /// bulk 256); more get 503 at once.
    #[serde(default)]
    pub max_queued: RawPerClass<u32>,
    /// The brownout controller.
    #[serde(default)]
    pub brownout: RawBrownout,
    /// Verbosity surge detection.
    #[serde(default)]
    pub surge: RawSurge,
    /// Adaptive upstream concurrency for normal and bulk routes.
    #[serde(default)]
    pub adaptive: RawAdaptive,
}

/// One value per route priority; absent ones keep their default.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PerClass_{T}")]
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
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Brownout")]
pub struct RawBrownout {
    /// `false` keeps the level at `off` (slots still apply). Default `true`.
    pub enabled: Option<bool>,
    /// How often the upstream is judged (default 1s; 10ms to 1h).
    pub interval: Option<HumanDuration>,
    /// A class's interval is congested when its p90 latency is above this multiple of its
    /// learned baseline (default 2).
    #[schemars(with = "Option<f64>")]
    pub latency_factor: Option<Spanned<f64>>,
    /// ... and healthy again under this multiple (default 1.5; at most `latency_factor`).
    #[schemars(with = "Option<f64>")]
    pub recover_factor: Option<Spanned<f64>>,
    /// Latencies up to this are never congestion, however low the baseline (default 25ms).
    pub latency_floor: Option<HumanDuration>,
    /// An interval is congested when more than this share of a class's exchanges failed (5xx,
    /// refused, reset, timed out). Default `10%`.
    pub error_rate: Option<Fraction>,
    /// An interval is congested when more than this share of a class's requests found no
    /// upstream slot within their `queue_timeout` (the upstream is saturated). Default `1%`.
    pub shed_rate: Option<Fraction>,
    /// Congestion lasting this long raises the level one step (default 2s).
    pub raise_after: Option<HumanDuration>,
    /// Health lasting this long lowers it one step (default 10s; at least `raise_after`).
    pub relax_after: Option<HumanDuration>,
    /// Time a class's latency baseline learns before latency is judged (default 10s).
    pub warmup: Option<HumanDuration>,
    /// Fewest exchanges of a class in an interval for it to be judged (default 10).
    #[schemars(with = "Option<u64>")]
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
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Surge")]
pub struct RawSurge {
    /// `false` turns detection off. Default `true`.
    pub enabled: Option<bool>,
    /// How often rates are sampled (default 1s; 10ms to 1h).
    pub interval: Option<HumanDuration>,
    /// A surge starts when the short-term rate stays above this multiple of the baseline for
    /// `hold` (default 3).
    #[schemars(with = "Option<f64>")]
    pub factor: Option<Spanned<f64>>,
    /// ... and ends when it stays under this multiple for `hold` (default 1.5).
    #[schemars(with = "Option<f64>")]
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

/// Adaptive upstream concurrency: how many `normal` and how many `bulk` requests may be in
/// flight to the upstream follows the upstream's own latency, between `min_limit` and the
/// class's maximum (`bulk_max_in_flight`; for normal, the slots not reserved for critical). Each
/// class's no-load latency (min RTT) is measured at `min_limit` in flight when it first carries
/// traffic and every `min_rtt_interval`; its limit shrinks in proportion while its median latency is above
/// `max(min RTT × tolerance, min RTT + jitter)`, and grows by about √limit per `interval` while
/// it is not. Critical routes are never limited by it. Every field has a default.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Adaptive")]
pub struct RawAdaptive {
    /// `true` turns it on. Default `false`: normal and bulk stay at their configured maximums.
    /// Opt-in, as Envoy's filter is: its min-RTT probe holds a class at `min_limit` for a few
    /// windows every `min_rtt_interval`, which a busy normal route feels.
    pub enabled: Option<bool>,
    /// How often the limits are updated (default 100ms; 10ms to 1h).
    pub interval: Option<HumanDuration>,
    /// Median latency up to this multiple of the min RTT is not queueing (default 1.5; above 1,
    /// at most 100).
    #[schemars(with = "Option<f64>")]
    pub tolerance: Option<Spanned<f64>>,
    /// ... nor is latency up to this much above the min RTT, so that scheduling noise over a
    /// fast upstream is not taken for queueing (default 2ms).
    pub jitter: Option<HumanDuration>,
    /// Lowest limit of each class, and the concurrency the min RTT is measured at (default 3;
    /// at most `bulk_max_in_flight`). A request held long (a slow endpoint) takes one of them
    /// for as long; 1 suits an upstream that can degrade to a single worker.
    #[schemars(with = "Option<u32>")]
    pub min_limit: Option<Spanned<u32>>,
    /// Fewest answered exchanges for a class's latency to be judged (default 5). A quieter
    /// class gathers for up to ten intervals, then is judged on what it has.
    #[schemars(with = "Option<u64>")]
    pub min_samples: Option<Spanned<u64>>,
    /// Time between two measurements of the min RTT (default 30s; at least ten `interval`s).
    /// Each holds the class at `min_limit` for three windows of `min_samples` (about three
    /// intervals).
    pub min_rtt_interval: Option<HumanDuration>,
    /// While bulk's latency says the upstream is queueing, a bulk request that has its slot
    /// waits (within bulk's `queue_timeout`) until no critical request is in flight, so that
    /// an upstream serving in arrival order never queues a command behind more than the bulk
    /// exchange already running. Default `true`.
    pub bulk_yields_to_critical: Option<bool>,
}

/// One route: which requests it takes and the budgets they are held to.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub struct RawRoute {
    /// Route name: lowercase letters, digits, `_` and `-`. Used in metrics and responses.
    #[schemars(with = "String", regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub name: Spanned<String>,
    /// Which requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// `critical`, `normal` (default) or `bulk`: how valuable this route's traffic is.
    pub priority: Option<Priority>,
    /// `enforce` or `shadow` (decide and count, forward everything); default the policy's
    /// `mode`.
    pub mode: Option<Mode>,
    /// Overrides the policy-wide `client_key` for this route.
    pub client_key: Option<RawClientKey>,
    /// Overrides `upstream.timeout` for this route.
    pub timeout: Option<HumanDuration>,
    /// Payload budgets. Without it, the route only proxies.
    #[serde(default)]
    pub payload: RawPayload,
    /// Log-level budgets inside the route's telemetry batches. The body is buffered (up to
    /// `payload.max_body`), filtered record by record and rewritten.
    #[schemars(with = "Option<RawRecords>")]
    pub records: Option<Spanned<RawRecords>>,
    /// Caps a verbosity the client asks for in a header or query parameter.
    #[schemars(with = "Option<RawClamp>")]
    pub verbosity_clamp: Option<Spanned<RawClamp>>,
}

/// Log-level budgets inside a route's telemetry batches.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Records")]
pub struct RawRecords {
    /// `ndjson`, `json-array`, `otlp-json` or `otlp-proto`.
    pub format: Format,
    /// Dotted path to the level inside a JSON record (default `level`). Not allowed with the
    /// OTLP formats, whose level is `severityNumber`, then `severityText`.
    #[schemars(with = "Option<String>")]
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
    #[schemars(with = "Option<String>")]
    pub sample_by: Option<Spanned<String>>,
    /// Largest decoded body of a compressed (gzip or zstd) batch (default 8MiB).
    pub max_decoded: Option<ByteSize>,
    /// Largest decoded size as a multiple of the compressed size (default 100).
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub max_ratio: Option<Spanned<u32>>,
}

/// The rule for each level, least to most severe. An absent level keeps all its records.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Levels")]
pub struct RawLevels {
    /// Rule for `trace` records.
    #[schemars(with = "Option<RawLevelRule>")]
    pub trace: Option<Spanned<RawLevelRule>>,
    /// Rule for `debug` records.
    #[schemars(with = "Option<RawLevelRule>")]
    pub debug: Option<Spanned<RawLevelRule>>,
    /// Rule for `info` records.
    #[schemars(with = "Option<RawLevelRule>")]
    pub info: Option<Spanned<RawLevelRule>>,
    /// Rule for `warn` records.
    #[schemars(with = "Option<RawLevelRule>")]
    pub warn: Option<Spanned<RawLevelRule>>,
    /// Rule for `error` records.
    #[schemars(with = "Option<RawLevelRule>")]
    pub error: Option<Spanned<RawLevelRule>>,
    /// Rule for `fatal` records.
    #[schemars(with = "Option<RawLevelRule>")]
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

/// `keep`, `drop`, or a map of limits. Deserialized by hand (a string or a map), so its JSON
/// Schema is written by hand too, in `super::schema`.
#[derive(Debug)]
pub enum RawLevelRule {
    Keep,
    Drop,
    Limits(RawLevelLimits),
}

/// A level's limits, applied in order: sample, then the record rate, then the byte rate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "LevelLimits")]
pub struct RawLevelLimits {
    /// Share of records kept, chosen by a hash so a retried batch keeps the same ones: `1%`.
    pub sample: Option<Fraction>,
    /// Records per period, e.g. `50/s`.
    pub rate: Option<Rate>,
    /// Records allowed at once above `rate` (default one second of it).
    #[schemars(with = "Option<u32>", range(min = 1))]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "VerbosityClamp")]
pub struct RawClamp {
    /// Request header carrying a log level, e.g. `x-log-level`.
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    /// Query parameter carrying a log level, e.g. `log_level`.
    #[schemars(with = "Option<String>")]
    pub query: Option<Spanned<String>>,
    /// Most verbose level allowed through.
    pub max: Level,
}

/// A request matches when its method is listed (or `methods` is absent) and its normalized path
/// matches. Exactly one of `path` and `path_prefix` is required.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Match")]
pub struct RawMatch {
    /// HTTP methods, e.g. `[POST, PUT]`. Absent means any method.
    #[schemars(with = "Option<Vec<String>>")]
    pub methods: Option<Vec<Spanned<String>>>,
    /// Exact path, or a template whose `{name}` segments match any one segment and whose final
    /// `{*name}` matches the rest, e.g. `/api/1/vehicles/{id}/command/{command}`.
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// Path prefix matched on segment boundaries: `/api/1/telemetry` takes
    /// `/api/1/telemetry` and `/api/1/telemetry/batch` but not `/api/1/telemetryx`.
    #[schemars(with = "Option<String>")]
    pub path_prefix: Option<Spanned<String>>,
}

/// A route's payload budgets: body size, and request and byte rates, route-wide and per client.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Payload")]
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

/// A request rate with a burst.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RequestBudget")]
pub struct RawRequestBudget {
    /// Sustained rate, e.g. `10/s` or `600/m`.
    pub rate: Rate,
    /// Requests allowed at once above the sustained rate (default: one second of `rate`,
    /// at least 1).
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub burst: Option<Spanned<u32>>,
    /// `local` (default): each guard enforces the budget alone. `fleet`: every guard of the
    /// fleet shares it (see `fleet`).
    #[serde(default)]
    pub scope: RawScope,
}

/// A byte rate with a burst.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ByteBudget")]
pub struct RawByteBudget {
    /// Sustained byte rate, e.g. `64KiB/s`.
    pub rate: ByteRate,
    /// Bytes allowed at once above the sustained rate (default: one second of `rate`). A body
    /// larger than the burst can never fit and gets 413.
    pub burst: Option<ByteSize>,
    /// `local` (default): each guard enforces the budget alone. `fleet`: every guard of the
    /// fleet shares it (see `fleet`).
    #[serde(default)]
    pub scope: RawScope,
}
