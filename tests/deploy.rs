//! The deployment kit (`deploy/`) checked against the real guard and its real CLI: every series
//! the Grafana dashboard queries is in a real scrape, with the labels the queries use; the
//! Kubernetes manifests and the image set real `VERBOSITY_GUARD_*` variables to values the CLI
//! accepts, probe and scrape real admin paths, ship the policy unchanged, run unprivileged, and
//! give the guard's drain time to finish before the API stops.
//!
//! Schema validation of the same files (kubernetes-validate, the prometheus-operator CRD
//! schemas, promtool, hadolint) is `deploy/check.sh`, run by `.ci/run`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use serde_json::Value;
use support::{
    PATIENCE, TestGuard, TestUpstream, eventually, gzip, raw_exchange, read_to_close, repo,
};
use verbosity_guard::cli::Cli;
use verbosity_guard::units::HumanDuration;

const GUARD: &str = "verbosity-guard";
const API: &str = "vehicle-api";
const POLICY_CONFIGMAP: &str = "verbosity-guard-policy";
const DASHBOARD: &str = "deploy/grafana/verbosity-guard.json";
/// Labels Prometheus adds to every series it scrapes; the guard does not export them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

// ---- reading the kit

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn deployment() -> Value {
    yaml("deploy/kubernetes/deployment.yaml")
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn named<'a>(list: &'a Value, name: &str, what: &str) -> &'a Value {
    items(list)
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no {what} named {name:?} in {list}"))
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    named(&pod["containers"], name, "container")
}

/// A container's environment, name to value: the variables the manifest sets to a literal
/// `value` (those set `valueFrom` a Secret have no value to read here; see [`env_from`]).
fn env(container: &Value) -> BTreeMap<&str, &str> {
    items(&container["env"])
        .iter()
        .filter(|e| e["valueFrom"].is_null())
        .map(|e| {
            (
                str_of(&e["name"], "env name"),
                str_of(&e["value"], "env value"),
            )
        })
        .collect()
}

/// The variables a container takes `valueFrom` elsewhere (a Secret), by name.
fn env_from(container: &Value) -> BTreeMap<&str, &Value> {
    items(&container["env"])
        .iter()
        .filter(|e| !e["valueFrom"].is_null())
        .map(|e| (str_of(&e["name"], "env name"), &e["valueFrom"]))
        .collect()
}

/// The port a probe or Service names, resolved against a container's declared ports.
fn container_port(container: &Value, port: &Value) -> u16 {
    let n = match port {
        Value::String(name) => &named(&container["ports"], name, "container port")["containerPort"],
        number => number,
    };
    n.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("not a port: {port}"))
}

fn addr_port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr:?}: {e}"))
        .port()
}

/// The Dockerfile's runtime stage: `ENV` pairs, `EXPOSE`d ports and `USER`, continuation
/// lines joined.
struct Image {
    env: BTreeMap<String, String>,
    exposed: BTreeSet<u16>,
    user: String,
}

fn image() -> Image {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let last_stage = text.rsplit("\nFROM ").next().expect("a FROM instruction");
    let mut image = Image {
        env: BTreeMap::new(),
        exposed: BTreeSet::new(),
        user: String::new(),
    };
    for line in last_stage.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("ENV") => {
                for pair in words {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {pair}: write KEY=VALUE"));
                    image.env.insert(k.into(), v.into());
                }
            }
            Some("EXPOSE") => image
                .exposed
                .extend(words.map(|p| p.parse::<u16>().expect("EXPOSE a port number"))),
            Some("USER") => image.user = words.collect(),
            _ => {}
        }
    }
    image
}

// ---- the CLI, as clap defines it

