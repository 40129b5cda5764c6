//! Policy hot reload through real sockets: a watched file replaced under load, broken files that
//! keep the last good policy, SIGHUP to the real binary, and a Kubernetes ConfigMap symlink swap.
//! Every wait polls `/policy` or a metric with a deadline; nothing sleeps. (The debounce's
//! timing, a writer that pauses, is tested on a paused clock in `app::policy_watch`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::{GuardProcess, TestGuard, TestUpstream, client, eventually, metric_value};
use verbosity_guard::app::reload::{ReloadError, ReloadOutcome};
use verbosity_guard::policy::{PolicyError, version_hash};

const RELOADS: &str = "verbosity_guard_policy_reloads_total";
const LAST_OK: &str = "verbosity_guard_policy_last_reload_successful";

/// A policy whose `limited` route never changes (1 request a minute, burst 2, per vehicle) and
/// whose `api` route takes `api_payload` (a `payload:` line, or nothing). `note` only changes
/// the text, and so the version hash.
fn policy(api_payload: &str, note: &str) -> String {
    format!(
        "# {note}
version: 1
client_key: {{ header: x-vehicle-id }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    payload: {{ client_requests: {{ rate: 1/m, burst: 2 }} }}
  - name: api
    match: {{ path_prefix: /api }}
{api_payload}  - name: default
    match: {{ path_prefix: / }}
"
    )
}

/// A policy file in its own directory.
struct PolicyDir {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl PolicyDir {
    fn new(text: &str) -> PolicyDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        PolicyDir { dir, path }
    }

    /// Replaces the file the way editors, `mv` and config tools do: write aside, rename over.
    fn replace(&self, text: &str) {
        let tmp = self.dir.path().join(".policy.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

async fn status(url: &str, vehicle: &str) -> u16 {
    client()
        .get(url)
        .header("x-vehicle-id", vehicle)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_for_hash(guard: &TestGuard, text: &str) {
    let want = version_hash(text.as_bytes());
    eventually(&format!("policy {want} to be active"), async || {
        guard.policy_hash().await == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_keeps_unchanged_budgets() {
    let up = TestUpstream::start().await;
    let file = PolicyDir::new(&policy("", "v0"));
    let guard = TestGuard::start_file(&file.path, &up.url, |_| {}).await;
    let url = guard.url.clone();

    // Exhaust the unchanging route's budget for car-1 before any reload.
    for expected in [200, 200, 429] {
        assert_eq!(status(&format!("{url}/limited"), "car-1").await, expected);
    }
    // A request in flight across every reload.
    let held = tokio::spawn(client().get(format!("{url}/__hold")).send());
    while up.next_request().await.target != "/__hold" {}

    // Continuous load on one keep-alive connection, counting every request that is not a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (stop, done, url) = (stop.clone(), done.clone(), url.clone());
        async move {
            let c = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .get(format!("{url}/load"))
                    .header("x-vehicle-id", "car-2")
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => failures.push(r.status().to_string()),
                    Err(e) => failures.push(e.to_string()),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }
    });

    let versions: Vec<String> = (1..=4)
        .map(|i| {
            let burst = 100 + i;
            policy(
                &format!("    payload: {{ route_requests: {{ rate: 1/m, burst: {burst} }} }}\n"),
                &format!("v{i}"),
            )
        })
        .chain([policy(
            "    payload: { client_requests: { rate: 1/m, burst: 1 } }\n",
            "v5",
        )])
        .collect();
    for text in &versions {
        let before = done.load(Ordering::Relaxed);
        file.replace(text);
        wait_for_hash(&guard, text).await;
        eventually("the load to go on after the reload", async || {
            done.load(Ordering::Relaxed) > before
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(failures.is_empty(), "failed under reload: {failures:?}");
    assert!(done.load(Ordering::Relaxed) >= versions.len());

    // The new budget is in force...
    assert_eq!(status(&format!("{url}/api/x"), "car-3").await, 200);
    assert_eq!(status(&format!("{url}/api/x"), "car-3").await, 429);
    // ...and the unchanged one kept its state through five reloads: no fresh burst.
    assert_eq!(status(&format!("{url}/limited"), "car-1").await, 429);
    assert_eq!(status(&format!("{url}/limited"), "car-9").await, 200);

    up.release();
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status(), 200, "the in-flight request finished");

    let text = guard.scrape().await;
    assert_eq!(
        metric_value(&text, RELOADS, &[("result", "success")]),
        Some(5.0)
    );
    assert_eq!(
        metric_value(&text, RELOADS, &[("result", "failure")]),
        Some(0.0)
    );
    let policy_info = format!(
        "verbosity_guard_policy_info{{source=\"{}\",version_hash=\"{}\"}} 1",
        file.path.display(),
        version_hash(versions[4].as_bytes())
    );
    assert!(text.contains(&policy_info), "{policy_info} not in\n{text}");
}

/// Whether mode 000 stops this process reading a file, tried on a file of its own (so the
/// watched directory sees no event).
fn chmod_blocks_reads() -> bool {
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::fs::set_permissions(probe.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::read(probe.path()).is_err()
}

/// The broken-file cases, in the order the tests apply them. Each leaves the file unusable.
#[derive(Debug, Clone, Copy)]
enum Broken {
    InvalidYaml,
    InvalidValue,
    Truncated,
    Unreadable,
    Directory,
    Deleted,
}

const BROKEN: [Broken; 6] = [
    Broken::InvalidYaml,
    Broken::InvalidValue,
    Broken::Truncated,
    Broken::Unreadable,
    Broken::Directory,
    Broken::Deleted,
];

impl Broken {
    /// Breaks the file; false when this case cannot be made here (see `Unreadable`).
    fn apply(self, file: &PolicyDir, good: &str) -> bool {
        let path = &file.path;
        match self {
            Broken::InvalidYaml => file.replace("version: 1\nroutes: [\n  - name: x\n"),
            Broken::InvalidValue => file.replace(&good.replace("rate: 1/m", "rate: 1/d")),
            // A writer that stopped half-way, in place (not atomic): no catch-all route.
            Broken::Truncated => {
                let cut = good.find("  - name: default").unwrap();
                let mut f = std::fs::File::create(path).unwrap();
                f.write_all(&good.as_bytes()[..cut]).unwrap();
            }
            Broken::Unreadable => {
                if !chmod_blocks_reads() {
                    // Root (CAP_DAC_OVERRIDE) reads such files anyway; `Directory` covers an
                    // unreadable path in that case.
                    eprintln!("skipping the chmod 000 case: this process reads mode 000 files");
                    return false;
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
            }
            // Something that is not a readable file where the policy was: EISDIR on read.
            Broken::Directory => {
                std::fs::remove_file(path).unwrap();
                std::fs::create_dir(path).unwrap();
            }
            Broken::Deleted => std::fs::remove_dir(path).unwrap(),
        }
        true
    }

    /// What the error must say: file, line and field where there is one.
    fn expected(self, file: &Path) -> Vec<String> {
        let f = file.display();
        match self {
            Broken::InvalidYaml => vec![format!("{f}:")],
            Broken::InvalidValue => vec![format!(
                "{f}:7: routes[0].payload.client_requests.rate: \"1/d\" is not a rate"
            )],
            Broken::Truncated => vec![format!("{f}: routes: the last route must be a catch-all")],
            Broken::Unreadable => vec![format!("{f}: cannot read"), "ermission denied".into()],
            Broken::Directory => vec![format!("{f}: cannot read"), "directory".into()],
            Broken::Deleted => vec![format!("{f}: cannot read"), "No such file".into()],
        }
    }
}

#[tokio::test]
async fn each_broken_file_keeps_the_last_good_policy_until_a_good_one_comes() {
    let up = TestUpstream::start().await;
    let good = policy("", "good");
    let file = PolicyDir::new(&good);
    // Not watched: every reload below is the one this test asks for.
    let guard = TestGuard::start_file(&file.path, &up.url, |c| c.watch_policy = false).await;
    let good_hash = guard.policy_hash().await;
    let limited = format!("{}/limited", guard.url);
    for expected in [200, 200, 429] {
        assert_eq!(status(&limited, "car-1").await, expected);
    }

    let mut failures = 0.0;
    for case in BROKEN {
        if !case.apply(&file, &good) {
            continue;
        }
        let err = guard
            .app
            .reload()
            .await
            .expect_err("a broken file must not load");
        let ReloadError::Policy(e) = &err else {
            panic!("{case:?}: {err}");
        };
        let message = e.to_string();
        for want in case.expected(&file.path) {
            assert!(
                message.contains(&want),
                "{case:?}: {message:?} lacks {want:?}"
            );
        }
        match case {
            Broken::InvalidYaml | Broken::InvalidValue => {
                assert!(matches!(e, PolicyError::Parse { .. }), "{case:?}: {e:?}")
            }
            Broken::Truncated => assert!(matches!(e, PolicyError::Invalid { .. }), "{e:?}"),
            _ => assert!(matches!(e, PolicyError::Read { .. }), "{case:?}: {e:?}"),
        }
        failures += 1.0;
        assert_eq!(
            guard.policy_hash().await,
            good_hash,
            "{case:?}: old policy kept"
        );
        assert_eq!(
            guard.metric(RELOADS, &[("result", "failure")]).await,
            failures
        );
        assert_eq!(guard.metric(LAST_OK, &[]).await, 0.0);
    }
    assert_eq!(status(&limited, "car-1").await, 429, "still the old budget");

    // The same text as the active policy is a no-op, and clears the failure.
    std::fs::write(&file.path, &good).unwrap();
    let outcome = guard.app.reload().await.unwrap();
    assert_eq!(
        outcome,
        ReloadOutcome::Unchanged {
            version_hash: good_hash.clone()
        }
    );
    assert_eq!(guard.metric(LAST_OK, &[]).await, 1.0);

    let fixed = policy(
        "    payload: { client_requests: { rate: 1/m, burst: 1 } }\n",
        "fixed",
    );
    file.replace(&fixed);
    let outcome = guard.app.reload().await.unwrap();
    let ReloadOutcome::Installed {
        previous_hash,
        version_hash: new_hash,
        budgets_kept,
        budgets,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(previous_hash, good_hash);
    assert_eq!(new_hash, version_hash(fixed.as_bytes()));
    assert_eq!(
        (budgets_kept, budgets),
        (1, 2),
        "limited kept, api's is new"
    );
    assert_eq!(guard.policy_hash().await, new_hash);
    assert_eq!(
        status(&limited, "car-1").await,
        429,
        "state survived the failures"
    );
    let api = format!("{}/api", guard.url);
    assert_eq!(status(&api, "car-1").await, 200);
    assert_eq!(
        status(&api, "car-1").await,
        429,
        "the new budget is in force"
    );
    assert_eq!(guard.metric(RELOADS, &[("result", "success")]).await, 1.0);
    assert_eq!(guard.metric(RELOADS, &[("result", "unchanged")]).await, 1.0);
}

#[tokio::test]
async fn the_watcher_sees_each_broken_file_and_then_the_fix() {
    let up = TestUpstream::start().await;
    let good = policy("", "good");
    let file = PolicyDir::new(&good);
    let guard = TestGuard::start_file(&file.path, &up.url, |_| {}).await;
    let good_hash = guard.policy_hash().await;

    for case in BROKEN {
        let before = guard.metric(RELOADS, &[("result", "failure")]).await;
        if !case.apply(&file, &good) {
            continue;
        }
        eventually(&format!("{case:?} to be seen and refused"), async || {
            guard.metric(RELOADS, &[("result", "failure")]).await > before
        })
        .await;
        assert_eq!(
            guard.policy_hash().await,
            good_hash,
            "{case:?}: old policy kept"
        );
    }
    // The policy file is gone; a new one appears.
    let fixed = policy("", "fixed");
    std::fs::write(&file.path, &fixed).unwrap();
    wait_for_hash(&guard, &fixed).await;
    assert_eq!(guard.metric(LAST_OK, &[]).await, 1.0);
}

#[tokio::test]
async fn a_write_in_several_chunks_is_loaded_once() {
    let up = TestUpstream::start().await;
    let file = PolicyDir::new(&policy("", "v0"));
    // A quiet period far longer than the writer below takes, so its chunks are one burst.
    let guard = TestGuard::start_file(&file.path, &up.url, |c| {
        c.policy_debounce = Duration::from_secs(1);
    })
    .await;
    let next = policy("    payload: { max_body: 1KiB }\n", "v1");
    let mut f = std::fs::File::create(&file.path).unwrap();
    for chunk in next.as_bytes().chunks(next.len() / 4 + 1) {
        // Every chunk alone (or a prefix) is an invalid policy; each write and flush is an
        // event the watcher sees. How pauses between chunks are absorbed is tested on a paused
        // clock (`app::policy_watch`); here the file is written as fast as the kernel takes it.
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
    }
    drop(f);
    wait_for_hash(&guard, &next).await;
    assert_eq!(guard.metric(RELOADS, &[("result", "failure")]).await, 0.0);
    assert_eq!(guard.metric(RELOADS, &[("result", "success")]).await, 1.0);
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_seen() {
    // The layout kubelet writes for a ConfigMap volume: timestamped directories, `..data`
    // pointing at the current one, and each key a symlink through `..data`. An update writes a
    // new directory, points `..data_tmp` at it, renames `..data_tmp` over `..data` (the one
    // atomic step) and removes the old directory. `policy.yaml` itself never changes.
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let version_dir = |n: u32| format!("..2026_01_01_00_00_0{n}.00000000{n}");
    let write_version = |n: u32, text: &str| {
        let d = root.join(version_dir(n));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("policy.yaml"), text).unwrap();
    };
    write_version(1, &policy("", "configmap v1"));
    std::os::unix::fs::symlink(version_dir(1), root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).unwrap();
    let guard = TestGuard::start_file(&root.join("policy.yaml"), &up.url, |_| {}).await;
    let v1 = policy("", "configmap v1");
    assert_eq!(guard.policy_hash().await, version_hash(v1.as_bytes()));

    for n in 2..=3 {
        let text = policy("", &format!("configmap v{n}"));
        write_version(n, &text);
        std::os::unix::fs::symlink(version_dir(n), root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join(version_dir(n - 1))).unwrap();
        wait_for_hash(&guard, &text).await;
    }
    assert_eq!(guard.metric(RELOADS, &[("result", "failure")]).await, 0.0);
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_and_logs_a_failure_once() {
    let up = TestUpstream::start().await;
    let good = policy("", "before SIGHUP");
    let file = PolicyDir::new(&good);
    // --no-watch: only SIGHUP can make it reload.
    let mut guard = GuardProcess::spawn([
        "serve",
        "--no-watch",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        &up.url,
        "--policy",
        file.path.to_str().unwrap(),
    ]);
    let (started, _) = guard.wait_for("verbosity-guard listening").await;
    let admin = format!(
        "http://{}",
        started["fields"]["admin_addr"].as_str().unwrap()
    );
    let failures = async || {
        let text = reqwest::get(format!("{admin}/metrics")).await.unwrap();
        metric_value(
            &text.text().await.unwrap(),
            RELOADS,
            &[("result", "failure")],
        )
    };
    let good_hash = support::policy_hash(&admin).await;

    // Broken: two SIGHUPs, two failures counted, one error logged.
    std::fs::write(&file.path, good.replace("rate: 1/m", "rate: 1/d")).unwrap();
    guard.signal("HUP");
    eventually("the first failure", async || failures().await == Some(1.0)).await;
    let (logged, _) = guard.wait_for("policy reload failed").await;
    assert_eq!(logged["level"], "ERROR", "{logged}");
    let error = logged["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains(":7: routes[0].payload.client_requests.rate: \"1/d\" is not a rate"),
        "{error}"
    );
    assert_eq!(logged["fields"]["active_version_hash"], good_hash.as_str());
    guard.signal("HUP");
    eventually("the second failure", async || failures().await == Some(2.0)).await;
    assert_eq!(support::policy_hash(&admin).await, good_hash);

    // Fixed: the next SIGHUP loads it.
    let fixed = policy("", "after SIGHUP");
    file.replace(&fixed);
    guard.signal("HUP");
    let (reloaded, before) = guard.wait_for("policy reloaded").await;
    assert!(
        !before.iter().any(|l| l.contains("policy reload failed")),
        "the repeated failure was logged again: {before:#?}"
    );
    assert_eq!(
        reloaded["fields"]["version_hash"],
        version_hash(fixed.as_bytes())
    );
    assert_eq!(
        support::policy_hash(&admin).await,
        version_hash(fixed.as_bytes())
    );

    guard.signal("TERM");
    assert_eq!(guard.exit_code().await, Some(0));
}
