//! Route and forward stages: the route's pools (narrowed by policies'
//! `<name>.pools` facts, as on the node), the digest stage's body HMAC, and
//! the request to the upstream over outbound HTTP with both bodies streamed.

use crate::chain::Failure;
use crate::head::{Body, HOP_BY_HOP};
use crate::plan::{BodyHmac, Plan, Route};
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use portcullis_sdk::RequestHead;
use spin_sdk::http::{ErrorCode, Fields, IncomingResponse, Method, OutgoingRequest, Scheme};
use spin_sdk::wit::wasi::http0_2_0::outgoing_handler;
use spin_sdk::wit::wasi::http0_2_0::types::RequestOptions;
use std::future::Future;
use std::task::Poll;

/// The pools this request may use, in order.
pub fn pools(plan: &Plan, route: &Route, facts: &[(String, String)]) -> Result<Vec<String>, Failure> {
    if let Some(policy) = &route.narrowed_by
        && !facts.iter().any(|(k, _)| k.strip_suffix(".pools") == Some(policy.as_str()))
    {
        return Err(Failure::contract(policy));
    }
    let narrowing: Vec<Vec<String>> = facts.iter().filter(|(k, _)| k.ends_with(".pools")).map(|(_, v)| portcullis_sdk::list::decode(v)).collect();
    let order = narrowing.last().map_or(route.pools.as_slice(), Vec::as_slice);
    let mut names: Vec<String> = Vec::new();
    for p in order {
        if route.pools.contains(p) && narrowing.iter().all(|l| l.contains(p)) && !names.contains(p) && plan.pools.contains_key(p) {
            names.push(p.clone());
        }
    }
    if names.is_empty() {
        return Err(Failure { status: 503, slug: "no-healthy-upstream".into(), detail: "No upstream may serve this request.".into() });
    }
    Ok(names)
}

/// 413 before anything is forwarded when the declared length is too large.
pub fn check_declared_length(head: &RequestHead, route: &Route) -> Result<(), Failure> {
    let declared = head.headers.iter().find(|h| h.name == "content-length").and_then(|h| std::str::from_utf8(&h.value).ok()?.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > route.body_limit => Err(too_large(route.body_limit)),
        _ => Ok(()),
    }
}

fn too_large(limit: u64) -> Failure {
    Failure { status: 413, slug: "request-body-too-large".into(), detail: format!("The request body exceeds {limit} bytes.") }
}

/// Digest stage: read the body (at most `max_bytes`), write facts
/// `body.hmac-sha256` and `body.size`, keep the bytes to forward.
pub async fn digest(hmac: &BodyHmac, head: &mut RequestHead, body: &mut Body) -> Result<(), Failure> {
    let bytes = match std::mem::replace(body, Body::Read(Vec::new())) {
        Body::Read(b) => b,
        Body::Stream(mut s) => {
            let mut read = Vec::new();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|_| Failure { status: 400, slug: "request-body-broken".into(), detail: "The request body could not be read.".into() })?;
                if (read.len() + chunk.len()) as u64 > hmac.max_bytes {
                    return Err(too_large(hmac.max_bytes));
                }
                read.extend_from_slice(&chunk);
            }
            read
        }
    };
    let key = hex::decode(&hmac.key_hex).map_err(|_| Failure { status: 500, slug: "edge-misconfigured".into(), detail: "The edge gateway is misconfigured; the request was refused.".into() })?;
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(&bytes);
    head.facts.push(("body.hmac-sha256".into(), hex::encode(mac.finalize().into_bytes())));
    head.facts.push(("body.size".into(), bytes.len().to_string()));
    *body = Body::Read(bytes);
    Ok(())
}

/// What the upstream answered.
pub struct Upstream {
    /// `pool/host:port`.
    pub upstream: String,
    /// The pool's region.
    pub region: Option<String>,
    /// Its response (head read, body not yet).
    pub response: IncomingResponse,
    /// Request body bytes sent.
    pub bytes_in: u64,
}

/// Send the request to the first target that takes it. Only a request with
/// no body still to stream is tried on the next target after a connection
/// failure (a streamed body cannot be sent twice).
pub async fn forward(plan: &Plan, pools: &[String], route: &Route, head: &RequestHead, mut body: Body) -> Result<Upstream, (Failure, u64)> {
    let targets: Vec<(&str, &str)> = pools.iter().flat_map(|p| plan.pools[p].targets.iter().map(move |t| (p.as_str(), t.as_str()))).collect();
    let no_body = matches!(&body, Body::Read(_)) || !has_body(head);
    let mut last = Failure { status: 503, slug: "no-healthy-upstream".into(), detail: "No upstream may serve this request.".into() };
    for (i, (pool, target)) in targets.iter().enumerate() {
        if i > 0 && !no_body {
            break;
        }
        let this = std::mem::replace(&mut body, Body::Read(Vec::new()));
        let kept = if let Body::Read(b) = &this { Some(b.clone()) } else { None };
        match send(plan, pool, target, route, head, this).await {
            Ok((response, bytes_in)) => {
                return Ok(Upstream { upstream: format!("{pool}/{target}"), region: plan.pools[*pool].region.clone(), response, bytes_in });
            }
            Err((failure, bytes_in, retry)) => {
                eprintln!("portcullis-edge: request {} to {pool}/{target}: {}", head.id, failure.slug);
                if !retry || failure.status == 413 {
                    return Err((failure, bytes_in));
                }
                last = failure;
                body = Body::Read(kept.unwrap_or_default());
            }
        }
    }
    Err((last, 0))
}

