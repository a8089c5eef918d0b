//! The four platforms' configs end to end. Each test loads the REAL file from
//! `policies/`, parses it with `toml` and changes only what must change to
//! run on loopback: listener and admin addresses (port 0), pool targets (the
//! stand-ins below), component paths (the components this build made), the
//! regions file's path, the audit log (the test's dir), the JWKS URLs (a
//! test JWKS server) and `trusted_proxies` (the test client stands where
//! the load balancer stands). Routes, chains, policies, settings and limits
//! are the files' own, so a change to a platform's rules shows here.

use crate::jwt::{JwksServer, Key, jwks_of, now};
use crate::support::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use toml::{Table, Value as Toml};

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A platform's config as written in `policies/`.
fn load(file: &str) -> Table {
    let path = policies_dir().join(file);
    std::fs::read_to_string(&path).unwrap().parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The component this build made for a config's component path (by file name).
fn built_component(path: &str) -> &'static str {
    match Path::new(path).file_name().and_then(|n| n.to_str()) {
        Some("jwt_auth.wasm") => env!("PORTCULLIS_JWT_AUTH_WASM"),
        Some("rate_limit.wasm") => env!("PORTCULLIS_RATE_LIMIT_WASM"),
        Some("residency.wasm") => env!("PORTCULLIS_RESIDENCY_WASM"),
        Some("security_headers.wasm") => env!("PORTCULLIS_SECURITY_HEADERS_WASM"),
        Some("webhook_signature.wasm") => env!("PORTCULLIS_WEBHOOK_SIGNATURE_WASM"),
        other => panic!("no built component for {path} ({other:?})"),
    }
}

fn tables(config: &Table, key: &str) -> Vec<Table> {
    config.get(key).and_then(Toml::as_array).map(|a| a.iter().map(|t| t.as_table().unwrap().clone()).collect()).unwrap_or_default()
}

fn set_tables(config: &mut Table, key: &str, list: Vec<Table>) {
    config.insert(key.into(), Toml::Array(list.into_iter().map(Toml::Table).collect()));
}

/// Rewrite `config` for loopback. `targets`: every pool's stand-in (a pool
/// without one is an error, so nothing leaves loopback); `jwks`: the test
/// JWKS server for every `[[jwks]] url`.
fn localize(mut config: Table, targets: &BTreeMap<&str, SocketAddr>, jwks: Option<SocketAddr>) -> String {
    let gateway = config.entry("gateway").or_insert_with(|| Toml::Table(Table::new())).as_table_mut().unwrap();
    gateway.insert("audit_log".into(), "audit.jsonl".into());
    gateway.remove("cache_dir"); // PORTCULLIS_CACHE_DIR: the tests' shared cache
    gateway.insert("trusted_proxies".into(), Toml::Array(vec!["127.0.0.1/32".into()]));

    let mut listeners = tables(&config, "listeners");
    for l in &mut listeners {
        l.insert("address".into(), "127.0.0.1:0".into());
        // The load balancer's PROXY header: the test client connects directly.
        l.remove("proxy_protocol");
    }
    set_tables(&mut config, "listeners", listeners);
    if let Some(admin) = config.get_mut("admin").and_then(Toml::as_table_mut) {
        admin.insert("address".into(), "127.0.0.1:0".into());
    }

    let mut pools = tables(&config, "pools");
    for p in &mut pools {
        let name = p["name"].as_str().unwrap().to_string();
        let addr = targets.get(name.as_str()).unwrap_or_else(|| panic!("no stand-in for pool {name}"));
        p.insert("targets".into(), Toml::Array(vec![addr.to_string().into()]));
    }
    set_tables(&mut config, "pools", pools);

    if let Some(policies) = config.get_mut("policies").and_then(Toml::as_table_mut) {
        for (_, def) in policies.iter_mut() {
            let def = def.as_table_mut().unwrap();
            let component = def["component"].as_str().unwrap().to_string();
            if !component.starts_with("builtin:") {
                def.insert("component".into(), built_component(&component).into());
            }
        }
    }
    if let Some(residency) = config.get_mut("residency").and_then(Toml::as_table_mut) {
        let regions = residency["regions"].as_str().unwrap().to_string();
        residency.insert("regions".into(), policies_dir().join(regions).to_str().unwrap().into());
    }
    let mut sources = tables(&config, "jwks");
    for s in &mut sources {
        if s.contains_key("url") {
            let jwks = jwks.expect("the config fetches a JWKS: give the test a JWKS server");
            s.insert("url".into(), format!("http://{jwks}/jwks.json").into());
        }
    }
    if !sources.is_empty() {
        set_tables(&mut config, "jwks", sources);
    }
    toml::to_string(&config).unwrap()
}

