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
        _ => new_id(),
    }
}

/// 128 random bits, hex (`wasi:random` seeds std's hashers).
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let a = std::hash::RandomState::new().build_hasher().finish();
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
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
    let nets: Vec<(std::net::IpAddr, u8)> = plan.trusted_proxies.iter().filter_map(|c| parse_cidr(c)).collect();
    let trusted = |ip: &std::net::IpAddr| nets.iter().any(|(net, bits)| in_net(ip, net, *bits));
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

fn parse_cidr(c: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, bits) = c.split_once('/').map_or((c, None), |(a, b)| (a, Some(b)));
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.parse().ok().filter(|&b| b <= max)?,
        None => max,
    };
    Some((ip, bits))
}

fn in_net(ip: &std::net::IpAddr, net: &std::net::IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => (u128::from(u32::from(*a)), u128::from(u32::from(*b)), 32),
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => (u128::from(*a), u128::from(*b), 128),
        _ => return false,
    };
    if bits == 0 {
        return true;
    }
    let shift = width - u32::from(bits);
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let (net, bits) = parse_cidr("10.0.0.0/8").unwrap();
        assert!(in_net(&"10.1.2.3".parse().unwrap(), &net, bits));
        assert!(!in_net(&"11.0.0.1".parse().unwrap(), &net, bits));
        assert!(!in_net(&"::ffff:10.0.0.1".parse().unwrap(), &net, bits), "no mixing of families");
        let (net, bits) = parse_cidr("2001:db8::/32").unwrap();
        assert!(in_net(&"2001:db8:1::1".parse().unwrap(), &net, bits));
        let (net, bits) = parse_cidr("192.0.2.7").unwrap();
        assert_eq!(bits, 32);
        assert!(in_net(&"192.0.2.7".parse().unwrap(), &net, bits));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("not an address").is_none());
    }

    #[test]
    fn ports_come_off_hosts_but_not_off_ipv6_addresses() {
        assert_eq!(strip_port("api.procare.health:8443"), "api.procare.health");
        assert_eq!(strip_port("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(strip_port("2001:db8::1"), "2001:db8::1");
        assert_eq!(strip_port("localhost"), "localhost");
    }
}
