//! TLS termination on a listener (`[listeners.tls]`), with `rustls` and its
//! `ring` provider: TLS 1.3 and 1.2 only, certificates and keys read from
//! PEM files (Let's Encrypt's `live/<domain>/` layout), one certificate per
//! SNI name with the first as the default, HTTP/2 offered by ALPN, and the
//! files watched so a renewed certificate is served without a restart
//! ([`watch`]). TLS towards upstreams is [`upstream`].
//!
//! Lifecycle: [`check`] runs with the other configuration checks (so
//! `portcullis check` reports an unreadable file, a key that does not match
//! its certificate or a name the certificate does not cover, as
//! `file:line:col: key.path: reason`); [`CertStore::load`] builds the
//! certificates when the listener starts; [`watch`] swaps them when the
//! files change, keeping the old ones if the new files are bad.

pub mod upstream;
pub mod watch;

use crate::config::{ConfigError, Source};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use toml::Spanned;

/// `[listeners.tls]`: terminate TLS on this listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Lowest protocol version accepted: `"1.2"` (default) or `"1.3"`. Older ones are never accepted.
    #[serde(default)]
    pub min_version: Option<Spanned<String>>,
    /// Certificates by SNI name; the first also answers clients that send no
    /// name or a name none of them lists.
    pub certificates: Vec<CertificateConfig>,
}

/// `[[listeners.tls.certificates]]`: one certificate chain and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Host names this certificate is chosen for (`api.example.org`, `*.example.org`).
    pub names: Vec<Spanned<String>>,
    /// A Let's Encrypt `live/<domain>` directory: `fullchain.pem` and `privkey.pem` in it.
    #[serde(default)]
    pub dir: Option<Spanned<String>>,
    /// The certificate chain (PEM, leaf first), instead of `dir`.
    #[serde(default)]
    pub cert: Option<Spanned<String>>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1), instead of `dir`.
    #[serde(default)]
    pub key: Option<Spanned<String>>,
}

/// Protocol versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// One certificate as resolved from the configuration (absolute paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// SNI names (lower case).
    pub names: Vec<String>,
    /// Chain file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
}

/// A listener's TLS settings with paths resolved: what the listener task needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// Lowest version.
    pub min_version: MinVersion,
    /// Certificates; the first is the default.
    pub certificates: Vec<CertFiles>,
}

impl TlsSpec {
    /// Every file the certificates are read from (watched for changes).
    pub fn files(&self) -> Vec<PathBuf> {
        self.certificates.iter().flat_map(|c| [c.cert.clone(), c.key.clone()]).collect()
    }
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No `CERTIFICATE` block, or a malformed one.
    #[error("{path}: no PEM certificate in it ({detail})")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// No private key block, or a malformed one.
    #[error("{path}: no PEM private key in it ({detail})")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        detail: String,
    },
    /// The key is of a kind rustls cannot sign with, or does not match the certificate.
    #[error("{key} does not fit {cert}: {detail}")]
    KeyMismatch {
        /// The chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        detail: String,
    },
    /// The leaf certificate cannot be parsed.
    #[error("{path}: the first certificate cannot be parsed: {detail}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The certificate is not valid for a configured name.
    #[error("{path} is not valid for {name:?} ({detail})")]
    NameNotCovered {
        /// The file.
        path: PathBuf,
        /// The configured name.
        name: String,
        /// What the name check said.
        detail: String,
    },
}

/// The crypto provider every TLS config here uses (`ring`: no C toolchain
/// beyond what `cc` needs, builds in seconds).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The protocol versions for `min`: never below TLS 1.2.
pub fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        MinVersion::Tls12 => &BOTH,
        MinVersion::Tls13 => &ONLY_13,
    }
}

/// Read a PEM chain (leaf first).
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|source| TlsFileError::Read { path: path.into(), source })?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&bytes).collect::<Result<_, _>>().map_err(|e| TlsFileError::NoCertificate { path: path.into(), detail: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsFileError::NoCertificate { path: path.into(), detail: "no CERTIFICATE block".into() });
    }
    Ok(chain)
}

/// Read a PEM private key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = std::fs::read(path).map_err(|source| TlsFileError::Read { path: path.into(), source })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsFileError::NoKey { path: path.into(), detail: e.to_string() })
}

/// Load one certificate: read both files, check that the key is the
/// certificate's and that the certificate is valid for every name.
pub fn load_pair(files: &CertFiles) -> Result<CertifiedKey, TlsFileError> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    let leaf = ParsedCertificate::try_from(&chain[0]).map_err(|e| TlsFileError::BadCertificate { path: files.cert.clone(), detail: e.to_string() })?;
    for name in &files.names {
        // A wildcard name is checked with a name it would serve.
        let probe = match name.strip_prefix("*.") {
            Some(rest) => format!("portcullis-check.{rest}"),
            None => name.clone(),
        };
        let server_name = ServerName::try_from(probe).map_err(|e| TlsFileError::NameNotCovered { path: files.cert.clone(), name: name.clone(), detail: e.to_string() })?;
        rustls::client::verify_server_name(&leaf, &server_name).map_err(|e| TlsFileError::NameNotCovered { path: files.cert.clone(), name: name.clone(), detail: e.to_string() })?;
    }
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider()).map_err(|e| TlsFileError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone(), detail: e.to_string() })?;
    // `from_der` lets "cannot tell" pass; a key whose public half is known must match.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(TlsFileError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone(), detail: e.to_string() }),
    }
}

