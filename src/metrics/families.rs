//! Every metric family the guard exports: name, type, labels and help, in one table.
//!
//! [`Metrics::register`](super::Metrics::register) creates each family from its entry here, and
//! `docs/metrics.md` is generated from [`FAMILIES`] (`tests/docs.rs` checks it), so the reference
//! cannot drift from what `/metrics` serves.

/// A metric family's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The full name, `verbosity_guard_` included.
    pub name: &'static str,
    pub kind: Kind,
    /// Label names; every value comes from a bounded set (see the module docs of `metrics`).
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

macro_rules! family {
    ($name:literal, $kind:ident, [$($label:literal),*], $help:literal) => {
        Family {
            name: concat!("verbosity_guard_", $name),
            kind: Kind::$kind,
            labels: &[$($label),*],
            help: $help,
        }
    };
}

// Requests and bodies.
pub const REQUESTS: Family = family!(
    "requests_total",
    Counter,
    ["route", "outcome"],
    "Requests by route and outcome (forwarded, rejected, upstream_error, all_dropped)."
);
pub const REQUEST_BYTES: Family = family!(
    "request_body_bytes_total",
    Counter,
    ["route"],
    "Request body bytes received from clients."
);
pub const FORWARDED_BYTES: Family = family!(
    "forwarded_body_bytes_total",
    Counter,
    ["route"],
    "Request body bytes sent to the upstream."
);
pub const REJECTIONS: Family = family!(
    "rejections_total",
    Counter,
    ["route", "reason"],
    "Requests the guard answered itself, by route and reason."
);
pub const UPSTREAM_ERRORS: Family = family!(
    "upstream_errors_total",
    Counter,
    ["route", "kind"],
    "Failed upstream exchanges by route and kind (connect, timeout, reset, head_too_large)."
);
pub const UPSTREAM_DURATION: Family = family!(
    "upstream_duration_seconds",
    Histogram,
    ["route"],
    "Time from sending a request upstream to its response headers."
);
pub const TRACKED_KEYS: Family = family!(
    "tracked_keys",
    Gauge,
    ["route", "budget"],
    "Client keys held by each client budget."
);
pub const UNTRACKED_KEYS: Family = family!(
    "untracked_key_requests_total",
    Counter,
    ["route", "budget"],
    "Requests whose client key could not be tracked because the key cap was reached; \
     only route-wide budgets applied."
);
pub const IN_FLIGHT: Family = family!(
    "in_flight_requests",
    Gauge,
    [],
    "Requests being handled now."
);

// Connections.
pub const CONNECTIONS_OPEN: Family = family!(
    "connections_open",
    Gauge,
    [],
    "Client connections open now."
);
pub const CONNECTIONS: Family = family!(
    "connections_total",
    Counter,
    [],
    "Client connections accepted."
);
pub const CONNECTION_ERRORS: Family = family!(
    "connection_errors_total",
    Counter,
    ["kind"],
    "Client connections ended by an error, by kind (header_timeout, header_too_large, \
     malformed, incomplete, io)."
);
pub const CONNECTIONS_CLOSED: Family = family!(
    "connections_closed_total",
    Counter,
    ["reason"],
    "Client connections the guard closed itself, by reason: idle_timeout (HTTP/2 with no \
     stream for the header read timeout) or evicted (idle when a new client needed a slot \
     under --max-connections)."
);

// The policy.
pub const POLICY_INFO: Family = family!(
    "policy_info",
    Gauge,
    ["version_hash", "source"],
    "The active policy (value is always 1)."
);
pub const POLICY_LOADED: Family = family!(
    "policy_loaded_timestamp_seconds",
    Gauge,
    [],
    "Unix time the active policy was loaded."
);
pub const POLICY_RELOADS: Family = family!(
    "policy_reloads_total",
    Counter,
    ["result"],
    "Policy reload attempts (file change or SIGHUP) by result: success (a new \
     policy is active), unchanged (same text as the active one), failure (the \
     file could not be read or is invalid; the active policy stays)."
);
pub const POLICY_LAST_RELOAD_OK: Family = family!(
    "policy_last_reload_successful",
    Gauge,
    [],
    "1 if the last policy reload attempt succeeded (or none was made), 0 if \
     it failed and an older policy is still active."
);
pub const ROUTE_MODE: Family = family!(
    "route_mode",
    Gauge,
    ["route", "mode"],
    "Each route of the active policy with its mode (enforce, shadow); value 1."
);

