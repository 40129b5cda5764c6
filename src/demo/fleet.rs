//! The fleet simulator: vehicles uploading telemetry and owners sending commands, over real HTTP
//! (a pooled keep-alive client, [`super::client`]), measured on the client side.
//!
//! Vehicles are open loop, like firmware on a timer: a vehicle uploads on schedule whether or not
//! its last upload came back, up to `MAX_IN_FLIGHT_PER_VEHICLE` at once; beyond that the batch
//! is dropped in the vehicle and counted. Like OpenTelemetry's OTLP exporters, a vehicle retries
//! a batch answered 429, 503 or 504 (or not answered in time), after `Retry-After` when the
//! answer has one and after an exponential backoff otherwise; a batch waiting for its retry
//! keeps its place in the vehicle's bounded queue. At `surge_at` the verbosity change rolls out over
//! `ROLLOUT`: each vehicle switches to debug and sends `surge_factor` times its normal volume,
//! in bigger and more frequent batches. Owners send commands and state reads at a steady rate with
//! a client timeout, which is what "locked out of the car" is measured by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::client::Client;
use super::rng::Rng;
use super::stats::{Histogram, PHASE_HEADER, PerPhase, Phase, lock};
use super::telemetry::{
    BatchSpec, EPOCH_MS, LevelCounts, LevelMix, MAX_RECORD_BYTES, Templates, write_batch,
    write_otlp_batch,
};
use crate::proxy::UpstreamError;

/// A healthy vehicle uploads one batch of `NORMAL_RECORDS` records (~15 KB) per second.
const NORMAL_INTERVAL: Duration = Duration::from_secs(1);
const NORMAL_RECORDS: usize = 50;
/// In the surge, batches are this many times bigger (and the rest of the surge factor comes
/// from sending them more often), so a factor of 20 gives ~45 KB batches, 6.7 per second.
const SURGE_BATCH_GROWTH: u32 = 3;
/// Bounds one vehicle's concurrent uploads. A simulated vehicle stands for a slice of a large
/// fleet, so it may have several uploads in flight: 16 covers a surging vehicle's 6.7 batches/s
/// for the ~2 s a saturated API takes to answer, so the surge reaches the API in full, as it
/// would from a real fleet, and memory stays bounded (16 x ~45 KB per vehicle).
const MAX_IN_FLIGHT_PER_VEHICLE: usize = 16;
/// Bounds the fleet's concurrent uploads (and so its sockets) whatever `--vehicles` says.
const MAX_IN_FLIGHT_UPLOADS: usize = 2048;
/// Bounds owners' concurrent requests; at 30/s with a 3 s timeout at most ~90 are needed.
const MAX_IN_FLIGHT_OWNERS: usize = 256;
/// How long a vehicle waits for an upload's answer.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries, as OpenTelemetry's OTLP exporters do them, with the demo's compressed time: the
/// SDKs' 1 s initial backoff doubling to 5 s, over at most 300 s, becomes 250 ms doubling to
/// 2 s, over at most `RETRY_FOR` from the batch's first attempt; a `Retry-After` is honoured
/// (up to `MAX_RETRY_AFTER`). Each wait is jittered by ±20%, so refused vehicles do not come
/// back in step.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));
const RETRY_FOR: Duration = Duration::from_secs(10);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// No retry starts later than this after the run's end: the report is not held up for long.
const RETRY_DRAIN: Duration = Duration::from_secs(3);
/// How long an owner's app waits before telling the owner it failed.
const OWNER_TIMEOUT: Duration = Duration::from_secs(3);
/// The verbosity change reaches the whole fleet within this window, like a config push.
const ROLLOUT: Duration = Duration::from_secs(1);
/// Every third owner request is a state read; the rest are commands.
const READ_EVERY: u64 = 3;
const COMMANDS: [&str; 6] = [
    "door_unlock",
    "door_lock",
    "honk_horn",
    "flash_lights",
    "auto_conditioning_start",
    "remote_start_drive",
];

/// The run's timeline. Every request is stamped with the phase it was generated in.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub surge_at: Instant,
    pub end: Instant,
}

