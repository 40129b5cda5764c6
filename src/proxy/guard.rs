//! The guard middleware: a tower `Service` that takes a client request through the policy's
//! phases and hands what survives to the inner (upstream) service.
//!
//! `run` reads top to bottom as the request's life: normalize, route, identify, charge budgets,
//! rewrite, forward. Each phase is a plain function over the request parts or a budget, and every
//! phase can end the request with a [`GuardError`]. `call` records the outcome in one place.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
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

use super::batch::{self, Filtered};
use super::body::{GuardedBody, UpstreamBody};
use super::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, append_forwarded, strip_hop_by_hop,
};
use super::upstream::{PooledBody, Upstream};
use crate::budget::decision;
use crate::error::{Blame, ErrorStyle, GuardError, ShedReason};
use crate::metrics::{Metrics, UNROUTED};
use crate::policy::store::{PolicyStore, Snapshot};
use crate::policy::{ClientKeySpec, KeyFallback, KeySource, Priority};
use crate::protect::{self, Brownout, NoSlot, Protection};
use crate::records::Format;
use crate::records::filter::Tighten;
use crate::route::normalize_path;

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
}

/// Per-connection facts, computed once at accept.
#[derive(Clone)]
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

/// The guard in front of this worker's upstream pool.
#[derive(Clone)]
pub struct Guard {
    shared: Arc<Shared>,
    conn: ConnInfo,
    upstream: Upstream,
}

