//! The batch filter on generated telemetry: parse (split + level lookup), decide (rules and
//! budgets) and rewrite. NDJSON: 64 KiB batches over ~100 MB of 200–400 byte records at mixed
//! levels. OTLP protobuf: ~50 MB of `ExportLogsServiceRequest`s of 500 such records.
//! `cargo bench --bench records`; Criterion prints the throughput.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use verbosity_guard::policy;
use verbosity_guard::records::Batch;
use verbosity_guard::records::filter::decide;
use verbosity_guard::records::otlp::proto;

const CORPUS_BYTES: usize = 100 << 20;
const BATCH_BYTES: usize = 64 << 10;

/// Rules like the shipped policy's, with rates high enough that budgets never run out: every
/// level path runs (keep, rate, sample, drop) but the result does not depend on timing.
const POLICY: &str = r#"
version: 1
routes:
  - name: telemetry
    match: { path_prefix: / }
    records:
      format: ndjson
      levels:
        error: keep
        warn: { rate: 100000000/s, per: client }
        info: { rate: 100000000/s, bytes: 100GiB/s }
        debug: { sample: 1% }
        trace: drop
"#;

/// A small deterministic generator (xorshift), so every run sees the same corpus.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Batches of whole lines, each at most `BATCH_BYTES`.
fn corpus() -> Vec<Vec<u8>> {
    let levels = [
        "debug", "debug", "debug", "info", "info", "info", "warn", "error", "trace",
    ];
    let components = [
        "bms",
        "drive_unit",
        "thermal",
        "gateway",
        "autopilot",
        "infotainment",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut total = 0;
    let mut seq = 0u64;
    while total < CORPUS_BYTES {
        seq += 1;
        let level = levels[rng.below(levels.len() as u64) as usize];
        let comp = components[rng.below(components.len() as u64) as usize];
        let pad = "x".repeat(rng.below(180) as usize);
        // Most loggers put the level early; some put it after the message.
        let line = if rng.below(4) == 0 {
            format!(
                r#"{{"ts":"2026-11-25T10:{:02}:{:02}.{:03}Z","vehicle":"5YJ3E1EA7KF{seq:06}","component":"{comp}","msg":"state report {pad} \"quoted\" level=debug","ctx":{{"soc":{},"temp_c":23.5,"level":"nested"}},"level":"{level}","seq":{seq}}}"#,
                seq % 60,
                seq % 60,
                seq % 1000,
                seq % 100
            )
        } else {
            format!(
                r#"{{"ts":"2026-11-25T10:{:02}:{:02}.{:03}Z","level":"{level}","vehicle":"5YJ3E1EA7KF{seq:06}","component":"{comp}","msg":"state report {pad}","ctx":{{"soc":{},"temp_c":23.5}},"seq":{seq}}}"#,
                seq % 60,
                seq % 60,
                seq % 1000,
                seq % 100
            )
        };
        if batch.len() + line.len() + 1 > BATCH_BYTES {
            total += batch.len();
            batches.push(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH_BYTES),
            ));
        }
        batch.extend_from_slice(line.as_bytes());
        batch.push(b'\n');
    }
    batches
}

fn ndjson(c: &mut Criterion) {
    let policy = policy::parse(POLICY, "bench.yaml").expect("bench policy compiles");
    let records = policy.routes()[0].records.as_ref().expect("records route");
    let batches = corpus();
    let bytes: usize = batches.iter().map(Vec::len).sum();
    let lines: usize = batches
        .iter()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .sum();
    eprintln!(
        "corpus: {} batches, {:.1} MB, {} records, {:.0} bytes/record",
        batches.len(),
        bytes as f64 / 1e6,
        lines,
        bytes as f64 / lines as f64
    );

    let mut g = c.benchmark_group("ndjson");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            for batch in &batches {
                std::hint::black_box(Batch::parse(records, batch).expect("ndjson"));
            }
        })
    });
    g.bench_function("parse+decide+rewrite", |b| {
        b.iter(|| {
            for batch in &batches {
                let mut parsed = Batch::parse(records, batch).expect("ndjson");
                decide(&mut parsed.records, records, Some(1));
                std::hint::black_box(parsed.rewrite(batch));
            }
        })
    });
    g.finish();
    eprintln!(
        "records/s = throughput / {:.0} bytes per record",
        bytes as f64 / lines as f64
    );
}