impl Clock {
    pub fn phase_at(&self, t: Instant) -> Phase {
        if t < self.surge_at {
            Phase::Normal
        } else {
            Phase::Surge
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub vehicles: usize,
    pub surge_factor: u32,
    pub clock: Clock,
    /// Where requests go: the API itself, or the guard in front of it.
    pub target: std::net::SocketAddr,
    pub seed: u64,
    /// Owners' requests per second, commands and reads together.
    pub owner_rate: f64,
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 429 from the guard.
    Throttled,
    /// 413 from the guard.
    TooLarge,
    /// 503 from the API: no worker within its queue timeout.
    Shed,
    /// 503 from the guard: no upstream slot in time, or bulk shed by the brownout.
    GuardShed,
    /// No answer within the client's timeout (or 504 from the guard).
    TimedOut,
    /// Any other status or a transport error.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Throttled,
        Outcome::TooLarge,
        Outcome::Shed,
        Outcome::GuardShed,
        Outcome::TimedOut,
        Outcome::Failed,
    ];
    pub const COUNT: usize = Outcome::ALL.len();

    fn of(status: StatusCode, by_guard: bool) -> Outcome {
        match status.as_u16() {
            200..=299 => Outcome::Ok,
            429 => Outcome::Throttled,
            413 => Outcome::TooLarge,
            503 if by_guard => Outcome::GuardShed,
            503 => Outcome::Shed,
            504 => Outcome::TimedOut,
            _ => Outcome::Failed,
        }
    }

    /// Worth sending again, as OTLP exporters judge it: 429, 503, 504 or no answer in time.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::Throttled | Outcome::Shed | Outcome::GuardShed | Outcome::TimedOut
        )
    }

    /// Answered by the guard itself.
    pub fn is_guard_rejection(self) -> bool {
        matches!(
            self,
            Outcome::Throttled | Outcome::TooLarge | Outcome::GuardShed
        )
    }
}

/// A count per outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes(pub [u64; Outcome::COUNT]);

impl Outcomes {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl std::ops::Index<Outcome> for Outcomes {
    type Output = u64;
    fn index(&self, o: Outcome) -> &u64 {
        &self.0[o as usize]
    }
}

impl std::ops::IndexMut<Outcome> for Outcomes {
    fn index_mut(&mut self, o: Outcome) -> &mut u64 {
        &mut self.0[o as usize]
    }
}

/// Owners' requests of one kind: how they ended and how long they took (failures included,
/// a timeout counting as the full timeout).
#[derive(Debug, Default, Clone)]
pub struct OwnerStats {
    pub outcomes: Outcomes,
    pub latency: Histogram,
}

/// What the fleet did in one phase (requests counted in the phase they were generated in).
#[derive(Debug, Default, Clone)]
pub struct FleetPhase {
    /// Upload outcomes, for batches that were sent.
    pub batches: Outcomes,
    /// Batches dropped in the vehicle because its uploads were all in flight.
    pub dropped: u64,
    /// Upload attempts beyond each batch's first.
    pub retries: u64,
    /// Batches the guard refused (429, 413 or 503) on their first attempt.
    pub first_refused: u64,
    /// Records of the batches that never got a 2xx: dropped in the vehicle, or refused (or
    /// timed out) on every attempt. Records the guard downsampled out of an accepted batch are
    /// not in here: those were delivered as the policy says.
    pub lost: LevelCounts,
    /// Records generated, whether sent or dropped.
    pub records: LevelCounts,
    /// Telemetry bytes generated, whether sent or dropped.
    pub bytes: u64,
    pub commands: OwnerStats,
    pub reads: OwnerStats,
}

/// What completed during one progress tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct FleetTick {
    pub commands_ok: u64,
    pub commands: u64,
    /// Requests of any kind answered 429 or 413 by the guard.
    pub guard_rejections: u64,
}

#[derive(Debug, Default)]
pub struct FleetStats {
    phases: PerPhase<FleetPhase>,
    tick: FleetTick,
}

/// The fleet's measurements, shared with the tasks that record them.
#[derive(Debug, Default, Clone)]
pub struct FleetMeter(Arc<Mutex<FleetStats>>);

impl FleetMeter {
    pub fn take_tick(&self) -> FleetTick {
        std::mem::take(&mut lock(&self.0).tick)
    }

    pub fn totals(&self) -> PerPhase<FleetPhase> {
        lock(&self.0).phases.clone()
    }

    fn generated(&self, phase: Phase, bytes: usize, records: &LevelCounts, dropped: bool) {
        let mut s = lock(&self.0);
        let p = &mut s.phases[phase];
        p.bytes += bytes as u64;
        p.records.add(records);
        if dropped {
            p.dropped += 1;
            p.lost.add(records);
        }
    }

