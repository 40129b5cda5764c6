//! Policy files: parse raw, compile, use.
//!
//! [`load`] reads a YAML file into the [`raw`] serde mirror (unknown fields rejected, units parsed
//! with the parser's line and field path in errors), then [`compile`] resolves every default,
//! matcher and quota into an immutable [`Policy`]. Request code only ever sees a compiled policy.

mod compile;
pub mod raw;
pub mod schema;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use http::HeaderName;
use serde::{Deserialize, Serialize};

use crate::budget::{BudgetClock, BudgetKind, FleetLink, KeyedBudget, Payload};
use crate::protect::Priority;
use crate::records::clamp::Clamp;
use crate::records::{Level, LevelBudget, RecordsPolicy, SampleBy};
use crate::route::{MethodSet, PathMatcher};

pub use compile::compile;

/// Largest policy file read; a policy is a page of YAML, not a data set.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Whether a route's decisions are enforced or only counted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decisions are carried out: 4xx/5xx answers, batches rewritten.
    #[default]
    Enforce,
    /// Every decision is made and counted, but the request is forwarded as received, marked
    /// with `x-verbosity-guard-shadow`.
    Shadow,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Enforce, Mode::Shadow];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// What identifies a client when the configured header or query parameter is absent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum KeyFallback {
    /// The peer's IP address.
    #[default]
    PeerIp,
    /// One key shared by every request without an identity.
    Shared,
    /// Refuse the request with 400.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Query(Box<str>),
    PeerIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeySpec {
    pub source: KeySource,
    pub fallback: KeyFallback,
}

/// A compiled route. Its budgets run on clock `C`: the real one when serving, a virtual one in
/// `simulate`.
pub struct Route<C: Clock = DefaultClock> {
    pub name: String,
    pub methods: MethodSet,
    pub path: PathMatcher,
    pub priority: Priority,
    /// Enforce its decisions, or only count them (shadow).
    pub mode: Mode,
    pub client_key: ClientKeySpec,
    /// Longest wait for the upstream's response headers.
    pub timeout: Duration,
    pub payload: Payload<C>,
    /// Log-level budgets inside the route's batches.
    pub records: Option<RecordsPolicy<C>>,
    pub clamp: Option<Clamp>,
}

/// `tracked_keys` label of each level's per-client budgets (records, bytes).
const LEVEL_BUDGET_LABELS: [[&str; 2]; Level::COUNT] = [
    ["level_trace_records", "level_trace_bytes"],
    ["level_debug_records", "level_debug_bytes"],
    ["level_info_records", "level_info_bytes"],
    ["level_warn_records", "level_warn_bytes"],
    ["level_error_records", "level_error_bytes"],
    ["level_fatal_records", "level_fatal_bytes"],
];

impl<C: Clock> Route<C> {
    /// True when some budget of this route is kept per client.
    pub fn needs_client_key(&self) -> bool {
        self.payload.needs_client_key()
            || self
                .records
                .as_ref()
                .is_some_and(RecordsPolicy::needs_client_key)
    }

    /// Every per-client budget with its `budget` label, for eviction and the key gauges.
    pub fn keyed_budgets(&self) -> impl Iterator<Item = (&'static str, &KeyedBudget<C>)> {
        let payload = self.payload.keyed().map(|(k, b)| (k.as_str(), &**b));
        let levels = self.records.iter().flat_map(|r| {
            r.budgets().filter_map(|(level, kind, b)| match b {
                LevelBudget::Client { keyed, .. } => {
                    let label = LEVEL_BUDGET_LABELS[level.index()][usize::from(kind == "bytes")];
                    Some((label, &**keyed))
                }
                LevelBudget::Route(_) => None,
            })
        });
        payload.chain(levels)
    }

    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        self.methods.contains(method) && self.path.matches(path)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub max_tracked_keys: usize,
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub key_eviction_interval: Duration,
}

/// The `fleet` section, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetSettings {
    pub pods: u32,
    #[serde(serialize_with = "crate::units::serialize_secs")]
    pub refill_interval: Duration,
    pub namespace: String,
}

