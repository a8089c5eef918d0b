//! Native unit tests: settings, token shapes, every refusal, keys by kind,
//! claims, roles, headers and replies. Tokens are signed here with the
//! throw-away keys in `testdata/`.

use super::*;
use crate::config::Config;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header as JwtHeader};
use portcullis_sdk::{Header, RequestHead};
use serde_json::{Value, json};

const RSA: &[u8] = include_bytes!("../testdata/rsa.pem");
const RSA_1024: &[u8] = include_bytes!("../testdata/rsa1024.pem");
const EC: &[u8] = include_bytes!("../testdata/ec.pem");
const ED: &[u8] = include_bytes!("../testdata/ed.pem");
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-procare";
const NOW_MS: u64 = 1_800_000_000_000;
const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://auth.procare.test/realms/procare";

fn s(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn settings(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = vec![
        s("issuers.procare.issuer", ISS),
        s("issuers.procare.algorithms", "RS256,ES256,EdDSA,HS256,PS256"),
        s("issuers.procare.audience", "procare-api"),
        s("issuers.procare.roles-claim", "realm_access.roles"),
        s("issuers.procare.region-claim", "region"),
        s("issuers.procare.consent-claim", "consent.residency"),
    ];
    for (k, val) in extra {
        v.retain(|(key, _)| key != k);
        v.push(s(k, val));
    }
    v
}

fn cfg(extra: &[(&str, &str)]) -> Config {
    Config::parse(&settings(extra)).unwrap()
}

fn enc(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(RSA).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(SECRET),
        _ => unreachable!(),
    }
}

/// The public JWK of the test key for `alg`, with a kid.
fn jwk(alg: Algorithm, kid: &str) -> Value {
    let mut v = serde_json::to_value(Jwk::from_encoding_key(&enc(alg), alg).unwrap()).unwrap();
    v["kid"] = json!(kid);
    v.as_object_mut().unwrap().remove("alg");
    v
}

fn jwks() -> String {
    json!({ "keys": [
        jwk(Algorithm::RS256, "rsa-1"),
        jwk(Algorithm::ES256, "ec-1"),
        jwk(Algorithm::EdDSA, "ed-1"),
        jwk(Algorithm::HS256, "hs-1"),
    ]})
    .to_string()
}

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": "doctor-7", "aud": "procare-api",
        "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10,
        "realm_access": { "roles": ["doctor", "caregiver"] },
        "region": "eu-central", "email": "d7@procare.test",
        "consent": { "residency": ["eu-processing", "research,2026"] },
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = JwtHeader::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &enc(alg)).unwrap()
}

fn kid_of(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => "rsa-1",
        Algorithm::ES256 => "ec-1",
        Algorithm::EdDSA => "ed-1",
        _ => "hs-1",
    }
}

fn good(alg: Algorithm) -> String {
    sign(alg, Some(kid_of(alg)), &claims())
}

/// A hand-made token: any header and claims, any signature bytes.
fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

struct Fake {
    set: Result<String, JwksError>,
    requests: Vec<String>,
    now: u64,
    /// The host's verified-token cache: token → expires (ms).
    cache: std::collections::BTreeMap<String, u64>,
    /// Tokens asked about, in order.
    lookups: Vec<String>,
    /// A host that says "hit" to every lookup (to see what a hit skips).
    always_hit: bool,
}

impl Fake {
    fn new() -> Fake {
        Fake { set: Ok(jwks()), requests: Vec::new(), now: NOW_MS, cache: Default::default(), lookups: Vec::new(), always_hit: false }
    }
}

impl Env for Fake {
    fn jwks(&mut self, request: &str) -> Result<String, JwksError> {
        self.requests.push(request.to_string());
        self.set.clone()
    }
    fn now_ms(&mut self) -> u64 {
        self.now
    }
    fn pseudonym(&mut self, value: &str) -> String {
        format!("pseudo({value})")
    }
    fn token_cached(&mut self, token: &str) -> bool {
        self.lookups.push(token.to_string());
        self.always_hit || self.cache.get(token).is_some_and(|until| self.now < *until)
    }
    fn token_verified(&mut self, token: &str, expires_ms: u64) {
        self.cache.insert(token.to_string(), expires_ms);
    }
}

