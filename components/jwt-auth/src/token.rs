//! Finding the token in a request and taking it apart, before any key is
//! looked at: size, shape, base64url, JSON, `alg` and `kid`.

use crate::Failure;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use portcullis_sdk::{RequestHead, header_value};
use serde_json::{Map, Value};

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `Authorization: Bearer`.
    Header,
    /// The configured cookie.
    Cookie,
}

/// The token of a request: `Authorization: Bearer <token>` first, else the
/// cookie named `cookie`. `Ok(None)` when there is none (another scheme,
/// such as `Basic`, counts as none).
pub fn extract<'a>(req: &'a RequestHead, cookie: Option<&str>) -> Result<Option<(&'a str, Source)>, Failure> {
    if let Some(value) = header_value(req, "authorization") {
        let value = core::str::from_utf8(value).map_err(|_| Failure::invalid("malformed authorization header"))?;
        let value = value.trim_matches([' ', '\t']);
        if value.len() >= 6 && value.as_bytes()[..6].eq_ignore_ascii_case(b"bearer") {
            let rest = &value[6..];
            if rest.is_empty() {
                return Err(Failure::invalid("malformed token"));
            }
            if !rest.starts_with([' ', '\t']) {
                // e.g. `BearerXYZ`: not the Bearer scheme.
                return cookie_token(req, cookie);
            }
            let token = rest.trim_start_matches([' ', '\t']);
            if token.is_empty() {
                return Err(Failure::invalid("malformed token"));
            }
            return Ok(Some((token, Source::Header)));
        }
    }
    cookie_token(req, cookie)
}

fn cookie_token<'a>(req: &'a RequestHead, cookie: Option<&str>) -> Result<Option<(&'a str, Source)>, Failure> {
    let Some(name) = cookie else { return Ok(None) };
    for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("cookie")) {
        let Ok(text) = core::str::from_utf8(&h.value) else { continue };
        for pair in text.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else { continue };
            if k.trim() == name {
                let v = v.trim();
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                if v.is_empty() {
                    return Ok(None);
                }
                return Ok(Some((v, Source::Cookie)));
            }
        }
    }
    Ok(None)
}

/// A token taken apart; nothing in it is trusted yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// `header.payload`: what the signature covers.
    pub signing_input: &'a str,
    /// The signature, base64url.
    pub signature: &'a str,
    /// `alg` of the header.
    pub alg: Algorithm,
    /// `kid` of the header, already checked for shape.
    pub kid: Option<String>,
    /// The claims.
    pub claims: Map<String, Value>,
}

fn is_b64url(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Longest `kid` accepted.
pub const MAX_KID: usize = 256;

/// Whether a `kid` is safe to use at all: printable ASCII from a small set
/// (base64/base64url, `.`, `:`, `~`, `=`, `+`), no path separators, no `..`,
/// no quotes, spaces, `;`, `%` or control characters. A token with any
/// other `kid` is refused before any lookup.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID
        && !kid.contains("..")
        && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~=+".contains(&b))
}

/// Take a compact JWS apart. Checks size, shape, base64url, JSON objects,
/// `alg` (never `none`), `crit` (none understood) and `kid`.
pub fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, Failure> {
    if token.len() > max_bytes {
        return Err(Failure::invalid("token too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Failure::invalid("malformed token"));
    };
    if parts.next().is_some() {
        return Err(Failure::invalid("encrypted (JWE) or malformed token"));
    }
    if h.is_empty() || p.is_empty() || !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(Failure::invalid("malformed token"));
    }
    let header = decode_object(h).ok_or_else(|| Failure::invalid("malformed token header"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => return Err(Failure::invalid("unsigned tokens (alg none) are not accepted")),
        Some(Value::String(a)) => crate::config::parse_alg(a).ok_or_else(|| Failure::invalid("unsupported algorithm"))?,
        _ => return Err(Failure::invalid("malformed token header")),
    };
    if header.contains_key("crit") {
        return Err(Failure::invalid("unsupported critical header parameters"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if valid_kid(k) => Some(k.clone()),
        Some(_) => return Err(Failure::invalid("invalid key id")),
    };
    if s.is_empty() {
        return Err(Failure::invalid("malformed token"));
    }
    let claims = decode_object(p).ok_or_else(|| Failure::invalid("malformed token claims"))?;
    Ok(Parsed { signing_input: &token[..h.len() + 1 + p.len()], signature: s, alg, kid, claims })
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The value at a dotted claim path (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut segs = path.split('.');
    let mut v = claims.get(segs.next()?)?;
    for seg in segs {
        v = v.as_object()?.get(seg)?;
    }
    (!v.is_null()).then_some(v)
}

/// A NumericDate claim in ms since the epoch (`None`: absent; `Err`: not a number).
pub fn numeric_date_ms(claims: &Map<String, Value>, name: &str) -> Result<Option<i128>, Failure> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i128::from(i) * 1000))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(i128::from(u) * 1000))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(Some((f * 1000.0) as i128))
            } else {
                Err(Failure::invalid_owned(format!("invalid {name} claim")))
            }
        }
        Some(_) => Err(Failure::invalid_owned(format!("invalid {name} claim"))),
    }
}
