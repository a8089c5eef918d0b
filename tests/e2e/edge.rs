//! The edge on Spin end to end: the same configuration served by the node
//! gateway (the real binary) and by the edge component (`edge/`, built by
//! `host/build.rs`) on the project's own wasi:http runtime
//! (`edge_runtime.rs`), with the same table of requests sent to both and
//! the answers compared: status, the headers policies own, and which
//! upstream answered with what it was sent.

use crate::edge_runtime::{EdgeOptions, EdgeRuntime};
use crate::jwt::{Key, now};
use crate::support::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The edge component.
pub const EDGE_WASM: &str = env!("PORTCULLIS_EDGE_WASM");
const JWT_AUTH: &str = crate::jwt::JWT_AUTH;
const RESIDENCY: &str = crate::residency::RESIDENCY;
const SECURITY_HEADERS: &str = env!("PORTCULLIS_SECURITY_HEADERS_WASM");
const RATE_LIMIT: &str = env!("PORTCULLIS_RATE_LIMIT_WASM");
const WEBHOOK_SIGNATURE: &str = env!("PORTCULLIS_WEBHOOK_SIGNATURE_WASM");

const ISS: &str = "procare-edge-test";
const SECRET: &[u8] = b"procare-edge-test-secret-0123456789abcdef";
const WEBHOOK_KEY: &[u8] = b"lab-webhook-key-0123456789abcdefghijkl";
const PSEUDONYM_KEY: &[u8] = b"edge-test-pseudonym-key-0123456789abcdef";
const COLLECTOR_TOKEN: &str = "edge-collector-token-0123456789abcdefgh";
const DOCTOR_APP: &str = "https://app.procare.test";

const REGIONS: &str = r#"
jurisdictions = ["EU", "US", "IN"]
classes = ["health", "public"]

[regions]
fsn1 = "EU"
ash = "US"

[[rules]]
name = "eu-health"
subject = "EU"
class = "health"
allow = ["EU"]

[[rules]]
name = "us-health"
subject = "US"
class = "health"
allow = ["US"]

[[rules]]
name = "public-anywhere"
subject = "*"
class = "public"
allow = ["*"]
"#;

/// The upstreams, shared by node and edge.
struct World {
    records_fsn1: Upstream,
    records_ash: Upstream,
    library: Upstream,
    lab: Upstream,
}

impl World {
    async fn start() -> World {
        World {
            records_fsn1: Upstream::start("records-fsn1").await,
            records_ash: Upstream::start("records-ash").await,
            library: Upstream::start("library").await,
            lab: Upstream::start("lab").await,
        }
    }

