//! Listen stage: accept connections and serve HTTP/1.1 (keep-alive,
//! upgrades) and HTTP/2 (prior knowledge, h2c) on each listener; on a TLS
//! listener the handshake comes first (`crate::tls`), and HTTP/2 is chosen
//! by ALPN.

use super::Gateway;
use crate::snapshot::ListenerSpec;
use crate::tls::CertStore;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

const PROXY_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A PROXY v2 header is at most 16 + 65535 bytes; v1 at most 107.
const PROXY_HEADER_MAX: usize = 16 + 65_535;

/// Read and consume a PROXY protocol header (v1 or v2) from the start of
/// `stream`; `Some(source)` unless it says `UNKNOWN`/`LOCAL` (health checks
/// of the balancer itself), in which case the TCP peer stands.
async fn read_proxy_header(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<SocketAddr>> {
    use ppp::{HeaderResult, PartialResult, v1, v2};
    use tokio::io::AsyncReadExt;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut buf = vec![0u8; 536];
    loop {
        // Peek, so that exactly the header's bytes are consumed below.
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(bad("connection closed before the PROXY header".into()));
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == buf.len() {
                if buf.len() >= PROXY_HEADER_MAX {
                    return Err(bad("PROXY header too long".into()));
                }
                buf.resize((buf.len() * 2).min(PROXY_HEADER_MAX), 0);
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => {
                let source = match h.addresses {
                    v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    v1::Addresses::Unknown => None,
                };
                (h.header.len(), source)
            }
            HeaderResult::V2(Ok(h)) => {
                let source = match (h.command, h.addresses) {
                    (v2::Command::Local, _) => None,
                    (_, v2::Addresses::IPv4(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    (_, v2::Addresses::IPv6(a)) => Some(SocketAddr::from((a.source_address, a.source_port))),
                    _ => None,
                };
                (h.len(), source)
            }
            HeaderResult::V1(Err(e)) => return Err(bad(format!("{e}"))),
            HeaderResult::V2(Err(e)) => return Err(bad(format!("{e}"))),
        };
        let mut header = vec![0u8; len];
        stream.read_exact(&mut header).await?;
        return Ok(source);
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Listener name.
    pub listener: Arc<str>,
    /// The connection is TLS (terminated here): the request's scheme is `https`.
    pub tls: bool,
    /// The listener's limits on what clients hold.
    pub gates: Arc<super::limits::Gates>,
}

/// Bind every listener; fails before serving anything if one cannot bind
/// (with the name of the listener that could not).
pub async fn bind(specs: &[ListenerSpec]) -> Result<Vec<(ListenerSpec, TcpListener)>, (String, std::io::Error)> {
    let mut out = Vec::new();
    for spec in specs {
        let l = TcpListener::bind(spec.address)
            .await
            .map_err(|e| (spec.name.clone(), std::io::Error::new(e.kind(), format!("cannot bind {} (listener {:?}): {e}", spec.address, spec.name))))?;
        out.push((spec.clone(), l));
    }
    Ok(out)
}

/// Accept connections on `listener` forever.
///
/// When `stop` turns true the listener closes its socket, tells every open
/// connection to finish (HTTP/1: close after the response in flight; HTTP/2:
/// GOAWAY) and returns once they have all ended.
///
/// With `tls`, every connection is a TLS handshake first (bounded by the
/// listener's header timeout), and the certificate files are watched for
/// renewal as long as the listener runs.
pub async fn serve(gateway: Arc<Gateway>, spec: ListenerSpec, listener: TcpListener, tls: Option<Arc<CertStore>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let name: Arc<str> = spec.name.as_str().into();
    let (acceptor, _watch) = match tls {
        Some(store) => match store.server_config() {
            Ok(config) => (Some(tokio_rustls::TlsAcceptor::from(config)), watch_certificates(&gateway, &name, store)),
            Err(e) => {
                // Only a provider that lacks every TLS 1.2/1.3 suite gets here: not serving is the safe answer.
                tracing::error!(listener = %name, "cannot build the TLS configuration; the listener does not serve: {e}");
                return;
            }
        },
        None => (None, None),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    super::limits::configure(&mut builder, &spec.limits, gateway.max_head_buf());
    let builder = Arc::new(builder);
    let gates = Arc::new(super::limits::Gates::new(&spec.limits));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(listener = %name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(connection_place) = gates.connection() else {
            tracing::warn!(listener = %name, %peer, "max_connections reached: connection answered 503");
            crate::metrics::global().connections_refused.with_label_values(&[&*name, "max-connections"]).inc();
            tokio::spawn(super::limits::refuse_connection(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (gates, limits) = (gates.clone(), spec.limits.clone());
        let gateway = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let name = name.clone();
        let proxy_protocol = spec.proxy_protocol;
        let acceptor = acceptor.clone();
        let handshake_timeout = spec.limits.header_timeout;
        tokio::spawn(async move {
            let mut stream = stream;
            let mut peer = peer;
            if proxy_protocol {
                let trusted = gateway.snapshot.load().trusted_proxies.iter().any(|n| n.contains(&peer.ip()));
                if !trusted {
                    tracing::warn!(listener = %name, %peer, "PROXY protocol connection from a peer not in gateway.trusted_proxies: closed");
                    return;
                }
                match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_proxy_header(&mut stream)).await {
                    Ok(Ok(Some(source))) => peer = source,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(listener = %name, %peer, "bad PROXY protocol header: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(listener = %name, %peer, "no PROXY protocol header in time");
                        return;
                    }
                }
            }
            let _connection_place = connection_place;
            let info = ConnInfo { peer, listener: name.clone(), tls: acceptor.is_some(), gates };
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                let info = info.clone();
                async move { Ok::<_, std::convert::Infallible>(super::handle(gateway, info, req).await) }
            });
            // Write and first-bytes deadlines under the TLS layer too, so a stalled handshake is cut.
            let stream = super::limits::TimedIo::new(stream, &limits);
            let served = match acceptor {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned()).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            // rustls has sent its alert (e.g. protocol_version for TLS 1.1).
                            tracing::debug!(listener = %name, %peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = %name, %peer, "no TLS handshake in time");
                            return;
                        }
                    };
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned()).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(listener = %name, open = graceful.count(), "listener closed; finishing open connections");
    graceful.shutdown().await;
}

/// Reload `store` when its files change, for as long as the guard lives;
/// every outcome is logged and audited (a bad new pair keeps the old one).
fn watch_certificates(gateway: &Arc<Gateway>, listener: &Arc<str>, store: Arc<CertStore>) -> Option<crate::tls::watch::WatchGuard> {
    let (gateway, listener) = (gateway.clone(), listener.clone());
    crate::tls::watch::watch(store, move |outcome| match outcome {
        Ok(()) => {
            tracing::info!(listener = %listener, "TLS certificates reloaded from their files");
            gateway.audit.write_event(serde_json::json!({"event": "tls-reload", "listener": &*listener, "result": "ok"}));
        }
        Err(e) => {
            tracing::error!(listener = %listener, "TLS certificate reload rejected, the previous certificates keep serving: {e}");
            gateway.audit.write_event(serde_json::json!({"event": "tls-reload", "listener": &*listener, "result": "rejected", "reason": e.to_string()}));
        }
    })
}
