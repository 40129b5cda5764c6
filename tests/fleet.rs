//! Fleet-wide budgets against real `redis-server` processes: several guard processes share one
//! budget through Redis, and keep serving (at their local share) while Redis is killed, hung,
//! restarted empty or not there yet.
//!
//! redis-server comes from Debian's `redis-server` package, which `.ci/run` installs. The tests
//! are marked ignored so that a plain `cargo test` lists them as ignored, naming what they
//! need; `cargo test -- --include-ignored` (what `.ci/run` runs) runs them, and then a missing
//! redis-server is a failure that says how to install it. Each test starts its own Redis on a
//! free loopback port, with persistence off, and its own guards; traffic goes to loopback only
//! and every load phase has a fixed length.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{
    GuardProcess, TestGuard, TestUpstream, client, json, metric_value, poll_within, require_program,
};

const NEEDS: &str =
    "redis-server: install it with `apt-get install redis-server` (Debian's package)";

fn require_redis() {
    require_program("redis-server", &["--version"], NEEDS);
}

/// A redis-server on a loopback port, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Redis {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::yield_now();
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(200))?;
        Ok(c)
    }

    fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE")
            .query(&mut self.connection().unwrap())
            .unwrap()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A SIGSTOPped server must be continued to die promptly on SIGKILL's reap.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One guard process in the fleet.
struct Guard {
    _process: GuardProcess,
    url: String,
    admin: String,
}

impl Guard {
    async fn start(policy: &std::path::Path, upstream: &str, redis_url: &str) -> Guard {
        let mut process = GuardProcess::spawn([
            "serve",
            "--policy",
            policy.to_str().unwrap(),
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--fleet-redis",
            redis_url,
        ]);
        let (started, _) = process.wait_for("verbosity-guard listening").await;
        let addr = |f: &str| format!("http://{}", started["fields"][f].as_str().unwrap());
        Guard {
            url: addr("proxy_addr"),
            admin: addr("admin_addr"),
            _process: process,
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, name, labels).unwrap_or(0.0)
    }

    async fn mode_is(&self, mode: &str) -> bool {
        self.metric(
            "verbosity_guard_fleet_mode",
            &[("route", "commands"), ("mode", mode)],
        )
        .await
            == 1.0
    }
}

/// Starts `n` guards on `policy` against one upstream and one Redis URL, and waits until all
/// are in `mode`.
async fn fleet(
    policy: &str,
    n: usize,
    redis_url: &str,
    mode: &str,
) -> (Vec<Guard>, TestUpstream, tempfile::TempDir) {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    std::fs::write(&file, policy).unwrap();
    let mut guards = Vec::new();
    for _ in 0..n {
        guards.push(Guard::start(&file, &up.url, redis_url).await);
    }
    for g in &guards {
        let ok = poll_within(Duration::from_secs(10), async || g.mode_is(mode).await).await;
        assert!(ok, "guard {} did not reach {mode} mode", g.admin);
    }
    (guards, up, dir)
}

fn policy(payload: &str) -> String {
    format!(
        "version: 1
fleet: {{ pods: 4 }}
client_key: {{ header: x-vehicle-id }}
routes:
  - name: commands
    match: {{ path: /commands }}
    priority: critical
    payload:
{payload}
  - name: default
    match: {{ path_prefix: / }}
"
    )
}

/// What one paced sender saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    server_error: AtomicU64,
    other: AtomicU64,
    ok_bytes: AtomicU64,
    /// Latency of every 200, in µs, for percentiles.
    latencies: std::sync::Mutex<Vec<u64>>,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    fn server_errors(&self) -> u64 {
        self.server_error.load(Ordering::Relaxed)
    }
    fn p99(&self) -> Duration {
        let mut l = self.latencies.lock().unwrap().clone();
        l.sort_unstable();
        Duration::from_micros(l.get(l.len() * 99 / 100).copied().unwrap_or(0))
    }
}

