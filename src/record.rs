//! `serve --record FILE`: captures a sample of live requests in the traffic format `simulate`
//! replays (see [`traffic::ndjson`](crate::traffic::ndjson)).
//!
//! The request path only decides whether to sample (an atomic load, and a hash when sampling
//! less than everything) and, for a sampled request, keeps references to its head and body
//! frames (no copy). The line is written by a thread of its own, fed through a bounded
//! channel: when the channel is full the capture is dropped and counted, so recording never
//! blocks or slows a request. Bounds: `--record-max-body` bytes of each body are kept, at most
//! [`QUEUE_ENTRIES`] captures and [`QUEUE_BYTES`] of bodies wait for the writer, and the file
//! stops growing at `--record-max-bytes` (later captures are counted and dropped).
//!
//! Sampling is by client: a client whose key is sampled has every request recorded (so per
//! client budgets replay as they ran); requests of routes with no per-client budget are
//! sampled one by one. Requests refused for a path that cannot be normalized are not recorded.
//! Credentials are not written: `authorization`, `proxy-authorization` and `cookie` values are
//! replaced by `redacted-` and a keyed hash, which still tells clients apart.

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, request};
use prometheus::{IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::records::Sample;
use crate::traffic::ndjson;

const RECORDING: u8 = 0;
/// The file reached `--record-max-bytes`.
const FILE_FULL: u8 = 1;
/// The file could not be written.
const FAILED: u8 = 2;

/// Captures waiting for the writer, at most.
pub const QUEUE_ENTRIES: usize = 1024;
/// Body bytes waiting for the writer, at most.
pub const QUEUE_BYTES: u64 = 32 << 20;

/// `--record*`.
#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub path: PathBuf,
    /// Share of clients (or of requests, on routes without client budgets) recorded.
    pub sample: Sample,
    /// The file stops growing at this size.
    pub max_bytes: u64,
    /// Bytes of each body kept; a larger body is recorded partially, with its full size.
    pub max_body: u64,
}

/// Headers whose values are credentials.
const REDACTED: [http::HeaderName; 3] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
];

/// The recorder a serving guard holds; captures requests and hands them to the writer thread.
pub struct Recorder {
    shared: Arc<Inner>,
    tx: mpsc::SyncSender<Captured>,
    sample: Sample,
    max_body: u64,
    /// Per-request sampling draws from this sequence.
    sequence: AtomicU64,
    salt: u64,
    redact: RandomState,
}

/// What the request side and the writer share.
struct Inner {
    /// [`RECORDING`], or why recording stopped: nothing more is sampled then.
    state: AtomicU8,
    queued_bytes: AtomicU64,
    counters: Counters,
}

struct Counters {
    written: IntCounter,
    queue_full: IntCounter,
    file_full: IntCounter,
    write_error: IntCounter,
    file_bytes: IntGauge,
}

/// A request on its way to the file.
struct Captured {
    at: u64,
    method: Method,
    target: String,
    headers: HeaderMap,
    peer: IpAddr,
    body: Vec<Bytes>,
    kept: u64,
    body_size: u64,
}

impl Recorder {
    /// Creates (or truncates) the file and starts the writer thread.
    pub fn start(cfg: &RecordConfig, metrics: &Metrics) -> io::Result<Recorder> {
        let file = File::create(&cfg.path)?;
        let family = &metrics.recorded;
        let shared = Arc::new(Inner {
            state: AtomicU8::new(RECORDING),
            queued_bytes: AtomicU64::new(0),
            counters: Counters {
                written: family.with_label_values(&["written"]),
                queue_full: family.with_label_values(&["queue_full"]),
                file_full: family.with_label_values(&["file_full"]),
                write_error: family.with_label_values(&["write_error"]),
                file_bytes: metrics.record_file_bytes.clone(),
            },
        });
        let (tx, rx) = mpsc::sync_channel(QUEUE_ENTRIES);
        let writer = Writer {
            out: BufWriter::with_capacity(256 << 10, file),
            written: 0,
            max_bytes: cfg.max_bytes,
            shared: shared.clone(),
            path: cfg.path.clone(),
        };
        std::thread::Builder::new()
            .name("guard-recorder".into())
            .spawn(move || writer.run(rx))?;
        let redact = RandomState::new();
        let salt = redact.hash_one(0x7265_636f_7264u64);
        Ok(Recorder {
            shared,
            tx,
            sample: cfg.sample,
            max_body: cfg.max_body,
            sequence: AtomicU64::new(0),
            salt,
            redact,
        })
    }

