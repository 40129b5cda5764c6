//! Every metric family the guard exports, created on a registry the caller owns.
//!
//! Labels come only from bounded sets: route names from the policy, and the `as_str()` of enums
//! (outcome, reason, budget, kind). Client keys and raw paths are never labels. Per-route series
//! that the request path touches are resolved once per policy into [`RouteMetrics`], so
//! recording a request is a few atomic adds, with no label lookup.

use std::sync::{Arc, OnceLock};

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use std::marker::PhantomData;

use crate::budget::BudgetKind;
use crate::codec::Encoding;
use crate::decide::{BatchOutcome, Reason, UpstreamFailure};
use crate::policy::{Mode, Route};
use crate::protect::{self, Priority, ShedReason, adaptive};
use crate::records::Level;
use crate::records::filter::{DropReason, LevelTally, Tally};

mod families;
use families as f;
pub use families::{FAMILIES, Family, Kind};

/// Upper bounds of the upstream latency histogram, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub requests: IntCounterVec,
    pub request_bytes: IntCounterVec,
    pub forwarded_bytes: IntCounterVec,
    pub rejections: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub tracked_keys: IntGaugeVec,
    pub untracked_keys: IntCounterVec,
    pub in_flight: IntGauge,
    pub connections_open: IntGauge,
    pub connections: IntCounter,
    pub connection_errors: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub policy_info: IntGaugeVec,
    pub policy_loaded: Gauge,
    /// Reload attempts by result; see [`ReloadResult`].
    pub policy_reloads: IntCounterVec,
    /// 1 when the last reload attempt left the file's policy active, 0 while the file is broken.
    pub policy_last_reload_ok: IntGauge,
    pub records_received: IntCounterVec,
    pub records_forwarded: IntCounterVec,
    pub records_dropped: IntCounterVec,
    pub records_refused: IntCounterVec,
    pub record_bytes_received: IntCounterVec,
    pub record_bytes_forwarded: IntCounterVec,
    pub record_bytes_dropped: IntCounterVec,
    pub records_malformed: IntCounterVec,
    pub batches: IntCounterVec,
    pub decoded_bodies: IntCounterVec,
    pub verbosity_clamped: IntCounterVec,
    pub protect: ProtectMetrics,
    pub fleet: FleetMetrics,
    pub shadow: ShadowFamilies,
    /// Each route's mode (value 1), for dashboards to tell shadow routes apart.
    pub route_mode: IntGaugeVec,
    /// `serve --record` captures by outcome.
    pub recorded: IntCounterVec,
    pub record_file_bytes: IntGauge,
}

/// What shadow routes would have done in enforce mode. Separate families, not a `mode` label on
/// the enforce ones: `rejections_total` and `records_dropped_total` keep meaning what the guard
/// did, so no alert or dashboard fires on a decision that was only counted. Each mirrors the
/// labels of its enforce family, so comparing is renaming the metric.
pub struct ShadowFamilies {
    pub rejections: IntCounterVec,
    pub records_dropped: IntCounterVec,
    pub record_bytes_dropped: IntCounterVec,
    pub batches: IntCounterVec,
    pub verbosity_clamped: IntCounterVec,
}

/// Critical-route protection: upstream slots per class, the brownout controller, surges.
pub struct ProtectMetrics {
    pub exchanges: IntCounterVec,
    pub in_flight: IntGaugeVec,
    pub queued: IntGaugeVec,
    pub shed: IntCounterVec,
    /// `shed` by class and reason, resolved up front (every series exists from the start).
    pub shed_series: [[IntCounter; ShedReason::COUNT]; Priority::COUNT],
    /// `shed_salvaged_total` by reason.
    pub salvaged: [IntCounter; ShedReason::COUNT],
    pub event_loop_lag: GaugeVec,
    pub buffered_bytes: IntGauge,
    pub resident_memory: IntGauge,
    /// `overload_shed_total` by pressure.
    pub overload_shed: [IntCounter; crate::protect::overload::Pressure::COUNT],
    pub brownout_level: IntGauge,
    pub brownout_transitions: IntCounterVec,
    pub upstream_p90: GaugeVec,
    pub upstream_baseline: GaugeVec,
    pub concurrency_limit: IntGaugeVec,
    pub min_rtt: GaugeVec,
    pub bulk_yielding: IntGauge,
    pub upstream_failure_ratio: GaugeVec,
    pub surge_active: IntGaugeVec,
    pub surge_ratio: GaugeVec,
    pub surges: IntCounterVec,
}