/// Sends `rate` requests a second to `url` for `secs` seconds, paced, one in flight per tick;
/// `body` bytes each (POST when non-empty), with key `key(i)`.
async fn offer(
    url: String,
    rate: u64,
    secs: f64,
    body: usize,
    key: impl Fn(u64) -> String + Send + 'static,
    tally: Arc<Tally>,
) {
    let client = reqwest::Client::new();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let total = (rate as f64 * secs) as u64;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let payload = bytes::Bytes::from(vec![b'x'; body]);
    for i in 0..total {
        tick.tick().await;
        let req = if body > 0 {
            client.post(format!("{url}/commands")).body(payload.clone())
        } else {
            client.get(format!("{url}/commands"))
        };
        let req = req.header("x-vehicle-id", key(i));
        let tally = tally.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let status = req.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            let counter = match status {
                200 => {
                    tally.ok_bytes.fetch_add(body as u64, Ordering::Relaxed);
                    tally
                        .latencies
                        .lock()
                        .unwrap()
                        .push(started.elapsed().as_micros() as u64);
                    &tally.ok
                }
                429 => &tally.limited,
                500..=599 => &tally.server_error,
                _ => &tally.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

fn one_key(_: u64) -> String {
    "car-1".into()
}

/// Offers `rates[i]` requests a second to guard `i` for `secs`; returns each guard's tally.
async fn offer_all(guards: &[Guard], rates: &[u64], secs: f64, body: usize) -> Vec<Arc<Tally>> {
    let tallies: Vec<_> = guards.iter().map(|_| Arc::new(Tally::default())).collect();
    let mut senders = tokio::task::JoinSet::new();
    for ((g, &rate), t) in guards.iter().zip(rates).zip(&tallies) {
        senders.spawn(offer(g.url.clone(), rate, secs, body, one_key, t.clone()));
    }
    while senders.join_next().await.is_some() {}
    tallies
}

fn sum(tallies: &[Arc<Tally>], f: impl Fn(&Tally) -> u64) -> u64 {
    tallies.iter().map(|t| f(t)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn a_shared_budget_holds_across_four_guards() {
    require_redis();
    let redis = Redis::start();
    let p = policy("      client_requests: { rate: 100/s, burst: 10, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 4, &redis.url(), "fleet").await;
    let t = offer_all(&guards, &[100, 100, 100, 100], 30.0, 0).await;
    let admitted = sum(&t, Tally::ok);
    assert_eq!(sum(&t, Tally::server_errors), 0);
    // R·t + B = 3010; the bound adds P·N + B = 12 + 10 (docs/fleet.md).
    assert!(
        (2850..=3050).contains(&admitted),
        "4 guards × 100/s for 30 s under a 100/s fleet budget admitted {admitted}"
    );
    // Shared through Redis all along, not four local shares that happen to add up.
    let mut granted = 0.0;
    for g in &guards {
        assert_eq!(
            g.metric(
                "verbosity_guard_fleet_transitions_total",
                &[("to", "local")]
            )
            .await,
            0.0
        );
        granted += g
            .metric(
                "verbosity_guard_fleet_lease_tokens_total",
                &[("route", "commands"), ("event", "granted")],
            )
            .await;
    }
    assert!(
        granted >= 0.9 * admitted as f64,
        "{granted} tokens leased for {admitted} admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn skewed_load_still_gets_the_whole_budget() {
    require_redis();
    let redis = Redis::start();
    let p = policy("      client_requests: { rate: 100/s, burst: 10, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 4, &redis.url(), "fleet").await;
    // 90% of 400/s on one guard, the rest spread over three.
    let t = offer_all(&guards, &[360, 14, 13, 13], 30.0, 0).await;
    let admitted = sum(&t, Tally::ok) as f64;
    assert_within_5_percent("skewed load, requests", admitted, 100.0 * 30.0 + 10.0);
}

/// R·t + B as the issue sets it: within ±5%.
fn assert_within_5_percent(what: &str, admitted: f64, budget: f64) {
    assert!(
        (admitted - budget).abs() / budget <= 0.05,
        "{what}: admitted {admitted}, budget {budget}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn a_fleet_byte_budget_holds() {
    require_redis();
    let redis = Redis::start();
    let p = policy("      client_bytes: { rate: 100KiB/s, burst: 10KiB, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 3, &redis.url(), "fleet").await;
    // 3 guards × 60/s × 1 KiB: 180 KiB/s offered to a 100 KiB/s budget.
    let t = offer_all(&guards, &[60, 60, 60], 30.0, 1024).await;
    let admitted = sum(&t, |t| t.ok_bytes.load(Ordering::Relaxed)) as f64;
    let budget = 100.0 * 1024.0 * 30.0 + 10.0 * 1024.0;
    assert_within_5_percent("fleet byte budget, bytes", admitted, budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn bodies_larger_than_a_lease_pass_under_budget() {
    require_redis();
    let redis = Redis::start();
    // N = 64 KiB/s × 100 ms / 2 ≈ 3.3 KB: each 10 KB body is three leases' worth.
    let p = policy("      client_bytes: { rate: 64KiB/s, burst: 1MiB, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 2, &redis.url(), "fleet").await;
    let t = offer_all(&guards, &[3, 3], 3.0, 10_000).await;
    assert_eq!(
        sum(&t, Tally::ok),
        18,
        "60 KB/s of 10 KB bodies under a 64 KiB/s budget"
    );
}

/// Offers steady load while `fault` is applied half-way; checks that every guard is in local
/// mode within 1 s of it, that nothing answered 5xx, and that latency did not rise.
async fn survives(fault: impl FnOnce(&mut Redis)) {
    require_redis();
    let mut redis = Redis::start();
    let p = policy("      client_requests: { rate: 1000/s, burst: 100, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 3, &redis.url(), "fleet").await;
    let before = offer_all(&guards, &[50, 50, 50], 3.0, 0).await;
    let load = {
        let urls: Vec<_> = guards.iter().map(|g| g.url.clone()).collect();
        tokio::spawn(async move {
            let tallies: Vec<_> = urls.iter().map(|_| Arc::new(Tally::default())).collect();
            let mut s = tokio::task::JoinSet::new();
            for (u, t) in urls.into_iter().zip(&tallies) {
                s.spawn(offer(u, 50, 4.0, 0, one_key, t.clone()));
            }
            while s.join_next().await.is_some() {}
            tallies
        })
    };
    fault(&mut redis);
    let faulted = Instant::now();
    for g in &guards {
        let local = poll_within(Duration::from_secs(1), async || g.mode_is("local").await).await;
        assert!(
            local,
            "guard {} still in fleet mode 1 s after the fault",
            g.admin
        );
    }
    assert!(faulted.elapsed() < Duration::from_millis(1500));
    let after = load.await.unwrap();
    assert_eq!(
        sum(&before, Tally::server_errors) + sum(&after, Tally::server_errors),
        0
    );
    assert_eq!(
        sum(&after, |t| t.limited.load(Ordering::Relaxed)),
        0,
        "1000/s split 3 ways is far above 150/s"
    );
    let p99 = |t: &[Arc<Tally>]| t.iter().map(|t| t.p99()).max().unwrap();
    let (b, a) = (p99(&before), p99(&after));
    assert!(
        a <= b * 3 + Duration::from_millis(25),
        "p99 latency rose from {b:?} to {a:?} after the fault"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn redis_killed_mid_run_means_local_mode_and_no_errors() {
    survives(|r| r.kill()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn redis_hung_mid_run_means_local_mode_and_no_errors() {
    survives(|r| r.signal("STOP")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn redis_restarted_empty_is_joined_again_within_two_seconds() {
    require_redis();
    let mut redis = Redis::start();
    let port = redis.port;
    let p = policy("      client_requests: { rate: 100/s, burst: 10, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 3, &redis.url(), "fleet").await;
    redis.kill();
    for g in &guards {
        assert!(poll_within(Duration::from_secs(1), async || g.mode_is("local").await).await);
    }
    let redis = Redis::start_on(port);
    let restarted = Instant::now();
    for g in &guards {
        let back = poll_within(Duration::from_secs(2), async || g.mode_is("fleet").await).await;
        assert!(back, "guard {} not back in fleet mode", g.admin);
    }
    assert!(restarted.elapsed() <= Duration::from_millis(2500));
    // The new, empty Redis holds the budget again: a burst beyond it is refused.
    let t = offer_all(&guards, &[100, 100, 100], 2.0, 0).await;
    let admitted = sum(&t, Tally::ok);
    assert!(
        (150..=260).contains(&admitted),
        "admitted {admitted} in 2 s of a 100/s budget"
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn guards_serve_locally_until_redis_appears_then_join() {
    require_redis();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let p = policy("      client_requests: { rate: 100/s, burst: 10, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 3, &url, "local").await;
    let t = offer_all(&guards, &[20, 20, 20], 1.0, 0).await;
    assert_eq!(
        sum(&t, Tally::ok),
        60,
        "the local share (25/s, burst 3 each) serves 20/s"
    );
    let redis = Redis::start_on(port);
    let started = Instant::now();
    for g in &guards {
        let joined = poll_within(Duration::from_secs(2), async || g.mode_is("fleet").await).await;
        assert!(joined, "guard {} did not join", g.admin);
    }
    assert!(started.elapsed() <= Duration::from_millis(2500));
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (apt-get install redis-server); run with --include-ignored"]
async fn ten_thousand_idle_keys_leave_bounded_state() {
    require_redis();
    let redis = Redis::start();
    let p = policy("      client_requests: { rate: 10/s, burst: 5, scope: fleet }");
    let (guards, _up, _dir) = fleet(&p, 1, &redis.url(), "fleet").await;
    let g = &guards[0];
    // 10,000 clients, one request each, 32 at a time (closed loop: a loaded machine slows the
    // test down rather than overflowing the guard's accept queue).
    let c = reqwest::Client::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let req = c
            .get(format!("{}/commands", g.url))
            .header("x-vehicle-id", format!("car-{i}"));
        sends.spawn(async move {
            let status = req.send().await.map(|r| r.status().as_u16());
            drop(permit);
            status
        });
    }
    let mut ok = 0;
    while let Some(status) = sends.join_next().await {
        match status.unwrap() {
            Ok(200) => ok += 1,
            other => panic!("a client's first request got {other:?}"),
        }
    }
    assert_eq!(ok, 10_000, "each key's first request fits its burst");
    let peak = redis.dbsize();
    assert!(peak <= 10_001, "{peak} keys in Redis for 10,000 clients");
    // Idle: leases expire (handed back), and Redis forgets full buckets by their TTL.
    let expired = poll_within(Duration::from_secs(5), async || {
        g.metric(
            "verbosity_guard_fleet_lease_tokens_total",
            &[("route", "commands"), ("event", "expired")],
        )
        .await
            > 0.0
    })
    .await;
    assert!(expired, "no lease expired");
    let drained = poll_within(Duration::from_secs(5), async || redis.dbsize() <= 1).await;
    assert!(drained, "Redis still holds {} keys", redis.dbsize());
    // Idle keys cost no calls: only heartbeats remain (4/s).
    let calls = || async {
        g.metric(
            "verbosity_guard_fleet_redis_calls_total",
            &[("result", "ok")],
        )
        .await
    };
    let c0 = calls().await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // a measuring window, not synchronization
    let rate = (calls().await - c0) / t0.elapsed().as_secs_f64();
    assert!(rate <= 6.0, "{rate} Redis calls/s with every key idle");
}

// ---- without Redis: these run everywhere

#[tokio::test]
async fn without_redis_a_fleet_budget_runs_at_its_share_never_unlimited() {
    let up = TestUpstream::start().await;
    // A rate slow enough that nothing refills while the test runs, however loaded the machine.
    let p = policy("      client_requests: { rate: 4/m, burst: 10, scope: fleet }");
    let g = TestGuard::start(&p, &up.url).await;
    let c = client();
    let mut admitted = 0;
    for _ in 0..20 {
        let r = c
            .get(format!("{}/commands", g.url))
            .header("x-vehicle-id", "car-1")
            .send()
            .await
            .unwrap();
        admitted += usize::from(r.status() == 200);
    }
    assert_eq!(
        admitted, 3,
        "the share of one of fleet.pods = 4 guards: burst ⌈10/4⌉"
    );
    let policy = json(reqwest::get(format!("{}/policy", g.admin)).await.unwrap()).await;
    let budget = &policy["routes"][0]["budgets"]["client_requests"];
    assert_eq!(budget["scope"], "fleet", "{budget}");
    assert_eq!(
        budget["burst"], 10,
        "/policy shows the fleet's budget, not the share"
    );
    assert_eq!(policy["fleet"]["pods"], 4);
    assert_eq!(policy["fleet"]["namespace"], "verbosity-guard:test-policy");
}

#[tokio::test]
async fn serving_fleet_budgets_without_redis_says_so_once_at_start() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.yaml");
    std::fs::write(
        &file,
        policy("      client_requests: { rate: 100/s, burst: 10, scope: fleet }"),
    )
    .unwrap();
    let mut g = GuardProcess::spawn([
        "serve",
        "--policy",
        file.to_str().unwrap(),
        "--upstream",
        &up.url,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let (warning, _) = g.wait_for("no --fleet-redis").await;
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["fields"]["pods"], 4, "{warning}");
    let (_, before) = g.wait_for("verbosity-guard listening").await;
    assert!(before.is_empty(), "one line about it: {before:?}");
}

#[tokio::test]
async fn a_malformed_fleet_redis_url_stops_the_start_with_its_flag_named() {
    let p = policy("      client_requests: { rate: 100/s, burst: 10, scope: fleet }");
    let source = verbosity_guard::app::PolicySource::Text {
        name: "p.yaml".into(),
        text: p,
    };
    let mut cfg = verbosity_guard::app::Config::new(source, "http://127.0.0.1:9");
    cfg.fleet_redis = Some("http://redis:6379".into());
    let err = verbosity_guard::app::App::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(err.is_input(), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("--fleet-redis: "), "{msg}");
    assert!(
        msg.contains("redis://"),
        "says what a URL looks like: {msg}"
    );
}

#[test]
fn simulate_holds_the_whole_fleet_budget_or_one_pods_share() {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("fleet.yaml");
    std::fs::write(
        &policy_file,
        policy("      client_requests: { rate: 1/h, burst: 12, scope: fleet }"),
    )
    .unwrap();
    let traffic = dir.path().join("t.ndjson");
    let line =
        r#"{"ts":1795000000,"method":"GET","path":"/commands","headers":{"x-vehicle-id":"car-1"}}"#;
    std::fs::write(&traffic, format!("{line}\n").repeat(20)).unwrap();
    let forwarded = |pods: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_verbosity-guard"))
            .args(["simulate", "--format", "json", "--pods", pods])
            .arg("--policy")
            .arg(&policy_file)
            .arg("--traffic")
            .arg(&traffic)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let commands = report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "commands")
            .unwrap()
            .clone();
        commands["requests"]["forwarded"].as_u64().unwrap()
    };
    assert_eq!(forwarded("1"), 12, "one guard holding the whole burst");
    assert_eq!(forwarded("4"), 3, "one of four guards: ⌈12/4⌉");
}
