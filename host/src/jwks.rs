//! The JWKS cache: each configured issuer's JSON Web Key Set, kept in host
//! memory and handed to policies through `io.jwks` (the contract's only way
//! for a policy to see keys; policies never fetch).
//!
//! ```toml
//! [[jwks]]
//! issuer = "https://auth.procare.health/realms/procare"   # what policies ask for (their `iss`)
//! url = "http://keycloak.internal:8080/realms/procare/protocol/openid-connect/certs"
//! refresh_ms = 300000              # background refresh (sooner if Cache-Control max-age says so)
//! min_refetch_interval_ms = 10000  # unknown-kid refetches at most this often (and retries after failures)
//! timeout_ms = 2000                # one fetch, connect to end of body
//! max_stale_ms = 86400000          # the last good set is served this long after its fetch, then dropped
//! # instead of url: file = "keys/jwks.json" (read at load), or
//! # secret_file = "keys/procare-hs256.key" (raw bytes, >= 32; served as one `oct` key, optional kid = "...")
//! ```
//!
//! How the cache behaves:
//!
//! * A URL issuer is fetched at start and then in the background; the set
//!   a policy gets is always the last good one. When a fetch fails, the last
//!   good set keeps being served (and a warning is logged) until it is
//!   `max_stale_ms` old; retries back off from `min_refetch_interval_ms` to
//!   `refresh_ms`.
//! * **Key-id hint.** A policy may ask for `"<issuer>#kid=<kid>"` (issuer
//!   identifiers have no fragment). When that kid is in the set, the answer
//!   is a set holding only its keys (less JSON for the guest to parse); when
//!   it is not (key rotation), the cache refetches at once and answers with
//!   the new set.
//! * **Single flight.** A fetch runs in a task of its own; every request
//!   that needs it waits for that one fetch, so however many requests carry
//!   an unknown kid, at most one fetch is in flight per issuer, and a new one
//!   starts at most every `min_refetch_interval_ms`. Requests inside that
//!   interval get the current set at once (the policy then refuses the
//!   unknown kid).
//! * Only `http://` URLs: this build has no TLS client. Serve the JWKS over
//!   a private network, or use `file`.
//! * **Key generation** ([`JwksCache::key_generation`]): changes whenever
//!   the keys a policy could verify with change — a fetch that brings a
//!   different set, or a reload that changes any `[[jwks]]` source (a file's
//!   content, an entry added or removed). The verified-token cache
//!   (`crate::token_cache`) scopes its entries by it, so a key the issuer
//!   withdrew never keeps a cached token passing.

use crate::config::{Config, ConfigError, ConfigErrors, Source};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use toml::Spanned;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 100;
/// Smallest shared secret accepted (`secret_file`).
pub const MIN_SECRET_BYTES: usize = 32;
/// Separator of the key-id hint in `io.jwks` requests.
pub const KID_HINT: &str = "#kid=";

/// `[[jwks]]`: where one issuer's keys come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// The issuer, as policies name it (normally the tokens' `iss`).
    pub issuer: Spanned<String>,
    /// `http://` URL of the JWKS document.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// A JWKS document on disk (relative to the config file), read at load.
    #[serde(default)]
    pub file: Option<Spanned<String>>,
    /// A file holding a shared HMAC secret (raw bytes, trailing newline
    /// ignored, at least 32 bytes), served as one `oct` key.
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    /// `kid` of the `secret_file` key (none when absent).
    #[serde(default)]
    pub kid: Option<Spanned<String>>,
    /// Background refresh interval.
    #[serde(default = "default_refresh")]
    pub refresh_ms: u64,
    /// Least time between two fetches started for unknown kids or retries.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval_ms: u64,
    /// Budget of one fetch.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How long the last good set is served after it was fetched.
    #[serde(default = "default_max_stale")]
    pub max_stale_ms: u64,
}

fn default_refresh() -> u64 {
    300_000
}
fn default_min_refetch() -> u64 {
    10_000
}
fn default_timeout() -> u64 {
    2_000
}
fn default_max_stale() -> u64 {
    86_400_000
}