/// The loaded certificates of one listener, by name.
#[derive(Debug)]
struct Loaded {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.org` stored as `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// The leaf of each certificate, to tell whether a reload changed anything.
    leaves: Vec<CertificateDer<'static>>,
}

/// Certificates of one listener, chosen by SNI; swapped whole on reload.
#[derive(Debug)]
pub struct CertStore {
    spec: TlsSpec,
    loaded: ArcSwap<Loaded>,
}

impl CertStore {
    /// Load every certificate of `spec`; the first error stops it.
    pub fn load(spec: &TlsSpec) -> Result<CertStore, TlsFileError> {
        Ok(CertStore { spec: spec.clone(), loaded: ArcSwap::from_pointee(load_all(spec)?) })
    }

    /// Re-read the files. `Ok(true)`: new certificates are served from the
    /// next handshake on; `Ok(false)`: the files hold what is served
    /// already; `Err`: the files are bad and the old certificates stay.
    pub fn reload(&self) -> Result<bool, TlsFileError> {
        let fresh = load_all(&self.spec)?;
        if fresh.leaves == self.loaded.load().leaves {
            return Ok(false);
        }
        self.loaded.store(Arc::new(fresh));
        Ok(true)
    }

    /// The settings it was loaded from.
    pub fn spec(&self) -> &TlsSpec {
        &self.spec
    }

    fn for_name(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let loaded = self.loaded.load();
        let Some(name) = name.map(str::to_ascii_lowercase) else { return loaded.default.clone() };
        if let Some(c) = loaded.exact.get(&name) {
            return c.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(c) = loaded.wildcard.get(parent)
        {
            return c.clone();
        }
        loaded.default.clone()
    }

    /// A rustls server configuration choosing certificates from this store,
    /// offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(self.spec.min_version))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.for_name(hello.server_name()))
    }
}

fn load_all(spec: &TlsSpec) -> Result<Loaded, TlsFileError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut leaves = Vec::new();
    for files in &spec.certificates {
        let key = Arc::new(load_pair(files)?);
        leaves.push(key.cert[0].clone());
        default.get_or_insert_with(|| key.clone());
        for name in &files.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()).or_insert_with(|| key.clone()),
                None => exact.entry(name.clone()).or_insert_with(|| key.clone()),
            };
        }
    }
    let default = default.ok_or_else(|| TlsFileError::NoCertificate { path: PathBuf::new(), detail: "no certificates configured".into() })?;
    Ok(Loaded { exact, wildcard, default, leaves })
}

/// Resolve a listener's TLS settings; `None` when they are wrong (the errors come from [`check`]).
pub fn spec(source: &Source, tls: &ListenerTls) -> Option<TlsSpec> {
    let min_version = match tls.min_version.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("1.2") => MinVersion::Tls12,
        Some("1.3") => MinVersion::Tls13,
        Some(_) => return None,
    };
    let certificates = tls.certificates.iter().map(|c| files(source, c)).collect::<Option<Vec<_>>>()?;
    (!certificates.is_empty()).then_some(TlsSpec { min_version, certificates })
}

fn files(source: &Source, c: &CertificateConfig) -> Option<CertFiles> {
    let names = c.names.iter().map(|n| n.get_ref().to_ascii_lowercase()).collect();
    let (cert, key) = match (&c.dir, &c.cert, &c.key) {
        (Some(dir), None, None) => {
            let dir = source.resolve(dir.get_ref());
            (dir.join("fullchain.pem"), dir.join("privkey.pem"))
        }
        (None, Some(cert), Some(key)) => (source.resolve(cert.get_ref()), source.resolve(key.get_ref())),
        _ => return None,
    };
    Some(CertFiles { names, cert, key })
}

