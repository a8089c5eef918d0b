//! Verifying a token: issuer, algorithm, key, signature, then claims. The
//! signature is checked before any claim is believed; claims decide nothing
//! before that except which issuer's keys to try.
//!
//! **The verified-token cache.** Checking a signature is most of the work
//! (RS256/ES256: ~2 ms in wasm). When `cache-entries` > 0, a token whose
//! signature verified and whose claims passed is remembered by the host
//! (`host.verified-token-put`, by its SHA-256, until its `exp` and at most
//! `cache-max-ttl-ms`); the next request with the same token skips only the
//! key lookup and the signature (`host.verified-token-cached`). The host's
//! answer holds only for this policy, this build of it, the same effective
//! settings (a route's overrides included) and the same issuer keys (see
//! the WIT). Everything else runs on every request, hit or miss: the
//! token's size and shape, `alg` (never `none`) and `kid`, the issuer and
//! its algorithm allow-list, the claims (`exp`, `nbf`, `iat`/`max-age-ms`
//! against the host's clock now, audience, required claims) and, in the
//! caller, roles, facts and headers — all from the token itself, since the
//! host keeps no claim.

use crate::config::{Config, Issuer, alg_name, is_hmac};
use crate::token::{self, Parsed, claim, numeric_date_ms};
use crate::{Env, Failure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use portcullis_sdk::JwksError;
use serde_json::{Map, Value};

/// Keys tried for one token at most (tokens without `kid`).
const MAX_KEYS_TRIED: usize = 4;
/// Smallest RSA modulus accepted, bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;
/// Largest RSA modulus accepted, bytes (8192 bits): bounds the work.
const MAX_RSA_BYTES: usize = 1024;

/// Who a verified token says the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The issuer's settings id.
    pub issuer_id: String,
    /// The `iss` claim.
    pub iss: String,
    /// The `sub` claim, if a string.
    pub sub: Option<String>,
    /// Roles from the issuer's roles claim.
    pub roles: Vec<String>,
    /// The region claim, if configured and a string.
    pub region: Option<String>,
    /// The consent claim's items, if configured and present.
    pub consent: Option<Vec<String>>,
    /// The verified algorithm.
    pub alg: Algorithm,
    /// Every claim, for `claim-headers`.
    pub claims: Map<String, Value>,
    /// The verified-token cache: `Some(true)` when the signature check was
    /// skipped because the host had this token, `Some(false)` when it was
    /// checked (and the token put), `None` with the cache off.
    pub cached: Option<bool>,
}

/// Verify `token` against the configured issuers.
pub fn authenticate(cfg: &Config, token: &str, env: &mut dyn Env) -> Result<Identity, Failure> {
    let parsed = token::parse(token, cfg.max_token_bytes)?;
    let iss = match parsed.claims.get("iss") {
        Some(Value::String(s)) => s.as_str(),
        None => return Err(Failure::invalid("missing issuer")),
        Some(_) => return Err(Failure::invalid("invalid iss claim")),
    };
    let issuer = cfg.issuer(iss).ok_or_else(|| Failure::invalid("unknown issuer"))?;
    if !issuer.algorithms.contains(&parsed.alg) {
        return Err(Failure::invalid("algorithm not accepted for this issuer").with_issuer(issuer));
    }
    let hit = cfg.cache && env.token_cached(token);
    if !hit {
        let request = match &parsed.kid {
            // The host's JWKS cache takes a key-id hint after `#kid=` (issuer
            // identifiers have no fragment): an unknown kid makes it refetch
            // the set (single flight, rate-limited) before answering.
            Some(kid) => format!("{}#kid={kid}", issuer.jwks),
            None => issuer.jwks.clone(),
        };
        let set = match env.jwks(&request) {
            Ok(set) => set,
            Err(JwksError::UnknownIssuer(_)) => return Err(Failure::unavailable("no key set is configured for this issuer").with_issuer(issuer)),
            Err(JwksError::Unavailable(_)) => return Err(Failure::unavailable("the issuer's keys are unavailable").with_issuer(issuer)),
        };
        verify_signature(&set, &parsed).map_err(|f| f.with_issuer(issuer))?;
    }
    let now = env.now_ms();
    check_claims(issuer, &parsed.claims, now).map_err(|f| f.with_issuer(issuer))?;
    if cfg.cache && !hit {
        env.token_verified(token, cache_until(cfg, &parsed.claims, now));
    }

    let roles = match claim(&parsed.claims, &issuer.roles_claim) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let region = issuer.region_claim.as_deref().and_then(|path| claim(&parsed.claims, path)).and_then(Value::as_str).map(str::to_string);
    let consent = issuer.consent_claim.as_deref().and_then(|path| claim(&parsed.claims, path)).and_then(|v| match v {
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect()),
        Value::String(s) => Some(s.split_whitespace().map(str::to_string).collect()),
        _ => None,
    });
    let sub = parsed.claims.get("sub").and_then(Value::as_str).map(str::to_string);
    let cached = cfg.cache.then_some(hit);
    Ok(Identity { issuer_id: issuer.id.clone(), iss: iss.to_string(), sub, roles, region, consent, alg: parsed.alg, claims: parsed.claims, cached })
}