/// `VERBOSITY_GUARD_*` variable to long flag, for `serve` and the global flags.
fn cli_env_flags() -> BTreeMap<String, String> {
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("a serve subcommand");
    cmd.get_arguments()
        .chain(serve.get_arguments())
        .filter_map(|arg| {
            let env = arg.get_env()?.to_string_lossy().into_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect()
}

fn serve_default(id: &str) -> String {
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("a serve subcommand");
    let arg = serve
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("serve has no {id}"));
    arg.get_default_values()
        .first()
        .unwrap_or_else(|| panic!("{id} has no default"))
        .to_string_lossy()
        .into_owned()
}

/// Parses `verbosity-guard <args> --flag value...` for the given variables, as the binary
/// would read them from its environment, so a misspelt name or an unparsable value fails.
fn parse_as_cli<'a>(
    what: &str,
    args: &[&str],
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Cli {
    let flags = cli_env_flags();
    let mut argv: Vec<String> = std::iter::once("verbosity-guard")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    for (name, value) in vars {
        let long = flags.get(name).unwrap_or_else(|| {
            panic!(
                "{what}: {name} is not an environment variable of `verbosity-guard serve`; \
                 known: {:?}",
                flags.keys().collect::<Vec<_>>()
            )
        });
        argv.extend([format!("--{long}"), value.to_owned()]);
    }
    Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{what}: {argv:?} does not parse:\n{e}"))
}

// ---- Prometheus text and PromQL, as far as the dashboard needs

/// A scrape: each `# TYPE`, and each sample name with the label names its series carry.
struct Scrape {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, BTreeSet<String>>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut scrape = Scrape {
        types: BTreeMap::new(),
        series: BTreeMap::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            scrape.types.insert(name.into(), kind.into());
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let end = line.find(['{', ' ']).expect("a sample line");
        let labels = scrape.series.entry(line[..end].into()).or_default();
        if line[end..].starts_with('{') {
            labels.extend(label_names(&line[end + 1..]));
        }
    }
    scrape
}

/// The label names of `name="value",...}`; values are quoted and may hold escaped quotes.
fn label_names(mut s: &str) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((name, rest)) = s.split_once("=\"") {
        names.push(name.trim_start_matches(',').trim().to_owned());
        let mut escaped = false;
        let close = rest
            .char_indices()
            .find(|&(_, c)| {
                let end = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                end
            })
            .map(|(i, _)| i)
            .expect("a closed label value");
        s = &rest[close + 1..];
        if s.starts_with('}') {
            break;
        }
    }
    names
}

/// A metric name used in PromQL, with the label names of its own `{...}` selector.
struct Reference {
    metric: String,
    selector_labels: Vec<String>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn metric_references(expr: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find("verbosity_guard_").map(|i| i + from) {
        let len = expr[i..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(expr.len() - i);
        from = i + len;
        if expr[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let selector_labels = match expr[from..].strip_prefix('{') {
            Some(rest) => {
                let body = &rest[..rest.find('}').expect("a closed selector")];
                body.split(',')
                    .map(|m| m.trim().chars().take_while(|&c| is_ident(c)).collect())
                    .filter(|l: &String| !l.is_empty())
                    .collect()
            }
            None => Vec::new(),
        };
        out.push(Reference {
            metric: expr[i..from].to_owned(),
            selector_labels,
        });
    }
    out
}

/// Label names in `by (...)` clauses.
fn by_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by") {
        let before = rest[..i].chars().next_back();
        let after = rest[i + 2..].trim_start();
        rest = &rest[i + 2..];
        if before.is_some_and(is_ident) || !after.starts_with('(') {
            continue;
        }
        let list = &after[1..after.find(')').expect("a closed by list")];
        out.extend(list.split(',').map(|l| l.trim().to_owned()));
    }
    out
}

/// `{{label}}` placeholders of a legend.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_owned()))
        .collect()
}

/// A panel query of the dashboard.
struct Query {
    panel: String,
    expr: String,
    legend: String,
}

fn panel_queries(panels: &Value, out: &mut Vec<Query>) {
    for panel in items(panels) {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = items(&panel["targets"]);
        if !targets.is_empty() {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {title:?} must query the ${{datasource}} variable"
            );
        }
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "a query of panel {title:?} must use the ${{datasource}} variable"
            );
            out.push(Query {
                panel: title.to_owned(),
                expr: str_of(&target["expr"], "expr").to_owned(),
                legend: target["legendFormat"].as_str().unwrap_or("").to_owned(),
            });
        }
        panel_queries(&panel["panels"], out); // rows hold their panels when collapsed
    }
}

