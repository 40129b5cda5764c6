//! Enforce and shadow mode: how a route's verdicts are carried out, decided here and nowhere
//! else.
//!
//! Every phase of the request (see `guard`) and every frame of its body returns its verdict;
//! a [`Judge`] (for the request's phases) or a [`BodyJudge`] (for its body) decides what becomes
//! of a refusal. Enforce mode (`mode: enforce`, the default) answers it. Shadow mode
//! (`mode: shadow`) counts what enforce mode would have done, and forwards the request as
//! received.
//!
//! Decisions are made in enforce mode's order and stop where enforce mode would have stopped:
//! after the first refusal nothing more is decided or charged, exactly as a refused request
//! spends no further budget. That is what makes a shadow route's counts equal those of the same
//! route in enforce mode on the same traffic, and so worth comparing before switching.
//!
//! Some answers do not depend on the mode and are given in shadow mode too
//! ([`Reason::binds_in_shadow`]):
//! - `invalid_path` and `bad_target` (400): the request cannot be routed, or forwarded safely;
//! - `unsupported_transfer_coding` (501), `bad_host` and `ambiguous_client_key` (400): the guard
//!   and the upstream could read the request differently;
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

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decide::{Reason, Reject};
use crate::metrics::{RouteMetrics, ShadowMetrics};

pub static SHADOW: HeaderName = HeaderName::from_static("x-verbosity-guard-shadow");

/// How one request's verdicts are carried out.
pub struct Judge {
    /// `None` in enforce mode.
    shadow: Option<Shadow>,
    /// The route buffers its body (it has `records`).
    buffered: bool,
}

/// A shadow request's record of what enforce mode would have done.
struct Shadow {
    refusal: FirstRefusal,
    /// Records of the batch enforce mode would have (kept, dropped), when it was read.
    batch: Option<(u64, u64)>,
    clamped: u32,
}

/// The first refusal enforce mode would have made, counted once: shared by a shadow request and
/// its body, so both judge a refusal the same way.
struct FirstRefusal {
    metrics: Arc<ShadowMetrics>,
    /// Why enforce mode would have refused the request; no decision is made after it.
    first: Option<Reason>,
}

impl FirstRefusal {
    /// `Ok` when `refusal` is only counted (once: enforce mode would not have got to a second
    /// one) and the request goes on; `Err` when it binds in every mode.
    fn judge(&mut self, refusal: Reject, buffered: bool) -> Result<(), Reject> {
        let reason = refusal.reason();
        if reason.binds_in_shadow(buffered) {
            return Err(refusal);
        }
        self.note(reason);
        Ok(())
    }

    fn note(&mut self, reason: Reason) {
        if self.first.is_none() {
            self.metrics.reject(reason);
            self.first = Some(reason);
        }
    }
}

impl Judge {
    /// The judge of a request on a route with these series (a shadow route has shadow series).
    pub fn new(route: &RouteMetrics, buffered: bool) -> Judge {
        let shadow = route.shadow.as_ref().map(|metrics| Shadow {
            refusal: FirstRefusal {
                metrics: metrics.clone(),
                first: None,
            },
            batch: None,
            clamped: 0,
        });
        Judge { shadow, buffered }
    }

    pub fn is_shadow(&self) -> bool {
        self.shadow.is_some()
    }

    /// True while decisions are made: always in enforce mode (a refusal ends the request), in
    /// shadow mode until enforce mode would have refused the request.
    pub fn deciding(&self) -> bool {
        self.shadow
            .as_ref()
            .is_none_or(|s| s.refusal.first.is_none())
    }

    /// A phase's verdict. Enforce mode: a refusal ends the request. Shadow mode: a refusal
    /// enforce mode would have made is counted, decisions stop, and the request goes on with
    /// `otherwise()`; one that binds in every mode still ends it.
    pub fn verdict<T>(
        &mut self,
        verdict: Result<T, Reject>,
        otherwise: impl FnOnce() -> T,
    ) -> Result<T, Reject> {
        match (verdict, &mut self.shadow) {
            (Ok(v), _) => Ok(v),
            (Err(e), Some(s)) => s.refusal.judge(e, self.buffered).map(|()| otherwise()),
            (Err(e), None) => Err(e),
        }
    }

    /// Shadow mode: enforce mode would have refused the request for `reason` (counted once;
    /// later refusals are not, as enforce mode would not have got to them).
    pub fn would_refuse(&mut self, reason: Reason) {
        if let Some(s) = &mut self.shadow {
            s.refusal.note(reason);
        }
    }

    /// Shadow mode: enforce mode would have kept `kept` of the batch's records and dropped
    /// `dropped`.
    pub fn batch(&mut self, kept: u64, dropped: u64) {
        if let Some(s) = &mut self.shadow {
            s.batch = Some((kept, dropped));
        }
    }

