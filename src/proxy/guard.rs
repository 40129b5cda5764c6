//! The guard: a tower `Service` that takes a client request through the policy's phases and
//! forwards what survives on this worker's upstream pool.
//!
//! `run` reads top to bottom as the request's life: normalize and route, identify, brownout and
//! payload budgets, rewrite, records (telemetry batches), upstream slot, forward, respond. Each
//! phase is a plain function over the request parts or a budget, and every phase can end the
//! request with a [`GuardError`]. `record_outcome` counts the outcome in one place.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version, request};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Instant;
use tower::Service;

use super::batch::{self, Filtered, ShadowBatch};
use super::body::{GuardedBody, ShadowStream, UpstreamBody};
use super::headers::{Forwarded, append_forwarded, strip, strip_hop_by_hop};
use super::shadow::{self, SHADOW, SHED_SLOT_BUSY, Shadow};
use super::upstream::{PooledBody, Upstream};
use crate::decide;
use crate::error::{Blame, ErrorStyle, GuardError};
use crate::metrics::{Metrics, UNROUTED};
use crate::policy::store::{PolicyStore, Snapshot};
use crate::protect::Protection;

/// What the client gets back: the upstream's body, streamed, or the guard's own JSON.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

/// A request that was not refused: answered by the upstream, or by the guard itself because
/// every record of its batch was dropped.
pub enum Reply {
    Upstream(Response<PooledBody>),
    Guard(Response<Full<Bytes>>),
}

/// Where requests go: `host:port` of a plain-HTTP upstream.
#[derive(Debug, Clone)]
pub struct Target {
    pub authority: Authority,
}

/// State shared by every connection.
pub struct Shared {
    pub policy: PolicyStore,
    pub metrics: Arc<Metrics>,
    pub target: Target,
    /// Longest pause allowed between two frames of a request body.
    pub body_idle_timeout: Duration,
    /// Keys the SipHash of client identities; random per process, so keys can't be precomputed
    /// to collide.
    pub key_hasher: std::hash::RandomState,
    /// Upstream slots by priority and the brownout level; outlives policy reloads.
    pub protection: Protection,
    /// `serve --record`: samples requests into a traffic file.
    pub recorder: Option<crate::record::Recorder>,
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
    upstream: Upstream,
}

impl Guard {
    pub fn new(shared: Arc<Shared>, conn: ConnInfo, upstream: Upstream) -> Self {
        Guard(Arc::new(ConnGuard {
            shared,
            conn,
            upstream,
        }))
    }
}

