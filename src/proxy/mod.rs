//! The proxy listener and its workers.
//!
//! One accept loop takes client connections (up to `max_connections` at once) and hands them
//! round-robin to N worker threads. Each worker runs a single-threaded tokio runtime with its own
//! upstream connection pool, so a request is served start to finish on one thread, with no
//! cross-thread handoff and no contended lock (the shape nginx and Envoy use). Per-request rules
//! live in [`guard`]; the stack is assembled in [`stack`].

pub mod batch;
pub mod body;
mod client_io;
mod conns;
mod drain;
mod error;
pub mod guard;
pub mod headers;
pub mod shadow;
mod stack;
mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

pub use error::{ProxyError, REFUSED};
pub use guard::{ConnInfo, Guard};
pub use stack::stack;
pub use state::{PolicyStore, Shared, Snapshot, Target};
pub use upstream::{Upstream, UpstreamError, UpstreamSettings};

use crate::warn_limited;
use client_io::{ClientIo, sniff};
use conns::{ConnTable, Registered};
use drain::{Drain, Watch};

/// Listener-level bounds, set from the command line.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Client connections served at once. At the cap, idle ones are closed to make room for a
    /// new client (see `conns`); with none idle, further clients wait in the accept queue.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive, also the idle limit of a keep-alive
    /// connection between requests (HTTP/1 and HTTP/2).
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
    conn: Registered,
}

/// Where the accept loop sends a worker its connections.
pub struct WorkerQueue(mpsc::UnboundedSender<Accepted>);

/// Starts `n` worker threads serving through `shared` toward `settings`' upstream, and returns
/// once every one of them runs (its runtime built, its thread named). Each drains for up to
/// `drain` once the accept loop stops feeding it. Returns each worker's queue and a receiver
/// that says whether its drain finished in time.
pub async fn spawn_workers(
    n: usize,
    shared: &Arc<Shared>,
    limits: &ServerLimits,
    settings: &UpstreamSettings,
    drain: Duration,
) -> std::io::Result<(Vec<WorkerQueue>, Vec<oneshot::Receiver<bool>>)> {
    let n = n.max(1);
    let mut started = Vec::with_capacity(n);
    let workers = (0..n)
        .map(|i| {
            let (conns, rx) = mpsc::unbounded_channel();
            let (done, drained) = oneshot::channel();
            let (ready, is_ready) = oneshot::channel::<std::io::Result<()>>();
            started.push(is_ready);
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
                        Ok(rt) => {
                            let _ = ready.send(Ok(()));
                            let lag = shared
                                .metrics
                                .protect
                                .event_loop_lag
                                .with_label_values(&[&i.to_string()]);
                            rt.block_on(run_worker(rx, shared, upstream, limits, drain, lag))
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            false
                        }
                    };
                    let _ = done.send(drained);
                })?;
            Ok((WorkerQueue(conns), drained))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    for is_ready in started {
        match is_ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("a worker thread died while starting")),
        }
    }
    Ok(workers.into_iter().unzip())
}

/// Accepts until `shutdown` flips, spreading connections over `workers`. Returning drops the
/// listener (new clients are refused) and the workers' queues (each then drains).
///
/// A client is accepted first and then given a slot under `max_connections`: only a client
/// actually waiting is a reason to close idle connections (see `conns`). At most one accepted
/// client waits for its slot here; the others wait in the kernel's accept queue.
pub async fn accept(
    listener: TcpListener,
    queues: Vec<WorkerQueue>,
    shared: Arc<Shared>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let table = ConnTable::start(max_connections);
    let mut next = 0;
    loop {
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
        let slot = match table.try_slot() {
            Some(slot) => slot,
            None => tokio::select! {
                (slot, evicted) = table.slot() => {
                    shared
                        .metrics
                        .connections_closed
                        .with_label_values(&["evicted"])
                        .inc_by(evicted);
                    slot
                }
                _ = shutdown.changed() => return,
            },
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        shared.metrics.connections.inc();
        shared.metrics.connections_open.inc();
        let _ = queues[next].0.send(Accepted {
            stream,
            peer,
            conn: table.register(slot),
        });
        next = (next + 1) % queues.len();
    }
}

/// Bytes hyper may buffer from a client connection: a request head must fit (it is also capped
/// by `max_header_bytes`), and a body arrives in reads of up to this size. 256 KiB lets a 64 KiB
/// upload arrive in one read, which measured 18% faster than 64 KiB reads.
const READ_BUFFER: usize = 256 * 1024;

/// hyper's HTTP/1 header-count limit when none is configured.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The HTTP/1 and HTTP/2 connection settings, built once per worker.
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// Bound on the protocol sniff, which happens before hyper's own header timer starts.
    sniff_timeout: Duration,
}

