//! The `jwt-auth` policy: verifies JWT bearer tokens (RS256/384/512,
//! PS256/384/512, ES256/384, EdDSA, HS256/384/512; never `none`) with the
//! `jsonwebtoken` crate, against keys from the host's JWKS cache
//! (`io.jwks`), and turns the claims into facts (`<ns>.sub`, `<ns>.iss`,
//! `<ns>.roles`, `<ns>.region`, `<ns>.consent`) and upstream headers (`x-subject`,
//! `x-roles`, ...). See the README, "Policy: jwt-auth", for the settings.
//!
//! A std guest (jsonwebtoken needs std), built so that the normal path calls
//! no WASI function (the host links them as traps): time comes from
//! `host.now-ms` (jsonwebtoken's own `exp`/`nbf` checks, which read the
//! system clock, are never used: only `jsonwebtoken::crypto::verify`), and
//! no std `HashMap`/`HashSet` is built (their `RandomState` seeds from
//! `wasi:random`): maps are `BTreeMap` (serde_json without
//! `preserve_order`).
//!
//! Repeated tokens: with `cache-entries` > 0 (the default), a token that
//! verified is remembered by the host (`host.verified-token-put`) and its
//! next requests skip the key lookup and the signature check only; see
//! `auth` for what is and is not re-checked on a hit.
//!
//! Answers: missing token → 401 `WWW-Authenticate: Bearer realm="…"`;
//! invalid → 401 `Bearer realm="…", error="invalid_token",
//! error_description="…"`; valid without a required role → 403
//! (`error="insufficient_scope"`); keys unavailable → 503. All are
//! problem+json and audited with the reason, never the token.

pub mod auth;
pub mod config;
pub mod token;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod fuzz;

use auth::Identity;
use config::{Config, Mode, alg_name};
use portcullis_sdk::{Edits, JwksError, Level, Policy, Reply, RequestHead, Verdict, fact, list};
use std::borrow::Cow;

/// Why a request was not let through (or, on an anonymous route, is let
/// through without identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No token: 401 without an error code.
    Missing,
    /// A token that does not verify: 401 `invalid_token`.
    Invalid { reason: Cow<'static, str>, issuer: Option<String> },
    /// A verified token without a required role: 403.
    Forbidden { reason: Cow<'static, str> },
    /// The issuer's keys cannot be had: 503.
    Unavailable { reason: Cow<'static, str>, issuer: Option<String> },
}

impl Failure {
    /// An invalid token, for a fixed reason.
    pub fn invalid(reason: &'static str) -> Failure {
        Failure::Invalid { reason: Cow::Borrowed(reason), issuer: None }
    }

    /// An invalid token, for a reason built from configuration (never from the token).
    pub fn invalid_owned(reason: String) -> Failure {
        Failure::Invalid { reason: Cow::Owned(reason), issuer: None }
    }

    /// Keys unavailable.
    pub fn unavailable(reason: &'static str) -> Failure {
        Failure::Unavailable { reason: Cow::Borrowed(reason), issuer: None }
    }

    /// Note which configured issuer the failure is about (for the audit).
    pub fn with_issuer(mut self, i: &config::Issuer) -> Failure {
        if let Failure::Invalid { issuer, .. } | Failure::Unavailable { issuer, .. } = &mut self {
            *issuer = Some(i.id.clone());
        }
        self
    }

    /// The reason, as audited and sent in `error_description`.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Missing => "no bearer token",
            Failure::Invalid { reason, .. } | Failure::Forbidden { reason } | Failure::Unavailable { reason, .. } => reason,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Invalid { .. } => "invalid",
            Failure::Forbidden { .. } => "forbidden",
            Failure::Unavailable { .. } => "unavailable",
        }
    }
}

/// What the policy needs from the host; the SDK's calls on wasm32, fakes in tests.
pub trait Env {
    /// `io.jwks(request)`.
    fn jwks(&mut self, request: &str) -> Result<String, JwksError>;
    /// `host.now-ms()`.
    fn now_ms(&mut self) -> u64;
    /// `host.pseudonym("subject", value)`.
    fn pseudonym(&mut self, value: &str) -> String;
    /// `host.verified-token-cached(token)`.
    fn token_cached(&mut self, token: &str) -> bool;
    /// `host.verified-token-put(token, expires_ms)`.
    fn token_verified(&mut self, token: &str, expires_ms: u64);
}

