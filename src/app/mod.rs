//! Wiring: load the policy, register metrics, bind both listeners, spawn the tasks. An [`App`]
//! reports the addresses it bound (port 0 works), which is what tests and the demo use.
//!
//! A policy read from a file is watched and reloaded when it changes (see
//! [`policy::reload`](crate::policy::reload)); [`App::reload`] does the same on demand, which is
//! what the binary's SIGHUP handler calls.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Uri;
use http::uri::Scheme;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod admin;
mod policy_watch;
pub mod reload;
mod tasks;

use crate::budget::{BudgetKind, FleetLink, Scope};
use crate::fleet;
use crate::metrics::Metrics;
use crate::policy::FleetRuntime;
pub use crate::policy::PolicySource;
use crate::policy::{Policy, PolicyError};
use crate::protect::Protection;
use crate::proxy::{self, PolicyStore, ServerLimits, Shared, Target, UpstreamSettings};
use crate::record::Recorder;
use admin::Admin;
use policy_watch::PolicyWatch;
use reload::{ReloadError, ReloadOutcome, Reloader};

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the policy comes from.
    pub policy: PolicySource,
    /// `http://host:port` of the service the guard protects.
    pub upstream: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Worker threads serving client connections, each with its own runtime and upstream pool.
    pub workers: usize,
    pub server: ServerLimits,
    pub upstream_settings: UpstreamSettings,
    /// Longest pause between two frames of a request body (408 after).
    pub body_idle_timeout: Duration,
    /// The guard's own pressure thresholds, past which bulk is shed after its head.
    pub overload: crate::protect::overload::OverloadLimits,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Reload a policy file when it changes (a policy given as text is never watched).
    pub watch_policy: bool,
    /// A burst of changes to the policy file is reloaded once it has been quiet this long.
    pub policy_debounce: Duration,
    /// Record sampled requests into a traffic file (`--record`).
    pub record: Option<crate::record::RecordConfig>,
    /// Redis shared by the fleet's guards for `scope: fleet` budgets (`--fleet-redis`).
    pub fleet_redis: Option<String>,
}

impl Config {
    /// Defaults for everything but the policy and the upstream; both listeners on port 0 of
    /// loopback, as tests want.
    pub fn new(policy: PolicySource, upstream: impl Into<String>) -> Config {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            policy,
            upstream: upstream.into(),
            listen: loopback,
            admin: loopback,
            workers: 2,
            server: ServerLimits::default(),
            upstream_settings: UpstreamSettings::default(),
            body_idle_timeout: Duration::from_secs(30),
            overload: crate::protect::overload::OverloadLimits::default(),
            drain_timeout: Duration::from_secs(30),
            watch_policy: true,
            policy_debounce: DEFAULT_POLICY_DEBOUNCE,
            record: None,
            fleet_redis: None,
        }
    }
}

/// Quiet period that ends a burst of policy file events: long enough for a write in a few
/// chunks or a rename followed by a chmod, short enough to feel immediate.
pub const DEFAULT_POLICY_DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("upstream {url:?}: {reason}")]
    Upstream { url: String, reason: &'static str },
    /// `host:port` without a scheme, which `http://host:port` would have been.
    #[error("upstream {url:?}: no scheme; did you mean http://{url}?")]
    UpstreamScheme { url: String },
    #[error("cannot listen on {addr} (the {} listener, {}): {source}", .listener.as_str(), .listener.flag())]
    Bind {
        addr: SocketAddr,
        listener: Listener,
        #[source]
        source: io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Workers(#[source] io::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot record to {path}: {source}")]
    Record {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--fleet-redis: {0} (expected redis://[:password@]host:port[/db])")]
    FleetRedis(#[source] redis::RedisError),
}

impl StartError {
    /// True when the cause is bad input (policy, upstream URL) rather than the environment.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            StartError::Policy(_)
                | StartError::Upstream { .. }
                | StartError::UpstreamScheme { .. }
                | StartError::FleetRedis(_)
        )
    }
}

/// The guard's two listeners, named as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Client traffic, `--listen`.
    Proxy,
    /// `/metrics`, `/healthz`, `/readyz`, `/policy`, `--admin`.
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Proxy => "proxy",
            Listener::Admin => "admin",
        }
    }

    /// The `serve` flag that sets its address.
    pub fn flag(self) -> &'static str {
        match self {
            Listener::Proxy => "--listen",
            Listener::Admin => "--admin",
        }
    }
}

/// Parses `--upstream`: plain `http://host:port`, nothing else.
pub fn parse_upstream(url: &str) -> Result<Target, StartError> {
    let err = |reason| StartError::Upstream {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| err("not a URL; write http://host:port"))?;
    if uri.scheme().is_none() && uri.authority().is_some() {
        // `localhost:8000`: an authority alone, which is what a scheme was left off.
        let with_scheme = format!("http://{url}");
        if parse_upstream(&with_scheme).is_ok() {
            return Err(StartError::UpstreamScheme {
                url: url.to_owned(),
            });
        }
    }
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(err(
            "only http:// upstreams are supported (the guard is a sidecar on the same host)",
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| err("missing host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(err(
            "must not have a path or query; requests keep their own path",
        ));
    }
    Ok(Target { authority })
}