fn head(headers: &[(&str, &str)], facts: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        id: "r1".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.procare.test".into(),
        path: "/api/clinical".into(),
        query: None,
        headers: headers.iter().map(|(k, v)| Header::new(*k, *v)).collect(),
        client_ip: "192.0.2.1".into(),
        listener: "public".into(),
        route: Some("clinical".into()),
        facts: facts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn bearer(token: &str) -> RequestHead {
    head(&[("authorization", &format!("Bearer {token}"))], &[("route.name", "clinical")])
}

fn verify(token: &str) -> Result<auth::Identity, Failure> {
    auth::authenticate(&cfg(&[]), token, &mut Fake::new())
}

fn reason(token: &str) -> String {
    match verify(token) {
        Ok(_) => panic!("accepted"),
        Err(f) => f.reason().to_string(),
    }
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|h| h.name == name).map(|h| core::str::from_utf8(&h.value).unwrap())
}

// ---------------------------------------------------------------------------

#[test]
fn every_supported_algorithm_verifies() {
    for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256] {
        let id = verify(&good(alg)).unwrap_or_else(|f| panic!("{alg:?}: {f:?}"));
        assert_eq!(id.sub.as_deref(), Some("doctor-7"));
        assert_eq!(id.roles, ["doctor", "caregiver"]);
        assert_eq!(id.region.as_deref(), Some("eu-central"));
        assert_eq!(id.consent.as_deref(), Some(&["eu-processing".to_string(), "research,2026".to_string()][..]));
        assert_eq!(id.iss, ISS);
        assert_eq!(id.alg, alg);
    }
}

#[test]
fn the_kid_goes_to_the_host_as_a_hint() {
    let mut env = Fake::new();
    auth::authenticate(&cfg(&[]), &good(Algorithm::ES256), &mut env).unwrap();
    assert_eq!(env.requests, [format!("{ISS}#kid=ec-1")]);
    // Without a kid: the plain issuer, and a key that fits the algorithm is found.
    let mut env = Fake::new();
    auth::authenticate(&cfg(&[]), &sign(Algorithm::EdDSA, None, &claims()), &mut env).unwrap();
    assert_eq!(env.requests, [ISS.to_string()]);
    // A separate JWKS name.
    let mut env = Fake::new();
    auth::authenticate(&cfg(&[("issuers.procare.jwks", "procare-keys")]), &good(Algorithm::RS256), &mut env).unwrap();
    assert_eq!(env.requests, ["procare-keys#kid=rsa-1"]);
}

#[test]
fn time_claims_use_the_host_clock_with_leeway() {
    let mut c = claims();
    c["exp"] = json!(NOW - 31);
    assert_eq!(reason(&sign(Algorithm::RS256, Some("rsa-1"), &c)), "token expired");
    c["exp"] = json!(NOW - 29); // within the default 30 s leeway
    assert!(verify(&sign(Algorithm::RS256, Some("rsa-1"), &c)).is_ok());
    let mut c = claims();
    c["nbf"] = json!(NOW + 60);
    assert_eq!(reason(&sign(Algorithm::ES256, Some("ec-1"), &c)), "token not yet valid");
    c["nbf"] = json!(NOW + 20);
    assert!(verify(&sign(Algorithm::ES256, Some("ec-1"), &c)).is_ok());
    // Fractional NumericDates are numbers too; strings are not.
    let mut c = claims();
    c["exp"] = json!((NOW as f64) - 40.5);
    assert_eq!(reason(&sign(Algorithm::HS256, Some("hs-1"), &c)), "token expired");
    c["exp"] = json!("never");
    assert_eq!(reason(&sign(Algorithm::HS256, Some("hs-1"), &c)), "invalid exp claim");
    // exp is required by default.
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(reason(&sign(Algorithm::HS256, Some("hs-1"), &c)), "missing required claim exp");
}

#[test]
fn max_age_needs_a_recent_iat() {
    let config = cfg(&[("issuers.procare.max-age-ms", "60000"), ("issuers.procare.leeway-ms", "0")]);
    let check = |iat: Value| {
        let mut c = claims();
        c["iat"] = iat;
        auth::authenticate(&config, &sign(Algorithm::EdDSA, Some("ed-1"), &c), &mut Fake::new()).map_err(|f| f.reason().to_string())
    };
    assert!(check(json!(NOW - 59)).is_ok());
    assert_eq!(check(json!(NOW - 61)).unwrap_err(), "token too old");
    assert_eq!(check(json!(NOW + 5)).unwrap_err(), "token issued in the future");
    assert_eq!(check(Value::Null).unwrap_err(), "missing required claim iat");
}