// Log records in telemetry batches.
pub const RECORDS_RECEIVED: Family = family!(
    "records_received_total",
    Counter,
    ["route", "level"],
    "Log records received in batches, by route and level."
);
pub const RECORDS_FORWARDED: Family = family!(
    "records_forwarded_total",
    Counter,
    ["route", "level"],
    "Log records forwarded upstream, by route and level."
);
pub const RECORDS_DROPPED: Family = family!(
    "records_dropped_total",
    Counter,
    ["route", "level", "reason"],
    "Log records dropped, by route, level and reason (drop_rule, sample, rate, malformed, \
     brownout, shed)."
);
pub const RECORDS_REFUSED: Family = family!(
    "records_refused_total",
    Counter,
    ["route", "level", "reason"],
    "Log records of batches refused whole (503, retried by their senders) after they were \
     read, by route, level and shed reason (queue_full, queue_timeout, brownout). Not in \
     records_received_total."
);
pub const RECORD_BYTES_RECEIVED: Family = family!(
    "record_bytes_received_total",
    Counter,
    ["route", "level"],
    "Bytes of log records received (decoded), by route and level."
);
pub const RECORD_BYTES_FORWARDED: Family = family!(
    "record_bytes_forwarded_total",
    Counter,
    ["route", "level"],
    "Bytes of log records forwarded (decoded), by route and level."
);
pub const RECORD_BYTES_DROPPED: Family = family!(
    "record_bytes_dropped_total",
    Counter,
    ["route", "level", "reason"],
    "Bytes of log records dropped (decoded), by route, level and reason."
);
pub const RECORDS_MALFORMED: Family = family!(
    "records_malformed_total",
    Counter,
    ["route"],
    "Log records whose level could not be read; they were given the route's unknown level."
);
pub const BATCHES: Family = family!(
    "batches_total",
    Counter,
    ["route", "outcome"],
    "Telemetry batches by route and outcome (untouched, rewritten, all_dropped, \
     malformed_forwarded, malformed_rejected)."
);
pub const DECODED_BODIES: Family = family!(
    "decoded_bodies_total",
    Counter,
    ["route", "encoding"],
    "Compressed batches decoded, by route and encoding (gzip, zstd)."
);
pub const VERBOSITY_CLAMPED: Family = family!(
    "verbosity_clamped_total",
    Counter,
    ["route"],
    "Requested log levels lowered by a route's verbosity clamp."
);

