//! The client connection's I/O: protocol sniffing, replay, and lingering close.
//!
//! [`sniff`] reads the first bytes of a connection to tell HTTP/2 prior knowledge from HTTP/1;
//! [`ClientIo`] replays those bytes to hyper before reading on.
//!
//! ## Lingering close
//!
//! When the guard answers before a request body has been read (413, 429 mid-upload), hyper closes
//! the connection with the client's unread bytes still in the socket, and the kernel then resets
//! it: a client still uploading sees "connection reset" instead of the answer that tells it to
//! back off. Like nginx's `lingering_close`, a client connection that hyper shuts down is closed
//! gently: FIN first, then whatever the client still sends is read and discarded until it
//! closes, goes quiet for [`LINGER_QUIET`], or [`LINGER_MAX`] has passed.
//!
//! The lingering happens in a task started when the stream is dropped, after the connection's
//! outcome has been counted, so a client that sees the connection end can read its metric.
//! A connection that hyper drops without a shutdown (header timeout, I/O error) closes at once,
//! unless the guard dropped it after a GOAWAY (see `conns`), which lingers too.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conns::ConnState;

/// Longest time spent discarding a closing client's data.
pub const LINGER_MAX: Duration = Duration::from_secs(5);
/// A closing client silent this long is assumed done.
pub const LINGER_QUIET: Duration = Duration::from_millis(500);

/// HTTP/2 prior knowledge starts with this preface (RFC 9113 §3.4); anything else is HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes decide between HTTP/2 (`true`) and HTTP/1, returning what was
/// read so it can be replayed. Usually one read: clients send the preface or a request line
/// at once.
pub async fn sniff(stream: &mut TcpStream) -> io::Result<(bool, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok((false, buf.freeze()));
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok((false, buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((true, buf.freeze()));
        }
    }
}

/// A client stream: replays the sniffed bytes, then reads and writes pass straight through;
/// its shutdown lingers.
pub struct ClientIo {
    replay: Bytes,
    // Only `None` once dropped.
    stream: Option<TcpStream>,
    closing: bool,
    conn: Arc<ConnState>,
}

impl ClientIo {
    pub fn new(stream: TcpStream, replay: Bytes, conn: Arc<ConnState>) -> Self {
        ClientIo {
            replay,
            stream: Some(stream),
            closing: false,
            conn,
        }
    }

    /// Runs `f` on the stream; `stream` is only taken in `drop`, so the error arm is for form.
    fn with<T>(
        &mut self,
        f: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match &mut self.stream {
            Some(s) => f(Pin::new(s)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    /// Marks the stream for a lingering close; the close itself happens on drop.
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.closing = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if !self.closing && !self.conn.lingers() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

/// Closes `stream` gently: FIN, then discards what the client still sends; see the module docs.
pub async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let hard = Instant::now() + LINGER_MAX;
    let mut scratch = [0u8; 4096];
    loop {
        let quiet = (Instant::now() + LINGER_QUIET).min(hard);
        match tokio::time::timeout_at(quiet, stream.read(&mut scratch)).await {
            // More data: keep discarding (reads yield to the scheduler under tokio's budget).
            Ok(Ok(n)) if n > 0 && Instant::now() < hard => {}
            // Closed, failed, quiet or out of time: done.
            _ => return,
        }
    }
}
