//! Command line: every flag of `serve` and `simulate` (and the global `--log-*` flags) also
//! reads a `VERBOSITY_GUARD_*` environment variable, since sidecars are configured through
//! their environment. The flags of `demo` and `echo-upstream` are for a person at a terminal
//! and have none.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::protect::Brownout;
use crate::simulate::Condition;
use crate::units::{ByteSize, Fraction, HumanDuration};

#[derive(Debug, Parser)]
#[command(
    name = "verbosity-guard",
    version,
    about = "A sidecar reverse proxy that keeps telemetry surges from taking a vehicle API down"
)]
pub struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive list.
    #[arg(
        long,
        global = true,
        env = "VERBOSITY_GUARD_LOG",
        default_value = "info"
    )]
    pub log_level: String,
    /// Log line format.
    #[arg(long, global = true, env = "VERBOSITY_GUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the guard in front of an upstream.
    Serve(Box<ServeArgs>),
    /// Simulate a fleet, a verbosity surge, and the guard containing it; no set-up needed.
    Demo(crate::demo::DemoArgs),
    /// Validate policy files and print a summary of each valid one.
    Check {
        /// Policy files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema (draft 7) of policy files, for editors and CI validation.
    Schema,
    /// Replay recorded traffic (NDJSON or HAR) against a policy on a virtual clock and report
    /// what it would forward, drop and refuse.
    Simulate(SimulateArgs),
    /// Serve a stand-in upstream for trying the guard: it answers every request 200 with what
    /// it received (method, target, body), so you see what the guard forwarded.
    EchoUpstream(EchoUpstreamArgs),
}

#[derive(Debug, Args)]
pub struct EchoUpstreamArgs {
    /// Address to listen on: IP:PORT, or localhost:PORT for 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:8000", value_parser = parse_listen_addr)]
    pub listen: SocketAddr,
    /// Largest request body read; a larger one is answered 413.
    #[arg(long, default_value = "16MiB")]
    pub max_body: ByteSize,
}

/// A listening address: an IP address and port, or `localhost:PORT` for IPv4 loopback. Other
/// host names are refused rather than resolved: a listener binds one address, and a name can
/// resolve to several.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => port
            .parse::<u16>()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|_| format!("{port:?} is not a port number")),
        _ => Err(format!(
            "{s:?} is not an IP address and port: use an IP address, e.g. 127.0.0.1:8080 \
             (loopback), 0.0.0.0:8080 (every interface) or [::]:8080; localhost:8080 means \
             127.0.0.1:8080"
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Policy file (YAML).
    #[arg(long, env = "VERBOSITY_GUARD_POLICY")]
    pub policy: PathBuf,
    /// Recorded traffic: the guard's NDJSON format (what serve --record writes) or a HAR file.
    #[arg(long, env = "VERBOSITY_GUARD_TRAFFIC")]
    pub traffic: PathBuf,
    /// Report as a table, or as JSON.
    #[arg(long, env = "VERBOSITY_GUARD_SIMULATE_FORMAT", value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Exit with 3 when this holds, e.g. 'dropped(warn) > 1%' or 'rejected(telemetry) > 0.5%'.
    /// Repeat it for several; ';' also separates conditions (handy in the variable).
    #[arg(
        long = "fail-if",
        env = "VERBOSITY_GUARD_FAIL_IF",
        value_delimiter = ';'
    )]
    pub fail_if: Vec<Condition>,
    /// Brownout level held for the whole replay: off, drop_verbose, sample_info, sample_warn,
    /// shed_bulk (the controller itself needs an upstream and is not simulated).
    #[arg(long, env = "VERBOSITY_GUARD_SIMULATE_BROWNOUT", default_value = "off", value_parser = parse_brownout)]
    pub brownout: Brownout,
    /// Largest traffic file read.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_SIMULATE_MAX_TRAFFIC_SIZE",
        default_value = "1GiB"
    )]
    pub max_traffic_size: ByteSize,
    /// Most requests replayed from one file.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_SIMULATE_MAX_REQUESTS",
        default_value_t = 10_000_000
    )]
    pub max_requests: u64,
    /// Largest request body in the traffic file.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_SIMULATE_MAX_BODY",
        default_value = "16MiB"
    )]
    pub max_body: ByteSize,
    /// Fleet budgets (`scope: fleet`) are replayed as one of this many guards, each holding
    /// 1/pods of the budget; the default, 1, is one guard holding the whole fleet budget.
    #[arg(long, env = "VERBOSITY_GUARD_SIMULATE_PODS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub pods: u32,
}

