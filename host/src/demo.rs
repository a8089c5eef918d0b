//! `portcullis demo`: loopback stand-ins for the ProCare agent services, so a
//! newcomer sees routing work with one command. Each answers with its name
//! and echoes what it received (method, path, query, headers) as JSON, and
//! `GET /health` answers 200 for the active health checks.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Start a stand-in service called `name` on `addr`; returns the bound address.
pub async fn start_stand_in(name: String, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("demo service {name} cannot bind {addr}: {e}")))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| echo(name.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

async fn echo(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/health" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))).collect();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = req.into_body().collect().await?.to_bytes();
    let answer = serde_json::json!({
        "service": name,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": body.len(),
    });
    let mut text = serde_json::to_vec_pretty(&answer).expect("json values serialize");
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(resp)
}
