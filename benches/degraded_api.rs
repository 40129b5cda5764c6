//! The API-degrades-mid-surge scenario `benches/degraded.sh` measures (issue 15, item 1): a
//! mock vehicle API with a pool of workers, a fleet of vehicles posting telemetry batches
//! (bulk) through the guard, and an owner sending commands (critical) at a steady rate.
//!
//! Phases: `quiet` (commands only), `surge` (the fleet starts), `degraded` (the API loses 3 of
//! its 4 workers and the last one slows 3x). Each command's latency is recorded with the phase
//! it was sent in; the run prints command p50/p99 per phase, the API's bulk service time when
//! degraded, and the target of the issue: degraded p99 <= 1.5 x quiet p99 + one bulk service
//! time.
//!
//! `degraded.sh` builds it with `cargo bench --no-run` and runs it as
//! `degraded_api --api 127.0.0.1:PORT --guard http://127.0.0.1:PORT [--quiet-s N ...]`; the
//! guard must already be listening in front of `--api`. Everything stays on 127.0.0.1, and the
//! run ends by itself. Run by `cargo bench` without those flags, it says so and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> Result<u64, Error> {
    Ok(flag(args, name)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(default))
}

/// The mock API's size and speed.
#[derive(Clone, Copy)]
struct ApiConfig {
    workers: usize,
    /// Workers lost at the degradation.
    lost: usize,
    /// Service time multiplier of the workers left (x1000).
    slow_permille: u64,
    command: Duration,
    telemetry_overhead: Duration,
    /// Telemetry bytes one worker ingests per second.
    bytes_per_s: f64,
    queue_timeout: Duration,
}

struct Api {
    cfg: ApiConfig,
    workers: Semaphore,
    slow_permille: AtomicU64,
    /// Each command's arrival (body read) and its time in the API, queueing included: what of a
    /// command's latency the API itself accounts for.
    commands: Mutex<Vec<(Instant, Duration)>>,
}

