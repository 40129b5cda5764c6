//! The upstream client: keep-alive HTTP/1.1 connections to the one upstream, pooled per worker.
//!
//! Each worker thread owns an [`Upstream`], so its idle list is only ever touched by that thread:
//! checkout and return take an uncontended lock. A connection goes back to the pool when its
//! response body has been read to the end (see [`PooledBody`]); a body dropped early closes it.
//! A connection has no task of its own: the request using it drives its I/O (see [`Conn`]).
//! This replaces hyper-util's pooled client, whose shared pool and per-request URI handling cost
//! about 15% of throughput on the loopback benchmark.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::body::UpstreamBody;

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Time allowed to open a TCP connection to the upstream (502 after).
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept, across all workers.
    pub pool_max_idle: usize,
    /// Largest response head (status line and headers) taken from the upstream; a larger one
    /// is a failed exchange (502), never relayed. hyper's floor is 8 KiB.
    pub max_response_head: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 512,
            max_response_head: 64 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} took longer than {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("upstream exchange failed")]
    Exchange(#[source] hyper::Error),
    #[error("upstream response head is over {limit} bytes or 100 fields")]
    HeadTooLarge {
        limit: usize,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream sent no response headers in time")]
    Timeout,
}

impl UpstreamError {
    /// True when no connection could be made (as opposed to one that failed mid-exchange).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }
}

/// One worker's connections to the upstream, sending request bodies of type `B`. Cloning
/// shares the pool. (The demo's simulated fleet uses the same pool with in-memory bodies.)
pub struct Upstream<B = UpstreamBody>(Arc<Inner<B>>);

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream(self.0.clone())
    }
}

struct Inner<B> {
    /// `host:port` to connect to.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// hyper's client connection settings (the response head bound).
    h1: http1::Builder,
    max_response_head: usize,
    idle: Mutex<Vec<Idle<B>>>,
}

struct Idle<B> {
    conn: Conn<B>,
    since: Instant,
}

/// The I/O half of an upstream connection (hyper's `Connection` future), driven by whichever
/// request is using it.
type Io = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One upstream connection: its request handle, its I/O, and the timer that bounds each
/// exchange on it.
///
/// The I/O is not a task of its own: the request using the connection polls it, from
/// [`Conn::exchange`] until its response body has been read ([`PooledBody`]). That saves the
/// channel hop and two task wake-ups per request that a spawned connection task costs. Before
/// a connection goes back to the pool it is polled once with a no-op waker ([`Conn::park`]),
/// so an idle connection holds no request's waker and wakes nobody; the next request to take
/// it re-registers its own. The timer lives as long as the connection and is moved to each new
/// deadline, which tokio does with an atomic update when the deadline is later: no timer is
/// created per request.
struct Conn<B> {
    sender: SendRequest<B>,
    /// `None` once the connection has ended (closed by either side, or failed).
    io: Option<Io>,
    timer: Pin<Box<Sleep>>,
}

