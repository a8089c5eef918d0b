//! Hostile and misbehaving policies fail closed; instances keep nothing between requests;
//! facts are namespaced; later policies see earlier facts; short-circuit semantics.

use crate::support::*;
use std::time::Duration;

async fn policy_gateway(up: &Upstream) -> Gateway {
    let mut config = config_head();
    config.push_str("[runtime]\npolicy_deadline_ms = 200\npolicy_memory = \"2MiB\"\n");
    config.push_str("[admin]\naddress = \"127.0.0.1:0\"\n");
    for (name, mode, extra) in [
        ("looper", "loop", ""),
        ("grower", "grow", ""),
        ("trapper", "trap", ""),
        ("rememberer", "remember", ""),
        ("rememberer-both", "remember", "response-header = \"x-both\""),
        ("hijacker", "bad-fact", ""),
        ("first", "facts", "namespace = \"first\""),
        ("second", "facts", "namespace = \"second\""),
        ("teapot", "respond", "status = 418\nresponse-header = \"x-teapot-saw-response\""),
        ("stamp", "header", "name = \"x-stamp\"\nvalue = \"v1\"\nresponse-header = \"x-stamp-on-response\""),
    ] {
        config.push_str(&format!("[policies.{name}]\ncomponent = \"{TEST_POLICY}\"\n[policies.{name}.settings]\nmode = \"{mode}\"\n{extra}\n"));
    }
    config.push_str(&format!("[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n", up.addr));
    for (route, chain) in [
        ("loop", "looper"),
        ("grow", "grower"),
        ("trap", "trapper"),
        ("remember", "rememberer"),
        ("both", "rememberer-both"),
        ("hijack", "hijacker"),
        ("facts", "first\", \"second"),
        ("short", "stamp\", \"teapot\", \"trapper"),
        ("ok", "stamp"),
    ] {
        config.push_str(&format!("[[routes]]\nname = \"{route}\"\npath = \"/{route}\"\npools = [\"up\"]\nchain = [\"{chain}\"]\n"));
    }
    Gateway::start(&config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policies_are_refused_and_the_gateway_keeps_serving() {
    let up = Upstream::start("up").await;
    let gw = policy_gateway(&up).await;
    for (path, class) in [("/loop", "deadline"), ("/grow", "memory-limit"), ("/trap", "trap")] {
        let a = get(&gw.url(path), &[]).await;
        let p = assert_problem(&a, 500);
        assert_eq!(p["type"], format!("urn:portcullis:problem:policy-{class}"), "{path}");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("Policy"), "the problem names the policy: {detail}");
        assert!(!detail.contains("wasm"), "no internals in the problem: {detail}");
        // The very next ordinary request is served.
        let ok = get(&gw.url("/ok"), &[]).await;
        assert_eq!(ok.status, 200, "after {path}");
    }
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 3, "refused requests never reach the upstream");

    // Each failure is audited with the policy and its class.
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 6).await);
    let records = gw.audit_records();
    let looped = records.iter().find(|r| r["route"] == "loop").unwrap();
    assert_eq!(looped["status"], 500);
    assert_eq!(looped["verdicts"][1], serde_json::json!(["looper", "failed:deadline"]));
    let grown = records.iter().find(|r| r["route"] == "grow").unwrap();
    assert_eq!(grown["verdicts"][1], serde_json::json!(["grower", "failed:memory-limit"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_instance_keeps_nothing_between_requests() {
    let up = Upstream::start("up").await;
    let gw = policy_gateway(&up).await;
    for i in 0..5 {
        let a = get(&gw.url(&format!("/remember/patient-{i}")), &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-previous-path"), Some("none"), "request {i} saw a path left by an earlier request");
    }
}

/// A policy with an `on-response` may get it in the instance its
/// `on-request` used (one instantiation per request, not two), but an
/// instance never serves two requests: under concurrency each request sees
/// its own path or none, never another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_response_shares_the_request_s_instance_and_no_other() {
    let up = Upstream::start("up").await;
    let gw = policy_gateway(&up).await;
    // One at a time the kept budget is never spent: on-response runs in the
    // instance of the same request's on-request.
    for i in 0..3 {
        let a = get(&gw.url(&format!("/both/one-{i}")), &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-previous-path"), Some("none"), "request {i}: on-request saw an earlier request's path");
        assert_eq!(a.header("x-remembered-on-response"), Some(format!("/both/one-{i}").as_str()), "request {i}: on-response ran in another instance");
    }
    // Many at once: their on-request and on-response calls interleave.
    let answers = futures_util::future::join_all((0..40).map(|i| {
        let url = gw.url(&format!("/both/many-{i}"));
        async move { (i, get(&url, &[]).await) }
    }))
    .await;
    for (i, a) in answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-previous-path"), Some("none"), "request {i}");
        let own = format!("/both/many-{i}");
        let seen = a.header("x-remembered-on-response").unwrap_or("missing").to_string();
        assert!(seen == own || seen == "none", "request {i} saw {seen:?} in on-response, another request's path");
    }
    // Every instance kept for an on-response was given back.
    let text = String::from_utf8(gw.admin("GET", "/metrics", None).await.body.to_vec()).unwrap();
    assert!(text.lines().any(|l| l == "portcullis_policy_instances_kept 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_are_namespaced_and_flow_down_the_chain() {
    let up = Upstream::start("up").await;
    let gw = policy_gateway(&up).await;

    // A policy writing route.name is refused: fail closed.
    let p = assert_problem(&get(&gw.url("/hijack"), &[]).await, 500);
    assert_eq!(p["type"], "urn:portcullis:problem:policy-contract");

    // The second policy sees the router's and the first policy's facts.
    let a = get(&gw.url("/facts"), &[]).await;
    assert_eq!(a.status, 200);
    let seen = a.json()["headers"]["x-seen-facts"].as_str().unwrap().to_string();
    assert!(seen.contains("route.name=facts"), "{seen}");
    assert!(seen.contains("first.seen="), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_short_circuits_but_response_hooks_still_run() {
    let up = Upstream::start("up").await;
    let gw = policy_gateway(&up).await;
    // chain: stamp (proceeds, response header) → teapot (responds 418) → trapper (never runs).
    let a = get(&gw.url("/short"), &[]).await;
    assert_eq!(a.status, 418);
    assert_eq!(a.header("x-stamp"), Some("v1"), "edits of earlier policies reach the reply");
    assert_eq!(a.header("x-teapot-saw-response"), Some("1"), "the answering policy's on-response runs");
    assert_eq!(a.header("x-stamp-on-response"), Some("1"), "earlier policies' on-response runs");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(eventually(Duration::from_secs(5), || !gw.audit_records().is_empty()).await);
    let r = &gw.audit_records()[0];
    assert_eq!(r["verdicts"], serde_json::json!([["router", "proceed"], ["stamp", "proceed"], ["teapot", "respond:418"], ["trapper", "skipped"]]));
}

/// `[policies.<name>] memory` and `deadline_ms` override `[runtime]` for that
/// policy alone: the same component and work pass under the runtime's
/// limits and fail closed, audited with the broken limit, under its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_policy_limits_override_the_runtime_are_reported_and_audited() {
    const TOKEN: &str = "test-admin-token-limits-0123456789";
    let up = Upstream::start("up").await;
    let mut config = config_head();
    config.push_str("[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n");
    config.push_str("[runtime]\npolicy_deadline_ms = 2000\npolicy_memory = \"8MiB\"\n");
    for (name, limits, work) in [
        ("roomy", "", "kib = \"2048\""),
        ("cramped", "memory = \"1MiB\"", "kib = \"2048\""),
        ("patient", "", "ms = \"300\""),
        ("hurried", "deadline_ms = 50", "ms = \"300\""),
    ] {
        config.push_str(&format!("[policies.{name}]\ncomponent = \"{TEST_POLICY}\"\n{limits}\n[policies.{name}.settings]\nmode = \"work\"\n{work}\n"));
    }
    config.push_str(&format!("[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n", up.addr));
    for name in ["roomy", "cramped", "patient", "hurried"] {
        config.push_str(&format!("[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\npools = [\"up\"]\nchain = [\"{name}\"]\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let gw = Gateway::start_in(dir, &config);

    for ok in ["/roomy", "/patient"] {
        let a = get(&gw.url(ok), &[]).await;
        assert_eq!(a.status, 200, "{ok}: {}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.header("x-worked"), Some("1"));
    }
    let p = assert_problem(&get(&gw.url("/cramped"), &[]).await, 500);
    assert_eq!(p["type"], "urn:portcullis:problem:policy-memory-limit");
    let p = assert_problem(&get(&gw.url("/hurried"), &[]).await, 500);
    assert_eq!(p["type"], "urn:portcullis:problem:policy-deadline");
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 2, "refused requests never reach the upstream");

    // Reported by the admin API.
    let listed = gw.admin("GET", "/admin/policies", Some(TOKEN)).await.json();
    let by_name = |n: &str| listed["policies"].as_array().unwrap().iter().find(|p| p["name"] == n).cloned().unwrap();
    assert_eq!((by_name("cramped")["memory"].clone(), by_name("cramped")["deadline_ms"].clone()), (serde_json::json!(1 << 20), serde_json::json!(2000)));
    assert_eq!((by_name("hurried")["memory"].clone(), by_name("hurried")["deadline_ms"].clone()), (serde_json::json!(8 << 20), serde_json::json!(50)));
    assert_eq!(by_name("roomy")["memory"], serde_json::json!(8 << 20));

    // Audited: the failure class and the limit that was broken.
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().len() >= 4).await);
    let records = gw.audit_records();
    let cramped = records.iter().find(|r| r["route"] == "cramped").unwrap();
    assert_eq!(cramped["verdicts"][1], serde_json::json!(["cramped", "failed:memory-limit"]));
    assert_eq!(cramped["error"], "policy-memory-limit");
    assert_eq!(cramped["policies"]["cramped"]["limit"], "memory 1048576 bytes");
    let hurried = records.iter().find(|r| r["route"] == "hurried").unwrap();
    assert_eq!(hurried["verdicts"][1], serde_json::json!(["hurried", "failed:deadline"]));
    assert_eq!(hurried["policies"]["hurried"]["limit"], "deadline 50 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_complete_that_overruns_its_policys_deadline_is_audited_with_the_limit() {
    let up = Upstream::start("up").await;
    let mut config = config_head();
    config.push_str(&format!(
        "[policies.slow-complete]\ncomponent = \"{TEST_POLICY}\"\ndeadline_ms = 50\n[policies.slow-complete.settings]\nmode = \"header\"\nname = \"x-a\"\nvalue = \"1\"\ncomplete-ms = \"400\"\n\
         [[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"done\"\npath = \"/\"\npools = [\"up\"]\nchain = [\"slow-complete\"]\n",
        up.addr
    ));
    let gw = Gateway::start(&config);
    // The answer was sent before on-complete ran: the client gets it.
    let a = get(&gw.url("/x"), &[]).await;
    assert_eq!(a.status, 200);
    assert!(eventually(Duration::from_secs(10), || !gw.audit_records().is_empty()).await);
    let r = gw.audit_records().remove(0);
    assert_eq!(r["policies"]["slow-complete"]["on-complete"], "failed:deadline", "{r}");
    assert_eq!(r["policies"]["slow-complete"]["limit"], "deadline 50 ms", "{r}");
}
