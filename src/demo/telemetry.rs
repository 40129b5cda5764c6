//! The telemetry the simulated vehicles send: NDJSON log records at four levels.
//!
//! Generation and scanning are plain functions over bytes, with no HTTP, so they are cheap to
//! test. Records are rendered from templates prepared once per run, and a batch is written into
//! one buffer, so generating tens of MB/s costs a few copies and no allocation per record.

use std::io::Write as _;

use super::rng::Rng;

/// A record's log level. Stats and the report iterate [`Level::ALL`], so adding a level here
/// adds its rows everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Debug, Level::Info, Level::Warn, Level::Error];
    pub const COUNT: usize = Level::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// The guard's level of the same name.
    pub fn guard_level(self) -> crate::records::Level {
        match self {
            Level::Debug => crate::records::Level::Debug,
            Level::Info => crate::records::Level::Info,
            Level::Warn => crate::records::Level::Warn,
            Level::Error => crate::records::Level::Error,
        }
    }

    fn from_guard_level(level: crate::records::Level) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.guard_level() == level)
    }

    fn from_bytes(b: &[u8]) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str().as_bytes() == b)
    }
}

/// A count per level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelCounts(pub [u64; Level::COUNT]);

impl LevelCounts {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, other: &LevelCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

impl std::ops::Index<Level> for LevelCounts {
    type Output = u64;
    fn index(&self, l: Level) -> &u64 {
        &self.0[l as usize]
    }
}

impl std::ops::IndexMut<Level> for LevelCounts {
    fn index_mut(&mut self, l: Level) -> &mut u64 {
        &mut self.0[l as usize]
    }
}

/// Relative weights of the levels in a batch.
#[derive(Debug, Clone, Copy)]
pub struct LevelMix([u32; Level::COUNT]);

impl LevelMix {
    /// A healthy vehicle: mostly info, some warnings, a few errors, no debug.
    pub const NORMAL: LevelMix = LevelMix([0, 75, 20, 5]);

    /// A vehicle whose verbosity was raised to debug: it still logs everything it logged
    /// before, at the same rate, and `factor - 1` times as much debug on top, so its volume is
    /// `factor` times normal.
    pub fn surge(factor: u32) -> LevelMix {
        let [_, info, warn, error] = LevelMix::NORMAL.0;
        let extra = factor.saturating_sub(1).saturating_mul(info + warn + error);
        LevelMix([extra, info, warn, error])
    }

    fn pick(&self, rng: &mut Rng) -> Level {
        let total: u32 = self.0.iter().sum();
        let mut x = rng.below(u64::from(total.max(1))) as u32;
        for (level, w) in Level::ALL.into_iter().zip(self.0) {
            if x < w {
                return level;
            }
            x -= w;
        }
        Level::Info
    }
}

/// What the fleet's records say, per level. Debug is chatty and large-ish, as in real firmware.
const MESSAGES: [&[(&str, &str)]; Level::COUNT] = [
    &[
        ("can", "frame 0x1A3 decoded"),
        ("bms", "cell voltage sample"),
        ("gnss", "fix update"),
        ("drive", "torque request sample"),
        ("thermal", "coolant loop tick"),
        ("modem", "rssi sample"),
        ("vision", "frame pipeline stats"),
    ],
    &[
        ("charging", "session update"),
        ("body", "door state changed"),
        ("climate", "setpoint applied"),
        ("ota", "update check complete"),
        ("trip", "trip summary"),
    ],
    &[
        ("tpms", "tire pressure below threshold"),
        ("modem", "reconnected after drop"),
        ("power", "12v battery voltage low"),
    ],
    &[
        ("charging", "charge fault, session aborted"),
        ("vision", "camera calibration failed"),
        ("bms", "contactor fault"),
    ],
];

/// Templates per level; more would only cost memory.
const TEMPLATES_PER_LEVEL: usize = 16;
/// Bytes of filler per record, chosen so whole records land between ~200 and ~400 bytes.
const PAYLOAD_MIN: u64 = 100;
const PAYLOAD_MAX: u64 = 260;
/// No record is longer (newline included); enough to size a batch's buffer once.
pub const MAX_RECORD_BYTES: usize = 400;
/// A fixed epoch (2026-01-01T00:00:00Z, in ms) so runs are alike; records carry epoch + run time.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Pre-rendered record tails (everything after `"vin":"..."`), per level.
pub struct Templates(Vec<Vec<Vec<u8>>>);

impl Templates {
    pub fn new(rng: &mut Rng) -> Templates {
        let per_level = MESSAGES
            .iter()
            .zip(Level::ALL)
            .map(|(messages, level)| {
                (0..TEMPLATES_PER_LEVEL)
                    .map(|i| render_tail(level, messages[i % messages.len()], rng))
                    .collect()
            })
            .collect();
        Templates(per_level)
    }