fn parse_brownout(s: &str) -> Result<Brownout, String> {
    Brownout::ALL
        .into_iter()
        .find(|l| l.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<_> = Brownout::ALL.iter().map(|l| l.as_str()).collect();
            format!("{s:?} is not a brownout level ({})", names.join(", "))
        })
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Policy file (YAML).
    #[arg(long, env = "VERBOSITY_GUARD_POLICY")]
    pub policy: PathBuf,
    /// The protected service, as http://host:port.
    #[arg(long, env = "VERBOSITY_GUARD_UPSTREAM")]
    pub upstream: String,
    /// Address for client traffic: IP:PORT, or localhost:PORT for 127.0.0.1.
    #[arg(long, env = "VERBOSITY_GUARD_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_listen_addr)]
    pub listen: SocketAddr,
    /// Address for /metrics, /healthz, /readyz and /policy: IP:PORT, or localhost:PORT.
    #[arg(long, env = "VERBOSITY_GUARD_ADMIN", default_value = "127.0.0.1:9901", value_parser = parse_listen_addr)]
    pub admin: SocketAddr,
    /// Worker threads serving requests, each with its own upstream pool (default: one per CPU
    /// available to the process).
    #[arg(long, env = "VERBOSITY_GUARD_WORKERS")]
    pub workers: Option<usize>,
    /// Client connections open at once; at the cap the longest-idle ones are closed for a new
    /// client, and with none idle more wait in the kernel's accept queue.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,
    /// Time for a request's headers to arrive; also the idle limit of a keep-alive connection
    /// (HTTP/1 and HTTP/2).
    #[arg(
        long,
        env = "VERBOSITY_GUARD_HEADER_READ_TIMEOUT",
        default_value = "10s"
    )]
    pub header_read_timeout: HumanDuration,
    /// Largest request head (HTTP/1) or header list (HTTP/2); at least 8KiB.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_MAX_HEADER_BYTES",
        default_value = "64KiB"
    )]
    pub max_header_bytes: ByteSize,
    /// Most header fields in an HTTP/1 request: exactly this many are accepted, one more gets
    /// 431. The guard adds up to three (X-Forwarded-*), so the upstream must accept N+3.
    #[arg(long, env = "VERBOSITY_GUARD_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Most concurrent streams per HTTP/2 connection.
    #[arg(long, env = "VERBOSITY_GUARD_H2_MAX_STREAMS", default_value_t = 256)]
    pub h2_max_streams: u32,
    /// Overload: a worker whose event loop runs later than this sheds bulk requests right
    /// after their head (503, Retry-After); `off` turns the check off.
    #[arg(long, env = "VERBOSITY_GUARD_OVERLOAD_MAX_LAG", default_value = "5ms")]
    pub overload_max_lag: OrOff<HumanDuration>,
    /// Overload: with more telemetry batch bytes than this held in memory, bulk requests are
    /// shed right after their head; `off` turns the check off.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_OVERLOAD_MAX_BUFFERED",
        default_value = "256MiB"
    )]
    pub overload_max_buffered: OrOff<ByteSize>,
    /// Overload: with more resident memory than this, bulk requests are shed right after their
    /// head; `off` (default) turns the check off. Set it under the container's memory limit.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_OVERLOAD_MAX_MEMORY",
        default_value = "off"
    )]
    pub overload_max_memory: OrOff<ByteSize>,
    /// Longest pause between two frames of a request body (408 after).
    #[arg(long, env = "VERBOSITY_GUARD_BODY_IDLE_TIMEOUT", default_value = "30s")]
    pub body_idle_timeout: HumanDuration,
    /// Time to open a connection to the upstream (502 after).
    #[arg(
        long,
        env = "VERBOSITY_GUARD_UPSTREAM_CONNECT_TIMEOUT",
        default_value = "2s"
    )]
    pub upstream_connect_timeout: HumanDuration,
    /// Idle pooled upstream connections are closed after this long.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_UPSTREAM_POOL_IDLE_TIMEOUT",
        default_value = "60s"
    )]
    pub upstream_pool_idle_timeout: HumanDuration,
    /// Most idle upstream connections kept open.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_UPSTREAM_POOL_MAX_IDLE",
        default_value_t = 512
    )]
    pub upstream_pool_max_idle: usize,
    /// Largest upstream response head (status line and headers, at most 100 fields); a larger
    /// one gets 502 and is never relayed. At least 8KiB.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_MAX_UPSTREAM_HEAD_BYTES",
        default_value = "64KiB"
    )]
    pub max_upstream_head_bytes: ByteSize,
    /// After SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "VERBOSITY_GUARD_DRAIN_TIMEOUT", default_value = "30s")]
    pub drain_timeout: HumanDuration,
    /// Do not watch the policy file for changes; reload it on SIGHUP only. The variable takes
    /// true/false, 1/0, yes/no or on/off.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_NO_WATCH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_watch: bool,
    /// Record a sample of the requests to this file (created, or emptied), in the traffic
    /// format `simulate` replays.
    #[arg(long, env = "VERBOSITY_GUARD_RECORD")]
    pub record: Option<PathBuf>,
    /// Share recorded: of clients (all of a sampled client's requests), or of requests on
    /// routes without per-client budgets. E.g. 100%, 1%, 1/1000.
    #[arg(long, env = "VERBOSITY_GUARD_RECORD_SAMPLE", default_value = "100%")]
    pub record_sample: Fraction,
    /// The recording stops once the file reaches this size.
    #[arg(
        long,
        env = "VERBOSITY_GUARD_RECORD_MAX_BYTES",
        default_value = "100MiB"
    )]
    pub record_max_bytes: ByteSize,
    /// Bytes of each request body recorded; a larger body is recorded in part, with its size.
    #[arg(long, env = "VERBOSITY_GUARD_RECORD_MAX_BODY", default_value = "1MiB")]
    pub record_max_body: ByteSize,
    /// Share the policy's `scope: fleet` budgets with every guard using this Redis,
    /// `redis://[:password@]host:port[/db]`. Without it they run at this guard's share
    /// (1/`fleet.pods`).
    #[arg(long, env = "VERBOSITY_GUARD_FLEET_REDIS")]
    pub fleet_redis: Option<String>,
}

/// clap parses unit flags through the same `FromStr` as the policy file.
macro_rules! value_parser_from_str {
    ($($t:ty),*) => {$(
        impl clap::builder::ValueParserFactory for $t {
            type Parser = clap::builder::ValueParser;
            fn value_parser() -> Self::Parser {
                clap::builder::ValueParser::new(|s: &str| s.parse::<$t>())
            }
        }
    )*};
}

value_parser_from_str!(ByteSize, Fraction, HumanDuration);

/// A flag value that may be `off` (`None`) instead of a `T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrOff<T>(pub Option<T>);

impl<T: std::str::FromStr<Err: std::fmt::Display>> std::str::FromStr for OrOff<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(OrOff(None)),
            s => s
                .parse::<T>()
                .map(|v| OrOff(Some(v)))
                .map_err(|e| e.to_string()),
        }
    }
}
