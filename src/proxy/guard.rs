//! The guard: a tower `Service` that takes a client request through the policy's phases and
//! forwards what survives on this worker's upstream pool.
//!
//! `run` reads top to bottom as the request's life: normalize and route, identify, brownout and
//! payload budgets, rewrite, body (telemetry batches are read and judged), upstream slot,
//! forward, respond. Each decision is made by the decision core ([`decide`]) and returns its
//! verdict; the request's [`Judge`] carries it out (enforce mode) or counts it (shadow mode).
//! `record_outcome` counts the outcome in one place.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, Uri, Version, request};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use super::batch::{self, Cut, Filtered, Summary};
use super::body::{GuardedBody, UpstreamBody};
use super::conns::ConnState;
use super::error::{Cause, ProxyError};
use super::headers::{Forwarded, append_forwarded, strip, strip_hop_by_hop};
use super::shadow::Judge;
use super::state::{Shared, Snapshot};
use super::upstream::{PooledBody, Upstream, UpstreamError};
use crate::decide::records::Judged;
use crate::decide::{self, Admitted, BodyRules, ErrorStyle, Reason, Reject, UNROUTED};
use crate::metrics::{Metrics, RecordsMetrics, RouteMetrics, ShadowRecords};
use crate::policy::Route;
use crate::protect::overload::Pressure;
use crate::protect::{Priority, Shed, ShedReason, Slot};
use crate::record::Capture;
use crate::records::RecordsPolicy;
use crate::records::filter::Tighten;

/// What a bulk request shed for the guard's own overload is told to wait.
const OVERLOAD_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the answer to a bulk request shed for overload is held (see `shed_for_overload`).
const OVERLOAD_PACE: std::time::Duration = std::time::Duration::from_millis(250);
/// The largest declared body read and discarded to keep a shed request's connection open.
const OVERLOAD_DRAIN_MAX: u64 = 64 * 1024;
/// How long that body may take to arrive.
const OVERLOAD_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The refusal of a bulk request while the guard itself is overloaded.
fn overload_shed() -> Reject {
    Reject::Shed(Shed {
        class: Priority::Bulk,
        reason: ShedReason::Overload,
        retry_after: OVERLOAD_RETRY_AFTER,
    })
}

/// What the client gets back: the upstream's body, streamed, or the guard's own JSON.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

