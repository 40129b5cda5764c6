//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/policy`.
//!
//! It is a separate port (loopback by default) so probes and scrapes never compete with client
//! traffic for connection slots, and so it can stay up while the proxy drains.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::proxy::Shared;
use crate::warn_limited;

/// Admin connections served at once; more wait in the accept queue.
const MAX_ADMIN_CONNECTIONS: usize = 32;
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Admin {
    pub registry: Registry,
    pub shared: Arc<Shared>,
    /// True once the proxy listens with a policy loaded; false again while draining.
    pub ready: AtomicBool,
}

/// Serves until the task is aborted, which [`App::drained`](super::App::drained) does
/// after the proxy has drained, so probes see 503 from `/readyz` throughout the drain.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn_limited!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(respond(&admin, &req)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

fn respond(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            refresh_gauges(&admin.shared);
            let encoder = TextEncoder::new();
            let mut buf = Vec::with_capacity(16 * 1024);
            match encoder.encode(&admin.registry.gather(), &mut buf) {
                Ok(()) => with_type(StatusCode::OK, encoder.format_type(), buf),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if admin.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/policy" => {
            let snap = admin.shared.policy.load();
            let mut json = snap.policy.to_json();
            let loaded = snap
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            json["loaded_at_unix_s"] = loaded.into();
            let mut body = serde_json::to_vec_pretty(&json).unwrap_or_default();
            body.push(b'\n');
            with_type(StatusCode::OK, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz /policy\n",
        ),
    }
}

/// Gauges that mirror live state are read when scraped, so they are exact whenever seen.
fn refresh_gauges(shared: &Shared) {
    let snap = shared.policy.load();
    let gauge = &shared.metrics.tracked_keys;
    gauge.reset();
    for route in snap.policy.routes() {
        for (label, budget) in route.keyed_budgets() {
            let n = i64::try_from(budget.tracked_keys()).unwrap_or(i64::MAX);
            gauge
                .with_label_values(&[route.name.as_str(), label])
                .set(n);
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn with_type(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}