fn has_body(head: &RequestHead) -> bool {
    head.headers.iter().any(|h| h.name == "transfer-encoding" || (h.name == "content-length" && h.value != b"0"))
}

async fn send(plan: &Plan, pool: &str, target: &str, route: &Route, head: &RequestHead, body: Body) -> Result<(IncomingResponse, u64), (Failure, u64, bool)> {
    let headers: Vec<(String, Vec<u8>)> = head.headers.iter().filter(|h| h.name != "host").map(|h| (h.name.clone(), h.value.clone())).collect();
    let fields = Fields::from_list(&headers).map_err(|e| (Failure { status: 400, slug: "bad-request".into(), detail: format!("A request header was refused: {e:?}.") }, 0, false))?;
    let request = OutgoingRequest::new(fields);
    let method = method(&head.method);
    let _ = request.set_method(&method);
    let scheme = if plan.pools[pool].scheme == "https" { Scheme::Https } else { Scheme::Http };
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(target));
    let path_and_query = match &head.query {
        Some(q) => format!("{}?{q}", head.path),
        None => head.path.clone(),
    };
    let _ = request.set_path_with_query(Some(&path_and_query));
    let mut sink = request.take_body();
    let limit = route.body_limit;
    let pump = async move {
        let mut sent = 0u64;
        match body {
            Body::Read(bytes) => {
                sent = bytes.len() as u64;
                if !bytes.is_empty() {
                    sink.send(bytes).await.map_err(|_| (false, sent))?;
                }
            }
            Body::Stream(mut stream) => {
                while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else {
                        // Not finished: the upstream must not take a cut body as whole.
                        std::mem::forget(sink);
                        return Err((false, sent));
                    };
                    sent += chunk.len() as u64;
                    if sent > limit {
                        // As above: dropping the sink would finish the body.
                        std::mem::forget(sink);
                        return Err((true, sent));
                    }
                    sink.send(chunk).await.map_err(|_| (false, sent))?;
                }
            }
        }
        drop(sink); // finishes the body
        Ok::<u64, (bool, u64)>(sent)
    };
    let pool_plan = &plan.pools[pool];
    let timeouts = Timeouts { connect_ms: pool_plan.connect_timeout_ms, first_byte_ms: route.timeout_ms.unwrap_or(pool_plan.response_timeout_ms) };
    let sending = Box::pin(send_with_timeouts(request, timeouts));
    let pump = Box::pin(pump);
    // A body over the limit ends the exchange at once: the upstream, still
    // waiting for the rest of it, would never answer.
    let (response, pumped) = match futures::future::select(sending, pump).await {
        futures::future::Either::Left((response, pump)) => (response, pump.await),
        futures::future::Either::Right((Err((true, sent)), _)) => return Err((too_large(limit), sent, false)),
        futures::future::Either::Right((pumped, sending)) => (sending.await, pumped),
    };
    match (response, pumped) {
        (_, Err((true, sent))) => Err((too_large(limit), sent, false)),
        (Ok(response), Ok(sent)) => Ok((response, sent)),
        (Ok(response), Err((false, sent))) => Ok((response, sent)),
        (Err(e), pumped) => {
            let sent = pumped.unwrap_or_else(|(_, s)| s);
            let (failure, retry) = upstream_failure(&e);
            Err((failure, sent, retry))
        }
    }
}

/// The budgets of one outbound request.
struct Timeouts {
    connect_ms: u64,
    first_byte_ms: u64,
}

/// `outgoing-handler.handle` with request options: spin-sdk's `send` passes
/// none, so an upstream that never answers would hold the request forever.
fn send_with_timeouts(request: OutgoingRequest, timeouts: Timeouts) -> impl Future<Output = Result<IncomingResponse, ErrorCode>> {
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(timeouts.connect_ms.saturating_mul(1_000_000)));
    let _ = options.set_first_byte_timeout(Some(timeouts.first_byte_ms.saturating_mul(1_000_000)));
    let mut state = Pending { waiting: None, response: Some(outgoing_handler::handle(request, Some(options))) };
    futures::future::poll_fn(move |cx| match state.response.as_ref().expect("taken only on drop") {
        Err(code) => Poll::Ready(Err(code.clone())),
        Ok(future) => match future.get() {
            Some(Ok(answer)) => Poll::Ready(answer),
            Some(Err(())) => Poll::Ready(Err(ErrorCode::InternalError(Some("the response was already taken".into())))),
            None => {
                let token = spin_executor::push_waker_and_get_token(future.subscribe(), cx.waker().clone());
                state.waiting = Some(token.into());
                Poll::Pending
            }
        },
    })
}