/// One stand-in (an echoing upstream) per pool of the config, named after the pool.
async fn stand_ins(config: &Table) -> BTreeMap<String, Upstream> {
    let mut all = BTreeMap::new();
    for pool in config["pools"].as_array().unwrap() {
        let name = pool["name"].as_str().unwrap().to_string();
        all.insert(name.clone(), Upstream::start(&name).await);
    }
    all
}

fn addrs(stand_ins: &BTreeMap<String, Upstream>) -> BTreeMap<&str, SocketAddr> {
    stand_ins.iter().map(|(k, s)| (k.as_str(), s.addr)).collect()
}

// ---------------------------------------------------------------------------
// ProCare

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procare_a_patient_reaches_clinical_monitor_and_not_doctor_only_routes() {
    let mut config = load("procare.toml");
    // The operator's Evolution API key: its digest replaces the shipped one.
    const EVOLUTION_KEY: &str = "evolution-instance-key-of-the-test";
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(EVOLUTION_KEY.as_bytes()));
    config["policies"]["whatsapp-webhook"]["settings"]["api-key-sha256"] = Toml::Array(vec![digest.into()]);
    let services = stand_ins(&config).await;
    // The issuer's own settings, read from the file.
    let issuer = config["policies"]["jwt"]["settings"]["issuers"]["procare"]["issuer"].as_str().unwrap().to_string();
    let key = Key::ec("procare-test");
    let jwks = JwksServer::start(jwks_of(&[&key])).await;
    let gw = Gateway::start(&localize(config, &addrs(&services), Some(jwks.addr)));

    let token_from = |roles: &[&str], residency: &str, consent: &[&str]| {
        key.sign(&json!({
            "iss": issuer, "sub": "patient-42", "aud": "procare-api", "exp": now() + 300, "iat": now() - 5,
            "realm_access": {"roles": roles}, "residency": residency, "consent": {"residency": consent},
        }))
    };
    let token = |roles: &[&str]| token_from(roles, "EU", &[]);
    let patient = format!("Bearer {}", token(&["patient"]));
    let doctor = format!("Bearer {}", token(&["doctor"]));
    let host = ("host", "api.procare.health");

    // A patient's vitals: jwt lets the patient role in, residency keeps an
    // EU resident in the EU pool (never clinical-monitor-ash).
    let a = get(&gw.url("/api/clinical/vitals?patient=42"), &[host, ("authorization", &patient)]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "clinical-monitor");
    assert_eq!(echo["path"], "/api/clinical/vitals");
    assert!(echo["headers"].get("authorization").is_none(), "strip-authorization: the token stays at the gateway");
    assert_eq!(echo["headers"]["x-subject"], "patient-42");
    assert_eq!(services["clinical-monitor"].requests(), ["/api/clinical/vitals"]);
    assert!(services["clinical-monitor-ash"].requests().is_empty(), "an EU patient's data went to the US pool");

    // The patient's own services answer too.
    assert_eq!(get(&gw.url("/api/lifestyle/plan"), &[host, ("authorization", &patient)]).await.status, 200);

    // Doctor-only routes: 403 from jwt for the patient, nothing forwarded.
    for path in ["/api/doctor/inbox", "/api/insights/cohort"] {
        let a = get(&gw.url(path), &[host, ("authorization", &patient)]).await;
        let p = assert_problem(&a, 403);
        assert!(p["detail"].as_str().unwrap_or_default().contains("role"), "{p}");
    }
    assert!(services["doctor-bridge"].requests().is_empty(), "doctor-bridge got {:?}", services["doctor-bridge"].requests());
    assert!(services["health-insights"].requests().is_empty(), "health-insights got {:?}", services["health-insights"].requests());

    // The same route with a doctor's token does reach doctor-bridge, and no
    // token at all is 401: the 403 above was the role, not the route.
    let a = get(&gw.url("/api/doctor/inbox"), &[host, ("authorization", &doctor)]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "doctor-bridge");
    assert_problem(&get(&gw.url("/api/doctor/inbox"), &[host]).await, 401);

    // The India rule (regions.toml): an Indian patient's health data goes
    // to the EU only with recorded consent; ProCare has no pool in India,
    // so without consent the answer is 451 and nothing is forwarded.
    let before = services["clinical-monitor"].requests().len();
    let indian = format!("Bearer {}", token_from(&["patient"], "IN", &[]));
    let p = assert_problem(&get(&gw.url("/api/clinical/vitals"), &[host, ("authorization", &indian)]).await, 451);
    assert!(p.to_string().contains("in-health"), "the 451 names the rule: {p}");
    assert_eq!(services["clinical-monitor"].requests().len(), before);
    let consenting = format!("Bearer {}", token_from(&["patient"], "IN", &["eu-processing"]));
    let a = get(&gw.url("/api/clinical/vitals"), &[host, ("authorization", &consenting)]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "clinical-monitor", "with consent: the EU pool");
    assert!(services["clinical-monitor-ash"].requests().is_empty());

    // The doctor dashboard's origin is a CORS origin of the API.
    let a = get(&gw.url("/api/clinical/vitals"), &[host, ("authorization", &patient), ("origin", "https://doctor.procare.health")]).await;
    assert_eq!(a.header("access-control-allow-origin"), Some("https://doctor.procare.health"));

    // The WhatsApp webhook (Evolution API): its apikey is checked before the
    // engagement engine sees anything; the key itself is not forwarded.
    let before = services["engagement-engine"].requests().len();
    assert_problem(&request("POST", &gw.url("/webhooks/whatsapp"), &[host]).await, 401);
    assert_problem(&request("POST", &gw.url("/webhooks/whatsapp"), &[host, ("apikey", "a-guess")]).await, 401);
    assert_eq!(services["engagement-engine"].requests().len(), before, "a refused webhook reached the service");
    let a = request("POST", &gw.url("/webhooks/whatsapp"), &[host, ("apikey", EVOLUTION_KEY)]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "engagement-engine");
    assert!(a.json()["headers"].get("apikey").is_none(), "strip-header: the key stays at the gateway");
}