    fn config(&self) -> String {
        format!(
            r#"
[gateway]
pseudonym_key_file = "pseudonym.key"

[runtime]
policy_deadline_ms = 5000

[[listeners]]
name = "public"
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[audit]
dir = "audit"
signing_key_file = "audit.key"
async_flush_ms = 100

[audit.collector]
token_file = "collector.token"

[residency]
regions = "regions.toml"

[policies.router]
component = "builtin:router"

[policies.cors]
component = "{SECURITY_HEADERS}"
[policies.cors.settings]
allow-origins = ["{DOCTOR_APP}"]
allow-methods = ["GET", "POST"]
allow-headers = ["Authorization", "Content-Type"]
expose-headers = ["x-request-id"]
allow-credentials = true
preflight-max-age = 600

[policies.ip-limit]
component = "{RATE_LIMIT}"
[policies.ip-limit.settings.rules.per-ip]
key = ["ip"]

[[limits]]
name = "per-ip"
rate = 3
per = "1m"

[policies.jwt]
component = "{JWT_AUTH}"
[policies.jwt.settings]
realm = "procare"
strip-authorization = true
[policies.jwt.settings.issuers.procare]
issuer = "{ISS}"
algorithms = ["HS256"]
audience = ["procare-api"]
region-claim = "residency"

[[jwks]]
issuer = "{ISS}"
secret_file = "hs256.key"
kid = "k1"

[policies.residency]
component = "{RESIDENCY}"

[policies.lab-signature]
component = "{WEBHOOK_SIGNATURE}"
[policies.lab-signature.settings]
scheme = "hmac-sha256"

[[pools]]
name = "records-ash"
region = "ash"
targets = ["{ash}"]

[[pools]]
name = "records-fsn1"
region = "fsn1"
targets = ["{fsn1}"]

[[pools]]
name = "library"
region = "fsn1"
targets = ["{library}"]

[[pools]]
name = "lab"
region = "fsn1"
targets = ["{lab}"]

[[routes]]
name = "records"
path = "/api/records"
methods = ["GET", "POST", "OPTIONS"]
pools = ["records-ash", "records-fsn1"]
chain = ["cors", "jwt", "residency"]
facts = {{ residency-class = "health" }}
body_limit = "1KiB"

[[routes]]
name = "limited"
path = "/api/limited"
pools = ["library"]
chain = ["cors", "ip-limit", "residency"]
facts = {{ residency-class = "public" }}

[[routes]]
name = "webhook"
path = "/webhooks/lab"
methods = ["POST"]
pools = ["lab"]
chain = ["lab-signature", "residency"]
facts = {{ residency-class = "public" }}
[routes.body_hmac]
secret_file = "webhook.key"

# The library's `/slow/<ms>` answers late; this route waits 500 ms for a head.
[[routes]]
name = "slow"
path = "/slow"
pools = ["library"]
chain = ["residency"]
facts = {{ residency-class = "public" }}
timeout_ms = 500

[[routes]]
name = "public"
path = "/public"
pools = ["library"]
chain = ["cors", "residency"]
facts = {{ residency-class = "public" }}
"#,
            ash = self.records_ash.addr,
            fsn1 = self.records_fsn1.addr,
            library = self.library.addr,
            lab = self.lab.addr,
        )
    }
}

/// The node's directory: config and the files it names.
fn node_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("regions.toml", REGIONS.as_bytes()), ("hs256.key", SECRET), ("webhook.key", WEBHOOK_KEY), ("pseudonym.key", PSEUDONYM_KEY), ("collector.token", COLLECTOR_TOKEN.as_bytes()), ("gateway.toml", config.as_bytes())] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    crate::audit::write_key(dir.path());
    dir
}

