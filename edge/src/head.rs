//! Listen stage: the request head as policies see it, built as the node
//! builds it (`host/src/proxy/mod.rs`), and the body kept aside to stream.

use crate::chain::Failure;
use crate::plan::Plan;
use futures::StreamExt;
use portcullis_sdk::{Header, RequestHead};
use spin_sdk::http::{IncomingRequest, Method, Scheme};
use std::pin::Pin;

/// The request body, streamed from the client (or read whole by the digest stage).
pub enum Body {
    /// Not read yet.
    Stream(BodyStream),
    /// Read whole (the digest stage), to be forwarded as it was verified.
    Read(Vec<u8>),
}

/// Chunks of the client's body.
pub type BodyStream = Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>>>>;

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

/// Spin's own request headers (its trigger adds them; a client's are not believed).
const SPIN_CLIENT_ADDR: &str = "spin-client-addr";

/// The request id: the client's when well formed, else a new one.
pub fn request_id(request: &IncomingRequest) -> String {
    let given = request.headers().get(&"x-request-id".to_string()).into_iter().next().and_then(|v| String::from_utf8(v).ok());
    match given {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) => v,
        // As the node makes them (random bits from `wasi:random`).
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// The head, or the gateway's answer when it is refused before any policy
/// runs (with what is known of the head, for the audit record).
pub fn read(request: IncomingRequest, plan: &Plan) -> Result<(RequestHead, Body), (Failure, RequestHead)> {
    let id = request_id(&request);
    let mut headers: Vec<(String, Vec<u8>)> = request.headers().entries().into_iter().map(|(n, v)| (n.to_ascii_lowercase(), v)).collect();
    let path_with_query = request.path_with_query().unwrap_or_else(|| "/".into());
    let method = method_name(&request.method());
    let size = method.len() + path_with_query.len() + 12 + headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    let (path, query) = match path_with_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_with_query.clone(), None),
    };
    let raw_authority = request.authority().or_else(|| header(&headers, "host")).unwrap_or_default();
    let authority = strip_port(&raw_authority).to_ascii_lowercase();
    let peer: Option<std::net::IpAddr> = header(&headers, SPIN_CLIENT_ADDR).and_then(|a| a.parse::<std::net::SocketAddr>().map(|s| s.ip()).ok().or_else(|| a.parse().ok()));
    let peer = peer.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let (client_ip, peer_trusted) = client_ip(plan, peer, &headers);
    if size as u64 > plan.max_request_head {
        let failure = Failure { status: 431, slug: "request-head-too-large".into(), detail: format!("The request head exceeds {} bytes.", plan.max_request_head) };
        // No policy sees it; the record names what was asked, nothing more.
        let head = RequestHead { id, method, scheme: "http".into(), authority, path, query: None, headers: Vec::new(), client_ip: client_ip.to_string(), listener: "edge".into(), route: None, facts: Vec::new() };
        return Err((failure, head));
    }
    let scheme = match (request.scheme(), header(&headers, "x-forwarded-proto")) {
        (Some(Scheme::Https), _) => "https".to_string(),
        (_, Some(p)) if peer_trusted && (p == "https" || p == "http") => p,
        _ => "http".to_string(),
    };

    // What goes upstream: no hop-by-hop headers, no Spin headers, and the
    // forwarding headers the node sets.
    let connection_named: Vec<String> = headers.iter().filter(|(n, _)| n == "connection").flat_map(|(_, v)| String::from_utf8_lossy(v).split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>()).collect();
    headers.retain(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && !connection_named.contains(n) && !n.starts_with("spin-"));
    let xff = match (peer_trusted, header(&headers, "x-forwarded-for")) {
        (true, Some(prior)) => format!("{prior}, {peer}"),
        _ => peer.to_string(),
    };
    set(&mut headers, "x-forwarded-for", xff.into_bytes());
    set(&mut headers, "x-forwarded-proto", scheme.clone().into_bytes());
    set(&mut headers, "x-request-id", id.clone().into_bytes());

    let head = RequestHead {
        id,
        method,
        scheme,
        authority,
        path,
        query,
        headers: headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
        client_ip: client_ip.to_string(),
        listener: "edge".into(),
        route: None,
        facts: Vec::new(),
    };
    let stream = request.into_body_stream().map(|chunk| chunk.map_err(|e| e.to_debug_string()));
    Ok((head, Body::Stream(Box::pin(stream))))
}

/// The method's name.
pub fn method_name(m: &Method) -> String {
    m.to_string()
}

fn header(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| String::from_utf8(v.clone()).ok())
}

fn set(headers: &mut Vec<(String, Vec<u8>)>, name: &str, value: Vec<u8>) {
    headers.retain(|(n, _)| n != name);
    headers.push((name.to_string(), value));
}

fn strip_port(raw: &str) -> &str {
    match raw.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && (h.ends_with(']') || !h.contains(':')) => h,
        _ => raw,
    }
}

/// The client: the peer, unless it is a trusted proxy, then the right-most
/// untrusted address of `X-Forwarded-For` (as on the node).
fn client_ip(plan: &Plan, peer: std::net::IpAddr, headers: &[(String, Vec<u8>)]) -> (std::net::IpAddr, bool) {
    let trusted = |ip: &std::net::IpAddr| plan.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return (peer, false);
    }
    let mut client = peer;
    let all: Vec<String> = headers.iter().filter(|(n, _)| n == "x-forwarded-for").map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect();
    let hops: Vec<&str> = all.iter().flat_map(|v| v.split(',')).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(trusted: &str) -> Plan {
        Plan::parse(&format!(r#"{{"format":"portcullis-edge/1","chain":"v1","router":"router","policies":{{"router":{{"crate":"router","namespace":"route","settings":{{}}}}}},"routes":{{}},"pools":{{}},"trusted_proxies":[{trusted}],"max_request_head":1}}"#)).unwrap()
    }

    fn xff(v: &str) -> Vec<(String, Vec<u8>)> {
        vec![("x-forwarded-for".into(), v.as_bytes().to_vec())]
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_hop_behind_trusted_proxies_only() {
        let plan = plan(r#""10.0.0.0/8""#);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_ip(&plan, ip("10.0.0.5"), &xff("198.51.100.7, 10.0.0.9")), (ip("198.51.100.7"), true));
        assert_eq!(client_ip(&plan, ip("203.0.113.1"), &xff("198.51.100.7")), (ip("203.0.113.1"), false), "an untrusted peer's header is not believed");
        assert_eq!(client_ip(&plan, ip("10.0.0.5"), &xff("garbage")), (ip("10.0.0.5"), true));
        assert!(Plan::parse(r#"{"format":"portcullis-edge/1","chain":"v1","router":"router","policies":{},"routes":{},"pools":{},"trusted_proxies":["10.0.0.0/33"],"max_request_head":1}"#).is_err());
    }

    #[test]
    fn ports_come_off_hosts_but_not_off_ipv6_addresses() {
        assert_eq!(strip_port("api.procare.health:8443"), "api.procare.health");
        assert_eq!(strip_port("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