#[test]
fn issuer_audience_and_required_claims() {
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(reason(&sign(Algorithm::RS256, Some("rsa-1"), &c)), "unknown issuer");
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(reason(&sign(Algorithm::RS256, Some("rsa-1"), &c)), "missing issuer");
    let mut c = claims();
    c["aud"] = json!("other-api");
    assert_eq!(reason(&sign(Algorithm::RS256, Some("rsa-1"), &c)), "wrong audience");
    c["aud"] = json!(["other-api", "procare-api"]);
    assert!(verify(&sign(Algorithm::RS256, Some("rsa-1"), &c)).is_ok());
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(reason(&sign(Algorithm::RS256, Some("rsa-1"), &c)), "wrong audience");
    let config = cfg(&[("issuers.procare.required-claims", "exp,sub,realm_access.roles,tenant")]);
    let r = auth::authenticate(&config, &good(Algorithm::RS256), &mut Fake::new()).unwrap_err();
    assert_eq!(r.reason(), "missing required claim tenant");
}

#[test]
fn bad_signatures_and_algorithm_tricks_are_refused() {
    // A signature over other content.
    let t = good(Algorithm::RS256);
    let other = sign(Algorithm::RS256, Some("rsa-1"), &json!({"iss": ISS, "sub": "admin", "exp": NOW + 60, "aud": "procare-api"}));
    let tampered = format!("{}.{}", &t[..t.rfind('.').unwrap()], &other[other.rfind('.').unwrap() + 1..]);
    assert_eq!(reason(&tampered), "invalid signature");
    // Claims swapped under a valid signature.
    let parts: Vec<&str> = t.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(json!({"iss": ISS, "sub": "admin", "exp": NOW + 60}).to_string()), parts[2]);
    assert_eq!(reason(&swapped), "invalid signature");
    // alg none, any case, with or without a signature.
    for alg in ["none", "None", "NONE"] {
        assert_eq!(reason(&forge(&json!({"alg": alg}), &claims(), b"")), "unsigned tokens (alg none) are not accepted");
        assert_eq!(reason(&forge(&json!({"alg": alg, "kid": "rsa-1"}), &claims(), b"x")), "unsigned tokens (alg none) are not accepted");
    }
    // RS256 → HS256 confusion: HMAC over the token with the RSA public key (its JWK `n`, and the raw JWK JSON) as the secret.
    let rsa_jwk = jwk(Algorithm::RS256, "rsa-1");
    for secret in [rsa_jwk.to_string().into_bytes(), URL_SAFE_NO_PAD.decode(rsa_jwk["n"].as_str().unwrap()).unwrap()] {
        let mut h = JwtHeader::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        // Allowed algorithm (HS256 is on the list), but an RSA key is never an HMAC secret.
        assert_eq!(reason(&t), "unknown key id");
        // And on an RS256-only issuer the algorithm itself is refused.
        let rs_only = cfg(&[("issuers.procare.algorithms", "RS256")]);
        let f = auth::authenticate(&rs_only, &t, &mut Fake::new()).unwrap_err();
        assert_eq!(f.reason(), "algorithm not accepted for this issuer");
    }
    // A token signed by a key of the right kind that is not in the set.
    let mut h = JwtHeader::new(Algorithm::HS256);
    h.kid = Some("hs-1".into());
    let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!")).unwrap();
    assert_eq!(reason(&t), "invalid signature");
    // Unknown kid.
    assert_eq!(reason(&sign(Algorithm::RS256, Some("rsa-2"), &claims())), "unknown key id");
}

#[test]
fn hostile_kids_are_refused_before_any_lookup() {
    for kid in ["../../etc/passwd", "a/b", "x' OR '1'='1", "1; DROP TABLE keys", "k\u{0}", "%2e%2e", "..", "a b", "\"q\"", &"k".repeat(300)] {
        let t = forge(&json!({"alg": "RS256", "kid": kid}), &claims(), b"sig");
        let mut env = Fake::new();
        let f = auth::authenticate(&cfg(&[]), &t, &mut env).unwrap_err();
        assert_eq!(f.reason(), "invalid key id", "{kid:?}");
        assert!(env.requests.is_empty(), "no lookup for {kid:?}");
    }
    let t = forge(&json!({"alg": "RS256", "kid": 7}), &claims(), b"sig");
    assert_eq!(reason(&t), "invalid key id");
    // Ordinary kids (base64url thumbprints, Cognito-style base64, dotted) pass the shape check.
    for kid in ["nOo3ZDrODXEK1jKWhXslHR_KXEg", "abcd+efgh/=", "key.2026-11"] {
        assert_eq!(token::valid_kid(kid), !kid.contains('/'), "{kid}");
    }
}