pin_project! {
    /// A response body on its way to the client. It keeps its request counted as in the
    /// connection's service (see `conns`) until hyper is done with it.
    pub struct ClientBody {
        #[pin]
        inner: ResponseBody,
        active: Active,
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request in the service of its connection, from the call until its response body is done
/// (or the call is dropped).
struct Active(Arc<ConnGuard>);

impl Active {
    fn enter(conn: Arc<ConnGuard>) -> Active {
        conn.activity.enter();
        Active(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.activity.leave();
    }
}

/// A request that was not refused: answered by the upstream, or by the guard itself because
/// every record of its batch was dropped.
pub enum Reply {
    Upstream(Response<PooledBody>),
    Guard(Response<Full<Bytes>>),
}

/// Per-connection facts, computed once at accept.
pub struct ConnInfo {
    pub peer: IpAddr,
    /// `peer` rendered for `X-Forwarded-For`.
    pub peer_value: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: IpAddr) -> ConnInfo {
        let peer_value = HeaderValue::try_from(peer.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { peer, peer_value }
    }
}

/// The guard in front of this worker's upstream pool, for one client connection. Each request
/// takes one reference count of it, not one per field.
#[derive(Clone)]
pub struct Guard(Arc<ConnGuard>);

/// What a connection's requests share.
struct ConnGuard {
    shared: Arc<Shared>,
    conn: ConnInfo,
    /// Whether the connection has a request in the service, for idle handling.
    activity: Arc<ConnState>,
    upstream: Upstream,
}

impl Guard {
    pub fn new(
        shared: Arc<Shared>,
        conn: ConnInfo,
        activity: Arc<ConnState>,
        upstream: Upstream,
    ) -> Self {
        Guard(Arc::new(ConnGuard {
            shared,
            conn,
            activity,
            upstream,
        }))
    }
}

impl Service<Request<Incoming>> for Guard {
    type Response = Response<ClientBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let active = Active::enter(self.0.clone());
        Box::pin(async move {
            let response = {
                let this = &active.0;
                let snapshot = this.shared.policy.load();
                let metrics = &this.shared.metrics;
                let _in_flight = InFlight::enter(metrics);
                let mut ctx = RequestCtx {
                    body_unread: req.version() < Version::HTTP_2 && !req.body().is_end_stream(),
                    ..RequestCtx::default()
                };
                let result = this.run(&snapshot, &mut ctx, req).await;
                record_outcome(metrics, &snapshot, ctx, result)
            };
            Ok(response.map(|inner| ClientBody { inner, active }))
        })
    }
}

/// What `run` learns about a request that the final accounting needs, whatever the outcome.
#[derive(Default)]
struct RequestCtx {
    /// Index of the matched route; `None` when the path could not be normalized.
    route: Option<usize>,
    /// How an error answer is written (OTLP senders get the `Status` their protocol defines).
    style: ErrorStyle,
    /// An HTTP/1 request whose body may not have been read to its end. An answer the guard
    /// makes itself then closes the connection and says so (`Connection: close`): hyper does
    /// not read past an unread body, so the client's next request on the connection would
    /// otherwise be lost without a word. The client knows to send it again elsewhere.
    body_unread: bool,
}

impl ConnGuard {
    /// The request's life, phase by phase; see the module docs.
    async fn run(
        &self,
        snap: &Snapshot,
        ctx: &mut RequestCtx,
        req: Request<Incoming>,
    ) -> Result<Reply, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let declared = body.size_hint().exact();

        // 1-2. Normalize the path, so no spelling of it can reach another route's budget, then
        //    route: first match wins; the table ends with a catch-all.
        //    Then the framing and host: a request the upstream could read differently from the
        //    guard is refused in every mode.
        let routed = decide::route(&snap.policy, &parts)?;
        (ctx.route, ctx.style) = (Some(routed.index), routed.style);
        decide::framing(&parts)?;
        let (route, rm) = (routed.route, &snap.route_metrics[routed.index]);
        if route.priority == Priority::Bulk
            && let Some(pressure) = self.shared.overload.pressure()
        {
            // Cold: boxed so every request's future does not carry room for it.
            if Box::pin(self.shed_for_overload(pressure, body, declared)).await {
                ctx.body_unread = false;
            }
            return Err(overload_shed().into());
        }
        let mut judge = Judge::new(rm, route.records.is_some());
        bound_buffer(&judge, route, declared)?;

        // 3. Identify the client, only when a per-client budget needs the key.
        let identified = decide::identify(route, &parts, self.conn.peer, &self.shared.key_hasher);
        let capture = self.capture(&identified, &parts, declared);
        let key = judge.verdict(identified, || None)?;

        // 4-5. Brownout, then the payload budgets. A bulk batch the brownout sheds is salvaged:
        //    cut to its error and fatal records, it goes on at normal priority.
        let admitted = self.admit(&mut judge, snap, route, key, declared)?;

        // 6. Rewrite for the upstream: normalized URI, hop-by-hop out, X-Forwarded-* in, and a
        //    requested verbosity above the route's clamp lowered.
        self.rewrite(&mut parts, routed.normalized)?;
        clamp(&mut judge, route, rm, &mut parts);

        // 7. The body: a telemetry batch is read whole and judged record by record; any other
        //    body streams through, checked frame by frame. A batch on its way upstream is
        //    counted once it has its upstream slot (`held`).
        let class = admitted.class(route.priority);
        let salvaged = admitted.salvage.is_some();
        let input = BodyInput::new(body, key, admitted, capture, declared);
        let reads = reads_batch(&judge, route, &input.body);
        // A batch is counted as buffered from before it is read (its declared length, or
        // `max_body` when it declares none) until the request ends.
        let _buffered = reads.then(|| {
            let max_body = route.payload.max_body.unwrap_or(u64::MAX);
            let bytes = input.declared.unwrap_or(max_body).min(max_body);
            self.shared.overload.hold(bytes)
        });
        let (mut body, mut summary, mut held) = if reads {
            // Boxed: only records routes wait here, and every request's state would otherwise
            // carry room for this future.
            let read = Box::pin(self.read_batch(&mut judge, route, rm, &mut parts, input));
            let (filtered, held) = read.await?;
            ctx.body_unread = false;
            if salvaged && held.is_some() {
                let counter = &self.shared.metrics.protect.salvaged;
                counter[ShedReason::Brownout.index()].inc();
            }
            match filtered {
                Filtered::Forward { body, summary } => (buffered(&mut parts, body), summary, held),
                Filtered::Answer(response) => return Ok(Reply::Guard(response)),
            }
        } else {
            (self.body(&judge, route, rm, input), None, None)
        };

        // 8. An upstream slot of the request's class (see `free_slot`); only a wait is boxed.
        let slot = match self.free_slot(&mut judge, class) {
            Ok(slot) => slot,
            Err(class) => {
                let batch = HeldBatch {
                    records: route.records.as_ref(),
                    metrics: rm.records.as_ref(),
                    judged: held.as_mut(),
                    parts: &mut parts,
                    body: &mut body,
                    summary: &mut summary,
                };
                Some(Box::pin(self.wait_slot(class, batch)).await?)
            }
        };
        if let UpstreamBody::Full { data: Some(data) } = &body {
            rm.forwarded_bytes.inc_by(data.len() as u64);
        }
        if let (Some(judged), Some(metrics)) = (&held, &rm.records) {
            batch::count(metrics, judged);
        }
        judge.mark(&mut parts.headers);

        // 9-10. Forward, bounded by the route's timeout for the response headers, and respond
        //    with the upstream's answer.
        let started = Instant::now();
        let request = Request::from_parts(parts, body);
        let sent = self.upstream.send(request, started + route.timeout).await;
        let response = self.exchanged(route, rm, sent, started, slot)?;
        Ok(Reply::Upstream(respond(response, summary)))
    }

    /// The body phase for a body that is not read here (see [`reads_batch`]): an empty body
    /// is forwarded as such, any other streams upstream, checked frame by frame.
    fn body(
        &self,
        judge: &Judge,
        route: &Route,
        rm: &RouteMetrics,
        input: BodyInput,
    ) -> UpstreamBody {
        match input.body.is_end_stream() {
            true => UpstreamBody::Empty,
            false => self.stream(judge, route, rm, input),
        }
    }

    /// An upstream slot of `class` if one is free now. Critical requests have a reserve that
    /// bulk can never take; a class that finds none waits for one (the `Err`) and is shed (503)
    /// when its wait runs out. A shadow request takes a free slot or none, and never waits.
    fn free_slot(&self, judge: &mut Judge, class: Priority) -> Result<Option<Slot<'_>>, Priority> {
        match (self.shared.protection.try_slot(class), judge.is_shadow()) {
            (Some(slot), _) => Ok(Some(slot)),
            (None, false) => Err(class),
            (None, true) => {
                judge.would_refuse(Reason::ShedSlotBusy);
                Ok(None)
            }
        }
    }

    /// Sheds a bulk request while the guard itself is overloaded, right after its head: nothing
    /// parsed or charged (see `protect::overload`), in every mode, since it protects the guard.
    ///
    /// The answer is paced: it waits [`OVERLOAD_PACE`], and a connection waiting for its answer
    /// sends nothing more, so a flood of keep-alive connections retrying at once costs the worker
    /// one cheap refusal per connection per pace instead of a busy loop of them (a client that
    /// honours `Retry-After` waits longer anyway). Then a small declared body, by then usually in
    /// the read buffer already, is read and discarded, so the connection stays open for the
    /// client's next request; a body that is large, undeclared or slow is left unread and the
    /// answer closes the connection. Returns whether the body was read.
    async fn shed_for_overload(
        &self,
        pressure: Pressure,
        body: Incoming,
        declared: Option<u64>,
    ) -> bool {
        self.shared.metrics.protect.overload_shed[pressure.index()].inc();
        tokio::time::sleep(OVERLOAD_PACE).await;
        if declared.is_none_or(|n| n > OVERLOAD_DRAIN_MAX) {
            return body.is_end_stream();
        }
        let drain = async {
            let mut body = body;
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if frame.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(OVERLOAD_DRAIN_WAIT, drain)
            .await
            .unwrap_or(false)
    }

    /// Waits for an upstream slot of `class`. A bulk batch of records that finds none in time
    /// is cut down to its error and fatal records, which wait again at normal priority; the
    /// sender learns what was kept from the summary. Only when nothing is left, or no normal slot
    /// comes either, is the batch shed (503 with Retry-After), its records counted as refused.
    async fn wait_slot(
        &self,
        class: Priority,
        held: HeldBatch<'_, '_>,
    ) -> Result<Slot<'_>, Reject> {
        let protection = &self.shared.protection;
        let shed = match protection.slot(class).await {
            Ok(slot) => return Ok(slot),
            Err(shed) => shed,
        };
        let (Some(judged), Some(records), Some(metrics)) =
            (held.judged, held.records, held.metrics)
        else {
            return Err(shed.into());
        };
        if class != Priority::Bulk {
            batch::count_refused(metrics, judged, shed.reason);
            return Err(shed.into());
        }
        match batch::cut_to_errors(records, judged)? {
            Cut::Nothing => {
                batch::count_refused(metrics, judged, shed.reason);
                return Err(shed.into());
            }
            Cut::Whole => {}
            Cut::Rewritten(data, summary) => {
                summary.write(&mut held.parts.headers, false);
                *held.body = buffered(held.parts, data);
                *held.summary = Some(summary);
            }
        }
        match protection.slot(Priority::Normal).await {
            Ok(slot) => {
                self.shared.metrics.protect.salvaged[shed.reason.index()].inc();
                Ok(slot)
            }
            Err(shed) => {
                batch::count_refused(metrics, judged, shed.reason);
                Err(shed.into())
            }
        }
    }

    /// An upstream exchange that ended, `started` ago. It feeds the brownout controller's view
    /// of the upstream's health, and the slot is given back as soon as the response headers (or
    /// the failure) are in.
    fn exchanged(
        &self,
        route: &Route,
        rm: &RouteMetrics,
        sent: Result<Response<PooledBody>, UpstreamError>,
        started: Instant,
        slot: Option<Slot<'_>>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let sent = sent.map_err(|e| ProxyError::from_upstream(e, route.timeout));
        if let Err(ProxyError::UpstreamConnect(e)) = &sent {
            unreachable(e);
        }
        let latency = started.elapsed();
        let failed = match &sent {
            Ok(r) => r.status().is_server_error(),
            Err(e) => matches!(e.cause(), Cause::Upstream(_)),
        };
        let protection = &self.shared.protection;
        protection.observe(route.priority, latency, failed);
        drop(slot);
        let response = sent?;
        rm.upstream_duration.observe(latency.as_secs_f64());
        Ok(response)
    }

    /// `serve --record`: a sampled request is captured as the client sent it, before any
    /// rewrite, and written when it ends, however it ends (see `record`).
    fn capture(
        &self,
        identified: &Result<Option<u64>, Reject>,
        parts: &request::Parts,
        declared: Option<u64>,
    ) -> Option<Box<Capture>> {
        let recorder = self.shared.recorder.as_ref()?;
        let key = identified.as_ref().ok().copied().flatten();
        recorder.sample(key, parts, self.conn.peer, declared)
    }

    /// Brownout (bulk routes shed whole or their batches tightened while the upstream is in
    /// distress), then the payload budgets: size first (no state), then the client's budgets,
    /// then the route's, so one client's excess never spends the budget the route shares. A
    /// shadow request past its first refusal decides nothing more.
    fn admit(
        &self,
        judge: &mut Judge,
        snap: &Snapshot,
        route: &Route,
        key: Option<u64>,
        declared: Option<u64>,
    ) -> Result<Admitted, Reject> {
        if !judge.deciding() {
            return Ok(Admitted::default());
        }
        let level = self.shared.protection.level();
        let cfg = &snap.policy.protect.brownout;
        let metrics = &self.shared.metrics;
        let admitted = decide::admit(route, key, level, cfg, declared, |kind| {
            metrics.record_untracked(&route.name, kind)
        });
        judge.verdict(admitted, Admitted::default)
    }

    /// Reads a telemetry batch whole (up to `max_body`), then has it judged (see
    /// [`judge_batch`]) unless a shadow body already ran out of a byte budget as it arrived
    /// (enforce mode would have refused the request there, before reading the batch).
    async fn read_batch(
        &self,
        judge: &mut Judge,
        route: &Route,
        rm: &RouteMetrics,
        parts: &mut request::Parts,
        input: BodyInput,
    ) -> Result<(Filtered, Option<Judged>), ProxyError> {
        let (Some(records), Some(metrics)) = (&route.records, &rm.records) else {
            return Err(Reject::Internal("a records route without its records series").into());
        };
        let max_body = route.payload.max_body.unwrap_or(u64::MAX);
        let rules = BodyRules::new(Some(max_body), input.admitted.charge);
        let mut body = GuardedBody::new(
            input.body,
            self.shared.body_idle_timeout,
            rules,
            judge.body(),
            rm.request_bytes.clone(),
            None,
        )
        .tap(input.capture);
        let capacity = usize::try_from(input.declared.unwrap_or(64 << 10).min(max_body));
        let raw = batch::read_to_end(&mut body, capacity.unwrap_or(0)).await?;
        judge.body_judged(body.judge());
        if !judge.deciding() {
            return Ok((Filtered::unread(raw), None));
        }
        let rules = BatchRules {
            records,
            metrics,
            shadow: rm.shadow.as_ref().and_then(|s| s.records.as_ref()),
            key: input.key,
            tighten: &input.admitted.tighten,
            salvage: input.admitted.salvage.as_ref(),
        };
        Ok(judge_batch(judge, &rules, &mut parts.headers, raw)?)
    }

    /// A body streamed upstream frame by frame. `max_body` holds for a body without a
    /// Content-Length (a declared one was checked by the budgets), and byte budgets left to
    /// charge are charged as it streams.
    fn stream(
        &self,
        judge: &Judge,
        route: &Route,
        rm: &RouteMetrics,
        input: BodyInput,
    ) -> UpstreamBody {
        // A shadow request past its first refusal checks only what binds in every mode: the
        // limit of a body it would buffer.
        let checked = judge.deciding() || route.records.is_some();
        let limit = route
            .payload
            .max_body
            .filter(|_| checked && input.declared.is_none());
        let body = GuardedBody::new(
            input.body,
            self.shared.body_idle_timeout,
            BodyRules::new(limit, input.admitted.charge),
            judge.body(),
            rm.request_bytes.clone(),
            Some(rm.forwarded_bytes.clone()),
        )
        .tap(input.capture);
        UpstreamBody::Stream {
            body: Box::pin(body),
        }
    }

    fn rewrite(
        &self,
        parts: &mut request::Parts,
        normalized: Option<String>,
    ) -> Result<(), Reject> {
        // HTTP/2 clients name the host in :authority, not Host; the upstream speaks HTTP/1.1.
        let host = match parts.headers.get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => {
                let h = parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
                if let Some(h) = &h {
                    parts.headers.insert(header::HOST, h.clone());
                }
                h
            }
        };
        // Only the guard speaks in its own headers: a client's copy could pass for the guard's
        // count of kept and dropped records.
        let seen = strip(&mut parts.headers, &batch::OWN_HEADERS);
        // Room for the three X-Forwarded-* headers: at most one growth of the map.
        let headers = &mut parts.headers;
        headers.reserve(3);
        let peer = self.conn.peer_value.clone();
        append_forwarded(headers, Forwarded::For, peer, seen);
        let proto = HeaderValue::from_static("http");
        append_forwarded(headers, Forwarded::Proto, proto, seen);
        if let Some(host) = host {
            append_forwarded(headers, Forwarded::Host, host, seen);
        }

        // The upstream gets origin form (path and query), as a client would send it; hyper's
        // connection writes the target verbatim.
        parts.uri = match normalized {
            None => match parts.uri.path_and_query() {
                Some(pq) => Uri::from(pq.clone()),
                None => Uri::from_static("/"),
            },
            Some(mut target) => {
                if let Some(q) = parts.uri.query() {
                    target.push('?');
                    target.push_str(q);
                }
                Uri::from(PathAndQuery::try_from(target).map_err(|_| Reject::BadTarget)?)
            }
        };
        parts.version = Version::HTTP_11;
        Ok(())
    }
}