// Critical-route protection.
pub const SHED: Family = family!(
    "shed_total",
    Counter,
    ["class", "reason"],
    "Requests refused with 503 to protect the upstream, by priority class and reason \
     (queue_full, queue_timeout, brownout; overload: the guard itself, see \
     overload_shed_total)."
);
pub const SALVAGED: Family = family!(
    "shed_salvaged_total",
    Counter,
    ["reason"],
    "Bulk telemetry batches the guard would have shed (reason: queue_full, queue_timeout, \
     brownout), forwarded instead cut down to their error and fatal records, at normal \
     priority."
);
pub const EVENT_LOOP_LAG: Family = family!(
    "worker_event_loop_lag_seconds",
    Gauge,
    ["worker"],
    "How late each worker's 10 ms timer fires (a spike decays by half per sample): the wait \
     every request on that worker has for its turn. Over --overload-max-lag, bulk is shed."
);
pub const BUFFERED_BYTES: Family = family!(
    "buffered_body_bytes",
    Gauge,
    [],
    "Bytes of telemetry batches held in memory to be judged and forwarded. Over \
     --overload-max-buffered, bulk is shed."
);
pub const RESIDENT_MEMORY: Family = family!(
    "resident_memory_bytes",
    Gauge,
    [],
    "The guard's resident memory, read every 250 ms. Over --overload-max-memory, bulk is shed."
);
pub const OVERLOAD_SHED: Family = family!(
    "overload_shed_total",
    Counter,
    ["pressure"],
    "Bulk requests shed right after their head because the guard itself was overloaded, by \
     the pressure over its threshold (event_loop_lag, buffered_bytes, memory)."
);
pub const UPSTREAM_EXCHANGES: Family = family!(
    "upstream_exchanges_total",
    Counter,
    ["class", "result"],
    "Upstream exchanges by priority class and result (ok, failed: a 5xx answer or a \
     refused, reset or timed-out exchange)."
);
pub const UPSTREAM_IN_FLIGHT: Family = family!(
    "upstream_in_flight",
    Gauge,
    ["class"],
    "Requests holding an upstream slot, by priority class."
);
pub const UPSTREAM_QUEUED: Family = family!(
    "upstream_queued",
    Gauge,
    ["class"],
    "Requests waiting for an upstream slot, by priority class."
);
pub const BROWNOUT_LEVEL: Family = family!(
    "brownout_level",
    Gauge,
    [],
    "Brownout level: 0 off, 1 drop_verbose, 2 sample_info, 3 sample_warn, 4 shed_bulk."
);
pub const BROWNOUT_TRANSITIONS: Family = family!(
    "brownout_transitions_total",
    Counter,
    ["direction"],
    "Brownout level changes, by direction (raise, relax)."
);
pub const UPSTREAM_P90: Family = family!(
    "upstream_p90_seconds",
    Gauge,
    ["class"],
    "p90 upstream latency over the last controller interval, by priority class."
);
pub const UPSTREAM_BASELINE: Family = family!(
    "upstream_baseline_seconds",
    Gauge,
    ["class"],
    "The brownout controller's learned p90 latency baseline, by priority class."
);
pub const UPSTREAM_CONCURRENCY_LIMIT: Family = family!(
    "upstream_concurrency_limit",
    Gauge,
    ["class"],
    "Upstream requests of a class (normal, bulk) allowed in flight at once: the adaptive \
     limit, or the configured maximum with protect.adaptive off."
);
pub const UPSTREAM_MIN_RTT: Family = family!(
    "upstream_min_rtt_seconds",
    Gauge,
    ["class"],
    "The adaptive limiter's no-load upstream latency (median at min_limit in flight, or the \
     lowest window median seen since), by class (normal, bulk)."
);
pub const BULK_YIELDING: Family = family!(
    "bulk_yielding_to_critical",
    Gauge,
    [],
    "1 while bulk requests wait for in-flight critical ones before being sent (adaptive \
     concurrency sees the upstream queueing, and protect.adaptive.bulk_yields_to_critical is \
     on), else 0."
);
pub const UPSTREAM_FAILURE_RATIO: Family = family!(
    "upstream_failure_ratio",
    Gauge,
    ["class"],
    "Share of upstream exchanges that failed (5xx, refused, reset, timeout) over the \
     last controller interval, by priority class."
);
pub const SURGE_ACTIVE: Family = family!(
    "surge_active",
    Gauge,
    ["route", "level"],
    "1 while a route's level is in a verbosity surge, by route and level."
);
pub const SURGE_RATIO: Family = family!(
    "surge_ratio",
    Gauge,
    ["route", "level", "unit"],
    "Short-term rate over the learned baseline, by route, level and unit (records, \
     bytes); 0 while the baseline warms up."
);
pub const SURGES: Family = family!(
    "surges_total",
    Counter,
    ["route", "level"],
    "Verbosity surges detected, by route and level."
);

// Shadow routes: what enforce mode would have done.
pub const SHADOW_REJECTIONS: Family = family!(
    "shadow_rejections_total",
    Counter,
    ["route", "reason"],
    "Requests a shadow route forwarded that enforce mode would have answered itself, \
     by route and reason (the reasons of rejections_total, plus shed_slot_busy)."
);
pub const SHADOW_RECORDS_DROPPED: Family = family!(
    "shadow_records_dropped_total",
    Counter,
    ["route", "level", "reason"],
    "Log records a shadow route forwarded that enforce mode would have dropped, by \
     route, level and reason."
);
pub const SHADOW_RECORD_BYTES_DROPPED: Family = family!(
    "shadow_record_bytes_dropped_total",
    Counter,
    ["route", "level", "reason"],
    "Bytes (decoded) of the log records a shadow route forwarded that enforce mode \
     would have dropped, by route, level and reason."
);
pub const SHADOW_BATCHES: Family = family!(
    "shadow_batches_total",
    Counter,
    ["route", "outcome"],
    "Batches a shadow route forwarded as received that enforce mode would have \
     changed, by route and outcome (rewritten, all_dropped, malformed_rejected)."
);
pub const SHADOW_VERBOSITY_CLAMPED: Family = family!(
    "shadow_verbosity_clamped_total",
    Counter,
    ["route"],
    "Requested log levels a shadow route's verbosity clamp would have lowered."
);