#[test]
fn malformed_tokens_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("abc", "malformed token"),
        ("a.b", "malformed token"),
        ("a.b.c.d.e", "encrypted (JWE) or malformed token"),
        ("!!!.???.***", "malformed token"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0=.c2ln", "malformed token"),
        ("bm90IGpzb24.bm90IGpzb24.c2ln", "malformed token header"),
        (".eyJzdWIiOiJ4In0.c2ln", "malformed token"),
    ];
    for (t, why) in cases {
        assert_eq!(reason(t), *why, "{t}");
    }
    assert_eq!(reason(&forge(&json!({"alg": "RS256"}), &claims(), b"")), "malformed token");
    assert_eq!(reason(&forge(&json!({"alg": "XS999"}), &claims(), b"s")), "unsupported algorithm");
    assert_eq!(reason(&forge(&json!({"alg": "RS256", "crit": ["exp"]}), &claims(), b"s")), "unsupported critical header parameters");
    assert_eq!(reason(&forge(&json!(["RS256"]), &claims(), b"s")), "malformed token header");
    assert_eq!(reason(&forge(&json!({"alg": "RS256"}), &json!("claims"), b"s")), "malformed token claims");
    let big = forge(&json!({"alg": "RS256"}), &json!({"pad": "x".repeat(100 * 1024)}), b"s");
    assert_eq!(reason(&big), "token too large");
}

