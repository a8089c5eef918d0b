//! Respond stage: problem+json answers, policy replies, response-head edits.

use crate::body::{ProxyBody, full};
use crate::error::GatewayError;
use crate::runtime::bindings::types;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

/// `application/problem+json` (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem+json response for a gateway error.
pub fn problem(err: &GatewayError, request_id: &str) -> Response<ProxyBody> {
    let status = err.status();
    let body = serde_json::json!({
        "type": format!("urn:portcullis:problem:{}", err.slug()),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": err.public_detail(),
        "request_id": request_id,
    });
    let mut resp = Response::new(full(serde_json::to_vec(&body).expect("json values serialize")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if err.retryable() && status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Why a policy's reply broke the contract.
pub fn reply_to_response(reply: types::Reply) -> Result<Response<ProxyBody>, String> {
    let status = StatusCode::from_u16(reply.status).map_err(|_| format!("reply status {} is not an HTTP status", reply.status))?;
    // A policy answers a request; it cannot switch protocols or send interim responses.
    if status.is_informational() {
        return Err(format!("reply status {} is informational (1xx); a reply must be 200..=599", reply.status));
    }
    if reply.body.len() > 64 * 1024 {
        return Err(format!("reply body of {} bytes exceeds 64 KiB", reply.body.len()));
    }
    let mut headers = HeaderMap::new();
    for h in reply.headers {
        let (name, value) = header_pair(&h.name, &h.value)?;
        headers.append(name, value);
    }
    let mut resp = Response::new(full(reply.body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// A header from a policy, checked.
pub fn header_pair(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    let v = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok((n, v))
}

/// Set `headers` on `map`, replacing earlier values of the same names.
pub fn set_headers(map: &mut HeaderMap, headers: &[types::Header]) -> Result<(), String> {
    for h in headers {
        let (n, v) = header_pair(&h.name, &h.value)?;
        map.insert(n, v);
    }
    Ok(())
}

/// Apply `on-response` edits.
pub fn apply_response_edits(map: &mut HeaderMap, edits: &types::ResponseEdits) -> Result<(), String> {
    for name in &edits.remove_headers {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            map.remove(n);
        }
    }
    set_headers(map, &edits.set_headers)
}

/// The response head as policies see it.
pub fn response_head(status: StatusCode, headers: &HeaderMap, source: &str) -> types::ResponseHead {
    types::ResponseHead { status: status.as_u16(), headers: wit_headers(headers), source: source.to_string() }
}

/// Headers in the contract's shape.
pub fn wit_headers(map: &HeaderMap) -> Vec<types::Header> {
    map.iter().map(|(n, v)| types::Header { name: n.as_str().to_string(), value: v.as_bytes().to_vec() }).collect()
}
