//! The mock vehicle API: a real hyper HTTP/1.1 server on loopback with a finite capacity, so it
//! slows down and then fails when fed too many bytes, the way the real outage's servers did.
//!
//! The model is a worker pool: every request (telemetry, commands and reads alike) needs one of
//! `workers` workers, taken in arrival order (tokio's semaphore is FIFO). A request that waits
//! longer than `queue_timeout` for a worker gets 503. A worker is held for a fixed overhead plus,
//! for telemetry, `bytes / per-worker byte rate`. The work is a tokio sleep, not CPU burn: the
//! demo shares two cores between fleet, guard and API, and only the API is meant to saturate.
//!
//! Everything reported is measured here as requests are served: bytes, records per level (each
//! accepted batch is scanned), latency from arrival to answer (queueing included), and worker
//! busy time.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::stats::{Histogram, PHASE_HEADER, PerPhase, Phase, lock};
use super::telemetry::{LevelCounts, Scan, scan_batch, scan_otlp};

/// How fast one worker ingests telemetry; the worker count follows from the capacity.
const BYTES_PER_WORKER_SECOND: u64 = 625_000;
/// Connections served at once; the fleet's own in-flight caps stay far below this.
const MAX_CONNECTIONS: usize = 4096;

/// The API's size and speed.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Telemetry bytes per second the API can ingest with every worker busy.
    pub capacity: u64,
    pub workers: usize,
    /// Longest wait for a worker before answering 503.
    pub queue_timeout: Duration,
    /// Worker time per telemetry batch on top of its bytes.
    pub telemetry_overhead: Duration,
    /// Worker time per command (the API talks to the car).
    pub command_cost: Duration,
    /// Worker time per vehicle_data read.
    pub read_cost: Duration,
    /// Largest body the API reads; larger ones get 413.
    pub max_body: usize,
}

impl BackendConfig {
    /// An API with `capacity` telemetry bytes/s, split over as many workers as that takes.
    pub fn with_capacity(capacity: u64) -> BackendConfig {
        let workers = (capacity as f64 / BYTES_PER_WORKER_SECOND as f64).round() as usize;
        BackendConfig {
            capacity: capacity.max(1),
            workers: workers.clamp(2, 256),
            queue_timeout: Duration::from_secs(2),
            telemetry_overhead: Duration::from_millis(1),
            command_cost: Duration::from_millis(10),
            read_cost: Duration::from_millis(3),
            max_body: 4 << 20,
        }
    }

    /// Worker time for one request of `kind` with a body of `bytes`.
    fn service_time(&self, kind: Kind, bytes: usize) -> Duration {
        match kind {
            Kind::Telemetry | Kind::OtlpLogs => {
                let per_worker = self.capacity as f64 / self.workers as f64;
                self.telemetry_overhead + Duration::from_secs_f64(bytes as f64 / per_worker)
            }
            Kind::Command => self.command_cost,
            Kind::Read => self.read_cost,
        }
    }
}

/// What the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `POST|PUT /api/1/telemetry/...`: an NDJSON batch.
    Telemetry,
    /// `POST /v1/logs`: an OTLP protobuf batch (the OTLP/HTTP logs path).
    OtlpLogs,
    /// `POST /api/1/vehicles/{id}/command/{command}`.
    Command,
    /// `GET /api/1/vehicles/{id}/vehicle_data`.
    Read,
}

impl Kind {
    fn of(method: &Method, path: &str) -> Option<Kind> {
        if path == "/v1/logs" {
            return (*method == Method::POST).then_some(Kind::OtlpLogs);
        }
        if path == "/api/1/telemetry" || path.starts_with("/api/1/telemetry/") {
            return matches!(*method, Method::POST | Method::PUT).then_some(Kind::Telemetry);
        }
        let rest = path.strip_prefix("/api/1/vehicles/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::POST, [id, "command", cmd]) if !id.is_empty() && !cmd.is_empty() => {
                Some(Kind::Command)
            }
            (&Method::GET, [id, "vehicle_data"]) if !id.is_empty() => Some(Kind::Read),
            _ => None,
        }
    }
}

/// Requests answered 200, and requests shed with 503 after waiting too long for a worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct Served {
    pub ok: u64,
    pub shed: u64,
}

