//! Slow and greedy clients against the real binary: slowloris, slow body
//! senders, clients that never read their response, connection and
//! in-flight limits, HTTP/2 rapid reset and CONTINUATION floods. Each test
//! also shows that an ordinary client is still served.

use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gateway_with(up: &Upstream, listener_extra: &str) -> Gateway {
    let config = config_head().replace("address = \"127.0.0.1:0\"\n", &format!("address = \"127.0.0.1:0\"\n{listener_extra}\n"));
    let config = format!("{config}[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"app\"\npath = \"/\"\npools = [\"up\"]\n", up.addr);
    Gateway::start(&config)
}

/// Raise this process's open-file limit to its hard limit (the gateway,
/// started afterwards, inherits it); returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_are_cut_off_while_an_ordinary_client_is_served() {
    assert!(raise_nofile() >= 2_500, "need file descriptors for 1,000 connections on both ends");
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "header_timeout_ms = 10000");
    let cut_off = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..1_000 {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        // Half send a head that never ends, one more header byte every 500 ms;
        // half send 5 bytes, too few for the gateway to tell HTTP/1 from HTTP/2.
        let start: &[u8] = if i % 2 == 0 { b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Slow: " } else { b"GET /" };
        stream.write_all(start).await.unwrap();
        let (cut_off, answered) = (cut_off.clone(), answered.clone());
        let trickle = i % 2 == 0;
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let reader = async {
                let mut buf = [0u8; 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if buf[..n].starts_with(b"HTTP/1.1 2") => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                    }
                }
            };
            let writer = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if trickle && w.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            };
            // Bounded: 60 s is far past the 10 s header timeout.
            let ended = tokio::time::timeout(Duration::from_secs(60), async {
                tokio::select! { _ = reader => {}, _ = writer => {} }
            })
            .await;
            if ended.is_ok() {
                cut_off.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // All 1,000 are open (or most: the machine may be slow); an ordinary client is served meanwhile.
    let open = 1_000 - cut_off.load(Ordering::SeqCst);
    let a = get(&gw.url("/hello"), &[]).await;
    assert_eq!(a.status, 200);
    let h2 = send(&h2_client(), http::Request::get(gw.url("/hello")).body(full("")).unwrap()).await;
    assert_eq!(h2.status, 200);
    assert!(open >= 900, "only {open} slowloris connections were still open when the ordinary client was served");
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cut_off.load(Ordering::SeqCst), 1_000, "every slowloris connection is closed by the gateway");
    assert_eq!(answered.load(Ordering::SeqCst), 0, "no slowloris request was served");
    // And the gateway still serves.
    assert_eq!(get(&gw.url("/after"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_sender_gets_408_and_the_target_stays_healthy() {
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "body_idle_timeout_ms = 300");
    for _ in 0..4 {
        // 10 of 100 promised bytes, then nothing.
        let (mut stream, head) = raw_exchange(gw.addr, b"POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 100\r\n\r\n0123456789").await;
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(head.contains("application/problem+json"), "{head}");
        let _ = stream.shutdown().await;
    }
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().iter().filter(|r| r["error"] == "request-body-timeout" && r["status"] == 408).count() == 4).await);
    // Four stalled clients did not get the upstream ejected (three failures would).
    assert_eq!(get(&gw.url("/after"), &[]).await.status, 200);
    // A body that keeps flowing, however slowly, is not cut.
    let (mut stream, _) = tokio::net::TcpStream::connect(gw.addr).await.map(|s| (s, ())).unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\n").await.unwrap();
    for b in b"hello" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&[*b]).await.unwrap();
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_bytes\":5"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "write_timeout_ms = 1000");
    assert_eq!(get(&gw.url("/warm"), &[]).await.status, 200);
    let before = gw.rss_kib();
    // Ask for 2 GiB and never read a byte of it.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"GET /download/2147483648 HTTP/1.1\r\nHost: app.example\r\n\r\n").await.unwrap();
    let cut = eventually(Duration::from_secs(30), || gw.audit_records().iter().any(|r| r["path"] == "/download/2147483648" && r["outcome"] == "client-abort")).await;
    assert!(cut, "the stalled response is abandoned: {:?}", gw.audit_records());
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "the gateway grew by {grown} KiB for a client that reads nothing");
    // The connection is closed: draining what the socket buffers held ends in EOF or reset.
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the gateway kept the connection open");
    assert_eq!(get(&gw.url("/after"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_get_503() {
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "max_connections = 4\n[admin]\naddress = \"127.0.0.1:0\"");
    let mut idle = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        idle.push(s);
    }
    // The accept loop counts connections as it takes them: wait until the four are counted.
    let mut refused = None;
    for _ in 0..50 {
        let (_s, head) = raw_exchange(gw.addr, b"GET /over HTTP/1.1\r\nHost: app.example\r\n\r\n").await;
        if head.starts_with("HTTP/1.1 503") {
            refused = Some(head);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head = refused.expect("a fifth connection is refused");
    assert!(head.contains("application/problem+json") && head.contains("connection: close"), "{head}");
    // No request was read, so no audit record: the refusal is counted instead.
    let metrics = gw.admin("GET", "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(text.lines().any(|l| l.starts_with("portcullis_connections_refused_total{listener=\"public\",reason=\"max-connections\"}") && !l.ends_with(" 0")), "{text}");
    drop(idle);
    let mut served = false;
    for _ in 0..100 {
        let (_s, head) = raw_exchange(gw.addr, b"GET /after HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n").await;
        if head.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "places are given back when connections close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_requests_in_flight_get_503_and_an_audit_record() {
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "max_requests_in_flight = 2");
    let url = gw.url("/slow/3000");
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    assert!(eventually(Duration::from_secs(10), || up.requests.load(std::sync::atomic::Ordering::SeqCst) == 2).await);
    let a = get(&gw.url("/third"), &[]).await;
    let p = assert_problem(&a, 503);
    assert_eq!(p["type"], "urn:portcullis:problem:overloaded");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(up.requests.load(std::sync::atomic::Ordering::SeqCst), 2, "the refused request did not reach the upstream");
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(get(&gw.url("/after"), &[]).await.status, 200);
    assert!(eventually(Duration::from_secs(5), || gw.audit_records().iter().any(|r| r["path"] == "/third" && r["status"] == 503 && r["error"] == "overloaded")).await);
}

async fn get_owned(url: String) -> u16 {
    get(&url, &[]).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_gets_goaway_and_others_are_served() {
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "");
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let reader = tokio::spawn(read_frames_until_close(r));
    w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    w.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    // CVE-2023-44487: open a stream (GET http://app.example/reset) and reset it at once, over and over.
    let mut headers = vec![0x82, 0x86, 0x01, 11];
    headers.extend_from_slice(b"app.example");
    headers.extend_from_slice(&[0x04, 6]);
    headers.extend_from_slice(b"/reset");
    let mut opened = 0u32;
    'flood: for batch in 0..1_000u32 {
        let mut bytes = Vec::new();
        for i in 0..100 {
            let id = 1 + 2 * (batch * 100 + i);
            bytes.extend(frame(1, 0x1 | 0x4, id, &headers));
            bytes.extend(frame(3, 0, id, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
        }
        if w.write_all(&bytes).await.is_err() {
            break 'flood;
        }
        opened += 100;
    }
    let goaway = tokio::time::timeout(Duration::from_secs(30), reader).await.expect("the gateway closes the connection").unwrap();
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
    assert!(opened < 100_000, "cut off after {opened} streams");
    // Ordinary clients, HTTP/2 and HTTP/1.1, are served meanwhile.
    let a = send(&h2_client(), http::Request::get(gw.url("/ok")).body(full("")).unwrap()).await;
    assert_eq!(a.status, 200);
    assert_eq!(get(&gw.url("/ok"), &[]).await.status, 200);
    eprintln!("rapid reset: at most {opened} streams written before the close; {} reached the upstream", up.requests.load(std::sync::atomic::Ordering::SeqCst));
}

/// Read HTTP/2 frames until the peer closes (or 30 s of silence); the error
/// code of the last GOAWAY, if any.
async fn read_frames_until_close(mut r: tokio::net::tcp::OwnedReadHalf) -> Option<u32> {
    let mut goaway = None;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return goaway,
        }
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == 7 && len >= 8 {
                goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
    }
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off_and_others_are_served() {
    let up = Upstream::start("app").await;
    let gw = gateway_with(&up, "");
    let before = gw.rss_kib();
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let reader = tokio::spawn(read_frames_until_close(r));
    w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    w.write_all(&frame(4, 0, 0, &[])).await.unwrap();
    // HEADERS without END_HEADERS: GET http://app.example/, then CONTINUATION frames
    // of fresh literal headers, never ending the block.
    let mut first = vec![0x82, 0x86, 0x84, 0x41, 11];
    first.extend_from_slice(b"app.example");
    w.write_all(&frame(1, 0x1, 1, &first)).await.unwrap();
    let mut block = Vec::new();
    while block.len() + 108 <= 16_384 {
        block.extend_from_slice(&[0x00, 5]);
        block.extend_from_slice(b"x-aaa");
        block.push(100);
        block.extend_from_slice(&[b'v'; 100]);
    }
    let continuation = frame(9, 0, 1, &block);
    let mut sent = 0usize;
    // Up to 256 MiB of header block; the gateway must stop reading long before.
    for _ in 0..16_384 {
        if w.write_all(&continuation).await.is_err() {
            break;
        }
        sent += 1;
    }
    let goaway = tokio::time::timeout(Duration::from_secs(60), reader).await.expect("the gateway closes the connection").unwrap();
    assert!(sent < 16_384, "the gateway read all {sent} CONTINUATION frames");
    assert!(goaway.is_some(), "no GOAWAY before the close");
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "the gateway grew by {grown} KiB for one header block");
    let a = send(&h2_client(), http::Request::get(gw.url("/ok")).body(full("")).unwrap()).await;
    assert_eq!(a.status, 200);
    eprintln!("CONTINUATION flood: closed after {sent} frames of 16 KiB, GOAWAY code {goaway:?}");
}