// ---- traffic

fn ndjson(levels: &[&str]) -> String {
    levels
        .iter()
        .enumerate()
        .map(|(i, level)| format!("{{\"level\":\"{level}\",\"msg\":\"record {i}\"}}\n"))
        .collect()
}

/// The guard with the shipped policy, after traffic that creates every kind of labelled series
/// the dashboard shows: forwarded and rejected requests, an upstream failure, a downsampled
/// and a compressed telemetry batch, and a malformed connection.
async fn guard_after_traffic(up: &TestUpstream) -> TestGuard {
    let g = TestGuard::start(&read("policies/vehicle-api.yaml"), &up.url).await;
    let c = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let send = |req: reqwest::RequestBuilder| async move {
        req.header("x-vehicle-id", "car-1")
            .send()
            .await
            .unwrap()
            .status()
    };
    let url = |path: &str| format!("{}{path}", g.url);

    assert_eq!(send(c.get(url("/api/1/vehicles/7"))).await, 200);
    let command = url("/api/1/vehicles/7/command/honk_horn");
    assert_eq!(send(c.post(&command).body("{}")).await, 200);
    assert_eq!(
        send(c.post(&command).body(vec![b'x'; 17 * 1024])).await,
        413
    );
    let batch = ndjson(&["error", "warn", "info", "debug", "debug", "trace"]);
    let telemetry = url("/api/1/telemetry");
    assert_eq!(send(c.post(&telemetry).body(batch)).await, 200);
    let compressed = c
        .post(&telemetry)
        .header("content-encoding", "gzip")
        .body(gzip(ndjson(&["error"]).as_bytes()));
    assert_eq!(send(compressed).await, 200);
    assert_eq!(send(c.get(url("/__abort"))).await, 502);
    let (mut stream, head) = raw_exchange(g.app.proxy_addr(), b"NOT HTTP\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // The guard counts a connection's error before closing it: once it is closed, the
    // counter is there to scrape.
    read_to_close(&mut stream).await;
    g
}

/// The route of the shipped policy that `method path` takes has no payload budget and reads
/// no records: nothing there can refuse it for load.
fn assert_unbudgeted(what: &str, method: &str, path: &str) {
    use verbosity_guard::budget::BudgetKind;
    let policy = verbosity_guard::policy::parse(&read("policies/vehicle-api.yaml"), "policy")
        .expect("the shipped policy compiles");
    let method: http::Method = method.parse().expect("a method");
    let (_, route) = policy.route(&method, path);
    for kind in BudgetKind::ALL {
        assert!(
            route.payload.placement(kind).is_none(),
            "{what}: {method} {path} takes route {:?}, which has a {kind:?} budget",
            route.name
        );
    }
    assert!(
        route.records.is_none(),
        "{what}: route {:?} reads records",
        route.name
    );
}

// ---- the tests

#[tokio::test]
async fn dashboard_queries_only_series_a_real_scrape_exports() {
    let up = TestUpstream::start().await;
    let g = guard_after_traffic(&up).await;
    // The fleet panels read the series of a guard with fleet budgets and --fleet-redis; its
    // Redis is unreachable, which is the state those panels are there to show.
    let policy = read("policies/vehicle-api.yaml").replacen(
        "rate: 2/s, burst: 10 }",
        "rate: 2/s, burst: 10, scope: fleet }",
        1,
    );
    let fleet = TestGuard::start_with(&policy, &up.url, |cfg| {
        cfg.fleet_redis = Some("redis://127.0.0.1:1".into());
    })
    .await;
    eventually("the fleet guard shows its mode", async || {
        fleet.scrape().await.contains("verbosity_guard_fleet_mode{")
    })
    .await;
    let scrape = parse_scrape(&(g.scrape().await + &fleet.scrape().await));

    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut queries = Vec::new();
    panel_queries(&dashboard["panels"], &mut queries);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());

    // The label names a metric's series carry, as Prometheus stores them.
    let labels_of = |metric: &str, panel: &str| -> BTreeSet<String> {
        let histogram_base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| metric.strip_suffix(suffix))
            .filter(|base| scrape.types.get(*base).is_some_and(|t| t == "histogram"));
        let declared = scrape.types.contains_key(metric) || histogram_base.is_some();
        assert!(
            declared,
            "panel {panel:?}: {metric} is not a metric the guard exports"
        );
        assert!(
            scrape.types.get(metric).is_none_or(|t| t != "histogram"),
            "panel {panel:?}: {metric} is a histogram: query {metric}_bucket, _sum or _count"
        );
        let mut labels = scrape
            .series
            .get(metric)
            .unwrap_or_else(|| panic!("panel {panel:?}: {metric} has no series after traffic"))
            .clone();
        labels.extend(TARGET_LABELS.map(String::from));
        labels
    };

    let mut families = BTreeSet::new();
    for q in &queries {
        let refs = metric_references(&q.expr);
        assert!(
            !refs.is_empty(),
            "panel {:?}: no metric in {}",
            q.panel,
            q.expr
        );
        let by = by_labels(&q.expr);
        for r in &refs {
            let labels = labels_of(&r.metric, &q.panel);
            for l in r.selector_labels.iter().chain(&by) {
                assert!(
                    labels.contains(l),
                    "panel {:?}: {} has no label {l:?} (it has {labels:?})",
                    q.panel,
                    r.metric
                );
            }
            families.insert(r.metric.clone());
        }
        for l in legend_labels(&q.legend) {
            let kept = if by.is_empty() {
                refs.iter()
                    .all(|r| labels_of(&r.metric, &q.panel).contains(&l))
            } else {
                by.contains(&l)
            };
            assert!(
                kept,
                "panel {:?}: legend {:?} names {l:?}, which {} does not keep",
                q.panel, q.legend, q.expr
            );
        }
    }

    // The route variable lists the routes of a real metric's label.
    let route = named(&dashboard["templating"]["list"], "route", "variable");
    let query = str_of(&route["query"]["query"], "route variable query");
    assert_eq!(query, "label_values(verbosity_guard_requests_total, route)");
    assert!(labels_of("verbosity_guard_requests_total", "route variable").contains("route"));
    let datasource = named(&dashboard["templating"]["list"], "datasource", "variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    // What operators look for first is on the dashboard.
    for wanted in [
        "requests_total",
        "rejections_total",
        "upstream_duration_seconds_bucket",
        "request_body_bytes_total",
        "forwarded_body_bytes_total",
        "records_received_total",
        "records_forwarded_total",
        "records_dropped_total",
        "batches_total",
        "tracked_keys",
        "connections_open",
        "in_flight_requests",
        "policy_info",
    ] {
        let name = format!("verbosity_guard_{wanted}");
        assert!(
            families.contains(&name),
            "the dashboard does not show {name}"
        );
    }
}