    /// Shadow mode: enforce mode would have lowered `n` requested verbosities.
    pub fn clamped(&mut self, n: u32) {
        if let Some(s) = &mut self.shadow {
            if n > 0
                && let Some(c) = &s.refusal.metrics.clamped
            {
                c.inc_by(u64::from(n));
            }
            s.clamped = n;
        }
    }

    /// The judge of this request's body, from where the request's decisions stand.
    pub fn body(&self) -> BodyJudge {
        BodyJudge(self.shadow.as_ref().map(|s| {
            Box::new(ShadowBody {
                refusal: FirstRefusal {
                    metrics: s.refusal.metrics.clone(),
                    first: s.refusal.first,
                },
                buffered: self.buffered,
            })
        }))
    }

    /// Takes in what the body's judge counted (a buffered body is read before the request is
    /// forwarded, so its refusal can still be in the header).
    pub fn body_judged(&mut self, body: &BodyJudge) {
        // Already counted by the body's judge: only the header is to learn of it.
        if let (Some(s), Some(body)) = (&mut self.shadow, &body.0) {
            s.refusal.first = s.refusal.first.or(body.refusal.first);
        }
    }

    /// Marks a shadow request for the upstream with what enforce mode would have done.
    pub fn mark(&self, headers: &mut HeaderMap) {
        if let Some(s) = &self.shadow {
            headers.insert(SHADOW.clone(), s.header());
        }
    }
}

impl Shadow {
    /// The `x-verbosity-guard-shadow` value.
    fn header(&self) -> HeaderValue {
        let mut v = match (self.refusal.first, self.batch) {
            (Some(reason), _) => format!("would-reject={}", reason.as_str()),
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

/// How a body's refusals are carried out, frame by frame: as [`Judge::verdict`] does for the
/// request's phases. It travels with the body into the upstream exchange; in enforce mode it is
/// empty (no allocation).
pub struct BodyJudge(Option<Box<ShadowBody>>);

/// A shadow body: its request's refusal so far, carried on as the body streams.
struct ShadowBody {
    refusal: FirstRefusal,
    buffered: bool,
}

impl BodyJudge {
    /// `Err` to fail the body with `refusal`; `Ok` when it was only counted (shadow mode) and
    /// the body goes on unchecked.
    pub fn verdict(&mut self, refusal: Reject) -> Result<(), Reject> {
        match &mut self.0 {
            Some(s) => s.refusal.judge(refusal, s.buffered),
            None => Err(refusal),
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Registry;

    use super::*;
    use crate::budget::BudgetKind;
    use crate::metrics::Metrics;

    fn over(budget: BudgetKind) -> Result<(), Reject> {
        Err(Reject::OverBudget {
            budget,
            retry_after: std::time::Duration::from_secs(1),
        })
    }

    #[test]
    fn the_header_names_the_first_refusal_or_the_batch_counts() {
        let text = "version: 1\nmode: shadow\nroutes:\n  - name: default\n    match: { path_prefix: / }\n    verbosity_clamp: { header: x-log-level, max: info }\n";
        let policy = crate::policy::parse(text, "p.yaml").unwrap();
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let rm = metrics.route(&policy.routes()[0]);
        let header = |j: &Judge| {
            let mut h = HeaderMap::new();
            j.mark(&mut h);
            h[&SHADOW].clone()
        };

        let j = Judge::new(&rm, false);
        assert_eq!(header(&j), "pass");

        let mut j = Judge::new(&rm, false);
        j.batch(88, 12);
        j.clamped(1);
        assert_eq!(header(&j), "would-drop=12, would-keep=88, would-clamp=1");

        let mut j = Judge::new(&rm, false);
        j.verdict(over(BudgetKind::ClientBytes), || ()).unwrap();
        j.verdict(over(BudgetKind::RouteBytes), || ()).unwrap();
        assert!(!j.deciding());
        assert_eq!(header(&j), "would-reject=client_bytes");
        // What holds in every mode still ends a shadow request.
        assert!(j.verdict(Err::<(), _>(Reject::BadTarget), || ()).is_err());
        let count = |reason| {
            metrics
                .shadow
                .rejections
                .with_label_values(&["default", reason])
                .get()
        };
        assert_eq!((count("client_bytes"), count("route_bytes")), (1, 0));
    }

    #[test]
    fn enforce_mode_ends_the_request_at_the_first_refusal() {
        let text = "version: 1\nroutes:\n  - name: default\n    match: { path_prefix: / }\n";
        let policy = crate::policy::parse(text, "p.yaml").unwrap();
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let mut j = Judge::new(&metrics.route(&policy.routes()[0]), false);
        assert!(!j.is_shadow());
        assert!(j.verdict(over(BudgetKind::ClientBytes), || ()).is_err());
        assert!(j.deciding());
        let mut body = j.body();
        assert!(body.verdict(Reject::BodyTooLarge { limit: 1 }).is_err());
    }
}
