//! Every metric family the guard exports, created on a registry the caller owns.
//!
//! Labels come only from bounded sets: route names from the policy, and the `as_str()` of enums
//! (outcome, reason, budget, kind). Client keys and raw paths are never labels. Per-route series
//! that the request path touches are resolved once per policy into [`RouteMetrics`], so
//! recording a request is a few atomic adds, with no label lookup.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::budget::BudgetKind;

/// Route label for requests refused before they could be routed (their path was invalid).
pub const UNROUTED: &str = "_invalid";

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
    pub policy_info: IntGaugeVec,
    pub policy_loaded: prometheus::Gauge,
}

fn name(s: &str) -> String {
    format!("verbosity_guard_{s}")
}

impl Metrics {
    pub fn register(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            r: &Registry,
            c: T,
        ) -> Result<T, prometheus::Error> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let counter = |n: &str, help: &str, labels: &[&str]| {
            reg(
                registry,
                IntCounterVec::new(Opts::new(name(n), help), labels)?,
            )
        };
        Ok(Metrics {
            requests: counter(
                "requests_total",
                "Requests by route and outcome (forwarded, rejected, upstream_error).",
                &["route", "outcome"],
            )?,
            request_bytes: counter(
                "request_body_bytes_total",
                "Request body bytes received from clients.",
                &["route"],
            )?,
            forwarded_bytes: counter(
                "forwarded_body_bytes_total",
                "Request body bytes sent to the upstream.",
                &["route"],
            )?,
            rejections: counter(
                "rejections_total",
                "Requests the guard answered itself, by route and reason.",
                &["route", "reason"],
            )?,
            upstream_errors: counter(
                "upstream_errors_total",
                "Failed upstream exchanges by route and kind (connect, timeout, reset).",
                &["route", "kind"],
            )?,
            upstream_duration: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("upstream_duration_seconds"),
                        "Time from sending a request upstream to its response headers.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route"],
                )?,
            )?,
            tracked_keys: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        name("tracked_keys"),
                        "Client keys held by each client budget.",
                    ),
                    &["route", "budget"],
                )?,
            )?,
            untracked_keys: counter(
                "untracked_key_requests_total",
                "Requests whose client key could not be tracked because the key cap was reached; \
                 only route-wide budgets applied.",
                &["route", "budget"],
            )?,
            in_flight: reg(
                registry,
                IntGauge::new(name("in_flight_requests"), "Requests being handled now.")?,
            )?,
            connections_open: reg(
                registry,
                IntGauge::new(name("connections_open"), "Client connections open now.")?,
            )?,
            connections: reg(
                registry,
                IntCounter::new(name("connections_total"), "Client connections accepted.")?,
            )?,
            connection_errors: counter(
                "connection_errors_total",
                "Client connections ended by an error, by kind (header_timeout, header_too_large, \
                 malformed, incomplete, io).",
                &["kind"],
            )?,
            policy_info: reg(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        name("policy_info"),
                        "The active policy (value is always 1).",
                    ),
                    &["version_hash", "source"],
                )?,
            )?,
            policy_loaded: reg(
                registry,
                prometheus::Gauge::new(
                    name("policy_loaded_timestamp_seconds"),
                    "Unix time the active policy was loaded.",
                )?,
            )?,
        })
    }

    /// Resolves the per-route series the request path touches.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            forwarded: self.requests.with_label_values(&[route, "forwarded"]),
            rejected: self.requests.with_label_values(&[route, "rejected"]),
            upstream_error: self.requests.with_label_values(&[route, "upstream_error"]),
            request_bytes: self.request_bytes.with_label_values(&[route]),
            forwarded_bytes: self.forwarded_bytes.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
        }
    }

    pub fn record_untracked(&self, route: &str, budget: BudgetKind) {
        self.untracked_keys
            .with_label_values(&[route, budget.as_str()])
            .inc();
    }
}

/// A route's hot-path series, resolved once per policy.
#[derive(Clone)]
pub struct RouteMetrics {
    pub forwarded: IntCounter,
    pub rejected: IntCounter,
    pub upstream_error: IntCounter,
    pub request_bytes: IntCounter,
    pub forwarded_bytes: IntCounter,
    pub upstream_duration: Histogram,
}
