//! Forward stage: pick a target from the candidate pools and send the
//! request, streaming its body; classify what went wrong into 502/504/503.

use crate::body::{BoxError, ProxyBody};
use crate::error::GatewayError;
use crate::pool::{Lease, Pool, Target};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and
/// never pass a proxy. Header names, not strings: removing them parses
/// nothing per request.
static HOP_BY_HOP: [http::HeaderName; 9] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::PROXY_AUTHORIZATION,
    http::header::PROXY_AUTHENTICATE,
];

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Without a `Connection` header this collects nothing (no allocation).
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A response from an upstream, with what it took to get it.
pub struct Upstream {
    /// The response; its body streams on.
    pub response: Response<Incoming>,
    /// The pool that answered.
    pub pool: Arc<Pool>,
    /// The target, held as in flight until the response body ends.
    pub lease: Lease,
}

/// The target to send to: one of the first candidate pool that has an
/// available target. Only the candidates are ever considered — after
/// residency narrowed them, a pool in another region is not one — so when
/// every candidate is down the answer is 503, never a failover elsewhere.
pub fn pick(pools: &[Arc<Pool>]) -> Option<(Arc<Pool>, Lease)> {
    pools.iter().find_map(|p| p.pick().map(|l| (p.clone(), l)))
}

/// Methods a retry may repeat (RFC 9110 §9.2.2: idempotent).
pub fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// Send the request to the first pool with an available target; `timeout`
/// (the route's) overrides the pool's response timeout.
///
/// When the connection to the target fails — the request never reached
/// it — an idempotent request whose body was not read yet is sent again to
/// another target of the candidates, up to the pool's `retries.attempts`
/// and within its retry budget. Nothing else is retried: a timeout or an
/// error after the request went out may have had its effect.
pub async fn forward(pools: &[Arc<Pool>], method: Method, path_and_query: &str, headers: HeaderMap, body: ProxyBody, timeout: Option<Duration>) -> Result<Upstream, GatewayError> {
    let Some((mut pool, mut lease)) = pick(pools) else {
        return Err(GatewayError::NoHealthyTarget { pools: pools.iter().map(|p| p.name.clone()).collect() });
    };
    pool.retries.request();
    // An idempotent request's body is lent to each try and taken back if the try never read it.
    let (replay, mut body) = if idempotent(&method) { (Some(Replay::new(body)), None) } else { (None, Some(body)) };
    let mut tried: Vec<Arc<Target>> = Vec::new();
    loop {
        let attempt_body = match (&replay, body.take()) {
            (Some(r), _) => r.lend(),
            (None, Some(b)) => b,
            (None, None) => unreachable!("a request without replay is tried once"),
        };
        let err = match send(&pool, &lease, method.clone(), path_and_query, headers.clone(), attempt_body, timeout).await {
            Ok(response) => return Ok(Upstream { response, pool, lease }),
            Err((err, connect_failed)) if connect_failed => err,
            Err((err, _)) => return Err(err),
        };
        if !replay.as_ref().is_some_and(Replay::untouched) {
            return Err(err); // not idempotent, or its body went out: never repeated
        }
        if tried.len() as u32 >= pool.retries.attempts {
            return Err(err);
        }
        tried.push(lease.target.clone());
        let Some((next_pool, next_lease)) = pools.iter().find_map(|p| p.pick_except(&tried).map(|l| (p.clone(), l))) else { return Err(err) };
        let metrics = crate::metrics::global();
        if !pool.retries.try_retry() {
            metrics.upstream_retries.with_label_values(&[pool.name.as_str(), "budget-exhausted"]).inc();
            tracing::warn!(pool = %pool.name, "retry budget spent: not retrying a failed connection");
            return Err(err);
        }
        metrics.upstream_retries.with_label_values(&[pool.name.as_str(), "retried"]).inc();
        tracing::debug!(pool = %pool.name, failed = %lease.target.address, next = %next_lease.target.address, "connection failed; retrying on another target");
        (pool, lease) = (next_pool, next_lease);
    }
}

/// One try: `Err((error, the connection failed))`.
async fn send(pool: &Pool, lease: &Lease, method: Method, path_and_query: &str, headers: HeaderMap, body: ProxyBody, timeout: Option<Duration>) -> Result<Response<Incoming>, (GatewayError, bool)> {
    let target = lease.target.address.clone();
    let uri: Uri = format!("{}://{target}{path_and_query}", pool.scheme).parse().map_err(|_| (GatewayError::BadRequest("the request target cannot be forwarded".into()), false))?;
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    let timeout = timeout.unwrap_or(pool.response_timeout);
    match tokio::time::timeout(timeout, pool.client.request(req)).await {
        Err(_) => {
            pool.report(&lease.target, false);
            Err((GatewayError::UpstreamTimeout { target, timeout_ms: timeout.as_millis() as u64 }, false))
        }
        Ok(Err(e)) if e.is_connect() => {
            pool.report(&lease.target, false);
            Err((GatewayError::UpstreamConnect { target, detail: source_chain(&e) }, true))
        }
        Ok(Err(e)) => {
            // A client that sends a broken body must not get a healthy target ejected.
            if !crate::body::sender_at_fault(&e) {
                pool.report(&lease.target, false);
            }
            Err((GatewayError::UpstreamProtocol { target, detail: source_chain(&e) }, false))
        }
        Ok(Ok(response)) => {
            pool.report(&lease.target, true);
            Ok(response)
        }
    }
}

/// A request body that can be taken back from a try that failed before
/// reading any of it (the connection failed), to be lent to the next.
struct Replay {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    touched: Arc<AtomicBool>,
}

impl Replay {
    fn new(body: ProxyBody) -> Replay {
        Replay { slot: Arc::new(Mutex::new(Some(body))), touched: Arc::new(AtomicBool::new(false)) }
    }

    /// The body for one try; reading it marks it as sent.
    fn lend(&self) -> ProxyBody {
        let (end, size) = match self.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(b) => (b.is_end_stream(), b.size_hint()),
            None => (true, SizeHint::with_exact(0)),
        };
        Lent { slot: self.slot.clone(), touched: self.touched.clone(), end, size }.boxed()
    }

    /// No try has read any of the body: sending it again repeats nothing.
    fn untouched(&self) -> bool {
        !self.touched.load(Ordering::SeqCst)
    }
}

struct Lent {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    touched: Arc<AtomicBool>,
    end: bool,
    size: SizeHint,
}

impl Body for Lent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.touched.store(true, Ordering::SeqCst);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// `X-Forwarded-For`: the trusted chain so far plus the peer.
pub fn forwarded_for(existing: Option<&HeaderValue>, peer_trusted: bool, peer: std::net::IpAddr) -> HeaderValue {
    let value = match existing.and_then(|v| v.to_str().ok()) {
        Some(prior) if peer_trusted && !prior.trim().is_empty() => format!("{prior}, {peer}"),
        _ => peer.to_string(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