impl Guard {
    pub fn new(shared: Arc<Shared>, conn: ConnInfo, upstream: Upstream) -> Self {
        Guard {
            shared,
            conn,
            upstream,
        }
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
        let this = self.clone();
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

impl Guard {
    async fn run(
        &self,
        snap: &Snapshot,
        ctx: &mut RequestCtx,
        req: Request<Incoming>,
    ) -> Result<Reply, GuardError> {
        let (mut parts, body) = req.into_parts();

        // 1. Normalize the path, so no spelling of it can reach another route's budget.
        //    `None` means the path already was normal (the common case, no allocation).
        let normalized = match normalize_path(parts.uri.path())? {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };

        // 2. Route: first match wins; the table ends with a catch-all.
        let path = normalized.as_deref().unwrap_or(parts.uri.path());
        let (idx, route) = snap.policy.route(&parts.method, path);
        ctx.route = Some(idx);
        if let Some(records) = route.records.as_ref().filter(|r| r.format.is_otlp()) {
            let content_type = parts.headers.get(header::CONTENT_TYPE);
            ctx.style = match records
                .format
                .for_content_type(content_type.map(HeaderValue::as_bytes))
            {
                Format::OtlpJson => ErrorStyle::OtlpJson,
                _ => ErrorStyle::OtlpProto,
            };
        }
        let rm = &snap.route_metrics[idx];

        // 3. Identify the client, only when a per-client budget needs the key.
        let key = match route.needs_client_key() {
            true => Some(client_key(
                &route.client_key,
                &parts,
                self.conn.peer,
                &self.shared.key_hasher,
            )?),
            false => None,
        };

        // 4. Brownout: while the upstream is in distress, bulk routes are shed whole at the
        //    top level and their batches tightened below it; critical and normal routes never.
        //    Shedding comes before the budgets so a shed request spends none of them.
        let protection = &self.shared.protection;
        let tighten = match route.priority {
            Priority::Bulk => {
                let brownout = &snap.policy.protect.brownout;
                if protection.level() >= Brownout::ShedBulk {
                    return Err(GuardError::Shed {
                        class: Priority::Bulk,
                        reason: ShedReason::Brownout,
                        retry_after: protect::retry_after(brownout),
                    });
                }
                protection.tightening(brownout)
            }
            _ => Tighten::NONE,
        };

        // 5. Payload budgets. Size first (no state), then the client's budgets, then the
        //    route's, so one client's excess never spends the budget the route shares.
        let declared = body.size_hint().exact();
        let metrics = &self.shared.metrics;
        let stream_charge = decision::admit(&route.payload, key, declared, |kind| {
            metrics.record_untracked(&route.name, kind)
        })?;

        // 6. Rewrite for the upstream: normalized URI, hop-by-hop out, X-Forwarded-* in, and a
        //    requested verbosity above the route's clamp lowered.
        self.rewrite(&mut parts, normalized)?;
        if let Some(clamp) = &route.clamp {
            let lowered = clamp.apply(&mut parts.headers, &mut parts.uri);
            if let (Some(counter), true) = (&rm.clamped, lowered > 0) {
                counter.inc_by(u64::from(lowered));
            }
        }

        // 7. Records: a telemetry route buffers its batch and filters it by level; the rest
        //    stream.
        let mut summary = None;
        let body = if body.is_end_stream() {
            UpstreamBody::Empty
        } else if let (Some(records), Some(metrics)) = (&route.records, &rm.records) {
            let max_body = route.payload.max_body.unwrap_or(u64::MAX);
            let body = GuardedBody::new(
                body,
                self.shared.body_idle_timeout,
                Some(max_body),
                stream_charge,
                rm.request_bytes.clone(),
                None,
            );
            let hint = declared.unwrap_or(64 << 10).min(max_body);
            let raw = batch::read_to_end(body, usize::try_from(hint).unwrap_or(0)).await?;
            match batch::filter(records, metrics, &parts.headers, key, &tighten, raw)? {
                Filtered::Answer(response) => return Ok(Reply::Guard(response)),
                Filtered::Forward { body, summary: s } => {
                    if let Some(s) = &s {
                        s.write(&mut parts.headers, false);
                    }
                    summary = s;
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    rm.forwarded_bytes.inc_by(body.len() as u64);
                    UpstreamBody::Full { data: Some(body) }
                }
            }
        } else {
            let body = GuardedBody::new(
                body,
                self.shared.body_idle_timeout,
                route.payload.max_body.filter(|_| declared.is_none()),
                stream_charge,
                rm.request_bytes.clone(),
                Some(rm.forwarded_bytes.clone()),
            );
            UpstreamBody::Stream { body }
        };

        // 8. Take an upstream slot of the route's class: critical requests have a reserve that
        //    bulk can never take; a class that finds none in its wait is shed (503).
        let slot = protection
            .slot(route.priority)
            .await
            .map_err(|e| GuardError::Shed {
                class: route.priority,
                reason: match e {
                    NoSlot::QueueFull => ShedReason::QueueFull,
                    NoSlot::QueueTimeout => ShedReason::QueueTimeout,
                },
                retry_after: Duration::from_secs(1),
            })?;

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
        strip_hop_by_hop(&mut parts.headers);
        // Only the guard speaks in its own headers: a client's copy could pass for the guard's
        // count of kept and dropped records.
        for own in batch::OWN_HEADERS {
            parts.headers.remove(own);
        }
        // Room for the three X-Forwarded-* headers: at most one growth of the map.
        parts.headers.reserve(3);
        append_forwarded(
            &mut parts.headers,
            &X_FORWARDED_FOR,
            self.conn.peer_value.clone(),
        );
        append_forwarded(
            &mut parts.headers,
            &X_FORWARDED_PROTO,
            HeaderValue::from_static("http"),
        );
        if let Some(host) = host {
            append_forwarded(&mut parts.headers, &X_FORWARDED_HOST, host);
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

/// Hashes the client's identity for per-client budgets, following the route's key spec. The
/// hash is keyed per process (SipHash), so clients cannot choose colliding identities.
pub fn client_key(
    spec: &ClientKeySpec,
    parts: &request::Parts,
    peer: IpAddr,
    hasher: &std::hash::RandomState,
) -> Result<u64, GuardError> {
    let mut h = hasher.build_hasher();
    let found = match &spec.source {
        KeySource::Header(name) => parts
            .headers
            .get(name)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .map(|v| {
                h.write_u8(1);
                h.write(v);
            })
            .is_some(),
        KeySource::Query(name) => hash_query_param(parts.uri.query(), name, &mut h),
        KeySource::PeerIp => false,
    };
    if !found {
        match (&spec.source, spec.fallback) {
            (KeySource::PeerIp, _) | (_, KeyFallback::PeerIp) => {
                h.write_u8(3);
                std::hash::Hash::hash(&peer, &mut h);
            }
            (_, KeyFallback::Shared) => h.write_u8(4),
            (_, KeyFallback::Reject) => return Err(GuardError::MissingClientKey),
        }
    }
    Ok(h.finish())
}

/// Feeds the percent-decoded value of the first `name=` parameter in `query` to `h`. Decoding
/// first means `vin=%41` and `vin=A` are the same client. Returns false when absent or empty.
fn hash_query_param(query: Option<&str>, name: &str, h: &mut impl Hasher) -> bool {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then_some(v)
        })
    else {
        return false;
    };
    if value.is_empty() {
        return false;
    }
    h.write_u8(2);
    let v = value.as_bytes();
    let mut i = 0;
    while i < v.len() {
        let (byte, used) = match v[i] {
            b'+' => (b' ', 1),
            b'%' => match (
                v.get(i + 1).and_then(|&b| hex(b)),
                v.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                _ => (b'%', 1),
            },
            b => (b, 1),
        };
        h.write_u8(byte);
        i += used;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
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
            match (err.blame(), rm) {
                (Blame::Client, Some(rm)) => rm.rejected.inc(),
                (Blame::Upstream, Some(rm)) => rm.upstream_error.inc(),
                (_, None) => metrics
                    .requests
                    .with_label_values(&[name, "rejected"])
                    .inc(),
            }
            if let GuardError::Shed { class, reason, .. } = &err {
                metrics
                    .protect
                    .shed
                    .with_label_values(&[class.as_str(), reason.as_str()])
                    .inc();
            }
            let family = match err.blame() {
                Blame::Client => &metrics.rejections,
                Blame::Upstream => &metrics.upstream_errors,
            };
            family.with_label_values(&[name, err.label()]).inc();
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

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    fn key(query: &str, s: &RandomState) -> Option<u64> {
        let mut h = s.build_hasher();
        hash_query_param(Some(query), "vin", &mut h).then(|| h.finish())
    }

    #[test]
    fn query_keys_are_decoded_before_hashing() {
        let s = RandomState::new();
        assert_eq!(key("vin=ABC", &s), key("a=1&vin=%41BC", &s));
        assert_eq!(key("vin=a+b", &s), key("vin=a%20b", &s));
        assert_ne!(key("vin=ABC", &s), key("vin=ABD", &s));
        assert_eq!(key("vin=", &s), None);
        assert_eq!(key("vinx=1", &s), None);
        assert_eq!(key("vin=A&vin=B", &s), key("vin=A", &s));
    }
}