// serve --record.
pub const RECORDED: Family = family!(
    "recorded_requests_total",
    Counter,
    ["outcome"],
    "Requests sampled by serve --record, by outcome: written, queue_full (the writer \
     fell behind; dropped), file_full (--record-max-bytes reached; dropped), \
     write_error (the file cannot be written; dropped)."
);
pub const RECORD_FILE_BYTES: Family = family!(
    "record_file_bytes",
    Gauge,
    [],
    "Bytes serve --record has written to its file."
);

// Fleet-wide budgets (serve --fleet-redis).
pub const FLEET_MODE: Family = family!(
    "fleet_mode",
    Gauge,
    ["route", "mode"],
    "1 for the mode a route's fleet budgets run in (fleet: leased from Redis; local: this \
     guard's share alone), 0 for the other."
);
pub const FLEET_REDIS_CALLS: Family = family!(
    "fleet_redis_calls_total",
    Counter,
    ["result"],
    "Redis script calls by result (ok, error, timeout, noscript)."
);
pub const FLEET_REDIS_DURATION: Family = family!(
    "fleet_redis_call_duration_seconds",
    Histogram,
    [],
    "Time of each round trip to Redis (a batch of script calls), answered or timed out."
);
pub const FLEET_LEASE_TOKENS: Family = family!(
    "fleet_lease_tokens_total",
    Counter,
    ["route", "budget", "event"],
    "Lease tokens (requests or bytes) by event: granted by Redis, or expired unused and \
     handed back."
);
pub const FLEET_TRANSITIONS: Family = family!(
    "fleet_transitions_total",
    Counter,
    ["to"],
    "Switches between fleet mode and the local fallback, by the mode switched to."
);
pub const FLEET_GUARDS: Family = family!(
    "fleet_guards",
    Gauge,
    [],
    "Live guards in the fleet as last counted from Redis heartbeats (0 before the first count)."
);

/// Every family, in the order of the reference.
pub const FAMILIES: &[Family] = &[
    REQUESTS,
    REQUEST_BYTES,
    FORWARDED_BYTES,
    REJECTIONS,
    UPSTREAM_ERRORS,
    UPSTREAM_DURATION,
    TRACKED_KEYS,
    UNTRACKED_KEYS,
    IN_FLIGHT,
    CONNECTIONS_OPEN,
    CONNECTIONS,
    CONNECTION_ERRORS,
    CONNECTIONS_CLOSED,
    POLICY_INFO,
    POLICY_LOADED,
    POLICY_RELOADS,
    POLICY_LAST_RELOAD_OK,
    ROUTE_MODE,
    RECORDS_RECEIVED,
    RECORDS_FORWARDED,
    RECORDS_DROPPED,
    RECORDS_REFUSED,
    RECORD_BYTES_RECEIVED,
    RECORD_BYTES_FORWARDED,
    RECORD_BYTES_DROPPED,
    RECORDS_MALFORMED,
    BATCHES,
    DECODED_BODIES,
    VERBOSITY_CLAMPED,
    SHED,
    SALVAGED,
    EVENT_LOOP_LAG,
    BUFFERED_BYTES,
    RESIDENT_MEMORY,
    OVERLOAD_SHED,
    UPSTREAM_EXCHANGES,
    UPSTREAM_IN_FLIGHT,
    UPSTREAM_QUEUED,
    BROWNOUT_LEVEL,
    BROWNOUT_TRANSITIONS,
    UPSTREAM_P90,
    UPSTREAM_BASELINE,
    UPSTREAM_FAILURE_RATIO,
    UPSTREAM_CONCURRENCY_LIMIT,
    UPSTREAM_MIN_RTT,
    BULK_YIELDING,
    SURGE_ACTIVE,
    SURGE_RATIO,
    SURGES,
    SHADOW_REJECTIONS,
    SHADOW_RECORDS_DROPPED,
    SHADOW_RECORD_BYTES_DROPPED,
    SHADOW_BATCHES,
    SHADOW_VERBOSITY_CLAMPED,
    RECORDED,
    RECORD_FILE_BYTES,
    FLEET_MODE,
    FLEET_REDIS_CALLS,
    FLEET_REDIS_DURATION,
    FLEET_LEASE_TOKENS,
    FLEET_TRANSITIONS,
    FLEET_GUARDS,
];
