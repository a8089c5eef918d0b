//! Forward stage: pick a target from the candidate pools and send the
//! request, streaming its body; classify what went wrong into 502/504/503.

use crate::body::ProxyBody;
use crate::error::GatewayError;
use crate::pool::{Lease, Pool};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::sync::Arc;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and never pass a proxy.
pub const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate"];

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    for name in HOP_BY_HOP {
        headers.remove(*name);
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

/// Send the request to the first pool with an available target.
pub async fn forward(pools: &[Arc<Pool>], method: Method, path_and_query: &str, headers: HeaderMap, body: ProxyBody) -> Result<Upstream, GatewayError> {
    let Some((pool, lease)) = pick(pools) else {
        return Err(GatewayError::NoHealthyTarget { pools: pools.iter().map(|p| p.name.clone()).collect() });
    };
    let target = lease.target.address.clone();
    let uri: Uri = format!("http://{target}{path_and_query}").parse().map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded".into()))?;
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;

    match tokio::time::timeout(pool.response_timeout, pool.client.request(req)).await {
        Err(_) => {
            pool.report(&lease.target, false);
            Err(GatewayError::UpstreamTimeout { target, timeout_ms: pool.response_timeout.as_millis() as u64 })
        }
        Ok(Err(e)) if e.is_connect() => {
            pool.report(&lease.target, false);
            Err(GatewayError::UpstreamConnect { target, detail: source_chain(&e) })
        }
        Ok(Err(e)) => {
            // A client that sends a broken body must not get a healthy target ejected.
            if !crate::body::sender_at_fault(&e) {
                pool.report(&lease.target, false);
            }
            Err(GatewayError::UpstreamProtocol { target, detail: source_chain(&e) })
        }
        Ok(Ok(response)) => {
            pool.report(&lease.target, true);
            Ok(Upstream { response, pool, lease })
        }
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
