//! A phase's refusal: the core's typed answer to a request it will not forward as it is.
//!
//! Pure values, no HTTP: the proxy turns a [`Reject`] into a status, headers and a body in one
//! place (`proxy::error`), `simulate` counts its [`Reason`].

use std::time::Duration;

use super::Reason;
use crate::budget::{BudgetKind, Refusal};
use crate::codec::CodecError;
use crate::protect::Shed;
use crate::records::NotFormat;
use crate::route::PathError;

/// Why the guard refuses a request (or its body).
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("invalid request path: {0}")]
    InvalidPath(#[from] PathError),
    #[error("request has no client key and the route requires one")]
    MissingClientKey,
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("over the {} budget", budget.as_str())]
    OverBudget {
        budget: BudgetKind,
        retry_after: Duration,
    },
    #[error("a body of {size} bytes can never fit the {} burst of {burst} bytes", budget.as_str())]
    ExceedsBurst {
        budget: BudgetKind,
        size: u64,
        burst: u64,
    },
    #[error("request body stalled for {0:?}")]
    BodyTimeout(Duration),
    /// The client's body ended early or its connection failed mid-body.
    #[error("request body could not be read to its end")]
    BodyIncomplete,
    /// The rewritten request target is not a valid URI (cannot happen for a normalized path;
    /// kept so that no input can panic).
    #[error("request target cannot be forwarded")]
    BadTarget,
    #[error("unsupported Content-Encoding {0:?}")]
    UnsupportedEncoding(String),
    #[error("decoded body exceeds {limit} bytes")]
    DecodedTooLarge { limit: u64 },
    #[error("body is not valid {0}")]
    CorruptBody(&'static str),
    #[error("batch is not {format}: {reason}")]
    MalformedBatch {
        format: &'static str,
        reason: NotFormat,
    },
    /// Refused to protect the upstream: no upstream slot for the request's class in time, or
    /// a bulk request while the brownout sheds bulk.
    #[error("shed to protect the upstream ({} {})", .0.class.as_str(), .0.reason.as_str())]
    Shed(Shed),
    /// A Transfer-Encoding other than exactly `chunked` (RFC 9112 §6.1: a server that does not
    /// understand a coding answers 501). Forwarding it would change the body's coding unseen.
    #[error("unsupported Transfer-Encoding: only `chunked` is accepted")]
    UnsupportedTransferCoding,
    /// An HTTP/1.1 request with no Host, or any request with more than one (RFC 9112 §3.2).
    #[error("the request must carry exactly one Host header")]
    BadHost,
    /// The client-key header appears more than once with different values: the guard would
    /// budget one client while an upstream that reads another line credits someone else.
    #[error("the client-key header appears more than once with different values")]
    AmbiguousClientKey,
    /// The guard failed at something that cannot fail on valid input (re-encoding a batch).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Reject {
    pub fn reason(&self) -> Reason {
        match self {
            Reject::InvalidPath(_) => Reason::InvalidPath,
            Reject::MissingClientKey => Reason::MissingClientKey,
            Reject::BodyTooLarge { .. } => Reason::BodyTooLarge,
            Reject::OverBudget { budget, .. } => Reason::from(*budget),
            Reject::ExceedsBurst { .. } => Reason::ExceedsBurst,
            Reject::BodyTimeout(_) => Reason::BodyTimeout,
            Reject::BodyIncomplete => Reason::BodyIncomplete,
            Reject::BadTarget => Reason::BadTarget,
            Reject::UnsupportedEncoding(_) => Reason::UnsupportedEncoding,
            Reject::DecodedTooLarge { .. } => Reason::DecodedTooLarge,
            Reject::CorruptBody(_) => Reason::CorruptBody,
            Reject::MalformedBatch { .. } => Reason::MalformedBatch,
            Reject::Shed(shed) => Reason::from(shed.reason),
            Reject::Internal(_) => Reason::Internal,
            Reject::UnsupportedTransferCoding => Reason::UnsupportedTransferCoding,
            Reject::BadHost => Reason::BadHost,
            Reject::AmbiguousClientKey => Reason::AmbiguousClientKey,
        }
    }

    /// How long the client should wait before trying again, where waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Reject::OverBudget { retry_after, .. } => Some(*retry_after),
            Reject::Shed(shed) => Some(shed.retry_after),
            _ => None,
        }
    }

    /// A copy of the refusals a streamed body raises (they carry no source), for the client's
    /// answer when the body's failure surfaces inside an upstream exchange error.
    pub fn clone_body_refusal(&self) -> Option<Reject> {
        Some(match self {
            Reject::BodyTooLarge { limit } => Reject::BodyTooLarge { limit: *limit },
            Reject::OverBudget {
                budget,
                retry_after,
            } => Reject::OverBudget {
                budget: *budget,
                retry_after: *retry_after,
            },
            Reject::ExceedsBurst {
                budget,
                size,
                burst,
            } => Reject::ExceedsBurst {
                budget: *budget,
                size: *size,
                burst: *burst,
            },
            Reject::BodyTimeout(d) => Reject::BodyTimeout(*d),
            Reject::BodyIncomplete => Reject::BodyIncomplete,
            _ => return None,
        })
    }
}

impl From<Refusal> for Reject {
    fn from(r: Refusal) -> Reject {
        match r {
            Refusal::TooLarge { limit } => Reject::BodyTooLarge { limit },
            Refusal::Over {
                budget,
                retry_after,
            } => Reject::OverBudget {
                budget,
                retry_after,
            },
            Refusal::NeverFits {
                budget,
                size,
                burst,
            } => Reject::ExceedsBurst {
                budget,
                size,
                burst,
            },
        }
    }
}

impl From<CodecError> for Reject {
    fn from(e: CodecError) -> Reject {
        match e {
            CodecError::Unsupported(v) => Reject::UnsupportedEncoding(v),
            CodecError::TooLarge { limit } => Reject::DecodedTooLarge { limit },
            CodecError::Corrupt(enc) => Reject::CorruptBody(enc),
        }
    }
}

impl From<Shed> for Reject {
    fn from(shed: Shed) -> Reject {
        Reject::Shed(shed)
    }
}
