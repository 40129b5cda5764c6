//! Client connections under the `--max-connections` cap, and which of them are idle.
//!
//! Every accepted connection holds a slot of the cap and is listed in the [`ConnTable`] with a
//! [`ConnState`]: how many of its requests (HTTP/1) or streams (HTTP/2) are in the service, from
//! the call until the response body is done, and since when none has been.
//!
//! ## Idle connections never hold the cap against new clients
//!
//! When a client connects while every slot is taken, the accept loop closes the connections that
//! have been idle longest (no request in the service; a connection still sending its first
//! request head counts as idle), up to [`ConnTable::batch_for`] of them at once, as nginx
//! closes reusable connections when it runs out. An HTTP/1 connection is closed by hyper's
//! graceful shutdown, which never cuts a request in flight; an HTTP/2 connection gets a GOAWAY.
//! The new client waits for the slot such a close frees. With no idle connection to close, it
//! waits (in the accept loop, which looks again every [`RESCAN`]) as before, and further clients
//! wait in the kernel's accept queue.
//!
//! ## HTTP/2 timeouts
//!
//! hyper has no idle or header timeout for HTTP/2, so [`drive`] keeps one: an HTTP/2 connection
//! with no stream in the service for the header read timeout (measured from the connection's
//! start or its last stream's end) gets a GOAWAY and is closed. That covers a connection that
//! only sent its preface and SETTINGS, one that sent a HEADERS frame without END_HEADERS (no
//! request reaches the service until the header block is complete) and one idle between
//! requests, the way the same timeout closes an idle HTTP/1 keep-alive connection.
//!
//! hyper's graceful HTTP/2 shutdown waits for the client to acknowledge a PING before it sends
//! the final GOAWAY and closes. An HTTP/2 connection closing for any reason (idle, evicted,
//! drain) with no stream in the service is closed [`H2_CLOSE_GRACE`] after its GOAWAY, whether
//! or not the client answered; one with streams left is closed once they are done.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::drain::Watched;

/// Longest wait, after an HTTP/2 connection with no stream left is sent its GOAWAY, for the
/// client to close it before the guard does.
pub const H2_CLOSE_GRACE: Duration = Duration::from_millis(250);

/// How often a client waiting for a slot looks again for idle connections to close.
pub const RESCAN: Duration = Duration::from_millis(100);

/// The live client connections of the proxy listener, across workers.
pub struct ConnTable {
    slots: Arc<Semaphore>,
    live: Mutex<Live>,
    evict_batch: usize,
    epoch: Instant,
}

#[derive(Default)]
struct Live {
    next: u64,
    conns: HashMap<u64, Arc<ConnState>>,
}

/// One connection's activity, shared by its driver, its service and the table.
pub struct ConnState {
    id: u64,
    /// Requests or streams in the service now.
    busy: AtomicU32,
    /// When `busy` last fell to zero (or the connection was accepted), in ms since `epoch`.
    idle_since: AtomicU64,
    epoch: Instant,
    /// The table's way to ask the connection to close; taken once.
    evict: Mutex<Option<oneshot::Sender<()>>>,
    /// Set when the guard closes the connection itself: the socket then closes gently (see
    /// `client_io`'s lingering close) instead of at once.
    linger: AtomicBool,
}

/// A connection's place in the table and its slot under the cap; leaving frees both.
pub struct Registered {
    pub state: Arc<ConnState>,
    table: Arc<ConnTable>,
    _slot: OwnedSemaphorePermit,
}

impl ConnTable {
    pub fn new(max_connections: usize) -> ConnTable {
        let max = max_connections.max(1);
        ConnTable {
            slots: Arc::new(Semaphore::new(max)),
            live: Mutex::default(),
            evict_batch: Self::batch_for(max),
            epoch: Instant::now(),
        }
    }

    /// Idle connections closed at once when the cap is reached: an eighth of the cap, between 1
    /// and 32 (nginx's figure).
    pub fn batch_for(max_connections: usize) -> usize {
        (max_connections / 8).clamp(1, 32)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // The table's state is consistent after every statement; a panic elsewhere cannot
        // leave it half-updated.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free slot now, if there is one; `Err(true)` once the table is closed.
    pub fn try_slot(&self) -> Result<OwnedSemaphorePermit, bool> {
        use tokio::sync::TryAcquireError;
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|e| matches!(e, TryAcquireError::Closed))
    }

    /// Waits for a slot, closing idle connections to make room; see the module docs. Returns
    /// the slot and how many connections were asked to close for it.
    pub async fn slot(&self) -> (OwnedSemaphorePermit, u64) {
        let mut evicted = 0;
        loop {
            evicted += self.evict_idle() as u64;
            tokio::select! {
                permit = self.slots.clone().acquire_owned() => {
                    // The semaphore is never closed.
                    if let Ok(permit) = permit {
                        return (permit, evicted);
                    }
                }
                () = tokio::time::sleep(RESCAN) => {}
            }
        }
    }

