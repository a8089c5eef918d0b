//! Upstream failures: 502 when down, ejection of a failing target, 504 when slow, active health checks.

use crate::support::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_upstream_gives_502() {
    // A port with nothing listening: bind, note the address, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = Gateway::start(&format!(
        "{}\n[[pools]]\nname = \"gone\"\ntargets = [\"{dead}\"]\n[[routes]]\nname = \"gone\"\npath = \"/\"\npools = [\"gone\"]\n",
        config_head()
    ));
    let a = get(&gw.url("/x"), &[]).await;
    let p = assert_problem(&a, 502);
    assert_eq!(p["type"], "urn:portcullis:problem:upstream-unreachable");
    assert!(!a.body.windows(9).any(|w| w == b"127.0.0.1"), "the problem body must not leak upstream addresses");
    assert!(a.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_target_is_ejected_and_gets_no_more_traffic() {
    let broken = Upstream::broken().await;
    let good = Upstream::start("good").await;
    let gw = Gateway::start(&format!(
        r#"{head}
[[pools]]
name = "mixed"
targets = ["{broken}", "{good}"]
passive = {{ max_failures = 2, eject_ms = 60000 }}

[[routes]]
name = "mixed"
path = "/"
pools = ["mixed"]
"#,
        head = config_head(),
        broken = broken.addr,
        good = good.addr
    ));
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(get(&gw.url(&format!("/r/{i}")), &[]).await.status);
    }
    let failures = statuses.iter().filter(|s| **s == 502).count();
    assert!(failures <= 2, "at most max_failures requests fail before ejection: {statuses:?}");
    let hits_after = broken.connections.load(Ordering::SeqCst);
    for i in 0..10 {
        assert_eq!(get(&gw.url(&format!("/after/{i}")), &[]).await.status, 200);
    }
    assert_eq!(broken.connections.load(Ordering::SeqCst), hits_after, "an ejected target receives no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504() {
    let slow = Upstream::start("slow").await;
    let gw = Gateway::start(&format!(
        "{}\n[[pools]]\nname = \"slow\"\ntargets = [\"{}\"]\nresponse_timeout_ms = 300\n[[routes]]\nname = \"slow\"\npath = \"/\"\npools = [\"slow\"]\n",
        config_head(),
        slow.addr
    ));
    let a = get(&gw.url("/slow/5000"), &[]).await;
    let p = assert_problem(&a, 504);
    assert_eq!(p["type"], "urn:portcullis:problem:upstream-timeout");
    // A fast request on the same route still works.
    assert_eq!(get(&gw.url("/fast"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_dead_target_out() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good = Upstream::start("good").await;
    let gw = Gateway::start(&format!(
        r#"{head}
[[pools]]
name = "checked"
targets = ["{dead}", "{good}"]
passive = {{ max_failures = 1000 }}
health = {{ path = "/health", interval_ms = 50, timeout_ms = 200, unhealthy_after = 2 }}

[[routes]]
name = "checked"
path = "/"
pools = ["checked"]
"#,
        head = config_head(),
        good = good.addr
    ));
    // Wait for the probes to mark the dead target down (2 failures × 50 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    for i in 0..10 {
        let a = get(&gw.url(&format!("/r/{i}")), &[]).await;
        assert_eq!(a.status, 200, "request {i} went to the dead target");
    }
}