/// A decision with its audit fields.
pub struct Decision {
    /// The verdict for the host.
    pub verdict: Verdict,
    /// Fields for `host.audit` (never the token).
    pub audit: Vec<(String, String)>,
}

/// Decide on a request.
pub fn decide(cfg: &Config, req: &RequestHead, env: &mut dyn Env) -> Decision {
    let mut audit: Vec<(String, String)> = Vec::new();
    let verified = match token::extract(req, cfg.cookie.as_deref()) {
        Ok(Some((token, _))) => auth::authenticate(cfg, token, env),
        Ok(None) => Err(Failure::Missing),
        Err(f) => Err(f),
    };
    let id = match verified {
        Ok(id) => id,
        Err(f) => {
            audit.push(("outcome".into(), f.outcome().into()));
            audit.push(("reason".into(), f.reason().into()));
            if let Failure::Invalid { issuer: Some(i), .. } | Failure::Unavailable { issuer: Some(i), .. } = &f {
                audit.push(("issuer".into(), i.clone()));
            }
            if cfg.mode == Mode::Anonymous {
                audit.push(("anonymous".into(), "true".into()));
                return Decision { verdict: anonymous_edits(cfg).proceed(), audit };
            }
            return Decision { verdict: reply(cfg, &f).respond(), audit };
        }
    };
    audit.push(("outcome".into(), "ok".into()));
    audit.push(("issuer".into(), id.issuer_id.clone()));
    audit.push(("alg".into(), alg_name(id.alg).into()));
    if let Some(hit) = id.cached {
        audit.push(("cache".into(), if hit { "hit" } else { "miss" }.into()));
    }
    if let Some(sub) = &id.sub {
        audit.push(("subject".into(), env.pseudonym(sub)));
    }
    match authorize(cfg, req, &id).and_then(|()| identity_edits(cfg, &id)) {
        Ok(edits) => Decision { verdict: edits.proceed(), audit },
        Err(f) => {
            audit[0].1 = f.outcome().into();
            audit.push(("reason".into(), f.reason().into()));
            Decision { verdict: reply(cfg, &f).respond(), audit }
        }
    }
}

/// Roles: enforced when the route names any (setting `roles`, else fact
/// `route.roles`); mode `roles` refuses a route that names none; mode
/// `anonymous` ignores them.
fn authorize(cfg: &Config, req: &RequestHead, id: &Identity) -> Result<(), Failure> {
    if cfg.mode == Mode::Anonymous {
        return Ok(());
    }
    let required: Vec<String> = match &cfg.roles {
        Some(r) => r.clone(),
        None => fact(req, "route.roles").map(list::decode).unwrap_or_default(),
    };
    if required.is_empty() {
        return match cfg.mode {
            Mode::Roles => Err(Failure::Forbidden { reason: "this route names no roles".into() }),
            _ => Ok(()),
        };
    }
    if id.roles.iter().any(|r| required.contains(r)) {
        Ok(())
    } else {
        Err(Failure::Forbidden { reason: "a required role is missing".into() })
    }
}

/// Header values from claims must be plain text: no control characters.
fn header_safe(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn claim_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Array(items) => {
            let strs: Vec<String> = items.iter().filter_map(|i| claim_text(i).filter(|_| !i.is_array() && !i.is_object())).collect();
            Some(list::encode(&strs))
        }
        _ => None,
    }
}

/// Facts and headers for a verified caller. Identity headers a client sent
/// itself are always replaced or removed.
fn identity_edits(cfg: &Config, id: &Identity) -> Result<Edits, Failure> {
    let ns = &cfg.namespace;
    let roles = list::encode(&id.roles);
    let mut e = Edits::new().fact(format!("{ns}.iss"), id.iss.clone()).fact(format!("{ns}.roles"), roles.clone());
    if let Some(sub) = &id.sub {
        e = e.fact(format!("{ns}.sub"), sub.clone());
    }
    if let Some(region) = &id.region {
        e = e.fact(format!("{ns}.region"), region.clone());
    }
    if let Some(consent) = &id.consent {
        e = e.fact(format!("{ns}.consent"), list::encode(consent));
    }
    let mut headers: Vec<(&str, Option<String>)> = Vec::new();
    if let Some(h) = &cfg.subject_header {
        headers.push((h, id.sub.clone()));
    }
    if let Some(h) = &cfg.roles_header {
        headers.push((h, Some(roles)));
    }
    for (h, path) in &cfg.claim_headers {
        headers.push((h, token::claim(&id.claims, path).and_then(claim_text)));
    }
    for (name, value) in headers {
        match value {
            Some(v) if !header_safe(&v) => return Err(Failure::invalid("a claim cannot be sent in a header")),
            Some(v) => e = e.set_header(name, v),
            None => e = e.remove_header(name),
        }
    }
    if cfg.strip_authorization {
        e = e.remove_header("authorization");
    }
    Ok(e)
}

