//! The request body on its way upstream: streamed frame by frame, never buffered, with the
//! checks that cannot be done from the headers alone.
//!
//! - `max_body` for chunked or lying bodies: the frame that crosses the limit is not forwarded
//!   and the body fails with [`GuardError::BodyTooLarge`];
//! - byte budgets for bodies without a Content-Length, charged per frame;
//! - an idle timeout between frames (hyper has no body read timeout);
//! - the body byte counters.
//!
//! A failure here aborts the upstream request; the handler finds the `GuardError` in the client
//! error's source chain and answers the client with it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

use crate::budget::decision::ByteCharge;
use crate::error::GuardError;
use crate::metrics::ShadowMetrics;
use crate::record::Capture;

pin_project! {
    /// A client body being streamed upstream.
    pub struct GuardedBody {
        #[pin]
        inner: Incoming,
        // Armed on the first Pending only: a body that arrived with its headers never touches
        // the timer wheel or allocates one.
        idle: Option<Pin<Box<Sleep>>>,
        idle_timeout: Duration,
        last_frame: Instant,
        // Most bytes let through, or `None` when Content-Length already bounded the body.
        limit: Option<u64>,
        seen: u64,
        charge: ByteCharge,
        received: IntCounter,
        // `None` when the body is buffered: the bytes forwarded are counted when sent.
        forwarded: Option<IntCounter>,
        // Set once the body failed, so it is not polled again.
        failed: bool,
        // A shadow route's body: decisions are counted here instead of failing the body.
        // Boxed, like `tap`: rare, and the body is moved several times on its way upstream.
        shadow: Option<Box<ShadowStream>>,
        // `serve --record`: a sampled request's capture sees the frames as they pass.
        tap: Option<Box<Capture>>,
    }
}

/// A shadow route's body: what enforce mode would have refused mid-body (`max_body` crossed by
/// a chunked or lying body, a byte budget run out) is counted once and the body goes on
/// unchecked from there, as enforce mode would have stopped deciding at that point.
pub struct ShadowStream {
    metrics: Arc<ShadowMetrics>,
    /// `max_body`, counted instead of enforced.
    limit: Option<u64>,
    refused: Option<&'static str>,
}

impl ShadowStream {
    pub fn new(metrics: Arc<ShadowMetrics>, limit: Option<u64>) -> Self {
        ShadowStream {
            metrics,
            limit,
            refused: None,
        }
    }

    fn refuse(&mut self, reason: &'static str) {
        self.metrics.reject(reason);
        self.refused = Some(reason);
    }
}

impl GuardedBody {
    pub fn new(
        inner: Incoming,
        idle_timeout: Duration,
        limit: Option<u64>,
        charge: ByteCharge,
        received: IntCounter,
        forwarded: Option<IntCounter>,
    ) -> Self {
        GuardedBody {
            inner,
            idle: None,
            idle_timeout,
            last_frame: Instant::now(),
            limit,
            seen: 0,
            charge,
            received,
            forwarded,
            failed: false,
            shadow: None,
            tap: None,
        }
    }

    /// Shows the frames to a recorder's capture (none when the request is not sampled).
    pub fn tap(mut self, capture: Option<Box<Capture>>) -> Self {
        self.tap = capture;
        self
    }

    /// Counts instead of failing (a shadow route); see [`ShadowStream`].
    pub fn shadow(mut self, shadow: ShadowStream) -> Self {
        self.shadow = Some(Box::new(shadow));
        self
    }

    /// Why enforce mode would have refused this shadow body, once it has (already counted).
    pub fn shadow_refused(&self) -> Option<&'static str> {
        self.shadow.as_ref().and_then(|s| s.refused)
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = GuardError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GuardError>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(_))) => return fail(this.failed, GuardError::BodyIncomplete),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                // The timer is reset lazily: it fires at its old deadline and is pushed back
                // to `last_frame + idle_timeout` if frames arrived meanwhile.
                let deadline = *this.last_frame + *this.idle_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                loop {
                    ready!(idle.as_mut().poll(cx));
                    let deadline = *this.last_frame + *this.idle_timeout;
                    if deadline <= Instant::now() {
                        return fail(this.failed, GuardError::BodyTimeout(*this.idle_timeout));
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        };
        *this.last_frame = Instant::now();
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let n = data.len() as u64;
        this.received.inc_by(n);
        if let Some(tap) = this.tap {
            tap.body(data);
        }
        *this.seen += n;
        if let Some(limit) = *this.limit
            && *this.seen > limit
        {
            return fail(this.failed, GuardError::BodyTooLarge { limit });
        }
        if let Some(s) = this.shadow.as_mut().filter(|s| s.refused.is_none())
            && s.limit.is_some_and(|limit| *this.seen > limit)
        {
            s.refuse(GuardError::BodyTooLarge { limit: 0 }.label());
            *this.charge = ByteCharge::default();
        }
        if !this.charge.is_empty()
            && let Err(e) = this.charge.charge(n)
        {
            match this.shadow {
                Some(s) => {
                    s.refuse(e.label());
                    *this.charge = ByteCharge::default();
                }
                None => return fail(this.failed, e),
            }
        }
        if let Some(forwarded) = this.forwarded {
            forwarded.inc_by(n);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn fail(failed: &mut bool, err: GuardError) -> Poll<Option<Result<Frame<Bytes>, GuardError>>> {
    *failed = true;
    Poll::Ready(Some(Err(err)))
}

/// What the upstream client sends: nothing, a guarded client body, or a buffered batch.
///
/// The streamed body is boxed: the request that carries this is moved a dozen times on its
/// way into hyper's client, and a GET (no body) should not pay for moving a `GuardedBody`.
pub enum UpstreamBody {
    Empty,
    Stream { body: Pin<Box<GuardedBody>> },
    Full { data: Option<Bytes> },
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = GuardError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GuardError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Stream { body } => body.as_mut().poll_frame(cx),
            UpstreamBody::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Stream { body } => body.is_end_stream(),
            UpstreamBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Stream { body } => body.size_hint(),
            UpstreamBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
