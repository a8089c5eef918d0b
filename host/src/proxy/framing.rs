//! Framing checks on a parsed request head, before any policy runs.
//!
//! hyper's HTTP/1 codec already refuses most smuggling shapes with a 400 of
//! its own (two different `Content-Length`s, a `Transfer-Encoding` whose last
//! coding is not `chunked`, obs-fold, NUL or CR in a field, bad chunk sizes)
//! and normalises `Content-Length` + `Transfer-Encoding` by dropping the
//! length and closing the connection after the response (RFC 9112 §6.3).
//! What it lets through, and an upstream could read differently, is refused
//! here, with an audit record like any other gateway answer:
//!
//! - a transfer coding other than one single `chunked` (`gzip, chunked`,
//!   `chunked, chunked`): the body is decoded from chunks only, so the
//!   upstream would receive bytes in a coding nobody told it about;
//! - more than one `Host` field, or none in HTTP/1.1 (RFC 9112 §3.2);
//! - a request target in absolute form (or an HTTP/2 `:authority`) whose
//!   authority disagrees with `Host`: the router matches one, the upstream
//!   would see the other.

use crate::error::GatewayError;
use http::header::{HOST, TRANSFER_ENCODING};
use http::request::Parts;

/// Refuse a head whose framing or target an upstream could read differently.
pub fn check(parts: &Parts) -> Result<(), GatewayError> {
    check_transfer_encoding(parts)?;
    check_host(parts)
}

fn check_transfer_encoding(parts: &Parts) -> Result<(), GatewayError> {
    let mut codings = Vec::new();
    for value in parts.headers.get_all(TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| GatewayError::Framing("Transfer-Encoding is not ASCII".into()))?;
        codings.extend(text.split(',').map(|c| c.trim().to_ascii_lowercase()));
    }
    match codings.as_slice() {
        [] => Ok(()),
        [only] if only == "chunked" => Ok(()),
        _ => Err(GatewayError::Framing(format!("unsupported Transfer-Encoding {:?}: only a single \"chunked\" is accepted", codings.join(", ")))),
    }
}

fn check_host(parts: &Parts) -> Result<(), GatewayError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::Framing("more than one Host field".into()));
    }
    let target = parts.uri.authority();
    match (host, target) {
        (None, None) if parts.version == http::Version::HTTP_11 => Err(GatewayError::Framing("an HTTP/1.1 request needs a Host field".into())),
        (Some(host), Some(target)) => {
            let host = host.to_str().map_err(|_| GatewayError::Framing("Host is not ASCII".into()))?;
            if same_authority(host, target.as_str(), parts.uri.scheme_str()) {
                Ok(())
            } else {
                Err(GatewayError::Framing("Host disagrees with the authority of the request target".into()))
            }
        }
        _ => Ok(()),
    }
}

/// Equal host names (case-insensitive) and ports, a missing port standing
/// for the scheme's default.
fn same_authority(host: &str, target: &str, scheme: Option<&str>) -> bool {
    let default_port = if scheme == Some("https") { "443" } else { "80" };
    let split = |a: &str| -> (String, String) {
        let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
        match a.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) => (h.to_ascii_lowercase(), p.to_string()),
            _ => (a.to_ascii_lowercase(), default_port.to_string()),
        }
    };
    split(host.trim()) == split(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn single_chunked_passes_others_are_refused() {
        assert!(check(&parts("/", &[("host", "a"), ("transfer-encoding", "Chunked")])).is_ok());
        for te in ["gzip, chunked", "chunked, chunked", "identity", "chunked, identity", ""] {
            assert!(matches!(check(&parts("/", &[("host", "a"), ("transfer-encoding", te)])), Err(GatewayError::Framing(_))), "{te:?}");
        }
        let two = parts("/", &[("host", "a"), ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]);
        assert!(check(&two).is_err());
    }

    #[test]
    fn host_must_be_single_and_agree_with_an_absolute_target() {
        assert!(check(&parts("/", &[("host", "a"), ("host", "b")])).is_err());
        assert!(check(&parts("/", &[])).is_err());
        assert!(check(&parts("http://a.example/x", &[("host", "A.example:80")])).is_ok());
        assert!(check(&parts("http://a.example:8080/x", &[("host", "a.example:8080")])).is_ok());
        assert!(check(&parts("http://a.example/x", &[("host", "b.example")])).is_err());
        assert!(check(&parts("http://a.example:8080/x", &[("host", "a.example")])).is_err());
        assert!(check(&parts("http://[::1]:80/x", &[("host", "[::1]")])).is_ok());
    }
}
