//! Why the guard answered a request itself, as one typed value: the `reason` label of
//! `rejections_total` and `shadow_rejections_total`, the `reason` of `simulate`'s report and of
//! its `--fail-if` conditions, and the `x-verbosity-guard-refused` header.

use crate::budget::BudgetKind;
use crate::protect::ShedReason;

/// The one list of rejection reasons. Each phase's refusal ([`Reject`](super::Reject)) has
/// exactly one; enforce mode counts it, shadow mode counts it as what enforce mode would have
/// done, `simulate` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidPath,
    MissingClientKey,
    BodyTooLarge,
    RouteRequests,
    RouteBytes,
    ClientRequests,
    ClientBytes,
    ExceedsBurst,
    BodyTimeout,
    BodyIncomplete,
    BadTarget,
    UnsupportedEncoding,
    DecodedTooLarge,
    CorruptBody,
    MalformedBatch,
    ShedQueueFull,
    ShedQueueTimeout,
    ShedBrownout,
    Internal,
    /// Shadow mode only: no upstream slot was free at once. Enforce mode would have queued the
    /// request and shed it only if its wait ran out, so this bounds `shed_queue_*` from above.
    ShedSlotBusy,
    UnsupportedTransferCoding,
    BadHost,
    AmbiguousClientKey,
    ShedOverload,
}

impl Reason {
    pub const COUNT: usize = 24;
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::InvalidPath,
        Reason::MissingClientKey,
        Reason::BodyTooLarge,
        Reason::RouteRequests,
        Reason::RouteBytes,
        Reason::ClientRequests,
        Reason::ClientBytes,
        Reason::ExceedsBurst,
        Reason::BodyTimeout,
        Reason::BodyIncomplete,
        Reason::BadTarget,
        Reason::UnsupportedEncoding,
        Reason::DecodedTooLarge,
        Reason::CorruptBody,
        Reason::MalformedBatch,
        Reason::ShedQueueFull,
        Reason::ShedQueueTimeout,
        Reason::ShedBrownout,
        Reason::Internal,
        Reason::ShedSlotBusy,
        Reason::UnsupportedTransferCoding,
        Reason::BadHost,
        Reason::AmbiguousClientKey,
        Reason::ShedOverload,
    ];

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidPath => "invalid_path",
            Reason::MissingClientKey => "missing_client_key",
            Reason::BodyTooLarge => "body_too_large",
            Reason::RouteRequests => "route_requests",
            Reason::RouteBytes => "route_bytes",
            Reason::ClientRequests => "client_requests",
            Reason::ClientBytes => "client_bytes",
            Reason::ExceedsBurst => "exceeds_burst",
            Reason::BodyTimeout => "body_timeout",
            Reason::BodyIncomplete => "body_incomplete",
            Reason::BadTarget => "bad_target",
            Reason::UnsupportedEncoding => "unsupported_encoding",
            Reason::DecodedTooLarge => "decoded_too_large",
            Reason::CorruptBody => "corrupt_body",
            Reason::MalformedBatch => "malformed_batch",
            Reason::ShedQueueFull => "shed_queue_full",
            Reason::ShedQueueTimeout => "shed_queue_timeout",
            Reason::ShedBrownout => "shed_brownout",
            Reason::Internal => "internal",
            Reason::ShedSlotBusy => "shed_slot_busy",
            Reason::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Reason::BadHost => "bad_host",
            Reason::AmbiguousClientKey => "ambiguous_client_key",
            Reason::ShedOverload => "shed_overload",
        }
    }

    pub fn from_label(label: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == label)
    }

    /// True for the reason only shadow mode counts (enforce mode waits for a slot instead).
    pub fn is_shadow_only(self) -> bool {
        self == Reason::ShedSlotBusy
    }

    /// Whether a shadow route answers this refusal as enforce mode does, instead of counting it
    /// and forwarding the request. `buffered`: the route reads its whole body (it has
    /// `records`), so `max_body` bounds the guard's memory there and holds in every mode. The
    /// others that hold in every mode are not the policy's decisions: the request cannot be
    /// routed or forwarded safely (its framing, host or client key is ambiguous, and guard and
    /// upstream could read it differently), or its body never fully arrived, or the guard itself
    /// is overloaded (protecting the guard is not the policy's decision either).
    pub fn binds_in_shadow(self, buffered: bool) -> bool {
        match self {
            Reason::ShedOverload
            | Reason::InvalidPath
            | Reason::BadTarget
            | Reason::BodyTimeout
            | Reason::BodyIncomplete
            | Reason::UnsupportedTransferCoding
            | Reason::BadHost
            | Reason::AmbiguousClientKey
            | Reason::Internal => true,
            Reason::BodyTooLarge => buffered,
            Reason::MissingClientKey
            | Reason::RouteRequests
            | Reason::RouteBytes
            | Reason::ClientRequests
            | Reason::ClientBytes
            | Reason::ExceedsBurst
            | Reason::UnsupportedEncoding
            | Reason::DecodedTooLarge
            | Reason::CorruptBody
            | Reason::MalformedBatch
            | Reason::ShedQueueFull
            | Reason::ShedQueueTimeout
            | Reason::ShedBrownout
            | Reason::ShedSlotBusy => false,
        }
    }
}

impl From<BudgetKind> for Reason {
    fn from(kind: BudgetKind) -> Reason {
        match kind {
            BudgetKind::RouteRequests => Reason::RouteRequests,
            BudgetKind::RouteBytes => Reason::RouteBytes,
            BudgetKind::ClientRequests => Reason::ClientRequests,
            BudgetKind::ClientBytes => Reason::ClientBytes,
        }
    }
}

impl From<ShedReason> for Reason {
    fn from(reason: ShedReason) -> Reason {
        match reason {
            ShedReason::QueueFull => Reason::ShedQueueFull,
            ShedReason::QueueTimeout => Reason::ShedQueueTimeout,
            ShedReason::Brownout => Reason::ShedBrownout,
            ShedReason::Overload => Reason::ShedOverload,
        }
    }
}

/// Why an upstream exchange failed: the `kind` label of `upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The upstream could not be reached (502).
    Connect,
    /// The exchange broke off (502).
    Reset,
    /// No response headers within the route's timeout (504).
    Timeout,
    /// A response head over `--max-upstream-head-bytes` (502, never relayed).
    HeadTooLarge,
}

impl UpstreamFailure {
    pub const COUNT: usize = 4;
    pub const ALL: [UpstreamFailure; UpstreamFailure::COUNT] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Reset,
        UpstreamFailure::Timeout,
        UpstreamFailure::HeadTooLarge,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::HeadTooLarge => "head_too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once_at_its_index() {
        for (i, r) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
            assert_eq!(Reason::from_label(r.as_str()), Some(r));
        }
        for (i, f) in UpstreamFailure::ALL.into_iter().enumerate() {
            assert_eq!(f.index(), i, "{f:?}");
        }
        let shed: Vec<_> = ShedReason::ALL.map(|s| Reason::from(s).as_str()).to_vec();
        let named: Vec<_> = ShedReason::ALL
            .map(|s| format!("shed_{}", s.as_str()))
            .to_vec();
        assert_eq!(shed, named);
        for kind in BudgetKind::ALL {
            assert_eq!(Reason::from(kind).as_str(), kind.as_str());
        }
    }
}