/// `portcullis edge plan --config FILE`: the plan the edge reads.
fn edge_plan(config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["edge", "plan", "--config"])
        .arg(config)
        .env("PORTCULLIS_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "edge plan failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn token(sub: &str, residency: &str, aud: &str, exp_in: i64, key: &[u8]) -> String {
    let claims = json!({ "iss": ISS, "sub": sub, "aud": aud, "exp": now() + exp_in, "iat": now() - 5, "residency": residency });
    format!("Bearer {}", Key::hs("k1", key).sign(&claims))
}

fn webhook_signature(body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(WEBHOOK_KEY).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One row of the table.
struct Row {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn row(what: &'static str, method: &'static str, path: &'static str, headers: &[(&'static str, &str)]) -> Row {
    Row { what, method, path, headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(), body: Vec::new() }
}

fn table() -> Vec<Row> {
    let good = token("patient-eu-1", "EU", "procare-api", 300, SECRET);
    let us = token("patient-us-1", "US", "procare-api", 300, SECRET);
    let india = token("patient-in-1", "IN", "procare-api", 300, SECRET);
    let expired = token("patient-eu-1", "EU", "procare-api", -600, SECRET);
    let wrong_key = token("patient-eu-1", "EU", "procare-api", 300, b"some-other-secret-0123456789abcdefghij");
    let wrong_aud = token("patient-eu-1", "EU", "billing-api", 300, SECRET);
    let webhook = br#"{"result":"ready","order":"lab-7"}"#.to_vec();
    let mut rows = vec![
        row("a public page", "GET", "/public/leaflet", &[]),
        row("a public page from the doctors' app (CORS)", "GET", "/public/leaflet", &[("origin", DOCTOR_APP)]),
        row("a CORS preflight of a public page", "OPTIONS", "/public/leaflet", &[("origin", DOCTOR_APP), ("access-control-request-method", "GET")]),
        row("a CORS preflight is answered before authentication", "OPTIONS", "/api/records/1", &[("origin", DOCTOR_APP), ("access-control-request-method", "GET"), ("access-control-request-headers", "authorization")]),
        row("a preflight from an unknown origin", "OPTIONS", "/api/records/1", &[("origin", "https://evil.test"), ("access-control-request-method", "GET")]),
        row("no route", "GET", "/nowhere", &[]),
        row("a method the route does not take", "DELETE", "/api/records/1", &[]),
        row("no token", "GET", "/api/records/1", &[]),
        row("not a token", "GET", "/api/records/1", &[("authorization", "Bearer not-a-jwt")]),
        row("a token signed with another key", "GET", "/api/records/1", &[("authorization", &wrong_key)]),
        row("an expired token", "GET", "/api/records/1", &[("authorization", &expired)]),
        row("a token for another audience", "GET", "/api/records/1", &[("authorization", &wrong_aud)]),
        row("an EU patient reaches the EU pool only", "GET", "/api/records/1", &[("authorization", &good)]),
        row("a US patient reaches the US pool", "GET", "/api/records/2", &[("authorization", &us)]),
        row("no rule lets an Indian patient's health data go anywhere: 451", "GET", "/api/records/3", &[("authorization", &india)]),
        row("an EU patient from the doctors' app", "GET", "/api/records/1?view=summary", &[("authorization", &good), ("origin", DOCTOR_APP)]),
        row("a forged data-region header changes nothing", "GET", "/api/records/1", &[("authorization", &good), ("x-data-region", "ash")]),
        row("a body over the route's limit, declared", "POST", "/api/records/1", &[("authorization", &good), ("content-length", "4096")]),
        row("the rate limit: first", "GET", "/api/limited/a", &[]),
        row("the rate limit: second", "GET", "/api/limited/b", &[]),
        row("the rate limit: third", "GET", "/api/limited/c", &[]),
        row("the rate limit: the fourth is 429", "GET", "/api/limited/d", &[("origin", DOCTOR_APP)]),
        row("an unsigned webhook", "POST", "/webhooks/lab", &[("content-type", "application/json")]),
        row("a webhook with a wrong signature", "POST", "/webhooks/lab", &[("content-type", "application/json"), ("x-hub-signature-256", &webhook_signature(b"something else"))]),
        row("a signed webhook", "POST", "/webhooks/lab", &[("content-type", "application/json"), ("x-hub-signature-256", &webhook_signature(&webhook))]),
        row("a request head over 64 KiB", "GET", "/public/leaflet", &[("x-padding", &"p".repeat(70 * 1024))]),
        row("an upstream slower than the route's timeout: 504", "GET", "/slow/3000", &[]),
    ];
    let mut post = row("an EU patient's upload", "POST", "/api/records/1", &[("authorization", &good), ("content-type", "application/json")]);
    post.body = br#"{"pulse":72}"#.to_vec();
    rows.push(post);
    for r in rows.iter_mut().filter(|r| r.path == "/webhooks/lab") {
        r.body = webhook.clone();
    }
    rows
}

/// What is compared: the status, the headers that policies (and the
/// gateway's own answers) own, and for forwarded requests which upstream
/// answered and what it was sent.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, String>,
    upstream: Option<Value>,
}

const COMPARED: &[&str] = &[
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-max-age",
    "vary",
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "content-security-policy",
    "permissions-policy",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "www-authenticate",
    "ratelimit-policy",
    "ratelimit",
    "retry-after",
    "content-type",
    "x-request-id",
];

