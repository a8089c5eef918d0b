//! Client identity (trusted proxies, PROXY protocol) and protocol pass-through (WebSocket upgrade).

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(up: &Upstream, gateway_extra: &str, listener_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[gateway]
audit_log = "audit.jsonl"
{gateway_extra}

[[listeners]]
name = "public"
address = "127.0.0.1:0"
{listener_extra}

[policies.router]
component = "builtin:router"

[[pools]]
name = "up"
targets = ["{addr}"]

[[routes]]
name = "all"
path = "/"
pools = ["up"]
{route_extra}
"#,
        addr = up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_pass_the_client_address_on() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up, "trusted_proxies = [\"127.0.0.0/8\"]", "", ""));
    let a = get(&gw.url("/x"), &[("x-forwarded-for", "198.51.100.20, 203.0.113.9"), ("x-forwarded-proto", "https")]).await;
    let h = &a.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "198.51.100.20, 203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert!(eventually(std::time::Duration::from_secs(5), || !gw.audit_records().is_empty()).await);
    // The right-most untrusted address is the client.
    assert_eq!(gw.audit_records()[0]["client_ip"], "203.0.113.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_gives_the_real_client_address() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up, "trusted_proxies = [\"127.0.0.1\"]", "proxy_protocol = true", ""));
    let (mut stream, head) = raw_exchange(gw.addr, b"PROXY TCP4 198.51.100.7 10.0.0.1 50000 80\r\nGET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "198.51.100.7");

    // v2 (binary), as Hetzner's load balancer can send it.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 8, 10, 0, 0, 1, 0xc3, 0x50, 0, 80]);
    v2.extend_from_slice(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (mut stream, head) = raw_exchange(gw.addr, &v2).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["headers"]["x-forwarded-for"], "198.51.100.8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_on_routes_that_allow_them() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&config(&up, "", "", "websocket = true"));
    let (mut stream, head) = raw_exchange(gw.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    stream.write_all(b"ping from the client").await.unwrap();
    let mut echoed = [0u8; 20];
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping from the client");

    // Without `websocket = true` the upgrade headers are dropped: a plain request.
    let gw = Gateway::start(&config(&up, "", "", ""));
    let (_s, head) = raw_exchange(gw.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