/// Checks of `[[jwks]]` that need no file: called from `config::validate`.
pub fn validate(source: &Source, config: &Config, errors: &mut Vec<ConfigError>) {
    let mut seen = BTreeSet::new();
    for (i, j) in config.jwks.iter().enumerate() {
        let key = |f: &str| format!("jwks[{i}].{f}");
        let issuer = j.issuer.get_ref();
        if issuer.is_empty() || issuer.contains('#') || issuer.chars().any(char::is_control) {
            errors.push(source.error_at(&j.issuer, key("issuer"), "a non-empty issuer identifier without '#' or control characters"));
        }
        if !seen.insert(issuer.as_str()) {
            errors.push(source.error_at(&j.issuer, key("issuer"), format!("issuer {issuer:?} has two [[jwks]] entries")));
        }
        let sources = [j.url.is_some(), j.file.is_some(), j.secret_file.is_some()].iter().filter(|s| **s).count();
        if sources != 1 {
            errors.push(source.error_at(&j.issuer, format!("jwks[{i}]"), "exactly one of url, file or secret_file is required"));
        }
        if let Some(url) = &j.url
            && let Err(reason) = check_url(url.get_ref())
        {
            errors.push(source.error_at(url, key("url"), reason));
        }
        if let Some(kid) = &j.kid {
            if j.secret_file.is_none() {
                errors.push(source.error_at(kid, key("kid"), "kid names the secret_file key; a JWKS names its own keys"));
            }
            if !valid_kid(kid.get_ref()) {
                errors.push(source.error_at(kid, key("kid"), "letters, digits and -_.:~=+ only"));
            }
        }
        for (name, v) in [("refresh_ms", j.refresh_ms), ("min_refetch_interval_ms", j.min_refetch_interval_ms), ("timeout_ms", j.timeout_ms), ("max_stale_ms", j.max_stale_ms)] {
            if v == 0 {
                errors.push(source.error_at(&j.issuer, key(name), "must be positive"));
            }
        }
        if j.min_refetch_interval_ms > j.refresh_ms {
            errors.push(source.error_at(&j.issuer, key("min_refetch_interval_ms"), "must not exceed refresh_ms"));
        }
        if j.max_stale_ms < j.refresh_ms {
            errors.push(source.error_at(&j.issuer, key("max_stale_ms"), "must be at least refresh_ms (else a set expires before its refresh)"));
        }
    }
}

fn check_url(url: &str) -> Result<http::Uri, String> {
    if url.starts_with("https://") {
        return Err("https is not supported by this build (no TLS client); fetch the JWKS over http on a private network, or use file".into());
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!("expected http://host[:port]/path, got {url:?}"));
    }
    Ok(uri)
}

/// The key ids the cache acts on: the policy refuses any other before asking.
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty() && kid.len() <= 256 && !kid.contains("..") && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:~=+".contains(&b))
}

/// Why the cache has no set to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLookupError {
    /// No `[[jwks]]` entry for the issuer.
    UnknownIssuer(String),
    /// Never fetched, failing, or older than `max_stale_ms`.
    Unavailable(String),
}

/// One key set, normalised: only `{"keys": [...]}`, indexed by kid.
struct KeySet {
    full: Arc<str>,
    by_kid: BTreeMap<String, Arc<str>>,
    count: usize,
    fetched_at: Instant,
    max_age: Option<Duration>,
}

impl KeySet {
    fn parse(bytes: &[u8], max_age: Option<Duration>) -> Result<KeySet, String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let keys = doc.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys; at most {MAX_KEYS} are accepted", keys.len()));
        }
        let mut by_kid: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for k in keys {
            let obj = k.as_object().ok_or("a key is not a JSON object")?;
            if !obj.get("kty").is_some_and(Value::is_string) {
                return Err("a key has no \"kty\"".into());
            }
            if let Some(kid) = obj.get("kid").and_then(Value::as_str) {
                by_kid.entry(kid.to_string()).or_default().push(k);
            }
        }
        let render = |keys: &[&Value]| -> Arc<str> { serde_json::json!({ "keys": keys }).to_string().into() };
        Ok(KeySet {
            full: render(&keys.iter().collect::<Vec<_>>()),
            by_kid: by_kid.into_iter().map(|(kid, ks)| (kid, render(&ks))).collect(),
            count: keys.len(),
            fetched_at: Instant::now(),
            max_age,
        })
    }

    fn secret(secret: &[u8], kid: Option<&str>) -> KeySet {
        use base64::Engine;
        let mut key = serde_json::json!({ "kty": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret) });
        if let Some(kid) = kid {
            key["kid"] = kid.into();
        }
        let text = serde_json::json!({ "keys": [key] }).to_string();
        KeySet::parse(text.as_bytes(), None).expect("a generated set parses")
    }

    fn answer(&self, kid: Option<&str>) -> String {
        kid.and_then(|k| self.by_kid.get(k)).unwrap_or(&self.full).to_string()
    }
}

