//! `verbosity-guard echo-upstream`: a stand-in for the protected API, so that the guard can be
//! tried on a machine with nothing to put behind it. It answers every request `200 OK` with
//! what reached it — method, target, size, the `x-verbosity-guard-*` headers the guard added,
//! then the body — and prints the same first line on stdout. It never fails a request (a body
//! over `max_body` aside, 413), so trying the guard does not look like an ill upstream to the
//! brownout controller or to the critical-errors alert.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 1024;
/// The headers worth showing: the ones the guard writes.
const GUARD_HEADER_PREFIX: &str = "x-verbosity-guard-";

/// A bound echo upstream; [`EchoUpstream::run`] serves it.
pub struct EchoUpstream {
    listener: TcpListener,
    addr: SocketAddr,
    max_body: usize,
}

impl EchoUpstream {
    /// Binds `addr` (port 0 works: [`EchoUpstream::addr`] says which port).
    pub async fn bind(addr: SocketAddr, max_body: usize) -> io::Result<EchoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(EchoUpstream {
            listener,
            addr,
            max_body,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the task is dropped; `log` gets each request's summary line.
    pub async fn run(self, log: impl Fn(&str) + Clone + Send + Sync + 'static) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept(), if conns.len() < MAX_CONNECTIONS => {
                    // An accept error (out of file descriptors, a connection reset before it
                    // was accepted) concerns one connection; the listener goes on.
                    if let Ok((stream, _)) = accepted {
                        conns.spawn(serve_connection(stream, self.max_body, log.clone()));
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, max_body: usize, log: impl Fn(&str) + Clone) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let log = log.clone();
        async move { Ok::<_, Infallible>(echo(req, max_body, &log).await) }
    });
    // A connection error (the client gone mid-request) only ends this connection.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The answer to one request: what arrived, as text.
async fn echo(
    req: Request<Incoming>,
    max_body: usize,
    log: &impl Fn(&str),
) -> Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    let target = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let body = match Limited::new(body, max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            log(&format!("{} {target}: {e}", head.method));
            return text(status, Bytes::from(format!("{e}\n")));
        }
    };
    let first = format!(
        "echo-upstream received {} {target}: {} bytes",
        head.method,
        body.len()
    );
    log(&first);
    let mut out = BytesMut::with_capacity(first.len() + body.len() + 128);
    out.extend_from_slice(first.as_bytes());
    out.extend_from_slice(b"\n");
    for (name, value) in &head.headers {
        if name.as_str().starts_with(GUARD_HEADER_PREFIX) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\n");
        }
    }
    if !body.is_empty() {
        out.extend_from_slice(b"\n");
        out.extend_from_slice(&body);
    }
    text(StatusCode::OK, out.freeze())
}

fn text(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