    fn get(&self, level: Level, rng: &mut Rng) -> &[u8] {
        let list = &self.0[level as usize];
        list.get(rng.below(list.len() as u64) as usize)
            .map_or(&[][..], Vec::as_slice)
    }
}

/// `,"level":"info","module":"trip","msg":"trip summary","data":"4f0c..."}\n`
fn render_tail(level: Level, (module, msg): (&str, &str), rng: &mut Rng) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let payload: Vec<u8> = (0..rng.range(PAYLOAD_MIN, PAYLOAD_MAX))
        .map(|_| HEX[rng.below(16) as usize])
        .collect();
    let mut tail = format!(
        ",\"level\":\"{}\",\"module\":\"{module}\",\"msg\":\"{msg}\",\"data\":\"",
        level.as_str()
    )
    .into_bytes();
    tail.extend_from_slice(&payload);
    tail.extend_from_slice(b"\"}\n");
    tail
}

/// One batch to write.
#[derive(Debug, Clone, Copy)]
pub struct BatchSpec<'a> {
    pub vin: &'a str,
    /// Timestamp of the first record; the others follow a millisecond apart.
    pub ts_ms: u64,
    pub records: usize,
    pub mix: LevelMix,
}

/// Appends the batch's NDJSON records to `buf`, drawing levels from its mix, and adds what it
/// wrote to `counts`.
pub fn write_batch(
    buf: &mut Vec<u8>,
    t: &Templates,
    rng: &mut Rng,
    spec: &BatchSpec<'_>,
    counts: &mut LevelCounts,
) {
    for i in 0..spec.records {
        let level = spec.mix.pick(rng);
        counts[level] += 1;
        // Writing to a Vec cannot fail.
        let _ = write!(
            buf,
            "{{\"ts\":{},\"vin\":\"{}\"",
            spec.ts_ms + i as u64,
            spec.vin
        );
        buf.extend_from_slice(t.get(level, rng));
    }
}