/// Creates families from their [`Family`] entries on one registry.
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn add<T: Collector + Clone + 'static>(&self, c: T) -> Result<T, prometheus::Error> {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn opts(f: &Family, kind: Kind) -> Opts {
        debug_assert_eq!(f.kind, kind, "{} is a {}", f.name, f.kind.as_str());
        Opts::new(f.name, f.help)
    }

    fn counters(&self, f: &Family) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Self::opts(f, Kind::Counter), f.labels)?)
    }

    fn counter(&self, f: &Family) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::with_opts(Self::opts(f, Kind::Counter))?)
    }

    fn gauges(&self, f: &Family) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(Self::opts(f, Kind::Gauge), f.labels)?)
    }

    fn gauge(&self, f: &Family) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::with_opts(Self::opts(f, Kind::Gauge))?)
    }

    fn float_gauges(&self, f: &Family) -> Result<GaugeVec, prometheus::Error> {
        self.add(GaugeVec::new(Self::opts(f, Kind::Gauge), f.labels)?)
    }

    fn float_gauge(&self, f: &Family) -> Result<Gauge, prometheus::Error> {
        self.add(Gauge::with_opts(Self::opts(f, Kind::Gauge))?)
    }

    fn histograms(&self, f: &Family, buckets: &[f64]) -> Result<HistogramVec, prometheus::Error> {
        debug_assert_eq!(f.kind, Kind::Histogram, "{} is a histogram", f.name);
        let opts = HistogramOpts::new(f.name, f.help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, f.labels)?)
    }
}

/// Fleet-wide budgets: the link to Redis and the leases.
pub struct FleetMetrics {
    pub mode: IntGaugeVec,
    pub redis_calls: IntCounterVec,
    pub redis_duration: Histogram,
    pub lease_tokens: IntCounterVec,
    pub transitions: IntCounterVec,
    pub guards: IntGauge,
}

/// Upper bounds of the Redis round-trip histogram, in seconds; the call times out at 50 ms.
const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

impl FleetMetrics {
    fn register(r: &Registrar) -> Result<FleetMetrics, prometheus::Error> {
        let redis_duration = r.histograms(&f::FLEET_REDIS_DURATION, REDIS_BUCKETS)?;
        Ok(FleetMetrics {
            mode: r.gauges(&f::FLEET_MODE)?,
            redis_calls: r.counters(&f::FLEET_REDIS_CALLS)?,
            redis_duration: redis_duration.with_label_values(&[] as &[&str]),
            lease_tokens: r.counters(&f::FLEET_LEASE_TOKENS)?,
            transitions: r.counters(&f::FLEET_TRANSITIONS)?,
            guards: r.gauge(&f::FLEET_GUARDS)?,
        })
    }

    /// Shows `route`'s fleet budgets in `fleet` mode (true) or `local`.
    pub fn set_mode(&self, route: &str, fleet: bool) {
        self.mode
            .with_label_values(&[route, "fleet"])
            .set(i64::from(fleet));
        self.mode
            .with_label_values(&[route, "local"])
            .set(i64::from(!fleet));
    }
}

