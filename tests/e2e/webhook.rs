//! The webhook-signature component in the real gateway, with the host's
//! digest stage (`[routes.body_hmac]`): an unsigned, wrongly signed or
//! re-bodied webhook is 401 and never reaches the service; a correctly
//! signed one passes with its body intact; the Evolution API's `apikey`
//! scheme; size and time bounds on the body; `check` on bad secrets.

use crate::support::*;
use hmac::{Hmac, KeyInit, Mac};
use http::Request;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::time::Duration;

const WEBHOOK: &str = env!("PORTCULLIS_WEBHOOK_SIGNATURE_WASM");
const SECRET: &[u8] = b"meta-app-secret-for-the-webhook-tests-0123";
const API_KEY: &str = "evolution-api-key-for-the-e2e-tests";

fn config(up: &Upstream) -> String {
    let key_digest = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    let mut c = config_head();
    c.push_str(&format!(
        r#"
[policies.webhook]
component = "{WEBHOOK}"
settings = {{ scheme = "hmac-sha256" }}

[policies.whatsapp-webhook]
component = "{WEBHOOK}"
settings = {{ scheme = "api-key", api-key-sha256 = ["{key_digest}"], strip-header = true }}

[[pools]]
name = "notify"
targets = ["{up}"]

[[routes]]
name = "meta-webhook"
path = "/webhooks/meta"
methods = ["POST"]
pools = ["notify"]
chain = ["webhook"]
[routes.body_hmac]
secret_file = "webhook.secret"
max_bytes = "4KiB"
timeout_ms = 500

[[routes]]
name = "whatsapp-webhook"
path = "/webhooks/whatsapp"
methods = ["POST"]
pools = ["notify"]
chain = ["whatsapp-webhook"]

[[routes]]
name = "unsigned-route"
path = "/webhooks/nodigest"
pools = ["notify"]
chain = ["webhook"]
"#,
        up = up.addr
    ));
    c
}

fn start(up: &Upstream) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    // The key file as an operator writes it, with a trailing newline (ignored).
    let mut secret = SECRET.to_vec();
    secret.push(b'\n');
    std::fs::write(dir.path().join("webhook.secret"), secret).unwrap();
    Gateway::start_in(dir, &config(up))
}

fn sign(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut req = Request::post(gw.url(path)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full(body.to_vec())).unwrap()).await
}

#[tokio::test]
async fn hmac_signed_webhooks_pass_and_everything_else_is_refused_before_the_service() {
    let up = Upstream::start("notify").await;
    let gw = start(&up);
    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"42","changes":[{"field":"messages"}]}]}"#;

    let a = post(&gw, "/webhooks/meta", &[], body).await;
    let p = assert_problem(&a, 401);
    assert!(p["detail"].as_str().unwrap().contains("not signed"), "{p}");

    let a = post(&gw, "/webhooks/meta", &[("x-hub-signature-256", &sign(b"another body"))], body).await;
    let p = assert_problem(&a, 401);
    assert!(p["detail"].as_str().unwrap().contains("does not match"), "{p}");

    let a = post(&gw, "/webhooks/meta", &[("x-hub-signature-256", "sha256=not-hex")], body).await;
    assert_problem(&a, 401);
    assert_eq!(up.requests.load(Ordering::SeqCst), 0, "no refused webhook reached the service");

    let a = post(&gw, "/webhooks/meta", &[("x-hub-signature-256", &sign(body))], body).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let echo = a.json();
    assert_eq!(echo["body_bytes"], body.len() as u64);
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(body)), "the service got the bytes that were verified");
    assert_eq!(echo["headers"]["content-length"], body.len().to_string());
    assert_eq!(up.requests.load(Ordering::SeqCst), 1);

    // Audit: the policy's outcome, never the signature; no digest either.
    let mut records = Vec::new();
    eventually(Duration::from_secs(10), || {
        records = gw.audit_records().into_iter().filter(|r| r["path"] == "/webhooks/meta").collect();
        records.len() >= 4
    })
    .await;
    // Records are written when each answer ends, not in request order.
    let mut outcomes: Vec<String> = records.iter().map(|r| r["policies"]["webhook"]["outcome"].as_str().unwrap_or("").to_string()).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["malformed", "mismatch", "missing", "ok"], "{records:?}");
    // The refused webhooks were received whole by the digest stage: counted in.
    for r in &records {
        assert_eq!(r["bytes_in"], body.len() as u64, "{r}");
    }
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&sign(body)[7..]), "the signature is not in the audit log");
}

