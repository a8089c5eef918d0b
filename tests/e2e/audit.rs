//! The audit log as evidence, end to end: the real gateway writing an
//! `[audit]` log, `portcullis audit verify|prove|export` on it, durable
//! routes, group commit, a SIGKILL in the middle of a durable load, and
//! export to a real S3-compatible server (s3s-fs, which checks SigV4).

use crate::support::*;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCESS: &str = "portcullis-test";
const SECRET: &str = "s3cr3t-key-for-tests";

/// Write the signing key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` does) into `dir`.
pub fn write_key(dir: &Path) -> SigningKey {
    let key = SigningKey::from_bytes(&[17; 32]);
    std::fs::write(dir.join("audit.key"), key.to_pkcs8_pem(Default::default()).unwrap().as_bytes()).unwrap();
    let public = ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(&key.verifying_key(), Default::default()).unwrap();
    std::fs::write(dir.join("audit.pub"), public).unwrap();
    key
}

/// A gateway with a signed `[audit]` evidence log, an admin listener, and
/// routes `/durable` (durable records) and `/async`.
pub fn config(upstream: SocketAddr, audit_extra: &str) -> String {
    format!(
        r#"
[gateway]
shutdown_grace_ms = 2000

[[listeners]]
name = "public"
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[audit]
dir = "audit"
signing_key_file = "audit.key"
segment_max_bytes = "16KiB"
checkpoint_interval_ms = 200
async_flush_ms = 100
{audit_extra}

[policies.router]
component = "builtin:router"

[[pools]]
name = "up"
targets = ["{upstream}"]

[[routes]]
name = "durable"
path = "/durable"
pools = ["up"]
audit = "durable"

[[routes]]
name = "async"
path = "/async"
pools = ["up"]
"#
    )
}

fn start(upstream: SocketAddr, audit_extra: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    Gateway::start_in(dir, &config(upstream, audit_extra))
}

/// `portcullis ARGS`: (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).env("PORTCULLIS_LOG", "warn").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub(crate) fn verify(dir: &Path, pubkey: &Path) -> (bool, String, String) {
    cli(&["audit", "verify", "--dir", dir.to_str().unwrap(), "--pubkey", pubkey.to_str().unwrap()])
}

/// SIGTERM, then wait (bounded) for the gateway to seal its log and exit.
pub(crate) fn stop(gw: &mut Gateway) {
    Command::new("kill").args(["-TERM", &gw.child.id().to_string()]).status().unwrap();
    wait_exit(&mut gw.child);
}

fn wait_exit(child: &mut Child) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the gateway did not exit within 30 s of SIGTERM");
}

/// Request records (not events, not checkpoints) with this phase (None: any).
fn requests(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.audit_records().into_iter().filter(|r| r.get("event").is_none()).collect()
}