#[tokio::test]
async fn probes_and_scrape_targets_are_real_admin_endpoints() {
    let up = TestUpstream::start().await;
    let g = TestGuard::start(&read("policies/vehicle-api.yaml"), &up.url).await;
    let c = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let get = |url: String| {
        let c = c.clone();
        async move {
            let resp = c.get(&url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };

    let d = deployment();
    let pod = pod_spec(&d);
    let guard = container(pod, GUARD);
    let vars = env(guard);
    let admin_port = addr_port(vars["VERBOSITY_GUARD_ADMIN"]);
    let listen_port = addr_port(vars["VERBOSITY_GUARD_LISTEN"]);

    // The guard's own probes hit its admin listener, at paths that answer 200 when ready.
    let mut probes = 0;
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let probe = &guard[kind]["httpGet"];
        if probe.is_null() {
            continue;
        }
        probes += 1;
        assert_eq!(container_port(guard, &probe["port"]), admin_port, "{kind}");
        let path = str_of(&probe["path"], "probe path");
        assert_eq!(
            get(format!("{}{path}", g.admin)).await.0,
            200,
            "{kind} {path}"
        );
    }
    assert!(probes >= 2, "the guard needs readiness and liveness probes");
    assert_eq!(guard["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(guard["livenessProbe"]["httpGet"]["path"], "/healthz");

    // The API listens on loopback, out of the kubelet's reach: its probe goes through the guard,
    // on a route with no budget, so a busy guard never makes a healthy pod unready.
    let api = container(pod, API);
    let probe = &api["readinessProbe"]["httpGet"];
    assert_eq!(container_port(guard, &probe["port"]), listen_port);
    let path = str_of(&probe["path"], "probe path");
    assert_unbudgeted("the API's readiness probe", "GET", path);
    assert_eq!(get(format!("{}{path}", g.url)).await.0, 200);
    assert_eq!(up.next_request().await.target, path);
    // Many more probes than any budget of the policy allows at once still pass.
    for _ in 0..100 {
        assert_eq!(get(format!("{}{path}", g.url)).await.0, 200);
    }

    // Client traffic: Service → the guard's listener.
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let selects_pod = |service: &Value| {
        let selector = service["spec"]["selector"].as_object().expect("a selector");
        assert!(!selector.is_empty());
        for (k, v) in selector {
            assert_eq!(&labels[k], v, "selector {k} does not match the pod");
        }
    };
    let service = yaml("deploy/kubernetes/service.yaml");
    selects_pod(&service);
    let [port] = items(&service["spec"]["ports"]) else {
        panic!("the client Service exposes exactly one port");
    };
    assert_eq!(container_port(guard, &port["targetPort"]), listen_port);

    // Scraping: ServiceMonitor → admin Service → the guard's admin port, at a real path.
    let admin = yaml("deploy/kubernetes/service-admin.yaml");
    selects_pod(&admin);
    let monitor = yaml("deploy/kubernetes/servicemonitor.yaml");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &admin["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    for endpoint in items(&monitor["spec"]["endpoints"]) {
        let port = named(
            &admin["spec"]["ports"],
            str_of(&endpoint["port"], "port"),
            "port",
        );
        assert_eq!(container_port(guard, &port["targetPort"]), admin_port);
        let path = str_of(&endpoint["path"], "path");
        let (status, body) = get(format!("{}{path}", g.admin)).await;
        assert_eq!(status, 200);
        assert!(body.contains("# TYPE verbosity_guard_requests_total counter"));
    }

    // Annotation-based discovery (deploy/prometheus/scrape-config.yaml) reads these.
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
    let path = str_of(&annotations["prometheus.io/path"], "annotation path");
    assert_eq!(get(format!("{}{path}", g.admin)).await.0, 200);
    let scrape_config = yaml("deploy/prometheus/scrape-config.yaml");
    let jobs = items(&scrape_config["scrape_configs"]);
    let admin_port_name = items(&guard["ports"])
        .iter()
        .find(|p| container_port(guard, &p["containerPort"]) == admin_port)
        .map(|p| &p["name"])
        .expect("the admin port is declared");
    let keeps_admin_port = jobs
        .iter()
        .flat_map(|j| items(&j["relabel_configs"]))
        .any(|r| {
            r["source_labels"][0] == "__meta_kubernetes_pod_container_port_name"
                && &r["regex"] == admin_port_name
                && r["action"] == "keep"
        });
    assert!(
        keeps_admin_port,
        "the pod job must keep only the admin port"
    );
    let static_target = jobs
        .iter()
        .flat_map(|j| items(&j["static_configs"]))
        .flat_map(|s| items(&s["targets"]))
        .map(|t| str_of(t, "target"))
        .next()
        .expect("a static job");
    assert_eq!(
        static_target,
        serve_default("admin"),
        "the static job scrapes the default --admin"
    );
}

#[test]
fn manifest_and_image_set_real_cli_env_vars_to_valid_values() {
    let d = deployment();
    let guard = container(pod_spec(&d), GUARD);
    let args: Vec<&str> = items(&guard["args"])
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    assert_eq!(args, ["serve"]);
    let vars = env(guard);
    for required in ["VERBOSITY_GUARD_POLICY", "VERBOSITY_GUARD_UPSTREAM"] {
        assert!(vars.contains_key(required), "the guard needs {required}");
    }
    parse_as_cli("deployment.yaml", &args, vars.clone());
    // Variables from a Secret are real flags too, and optional: the pod starts without the
    // Secret (fleet budgets then run at the local share).
    let flags = cli_env_flags();
    for (name, from) in env_from(guard) {
        assert!(
            flags.contains_key(name),
            "deployment.yaml: {name} is not an environment variable of `verbosity-guard serve`"
        );
        assert_eq!(
            from["secretKeyRef"]["optional"], true,
            "deployment.yaml: {name} must not keep the pod from starting without its Secret"
        );
    }
    assert!(
        env_from(guard).contains_key("VERBOSITY_GUARD_FLEET_REDIS"),
        "the guard takes its fleet Redis from a Secret"
    );
    let upstream = verbosity_guard::app::parse_upstream(vars["VERBOSITY_GUARD_UPSTREAM"]);
    assert!(upstream.is_ok(), "{upstream:?}");
    assert!(
        vars["VERBOSITY_GUARD_UPSTREAM"].starts_with("http://127.0.0.1:"),
        "the API is reached on the pod's loopback"
    );

    // The image's defaults are real variables too, expose the ports they bind, and the
    // manifest's own listen/admin settings agree with them.
    let image = image();
    let image_vars = image.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    parse_as_cli(
        "Dockerfile ENV",
        &["serve", "--upstream", "http://127.0.0.1:8000"],
        image_vars,
    );
    let bound: BTreeSet<u16> = ["VERBOSITY_GUARD_LISTEN", "VERBOSITY_GUARD_ADMIN"]
        .iter()
        .map(|k| addr_port(&image.env[*k]))
        .collect();
    assert_eq!(
        image.exposed, bound,
        "EXPOSE the ports the image listens on"
    );
    for k in ["VERBOSITY_GUARD_LISTEN", "VERBOSITY_GUARD_ADMIN"] {
        assert_eq!(vars[k], image.env[k], "{k}: manifest and image disagree");
        assert!(
            vars[k].starts_with("0.0.0.0:"),
            "{k} must be reachable on the pod IP"
        );
    }
    let declared: BTreeSet<u16> = items(&guard["ports"])
        .iter()
        .map(|p| container_port(guard, &p["containerPort"]))
        .collect();
    assert_eq!(declared, bound);
}

#[test]
fn kustomization_ships_the_policy_file_unchanged() {
    let k = yaml("deploy/kubernetes/kustomization.yaml");
    for resource in items(&k["resources"]) {
        let file = format!("deploy/kubernetes/{}", str_of(resource, "resource"));
        assert!(repo(&file).is_file(), "{file} is listed but missing");
    }
    let generator = named(
        &k["configMapGenerator"],
        POLICY_CONFIGMAP,
        "configMapGenerator",
    );
    let [source] = items(&generator["files"]) else {
        panic!("the policy ConfigMap holds exactly one file");
    };
    let (key, file) = str_of(source, "files entry")
        .split_once('=')
        .expect("files: KEY=FILE");
    let copy = read(&format!("deploy/kubernetes/{file}"));
    assert!(
        copy == read("policies/vehicle-api.yaml"),
        "deploy/kubernetes/{file} differs from policies/vehicle-api.yaml; \
         run: cp policies/vehicle-api.yaml deploy/kubernetes/{file}"
    );
    verbosity_guard::policy::parse(&copy, file).expect("the shipped policy compiles");

    // The guard reads it where the ConfigMap is mounted, as a whole directory: a subPath mount
    // would never see the kubelet's updates.
    let d = deployment();
    let pod = pod_spec(&d);
    let volume = items(&pod["volumes"])
        .iter()
        .find(|v| v["configMap"]["name"] == POLICY_CONFIGMAP)
        .expect("a volume of the policy ConfigMap");
    let guard = container(pod, GUARD);
    let mount = named(
        &guard["volumeMounts"],
        str_of(&volume["name"], "volume name"),
        "volume mount",
    );
    assert!(
        mount["subPath"].is_null(),
        "no subPath for the policy mount"
    );
    assert_eq!(mount["readOnly"], true);
    let path = format!("{}/{key}", str_of(&mount["mountPath"], "mountPath"));
    assert_eq!(env(guard)["VERBOSITY_GUARD_POLICY"], path);
}

#[test]
fn termination_outlasts_the_guard_drain_and_the_api_outlives_the_guard() {
    let d = deployment();
    let pod = pod_spec(&d);
    let (guard, api) = (container(pod, GUARD), container(pod, API));
    let secs = |v: &Value, what: &str| {
        Duration::from_secs(
            v.as_u64()
                .unwrap_or_else(|| panic!("{what}: seconds, got {v}")),
        )
    };
    let pre_stop = |c: &Value| {
        secs(
            &c["lifecycle"]["preStop"]["sleep"]["seconds"],
            "preStop sleep",
        )
    };
    let drain: HumanDuration = env(guard)
        .get("VERBOSITY_GUARD_DRAIN_TIMEOUT")
        .map_or_else(|| serve_default("drain_timeout"), |v| (*v).to_owned())
        .parse()
        .expect("a drain timeout");
    let grace = secs(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );

    // SIGTERM reaches each container when its preStop hook ends.
    let guard_gone = pre_stop(guard) + drain.0;
    assert!(
        pre_stop(guard) > Duration::ZERO,
        "the guard must keep accepting while endpoint removal propagates"
    );
    assert!(
        pre_stop(api) > guard_gone,
        "the API is stopped at {:?}, before the guard's drain may end at {guard_gone:?}",
        pre_stop(api)
    );
    assert!(
        grace > pre_stop(api),
        "terminationGracePeriodSeconds ({grace:?}) leaves the API no time to stop after \
         its preStop ({:?})",
        pre_stop(api)
    );
    assert!(grace > guard_gone);
}

#[test]
fn containers_run_unprivileged_read_only_and_bounded() {
    let d = deployment();
    let pod = pod_spec(&d);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let containers = items(&pod["containers"]);
    assert_eq!(containers.len(), 2);
    for c in containers.iter().chain(items(&pod["initContainers"])) {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert!(
            items(&sc["capabilities"]["drop"])
                .iter()
                .any(|c| c == "ALL"),
            "{name} must drop ALL capabilities"
        );
        let resources = &c["resources"];
        for (section, key) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                resources[section][key].is_string(),
                "{name}: resources.{section}.{key}"
            );
        }
    }
    let guard = container(pod, GUARD);
    let image = image();
    let uid = guard["securityContext"]["runAsUser"].to_string();
    assert_eq!(
        image.user.split(':').next(),
        Some(uid.as_str()),
        "USER is numeric and the manifest's"
    );
    assert_ne!(uid, "0");
}

/// The pod's labels, which the PodDisruptionBudget and the NetworkPolicy must select.
fn assert_selects_the_pod(what: &str, selector: &Value) {
    let d = deployment();
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    let selector = selector
        .as_object()
        .unwrap_or_else(|| panic!("{what}: a matchLabels selector"));
    assert!(
        !selector.is_empty(),
        "{what}: an empty selector selects every pod"
    );
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "{what}: selector {k} does not match the pod");
    }
}