/// What the API did with the requests of one phase (the phase they were generated in).
#[derive(Debug, Default, Clone)]
pub struct PhaseWork {
    pub telemetry: Served,
    pub commands: Served,
    pub reads: Served,
    /// Telemetry bytes and records processed (accepted batches only).
    pub bytes: u64,
    pub records: u64,
    pub levels: LevelCounts,
    /// Arrival to answer, queueing included, for every request answered 200 or 503.
    pub latency: Histogram,
}

/// What the API finished during one progress tick, whatever phase the requests came from.
#[derive(Debug, Default)]
pub struct TickWork {
    pub bytes: u64,
    pub records: u64,
    pub latency: Histogram,
    /// Worker-seconds spent serving.
    pub busy: f64,
}

/// Integrates the number of busy workers over time, so utilization is measured, not inferred.
#[derive(Debug)]
struct BusyMeter {
    busy: u32,
    since: Instant,
    worker_seconds: f64,
}

impl BusyMeter {
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        self.worker_seconds += f64::from(self.busy) * dt;
        self.since = now;
    }
}

#[derive(Debug)]
struct Stats {
    phases: PerPhase<PhaseWork>,
    tick: TickWork,
    busy: BusyMeter,
}

struct State {
    cfg: BackendConfig,
    workers: Semaphore,
    /// Workers still in service (see [`Backend::lose_workers`]).
    online: AtomicUsize,
    stats: Mutex<Stats>,
}

impl State {
    fn record(&self, kind: Kind, phase: Phase, outcome: Outcome, latency: Duration) {
        let mut s = lock(&self.stats);
        let work = &mut s.phases[phase];
        let served = match kind {
            Kind::Telemetry | Kind::OtlpLogs => &mut work.telemetry,
            Kind::Command => &mut work.commands,
            Kind::Read => &mut work.reads,
        };
        match outcome {
            Outcome::Shed => served.shed += 1,
            Outcome::Ok { .. } => served.ok += 1,
        }
        work.latency.record(latency);
        if let Outcome::Ok { bytes, scan } = outcome {
            work.bytes += bytes;
            work.records += scan.records;
            work.levels.add(&scan.levels);
            s.tick.bytes += bytes;
            s.tick.records += scan.records;
        }
        s.tick.latency.record(latency);
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok { bytes: u64, scan: Scan },
    Shed,
}

/// Holds a worker's place in the busy meter; dropping it (also when hyper drops the request
/// because the client went away) marks the worker idle again.
struct Busy<'a>(&'a State);

impl<'a> Busy<'a> {
    fn enter(state: &'a State) -> Busy<'a> {
        let mut s = lock(&state.stats);
        s.busy.advance(Instant::now());
        s.busy.busy += 1;
        Busy(state)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.0.stats);
        s.busy.advance(Instant::now());
        s.busy.busy = s.busy.busy.saturating_sub(1);
    }
}