type FetchClient = Client<HttpConnector, Empty<Bytes>>;

enum Origin {
    /// Fetched over HTTP and refreshed.
    Url { uri: http::Uri, client: Box<FetchClient> },
    /// Read at load (`file`, `secret_file`); never refetched.
    Static,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    fetching: bool,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    failures: u32,
    fetches: u64,
}

struct Issuer {
    /// Unique in the process: tells a carried-over issuer from a new one.
    id: u64,
    name: String,
    /// The settings of a URL source, to tell an unchanged entry on reload.
    fingerprint: String,
    origin: Origin,
    refresh: Duration,
    min_interval: Duration,
    timeout: Duration,
    max_stale: Duration,
    state: Mutex<State>,
    /// Bumped after every finished fetch; waiters watch it.
    done: tokio::sync::watch::Sender<u64>,
}

/// Where an issuer's keys come from, as the edge plan carries it.
/// No `Debug`: the set may hold a shared secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKeys {
    /// `{"url": "..."}`: fetched by the edge.
    Url(String),
    /// `{"jwks": "..."}`: the JWKS text itself.
    Jwks(String),
}

/// The cache of every configured issuer.
#[derive(Default)]
pub struct JwksCache {
    issuers: BTreeMap<String, Arc<Issuer>>,
    /// Digest of the sources: each issuer's name with its static set's
    /// content, or the id of its URL issuer (whose fetches count in [`FETCHED_CHANGES`]).
    sources: u64,
}

/// Key sets that a fetch changed, in the whole process.
static FETCHED_CHANGES: AtomicU64 = AtomicU64::new(0);
/// Issuer ids.
static NEXT_ISSUER: AtomicU64 = AtomicU64::new(1);

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: a set may hold shared secrets.
        f.debug_struct("JwksCache").field("issuers", &self.issuers.keys().collect::<Vec<_>>()).finish()
    }
}

impl JwksCache {
    /// A cache with no issuer (every lookup: unknown issuer).
    pub fn empty() -> JwksCache {
        JwksCache::default()
    }

