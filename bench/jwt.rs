//! Micro-benchmark: what the jwt-auth policy costs per request, in µs.
//!
//! For each algorithm: Store::new + instantiate + `on-request` (settings,
//! token parse, `io.jwks` from the host cache, signature, claims, verdict) +
//! drop, in a loop on one thread — the fresh-instance path every request
//! takes. Keys are generated here; the JWKS comes from a `[[jwks]] file`, so
//! no network is involved. The `missing token` row is the floor: the same
//! call without any verification.
//!
//! Three columns per algorithm (the verified-token cache, `crate::token_cache`):
//! **no cache** (a route with `cache-entries = 0`: every request verifies),
//! **cache hit** (the same token again: the signature check is skipped,
//! everything else runs) and **cache miss** (a new token each call: verify,
//! then put).
//!
//! Usage: cargo bench --profile perf -p portcullis --bench jwt -- [iterations]   (default 2000)
//! (`PORTCULLIS_BENCH_JWT_WASM=path.wasm` measures another build of the component.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header as JwtHeader};
use portcullis::config::Source;
use portcullis::runtime::bindings::types;
use portcullis::runtime::{PolicyState, hooks};
use portcullis::snapshot::{Link, Snapshot};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const ISS: &str = "https://auth.procare.test/realms/procare";
const SECRET: &[u8] = b"prescripcare-shared-secret-0123456789abcdef";

fn main() {
    let iterations: u32 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run(iterations));
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// (algorithm, signing key, public JWK)
fn keys() -> Vec<(Algorithm, EncodingKey, Value)> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let rsa = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let ec = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = ec.verifying_key().to_encoded_point(false);
    let ed = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    vec![
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_der(rsa.to_pkcs1_der().unwrap().as_bytes()),
            json!({"kty": "RSA", "kid": "rsa-1", "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())}),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_der(ec.to_pkcs8_der().unwrap().as_bytes()),
            json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed.to_pkcs8_der().unwrap().as_bytes()),
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(ed.verifying_key().as_bytes())}),
        ),
        (Algorithm::HS256, EncodingKey::from_secret(SECRET), json!({"kty": "oct", "kid": "hs-1", "k": b64(SECRET)})),
    ]
}

fn head(token: Option<&str>) -> types::RequestHead {
    let h = |n: &str, v: &str| types::Header { name: n.into(), value: v.as_bytes().to_vec() };
    let mut headers = vec![
        h("host", "api.procare.health"),
        h("user-agent", "Mozilla/5.0 (X11; Linux x86_64) ProCare-Dashboard/3.2"),
        h("accept", "application/json"),
        h("x-forwarded-for", "203.0.113.9"),
        h("x-request-id", "0193a5c2e4b17c3f9d2e8a6b5c4d3e2f"),
    ];
    if let Some(t) = token {
        headers.push(h("authorization", &format!("Bearer {t}")));
    }
    types::RequestHead {
        id: "0193a5c2e4b17c3f9d2e8a6b5c4d3e2f".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.procare.health".into(),
        path: "/api/clinical/patients/42/vitals".into(),
        query: None,
        headers,
        client_ip: "203.0.113.9".into(),
        listener: "public".into(),
        route: Some("clinical".into()),
        facts: vec![("route.name".into(), "clinical".into()), ("route.pools".into(), "clinical".into()), ("route.roles".into(), "doctor,caregiver".into())],
    }
}

async fn once(snap: &Snapshot, link: &Link, head: &types::RequestHead) -> types::Verdict {
    let p = &link.policy;
    let state = PolicyState::new(p.name.clone(), "bench".into(), p.settings.clone(), link.overrides.clone(), snap.runtime.memory_cap(), snap.services.clone());
    hooks::on_request(&snap.runtime, &p.module, state, head).await.0.expect("policy call")
}