impl ProtectMetrics {
    /// The series [`Protection`](protect::Protection) keeps current, resolved per class.
    pub fn gauges(&self) -> protect::Gauges {
        let class =
            |family: &IntGaugeVec| Priority::ALL.map(|p| family.with_label_values(&[p.as_str()]));
        let float =
            |family: &GaugeVec| Priority::ALL.map(|p| family.with_label_values(&[p.as_str()]));
        protect::Gauges {
            in_flight: class(&self.in_flight),
            queued: class(&self.queued),
            level: self.brownout_level.clone(),
            raised: self.brownout_transitions.with_label_values(&["raise"]),
            relaxed: self.brownout_transitions.with_label_values(&["relax"]),
            exchanges: Priority::ALL.map(|p| {
                ["ok", "failed"].map(|r| self.exchanges.with_label_values(&[p.as_str(), r]))
            }),
            p90: float(&self.upstream_p90),
            baseline: float(&self.upstream_baseline),
            failures: float(&self.upstream_failure_ratio),
            concurrency_limit: adaptive::CLASSES
                .map(|p| self.concurrency_limit.with_label_values(&[p.as_str()])),
            min_rtt: adaptive::CLASSES.map(|p| self.min_rtt.with_label_values(&[p.as_str()])),
            bulk_yielding: self.bulk_yielding.clone(),
        }
    }

    fn register(r: &Registrar<'_>) -> Result<ProtectMetrics, prometheus::Error> {
        let shed = r.counters(&f::SHED)?;
        Ok(ProtectMetrics {
            shed_series: Priority::ALL.map(|class| {
                ShedReason::ALL
                    .map(|reason| shed.with_label_values(&[class.as_str(), reason.as_str()]))
            }),
            shed,
            salvaged: {
                let salvaged = r.counters(&f::SALVAGED)?;
                ShedReason::ALL.map(|reason| salvaged.with_label_values(&[reason.as_str()]))
            },
            event_loop_lag: r.float_gauges(&f::EVENT_LOOP_LAG)?,
            buffered_bytes: r.gauge(&f::BUFFERED_BYTES)?,
            resident_memory: r.gauge(&f::RESIDENT_MEMORY)?,
            overload_shed: {
                let shed = r.counters(&f::OVERLOAD_SHED)?;
                crate::protect::overload::Pressure::ALL
                    .map(|p| shed.with_label_values(&[p.as_str()]))
            },
            exchanges: r.counters(&f::UPSTREAM_EXCHANGES)?,
            in_flight: r.gauges(&f::UPSTREAM_IN_FLIGHT)?,
            queued: r.gauges(&f::UPSTREAM_QUEUED)?,
            brownout_level: r.gauge(&f::BROWNOUT_LEVEL)?,
            brownout_transitions: r.counters(&f::BROWNOUT_TRANSITIONS)?,
            upstream_p90: r.float_gauges(&f::UPSTREAM_P90)?,
            upstream_baseline: r.float_gauges(&f::UPSTREAM_BASELINE)?,
            concurrency_limit: r.gauges(&f::UPSTREAM_CONCURRENCY_LIMIT)?,
            min_rtt: r.float_gauges(&f::UPSTREAM_MIN_RTT)?,
            bulk_yielding: r.gauge(&f::BULK_YIELDING)?,
            upstream_failure_ratio: r.float_gauges(&f::UPSTREAM_FAILURE_RATIO)?,
            surge_active: r.gauges(&f::SURGE_ACTIVE)?,
            surge_ratio: r.float_gauges(&f::SURGE_RATIO)?,
            surges: r.counters(&f::SURGES)?,
        })
    }
}