impl Api {
    fn service_time(&self, command: bool, bytes: usize) -> Duration {
        let base = if command {
            self.cfg.command
        } else {
            self.cfg.telemetry_overhead
                + Duration::from_secs_f64(bytes as f64 / self.cfg.bytes_per_s)
        };
        base * self.slow_permille.load(Ordering::Relaxed) as u32 / 1000
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let command = req.uri().path().contains("/command/");
        let bytes = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => return status(StatusCode::BAD_REQUEST),
        };
        let arrived = Instant::now();
        let worker = tokio::time::timeout(self.cfg.queue_timeout, self.workers.acquire()).await;
        let Ok(Ok(_worker)) = worker else {
            return status(StatusCode::SERVICE_UNAVAILABLE);
        };
        tokio::time::sleep(self.service_time(command, bytes)).await;
        if command && let Ok(mut log) = self.commands.lock() {
            log.push((arrived, arrived.elapsed()));
        }
        status(StatusCode::OK)
    }

    /// The incident: `lost` workers fail (taken for good once they finish what they serve) and
    /// the rest slow down.
    async fn degrade(&self) {
        self.slow_permille
            .store(self.cfg.slow_permille, Ordering::Relaxed);
        if let Ok(p) = self.workers.acquire_many(self.cfg.lost as u32).await {
            p.forget();
        }
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

async fn run_api(api: Arc<Api>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.serve(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Quiet = 0,
    Surge = 1,
    Degraded = 2,
}

#[derive(Default)]
struct Samples {
    /// (phase, seconds since the phase began, latency, ok)
    commands: Vec<(Phase, f64, Duration, bool)>,
    bulk_sent: [u64; 3],
    bulk_ok: [u64; 3],
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// A 4 KiB-ish NDJSON batch of debug records.
fn batch(vin: usize) -> Bytes {
    let mut b = String::new();
    let mut i = 0;
    while b.len() < 4000 {
        b.push_str(&format!(
            "{{\"level\":\"debug\",\"msg\":\"sensor frame {i}\",\"vin\":\"5YJ3E1EA7KF{vin:06}\",\"soc\":0.{i:02}}}\n"
        ));
        i += 1;
    }
    Bytes::from(b)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(api_addr), Some(guard)) = (flag(&args, "--api"), flag(&args, "--guard")) else {
        println!("degraded_api: a degraded.sh target (--api ADDR --guard URL); nothing to bench");
        return Ok(());
    };
    let api_addr: SocketAddr = api_addr.parse()?;
    let quiet = Duration::from_secs(num(&args, "--quiet-s", 5)?);
    let surge = Duration::from_secs(num(&args, "--surge-s", 8)?);
    let degraded = Duration::from_secs(num(&args, "--degraded-s", 12)?);
    let settle = Duration::from_secs(num(&args, "--settle-s", 2)?);
    let vehicles = num(&args, "--vehicles", 80)? as usize;
    let think = Duration::from_millis(num(&args, "--think-ms", 20)?);
    let command_every = Duration::from_millis(num(&args, "--command-every-ms", 10)?);
    let cfg = ApiConfig {
        workers: 4,
        lost: 3,
        slow_permille: 3000,
        command: Duration::from_millis(num(&args, "--command-ms", 1)?),
        telemetry_overhead: Duration::from_millis(1),
        bytes_per_s: 625_000.0,
        queue_timeout: Duration::from_secs(2),
    };

    // The API on a thread of its own.
    let api = Arc::new(Api {
        cfg,
        workers: Semaphore::new(cfg.workers),
        slow_permille: AtomicU64::new(1000),
        commands: Mutex::new(Vec::new()),
    });
    let api_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = api_rt.block_on(TcpListener::bind(api_addr))?;
    let api_thread = api.clone();
    std::thread::spawn(move || api_rt.block_on(run_api(api_thread, listener)));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?;
        let samples = Arc::new(Mutex::new(Samples::default()));
        let phase = Arc::new(AtomicU64::new(Phase::Quiet as u64));
        let phase_start = Arc::new(Mutex::new(Instant::now()));
        let stop = Arc::new(AtomicBool::new(false));
        let current = |p: &AtomicU64| match p.load(Ordering::Relaxed) {
            0 => Phase::Quiet,
            1 => Phase::Surge,
            _ => Phase::Degraded,
        };
        // Wait for the guard to answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.get(format!("{guard}/")).send().await.is_err() {
            if Instant::now() > deadline {
                return Err::<(), Error>("the guard does not answer".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The owner: one command every `command_every`, each on its own task (open loop).
        let commands = {
            let (http, guard, samples, phase, phase_start, stop) = (
                http.clone(),
                guard.clone(),
                samples.clone(),
                phase.clone(),
                phase_start.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(command_every);
                let mut n = 0u64;
                let mut sent = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let (http, guard, samples) = (http.clone(), guard.clone(), samples.clone());
                    let p = current(&phase);
                    let since = phase_start.lock().map(|s| s.elapsed()).unwrap_or_default();
                    sent.spawn(async move {
                        let started = Instant::now();
                        let ok = http
                            .post(format!("{guard}/api/1/vehicles/{}/command/honk", n % 50))
                            .header("x-vehicle-id", format!("owner-{}", n % 50))
                            .body("{}")
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        let latency = started.elapsed();
                        if let Ok(mut s) = samples.lock() {
                            s.commands.push((p, since.as_secs_f64(), latency, ok));
                        }
                    });
                }
                // Commands still in flight end within their timeout.
                sent.join_all().await;
            })
        };

        tokio::time::sleep(quiet).await;
        // The surge: every vehicle posts a batch, waits `think`, and again.
        phase.store(Phase::Surge as u64, Ordering::Relaxed);
        if let Ok(mut s) = phase_start.lock() {
            *s = Instant::now();
        }
        let surge_at = Instant::now();
        let mut fleet = Vec::new();
        for v in 0..vehicles {
            let (http, guard, samples, phase, stop) = (
                http.clone(),
                guard.clone(),
                samples.clone(),
                phase.clone(),
                stop.clone(),
            );
            let body = batch(v);
            fleet.push(tokio::spawn(async move {
                // Spread the starts over one think time.
                tokio::time::sleep(think * v as u32 / vehicles.max(1) as u32).await;
                while !stop.load(Ordering::Relaxed) {
                    let p = current(&phase) as usize;
                    let ok = http
                        .post(format!("{guard}/api/1/telemetry/{v}"))
                        .header("x-vehicle-id", format!("vin-{v}"))
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if let Ok(mut s) = samples.lock() {
                        s.bulk_sent[p] += 1;
                        s.bulk_ok[p] += u64::from(ok);
                    }
                    tokio::time::sleep(if ok { think } else { think * 5 }).await;
                }
            }));
        }
        tokio::time::sleep(surge).await;
        phase.store(Phase::Degraded as u64, Ordering::Relaxed);
        if let Ok(mut s) = phase_start.lock() {
            *s = Instant::now();
        }
        let degraded_at = Instant::now();
        let degrading = api.clone();
        tokio::spawn(async move { degrading.degrade().await });
        tokio::time::sleep(degraded).await;
        stop.store(true, Ordering::Relaxed);
        let _ = commands.await;
        for f in fleet {
            let _ = f.await;
        }

        let s = samples.lock().map_err(|_| "poisoned")?;
        let api_log = api.commands.lock().map_err(|_| "poisoned")?;
        let api_p99 = |from: Instant, to: Option<Instant>| -> Duration {
            let mut v: Vec<Duration> = api_log
                .iter()
                .filter(|(at, _)| *at >= from && to.is_none_or(|t| *at < t))
                .map(|&(_, d)| d)
                .collect();
            percentile(&mut v, 0.99)
        };
        let pick = |phase: Phase, from: f64| -> (Vec<Duration>, usize) {
            let mut v = Vec::new();
            let mut failed = 0;
            for &(p, since, latency, ok) in &s.commands {
                if p == phase && since >= from {
                    v.push(latency);
                    failed += usize::from(!ok);
                }
            }
            (v, failed)
        };
        // Degraded by now: the API's own service time of a batch.
        let bulk_service = api.service_time(false, batch(0).len());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<18} {:>8} {:>7} {:>9} {:>9} {:>9} {:>10} {:>11}",
            "phase", "commands", "failed", "p50_ms", "p99_ms", "max_ms", "api_p99_ms", "bulk_ok/sent"
        );
        let mut p99s = Vec::new();
        let started = surge_at.checked_sub(quiet).unwrap_or(surge_at);
        for (name, phase, from, api_from, api_to) in [
            ("quiet", Phase::Quiet, 0.0, started, Some(surge_at)),
            ("surge", Phase::Surge, 0.0, surge_at, Some(degraded_at)),
            ("degraded", Phase::Degraded, 0.0, degraded_at, None),
            ("degraded_settled", Phase::Degraded, settle.as_secs_f64(), degraded_at + settle, None),
        ] {
            let (mut v, failed) = pick(phase, from);
            let n = v.len();
            let p50 = percentile(&mut v, 0.50);
            let p99 = percentile(&mut v, 0.99);
            let max = v.last().copied().unwrap_or_default();
            p99s.push(p99);
            println!(
                "{name:<18} {n:>8} {failed:>7} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>6}/{}",
                ms(p50),
                ms(p99),
                ms(max),
                ms(api_p99(api_from, api_to)),
                s.bulk_ok[phase as usize],
                s.bulk_sent[phase as usize],
            );
        }
        let target = p99s[0].mul_f64(1.5) + bulk_service;
        println!(
            "RESULT quiet_p99_ms={:.2} degraded_p99_ms={:.2} settled_p99_ms={:.2} bulk_service_ms={:.2} target_ms={:.2} ratio={:.2} settled_ratio={:.2}",
            ms(p99s[0]),
            ms(p99s[2]),
            ms(p99s[3]),
            ms(bulk_service),
            ms(target),
            p99s[2].as_secs_f64() / target.as_secs_f64(),
            p99s[3].as_secs_f64() / target.as_secs_f64(),
        );
        Ok(())
    })
}