/// A running mock API. Dropping it stops the server and closes its connections.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Backend {
    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start(cfg: BackendConfig) -> io::Result<Backend> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            workers: Semaphore::new(cfg.workers),
            online: AtomicUsize::new(cfg.workers),
            cfg,
            stats: Mutex::new(Stats {
                phases: PerPhase::default(),
                tick: TickWork::default(),
                busy: BusyMeter {
                    busy: 0,
                    since: Instant::now(),
                    worker_seconds: 0.0,
                },
            }),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Backend {
            addr,
            state,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes `n` workers out of service for good, as a failed node would: each leaves when it
    /// next becomes free (in turn with the requests queued for a worker). The API's capacity
    /// falls in proportion. Returns once all `n` have left.
    pub async fn lose_workers(&self, n: usize) {
        let n = n.min(self.online_workers().saturating_sub(1));
        for _ in 0..n {
            match self.state.workers.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
            self.state.online.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Workers in service now.
    pub fn online_workers(&self) -> usize {
        self.state.online.load(Ordering::Relaxed)
    }

    /// What was finished since the last call.
    pub fn take_tick(&self) -> TickWork {
        let mut s = lock(&self.state.stats);
        s.busy.advance(Instant::now());
        let busy = std::mem::take(&mut s.busy.worker_seconds);
        let mut tick = std::mem::take(&mut s.tick);
        tick.busy = busy;
        tick
    }

    /// Totals per phase so far.
    pub fn totals(&self) -> PerPhase<PhaseWork> {
        lock(&self.state.stats).phases.clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // The accept task owns the connection tasks; aborting it drops and aborts them too.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, state.clone()));
                }
                // Out of file descriptors or similar: give connections time to close.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(state.clone(), req));
    // A connection error (client gone mid-request) only ends this connection.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let phase = Phase::from_header(req.headers().get(PHASE_HEADER).map(|v| v.as_bytes()));
    let Some(kind) = Kind::of(req.method(), req.uri().path()) else {
        return Ok(reply(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#));
    };
    // The body is read before queueing for a worker, like a server whose I/O layer buffers
    // requests for its worker pool; the caps on the fleet side bound how much is buffered.
    let body = match read_body(req.into_body(), state.cfg.max_body).await {
        Ok(body) => body,
        Err(status) => return Ok(reply(status, r#"{"error":"bad_body"}"#)),
    };
    Ok(work(&state, kind, phase, body, arrived).await)
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, StatusCode> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

/// Waits for a worker (or sheds), then does the request's work.
async fn work(
    state: &State,
    kind: Kind,
    phase: Phase,
    body: Bytes,
    arrived: Instant,
) -> Response<Full<Bytes>> {
    let cfg = &state.cfg;
    let Ok(Ok(_permit)) = tokio::time::timeout(cfg.queue_timeout, state.workers.acquire()).await
    else {
        state.record(kind, phase, Outcome::Shed, arrived.elapsed());
        return reply(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"overloaded"}"#);
    };
    let busy = Busy::enter(state);
    let scan = match kind {
        Kind::Telemetry => scan_batch(&body),
        Kind::OtlpLogs => scan_otlp(&body),
        Kind::Command | Kind::Read => Scan::default(),
    };
    tokio::time::sleep(cfg.service_time(kind, body.len())).await;
    drop(busy);
    let outcome = Outcome::Ok {
        bytes: body.len() as u64,
        scan,
    };
    state.record(kind, phase, outcome, arrived.elapsed());
    match kind {
        Kind::Telemetry => reply(
            StatusCode::OK,
            &format!(r#"{{"accepted":{}}}"#, scan.records),
        ),
        // An empty ExportLogsServiceResponse: full success.
        Kind::OtlpLogs => reply(StatusCode::OK, ""),
        Kind::Command => reply(StatusCode::OK, r#"{"response":{"result":true}}"#),
        Kind::Read => reply(
            StatusCode::OK,
            r#"{"response":{"state":"online","charge_state":{"battery_level":71},"vehicle_state":{"locked":true}}}"#,
        ),
    }
}

fn reply(status: StatusCode, json: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(json.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_recognized() {
        let k = |m: Method, p: &str| Kind::of(&m, p);
        assert_eq!(
            k(Method::POST, "/api/1/telemetry/logs"),
            Some(Kind::Telemetry)
        );
        assert_eq!(k(Method::GET, "/api/1/telemetry/logs"), None);
        assert_eq!(
            k(Method::POST, "/api/1/vehicles/7/command/unlock"),
            Some(Kind::Command)
        );
        assert_eq!(
            k(Method::GET, "/api/1/vehicles/7/vehicle_data"),
            Some(Kind::Read)
        );
        assert_eq!(k(Method::POST, "/api/1/vehicles/7/command/"), None);
        assert_eq!(k(Method::GET, "/api/1/vehicles//vehicle_data"), None);
        assert_eq!(k(Method::GET, "/api/1/telemetryx"), None);
    }

    #[test]
    fn capacity_sets_workers_and_service_time() {
        let cfg = BackendConfig::with_capacity(10_000_000);
        assert_eq!(cfg.workers, 16);
        // 16 workers share 10 MB/s: 62.5 KB takes one worker 100 ms (+ overhead).
        let t = cfg.service_time(Kind::Telemetry, 62_500);
        assert_eq!(t, Duration::from_millis(101));
        assert_eq!(cfg.service_time(Kind::Command, 0), cfg.command_cost);
        assert_eq!(BackendConfig::with_capacity(1).workers, 2);
    }
}
