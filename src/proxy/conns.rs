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
use std::task::Poll;
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

/// The resolution of the clock HTTP/1 idle times are read from.
const TICK: Duration = Duration::from_millis(100);

/// Milliseconds since the table started: precise, or read from a value a task refreshes every
/// [`TICK`]. A request's end reads the coarse one (an atomic load instead of a clock read on
/// every HTTP/1 request); it only orders HTTP/1 connections by idleness. HTTP/2 connections,
/// whose idle time is a timeout, read the precise one.
struct Clock {
    epoch: Instant,
    /// The elapsed time at the last tick plus one tick: never behind the time while ticks run
    /// on schedule.
    coarse: AtomicU64,
}

impl Clock {
    fn precise(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    fn tick(&self) {
        let ahead = self.precise().saturating_add(TICK.as_millis() as u64);
        self.coarse.store(ahead, Ordering::Relaxed);
    }

    async fn run(clock: std::sync::Weak<Clock>) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(clock) = clock.upgrade() else {
                return;
            };
            clock.tick();
        }
    }
}

/// The live client connections of the proxy listener, across workers.
pub struct ConnTable {
    slots: Arc<Semaphore>,
    live: Mutex<Live>,
    evict_batch: usize,
    clock: Arc<Clock>,
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
    /// When `busy` last fell to zero (or the connection was accepted), in ms of `clock`.
    idle_since: AtomicU64,
    clock: Arc<Clock>,
    /// Idle times are timed precisely (HTTP/2).
    precise: AtomicBool,
    /// Asks the connection to shut down gracefully (an eviction, or the worker's drain); taken
    /// once. `None` before the connection is watched and once asked.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Whether it was asked.
    stopped: AtomicBool,
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
    /// A table for `max_connections`; its clock runs on the current runtime until it is dropped.
    pub fn start(max_connections: usize) -> Arc<ConnTable> {
        let max = max_connections.max(1);
        let clock = Arc::new(Clock {
            epoch: Instant::now(),
            coarse: AtomicU64::new(0),
        });
        clock.tick();
        tokio::spawn(Clock::run(Arc::downgrade(&clock)));
        Arc::new(ConnTable {
            slots: Arc::new(Semaphore::new(max)),
            live: Mutex::default(),
            evict_batch: Self::batch_for(max),
            clock,
        })
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

    /// A free slot now, if there is one (the semaphore is never closed).
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
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

    /// Lists a new connection that holds `slot`.
    pub fn register(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Registered {
        let now = self.clock.precise();
        let mut live = self.live();
        let id = live.next;
        live.next += 1;
        let state = Arc::new(ConnState {
            id,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            clock: self.clock.clone(),
            precise: AtomicBool::new(false),
            stop: Mutex::new(None),
            stopped: AtomicBool::new(false),
            linger: AtomicBool::new(false),
        });
        live.conns.insert(id, state.clone());
        drop(live);
        Registered {
            state,
            table: self.clone(),
            _slot: slot,
        }
    }

    /// Asks the connections idle longest to close, up to the batch size less those already
    /// asked and not yet gone. Returns how many were asked.
    fn evict_idle(&self) -> usize {
        let live = self.live();
        let mut idle = Vec::new();
        let mut closing = 0;
        for (id, conn) in &live.conns {
            if conn.stopped.load(Ordering::Relaxed) {
                closing += 1;
            } else if !conn.busy() {
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
                && conn.stop()
            {
                asked += 1;
            }
        }
        asked
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.live().conns.remove(&self.state.id);
    }
}

impl ConnState {
    /// The receiving end of [`ConnState::stop`]; a second call replaces the first.
    pub fn stop_signal(&self) -> oneshot::Receiver<()> {
        let (stop, stopped) = oneshot::channel();
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop);
        stopped
    }

    /// Asks the connection to shut down gracefully; says whether this call did (the first one,
    /// on a connection still served).
    pub fn stop(&self) -> bool {
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let asked = stop.is_some_and(|stop| stop.send(()).is_ok());
        if asked {
            self.stopped.store(true, Ordering::Relaxed);
        }
        asked
    }

    /// A request or stream enters the service.
    pub fn enter(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
    }

    /// A request or stream is done: its response body ended or was dropped.
    pub fn leave(&self) {
        if self.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = if self.precise.load(Ordering::Relaxed) {
                self.clock.precise()
            } else {
                self.clock.coarse.load(Ordering::Relaxed)
            };
            self.idle_since.store(now, Ordering::Relaxed);
        }
    }

    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// When the connection will have been idle for `timeout`, if it stays so.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        let since = Duration::from_millis(self.idle_since.load(Ordering::Relaxed));
        self.clock.epoch + since + timeout
    }

    pub fn lingers(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }
}

/// How [`drive_h2`] ended: hyper's own result unless the guard dropped the connection first, and
/// whether the idle timeout closed it.
pub struct Ending<T> {
    pub result: Option<T>,
    pub idle_timeout: bool,
}

/// Serves an HTTP/2 connection to its end, closing it when it has had no stream for `idle`, and
/// at most [`H2_CLOSE_GRACE`] after a GOAWAY once no stream is left; see the module docs.
/// (Stop signals, evictions included, reach it through its [`Watched`].)
pub async fn drive_h2<C: GracefulConnection>(
    mut conn: Pin<&mut Watched<'_, C>>,
    state: &ConnState,
    idle: Duration,
) -> Ending<C::Output> {
    state.precise.store(true, Ordering::Relaxed);
    let mut idle_timeout = false;
    // The idle deadline, then, once closing, the grace after the GOAWAY.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(state.idle_deadline(idle)));
    let mut grace = false;
    poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ending {
                result: Some(result),
                idle_timeout,
            });
        }
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
                        idle_timeout,
                    });
                }
                timer.as_mut().reset(now + H2_CLOSE_GRACE);
            } else if !state.busy() && state.idle_deadline(idle) <= now {
                idle_timeout = true;
                // The connection's own stop signal, so an eviction meanwhile skips it (it is
                // closing already); its `Watched` starts the shutdown and hyper writes the
                // GOAWAY when next polled.
                state.stop();
                grace = true;
                timer.as_mut().reset(now + H2_CLOSE_GRACE);
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
