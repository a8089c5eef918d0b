//! The policy's settings, parsed from the flattened keys the host gives
//! (`portcullis_sdk::settings("")`, route overrides already merged). Every problem is a
//! `check-config` error naming the key; the request path parses the same way
//! and fails closed on an error.

use jsonwebtoken::Algorithm;
use portcullis_sdk::list;
use std::collections::BTreeMap;

/// What a route asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No token needed. A valid one still yields identity facts; a missing
    /// or invalid one lets the request through without them.
    Anonymous,
    /// A valid token; roles named by the route (setting `roles` or fact
    /// `route.roles`) are enforced when present.
    Required,
    /// A valid token with one of the route's roles; a route that names none
    /// is refused (fail closed).
    Roles,
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// The settings id (`issuers.<id>`).
    pub id: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// The name the host's JWKS cache knows this issuer by (`[[jwks]] issuer`).
    pub jwks: String,
    /// Accepted signature algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Accepted audiences (any of); not checked when empty.
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, ms.
    pub leeway_ms: u64,
    /// Claims that must be present (dotted paths).
    pub required_claims: Vec<String>,
    /// Oldest `iat` accepted, ms; `iat` is then required.
    pub max_age_ms: Option<u64>,
    /// Claim path of the roles (`roles`, `realm_access.roles`).
    pub roles_claim: String,
    /// Claim path of the data subject's region, for `jwt.region`.
    pub region_claim: Option<String>,
    /// Claim path of the subject's recorded consents (an array of strings or
    /// a space-separated string), for `jwt.consent` (the residency policy's
    /// consent rules read it).
    pub consent_claim: Option<String>,
}

/// The parsed settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fact namespace: the policy's configured name (default `jwt`).
    pub namespace: String,
    /// What this route asks.
    pub mode: Mode,
    /// Roles required (any of); `None`: the route fact `route.roles` decides.
    pub roles: Option<Vec<String>>,
    /// `realm` of `WWW-Authenticate`.
    pub realm: String,
    /// Cookie read when there is no `Authorization: Bearer`.
    pub cookie: Option<String>,
    /// Remove `authorization` before forwarding.
    pub strip_authorization: bool,
    /// Header carrying `sub` upstream (none: not sent).
    pub subject_header: Option<String>,
    /// Header carrying the roles upstream, list-encoded (none: not sent).
    pub roles_header: Option<String>,
    /// More headers from claims: (header, claim path).
    pub claim_headers: Vec<(String, String)>,
    /// Longest token accepted, bytes.
    pub max_token_bytes: usize,
    /// Use the host's verified-token cache (`cache-entries` > 0). The host
    /// sizes the cache from the policy's own `cache-entries`; a route can
    /// turn the cache off for itself with `cache-entries = 0`.
    pub cache: bool,
    /// Longest a verified token is remembered, ms (`cache-max-ttl-ms`),
    /// and never past its `exp`.
    pub cache_max_ttl_ms: u64,
    /// Trusted issuers.
    pub issuers: Vec<Issuer>,
}

/// Algorithms by their JOSE names. `none` is deliberately absent.
pub const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
];

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    ALGORITHMS.iter().find(|(_, a)| *a == alg).map_or("?", |(n, _)| n)
}

/// An algorithm by JOSE name.
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// Whether an algorithm uses a shared secret.
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// Smallest HS secret accepted, bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Largest leeway accepted, ms.
pub const MAX_LEEWAY_MS: u64 = 5 * 60 * 1000;
const DEFAULT_LEEWAY_MS: u64 = 30_000;
const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
const MAX_MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Entries of the verified-token cache by default (the host's default too).
pub const DEFAULT_CACHE_ENTRIES: u64 = 10_000;
/// Most entries the host keeps for one policy.
pub const MAX_CACHE_ENTRIES: u64 = 1_000_000;
/// How long a verified token is remembered by default, ms.
pub const DEFAULT_CACHE_MAX_TTL_MS: u64 = 5 * 60 * 1000;
/// The longest `cache-max-ttl-ms` (the host's own cap), ms.
pub const MAX_CACHE_MAX_TTL_MS: u64 = 60 * 60 * 1000;

const TOP_KEYS: &[&str] = &[
    "namespace",
    "mode",
    "roles",
    "realm",
    "cookie",
    "strip-authorization",
    "subject-header",
    "roles-header",
    "claim-headers.<header>",
    "max-token-bytes",
    "cache-entries",
    "cache-max-ttl-ms",
    "issuers.<id>",
];
const ISSUER_KEYS: &[&str] = &[
    "issuer",
    "jwks",
    "algorithms",
    "audience",
    "leeway-ms",
    "required-claims",
    "max-age-ms",
    "roles-claim",
    "region-claim",
    "consent-claim",
];

fn quoted(s: &str) -> String {
    let mut out = String::new();
    portcullis_sdk::json::push_string(&mut out, s);
    out
}

fn err(key: &str, reason: impl AsRef<str>) -> String {
    format!("setting {}: {}", quoted(key), reason.as_ref())
}

/// A header name: lower-case token characters.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&b))
}