#[test]
fn keys_must_fit_the_algorithm() {
    // A 1024-bit RSA key is never used, even when it is the one that signed.
    let weak = EncodingKey::from_rsa_pem(RSA_1024).unwrap();
    let mut weak_jwk = serde_json::to_value(Jwk::from_encoding_key(&weak, Algorithm::RS256).unwrap()).unwrap();
    weak_jwk["kid"] = json!("weak");
    let mut h = JwtHeader::new(Algorithm::RS256);
    h.kid = Some("weak".into());
    let t = jsonwebtoken::encode(&h, &claims(), &weak).unwrap();
    let mut env = Fake::new();
    env.set = Ok(json!({"keys": [weak_jwk]}).to_string());
    assert_eq!(auth::authenticate(&cfg(&[]), &t, &mut env).unwrap_err().reason(), "unknown key id");
    // A key marked for encryption, or for another algorithm, is skipped.
    for (field, value) in [("use", json!("enc")), ("alg", json!("RS512")), ("key_ops", json!(["encrypt"]))] {
        let mut k = jwk(Algorithm::RS256, "rsa-1");
        k[field] = value;
        let mut env = Fake::new();
        env.set = Ok(json!({"keys": [k]}).to_string());
        assert_eq!(auth::authenticate(&cfg(&[]), &good(Algorithm::RS256), &mut env).unwrap_err().reason(), "unknown key id", "{field}");
    }
    // A short shared secret is never used.
    let mut env = Fake::new();
    env.set = Ok(json!({"keys": [{"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode(b"short")}]}).to_string());
    assert_eq!(auth::authenticate(&cfg(&[]), &good(Algorithm::HS256), &mut env).unwrap_err().reason(), "unknown key id");
    // Key set errors from the host.
    let mut env = Fake::new();
    env.set = Err(JwksError::Unavailable("down".into()));
    assert!(matches!(auth::authenticate(&cfg(&[]), &good(Algorithm::RS256), &mut env), Err(Failure::Unavailable { .. })));
    let mut env = Fake::new();
    env.set = Err(JwksError::UnknownIssuer(ISS.into()));
    assert!(matches!(auth::authenticate(&cfg(&[]), &good(Algorithm::RS256), &mut env), Err(Failure::Unavailable { .. })));
}

#[test]
fn proceed_carries_facts_and_headers_and_replaces_spoofed_ones() {
    let c = cfg(&[("strip-authorization", "true"), ("claim-headers.x-email", "email"), ("roles", "doctor")]);
    let mut req = bearer(&good(Algorithm::ES256));
    req.headers.push(Header::new("x-subject", "admin"));
    let d = decide(&c, &req, &mut Fake::new());
    let Verdict::Proceed(e) = d.verdict else { panic!("refused: {:?}", d.audit) };
    let fact = |k: &str| e.facts.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(fact("jwt.sub"), Some("doctor-7"));
    assert_eq!(fact("jwt.iss"), Some(ISS));
    assert_eq!(fact("jwt.roles"), Some("doctor,caregiver"));
    assert_eq!(fact("jwt.region"), Some("eu-central"));
    // Consents, list-encoded (the comma inside an item escaped), for the residency policy.
    assert_eq!(fact("jwt.consent"), Some("eu-processing,research%2C2026"));
    let set = |k: &str| e.set_headers.iter().find(|h| h.name == k).map(|h| core::str::from_utf8(&h.value).unwrap());
    assert_eq!(set("x-subject"), Some("doctor-7"));
    assert_eq!(set("x-roles"), Some("doctor,caregiver"));
    assert_eq!(set("x-email"), Some("d7@procare.test"));
    assert_eq!(e.remove_headers, ["authorization"]);
    assert!(d.audit.contains(&s("outcome", "ok")));
    assert!(d.audit.contains(&s("subject", "pseudo(doctor-7)")));
    assert!(d.audit.iter().all(|(_, v)| !v.contains("eyJ")), "no token in the audit");

    // Another namespace; no headers.
    let c = cfg(&[("namespace", "auth"), ("subject-header", ""), ("roles-header", "")]);
    let Verdict::Proceed(e) = decide(&c, &req, &mut Fake::new()).verdict else { panic!() };
    assert!(e.facts.iter().all(|(k, _)| k.starts_with("auth.")));
    assert!(e.set_headers.is_empty() && e.remove_headers.is_empty());

    // A claim that cannot be a header value refuses the token.
    let mut cl = claims();
    cl["sub"] = json!("doctor\r\nx-admin: 1");
    let d = decide(&cfg(&[]), &bearer(&sign(Algorithm::ES256, Some("ec-1"), &cl)), &mut Fake::new());
    let Verdict::Respond(r) = d.verdict else { panic!() };
    assert_eq!(r.status, 401);
}

#[test]
fn refusals_follow_rfc_6750() {
    let c = cfg(&[("realm", "procare")]);
    // Missing.
    let d = decide(&c, &head(&[], &[]), &mut Fake::new());
    let Verdict::Respond(r) = d.verdict else { panic!() };
    assert_eq!(r.status, 401);
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"procare\""));
    assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
    assert_eq!(d.audit, [s("outcome", "missing"), s("reason", "no bearer token")]);
    // Another scheme counts as missing.
    let Verdict::Respond(r) = decide(&c, &head(&[("authorization", "Basic dXNlcjpwYXNz")], &[]), &mut Fake::new()).verdict else { panic!() };
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"procare\""));
    // Invalid.
    let mut cl = claims();
    cl["exp"] = json!(NOW - 3600);
    let d = decide(&c, &bearer(&sign(Algorithm::RS256, Some("rsa-1"), &cl)), &mut Fake::new());
    let Verdict::Respond(r) = d.verdict else { panic!() };
    assert_eq!(r.status, 401);
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"procare\", error=\"invalid_token\", error_description=\"token expired\""));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["status"], 401);
    assert_eq!(body["detail"], "token expired");
    assert_eq!(d.audit, [s("outcome", "invalid"), s("reason", "token expired"), s("issuer", "procare")]);
    // Forbidden: the route's roles from the router's fact.
    let mut req = bearer(&good(Algorithm::RS256));
    req.facts.push(("route.roles".into(), "admin,billing".into()));
    let d = decide(&c, &req, &mut Fake::new());
    let Verdict::Respond(r) = d.verdict else { panic!() };
    assert_eq!(r.status, 403);
    assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"procare\", error=\"insufficient_scope\", error_description=\"a required role is missing\""));
    assert!(d.audit.contains(&s("outcome", "forbidden")) && d.audit.contains(&s("subject", "pseudo(doctor-7)")));
    // A role the caller has.
    req.facts.push(("route.roles".into(), "caregiver".into()));
    assert!(matches!(decide(&c, &req, &mut Fake::new()).verdict, Verdict::Proceed(_)));
    // Unavailable keys: 503, no challenge.
    let mut env = Fake::new();
    env.set = Err(JwksError::Unavailable("down".into()));
    let Verdict::Respond(r) = decide(&c, &bearer(&good(Algorithm::RS256)), &mut env).verdict else { panic!() };
    assert_eq!(r.status, 503);
    assert_eq!(header(&r, "www-authenticate"), None);
}

