//! Shadow mode: a route with `mode: shadow` makes every decision enforce mode makes, counts
//! what enforce mode would have done, and forwards the request as received.
//!
//! Decisions are made in enforce mode's order and stop where enforce mode would have stopped:
//! after the first refusal nothing more is decided or charged, exactly as a refused request
//! spends no further budget. That is what makes a shadow route's counts equal those of the same
//! route in enforce mode on the same traffic, and so worth comparing before switching.
//!
//! Some answers do not depend on the mode and are given in shadow mode too:
//! - `invalid_path` and `bad_target` (400): the request cannot be routed, or forwarded safely;
//! - `body_timeout` (408) and `body_incomplete` (400): the client's body never fully arrived;
//! - on a route with `records`, `body_too_large` (413): the guard buffers these bodies to read
//!   them, and `max_body` is what bounds its memory;
//! - upstream failures (502, 504), which are not the guard's decisions.
//!
//! Everything else is only counted. The upstream learns what enforce mode would have done from
//! the `x-verbosity-guard-shadow` header, a structured-field dictionary (RFC 8941):
//! - `pass`: enforce mode would have forwarded the request as it is;
//! - `would-reject=client_bytes`: it would have refused it; the token is the reason label of
//!   `verbosity_guard_rejections_total` (`shed_brownout`, `malformed_batch`, ...), or
//!   `shed_slot_busy` (see below);
//! - `would-drop=12, would-keep=88`: it would have forwarded 88 of the batch's records (with
//!   `would-keep=0`, none: the guard would have answered itself);
//! - `would-clamp=1`, after either: a requested verbosity it would have lowered.
//!
//! A decision taken once the headers are on their way (a chunked body crossing `max_body` on a
//! route without records, or running out of a byte budget as it streams) is counted but cannot
//! be in the header.
//!
//! Upstream slots: a shadow request takes a free slot if there is one (it is real load on the
//! upstream) but never waits for one. When none is free it goes upstream without one and is
//! counted as `shed_slot_busy`: enforce mode would have queued it, and shed it only if its wait
//! ran out, so this count is an upper bound of enforce mode's `shed_queue_*`.

use std::fmt::Write as _;
use std::sync::Arc;

use governor::clock::Clock;
use http::{HeaderName, HeaderValue};

use crate::error::GuardError;
use crate::metrics::ShadowMetrics;
use crate::policy::Route;

pub static SHADOW: HeaderName = HeaderName::from_static("x-verbosity-guard-shadow");

/// The reason a shadow request is counted under when no upstream slot was free at once.
pub const SHED_SLOT_BUSY: &str = "shed_slot_busy";

/// A shadow request's record of what enforce mode would have done.
pub struct Shadow<'a> {
    metrics: &'a Arc<ShadowMetrics>,
    /// The reason enforce mode would have refused the request for; no decision is made after it.
    rejected: Option<&'static str>,
    /// Records of the batch enforce mode would have (kept, dropped), when it was read.
    batch: Option<(u64, u64)>,
    clamped: u32,
}

impl<'a> Shadow<'a> {
    pub fn new(metrics: &'a Arc<ShadowMetrics>) -> Self {
        Shadow {
            metrics,
            rejected: None,
            batch: None,
            clamped: 0,
        }
    }