impl Metrics {
    /// Creates every family of [`FAMILIES`] on `registry`.
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let r = Registrar(registry);
        Ok(Metrics {
            requests: r.counters(&f::REQUESTS)?,
            request_bytes: r.counters(&f::REQUEST_BYTES)?,
            forwarded_bytes: r.counters(&f::FORWARDED_BYTES)?,
            rejections: r.counters(&f::REJECTIONS)?,
            upstream_errors: r.counters(&f::UPSTREAM_ERRORS)?,
            upstream_duration: r.histograms(&f::UPSTREAM_DURATION, LATENCY_BUCKETS)?,
            tracked_keys: r.gauges(&f::TRACKED_KEYS)?,
            untracked_keys: r.counters(&f::UNTRACKED_KEYS)?,
            in_flight: r.gauge(&f::IN_FLIGHT)?,
            connections_open: r.gauge(&f::CONNECTIONS_OPEN)?,
            connections: r.counter(&f::CONNECTIONS)?,
            connection_errors: r.counters(&f::CONNECTION_ERRORS)?,
            connections_closed: r.counters(&f::CONNECTIONS_CLOSED)?,
            policy_info: r.gauges(&f::POLICY_INFO)?,
            policy_loaded: r.float_gauge(&f::POLICY_LOADED)?,
            policy_reloads: {
                let family = r.counters(&f::POLICY_RELOADS)?;
                // Every series exists from the start, so a rate() or an alert sees the first one.
                for result in ReloadResult::ALL {
                    family.with_label_values(&[result.as_str()]);
                }
                family
            },
            policy_last_reload_ok: {
                let gauge = r.gauge(&f::POLICY_LAST_RELOAD_OK)?;
                gauge.set(1);
                gauge
            },
            route_mode: r.gauges(&f::ROUTE_MODE)?,
            records_received: r.counters(&f::RECORDS_RECEIVED)?,
            records_forwarded: r.counters(&f::RECORDS_FORWARDED)?,
            records_dropped: r.counters(&f::RECORDS_DROPPED)?,
            records_refused: r.counters(&f::RECORDS_REFUSED)?,
            record_bytes_received: r.counters(&f::RECORD_BYTES_RECEIVED)?,
            record_bytes_forwarded: r.counters(&f::RECORD_BYTES_FORWARDED)?,
            record_bytes_dropped: r.counters(&f::RECORD_BYTES_DROPPED)?,
            records_malformed: r.counters(&f::RECORDS_MALFORMED)?,
            batches: r.counters(&f::BATCHES)?,
            decoded_bodies: r.counters(&f::DECODED_BODIES)?,
            verbosity_clamped: r.counters(&f::VERBOSITY_CLAMPED)?,
            protect: ProtectMetrics::register(&r)?,
            fleet: FleetMetrics::register(&r)?,
            shadow: ShadowFamilies {
                rejections: r.counters(&f::SHADOW_REJECTIONS)?,
                records_dropped: r.counters(&f::SHADOW_RECORDS_DROPPED)?,
                record_bytes_dropped: r.counters(&f::SHADOW_RECORD_BYTES_DROPPED)?,
                batches: r.counters(&f::SHADOW_BATCHES)?,
                verbosity_clamped: r.counters(&f::SHADOW_VERBOSITY_CLAMPED)?,
            },
            recorded: r.counters(&f::RECORDED)?,
            record_file_bytes: r.gauge(&f::RECORD_FILE_BYTES)?,
        })
    }

    /// Counts one reload attempt.
    pub fn record_reload(&self, result: ReloadResult) {
        self.policy_reloads
            .with_label_values(&[result.as_str()])
            .inc();
        self.policy_last_reload_ok
            .set(i64::from(result != ReloadResult::Failure));
    }

    /// Resolves the per-route series the request path touches.
    pub fn route<C: governor::clock::Clock>(&self, r: &Route<C>) -> RouteMetrics {
        let route = r.name.as_str();
        if r.records.is_some() {
            // The surge detectors' series exist from the start, at 0.
            for level in Level::ALL {
                self.protect
                    .surge_active
                    .with_label_values(&[route, level.as_str()]);
                for unit in ["records", "bytes"] {
                    self.protect
                        .surge_ratio
                        .with_label_values(&[route, level.as_str(), unit]);
                }
            }
        }
        RouteMetrics {
            records: r.records.as_ref().map(|_| self.records(route)),
            clamped: r
                .clamp
                .as_ref()
                .map(|_| self.verbosity_clamped.with_label_values(&[route])),
            forwarded: self.requests.with_label_values(&[route, "forwarded"]),
            rejected: self.requests.with_label_values(&[route, "rejected"]),
            upstream_error: self.requests.with_label_values(&[route, "upstream_error"]),
            all_dropped: self.requests.with_label_values(&[route, "all_dropped"]),
            request_bytes: self.request_bytes.with_label_values(&[route]),
            forwarded_bytes: self.forwarded_bytes.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
            rejections: RouteSeries::new(&self.rejections, route),
            upstream_errors: RouteSeries::new(&self.upstream_errors, route),
            shadow: (r.mode == Mode::Shadow).then(|| Arc::new(self.shadow_route(r))),
        }
    }

    fn shadow_route<C: governor::clock::Clock>(&self, r: &Route<C>) -> ShadowMetrics {
        let route = r.name.as_str();
        let f = &self.shadow;
        ShadowMetrics {
            rejections: RouteSeries::new(&f.rejections, route),
            records: r.records.as_ref().map(|_| ShadowRecords {
                dropped: Drops::new(&f.records_dropped, &f.record_bytes_dropped, route),
                batches: [
                    BatchOutcome::Rewritten,
                    BatchOutcome::AllDropped,
                    BatchOutcome::MalformedRejected,
                ]
                .map(|o| f.batches.with_label_values(&[route, o.as_str()])),
            }),
            clamped: r
                .clamp
                .as_ref()
                .map(|_| f.verbosity_clamped.with_label_values(&[route])),
        }
    }

    fn records(&self, route: &str) -> RecordsMetrics {
        let per_level = |family: &IntCounterVec| {
            Level::ALL.map(|l| family.with_label_values(&[route, l.as_str()]))
        };
        RecordsMetrics {
            received: per_level(&self.records_received),
            forwarded: per_level(&self.records_forwarded),
            dropped: Drops::new(&self.records_dropped, &self.record_bytes_dropped, route),
            refused: Level::ALL.map(|l| {
                ShedReason::ALL.map(|r| {
                    self.records_refused
                        .with_label_values(&[route, l.as_str(), r.as_str()])
                })
            }),
            bytes_received: per_level(&self.record_bytes_received),
            bytes_forwarded: per_level(&self.record_bytes_forwarded),
            malformed: self.records_malformed.with_label_values(&[route]),
            untracked: self.untracked_keys.with_label_values(&[route, "level"]),
            batches: BatchOutcome::ALL
                .map(|o| self.batches.with_label_values(&[route, o.as_str()])),
            decoded: [Encoding::Gzip, Encoding::Zstd]
                .map(|e| self.decoded_bodies.with_label_values(&[route, e.as_str()])),
        }
    }

    pub fn record_untracked(&self, route: &str, budget: BudgetKind) {
        self.untracked_keys
            .with_label_values(&[route, budget.as_str()])
            .inc();
    }
}