impl Builders {
    fn new(limits: &ServerLimits) -> Builders {
        let mut h1 = http1::Builder::new();
        h1
            // hyper ignores header_read_timeout unless a timer is set.
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(READ_BUFFER.max(limits.max_header_bytes));
        // Set only when it differs from hyper's own limit of 100: an explicit limit makes hyper
        // initialise its header array on every request (measured ~1% of a small GET).
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            h1.max_headers(limits.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Builders {
            h1,
            h2,
            sniff_timeout: limits.header_read_timeout,
        }
    }
}

async fn run_worker(
    mut conns: mpsc::UnboundedReceiver<Accepted>,
    shared: Arc<Shared>,
    upstream: Upstream,
    limits: ServerLimits,
    drain: Duration,
    lag: prometheus::Gauge,
) -> bool {
    let lag_watch = tokio::spawn(crate::protect::overload::watch_lag(lag));
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
    let builders = Arc::new(Builders::new(&limits));
    let mut connections = Drain::default();
    while let Some(accepted) = conns.recv().await {
        let (shared, upstream, builders) = (shared.clone(), upstream.clone(), builders.clone());
        let watch = connections.watch(&accepted.conn.state);
        tokio::spawn(serve_client(accepted, shared, upstream, builders, watch));
    }
    let drained = tokio::time::timeout(drain, connections.shutdown())
        .await
        .is_ok();
    sweeper.abort();
    lag_watch.abort();
    drained
}

/// Serves one client connection to its end, then counts how it ended.
async fn serve_client(
    Accepted { stream, peer, conn }: Accepted,
    shared: Arc<Shared>,
    upstream: Upstream,
    builders: Arc<Builders>,
    mut watch: Watch,
) {
    let metrics = shared.metrics.clone();
    let count = |kind: &str| metrics.connection_errors.with_label_values(&[kind]).inc();
    let state = &conn.state;
    match TcpStream::from_std(stream) {
        Ok(mut stream) => {
            let _ = stream.set_nodelay(true);
            // A client that has not sent its first bytes yet is idle: it can be evicted.
            let sniffed = tokio::select! {
                biased;
                sniffed = tokio::time::timeout(builders.sniff_timeout, sniff(&mut stream)) => {
                    Some(sniffed)
                }
                () = watch.stopped() => None,
            };
            match sniffed {
                None => {
                    tokio::spawn(client_io::linger(stream));
                }
                Some(Err(_)) => count("header_timeout"),
                Some(Ok(Err(_))) => count("io"),
                Some(Ok(Ok((h2, replay)))) => {
                    let io = TokioIo::new(ClientIo::new(stream, replay, state.clone()));
                    let service = stack(shared, ConnInfo::new(peer.ip()), state.clone(), upstream);
                    // Each connection is pinned here and counted before it is dropped: the
                    // socket closes (and a lingering close starts) only after that, so whoever
                    // sees the connection end can read its metric.
                    if h2 {
                        let conn = watch.watch(builders.h2.serve_connection(io, service));
                        let conn = std::pin::pin!(conn);
                        // hyper has no HTTP/2 idle timeout: `drive_h2` keeps one.
                        let ending = conns::drive_h2(conn, state, builders.sniff_timeout).await;
                        if let Some(Err(e)) = ending.result {
                            count(connection_error_kind(&e));
                        }
                        if ending.idle_timeout {
                            metrics
                                .connections_closed
                                .with_label_values(&["idle_timeout"])
                                .inc();
                        }
                    } else {
                        let conn = watch.watch(builders.h1.serve_connection(io, service));
                        let mut conn = std::pin::pin!(conn);
                        if let Err(e) = conn.as_mut().await {
                            count(connection_error_kind(&e));
                        }
                    }
                }
            }
        }
        Err(e) => {
            warn_limited!("cannot adopt a connection: {e}");
            count("io");
        }
    }
    metrics.connections_open.dec();
    drop(conn);
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
