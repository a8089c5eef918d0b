//! Hot reload: no request lost across 100 reloads; rejected reloads keep the
//! old chain; streams survive; file watching and SIGHUP; the admin endpoints.

use crate::support::*;
use http::Request;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";

/// A config whose route runs the test policy stamping `x-version: <version>`.
fn config(up: &Upstream, component: &str, mode: &str, version: &str, watch: bool) -> String {
    format!(
        r#"
[gateway]
audit_log = "audit.jsonl"
watch = {watch}

[admin]
address = "127.0.0.1:0"
token_file = "admin.token"

[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.stamp]
component = "{component}"
settings = {{ mode = "{mode}", name = "x-version", value = "{version}" }}

[[pools]]
name = "up"
targets = ["{addr}"]

[[routes]]
name = "all"
path = "/"
pools = ["up"]
chain = ["stamp"]
"#,
        addr = up.addr
    )
}

fn setup(up: &Upstream, watch: bool) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::copy(TEST_POLICY, dir.path().join("stamp.wasm")).unwrap();
    Gateway::start_in(dir, &config(up, "stamp.wasm", "header", "v1", watch))
}

fn rewrite(gw: &Gateway, text: &str) {
    // Write then rename, as editors and deploy tools do: the reader never sees half a file.
    let tmp = gw.dir().join("gateway.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, gw.dir().join("gateway.toml")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_lose_no_request() {
    let up = Upstream::start("up").await;
    let gw = setup(&up, false);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, ok, bad, url) = (stop.clone(), ok.clone(), bad.clone(), gw.url("/load"));
        load.push(tokio::spawn(async move {
            let client = client();
            // Bounded: stops when told, or after 60 s / 200k requests whatever happens.
            let end = Instant::now() + Duration::from_secs(60);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < end && seen.len() < 200_000 {
                let a = send(&client, Request::get(&url).body(full("")).unwrap()).await;
                let versions: Vec<String> = a.headers.get_all("x-version").iter().map(|v| v.to_str().unwrap().to_string()).collect();
                if a.status == 200 && versions.len() == 1 && (versions[0] == "v1" || versions[0] == "v2") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                seen.push(versions.join(","));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut durations = Vec::new();
    for i in 0..100 {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        rewrite(&gw, &config(&up, "stamp.wasm", "header", version, false));
        let a = gw.admin("POST", "/admin/reload", Some(TOKEN)).await;
        assert_eq!(a.status, 200, "reload {i}: {}", String::from_utf8_lossy(&a.body));
        durations.push(a.json()["duration_ms"].as_f64().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in load {
        total += l.await.unwrap().len();
    }
    durations.sort_by(f64::total_cmp);
    eprintln!("{total} requests during 100 reloads; reload duration p50 {:.2} ms, max {:.2} ms", durations[50], durations[99]);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "failed or mis-stamped responses during reloads");
    assert!(ok.load(Ordering::Relaxed) > 100, "the load loop made too few requests to mean anything");
    // The last reload (i = 99) set v1: only v1 from now on.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/after"), &[]).await.header("x-version"), Some("v1"));
    }
    let metrics = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    assert!(metrics.contains("portcullis_reloads_total{result=\"ok\"} 100"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_reloads_keep_the_old_chain_serving() {
    let up = Upstream::start("up").await;
    let gw = setup(&up, false);
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-version"), Some("v1"));

    // A component whose check-config fails.
    rewrite(&gw, &config(&up, "stamp.wasm", "fail-check", "v9", false));
    let a = gw.admin("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(a.status, 422);
    let reasons = a.json()["reasons"].to_string();
    assert!(reasons.contains("policies.stamp: check-config refused the settings: setting \\\"mode\\\": fail-check always fails its check"), "{reasons}");
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-version"), Some("v1"));

    // A file that is not WebAssembly.
    std::fs::write(gw.dir().join("broken.wasm"), b"this is not wasm").unwrap();
    rewrite(&gw, &config(&up, "broken.wasm", "header", "v9", false));
    let a = gw.admin("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(a.status, 422);
    let reasons = a.json()["reasons"].to_string();
    assert!(reasons.contains("gateway.toml:18:13: policies.stamp.component: component broken.wasm does not load: failed to parse WebAssembly module: magic header not detected"), "{reasons}");
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-version"), Some("v1"));

    // A syntax error.
    rewrite(&gw, "[[listeners]\nname = ");
    let a = gw.admin("POST", "/admin/reload", Some(TOKEN)).await;
    assert_eq!(a.status, 422);
    let reasons = a.json()["reasons"].to_string();
    assert!(reasons.contains("gateway.toml:1:"), "{reasons}");
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-version"), Some("v1"));

    let metrics = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    assert!(metrics.contains("portcullis_reloads_total{result=\"rejected\"} 3"), "{metrics}");
    // Each attempt is in the audit log (the plain log's writer gathers for
    // a few milliseconds before it writes, so wait for it, bounded).
    let reloads = || gw.audit_records().into_iter().filter(|r| r["event"] == "reload").collect::<Vec<_>>();
    assert!(eventually(Duration::from_secs(5), || reloads().len() >= 3).await, "{:?}", reloads());
    let events = reloads();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e["result"] == "rejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_started_before_a_reload_completes_after_it() {
    let up = Upstream::start("up").await;
    let gw = setup(&up, false);
    let total: u64 = 32 * 1024 * 1024;
    let resp = client().request(Request::get(gw.url(&format!("/download/{total}"))).body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.headers().get("x-version").unwrap(), "v1");
    let mut body = resp.into_body();
    let mut got = 0u64;
    // Read a little, reload twice, read the rest.
    while got < 1024 * 1024 {
        got += body.frame().await.unwrap().unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    for v in ["v2", "v1"] {
        rewrite(&gw, &config(&up, "stamp.wasm", "header", v, false));
        assert_eq!(gw.admin("POST", "/admin/reload", Some(TOKEN)).await.status, 200);
    }
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_and_sighup_trigger_reloads() {
    let up = Upstream::start("up").await;
    let gw = setup(&up, true);
    assert_eq!(get(&gw.url("/"), &[]).await.header("x-version"), Some("v1"));

    rewrite(&gw, &config(&up, "stamp.wasm", "header", "v2", true));
    let mut changed = false;
    for _ in 0..400 {
        if get(&gw.url("/"), &[]).await.header("x-version") == Some("v2") {
            changed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(changed, "editing the config did not reload it within 20 s");

    // SIGHUP, with watching off so only the signal can have done it.
    rewrite(&gw, &config(&up, "stamp.wasm", "header", "v3", false));
    tokio::time::sleep(Duration::from_millis(600)).await; // the watcher may pick this edit up too: let it settle
    rewrite(&gw, &config(&up, "stamp.wasm", "header", "v4", false));
    std::process::Command::new("kill").args(["-HUP", &gw.child.id().to_string()]).status().unwrap();
    let mut reloaded = false;
    for _ in 0..400 {
        if get(&gw.url("/"), &[]).await.header("x-version") == Some("v4") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "SIGHUP did not reload within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_token_and_list_policies() {
    let up = Upstream::start("up").await;
    let gw = setup(&up, false);
    assert_eq!(gw.admin("GET", "/healthz", None).await.status, 200);
    assert_eq!(gw.admin("GET", "/readyz", None).await.status, 200);
    assert_eq!(gw.admin("POST", "/admin/reload", None).await.status, 401);
    assert_eq!(gw.admin("GET", "/admin/policies", Some("wrong-token-of-wrong-length")).await.status, 401);
    let a = gw.admin("GET", "/admin/policies", Some(TOKEN)).await;
    assert_eq!(a.status, 200);
    let j = a.json();
    let stamp = j["policies"].as_array().unwrap().iter().find(|p| p["name"] == "stamp").unwrap();
    assert_eq!(stamp["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(stamp["source"], "stamp.wasm");
    // The audit record of a request names the chain version that decided it.
    get(&gw.url("/x"), &[]).await;
    assert!(eventually(Duration::from_secs(5), || !gw.audit_records().is_empty()).await);
    assert_eq!(gw.audit_records()[0]["chain"], j["chain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_routes_and_pools_and_removes_them() {
    let up = Upstream::start("up").await;
    let other = Upstream::start("other").await;
    let gw = setup(&up, false);
    assert_eq!(get(&gw.url("/other/x"), &[]).await.json()["service"], "up");
    // Route order matters only for equal rank; the longer prefix wins anyway.
    let more = config(&up, "stamp.wasm", "header", "v1", false)
        + &format!("\n[[pools]]\nname = \"other\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"other\"\npath = \"/other\"\npools = [\"other\"]\n", other.addr);
    rewrite(&gw, &more);
    assert_eq!(gw.admin("POST", "/admin/reload", Some(TOKEN)).await.status, 200);
    let a = get(&gw.url("/other/x"), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["service"], "other");
    // And back: the route and its pool are gone.
    rewrite(&gw, &config(&up, "stamp.wasm", "header", "v1", false));
    assert_eq!(gw.admin("POST", "/admin/reload", Some(TOKEN)).await.status, 200);
    assert_eq!(get(&gw.url("/other/x"), &[]).await.json()["service"], "up");
}