/// A route's hot-path series, resolved once per policy.
pub struct RouteMetrics {
    pub forwarded: IntCounter,
    pub rejected: IntCounter,
    pub upstream_error: IntCounter,
    /// Batches whose every record was dropped: answered by the guard, upstream not called.
    pub all_dropped: IntCounter,
    pub request_bytes: IntCounter,
    pub forwarded_bytes: IntCounter,
    pub upstream_duration: Histogram,
    /// `rejections_total` by reason.
    pub rejections: RouteSeries<Reason>,
    /// `upstream_errors_total` by kind.
    pub upstream_errors: RouteSeries<UpstreamFailure>,
    /// Present on routes with `records`.
    pub records: Option<RecordsMetrics>,
    /// Present on routes with a `verbosity_clamp`.
    pub clamped: Option<IntCounter>,
    /// Present on shadow routes.
    pub shadow: Option<Arc<ShadowMetrics>>,
}

/// A label from a bounded set whose members index an array: the `reason` or `kind` of a
/// route's family.
pub trait Label: Copy {
    const COUNT: usize;
    fn index(self) -> usize;
    fn as_str(self) -> &'static str;
}

impl Label for Reason {
    const COUNT: usize = Reason::COUNT;
    fn index(self) -> usize {
        Reason::index(self)
    }
    fn as_str(self) -> &'static str {
        Reason::as_str(self)
    }
}

