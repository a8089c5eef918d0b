//! The jwt-auth policy end to end: the real binary, the real component, keys
//! generated here, the JWKS served by a real loopback HTTP server.

use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header as JwtHeader};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The jwt-auth component (see components/jwt-auth).
pub const JWT_AUTH: &str = env!("PORTCULLIS_JWT_AUTH_WASM");
pub(crate) const ISS: &str = "https://auth.procare.test/realms/procare";
const HS_ISS: &str = "prescripcare";
pub(crate) const HS_SECRET: &[u8] = b"prescripcare-shared-secret-0123456789abcdef";

// ---------------------------------------------------------------------------
// Keys and tokens.

/// A signing key with its public JWK.
pub struct Key {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Key {
    pub fn rsa(kid: &str) -> Key {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())});
        Key { alg: Algorithm::RS256, kid: kid.into(), encoding: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()), jwk }
    }

    pub fn ec(kid: &str) -> Key {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = key.verifying_key().to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
        Key { alg: Algorithm::ES256, kid: kid.into(), encoding: EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes()), jwk }
    }

    pub fn ed(kid: &str) -> Key {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(key.verifying_key().as_bytes())});
        Key { alg: Algorithm::EdDSA, kid: kid.into(), encoding: EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()), jwk }
    }

    pub fn hs(kid: &str, secret: &[u8]) -> Key {
        Key { alg: Algorithm::HS256, kid: kid.into(), encoding: EncodingKey::from_secret(secret), jwk: json!({"kty": "oct", "kid": kid, "k": b64(secret)}) }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut h = JwtHeader::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims of a doctor at ProCare, valid for five minutes.
pub fn doctor() -> Value {
    json!({
        "iss": ISS, "sub": "doctor-7", "aud": "procare-api",
        "exp": now() + 300, "iat": now() - 5,
        "realm_access": {"roles": ["doctor"]}, "region": "eu-central", "email": "d7@procare.test",
    })
}

pub fn jwks_of(keys: &[&Key]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A token put together by hand: any header, any claims, any signature.
pub(crate) fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(sig))
}

// ---------------------------------------------------------------------------
// The JWKS server.