/// Check `[listeners.tls]` of listener `i`: the settings, and that every
/// certificate loads (readable, key matches, names covered).
pub fn check(source: &Source, i: usize, tls: &ListenerTls, at: &Spanned<String>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let base = format!("listeners[{i}].tls");
    if let Some(v) = &tls.min_version
        && !matches!(v.get_ref().as_str(), "1.2" | "1.3")
    {
        errors.push(source.error_at(v, format!("{base}.min_version"), format!("expected \"1.2\" or \"1.3\" (older versions are never accepted), got {:?}", v.get_ref())));
    }
    if tls.certificates.is_empty() {
        errors.push(source.error_at(at, format!("{base}.certificates"), "a TLS listener needs at least one certificate"));
    }
    let mut seen = HashMap::new();
    for (j, c) in tls.certificates.iter().enumerate() {
        let key_path = format!("{base}.certificates[{j}]");
        if c.names.is_empty() {
            errors.push(source.error_at(at, format!("{key_path}.names"), "list the host names this certificate serves"));
        }
        for (k, n) in c.names.iter().enumerate() {
            let name = n.get_ref().to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if ServerName::try_from(bare.to_string()).is_err() || bare.contains('*') {
                errors.push(source.error_at(n, format!("{key_path}.names[{k}]"), format!("{:?} is not a DNS name (a wildcard is allowed only as the first label: *.example.org)", n.get_ref())));
            } else if let Some(first) = seen.insert(name.clone(), j) {
                errors.push(source.error_at(n, format!("{key_path}.names[{k}]"), format!("{name:?} is already served by certificates[{first}]")));
            }
        }
        let Some(files) = files(source, c) else {
            let anchor = c.dir.as_ref().or(c.cert.as_ref()).or(c.key.as_ref()).unwrap_or(at);
            errors.push(source.error_at(anchor, key_path, "give either dir (a live/<domain> directory with fullchain.pem and privkey.pem) or both cert and key"));
            continue;
        };
        if let Err(e) = load_pair(&files) {
            // Point at the key that names the file at fault.
            let (anchor, field) = match (&e, &c.dir) {
                (_, Some(dir)) => (dir, "dir"),
                (TlsFileError::NoKey { .. }, None) | (TlsFileError::KeyMismatch { .. }, None) => (c.key.as_ref().unwrap_or(at), "key"),
                (TlsFileError::Read { path, .. }, None) if *path == files.key => (c.key.as_ref().unwrap_or(at), "key"),
                _ => (c.cert.as_ref().unwrap_or(at), "cert"),
            };
            errors.push(source.error_at(anchor, format!("{key_path}.{field}"), e.to_string()));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, written to `dir/<first name>.{pem,key}`.
    fn self_signed(dir: &Path, names: &[&str]) -> (CertFiles, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap().self_signed(&key).unwrap();
        let stem = names[0].replace('*', "star");
        let files = CertFiles { names: names.iter().map(|n| n.to_string()).collect(), cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        (files, cert.der().clone())
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_der) = self_signed(dir.path(), &["a.test"]);
        let (b, b_der) = self_signed(dir.path(), &["*.b.test", "b.test"]);
        let store = CertStore::load(&TlsSpec { min_version: MinVersion::Tls12, certificates: vec![a, b] }).unwrap();
        let served = |name: Option<&str>| store.for_name(name).cert[0].clone();
        assert_eq!(served(Some("a.test")), a_der);
        assert_eq!(served(Some("A.Test")), a_der, "names compare without case");
        assert_eq!(served(Some("b.test")), b_der);
        assert_eq!(served(Some("api.b.test")), b_der, "one label under the wildcard");
        assert_eq!(served(Some("x.api.b.test")), a_der, "a wildcard covers one label only: the default answers");
        assert_eq!(served(Some("other.test")), a_der, "unknown names get the first certificate");
        assert_eq!(served(None), a_der, "no SNI: the first certificate");
    }

    #[test]
    fn a_pair_must_match_and_cover_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = self_signed(dir.path(), &["a.test"]);
        let (b, _) = self_signed(dir.path(), &["b.test"]);
        assert!(load_pair(&a).is_ok());
        let crossed = CertFiles { names: vec!["a.test".into()], cert: a.cert.clone(), key: b.key.clone() };
        assert!(matches!(load_pair(&crossed), Err(TlsFileError::KeyMismatch { .. })), "another certificate's key");
        let wrong_name = CertFiles { names: vec!["c.test".into()], ..a.clone() };
        assert!(matches!(load_pair(&wrong_name), Err(TlsFileError::NameNotCovered { .. })));
        let missing = CertFiles { cert: dir.path().join("nope.pem"), ..a.clone() };
        assert!(matches!(load_pair(&missing), Err(TlsFileError::Read { .. })));
        std::fs::write(dir.path().join("garbage.pem"), "not pem").unwrap();
        let garbage = CertFiles { cert: dir.path().join("garbage.pem"), ..a };
        assert!(matches!(load_pair(&garbage), Err(TlsFileError::NoCertificate { .. })));
    }

    #[test]
    fn only_tls_12_and_13_are_ever_offered() {
        let all: Vec<_> = versions(MinVersion::Tls12).iter().map(|v| v.version).collect();
        assert_eq!(all, [rustls::ProtocolVersion::TLSv1_3, rustls::ProtocolVersion::TLSv1_2]);
        let strict: Vec<_> = versions(MinVersion::Tls13).iter().map(|v| v.version).collect();
        assert_eq!(strict, [rustls::ProtocolVersion::TLSv1_3]);
    }
}