/// Until when (ms since the epoch) the host may remember a token that just
/// verified: its `exp`, and at most `cache-max-ttl-ms` from now. A token
/// without `exp` (when `required-claims` allows it) gets the TTL alone; one
/// already past `exp` (inside the leeway) is not remembered (the host keeps
/// nothing whose time is up).
pub fn cache_until(cfg: &Config, claims: &Map<String, Value>, now_ms: u64) -> u64 {
    let ttl_end = now_ms.saturating_add(cfg.cache_max_ttl_ms);
    match numeric_date_ms(claims, "exp") {
        Ok(Some(exp)) => exp.clamp(0, i128::from(ttl_end)) as u64,
        _ => ttl_end,
    }
}

/// Check the signature with a key of the set that fits the token (its
/// `kid`, the algorithm's key type and curve, `use`/`alg`/`key_ops` when
/// the key states them). Keys never cross families: an RSA public key is
/// never used as an HMAC secret.
pub fn verify_signature(set: &str, p: &Parsed<'_>) -> Result<(), Failure> {
    let doc: Value = serde_json::from_str(set).map_err(|_| Failure::unavailable("the issuer's key set is not valid JSON"))?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or_else(|| Failure::unavailable("the issuer's key set has no keys"))?;
    let mut tried = 0;
    for jwk in keys {
        let Some(jwk) = jwk.as_object() else { continue };
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        if let Some(kid) = &p.kid
            && field("kid") != Some(kid.as_str())
        {
            continue;
        }
        if field("use").is_some_and(|u| u != "sig") || field("alg").is_some_and(|a| a != alg_name(p.alg)) {
            continue;
        }
        if let Some(ops) = jwk.get("key_ops")
            && !ops.as_array().is_some_and(|ops| ops.iter().any(|o| o == "verify"))
        {
            continue;
        }
        let Some(key) = decoding_key(jwk, p.alg) else { continue };
        tried += 1;
        if jsonwebtoken::crypto::verify(p.signature, p.signing_input.as_bytes(), &key, p.alg).unwrap_or(false) {
            return Ok(());
        }
        if tried >= MAX_KEYS_TRIED {
            break;
        }
    }
    if tried > 0 {
        Err(Failure::invalid("invalid signature"))
    } else if p.kid.is_some() {
        Err(Failure::invalid("unknown key id"))
    } else {
        Err(Failure::invalid("no key of the issuer fits the token"))
    }
}

fn b64(jwk: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()
}

/// A verification key from a JWK, if the JWK is of the algorithm's kind.
pub fn decoding_key(jwk: &Map<String, Value>, alg: Algorithm) -> Option<DecodingKey> {
    let kty = jwk.get("kty")?.as_str()?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    match alg.family() {
        AlgorithmFamily::Rsa if kty == "RSA" => {
            let n = b64(jwk, "n")?;
            let e = b64(jwk, "e")?;
            let first = n.iter().position(|&b| b != 0)?;
            let n = &n[first..];
            if !(MIN_RSA_BYTES..=MAX_RSA_BYTES).contains(&n.len()) || e.is_empty() || e.len() > 8 {
                return None;
            }
            Some(DecodingKey::from_rsa_raw_components(n, &e))
        }
        AlgorithmFamily::Ec if kty == "EC" => {
            let (want, len) = match alg {
                Algorithm::ES256 => ("P-256", 32),
                Algorithm::ES384 => ("P-384", 48),
                _ => return None,
            };
            if crv != Some(want) || b64(jwk, "x")?.len() != len || b64(jwk, "y")?.len() != len {
                return None;
            }
            DecodingKey::from_ec_components(jwk.get("x")?.as_str()?, jwk.get("y")?.as_str()?).ok()
        }
        AlgorithmFamily::Ed if kty == "OKP" => {
            if crv != Some("Ed25519") || b64(jwk, "x")?.len() != 32 {
                return None;
            }
            DecodingKey::from_ed_components(jwk.get("x")?.as_str()?).ok()
        }
        AlgorithmFamily::Hmac if kty == "oct" => {
            let k = b64(jwk, "k")?;
            (k.len() >= crate::config::MIN_SECRET_BYTES).then(|| DecodingKey::from_secret(&k))
        }
        _ => None,
    }
}

