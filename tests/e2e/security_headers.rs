//! The security-headers component in the real gateway: CORS preflights
//! answered by the policy (never forwarded), CORS on actual answers, HSTS only
//! when a trusted proxy says https, leaking headers removed, headers on
//! policy and gateway answers, the https redirect, `check` refusing a
//! wildcard origin with credentials, and a real browser (headless chromium)
//! enforcing the answers.

use crate::support::*;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The security-headers component (see components/security-headers).
const SECURITY_HEADERS: &str = env!("PORTCULLIS_SECURITY_HEADERS_WASM");

const DOCTOR: &str = "https://doctor.procare.health";
const CAREGIVER: &str = "https://caregiver.procare.health";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' https://api.prescripcare.com; frame-ancestors 'none'";
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// A gateway with security-headers first on every route. `trusted`: the
/// peers whose `x-forwarded-proto` is believed.
fn gateway(up: &Upstream, broken: &Upstream, trusted: &str) -> Gateway {
    let mut config = config_head().replace("[gateway]\n", &format!("[gateway]\ntrusted_proxies = [{trusted}]\n"));
    config.push_str(&format!(
        r#"
[policies.security-headers]
component = "{SECURITY_HEADERS}"
[policies.security-headers.settings]
allow-origins = ["{DOCTOR}", "https://*.nutri.test"]
allow-methods = ["GET", "POST", "PUT"]
allow-headers = ["Authorization", "Content-Type"]
expose-headers = ["x-request-id"]
allow-credentials = true
preflight-max-age = 600
content-security-policy = "{CSP}"

[policies.notfound]
component = "{TEST_POLICY}"
settings = {{ mode = "respond", status = 404 }}

[[pools]]
name = "up"
targets = ["{up}"]

[[pools]]
name = "broken"
targets = ["{broken}"]
passive = {{ max_failures = 1000, eject_ms = 1 }}

[[routes]]
name = "api"
path = "/api"
methods = ["GET", "PUT", "DELETE"]
pools = ["up"]
chain = ["security-headers"]

[[routes]]
name = "leaky"
path = "/leaky"
pools = ["up"]
chain = ["security-headers"]

[[routes]]
name = "gone"
path = "/gone"
pools = ["up"]
chain = ["security-headers", "notfound"]

[[routes]]
name = "broken"
path = "/broken"
pools = ["broken"]
chain = ["security-headers"]

[[routes]]
name = "secure"
path = "/secure"
pools = ["up"]
chain = ["security-headers"]
[routes.settings.security-headers]
redirect-https = true
"#,
        up = up.addr,
        broken = broken.addr,
    ));
    Gateway::start(&config)
}

async fn servers() -> (Upstream, Upstream) {
    (Upstream::start("up").await, Upstream::broken().await)
}

fn requests(up: &Upstream) -> u64 {
    up.requests.load(Ordering::SeqCst)
}

fn no_cors_headers(a: &Answer) {
    let cors: Vec<_> = a.headers.keys().filter(|k| k.as_str().starts_with("access-control-")).collect();
    assert!(cors.is_empty(), "unexpected CORS headers {cors:?}");
}