impl Label for UpstreamFailure {
    const COUNT: usize = UpstreamFailure::COUNT;
    fn index(self) -> usize {
        UpstreamFailure::index(self)
    }
    fn as_str(self) -> &'static str {
        UpstreamFailure::as_str(self)
    }
}

/// One route's series of a `{route, label}` family, each resolved the first time it is
/// counted. After that, counting hashes nothing and takes none of the family's locks (a 429
/// flood is exactly when this path is hot); a label never counted has no series, as with
/// `with_label_values` on demand.
pub struct RouteSeries<L> {
    family: IntCounterVec,
    route: String,
    series: Box<[OnceLock<IntCounter>]>,
    label: PhantomData<L>,
}

impl<L: Label> RouteSeries<L> {
    fn new(family: &IntCounterVec, route: &str) -> Self {
        RouteSeries {
            family: family.clone(),
            route: route.to_owned(),
            series: (0..L::COUNT).map(|_| OnceLock::new()).collect(),
            label: PhantomData,
        }
    }

    pub fn inc(&self, label: L) {
        let by_label = || {
            self.family
                .with_label_values(&[self.route.as_str(), label.as_str()])
        };
        match self.series.get(label.index()) {
            Some(slot) => slot.get_or_init(by_label).inc(),
            // Unreachable: `series` has a slot per label.
            None => by_label().inc(),
        }
    }
}

/// A shadow route's series: what enforce mode would have done.
pub struct ShadowMetrics {
    /// Resolved per reason when one is counted: only on requests that enforce mode would have
    /// refused.
    rejections: RouteSeries<Reason>,
    /// Present on routes with `records`.
    pub records: Option<ShadowRecords>,
    /// Present on routes with a `verbosity_clamp`.
    pub clamped: Option<IntCounter>,
}

pub struct ShadowRecords {
    dropped: Drops,
    /// rewritten, all_dropped, malformed_rejected.
    batches: [IntCounter; 3],
}

impl ShadowMetrics {
    /// Counts a request enforce mode would have answered with `reason`.
    pub fn reject(&self, reason: Reason) {
        self.rejections.inc(reason);
    }
}

impl ShadowRecords {
    /// Counts the records (and their bytes) enforce mode would have dropped from a batch.
    pub fn record(&self, tally: &Tally) {
        for level in Level::ALL {
            self.dropped.count(level, tally.level(level));
        }
    }

    /// Counts a batch enforce mode would have changed; `Untouched` and `MalformedForwarded`
    /// are what happened anyway and are not counted here.
    pub fn batch(&self, outcome: BatchOutcome) {
        match outcome {
            BatchOutcome::Rewritten => self.batches[0].inc(),
            BatchOutcome::AllDropped => self.batches[1].inc(),
            BatchOutcome::MalformedRejected => self.batches[2].inc(),
            BatchOutcome::Untouched | BatchOutcome::MalformedForwarded => {}
        }
    }
}

/// How a policy reload attempt ended; the names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Unchanged,
    Failure,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Success,
        ReloadResult::Unchanged,
        ReloadResult::Failure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Failure => "failure",
        }
    }
}

/// Dropped records and their bytes, by level and drop reason (a records route's, or what a
/// shadow route's enforce mode would have dropped).
#[derive(Clone)]
struct Drops {
    records: [[IntCounter; DropReason::COUNT]; Level::COUNT],
    bytes: [[IntCounter; DropReason::COUNT]; Level::COUNT],
}