    /// Build the cache from `[[jwks]]`: read `file` and `secret_file`
    /// sources now (errors name the file, line and key), and, inside a tokio
    /// runtime, start fetching URL sources in the background. On a reload,
    /// pass the cache in use: a URL issuer whose entry did not change keeps
    /// its keys and its refresher (files are always read again).
    pub fn load(source: &Source, entries: &[JwksConfig], previous: Option<&JwksCache>) -> Result<JwksCache, ConfigErrors> {
        let mut errors = Vec::new();
        let mut issuers = BTreeMap::new();
        let mut fresh = Vec::new();
        for (i, j) in entries.iter().enumerate() {
            let key = |f: &str| format!("jwks[{i}].{f}");
            let fingerprint = format!("{:?}|{}|{}|{}|{}", j.url.as_ref().map(|u| u.get_ref()), j.refresh_ms, j.min_refetch_interval_ms, j.timeout_ms, j.max_stale_ms);
            if j.url.is_some()
                && let Some(old) = previous.and_then(|p| p.issuers.get(j.issuer.get_ref()))
                && old.fingerprint == fingerprint
            {
                issuers.insert(old.name.clone(), old.clone());
                continue;
            }
            let mut keys = None;
            let origin = if let Some(url) = &j.url {
                match check_url(url.get_ref()) {
                    Ok(uri) => {
                        let mut connector = HttpConnector::new();
                        connector.set_connect_timeout(Some(Duration::from_millis(j.timeout_ms)));
                        connector.set_nodelay(true);
                        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).pool_max_idle_per_host(1).build(connector);
                        Origin::Url { uri, client: Box::new(client) }
                    }
                    Err(reason) => {
                        errors.push(source.error_at(url, key("url"), reason));
                        continue;
                    }
                }
            } else if let Some(file) = &j.file {
                let path = source.resolve(file.get_ref());
                match std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(|b| KeySet::parse(&b, None).map_err(|e| format!("{}: {e}", path.display()))) {
                    Ok(set) => keys = Some(Arc::new(set)),
                    Err(reason) => {
                        errors.push(source.error_at(file, key("file"), reason));
                        continue;
                    }
                }
                Origin::Static
            } else if let Some(file) = &j.secret_file {
                let path = source.resolve(file.get_ref());
                match std::fs::read(&path) {
                    Ok(mut secret) => {
                        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            secret.pop();
                        }
                        if secret.len() < MIN_SECRET_BYTES {
                            errors.push(source.error_at(file, key("secret_file"), format!("{}: the secret is {} bytes; at least {MIN_SECRET_BYTES} are required", path.display(), secret.len())));
                            continue;
                        }
                        keys = Some(Arc::new(KeySet::secret(&secret, j.kid.as_ref().map(|k| k.get_ref().as_str()))));
                    }
                    Err(e) => {
                        errors.push(source.error_at(file, key("secret_file"), format!("cannot read {}: {e}", path.display())));
                        continue;
                    }
                }
                Origin::Static
            } else {
                continue; // reported by validate
            };
            let issuer = Arc::new(Issuer {
                id: NEXT_ISSUER.fetch_add(1, Ordering::Relaxed),
                name: j.issuer.get_ref().clone(),
                fingerprint,
                origin,
                refresh: Duration::from_millis(j.refresh_ms.max(1)),
                min_interval: Duration::from_millis(j.min_refetch_interval_ms.max(1)),
                timeout: Duration::from_millis(j.timeout_ms.max(1)),
                max_stale: Duration::from_millis(j.max_stale_ms.max(1)),
                state: Mutex::new(State { keys, ..State::default() }),
                done: tokio::sync::watch::Sender::new(0),
            });
            if matches!(issuer.origin, Origin::Url { .. }) {
                fresh.push(issuer.clone());
            }
            issuers.insert(issuer.name.clone(), issuer);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            for issuer in &fresh {
                spawn_refresher(issuer);
            }
        }
        let sources = sources_digest(&issuers);
        Ok(JwksCache { issuers, sources })
    }

    /// The key set for `request`: `"<issuer>"`, or `"<issuer>#kid=<kid>"`
    /// to say which key the token names (see the module docs).
    pub async fn get(&self, request: &str) -> Result<String, JwksLookupError> {
        let (name, kid) = match request.split_once(KID_HINT) {
            Some((name, kid)) => (name, Some(kid).filter(|k| valid_kid(k))),
            None => (request, None),
        };
        let Some(issuer) = self.issuers.get(name) else {
            return Err(JwksLookupError::UnknownIssuer(name.to_string()));
        };
        issuer.get(kid).await
    }

    /// Changes whenever the keys a policy could get from this cache change:
    /// another set of sources (a reload), or a fetch that brought other keys.
    pub fn key_generation(&self) -> [u64; 2] {
        [self.sources, FETCHED_CHANGES.load(Ordering::Acquire)]
    }

    /// Where each issuer's keys come from, for the edge plan (`crate::edge`):
    /// a URL (the edge fetches it itself), or the set this loader made from
    /// `file` / `secret_file` (which may hold a shared secret).
    pub fn edge_sources(&self) -> BTreeMap<String, EdgeKeys> {
        self.issuers
            .iter()
            .map(|(name, issuer)| {
                let keys = match &issuer.origin {
                    Origin::Url { uri, .. } => EdgeKeys::Url(uri.to_string()),
                    Origin::Static => EdgeKeys::Jwks(issuer.state.lock().unwrap().keys.as_ref().map(|k| k.full.to_string()).unwrap_or_default()),
                };
                (name.clone(), keys)
            })
            .collect()
    }

    /// Fetches started so far for `issuer` (tests, metrics).
    pub fn fetches(&self, issuer: &str) -> u64 {
        self.issuers.get(issuer).map_or(0, |i| i.state.lock().unwrap().fetches)
    }
}

