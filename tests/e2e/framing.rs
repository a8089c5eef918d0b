//! HTTP/1.1 framing attacks (request smuggling and friends) from raw TCP
//! clients against the real binary. Behind the gateway sits an upstream that
//! records the exact bytes it received, so each test asserts what reached
//! it: nothing, or one request that no HTTP parser could read two ways.

use crate::support::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the recording upstream parsed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }
}

/// The bytes each accepted connection sent, in accept order.
type Connections = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// A raw TCP upstream: answers every complete request with a fixed
/// `200 ok` and keeps every byte each connection sent.
pub struct Recorder {
    pub addr: std::net::SocketAddr,
    connections: Connections,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Connections = Arc::default();
        let all = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let bytes = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(bytes.clone());
                tokio::spawn(async move {
                    let mut answered = 0;
                    let mut buf = [0u8; 16 * 1024];
                    // Bounded: a connection quiet for 5 s is dropped.
                    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                        if n == 0 {
                            break;
                        }
                        let complete = {
                            let mut b = bytes.lock().unwrap();
                            b.extend_from_slice(&buf[..n]);
                            parse_requests(&b).0.len()
                        };
                        while answered < complete {
                            answered += 1;
                            if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Recorder { addr, connections, task }
    }

    /// Every complete request received, and the bytes of each connection
    /// that did not form one (an incomplete or unparseable rest).
    pub fn received(&self) -> (Vec<Received>, Vec<Vec<u8>>) {
        let mut requests = Vec::new();
        let mut rests = Vec::new();
        for conn in self.connections.lock().unwrap().iter() {
            let bytes = conn.lock().unwrap();
            let (reqs, used) = parse_requests(&bytes);
            requests.extend(reqs);
            if used < bytes.len() {
                rests.push(bytes[used..].to_vec());
            }
        }
        (requests, rests)
    }

    /// Exactly one complete request and nothing else, or a panic saying what came.
    pub fn one_request(&self) -> Received {
        let (requests, rests) = self.received();
        assert!(rests.is_empty(), "bytes that are not a complete request reached the upstream: {:?}", rests.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>());
        assert_eq!(requests.len(), 1, "expected exactly one request upstream, got {requests:?}");
        requests.into_iter().next().unwrap()
    }

    /// Not a single byte reached the upstream.
    pub fn assert_nothing(&self) {
        let (requests, rests) = self.received();
        assert!(requests.is_empty() && rests.is_empty(), "the upstream received {requests:?} and {:?}", rests.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect::<Vec<_>>());
    }
}

/// Parse back-to-back HTTP/1.1 requests; stops at the first incomplete or
/// malformed one. Returns the requests and the bytes they used.
pub fn parse_requests(mut bytes: &[u8]) -> (Vec<Received>, usize) {
    let mut out = Vec::new();
    let mut used = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = req.parse(bytes) else { return (out, used) };
        let headers: Vec<(String, Vec<u8>)> = req.headers.iter().map(|h| (h.name.to_string(), h.value.to_vec())).collect();
        let get = |name: &str| headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase()).collect::<Vec<_>>();
        let te = get("transfer-encoding");
        let cl = get("content-length");
        if !te.is_empty() && !cl.is_empty() || cl.len() > 1 {
            // Ambiguous by construction: never counted as a request.
            return (out, used);
        }
        let rest = &bytes[head_len..];
        let (body, body_len) = if te.is_empty() {
            let len: usize = cl.first().map_or(Some(0), |v| v.parse().ok()).unwrap_or(usize::MAX);
            if rest.len() < len {
                return (out, used);
            }
            (rest[..len].to_vec(), len)
        } else {
            if te != ["chunked"] {
                return (out, used);
            }
            match dechunk(rest) {
                Some(x) => x,
                None => return (out, used),
            }
        };
        out.push(Received { method: req.method.unwrap().to_string(), target: req.path.unwrap().to_string(), headers, body });
        used += head_len + body_len;
        bytes = &bytes[head_len + body_len..];
    }
}

/// A complete chunked body: its data and the bytes it took (no trailers expected).
fn dechunk(mut bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let mut used = 0;
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        let start = line_end + 2;
        if size == 0 {
            if bytes.len() < start + 2 || &bytes[start..start + 2] != b"\r\n" {
                return None;
            }
            return Some((data, used + start + 2));
        }
        if bytes.len() < start + size + 2 || &bytes[start + size..start + size + 2] != b"\r\n" {
            return None;
        }
        data.extend_from_slice(&bytes[start..start + size]);
        used += start + size + 2;
        bytes = &bytes[start + size + 2..];
    }
}

async fn framing_gateway(up: &Recorder) -> Gateway {
    let mut config = config_head();
    config.push_str(&format!("[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n", up.addr));
    config.push_str("[[routes]]\nname = \"app\"\nhosts = [\"app.example\"]\npath = \"/\"\npools = [\"up\"]\n");
    Gateway::start(&config)
}

/// Write `raw`, then read everything the gateway sends until it closes
/// the connection (or 5 s pass with nothing more).
async fn exchange(gw: &Gateway, raw: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status lines of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok()).collect()
}

