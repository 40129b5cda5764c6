//! Policy files: YAML text through `policy::parse` (raw serde mirror, then `compile`) and
//! through `check::run` as `verbosity-guard check` runs it on a file.
//!
//! Invariants: the result is a policy or an error that names the file and, for each problem,
//! a place (a field path, `(top level)` at worst) and a message; never a panic. `check`
//! agrees: it passes exactly the texts that compile and prints exactly the compile error. A
//! compiled policy routes every request (its last route takes everything) and renders as JSON
//! (`/policy`).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use verbosity_guard::check;
use verbosity_guard::policy::{self, PolicyError, Problem};

/// One file per fuzzing process, rewritten for each input.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vg-fuzz-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join("policy.yaml")
    })
}

fn named(p: &Problem) {
    assert!(!p.path.is_empty(), "a problem without a place: {p:?}");
    assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
    assert!(p.line.is_none_or(|l| l > 0));
}

fuzz_target!(|data: &[u8]| {
    // `policy::read` reads files as UTF-8 text; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = file();
    let name = path.display().to_string();
    let compiled = policy::parse(text, &name);
    match &compiled {
        Ok(p) => {
            assert!(!p.routes().is_empty());
            for (method, target) in [(Method::GET, "/"), (Method::POST, "/any/where/at/all")] {
                let _ = p.route(&method, target);
            }
            let last = p.routes().len() - 1;
            assert!(
                p.routes()[last].matches(&Method::PATCH, "/x/y"),
                "a catch-all last"
            );
            let _ = p.to_json();
        }
        Err(PolicyError::Parse { file, problem }) => {
            assert_eq!(file, &name);
            named(problem);
        }
        Err(PolicyError::Invalid { file, problems }) => {
            assert_eq!(file, &name);
            assert!(!problems.is_empty(), "invalid without a problem");
            problems.iter().for_each(named);
        }
        Err(e @ (PolicyError::Read { .. } | PolicyError::TooLarge { .. })) => {
            panic!("text cannot fail to be read: {e}")
        }
    }
    if let Err(e) = &compiled {
        assert!(e.to_string().starts_with(&name), "{e}");
    }

    std::fs::write(path, data).expect("writing the policy file");
    let report = check::run(std::slice::from_ref(path));
    assert_eq!(report.ok, compiled.is_ok(), "check and compile disagree");
    match &compiled {
        Ok(_) => assert!(report.stdout.starts_with(&format!("{name}: ok, "))),
        Err(e) => assert_eq!(report.stderr, format!("{e}\n")),
    }
});
