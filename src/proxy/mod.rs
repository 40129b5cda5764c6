//! The proxy listener and its workers.
//!
//! One accept loop takes client connections (up to `max_connections` at once) and hands them
//! round-robin to N worker threads. Each worker runs a single-threaded tokio runtime with its own
//! upstream connection pool, so a request is served start to finish on one thread, with no
//! cross-thread handoff and no contended lock (the shape nginx and Envoy use). Per-request rules
//! live in [`guard`]; the stack is assembled in [`stack`].

pub mod body;
pub mod guard;
pub mod headers;
mod linger;
mod stack;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

pub use guard::{ConnInfo, Guard, Shared, Target};
pub use stack::stack;
pub use upstream::{Upstream, UpstreamError, UpstreamSettings};

use crate::warn_limited;
use linger::Lingering;

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

/// An accepted connection on its way to a worker, with its slot under `max_connections`.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// Where the accept loop sends a worker its connections.
pub struct WorkerQueue(mpsc::UnboundedSender<Accepted>);

/// Starts `n` worker threads serving through `shared` toward `settings`' upstream. Each drains
/// for up to `drain` once the accept loop stops feeding it. Returns each worker's queue and a
/// receiver that says whether its drain finished in time.
pub fn spawn_workers(
    n: usize,
    shared: &Arc<Shared>,
    limits: &ServerLimits,
    settings: &UpstreamSettings,
    drain: Duration,
) -> std::io::Result<(Vec<WorkerQueue>, Vec<oneshot::Receiver<bool>>)> {
    let n = n.max(1);
    (0..n)
        .map(|i| {
            let (conns, rx) = mpsc::unbounded_channel();
            let (done, drained) = oneshot::channel();
            let upstream = Upstream::new(
                &shared.target.authority,
                settings,
                settings.pool_max_idle.div_ceil(n),
            );
            let (shared, limits) = (shared.clone(), limits.clone());
            thread::Builder::new()
                .name(format!("guard-worker-{i}"))
                .spawn(move || {
                    let drained = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(run_worker(rx, shared, upstream, limits, drain)),
                        Err(e) => {
                            tracing::error!("worker {i} cannot start its runtime: {e}");
                            false
                        }
                    };
                    let _ = done.send(drained);
                })?;
            Ok((WorkerQueue(conns), drained))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map(|workers| workers.into_iter().unzip())
}

/// Accepts until `shutdown` flips, spreading connections over `workers`. Returning drops the
/// listener (new clients are refused) and the workers' queues (each then drains).
pub async fn accept(
    listener: TcpListener,
    queues: Vec<WorkerQueue>,
    shared: Arc<Shared>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut next = 0;
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
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
            _ = shutdown.changed() => return,
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        shared.metrics.connections.inc();
        shared.metrics.connections_open.inc();
        let _ = queues[next].0.send(Accepted {
            stream,
            peer,
            permit,
        });
        next = (next + 1) % queues.len();
    }
}

async fn run_worker(
    mut conns: mpsc::UnboundedReceiver<Accepted>,
    shared: Arc<Shared>,
    upstream: Upstream,
    limits: ServerLimits,
    drain: Duration,
) -> bool {
    let sweeper = tokio::spawn({
        let upstream = upstream.clone();
        async move {
            let period = (upstream.idle_timeout() / 2).max(Duration::from_secs(1));
            loop {
                tokio::time::sleep(period).await;
                upstream.sweep();
            }
        }
    });
    let builder = server_builder(&limits);
    let graceful = GracefulShutdown::new();
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = conns.recv().await
    {
        let metrics = shared.metrics.clone();
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                warn_limited!("cannot adopt a connection: {e}");
                metrics.connections_open.dec();
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = stack(shared.clone(), ConnInfo::new(peer.ip()), upstream.clone());
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(Lingering::new(stream)), service)
                .into_owned(),
        );
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
    let drained = tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_ok();
    sweeper.abort();
    drained
}

fn server_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
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
    builder
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