/// A real HTTP server on loopback serving a JWKS document tests can change.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<String>>,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(doc: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (doc, hits) = (Arc::new(Mutex::new(doc)), Arc::new(AtomicU64::new(0)));
        let (d, h) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (d, h) = (d.clone(), h.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().unwrap().clone();
                        async move {
                            let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
                            resp.headers_mut().insert("content-type", "application/jwk-set+json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                });
            }
        });
        JwksServer { addr, doc, hits, task }
    }

    pub fn serve(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }

    pub fn fetches(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stop listening and drop every connection (the issuer goes down).
    pub fn stop(&self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// The gateway.

/// The gateway config: procare (RS256, ES256, EdDSA from the JWKS server)
/// and prescripcare (HS256 from a secret file), and routes for each mode.
pub(crate) fn config(up: &Upstream, jwks: &JwksServer, extra_head: &str, jwks_tuning: &str) -> String {
    let mut c = config_head();
    c.push_str(extra_head);
    c.push_str(&format!(
        r#"
[policies.jwt]
component = "{JWT_AUTH}"
[policies.jwt.settings]
realm = "procare"
strip-authorization = true
claim-headers = {{ x-email = "email" }}
[policies.jwt.settings.issuers.procare]
issuer = "{ISS}"
algorithms = ["RS256", "ES256", "EdDSA"]
audience = ["procare-api"]
roles-claim = "realm_access.roles"
region-claim = "region"
[policies.jwt.settings.issuers.prescripcare]
issuer = "{HS_ISS}"
algorithms = ["HS256"]
audience = ["prescripcare-api"]

[policies.seen]
component = "{TEST_POLICY}"
settings = {{ mode = "facts", namespace = "seen" }}

[[jwks]]
issuer = "{ISS}"
url = "http://{}/realms/procare/certs"
{jwks_tuning}

[[jwks]]
issuer = "{HS_ISS}"
secret_file = "prescripcare-hs256.key"
kid = "rx-1"

[[pools]]
name = "up"
targets = ["{}"]

[[routes]]
name = "clinical"
path = "/api/clinical"
pools = ["up"]
chain = ["jwt", "seen"]
facts = {{ roles = ["doctor", "caregiver"] }}

[[routes]]
name = "admin"
path = "/api/admin"
pools = ["up"]
chain = ["jwt"]
[routes.settings.jwt]
mode = "roles"
roles = ["admin"]

[[routes]]
name = "public"
path = "/public"
pools = ["up"]
chain = ["jwt"]
[routes.settings.jwt]
mode = "anonymous"

[[routes]]
name = "rx"
path = "/api/rx"
pools = ["up"]
chain = ["jwt"]
"#,
        jwks.addr, up.addr
    ));
    c
}

/// Start the gateway with its stderr (the log) in `gateway.log` of its dir.
fn start_logged(config: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prescripcare-hs256.key"), HS_SECRET).unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("PORTCULLIS_CACHE_DIR", cache_dir())
        .env("PORTCULLIS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening ") {
                let _ = tx.send(rest.split_whitespace().nth(1).unwrap().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => panic!("the gateway did not start: {}", std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()),
    };
    Gateway { child, addr, admin: None, dir }
}

fn log_of(gw: &Gateway) -> String {
    std::fs::read_to_string(gw.dir().join("gateway.log")).unwrap_or_default()
}

pub(crate) async fn call(gw: &Gateway, path: &str, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    get(&gw.url(path), &[("authorization", auth.as_str())]).await
}

/// A 401 with `invalid_token` and this description.
#[track_caller]
pub(crate) fn assert_invalid(a: &Answer, description: &str) {
    assert_problem(a, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some(format!("Bearer realm=\"procare\", error=\"invalid_token\", error_description=\"{description}\"").as_str()),
        "body: {}",
        String::from_utf8_lossy(&a.body)
    );
}

struct Keys {
    rsa: Key,
    ec: Key,
    ed: Key,
    hs: Key,
}

fn keys() -> Keys {
    Keys { rsa: Key::rsa("rsa-1"), ec: Key::ec("ec-1"), ed: Key::ed("ed-1"), hs: Key::hs("rx-1", HS_SECRET) }
}

pub(crate) const TUNING: &str = "refresh_ms = 600000\nmin_refetch_interval_ms = 200\ntimeout_ms = 2000";

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_pass_and_bad_ones_get_the_right_answer() {
    let k = keys();
    let jwks = JwksServer::start(jwks_of(&[&k.rsa, &k.ec, &k.ed])).await;
    let up = Upstream::start("clinical").await;
    let gw = start_logged(&config(&up, &jwks, "", TUNING));

    // Good tokens of every kind pass; the upstream sees the claim headers, never the token.
    for key in [&k.rsa, &k.ec, &k.ed] {
        let a = call(&gw, "/api/clinical/vitals", &key.sign(&doctor())).await;
        assert_eq!(a.status, 200, "{:?}: {}", key.alg, String::from_utf8_lossy(&a.body));
        let seen = a.json()["headers"].clone();
        assert_eq!(seen["x-subject"], "doctor-7", "{:?}", key.alg);
        assert_eq!(seen["x-roles"], "doctor");
        assert_eq!(seen["x-email"], "d7@procare.test");
        assert!(seen.get("authorization").is_none(), "authorization is stripped");
        // Later policies see the facts.
        let facts = seen["x-seen-facts"].as_str().unwrap();
        for f in ["jwt.sub=doctor-7", &format!("jwt.iss={ISS}"), "jwt.roles=doctor", "jwt.region=eu-central"] {
            assert!(facts.contains(f), "{f} in {facts}");
        }
    }
    let mut rx = doctor();
    rx["iss"] = json!(HS_ISS);
    rx["aud"] = json!("prescripcare-api");
    let a = call(&gw, "/api/rx/orders", &k.hs.sign(&rx)).await;
    assert_eq!(a.status, 200, "HS256: {}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["headers"]["x-subject"], "doctor-7");
    // A client's own identity headers never pass for a verified caller's.
    let t = k.rsa.sign(&doctor());
    let a = get(&gw.url("/api/clinical/x"), &[("authorization", &format!("Bearer {t}")), ("x-subject", "admin"), ("x-roles", "admin")]).await;
    assert_eq!((a.json()["headers"]["x-subject"].as_str(), a.json()["headers"]["x-roles"].as_str()), (Some("doctor-7"), Some("doctor")));
    let fetches_after_good = jwks.fetches();

    // Refusals.
    let mut c = doctor();
    c["exp"] = json!(now() - 3600);
    assert_invalid(&call(&gw, "/api/clinical", &k.rsa.sign(&c)).await, "token expired");
    let mut c = doctor();
    c["nbf"] = json!(now() + 3600);
    assert_invalid(&call(&gw, "/api/clinical", &k.ec.sign(&c)).await, "token not yet valid");
    let mut c = doctor();
    c["iss"] = json!("https://evil.test");
    assert_invalid(&call(&gw, "/api/clinical", &k.rsa.sign(&c)).await, "unknown issuer");
    let mut c = doctor();
    c["aud"] = json!("billing-api");
    assert_invalid(&call(&gw, "/api/clinical", &k.ed.sign(&c)).await, "wrong audience");
    // Bad signature: another key's signature under the same kid.
    let impostor = Key { kid: "rsa-1".into(), ..Key::rsa("x") };
    assert_invalid(&call(&gw, "/api/clinical", &impostor.sign(&doctor())).await, "invalid signature");
    // Claims changed after signing.
    let t = k.rsa.sign(&doctor());
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = doctor();
    c["realm_access"] = json!({"roles": ["admin"]});
    let tampered = format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2]);
    assert_invalid(&call(&gw, "/api/admin", &tampered).await, "invalid signature");
    // alg none.
    assert_invalid(&call(&gw, "/api/clinical", &forge(&json!({"alg": "none", "typ": "JWT"}), &doctor(), b"")).await, "unsigned tokens (alg none) are not accepted");
    // Algorithm confusion: the RS256 token re-signed as HS256 with the public key as the secret.
    for secret in [k.rsa.jwk.to_string().into_bytes(), URL_SAFE_NO_PAD.decode(k.rsa.jwk["n"].as_str().unwrap()).unwrap()] {
        let confused = Key { alg: Algorithm::HS256, kid: "rsa-1".into(), encoding: EncodingKey::from_secret(&secret), jwk: json!({}) };
        assert_invalid(&call(&gw, "/api/clinical", &confused.sign(&doctor())).await, "algorithm not accepted for this issuer");
        // Even on the issuer that accepts HS256, an RSA key is never an HMAC secret.
        let mut c = doctor();
        c["iss"] = json!(HS_ISS);
        c["aud"] = json!("prescripcare-api");
        assert_invalid(&call(&gw, "/api/rx", &confused.sign(&c)).await, "unknown key id");
    }
    // Unknown kid (a refetch, then still unknown).
    assert_invalid(&call(&gw, "/api/clinical", &Key::ec("ec-unknown").sign(&doctor())).await, "unknown key id");
    // kids with path or SQL characters: refused before any lookup.
    tokio::time::sleep(Duration::from_millis(300)).await; // past min_refetch_interval: a lookup would fetch
    let before = jwks.fetches();
    for kid in ["../../../../etc/passwd", "x' OR '1'='1", "1;DROP TABLE keys--", "..%2f..%2fkeys"] {
        let t = forge(&json!({"alg": "RS256", "kid": kid}), &doctor(), b"signature");
        assert_invalid(&call(&gw, "/api/clinical", &t).await, "invalid key id");
    }
    assert_eq!(jwks.fetches(), before, "no JWKS lookup for a hostile kid");
    // 100 KB token: the head limit (431) or the token limit (401), never 5xx.
    let mut c = doctor();
    c["pad"] = json!("x".repeat(100 * 1024));
    let a = call(&gw, "/api/clinical", &k.rsa.sign(&c)).await;
    assert!(a.status == 431 || a.status == 401, "100 KB token: {}", a.status);
    let mut c = doctor();
    c["pad"] = json!("x".repeat(20 * 1024)); // under the head limit, over max-token-bytes
    assert_invalid(&call(&gw, "/api/clinical", &k.rsa.sign(&c)).await, "token too large");
    // Deeply nested claims: parsed up to serde_json's depth limit, refused past it, never a trap.
    let mut nested = doctor();
    nested["deep"] = serde_json::from_str(&format!("{}{}", "[".repeat(126), "]".repeat(126))).unwrap();
    assert_eq!(call(&gw, "/api/clinical", &k.rsa.sign(&nested)).await.status, 200, "126 levels parse (the guest's stack is big enough)");
    let deep = format!("{}.{}.c2ln", b64(br#"{"alg":"RS256","kid":"rsa-1"}"#), b64(format!("{{\"a\":{}{}}}", "[".repeat(2500), "]".repeat(2500)).as_bytes()));
    assert_invalid(&call(&gw, "/api/clinical", &deep).await, "malformed token claims");
    // Not base64.
    assert_invalid(&call(&gw, "/api/clinical", "!!!.@@@.###").await, "malformed token");
    assert_invalid(&call(&gw, "/api/clinical", "eyJhbGciOiJSUzI1NiJ9").await, "malformed token");
    // Missing token: a challenge without an error code.
    let a = get(&gw.url("/api/clinical"), &[]).await;
    assert_problem(&a, 401);
    assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"procare\""));
    // Valid, but without the role: 403.
    let mut c = doctor();
    c["realm_access"] = json!({"roles": ["patient"]});
    let a = call(&gw, "/api/clinical", &k.rsa.sign(&c)).await;
    assert_problem(&a, 403);
    assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"procare\", error=\"insufficient_scope\", error_description=\"a required role is missing\""));
    let a = call(&gw, "/api/admin", &k.rsa.sign(&doctor())).await;
    assert_problem(&a, 403);
    // Anonymous route: no token, or a bad one, passes without identity.
    let a = get(&gw.url("/public/x"), &[("x-subject", "spoofed")]).await;
    assert_eq!(a.status, 200);
    assert!(a.json()["headers"].get("x-subject").is_none(), "identity headers removed for anonymous callers");
    assert_eq!(call(&gw, "/public/x", "!!!.@@@.###").await.status, 200);
    assert_eq!(call(&gw, "/public/x", &k.rsa.sign(&doctor())).await.json()["headers"]["x-subject"], "doctor-7");

    assert!(jwks.fetches() <= fetches_after_good + 2, "refusals cost at most the unknown-kid refetch: {}", jwks.fetches());
    assert_eq!(up.requests.load(Ordering::SeqCst), 9, "only the accepted requests reached the upstream");

    // Audited with the reason, never the token.
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 29).await);
    let text = std::fs::read_to_string(gw.dir().join("audit.jsonl")).unwrap();
    assert!(!text.contains("eyJ"), "no token in the audit log");
    assert!(!text.contains("doctor-7"), "subjects are pseudonymised");
    assert!(text.contains("token expired") && text.contains("a required role is missing") && text.contains("invalid key id"), "{text}");
    assert!(!log_of(&gw).contains("eyJ"), "no token in the gateway log");
    // The std guest's WASI imports are linked as traps: no path above may touch one.
    for r in gw.audit_records() {
        let verdicts = r["verdicts"].to_string();
        assert!(!verdicts.contains("failed:"), "a policy failed (trapped?): {r}");
        if r["status"] != 431 {
            assert!(r["policies"]["jwt"]["outcome"].is_string(), "every jwt decision is audited: {r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_passes_at_once_with_bounded_fetches_under_a_thousand_concurrent_requests() {
    let old = Key::rsa("2026-10");
    let jwks = JwksServer::start(jwks_of(&[&old])).await;
    let up = Upstream::start("clinical").await;
    // Room for 1,000 requests in policies at once, and a deadline that a
    // 2-core machine verifying 1,000 RS256 signatures in a burst can meet.
    let head = "[runtime]\nmax_instances = 1200\npolicy_deadline_ms = 20000\n";
    let gw = start_logged(&config(&up, &jwks, head, TUNING));
    assert_eq!(call(&gw, "/api/clinical", &old.sign(&doctor())).await.status, 200);

    // The issuer rotates: a token with the new key passes on its first request.
    let new = Key::rsa("2026-11");
    jwks.serve(jwks_of(&[&old, &new]));
    tokio::time::sleep(Duration::from_millis(300)).await; // past min_refetch_interval_ms
    let before = jwks.fetches();
    let a = call(&gw, "/api/clinical", &new.sign(&doctor())).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(jwks.fetches() - before, 1, "one unknown-kid refetch");

    // Rotated again; 1,000 concurrent requests all carry the newest key.
    let newest = Key::ec("2026-12");
    jwks.serve(jwks_of(&[&new, &newest]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = jwks.fetches();
    let token = newest.sign(&doctor());
    let client = client();
    let url = gw.url("/api/clinical/burst");
    let started = std::time::Instant::now();
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url, auth) = (client.clone(), url.clone(), format!("Bearer {token}"));
            tokio::spawn(async move {
                let req = http::Request::get(url).header("authorization", auth).body(full("")).unwrap();
                send(&client, req).await.status
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for r in requests {
        *statuses.entry(r.await.unwrap()).or_insert(0) += 1;
    }
    let fetched = jwks.fetches() - before;
    eprintln!("1,000 concurrent requests after a rotation: {statuses:?} in {:?}, {fetched} JWKS fetch(es)", started.elapsed());
    assert_eq!(statuses.get(&200), Some(&1000), "{statuses:?}");
    assert!((1..=2).contains(&fetched), "bounded refetches under 1,000 concurrent requests: {fetched}");
    // The retired key no longer verifies.
    assert_invalid(&call(&gw, "/api/clinical", &old.sign(&doctor())).await, "unknown key id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_jwks_server_keeps_known_keys_working_and_is_logged() {
    let k = keys();
    let jwks = JwksServer::start(jwks_of(&[&k.rsa, &k.ec])).await;
    let up = Upstream::start("clinical").await;
    // A short refresh interval, so the gateway notices the outage quickly.
    let gw = start_logged(&config(&up, &jwks, "", "refresh_ms = 300\nmin_refetch_interval_ms = 100\ntimeout_ms = 500"));
    assert_eq!(call(&gw, "/api/clinical", &k.rsa.sign(&doctor())).await.status, 200);

    jwks.stop();
    let logged = eventually(Duration::from_secs(10), || log_of(&gw).contains("JWKS fetch failed; serving the last good key set")).await;
    assert!(logged, "the outage is logged: {}", log_of(&gw));
    assert!(log_of(&gw).contains(ISS));
    for key in [&k.rsa, &k.ec] {
        let a = call(&gw, "/api/clinical", &key.sign(&doctor())).await;
        assert_eq!(a.status, 200, "{:?} still passes on the last good set: {}", key.alg, String::from_utf8_lossy(&a.body));
    }
    // A key the gateway never saw cannot be fetched now: refused as unknown.
    assert_invalid(&call(&gw, "/api/clinical", &Key::ed("ed-9").sign(&doctor())).await, "unknown key id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_weak_or_unsafe_settings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), b"only-sixteen-byt").unwrap();
    let config = format!(
        r#"[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.jwt]
component = "{JWT_AUTH}"
[policies.jwt.settings.issuers.a]
issuer = "a"
algorithms = ["RS256", "none"]

[[jwks]]
issuer = "b"
secret_file = "short.key"

[[jwks]]
issuer = "c"
url = "https://idp.example/certs"

[[pools]]
name = "up"
targets = ["127.0.0.1:9"]

[[routes]]
name = "r"
path = "/"
pools = ["up"]
chain = ["jwt"]
"#
    );
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, &config).unwrap();
    let out = run_check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml:16:15: jwks[0].secret_file:") && err.contains("16 bytes; at least 32 are required"), "{err}");
    assert!(err.contains("bad.toml:20:7: jwks[1].url: https is not supported"), "{err}");

    // With the files fixed, check-config speaks: `none` is never accepted, and an HS issuer needs 32 bytes.
    std::fs::write(dir.path().join("short.key"), b"0123456789abcdef0123456789abcdef").unwrap();
    let fixed = config.replace("url = \"https://idp.example/certs\"", "url = \"http://127.0.0.1:9/certs\"");
    std::fs::write(&path, &fixed).unwrap();
    let out = run_check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("policies.jwt: check-config refused the settings: setting \"issuers.a.algorithms\": \"none\" (unsigned tokens) is never accepted"), "{err}");
    let hs = fixed.replace("algorithms = [\"RS256\", \"none\"]", "algorithms = [\"HS256\"]\njwks = \"short\"");
    let hs = hs.replace("issuer = \"b\"", "issuer = \"short\"");
    std::fs::write(dir.path().join("short.key"), b"0123456789abcdef0123456789abcdef").unwrap();
    std::fs::write(&path, &hs).unwrap();
    let out = run_check(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = hs.replace("jwks = \"short\"", "jwks = \"nobody\"");
    std::fs::write(&path, &missing).unwrap();
    let out = run_check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("setting \"issuers.a.jwks\": the gateway has no [[jwks]] entry for \"nobody\""), "{err}");
    // The verified-token cache's settings, for the policy and for a route.
    let big = hs.replace("[policies.jwt.settings.issuers.a]", "[policies.jwt.settings]\ncache-entries = 2000000\n[policies.jwt.settings.issuers.a]");
    std::fs::write(&path, &big).unwrap();
    let err = String::from_utf8_lossy(&run_check(&path).stderr).to_string();
    assert!(err.contains("policies.jwt: check-config refused the settings: setting \"cache-entries\": at most 1000000 (0 turns the cache off)"), "{err}");
    let route = hs.replace("chain = [\"jwt\"]", "chain = [\"jwt\"]\n[routes.settings.jwt]\ncache-max-ttl-ms = 10");
    std::fs::write(&path, &route).unwrap();
    let err = String::from_utf8_lossy(&run_check(&path).stderr).to_string();
    assert!(err.contains("routes[0].settings.jwt: check-config refused the settings: setting \"cache-max-ttl-ms\": expected 1000..=3600000"), "{err}");
}
