//! Upstream resilience: TLS and mTLS to upstreams (a test CA), host names
//! resolved when connecting (not only at start), retries of idempotent
//! requests on connect failure within a retry budget, per-route timeouts.

use crate::support::*;
use crate::tls::{Leaf, TestCa};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;

/// An upstream that speaks TLS with `leaf`; with `client_ca`, it requires
/// a client certificate issued by that CA. Answers like [`Upstream`].
struct TlsUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(name: &str, leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsUpstream {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).map(Result::unwrap).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = match client_ca {
            Some(ca) => builder.with_client_cert_verifier(rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider).build().unwrap()),
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, name) = (acceptor.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    // The client certificate's fingerprint, echoed as a request header.
                    let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| fingerprint(c));
                    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                        if let Some(fp) = &client_cert {
                            req.headers_mut().insert("x-client-cert-sha256", fp.parse().unwrap());
                        }
                        answer(name.clone(), req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        TlsUpstream { addr, task }
    }
}

fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

fn one_route(pool: &str) -> String {
    format!("\n[[routes]]\nname = \"all\"\npath = \"/\"\npools = [\"{pool}\"]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_upstreams_checks_the_ca_and_the_name() {
    let ca = TestCa::new("Upstream CA");
    let up = TlsUpstream::start("hel1-api", &ca.leaf(&["api.hel1.internal"]), None).await;
    let dir = tempfile::tempdir().unwrap();
    ca.write(&dir.path().join("ca.pem"));
    TestCa::new("Some other CA").write(&dir.path().join("other-ca.pem"));
    let config = format!(
        "{}\n[[pools]]\nname = \"hel1\"\ntargets = [\"{addr}\"]\ntls = {{ ca = \"ca.pem\", server_name = \"api.hel1.internal\" }}\n\
         [[pools]]\nname = \"wrong-ca\"\ntargets = [\"{addr}\"]\ntls = {{ ca = \"other-ca.pem\", server_name = \"api.hel1.internal\" }}\n\
         [[pools]]\nname = \"wrong-name\"\ntargets = [\"{addr}\"]\ntls = {{ ca = \"ca.pem\", server_name = \"api.fsn1.internal\" }}\n\
         [[routes]]\nname = \"ok\"\npath = \"/ok\"\npools = [\"hel1\"]\n\
         [[routes]]\nname = \"wrong-ca\"\npath = \"/wrong-ca\"\npools = [\"wrong-ca\"]\n\
         [[routes]]\nname = \"wrong-name\"\npath = \"/wrong-name\"\npools = [\"wrong-name\"]\n",
        config_head(),
        addr = up.addr
    );
    let gw = Gateway::start_in(dir, &config);
    let a = get(&gw.url("/ok/records"), &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "hel1-api");
    assert_eq!(a.json()["path"], "/ok/records");
    // A certificate from another CA, or for another name, is not trusted: nothing is sent.
    assert_problem(&get(&gw.url("/wrong-ca/x"), &[]).await, 502);
    assert_problem(&get(&gw.url("/wrong-name/x"), &[]).await, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_an_upstream_that_requires_a_client_certificate() {
    let ca = TestCa::new("Platform CA");
    let up = TlsUpstream::start("fsn1-api", &ca.leaf(&["api.fsn1.internal"]), Some(&ca)).await;
    let dir = tempfile::tempdir().unwrap();
    ca.write(&dir.path().join("ca.pem"));
    let client = ca.leaf(&["gateway.procare.internal"]);
    std::fs::write(dir.path().join("client.pem"), &client.cert_pem).unwrap();
    std::fs::write(dir.path().join("client.key"), &client.key_pem).unwrap();
    let config = format!(
        "{}\n[[pools]]\nname = \"mtls\"\ntargets = [\"{addr}\"]\n[pools.tls]\nca = \"ca.pem\"\nserver_name = \"api.fsn1.internal\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n\
         [[pools]]\nname = \"no-cert\"\ntargets = [\"{addr}\"]\ntls = {{ ca = \"ca.pem\", server_name = \"api.fsn1.internal\" }}\n\
         [[routes]]\nname = \"mtls\"\npath = \"/mtls\"\npools = [\"mtls\"]\n\
         [[routes]]\nname = \"no-cert\"\npath = \"/no-cert\"\npools = [\"no-cert\"]\n",
        config_head(),
        addr = up.addr
    );
    let gw = Gateway::start_in(dir, &config);
    let a = get(&gw.url("/mtls/x"), &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["service"], "fsn1-api");
    assert_eq!(a.json()["headers"]["x-client-cert-sha256"], fingerprint(&client.der), "the gateway presented its certificate");
    // Without a client certificate the upstream refuses the handshake.
    assert_problem(&get(&gw.url("/no-cert/x"), &[]).await, 502);

    // The client certificate is renewed: the files are watched, the pool is
    // rebuilt with the new pair, and new connections present it.
    let renewed = ca.leaf(&["gateway.procare.internal"]);
    std::fs::write(gw.dir().join("client.pem.new"), &renewed.cert_pem).unwrap();
    std::fs::write(gw.dir().join("client.key.new"), &renewed.key_pem).unwrap();
    std::fs::rename(gw.dir().join("client.pem.new"), gw.dir().join("client.pem")).unwrap();
    std::fs::rename(gw.dir().join("client.key.new"), gw.dir().join("client.key")).unwrap();
    let want = fingerprint(&renewed.der);
    let mut seen = false;
    for _ in 0..100 {
        let a = get(&gw.url("/mtls/x"), &[]).await;
        if a.status == 200 && a.json()["headers"]["x-client-cert-sha256"] == want.as_str() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "the renewed client certificate is presented within 10 s, without a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_bad_upstream_tls_files_by_key() {
    let ca = TestCa::new("Check CA");
    let dir = tempfile::tempdir().unwrap();
    ca.write(&dir.path().join("ca.pem"));
    let a = ca.leaf(&["gw.internal"]);
    let b = ca.leaf(&["gw.internal"]);
    std::fs::write(dir.path().join("client.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.path().join("other.key"), &b.key_pem).unwrap();
    let config = format!(
        "{}\n[[pools]]\nname = \"p\"\ntargets = [\"127.0.0.1:9\"]\n[pools.tls]\nca = \"missing-ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"other.key\"\n\
         [[pools]]\nname = \"q\"\ntargets = [\"127.0.0.1:9\"]\ntls = {{ ca = \"ca.pem\", client_cert = \"client.pem\" }}\n{}",
        config_head(),
        one_route("p")
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &config).unwrap();
    let out = run_check(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = |needle: &str| config.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let file = path.display().to_string();
    for (at, key, reason) in [
        (line("missing-ca.pem"), "pools[0].tls.ca", "cannot read"),
        (line("other.key"), "pools[0].tls.client_key", "does not fit"),
        (line("tls = {"), "pools[1].tls", "client_cert and client_key go together"),
    ] {
        let want = format!("{file}:{at}:");
        assert!(err.lines().any(|l| l.starts_with(&want) && l.contains(&format!(": {key}: ")) && l.contains(reason)), "no `{want} {key}: …{reason}…` in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_names_are_resolved_when_connecting_not_only_at_start() {
    // A port with nothing on it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "{}\n[[pools]]\nname = \"svc\"\ntargets = [\"localhost:{port}\"]\npassive = {{ max_failures = 100, eject_ms = 1 }}\n\
         [[pools]]\nname = \"gone\"\ntargets = [\"no-such-service.invalid:8000\"]\n\
         [[routes]]\nname = \"svc\"\npath = \"/svc\"\npools = [\"svc\"]\n[[routes]]\nname = \"gone\"\npath = \"/gone\"\npools = [\"gone\"]\n",
        config_head()
    );
    // A name that does not resolve does not stop the gateway from starting
    // (a container not deployed yet): it is looked up when a request needs it.
    let gw = Gateway::start(&config);
    assert_problem(&get(&gw.url("/gone/x"), &[]).await, 502);
    assert_problem(&get(&gw.url("/svc/x"), &[]).await, 502);
    // The service comes up (a redeployed container) under the same name: served, no restart, no reload.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer("redeployed".into(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let a = get(&gw.url("/svc/x"), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["service"], "redeployed");
    assert_eq!(a.json()["headers"]["host"], gw.addr.to_string(), "the client's Host passes, not the target name");
    task.abort();
}

async fn metric(gw: &Gateway, name: &str, labels: &str) -> u64 {
    let text = String::from_utf8_lossy(&gw.admin("GET", "/metrics", None).await.body).into_owned();
    text.lines().find(|l| l.starts_with(name) && l.contains(labels)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn retry_config(dead: SocketAddr, good: SocketAddr, retries: &str) -> String {
    format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\n[[pools]]\nname = \"p\"\ntargets = [\"{dead}\", \"{good}\"]\npassive = {{ max_failures = 1000, eject_ms = 1 }}\n{retries}\n{}",
        config_head(),
        one_route("p")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_on_another_target_when_the_connection_fails() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good = Upstream::start("good").await;
    let gw = Gateway::start(&retry_config(dead, good.addr, ""));
    // POST is not idempotent: when its target is down it fails, never repeated.
    let mut post_statuses = Vec::new();
    for _ in 0..4 {
        post_statuses.push(request("POST", &gw.url("/post"), &[]).await.status);
    }
    assert!(post_statuses.contains(&502) && post_statuses.contains(&200), "round robin sends some POSTs to the dead target: {post_statuses:?}");
    assert_eq!(metric(&gw, "portcullis_upstream_retries_total", "outcome=\"retried\"").await, 0);
    // GET, HEAD, OPTIONS, DELETE: every one answered by the good target.
    for method in ["GET", "HEAD", "OPTIONS", "DELETE", "GET", "GET"] {
        let a = request(method, &gw.url("/idem"), &[]).await;
        assert_eq!(a.status, 200, "{method}");
    }
    // PUT with a body: the failed connection never read it, so it is sent whole to the other target.
    let client = client();
    for _ in 0..2 {
        let req = http::Request::put(gw.url("/upload")).body(full(vec![b'x'; 100_000])).unwrap();
        let a = send(&client, req).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.json()["body_bytes"], 100_000);
    }
    let retried = metric(&gw, "portcullis_upstream_retries_total", "outcome=\"retried\"").await;
    assert!(retried >= 3, "retries counted: {retried}");
    assert_eq!(metric(&gw, "portcullis_upstream_retries_total", "outcome=\"budget-exhausted\"").await, 0);
    assert!(good.requests.load(std::sync::atomic::Ordering::SeqCst) >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_budget_is_spent() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let good = Upstream::start("good").await;
    // No share of traffic, a floor of 1/s: 10 retries in the 10 s window.
    let gw = Gateway::start(&retry_config(dead, good.addr, "retries = { attempts = 1, budget_ratio = 0.0, min_per_second = 1 }"));
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..40 {
        match get(&gw.url("/x"), &[]).await.status {
            200 => ok += 1,
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let retried = metric(&gw, "portcullis_upstream_retries_total", "outcome=\"retried\"").await;
    let refused = metric(&gw, "portcullis_upstream_retries_total", "outcome=\"budget-exhausted\"").await;
    assert_eq!(retried, 10, "the floor allows exactly 10 retries in the window");
    assert!(refused >= 1, "later failed connections were not retried");
    assert_eq!(failed, refused, "each refused retry is a 502");
    assert_eq!(ok + failed, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_overrides_the_pools() {
    let up = Upstream::start("up").await;
    let config = format!(
        "{}\n[[pools]]\nname = \"up\"\ntargets = [\"{}\"]\nresponse_timeout_ms = 600\n\
         [[routes]]\nname = \"impatient\"\npath = \"/slow/400\"\nmatch = \"exact\"\npools = [\"up\"]\ntimeout_ms = 200\n\
         [[routes]]\nname = \"patient\"\npath = \"/slow/900\"\nmatch = \"exact\"\npools = [\"up\"]\ntimeout_ms = 5000\n\
         [[routes]]\nname = \"pool-default\"\npath = \"/slow\"\npools = [\"up\"]\n",
        config_head(),
        up.addr
    );
    let gw = Gateway::start(&config);
    // Shorter than the pool's: 504 for an answer the pool alone would wait for.
    assert_problem(&get(&gw.url("/slow/400"), &[]).await, 504);
    assert_eq!(get(&gw.url("/slow/399"), &[]).await.status, 200, "the same wait on a route without its own budget is answered");
    // Longer than the pool's: answered.
    assert_eq!(get(&gw.url("/slow/900"), &[]).await.status, 200);
    // No route timeout: the pool's 600 ms.
    assert_problem(&get(&gw.url("/slow/800"), &[]).await, 504);
    assert_eq!(get(&gw.url("/slow/10"), &[]).await.status, 200);
}
