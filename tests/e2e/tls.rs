//! TLS termination: a test CA (rcgen) and two leaf certificates served by
//! SNI, checked with a rustls + hyper client and with curl; HTTP/2 by ALPN;
//! TLS 1.1 refused with an alert; renewed certificate files served without
//! a restart (and a bad renewal ignored). The fixtures here (CA, TLS client)
//! are used by the upstream TLS tests too.

use crate::support::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
    der: CertificateDer<'static>,
}

/// A certificate and its key, PEM, signed by a [`TestCa`].
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for these DNS names (server and client use).
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: format!("{}{}", cert.pem(), self.pem), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }
}

impl Leaf {
    /// Write as a Let's Encrypt `live/<domain>` directory (fullchain.pem, privkey.pem).
    pub fn write_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("fullchain.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("privkey.pem"), &self.key_pem).unwrap();
    }

    /// Replace the directory's files the way certbot does: new files, then renames.
    pub fn replace_in(&self, dir: &Path) {
        std::fs::write(dir.join(".fullchain.new"), &self.cert_pem).unwrap();
        std::fs::write(dir.join(".privkey.new"), &self.key_pem).unwrap();
        std::fs::rename(dir.join(".fullchain.new"), dir.join("fullchain.pem")).unwrap();
        std::fs::rename(dir.join(".privkey.new"), dir.join("privkey.pem")).unwrap();
    }
}

/// What one HTTPS exchange showed.
pub struct TlsAnswer {
    pub status: u16,
    pub body: Bytes,
    /// The leaf certificate the server presented.
    pub leaf: CertificateDer<'static>,
    /// The ALPN protocol agreed.
    pub alpn: Option<Vec<u8>>,
    pub version: http::Version,
}

/// A TLS client trusting `roots`, offering `alpn`.
pub fn client_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Full handshakes only: a resumed session shows the certificate of the first one.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// GET `path` over a fresh TLS connection to `addr`, sending `sni`; HTTP/2
/// when the server agreed to `h2` by ALPN, else HTTP/1.1.
pub async fn https_get(addr: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>, path: &str) -> TlsAnswer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)).await.expect("handshake in time").expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let req = http::Request::get(format!("https://{sni}{path}")).header("host", sni).body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    TlsAnswer { status, body, leaf, alpn, version }
}

struct Site {
    ca: TestCa,
    a: Leaf,
    b: Leaf,
    gw: Gateway,
    _up: Upstream,
}