    pub fn metrics(&self) -> &'a Arc<ShadowMetrics> {
        self.metrics
    }

    /// True until enforce mode would have refused the request: decisions go on until then.
    pub fn deciding(&self) -> bool {
        self.rejected.is_none()
    }

    /// Enforce mode would have refused the request for `reason` (a rejection metric label).
    /// Counted once; later refusals are not, as enforce mode would not have got to them.
    pub fn reject(&mut self, reason: &'static str) {
        if self.rejected.is_none() {
            self.metrics.reject(reason);
            self.rejected = Some(reason);
        }
    }

    /// The body found that enforce mode would have refused the request for `reason`, and
    /// counted it.
    pub fn refused_in_body(&mut self, reason: &'static str) {
        self.rejected.get_or_insert(reason);
    }

    /// Enforce mode would have kept `kept` of the batch's records and dropped `dropped`.
    pub fn batch(&mut self, kept: u64, dropped: u64) {
        self.batch = Some((kept, dropped));
    }

    /// Enforce mode would have lowered `n` requested verbosities.
    pub fn clamped(&mut self, n: u32) {
        if n > 0
            && let Some(c) = &self.metrics.clamped
        {
            c.inc_by(u64::from(n));
        }
        self.clamped = n;
    }

    /// The `x-verbosity-guard-shadow` value.
    pub fn header(&self) -> HeaderValue {
        let mut v = match (self.rejected, self.batch) {
            (Some(reason), _) => format!("would-reject={reason}"),
            (None, Some((kept, dropped))) if dropped > 0 => {
                format!("would-drop={dropped}, would-keep={kept}")
            }
            _ => String::new(),
        };
        if self.clamped > 0 {
            if !v.is_empty() {
                v.push_str(", ");
            }
            let _ = write!(v, "would-clamp={}", self.clamped);
        }
        if v.is_empty() {
            return HeaderValue::from_static("pass");
        }
        // Labels and numbers only: always a valid header value.
        HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static("pass"))
    }
}

/// What becomes of an error a phase returned. Enforce mode (`shadow` is `None`): it ends the
/// request. Shadow mode: a decision enforce mode would have carried out is noted and the
/// request goes on; an error that applies in every mode (see the module docs) still ends it.
pub fn overrule<C: Clock>(
    shadow: &mut Option<Shadow<'_>>,
    route: &Route<C>,
    err: GuardError,
) -> Result<(), GuardError> {
    match shadow {
        Some(s) if only_counted(&err, route) => {
            s.reject(err.label());
            Ok(())
        }
        _ => Err(err),
    }
}

/// True for the errors shadow mode counts instead of answering.
fn only_counted<C: Clock>(err: &GuardError, route: &Route<C>) -> bool {
    match err {
        GuardError::MissingClientKey
        | GuardError::OverBudget { .. }
        | GuardError::ExceedsBurst { .. }
        | GuardError::UnsupportedEncoding(_)
        | GuardError::DecodedTooLarge { .. }
        | GuardError::CorruptBody(_)
        | GuardError::MalformedBatch { .. }
        | GuardError::Shed { .. } => true,
        // A records route buffers its body: there, max_body bounds the guard's memory.
        GuardError::BodyTooLarge { .. } => route.records.is_none(),
        GuardError::InvalidPath(_)
        | GuardError::BodyTimeout(_)
        | GuardError::BodyIncomplete
        | GuardError::BadTarget
        | GuardError::UpstreamConnect(_)
        | GuardError::UpstreamReset(_)
        | GuardError::UpstreamTimeout(_)
        | GuardError::Internal(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn the_header_names_the_first_refusal_or_the_batch_counts() {
        let text = "version: 1\nmode: shadow\nroutes:\n  - name: default\n    match: { path_prefix: / }\n    verbosity_clamp: { header: x-log-level, max: info }\n";
        let policy = crate::policy::parse(text, "p.yaml").unwrap();
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let rm = metrics.route(&policy.routes()[0]);
        let m = rm
            .shadow
            .as_ref()
            .expect("a shadow route has shadow metrics");

        let s = Shadow::new(m);
        assert_eq!(s.header(), "pass");

        let mut s = Shadow::new(m);
        s.batch(88, 12);
        s.clamped(1);
        assert_eq!(s.header(), "would-drop=12, would-keep=88, would-clamp=1");

        let mut s = Shadow::new(m);
        s.reject("client_bytes");
        s.reject("route_bytes");
        assert!(!s.deciding());
        assert_eq!(s.header(), "would-reject=client_bytes");
        let count = |reason| {
            metrics
                .shadow
                .rejections
                .with_label_values(&["default", reason])
                .get()
        };
        assert_eq!((count("client_bytes"), count("route_bytes")), (1, 0));
    }
}