const OTLP_POLICY: &str = r#"
version: 1
routes:
  - name: otlp
    match: { path_prefix: / }
    records:
      format: otlp-proto
      levels:
        error: keep
        warn: { rate: 100000000/s, per: client }
        info: { rate: 100000000/s, bytes: 100GiB/s }
        debug: { sample: 1% }
        trace: drop
"#;

/// `n` export requests of 500 records each (2 resources × 5 scopes × 50), 200–400 bytes apiece.
fn otlp_corpus(n: usize) -> Vec<Bytes> {
    let severities = [5, 5, 5, 9, 9, 9, 13, 17, 1]; // debug ×3, info ×3, warn, error, trace
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    (0..n)
        .map(|b| {
            let resource_logs = (0..2)
                .map(|r| proto::ResourceLogs {
                    resource: Some(proto::Resource {
                        attributes: vec![
                            proto::KeyValue::string("service.name", "vehicle-gateway"),
                            proto::KeyValue::string(
                                "vehicle.vin",
                                format!("5YJ3E1EA7KF{b:03}{r:03}"),
                            ),
                        ],
                        ..Default::default()
                    }),
                    scope_logs: (0..5)
                        .map(|s| proto::ScopeLogs {
                            scope: Some(proto::InstrumentationScope {
                                name: format!("ecu.{s}"),
                                version: "1.4.2".into(),
                                ..Default::default()
                            }),
                            log_records: (0..50)
                                .map(|i| {
                                    let sev =
                                        severities[rng.below(severities.len() as u64) as usize];
                                    proto::LogRecord {
                                        time_unix_nano: 1_764_000_000_000_000_000 + i,
                                        observed_time_unix_nano: 1_764_000_000_000_000_000 + i,
                                        severity_number: sev,
                                        severity_text: String::new(),
                                        body: Some(proto::AnyValue::string(format!(
                                            "state report {}",
                                            "x".repeat(100 + rng.below(150) as usize)
                                        ))),
                                        attributes: vec![
                                            proto::KeyValue::string("component", "bms"),
                                            proto::KeyValue::string(
                                                "trip",
                                                format!("{:08x}", rng.next() as u32),
                                            ),
                                        ],
                                        trace_id: rng.next().to_le_bytes().repeat(2),
                                        span_id: rng.next().to_le_bytes().to_vec(),
                                        ..Default::default()
                                    }
                                })
                                .collect(),
                            schema_url: String::new(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect();
            Bytes::from(proto::ExportLogsServiceRequest { resource_logs }.encode_to_vec())
        })
        .collect()
}

fn otlp(c: &mut Criterion) {
    let policy = policy::parse(OTLP_POLICY, "bench.yaml").expect("bench policy compiles");
    let records = policy.routes()[0].records.as_ref().expect("records route");
    let batches = otlp_corpus(360);
    let bytes: usize = batches.iter().map(Bytes::len).sum();
    eprintln!(
        "otlp corpus: {} requests, {:.1} MB, {:.0} bytes/record",
        batches.len(),
        bytes as f64 / 1e6,
        bytes as f64 / (batches.len() * 500) as f64
    );
    let mut g = c.benchmark_group("otlp-proto");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse+decide+rewrite", |b| {
        b.iter(|| {
            for batch in &batches {
                let mut parsed = Batch::parse_bytes(records, batch).expect("otlp");
                decide(&mut parsed.records, records, Some(1));
                std::hint::black_box(parsed.rewrite(batch));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, ndjson, otlp);
criterion_main!(benches);
