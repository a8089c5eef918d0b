//! The audit collector: where edge nodes (the same policies on Spin, issue 10)
//! send each request's audit record, so the node's hash-chained evidence log
//! covers the edge's decisions too.
//!
//! ```toml
//! [audit.collector]                  # served on the admin listener ([admin] is required)
//! token_file = "keys/collector.token"  # the bearer token the edge sends (>= 32 bytes); or
//! # token_env = "PORTCULLIS_COLLECTOR_TOKEN"
//! ```
//!
//! `POST /audit/v1/records`, `Authorization: Bearer <token>`,
//! `Content-Type: application/json`, body: one JSON object with exactly the
//! fields of [`Record`] (no `phase`, no `origin`), `listener` `"edge"` or
//! starting with `"edge"`. Answers:
//!
//! | status | when |
//! |---|---|
//! | 204 | appended to the log (fsynced first when `[audit] mode = "durable"`) with `"origin":"edge"` |
//! | 401 | no or a wrong token (compared in constant time); the body is not read |
//! | 415 | a `Content-Type` other than `application/json` |
//! | 413 | a body over 64 KiB (read with a limit: never more is buffered) |
//! | 400 | not one JSON object of the record's fields: the problem's `field` names the culprit |
//! | 503 | the log did not take the record (queue full, writer stopped) |
//! | 405 | another method on the endpoint |
//!
//! Every answer is counted in `portcullis_collector_records_total{outcome}`.
//! Neither the token nor the record body is ever logged: a refusal logs its
//! outcome and, for a malformed record, the field's name only.

use super::{AuditSink, Durability, Record};
use crate::body::{ProxyBody, full};
use crate::config::{ConfigError, Source};
use crate::proxy::respond::PROBLEM_JSON;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// The endpoint's path.
pub const PATH: &str = "/audit/v1/records";
/// Largest record accepted.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;
/// How long a sender may take to send its record (the admin listener has no
/// read timeout of its own).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `[audit.collector]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// File holding the bearer token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<Spanned<String>>,
}

/// The token of `[audit.collector]` (`at`: the section, for errors that
/// name no key of it). Errors name the file, line, column and key path.
pub fn load_token(source: &Source, at: &Spanned<CollectorConfig>) -> Result<String, ConfigError> {
    let cfg = at.get_ref();
    let (key, spanned, raw) = match (&cfg.token_file, &cfg.token_env) {
        (Some(file), None) => {
            let path = source.resolve(file.get_ref());
            let text = std::fs::read(&path).map_err(|e| source.error_at(file, "audit.collector.token_file", format!("cannot read {}: {e}", path.display())))?;
            ("audit.collector.token_file", file, text)
        }
        (None, Some(var)) => {
            let text = std::env::var_os(var.get_ref()).ok_or_else(|| source.error_at(var, "audit.collector.token_env", format!("environment variable {} is not set", var.get_ref())))?;
            ("audit.collector.token_env", var, text.into_encoded_bytes())
        }
        _ => return Err(source.error_at(at, "audit.collector", "give exactly one of token_file or token_env")),
    };
    let token = String::from_utf8_lossy(&raw).trim().to_string();
    // It travels in an Authorization header: visible ASCII only.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(source.error_at(spanned, key, "the token must be visible ASCII characters (it is sent as a bearer token)"));
    }
    if token.len() < MIN_TOKEN_BYTES {
        return Err(source.error_at(spanned, key, format!("the token has {} bytes; at least {MIN_TOKEN_BYTES} are required", token.len())));
    }
    Ok(token)
}

/// Checks of `[audit.collector]` (from `audit::validate`).
pub fn validate(source: &Source, at: &Spanned<CollectorConfig>, has_admin: bool, errors: &mut Vec<ConfigError>) {
    if !has_admin {
        errors.push(source.error_at(at, "audit.collector", "the collector is served on the admin listener: add [admin] (address = \"ip:port\")"));
    }
    if let Err(e) = load_token(source, at) {
        errors.push(e);
    }
}

