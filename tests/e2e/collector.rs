//! The audit collector end to end: the real gateway with an `[audit]`
//! evidence log and `[audit.collector]` on its admin listener; records POSTed
//! as an edge node sends them land in the hash chain with `"origin":"edge"`
//! and `portcullis audit verify` passes; every bad request is refused with
//! its status, appends nothing, and the gateway keeps serving.

use crate::audit::{metric, stop, verify, write_key};
use crate::support::*;
use std::time::Duration;

const TOKEN: &str = "edge-collector-token-0123456789abcdef";

fn start(upstream: std::net::SocketAddr) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    std::fs::write(dir.path().join("collector.token"), format!("{TOKEN}\n")).unwrap();
    Gateway::start_in(dir, &crate::audit::config(upstream, "\n[audit.collector]\ntoken_file = \"collector.token\"\n"))
}

/// A record as the edge sends it.
fn record(id: &str) -> serde_json::Value {
    serde_json::json!({
        "time": "2026-11-25T00:00:00.000Z", "id": id, "chain": "0e3baeea6e3c", "listener": "edge",
        "client_ip": "203.0.113.9", "method": "GET", "host": "api.procare.health", "path": "/api/clinical/vitals",
        "route": "clinical", "status": 200, "source": "upstream",
        "verdicts": [["router", "proceed"], ["jwt", "proceed"]],
        "policies": {"jwt": {"sub": "pseudonym-of-subject"}},
        "upstream": "clinical-monitor/10.0.0.1:8000", "region": "fsn1",
        "bytes_in": 0, "bytes_out": 120, "duration_us": 900, "outcome": "ok"
    })
}

async fn post(gw: &Gateway, token: Option<&str>, content_type: &str, body: BoxBody) -> Answer {
    let mut req = http::Request::post(format!("http://{}/audit/v1/records", gw.admin.unwrap())).header("content-type", content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), req.body(body).unwrap()).await
}

fn edge_records(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.audit_records().into_iter().filter(|r| r.get("origin").is_some()).collect()
}