    /// One attempt's answer: the batch's `first`, and whether it will be sent again.
    fn attempted(&self, phase: Phase, outcome: Outcome, first: bool, retry: bool) {
        let mut s = lock(&self.0);
        s.tick.guard_rejections += u64::from(outcome.is_guard_rejection());
        let p = &mut s.phases[phase];
        p.retries += u64::from(retry);
        p.first_refused += u64::from(first && outcome.is_guard_rejection());
    }

    /// A batch's final outcome, after its retries.
    fn uploaded(&self, phase: Phase, outcome: Outcome, records: &LevelCounts) {
        let mut s = lock(&self.0);
        let p = &mut s.phases[phase];
        p.batches[outcome] += 1;
        if outcome != Outcome::Ok {
            p.lost.add(records);
        }
    }

    fn owner_done(&self, phase: Phase, action: Action, outcome: Outcome, latency: Duration) {
        let mut s = lock(&self.0);
        let p = &mut s.phases[phase];
        let stats = match action {
            Action::Command(_) => &mut p.commands,
            Action::Read => &mut p.reads,
        };
        stats.outcomes[outcome] += 1;
        stats.latency.record(latency);
        s.tick.guard_rejections += u64::from(outcome.is_guard_rejection());
        if let Action::Command(_) = action {
            s.tick.commands += 1;
            s.tick.commands_ok += u64::from(outcome == Outcome::Ok);
        }
    }
}

/// What every task of the fleet shares.
struct Ctx {
    cfg: FleetConfig,
    /// `Host` of every request: the target's address.
    host: HeaderValue,
    client: Client,
    meter: FleetMeter,
    templates: Templates,
    uploads: Arc<Semaphore>,
}