    /// A capture of this request when it is sampled. `key` is the client's key when the route
    /// has one; `parts` must still be the request as received (before the guard rewrites it).
    pub fn sample(
        &self,
        key: Option<u64>,
        parts: &request::Parts,
        peer: IpAddr,
        declared: Option<u64>,
    ) -> Option<Box<Capture>> {
        if self.sample.per_million < 1_000_000 {
            let draw = match key {
                Some(k) => mix(k ^ self.salt),
                None => mix(self.sequence.fetch_add(1, Ordering::Relaxed) ^ self.salt),
            };
            if !self.sample.keeps(draw) {
                return None;
            }
        }
        // Once recording has stopped, a sampled request is only counted.
        let counters = &self.shared.counters;
        match self.shared.state.load(Ordering::Relaxed) {
            RECORDING => {}
            FILE_FULL => {
                counters.file_full.inc();
                return None;
            }
            _ => {
                counters.write_error.inc();
                return None;
            }
        }
        let mut headers = parts.headers.clone();
        for name in &REDACTED {
            if let http::header::Entry::Occupied(mut e) = headers.entry(name) {
                let hashes: Vec<HeaderValue> = e
                    .iter()
                    .map(|v| {
                        let h = self.redact.hash_one(v.as_bytes());
                        HeaderValue::try_from(format!("redacted-{h:016x}"))
                            .unwrap_or_else(|_| HeaderValue::from_static("redacted"))
                    })
                    .collect();
                let mut hashes = hashes.into_iter();
                if let Some(first) = hashes.next() {
                    e.insert(first);
                }
                for h in hashes {
                    e.append(h);
                }
            }
        }
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        // Boxed: a capture rides along in every request body's state, and most requests are
        // not sampled, so it costs them a pointer instead of its size.
        Some(Box::new(Capture {
            captured: Some(Captured {
                at,
                method: parts.method.clone(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
                headers,
                peer,
                body: Vec::new(),
                kept: 0,
                body_size: declared.unwrap_or(0),
            }),
            seen: 0,
            max_body: self.max_body,
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }))
    }
}

/// SplitMix64's finalizer: spreads keys and sequence numbers evenly over the sample threshold.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A sampled request being captured. Sent to the writer when dropped, with as much of the
/// body as it saw: however the request ends, it is recorded once.
pub struct Capture {
    captured: Option<Captured>,
    seen: u64,
    max_body: u64,
    tx: mpsc::SyncSender<Captured>,
    shared: Arc<Inner>,
}

impl Capture {
    /// More of the body, as it arrives; kept up to `--record-max-body` (by reference).
    pub fn body(&mut self, data: &Bytes) {
        let Some(c) = &mut self.captured else {
            return;
        };
        self.seen += data.len() as u64;
        let room = self.max_body.saturating_sub(c.kept);
        if room > 0 && !data.is_empty() {
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            c.body.push(data.slice(..take));
            c.kept += take as u64;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let Some(mut c) = self.captured.take() else {
            return;
        };
        c.body_size = c.body_size.max(self.seen);
        let queued = &self.shared.queued_bytes;
        if queued.load(Ordering::Relaxed) + c.kept > QUEUE_BYTES {
            self.shared.counters.queue_full.inc();
            return;
        }
        let kept = c.kept;
        queued.fetch_add(kept, Ordering::Relaxed);
        match self.tx.try_send(c) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                queued.fetch_sub(kept, Ordering::Relaxed);
                self.shared.counters.queue_full.inc();
            }
            // The writer has stopped (the file could not be written).
            Err(mpsc::TrySendError::Disconnected(_)) => {
                queued.fetch_sub(kept, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread's side.
struct Writer {
    out: BufWriter<File>,
    written: u64,
    max_bytes: u64,
    shared: Arc<Inner>,
    path: PathBuf,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Captured>) {
        let mut line = Vec::new();
        // Blocks for the next capture; flushes whenever the queue runs dry, so the file is
        // whole up to the last line soon after each request.
        while let Ok(mut c) = rx.recv() {
            loop {
                self.shared
                    .queued_bytes
                    .fetch_sub(c.kept, Ordering::Relaxed);
                self.write(&mut line, &c);
                match rx.try_recv() {
                    Ok(next) => c = next,
                    Err(_) => break,
                }
            }
            if let Err(e) = self.out.flush() {
                self.failed(&e);
            }
        }
        let _ = self.out.flush();
    }

    fn write(&mut self, line: &mut Vec<u8>, c: &Captured) {
        let counters = &self.shared.counters;
        match self.shared.state.load(Ordering::Relaxed) {
            RECORDING => {}
            FILE_FULL => return counters.file_full.inc(),
            _ => return counters.write_error.inc(),
        }
        let body: Vec<u8>;
        let body: &[u8] = match c.body.as_slice() {
            [] => &[],
            [one] => one,
            many => {
                body = many.concat();
                &body
            }
        };
        line.clear();
        ndjson::write_line(
            line,
            &ndjson::Record {
                at: c.at,
                method: &c.method,
                target: &c.target,
                headers: &c.headers,
                peer: c.peer,
                body,
                body_size: c.body_size,
            },
        );
        if self.written + line.len() as u64 > self.max_bytes {
            self.shared.state.store(FILE_FULL, Ordering::Relaxed);
            counters.file_full.inc();
            tracing::warn!(
                path = %self.path.display(),
                max_bytes = self.max_bytes,
                "recording stopped: the file reached --record-max-bytes"
            );
            return;
        }
        match self.out.write_all(line) {
            Ok(()) => {
                self.written += line.len() as u64;
                counters.written.inc();
                counters
                    .file_bytes
                    .set(i64::try_from(self.written).unwrap_or(i64::MAX));
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Stops recording after a write error (a full disk does not get better by retrying).
    fn failed(&mut self, e: &io::Error) {
        if self.shared.state.swap(FAILED, Ordering::Relaxed) != FAILED {
            tracing::error!(path = %self.path.display(), "recording stopped: cannot write: {e}");
        }
        self.shared.counters.write_error.inc();
    }
}
