//! Graceful shutdown: on SIGTERM the gateway stops accepting, finishes the
//! requests in flight, and exits 0.

use crate::support::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let up = Upstream::start("up").await;
    let mut gw = Gateway::start(&format!(
        "{}\n[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"up\"]\n",
        config_head().replacen("[gateway]", "[gateway]\nshutdown_grace_ms = 10000", 1),
        up.addr
    ));
    let url = gw.url("/slow/1000");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &gw.child.id().to_string()]).status().unwrap();

    // The request in flight is answered in full.
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["path"], "/slow/1000");

    // New connections are refused once the listener has closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err(), "the listener still accepts after SIGTERM");

    // And the process exits 0 by itself, well within the grace period.
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = gw.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the gateway did not exit within 5 s of its last request");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// The evidence-log config of the audit tests (`crate::audit::config`) as
/// a node under a rolling deploy has it: a long grace period and `/slow`
/// proxied too.
fn evidence_config(upstream: std::net::SocketAddr) -> String {
    let config = crate::audit::config(upstream, "").replace("shutdown_grace_ms = 2000\n", "shutdown_grace_ms = 20000\n");
    format!("{config}\n[[routes]]\nname = \"slow\"\npath = \"/slow\"\npools = [\"up\"]\n")
}

/// A bounded load — 8 keep-alive clients × 40 requests, half on a durable
/// route — with SIGTERM once a third is answered. Asserts that every
/// request sent before the signal is answered in full, that the gateway
/// exits 0, and that every answered request has its completion record.
async fn sigterm_under_load(gw: &mut Gateway) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 40;
    let addr = gw.addr;

    // Set just before the signal is sent: a request started while it was
    // false had been written to its socket before the gateway was told to stop.
    let signalled = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (signalled, answered) = (signalled.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            // Each client: one keep-alive connection, requests one after another.
            let client = client();
            let mut outcomes = Vec::new(); // (sent before the signal, status or error)
            for i in 0..REQUESTS {
                let path = if i % 2 == 0 { format!("/slow/20?c={c}&i={i}") } else { format!("/durable/{c}/{i}") };
                let before = !signalled.load(Ordering::SeqCst);
                let req = http::Request::get(format!("http://{addr}{path}")).body(full("")).unwrap();
                let result = match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes());
                        match body {
                            Ok(_) => Ok(status),
                            Err(e) => Err(format!("body cut: {e}")),
                        }
                    }
                    Ok(Err(e)) => Err(format!("{e:?}")),
                    Err(_) => Err("no answer in 30 s".into()),
                };
                if result.is_ok() {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                let refused = result.is_err();
                outcomes.push((before, path, result));
                if refused && !before {
                    break; // the gateway is gone: this client is done
                }
            }
            outcomes
        }));
    }
    // Signal once the load is well under way (a third of it answered).
    assert!(eventually(Duration::from_secs(60), || answered.load(Ordering::SeqCst) >= (CLIENTS * REQUESTS / 3) as u64).await, "the load did not get going");
    signalled.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await; // widen the gap between "sent before" and the signal
    std::process::Command::new("kill").args(["-TERM", &gw.child.id().to_string()]).status().unwrap();

    let mut before_ok = 0;
    let mut after = 0;
    for client in clients {
        for (before, path, result) in client.await.unwrap() {
            if before {
                assert_eq!(result, Ok(200), "{path} was sent before SIGTERM and must be answered in full");
                before_ok += 1;
            } else {
                after += 1;
            }
        }
    }
    eprintln!("shutdown under load: {before_ok} requests sent before SIGTERM, all answered; {after} sent after it");
    assert!(before_ok >= CLIENTS * REQUESTS / 3, "{before_ok} requests answered before the signal");
    assert!(after >= 1, "some requests were in flight or sent when the signal came");

    // Exit 0 by itself, within the grace period.
    let mut status = None;
    for _ in 0..400 {
        if let Some(s) = gw.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("the gateway did not exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status {status}");

    // Every answered request has its completion record (the plain file is
    // flushed and fsynced, the evidence log sealed, before the exit).
    let records = gw.audit_records();
    let answered_ok: usize = answered.load(Ordering::SeqCst) as usize;
    let request_records = records.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/slow/") || p.starts_with("/durable/")) && r["phase"] != "decision").count();
    assert_eq!(request_records, answered_ok, "one completion record per answered request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_request_and_the_audit_log_verifies() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    crate::audit::write_key(dir.path());
    let mut gw = Gateway::start_in(dir, &evidence_config(up.addr));
    sigterm_under_load(&mut gw).await;
    // The log verifies: chain, Merkle roots, the signed checkpoint sealing it at shutdown.
    let audit_dir = gw.dir().join("audit");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["audit", "verify", "--dir"]).arg(&audit_dir).env("PORTCULLIS_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "audit verify failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("ok:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_the_plain_audit_file_loses_no_record() {
    let up = Upstream::start("up").await;
    let config = format!(
        "{}\n[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"slow\"\npath = \"/slow\"\npools = [\"up\"]\n[[routes]]\nname = \"durable\"\npath = \"/durable\"\npools = [\"up\"]\n",
        config_head().replacen("[gateway]", "[gateway]\nshutdown_grace_ms = 20000", 1),
        up.addr
    );
    let mut gw = Gateway::start(&config);
    sigterm_under_load(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_the_reason_when_the_audit_log_is_not_writable() {
    // The plain JSON-lines file: deleted under the gateway, records would vanish.
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\n[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"up\"]\n",
        config_head(),
        up.addr
    ));
    let ready = gw.admin("GET", "/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["audit"], "writable");
    std::fs::remove_file(gw.dir().join("audit.jsonl")).unwrap();
    let ready = gw.admin("GET", "/readyz", None).await;
    assert_eq!(ready.status, 503);
    let reason = ready.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("audit.jsonl") && reason.contains("not writable"), "{reason}");
    // Liveness and serving go on; only readiness (taking new traffic) says no.
    assert_eq!(gw.admin("GET", "/healthz", None).await.status, 200);
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    // Restored: ready again.
    std::fs::write(gw.dir().join("audit.jsonl"), "").unwrap();
    assert_eq!(gw.admin("GET", "/readyz", None).await.status, 200);

    // The evidence log: its directory gone.
    let dir = tempfile::tempdir().unwrap();
    crate::audit::write_key(dir.path());
    let gw = Gateway::start_in(dir, &evidence_config(up.addr));
    assert_eq!(gw.admin("GET", "/readyz", None).await.status, 200);
    std::fs::remove_dir_all(gw.dir().join("audit")).unwrap();
    let ready = gw.admin("GET", "/readyz", None).await;
    assert_eq!(ready.status, 503);
    let reason = ready.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("audit log directory") && reason.contains("not writable"), "{reason}");
}
