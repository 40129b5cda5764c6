//! The proxy listener: accepts client connections and serves each through the stack built in
//! [`stack`]. Bounds on connections, header reads and draining live here; the per-request rules
//! live in [`guard`].

pub mod body;
pub mod guard;
pub mod headers;
mod stack;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use guard::{ConnInfo, Guard, Shared, Upstream};
pub use stack::{UpstreamClient, UpstreamSettings, stack, upstream_client};

use crate::warn_limited;

/// Listener-level bounds, set from the command line.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Client connections served at once; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive, also the idle limit of an HTTP/1
    /// keep-alive connection between requests.
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head and HTTP/2 header list, in bytes (hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request.
    pub max_headers: usize,
    /// Most concurrent streams per HTTP/2 connection.
    pub h2_max_streams: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2_max_streams: 256,
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` flips, then stops accepting and waits up to
/// `drain` for in-flight connections to finish. Returns false if the drain timed out.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    client: UpstreamClient,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper ignores header_read_timeout unless a timer is set.
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));

    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let metrics = shared.metrics.clone();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning on the error.
                    warn_limited!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        metrics.connections.inc();
        metrics.connections_open.inc();
        let service = stack(shared.clone(), ConnInfo::new(peer.ip()), client.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Pinned here rather than awaited by value so the socket stays open until the
            // outcome is counted: whoever sees the connection close can read its metric.
            let mut conn = std::pin::pin!(conn);
            if let Err(e) = conn.as_mut().await {
                metrics
                    .connection_errors
                    .with_label_values(&[connection_error_kind(e.as_ref())])
                    .inc();
            }
            metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_ok()
}

/// Labels a connection's failure. hyper answers malformed heads (400/431) itself before the
/// service runs, so this is where those are counted.
fn connection_error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return if h.is_timeout() {
                "header_timeout"
            } else if h.is_parse_too_large() {
                "header_too_large"
            } else if h.is_parse() || h.is_parse_version_h2() {
                "malformed"
            } else if h.is_incomplete_message() {
                "incomplete"
            } else {
                "io"
            };
        }
        source = err.source();
    }
    "io"
}