#[test]
fn modes_and_roles() {
    let req = bearer(&good(Algorithm::EdDSA)); // roles doctor, caregiver
    let status = |c: &Config, req: &RequestHead| match decide(c, req, &mut Fake::new()).verdict {
        Verdict::Proceed(_) => 200,
        Verdict::Respond(r) => r.status,
    };
    // roles mode: setting roles (override), else route.roles; none named → 403.
    assert_eq!(status(&cfg(&[("mode", "roles"), ("roles", "doctor")]), &req), 200);
    assert_eq!(status(&cfg(&[("mode", "roles"), ("roles", "admin")]), &req), 403);
    assert_eq!(status(&cfg(&[("mode", "roles")]), &req), 403);
    let mut with_fact = req.clone();
    with_fact.facts.push(("route.roles".into(), "patient,caregiver".into()));
    assert_eq!(status(&cfg(&[("mode", "roles")]), &with_fact), 200);
    // An explicit empty roles setting overrides the route fact.
    assert_eq!(status(&cfg(&[("roles", "")]), &with_fact), 200);
    // anonymous: no token, a bad token, or roles that do not match all pass, without identity.
    let anon = cfg(&[("mode", "anonymous")]);
    assert_eq!(status(&anon, &head(&[("x-subject", "spoof")], &[])), 200);
    let Verdict::Proceed(e) = decide(&anon, &head(&[("x-subject", "spoof")], &[]), &mut Fake::new()).verdict else { panic!() };
    assert!(e.facts.is_empty());
    assert!(e.remove_headers.contains(&"x-subject".to_string()), "a client's own x-subject never reaches the upstream");
    assert_eq!(status(&anon, &bearer("not.a.token")), 200);
    assert_eq!(status(&anon, &with_fact), 200);
    let Verdict::Proceed(e) = decide(&anon, &req, &mut Fake::new()).verdict else { panic!() };
    assert!(e.facts.iter().any(|(k, v)| k == "jwt.sub" && v == "doctor-7"));
}

#[test]
fn the_token_may_come_from_a_cookie() {
    let c = cfg(&[("cookie", "next-auth.session-token")]);
    let t = good(Algorithm::HS256);
    let req = head(&[("cookie", &format!("theme=dark; next-auth.session-token={t}; other=1"))], &[]);
    assert!(matches!(decide(&c, &req, &mut Fake::new()).verdict, Verdict::Proceed(_)));
    // Without the cookie setting, the cookie is not looked at.
    let Verdict::Respond(r) = decide(&cfg(&[]), &req, &mut Fake::new()).verdict else { panic!() };
    assert_eq!(r.status, 401);
    // The header wins over the cookie.
    let mut both = bearer("x.y.z");
    both.headers.push(Header::new("cookie", format!("next-auth.session-token={t}")));
    let Verdict::Respond(r) = decide(&c, &both, &mut Fake::new()).verdict else { panic!() };
    assert_eq!(r.status, 401);
}

#[test]
fn settings_are_checked() {
    let bad = |extra: &[(&str, &str)]| Config::parse(&settings(extra)).unwrap_err();
    assert!(bad(&[("mode", "open")]).contains("\"mode\""));
    assert!(bad(&[("issuers.procare.algorithms", "RS256,none")]).contains("never accepted"));
    assert!(bad(&[("issuers.procare.algorithms", "RS257")]).contains("unknown algorithm"));
    assert!(bad(&[("issuers.procare.algorithms", "")]).contains("at least one"));
    assert!(bad(&[("issuers.procare.leeway-ms", "600000")]).contains("at most"));
    assert!(bad(&[("issuers.procare.leeway-ms", "-1")]).contains("non-negative"));
    assert!(bad(&[("issuers.procare.audiences", "x")]).contains("unknown issuer setting"));
    assert!(bad(&[("colour", "x")]).contains("unknown setting"));
    assert!(bad(&[("strip-authorization", "yes")]).contains("true or false"));
    assert!(bad(&[("subject-header", "X Subject")]).contains("header name"));
    assert!(bad(&[("claim-headers.x-roles", "email")]).contains("already used"));
    assert!(bad(&[("issuers.procare.issuer", "https://a#b")]).contains("no '#'"));
    assert!(bad(&[("issuers.procare.roles-claim", "a..b")]).contains("claim path"));
    assert!(bad(&[("issuers.procare.consent-claim", "a b")]).contains("issuers.procare.consent-claim"));
    assert!(bad(&[("realm", "a\"b")]).contains("realm"));
    assert!(Config::parse(&[]).unwrap_err().contains("at least one issuer"));
    assert!(Config::parse(&[s("issuers.a.algorithms", "RS256")]).unwrap_err().contains("issuers.a.issuer"));
    let dup = vec![s("issuers.a.issuer", "x"), s("issuers.a.algorithms", "RS256"), s("issuers.b.issuer", "x"), s("issuers.b.algorithms", "RS256")];
    assert!(Config::parse(&dup).unwrap_err().contains("configured twice"));
    let c = cfg(&[]);
    assert_eq!(c.mode, Mode::Required);
    assert_eq!(c.namespace, "jwt");
    assert_eq!(c.issuers[0].required_claims, ["exp"]);
    assert_eq!(c.subject_header.as_deref(), Some("x-subject"));
}