/// `exp`, `nbf`, `iat` (with `max-age-ms`), audience, required claims.
pub fn check_claims(issuer: &Issuer, claims: &Map<String, Value>, now_ms: u64) -> Result<(), Failure> {
    let now = i128::from(now_ms);
    let leeway = i128::from(issuer.leeway_ms);
    for c in &issuer.required_claims {
        if claim(claims, c).is_none() {
            return Err(Failure::invalid_owned(format!("missing required claim {c}")));
        }
    }
    if let Some(exp) = numeric_date_ms(claims, "exp")?
        && now >= exp + leeway
    {
        return Err(Failure::invalid("token expired"));
    }
    if let Some(nbf) = numeric_date_ms(claims, "nbf")?
        && now + leeway < nbf
    {
        return Err(Failure::invalid("token not yet valid"));
    }
    if let Some(max_age) = issuer.max_age_ms {
        let iat = numeric_date_ms(claims, "iat")?.ok_or_else(|| Failure::invalid("missing required claim iat"))?;
        if iat > now + leeway {
            return Err(Failure::invalid("token issued in the future"));
        }
        if now > iat + i128::from(max_age) + leeway {
            return Err(Failure::invalid("token too old"));
        }
    }
    if !issuer.audience.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => issuer.audience.iter().any(|x| x == a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(|a| issuer.audience.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(Failure::invalid("wrong audience"));
        }
    }
    Ok(())
}

/// `check-config`'s look at the shared secrets of issuers that accept HS
/// algorithms: the host must know the issuer and every secret it holds for
/// it must have at least 32 bytes.
pub fn check_secrets(cfg: &Config, env: &mut dyn Env) -> Result<(), String> {
    for issuer in cfg.issuers.iter().filter(|i| i.algorithms.iter().any(|a| is_hmac(*a))) {
        let key = format!("issuers.{}", issuer.id);
        let set = match env.jwks(&issuer.jwks) {
            Ok(set) => set,
            Err(JwksError::UnknownIssuer(_)) => {
                return Err(format!(
                    "setting \"{key}.jwks\": the gateway has no [[jwks]] entry for {:?} (HS secrets come from a [[jwks]] secret_file or file)",
                    issuer.jwks
                ));
            }
            // Not fetched yet (a URL that is down): checked on every request instead.
            Err(JwksError::Unavailable(_)) => continue,
        };
        let doc: Value = serde_json::from_str(&set).map_err(|_| format!("setting \"{key}.jwks\": the key set is not valid JSON"))?;
        let mut secrets = 0;
        for jwk in doc.get("keys").and_then(Value::as_array).into_iter().flatten() {
            let Some(jwk) = jwk.as_object() else { continue };
            if jwk.get("kty").and_then(Value::as_str) != Some("oct") {
                continue;
            }
            let len = b64(jwk, "k").map_or(0, |k| k.len());
            if len < crate::config::MIN_SECRET_BYTES {
                return Err(format!(
                    "setting \"{key}.algorithms\": allows HS algorithms but a shared secret of {:?} is {len} bytes; at least {} are required",
                    issuer.jwks,
                    crate::config::MIN_SECRET_BYTES
                ));
            }
            secrets += 1;
        }
        if secrets == 0 {
            return Err(format!("setting \"{key}.algorithms\": allows HS algorithms but the key set of {:?} holds no shared secret", issuer.jwks));
        }
    }
    Ok(())
}