/// An outbound request in flight. The registered pollable is a child of the
/// response future and must be dropped first (wasmtime traps otherwise).
struct Pending {
    waiting: Option<spin_executor::CancelOnDropToken>,
    response: Option<Result<spin_sdk::wit::wasi::http0_2_0::types::FutureIncomingResponse, ErrorCode>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        drop(self.waiting.take());
        drop(self.response.take());
    }
}

/// What a failed outbound request means for the client: 502, or 504 for a
/// timeout; retried elsewhere only when nothing reached the upstream.
fn upstream_failure(code: &ErrorCode) -> (Failure, bool) {
    let unreachable = Failure { status: 502, slug: "upstream-unreachable".into(), detail: "The upstream service could not be reached.".into() };
    match code {
        ErrorCode::ConnectionRefused | ErrorCode::DnsTimeout | ErrorCode::DnsError(_) | ErrorCode::DestinationNotFound | ErrorCode::DestinationUnavailable | ErrorCode::DestinationIpUnroutable | ErrorCode::ConnectionTimeout => (unreachable, true),
        ErrorCode::ConnectionReadTimeout | ErrorCode::HttpResponseTimeout => (Failure { status: 504, slug: "upstream-timeout".into(), detail: "The upstream service did not answer in time.".into() }, false),
        _ => (Failure { status: 502, slug: "upstream-error".into(), detail: "The upstream service's answer could not be used.".into() }, false),
    }
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    }
}

/// Response headers that go to the client: no hop-by-hop ones.
pub fn response_headers(response: &IncomingResponse) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = response.headers().entries().into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
    let named: Vec<String> = headers.iter().filter(|(n, _)| n == "connection").flat_map(|(_, v)| String::from_utf8_lossy(v).split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>()).collect();
    headers.retain(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && !named.contains(n));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn plan() -> Plan {
        Plan::parse(
            r#"{"format":"portcullis-edge/1","chain":"v1","router":"router",
                "policies":{"router":{"crate":"router","namespace":"route","settings":{}}},
                "routes":{"records":{"chain":[],"pools":["us","eu","eu2"],"narrowed_by":"residency","body_limit":10,"websocket":false,"timeout_ms":null,"body_hmac":null}},
                "pools":{"us":{"region":"ash","scheme":"http","targets":["127.0.0.1:1"],"connect_timeout_ms":1000,"response_timeout_ms":30000},"eu":{"region":"fsn1","scheme":"http","targets":["127.0.0.1:2"],"connect_timeout_ms":1000,"response_timeout_ms":30000},"eu2":{"region":"nbg1","scheme":"http","targets":["127.0.0.1:3"],"connect_timeout_ms":1000,"response_timeout_ms":30000}},
                "max_request_head":65536}"#,
        )
        .unwrap()
    }

    fn facts(f: &[(&str, &str)]) -> Vec<(String, String)> {
        f.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn policies_narrow_the_pools_and_never_widen_them() {
        let plan = plan();
        let route = &plan.routes["records"];
        assert_eq!(pools(&plan, route, &facts(&[("residency.pools", "eu2,eu")])).unwrap(), ["eu2", "eu"]);
        assert_eq!(pools(&plan, route, &facts(&[("residency.pools", "eu,elsewhere")])).unwrap(), ["eu"]);
        let none = pools(&plan, route, &facts(&[("residency.pools", "")])).unwrap_err();
        assert_eq!((none.status, none.slug.as_str()), (503, "no-healthy-upstream"));
        // The residency policy must decide: without its fact nothing is forwarded.
        let undecided = pools(&plan, route, &facts(&[("route.pools", "us,eu")])).unwrap_err();
        assert_eq!((undecided.status, undecided.slug.as_str()), (500, "policy-contract"));
    }

    #[test]
    fn a_plan_naming_a_policy_not_compiled_in_is_refused() {
        let err = Plan::parse(r#"{"format":"portcullis-edge/1","chain":"v1","router":"router","policies":{"router":{"crate":"router","namespace":"route","settings":{}},"x":{"crate":"test-policy","namespace":"x","settings":{}}},"routes":{},"pools":{},"max_request_head":1}"#).unwrap_err();
        assert!(err.0.contains("policy \"x\" needs crate \"test-policy\", which is not compiled into this edge"), "{}", err.0);
        let err = Plan::parse(r#"{"format":"portcullis-edge/2","chain":"v1","router":"router","policies":{},"routes":{},"pools":{},"max_request_head":1}"#).unwrap_err();
        assert!(err.0.contains("portcullis-edge/2"), "{}", err.0);
    }
}
