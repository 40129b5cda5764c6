//! Shared by the integration tests: a real upstream HTTP server that records what reaches it,
//! the guard started in-process on 127.0.0.1:0, and metric scraping.
#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; see Cargo.toml [lints]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, mpsc};
use verbosity_guard::app::{App, Config, PolicySource};

/// How long a test waits for something that should happen promptly before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The request target exactly as received (origin form: path and query).
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP/1.1 server on loopback. Its behaviour is chosen by the request path:
/// - `/__status/{code}`: empty response with that status;
/// - `/__slow/{ms}`: waits, then 200 (scripted upstream slowness);
/// - `/__stream/{bytes}`: streams that many bytes back in 16 KiB chunks;
/// - `/__hop`: a response carrying hop-by-hop headers;
/// - `/__hold`: records the request, then answers only after [`TestUpstream::release`];
/// - `/__abort`: drops the connection without answering;
/// - `/__progressive`: reports each request body frame as it arrives (see
///   [`TestUpstream::body_progress`]), then answers `first`, and `second` only after
///   [`TestUpstream::release`], so a test can prove bodies stream instead of buffering;
/// - anything else: 200 echoing the request body, with `x-upstream-saw-path`.
///
/// Every request is recorded once its body has been read (before answering).
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub url: String,
    requests: Mutex<mpsc::UnboundedReceiver<Recorded>>,
    progress: Mutex<mpsc::UnboundedReceiver<usize>>,
    release: Arc<Notify>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let hold = release.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let hold = hold.clone();
                let progress = progress_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        handle(req, tx.clone(), progress.clone(), hold.clone())
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestUpstream {
            addr,
            url: format!("http://{addr}"),
            requests: Mutex::new(rx),
            progress: Mutex::new(progress_rx),
            release,
        }
    }

    /// The next request the upstream received; fails the test if none arrives in time.
    pub async fn next_request(&self) -> Recorded {
        let mut rx = self.requests.lock().await;
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("upstream received no request in time")
            .expect("upstream stopped")
    }

    /// A request already received, if any (does not wait).
    pub async fn try_next_request(&self) -> Option<Recorded> {
        self.requests.lock().await.try_recv().ok()
    }

    /// Waits until the upstream has received at least `bytes` of a `/__progressive` request
    /// body (frames may be split or merged on the way) and returns the count it reached.
    pub async fn body_progress(&self, bytes: usize) -> usize {
        let mut rx = self.progress.lock().await;
        loop {
            let total = tokio::time::timeout(PATIENCE, rx.recv())
                .await
                .expect("upstream received no body frame in time")
                .expect("upstream stopped");
            if total >= bytes {
                return total;
            }
        }
    }

    /// Lets one held `/__hold` request answer (or the next one, if none is waiting yet).
    pub fn release(&self) {
        self.release.notify_one();
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Recorded>,
    progress: mpsc::UnboundedSender<usize>,
    hold: Arc<Notify>,
) -> Result<Response<UpstreamBody>, std::io::Error> {
    if req.uri().path() == "/__progressive" {
        return Ok(progressive(req.into_body(), progress, hold).await);
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".into(), |p| p.to_string());
    let _ = tx.send(Recorded {
        method: parts.method.clone(),
        target: target.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let arg = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|s| s.parse::<u64>().ok())
    };
    let full = |b: Bytes| Full::new(b).boxed();
    let mut resp = Response::new(full(Bytes::new()));
    if let Some(code) = arg("/__status/") {
        *resp.status_mut() = StatusCode::from_u16(code as u16).unwrap();
    } else if let Some(ms) = arg("/__slow/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else if let Some(n) = arg("/__stream/") {
        let chunks = (0..n).step_by(16 * 1024).map(move |off| {
            let len = (n - off).min(16 * 1024) as usize;
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; len])))
        });
        *resp.body_mut() = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    } else if path == "/__hop" {
        let h = resp.headers_mut();
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
    } else if path == "/__hold" {
        hold.notified().await;
    } else if path == "/__abort" {
        return Err(std::io::Error::other("aborting on purpose"));
    } else {
        resp.headers_mut()
            .insert("x-upstream-saw-path", target.parse().unwrap());
        *resp.body_mut() = full(body);
    }
    Ok(resp)
}