/// The headers every answer on these routes carries (plain http: no HSTS).
fn assert_security_headers(a: &Answer, what: &str) {
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(a.header("referrer-policy"), Some("strict-origin-when-cross-origin"), "{what}");
    assert_eq!(a.header("permissions-policy"), Some("camera=(), microphone=(), geolocation=(), payment=(), usb=()"), "{what}");
    assert_eq!(a.header("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(a.header("strict-transport-security"), None, "{what}: no HSTS on plain http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_is_answered_by_the_policy_and_never_forwarded() {
    let (up, broken) = servers().await;
    let gw = gateway(&up, &broken, "");
    // The route's methods do not list OPTIONS: the router lets the preflight
    // of a PUT through to the chain.
    let a = request(
        "OPTIONS",
        &gw.url("/api/clinical/vitals"),
        &[("origin", DOCTOR), ("access-control-request-method", "PUT"), ("access-control-request-headers", "content-type,authorization")],
    )
    .await;
    assert_eq!(a.status, 204, "body: {}", String::from_utf8_lossy(&a.body));
    assert!(a.body.is_empty());
    assert_eq!(a.header("access-control-allow-origin"), Some(DOCTOR));
    assert_eq!(a.header("access-control-allow-methods"), Some("GET, POST, PUT"));
    assert_eq!(a.header("access-control-allow-headers"), Some("authorization, content-type"));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("access-control-max-age"), Some("600"));
    assert_eq!(a.header("vary"), Some("origin, access-control-request-method, access-control-request-headers"));
    assert_eq!(a.headers.get_all("access-control-allow-origin").iter().count(), 1);
    assert_security_headers(&a, "preflight");

    // A wildcard-pattern origin, upper-case requested header names.
    let a = request("OPTIONS", &gw.url("/api/x"), &[("origin", "https://app.nutri.test"), ("access-control-request-method", "GET"), ("access-control-request-headers", "Authorization")]).await;
    assert_eq!(a.status, 204);
    assert_eq!(a.header("access-control-allow-origin"), Some("https://app.nutri.test"));

    assert_eq!(requests(&up), 0, "a preflight never reaches the upstream");
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 2).await);
    let r = &gw.audit_records()[0];
    assert_eq!(r["status"], 204);
    assert_eq!(r["source"], "policy:security-headers");
    assert_eq!(r["verdicts"], serde_json::json!([["router", "proceed"], ["security-headers", "respond:204"]]));
    assert_eq!(r["policies"]["security-headers"]["cors"], "preflight-allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_preflight_is_refused_403_without_cors_headers() {
    let (up, broken) = servers().await;
    let gw = gateway(&up, &broken, "");
    let pre = |origin: &'static str, method: &'static str, headers: &'static str| {
        let url = gw.url("/api/x");
        async move {
            let mut h = vec![("origin", origin), ("access-control-request-method", method)];
            if !headers.is_empty() {
                h.push(("access-control-request-headers", headers));
            }
            request("OPTIONS", &url, &h).await
        }
    };
    for (a, why) in [
        (pre("https://evil.example", "GET", "").await, r#"origin "https://evil.example" is not allowed"#),
        (pre("https://nutri.test", "GET", "").await, r#"origin "https://nutri.test" is not allowed"#),
        (pre("http://doctor.procare.health", "GET", "").await, r#"origin "http://doctor.procare.health" is not allowed"#),
        (pre(DOCTOR, "DELETE", "").await, r#"method "DELETE" is not allowed"#),
        (pre(DOCTOR, "PUT", "content-type, x-patient-id").await, r#"request header "x-patient-id" is not allowed"#),
    ] {
        let p = assert_problem(&a, 403);
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
        no_cors_headers(&a);
        assert_security_headers(&a, "refused preflight");
    }
    assert_eq!(requests(&up), 0);
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 5).await);
    let records = gw.audit_records();
    let slugs: Vec<_> = records.iter().map(|r| r["policies"]["security-headers"]["cors-refused"].as_str().unwrap().to_string()).collect();
    assert_eq!(slugs.iter().filter(|s| *s == "origin").count(), 3, "{slugs:?}");
    assert!(slugs.contains(&"method".to_string()) && slugs.contains(&"header".to_string()), "{slugs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_requests_get_cors_headers_only_for_allowed_origins() {
    let (up, broken) = servers().await;
    let gw = gateway(&up, &broken, "");

    let a = get(&gw.url("/api/x"), &[("origin", DOCTOR)]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["method"], "GET");
    assert_eq!(a.header("access-control-allow-origin"), Some(DOCTOR));
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(a.header("access-control-expose-headers"), Some("x-request-id"));
    assert_eq!(a.header("vary"), Some("origin"));
    assert_eq!(a.header("access-control-allow-methods"), None, "only preflights list methods");

    // The upstream's own `vary` is kept and `origin` appended; its own
    // `access-control-allow-origin: *` is replaced by the exact origin.
    let a = get(&gw.url("/leaky"), &[("origin", "https://a.b.nutri.test")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("vary"), Some("Accept-Encoding, origin"));
    assert_eq!(a.header("access-control-allow-origin"), Some("https://a.b.nutri.test"));
    assert_eq!(a.headers.get_all("access-control-allow-origin").iter().count(), 1);

    // A disallowed origin proceeds (the browser, not the gateway, blocks the
    // read) but gets no CORS header, not even the upstream's `*`.
    for origin in ["https://evil.example", CAREGIVER, "null"] {
        let a = get(&gw.url("/leaky"), &[("origin", origin)]).await;
        assert_eq!(a.status, 200, "{origin}");
        no_cors_headers(&a);
        assert_eq!(a.header("vary"), Some("Accept-Encoding, origin"), "{origin}");
    }
    // No Origin at all: same answer, still `vary: origin` for caches.
    let a = get(&gw.url("/api/x"), &[]).await;
    no_cors_headers(&a);
    assert_eq!(a.header("vary"), Some("origin"));
    // OPTIONS without access-control-request-method is no preflight: the
    // route does not allow OPTIONS, so the router answers 405 as before.
    assert_problem(&request("OPTIONS", &gw.url("/api/x"), &[("origin", DOCTOR)]).await, 405);
    assert_eq!(requests(&up), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_only_when_a_trusted_proxy_says_https() {
    let (up, broken) = servers().await;
    let trusting = gateway(&up, &broken, "\"127.0.0.0/8\"");
    let a = get(&trusting.url("/api/x"), &[("x-forwarded-proto", "https")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("strict-transport-security"), Some(HSTS));
    assert_eq!(a.json()["headers"]["x-forwarded-proto"], "https");
    let a = get(&trusting.url("/api/x"), &[]).await;
    assert_eq!(a.header("strict-transport-security"), None, "plain http");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    let a = get(&trusting.url("/api/x"), &[("x-forwarded-proto", "http")]).await;
    assert_eq!(a.header("strict-transport-security"), None);

    // A peer that is not a trusted proxy cannot claim https.
    let untrusting = gateway(&up, &broken, "\"10.0.0.0/8\"");
    let a = get(&untrusting.url("/api/x"), &[("x-forwarded-proto", "https")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("strict-transport-security"), None, "an untrusted peer claimed https");
    assert_eq!(a.json()["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaking_response_headers_are_removed() {
    let (up, broken) = servers().await;
    let gw = gateway(&up, &broken, "");
    let a = get(&gw.url("/leaky"), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"leaky");
    assert_eq!(a.header("server"), None);
    assert_eq!(a.header("x-powered-by"), None);
    assert_security_headers(&a, "upstream answer");
    assert!(a.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_gateway_answers_carry_the_headers_too() {
    let (up, broken) = servers().await;
    let gw = gateway(&up, &broken, "\"127.0.0.0/8\"");

    // A later policy's 404: the security-headers' on-response still runs.
    let a = get(&gw.url("/gone/x"), &[("origin", DOCTOR)]).await;
    assert_problem(&a, 404);
    assert_security_headers(&a, "policy 404");
    assert_eq!(a.header("access-control-allow-origin"), Some(DOCTOR), "the page can read the error");
    assert_eq!(a.header("vary"), Some("origin"));

    // The gateway's own 502 (the upstream closes every connection).
    let a = get(&gw.url("/broken"), &[("origin", DOCTOR)]).await;
    let p = assert_problem(&a, 502);
    assert!(p["type"].as_str().unwrap().starts_with("urn:portcullis:problem:"), "{p}");
    assert_security_headers(&a, "gateway 502");
    assert_eq!(a.header("access-control-allow-origin"), Some(DOCTOR));

    // Over https (a trusted proxy says so), HSTS lands on them as well.
    let a = get(&gw.url("/broken"), &[("x-forwarded-proto", "https")]).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.header("strict-transport-security"), Some(HSTS));
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert_eq!(requests(&up), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_when_configured() {
    let (up, broken) = servers().await;
    let gw = gateway(&up, &broken, "\"127.0.0.0/8\"");
    let a = request("POST", &gw.url("/secure/records?patient=42&x=%20"), &[]).await;
    assert_eq!(a.status, 308);
    // The host gives the authority without its port: https on its default port.
    assert_eq!(a.header("location"), Some("https://127.0.0.1/secure/records?patient=42&x=%20"));
    assert_security_headers(&a, "redirect");
    assert_eq!(requests(&up), 0);
    // Already https (a trusted proxy terminated TLS): served, with HSTS.
    let a = request("POST", &gw.url("/secure/records"), &[("x-forwarded-proto", "https")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("strict-transport-security"), Some(HSTS));
    assert_eq!(requests(&up), 1);
    // Routes without the override are not redirected.
    assert_eq!(get(&gw.url("/api/x"), &[]).await.status, 200);
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 3).await);
    let records = gw.audit_records();
    let redirected = records.iter().find(|r| r["status"] == 308).expect("a record for the redirect");
    assert_eq!(redirected["policies"]["security-headers"]["redirect"], "https");
}

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cors.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_check(&path);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_refuses_a_wildcard_origin_with_credentials() {
    let base = format!(
        "{}\n[policies.security-headers]\ncomponent = \"{SECURITY_HEADERS}\"\n[[pools]]\nname = \"p\"\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\npools = [\"p\"]\nchain = [\"security-headers\"]\n",
        config_head()
    );
    let good = format!("{base}[policies.security-headers.settings]\nallow-origins = [\"{DOCTOR}\"]\nallow-credentials = true\n");
    let (ok, err) = check(&good);
    assert!(ok, "{err}");

    let bad = format!("{base}[policies.security-headers.settings]\nallow-origins = [\"*\"]\nallow-credentials = true\n");
    let (ok, err) = check(&bad);
    assert!(!ok, "check must fail");
    assert!(
        err.contains("policies.security-headers: check-config refused the settings: setting \"allow-origins\": \"*\" cannot be combined with allow-credentials = true"),
        "{err}"
    );

    // The same through a route's override (merged per key with the policy's settings).
    let bad = format!("{base}[routes.settings.security-headers]\nallow-origins = [\"*\"]\n[policies.security-headers.settings]\nallow-credentials = true\nallow-origins = [\"{DOCTOR}\"]\n");
    let (ok, err) = check(&bad);
    assert!(!ok, "check must fail");
    assert!(err.contains("routes[0].settings.security-headers"), "{err}");
    assert!(err.contains("setting \"allow-origins\""), "{err}");

    // A typo is refused too, naming the key.
    let typo = format!("{base}[policies.security-headers.settings]\nallow-origin = [\"{DOCTOR}\"]\n");
    let (ok, err) = check(&typo);
    assert!(!ok);
    assert!(err.contains("setting \"allow-origin\": unknown setting"), "{err}");
}

// ---------------------------------------------------------------------------
// A real browser.

/// Serve `html` for every request on `listener` (a page's origin).
fn serve_page(listener: tokio::net::TcpListener, html: String) -> tokio::task::JoinHandle<()> {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let html = html.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let mut resp = http::Response::new(full(html.clone()));
                    resp.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

/// The page: a simple credentialed GET and a preflighted credentialed PUT
/// to the gateway, each outcome written into `#out`.
fn page(gateway_port: u16) -> String {
    format!(
        r#"<!doctype html>
<html><head><title>dashboard</title></head><body><pre id="out">pending</pre>
<script>
const url = "http://localhost:{gateway_port}/api/x";
async function attempt(name, init) {{
  try {{
    const r = await fetch(url, init);
    const body = await r.json();
    return name + "=ok:" + r.status + ":" + body.method;
  }} catch (e) {{
    return name + "=error:" + e.name + ":" + e.message;
  }}
}}
(async () => {{
  const simple = await attempt("simple", {{ credentials: "include" }});
  const preflighted = await attempt("preflighted", {{ method: "PUT", credentials: "include", headers: {{ "content-type": "application/json", "x-care-context": "dashboard" }}, body: "{{}}" }});
  document.getElementById("out").textContent = simple + ";" + preflighted + ";done";
}})();
</script></body></html>"#
    )
}

/// Run headless chromium on `url` and return the DOM it dumps (bounded).
fn chromium_dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium (scripts/setup installs it)");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

/// The text of `<pre id="out">` in a dumped DOM.
fn outcome(dom: &str) -> String {
    let start = dom.find("<pre id=\"out\">").unwrap_or_else(|| panic!("no #out in the DOM:\n{dom}")) + "<pre id=\"out\">".len();
    let end = dom[start..].find("</pre>").unwrap() + start;
    dom[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_enforces_the_policy() {
    if Command::new("chromium").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        panic!("chromium is not installed: run scripts/setup (it installs Debian's chromium when missing)");
    }
    let up = Upstream::start("up").await;
    let allowed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed_origin = format!("http://{}", allowed.local_addr().unwrap());
    let other_origin = format!("http://{}", other.local_addr().unwrap());

    let mut config = config_head();
    config.push_str(&format!(
        r#"
[policies.security-headers]
component = "{SECURITY_HEADERS}"
[policies.security-headers.settings]
allow-origins = ["{allowed_origin}"]
allow-methods = ["GET", "PUT"]
allow-headers = ["content-type", "x-care-context"]
allow-credentials = true

[[pools]]
name = "up"
targets = ["{}"]

[[routes]]
name = "api"
path = "/api"
methods = ["GET", "PUT"]
pools = ["up"]
chain = ["security-headers"]
"#,
        up.addr
    ));
    let gw = Gateway::start(&config);
    let html = page(gw.addr.port());
    let _a = serve_page(allowed, html.clone());
    let _b = serve_page(other, html);

    let url = format!("{allowed_origin}/");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&url)).await.unwrap();
    let out = outcome(&dom);
    assert_eq!(out, "simple=ok:200:GET;preflighted=ok:200:PUT;done", "allowed origin {allowed_origin}");
    assert_eq!(requests(&up), 2, "the preflight was answered by the gateway, not forwarded");

    let url = format!("{other_origin}/");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&url)).await.unwrap();
    let out = outcome(&dom);
    assert_eq!(
        out,
        "simple=error:TypeError:Failed to fetch;preflighted=error:TypeError:Failed to fetch;done",
        "origin {other_origin} is not in the allow-list: the browser must block both"
    );
    // The simple GET reached the upstream (the browser blocks reading the
    // answer); the PUT never did: its preflight was refused.
    assert_eq!(requests(&up), 3);
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 5).await);
    let records = gw.audit_records();
    let allowed = records.iter().find(|r| r["policies"]["security-headers"]["cors"] == "preflight-allowed").expect("the browser sent a preflight for the PUT");
    assert_eq!((allowed["method"].as_str(), allowed["status"].as_u64()), (Some("OPTIONS"), Some(204)));
    let refused = records.iter().find(|r| r["policies"]["security-headers"]["cors"] == "preflight-refused").expect("a refused preflight in the audit log");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["policies"]["security-headers"]["cors-refused"], "origin");
}