/// What the body phase needs from the phases before it.
struct BodyInput {
    body: Incoming,
    key: Option<u64>,
    admitted: Admitted,
    capture: Option<Box<Capture>>,
    declared: Option<u64>,
}

impl BodyInput {
    #[inline]
    fn new(
        body: Incoming,
        key: Option<u64>,
        admitted: Admitted,
        capture: Option<Box<Capture>>,
        declared: Option<u64>,
    ) -> BodyInput {
        BodyInput {
            body,
            key,
            admitted,
            capture,
            declared,
        }
    }
}

/// A buffered body on its way upstream, with its length.
/// (Its bytes are counted as forwarded once it has its upstream slot.)
fn buffered(parts: &mut request::Parts, body: Bytes) -> UpstreamBody {
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    UpstreamBody::Full { data: Some(body) }
}

/// A request's buffered batch while it waits for an upstream slot (see `wait_slot`): what a
/// bulk batch cut down to its error records needs rewritten.
struct HeldBatch<'r, 'p> {
    records: Option<&'r RecordsPolicy>,
    metrics: Option<&'r RecordsMetrics>,
    /// A batch of records on its way upstream, not counted yet.
    judged: Option<&'p mut Judged>,
    parts: &'p mut request::Parts,
    body: &'p mut UpstreamBody,
    summary: &'p mut Option<Summary>,
}