/// How a policy's `scope: fleet` budgets run in this process.
#[derive(Clone)]
pub enum FleetRuntime {
    /// Leased from the store behind `link` (`serve --fleet-redis`).
    Linked(FleetLink),
    /// Enforced by this process alone at its share for `pods` guards; `None` takes the
    /// policy's `fleet.pods` (a guard without a store), `Some(1)` the whole budget (`simulate`).
    Alone { pods: Option<u32> },
}

impl FleetRuntime {
    /// No store: each fleet budget at the share the policy's `fleet.pods` gives.
    pub const ALONE: FleetRuntime = FleetRuntime::Alone { pods: None };
}

/// A compiled, immutable policy, its budgets on clock `C` (see [`parse_with_clock`]).
pub struct Policy<C: Clock = DefaultClock> {
    /// Where it came from, for messages.
    pub source: String,
    /// FNV-1a of the file's bytes, in hex: identifies the policy in `/policy` and metrics.
    pub version_hash: String,
    pub limits: Limits,
    /// Upstream slots by priority, brownout and surge settings.
    pub protect: crate::protect::ProtectConfig,
    pub fleet: FleetSettings,
    /// Never empty, and the last route matches every request: `compile` is the only
    /// constructor and refuses anything else, which is what makes [`Policy::route`] total.
    routes: Vec<Route<C>>,
    /// Legal but suspicious settings, reported by `check` and logged at start-up.
    pub warnings: Vec<String>,
}

impl<C: Clock> Policy<C> {
    /// The first route that takes this method and normalized path, with its index.
    pub fn route(&self, method: &http::Method, path: &str) -> (usize, &Route<C>) {
        let last = self.routes.len() - 1;
        let i = self.routes[..last]
            .iter()
            .position(|r| r.matches(method, path))
            .unwrap_or(last);
        (i, &self.routes[i])
    }

    pub fn routes(&self) -> &[Route<C>] {
        &self.routes
    }

    /// Forgets every client key whose budget is back to a fresh state (see
    /// [`KeyedBudget::evict_idle`]); run on `limits.key_eviction_interval`.
    pub fn evict_idle_keys(&self) {
        for route in &self.routes {
            for (_, budget) in route.keyed_budgets() {
                budget.evict_idle();
            }
        }
    }

    /// How many of this policy's budgets it shares with `other` (carried over by a reload), and
    /// how many it has. A per-client level budget counts once with its overflow budget.
    pub fn budgets_shared_with(&self, other: &Policy<C>) -> (usize, usize) {
        let theirs: HashSet<usize> = other.budget_ids().collect();
        let ours: Vec<usize> = self.budget_ids().collect();
        let shared = ours.iter().filter(|id| theirs.contains(id)).count();
        (shared, ours.len())
    }

    /// The address of each budget's state: equal addresses are the same budget.
    fn budget_ids(&self) -> impl Iterator<Item = usize> + '_ {
        fn id<T>(b: &Arc<T>) -> usize {
            Arc::as_ptr(b) as usize
        }
        self.routes.iter().flat_map(|r| {
            let p = &r.payload;
            let payload = [p.route_requests.as_ref(), p.route_bytes.as_ref()]
                .into_iter()
                .flatten()
                .map(id)
                .chain(p.keyed().map(|(_, b)| id(b)));
            let levels = r.records.iter().flat_map(|rec| {
                rec.budgets().map(|(_, _, b)| match b {
                    LevelBudget::Route(b) => id(b),
                    LevelBudget::Client { keyed, .. } => id(keyed),
                })
            });
            payload.chain(levels)
        })
    }

    /// The effective policy as JSON, as served on `/policy`.
    pub fn to_json(&self) -> serde_json::Value {
        let routes: Vec<_> = self.routes.iter().map(route_json).collect();
        serde_json::json!({
            "source": self.source,
            "version_hash": self.version_hash,
            "limits": self.limits,
            "protect": self.protect,
            "fleet": self.fleet,
            "routes": routes,
            "warnings": self.warnings,
        })
    }
}

