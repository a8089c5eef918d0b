//! TLS towards upstreams (`[pools.tls]`): for pools in another location
//! (fsn1 ↔ hel1 crosses public networks). The upstream's certificate is
//! checked against the CA the operator names (a private CA, as between
//! nodes of one platform), for the target's host name or `server_name`;
//! with `client_cert`/`client_key` the gateway proves itself too (mTLS).
//! TLS 1.3 and 1.2 only, as on the listeners.

use super::{TlsFileError, load_pair, provider, read_chain, read_key, versions, CertFiles, MinVersion};
use crate::config::{ConfigError, Source};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

/// `[pools.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTls {
    /// PEM file of the CA certificate(s) the upstreams' certificates must chain to.
    pub ca: Spanned<String>,
    /// Name the upstream certificates must be valid for; default: each target's host.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    /// Client certificate chain (PEM) for upstreams that require one (mTLS).
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,
    /// Its private key (PEM).
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,
}

impl PartialEq for PoolTls {
    fn eq(&self, other: &Self) -> bool {
        let v = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.get_ref().clone());
        self.ca.get_ref() == other.ca.get_ref()
            && v(&self.server_name) == v(&other.server_name)
            && v(&self.client_cert) == v(&other.client_cert)
            && v(&self.client_key) == v(&other.client_key)
    }
}

/// A pool's TLS client settings, built.
pub struct UpstreamTls {
    /// The rustls client configuration (roots, optional client certificate).
    pub config: rustls::ClientConfig,
    /// Fixed name to verify, if configured.
    pub server_name: Option<ServerName<'static>>,
}

/// Build the client configuration of a pool.
pub fn build(source: &Source, tls: &PoolTls) -> Result<UpstreamTls, TlsFileError> {
    let ca = source.resolve(tls.ca.get_ref());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_chain(&ca)? {
        roots.add(cert).map_err(|e| TlsFileError::BadCertificate { path: ca.clone(), detail: e.to_string() })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(MinVersion::Tls12))
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let config = match client_files(source, tls) {
        Some(files) => {
            // Checked like a listener's certificate: the key must be the certificate's.
            load_pair(&files)?;
            let chain = read_chain(&files.cert)?;
            let key = read_key(&files.key)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| TlsFileError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone(), detail: e.to_string() })?
        }
        None => builder.with_no_client_auth(),
    };
    let server_name = tls.server_name.as_ref().and_then(|n| ServerName::try_from(n.get_ref().clone()).ok());
    Ok(UpstreamTls { config, server_name })
}

/// The files a pool's TLS is read from: a change to one reloads the
/// configuration (they are among the watched files), and the pool whose
/// files changed is rebuilt with them.
pub fn files(source: &Source, tls: &PoolTls) -> Vec<PathBuf> {
    let mut out = vec![source.resolve(tls.ca.get_ref())];
    if let Some(f) = client_files(source, tls) {
        out.push(f.cert);
        out.push(f.key);
    }
    out
}

/// A digest of those files' contents (empty input for an unreadable one):
/// tells a reload whether a pool's certificates changed.
pub fn digest(source: &Source, tls: &PoolTls) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for path in files(source, tls) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
    }
    hex::encode(hasher.finalize())
}

fn client_files(source: &Source, tls: &PoolTls) -> Option<CertFiles> {
    match (&tls.client_cert, &tls.client_key) {
        (Some(c), Some(k)) => Some(CertFiles { names: Vec::new(), cert: source.resolve(c.get_ref()), key: source.resolve(k.get_ref()) }),
        _ => None,
    }
}

/// Check `pools[i].tls`: the files load, the key fits, the name is a name.
pub fn check(source: &Source, i: usize, tls: &PoolTls) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let base = format!("pools[{i}].tls");
    if let Err(e) = read_chain(&source.resolve(tls.ca.get_ref())) {
        errors.push(source.error_at(&tls.ca, format!("{base}.ca"), e.to_string()));
    }
    if let Some(n) = &tls.server_name
        && ServerName::try_from(n.get_ref().clone()).is_err()
    {
        errors.push(source.error_at(n, format!("{base}.server_name"), format!("{:?} is not a DNS name or IP address", n.get_ref())));
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), Some(_)) => {
            let files = client_files(source, tls).expect("both given");
            if let Err(e) = load_pair(&files) {
                let (anchor, field) = match &e {
                    TlsFileError::NoKey { .. } | TlsFileError::KeyMismatch { .. } => (tls.client_key.as_ref().expect("given"), "client_key"),
                    TlsFileError::Read { path, .. } if *path == files.key => (tls.client_key.as_ref().expect("given"), "client_key"),
                    _ => (tls.client_cert.as_ref().expect("given"), "client_cert"),
                };
                errors.push(source.error_at(anchor, format!("{base}.{field}"), e.to_string()));
            }
        }
        (Some(at), None) | (None, Some(at)) => errors.push(source.error_at(at, base, "client_cert and client_key go together (mTLS needs both)")),
        (None, None) => {}
    }
    errors
}
