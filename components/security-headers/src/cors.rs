//! The decisions, as pure functions over the parsed [`Config`] and the
//! request / response heads: CORS by the Fetch standard, the security
//! headers, the https redirect and `Vary` merging.

use crate::config::{Config, push_joined};
use alloc::string::String;
use alloc::vec::Vec;
use portcullis_sdk::{Header, Reply, RequestHead, ResponseEdits, json, problem};

/// CORS response headers the gateway owns on a route with CORS on: the
/// upstream's are removed so that only the policy's decision reaches the
/// browser.
const CORS_RESPONSE_HEADERS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// `vary` of a preflight answer: it depends on all three request headers.
const PREFLIGHT_VARY: &str =
    "origin, access-control-request-method, access-control-request-headers";
const PREFLIGHT_VARY_ANY_ORIGIN: &str =
    "access-control-request-method, access-control-request-headers";

// ---------------------------------------------------------------------------
// Origins.

/// Whether `origin` (the request's `Origin`, as the browser serialized it)
/// matches `pattern`: an exact origin, or `scheme://*.domain[:port]`, which
/// matches any subdomain of `domain` (one or more labels) with the same
/// scheme and port, never `domain` itself.
pub fn pattern_matches(pattern: &str, origin: &str) -> bool {
    let Some((scheme, suffix)) = pattern.split_once("://*") else {
        return pattern == origin;
    };
    // suffix: ".domain" or ".domain:port"
    let Some(rest) = origin
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
    else {
        return false;
    };
    let Some(sub) = rest.strip_suffix(suffix) else {
        return false;
    };
    !sub.is_empty()
        && sub.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether the configuration allows `origin`.
pub fn origin_allowed(cfg: &Config<'_>, origin: &str) -> bool {
    cfg.any_origin || cfg.origins.iter().any(|p| pattern_matches(p, origin))
}

/// The request's `Origin`, when it is one header of ASCII text.
fn request_origin(req: &RequestHead) -> Option<&str> {
    let v = portcullis_sdk::header_value(req, "origin")?;
    let v = core::str::from_utf8(v).ok()?;
    (!v.is_empty() && v.is_ascii()).then_some(v)
}

/// The method a CORS preflight asks about: `OPTIONS` with a non-empty
/// `access-control-request-method` (the router's rule too).
pub fn preflight_method(req: &RequestHead) -> Option<&str> {
    if req.method != "OPTIONS" {
        return None;
    }
    let v = portcullis_sdk::header_value(req, "access-control-request-method")?;
    let v = core::str::from_utf8(v).ok()?.trim_matches([' ', '\t']);
    (!v.is_empty()).then_some(v)
}

/// The header names a preflight asks for (`access-control-request-headers`,
/// every occurrence), lower-cased, empty items skipped.
pub fn requested_headers(req: &RequestHead) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in req.headers.iter().filter(|h| {
        h.name
            .eq_ignore_ascii_case("access-control-request-headers")
    }) {
        for item in h.value.split(|&b| b == b',') {
            let item = trim_ows(item);
            if item.is_empty() {
                continue;
            }
            let name = String::from_utf8_lossy(item).to_ascii_lowercase();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

// ---------------------------------------------------------------------------
// on-request.

/// Why a preflight was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Origin`, or one not in `allow-origins`.
    Origin,
    /// The requested method is not in `allow-methods`.
    Method,
    /// A requested header is not in `allow-headers`.
    Header(String),
}

impl Refusal {
    /// A short slug for the audit record.
    pub fn slug(&self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Method => "method",
            Refusal::Header(_) => "header",
        }
    }
}

/// What `on-request` does.
#[derive(Debug)]
pub enum Decision {
    /// Let the request go on (an actual CORS request is answered in
    /// `on-response`).
    Proceed,
    /// Plain http and `redirect-https`: 308 to the https URL.
    Redirect(Reply),
    /// A preflight, answered here: 204, or 403 with the refusal.
    Preflight(Reply, Option<Refusal>),
}

/// Decide on a request head.
pub fn decide(cfg: &Config<'_>, req: &RequestHead) -> Decision {
    if cfg.redirect_https && req.scheme == "http" {
        return Decision::Redirect(redirect(req));
    }
    if cfg.cors()
        && let Some(method) = preflight_method(req)
    {
        return match preflight(cfg, req, method) {
            Ok(reply) => Decision::Preflight(reply, None),
            Err(refusal) => Decision::Preflight(refused(cfg, req, &refusal), Some(refusal)),
        };
    }
    Decision::Proceed
}

/// `308` to `https://<authority><path>[?query]`.
pub fn redirect(req: &RequestHead) -> Reply {
    let mut location = String::with_capacity(
        9 + req.authority.len() + req.path.len() + req.query.as_ref().map_or(0, |q| q.len() + 1),
    );
    location.push_str("https://");
    location.push_str(&req.authority);
    location.push_str(&req.path);
    if let Some(q) = &req.query {
        location.push('?');
        location.push_str(q);
    }
    Reply::new(308).header("location", location)
}

/// Answer an allowed preflight (204 with the CORS headers), or say why not.
pub fn preflight(cfg: &Config<'_>, req: &RequestHead, method: &str) -> Result<Reply, Refusal> {
    let origin = request_origin(req)
        .filter(|o| origin_allowed(cfg, o))
        .ok_or(Refusal::Origin)?;
    if !cfg.any_method && !cfg.methods.iter().any(|m| m == method) {
        return Err(Refusal::Method);
    }
    let asked = requested_headers(req);
    if let Some(h) = asked
        .iter()
        .find(|h| !(cfg.headers.contains(h) || (cfg.any_header && h.as_str() != "authorization")))
    {
        return Err(Refusal::Header(h.clone()));
    }

    let mut reply = Reply::new(204).header(
        "access-control-allow-origin",
        if cfg.any_origin { "*" } else { origin },
    );
    if cfg.credentials {
        reply = reply.header("access-control-allow-credentials", "true");
    }
    let mut methods = String::new();
    if cfg.any_method {
        methods.push_str(method);
    } else {
        push_joined(&mut methods, &cfg.methods, ", ");
    }
    reply = reply.header("access-control-allow-methods", methods);
    let mut headers = String::new();
    if cfg.any_header {
        // `*` is honoured by browsers only without credentials (always the
        // case here); echoing the request is exact and works everywhere.
        push_joined(&mut headers, &asked, ", ");
    } else {
        push_joined(&mut headers, &cfg.headers, ", ");
    }
    if !headers.is_empty() {
        reply = reply.header("access-control-allow-headers", headers);
    }
    let mut age = String::new();
    json::push_u64(&mut age, cfg.preflight_max_age);
    reply = reply.header("access-control-max-age", age);
    Ok(reply.header("vary", preflight_vary(cfg)))
}

fn preflight_vary(cfg: &Config<'_>) -> &'static str {
    if cfg.any_origin {
        PREFLIGHT_VARY_ANY_ORIGIN
    } else {
        PREFLIGHT_VARY
    }
}

/// The 403 problem for a refused preflight: no CORS headers, so the browser
/// blocks the actual request.
pub fn refused(cfg: &Config<'_>, req: &RequestHead, refusal: &Refusal) -> Reply {
    let mut detail = String::from("CORS preflight refused: ");
    match refusal {
        Refusal::Origin => match request_origin(req) {
            Some(o) => {
                detail.push_str("origin ");
                json::push_string(&mut detail, o);
                detail.push_str(" is not allowed");
            }
            None => detail.push_str("the request has no Origin"),
        },
        Refusal::Method => {
            detail.push_str("method ");
            json::push_string(&mut detail, preflight_method(req).unwrap_or(""));
            detail.push_str(" is not allowed");
        }
        Refusal::Header(h) => {
            detail.push_str("request header ");
            json::push_string(&mut detail, h);
            detail.push_str(" is not allowed");
        }
    }
    problem(403, "Forbidden", &detail).header("vary", preflight_vary(cfg))
}

// ---------------------------------------------------------------------------
// on-response.

/// Every edit of the response head: security headers, removals, and CORS
/// for an actual request.
pub fn response_edits(cfg: &Config<'_>, req: &RequestHead, resp: &[Header]) -> ResponseEdits {
    let mut e = ResponseEdits::new();
    for name in &cfg.remove {
        e.remove_headers.push(name.clone());
    }
    security_headers(cfg, req, &mut e);
    cors_headers(cfg, req, resp, &mut e);
    e
}

/// HSTS (https only), nosniff, frame options, referrer and permissions
/// policies, CSP.
pub fn security_headers(cfg: &Config<'_>, req: &RequestHead, e: &mut ResponseEdits) {
    if cfg.hsts && req.scheme == "https" {
        let mut v = String::from("max-age=");
        json::push_u64(&mut v, cfg.hsts_max_age);
        if cfg.hsts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if cfg.hsts_preload {
            v.push_str("; preload");
        }
        e.set_headers
            .push(Header::new("strict-transport-security", v));
    }
    if cfg.nosniff {
        e.set_headers
            .push(Header::new("x-content-type-options", "nosniff"));
    }
    for (name, value) in [
        ("x-frame-options", cfg.frame_options),
        ("referrer-policy", cfg.referrer_policy),
        ("permissions-policy", cfg.permissions_policy),
        ("content-security-policy", cfg.content_security_policy),
    ] {
        if !value.is_empty() {
            e.set_headers.push(Header::new(name, value));
        }
    }
}

/// CORS on the answer to an actual (non-preflight) request.
pub fn cors_headers(cfg: &Config<'_>, req: &RequestHead, resp: &[Header], e: &mut ResponseEdits) {
    if !cfg.cors() || preflight_method(req).is_some() {
        // CORS off, or the preflight this policy answered itself.
        return;
    }
    for name in CORS_RESPONSE_HEADERS {
        e.remove_headers.push(String::from(name));
    }
    let allow = if cfg.any_origin {
        // The same answer for every origin: no `vary` needed.
        Some("*")
    } else {
        // The answer depends on the origin whether or not it is allowed.
        if let Some(v) = merge_vary(resp, "origin") {
            e.set_headers.push(Header::new("vary", v));
        }
        request_origin(req).filter(|o| origin_allowed(cfg, o))
    };
    let Some(allow) = allow else { return };
    e.set_headers
        .push(Header::new("access-control-allow-origin", allow));
    if cfg.credentials {
        e.set_headers
            .push(Header::new("access-control-allow-credentials", "true"));
    }
    if !cfg.expose.is_empty() {
        let mut v = String::new();
        push_joined(&mut v, &cfg.expose, ", ");
        e.set_headers
            .push(Header::new("access-control-expose-headers", v));
    }
}

/// The `vary` value with `token` merged into every `vary` already in
/// `headers` (one value, existing tokens first, duplicates dropped), or
/// `None` when nothing needs to change (`token` already there, or `*`).
pub fn merge_vary(headers: &[Header], token: &str) -> Option<Vec<u8>> {
    let mut tokens: Vec<&[u8]> = Vec::new();
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("vary"))
    {
        for t in h.value.split(|&b| b == b',').map(trim_ows) {
            if t == b"*" || t.eq_ignore_ascii_case(token.as_bytes()) {
                return None;
            }
            if !t.is_empty() && !tokens.iter().any(|x| x.eq_ignore_ascii_case(t)) {
                tokens.push(t);
            }
        }
    }
    let mut out = Vec::new();
    for t in tokens {
        out.extend_from_slice(t);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(token.as_bytes());
    Some(out)
}
