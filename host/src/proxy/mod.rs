//! The request path, one stage per module, read top to bottom:
//!
//! ```text
//! listen ─► chain (router, [digest: body HMAC], the route's policies) ─► route (pools, body limit)
//!        ─► forward (upstream) ─► respond (on-response hooks, header edits)
//!        ─► … body streams … ─► complete (on-complete hooks, audit record)
//! ```

pub mod chain;
pub mod digest;
pub mod forward;
pub mod framing;
pub mod limits;
pub mod listen;
pub mod respond;
pub mod route;

use crate::audit::{AuditSink, Durability, Record, rfc3339};
use crate::body::{BodyStats, Counted, Ending, Finish, ProxyBody};
use crate::error::GatewayError;
use crate::pool::Lease;
use crate::runtime::bindings::types;
use crate::runtime::hooks;
use crate::snapshot::Snapshot;
use chain::{ChainEnd, ChainRun, LinkRef};
use http::header::{HOST, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use listen::ConnInfo;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// A request body on its way through the stages: streaming from the client,
/// or already read whole by the digest stage (routes with `body_hmac`). Not
/// boxed: the one box per request is the forwarded body's.
pub type RequestBody = Either<limits::IdleBody<Incoming>, Full<bytes::Bytes>>;

/// The running gateway: the current chain snapshot and the audit sink.
pub struct Gateway {
    /// Swapped whole on reload; each request keeps the one it started with.
    pub snapshot: arc_swap::ArcSwap<Snapshot>,
    /// Where audit records go.
    pub audit: AuditSink,
}

impl Gateway {
    /// Largest head the HTTP codecs buffer (the 431 check is ours, on the parsed head).
    pub fn max_head_buf(&self) -> usize {
        (self.snapshot.load().max_request_head as usize).max(8192) * 2
    }
}

const X_REQUEST_ID: &str = "x-request-id";

/// Handle one request through every stage. Never fails: errors become answers.
pub async fn handle(gw: Arc<Gateway>, conn: ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let in_flight = crate::metrics::InFlight::start();
    let place = conn.gates.request();
    let admitted = place.is_some();
    // Boxed: the request's state machine is several KiB, and hyper and
    // tokio move the future they hold; a box is allocated once and never
    // copied (perf showed ~9 % of a proxied request in memmove before).
    let response = Box::pin(handle_request(gw, conn, req, admitted)).await;
    in_flight.hand_over(); // `complete` counts it out when the body has ended
    match place {
        // The request stays in flight until its response body has ended.
        Some(place) => response.map(|body| limits::Holding::new(body, place).boxed()),
        None => response,
    }
}

async fn handle_request(gw: Arc<Gateway>, conn: ConnInfo, req: Request<Incoming>, admitted: bool) -> Response<ProxyBody> {
    let snap = gw.snapshot.load_full();
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();

    let request_id = incoming_request_id(&parts.headers).unwrap_or_else(new_request_id);
    let authority = authority(&parts);
    let (client_ip, peer_trusted) = client_ip(&snap, &conn, &parts.headers);
    let scheme = match parts.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) {
        _ if conn.tls => "https".to_string(),
        Some(p) if peer_trusted && (p == "https" || p == "http") => p.to_string(),
        _ => "http".to_string(),
    };
    let mut record = Record {
        time: rfc3339(SystemTime::now()),
        id: request_id.clone(),
        chain: snap.version.clone(),
        listener: conn.listener.to_string(),
        client_ip: client_ip.to_string(),
        method: parts.method.to_string(),
        host: authority.clone(),
        path: parts.uri.path().to_string(),
        ..Record::default()
    };

    // Listen-side checks, before any policy runs.
    if !admitted {
        let err = GatewayError::Overloaded(format!("listener {} has max_requests_in_flight requests in flight", conn.listener));
        let run = ChainRun::new(empty_head(&request_id), Default::default());
        let mut response = respond_gateway(&gw, &snap, run, None, record, err, started).await;
        response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let head_size = head_size(&parts);
    if head_size > snap.max_request_head {
        let err = GatewayError::HeadTooLarge { size: head_size, limit: snap.max_request_head };
        let run = ChainRun::new(empty_head(&request_id), Default::default());
        return respond_gateway(&gw, &snap, run, None, record, err, started).await;
    }
    if let Err(err) = framing::check(&parts) {
        let run = ChainRun::new(empty_head(&request_id), Default::default());
        let http1 = parts.version <= http::Version::HTTP_11;
        let mut response = respond_gateway(&gw, &snap, run, None, record, err, started).await;
        if http1 {
            // Whatever follows an ambiguous request on this connection is not read as a request.
            response.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }

    // Upgrades (WebSocket) are kept aside; whether they pass depends on the route.
    let upgrade = parts.headers.get(UPGRADE).cloned();
    let client_upgrade = upgrade.as_ref().and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    forward::strip_hop_by_hop(&mut parts.headers);
    let xff = forward::forwarded_for(parts.headers.get("x-forwarded-for"), peer_trusted, conn.peer.ip());
    parts.headers.insert("x-forwarded-for", xff);
    parts.headers.insert("x-forwarded-proto", HeaderValue::from_str(&scheme).expect("http or https"));
    parts.headers.insert(X_REQUEST_ID, HeaderValue::from_str(&request_id).expect("validated or generated id"));

    let head = types::RequestHead {
        id: request_id.clone(),
        method: parts.method.to_string(),
        scheme,
        authority: authority.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: respond::wit_headers(&parts.headers),
        client_ip: client_ip.to_string(),
        listener: conn.listener.to_string(),
        route: None,
        facts: Vec::new(),
    };
    let mut run = ChainRun::new(head, std::mem::take(&mut parts.headers));
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut body: RequestBody = Either::Left(limits::IdleBody::new(body, conn.gates.body_idle_timeout, stalled.clone()));

    // Chain stage.
    let (end, route_name) = chain::run(&snap, &mut run, &mut body).await;
    record.route = route_name.clone();
    let route = route_name.as_ref().and_then(|n| snap.routes.get(n));
    let route_ref = route.map(|r| r.name.clone());

    let (response, source, lease, bytes_in) = match end {
        ChainEnd::Respond { policy, response } => (response, format!("policy:{policy}"), None, digest::bytes_read(&run.head.facts)),
        ChainEnd::Failed(err) => return respond_gateway(&gw, &snap, run, route_ref, record, err, started).await,
        ChainEnd::Proceed => {
            let route = route.expect("a chain proceeds only with a route");
            // Route stage.
            let pools = match route::candidate_pools(&snap, route, &run.head.facts) {
                Ok(p) => p,
                Err(err) => return respond_gateway(&gw, &snap, run, route_ref, record, err, started).await,
            };
            if let Err(err) = route::check_declared_length(&run.headers, route.body_limit) {
                return respond_gateway(&gw, &snap, run, route_ref, record, err, started).await;
            }
            let stats = Arc::new(BodyStats::default());
            let body = Counted::new(body, Some(route.body_limit), stats.clone()).boxed();
            let mut headers = std::mem::take(&mut run.headers);
            if !headers.contains_key(HOST) && let Ok(h) = HeaderValue::from_str(&authority) {
                headers.insert(HOST, h);
            }
            let passes_upgrade = route.websocket && upgrade.is_some() && client_upgrade.is_some();
            if passes_upgrade {
                headers.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(UPGRADE, upgrade.clone().expect("checked above"));
            }
            let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
            // Forward stage.
            match forward::forward(&pools, parts.method.clone(), &path_and_query, headers, body, route.timeout).await {
                Ok(mut up) => {
                    record.upstream = Some(format!("{}/{}", up.pool.name, up.lease.target.address));
                    record.region = up.pool.region.clone();
                    if passes_upgrade && up.response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        let upstream_upgrade = hyper::upgrade::on(&mut up.response);
                        tokio::spawn(bridge(client_upgrade.expect("checked above"), upstream_upgrade));
                    } else {
                        forward::strip_hop_by_hop(up.response.headers_mut());
                    }
                    let (p, b) = up.response.into_parts();
                    let response = Response::from_parts(p, b.map_err(Into::into).boxed());
                    (response, "upstream".to_string(), Some(up.lease), Some(stats))
                }
                Err(err) => {
                    let err = if stats.over_limit.load(Ordering::Relaxed) {
                        GatewayError::BodyTooLarge { limit: route.body_limit }
                    } else if stalled.load(Ordering::Relaxed) {
                        GatewayError::BodyTimeout { timeout_ms: conn.gates.body_idle_timeout.as_millis() as u64 }
                    } else if stats.source_failed.load(Ordering::Relaxed) {
                        GatewayError::ClientBody(err.to_string())
                    } else {
                        err
                    };
                    let mut record = record;
                    record.bytes_in = stats.bytes.load(Ordering::Relaxed);
                    return respond_gateway(&gw, &snap, run, route_ref, record, err, started).await;
                }
            }
        }
    };
    finish(&gw, &snap, run, route_ref, record, response, source, lease, bytes_in, started).await
}

/// Answer with a gateway error (problem+json), through the respond stage.
async fn respond_gateway(gw: &Arc<Gateway>, snap: &Arc<Snapshot>, run: ChainRun, route: Option<String>, mut record: Record, err: GatewayError, started: Instant) -> Response<ProxyBody> {
    match err.fault() {
        crate::error::Fault::Upstream | crate::error::Fault::Policy | crate::error::Fault::Internal => {
            tracing::warn!(request_id = %record.id, route = ?route, "{err}")
        }
        crate::error::Fault::Downstream => tracing::debug!(request_id = %record.id, "{err}"),
    }
    record.error = Some(err.slug());
    let response = respond::problem(&err, &record.id);
    finish(gw, snap, run, route, record, response, "gateway".into(), None, None, started).await
}

/// Respond stage: response edits and `on-response` hooks, then wrap the body
/// so that completion hooks and the audit record follow its end.
#[allow(clippy::too_many_arguments)]
async fn finish(
    gw: &Arc<Gateway>,
    snap: &Arc<Snapshot>,
    mut run: ChainRun,
    route_name: Option<String>,
    mut record: Record,
    mut response: Response<ProxyBody>,
    mut source: String,
    lease: Option<Lease>,
    bytes_in: Option<Arc<BodyStats>>,
    started: Instant,
) -> Response<ProxyBody> {
    let route = route_name.as_ref().and_then(|n| snap.routes.get(n));
    let _ = respond::set_headers(response.headers_mut(), &run.response_headers);
    // on-response, in reverse order of on-request, for policies that declare it.
    for (i, which) in run.ran.clone().into_iter().enumerate().rev() {
        let link = which.get(snap, route);
        if !link.hooks.contains(types::HookSet::ON_RESPONSE) {
            continue;
        }
        let resp_head = respond::response_head(response.status(), response.headers(), &source);
        let state = link.state(&record.id, snap);
        let kept = run.kept.get_mut(i).and_then(Option::take);
        let (edits, audit) = hooks::on_response_in(&snap.runtime, &link.policy.module, state, &run.head, &resp_head, kept).await;
        run.add_audit(&link.policy.name, audit);
        let result = edits.map_err(GatewayError::from).and_then(|e| {
            respond::apply_response_edits(response.headers_mut(), &e).map_err(|why| {
                GatewayError::Policy(crate::runtime::PolicyFailure { policy: link.policy.name.to_string(), class: crate::runtime::FailureClass::Contract, detail: why })
            })
        });
        if let Err(err) = result {
            // Fail closed: the upstream's answer is not released.
            tracing::warn!(request_id = %record.id, "{err}");
            if let GatewayError::Policy(failure) = &err
                && let Some(limit) = chain::broken_limit(&link.policy, failure)
            {
                run.add_audit(&link.policy.name, vec![("limit".into(), limit)]);
            }
            run.verdicts.push((link.policy.name.to_string(), format!("failed:{}", slug_class(&err))));
            record.error = Some(err.slug());
            response = respond::problem(&err, &record.id);
            source = "gateway".into();
            break;
        }
    }
    // No instance outlives the response head (the body may stream for hours).
    run.kept.clear();
    response.headers_mut().insert(X_REQUEST_ID, HeaderValue::from_str(&record.id).expect("validated or generated id"));

    record.status = response.status().as_u16();
    record.source = source;
    // A durable route's decision is on disk (fsynced, group commit) before
    // its head is released; the completion record follows the body's end.
    let durability = route.map_or_else(|| gw.audit.default_durability(), |r| r.audit);
    if durability == Durability::Durable && gw.audit.is_evidence_log() {
        let mut decision = record.clone();
        decision.phase = Some("decision".into());
        decision.outcome = "pending".into();
        decision.verdicts = with_skipped(snap, route, &run.verdicts);
        decision.policies = run.audit.clone();
        record.phase = Some("complete".into());
        if let Err(why) = gw.audit.write_durable(decision).await {
            // Fail closed: what could not be recorded is not released.
            let err = GatewayError::AuditUnavailable(why);
            tracing::error!(request_id = %record.id, "{err}");
            response = respond::problem(&err, &record.id);
            response.headers_mut().insert(X_REQUEST_ID, HeaderValue::from_str(&record.id).expect("validated or generated id"));
            record.status = response.status().as_u16();
            record.source = "gateway".into();
            record.error = Some(err.slug());
        }
    }
    let (parts, body) = response.into_parts();
    let out_stats = Arc::new(BodyStats::default());
    let counted = Counted::new(body, None, out_stats.clone());
    let gw = gw.clone();
    let snap = snap.clone();
    let body = Finish::new(counted, move |ending| {
        let bytes_out = out_stats.bytes.load(Ordering::Relaxed);
        let bytes_in = bytes_in.map_or(0, |s| s.bytes.load(Ordering::Relaxed));
        let duration_us = started.elapsed().as_micros() as u64;
        tokio::spawn(async move {
            drop(lease);
            complete(&gw, &snap, run, route_name, record, ending, bytes_in, bytes_out, duration_us).await;
        });
    });
    Response::from_parts(parts, body.boxed())
}

fn slug_class(err: &GatewayError) -> String {
    match err {
        GatewayError::Policy(f) => f.class.to_string(),
        other => other.slug(),
    }
}

/// A fresh request id: a UUIDv4 in its 32-hex-digit form, from the thread's
/// CSPRNG (`rand`'s ChaCha, reseeded from the OS) rather than a `getrandom`
/// syscall per request as `Uuid::new_v4` makes.
fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().simple().to_string()
}