async fn exchange(base: &str, r: &Row, n: usize) -> Seen {
    let mut req = http::Request::builder().method(r.method).uri(format!("{base}{}", r.path)).header("x-request-id", format!("edge-table-{n}"));
    for (k, v) in &r.headers {
        req = req.header(*k, v.as_str());
    }
    let answer = send(&client(), req.body(full(r.body.clone())).unwrap()).await;
    let mut headers = BTreeMap::new();
    for name in COMPARED {
        let values: Vec<&str> = answer.headers.get_all(*name).iter().filter_map(|v| v.to_str().ok()).collect();
        if !values.is_empty() {
            headers.insert(name.to_string(), normalise(name, &values.join(", ")));
        }
    }
    let upstream = (answer.header("content-type") == Some("application/json") && answer.status == 200).then(|| {
        let echo = answer.json();
        let sent = &echo["headers"];
        json!({
            "service": echo["service"], "method": echo["method"], "path": echo["path"], "body_sha256": echo["body_sha256"],
            "authorization": sent["authorization"], "x-request-id": sent["x-request-id"], "x-forwarded-proto": sent["x-forwarded-proto"],
            "x-data-region": sent["x-data-region"],
        })
    });
    Seen { status: answer.status, headers, upstream }
}

/// Time left in a window differs by the milliseconds between the two runs.
fn normalise(name: &str, value: &str) -> String {
    match name {
        "ratelimit" => value.split(", ").map(|item| item.split(';').filter(|p| !p.starts_with("t=")).collect::<Vec<_>>().join(";")).collect::<Vec<_>>().join(", "),
        "retry-after" => "(set)".into(),
        _ => value.to_string(),
    }
}

/// The edge's options for `plan`: the Spin variables, the `default`
/// key-value store, and outbound HTTP to the world's upstreams and the
/// collector (when one is given).
fn edge_options(world: &World, plan: String, collector: Option<std::net::SocketAddr>) -> EdgeOptions {
    let mut allowed: Vec<String> = [&world.records_fsn1, &world.records_ash, &world.library, &world.lab].iter().map(|u| format!("http://{}", u.addr)).collect();
    let mut variables = vec![("portcullis_config".to_string(), plan), ("pseudonym_key".to_string(), hex::encode(PSEUDONYM_KEY))];
    if let Some(c) = collector {
        allowed.push(format!("http://{c}"));
        variables.push(("audit_collector".into(), format!("http://{c}")));
        variables.push(("collector_token".into(), COLLECTOR_TOKEN.into()));
    }
    EdgeOptions { variables, key_value_stores: vec!["default".into()], allowed_outbound_hosts: allowed }
}

fn edge_wasm() -> &'static std::path::Path {
    std::path::Path::new(EDGE_WASM)
}

