//! The verified-token cache end to end: the real binary, the real jwt-auth
//! component, keys generated here, the JWKS served by a real loopback
//! server. Hits and misses are read from `/metrics`
//! (`portcullis_token_cache_lookups_total`) and the audit record
//! (`policies.jwt.cache`); every assertion is about behaviour, none about
//! timings.

use crate::jwt::*;
use crate::support::*;
use serde_json::json;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

/// jwt.rs's gateway config with an admin listener, no file watching (reloads
/// are explicit) and no leeway for procare (so a token expires at its `exp`).
fn cache_config(up: &Upstream, jwks: &JwksServer) -> String {
    let admin = "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n";
    config(up, jwks, admin, TUNING)
        .replace("audit_log = \"audit.jsonl\"", "audit_log = \"audit.jsonl\"\nwatch = false")
        .replace("region-claim = \"region\"", "region-claim = \"region\"\nleeway-ms = 0")
}

fn start(config: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prescripcare-hs256.key"), HS_SECRET).unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    Gateway::start_in(dir, config)
}

/// The jwt policy's cache lookups so far: (hits, misses).
async fn lookups(gw: &Gateway) -> (u64, u64) {
    let text = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    let value = |result: &str| {
        let name = format!("portcullis_token_cache_lookups_total{{policy=\"jwt\",result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(name.as_str())).map_or(0, |v| v.trim().parse().unwrap())
    };
    (value("hit"), value("miss"))
}

async fn entries(gw: &Gateway) -> u64 {
    let text = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    text.lines().find_map(|l| l.strip_prefix("portcullis_token_cache_entries{policy=\"jwt\"} ")).map_or(0, |v| v.trim().parse().unwrap())
}

/// Send one request and say how the cache answered it: `(status, hit?)`
/// (`None`: no lookup was made).
async fn probe(gw: &Gateway, path: &str, token: &str) -> (Answer, Option<bool>) {
    let before = lookups(gw).await;
    let a = call(gw, path, token).await;
    let after = lookups(gw).await;
    let lookup = match (after.0 - before.0, after.1 - before.1) {
        (0, 0) => None,
        (1, 0) => Some(true),
        (0, 1) => Some(false),
        other => panic!("one request made {other:?} lookups"),
    };
    (a, lookup)
}

async fn reload(gw: &Gateway, config: &str) {
    std::fs::write(gw.dir().join("gateway.toml"), config).unwrap();
    let a = gw.admin("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(a.status, 200, "reload: {}", String::from_utf8_lossy(&a.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_hits_the_cache_until_it_expires_and_tampering_misses() {
    let (rsa, ec) = (Key::rsa("rsa-1"), Key::ec("ec-1"));
    let jwks = JwksServer::start(jwks_of(&[&rsa, &ec])).await;
    let up = Upstream::start("clinical").await;
    let gw = start(&cache_config(&up, &jwks));

    // RS256 and ES256: the first request verifies (a miss), the second is a hit;
    // both pass with the same identity upstream.
    // Signed once: `doctor()` stamps the current second into the claims.
    let (rsa_token, ec_token) = (rsa.sign(&doctor()), ec.sign(&doctor()));
    for (key, t) in [(&rsa, &rsa_token), (&ec, &ec_token)] {
        let (a, lookup) = probe(&gw, "/api/clinical/vitals", t).await;
        assert_eq!((a.status, lookup), (200, Some(false)), "{:?} first: {}", key.alg, String::from_utf8_lossy(&a.body));
        let fetches = jwks.fetches();
        let (a, lookup) = probe(&gw, "/api/clinical/vitals", t).await;
        assert_eq!((a.status, lookup), (200, Some(true)), "{:?} second", key.alg);
        assert_eq!(a.json()["headers"]["x-subject"], "doctor-7", "facts and headers on a hit too");
        assert!(a.json()["headers"]["x-seen-facts"].as_str().unwrap().contains("jwt.roles=doctor"));
        assert_eq!(jwks.fetches(), fetches);
    }
    assert_eq!(entries(&gw).await, 2);
    let audited = |cache: &str| gw.audit_records().iter().filter(|r| r["policies"]["jwt"]["cache"] == cache).count();
    assert!(eventually(Duration::from_secs(5), || audited("hit") == 2 && audited("miss") == 2).await, "audit: cache = hit / miss");

    // A tampered token (other bytes: changed claims, or one character of the
    // signature) is a miss, verified, and refused.
    let t = &rsa_token;
    assert_eq!(probe(&gw, "/api/clinical", t).await.1, Some(true));
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = doctor();
    c["realm_access"] = json!({"roles": ["admin"]});
    let b64 = |v: &serde_json::Value| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v.to_string());
    let claims_changed = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    let mut sig = parts[2].to_string();
    let mid = sig.len() / 2;
    let other = if &sig[mid..=mid] == "A" { "B" } else { "A" };
    sig.replace_range(mid..=mid, other);
    let sig_changed = format!("{}.{}.{sig}", parts[0], parts[1]);
    for tampered in [claims_changed, sig_changed] {
        let (a, lookup) = probe(&gw, "/api/clinical", &tampered).await;
        assert_eq!(lookup, Some(false), "a tampered token is a miss");
        assert_invalid(&a, "invalid signature");
    }

    // Roles are the route's, checked on every hit: a patient's valid token is
    // remembered, and still refused here on its second request.
    let mut p = doctor();
    p["realm_access"] = json!({"roles": ["patient"]});
    let t = ec.sign(&p);
    assert_eq!(probe(&gw, "/api/clinical", &t).await.0.status, 403);
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!((a.status, lookup), (403, Some(true)));
    // A route whose overrides change the policy's settings has its own scope.
    assert_eq!(probe(&gw, "/api/clinical", &ec_token).await.1, Some(true));
    let (a, lookup) = probe(&gw, "/public/x", &ec_token).await;
    assert_eq!((a.status, lookup), (200, Some(false)), "another route's settings: verified again");

    // Expired while cached: a token with exp a few seconds ahead passes and
    // hits, then is refused once exp has passed (bounded wait).
    let mut short = doctor();
    let exp = now() + 3;
    short["exp"] = json!(exp);
    let t = rsa.sign(&short);
    assert_eq!(probe(&gw, "/api/clinical", &t).await.0.status, 200);
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!((a.status, lookup), (200, Some(true)));
    assert!(eventually(Duration::from_secs(5), || now() > exp).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!(lookup, Some(false), "the entry expired with the token");
    assert_invalid(&a, "token expired");

    // Nothing of the tokens in the log, the audit or the metrics.
    let text = std::fs::read_to_string(gw.dir().join("audit.jsonl")).unwrap();
    let metrics = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    assert!(!text.contains("eyJ") && !metrics.contains("eyJ"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_key_changes_never_serve_a_stale_verification() {
    let (rsa, ec) = (Key::rsa("rsa-1"), Key::ec("ec-1"));
    let jwks = JwksServer::start(jwks_of(&[&rsa, &ec])).await;
    let up = Upstream::start("clinical").await;
    let base = cache_config(&up, &jwks);
    let gw = start(&base);
    let t = rsa.sign(&doctor());
    assert_eq!(probe(&gw, "/api/clinical", &t).await.0.status, 200);
    assert_eq!(probe(&gw, "/api/clinical", &t).await.1, Some(true));

    // A reload that leaves the policy and its keys alone keeps the cache.
    let extra_route = "\n[[routes]]\nname = \"extra\"\npath = \"/extra\"\npools = [\"up\"]\nchain = [\"jwt\"]\n";
    reload(&gw, &format!("{base}{extra_route}")).await;
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!((a.status, lookup), (200, Some(true)), "an unrelated reload keeps verified tokens");

    // A reload that changes the audience: the cached token is a miss and refused.
    let other_aud = base.replace("audience = [\"procare-api\"]", "audience = [\"billing-api\"]");
    assert_ne!(other_aud, base);
    reload(&gw, &other_aud).await;
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!(lookup, Some(false), "new settings: a new scope");
    assert_invalid(&a, "wrong audience");

    // Back to the first settings: the entry made under them is still good.
    reload(&gw, &base).await;
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!((a.status, lookup), (200, Some(true)), "the same settings and keys again: the same scope");

    // A reload that changes only where the issuer's keys come from (a check
    // a hit skips): the token is verified against the new keys, and refused.
    std::fs::write(gw.dir().join("other-jwks.json"), jwks_of(&[&Key::rsa("rsa-1")])).unwrap();
    let moved = base.replace("leeway-ms = 0", "leeway-ms = 0\njwks = \"procare-other\"")
        + "\n[[jwks]]\nissuer = \"procare-other\"\nfile = \"other-jwks.json\"\n";
    reload(&gw, &moved).await;
    let (a, lookup) = probe(&gw, "/api/clinical", &t).await;
    assert_eq!(lookup, Some(false));
    assert_invalid(&a, "invalid signature");

    // The issuer withdraws a key: once the gateway has fetched the new set,
    // a token verified with the old key is a miss, and refused.
    reload(&gw, &base).await;
    let e = ec.sign(&doctor());
    assert_eq!(probe(&gw, "/api/clinical", &e).await.0.status, 200);
    assert_eq!(probe(&gw, "/api/clinical", &e).await.1, Some(true));
    jwks.serve(jwks_of(&[&rsa]));
    tokio::time::sleep(Duration::from_millis(300)).await; // past min_refetch_interval_ms
    // An unknown kid makes the gateway fetch the set (without ec-1 now).
    assert_invalid(&call(&gw, "/api/clinical", &Key::ec("ec-2").sign(&doctor())).await, "unknown key id");
    let (a, lookup) = probe(&gw, "/api/clinical", &e).await;
    assert_eq!(lookup, Some(false), "new keys: a new scope");
    assert_invalid(&a, "unknown key id");
}