fn kustomization_resources() -> Vec<String> {
    items(&yaml("deploy/kubernetes/kustomization.yaml")["resources"])
        .iter()
        .map(|r| str_of(r, "resource").to_owned())
        .collect()
}

#[test]
fn disruption_budget_keeps_a_pod_serving_during_drains() {
    let pdb = yaml("deploy/kubernetes/poddisruptionbudget.yaml");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert!(kustomization_resources().contains(&"poddisruptionbudget.yaml".to_owned()));
    assert_selects_the_pod(
        "the PodDisruptionBudget",
        &pdb["spec"]["selector"]["matchLabels"],
    );
    let replicas = deployment()["spec"]["replicas"].as_u64().expect("replicas");
    let spec = &pdb["spec"];
    let unavailable = match (
        spec["maxUnavailable"].as_u64(),
        spec["minAvailable"].as_u64(),
    ) {
        (Some(max), None) => max,
        (None, Some(min)) => replicas.saturating_sub(min),
        _ => panic!("the PodDisruptionBudget sets a number: maxUnavailable or minAvailable"),
    };
    assert!(
        (1..replicas).contains(&unavailable),
        "{unavailable} of {replicas} pods may be evicted at once: a drain must leave one serving \
         and still be able to proceed"
    );
}

#[test]
fn network_policy_opens_the_proxy_port_and_the_admin_port_to_monitoring_only() {
    let np = yaml("deploy/kubernetes/networkpolicy-admin.yaml");
    assert_eq!(np["kind"], "NetworkPolicy");
    assert!(kustomization_resources().contains(&"networkpolicy-admin.yaml".to_owned()));
    assert_selects_the_pod(
        "the NetworkPolicy",
        &np["spec"]["podSelector"]["matchLabels"],
    );
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));

    let d = deployment();
    let guard = container(pod_spec(&d), GUARD);
    let vars = env(guard);
    let listen = addr_port(vars["VERBOSITY_GUARD_LISTEN"]);
    let admin = addr_port(vars["VERBOSITY_GUARD_ADMIN"]);
    // Each rule's ports, resolved against the guard's container, with who may reach them.
    let mut open_to_all = BTreeSet::new();
    let mut admin_sources = Vec::new();
    for rule in items(&np["spec"]["ingress"]) {
        let ports: Vec<u16> = items(&rule["ports"])
            .iter()
            .map(|p| container_port(guard, &p["port"]))
            .collect();
        assert!(
            !ports.is_empty(),
            "a rule without ports opens every port: {rule}"
        );
        if items(&rule["from"]).is_empty() {
            open_to_all.extend(ports.iter().copied());
        } else if ports.contains(&admin) {
            admin_sources.extend(items(&rule["from"]).iter().cloned());
        }
    }
    assert!(
        open_to_all.contains(&listen),
        "client traffic must reach the guard's port {listen} from anywhere"
    );
    assert!(
        !open_to_all.contains(&admin),
        "the admin port {admin} (/policy, /metrics) must not be open to every source"
    );
    assert_eq!(
        admin_sources,
        [serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
        })],
        "the admin port is open to the monitoring namespace only"
    );
}

