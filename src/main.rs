//! The `verbosity-guard` binary: parse the command line, set up logging, run the command.
//!
//! Exit codes: 0 success; 1 runtime failure (cannot bind, drain timed out); 2 usage error;
//! 3 `simulate`: a `--fail-if` threshold was breached; 65 invalid input (a policy that does not
//! check, a bad upstream URL, a traffic file that cannot be read).
//!
//! Signals (`serve`): SIGTERM or SIGINT drains and exits, a second one exits at once; SIGHUP
//! reloads the policy file.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use verbosity_guard::app::{App, Config, PolicySource};
use verbosity_guard::cli::{
    Cli, Command, EchoUpstreamArgs, LogFormat, ReportFormat, ServeArgs, SimulateArgs,
};
use verbosity_guard::{check, proxy, simulate};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_THRESHOLD: u8 = 3;
const EXIT_BAD_INPUT: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's output is its progress lines and table: the guard inside it logs errors only,
    // unless a level other than the default is asked for, so warnings never cut into them.
    let level = match (&cli.command, cli.log_level.as_str()) {
        (Command::Demo(_), "info") => "error",
        (_, level) => level,
    };
    init_logging(level, cli.log_format);
    match cli.command {
        Command::Check { files } => {
            let report = check::run(&files);
            print!("{}", report.stdout);
            eprint!("{}", report.stderr);
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_BAD_INPUT)
            }
        }
        Command::Schema => {
            let schema = verbosity_guard::policy::schema::policy_schema();
            // Serializing a `Value` cannot fail; the fallback only avoids an unwrap.
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Simulate(args) => run_simulate(&args),
        Command::EchoUpstream(args) => match echo_upstream(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("verbosity-guard echo-upstream: {}", one_line(&e));
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Demo(args) => match demo(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("verbosity-guard demo: {}", one_line(&e));
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Serve(args) => match serve(*args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(EXIT_RUNTIME),
            Err(e) => {
                eprintln!("verbosity-guard: {}", one_line(&e));
                let input = e
                    .downcast_ref::<verbosity_guard::app::StartError>()
                    .is_some_and(|s| s.is_input());
                ExitCode::from(if input { EXIT_BAD_INPUT } else { EXIT_RUNTIME })
            }
        },
    }
}

/// An error and its causes on one line, each said once. The library's errors name their source
/// in their own message and also return it from `source()` (for callers that walk the chain),
/// so `{:#}` would print it twice: a cause whose text the line already holds is left out.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Replays, prints the report, and exits 3 if a `--fail-if` condition holds.
fn run_simulate(args: &SimulateArgs) -> ExitCode {
    let opts = simulate::Options {
        policy: args.policy.clone(),
        traffic: args.traffic.clone(),
        brownout: args.brownout,
        limits: verbosity_guard::traffic::Limits {
            max_size: args.max_traffic_size.0,
            max_requests: args.max_requests,
            max_body: args.max_body.0,
        },
        pods: args.pods,
    };
    let (report, verdicts) = match simulate::run(&opts, &args.fail_if) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("verbosity-guard simulate: {e}");
            let usage = matches!(e, simulate::SimulateError::Condition(_));
            return ExitCode::from(if usage { EXIT_USAGE } else { EXIT_BAD_INPUT });
        }
    };
    let text = match args.format {
        ReportFormat::Table => report.to_table(&verdicts),
        ReportFormat::Json => {
            // Serializing a `Value` cannot fail; the fallback only avoids an unwrap.
            let json = serde_json::to_string_pretty(&report.to_json(&verdicts)).unwrap_or_default();
            json + "\n"
        }
    };
    use std::io::Write as _;
    if std::io::stdout().write_all(text.as_bytes()).is_err() {
        return ExitCode::from(EXIT_RUNTIME);
    }
    let breached: Vec<_> = verdicts.iter().filter(|v| v.breached).collect();
    if breached.is_empty() {
        return ExitCode::SUCCESS;
    }
    for v in &breached {
        eprintln!(
            "verbosity-guard simulate: --fail-if {:?} holds",
            v.condition
        );
    }
    ExitCode::from(EXIT_THRESHOLD)
}