impl Service<Request<Incoming>> for Guard {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move {
            let snapshot = this.shared.policy.load();
            let metrics = &this.shared.metrics;
            let _in_flight = InFlight::enter(metrics);
            let mut ctx = RequestCtx::default();
            let result = this.run(&snapshot, &mut ctx, req).await;
            Ok(record_outcome(metrics, &snapshot, ctx, result))
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
}

impl ConnGuard {
    async fn run(
        &self,
        snap: &Snapshot,
        ctx: &mut RequestCtx,
        req: Request<Incoming>,
    ) -> Result<Reply, GuardError> {
        let (mut parts, body) = req.into_parts();

        // 1-2. Normalize the path, so no spelling of it can reach another route's budget, then
        //    route: first match wins; the table ends with a catch-all.
        let routed = decide::route(&snap.policy, &parts)?;
        ctx.route = Some(routed.index);
        ctx.style = routed.style;
        let (route, normalized) = (routed.route, routed.normalized);
        let rm = &snap.route_metrics[routed.index];
        // A shadow route makes every decision below and counts what enforce mode would have
        // done instead of doing it (see `shadow`). Enforce routes carry `None`: for them every
        // `overrule` is the `?` it replaces.
        let mut shadow = rm.shadow.as_ref().map(Shadow::new);
        let declared = body.size_hint().exact();
        if shadow.is_some() && route.records.is_some() {
            // A records route buffers its body, in every mode: max_body bounds that buffer.
            if let (Some(limit), Some(len)) = (route.payload.max_body, declared)
                && len > limit
            {
                return Err(GuardError::BodyTooLarge { limit });
            }
        }

        // 3. Identify the client, only when a per-client budget needs the key.
        let identified = decide::identify(route, &parts, self.conn.peer, &self.shared.key_hasher);
        // `serve --record`: a sampled request is captured as the client sent it, before any
        // rewrite, and written when it ends, however it ends (see `record`).
        let capture = self.shared.recorder.as_ref().and_then(|r| {
            let key = identified.as_ref().ok().copied().flatten();
            r.sample(key, &parts, self.conn.peer, declared)
        });
        let key = match identified {
            Ok(key) => key,
            Err(e) => {
                shadow::overrule(&mut shadow, route, e)?;
                None
            }
        };

        // 4-5. Brownout (bulk routes shed whole or their batches tightened while the upstream
        //    is in distress), then the payload budgets: size first (no state), then the
        //    client's budgets, then the route's, so one client's excess never spends the budget
        //    the route shares.
        let metrics = &self.shared.metrics;
        let protection = &self.shared.protection;
        let deciding = shadow.as_ref().is_none_or(Shadow::deciding);
        let admitted = match deciding {
            true => {
                let cfg = &snap.policy.protect.brownout;
                decide::admit(route, key, protection, cfg, declared, |kind| {
                    metrics.record_untracked(&route.name, kind)
                })
            }
            false => Ok(decide::Admitted::default()),
        };
        let decide::Admitted {
            tighten,
            charge: stream_charge,
        } = match admitted {
            Ok(admitted) => admitted,
            Err(e) => {
                shadow::overrule(&mut shadow, route, e)?;
                decide::Admitted::default()
            }
        };
        let deciding = shadow.as_ref().is_none_or(Shadow::deciding);

        // 6. Rewrite for the upstream: normalized URI, hop-by-hop out, X-Forwarded-* in, and a
        //    requested verbosity above the route's clamp lowered (counted only, in shadow).
        self.rewrite(&mut parts, normalized)?;
        if let Some(clamp) = &route.clamp {
            match &mut shadow {
                None => {
                    let lowered = clamp.apply(&mut parts.headers, &mut parts.uri);
                    if let (Some(counter), true) = (&rm.clamped, lowered > 0) {
                        counter.inc_by(u64::from(lowered));
                    }
                }
                Some(s) if deciding => s.clamped(clamp.count(&parts.headers, &parts.uri)),
                Some(_) => {}
            }
        }

        // 7. Records: a telemetry route buffers its batch and filters it by level (in shadow,
        //    decides and counts, and forwards it as received); the rest stream.
        let mut summary = None;
        let body = if body.is_end_stream() {
            UpstreamBody::Empty
        } else if let (Some(records), Some(metrics), true) = (&route.records, &rm.records, deciding)
        {
            let max_body = route.payload.max_body.unwrap_or(u64::MAX);
            let mut body = GuardedBody::new(
                body,
                self.shared.body_idle_timeout,
                Some(max_body),
                stream_charge,
                rm.request_bytes.clone(),
                None,
            )
            .tap(capture);
            if let Some(s) = &shadow {
                body = body.shadow(ShadowStream::new(s.metrics().clone(), None));
            }
            let hint = declared.unwrap_or(64 << 10).min(max_body);
            // Boxed: only records routes wait here, and every request's state would otherwise
            // carry room for this future.
            let capacity = usize::try_from(hint).unwrap_or(0);
            let raw = Box::pin(batch::read_to_end(&mut body, capacity)).await?;
            let forward = match &mut shadow {
                None => {
                    match batch::filter(records, metrics, &parts.headers, key, &tighten, raw)? {
                        Filtered::Answer(response) => return Ok(Reply::Guard(response)),
                        Filtered::Forward { body, summary: s } => {
                            if let Some(s) = &s {
                                s.write(&mut parts.headers, false);
                            }
                            summary = s;
                            body
                        }
                    }
                }
                Some(s) => {
                    if let Some(reason) = body.shadow_refused() {
                        // A byte budget ran out as the body arrived: enforce mode would have
                        // refused it there, before reading the batch.
                        s.refused_in_body(reason);
                    } else if let Some(counted) = s.metrics().records.as_ref() {
                        let headers = &parts.headers;
                        match batch::shadow(records, metrics, counted, headers, key, &tighten, &raw)
                        {
                            ShadowBatch::Refused(reason) => s.reject(reason),
                            ShadowBatch::Read { kept, dropped } => s.batch(kept, dropped),
                            ShadowBatch::Unread => {}
                        }
                    }
                    raw
                }
            };
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(forward.len()));
            rm.forwarded_bytes.inc_by(forward.len() as u64);
            UpstreamBody::Full {
                data: Some(forward),
            }
        } else {
            // Enforced: max_body for bodies without a Content-Length (a declared one was
            // checked by the budgets). A shadow route enforces it only where its body would be
            // buffered, a records route, and otherwise counts it while still deciding.
            let counted_limit = (deciding && route.records.is_none())
                .then_some(route.payload.max_body)
                .flatten()
                .filter(|_| declared.is_none());
            let limit = match &shadow {
                Some(_) if route.records.is_none() => None,
                _ => route.payload.max_body.filter(|_| declared.is_none()),
            };
            let mut body = GuardedBody::new(
                body,
                self.shared.body_idle_timeout,
                limit,
                stream_charge,
                rm.request_bytes.clone(),
                Some(rm.forwarded_bytes.clone()),
            )
            .tap(capture);
            if let Some(s) = shadow.as_ref().filter(|s| s.deciding()) {
                body = body.shadow(ShadowStream::new(s.metrics().clone(), counted_limit));
            }
            UpstreamBody::Stream {
                body: Box::pin(body),
            }
        };

