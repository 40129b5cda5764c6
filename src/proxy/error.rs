//! Every way the guard answers a request itself, and the one mapping from such an answer to a
//! status, a short body (JSON, or the `google.rpc.Status` OTLP senders expect), headers and a
//! metric label.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::upstream::UpstreamError;
use crate::decide::{ErrorStyle, Reject, UpstreamFailure};
use crate::records::otlp;

/// On every answer the guard makes itself instead of the upstream: the reason, as in the
/// `rejections_total` / `upstream_errors_total` label, so a client (or an operator reading its
/// logs) can tell the guard's 503 from the upstream's.
pub static REFUSED: http::HeaderName = http::HeaderName::from_static("x-verbosity-guard-refused");

/// Why a request did not get (or did not complete) an upstream exchange: the policy refused it
/// (counted in `rejections_total{reason}`), or the upstream failed (`upstream_errors_total{kind}`).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Reject(#[from] Reject),
    #[error("upstream could not be reached")]
    UpstreamConnect(#[source] UpstreamError),
    #[error("upstream exchange failed")]
    UpstreamReset(#[source] UpstreamError),
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream response head too large")]
    UpstreamHeadTooLarge(#[source] UpstreamError),
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

/// Whom an error is counted against: the request (`rejections_total{reason}`) or the upstream
/// (`upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    Refused(&'a Reject),
    Upstream(UpstreamFailure),
}

impl ProxyError {
    pub fn cause(&self) -> Cause<'_> {
        match self {
            ProxyError::Reject(r) => Cause::Refused(r),
            ProxyError::UpstreamConnect(_) => Cause::Upstream(UpstreamFailure::Connect),
            ProxyError::UpstreamReset(_) => Cause::Upstream(UpstreamFailure::Reset),
            ProxyError::UpstreamTimeout(_) => Cause::Upstream(UpstreamFailure::Timeout),
            ProxyError::UpstreamHeadTooLarge(_) => Cause::Upstream(UpstreamFailure::HeadTooLarge),
        }
    }

    pub fn status(&self) -> StatusCode {
        let reject = match self {
            ProxyError::Reject(r) => r,
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamHeadTooLarge(_) => {
                return StatusCode::BAD_GATEWAY;
            }
            ProxyError::UpstreamTimeout(_) => return StatusCode::GATEWAY_TIMEOUT,
        };
        match reject {
            Reject::InvalidPath(_)
            | Reject::MissingClientKey
            | Reject::BodyIncomplete
            | Reject::BadTarget
            | Reject::BadHost
            | Reject::AmbiguousClientKey
            | Reject::CorruptBody(_)
            | Reject::MalformedBatch { .. } => StatusCode::BAD_REQUEST,
            Reject::BodyTooLarge { .. }
            | Reject::ExceedsBurst { .. }
            | Reject::DecodedTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Reject::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Reject::OverBudget { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Reject::Shed(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The metric label: the `reason` of a refusal, the `kind` of an upstream failure.
    pub fn label(&self) -> &'static str {
        match self.cause() {
            Cause::Refused(r) => r.reason().as_str(),
            Cause::Upstream(kind) => kind.as_str(),
        }
    }

    /// The `error` field of the JSON body.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::Reject(Reject::OverBudget { .. }) => "budget_exceeded",
            ProxyError::Reject(Reject::ExceedsBurst { .. }) => "body_exceeds_burst",
            ProxyError::Reject(Reject::Shed(_)) => "overloaded",
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamReset(_) => "upstream_unavailable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::UpstreamHeadTooLarge(_) => "upstream_head_too_large",
            other => other.label(),
        }
    }

    /// Whole seconds to wait before retrying, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ProxyError::Reject(r) => r
                .retry_after()
                .map(|d| d.as_nanos().div_ceil(1_000_000_000).max(1) as u64),
            _ => None,
        }
    }

    /// The `google.rpc.Code` of this answer, for OTLP `Status` bodies.
    fn grpc_code(&self) -> i32 {
        const INVALID_ARGUMENT: i32 = 3;
        const DEADLINE_EXCEEDED: i32 = 4;
        const RESOURCE_EXHAUSTED: i32 = 8;
        const UNIMPLEMENTED: i32 = 12;
        const INTERNAL: i32 = 13;
        const UNAVAILABLE: i32 = 14;
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => RESOURCE_EXHAUSTED,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => DEADLINE_EXCEEDED,
            StatusCode::INTERNAL_SERVER_ERROR => INTERNAL,
            StatusCode::NOT_IMPLEMENTED => UNIMPLEMENTED,
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
                    ErrorStyle::OtlpProto => {
                        ("application/x-protobuf", otlp::status_proto(code, &message))
                    }
                    _ => ("application/json", otlp::status_json(code, &message)),
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
            ProxyError::Reject(Reject::OverBudget { budget, .. }) => {
                body.budget = Some(budget.as_str());
            }
            ProxyError::Reject(Reject::ExceedsBurst {
                budget,
                size,
                burst,
            }) => {
                body.budget = Some(budget.as_str());
                body.size = Some(*size);
                body.burst = Some(*burst);
            }
            ProxyError::Reject(
                Reject::BodyTooLarge { limit } | Reject::DecodedTooLarge { limit },
            ) => body.limit = Some(*limit),
            ProxyError::Reject(Reject::Shed(shed)) => {
                body.class = Some(shed.class.as_str());
                body.reason = Some(shed.reason.as_str());
            }
            ProxyError::UpstreamTimeout(d) => body.timeout_s = Some(d.as_secs_f64()),
            ProxyError::Reject(Reject::InvalidPath(e)) => {
                detail = e.to_string();
                body.detail = Some(&detail);
            }
            ProxyError::Reject(
                Reject::UnsupportedEncoding(_)
                | Reject::CorruptBody(_)
                | Reject::MalformedBatch { .. },
            ) => {
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
    /// an exchange error whose source chain holds the body's [`Reject`]: the client is answered
    /// for what it did, not with a 502.
    pub fn from_upstream(err: UpstreamError, timeout: Duration) -> ProxyError {
        match err {
            UpstreamError::Timeout => ProxyError::UpstreamTimeout(timeout),
            e @ UpstreamError::HeadTooLarge { .. } => ProxyError::UpstreamHeadTooLarge(e),
            e if e.is_connect() => ProxyError::UpstreamConnect(e),
            e => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if let Some(own) = s
                        .downcast_ref::<Reject>()
                        .and_then(Reject::clone_body_refusal)
                    {
                        return ProxyError::Reject(own);
                    }
                    source = s.source();
                }
                ProxyError::UpstreamReset(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::budget::BudgetKind;

    #[tokio::test]
    async fn over_budget_maps_to_429_with_retry_after_and_json() {
        let e = ProxyError::Reject(Reject::OverBudget {
            budget: BudgetKind::ClientBytes,
            retry_after: Duration::from_millis(1200),
        });
        let resp = e.to_response("telemetry", ErrorStyle::Json);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()[&REFUSED], "client_bytes");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"{\"error\":\"budget_exceeded\",\"route\":\"telemetry\",\"budget\":\"client_bytes\",\"retry_after_s\":2}\n"
        );
    }

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        // (A body error inside an exchange error is covered end to end by the chunked-upload
        // tests in tests/payload_budgets.rs, which need a real hyper connection.)
        let refused = UpstreamError::Connect {
            addr: "127.0.0.1:9".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let e = ProxyError::from_upstream(refused, Duration::from_secs(5));
        assert_eq!(
            (e.status(), e.label()),
            (StatusCode::BAD_GATEWAY, "connect")
        );
        assert!(matches!(
            e.cause(),
            Cause::Upstream(UpstreamFailure::Connect)
        ));
        let e = ProxyError::from_upstream(UpstreamError::Timeout, Duration::from_secs(5));
        assert_eq!(
            (e.status(), e.label()),
            (StatusCode::GATEWAY_TIMEOUT, "timeout")
        );
        assert!(matches!(e, ProxyError::UpstreamTimeout(d) if d == Duration::from_secs(5)));
    }
}