// ---------------------------------------------------------------------------
// Nutri

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nutri_the_ml_service_is_unreachable_from_outside() {
    let config = load("nutri.toml");
    let pools = config["pools"].as_array().unwrap();
    let ml = pools.iter().find(|p| p["name"].as_str() == Some("nutri-ml")).expect("nutri.toml has the ML pool");
    assert_eq!(ml.get("internal").and_then(Toml::as_bool), Some(true), "the ML pool is marked internal");
    let issuer = config["policies"]["jwt"]["settings"]["issuers"]["nutri"]["issuer"].as_str().unwrap().to_string();
    let services = stand_ins(&config).await;
    let key = Key::ec("nutri-test");
    let jwks = JwksServer::start(jwks_of(&[&key])).await;
    let text = localize(config.clone(), &addrs(&services), Some(jwks.addr));
    let gw = Gateway::start(&text);
    let token = format!("Bearer {}", key.sign(&json!({"iss": issuer, "sub": "user-1", "aud": "nutri-app", "exp": now() + 300, "roles": ["user"]})));

    // The backend is public: sign-in without a token, the API with one.
    let a = request("POST", &gw.url("/v1/auth/login"), &[("host", "api.nutri.app")]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "nutri-backend");
    let a = get(&gw.url("/v1/meals/today"), &[("host", "api.nutri.app"), ("authorization", &token)]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "nutri-backend");

    // Whatever an outsider asks for, with or without a token, no request
    // reaches the ML service: every other host and path is the router's 404.
    let ml_addr = services["nutri-ml"].addr.to_string();
    let attempts: &[(&str, &str)] = &[
        ("api.nutri.app", "/"),
        ("api.nutri.app", "/predict"),
        ("api.nutri.app", "/ml/score"),
        ("api.nutri.app", "/internal/nutri-ml/v1/score"),
        ("api.nutri.app", "/v1x/score"),
        ("nutri-ml", "/v1/meals/today"),
        ("nutri-ml:9000", "/score"),
        ("ml.nutri.app", "/v1/score"),
        (ml_addr.as_str(), "/v1/score"),
    ];
    for (host, path) in attempts {
        for auth in [None, Some(token.as_str())] {
            let mut headers = vec![("host", *host)];
            headers.extend(auth.map(|t| ("authorization", t)));
            for method in ["GET", "POST"] {
                let a = request(method, &gw.url(path), &headers).await;
                assert_problem(&a, 404);
            }
        }
    }
    assert_eq!(services["nutri-ml"].connections.load(Ordering::SeqCst), 0, "the ML stand-in was connected to");
    assert!(services["nutri-ml"].requests().is_empty());
    assert_eq!(services["nutri-backend"].requests().len(), 2, "only the two public requests reached the backend: {:?}", services["nutri-backend"].requests());

    // And the config cannot be changed to expose it: a route to the
    // internal pool is refused by `check`, naming the file, line and key.
    let mut exposed = config;
    let mut routes = tables(&exposed, "routes");
    let mut route = Table::new();
    route.insert("name".into(), "ml".into());
    route.insert("path".into(), "/ml".into());
    route.insert("pools".into(), Toml::Array(vec!["nutri-ml".into()]));
    routes.push(route);
    set_tables(&mut exposed, "routes", routes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nutri-exposed.toml");
    std::fs::write(&path, localize(exposed, &addrs(&services), Some(jwks.addr))).unwrap();
    let out = run_check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted a route to the internal pool");
    assert!(stderr.contains("nutri-exposed.toml:") && stderr.contains("pools[0]: pool \"nutri-ml\" is internal"), "{stderr}");
}

// ---------------------------------------------------------------------------
// PrescripCare

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prescripcare_the_21st_immediate_request_from_one_ip_is_429_with_hsts_and_csp() {
    let config = load("prescripcare.toml");
    let csp = config["policies"]["security-headers"]["settings"]["content-security-policy"].as_str().unwrap().to_string();
    let services = stand_ins(&config).await;
    let key = Key::rsa("prescripcare-test");
    let jwks = JwksServer::start(jwks_of(&[&key])).await;
    let gw = Gateway::start(&localize(config, &addrs(&services), Some(jwks.addr)));
    // As the load balancer sends them: the request came in over https.
    let headers = [("host", "api.prescripcare.com"), ("x-forwarded-proto", "https")];

    // From one address, as fast as the client goes: 20 pass (the burst),
    // then 429. The budget refills one request per 100 ms, so a slow
    // machine may let a few more through first; on this one, 21st is 429.
    let started = Instant::now();
    let mut answers = Vec::new();
    while answers.len() < 60 {
        let a = get(&gw.url("/auth/session"), &headers).await;
        let limited = a.status == 429;
        answers.push(a);
        if limited {
            break;
        }
    }
    let elapsed = started.elapsed();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    let first_429 = statuses.iter().position(|s| *s == 429).unwrap_or_else(|| panic!("no 429 in {} requests: {statuses:?}", statuses.len()));
    assert!(statuses[..first_429].iter().all(|s| *s == 200), "{statuses:?}");
    let refilled = (elapsed.as_millis() / 100) as usize;
    assert!(first_429 >= 20 && first_429 <= 20 + refilled, "the first 429 was request {} after {elapsed:?}: {statuses:?}", first_429 + 1);
    eprintln!("prescripcare: first 429 at request {} after {elapsed:?}", first_429 + 1);

    let refused = answers.last().unwrap();
    let p = assert_problem(refused, 429);
    assert!(refused.header("retry-after").is_some(), "{p}");
    assert_eq!(refused.header("ratelimit-policy"), Some("\"per-ip\";q=10;w=1;burst=20"));

    // HSTS and the CSP on the answers, the 429 included.
    for a in [&answers[0], refused] {
        assert_eq!(a.header("strict-transport-security"), Some("max-age=63072000; includeSubDomains; preload"), "status {}", a.status);
        assert_eq!(a.header("content-security-policy"), Some(csp.as_str()));
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(a.header("x-frame-options"), Some("DENY"));
    }
    assert!(services["auth"].requests().len() <= first_429, "a refused request was forwarded");

    // Per address, not for everyone: another client behind the same load
    // balancer still has its burst.
    let a = get(&gw.url("/auth/session"), &[headers[0], headers[1], ("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    // No HSTS on a plain-http answer (browsers ignore it there anyway).
    let a = get(&gw.url("/auth/session"), &[headers[0], ("x-forwarded-for", "203.0.113.10")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("strict-transport-security"), None);
    assert_eq!(a.header("content-security-policy"), Some(csp.as_str()));

    // The main API wants a token.
    assert_problem(&get(&gw.url("/api/prescriptions"), &[headers[0], headers[1], ("x-forwarded-for", "203.0.113.11")]).await, 401);
    let token = format!(
        "Bearer {}",
        key.sign(&json!({"iss": "https://api.prescripcare.com/auth", "sub": "dr-1", "aud": "prescripcare-api", "exp": now() + 300, "roles": ["prescriber"]}))
    );
    let a = get(&gw.url("/api/prescriptions"), &[headers[0], headers[1], ("x-forwarded-for", "203.0.113.11"), ("authorization", &token)]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "api");
}

// ---------------------------------------------------------------------------
// Healthcare Backend

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcare_backend_its_api_answers_through_the_gateway() {
    let config = load("healthcare-backend.toml");
    let target = config["pools"][0]["targets"][0].as_str().unwrap();
    assert!(target.ends_with(":8088"), "the API listens on 8088: {target}");
    let services = stand_ins(&config).await;
    let gw = Gateway::start(&localize(config, &addrs(&services), None));

    let a = request("POST", &gw.url("/api/v1/appointments?clinic=3"), &[("host", "api.ishswami.in"), ("x-request-id", "hb-test-0001")]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "healthcare-api");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/v1/appointments");
    assert_eq!(echo["headers"]["x-request-id"], "hb-test-0001");
    assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(a.header("x-request-id"), Some("hb-test-0001"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert!(a.header("ratelimit-policy").is_some_and(|p| p.contains("per-ip")), "{:?}", a.header("ratelimit-policy"));
    assert_eq!(services["healthcare-api"].requests(), ["/api/v1/appointments"]);

    // Only its own host.
    assert_problem(&get(&gw.url("/api/v1/appointments"), &[("host", "api.procare.health")]).await, 404);

    // And the answer is in the audit log.
    assert!(
        eventually(Duration::from_secs(5), || gw.audit_records().iter().any(|r| r["route"] == "api" && r["status"] == 200)).await,
        "no audit record of the API answer"
    );
}
