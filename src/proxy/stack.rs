//! The request stack, outermost layer first, and the upstream client at its bottom.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

use super::body::UpstreamBody;
use super::guard::{ConnInfo, Guard, Shared};

/// Pooled keep-alive HTTP/1.1 client toward the upstream.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Time allowed to open a TCP connection to the upstream (502 after).
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept in the pool.
    pub pool_max_idle: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 512,
        }
    }
}

pub fn upstream_client(s: &UpstreamSettings) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(s.connect_timeout));
    Client::builder(TokioExecutor::new())
        // hyper-util ignores pool_idle_timeout unless a pool timer is set.
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.pool_idle_timeout)
        .pool_max_idle_per_host(s.pool_max_idle)
        .build(http)
}

/// The service for one client connection.
pub fn stack(
    shared: Arc<Shared>,
    conn: ConnInfo,
    client: UpstreamClient,
) -> TowerToHyperService<Guard<UpstreamClient>> {
    let service = ServiceBuilder::new()
        // The guard: normalize, route, identify the client, charge payload budgets, rewrite
        // headers. Every request's outcome is recorded here, whichever phase ended it.
        .layer_fn(|inner| Guard::new(shared.clone(), conn.clone(), inner))
        // The upstream: pooled client; bodies stream both ways through the guard's body wrapper.
        .service(client);
    TowerToHyperService::new(service)
}