type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_records_join_the_chain_and_every_bad_request_is_refused_without_a_trace() {
    let up = Upstream::start("svc").await;
    let mut gw = start(up.addr);

    // The right token: 204, and the record is in the log with origin "edge".
    let a = post(&gw, Some(TOKEN), "application/json", full(record("edge-1").to_string())).await;
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    assert!(eventually(Duration::from_secs(10), || edge_records(&gw).len() == 1).await, "the edge record never reached the log");
    let line = &edge_records(&gw)[0];
    assert_eq!(line["origin"], "edge");
    assert_eq!(line["id"], "edge-1");
    assert_eq!(line["listener"], "edge");
    assert_eq!(line["verdicts"][1], serde_json::json!(["jwt", "proceed"]));
    assert!(line["seq"].is_u64() && line["prev"].is_string(), "chained: {line}");

    // No token, a wrong one, one that differs in its last byte: 401, not read.
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1]), Some(&format!("{}X", &TOKEN[..TOKEN.len() - 1])[..])] {
        let a = post(&gw, token, "application/json", full(record("never-1").to_string())).await;
        let p = assert_problem(&a, 401);
        assert_eq!(p["type"], "urn:portcullis:problem:collector-unauthorized");
        assert!(a.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    }

    // Malformed: a missing field, an unknown field, a wrong type, bad JSON, a node listener: 400 naming the field.
    let mut missing = record("never-2");
    missing.as_object_mut().unwrap().remove("outcome");
    let mut unknown = record("never-3");
    unknown["phase"] = "decision".into();
    let mut wrong_type = record("never-4");
    wrong_type["status"] = "ok".into();
    let mut node_listener = record("never-5");
    node_listener["listener"] = "public".into();
    for (body, field) in [
        (missing.to_string(), Some("outcome")),
        (unknown.to_string(), Some("phase")),
        (wrong_type.to_string(), Some("status")),
        (node_listener.to_string(), Some("listener")),
        ("{\"time\": ".to_string(), None),
        (format!("{}{}", record("never-6"), record("never-7")), None),
    ] {
        let a = post(&gw, Some(TOKEN), "application/json", full(body.clone())).await;
        let p = assert_problem(&a, 400);
        assert_eq!(p["type"], "urn:portcullis:problem:collector-malformed-record", "{body}");
        if let Some(f) = field {
            assert_eq!(p["field"], f, "{p}");
            assert!(p["detail"].as_str().unwrap().contains(f), "{p}");
        }
    }
    // Not JSON by its media type: 415.
    assert_problem(&post(&gw, Some(TOKEN), "text/plain", full(record("never-8").to_string())).await, 415);

    // Over 64 KiB: 413, with a declared length and streamed without one.
    let mut big = record("never-9");
    big["path"] = "/".repeat(70 * 1024).into();
    assert_problem(&post(&gw, Some(TOKEN), "application/json", full(big.to_string())).await, 413);
    assert_problem(&post(&gw, Some(TOKEN), "application/json", generated_body(200 * 1024)).await, 413);

    // Another method: 405 with Allow.
    let a = gw.admin("GET", "/audit/v1/records", Some(TOKEN)).await;
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));

    // Still serving: the public listener proxies, the collector takes the next record.
    assert_eq!(get(&gw.url("/async"), &[]).await.status, 200);
    assert_eq!(post(&gw, Some(TOKEN), "application/json", full(record("edge-2").to_string())).await.status, 204);
    assert!(eventually(Duration::from_secs(10), || edge_records(&gw).len() == 2).await);
    let ids: Vec<_> = edge_records(&gw).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["edge-1", "edge-2"], "a refused record was appended");
    // Node records are unchanged: no origin member. (The node's record is
    // written once the response body has ended: wait for it.)
    let node_record = || gw.audit_records().into_iter().find(|r| r["listener"] == "public" && r["path"] == "/async");
    assert!(eventually(Duration::from_secs(10), || node_record().is_some()).await, "the node's own record never arrived");
    assert!(node_record().unwrap().get("origin").is_none());

    let metrics = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    assert_eq!(metric(&metrics, "portcullis_collector_records_total{outcome=\"appended\"}"), 2);
    assert_eq!(metric(&metrics, "portcullis_collector_records_total{outcome=\"unauthorized\"}"), 4);
    assert_eq!(metric(&metrics, "portcullis_collector_records_total{outcome=\"malformed\"}"), 6);
    assert_eq!(metric(&metrics, "portcullis_collector_records_total{outcome=\"too-large\"}"), 2);

    // The chain, with the edge's records in it, verifies.
    stop(&mut gw);
    let (ok, out, err) = verify(&gw.dir().join("audit"), &gw.dir().join("audit.pub"));
    assert!(ok, "verify failed: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_the_endpoint_does_not_exist() {
    let up = Upstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    let gw = Gateway::start_in(dir, &crate::audit::config(up.addr, ""));
    let a = post(&gw, Some(TOKEN), "application/json", full(record("x").to_string())).await;
    assert_eq!(a.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durable_mode_a_record_is_on_disk_before_its_204() {
    let up = Upstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    std::fs::write(dir.path().join("collector.token"), TOKEN).unwrap();
    let gw = Gateway::start_in(dir, &crate::audit::config(up.addr, "mode = \"durable\"\n\n[audit.collector]\ntoken_file = \"collector.token\"\n"));
    let before = metric(std::str::from_utf8(&gw.admin("GET", "/metrics", None).await.body).unwrap(), "portcullis_audit_durable_records_total");
    assert_eq!(post(&gw, Some(TOKEN), "application/json", full(record("durable-1").to_string())).await.status, 204);
    // No waiting: the answer came after the fsync.
    assert_eq!(edge_records(&gw).len(), 1);
    let after = metric(std::str::from_utf8(&gw.admin("GET", "/metrics", None).await.body).unwrap(), "portcullis_audit_durable_records_total");
    assert_eq!(after, before + 1);
}
