//! Every way the guard answers a request itself, and the one mapping from such an answer to a
//! status, a short body (JSON, or the `google.rpc.Status` OTLP senders expect), headers and a
//! metric label.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::budget::BudgetKind;
use crate::codec::CodecError;
use crate::policy::Priority;
use crate::proxy::UpstreamError;
use crate::records::NotFormat;
use crate::route::PathError;

/// Every `reason` a client rejection is counted under (`rejections_total`, `simulate`'s
/// report), for whoever names one: `simulate --fail-if "rejected(route, reason) ..."`.
pub const REJECTION_REASONS: [&str; 19] = [
    "invalid_path",
    "missing_client_key",
    "body_too_large",
    "route_requests",
    "route_bytes",
    "client_requests",
    "client_bytes",
    "exceeds_burst",
    "body_timeout",
    "body_incomplete",
    "bad_target",
    "unsupported_encoding",
    "decoded_too_large",
    "corrupt_body",
    "malformed_batch",
    "shed_queue_full",
    "shed_queue_timeout",
    "shed_brownout",
    "internal",
];

/// Every `kind` an upstream error is counted under (`upstream_errors_total`).
pub const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "reset", "timeout"];

/// Why a request did not get (or did not complete) an upstream exchange.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
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
    #[error("upstream could not be reached")]
    UpstreamConnect(#[source] UpstreamError),
    #[error("upstream exchange failed")]
    UpstreamReset(#[source] UpstreamError),
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
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
    #[error("shed to protect the upstream ({} {})", class.as_str(), reason.as_str())]
    Shed {
        class: Priority,
        reason: ShedReason,
        retry_after: Duration,
    },
    /// The guard failed at something that cannot fail on valid input (re-encoding a batch).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Why a request was shed; the names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Its class's wait queue for upstream slots was full.
    QueueFull,
    /// It waited its class's whole `queue_timeout` for a slot.
    QueueTimeout,
    /// A bulk request while the brownout level is `shed_bulk`.
    Brownout,
}

impl ShedReason {
    pub const COUNT: usize = 3;
    pub const ALL: [ShedReason; ShedReason::COUNT] = [
        ShedReason::QueueFull,
        ShedReason::QueueTimeout,
        ShedReason::Brownout,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::Brownout => "brownout",
        }
    }
}

impl From<CodecError> for GuardError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Unsupported(v) => GuardError::UnsupportedEncoding(v),
            CodecError::TooLarge { limit } => GuardError::DecodedTooLarge { limit },
            CodecError::Corrupt(enc) => GuardError::CorruptBody(enc),
        }
    }
}

/// The JSON body of a guard-made response; fields in this order, absent ones omitted.
#[derive(Default, serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// On every answer the guard makes itself instead of the upstream: the reason, as in the
/// `rejections_total` / `upstream_errors_total` label, so a client (or an operator reading its
/// logs) can tell the guard's 503 from the upstream's.
pub static REFUSED: http::HeaderName = http::HeaderName::from_static("x-verbosity-guard-refused");

/// How a guard-made error body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorStyle {
    /// The guard's JSON body (see [`GuardError::to_response`]).
    #[default]
    Json,
    /// OTLP/HTTP requires a `google.rpc.Status` body on every 4xx and 5xx, encoded like the
    /// request: protobuf ...
    OtlpProto,
    /// ... or JSON.
    OtlpJson,
}

/// Who a failure is attributed to in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request broke a rule: counted in `rejections_total{reason}`.
    Client,
    /// The upstream failed: counted in `upstream_errors_total{kind}`.
    Upstream,
}