/// What judging a batch needs of its route and of the phases before it.
struct BatchRules<'a> {
    records: &'a RecordsPolicy,
    metrics: &'a RecordsMetrics,
    /// A shadow route's records series.
    shadow: Option<&'a ShadowRecords>,
    key: Option<u64>,
    tighten: &'a Tighten,
    /// A bulk batch salvaged from the brownout's shed (see `Admitted::salvage`).
    salvage: Option<&'a Shed>,
}

/// Judges a batch read whole: enforce mode carries the judgment out (forward as received,
/// rewrite, answer itself or refuse) and tells the upstream what it did in `headers`; shadow
/// mode counts it and forwards the batch as received.
fn judge_batch(
    judge: &mut Judge,
    rules: &BatchRules<'_>,
    headers: &mut HeaderMap,
    raw: Bytes,
) -> Result<(Filtered, Option<Judged>), Reject> {
    let judged = decide::records::judge(rules.records, headers, rules.key, rules.tighten, &raw);
    let Some(judged) = judge.verdict(judged.map(Some), || None)? else {
        return Ok((Filtered::unread(raw), None));
    };
    let salvaged = decide::records::salvaged(&judged, rules.salvage);
    if !judge.is_shadow() {
        if let Err(shed) = salvaged {
            batch::count_refused(rules.metrics, &judged, ShedReason::Brownout);
            return Err(shed);
        }
        let filtered = batch::carry_out(rules.records, rules.metrics, &judged, raw, rules.tighten)?;
        if let Filtered::Forward {
            summary: Some(s), ..
        } = &filtered
        {
            s.write(headers, false);
            return Ok((filtered, Some(judged)));
        }
        return Ok((filtered, None));
    }
    batch::count_shadow(rules.metrics, rules.shadow, &judged);
    judge.verdict(judged.refusal().map_or(Ok(()), Err), || ())?;
    judge.verdict(salvaged, || ())?;
    if let Some(tally) = judged.tally() {
        judge.batch(tally.forwarded(), tally.dropped());
    }
    Ok((Filtered::unread(raw), None))
}