/// Runs the fleet until `clock.end`, then waits for every request still in flight (each ends
/// within its client timeout).
pub async fn run(cfg: FleetConfig, meter: FleetMeter) {
    // An address always renders as a valid header value.
    let host = HeaderValue::from_str(&cfg.target.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    let ctx = Arc::new(Ctx {
        host,
        client: Client::new(cfg.target),
        templates: Templates::new(&mut Rng::new(cfg.seed, u64::MAX)),
        uploads: Arc::new(Semaphore::new(MAX_IN_FLIGHT_UPLOADS)),
        meter,
        cfg,
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(owners(ctx.clone()));
    for id in 0..ctx.cfg.vehicles {
        tasks.spawn(vehicle(ctx.clone(), id));
    }
    while tasks.join_next().await.is_some() {}
}

/// The vehicle's identification number, also its client key (`x-vehicle-id`).
fn vin(id: usize) -> String {
    format!("5YJ3E7EB0KF{id:06}")
}

/// How a vehicle uploads in its current mode.
struct Cadence {
    interval: Duration,
    records: usize,
    mix: LevelMix,
}

impl Cadence {
    fn normal() -> Cadence {
        Cadence {
            interval: NORMAL_INTERVAL,
            records: NORMAL_RECORDS,
            mix: LevelMix::NORMAL,
        }
    }

    fn surge(factor: u32) -> Cadence {
        let growth = SURGE_BATCH_GROWTH.min(factor).max(1);
        Cadence {
            interval: NORMAL_INTERVAL.mul_f64(f64::from(growth) / f64::from(factor.max(1))),
            records: NORMAL_RECORDS * growth as usize,
            mix: LevelMix::surge(factor),
        }
    }
}

async fn vehicle(ctx: Arc<Ctx>, id: usize) {
    let clock = ctx.cfg.clock;
    let mut rng = Rng::new(ctx.cfg.seed, id as u64);
    let vin = vin(id);
    // A VIN is ASCII, so this cannot fail; if it did, the vehicle would stay silent.
    let Ok(key) = HeaderValue::from_str(&vin) else {
        return;
    };
    // Every fourth vehicle runs an OpenTelemetry SDK and exports OTLP protobuf; the rest
    // upload NDJSON.
    let otlp = id % 4 == 3;
    let switch_at = clock.surge_at + ROLLOUT.mul_f64(rng.unit());
    let (normal, surge) = (Cadence::normal(), Cadence::surge(ctx.cfg.surge_factor));
    // Vehicles start at random points of their cycle, as a real fleet does.
    let mut next = clock.start + NORMAL_INTERVAL.mul_f64(rng.unit());
    let mut uploads = JoinSet::new();
    while next < clock.end {
        tokio::select! {
            () = sleep_until(next) => {}
            Some(_) = uploads.join_next(), if !uploads.is_empty() => continue,
        }
        let cadence = if next >= switch_at { &surge } else { &normal };
        let phase = clock.phase_at(next);
        let ts = EPOCH_MS + next.duration_since(clock.start).as_millis() as u64;
        let (body, records) = batch(&ctx, otlp, &mut rng, &vin, ts, cadence);
        let upload = Upload {
            key: key.clone(),
            phase,
            otlp,
            body,
            records,
            jitter: rng.below(u64::MAX),
        };
        send_or_drop(&ctx, &mut uploads, upload);
        next += cadence.interval;
        // A vehicle that fell behind (an overloaded machine) skips ticks instead of bursting.
        next = next.max(Instant::now());
    }
    while uploads.join_next().await.is_some() {}
}

/// One batch on its way.
struct Upload {
    key: HeaderValue,
    phase: Phase,
    otlp: bool,
    body: Bytes,
    records: LevelCounts,
    /// Seeds the jitter of this batch's retries.
    jitter: u64,
}

/// Starts uploading a batch, or drops it when the vehicle (or the fleet) has too many uploads in
/// flight; either way the batch counts as generated.
fn send_or_drop(ctx: &Arc<Ctx>, uploads: &mut JoinSet<()>, u: Upload) {
    let permit = (uploads.len() < MAX_IN_FLIGHT_PER_VEHICLE)
        .then(|| ctx.uploads.clone().try_acquire_owned().ok())
        .flatten();
    ctx.meter
        .generated(u.phase, u.body.len(), &u.records, permit.is_none());
    if let Some(permit) = permit {
        let ctx = ctx.clone();
        uploads.spawn(async move {
            let outcome = upload_with_retries(&ctx, &u).await;
            ctx.meter.uploaded(u.phase, outcome, &u.records);
            drop(permit);
        });
    }
}

fn batch(
    ctx: &Ctx,
    otlp: bool,
    rng: &mut Rng,
    vin: &str,
    ts_ms: u64,
    cadence: &Cadence,
) -> (Bytes, LevelCounts) {
    let spec = BatchSpec {
        vin,
        ts_ms,
        records: cadence.records,
        mix: cadence.mix,
    };
    let mut counts = LevelCounts::default();
    if otlp {
        let buf = write_otlp_batch(rng, &spec, &mut counts);
        return (Bytes::from(buf), counts);
    }
    let mut buf = Vec::with_capacity(cadence.records * MAX_RECORD_BYTES);
    write_batch(&mut buf, &ctx.templates, rng, &spec, &mut counts);
    (Bytes::from(buf), counts)
}

/// Uploads a batch, retrying as an OTLP exporter does (see [`BACKOFF`]); returns the last
/// attempt's outcome.
async fn upload_with_retries(ctx: &Ctx, u: &Upload) -> Outcome {
    let first = Instant::now();
    let mut rng = Rng::new(ctx.cfg.seed, u.jitter);
    let mut backoff = BACKOFF.0;
    let mut first_attempt = true;
    loop {
        let (outcome, retry_after) = upload(ctx, u).await;
        let wait = retry_after.unwrap_or(backoff).min(MAX_RETRY_AFTER);
        let wait = wait.mul_f64(0.8 + 0.4 * rng.unit());
        let at = Instant::now() + wait;
        let retry = outcome.is_retryable()
            && at <= first + RETRY_FOR
            && at <= ctx.cfg.clock.end + RETRY_DRAIN;
        ctx.meter.attempted(u.phase, outcome, first_attempt, retry);
        if !retry {
            return outcome;
        }
        first_attempt = false;
        sleep_until(at).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

async fn upload(ctx: &Ctx, u: &Upload) -> (Outcome, Option<Duration>) {
    let (path, content_type) = match u.otlp {
        true => ("/v1/logs", "application/x-protobuf"),
        false => ("/api/1/telemetry/logs", "application/x-ndjson"),
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, ctx.host.clone())
        .header(header::CONTENT_TYPE, content_type)
        .header("x-vehicle-id", u.key.clone())
        .header(PHASE_HEADER, u.phase.as_str())
        .body(Full::new(u.body.clone()));
    match req {
        Ok(req) => exchange(&ctx.client, req, UPLOAD_TIMEOUT).await,
        Err(_) => (Outcome::Failed, None),
    }
}

/// Sends `req` and reads the whole answer, within `limit`: how it ended, and its `Retry-After`.
async fn exchange(
    client: &Client,
    req: Request<Full<Bytes>>,
    limit: Duration,
) -> (Outcome, Option<Duration>) {
    // The pool bounds the wait for response headers; the outer timeout bounds the body too.
    match tokio::time::timeout(limit, client.exchange(req, limit)).await {
        Ok(Ok(answer)) => (
            Outcome::of(answer.status, answer.by_guard),
            answer.retry_after,
        ),
        Ok(Err(UpstreamError::Timeout)) | Err(_) => (Outcome::TimedOut, None),
        Ok(Err(_)) => (Outcome::Failed, None),
    }
}

/// What an owner does.
#[derive(Debug, Clone, Copy)]
enum Action {
    Command(&'static str),
    Read,
}

/// Owners of the whole fleet: one request every `1 / owner_rate` seconds to a random vehicle.
async fn owners(ctx: Arc<Ctx>) {
    let clock = ctx.cfg.clock;
    let mut rng = Rng::new(ctx.cfg.seed, u64::MAX - 1);
    let period = Duration::from_secs_f64(1.0 / ctx.cfg.owner_rate.max(0.1));
    let mut next = clock.start + period / 2;
    let mut in_flight = JoinSet::new();
    let mut n: u64 = 0;
    while next < clock.end {
        tokio::select! {
            () = sleep_until(next) => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        }
        n += 1;
        let action = if n.is_multiple_of(READ_EVERY) {
            Action::Read
        } else {
            Action::Command(COMMANDS[rng.below(COMMANDS.len() as u64) as usize])
        };
        let vehicle = rng.below(ctx.cfg.vehicles.max(1) as u64) as usize;
        let phase = clock.phase_at(next);
        if in_flight.len() < MAX_IN_FLIGHT_OWNERS {
            let ctx = ctx.clone();
            in_flight.spawn(async move { owner_request(&ctx, action, vehicle, phase).await });
        } else {
            // The app could not even send: that owner is locked out too.
            ctx.meter
                .owner_done(phase, action, Outcome::Failed, Duration::ZERO);
        }
        next += period;
        next = next.max(Instant::now());
    }
    while in_flight.join_next().await.is_some() {}
}

async fn owner_request(ctx: &Ctx, action: Action, vehicle: usize, phase: Phase) {
    let started = Instant::now();
    let (method, path, body) = match action {
        Action::Command(cmd) => (
            Method::POST,
            format!("/api/1/vehicles/{vehicle}/command/{cmd}"),
            Bytes::from_static(br#"{"source":"owner-app"}"#),
        ),
        Action::Read => (
            Method::GET,
            format!("/api/1/vehicles/{vehicle}/vehicle_data"),
            Bytes::new(),
        ),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, ctx.host.clone())
        .header(header::CONTENT_TYPE, "application/json")
        // The app acts for one car, and is budgeted as that car on the critical routes.
        .header("x-vehicle-id", vin(vehicle))
        .header(PHASE_HEADER, phase.as_str())
        .body(Full::new(body));
    let outcome = match req {
        Ok(req) => exchange(&ctx.client, req, OWNER_TIMEOUT).await.0,
        Err(_) => Outcome::Failed,
    };
    ctx.meter
        .owner_done(phase, action, outcome, started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_cadence_multiplies_volume_by_the_factor() {
        let (n, s) = (Cadence::normal(), Cadence::surge(20));
        let per_s = |c: &Cadence| c.records as f64 / c.interval.as_secs_f64();
        assert!((per_s(&s) / per_s(&n) - 20.0).abs() < 1e-9);
        assert!(s.records > n.records && s.interval < n.interval);
        let one = Cadence::surge(1);
        assert_eq!((one.records, one.interval), (n.records, n.interval));
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(Outcome::of(StatusCode::OK, false), Outcome::Ok);
        assert_eq!(
            Outcome::of(StatusCode::TOO_MANY_REQUESTS, true),
            Outcome::Throttled
        );
        assert_eq!(
            Outcome::of(StatusCode::PAYLOAD_TOO_LARGE, true),
            Outcome::TooLarge
        );
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, false),
            Outcome::Shed
        );
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, true),
            Outcome::GuardShed
        );
        assert_eq!(Outcome::of(StatusCode::BAD_GATEWAY, false), Outcome::Failed);
        assert!(Outcome::Throttled.is_guard_rejection() && !Outcome::Shed.is_guard_rejection());
        assert_eq!(vin(17), "5YJ3E7EB0KF000017");
    }
}