impl GuardError {
    pub fn status(&self) -> StatusCode {
        match self {
            GuardError::InvalidPath(_)
            | GuardError::MissingClientKey
            | GuardError::BodyIncomplete
            | GuardError::BadTarget
            | GuardError::CorruptBody(_)
            | GuardError::MalformedBatch { .. } => StatusCode::BAD_REQUEST,
            GuardError::BodyTooLarge { .. }
            | GuardError::ExceedsBurst { .. }
            | GuardError::DecodedTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GuardError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GuardError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GuardError::OverBudget { .. } => StatusCode::TOO_MANY_REQUESTS,
            GuardError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GuardError::UpstreamConnect(_) | GuardError::UpstreamReset(_) => {
                StatusCode::BAD_GATEWAY
            }
            GuardError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GuardError::Shed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            GuardError::UpstreamConnect(_)
            | GuardError::UpstreamReset(_)
            | GuardError::UpstreamTimeout(_) => Blame::Upstream,
            _ => Blame::Client,
        }
    }

    /// The metric label: `reason` for client rejections (one of [`REJECTION_REASONS`]), `kind`
    /// for upstream errors (one of [`UPSTREAM_ERROR_KINDS`]).
    pub fn label(&self) -> &'static str {
        let table: &[&'static str] = match self.blame() {
            Blame::Client => &REJECTION_REASONS,
            Blame::Upstream => &UPSTREAM_ERROR_KINDS,
        };
        // Every index is in range (tested); "internal" is never reached.
        table.get(self.label_index()).copied().unwrap_or("internal")
    }

    /// Where [`label`](Self::label) sits in its table, so a route can keep its series in an
    /// array instead of looking them up by label per rejection.
    pub fn label_index(&self) -> usize {
        match self {
            GuardError::InvalidPath(_) => 0,      // invalid_path
            GuardError::MissingClientKey => 1,    // missing_client_key
            GuardError::BodyTooLarge { .. } => 2, // body_too_large
            GuardError::OverBudget { budget, .. } => 3 + budget.index(), // route_requests ..
            GuardError::ExceedsBurst { .. } => 7, // exceeds_burst
            GuardError::BodyTimeout(_) => 8,      // body_timeout
            GuardError::BodyIncomplete => 9,      // body_incomplete
            GuardError::BadTarget => 10,          // bad_target
            GuardError::UnsupportedEncoding(_) => 11, // unsupported_encoding
            GuardError::DecodedTooLarge { .. } => 12, // decoded_too_large
            GuardError::CorruptBody(_) => 13,     // corrupt_body
            GuardError::MalformedBatch { .. } => 14, // malformed_batch
            GuardError::Shed { reason, .. } => 15 + reason.index(), // shed_queue_full ..
            GuardError::Internal(_) => 18,        // internal
            GuardError::UpstreamConnect(_) => 0,  // connect
            GuardError::UpstreamReset(_) => 1,    // reset
            GuardError::UpstreamTimeout(_) => 2,  // timeout
        }
    }

    /// The `error` field of the JSON body.
    fn code(&self) -> &'static str {
        match self {
            GuardError::OverBudget { .. } => "budget_exceeded",
            GuardError::ExceedsBurst { .. } => "body_exceeds_burst",
            GuardError::UpstreamConnect(_) | GuardError::UpstreamReset(_) => "upstream_unavailable",
            GuardError::UpstreamTimeout(_) => "upstream_timeout",
            GuardError::Shed { .. } => "overloaded",
            other => other.label(),
        }
    }

    /// Whole seconds to wait before retrying, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GuardError::OverBudget { retry_after, .. } | GuardError::Shed { retry_after, .. } => {
                Some(retry_after.as_nanos().div_ceil(1_000_000_000).max(1) as u64)
            }
            _ => None,
        }
    }

    /// The `google.rpc.Code` of this answer, for OTLP `Status` bodies.
    fn grpc_code(&self) -> i32 {
        const INVALID_ARGUMENT: i32 = 3;
        const DEADLINE_EXCEEDED: i32 = 4;
        const RESOURCE_EXHAUSTED: i32 = 8;
        const INTERNAL: i32 = 13;
        const UNAVAILABLE: i32 = 14;
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => RESOURCE_EXHAUSTED,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => DEADLINE_EXCEEDED,
            StatusCode::INTERNAL_SERVER_ERROR => INTERNAL,
            _ => INVALID_ARGUMENT,
        }
    }

    /// The response the client gets: status, `Retry-After` where meaningful, and a body in
    /// `style`. The guard's JSON reads
    /// `{"error":"budget_exceeded","route":"telemetry","budget":"client_bytes","retry_after_s":2}`;
    /// OTLP senders get a `google.rpc.Status` whose message says the same in words.
    pub fn to_response(&self, route: &str, style: ErrorStyle) -> Response<Full<Bytes>> {
        let (content_type, bytes) = match style {
            ErrorStyle::Json => ("application/json", self.json_body(route)),
            ErrorStyle::OtlpProto | ErrorStyle::OtlpJson => {
                let mut message = format!("verbosity-guard, route {route}: {self}");
                if let Some(secs) = self.retry_after_secs() {
                    message.push_str(&format!("; retry after {secs}s"));
                }
                let code = self.grpc_code();
                match style {
                    ErrorStyle::OtlpProto => (
                        "application/x-protobuf",
                        crate::records::otlp::status_proto(code, &message),
                    ),
                    _ => (
                        "application/json",
                        crate::records::otlp::status_json(code, &message),
                    ),
                }
            }
        };
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(REFUSED.clone(), HeaderValue::from_static(self.label()));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    fn json_body(&self, route: &str) -> Vec<u8> {
        let mut body = ErrorBody {
            error: self.code(),
            route,
            retry_after_s: self.retry_after_secs(),
            ..ErrorBody::default()
        };
        let detail;
        match self {
            GuardError::OverBudget { budget, .. } => body.budget = Some(budget.as_str()),
            GuardError::ExceedsBurst {
                budget,
                size,
                burst,
            } => {
                body.budget = Some(budget.as_str());
                body.size = Some(*size);
                body.burst = Some(*burst);
            }
            GuardError::BodyTooLarge { limit } => body.limit = Some(*limit),
            GuardError::Shed { class, reason, .. } => {
                body.class = Some(class.as_str());
                body.reason = Some(reason.as_str());
            }
            GuardError::UpstreamTimeout(d) => body.timeout_s = Some(d.as_secs_f64()),
            GuardError::DecodedTooLarge { limit } => body.limit = Some(*limit),
            GuardError::InvalidPath(e) => {
                detail = e.to_string();
                body.detail = Some(&detail);
            }
            GuardError::UnsupportedEncoding(_)
            | GuardError::CorruptBody(_)
            | GuardError::MalformedBatch { .. } => {
                detail = self.to_string();
                body.detail = Some(&detail);
            }
            _ => {}
        }
        let mut json = serde_json::to_vec(&body).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// Maps an upstream failure. A request body cut off mid-stream (413, 429, 408) surfaces as
    /// an exchange error whose source chain holds the body's `GuardError`: the client is answered
    /// for what it did, not with a 502.
    pub fn from_upstream(err: UpstreamError, timeout: Duration) -> GuardError {
        match err {
            UpstreamError::Timeout => GuardError::UpstreamTimeout(timeout),
            e if e.is_connect() => GuardError::UpstreamConnect(e),
            e => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if let Some(own) = s
                        .downcast_ref::<GuardError>()
                        .and_then(GuardError::clone_client_error)
                    {
                        return own;
                    }
                    source = s.source();
                }
                GuardError::UpstreamReset(e)
            }
        }
    }

    /// Copies the client-side errors a body can raise (they carry no source).
    fn clone_client_error(&self) -> Option<GuardError> {
        Some(match self {
            GuardError::BodyTooLarge { limit } => GuardError::BodyTooLarge { limit: *limit },
            GuardError::OverBudget {
                budget,
                retry_after,
            } => GuardError::OverBudget {
                budget: *budget,
                retry_after: *retry_after,
            },
            GuardError::ExceedsBurst {
                budget,
                size,
                burst,
            } => GuardError::ExceedsBurst {
                budget: *budget,
                size: *size,
                burst: *burst,
            },
            GuardError::BodyTimeout(d) => GuardError::BodyTimeout(*d),
            GuardError::BodyIncomplete => GuardError::BodyIncomplete,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_listed_once_at_its_index() {
        let d = Duration::from_secs(1);
        let budgets = BudgetKind::ALL.map(|budget| GuardError::OverBudget {
            budget,
            retry_after: d,
        });
        let sheds = ShedReason::ALL.map(|reason| GuardError::Shed {
            class: Priority::Bulk,
            reason,
            retry_after: d,
        });
        let others = [
            GuardError::InvalidPath(PathError::NotAbsolute),
            GuardError::MissingClientKey,
            GuardError::BodyTooLarge { limit: 1 },
            GuardError::ExceedsBurst {
                budget: BudgetKind::RouteBytes,
                size: 2,
                burst: 1,
            },
            GuardError::BodyTimeout(d),
            GuardError::BodyIncomplete,
            GuardError::BadTarget,
            GuardError::UnsupportedEncoding("br".into()),
            GuardError::DecodedTooLarge { limit: 1 },
            GuardError::CorruptBody("gzip"),
            GuardError::MalformedBatch {
                format: "ndjson",
                reason: NotFormat("not json"),
            },
            GuardError::Internal("test"),
            GuardError::UpstreamConnect(UpstreamError::ConnectTimeout {
                addr: "127.0.0.1:1".into(),
                after: d,
            }),
            GuardError::UpstreamReset(UpstreamError::Timeout),
            GuardError::UpstreamTimeout(d),
        ];
        let all: Vec<_> = budgets.into_iter().chain(sheds).chain(others).collect();
        // Every label_index is in its table's range (label never falls back).
        for e in &all {
            let len = match e.blame() {
                Blame::Client => REJECTION_REASONS.len(),
                Blame::Upstream => UPSTREAM_ERROR_KINDS.len(),
            };
            assert!(e.label_index() < len, "{e:?}");
        }
        // The table's order follows the enums the indexes are derived from.
        for (e, budget) in all.iter().zip(BudgetKind::ALL) {
            assert_eq!(e.label(), budget.as_str());
        }
        for (e, reason) in all[BudgetKind::ALL.len()..].iter().zip(ShedReason::ALL) {
            assert_eq!(e.label(), format!("shed_{}", reason.as_str()));
        }
        let upstream: Vec<_> = all
            .iter()
            .filter(|e| e.blame() == Blame::Upstream)
            .map(|e| e.label())
            .collect();
        assert_eq!(upstream, UPSTREAM_ERROR_KINDS);
        let clients: Vec<_> = all
            .iter()
            .filter(|e| e.blame() == Blame::Client)
            .map(|e| e.label())
            .collect();
        let mut listed = REJECTION_REASONS.to_vec();
        let mut seen = clients.clone();
        listed.sort_unstable();
        seen.sort_unstable();
        assert_eq!(
            seen, listed,
            "REJECTION_REASONS is every client label, once"
        );
    }
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn over_budget_maps_to_429_with_retry_after_and_json() {
        let e = GuardError::OverBudget {
            budget: BudgetKind::ClientBytes,
            retry_after: Duration::from_millis(1200),
        };
        let resp = e.to_response("telemetry", ErrorStyle::Json);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"{\"error\":\"budget_exceeded\",\"route\":\"telemetry\",\"budget\":\"client_bytes\",\"retry_after_s\":2}\n"
        );
        assert_eq!(e.label(), "client_bytes");
    }

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        // (A body error inside an exchange error is covered end to end by the chunked-upload
        // tests in tests/payload_budgets.rs, which need a real hyper connection.)
        let refused = UpstreamError::Connect {
            addr: "127.0.0.1:9".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let e = GuardError::from_upstream(refused, Duration::from_secs(5));
        assert_eq!(
            (e.status(), e.label(), e.blame()),
            (StatusCode::BAD_GATEWAY, "connect", Blame::Upstream)
        );
        let e = GuardError::from_upstream(UpstreamError::Timeout, Duration::from_secs(5));
        assert_eq!(
            (e.status(), e.label()),
            (StatusCode::GATEWAY_TIMEOUT, "timeout")
        );
        assert!(matches!(e, GuardError::UpstreamTimeout(d) if d == Duration::from_secs(5)));
    }
}
