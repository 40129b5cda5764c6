//! The request body on its way upstream: streamed frame by frame, never buffered, with the
//! checks that cannot be done from the headers alone.
//!
//! - the body's [`BodyRules`]: `max_body` for chunked or lying bodies (the frame that crosses
//!   the limit is not forwarded) and byte budgets for bodies without a Content-Length, charged
//!   per frame; a refusal goes to the request's [`BodyJudge`];
//! - an idle timeout between frames (hyper has no body read timeout);
//! - the body byte counters.
//!
//! A failure here aborts the upstream request; the handler finds the [`Reject`] in the client
//! error's source chain and answers the client with it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

use super::shadow::BodyJudge;
use crate::decide::{BodyRules, Reject};
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
        rules: BodyRules,
        // What becomes of a refusal by `rules`: fail the body, or count it (shadow mode).
        judge: BodyJudge,
        received: IntCounter,
        // `None` when the body is buffered: the bytes forwarded are counted when sent.
        forwarded: Option<IntCounter>,
        // Set once the body failed, so it is not polled again.
        failed: bool,
        // `serve --record`: a sampled request's capture sees the frames as they pass.
        tap: Option<Box<Capture>>,
    }
}

impl GuardedBody {
    pub fn new(
        inner: Incoming,
        idle_timeout: Duration,
        rules: BodyRules,
        judge: BodyJudge,
        received: IntCounter,
        forwarded: Option<IntCounter>,
    ) -> Self {
        GuardedBody {
            inner,
            idle: None,
            idle_timeout,
            last_frame: Instant::now(),
            rules,
            judge,
            received,
            forwarded,
            failed: false,
            tap: None,
        }
    }

    /// Shows the frames to a recorder's capture (none when the request is not sampled).
    pub fn tap(mut self, capture: Option<Box<Capture>>) -> Self {
        self.tap = capture;
        self
    }

    /// The body's judge, with what it has counted so far.
    pub fn judge(&self) -> &BodyJudge {
        &self.judge
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Reject;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Reject>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(_))) => return fail(this.failed, Reject::BodyIncomplete),
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
                        return fail(this.failed, Reject::BodyTimeout(*this.idle_timeout));
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
        if let Err(refusal) = this.rules.data(n) {
            match this.judge.verdict(refusal) {
                Err(refusal) => return fail(this.failed, refusal),
                // Counted only (shadow mode): enforce mode would have stopped deciding here.
                Ok(()) => this.rules.disarm(),
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

fn fail(failed: &mut bool, err: Reject) -> Poll<Option<Result<Frame<Bytes>, Reject>>> {
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
    type Error = Reject;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Reject>>> {
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