/// See [`JwksCache::sources`].
fn sources_digest(issuers: &BTreeMap<String, Arc<Issuer>>) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, issuer) in issuers {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        match (&issuer.origin, &issuer.state.lock().unwrap().keys) {
            (Origin::Static, Some(keys)) => {
                h.update(b"s");
                h.update((keys.full.len() as u64).to_le_bytes());
                h.update(keys.full.as_bytes());
            }
            _ => {
                h.update(b"u");
                h.update(issuer.id.to_le_bytes());
            }
        }
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

impl Issuer {
    fn usable(&self, keys: &Option<Arc<KeySet>>) -> Option<Arc<KeySet>> {
        keys.clone().filter(|k| matches!(self.origin, Origin::Static) || k.fetched_at.elapsed() <= self.max_stale)
    }

    async fn get(self: &Arc<Self>, kid: Option<&str>) -> Result<String, JwksLookupError> {
        let mut waiter = {
            let mut st = self.state.lock().unwrap();
            let keys = self.usable(&st.keys);
            if let Some(set) = &keys
                && kid.is_none_or(|k| set.by_kid.contains_key(k))
            {
                return Ok(set.answer(kid));
            }
            if matches!(self.origin, Origin::Static) {
                return keys.map(|s| s.answer(kid)).ok_or_else(|| JwksLookupError::Unavailable(self.name.clone()));
            }
            // An unknown kid, or no usable set: join the fetch in flight, or
            // start one unless one started less than min_refetch_interval ago.
            if !st.fetching {
                if st.last_attempt.is_some_and(|t| t.elapsed() < self.min_interval) {
                    return self.answer_now(&st, kid);
                }
                if let Some(kid) = kid {
                    tracing::info!(issuer = %self.name, kid, "unknown key id: refetching the JWKS");
                }
                self.start_fetch(&mut st);
            }
            self.done.subscribe()
        };
        // The fetch has its own timeout; this one only guards against a lost wake-up.
        let _ = tokio::time::timeout(self.timeout + Duration::from_millis(100), waiter.changed()).await;
        let st = self.state.lock().unwrap();
        self.answer_now(&st, kid)
    }

    fn answer_now(&self, st: &State, kid: Option<&str>) -> Result<String, JwksLookupError> {
        match self.usable(&st.keys) {
            Some(set) => Ok(set.answer(kid)),
            None => Err(JwksLookupError::Unavailable(match &st.last_error {
                Some(e) => format!("{}: {e}", self.name),
                None => format!("{}: no key set fetched yet", self.name),
            })),
        }
    }

    /// Start a fetch in a task of its own (so a request that gives up
    /// waiting does not cancel it). Call with the state locked.
    fn start_fetch(self: &Arc<Self>, st: &mut State) {
        st.fetching = true;
        st.last_attempt = Some(Instant::now());
        st.fetches += 1;
        let this = self.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(this.timeout, this.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", this.timeout.as_millis())),
            };
            {
                let mut st = this.state.lock().unwrap();
                st.fetching = false;
                match result {
                    Ok(set) => {
                        tracing::debug!(issuer = %this.name, keys = set.count, "JWKS fetched");
                        if st.last_error.is_some() {
                            tracing::info!(issuer = %this.name, keys = set.count, "JWKS fetched again after failures");
                        }
                        let changed = st.keys.as_ref().is_none_or(|old| old.full != set.full);
                        st.keys = Some(Arc::new(set));
                        if changed {
                            // After the store, under the lock: whoever sees
                            // the new generation gets the new keys.
                            FETCHED_CHANGES.fetch_add(1, Ordering::AcqRel);
                        }
                        st.last_error = None;
                        st.failures = 0;
                    }
                    Err(e) => {
                        match this.usable(&st.keys) {
                            Some(set) => tracing::warn!(
                                issuer = %this.name,
                                error = %e,
                                age_s = set.fetched_at.elapsed().as_secs(),
                                "JWKS fetch failed; serving the last good key set"
                            ),
                            None => tracing::error!(issuer = %this.name, error = %e, "JWKS fetch failed and no key set is cached: this issuer's tokens are refused"),
                        }
                        st.last_error = Some(e);
                        st.failures = st.failures.saturating_add(1);
                    }
                }
            }
            this.done.send_modify(|n| *n += 1);
        });
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let Origin::Url { uri, client } = &self.origin else { return Err("not a URL source".into()) };
        let req = http::Request::get(uri.clone())
            .header(http::header::USER_AGENT, "portcullis-jwks")
            .header(http::header::ACCEPT, "application/jwk-set+json, application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = client.request(req).await.map_err(|e| {
            use std::error::Error;
            match e.source() {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let max_age = cache_max_age(resp.headers());
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
        KeySet::parse(&body, max_age)
    }

    /// When the background refresher fetches next.
    fn next_delay(&self) -> Duration {
        let st = self.state.lock().unwrap();
        if st.last_error.is_some() {
            let backoff = self.min_interval.saturating_mul(1u32 << st.failures.saturating_sub(1).min(16));
            return backoff.min(self.refresh);
        }
        match st.keys.as_ref().and_then(|k| k.max_age) {
            Some(age) => age.clamp(self.min_interval, self.refresh),
            None => self.refresh,
        }
    }
}

/// `Cache-Control: max-age=N` of a JWKS response (`no-store`/`no-cache`: 0).
fn cache_max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut age = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        for directive in v.to_str().ok()?.split(',') {
            let d = directive.trim();
            if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
                age = Some(Duration::ZERO);
            } else if let Some(n) = d.strip_prefix("max-age=").or_else(|| d.strip_prefix("s-maxage=")) {
                age = n.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs).or(age);
            }
        }
    }
    age
}