fn route_json<C: Clock>(r: &Route<C>) -> serde_json::Value {
    let key = match &r.client_key.source {
        KeySource::Header(h) => serde_json::json!({ "header": h.as_str() }),
        KeySource::Query(q) => serde_json::json!({ "query": &**q }),
        KeySource::PeerIp => serde_json::json!({ "peer_ip": true }),
    };
    let mut budgets = serde_json::Map::new();
    for kind in BudgetKind::ALL {
        if let (Some(q), Some(p)) = (r.payload.quota(kind), r.payload.placement(kind)) {
            let mut b = serde_json::json!(q);
            b["scope"] = p.scope().as_str().into();
            budgets.insert(kind.as_str().into(), b);
        }
    }
    serde_json::json!({
        "name": r.name,
        "methods": r.methods.names(),
        "path": r.path.to_string(),
        "priority": r.priority,
        "mode": r.mode,
        "client_key": key,
        "client_key_fallback": r.client_key.fallback,
        "timeout_s": r.timeout.as_secs_f64(),
        "max_body": r.payload.max_body,
        "budgets": budgets,
        "records": r.records.as_ref().map(records_json),
        "verbosity_clamp": r.clamp.as_ref().map(|c| serde_json::json!({
            "header": c.header.as_ref().map(HeaderName::as_str),
            "query": c.query.as_deref(),
            "max": c.max,
        })),
    })
}

fn records_json<C: Clock>(r: &RecordsPolicy<C>) -> serde_json::Value {
    let path = |p: &[Box<[u8]>]| {
        p.iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut levels = serde_json::Map::new();
    for level in Level::ALL {
        let rule = r.rule(level);
        let budget = |b: &Option<LevelBudget<C>>| {
            b.as_ref()
                .map(|b| serde_json::json!({ "quota": b.quota(), "per": b.per() }))
        };
        let v = if rule.drop {
            serde_json::json!("drop")
        } else if rule.keeps_all() {
            serde_json::json!("keep")
        } else {
            serde_json::json!({
                "sample_per_million": rule.sample.map(|s| s.per_million),
                "records": budget(&rule.records),
                "bytes": budget(&rule.bytes),
            })
        };
        levels.insert(level.as_str().into(), v);
    }
    serde_json::json!({
        "format": r.format,
        "level_field": (!r.format.is_otlp()).then(|| path(&r.level_field)),
        "levels": levels,
        "unknown_level": r.unknown_level,
        "on_malformed": r.on_malformed,
        "sample_by": match &r.sample_by {
            SampleBy::Record => "record".to_owned(),
            SampleBy::Field(p) => path(p),
        },
        "max_decoded": r.max_decoded,
        "max_ratio": r.max_ratio,
    })
}

/// One problem found in a policy file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// Field path such as `routes[2].payload.max_body`.
    pub path: String,
    pub message: String,
}

impl Problem {
    /// `file:line: path: message`, or `file: path: message` when the line is unknown.
    pub fn in_file<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        struct InFile<'a>(&'a str, &'a Problem);
        impl fmt::Display for InFile<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let InFile(file, p) = self;
                match p.line {
                    Some(line) => write!(f, "{file}:{line}: {}: {}", p.path, p.message),
                    None => write!(f, "{file}: {}: {}", p.path, p.message),
                }
            }
        }
        InFile(file, self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { file: String },
    /// The YAML does not parse or does not fit the schema; the parser stops at the first one.
    #[error("{}", .problem.in_file(.file))]
    Parse { file: String, problem: Problem },
    /// The YAML fits the schema but the policy is not valid; every problem is listed.
    #[error("{}", .problems.iter().map(|p| p.in_file(.file).to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// A policy file, or policy text already in memory (the demo's embedded default).
#[derive(Debug, Clone)]
pub enum PolicySource {
    File(PathBuf),
    Text { name: String, text: String },
}

impl PolicySource {
    pub fn load(&self) -> Result<Policy, PolicyError> {
        self.load_for(&FleetRuntime::ALONE)
    }

    /// [`PolicySource::load`] with fleet budgets run as `fleet` says.
    pub fn load_for(&self, fleet: &FleetRuntime) -> Result<Policy, PolicyError> {
        let (name, text) = self.read()?;
        parse_replacing(&text, &name, None, fleet)
    }

    /// The policy's name in messages and its current text.
    pub fn read(&self) -> Result<(String, Cow<'_, str>), PolicyError> {
        match self {
            PolicySource::File(path) => Ok((path.display().to_string(), read(path)?.into())),
            PolicySource::Text { name, text } => Ok((name.clone(), text.as_str().into())),
        }
    }

    /// The file to watch, for a policy read from one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicySource::File(path) => Some(path),
            PolicySource::Text { .. } => None,
        }
    }
}