fn framing_refusals(gw: &Gateway) -> usize {
    gw.audit_records().iter().filter(|r| r["error"] == "request-framing" && r["status"] == 400).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cl_te_is_read_as_chunked_and_the_rest_never_becomes_a_request() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    // A front end that believes Content-Length would see "G" as the start of the next request.
    let out = exchange(&gw, b"POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let req = up.one_request();
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/a"));
    assert!(req.body.is_empty());
    assert!(req.header("content-length").len() + req.header("transfer-encoding").len() <= 1, "{req:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_cl_keeps_the_chunked_body_whole_as_one_request() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app.example\r\nContent-Length: 10\r\n\r\nx=";
    let mut raw = b"POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    raw.extend_from_slice(format!("{:x}\r\n", smuggled.len()).as_bytes());
    raw.extend_from_slice(smuggled);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    let out = exchange(&gw, &raw).await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let req = up.one_request();
    assert_eq!((req.method.as_str(), req.target.as_str()), ("POST", "/a"));
    assert_eq!(req.body, smuggled, "the chunked body arrives whole, as data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_the_codec_and_never_forwarded() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    let cases: &[(&str, &[u8])] = &[
        ("two different Content-Lengths", b"POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"),
        ("chunked, identity", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("identity alone", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: identity\r\n\r\nabc"),
        ("chunked then a second non-chunked line", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding in HTTP/1.0", b"POST /a HTTP/1.0\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", b"GET /a HTTP/1.1\r\nHost: app.example\r\nX-Folded: one\r\n two\r\n\r\n"),
        ("NUL in a header value", b"GET /a HTTP/1.1\r\nHost: app.example\r\nX-Nul: a\0b\r\n\r\n"),
        ("CR in a header value", b"GET /a HTTP/1.1\r\nHost: app.example\r\nX-Cr: a\rb\r\n\r\n"),
        ("space before the colon", b"GET /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("Content-Length with a sign", b"POST /a HTTP/1.1\r\nHost: app.example\r\nContent-Length: +3\r\n\r\nabc"),
    ];
    for (what, raw) in cases {
        let out = exchange(&gw, raw).await;
        assert_eq!(statuses(&out), vec![400], "{what}: {out}");
    }
    up.assert_nothing();
    // The gateway keeps serving.
    let out = exchange(&gw, b"GET /fine HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&out), vec![200]);
    assert_eq!(up.one_request().target, "/fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_the_gateway_audited_and_never_forwarded() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    let cases: &[(&str, &[u8])] = &[
        ("gzip, chunked (a coding the upstream would not be told about)", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("chunked twice", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("two Host fields", b"GET /a HTTP/1.1\r\nHost: app.example\r\nHost: evil.example\r\n\r\n"),
        ("no Host in HTTP/1.1", b"GET /a HTTP/1.1\r\n\r\n"),
        ("Host disagrees with the absolute URI", b"GET http://app.example/a HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
        ("absolute URI elsewhere, Host on a route", b"GET http://evil.example/a HTTP/1.1\r\nHost: app.example\r\n\r\n"),
        ("ports disagree", b"GET http://app.example:8080/a HTTP/1.1\r\nHost: app.example\r\n\r\n"),
    ];
    for (what, raw) in cases {
        let out = exchange(&gw, raw).await;
        // One answer, then the connection closes: nothing after it is read as a request.
        assert_eq!(statuses(&out), vec![400], "{what}: {out}");
        assert!(out.contains("application/problem+json") && out.to_ascii_lowercase().contains("connection: close"), "{what}: {out}");
    }
    up.assert_nothing();
    assert!(eventually(Duration::from_secs(5), || framing_refusals(&gw) == cases.len()).await, "one audit record per refusal: {:?}", gw.audit_records());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_is_forwarded_in_origin_form_and_never_to_its_host() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    // Pointing elsewhere, Host agreeing: the gateway is no forward proxy; no route serves evil.example.
    let out = exchange(&gw, b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&out), vec![404], "{out}");
    up.assert_nothing();
    // On a served host: origin form upstream, the same Host the router matched.
    let out = exchange(&gw, b"GET http://app.example/x?q=1 HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let req = up.one_request();
    assert_eq!(req.target, "/x?q=1");
    assert_eq!(req.header("host"), vec!["app.example".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_line_endings_are_normalised() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    // RFC 9112 §2.2: a recipient MAY accept a bare LF as a line terminator.
    // hyper does; what goes upstream is then one request in CRLF form.
    let out = exchange(&gw, b"GET /lf HTTP/1.1\nHost: app.example\nX-A: 1\nConnection: close\n\n").await;
    assert_eq!(statuses(&out), vec![200], "{out}");
    let req = up.one_request();
    assert_eq!(req.target, "/lf");
    assert_eq!(req.header("x-a"), vec!["1".to_string()]);
    let (_, rests) = up.received();
    assert!(rests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_are_refused_and_never_complete_upstream() {
    let up = Recorder::start().await;
    let gw = framing_gateway(&up).await;
    let cases: &[(&str, &[u8])] = &[
        ("not hex", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ("overflowing size", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n"),
        ("negative size", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", b"POST /a HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n"),
    ];
    for (what, raw) in cases {
        let out = exchange(&gw, raw).await;
        assert_eq!(statuses(&out), vec![400], "{what}: {out}");
    }
    // Whatever head went ahead of the body, no complete request reached the upstream.
    let (requests, _) = up.received();
    assert!(requests.is_empty(), "{requests:?}");
    // The client's broken bodies did not get the healthy target ejected (3 failures would).
    let out = exchange(&gw, b"GET /after HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&out), vec![200], "{out}");
}