impl Drops {
    fn new(records: &IntCounterVec, bytes: &IntCounterVec, route: &str) -> Drops {
        let per_reason = |family: &IntCounterVec| {
            Level::ALL.map(|l| {
                DropReason::ALL.map(|d| family.with_label_values(&[route, l.as_str(), d.as_str()]))
            })
        };
        Drops {
            records: per_reason(records),
            bytes: per_reason(bytes),
        }
    }

    fn count(&self, level: Level, t: &LevelTally) {
        let i = level.index();
        for (j, reason) in DropReason::ALL.into_iter().enumerate() {
            let n = t.dropped_by(reason);
            if n > 0 {
                self.records[i][j].inc_by(n);
                self.bytes[i][j].inc_by(t.dropped_bytes_by(reason));
            }
        }
    }
}

/// A records route's series, indexed by level, reason, outcome.
#[derive(Clone)]
pub struct RecordsMetrics {
    pub received: [IntCounter; Level::COUNT],
    pub forwarded: [IntCounter; Level::COUNT],
    dropped: Drops,
    /// By level, then [`ShedReason`].
    refused: [[IntCounter; ShedReason::COUNT]; Level::COUNT],
    pub bytes_received: [IntCounter; Level::COUNT],
    pub bytes_forwarded: [IntCounter; Level::COUNT],
    pub malformed: IntCounter,
    /// Batches whose client key could not be tracked by a per-client level budget.
    pub untracked: IntCounter,
    pub batches: [IntCounter; 5],
    /// gzip, zstd.
    pub decoded: [IntCounter; 2],
}

impl RecordsMetrics {
    /// Counts a batch a shadow route forwarded as received: every record it holds went
    /// upstream, whatever the rules decided (that goes to [`ShadowRecords::record`]).
    pub fn record_forwarded_whole(&self, tally: &Tally) {
        self.count(tally, true);
    }

    /// Counts a batch the rules were carried out on.
    pub fn record(&self, tally: &Tally) {
        self.count(tally, false);
    }

    /// Counts the records of a batch refused whole after it was read.
    pub fn refused(&self, tally: &Tally, reason: ShedReason) {
        for level in Level::ALL {
            let n = tally.level(level).received;
            if n > 0 {
                self.refused[level.index()][reason.index()].inc_by(n);
            }
        }
    }

    fn count(&self, tally: &Tally, whole: bool) {
        for level in Level::ALL {
            let (t, i) = (tally.level(level), level.index());
            if t.received == 0 {
                continue;
            }
            self.received[i].inc_by(t.received);
            self.bytes_received[i].inc_by(t.received_bytes);
            if whole {
                self.forwarded[i].inc_by(t.received);
                self.bytes_forwarded[i].inc_by(t.received_bytes);
            } else {
                self.forwarded[i].inc_by(t.forwarded);
                self.bytes_forwarded[i].inc_by(t.forwarded_bytes);
                self.dropped.count(level, t);
            }
        }
        if tally.untracked {
            self.untracked.inc();
        }
        let malformed = tally.malformed();
        if malformed > 0 {
            self.malformed.inc_by(malformed);
        }
    }

    pub fn batch(&self, outcome: BatchOutcome) {
        self.batches[outcome.index()].inc();
    }

    pub fn decoded(&self, encoding: Encoding) {
        match encoding {
            Encoding::Gzip => self.decoded[0].inc(),
            Encoding::Zstd => self.decoded[1].inc(),
            Encoding::Identity => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_in_the_table_is_registered_once() {
        let registry = Registry::new();
        Metrics::register(&registry).unwrap();
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len(), "a family is listed twice");
        for f in FAMILIES {
            // A second family of the same name is refused: the first is registered.
            let again = IntGauge::new(f.name, "probe").unwrap();
            assert!(registry.register(Box::new(again)).is_err(), "{}", f.name);
        }
    }
}