#[test]
fn check_config_looks_at_hs_secrets() {
    let c = cfg(&[]);
    assert_eq!(auth::check_secrets(&c, &mut Fake::new()), Ok(()));
    let mut env = Fake::new();
    env.set = Ok(json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(b"0123456789")}]}).to_string());
    assert!(auth::check_secrets(&c, &mut env).unwrap_err().contains("10 bytes; at least 32"));
    let mut env = Fake::new();
    env.set = Ok(json!({"keys": [jwk(Algorithm::RS256, "rsa-1")]}).to_string());
    assert!(auth::check_secrets(&c, &mut env).unwrap_err().contains("no shared secret"));
    let mut env = Fake::new();
    env.set = Err(JwksError::UnknownIssuer(ISS.into()));
    assert!(auth::check_secrets(&c, &mut env).unwrap_err().contains("no [[jwks]] entry"));
    // Issuers without HS algorithms are not asked.
    let mut env = Fake::new();
    env.set = Err(JwksError::UnknownIssuer(ISS.into()));
    assert_eq!(auth::check_secrets(&cfg(&[("issuers.procare.algorithms", "RS256,ES256")]), &mut env), Ok(()));
    assert!(env.requests.is_empty());
}

// ---------------------------------------------------------------------------
// The verified-token cache.

#[test]
fn a_verified_token_is_put_and_its_next_request_skips_only_the_signature() {
    let c = cfg(&[]);
    let mut env = Fake::new();
    let t = good(Algorithm::RS256); // exp: NOW + 300
    let id = auth::authenticate(&c, &t, &mut env).unwrap();
    assert_eq!(id.cached, Some(false));
    assert_eq!(env.requests.len(), 1, "a miss looks the key up");
    assert_eq!(env.cache.get(&t), Some(&(NOW_MS + 300_000)), "remembered until exp");
    let again = auth::authenticate(&c, &t, &mut env).unwrap();
    assert_eq!(again.cached, Some(true));
    assert_eq!(env.requests.len(), 1, "a hit needs no key");
    assert_eq!((again.sub, again.roles, again.region, again.alg), (id.sub, id.roles, id.region, id.alg));
    assert_eq!(env.lookups, [t.clone(), t.clone()]);
    // Audited as a miss, then a hit.
    let audit = |env: &mut Fake| decide(&c, &bearer(&t), env).audit.into_iter().find(|(k, _)| k == "cache").map(|(_, v)| v);
    assert_eq!(audit(&mut env).as_deref(), Some("hit"));
    assert_eq!(audit(&mut Fake::new()).as_deref(), Some("miss"));
    // Never past cache-max-ttl-ms, never past exp; a token without exp gets the TTL.
    let mut long = claims();
    long["exp"] = json!(NOW + 86_400);
    let mut env = Fake::new();
    let t = sign(Algorithm::ES256, Some("ec-1"), &long);
    auth::authenticate(&cfg(&[("cache-max-ttl-ms", "60000")]), &t, &mut env).unwrap();
    assert_eq!(env.cache[&t], NOW_MS + 60_000);
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let t = sign(Algorithm::ES256, Some("ec-1"), &no_exp);
    auth::authenticate(&cfg(&[("issuers.procare.required-claims", "sub")]), &t, &mut env).unwrap();
    assert_eq!(env.cache[&t], NOW_MS + 300_000);
    // Past exp but inside the leeway: valid, and remembered for no time at all.
    let mut late = claims();
    late["exp"] = json!(NOW - 5);
    let t = sign(Algorithm::ES256, Some("ec-1"), &late);
    auth::authenticate(&c, &t, &mut env).unwrap();
    assert!(env.cache[&t] <= NOW_MS);
}