/// True when the body phase reads the body whole and judges it: a telemetry batch (a records
/// route, while deciding).
fn reads_batch(judge: &Judge, route: &Route, body: &Incoming) -> bool {
    route.records.is_some() && judge.deciding() && !body.is_end_stream()
}

/// A shadow route's decisions may stop before the budgets check `max_body` against the declared
/// length, but a route that buffers its body must still bound that buffer before reading it.
/// (Enforce mode checks it with the budgets, in their order.)
#[inline]
fn bound_buffer(judge: &Judge, route: &Route, declared: Option<u64>) -> Result<(), Reject> {
    if !judge.is_shadow() {
        return Ok(());
    }
    match (route.records.is_some(), route.payload.max_body, declared) {
        (true, Some(limit), Some(len)) if len > limit => Err(Reject::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Lowers a requested verbosity above the route's clamp (enforce mode), or counts that it would
/// have (shadow mode, while deciding).
fn clamp(judge: &mut Judge, route: &Route, rm: &RouteMetrics, parts: &mut request::Parts) {
    let Some(clamp) = &route.clamp else {
        return;
    };
    if !judge.is_shadow() {
        let lowered = clamp.apply(&mut parts.headers, &mut parts.uri);
        if let (Some(counter), true) = (&rm.clamped, lowered > 0) {
            counter.inc_by(u64::from(lowered));
        }
    } else if judge.deciding() {
        judge.clamped(clamp.count(&parts.headers, &parts.uri));
    }
}

/// Says that the upstream cannot be reached, at most once every ten seconds (see `log`): every
/// request meanwhile gets 502 and is counted in `upstream_errors_total{kind="connect"}`.
#[cold]
fn unreachable(e: &UpstreamError) {
    let cause = std::error::Error::source(e).map(ToString::to_string);
    crate::warn_limited!(
        error = %e,
        cause = cause.as_deref().unwrap_or(""),
        "upstream unreachable: answering 502 until it accepts connections"
    );
}

/// The upstream's answer for the client: streamed, minus its hop-by-hop headers, plus what the
/// records phase did to the batch.
fn respond(response: Response<PooledBody>, summary: Option<Summary>) -> Response<PooledBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(s) = summary {
        s.write(&mut parts.headers, true);
    }
    Response::from_parts(parts, body)
}

/// The one place a request's outcome is counted and an error becomes a response.
fn record_outcome(
    metrics: &Metrics,
    snap: &Snapshot,
    ctx: RequestCtx,
    result: Result<Reply, ProxyError>,
) -> Response<ResponseBody> {
    let route = ctx.route;
    let rm = route.map(|i| &snap.route_metrics[i]);
    let name = route.map_or(UNROUTED, |i| snap.policy.routes()[i].name.as_str());
    match result {
        Ok(Reply::Upstream(response)) => {
            if let Some(rm) = rm {
                rm.forwarded.inc();
            }
            response.map(Either::Left)
        }
        Ok(Reply::Guard(response)) => {
            if let Some(rm) = rm {
                rm.all_dropped.inc();
            }
            response.map(Either::Right)
        }
        Err(err) => {
            count_error(metrics, rm, name, &err);
            let mut response = err.to_response(name, ctx.style);
            if ctx.body_unread {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response.map(Either::Right)
        }
    }
}

/// Counts a request the guard answered itself: a refusal under its reason, an upstream failure
/// under its kind.
fn count_error(metrics: &Metrics, rm: Option<&RouteMetrics>, name: &str, err: &ProxyError) {
    if let ProxyError::Reject(Reject::Shed(shed)) = err {
        metrics.protect.shed_series[shed.class.index()][shed.reason.index()].inc();
    }
    match (err.cause(), rm) {
        (Cause::Refused(reject), Some(rm)) => {
            rm.rejected.inc();
            rm.rejections.inc(reject.reason());
        }
        (Cause::Upstream(kind), Some(rm)) => {
            rm.upstream_error.inc();
            rm.upstream_errors.inc(kind);
        }
        // Refused before routing (an invalid path): the rare case, counted by label.
        (cause, None) => {
            metrics
                .requests
                .with_label_values(&[name, "rejected"])
                .inc();
            let family = match cause {
                Cause::Refused(_) => &metrics.rejections,
                Cause::Upstream(_) => &metrics.upstream_errors,
            };
            family.with_label_values(&[name, err.label()]).inc();
        }
    }
}

/// Holds the in-flight gauge up while a request is handled, including when the client goes
/// away and hyper drops the future.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}