/// Reads and compiles a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = read(path)?;
    parse(&text, &path.display().to_string())
}

/// Reads a policy file's text, refusing files over [`MAX_POLICY_BYTES`].
pub fn read(path: &Path) -> Result<String, PolicyError> {
    let file = path.display().to_string();
    let read_err = |source| PolicyError::Read {
        file: file.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { file });
    }
    // `take` bounds the read even if the file grows between the two calls.
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text))
        .map_err(read_err)?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { file });
    }
    Ok(text)
}

/// Parses and compiles policy text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
    parse_replacing(text, file, None, &FleetRuntime::ALONE)
}

/// [`parse`] for a reload: budgets of `previous` whose definition is unchanged carry over to the
/// new policy with their state.
pub fn parse_replacing(
    text: &str,
    file: &str,
    previous: Option<&Policy>,
    fleet: &FleetRuntime,
) -> Result<Policy, PolicyError> {
    let raw = parse_raw(text, file)?;
    compile(
        raw,
        file,
        &version_hash(text.as_bytes()),
        previous,
        &DefaultClock::default(),
        fleet,
    )
}

/// [`parse`] with every budget on `clock`. `simulate` compiles the policy on a virtual clock
/// (governor's `FakeRelativeClock`) so it can replay a day of traffic without waiting for it;
/// the live guard's budgets stay on the real clock, monomorphized, with nothing in between.
pub fn parse_with_clock<C: BudgetClock>(
    text: &str,
    file: &str,
    clock: &C,
    fleet: &FleetRuntime,
) -> Result<Policy<C>, PolicyError> {
    let raw = parse_raw(text, file)?;
    compile(
        raw,
        file,
        &version_hash(text.as_bytes()),
        None,
        clock,
        fleet,
    )
}

/// Policy text into the raw serde mirror, errors located by line and field path.
fn parse_raw(text: &str, file: &str) -> Result<raw::RawPolicy, PolicyError> {
    let mut path = None;
    serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut track = serde_path_to_error::Track::new();
        let result =
            raw::RawPolicy::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if result.is_err() {
            path = Some(track.path());
        }
        result
    })
    .map_err(|err| {
        use serde_saphyr::MessageFormatter;
        // The message may quote file content: neutralize control characters before printing.
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(err.without_snippet())
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        // serde_path_to_error writes `?` for a position it could not name (syntax errors).
        let path = path.map(|p| p.to_string()).unwrap_or_default();
        let path = path.trim_end_matches(".?");
        // `Spanned<T>` (kept for line numbers) is a map with a `value` field; no policy field
        // is called `value`, so the segment is always that wrapper and never the user's.
        let path = path
            .split('.')
            .filter(|seg| *seg != "value")
            .collect::<Vec<_>>()
            .join(".");
        PolicyError::Parse {
            file: file.to_owned(),
            problem: Problem {
                line: err.location().map(|l| l.line() as usize).filter(|&l| l > 0),
                path: if path.is_empty() || path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message,
            },
        }
    })
}

/// FNV-1a 64 of policy text, in hex: a stable identifier of the text (not a security hash).
pub fn version_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests;