/// A name usable in facts and ids: letters, digits, `-`, `_`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A claim path: dotted segments of letters, digits, `-`, `_`, `:`, `/`
/// (namespaced claims such as `https://example.org/roles` are common, but a
/// path of that shape splits at its dots: use claims without dots).
fn valid_claim_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:/".contains(&b)))
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(err(key, format!("expected true or false, got {}", quoted(v)))),
    }
}

fn parse_u64(key: &str, v: &str) -> Result<u64, String> {
    v.parse::<u64>().map_err(|_| err(key, format!("expected a non-negative integer, got {}", quoted(v))))
}

fn optional_header(key: &str, v: Option<&str>, default: &str) -> Result<Option<String>, String> {
    match v {
        None => Ok(Some(default.to_string())),
        Some("") => Ok(None),
        Some(h) if valid_header_name(h) => Ok(Some(h.to_string())),
        Some(h) => Err(err(key, format!("expected a lower-case header name (or \"\" for none), got {}", quoted(h)))),
    }
}

impl Config {
    /// Parse the flattened settings (`portcullis_sdk::settings("")`).
    pub fn parse(settings: &[(String, String)]) -> Result<Config, String> {
        let mut top: BTreeMap<&str, &str> = BTreeMap::new();
        let mut claim_headers = Vec::new();
        let mut issuers: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
        for (k, v) in settings {
            if let Some(rest) = k.strip_prefix("issuers.") {
                let Some((id, field)) = rest.split_once('.') else {
                    return Err(err(k, "expected issuers.<id>.<field>, e.g. issuers.procare.issuer"));
                };
                if !valid_name(id) {
                    return Err(err(k, "an issuer id is letters, digits, '-' and '_'"));
                }
                if !ISSUER_KEYS.contains(&field) {
                    return Err(err(k, format!("unknown issuer setting (known: {})", ISSUER_KEYS.join(", "))));
                }
                issuers.entry(id).or_default().insert(field, v);
            } else if let Some(header) = k.strip_prefix("claim-headers.") {
                if !valid_header_name(header) {
                    return Err(err(k, "expected a lower-case header name after claim-headers."));
                }
                if !valid_claim_path(v) {
                    return Err(err(k, format!("expected a claim path such as \"email\" or \"org.id\", got {}", quoted(v))));
                }
                claim_headers.push((header.to_string(), v.clone()));
            } else if TOP_KEYS.contains(&k.as_str()) {
                top.insert(k, v);
            } else {
                return Err(err(k, format!("unknown setting (known: {})", TOP_KEYS.join(", "))));
            }
        }

        let namespace = top.get("namespace").copied().unwrap_or("jwt").to_string();
        if !valid_name(&namespace) {
            return Err(err("namespace", "the policy's configured name: letters, digits, '-' and '_'"));
        }
        let mode = match top.get("mode").copied() {
            None | Some("required") => Mode::Required,
            Some("anonymous") => Mode::Anonymous,
            Some("roles") => Mode::Roles,
            Some(other) => return Err(err("mode", format!("expected one of anonymous, required, roles, got {}", quoted(other)))),
        };
        let roles = top.get("roles").map(|v| list::decode(v));
        if let Some(r) = &roles
            && r.iter().any(String::is_empty)
        {
            return Err(err("roles", "a role is a non-empty string"));
        }
        let realm = top.get("realm").copied().unwrap_or("portcullis").to_string();
        if realm.is_empty() || !realm.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
            return Err(err("realm", "printable ASCII without '\"' or '\\'"));
        }
        let cookie = match top.get("cookie").copied() {
            None | Some("") => None,
            Some(c) if c.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) => Some(c.to_string()),
            Some(c) => return Err(err("cookie", format!("not a cookie name: {}", quoted(c)))),
        };
        let strip_authorization = match top.get("strip-authorization") {
            Some(v) => parse_bool("strip-authorization", v)?,
            None => false,
        };
        let subject_header = optional_header("subject-header", top.get("subject-header").copied(), "x-subject")?;
        let roles_header = optional_header("roles-header", top.get("roles-header").copied(), "x-roles")?;
        for (h, _) in &claim_headers {
            if Some(h) == subject_header.as_ref() || Some(h) == roles_header.as_ref() || h == "authorization" {
                return Err(err(&format!("claim-headers.{h}"), "already used by subject-header, roles-header or authorization"));
            }
        }
        let max_token_bytes = match top.get("max-token-bytes") {
            Some(v) => {
                let n = parse_u64("max-token-bytes", v)?;
                if !(256..=MAX_MAX_TOKEN_BYTES as u64).contains(&n) {
                    return Err(err("max-token-bytes", format!("expected 256..={MAX_MAX_TOKEN_BYTES}")));
                }
                n as usize
            }
            None => DEFAULT_MAX_TOKEN_BYTES,
        };

        let cache_entries = match top.get("cache-entries") {
            Some(v) => parse_u64("cache-entries", v)?,
            None => DEFAULT_CACHE_ENTRIES,
        };
        if cache_entries > MAX_CACHE_ENTRIES {
            return Err(err("cache-entries", format!("at most {MAX_CACHE_ENTRIES} (0 turns the cache off)")));
        }
        let cache_max_ttl_ms = match top.get("cache-max-ttl-ms") {
            Some(v) => parse_u64("cache-max-ttl-ms", v)?,
            None => DEFAULT_CACHE_MAX_TTL_MS,
        };
        if !(1000..=MAX_CACHE_MAX_TTL_MS).contains(&cache_max_ttl_ms) {
            return Err(err("cache-max-ttl-ms", format!("expected 1000..={MAX_CACHE_MAX_TTL_MS} (1 s to 1 hour)")));
        }

        if issuers.is_empty() {
            return Err(err("issuers", "at least one issuer is required, e.g. issuers.procare.issuer = \"https://auth.example.org\""));
        }
        let mut parsed = Vec::new();
        for (id, fields) in issuers {
            let key = |f: &str| format!("issuers.{id}.{f}");
            let issuer = match fields.get("issuer") {
                Some(i) if !i.is_empty() => i.to_string(),
                _ => return Err(err(&key("issuer"), "missing: the exact \"iss\" of this issuer's tokens")),
            };
            if issuer.contains('#') {
                return Err(err(&key("issuer"), "an issuer identifier has no '#' (fragment)"));
            }
            let jwks = fields.get("jwks").map_or_else(|| issuer.clone(), |j| j.to_string());
            if jwks.is_empty() || jwks.contains('#') {
                return Err(err(&key("jwks"), "the issuer name of a [[jwks]] entry (no '#')"));
            }
            let Some(algs) = fields.get("algorithms") else {
                return Err(err(&key("algorithms"), "missing: the accepted algorithms, e.g. [\"RS256\"]"));
            };
            let mut algorithms = Vec::new();
            for name in list::items(algs) {
                if name.eq_ignore_ascii_case("none") {
                    return Err(err(&key("algorithms"), "\"none\" (unsigned tokens) is never accepted"));
                }
                match parse_alg(&name) {
                    Some(a) if !algorithms.contains(&a) => algorithms.push(a),
                    Some(_) => {}
                    None => {
                        let known: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
                        return Err(err(&key("algorithms"), format!("unknown algorithm {} (known: {})", quoted(&name), known.join(", "))));
                    }
                }
            }
            if algorithms.is_empty() {
                return Err(err(&key("algorithms"), "at least one algorithm is required"));
            }
            let audience = fields.get("audience").map(|a| list::decode(a)).unwrap_or_default();
            if audience.iter().any(String::is_empty) {
                return Err(err(&key("audience"), "an audience is a non-empty string"));
            }
            let leeway_ms = match fields.get("leeway-ms") {
                Some(v) => parse_u64(&key("leeway-ms"), v)?,
                None => DEFAULT_LEEWAY_MS,
            };
            if leeway_ms > MAX_LEEWAY_MS {
                return Err(err(&key("leeway-ms"), format!("at most {MAX_LEEWAY_MS} (5 minutes)")));
            }
            let required_claims = match fields.get("required-claims") {
                Some(v) => list::decode(v),
                None => vec!["exp".to_string()],
            };
            for c in &required_claims {
                if !valid_claim_path(c) {
                    return Err(err(&key("required-claims"), format!("not a claim path: {}", quoted(c))));
                }
            }
            let max_age_ms = match fields.get("max-age-ms") {
                Some(v) => match parse_u64(&key("max-age-ms"), v)? {
                    0 => return Err(err(&key("max-age-ms"), "must be positive")),
                    n => Some(n),
                },
                None => None,
            };
            let roles_claim = fields.get("roles-claim").copied().unwrap_or("roles").to_string();
            if !valid_claim_path(&roles_claim) {
                return Err(err(&key("roles-claim"), format!("not a claim path: {}", quoted(&roles_claim))));
            }
            let region_claim = fields.get("region-claim").map(|r| r.to_string());
            if let Some(r) = &region_claim
                && !valid_claim_path(r)
            {
                return Err(err(&key("region-claim"), format!("not a claim path: {}", quoted(r))));
            }
            let consent_claim = fields.get("consent-claim").map(|r| r.to_string());
            if let Some(r) = &consent_claim
                && !valid_claim_path(r)
            {
                return Err(err(&key("consent-claim"), format!("not a claim path: {}", quoted(r))));
            }
            if parsed.iter().any(|i: &Issuer| i.issuer == issuer) {
                return Err(err(&key("issuer"), format!("issuer {} is configured twice", quoted(&issuer))));
            }
            parsed.push(Issuer {
                id: id.to_string(),
                issuer,
                jwks,
                algorithms,
                audience,
                leeway_ms,
                required_claims,
                max_age_ms,
                roles_claim,
                region_claim,
                consent_claim,
            });
        }
        Ok(Config {
            namespace,
            mode,
            roles,
            realm,
            cookie,
            strip_authorization,
            subject_header,
            roles_header,
            claim_headers,
            max_token_bytes,
            cache: cache_entries > 0,
            cache_max_ttl_ms,
            issuers: parsed,
        })
    }

    /// The issuer whose `iss` is exactly `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.issuer == iss)
    }
}
