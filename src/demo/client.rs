//! The fleet's HTTP client: the guard's own upstream pool (keep-alive HTTP/1.1 connections to one
//! address) with in-memory request bodies, shared by every simulated vehicle and owner.
//!
//! A request takes an idle connection or opens one; the connection returns to the pool once the
//! response body has been read. Dropping an exchange (a client timeout) drops its connection,
//! as a real client would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::proxy::{Upstream, UpstreamError, UpstreamSettings};

/// Idle connections kept; more are closed when their exchange ends.
const MAX_IDLE: usize = 4096;

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    /// The guard answered itself (`x-verbosity-guard-refused`).
    pub by_guard: bool,
    /// `Retry-After`, in seconds, when the answer had one.
    pub retry_after: Option<Duration>,
}

/// A pool of connections to one address.
pub struct Client(Upstream<Full<Bytes>>);

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        // A socket address is always a valid authority; the fallback only keeps this total.
        let authority = Authority::try_from(addr.to_string())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1:80"));
        let settings = UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: MAX_IDLE,
            ..UpstreamSettings::default()
        };
        Client(Upstream::new(&authority, &settings, MAX_IDLE))
    }

    /// Sends `req` (origin-form target) and reads the whole response within `limit`, returning
    /// its status and whether the guard (not the API) made the answer. A request is never sent
    /// twice.
    pub async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<Answer, UpstreamError> {
        let resp = self.0.send(req, Instant::now() + limit).await?;
        let answer = Answer {
            status: resp.status(),
            by_guard: resp.headers().contains_key(&crate::proxy::REFUSED),
            retry_after: resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        };
        resp.into_body()
            .collect()
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::{Backend, BackendConfig};
    use super::*;

    #[tokio::test]
    async fn connections_are_reused_once_a_response_is_read() {
        let api = Backend::start(BackendConfig::with_capacity(1_000_000))
            .await
            .unwrap();
        let client = Client::new(api.addr());
        for _ in 0..3 {
            let req = Request::get("/api/1/vehicles/1/vehicle_data")
                .body(Full::new(Bytes::new()))
                .unwrap();
            assert_eq!(
                client
                    .exchange(req, Duration::from_secs(5))
                    .await
                    .unwrap()
                    .status,
                StatusCode::OK
            );
        }
        let req = Request::get("/nope").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(
            client
                .exchange(req, Duration::from_secs(5))
                .await
                .unwrap()
                .status,
            StatusCode::NOT_FOUND
        );
    }
}