async fn progressive(
    mut body: Incoming,
    progress: mpsc::UnboundedSender<usize>,
    hold: Arc<Notify>,
) -> Response<UpstreamBody> {
    let mut total = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            total += data.len();
            let _ = progress.send(total);
        }
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    let _ = tx.try_send(Ok(Frame::data(Bytes::from_static(b"first"))));
    tokio::spawn(async move {
        hold.notified().await;
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await;
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::new(StreamBody::new(stream).boxed())
}

/// The guard, started in-process in front of an upstream.
pub struct TestGuard {
    pub app: App,
    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub url: String,
    pub admin: String,
}

impl TestGuard {
    pub async fn start(policy_yaml: &str, upstream_url: &str) -> TestGuard {
        Self::start_with(policy_yaml, upstream_url, |_| {}).await
    }

    pub async fn start_with(
        policy_yaml: &str,
        upstream_url: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> TestGuard {
        let source = PolicySource::Text {
            name: "test-policy.yaml".into(),
            text: policy_yaml.into(),
        };
        Self::start_from(source, upstream_url, tweak).await
    }

    /// The guard reading its policy from a file (watched unless `tweak` says otherwise).
    pub async fn start_file(
        policy: &Path,
        upstream_url: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> TestGuard {
        Self::start_from(PolicySource::File(policy.into()), upstream_url, tweak).await
    }

    async fn start_from(
        source: PolicySource,
        upstream_url: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> TestGuard {
        let mut cfg = Config::new(source, upstream_url);
        // A test machine running many tests at once can stall a worker for longer than the
        // default lag threshold; tests of overload set it themselves (tests/overload.rs).
        cfg.overload.max_lag = None;
        tweak(&mut cfg);
        let app = App::start(cfg).await.expect("guard starts");
        TestGuard {
            url: format!("http://{}", app.proxy_addr()),
            admin: format!("http://{}", app.admin_addr()),
            app,
        }
    }

    /// The metrics page, as Prometheus would scrape it.
    pub async fn scrape(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series, 0 when it does not exist (yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.scrape().await, name, labels).unwrap_or(0.0)
    }

    /// The active policy's version hash, from `/policy`.
    pub async fn policy_hash(&self) -> String {
        policy_hash(&self.admin).await
    }
}

/// The active policy's version hash, from the `/policy` of the admin listener at `admin`.
pub async fn policy_hash(admin: &str) -> String {
    let resp = reqwest::get(format!("{admin}/policy")).await.unwrap();
    json(resp).await["version_hash"]
        .as_str()
        .expect("/policy has a version_hash")
        .to_owned()
}

/// Polls `check` every 20 ms until it holds; fails the test after [`PATIENCE`]. This is how tests
/// wait for something asynchronous (a reload, a metric): never a fixed sleep.
pub async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    eventually_within(PATIENCE, what, check).await
}

/// [`eventually`], for something a scenario says may take up to `within`.
pub async fn eventually_within(within: Duration, what: &str, check: impl AsyncFnMut() -> bool) {
    assert!(
        poll_within(within, check).await,
        "timed out waiting for {what}"
    );
}

/// What [`eventually_within`] does, without failing: polls `check` every 20 ms until it holds
/// (true) or `within` has passed (false). For a test that fails with what it saw on the way.
pub async fn poll_within(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Finds `name{labels...} value` in Prometheus text; labels may be given in any order and must
/// all match (the series may have more).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|line| {
            let Some(rest) = line.strip_prefix(name) else {
                return false;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return false;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A policy with one budgeted route and a catch-all, for tests that need just one knob.
pub fn policy_with_route(route_yaml: &str) -> String {
    format!(
        "version: 1\nclient_key: {{ header: x-vehicle-id }}\nroutes:\n{route_yaml}\n  - name: default\n    match: {{ path_prefix: / }}\n"
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// Sends raw bytes on a new connection and returns the response head (status line and headers)
/// as soon as it has arrived; the connection is left as the server leaves it.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (tokio::net::TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Reads an HTTP message head from `stream`, up to and including the blank line, and nothing
/// after it (what follows stays in the stream). Stops early if the peer closes; fails the test
/// if the head takes longer than [`PATIENCE`].
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(PATIENCE, async {
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await
    .expect("no message head in time");
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until the peer closes the connection (or it fails); returns what was read. Fails the
/// test if the connection is still open after [`PATIENCE`].
pub async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf))
        .await
        .expect("the connection was not closed in time")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The value of the header `name`, which must be present and visible ASCII.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// `data` gzip-compressed, as a client sends a `Content-Encoding: gzip` body.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The gzip body `data` decompressed; fails the test if it is not gzip.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out)
        .expect("a gzip body");
    out
}

/// Parses the JSON body of a guard response.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).expect("JSON body")
}

/// A request body sent chunked (no Content-Length), one frame per item of `frames`.
pub fn chunked(frames: impl IntoIterator<Item = Vec<u8>>) -> reqwest::Body {
    let frames: Vec<Result<Vec<u8>, std::io::Error>> = frames.into_iter().map(Ok).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(frames))
}

/// Fails the test, saying how to install it, unless `program args` runs and succeeds: for the
/// tests marked `#[ignore = "needs ..."]`, which run only when asked to (`--include-ignored`)
/// and must not pass without their program.
pub fn require_program(program: &str, args: &[&str], install: &str) {
    let probe = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    let problem = match probe {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!(
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {program}: {e}"),
    };
    panic!(
        "this test needs {install} ({problem}), or run the suite without --include-ignored to \
         leave it out"
    );
}

/// A path of the repository (relative to the crate root).
pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The files of `dir` (relative to the crate) ending in `.ext`, sorted; fails if there are none,
/// so a check over them cannot pass on nothing.
pub fn files(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let dir = repo(dir);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .{ext} files in {}", dir.display());
    files
}

/// The real binary, run with `--log-format json` and its log lines read as they come. If the
/// test fails half-way the process is killed, so it cannot outlive the test (it would keep
/// the test harness's output pipe open).
pub struct GuardProcess {
    child: Option<std::process::Child>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl GuardProcess {
    /// Starts `verbosity-guard --log-format json ARGS...`.
    pub fn spawn<I, S>(args: I) -> GuardProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_verbosity-guard"))
            .args(["--log-format", "json"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        GuardProcess {
            child: Some(child),
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// The next log line containing `needle`, parsed, and every line before it; fails the test
    /// if none comes within [`PATIENCE`].
    pub async fn wait_for(&mut self, needle: &str) -> (serde_json::Value, Vec<String>) {
        let mut skipped = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            loop {
                let line = self.lines.recv().await.expect("guard exited early");
                if line.contains(needle) {
                    let json = serde_json::from_str(&line).expect("JSON log line");
                    return (json, skipped);
                }
                skipped.push(line);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
            .code()
    }
}

impl Drop for GuardProcess {
    fn drop(&mut self) {
        // Only reached with the child still here when the test failed before `exit_code`.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
