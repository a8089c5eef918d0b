//! Listen stage: accept connections and serve HTTP/1.1 (keep-alive,
//! upgrades) and HTTP/2 (prior knowledge, h2c) on each listener.

use super::Gateway;
use crate::snapshot::ListenerSpec;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Listener name.
    pub listener: Arc<str>,
}

/// Bind every listener; fails before serving anything if one cannot bind.
pub async fn bind(specs: &[ListenerSpec]) -> std::io::Result<Vec<(ListenerSpec, TcpListener)>> {
    let mut out = Vec::new();
    for spec in specs {
        let l = TcpListener::bind(spec.address)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind listener {:?} on {}: {e}", spec.name, spec.address)))?;
        out.push((spec.clone(), l));
    }
    Ok(out)
}

/// Accept connections on `listener` forever.
pub async fn serve(gateway: Arc<Gateway>, spec: ListenerSpec, listener: TcpListener) {
    let name: Arc<str> = spec.name.as_str().into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(spec.header_timeout).keep_alive(true).max_buf_size(gateway.max_head_buf());
    builder.http2().timer(TokioTimer::new()).max_header_list_size(gateway.max_head_buf() as u32);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo { peer, listener: name.clone() };
        let gateway = gateway.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                let info = info.clone();
                async move { Ok::<_, std::convert::Infallible>(super::handle(gateway, info, req).await) }
            });
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}