pub(crate) fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_route_releases_its_response_only_after_its_record_is_on_disk() {
    let up = Upstream::start("svc").await;
    let gw = start(up.addr, "");
    for i in 0..20 {
        let a = get(&gw.url(&format!("/durable/{i}")), &[]).await;
        assert_eq!(a.status, 200);
        let id = a.header("x-request-id").unwrap().to_string();
        // Read the segments the moment the answer arrived: the decision is there.
        let on_disk = requests(&gw);
        let decision = on_disk.iter().find(|r| r["id"] == id.as_str()).unwrap_or_else(|| panic!("request {i}: no record on disk when its response arrived"));
        assert_eq!(decision["phase"], "decision");
        assert_eq!(decision["status"], 200);
        assert_eq!(decision["route"], "durable");
        assert_eq!(decision["outcome"], "pending");
    }
    // The completion record follows the body's end.
    assert!(eventually(Duration::from_secs(5), || requests(&gw).iter().filter(|r| r["phase"] == "complete").count() == 20).await);
    let done = requests(&gw).into_iter().find(|r| r["phase"] == "complete").unwrap();
    assert!(done["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(done["outcome"], "ok");

    // An async route writes one record, after completion, without a phase.
    let a = get(&gw.url("/async/x?token=secret-value"), &[("cookie", "session=abc123"), ("authorization", "Bearer eyJhbGciOi.x.y")]).await;
    let id = a.header("x-request-id").unwrap().to_string();
    assert!(eventually(Duration::from_secs(5), || requests(&gw).iter().any(|r| r["id"] == id.as_str())).await);
    let r = requests(&gw).into_iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert!(r.get("phase").is_none());
    assert_eq!(r["path"], "/async/x", "the path without the query");
    let text: String = segments(&gw.dir().join("audit")).iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    for secret in ["secret-value", "abc123", "eyJhbGciOi"] {
        assert!(!text.contains(secret), "{secret} must never be logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_requests_share_fsyncs() {
    let up = Upstream::start("svc").await;
    let gw = start(up.addr, "");
    let before = gw.admin("GET", "/metrics", None).await;
    let before = String::from_utf8_lossy(&before.body).into_owned();
    let n = 64u64;
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(get_owned(gw.url(&format!("/durable/{i}"))))).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let after = gw.admin("GET", "/metrics", None).await;
    let after = String::from_utf8_lossy(&after.body).into_owned();
    let durable = metric(&after, "portcullis_audit_durable_records_total") - metric(&before, "portcullis_audit_durable_records_total");
    let fsyncs = metric(&after, "portcullis_audit_commit_fsyncs_total") - metric(&before, "portcullis_audit_commit_fsyncs_total");
    eprintln!("group commit: {durable} durable records, {fsyncs} commit fsyncs");
    assert_eq!(durable, n);
    assert!(fsyncs < n, "{n} concurrent durable requests took {fsyncs} fsyncs");
}

async fn get_owned(url: String) -> u16 {
    get(&url, &[]).await.status
}

/// Send `n` requests, `concurrency` at a time, alternating durable and async routes.
async fn load(gw: &Gateway, n: usize, concurrency: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = client();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, client, base) = (next.clone(), client.clone(), gw.url(""));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let route = if i % 2 == 0 { "durable" } else { "async" };
                    let req = http::Request::get(format!("{base}/{route}/{i}")).body(full("")).unwrap();
                    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req)).await.expect("no answer within 30 s");
                    let resp = resp.unwrap_or_else(|e| panic!("request {i} failed: {e:?}"));
                    assert_eq!(resp.status(), 200);
                    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_requests_verify_and_tampering_is_named_by_seq() {
    let up = Upstream::start("svc").await;
    let mut gw = start(up.addr, "");
    load(&gw, 5000, 32).await;
    stop(&mut gw);
    let dir = gw.dir().join("audit");
    let pubkey = gw.dir().join("audit.pub");
    let (ok, out, err) = verify(&dir, &pubkey);
    assert!(ok, "verify failed: {out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    eprintln!("{out}");
    let records = requests(&gw);
    assert_eq!(records.iter().filter(|r| r["phase"] == "decision").count(), 2500);
    assert_eq!(records.iter().filter(|r| r["phase"] == "complete").count(), 2500);
    assert_eq!(records.iter().filter(|r| r.get("phase").is_none()).count(), 2500);
    assert!(segments(&dir).len() > 10, "rotated by size");

    // An inclusion proof for a record, checked offline against the public key.
    let target = &records[records.len() * 3 / 7];
    let seq = target["seq"].as_u64().unwrap().to_string();
    let (ok, proof, err) = cli(&["audit", "prove", "--dir", dir.to_str().unwrap(), "--seq", &seq]);
    assert!(ok, "{err}");
    let proof_path = gw.dir().join("proof.json");
    std::fs::write(&proof_path, &proof).unwrap();
    let (ok, out, err) = cli(&["audit", "verify", "--proof", proof_path.to_str().unwrap(), "--pubkey", pubkey.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("record seq {seq} is included")), "{out}");
    // The same proof with the record edited does not verify.
    let mut forged: serde_json::Value = serde_json::from_str(&proof).unwrap();
    forged["record"] = forged["record"].as_str().unwrap().replace("\"status\":200", "\"status\":403").into();
    forged.as_object_mut().unwrap().remove("leaf_hash");
    std::fs::write(&proof_path, forged.to_string()).unwrap();
    let (ok, _, err) = cli(&["audit", "verify", "--proof", proof_path.to_str().unwrap(), "--pubkey", pubkey.to_str().unwrap()]);
    assert!(!ok && err.contains("NOT included"), "{err}");

    // Tampering, each on a copy: verify exits non-zero naming the seq.
    let victim = &records[records.len() / 2];
    let vseq = victim["seq"].as_u64().unwrap();
    let vid = victim["id"].as_str().unwrap().to_string();
    let find = |d: &Path| -> (PathBuf, usize) {
        for seg in segments(d) {
            let text = std::fs::read_to_string(&seg).unwrap();
            if let Some(i) = text.lines().position(|l| l.contains(&format!("\"seq\":{vseq},"))) {
                return (seg, i);
            }
        }
        panic!("seq {vseq} not found")
    };
    let tamper = |name: &str, f: &dyn Fn(&mut Vec<String>, usize)| -> String {
        let copy = gw.dir().join(format!("tampered-{name}"));
        copy_dir(&dir, &copy);
        let (seg, i) = find(&copy);
        let mut lines: Vec<String> = std::fs::read_to_string(&seg).unwrap().lines().map(str::to_string).collect();
        f(&mut lines, i);
        std::fs::write(&seg, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let (ok, out, err) = verify(&copy, &pubkey);
        assert!(!ok, "{name}: verify passed: {out}");
        eprintln!("{name}: {err}");
        err
    };
    let err = tamper("edit", &|ls, i| ls[i] = ls[i].replacen(&vid, &vid.replace(|c: char| c.is_ascii_hexdigit(), "0"), 1));
    assert!(err.contains(&format!("FAIL seq {vseq} ")) && err.contains("edited"), "{err}");
    let err = tamper("delete", &|ls, i| {
        ls.remove(i);
    });
    assert!(err.contains(&format!("FAIL seq {vseq} ")) && err.contains("missing"), "{err}");
    let err = tamper("swap", &|ls, i| ls.swap(i, i + 1));
    assert!(err.contains(&format!("FAIL seq {vseq} ")) && err.contains("out of order"), "{err}");
    let err = tamper("truncate", &|ls, i| ls.truncate(i));
    assert!(err.contains(&format!("FAIL seq {vseq} ")) && err.contains("truncated"), "{err}");
    // Forge the newest checkpoint: a different root, same key id.
    let copy = gw.dir().join("tampered-checkpoint");
    copy_dir(&dir, &copy);
    let latest = copy.join("checkpoint.latest");
    let mut cp: serde_json::Value = serde_json::from_slice(&std::fs::read(&latest).unwrap()).unwrap();
    cp["root"] = "00".repeat(32).into();
    std::fs::write(&latest, cp.to_string()).unwrap();
    let (ok, _, err) = verify(&copy, &pubkey);
    assert!(!ok && err.contains("checkpoint.latest") && err.contains("forged"), "{err}");
    // A key that did not sign the log.
    let stranger = gw.dir().join("stranger.pub");
    let k = SigningKey::from_bytes(&[99; 32]).verifying_key();
    std::fs::write(&stranger, ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(&k, Default::default()).unwrap()).unwrap();
    let (ok, _, err) = verify(&dir, &stranger);
    assert!(!ok && err.contains("unknown key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_durable_load_loses_no_acknowledged_record() {
    let up = Upstream::start("svc").await;
    let mut gw = start(up.addr, "");
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let client = client();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (acked, client, base) = (acked.clone(), client.clone(), gw.url(""));
            tokio::spawn(async move {
                for i in 0.. {
                    if Instant::now() > stop_at + Duration::from_secs(3) {
                        break;
                    }
                    let req = http::Request::get(format!("{base}/durable/{w}/{i}")).body(full("")).unwrap();
                    // After the kill, requests fail: that ends this worker.
                    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await else { break };
                    if resp.status() == 200
                        && let Some(id) = resp.headers().get("x-request-id")
                    {
                        acked.lock().unwrap().insert(id.to_str().unwrap().to_string());
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(stop_at.into()).await;
    gw.child.kill().unwrap(); // SIGKILL, mid-load
    gw.child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "only {} responses before the kill", acked.len());

    // Restart on the same directory: recovery, then a clean stop.
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let mut gw = Gateway::start_in(dir, &config(up.addr, ""));
    assert_eq!(get(&gw.url("/durable/after"), &[]).await.status, 200);
    stop(&mut gw);
    let on_disk: HashSet<String> = requests(&gw).iter().filter(|r| r["phase"] == "decision").map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let lost: Vec<_> = acked.difference(&on_disk).collect();
    assert!(lost.is_empty(), "{} acknowledged requests have no record: {lost:?}", lost.len());
    let (ok, out, err) = verify(&gw.dir().join("audit"), &gw.dir().join("audit.pub"));
    assert!(ok, "{out}{err}");
    eprintln!("crash test: {} acknowledged before SIGKILL, all on disk; {out}", acked.len());
}

/// A real S3-compatible server on loopback (s3s-fs checks SigV4).
struct S3Server {
    child: Child,
    addr: SocketAddr,
    root: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl S3Server {
    fn start(port: u16, root: &Path) -> S3Server {
        std::fs::create_dir_all(root.join("audit-bucket")).unwrap();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS, "--secret-key", SECRET])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run s3s-fs ({e}): run scripts/setup (it installs s3s-fs when missing)"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < end, "s3s-fs did not listen within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server { child, addr, root: root.to_path_buf() }
    }
}

fn export_section(s3: SocketAddr, interval_ms: u64) -> String {
    format!(
        "\n[audit.export]\nendpoint = \"http://{s3}\"\nbucket = \"audit-bucket\"\nregion = \"fsn1\"\naccess_key_file = \"s3.access\"\nsecret_key_file = \"s3.secret\"\nprefix = \"node-1/\"\ninterval_ms = {interval_ms}\nretries = 6\ntimeout_ms = 5000\n"
    )
}

fn export(gw: &Gateway) -> (bool, String, String) {
    cli(&["audit", "export", "--config", gw.dir().join("gateway.toml").to_str().unwrap()])
}

fn receipts(gw: &Gateway) -> usize {
    std::fs::read_dir(gw.dir().join("audit/exported")).map_or(0, |rd| rd.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_s3_is_signed_idempotent_resumable_and_verifies_after_download() {
    let up = Upstream::start("svc").await;
    let store = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(free_port(), store.path());
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    // First with a wrong secret: refused by the store, nothing marked exported.
    std::fs::write(dir.path().join("s3.access"), ACCESS).unwrap();
    std::fs::write(dir.path().join("s3.secret"), "not-the-secret").unwrap();
    let mut gw = Gateway::start_in(dir, &config(up.addr, &export_section(s3.addr, 0)));
    load(&gw, 300, 8).await;
    stop(&mut gw);
    let (ok, out, err) = export(&gw);
    assert!(!ok, "{out}");
    assert!(err.contains("HTTP 403") && err.contains("SignatureDoesNotMatch"), "{err}");
    eprintln!("wrong secret: {err}");
    assert_eq!(receipts(&gw), 0, "nothing is marked exported");
    let sealed = segments(&gw.dir().join("audit")).len();
    assert!(sealed > 3);

    // The right secret: every sealed segment uploaded and confirmed.
    std::fs::write(gw.dir().join("s3.secret"), SECRET).unwrap();
    let (ok, out, err) = export(&gw);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("exported {sealed} segment(s) now")), "{out}");
    assert_eq!(receipts(&gw), sealed);
    // Again: nothing to do.
    let (ok, out, err) = export(&gw);
    assert!(ok, "{err}");
    assert!(out.contains("exported 0 segment(s) now") && out.contains(&format!("{sealed} exported before")), "{out}");
    // A crash after the upload but before the receipt: the next run finds the object and only writes the receipt.
    let first = std::fs::read_dir(gw.dir().join("audit/exported")).unwrap().next().unwrap().unwrap().path();
    std::fs::remove_file(&first).unwrap();
    let (ok, out, err) = export(&gw);
    assert!(ok, "{err}");
    assert!(out.contains("exported 0 segment(s) now, 1 found already in the store"), "{out}");

    // Download everything back into an empty directory and verify it there.
    let s3c = portcullis::audit::export::S3::new(&format!("http://{}", s3.addr), "audit-bucket", "fsn1", ACCESS, SECRET, Duration::from_secs(5), 0);
    let back = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(back.path().join("keys")).unwrap();
    for seg in segments(&gw.dir().join("audit")) {
        let name = seg.file_name().unwrap().to_str().unwrap();
        let body = s3c.get(&format!("node-1/{name}")).await.unwrap().unwrap_or_else(|| panic!("{name} not in the store"));
        assert_eq!(body.as_ref(), std::fs::read(&seg).unwrap().as_slice());
        std::fs::write(back.path().join(name), body).unwrap();
    }
    let (ok, out, err) = verify(back.path(), &gw.dir().join("audit.pub"));
    assert!(ok, "downloaded log: {out}{err}");
    // Checkpoints are objects of their own too (what a witness reads).
    let (ok, _, _) = cli(&["audit", "prove", "--dir", back.path().to_str().unwrap(), "--seq", "3"]);
    assert!(ok);
    let key_id = std::fs::read_dir(gw.dir().join("audit/keys")).unwrap().next().unwrap().unwrap().file_name();
    assert!(s3c.get(&format!("node-1/keys/{}", key_id.to_str().unwrap())).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_retries_when_the_store_stops_mid_export_and_completes() {
    let up = Upstream::start("svc").await;
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    std::fs::write(dir.path().join("s3.access"), ACCESS).unwrap();
    std::fs::write(dir.path().join("s3.secret"), SECRET).unwrap();
    let s3_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut gw = Gateway::start_in(dir, &config(up.addr, &export_section(s3_addr, 0)));
    load(&gw, 2000, 16).await;
    stop(&mut gw);
    let total = segments(&gw.dir().join("audit")).len();

    // Stopped mid-export: killed after its first confirmed segment, back
    // 400 ms later on the same data; the same run retries and completes.
    let s3 = S3Server::start(port, store.path());
    let path = gw.dir().join("gateway.toml");
    let run = std::thread::spawn(move || cli(&["audit", "export", "--config", path.to_str().unwrap()]));
    assert!(eventually(Duration::from_secs(30), || receipts(&gw) >= 1).await);
    drop(s3);
    let at_kill = receipts(&gw);
    assert!(at_kill < total, "the export finished before the store was stopped ({at_kill} of {total})");
    std::thread::sleep(Duration::from_millis(400));
    let _s3 = S3Server::start(port, store.path());
    let (ok, out, err) = run.join().unwrap();
    assert!(ok, "{out}{err}");
    assert_eq!(receipts(&gw), total, "{out}");
    eprintln!("store stopped after {at_kill} of {total} segments; the run completed: {out}");

    // Down when an export starts, back during its backoff: the same.
    let mut gw2 = {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path());
        std::fs::write(dir.path().join("s3.access"), ACCESS).unwrap();
        std::fs::write(dir.path().join("s3.secret"), SECRET).unwrap();
        let port2 = free_port();
        let cfg = config(up.addr, &export_section(format!("127.0.0.1:{port2}").parse().unwrap(), 0)).replace("prefix = \"node-1/\"", "prefix = \"node-2/\"");
        (Gateway::start_in(dir, &cfg), port2)
    };
    load(&gw2.0, 100, 4).await;
    stop(&mut gw2.0);
    let path = gw2.0.dir().join("gateway.toml");
    let run = std::thread::spawn(move || cli(&["audit", "export", "--config", path.to_str().unwrap()]));
    std::thread::sleep(Duration::from_millis(500));
    let _s3b = S3Server::start(gw2.1, store.path());
    let (ok, out, err) = run.join().unwrap();
    assert!(ok, "{out}{err}");
    assert_eq!(receipts(&gw2.0), segments(&gw2.0.dir().join("audit")).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_exports_sealed_segments_in_the_background() {
    let up = Upstream::start("svc").await;
    let store = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(free_port(), store.path());
    let dir = tempfile::tempdir().unwrap();
    write_key(dir.path());
    std::fs::write(dir.path().join("s3.access"), ACCESS).unwrap();
    std::fs::write(dir.path().join("s3.secret"), SECRET).unwrap();
    let gw = Gateway::start_in(dir, &config(up.addr, &format!("segment_max_age_ms = 300{}", export_section(s3.addr, 200))));
    load(&gw, 50, 4).await;
    // Sealed by age, then shipped by the background exporter.
    assert!(eventually(Duration::from_secs(15), || receipts(&gw) >= 2).await, "no background export: {} receipts", receipts(&gw));
    let stored = walk(&s3.root);
    assert!(stored.iter().any(|p| p.contains("node-1/segment-")), "{stored:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().to_string_lossy().into_owned());
        }
    }
    out
}
