//! A real spin-sdk 5.2.0 HTTP component on the edge test runtime
//! (edge_runtime.rs), over real HTTP on loopback.
//!
//! The guest, for now, is the spike's `edge5` (docs/edge-on-spin-spike.md §1),
//! named by `PORTCULLIS_EDGE_TEST_WASM`. What these tests rely on from it:
//! every request adds one to `hits` in the `default` key-value store and
//! answers it in `x-hits`; `GET /forward` sends a GET to the URL in the
//! `upstream_url` variable (to `http://127.0.0.1:1/` when the variable is
//! undefined) and answers with that response's status and body; any other
//! path answers 200 `hello <path>`; a failure answers 500 and writes the error
//! to stderr.

use crate::edge_runtime::{EdgeOptions, EdgeRuntime};
use crate::support::*;
use std::path::PathBuf;

/// The component under test. The one line to change when the edge component
/// is built by host/build.rs: `PathBuf::from(env!("PORTCULLIS_EDGE_WASM"))`
/// (the tests' guest contract above then moves to that component's behaviour).
fn edge_wasm() -> PathBuf {
    PathBuf::from(std::env::var_os("PORTCULLIS_EDGE_TEST_WASM").expect("set PORTCULLIS_EDGE_TEST_WASM to a spin-sdk HTTP component: the spike's edge5.wasm (docs/edge-on-spin-spike.md §1)"))
}

fn with_default_store() -> EdgeOptions {
    EdgeOptions { key_value_stores: vec!["default".into()], ..EdgeOptions::default() }
}

fn hits(a: &Answer) -> u64 {
    a.header("x-hits").unwrap_or_else(|| panic!("no x-hits in a {} answer: {}", a.status, String::from_utf8_lossy(&a.body))).parse().unwrap()
}

#[tokio::test]
async fn edge_component_answers_and_reports_its_cold_start() {
    let wasm = edge_wasm();
    let edge = EdgeRuntime::start(&wasm, with_default_store()).await;
    let before = edge.cold_start();
    assert_eq!((before.first_instantiate, before.first_response), (None, None), "no request yet");
    assert_eq!(before.component_bytes, std::fs::metadata(&wasm).unwrap().len());

    let a = get(&edge.url("/hello"), &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(&a.body[..], b"hello /hello");
    assert_eq!(hits(&a), 1);

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
    assert!(edge.failures().is_empty(), "{:?}", edge.failures());
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance_and_key_value_state_persists() {
    let edge = EdgeRuntime::start(&edge_wasm(), with_default_store()).await;
    // One keep-alive connection: still one instance per request, as in Spin.
    let client = client();
    for n in 1..=5 {
        let a = send(&client, http::Request::get(edge.url(&format!("/r{n}"))).body(full("")).unwrap()).await;
        assert_eq!(a.status, 200);
        assert_eq!(hits(&a), n, "the count lives in the key-value store, not in the instance");
    }
    assert_eq!(edge.instances(), 5);
    assert_eq!(edge.kv_get("default", "hits").as_deref(), Some(&b"5"[..]));

    // Another application has its own stores.
    let other = EdgeRuntime::start(&edge_wasm(), with_default_store()).await;
    assert_eq!(hits(&get(&other.url("/"), &[]).await), 1);
    assert_eq!(edge.kv_get("default", "hits").as_deref(), Some(&b"5"[..]));
}

#[tokio::test]
async fn a_store_not_granted_is_access_denied() {
    let edge = EdgeRuntime::start(&edge_wasm(), EdgeOptions { key_value_stores: vec!["sessions".into()], ..EdgeOptions::default() }).await;
    let a = get(&edge.url("/"), &[]).await;
    assert_eq!(a.status, 500);
    assert!(edge.stderr().contains("AccessDenied") || edge.stderr().to_lowercase().contains("access denied"), "stderr: {}", edge.stderr());
    assert_eq!(edge.kv_get("default", "hits"), None);
    assert_eq!(edge.kv_get("sessions", "hits"), None);
    assert!(edge.failures().is_empty(), "the guest answered the 500 itself: {:?}", edge.failures());
}

#[tokio::test]
async fn variables_reach_the_guest_and_an_allowed_upstream_is_reached() {
    let origin = Upstream::start("origin").await;
    let opts = EdgeOptions {
        variables: vec![("upstream_url".into(), format!("http://{}/from-edge", origin.addr))],
        allowed_outbound_hosts: vec![format!("http://{}", origin.addr)],
        ..with_default_store()
    };
    let edge = EdgeRuntime::start(&edge_wasm(), opts).await;
    let a = get(&edge.url("/forward"), &[]).await;
    assert_eq!(a.status, 200, "{} / stderr: {}", String::from_utf8_lossy(&a.body), edge.stderr());
    let echo = a.json();
    assert_eq!(echo["service"], "origin");
    assert_eq!(echo["path"], "/from-edge");
    assert_eq!(echo["headers"]["host"], origin.addr.to_string());
    assert_eq!(origin.requests(), ["/from-edge"]);
    assert!(edge.denied().is_empty());
}

#[tokio::test]
async fn an_upstream_not_in_allowed_outbound_hosts_is_refused() {
    let (allowed, other) = (Upstream::start("allowed").await, Upstream::start("other").await);
    let opts = EdgeOptions {
        variables: vec![("upstream_url".into(), format!("http://{}/secret", other.addr))],
        allowed_outbound_hosts: vec![format!("http://{}", allowed.addr)],
        ..with_default_store()
    };
    let edge = EdgeRuntime::start(&edge_wasm(), opts).await;
    let a = get(&edge.url("/forward"), &[]).await;
    assert_eq!(a.status, 500, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(edge.denied(), [format!("http://{}", other.addr)]);
    assert_eq!(other.connections.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing was sent");
    assert!(allowed.requests().is_empty());
    assert!(edge.stderr().to_lowercase().contains("denied"), "the guest saw HTTP-request-denied; stderr: {}", edge.stderr());
    assert!(edge.failures().is_empty(), "the guest answered the 500 itself: {:?}", edge.failures());
}

#[tokio::test]
async fn an_undefined_variable_is_undefined_in_the_guest() {
    // No variables: the guest falls back to http://127.0.0.1:1/, which no entry allows.
    let edge = EdgeRuntime::start(&edge_wasm(), EdgeOptions { allowed_outbound_hosts: vec!["http://localhost:8080".into()], ..with_default_store() }).await;
    assert_eq!(get(&edge.url("/forward"), &[]).await.status, 500);
    assert_eq!(edge.denied(), ["http://127.0.0.1:1"]);
}

#[tokio::test]
async fn load_errors_name_the_entry() {
    let wasm = edge_wasm();
    let err = |opts| {
        let wasm = wasm.clone();
        async move { EdgeRuntime::try_start(&wasm, opts).await.err().expect("a load error").to_string() }
    };
    let e = err(EdgeOptions { allowed_outbound_hosts: vec!["http://127.0.0.1:8081".into(), "http://127.0.0.1:8081/api".into()], ..EdgeOptions::default() }).await;
    assert_eq!(e, r#"allowed_outbound_hosts[1]: "http://127.0.0.1:8081/api": has a path but is not allowed to"#);
    let e = err(EdgeOptions { variables: vec![("upstream-url".into(), "x".into())], ..EdgeOptions::default() }).await;
    assert_eq!(e, r#"variables: "upstream-url": may contain only lowercase letters, digits and '_'"#);

    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"not a component").unwrap();
    assert!(EdgeRuntime::try_start(&not_wasm, EdgeOptions::default()).await.is_err());
}