/// Fetch now, then keep the set fresh until the issuer is dropped.
fn spawn_refresher(issuer: &Arc<Issuer>) {
    let weak: Weak<Issuer> = Arc::downgrade(issuer);
    tokio::spawn(async move {
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            let Some(this) = weak.upgrade() else { return };
            let mut waiter = {
                let mut st = this.state.lock().unwrap();
                if !st.fetching {
                    this.start_fetch(&mut st);
                }
                this.done.subscribe()
            };
            let _ = tokio::time::timeout(this.timeout + Duration::from_millis(100), waiter.changed()).await;
            delay = this.next_delay();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A loopback JWKS server whose document and availability tests change.
    struct Server {
        addr: std::net::SocketAddr,
        doc: Arc<Mutex<String>>,
        up: Arc<AtomicBool>,
        hits: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        async fn start(doc: &str, delay: Duration) -> Server {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (doc, up, hits) = (Arc::new(Mutex::new(doc.to_string())), Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
            let (d, u, h) = (doc.clone(), up.clone(), hits.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (d, u, h) = (d.clone(), u.clone(), h.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            let (d, u, h) = (d.clone(), u.clone(), h.clone());
                            async move {
                                h.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(delay).await;
                                let (status, body) = if u.load(Ordering::SeqCst) { (200, d.lock().unwrap().clone()) } else { (503, String::new()) };
                                let mut resp = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
                                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                    });
                }
            });
            Server { addr, doc, up, hits, task }
        }
    }

    fn set(kids: &[&str]) -> String {
        let keys: Vec<Value> = kids.iter().map(|k| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": k})).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    fn source(dir: &std::path::Path, text: &str) -> Source {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        Source::read(&path).unwrap()
    }

    fn parse(text: &str) -> (tempfile::TempDir, Source, Config) {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), text);
        let cfg = crate::config::parse(&src).unwrap();
        (dir, src, cfg)
    }

    fn url_entry(server: &Server, min_refetch_ms: u64) -> String {
        format!(
            "[[jwks]]\nissuer = \"https://idp.test\"\nurl = \"http://{}/certs\"\nrefresh_ms = 600000\nmin_refetch_interval_ms = {min_refetch_ms}\ntimeout_ms = 2000\n",
            server.addr
        )
    }

    async fn cache_for(text: &str) -> (tempfile::TempDir, JwksCache) {
        let (dir, src, cfg) = parse(text);
        let mut errors = Vec::new();
        validate(&src, &cfg, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        (dir, JwksCache::load(&src, &cfg.jwks, None).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_at_start_and_answers_with_the_kids_keys() {
        let server = Server::start(&set(&["a", "b"]), Duration::ZERO).await;
        let (_d, cache) = cache_for(&url_entry(&server, 60_000)).await;
        let all: Value = serde_json::from_str(&cache.get("https://idp.test").await.unwrap()).unwrap();
        assert_eq!(all["keys"].as_array().unwrap().len(), 2);
        let one: Value = serde_json::from_str(&cache.get("https://idp.test#kid=b").await.unwrap()).unwrap();
        assert_eq!(one["keys"].as_array().unwrap().len(), 1);
        assert_eq!(one["keys"][0]["kid"], "b");
        assert_eq!(cache.get("https://other.test").await, Err(JwksLookupError::UnknownIssuer("https://other.test".into())));
        assert_eq!(server.hits.load(Ordering::SeqCst), 1, "one fetch serves every lookup");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_kid_refetches_once_for_a_thousand_concurrent_lookups() {
        let server = Server::start(&set(&["old"]), Duration::from_millis(50)).await;
        let (_d, cache) = cache_for(&url_entry(&server, 100)).await;
        let cache = Arc::new(cache);
        cache.get("https://idp.test#kid=old").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await; // past min_refetch_interval
        *server.doc.lock().unwrap() = set(&["old", "new"]);
        let before = server.hits.load(Ordering::SeqCst);
        let lookups: Vec<_> = (0..1000)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get("https://idp.test#kid=new").await })
            })
            .collect();
        for l in lookups {
            let answer: Value = serde_json::from_str(&l.await.unwrap().unwrap()).unwrap();
            assert_eq!(answer["keys"][0]["kid"], "new");
        }
        assert_eq!(server.hits.load(Ordering::SeqCst) - before, 1, "single flight");
        // A kid that is nowhere: at most one fetch per min_refetch_interval.
        for _ in 0..50 {
            let _ = cache.get("https://idp.test#kid=nowhere").await.unwrap();
        }
        assert!(server.hits.load(Ordering::SeqCst) - before <= 2, "rate-limited: {}", server.hits.load(Ordering::SeqCst));
        // A kid the cache refuses to act on is answered from the set, without a fetch.
        let hits = server.hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        cache.get("https://idp.test#kid=../../etc/passwd").await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), hits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_good_set_survives_a_down_server_for_max_stale() {
        let server = Server::start(&set(&["k"]), Duration::ZERO).await;
        let text = format!(
            "[[jwks]]\nissuer = \"https://idp.test\"\nurl = \"http://{}/certs\"\nrefresh_ms = 100\nmin_refetch_interval_ms = 50\ntimeout_ms = 500\nmax_stale_ms = 600\n",
            server.addr
        );
        let (_d, cache) = cache_for(&text).await;
        assert!(cache.get("https://idp.test#kid=k").await.is_ok());
        server.up.store(false, Ordering::SeqCst);
        let hits = server.hits.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(server.hits.load(Ordering::SeqCst) > hits, "the refresher kept trying");
        assert!(cache.get("https://idp.test#kid=k").await.is_ok(), "last good set served");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(matches!(cache.get("https://idp.test#kid=k").await, Err(JwksLookupError::Unavailable(e)) if e.contains("HTTP 503")));
        server.up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(cache.get("https://idp.test#kid=k").await.is_ok(), "recovered");
        drop(server);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_and_secret_sources_are_read_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), set(&["f"])).unwrap();
        std::fs::write(dir.path().join("hs.key"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::write(dir.path().join("short.key"), "tooshort").unwrap();
        let ok = "[[jwks]]\nissuer = \"a\"\nfile = \"jwks.json\"\n[[jwks]]\nissuer = \"b\"\nsecret_file = \"hs.key\"\nkid = \"hs-1\"\n";
        let src = source(dir.path(), ok);
        let cache = JwksCache::load(&src, &crate::config::parse(&src).unwrap().jwks, None).unwrap();
        assert!(cache.get("a#kid=f").await.unwrap().contains("\"f\""));
        let b: Value = serde_json::from_str(&cache.get("b").await.unwrap()).unwrap();
        assert_eq!(b["keys"][0]["kty"], "oct");
        assert_eq!(b["keys"][0]["kid"], "hs-1");
        assert_eq!(b["keys"][0]["k"], "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "trailing newline dropped");
        assert!(format!("{cache:?}").contains("\"b\"") && !format!("{cache:?}").contains("MDEy"), "Debug never shows keys");

        let bad = "[[jwks]]\nissuer = \"a\"\nfile = \"missing.json\"\n[[jwks]]\nissuer = \"b\"\nsecret_file = \"short.key\"\n";
        let src = source(dir.path(), bad);
        let errors = JwksCache::load(&src, &crate::config::parse(&src).unwrap().jwks, None).unwrap_err().to_string();
        assert!(errors.contains("gateway.toml:3:8: jwks[0].file: cannot read"), "{errors}");
        assert!(errors.contains("gateway.toml:6:15: jwks[1].secret_file:") && errors.contains("8 bytes; at least 32"), "{errors}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_keeps_unchanged_url_issuers_and_their_keys() {
        let server = Server::start(&set(&["a"]), Duration::ZERO).await;
        let text = url_entry(&server, 60_000);
        let (_dir, src, cfg) = parse(&text);
        let first = JwksCache::load(&src, &cfg.jwks, None).unwrap();
        first.get("https://idp.test#kid=a").await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        // Same entry: the issuer (keys, refresher) carries over, no fetch.
        let second = JwksCache::load(&src, &cfg.jwks, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.issuers["https://idp.test"], &second.issuers["https://idp.test"]));
        drop(first);
        second.get("https://idp.test#kid=a").await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        // A changed entry starts afresh.
        let (_dir2, src2, cfg2) = parse(&text.replace("timeout_ms = 2000", "timeout_ms = 3000"));
        let third = JwksCache::load(&src2, &cfg2.jwks, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(&second.issuers["https://idp.test"], &third.issuers["https://idp.test"]));
        third.get("https://idp.test#kid=a").await.unwrap();
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_key_generation_moves_with_the_keys() {
        let server = Server::start(&set(&["a"]), Duration::ZERO).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), set(&["f"])).unwrap();
        let text = format!("{}[[jwks]]\nissuer = \"files\"\nfile = \"jwks.json\"\n", url_entry(&server, 100));
        let src = source(dir.path(), &text);
        let cfg = crate::config::parse(&src).unwrap();
        let first = JwksCache::load(&src, &cfg.jwks, None).unwrap();
        first.get("https://idp.test#kid=a").await.unwrap();
        let g1 = first.key_generation();
        // The same sources, reloaded: the same generation.
        let second = JwksCache::load(&src, &cfg.jwks, Some(&first)).unwrap();
        assert_eq!(second.key_generation(), g1);
        // A key file with other keys: another one.
        std::fs::write(dir.path().join("jwks.json"), set(&["f", "g"])).unwrap();
        let third = JwksCache::load(&src, &cfg.jwks, Some(&second)).unwrap();
        assert_ne!(third.key_generation()[0], g1[0]);
        // An entry removed: another one.
        let src_one = source(dir.path(), &url_entry(&server, 100));
        let fourth = JwksCache::load(&src_one, &crate::config::parse(&src_one).unwrap().jwks, Some(&third)).unwrap();
        assert_ne!(fourth.key_generation()[0], third.key_generation()[0]);
        // A fetch that brings the same keys leaves the sources alone; one
        // that brings other keys moves the fetch count (process-wide: other
        // tests move it too, so only its growth is checked).
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = fourth.key_generation();
        fourth.get("https://idp.test#kid=unknown").await.unwrap(); // refetch, same set
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        assert_eq!(fourth.key_generation()[0], before[0]);
        *server.doc.lock().unwrap() = set(&["b"]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        fourth.get("https://idp.test#kid=b").await.unwrap();
        assert!(fourth.key_generation()[1] > before[1], "a changed set moves the generation");
    }

    #[test]
    fn config_errors_name_the_key() {
        let text = r#"
[[jwks]]
issuer = "https://idp.test"
url = "https://idp.test/certs"
[[jwks]]
issuer = "https://idp.test"
url = "http://idp/certs"
file = "x.json"
refresh_ms = 1000
min_refetch_interval_ms = 5000
[[jwks]]
issuer = "a#b"
secret_file = "k"
kid = "../k"
"#;
        let (_d, src, cfg) = parse(text);
        let mut errors = Vec::new();
        validate(&src, &cfg, &mut errors);
        let text = ConfigErrors(errors).to_string();
        for want in [
            "gateway.toml:4:7: jwks[0].url: https is not supported",
            "gateway.toml:6:10: jwks[1].issuer: issuer \"https://idp.test\" has two [[jwks]] entries",
            "gateway.toml:6:10: jwks[1]: exactly one of url, file or secret_file",
            "jwks[1].min_refetch_interval_ms: must not exceed refresh_ms",
            "gateway.toml:12:10: jwks[2].issuer: a non-empty issuer identifier without '#'",
            "gateway.toml:14:7: jwks[2].kid: letters, digits",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn cache_control_max_age() {
        let mut h = http::HeaderMap::new();
        assert_eq!(cache_max_age(&h), None);
        h.insert(http::header::CACHE_CONTROL, "public, max-age=300, must-revalidate".parse().unwrap());
        assert_eq!(cache_max_age(&h), Some(Duration::from_secs(300)));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(cache_max_age(&h), Some(Duration::ZERO));
    }
}