/// The gateway with one TLS listener: `a.test` from a Let's Encrypt style
/// directory (the default certificate), `b.test` from cert + key files.
async fn site() -> Site {
    let up = Upstream::start("svc").await;
    let ca = TestCa::new("Portcullis Test CA");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test", "*.b.test"]);
    let dir = tempfile::tempdir().unwrap();
    a.write_dir(&dir.path().join("live/a.test"));
    std::fs::write(dir.path().join("b.pem"), &b.cert_pem).unwrap();
    std::fs::write(dir.path().join("b.key"), &b.key_pem).unwrap();
    let tls = r#"address = "127.0.0.1:0"

[[listeners.tls.certificates]]
names = ["a.test"]
dir = "live/a.test"

[[listeners.tls.certificates]]
names = ["b.test", "*.b.test"]
cert = "b.pem"
key = "b.key"
"#;
    let config = format!(
        "{}\n[[pools]]\nname = \"svc\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"svc\"]\n",
        config_head().replacen("address = \"127.0.0.1:0\"\n", tls, 1),
        up.addr
    );
    let gw = Gateway::start_in(dir, &config);
    Site { ca, a, b, gw, _up: up }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_each_sni_name_its_own_certificate() {
    let s = site().await;
    let http1 = client_config(s.ca.roots(), &[b"http/1.1"]);
    for (sni, leaf) in [("a.test", &s.a), ("b.test", &s.b), ("api.b.test", &s.b)] {
        let r = https_get(s.gw.addr, sni, http1.clone(), "/hello").await;
        assert_eq!(r.status, 200, "{sni}");
        assert!(r.leaf == leaf.der, "{sni} got another name's certificate");
        let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(echo["service"], "svc");
        assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "the upstream learns the client used TLS");
        assert_eq!(r.version, http::Version::HTTP_11);
    }
    // A name no certificate lists gets the default (the first): a client checking names refuses it.
    let tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(http1.clone()).connect(ServerName::try_from("c.test").unwrap(), tcp).await;
    assert!(refused.is_err(), "a.test's certificate must not pass for c.test");
    // The audit record names the TLS listener's request like any other.
    assert!(eventually(Duration::from_secs(5), || s.gw.audit_records().iter().filter(|r| r["path"] == "/hello").count() == 3).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_chosen_by_alpn() {
    let s = site().await;
    let r = https_get(s.gw.addr, "b.test", client_config(s.ca.roots(), &[b"h2", b"http/1.1"]), "/two").await;
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echo["path"], "/two");
    // Without h2 in the offer, HTTP/1.1.
    let r = https_get(s.gw.addr, "b.test", client_config(s.ca.roots(), &[b"http/1.1"]), "/one").await;
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_verifies_both_names_against_the_test_ca() {
    let s = site().await;
    let ca_file = s.gw.dir().join("ca.pem");
    s.ca.write(&ca_file);
    let port = s.gw.addr.port();
    for (name, http2) in [("a.test", false), ("b.test", true)] {
        let url = format!("https://{name}:{port}/curl");
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"]).arg(&ca_file).args(["--resolve", &format!("{name}:{port}:127.0.0.1"), "-w", "\n%{http_code} %{http_version}"]);
        cmd.arg(if http2 { "--http2" } else { "--http1.1" });
        let out = tokio::task::spawn_blocking(move || cmd.arg(&url).output().unwrap()).await.unwrap();
        assert!(out.status.success(), "curl {name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, tail) = text.rsplit_once('\n').unwrap();
        assert_eq!(tail, if http2 { "200 2" } else { "200 1.1" }, "{name}");
        let echo: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(echo["path"], "/curl");
    }
}

/// A TLS 1.1 ClientHello (legacy version 3.2, no supported_versions
/// extension), as an old client sends it. `with_tls12_extensions` adds
/// signature_algorithms and supported_groups, which a TLS 1.2 server needs,
/// so that the version is the only thing left to refuse.
fn tls11_client_hello(sni: &str, with_tls12_extensions: bool) -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend([0x5a; 32]); // random
    hello.push(0); // session id
    // CBC suites of the time, and the GCM ones TLS 1.2 servers take: the
    // version is the only reason left to refuse.
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc014, 0xc013, 0x0035, 0x002f];
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]); // compression: null
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    sni_ext.extend(((name.len() + 3) as u16).to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend((name.len() as u16).to_be_bytes());
    sni_ext.extend(name);
    let mut exts = vec![0x00, 0x00];
    exts.extend((sni_ext.len() as u16).to_be_bytes());
    exts.extend(sni_ext);
    if with_tls12_extensions {
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
        exts.extend([0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]);
        // supported_groups: x25519, secp256r1; ec_point_formats: uncompressed
        exts.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
        exts.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    }
    hello.extend((exts.len() as u16).to_be_bytes());
    hello.extend(exts);
    let mut handshake = vec![0x01];
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_client_hello_gets_an_alert_and_no_server_hello() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = site().await;
    // Without TLS 1.2's extensions rustls stops at the missing signature
    // algorithms (handshake_failure, 40); with them, at the version
    // (protocol_version, 70). Either way: one fatal alert and no ServerHello.
    for (extensions, description) in [(false, 40u8), (true, 70u8)] {
        let mut tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
        tcp.write_all(&tls11_client_hello("a.test", extensions)).await.unwrap();
        let mut got = Vec::new();
        // A reset after the alert is fine; what was read before it counts.
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await.expect("the gateway answers and closes in time");
        assert!(got.len() >= 7, "an alert record, got {got:02x?}");
        assert_eq!(got[0], 0x15, "the first record is an alert, not a handshake (ServerHello): {got:02x?}");
        assert_eq!(got[5], 2, "a fatal alert");
        assert_eq!(got[6], description, "alert description (extensions: {extensions})");
        assert_eq!(got.len(), 7, "nothing but the alert: {got:02x?}");
    }
    // The listener keeps serving modern clients.
    let r = https_get(s.gw.addr, "a.test", client_config(s.ca.roots(), &[b"http/1.1"]), "/still").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_without_restart_and_a_bad_one_is_refused() {
    let s = site().await;
    let config = client_config(s.ca.roots(), &[b"http/1.1"]);
    let live = s.gw.dir().join("live/a.test");
    assert!(https_get(s.gw.addr, "a.test", config.clone(), "/").await.leaf == s.a.der);

    // A broken renewal (a key of another certificate): refused, audited, the old certificate stays.
    let stray = s.ca.leaf(&["a.test"]);
    std::fs::write(live.join(".privkey.new"), &stray.key_pem).unwrap();
    std::fs::rename(live.join(".privkey.new"), live.join("privkey.pem")).unwrap();
    let rejected = eventually(Duration::from_secs(10), || s.gw.audit_records().iter().any(|r| r["event"] == "tls-reload" && r["result"] == "rejected")).await;
    assert!(rejected, "a bad renewal is audited");
    let reason = s.gw.audit_records().into_iter().find(|r| r["event"] == "tls-reload").unwrap()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("privkey.pem") && reason.contains("fullchain.pem"), "{reason}");
    assert!(https_get(s.gw.addr, "a.test", config.clone(), "/").await.leaf == s.a.der, "the old certificate keeps serving");

    // The real renewal: a new certificate and key; a new connection sees it.
    let renewed = s.ca.leaf(&["a.test"]);
    renewed.replace_in(&live);
    let mut served_new = false;
    for _ in 0..100 {
        if https_get(s.gw.addr, "a.test", config.clone(), "/").await.leaf == renewed.der {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_new, "the renewed certificate is served within 10 s, without a restart");
    assert!(https_get(s.gw.addr, "b.test", config.clone(), "/").await.leaf == s.b.der, "other names are untouched");
    assert!(eventually(Duration::from_secs(5), || s.gw.audit_records().iter().any(|r| r["event"] == "tls-reload" && r["result"] == "ok")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_file_and_key_of_bad_certificates() {
    let ca = TestCa::new("Check CA");
    let a = ca.leaf(&["a.test"]);
    let other = ca.leaf(&["a.test"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();
    std::fs::write(dir.path().join("a.key"), &a.key_pem).unwrap();
    let tls = r#"address = "127.0.0.1:0"

[listeners.tls]
min_version = "1.1"

[[listeners.tls.certificates]]
names = ["a.test"]
cert = "a.pem"
key = "other.key"

[[listeners.tls.certificates]]
names = ["z.test"]
cert = "a.pem"
key = "a.key"

[[listeners.tls.certificates]]
names = ["m.test"]
dir = "live/missing"
"#;
    let config = format!("{}
[[pools]]
name = \"p\"\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"p\"]\n", config_head().replacen("address = \"127.0.0.1:0\"\n", tls, 1));
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &config).unwrap();
    let out = run_check(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    // 1-based line of the n-th line containing `needle`.
    let line = |needle: &str, n: usize| config.lines().enumerate().filter(|(_, l)| l.contains(needle)).nth(n).unwrap().0 + 1;
    for (at, key, reason) in [
        (line("min_version", 0), "listeners[0].tls.min_version", "expected \"1.2\" or \"1.3\""),
        (line("other.key", 0), "listeners[0].tls.certificates[0].key", "does not fit"),
        (line("cert = \"a.pem\"", 1), "listeners[0].tls.certificates[1].cert", "is not valid for \"z.test\""),
        (line("live/missing", 0), "listeners[0].tls.certificates[2].dir", "cannot read"),
    ] {
        let want = format!("{file}:{at}:");
        assert!(err.lines().any(|l| l.starts_with(&want) && l.contains(&format!(": {key}: ")) && l.contains(reason)), "no `{want} {key}: …{reason}…` in:\n{err}");
    }
    // Fixed: the right key, a name the certificate covers, a directory that exists, a real version.
    ca.leaf(&["m.test"]).write_dir(&dir.path().join("live/m"));
    let fixed = config.replace("other.key", "a.key").replace("[\"z.test\"]", "[\"a.test\"]").replace("\"1.1\"", "\"1.3\"").replace("live/missing", "live/m");
    std::fs::write(&path, &fixed).unwrap();
    let out = run_check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificates[1].names[0]") && err.contains("already served by certificates[0]"), "a name served twice is refused: {err}");
    let ok = fixed.replacen("[[listeners.tls.certificates]]\nnames = [\"a.test\"]\ncert = \"a.pem\"\nkey = \"a.key\"\n", "", 1);
    std::fs::write(&path, &ok).unwrap();
    let out = run_check(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
