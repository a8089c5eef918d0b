//! The admin listener: operator endpoints, on their own socket (loopback by
//! default), never on the public listeners.
//!
//! | endpoint | token | answer |
//! |---|---|---|
//! | `GET /healthz` | no | 200 while the process serves |
//! | `GET /readyz` | no | 200 when a chain is loaded and the audit log is writable; 503 with the reason otherwise |
//! | `GET /metrics` | no | Prometheus text: requests, policy verdicts, upstreams, reloads, chain version ([`crate::metrics`]); audit log counters |
//! | `GET /admin/policies` | yes | loaded components: name, source, SHA-256, memory and deadline limits, load time, chain version |
//! | `POST /admin/reload` | yes | 200 with the new version, or 422 with every reason |
//! | `POST /audit/v1/records` | the collector's own | an edge node's audit record, appended to the evidence log ([`crate::audit::collector`]); 404 without `[audit.collector]` |
//!
//! The token (`Authorization: Bearer …`) comes from `admin.token_file` or
//! `PORTCULLIS_ADMIN_TOKEN`; without one the `/admin/*` endpoints answer 403.

use crate::audit::collector::Collector;
use crate::body::{ProxyBody, full};
use crate::reload::{Reloader, Trigger};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

/// Bind the admin listener and serve it in the background; returns its address.
/// `collector`: the audit collector, when `[audit.collector]` is configured.
pub async fn start(reloader: Arc<Reloader>, address: SocketAddr, token: Option<String>, collector: Option<Arc<Collector>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await.map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind the admin listener on {address}: {e}")))?;
    let local = listener.local_addr()?;
    let token: Arc<Option<String>> = Arc::new(token);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (reloader, token, collector) = (reloader.clone(), token.clone(), collector.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let (reloader, token, collector) = (reloader.clone(), token.clone(), collector.clone());
                    async move { Ok::<_, std::convert::Infallible>(handle(&reloader, token.as_deref(), collector.as_deref(), req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

async fn handle(reloader: &Reloader, token: Option<&str>, collector: Option<&Collector>, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    if let Some(collector) = collector
        && path == crate::audit::collector::PATH
    {
        let sink = &reloader.gateway().audit;
        return collector.handle(req, sink, sink.default_durability()).await;
    }
    let snap = reloader.gateway().snapshot.load_full();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            // Ready: a chain is loaded (always, once serving) and the audit log takes records.
            let audit = reloader.gateway().audit.clone();
            let writable = tokio::task::spawn_blocking(move || audit.check_writable()).await.unwrap_or_else(|e| Err(format!("readiness check failed: {e}")));
            match writable {
                Ok(()) => json(StatusCode::OK, serde_json::json!({"ready": true, "chain": snap.version, "audit": "writable"})),
                Err(reason) => {
                    tracing::warn!("not ready: {reason}");
                    json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"ready": false, "chain": snap.version, "reason": reason}))
                }
            }
        }
        (&Method::GET, "/metrics") => {
            let mut body = crate::metrics::global().render(reloader.stats.ok.load(Ordering::Relaxed), reloader.stats.failed.load(Ordering::Relaxed), &snap);
            if let Some(stats) = reloader.gateway().audit.log_stats() {
                body.push_str(&crate::audit::metrics(stats));
            }
            text(StatusCode::OK, &body)
        }
        (_, p) if p.starts_with("/admin/") => {
            if let Err(resp) = authorize(token, &req) {
                return resp;
            }
            match (req.method(), p) {
                (&Method::GET, "/admin/policies") => {
                    let policies: Vec<_> = snap
                        .policies
                        .values()
                        .map(|p| {
                            serde_json::json!({
                                "name": &*p.name,
                                "namespace": p.namespace,
                                "source": p.source,
                                "sha256": p.module.digest,
                                "async": p.module.is_async(),
                                "memory": p.memory_cap,
                                "deadline_ms": p.deadline.as_millis() as u64,
                            })
                        })
                        .collect();
                    json(StatusCode::OK, serde_json::json!({"chain": snap.version, "loaded_at": crate::audit::rfc3339(snap.loaded_at), "policies": policies}))
                }
                (&Method::POST, "/admin/reload") => match reloader.reload(Trigger::Admin).await {
                    Ok(r) => json(StatusCode::OK, serde_json::to_value(r).expect("serializable")),
                    Err(why) => json(StatusCode::UNPROCESSABLE_ENTITY, serde_json::json!({"error": "reload rejected; the previous chain keeps serving", "reasons": why.lines().collect::<Vec<_>>()})),
                },
                _ => text(StatusCode::NOT_FOUND, "no such admin endpoint\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "no such admin endpoint\n"),
    }
}

#[allow(clippy::result_large_err)]
fn authorize(token: Option<&str>, req: &Request<Incoming>) -> Result<(), Response<ProxyBody>> {
    let Some(expected) = token else {
        return Err(text(StatusCode::FORBIDDEN, "admin endpoints are disabled: no admin token configured\n"));
    };
    let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        let mut resp = text(StatusCode::UNAUTHORIZED, "a valid admin bearer token is required\n");
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""));
        Err(resp)
    }
}

/// Compare without leaking the position of the first difference through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(serde_json::to_vec(&value).expect("json values serialize")));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}
