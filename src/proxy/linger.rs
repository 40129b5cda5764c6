//! Lingering close for client connections.
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
//! A connection that hyper drops without a shutdown (header timeout, I/O error) closes at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest time spent discarding a closing client's data.
pub const LINGER_MAX: Duration = Duration::from_secs(5);
/// A closing client silent this long is assumed done.
pub const LINGER_QUIET: Duration = Duration::from_millis(500);

/// A client stream whose shutdown lingers; reads and writes pass straight through.
pub struct Lingering {
    // Only `None` once dropped.
    stream: Option<TcpStream>,
    closing: bool,
}

impl Lingering {
    pub fn new(stream: TcpStream) -> Self {
        Lingering {
            stream: Some(stream),
            closing: false,
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

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Lingering {
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

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if !self.closing {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

async fn linger(mut stream: TcpStream) {
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