#[tokio::test]
async fn a_route_without_a_host_digest_refuses_every_webhook() {
    let up = Upstream::start("notify").await;
    let gw = start(&up);
    let body = b"{}";
    let a = post(&gw, "/webhooks/nodigest", &[("x-hub-signature-256", &sign(body))], body).await;
    assert_problem(&a, 500);
    // A client cannot forge the host's fact with a header of the same name either.
    let a = post(&gw, "/webhooks/nodigest", &[("x-hub-signature-256", &sign(body)), ("body.hmac-sha256", "00")], body).await;
    assert_problem(&a, 500);
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_digest_stage_bounds_the_body_in_size_and_time() {
    let up = Upstream::start("notify").await;
    let gw = start(&up);
    // Declared too large: refused before reading.
    let big = vec![b'x'; 8 * 1024];
    let a = post(&gw, "/webhooks/meta", &[("x-hub-signature-256", &sign(&big))], &big).await;
    assert_problem(&a, 413);

    // Chunked (no length declared) and too large: cut off while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = format!("POST /webhooks/meta HTTP/1.1\r\nhost: localhost\r\nx-hub-signature-256: {}\r\ntransfer-encoding: chunked\r\n\r\n", sign(&big)).into_bytes();
    for chunk in big.chunks(1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let (_s, head) = raw_exchange(gw.addr, &raw).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A body that stops arriving: 408 after the route's timeout (500 ms).
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(format!("POST /webhooks/meta HTTP/1.1\r\nhost: localhost\r\nx-hub-signature-256: {}\r\ncontent-length: 100\r\n\r\n0123456789", sign(b"x")).as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.expect("an answer before the test's bound").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);

    // And the gateway goes on serving.
    let body = b"{\"ok\":true}";
    let a = post(&gw, "/webhooks/meta", &[("x-hub-signature-256", &sign(body))], body).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn the_evolution_api_key_scheme() {
    let up = Upstream::start("notify").await;
    let gw = start(&up);
    let body = br#"{"event":"messages.upsert","instance":"procare"}"#;
    assert_problem(&post(&gw, "/webhooks/whatsapp", &[], body).await, 401);
    assert_problem(&post(&gw, "/webhooks/whatsapp", &[("apikey", "guessed-key")], body).await, 401);
    assert_eq!(up.requests.load(Ordering::SeqCst), 0);
    let a = post(&gw, "/webhooks/whatsapp", &[("apikey", API_KEY)], body).await;
    assert_eq!(a.status, 200);
    let echo = a.json();
    assert!(echo["headers"].get("apikey").is_none(), "the key is not forwarded: {echo}");
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(body)), "api-key routes stream the body untouched");
}

#[test]
fn check_names_a_missing_or_weak_secret() {
    let dir = tempfile::tempdir().unwrap();
    let base = config_head();
    let route = |extra: &str| {
        format!(
            "{base}\n[policies.webhook]\ncomponent = \"{WEBHOOK}\"\nsettings = {{ scheme = \"hmac-sha256\" }}\n\n[[pools]]\nname = \"p\"\ntargets = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"hook\"\npath = \"/hook\"\npools = [\"p\"]\nchain = [\"webhook\"]\n[routes.body_hmac]\n{extra}\n"
        )
    };
    let cases = [
        ("secret_env = \"PORTCULLIS_TEST_UNSET_WEBHOOK_SECRET\"", "routes[0].body_hmac.secret_env", "is not set"),
        ("secret_file = \"missing.secret\"", "routes[0].body_hmac.secret_file", "cannot read"),
        ("secret_file = \"short.secret\"", "routes[0].body_hmac", "at least 32 are required"),
        ("", "routes[0].body_hmac", "exactly one of secret_file or secret_env"),
    ];
    std::fs::write(dir.path().join("short.secret"), "too-short\n").unwrap();
    for (extra, key, reason) in cases {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, route(extra)).unwrap();
        let out = run_check(&path);
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{extra}: {text}");
        assert!(text.contains(key) && text.contains(reason), "{extra}: expected {key}: {reason} in {text}");
    }
}