#[tokio::test]
async fn the_same_requests_get_the_same_answers_at_the_edge_as_on_the_node() {
    let world = World::start().await;
    let config = world.config();
    let dir = node_dir(&config);
    let plan = edge_plan(&dir.path().join("gateway.toml"));
    let node = Gateway::start_in(dir, &config);
    let edge = EdgeRuntime::start(edge_wasm(), edge_options(&world, plan, node.admin)).await;

    let rows = table();
    assert!(rows.len() >= 20);
    let mut differences = Vec::new();
    let mut statuses = Vec::new();
    for (n, r) in rows.iter().enumerate() {
        let on_node = exchange(&node.url(""), r, n).await;
        let at_edge = exchange(&edge.url(""), r, n).await;
        statuses.push((r.what, on_node.status));
        if on_node != at_edge {
            differences.push(format!("{}:\n  node: {on_node:?}\n  edge: {at_edge:?}", r.what));
        }
    }
    assert!(differences.is_empty(), "the edge answered differently:\n{}\n(stderr of the edge: {})", differences.join("\n"), edge.stderr());
    assert!(edge.failures().is_empty(), "{:?}", edge.failures());
    // One instance per request, as Spin runs it; the rate limit's count
    // lived in key-value between them.
    assert_eq!(edge.instances(), rows.len() as u64);
    let keys = edge.kv_keys("default");
    let counted: Vec<&String> = keys.iter().filter(|k| k.starts_with("rl:per-ip:")).collect();
    assert_eq!(counted.len(), 1, "one client, one budget: {keys:?}");
    assert!(edge.kv_get("default", counted[0]).is_some());
    assert!(!keys.iter().any(|k| k.contains("127.0.0.1")), "keys are pseudonyms, never addresses: {keys:?}");

    // The table means something: the answers it expects.
    let expected: &[(&str, u16)] = &[
        ("a public page", 200),
        ("a CORS preflight is answered before authentication", 204),
        ("no route", 404),
        ("no token", 401),
        ("an expired token", 401),
        ("an EU patient reaches the EU pool only", 200),
        ("no rule lets an Indian patient's health data go anywhere: 451", 451),
        ("a body over the route's limit, declared", 413),
        ("the rate limit: third", 200),
        ("the rate limit: the fourth is 429", 429),
        ("an unsigned webhook", 401),
        ("a signed webhook", 200),
        ("a request head over 64 KiB", 431),
        ("an upstream slower than the route's timeout: 504", 504),
        ("an EU patient's upload", 200),
    ];
    for (what, status) in expected {
        let got = statuses.iter().find(|(w, _)| w == what).map(|(_, s)| *s);
        assert_eq!(got, Some(*status), "{what}");
    }

    // The edge's audit records reached the node's log through the collector.
    let eu = format!("edge-table-{}", rows.iter().position(|r| r.what == "an EU patient reaches the EU pool only").unwrap());
    let ok = eventually(Duration::from_secs(20), || node.audit_records().iter().any(|r| r["origin"] == "edge" && r["id"] == eu.as_str())).await;
    assert!(ok, "no edge record for {eu} in the node's log");
    let record = node.audit_records().into_iter().find(|r| r["origin"] == "edge" && r["id"] == eu.as_str()).unwrap();
    assert_eq!(record["route"], "records");
    assert_eq!(record["status"], 200);
    assert_eq!(record["region"], "fsn1");
    assert!(!record.to_string().contains(&SECRET.iter().map(|&b| b as char).collect::<String>()));
    // A request refused before any policy ran is recorded too (as on the node).
    let id = format!("edge-table-{}", rows.iter().position(|r| r.what == "a request head over 64 KiB").unwrap());
    let ok = eventually(Duration::from_secs(20), || node.audit_records().iter().any(|r| r["origin"] == "edge" && r["id"] == id.as_str())).await;
    assert!(ok, "no edge record for the 431 ({id})");
    let refused = node.audit_records().into_iter().find(|r| r["origin"] == "edge" && r["id"] == id.as_str()).unwrap();
    assert_eq!((refused["status"].as_u64(), refused["error"].as_str(), refused["source"].as_str()), (Some(431), Some("request-head-too-large"), Some("gateway")));
}