impl<B> Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Makes progress on the connection's I/O; wakes `cx` when there is more to do.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(io) = &mut self.io
            && io.as_mut().poll(cx).is_ready()
        {
            // Ended: hyper has failed whatever was in flight, which the caller sees next.
            self.io = None;
        }
    }

    /// Sends `req`, waiting for the response headers until the timer fires. `Err(Some(req))`
    /// gives back a request that was never written.
    async fn exchange(
        &mut self,
        req: Request<B>,
    ) -> Result<Response<Incoming>, (UpstreamError, Option<Request<B>>)> {
        // The response only ever arrives through `drive`, which runs in this task and is
        // woken by the socket; the response channel is polled with a no-op waker so hyper's
        // hand-off does not wake this task a second time.
        let response = self.sender.try_send_request(req);
        let mut response = std::pin::pin!(response);
        std::future::poll_fn(|cx| {
            self.drive(cx);
            if let Poll::Ready(sent) = response
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                return Poll::Ready(sent.map_err(|mut e| {
                    let unsent = e.take_message();
                    (UpstreamError::Exchange(e.into_error()), unsent)
                }));
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err((UpstreamError::Timeout, None))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Readies a connection whose exchange is over for the pool: `None` when it cannot take
    /// another request. One still busy (an upstream that answered before the request body
    /// was sent) finishes that work in a task of its own and then closes.
    fn park(mut self) -> Option<Self> {
        self.drive(&mut Context::from_waker(Waker::noop()));
        let io = self.io.take()?;
        if self.sender.is_ready() {
            self.io = Some(io);
            return Some(self);
        }
        drop(self);
        tokio::spawn(async move {
            let _ = io.await;
        });
        None
    }
}

impl<B> Upstream<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A pool for one worker; `max_idle` is this worker's share of the idle limit.
    pub fn new(authority: &Authority, settings: &UpstreamSettings, max_idle: usize) -> Upstream<B> {
        let port = authority.port_u16().unwrap_or(80);
        Upstream(Arc::new(Inner {
            addr: format!("{}:{port}", authority.host()),
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.pool_idle_timeout,
            max_idle,
            h1: {
                let mut h1 = http1::Builder::new();
                // Without it a head is bounded only by hyper's read buffer (~400 KiB), which
                // still bounds a larger setting.
                h1.max_header_size(settings.max_response_head);
                h1
            },
            max_response_head: settings.max_response_head,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Sends `req` on a pooled connection, or a new one, waiting for the response headers until
    /// `deadline`. A pooled connection that turns out to be unusable before the request was
    /// written (closed by the upstream while idle) is replaced; nothing is ever sent twice.
    pub async fn send(
        &self,
        mut req: Request<B>,
        deadline: Instant,
    ) -> Result<Response<PooledBody<B>>, UpstreamError> {
        while let Some(mut conn) = self.checkout() {
            conn.timer.as_mut().reset(deadline);
            match conn.exchange(req).await {
                Ok(resp) => return Ok(self.pooled(resp, conn)),
                Err((_, Some(unsent))) => req = unsent,
                Err((e, None)) => return Err(self.bounded(e)),
            }
        }
        // Boxed: connecting is rare once the pool is warm, and its future is the largest part
        // of this one's state, which every request carries.
        let mut conn = Box::pin(self.connect(deadline)).await?;
        match conn.exchange(req).await {
            Ok(resp) => Ok(self.pooled(resp, conn)),
            Err((e, _)) => Err(self.bounded(e)),
        }
    }

    /// Names a response head over the bound (hyper reports it as a parse error).
    fn bounded(&self, e: UpstreamError) -> UpstreamError {
        match e {
            UpstreamError::Exchange(source) if source.is_parse_too_large() => {
                UpstreamError::HeadTooLarge {
                    limit: self.0.max_response_head,
                    source,
                }
            }
            e => e,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        // The list holds no invariant a panic could break; keep using it.
        self.0.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkout(&self) -> Option<Conn<B>> {
        let mut idle = self.idle();
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.0.idle_timeout {
                return Some(c.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn<B>) {
        let Some(conn) = conn.park() else {
            return;
        };
        let mut idle = self.idle();
        if idle.len() < self.0.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection whose exchange timer is set to `deadline`.
    async fn connect(&self, deadline: Instant) -> Result<Conn<B>, UpstreamError> {
        let addr = &self.0.addr;
        let stream = tokio::time::timeout(self.0.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                addr: addr.clone(),
                after: self.0.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = self
            .0
            .h1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(Conn {
            sender,
            io: Some(Box::pin(conn)),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }

    fn pooled(&self, resp: Response<Incoming>, conn: Conn<B>) -> Response<PooledBody<B>> {
        resp.map(|inner| {
            let mut conn = Some((conn, self.clone()));
            if inner.is_end_stream() {
                // No body to wait for (HEAD, 204, Content-Length: 0): reusable right away.
                if let Some((conn, pool)) = conn.take() {
                    pool.checkin(conn);
                }
            }
            PooledBody { inner, conn }
        })
    }

    /// Closes idle connections past the idle timeout; run periodically by each worker.
    pub fn sweep(&self) {
        let timeout = self.0.idle_timeout;
        self.idle().retain(|c| c.since.elapsed() < timeout);
    }

    pub fn idle_timeout(&self) -> Duration {
        self.0.idle_timeout
    }
}

pin_project! {
    /// An upstream response body that returns its connection to the pool once read to the end.
    pub struct PooledBody<B = UpstreamBody> {
        #[pin]
        inner: Incoming,
        conn: Option<(Conn<B>, Upstream<B>)>,
    }
}

impl<B> Body for PooledBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = match this.conn {
            // The body only grows when the connection's I/O runs, and that runs here: look
            // (without leaving a waker), drive the I/O (the socket wakes `cx`), look again.
            Some((conn, _)) if conn.io.is_some() => {
                let mut quiet = Context::from_waker(Waker::noop());
                match this.inner.as_mut().poll_frame(&mut quiet) {
                    Poll::Pending => {
                        conn.drive(cx);
                        let again = if conn.io.is_some() { &mut quiet } else { cx };
                        this.inner.as_mut().poll_frame(again)
                    }
                    ready => ready,
                }
            }
            _ => this.inner.as_mut().poll_frame(cx),
        };
        match &polled {
            // Readers such as hyper's server stop polling once `is_end_stream` says the last
            // frame has come, so the end is noticed on that frame, not only on `None`.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                if let Some((conn, pool)) = this.conn.take() {
                    pool.checkin(conn);
                }
            }
            Poll::Ready(None) => {
                if let Some((conn, pool)) = this.conn.take() {
                    pool.checkin(conn);
                }
            }
            // A failed body leaves the connection in an unknown state: close it.
            Poll::Ready(Some(Err(_))) => drop(this.conn.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