pub struct App {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin: Arc<Admin>,
    shutdown: watch::Sender<bool>,
    workers: Vec<tokio::sync::oneshot::Receiver<bool>>,
    background: Vec<JoinHandle<()>>,
    reloader: Arc<Reloader>,
}

impl App {
    pub async fn start(cfg: Config) -> Result<App, StartError> {
        // Watch before the first read, so a change made in between is not missed.
        let watch = cfg
            .policy
            .path()
            .filter(|_| cfg.watch_policy)
            .map(|path| PolicyWatch::start(path, cfg.policy_debounce));
        let fleet = Fleet::new(cfg.fleet_redis.as_deref())?;
        let policy = cfg.policy.load_for(&fleet.runtime)?;
        fleet.explain(&policy);
        // Only now, so that a policy that cannot be read is reported once, as that.
        let watch = watch.and_then(|w| {
            w.inspect_err(|e| tracing::warn!("{e}; the policy reloads on SIGHUP only"))
                .ok()
        });
        for w in &policy.warnings {
            tracing::warn!("{}: {w}", policy.source);
        }
        let registry = Registry::new();
        let shared = Arc::new(shared_state(&cfg, policy, &registry)?);
        let proxy = Bound::bind(cfg.listen, Listener::Proxy).await?;
        let admin = Bound::bind(cfg.admin, Listener::Admin).await?;
        let (shutdown, rx) = watch::channel(false);
        let ready = Arc::new(Admin {
            registry,
            shared: shared.clone(),
            ready: false.into(),
        });
        let (queues, drained) = proxy::spawn_workers(
            cfg.workers,
            &shared,
            &cfg.server,
            &cfg.upstream_settings,
            cfg.drain_timeout,
        )
        .await
        .map_err(StartError::Workers)?;
        let reloader = Arc::new(Reloader::new(cfg.policy.clone(), fleet.runtime.clone()));
        let max_connections = cfg.server.max_connections;
        let mut background = vec![
            tokio::spawn(proxy::accept(
                proxy.listener,
                queues,
                shared.clone(),
                max_connections,
                rx,
            )),
            tokio::spawn(admin::serve(admin.listener, ready.clone())),
            tokio::spawn(tasks::evict_idle_keys(shared.clone())),
            tokio::spawn(tasks::run_controller(shared.clone())),
            tokio::spawn({
                let shared = shared.clone();
                async move { shared.overload.watch_memory().await }
            }),
        ];
        if let Some(worker) = fleet.worker(&shared) {
            background.push(tokio::spawn(worker.run(shutdown.subscribe())));
        }
        if let Some(watch) = watch {
            let reload = reload_on_change(watch, reloader.clone(), shared);
            background.push(tokio::spawn(reload));
        }
        ready.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            proxy_addr = %proxy.addr,
            admin_addr = %admin.addr,
            upstream = %cfg.upstream,
            workers = cfg.workers,
            "verbosity-guard listening"
        );
        Ok(App {
            proxy_addr: proxy.addr,
            admin_addr: admin.addr,
            admin: ready,
            shutdown,
            workers: drained,
            background,
            reloader,
        })
    }

    /// Reads the policy again and, if its text changed and it is valid, makes it the active
    /// policy; otherwise the active policy stays. Logged and counted either way (see
    /// [`Reloader::reload`]). A policy given as text is always [`ReloadOutcome::Unchanged`].
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        reload(&self.reloader, &self.admin.shared).await
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn registry(&self) -> &Registry {
        &self.admin.registry
    }

    /// Runs one idle-key eviction pass now, as the background task does every
    /// `limits.key_eviction_interval`.
    pub fn evict_idle_keys(&self) {
        tasks::evict_pass(&self.admin.shared);
    }

    /// Starts shutting down: `/readyz` answers 503 from now on and the proxy stops accepting.
    /// In-flight requests continue; [`App::drained`] waits for them.
    pub fn begin_shutdown(&self) {
        self.admin.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }

    /// Waits until in-flight requests have finished (up to the drain timeout), then stops the
    /// admin listener. Returns false if the drain timed out.
    pub async fn drained(mut self) -> bool {
        let mut drained = true;
        for worker in std::mem::take(&mut self.workers) {
            drained &= worker.await.unwrap_or(false);
        }
        for task in &self.background {
            task.abort();
        }
        drained
    }

    /// [`App::begin_shutdown`] then [`App::drained`].
    pub async fn shutdown(self) -> bool {
        self.begin_shutdown();
        self.drained().await
    }
}