/// After the response body ended: `on-complete` hooks, then the audit record.
#[allow(clippy::too_many_arguments)]
async fn complete(gw: &Gateway, snap: &Arc<Snapshot>, mut run: ChainRun, route_name: Option<String>, mut record: Record, ending: Ending, bytes_in: u64, bytes_out: u64, duration_us: u64) {
    record.bytes_in = bytes_in;
    record.bytes_out = bytes_out;
    record.duration_us = duration_us;
    record.outcome = match ending {
        Ending::Complete => "ok",
        Ending::Failed => "upstream-error",
        Ending::Dropped => "client-abort",
    }
    .into();
    let route = route_name.as_ref().and_then(|n| snap.routes.get(n));
    let links = links(route);
    let verdicts = with_skipped(snap, route, &run.verdicts);
    let done = types::Completion {
        status: record.status,
        bytes_in,
        bytes_out,
        duration_us,
        upstream: record.upstream.clone(),
        region: record.region.clone(),
        outcome: record.outcome.clone(),
        verdicts: verdicts.clone(),
        facts: run.head.facts.clone(),
    };
    for which in links {
        let link = which.get(snap, route);
        if !link.hooks.contains(types::HookSet::ON_COMPLETE) {
            continue;
        }
        let state = link.state(&record.id, snap);
        let (result, audit) = hooks::on_complete(&snap.runtime, &link.policy.module, state, &run.head, &done).await;
        run.add_audit(&link.policy.name, audit);
        if let Err(f) = result {
            tracing::warn!(request_id = %record.id, "{f}");
            let mut fields = vec![("on-complete".to_string(), format!("failed:{}", f.class))];
            if let Some(limit) = chain::broken_limit(&link.policy, &f) {
                fields.push(("limit".into(), limit));
            }
            run.add_audit(&link.policy.name, fields);
        }
    }
    let metrics = crate::metrics::global();
    metrics.request_done(record.route.as_deref(), &record.method, record.status, duration_us, &record.outcome, record.error.as_deref(), &verdicts);
    record.verdicts = verdicts;
    record.policies = run.audit;
    gw.audit.write(record);
    // Counted out only once its record is queued: shutdown waits for zero before sealing the log.
    metrics.in_flight.dec();
}