/// The same batch as [`write_batch`] writes, as an OTLP `ExportLogsServiceRequest` in protobuf,
/// the way a vehicle running an OpenTelemetry SDK would send it. Bodies carry the same messages
/// and filler; severities are each level's first OTLP number.
pub fn write_otlp_batch(rng: &mut Rng, spec: &BatchSpec<'_>, counts: &mut LevelCounts) -> Vec<u8> {
    use crate::records::otlp::proto;
    use prost::Message as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let log_records = (0..spec.records)
        .map(|i| {
            let level = spec.mix.pick(rng);
            counts[level] += 1;
            let messages = MESSAGES[level as usize];
            let (module, msg) = messages[rng.below(messages.len() as u64) as usize];
            let filler: String = (0..rng.range(PAYLOAD_MIN, PAYLOAD_MAX))
                .map(|_| HEX[rng.below(16) as usize] as char)
                .collect();
            let ts = (spec.ts_ms + i as u64) * 1_000_000;
            proto::LogRecord {
                time_unix_nano: ts,
                observed_time_unix_nano: ts,
                severity_number: level.guard_level().otlp_severity(),
                severity_text: level.as_str().to_ascii_uppercase(),
                body: Some(proto::AnyValue::string(format!("{msg} {filler}"))),
                attributes: vec![proto::KeyValue::string("module", module)],
                ..Default::default()
            }
        })
        .collect();
    let request = proto::ExportLogsServiceRequest {
        resource_logs: vec![proto::ResourceLogs {
            resource: Some(proto::Resource {
                attributes: vec![
                    proto::KeyValue::string("service.name", "vehicle-firmware"),
                    proto::KeyValue::string("vehicle.vin", spec.vin),
                ],
                ..Default::default()
            }),
            scope_logs: vec![proto::ScopeLogs {
                scope: Some(proto::InstrumentationScope {
                    name: "firmware.logging".into(),
                    ..Default::default()
                }),
                log_records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

/// Counts the records of an OTLP protobuf batch by severity, as the mock API does.
pub fn scan_otlp(body: &[u8]) -> Scan {
    use crate::records::otlp::proto;
    use prost::Message as _;
    let mut scan = Scan::default();
    let Ok(request) = proto::ExportLogsServiceRequest::decode(body) else {
        return scan;
    };
    let records = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records);
    for r in records {
        scan.records += 1;
        let level = crate::records::Level::from_otlp_severity(i64::from(r.severity_number));
        if let Some(level) = level.and_then(Level::from_guard_level) {
            scan.levels[level] += 1;
        }
    }
    scan
}

/// What the mock API finds in a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Non-empty lines.
    pub records: u64,
    /// Records whose `"level"` was one of [`Level::ALL`].
    pub levels: LevelCounts,
}

/// Counts the records of an NDJSON batch and their levels, without parsing JSON: for each line,
/// the string after the first `"level":"`. Cheap enough to run on every batch the API accepts.
pub fn scan_batch(body: &[u8]) -> Scan {
    const KEY: &[u8] = b"\"level\":\"";
    let mut scan = Scan::default();
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        scan.records += 1;
        let Some(at) = line.windows(KEY.len()).position(|w| w == KEY) else {
            continue;
        };
        let value = &line[at + KEY.len()..];
        let end = value.iter().position(|&b| b == b'"').unwrap_or(value.len());
        if let Some(level) = Level::from_bytes(&value[..end]) {
            scan.levels[level] += 1;
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(mix: &LevelMix, records: usize) -> (Vec<u8>, LevelCounts) {
        let mut rng = Rng::new(1, 2);
        let t = Templates::new(&mut rng);
        let (mut buf, mut counts) = (Vec::new(), LevelCounts::default());
        let spec = BatchSpec {
            vin: "5YJ3E7EB0KF000001",
            ts_ms: EPOCH_MS,
            records,
            mix: *mix,
        };
        write_batch(&mut buf, &t, &mut rng, &spec, &mut counts);
        (buf, counts)
    }

    #[test]
    fn scanning_a_batch_finds_what_was_written() {
        let (buf, counts) = batch(&LevelMix::surge(20), 500);
        let scan = scan_batch(&buf);
        assert_eq!(scan.records, 500);
        assert_eq!(scan.levels, counts);
        assert_eq!(counts.total(), 500);
    }

    #[test]
    fn records_are_json_of_realistic_size() {
        let (buf, _) = batch(&LevelMix::NORMAL, 200);
        for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                (200..MAX_RECORD_BYTES).contains(&line.len()),
                "{}",
                line.len()
            );
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert!(v["ts"].is_u64() && v["vin"] == "5YJ3E7EB0KF000001" && v["msg"].is_string());
        }
    }

    #[test]
    fn normal_mix_has_no_debug_and_surge_is_mostly_debug() {
        let (_, normal) = batch(&LevelMix::NORMAL, 1000);
        assert_eq!(normal[Level::Debug], 0);
        assert!(normal[Level::Info] > normal[Level::Warn]);
        assert!(normal[Level::Error] > 0);
        let (_, surge) = batch(&LevelMix::surge(20), 1000);
        assert!(surge[Level::Debug] > 900, "{surge:?}");
        assert_eq!(LevelMix::surge(1).0, LevelMix::NORMAL.0);
    }

    #[test]
    fn otlp_batches_scan_to_what_was_written() {
        let mut rng = Rng::new(1, 2);
        let spec = BatchSpec {
            vin: "5YJ3E7EB0KF000001",
            ts_ms: EPOCH_MS,
            records: 300,
            mix: LevelMix::surge(5),
        };
        let mut counts = LevelCounts::default();
        let body = write_otlp_batch(&mut rng, &spec, &mut counts);
        let scan = scan_otlp(&body);
        assert_eq!(scan.records, 300);
        assert_eq!(scan.levels, counts);
        assert!(counts[Level::Debug] > 0 && counts[Level::Info] > 0);
        assert_eq!(scan_otlp(b"not protobuf"), Scan::default());
    }

    #[test]
    fn scan_tolerates_odd_lines() {
        let scan = scan_batch(
            b"{\"level\":\"warn\"}\n\nnot json\n{\"level\":\"trace\"}\n{\"level\":\"err",
        );
        assert_eq!(scan.records, 4);
        assert_eq!(scan.levels.total(), 1);
        assert_eq!(scan.levels[Level::Warn], 1);
    }
}