    /// Lists a new connection that holds `slot`, with the signal the table asks it to close by.
    pub fn register(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> (Registered, EvictSignal) {
        let (evict, evicted) = oneshot::channel();
        let now = self.millis(Instant::now());
        let mut live = self.live();
        let id = live.next;
        live.next += 1;
        let state = Arc::new(ConnState {
            id,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            epoch: self.epoch,
            evict: Mutex::new(Some(evict)),
            linger: AtomicBool::new(false),
        });
        live.conns.insert(id, state.clone());
        drop(live);
        let registered = Registered {
            state,
            table: self.clone(),
            _slot: slot,
        };
        (registered, EvictSignal(Some(evicted)))
    }

    /// Asks the connections idle longest to close, up to the batch size less those already
    /// asked and not yet gone. Returns how many were asked.
    fn evict_idle(&self) -> usize {
        let live = self.live();
        let mut idle = Vec::new();
        let mut closing = 0;
        for (id, conn) in &live.conns {
            let asked = conn
                .evict
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none();
            if asked {
                closing += 1;
            } else if conn.busy.load(Ordering::Acquire) == 0 {
                idle.push((conn.idle_since.load(Ordering::Relaxed), *id));
            }
        }
        let want = self.evict_batch.saturating_sub(closing).min(idle.len());
        if want == 0 {
            return 0;
        }
        if want < idle.len() {
            idle.select_nth_unstable(want - 1);
        }
        let mut asked = 0;
        for (_, id) in &idle[..want] {
            if let Some(conn) = live.conns.get(id)
                && let Some(evict) = conn
                    .evict
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                && evict.send(()).is_ok()
            {
                asked += 1;
            }
        }
        asked
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.live().conns.remove(&self.state.id);
    }
}

impl ConnState {
    /// A request or stream enters the service.
    pub fn enter(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
    }

    /// A request or stream is done: its response body ended or was dropped.
    pub fn leave(&self) {
        if self.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = Instant::now().saturating_duration_since(self.epoch);
            let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
            self.idle_since.store(ms, Ordering::Relaxed);
        }
    }

    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// When the connection will have been idle for `timeout`, if it stays so.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        self.epoch + since + timeout
    }

    pub fn lingers(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }
}

/// Completes once when the table asks the connection to close; pending otherwise (also after
/// that, so it can be polled again).
pub struct EvictSignal(Option<oneshot::Receiver<()>>);

impl Future for EvictSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Pending;
        };
        match Pin::new(rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(asked) => {
                self.0 = None;
                if asked.is_ok() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

/// Why the guard closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// An HTTP/2 connection with no stream for the header read timeout.
    IdleTimeout,
    /// Idle when a new client needed its slot.
    Evicted,
}

impl Closed {
    pub fn label(self) -> &'static str {
        match self {
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
        }
    }
}

/// How [`drive`] ended: hyper's own result unless the guard dropped the connection first, and
/// whether the guard started the close.
pub struct Ending<T> {
    pub result: Option<T>,
    pub closed: Option<Closed>,
}

/// Serves `conn` to its end, closing it when the table asks (`evicted`) and, for HTTP/2
/// (`h2_idle` is the idle limit), when it has had no stream for that long; see the module docs.
pub async fn drive<C: GracefulConnection>(
    mut conn: Pin<&mut Watched<'_, C>>,
    state: &ConnState,
    evicted: &mut EvictSignal,
    h2_idle: Option<Duration>,
) -> Ending<C::Output> {
    let mut closed = None;
    // HTTP/2 only: the idle deadline, then, once closing, the grace after the GOAWAY.
    let mut timer =
        h2_idle.map(|idle| Box::pin(tokio::time::sleep_until(state.idle_deadline(idle))));
    let mut grace = false;
    poll_fn(|cx| {
        if Pin::new(&mut *evicted).poll(cx).is_ready() && !conn.is_stopping() {
            closed = Some(Closed::Evicted);
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ending {
                result: Some(result),
                closed,
            });
        }
        let (Some(timer), Some(idle)) = (timer.as_mut(), h2_idle) else {
            return Poll::Pending;
        };
        if !grace && conn.is_stopping() {
            grace = true;
            timer.as_mut().reset(Instant::now() + H2_CLOSE_GRACE);
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if grace {
                if !state.busy() {
                    state.linger.store(true, Ordering::Relaxed);
                    return Poll::Ready(Ending {
                        result: None,
                        closed,
                    });
                }
                timer.as_mut().reset(now + H2_CLOSE_GRACE);
            } else if !state.busy() && state.idle_deadline(idle) <= now {
                closed = Some(Closed::IdleTimeout);
                conn.as_mut().graceful_shutdown();
                grace = true;
                timer.as_mut().reset(now + H2_CLOSE_GRACE);
                // hyper writes the GOAWAY when next polled.
                cx.waker().wake_by_ref();
            } else if state.busy() {
                timer.as_mut().reset(now + idle);
            } else {
                timer.as_mut().reset(state.idle_deadline(idle));
            }
        }
        Poll::Pending
    })
    .await
}