/// The router, then the route's chain.
fn links(route: Option<&crate::snapshot::RouteEntry>) -> Vec<LinkRef> {
    std::iter::once(LinkRef::Router).chain((0..route.map_or(0, |r| r.chain.len())).map(LinkRef::Chain)).collect()
}

/// Every policy's verdict, in chain order; `skipped` for those that did not run.
fn with_skipped(snap: &Snapshot, route: Option<&crate::snapshot::RouteEntry>, ran: &[(String, String)]) -> Vec<(String, String)> {
    let mut verdicts = ran.to_vec();
    for which in links(route) {
        let name = which.get(snap, route).policy.name.to_string();
        if !verdicts.iter().any(|(n, _)| *n == name) {
            verdicts.push((name, "skipped".into()));
        }
    }
    verdicts
}

/// Copy bytes both ways between an upgraded client and upstream connection.
async fn bridge(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
        tracing::debug!("upgrade did not complete");
        return;
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
}

fn incoming_request_id(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(X_REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_string())
}

fn authority(parts: &http::request::Parts) -> String {
    let raw = parts.uri.authority().map(|a| a.as_str().to_string()).or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_string)).unwrap_or_default();
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h.to_string(),
        Some((h, port)) if h.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => raw,
    };
    host.to_ascii_lowercase()
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most untrusted address of `X-Forwarded-For`.
fn client_ip(snap: &Snapshot, conn: &ConnInfo, headers: &http::HeaderMap) -> (std::net::IpAddr, bool) {
    let peer = conn.peer.ip();
    let trusted = |ip: &std::net::IpAddr| snap.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return (peer, false);
    }
    let mut client = peer;
    let hops: Vec<&str> = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    (client, true)
}

fn head_size(parts: &http::request::Parts) -> u64 {
    // Measured without rendering the URI: this runs on every request.
    let target = parts.uri.authority().map_or(0, |a| a.as_str().len()) + parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = parts.method.as_str().len() + target + 12;
    let headers: usize = parts.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (line + headers) as u64
}

fn empty_head(id: &str) -> types::RequestHead {
    types::RequestHead {
        id: id.to_string(),
        method: String::new(),
        scheme: "http".into(),
        authority: String::new(),
        path: "/".into(),
        query: None,
        headers: Vec::new(),
        client_ip: String::new(),
        listener: String::new(),
        route: None,
        facts: Vec::new(),
    }
}
