//! The floor `benches/load.sh` measures the guard against: a plain hyper 1 reverse proxy, the
//! kind the proxy issue cites ("a plain 60-line hyper-1 proxy"). One thread, hyper's HTTP/1
//! server, hyper-util's pooled legacy client, no policy, no metrics, no header rewriting. What
//! the guard costs above this line is the guard's own work; what this costs is hyper's.
//!
//! `load.sh` builds it with `cargo bench --no-run` and starts it as
//! `hyper_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT`. Run by `cargo bench`
//! without those flags, it says so and exits.

use std::net::SocketAddr;

use hyper::Request;
use hyper::body::Incoming;
use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (flag(&args, "--listen"), flag(&args, "--upstream"))
    else {
        println!(
            "hyper_proxy: a load.sh target (--listen ADDR --upstream HOST:PORT); nothing to bench"
        );
        return Ok(());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream: Authority = upstream.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let client: Client<HttpConnector, Incoming> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let listener = TcpListener::bind(listen).await?;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        let mut uri = req.uri().clone().into_parts();
                        uri.scheme = Some(Scheme::HTTP);
                        uri.authority = Some(upstream.clone());
                        if uri.path_and_query.is_none() {
                            uri.path_and_query = Some(PathAndQuery::from_static("/"));
                        }
                        // (Cannot fail with these parts; if it did, the client would refuse
                        // the request and the connection would close.)
                        if let Ok(uri) = Uri::from_parts(uri) {
                            *req.uri_mut() = uri;
                        }
                        client.request(req)
                    });
                    let io = TokioIo::new(stream);
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                });
            }
        })
}