impl Drop for App {
    /// An app dropped without [`App::shutdown`] still stops accepting, so its worker threads
    /// finish once their connections close.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.background {
            task.abort();
        }
    }
}

/// What every connection shares, for `policy`: metrics registered on `registry`, protection,
/// the recorder (`--record`), the upstream's address.
fn shared_state(cfg: &Config, policy: Policy, registry: &Registry) -> Result<Shared, StartError> {
    let target = parse_upstream(&cfg.upstream)?;
    let metrics = Arc::new(Metrics::register(registry)?);
    let protection = Protection::new(&policy.protect, metrics.protect.gauges());
    let recorder = match &cfg.record {
        Some(r) => Some(
            Recorder::start(r, &metrics).map_err(|source| StartError::Record {
                path: r.path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let overload = crate::protect::overload::Overload::new(
        cfg.overload.clone(),
        metrics.protect.buffered_bytes.clone(),
        metrics.protect.resident_memory.clone(),
    );
    Ok(Shared {
        protection,
        recorder,
        policy: PolicyStore::new(policy, &metrics),
        metrics,
        target,
        body_idle_timeout: cfg.body_idle_timeout,
        key_hasher: crate::decide::KeyHasher,
        overload,
    })
}

/// How this guard runs the policy's fleet budgets, and the worker that talks to Redis.
struct Fleet {
    runtime: FleetRuntime,
    worker: Option<(
        fleet::Store,
        tokio::sync::mpsc::Receiver<crate::budget::Refill>,
    )>,
}

impl Fleet {
    fn new(url: Option<&str>) -> Result<Fleet, StartError> {
        let Some(url) = url else {
            return Ok(Fleet {
                runtime: FleetRuntime::ALONE,
                worker: None,
            });
        };
        let store = fleet::Store::new(url).map_err(StartError::FleetRedis)?;
        let (link, refills) = FleetLink::new();
        Ok(Fleet {
            runtime: FleetRuntime::Linked(link),
            worker: Some((store, refills)),
        })
    }

    /// Says once, at start, that fleet budgets run alone when there is no Redis.
    fn explain(&self, policy: &Policy) {
        let fleet_budgets = policy.routes().iter().any(|r| {
            BudgetKind::ALL.into_iter().any(|k| {
                r.payload
                    .placement(k)
                    .is_some_and(|p| p.scope() == Scope::Fleet)
            })
        });
        if fleet_budgets && self.worker.is_none() {
            tracing::warn!(
                pods = policy.fleet.pods,
                "the policy has fleet budgets but no --fleet-redis: each runs at this guard's \
                 share alone (1/pods of its rate and burst)"
            );
        }
    }

    fn worker(self, shared: &Arc<Shared>) -> Option<fleet::Worker> {
        let (store, refills) = self.worker?;
        let FleetRuntime::Linked(link) = self.runtime else {
            return None;
        };
        let policy = shared.clone();
        Some(fleet::Worker {
            store,
            link,
            refills,
            metrics: shared.metrics.clone(),
            settings: Box::new(move || policy.policy.load().policy.fleet.clone()),
            guard_id: guard_id(),
        })
    }
}

/// A name for this guard in the fleet's heartbeat set: unique per process.
fn guard_id() -> String {
    use std::hash::BuildHasher;
    let seed = std::hash::RandomState::new().hash_one(std::process::id());
    format!("{seed:016x}")
}

/// A listener and the address it bound (port 0 resolved).
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Bound {
    async fn bind(addr: SocketAddr, listener: Listener) -> Result<Bound, StartError> {
        let err = |source| StartError::Bind {
            addr,
            listener,
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(Bound { listener, addr })
    }
}

/// Reloads the policy each time its file changes, until aborted.
async fn reload_on_change(watch: PolicyWatch, reloader: Arc<Reloader>, shared: Arc<Shared>) {
    loop {
        watch.changed().await;
        // The outcome is logged and counted by the reloader.
        let _ = reload(&reloader, &shared).await;
    }
}

/// Runs a reload on the blocking pool: it reads a file and compiles, which must not stall the
/// admin listener sharing this runtime.
async fn reload(
    reloader: &Arc<Reloader>,
    shared: &Arc<Shared>,
) -> Result<ReloadOutcome, ReloadError> {
    let (r, s) = (reloader.clone(), shared.clone());
    let reload = move || {
        let outcome = r.reload(&s.policy, &s.metrics);
        // Upstream slots and the brownout controller outlive policies: they take the new
        // settings in place, keeping slots in flight and what the controller learned.
        if let Ok(ReloadOutcome::Installed { .. }) = &outcome {
            s.protection.reconfigure(&s.policy.load().policy.protect);
        }
        outcome
    };
    match tokio::task::spawn_blocking(reload).await {
        Ok(result) => result,
        Err(e) => Err(reloader.interrupted(e, &shared.policy, &shared.metrics)),
    }
}