/// A record as an edge sends it: exactly [`Record`]'s fields but `phase`
/// (edges write one record per request) and `origin` (the node sets it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeRecord {
    time: String,
    id: String,
    chain: String,
    listener: String,
    client_ip: String,
    method: String,
    host: String,
    path: String,
    #[serde(default)]
    route: Option<String>,
    status: u16,
    source: String,
    verdicts: Vec<(String, String)>,
    #[serde(default)]
    policies: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    error: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    duration_us: u64,
    outcome: String,
}

/// Why a record was refused: the field, and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The field at fault (`verdicts[0]`, `status`), when one is.
    pub field: Option<String>,
    /// The reason.
    pub reason: String,
}

/// Parse one record strictly and mark it as the edge's.
pub fn parse_record(body: &[u8]) -> Result<Record, Malformed> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let r: EdgeRecord = match serde_path_to_error::deserialize(&mut de) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let reason = e.into_inner().to_string();
            // Missing and unknown fields are reported at the object itself; the name is in the message.
            let field = if path != "." { Some(path) } else { reason.split('`').nth(1).map(str::to_string) };
            return Err(Malformed { field, reason });
        }
    };
    if let Err(e) = de.end() {
        return Err(Malformed { field: None, reason: format!("one JSON object is expected, with nothing after it: {e}") });
    }
    if !r.listener.starts_with("edge") {
        return Err(Malformed { field: Some("listener".into()), reason: format!("an edge record's listener is \"edge\" or starts with \"edge\", got {:?}", r.listener) });
    }
    if !(100..=599).contains(&r.status) {
        return Err(Malformed { field: Some("status".into()), reason: format!("{} is not an HTTP status", r.status) });
    }
    Ok(Record {
        time: r.time,
        id: r.id,
        chain: r.chain,
        listener: r.listener,
        client_ip: r.client_ip,
        method: r.method,
        host: r.host,
        path: r.path,
        route: r.route,
        status: r.status,
        source: r.source,
        verdicts: r.verdicts,
        policies: r.policies,
        upstream: r.upstream,
        region: r.region,
        error: r.error,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_us: r.duration_us,
        outcome: r.outcome,
        phase: None,
        origin: Some("edge".into()),
    })
}

/// The collector as the admin listener serves it.
pub struct Collector {
    token: String,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive() // never the token
    }
}

impl Collector {
    /// A collector that accepts `token`.
    pub fn new(token: String) -> Collector {
        Collector { token }
    }

    /// Answer one request to [`PATH`]: append the record to `sink` with `durability`.
    pub async fn handle<B>(&self, req: Request<B>, sink: &AuditSink, durability: Durability) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (outcome, response) = self.answer(req, sink, durability).await;
        crate::metrics::global().collector_records.with_label_values(&[outcome]).inc();
        response
    }

    async fn answer<B>(&self, req: Request<B>, sink: &AuditSink, durability: Durability) -> (&'static str, Response<ProxyBody>)
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if req.method() != Method::POST {
            let mut resp = problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "The collector takes POST only.", None);
            resp.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return ("method-not-allowed", resp);
        }
        let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if !crate::admin::constant_time_eq(given.as_bytes(), self.token.as_bytes()) {
            tracing::warn!(target: "audit::collector", "record refused: missing or wrong bearer token");
            let mut resp = problem(StatusCode::UNAUTHORIZED, "unauthorized", "A valid collector bearer token is required.", None);
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"portcullis-collector\""));
            return ("unauthorized", resp);
        }
        let content_type = req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return ("unsupported-media-type", problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "A record is sent as application/json.", None));
        }
        let too_large = || ("too-large", problem(StatusCode::PAYLOAD_TOO_LARGE, "record-too-large", &format!("A record is at most {MAX_RECORD_BYTES} bytes."), None));
        let declared = req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_RECORD_BYTES as u64) {
            return too_large();
        }
        let body = match tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), MAX_RECORD_BYTES).collect()).await {
            Err(_) => return ("malformed", problem(StatusCode::REQUEST_TIMEOUT, "record-timeout", "The record did not arrive in time.", None)),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(_)) => return ("malformed", problem(StatusCode::BAD_REQUEST, "malformed-record", "The record could not be read.", None)),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let record = match parse_record(&body) {
            Ok(r) => r,
            Err(m) => {
                tracing::warn!(target: "audit::collector", field = m.field.as_deref().unwrap_or("-"), "record refused: malformed");
                let detail = match &m.field {
                    Some(f) => format!("{f}: {}", m.reason),
                    None => m.reason.clone(),
                };
                return ("malformed", problem(StatusCode::BAD_REQUEST, "malformed-record", &detail, m.field.as_deref()));
            }
        };
        match sink.append(record, durability).await {
            Ok(()) => {
                let mut resp = Response::new(full(Bytes::new()));
                *resp.status_mut() = StatusCode::NO_CONTENT;
                ("appended", resp)
            }
            Err(why) => {
                tracing::error!(target: "audit::collector", "record not appended: {why}");
                let mut resp = problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The audit log did not take the record; send it again.", None);
                resp.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                ("unavailable", resp)
            }
        }
    }
}

