//! Traffic files as `simulate` reads them: `traffic::Traffic::open` (NDJSON or HAR, told apart
//! by content) on the fuzzer's bytes, then a replay against the example policy on a virtual
//! clock (`simulate::replay`).
//!
//! Invariants: every entry stays within the limits (request count, body size), its body size
//! covers its body, its target is origin-form, no framing header survives; HAR entries come in
//! time order and NDJSON ones in line order; the first problem ends the file and names it; and
//! the replay counts exactly the entries read before it.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use governor::clock::FakeRelativeClock;
use libfuzzer_sys::fuzz_target;
use verbosity_guard::policy::{self, FleetRuntime};
use verbosity_guard::protect::Brownout;
use verbosity_guard::simulate;
use verbosity_guard::traffic::{self, Entry, Limits, Place, Traffic};

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vg-fuzz-traffic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        dir.join("traffic.ndjson")
    })
}

const LIMITS: Limits = Limits {
    max_size: 1 << 20,
    max_requests: 64,
    max_body: 4 << 10,
};

/// True when some line names a `body_file`: that reads another file, which would make the
/// target depend on the machine it runs on, so such inputs are skipped.
fn reads_files(data: &[u8]) -> bool {
    data.split(|&b| b == b'\n').any(|line| {
        serde_json::from_slice::<serde_json::Value>(line)
            .is_ok_and(|v| v.get("body_file").is_some())
    })
}

fn check_entry(e: &Entry) {
    assert!(e.body.len() as u64 <= LIMITS.max_body);
    assert!(e.body_size >= e.body.len() as u64);
    assert!(e.target.as_str().starts_with('/'), "{:?}", e.target);
    assert!(!e.headers.contains_key(http::header::CONTENT_LENGTH));
    assert!(!e.headers.contains_key(http::header::TRANSFER_ENCODING));
}

fuzz_target!(|data: &[u8]| {
    if reads_files(data) {
        return;
    }
    let path = file();
    std::fs::write(path, data).expect("writing the traffic file");
    let name = path.display().to_string();

    let Ok(traffic) = Traffic::open(path, LIMITS) else {
        return;
    };
    let format = traffic.format();
    let (mut ok, mut failed) = (Vec::new(), None);
    for e in traffic {
        match e {
            Ok(e) => ok.push(e),
            Err(e) => {
                assert!(failed.is_none(), "an entry after the first problem");
                assert!(e.to_string().starts_with(&name), "{e}");
                failed = Some(e);
            }
        }
    }
    assert!(ok.len() as u64 <= LIMITS.max_requests);
    ok.iter().for_each(check_entry);
    match format {
        traffic::Format::Har => {
            assert!(
                ok.windows(2).all(|w| w[0].at <= w[1].at),
                "HAR in time order"
            );
            assert!(ok.iter().all(|e| matches!(e.place, Place::Entry(_))));
        }
        traffic::Format::Ndjson => assert!(ok.windows(2).all(|w| match (w[0].place, w[1].place) {
            (Place::Line(a), Place::Line(b)) => a < b,
            _ => false,
        })),
    }

    // The replay reads the file again, and stops where the reading did.
    let clock = FakeRelativeClock::default();
    let text = include_str!("../../policies/vehicle-api.yaml");
    let fleet = FleetRuntime::Alone { pods: Some(1) };
    let policy = policy::parse_with_clock(text, "vehicle-api.yaml", &clock, &fleet)
        .expect("the example policy");
    let traffic = Traffic::open(path, LIMITS).expect("opened once already");
    let mut report = simulate::empty_report(&policy, &traffic, path, Brownout::Off);
    let replayed = simulate::replay(&policy, &clock, traffic, &mut report);
    assert_eq!(replayed.is_ok(), failed.is_none());
    assert_eq!(report.requests, ok.len() as u64);
});