fn demo(args: &verbosity_guard::demo::DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(verbosity_guard::demo::run(args))?;
    Ok(())
}

/// Serves the echo upstream until SIGINT or SIGTERM (the default action: nothing to drain).
fn echo_upstream(args: &EchoUpstreamArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let max_body = usize::try_from(args.max_body.0).unwrap_or(usize::MAX);
        let echo = verbosity_guard::echo::EchoUpstream::bind(args.listen, max_body)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
        // The address first, on its own line: a script (or a test) reads the port from it.
        // Written, not println!: a closed stdout must not panic a request.
        say(&format!(
            "echo-upstream listening on http://{}",
            echo.addr()
        ));
        echo.run(say).await;
        Ok(())
    })
}

/// A line on stdout, flushed (stdout is line-buffered); a write error (stdout closed) is ignored.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Runs the guard until SIGTERM or SIGINT, then drains. Ok(false) when the drain timed out.
fn serve(args: ServeArgs) -> anyhow::Result<bool> {
    // The requests are served on `workers` threads of their own (see `proxy`); this runtime only
    // accepts, answers the admin listener and waits for signals, so one thread is plenty.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let mut cfg = Config::new(PolicySource::File(args.policy), args.upstream);
        cfg.listen = args.listen;
        cfg.admin = args.admin;
        cfg.workers = args.workers.map_or_else(default_workers, |n| n.max(1));
        cfg.server = proxy::ServerLimits {
            max_connections: args.max_connections.max(1),
            header_read_timeout: args.header_read_timeout.0,
            max_header_bytes: usize::try_from(args.max_header_bytes.0).unwrap_or(usize::MAX),
            max_headers: args.max_headers,
            h2_max_streams: args.h2_max_streams,
        };
        cfg.upstream_settings = proxy::UpstreamSettings {
            connect_timeout: args.upstream_connect_timeout.0,
            pool_idle_timeout: args.upstream_pool_idle_timeout.0,
            pool_max_idle: args.upstream_pool_max_idle,
            max_response_head: usize::try_from(args.max_upstream_head_bytes.0)
                .unwrap_or(usize::MAX)
                .max(8 * 1024),
        };
        cfg.body_idle_timeout = args.body_idle_timeout.0;
        cfg.overload = verbosity_guard::protect::overload::OverloadLimits {
            max_lag: args.overload_max_lag.0.map(|d| d.0),
            max_buffered: args.overload_max_buffered.0.map(|b| b.0),
            max_memory: args.overload_max_memory.0.map(|b| b.0),
        };
        cfg.drain_timeout = args.drain_timeout.0;
        cfg.watch_policy = !args.no_watch;
        cfg.fleet_redis = args.fleet_redis;
        cfg.record = args
            .record
            .map(|path| verbosity_guard::record::RecordConfig {
                path,
                sample: verbosity_guard::records::Sample::per_million(
                    args.record_sample.per_million,
                ),
                max_bytes: args.record_max_bytes.0,
                max_body: args.record_max_body.0,
            });
        // Handlers first: a signal that arrives once the app is listening must drain it (or
        // reload it), not kill the process with the default action.
        let mut signals = Signals::install()?;
        let app = App::start(cfg).await?;
        while let Signal::Reload = signals.recv().await {
            // Logged and counted by the reload itself; a failure keeps the active policy.
            let _ = app.reload().await;
        }
        tracing::info!("shutting down: draining in-flight requests");
        let drained = tokio::select! {
            drained = app.shutdown() => drained,
            () = signals.stop() => {
                tracing::warn!("second signal: exiting without waiting for the drain");
                false
            }
        };
        if !drained {
            tracing::warn!("drain did not finish in time");
        }
        Ok(drained)
    })
}

/// SIGTERM and SIGINT (stop), SIGHUP (reload the policy), installed together.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

enum Signal {
    Stop,
    Reload,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }

    /// The next SIGTERM or SIGINT; a SIGHUP meanwhile (during the drain) is ignored.
    async fn stop(&mut self) {
        while let Signal::Reload = self.recv().await {}
    }
}

/// One worker per CPU this process may run on (cgroup quotas included), at least one.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
