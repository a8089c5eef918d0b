//! Bodies stream: 256 MiB each way with the gateway's memory bounded; body limits; keep-alive reuse.

use crate::support::*;
use http::Request;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const BIG: u64 = 256 * 1024 * 1024;
const RSS_HEADROOM_KIB: u64 = 64 * 1024;

async fn gateway_for(up: &Upstream, body_limit: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{head}
[[pools]]
name = "files"
targets = ["{addr}"]

[[routes]]
name = "files"
path = "/"
pools = ["files"]
body_limit = "{body_limit}"
"#,
        head = config_head(),
        addr = up.addr
    ))
}

/// Sample the gateway's RSS every 20 ms while `work` runs; returns the peak, KiB.
async fn peak_rss_during<F: std::future::Future<Output = ()>>(gw: &Gateway, work: F) -> u64 {
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pid = gw.child.id();
    let (p, d) = (peak.clone(), done.clone());
    let sampler = std::thread::spawn(move || {
        while !d.load(Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kib) = s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                p.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    work.await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    peak.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_upload_and_download_stream_with_bounded_memory() {
    let up = Upstream::start("files").await;
    let gw = gateway_for(&up, "1GiB").await;
    // Warm up (first instance, first connection), then take the idle size.
    assert_eq!(get(&gw.url("/warm"), &[]).await.status, 200);
    let idle = gw.rss_kib();

    let client = client();
    let peak_up = peak_rss_during(&gw, async {
        let req = Request::post(gw.url("/upload")).header("content-length", BIG.to_string()).body(generated_body(BIG)).unwrap();
        let a = send(&client, req).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["body_bytes"], BIG, "the upstream received every byte");
    })
    .await;

    let peak_down = peak_rss_during(&gw, async {
        let resp = client.request(Request::get(gw.url(&format!("/download/{BIG}"))).body(full("")).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                got += data.len() as u64;
            }
        }
        assert_eq!(got, BIG);
    })
    .await;

    eprintln!("gateway RSS: idle {idle} KiB, peak during upload {peak_up} KiB, during download {peak_down} KiB");
    assert!(peak_up < idle + RSS_HEADROOM_KIB, "upload grew RSS from {idle} to {peak_up} KiB");
    assert!(peak_down < idle + RSS_HEADROOM_KIB, "download grew RSS from {idle} to {peak_down} KiB");

    // The audit record counts the bytes.
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 3).await);
    let records = gw.audit_records();
    // Records are written when each response ends: find them by path, not position.
    let by_path = |p: &str| records.iter().find(|r| r["path"] == p).unwrap_or_else(|| panic!("no record for {p}")).clone();
    assert_eq!(by_path("/upload")["bytes_in"], BIG);
    assert_eq!(by_path(&format!("/download/{BIG}"))["bytes_out"], BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_answer_413() {
    let up = Upstream::start("files").await;
    let gw = gateway_for(&up, "1KiB").await;
    let client = client();

    // Declared too large: refused before a byte is read.
    let req = Request::post(gw.url("/upload")).header("content-length", "4096").body(generated_body(4096)).unwrap();
    assert_problem(&send(&client, req).await, 413);

    // Chunked, grows past the limit while streaming.
    let req = Request::post(gw.url("/upload")).body(generated_body(8 * 1024)).unwrap();
    assert_problem(&send(&client, req).await, 413);

    // Within the limit passes.
    let req = Request::post(gw.url("/upload")).body(generated_body(512)).unwrap();
    let a = send(&client, req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["body_bytes"], 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let up = Upstream::start("files").await;
    let gw = gateway_for(&up, "1MiB").await;
    let client = client();
    for i in 0..20 {
        let a = send(&client, Request::get(gw.url(&format!("/r/{i}"))).body(full("")).unwrap()).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 20);
    let conns = up.connections.load(Ordering::SeqCst);
    assert!(conns <= 2, "20 sequential requests opened {conns} upstream connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_answer_431_and_are_audited() {
    let up = Upstream::start("files").await;
    let config = config_head().replacen("[gateway]", "[gateway]\nmax_request_head = \"4KiB\"", 1);
    let gw = Gateway::start(&format!("{config}\n[[pools]]\nname = \"p\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\npools = [\"p\"]\n", up.addr));
    let big = "x".repeat(5000);
    let a = get(&gw.url("/x"), &[("x-padding", &big)]).await;
    let p = assert_problem(&a, 431);
    assert_eq!(p["type"], "urn:portcullis:problem:request-head-too-large");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    assert_eq!(get(&gw.url("/x"), &[("x-padding", "small")]).await.status, 200);
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 2).await);
    let records = gw.audit_records();
    let refused = records.iter().find(|r| r["status"] == 431).expect("a record for the 431");
    assert_eq!(refused["error"], "request-head-too-large");
}
