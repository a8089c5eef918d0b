//! Fixtures for end-to-end tests: the real `portcullis` binary on a config
//! written to a temp dir, real HTTP upstreams on 127.0.0.1:0, and a plain
//! HTTP client. Nothing binds a fixed port; every test owns its servers.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// The test-policy component (see components/test-policy).
pub const TEST_POLICY: &str = env!("PORTCULLIS_TEST_POLICY_WASM");

/// A real upstream HTTP server on loopback.
pub struct Upstream {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
    /// The path of each request, in arrival order.
    pub paths: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// An upstream named `name`. Paths it knows:
    /// - `/slow/<ms>`: waits, then answers;
    /// - `/download/<bytes>`: streams that many bytes;
    /// - `/health`: 200;
    /// - `/leaky`: 200 with `server`, `x-powered-by`, `vary: Accept-Encoding` and its own `access-control-allow-origin: *` (for the security-headers tests);
    /// - anything else: JSON echo of method, path, headers, the number of body bytes read and their SHA-256 (uploads stream through and are counted, not kept).
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r, p, name) = (connections.clone(), requests.clone(), paths.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, p, name) = (r.clone(), p.clone(), name.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        p.lock().unwrap().push(req.uri().path().to_string());
                        answer(name.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                });
            }
        });
        Upstream { addr, connections, requests, paths, task }
    }

    /// Paths received, active health probes (`/health`) left out.
    pub fn requests(&self) -> Vec<String> {
        self.paths.lock().unwrap().iter().filter(|p| *p != "/health").cloned().collect()
    }

    /// A server that accepts TCP connections and closes them at once (a broken upstream).
    pub async fn broken() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Upstream { addr, connections, requests: Arc::new(AtomicU64::new(0)), paths: Default::default(), task }
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub async fn answer(name: String, mut req: Request<Incoming>) -> Result<Response<BoxBody>, hyper::Error> {
    let path = req.uri().path().to_string();
    if path == "/ws" && req.headers().contains_key("upgrade") {
        // Accept the upgrade and echo bytes back (enough of WebSocket for a proxy test).
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(full(""));
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        resp.headers_mut().insert("connection", "upgrade".parse().unwrap());
        return Ok(resp);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    }
    if path == "/health" {
        return Ok(Response::new(full("ok")));
    }
    if path == "/leaky" {
        let mut resp = Response::new(full("leaky"));
        for (k, v) in [("server", "nginx/1.25.3"), ("x-powered-by", "Express"), ("vary", "Accept-Encoding"), ("access-control-allow-origin", "*")] {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap_or(0);
        return Ok(Response::new(generated_body(total)));
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into())).collect();
    let method = req.method().to_string();
    let mut body = req.into_body();
    let mut read = 0u64;
    let mut digest = <sha2::Sha256 as sha2::Digest>::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            read += data.len() as u64;
            sha2::Digest::update(&mut digest, &data);
        }
    }
    let body_sha256 = hex::encode(sha2::Digest::finalize(digest));
    let json = serde_json::json!({ "service": name, "method": method, "path": path, "headers": headers, "body_bytes": read, "body_sha256": body_sha256 });
    let mut resp = Response::new(full(json.to_string()));
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

pub fn full(text: impl Into<Bytes>) -> BoxBody {
    Full::new(text.into()).map_err(|e| match e {}).boxed()
}

/// A body of `total` bytes produced 64 KiB at a time, never held whole.
pub fn generated_body(total: u64) -> BoxBody {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(chunk.len() as u64) as usize;
            Some((Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n))), sent + n as u64))
        }
    });
    StreamBody::new(stream).boxed()
}

/// The `portcullis` binary running on a config.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where compiled components are cached across tests (compilation is the slow part).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-component-cache")
}

impl Gateway {
    /// Start the gateway on `config` (its listener should bind 127.0.0.1:0).
    pub fn start(config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Gateway::start_in(dir, config)
    }

    /// Start the gateway with its config written into `dir` as gateway.toml.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("PORTCULLIS_CACHE_DIR", cache_dir())
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("listening") => {
                        let addr: SocketAddr = words.nth(1).unwrap().parse().unwrap();
                        let _ = tx.send(("listening", addr));
                    }
                    Some("admin") => {
                        let addr: SocketAddr = words.next().unwrap().parse().unwrap();
                        let _ = tx.send(("admin", addr));
                    }
                    _ => {}
                }
            }
        });
        let wait = Duration::from_secs(60);
        let (_, addr) = rx.recv_timeout(wait).expect("the gateway did not start listening within 60 s");
        let admin = config.contains("[admin]").then(|| rx.recv_timeout(wait).expect("no admin listener within 60 s").1);
        Gateway { child, addr, admin, dir }
    }

    /// Ask the admin listener; `token` as bearer.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> Answer {
        let mut headers = Vec::new();
        let auth;
        if let Some(t) = token {
            auth = format!("Bearer {t}");
            headers.push(("authorization", auth.as_str()));
        }
        request(method, &format!("http://{}{path}", self.admin.expect("the config has no [admin]")), &headers).await
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Resident set size of the gateway process, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
    }

    /// The audit log's records: `audit.jsonl` (`gateway.audit_log =
    /// "audit.jsonl"`), or every line of the segments of an evidence log in
    /// `audit/` (`[audit] dir = "audit"`), checkpoints and events included.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let segments = self.dir.path().join("audit");
        let text = if segments.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&segments).unwrap().filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect();
            names.sort();
            names.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect::<String>()
        } else {
            std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
        };
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Where the config lives.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Run `portcullis check --config PATH` with the shared component cache.
pub fn run_check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["check", "--config"]).arg(path).env("PORTCULLIS_CACHE_DIR", cache_dir()).output().unwrap()
}

/// The head of every test config: one listener on port 0, an audit log, the router.
pub fn config_head() -> String {
    r#"
[gateway]
audit_log = "audit.jsonl"

[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"
"#
    .to_string()
}

/// Write `raw` on a fresh TCP connection to `addr` and read until the end of the response head.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await.expect("response head in time").unwrap();
        assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// A plain HTTP/1.1 client with keep-alive.
pub fn client() -> Client<HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An h2c (HTTP/2 prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

/// A response read whole.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Send a request and read the whole answer.
pub async fn send(client: &Client<HttpConnector, BoxBody>, req: Request<BoxBody>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await.expect("no answer within 30 s").expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// GET `url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

/// A request of any method.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

/// Assert a problem+json answer with this status; returns its JSON.
pub fn assert_problem(a: &Answer, status: u16) -> serde_json::Value {
    assert_eq!(a.status, status, "body: {}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let p = a.json();
    assert_eq!(p["status"], status);
    p
}

/// Wait until `f` holds, up to `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