async fn run(iterations: u32) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = keys();
    let jwks = json!({"keys": keys.iter().map(|(_, _, j)| j.clone()).collect::<Vec<_>>()});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let config = format!(
        r#"
[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.jwt]
component = "{}"
[policies.jwt.settings]
claim-headers = {{ x-email = "email" }}
[policies.jwt.settings.issuers.procare]
issuer = "{ISS}"
algorithms = ["RS256", "ES256", "EdDSA", "HS256"]
audience = ["procare-api"]
roles-claim = "realm_access.roles"
region-claim = "region"

[[jwks]]
issuer = "{ISS}"
file = "jwks.json"

[[pools]]
name = "clinical"
targets = ["127.0.0.1:9"]

[[routes]]
name = "clinical"
path = "/api/clinical"
pools = ["clinical"]
chain = ["jwt"]

[[routes]]
name = "nocache"
path = "/api/nocache"
pools = ["clinical"]
chain = ["jwt"]
[routes.settings.jwt]
cache-entries = 0
"#,
        // An override for trying other builds of the component (profiles, allocators).
        std::env::var("PORTCULLIS_BENCH_JWT_WASM").unwrap_or_else(|_| env!("PORTCULLIS_JWT_AUTH_WASM").to_string())
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let source = Source::read(&path).unwrap();
    let snap = Arc::new(portcullis::serve::load(&source).await.unwrap_or_else(|e| panic!("{e}")));
    snap.start(); // sizes the verified-token caches, as `serve` does
    let cached = &snap.routes["clinical"].chain[0];
    let uncached = &snap.routes["nocache"].chain[0];

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({
        "iss": ISS, "sub": "doctor-7", "aud": "procare-api", "exp": now + 3600, "iat": now,
        "realm_access": {"roles": ["doctor"]}, "region": "eu-central", "email": "d7@procare.test",
    });
    // Tokens that differ only in `jti`, for the miss column: each verifies once.
    let misses = (iterations / 4).clamp(50, 500);
    let sign = |alg: Algorithm, key: &EncodingKey, kid: &Value, jti: Option<u32>| {
        let mut h = JwtHeader::new(alg);
        h.kid = kid.as_str().map(str::to_string);
        let mut c = claims.clone();
        if let Some(j) = jti {
            c["jti"] = json!(format!("bench-{j}"));
        }
        jsonwebtoken::encode(&h, &c, key).unwrap()
    };

    println!("jwt-auth, fresh instance per call: Store::new + instantiate + on-request + drop, µs per call ({iterations} iterations; miss: {misses} distinct tokens; one thread)");
    println!("| token | no cache | cache hit | cache miss (verify + put) | verdict |");
    println!("|---|---:|---:|---:|---|");
    let floor = measure(&snap, uncached, std::slice::from_ref(&head(None)), iterations).await;
    println!("| missing token (floor: instantiate + settings + 401) | {floor:.1} | – | – | {} |", verdict(&snap, uncached, &head(None)).await);
    for (alg, key, jwk) in &keys {
        let same = head(Some(&sign(*alg, key, &jwk["kid"], None)));
        let fresh: Vec<_> = (0..misses).map(|j| head(Some(&sign(*alg, key, &jwk["kid"], Some(j))))).collect();
        let none = measure(&snap, uncached, std::slice::from_ref(&same), iterations).await;
        let hit = measure(&snap, cached, std::slice::from_ref(&same), iterations).await;
        let miss = measure(&snap, cached, &fresh, 0).await;
        println!("| {alg:?} | {none:.1} | {hit:.1} | {miss:.1} | {} |", verdict(&snap, cached, &same).await);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn verdict(snap: &Snapshot, link: &Link, head: &types::RequestHead) -> String {
    match once(snap, link, head).await {
        types::Verdict::Proceed(_) => "proceed".to_string(),
        types::Verdict::Respond(r) => format!("respond {}", r.status),
    }
}

/// µs per call: `iterations` calls cycling through `heads` after a warm-up;
/// with `iterations` 0, each head once and no warm-up (every call a first).
async fn measure(snap: &Snapshot, link: &Link, heads: &[types::RequestHead], iterations: u32) -> f64 {
    let n = if iterations == 0 { heads.len() } else { iterations as usize };
    if iterations > 0 {
        for i in 0..(n / 10).max(10) {
            once(snap, link, &heads[i % heads.len()]).await;
        }
    }
    let start = Instant::now();
    for i in 0..n {
        std::hint::black_box(once(snap, link, &heads[i % heads.len()]).await);
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}