/// `deploy/kubernetes/prometheusrule.yaml` as generated from the rule file: a header, the
/// resource's metadata, and the rule file's `groups:` (comments included) under `spec:`.
fn prometheus_rule(alerts: &str) -> String {
    let groups = alerts
        .find("\ngroups:")
        .map(|i| &alerts[i + 1..])
        .expect("alerts.yaml has a top-level groups:");
    let mut out = String::from(
        "# GENERATED from deploy/prometheus/alerts.yaml by tests/deploy.rs: edit that file, then\n\
         # VERBOSITY_GUARD_UPDATE_DOCS=1 cargo test --test deploy\n\
         #\n\
         # The alert rules as a prometheus-operator PrometheusRule (applied separately: it needs\n\
         # the operator's CRDs). kube-prometheus-stack loads the rules whose labels match its\n\
         # Prometheus's ruleSelector (`release: <its release name>` by default): add that label.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: verbosity-guard\n  labels:\n    app.kubernetes.io/name: vehicle-api\n\
         spec:\n",
    );
    for line in groups.lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[test]
fn prometheus_rule_is_the_alert_rule_file() {
    let path = "deploy/kubernetes/prometheusrule.yaml";
    let alerts_text = read("deploy/prometheus/alerts.yaml");
    let expected = prometheus_rule(&alerts_text);
    if std::env::var_os("VERBOSITY_GUARD_UPDATE_DOCS").is_some() {
        std::fs::write(repo(path), &expected).expect("write the PrometheusRule");
    }
    assert!(
        read(path) == expected,
        "{path} differs from deploy/prometheus/alerts.yaml; regenerate it: \
         VERBOSITY_GUARD_UPDATE_DOCS=1 cargo test --test deploy"
    );
    // The same rules, read back as YAML: what the operator loads is what promtool tested.
    let rule = yaml(path);
    let alerts: Value = serde_saphyr::from_str(&alerts_text).expect("alerts.yaml");
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    assert!(
        !kustomization_resources().contains(&"prometheusrule.yaml".to_owned()),
        "the PrometheusRule needs the operator's CRDs: it is applied separately"
    );
}