/// An anonymous caller: no identity facts; identity headers removed.
fn anonymous_edits(cfg: &Config) -> Edits {
    let mut e = Edits::new();
    for h in cfg.subject_header.iter().chain(cfg.roles_header.iter()).chain(cfg.claim_headers.iter().map(|(h, _)| h)) {
        e = e.remove_header(h.clone());
    }
    if cfg.strip_authorization {
        e = e.remove_header("authorization");
    }
    e
}

/// The RFC 6750 / RFC 9457 answer to a failure.
pub fn reply(cfg: &Config, f: &Failure) -> Reply {
    let realm = &cfg.realm;
    let (status, title, challenge) = match f {
        Failure::Missing => (401, "Unauthorized", Some(format!("Bearer realm=\"{realm}\""))),
        Failure::Invalid { reason, .. } => {
            (401, "Unauthorized", Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"", quote_safe(reason))))
        }
        Failure::Forbidden { reason } => {
            (403, "Forbidden", Some(format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{}\"", quote_safe(reason))))
        }
        Failure::Unavailable { .. } => (503, "Service Unavailable", None),
    };
    let detail = match f {
        Failure::Missing => "a bearer token is required",
        other => other.reason(),
    };
    let mut r = portcullis_sdk::problem(status, title, detail).header("cache-control", "no-store");
    if let Some(c) = challenge {
        r = r.header("www-authenticate", c);
    }
    if matches!(f, Failure::Unavailable { .. }) {
        r = r.header("retry-after", "5");
    }
    r
}

/// RFC 6750 allows %x20-21 / %x23-5B / %x5D-7E in `error_description`.
fn quote_safe(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\') {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.bytes().map(|b| if (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\' { b as char } else { '?' }).collect())
    }
}

// ---------------------------------------------------------------------------
// The component.

/// The host's answers through the SDK.
struct HostEnv;

impl Env for HostEnv {
    fn jwks(&mut self, request: &str) -> Result<String, JwksError> {
        portcullis_sdk::jwks(request)
    }
    fn now_ms(&mut self) -> u64 {
        portcullis_sdk::now_ms()
    }
    fn pseudonym(&mut self, value: &str) -> String {
        portcullis_sdk::pseudonym("subject", value)
    }
    fn token_cached(&mut self, token: &str) -> bool {
        portcullis_sdk::verified_token_cached(token)
    }
    fn token_verified(&mut self, token: &str, expires_ms: u64) {
        portcullis_sdk::verified_token_put(token, expires_ms)
    }
}

/// The policy.
pub struct JwtAuth;

impl Policy for JwtAuth {
    fn check_config() -> Result<(), String> {
        let cfg = Config::parse(&portcullis_sdk::settings(""))?;
        auth::check_secrets(&cfg, &mut HostEnv)
    }

    fn on_request(req: RequestHead) -> Verdict {
        let cfg = match Config::parse(&portcullis_sdk::settings("")) {
            Ok(cfg) => cfg,
            Err(e) => {
                // check-config refuses such settings; fail closed regardless.
                portcullis_sdk::log(Level::Error, &e);
                return portcullis_sdk::problem(500, "Internal Server Error", "authentication is misconfigured").respond();
            }
        };
        let d = decide(&cfg, &req, &mut HostEnv);
        if let Some((_, reason)) = d.audit.iter().find(|(k, _)| k == "reason")
            && d.audit.iter().any(|(k, v)| k == "outcome" && v == "unavailable")
        {
            portcullis_sdk::log(Level::Warn, &format!("token not verified: {reason}"));
        }
        portcullis_sdk::audit(&d.audit);
        d.verdict
    }
}

portcullis_sdk::export_policy!(JwtAuth);