#[tokio::test]
async fn the_edge_component_reports_its_size_and_cold_start() {
    let world = World::start().await;
    let config = world.config();
    let dir = node_dir(&config);
    let plan = edge_plan(&dir.path().join("gateway.toml"));
    let edge = EdgeRuntime::start(edge_wasm(), edge_options(&world, plan, None)).await;
    let before = edge.cold_start();
    assert_eq!((before.first_instantiate, before.first_response), (None, None), "no request yet");
    assert_eq!(before.component_bytes, std::fs::metadata(EDGE_WASM).unwrap().len());

    let a = get(&edge.url("/public/leaflet"), &[]).await;
    assert_eq!(a.status, 200, "{} / stderr: {}", String::from_utf8_lossy(&a.body), edge.stderr());
    assert_eq!(a.json()["service"], "library");
    // Without a collector the record goes to stderr (Spin keeps it), by its fields.
    assert!(edge.stderr().contains("\"route\":\"public\""), "stderr: {}", edge.stderr());

    let cold = edge.cold_start();
    let first = cold.first_instantiate.expect("the first request's instantiation was measured");
    let response = cold.first_response.expect("the first response was measured");
    assert!(!cold.compile.is_zero() && !first.is_zero() && response >= first);
    eprintln!(
        "edge cold start: {} bytes, compile {:.1} ms, first instantiate {:.3} ms, first response {:.3} ms",
        cold.component_bytes,
        cold.compile.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        response.as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn an_upstream_not_in_allowed_outbound_hosts_is_refused_and_nothing_is_sent() {
    let world = World::start().await;
    let config = world.config();
    let dir = node_dir(&config);
    let plan = edge_plan(&dir.path().join("gateway.toml"));
    let mut opts = edge_options(&world, plan, None);
    let library = format!("http://{}", world.library.addr);
    opts.allowed_outbound_hosts.retain(|h| *h != library);
    let edge = EdgeRuntime::start(edge_wasm(), opts).await;
    let a = get(&edge.url("/public/leaflet"), &[]).await;
    let problem = assert_problem(&a, 502);
    assert_eq!(problem["type"], "urn:portcullis:problem:upstream-error");
    assert_eq!(edge.denied(), [library]);
    assert_eq!(world.library.connections.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was sent");
    assert!(edge.failures().is_empty(), "the edge answered the 502 itself: {:?}", edge.failures());
}

#[tokio::test]
async fn without_its_key_value_store_the_rate_limit_fails_closed() {
    let world = World::start().await;
    let config = world.config();
    let dir = node_dir(&config);
    let plan = edge_plan(&dir.path().join("gateway.toml"));
    let opts = EdgeOptions { key_value_stores: vec!["sessions".into()], ..edge_options(&world, plan, None) };
    let edge = EdgeRuntime::start(edge_wasm(), opts).await;
    // The limit cannot be counted: refused (503), never waved through.
    assert_problem(&get(&edge.url("/api/limited/a"), &[]).await, 503);
    assert_eq!(world.library.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Routes without a limit are served.
    assert_eq!(get(&edge.url("/public/leaflet"), &[]).await.status, 200);
}

#[tokio::test]
async fn a_misconfigured_edge_refuses_every_request_and_says_why() {
    let world = World::start().await;
    for (plan, why) in [("{not json", "portcullis_config: key must be a string"), (r#"{"format":"portcullis-edge/9"}"#, "portcullis_config: missing field")] {
        let edge = EdgeRuntime::start(edge_wasm(), edge_options(&world, plan.to_string(), None)).await;
        let a = get(&edge.url("/public/leaflet"), &[("x-request-id", "misconfigured-1")]).await;
        let problem = assert_problem(&a, 500);
        assert_eq!(problem["type"], "urn:portcullis:problem:edge-misconfigured");
        assert_eq!(problem["request_id"], "misconfigured-1");
        assert!(edge.stderr().contains(why), "stderr: {}", edge.stderr());
    }
    assert_eq!(world.library.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn runtime_load_errors_name_the_entry() {
    let err = |opts| async move { EdgeRuntime::try_start(edge_wasm(), opts).await.err().expect("a load error").to_string() };
    let e = err(EdgeOptions { allowed_outbound_hosts: vec!["http://127.0.0.1:8081".into(), "http://127.0.0.1:8081/api".into()], ..EdgeOptions::default() }).await;
    assert_eq!(e, r#"allowed_outbound_hosts[1]: "http://127.0.0.1:8081/api": has a path but is not allowed to"#);
    let e = err(EdgeOptions { variables: vec![("upstream-url".into(), "x".into())], ..EdgeOptions::default() }).await;
    assert_eq!(e, r#"variables: "upstream-url": may contain only lowercase letters, digits and '_'"#);

    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"not a component").unwrap();
    assert!(EdgeRuntime::try_start(&not_wasm, EdgeOptions::default()).await.is_err());
}

#[tokio::test]
async fn jwks_are_fetched_over_outbound_http_and_cached_in_key_value() {
    use crate::jwt::{JwksServer, jwks_of};
    const KC_ISS: &str = "https://auth.procare.test/realms/procare";
    let key = Key::rsa("kc-1");
    let idp = JwksServer::start(jwks_of(&[&key])).await;
    let library = Upstream::start("library").await;
    let config = format!(
        r#"
[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.jwt]
component = "{JWT_AUTH}"
[policies.jwt.settings]
realm = "procare"
[policies.jwt.settings.issuers.procare]
issuer = "{KC_ISS}"
algorithms = ["RS256"]
audience = ["procare-api"]

[[jwks]]
issuer = "{KC_ISS}"
url = "http://{idp}/realms/procare/certs"

[[pools]]
name = "library"
targets = ["{library}"]

[[routes]]
name = "library"
path = "/library"
pools = ["library"]
chain = ["jwt"]
"#,
        idp = idp.addr,
        library = library.addr
    );
    let dir = node_dir(&config);
    let plan = edge_plan(&dir.path().join("gateway.toml"));
    let plan_json: Value = serde_json::from_str(&plan).unwrap();
    let same_plan = plan.clone();
    assert_eq!(plan_json["issuers"][KC_ISS]["url"], format!("http://{}/realms/procare/certs", idp.addr));
    let opts = EdgeOptions {
        variables: vec![("portcullis_config".into(), plan), ("pseudonym_key".into(), hex::encode(PSEUDONYM_KEY))],
        key_value_stores: vec!["default".into()],
        allowed_outbound_hosts: vec![format!("http://{}", library.addr), format!("http://{}", idp.addr)],
    };
    let edge = EdgeRuntime::start(edge_wasm(), opts).await;
    let fetched_for_the_plan = idp.fetches();
    let claims = json!({ "iss": KC_ISS, "sub": "doctor-7", "aud": "procare-api", "exp": now() + 300, "iat": now() - 5 });
    let bearer = format!("Bearer {}", key.sign(&claims));

    // Two requests, two fresh instances: the key set is fetched once and
    // read from key-value the second time.
    for _ in 0..2 {
        let a = get(&edge.url("/library/book"), &[("authorization", &bearer)]).await;
        assert_eq!(a.status, 200, "{} / stderr: {}", String::from_utf8_lossy(&a.body), edge.stderr());
    }
    assert_eq!(idp.fetches() - fetched_for_the_plan, 1, "one fetch, then the key-value cache");
    let cached = edge.kv_get("default", &format!("jwks:{KC_ISS}")).expect("the key set is cached in key-value");
    assert!(String::from_utf8_lossy(&cached).contains("kc-1"));

    // A token from another key is refused; with the identity provider gone
    // the cached set still verifies good tokens.
    let forged = format!("Bearer {}", Key::rsa("kc-1").sign(&claims));
    assert_eq!(get(&edge.url("/library/book"), &[("authorization", &forged)]).await.status, 401);
    idp.stop();
    assert_eq!(get(&edge.url("/library/book"), &[("authorization", &bearer)]).await.status, 200);

    // A fresh edge (an empty store) with the identity provider down cannot
    // verify anything: 503, never a pass.
    let opts = EdgeOptions {
        variables: vec![("portcullis_config".into(), same_plan), ("pseudonym_key".into(), hex::encode(PSEUDONYM_KEY))],
        key_value_stores: vec!["default".into()],
        allowed_outbound_hosts: vec![format!("http://{}", library.addr), format!("http://{}", idp.addr)],
    };
    let cold = EdgeRuntime::start(edge_wasm(), opts).await;
    assert_problem(&get(&cold.url("/library/book"), &[("authorization", &bearer)]).await, 503);
    assert_eq!(library.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_streamed_body_over_the_routes_limit_is_413_and_never_reaches_the_upstream_whole() {
    let world = World::start().await;
    let config = world.config();
    let dir = node_dir(&config);
    let plan = edge_plan(&dir.path().join("gateway.toml"));
    let node = Gateway::start_in(dir, &config);
    let edge = EdgeRuntime::start(edge_wasm(), edge_options(&world, plan, None)).await;
    let good = token("patient-eu-1", "EU", "procare-api", 300, SECRET);
    for base in [node.url(""), edge.url("")] {
        // No content-length: the limit (1 KiB on this route) is found while streaming.
        let req = http::Request::post(format!("{base}/api/records/1")).header("authorization", good.as_str()).body(generated_body(256 * 1024)).unwrap();
        let answer = send(&client(), req).await;
        assert_problem(&answer, 413);
    }
    // Whatever reached the EU upstream was never taken as a whole request.
    assert!(world.records_fsn1.requests().is_empty(), "{:?}", world.records_fsn1.requests());
    assert!(edge.failures().is_empty(), "{:?}", edge.failures());
}