fn problem(status: StatusCode, slug: &str, detail: &str, field: Option<&str>) -> Response<ProxyBody> {
    let mut body = serde_json::json!({
        "type": format!("urn:portcullis:problem:collector-{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(f) = field {
        body["field"] = f.into();
    }
    let mut resp = Response::new(full(serde_json::to_vec(&body).expect("json values serialize")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> serde_json::Value {
        serde_json::json!({
            "time": "2026-11-25T00:00:00.000Z", "id": "r-1", "chain": "abc123", "listener": "edge",
            "client_ip": "203.0.113.9", "method": "GET", "host": "api.procare.health", "path": "/api/clinical/vitals",
            "route": "clinical", "status": 200, "source": "upstream",
            "verdicts": [["router", "proceed"], ["jwt", "proceed"]],
            "upstream": "clinical-monitor/10.0.0.1:8000", "region": "fsn1",
            "bytes_in": 0, "bytes_out": 120, "duration_us": 900, "outcome": "ok"
        })
    }

    #[test]
    fn a_complete_record_parses_and_is_marked_as_the_edges() {
        let r = parse_record(record().to_string().as_bytes()).unwrap();
        assert_eq!(r.origin.as_deref(), Some("edge"));
        assert_eq!(r.verdicts[1], ("jwt".to_string(), "proceed".to_string()));
        let line = serde_json::to_value(&r).unwrap();
        assert_eq!(line["origin"], "edge");
        assert!(line.get("phase").is_none());
    }

    #[test]
    fn node_records_carry_no_origin() {
        let line = serde_json::to_value(Record::default()).unwrap();
        assert!(line.get("origin").is_none());
    }

    #[test]
    fn malformed_records_name_their_field() {
        let refuse = |v: serde_json::Value| parse_record(v.to_string().as_bytes()).unwrap_err();
        let mut v = record();
        v.as_object_mut().unwrap().remove("status");
        assert_eq!(refuse(v).field.as_deref(), Some("status"));
        let mut v = record();
        v["phase"] = "decision".into();
        assert_eq!(refuse(v).field.as_deref(), Some("phase"));
        let mut v = record();
        v["origin"] = "node".into();
        assert_eq!(refuse(v).field.as_deref(), Some("origin"));
        let mut v = record();
        v["verdicts"] = serde_json::json!([["router"]]);
        assert_eq!(refuse(v).field.as_deref(), Some("verdicts[0]"));
        let mut v = record();
        v["listener"] = "public".into();
        assert_eq!(refuse(v).field.as_deref(), Some("listener"));
        let mut v = record();
        v["listener"] = "edge-fra1".into();
        assert!(parse_record(v.to_string().as_bytes()).is_ok());
        assert!(parse_record(b"{\"time\":").is_err());
        assert!(parse_record(format!("{} {{}}", record()).as_bytes()).is_err(), "one object, nothing after it");
    }
}