#[test]
fn a_hit_still_checks_everything_but_the_signature() {
    // A host that says "hit" to everything: what the policy checks anyway.
    let hit = || Fake { always_hit: true, ..Fake::new() };
    let check = |c: &Config, t: &str| auth::authenticate(c, t, &mut hit()).map(|_| ()).map_err(|f| f.reason().to_string());
    let c = cfg(&[]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = claims();
        f(&mut v);
        sign(Algorithm::RS256, Some("rsa-1"), &v)
    };
    assert_eq!(check(&c, &good(Algorithm::RS256)), Ok(()));
    // Time, against the host's clock now.
    assert_eq!(check(&c, &with(&|v| v["exp"] = json!(NOW - 31))).unwrap_err(), "token expired");
    assert_eq!(check(&c, &with(&|v| v["nbf"] = json!(NOW + 60))).unwrap_err(), "token not yet valid");
    let old = cfg(&[("issuers.procare.max-age-ms", "5000"), ("issuers.procare.leeway-ms", "0")]);
    assert_eq!(check(&old, &good(Algorithm::RS256)).unwrap_err(), "token too old");
    // The settings: audience, required claims, issuer, algorithm allow-list.
    assert_eq!(check(&cfg(&[("issuers.procare.audience", "billing-api")]), &good(Algorithm::RS256)).unwrap_err(), "wrong audience");
    assert_eq!(check(&cfg(&[("issuers.procare.required-claims", "exp,email_verified")]), &good(Algorithm::RS256)).unwrap_err(), "missing required claim email_verified");
    assert_eq!(check(&c, &with(&|v| v["iss"] = json!("https://evil.test"))).unwrap_err(), "unknown issuer");
    assert_eq!(check(&cfg(&[("issuers.procare.algorithms", "ES256")]), &good(Algorithm::RS256)).unwrap_err(), "algorithm not accepted for this issuer");
    // The token's shape.
    assert_eq!(check(&c, &forge(&json!({"alg": "none"}), &claims(), b"")).unwrap_err(), "unsigned tokens (alg none) are not accepted");
    assert_eq!(check(&c, "!!!.@@@.###").unwrap_err(), "malformed token");
    assert_eq!(check(&cfg(&[("max-token-bytes", "256")]), &good(Algorithm::RS256)).unwrap_err(), "token too large");
    // Roles, per route.
    let t = good(Algorithm::RS256); // doctor, caregiver
    let Verdict::Respond(r) = decide(&cfg(&[("roles", "admin")]), &bearer(&t), &mut hit()).verdict else { panic!("a hit without the role passed") };
    assert_eq!(r.status, 403);
    let Verdict::Proceed(e) = decide(&cfg(&[("roles", "doctor")]), &bearer(&t), &mut hit()).verdict else { panic!() };
    assert!(e.facts.iter().any(|(k, v)| k == "jwt.sub" && v == "doctor-7"), "facts come from the token on a hit too");
}

#[test]
fn only_tokens_that_pass_are_put_and_the_cache_can_be_off() {
    let c = cfg(&[]);
    let mut env = Fake::new();
    let mut expired = claims();
    expired["exp"] = json!(NOW - 3600);
    let impostor = {
        let t = good(Algorithm::RS256);
        let parts: Vec<&str> = t.split('.').collect();
        format!("{}.{}.{}", parts[0], parts[1], &good(Algorithm::PS256).split('.').nth(2).unwrap())
    };
    for bad in [sign(Algorithm::RS256, Some("rsa-1"), &expired), impostor, sign(Algorithm::ES256, Some("nope"), &claims())] {
        assert!(auth::authenticate(&c, &bad, &mut env).is_err());
    }
    assert!(env.cache.is_empty(), "nothing refused is remembered");
    // cache-entries = 0 (e.g. a route's override): no lookup, no put.
    let off = cfg(&[("cache-entries", "0")]);
    let mut env = Fake::new();
    let id = auth::authenticate(&off, &good(Algorithm::ES256), &mut env).unwrap();
    assert_eq!(id.cached, None);
    assert!(env.lookups.is_empty() && env.cache.is_empty());
    assert!(!decide(&off, &bearer(&good(Algorithm::ES256)), &mut env).audit.iter().any(|(k, _)| k == "cache"));
}

#[test]
fn cache_settings_are_checked() {
    let bad = |extra: &[(&str, &str)]| Config::parse(&settings(extra)).unwrap_err();
    assert!(bad(&[("cache-entries", "lots")]).contains("\"cache-entries\": expected a non-negative integer"));
    assert!(bad(&[("cache-entries", "1000001")]).contains("at most 1000000"));
    assert!(bad(&[("cache-max-ttl-ms", "999")]).contains("\"cache-max-ttl-ms\": expected 1000..=3600000"));
    assert!(bad(&[("cache-max-ttl-ms", "3600001")]).contains("cache-max-ttl-ms"));
    let c = cfg(&[]);
    assert!(c.cache);
    assert_eq!(c.cache_max_ttl_ms, 300_000);
    assert!(!cfg(&[("cache-entries", "0")]).cache);
}
