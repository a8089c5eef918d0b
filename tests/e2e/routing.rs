//! Routing by host, path and method through the router component; request ids; forwarding headers; h2c.

use crate::support::*;
use http::Request;

async fn routed_gateway() -> (Gateway, Upstream, Upstream, Upstream) {
    let (clinical, doctor, public) = (Upstream::start("clinical").await, Upstream::start("doctor").await, Upstream::start("public").await);
    let config = format!(
        r#"{head}
[[pools]]
name = "clinical"
targets = ["{c}"]
[[pools]]
name = "doctor"
targets = ["{d}"]
[[pools]]
name = "public"
targets = ["{p}"]

[[routes]]
name = "clinical"
hosts = ["api.procare.health"]
path = "/api/clinical"
methods = ["GET", "POST"]
pools = ["clinical"]

[[routes]]
name = "doctor-any-host"
path = "/api/doctor"
pools = ["doctor"]

[[routes]]
name = "doctor-exact"
hosts = ["api.procare.health"]
path = "/api/doctor/inbox"
match = "exact"
pools = ["clinical"]

[[routes]]
name = "wildcard"
hosts = ["*.nutri.health"]
path = "/"
pools = ["public"]
"#,
        head = config_head(),
        c = clinical.addr,
        d = doctor.addr,
        p = public.addr
    );
    (Gateway::start(&config), clinical, doctor, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_and_method() {
    let (gw, _c, _d, _p) = routed_gateway().await;
    let host = [("host", "api.procare.health")];

    let a = get(&gw.url("/api/clinical/vitals?patient=1"), &host).await;
    assert_eq!(a.status, 200);
    let echo = a.json();
    assert_eq!(echo["service"], "clinical");
    assert_eq!(echo["path"], "/api/clinical/vitals");
    assert_eq!(echo["headers"]["host"], "api.procare.health");

    // Same path, another host: the clinical route is host-bound, so no route.
    let a = get(&gw.url("/api/clinical/vitals"), &[("host", "other.example")]).await;
    let p = assert_problem(&a, 404);
    assert_eq!(p["title"], "No route");

    // Segment boundary: /api/clinicalx is not under /api/clinical.
    assert_eq!(get(&gw.url("/api/clinicalx"), &host).await.status, 404);

    // Method not allowed on the route: 405 with Allow.
    let a = request("DELETE", &gw.url("/api/clinical/vitals"), &host).await;
    assert_problem(&a, 405);
    assert!(a.header("allow").unwrap().contains("GET"));

    // Exact beats prefix on the same host; the prefix route serves other paths.
    assert_eq!(get(&gw.url("/api/doctor/inbox"), &host).await.json()["service"], "clinical");
    assert_eq!(get(&gw.url("/api/doctor/inbox/1"), &host).await.json()["service"], "doctor");
    assert_eq!(get(&gw.url("/api/doctor/inbox"), &[("host", "elsewhere.example")]).await.json()["service"], "doctor");

    // Wildcard host: any subdomain, not the apex.
    assert_eq!(get(&gw.url("/menu"), &[("host", "app.nutri.health")]).await.json()["service"], "public");
    assert_eq!(get(&gw.url("/menu"), &[("host", "nutri.health")]).await.status, 404);

    // The audit log has a record per request with the route and the router's verdict.
    assert!(eventually(std::time::Duration::from_secs(5), || gw.audit_records().len() >= 8).await);
    let records = gw.audit_records();
    // Records are written when each response ends, so find them by content, not position.
    let first = records.iter().find(|r| r["path"] == "/api/clinical/vitals" && r["status"] == 200).unwrap();
    assert_eq!(first["route"], "clinical");
    assert_eq!(first["status"], 200);
    assert_eq!(first["verdicts"][0], serde_json::json!(["router", "proceed"]));
    assert!(first["upstream"].as_str().unwrap().starts_with("clinical/127.0.0.1:"));
    let no_route = records.iter().find(|r| r["status"] == 404).unwrap();
    assert_eq!(no_route["verdicts"][0], serde_json::json!(["router", "respond:404"]));
    assert_eq!(no_route["source"], "policy:router");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_generated_and_propagated() {
    let (gw, _c, _d, _p) = routed_gateway().await;
    let host = ("host", "api.procare.health");

    let a = get(&gw.url("/api/clinical/x"), &[host]).await;
    let generated = a.header("x-request-id").expect("a generated request id").to_string();
    assert!(generated.len() >= 16);
    assert_eq!(a.json()["headers"]["x-request-id"], generated.as_str(), "the upstream saw the same id");

    let a = get(&gw.url("/api/clinical/x"), &[host, ("x-request-id", "req-from-client-42")]).await;
    assert_eq!(a.header("x-request-id"), Some("req-from-client-42"));
    assert_eq!(a.json()["headers"]["x-request-id"], "req-from-client-42");

    // A malformed id is replaced, not passed on.
    let a = get(&gw.url("/api/clinical/x"), &[host, ("x-request-id", "bad id with spaces")]).await;
    assert_ne!(a.header("x-request-id"), Some("bad id with spaces"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop() {
    let (gw, _c, _d, _p) = routed_gateway().await;
    let a = get(
        &gw.url("/api/clinical/x"),
        &[("host", "api.procare.health"), ("x-forwarded-for", "203.0.113.9"), ("connection", "keep-alive, x-secret-hop"), ("x-secret-hop", "1"), ("te", "trailers")],
    )
    .await;
    let h = &a.json()["headers"];
    // The peer (loopback) is not a trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-secret-hop").is_none(), "a header named in Connection is hop-by-hop");
    assert!(h.get("te").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http2_cleartext() {
    let (gw, _c, _d, _p) = routed_gateway().await;
    // Prior-knowledge HTTP/2 (h2c) to the gateway; HTTP/1.1 to the upstream.
    let req = Request::get(gw.url("/api/doctor/h2")).body(full("")).unwrap();
    let a = send(&h2_client(), req).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["service"], "doctor");
    assert_eq!(echo["path"], "/api/doctor/h2");
}