        // 8. Take an upstream slot of the route's class: critical requests have a reserve that
        //    bulk can never take; a class that finds none in its wait is shed (503). A shadow
        //    request takes a free slot or none, and never waits.
        let slot = match &mut shadow {
            // A free slot is taken without a future; only a wait for one is boxed.
            None => match protection.try_slot(route.priority) {
                Some(slot) => Some(slot),
                None => Some(Box::pin(protection.slot(route.priority)).await?),
            },
            Some(s) => {
                let slot = protection.try_slot(route.priority);
                if slot.is_none() {
                    s.reject(SHED_SLOT_BUSY);
                }
                slot
            }
        };
        if let Some(s) = &shadow {
            parts.headers.insert(SHADOW.clone(), s.header());
        }

        // 9. Forward, bounded by the route's timeout for the response headers; the exchange
        //    feeds the brownout controller's view of the upstream's health.
        let started = Instant::now();
        let request = Request::from_parts(parts, body);
        let sent = self
            .upstream
            .send(request, started + route.timeout)
            .await
            .map_err(|e| GuardError::from_upstream(e, route.timeout));
        let latency = started.elapsed();
        let failed = match &sent {
            Ok(r) => r.status().is_server_error(),
            Err(e) => e.blame() == Blame::Upstream,
        };
        protection.observe(route.priority, latency, failed);
        drop(slot);
        let response = sent?;
        rm.upstream_duration.observe(latency.as_secs_f64());

        // 10. Respond: the upstream's answer, streamed, minus its hop-by-hop headers, plus what
        //    the records phase did to the batch.
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(s) = summary {
            s.write(&mut parts.headers, true);
        }
        Ok(Reply::Upstream(Response::from_parts(parts, body)))
    }

    fn rewrite(
        &self,
        parts: &mut request::Parts,
        normalized: Option<String>,
    ) -> Result<(), GuardError> {
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
                Uri::from(PathAndQuery::try_from(target).map_err(|_| GuardError::BadTarget)?)
            }
        };
        parts.version = Version::HTTP_11;
        Ok(())
    }
}

/// The one place a request's outcome is counted and an error becomes a response.
fn record_outcome(
    metrics: &Metrics,
    snap: &Snapshot,
    ctx: RequestCtx,
    result: Result<Reply, GuardError>,
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
            if let GuardError::Shed { class, reason, .. } = &err {
                metrics.protect.shed_series[class.index()][reason.index()].inc();
            }
            match (err.blame(), rm) {
                (Blame::Client, Some(rm)) => {
                    rm.rejected.inc();
                    rm.rejections.inc(&err);
                }
                (Blame::Upstream, Some(rm)) => {
                    rm.upstream_error.inc();
                    rm.upstream_errors.inc(&err);
                }
                // Refused before routing (an invalid path): the rare case, counted by label.
                (blame, None) => {
                    metrics
                        .requests
                        .with_label_values(&[name, "rejected"])
                        .inc();
                    let family = match blame {
                        Blame::Client => &metrics.rejections,
                        Blame::Upstream => &metrics.upstream_errors,
                    };
                    family.with_label_values(&[name, err.label()]).inc();
                }
            }
            err.to_response(name, ctx.style).map(Either::Right)
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
