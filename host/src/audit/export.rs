//! Shipping sealed segments to S3-compatible storage (Hetzner Object Storage,
//! MinIO, AWS S3), each request signed with SigV4 (`aws-sigv4`).
//!
//! For each sealed segment without a receipt in `DIR/exported/`:
//! `HEAD` the object (a previous run may have uploaded it and crashed before
//! writing the receipt: then it only needs the receipt), else `PUT` it with
//! its SHA-256 signed as `x-amz-content-sha256` (the store recomputes and
//! refuses a body that does not match) and kept as `x-amz-meta-sha256`, then
//! `HEAD` again and compare size and SHA-256 before writing the receipt. An
//! object that exists with **other** content is never overwritten: the export
//! stops and says so. Keys (`keys/<id>.pub`) and every checkpoint
//! (`checkpoints/<tree_size>.json`) are uploaded the same way. Nothing is
//! deleted locally. Connection errors, timeouts, 5xx, 408 and 429 are retried
//! with exponential backoff; other answers (403 SignatureDoesNotMatch, 404
//! NoSuchBucket) stop the run at once with the store's code and message.

use super::config::ExportConfig;
use super::format::{self, Checkpoint};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Why an export stopped.
#[derive(Debug)]
pub enum ExportError {
    /// The store answered with a refusal (not retried).
    Refused {
        /// `PUT s3://bucket/key`.
        what: String,
        /// HTTP status.
        status: u16,
        /// S3 error code (`SignatureDoesNotMatch`, `NoSuchBucket`, …).
        code: String,
        /// The store's message.
        message: String,
    },
    /// The store could not be reached (after every retry).
    Unreachable {
        /// What was being done.
        what: String,
        /// The last error.
        detail: String,
    },
    /// The stored object is not what was sent, or exists with other content.
    Mismatch(String),
    /// A local file could not be read or written.
    Local(String),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Refused { what, status, code, message } => {
                write!(f, "export refused by the store: {what} → HTTP {status} {code}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                if *status == 403 {
                    write!(f, " (check audit.export.access_key_file and secret_key_file)")?;
                }
                Ok(())
            }
            ExportError::Unreachable { what, detail } => write!(f, "export failed: {what}: store unreachable after retries: {detail}"),
            ExportError::Mismatch(m) => write!(f, "export stopped: {m}"),
            ExportError::Local(m) => write!(f, "export failed: {m}"),
        }
    }
}

impl std::error::Error for ExportError {}

/// Read a credential file (trimmed; must not be empty).
pub fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() { Err(format!("{} is empty", path.display())) } else { Ok(t.to_string()) }
}

/// A minimal S3 client: path-style `PUT`, `GET`, `HEAD` of single objects.
pub struct S3 {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: String,
    bucket: String,
    region: String,
    access_key: String,
    secret_key: String,
    timeout: Duration,
    retries: u32,
}

/// A response read whole.
pub struct S3Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl S3 {
    /// A client for `endpoint` (`http://host:port`) and `bucket`.
    pub fn new(endpoint: &str, bucket: &str, region: &str, access_key: &str, secret_key: &str, timeout: Duration, retries: u32) -> S3 {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        S3 {
            client: Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            region: region.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            timeout,
            retries,
        }
    }

    /// From `[audit.export]`, resolving files against `base`.
    pub fn from_config(cfg: &ExportConfig, resolve: impl Fn(&str) -> PathBuf) -> Result<S3, String> {
        let access = read_secret(&resolve(cfg.access_key_file.get_ref()))?;
        let secret = read_secret(&resolve(cfg.secret_key_file.get_ref()))?;
        Ok(S3::new(cfg.endpoint.get_ref(), &cfg.bucket, &cfg.region, &access, &secret, Duration::from_millis(cfg.timeout_ms.max(1)), cfg.retries))
    }

    fn url(&self, key: &str) -> String {
        let encoded: String = key
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        format!("{}/{}/{}", self.endpoint, self.bucket, encoded)
    }

    /// `s3://bucket/key`, for messages.
    pub fn name(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn signed(&self, method: &Method, key: &str, body: &Bytes, extra: &[(&str, String)]) -> Result<Request<Full<Bytes>>, String> {
        let url = self.url(key);
        let sha = hex::encode(Sha256::digest(body));
        let mut headers: Vec<(String, String)> = vec![("x-amz-content-sha256".into(), sha.clone())];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = Credentials::new(&self.access_key, &self.secret_key, None, None, "portcullis-audit-export").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let signable = SignableRequest::new(method.as_str(), url.as_str(), headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), SignableBody::Precomputed(sha))
            .map_err(|e| format!("cannot sign {url}: {e}"))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| format!("cannot sign {url}: {e}"))?.into_parts();
        let mut req = Request::builder().method(method.clone()).uri(&url);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut req = req.body(Full::new(body.clone())).map_err(|e| format!("bad request for {url}: {e}"))?;
        instructions.apply_to_request_http1x(&mut req);
        Ok(req)
    }

    /// Send with retries (connection errors, timeouts, 5xx, 408, 429).
    pub async fn send(&self, method: Method, key: &str, body: Bytes, extra: &[(&str, String)]) -> Result<S3Answer, ExportError> {
        let what = format!("{method} {}", self.name(key));
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                let backoff = Duration::from_millis(200u64 << (attempt - 1).min(5)).min(Duration::from_secs(5));
                tracing::info!(target: "audit", "{what}: retry {attempt}/{} in {} ms ({last})", self.retries, backoff.as_millis());
                tokio::time::sleep(backoff).await;
            }
            // Signed per attempt: the signature carries the time.
            let req = self.signed(&method, key, &body, extra).map_err(ExportError::Local)?;
            let answer = tokio::time::timeout(self.timeout, async {
                let resp = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                Ok::<_, String>(S3Answer { status: parts.status, headers: parts.headers, body })
            })
            .await;
            match answer {
                Err(_) => last = format!("no answer within {} ms", self.timeout.as_millis()),
                Ok(Err(e)) => last = e,
                Ok(Ok(a)) if a.status.is_server_error() || a.status == StatusCode::TOO_MANY_REQUESTS || a.status == StatusCode::REQUEST_TIMEOUT => {
                    last = format!("HTTP {}", a.status.as_u16());
                }
                Ok(Ok(a)) if a.status.is_success() || (method == Method::HEAD || method == Method::GET) && a.status == StatusCode::NOT_FOUND => return Ok(a),
                Ok(Ok(a)) => {
                    let text = String::from_utf8_lossy(&a.body);
                    let code = xml_field(&text, "Code").unwrap_or_else(|| a.status.canonical_reason().unwrap_or("error").to_string());
                    let message = xml_field(&text, "Message").unwrap_or_default();
                    return Err(ExportError::Refused { what, status: a.status.as_u16(), code, message });
                }
            }
        }
        Err(ExportError::Unreachable { what, detail: last })
    }

    /// `GET` an object; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ExportError> {
        let a = self.send(Method::GET, key, Bytes::new(), &[]).await?;
        Ok((a.status != StatusCode::NOT_FOUND).then_some(a.body))
    }

    /// `HEAD` an object: its size and `x-amz-meta-sha256`, `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<(u64, Option<String>)>, ExportError> {
        let a = match self.send(Method::HEAD, key, Bytes::new(), &[]).await {
            Ok(a) => a,
            // A refused HEAD has no body to say why: ask again with a GET of one byte.
            Err(ExportError::Refused { what, status, code, message }) => {
                let (code, message) = match self.send(Method::GET, key, Bytes::new(), &[("range", "bytes=0-0".to_string())]).await {
                    Err(ExportError::Refused { code, message, .. }) => (code, message),
                    _ => (code, message),
                };
                return Err(ExportError::Refused { what, status, code, message });
            }
            Err(e) => return Err(e),
        };
        if a.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let len = a.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let sha = a.headers.get("x-amz-meta-sha256").and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Some((len, sha)))
    }

    /// Upload `body` as `key` unless an identical object is there; confirm
    /// size and SHA-256 afterwards. True when it was uploaded now.
    pub async fn put_once(&self, key: &str, body: Bytes, object_lock_days: Option<u32>) -> Result<bool, ExportError> {
        let sha = hex::encode(Sha256::digest(&body));
        match self.head(key).await? {
            Some((len, Some(s))) if len == body.len() as u64 && s == sha => return Ok(false),
            Some((len, None)) if len <= body.len() as u64 => {
                // No checksum metadata: a store that lost it, or an upload cut
                // short. Same bytes: done; a prefix of ours: a torn upload, redo it.
                let stored = self.get(key).await?.unwrap_or_default();
                if stored == body {
                    return Ok(false);
                }
                if !body.starts_with(&stored) {
                    return Err(ExportError::Mismatch(format!("{} already exists with other content ({len} bytes); refusing to overwrite evidence", self.name(key))));
                }
            }
            Some((len, s)) => {
                return Err(ExportError::Mismatch(format!(
                    "{} already exists with other content ({len} bytes, sha256 {}; ours: {} bytes, {sha}); refusing to overwrite evidence",
                    self.name(key),
                    s.as_deref().unwrap_or("unknown"),
                    body.len()
                )));
            }
            None => {}
        }
        let mut extra = vec![("x-amz-meta-sha256", sha.clone()), ("content-type", "application/x-ndjson".to_string())];
        if let Some(days) = object_lock_days {
            let until = SystemTime::now() + Duration::from_secs(u64::from(days) * 86_400);
            extra.push(("x-amz-object-lock-mode", "COMPLIANCE".into()));
            extra.push(("x-amz-object-lock-retain-until-date", super::rfc3339(until)));
        }
        self.send(Method::PUT, key, body.clone(), &extra).await?;
        match self.head(key).await? {
            Some((len, Some(s))) if len == body.len() as u64 && s == sha => Ok(true),
            other => Err(ExportError::Mismatch(format!("{} was accepted but reads back as {other:?}, not {} bytes with sha256 {sha}", self.name(key), body.len()))),
        }
    }
}

fn xml_field(text: &str, tag: &str) -> Option<String> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].to_string())
}

/// A segment's export receipt (`DIR/exported/<segment>.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Receipt {
    /// Segment file name.
    pub segment: String,
    /// `s3://bucket/key`.
    pub object: String,
    /// Hex SHA-256 of the segment.
    pub sha256: String,
    /// Size.
    pub bytes: u64,
    /// When the store confirmed it.
    pub exported_at: String,
}

/// What one export run did.
#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    /// Segments uploaded now.
    pub uploaded: Vec<String>,
    /// Segments found in the store from an earlier, interrupted run (receipt written now).
    pub found: Vec<String>,
    /// Segments with a receipt already.
    pub already: usize,
    /// Segments still open (not exported).
    pub open: usize,
    /// Checkpoints uploaded now.
    pub checkpoints: usize,
}

/// Export every sealed segment of `dir` (and keys and checkpoints) once.
pub async fn export_once(dir: &Path, s3: &S3, prefix: &str, object_lock_days: Option<u32>) -> Result<ExportReport, ExportError> {
    let local = |e: std::io::Error, p: &Path| ExportError::Local(format!("{}: {e}", p.display()));
    let receipts = dir.join("exported");
    std::fs::create_dir_all(&receipts).map_err(|e| local(e, &receipts))?;
    let mut report = ExportReport::default();

    // Public keys first: an exported segment is only evidence with its key.
    if let Ok(rd) = std::fs::read_dir(dir.join("keys")) {
        let mut keys: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "pub")).collect();
        keys.sort();
        for k in keys {
            let body = std::fs::read(&k).map_err(|e| local(e, &k))?;
            let name = k.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            s3.put_once(&format!("{prefix}keys/{name}"), body.into(), object_lock_days).await?;
        }
    }

    let segments = format::list_segments(dir).map_err(|e| local(e, dir))?;
    for (_, path) in segments {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let receipt = receipts.join(format!("{name}.json"));
        if receipt.exists() {
            report.already += 1;
            continue;
        }
        if !format::is_sealed(&path).map_err(|e| local(e, &path))? {
            report.open += 1;
            continue;
        }
        let body = Bytes::from(std::fs::read(&path).map_err(|e| local(e, &path))?);
        let sha = hex::encode(Sha256::digest(&body));
        let key = format!("{prefix}{name}");
        // Checkpoints in the segment, as their own small objects (what a witness reads).
        for line in body.split(|&b| b == b'\n') {
            if line.windows(20).any(|w| w == b"\"event\":\"checkpoint\"")
                && let Ok(cp) = serde_json::from_slice::<Checkpoint>(line)
            {
                let json = serde_json::to_vec_pretty(&cp).expect("json");
                if s3.put_once(&format!("{prefix}checkpoints/{:020}.json", cp.tree_size), json.into(), object_lock_days).await? {
                    report.checkpoints += 1;
                }
            }
        }
        let uploaded = s3.put_once(&key, body.clone(), object_lock_days).await?;
        let r = Receipt { segment: name.clone(), object: s3.name(&key), sha256: sha, bytes: body.len() as u64, exported_at: super::rfc3339(SystemTime::now()) };
        let tmp = receipts.join(format!("{name}.json.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&r).expect("json")).map_err(|e| local(e, &tmp))?;
        std::fs::rename(&tmp, &receipt).map_err(|e| local(e, &receipt))?;
        if uploaded {
            tracing::info!(target: "audit", segment = %name, object = %r.object, "audit segment exported");
            report.uploaded.push(name);
        } else {
            report.found.push(name);
        }
    }
    Ok(report)
}

/// Run [`export_once`] every `interval_ms` in the background (while serving).
pub fn spawn_background(dir: PathBuf, s3: S3, prefix: String, object_lock_days: Option<u32>, interval: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match export_once(&dir, &s3, &prefix, object_lock_days).await {
                Ok(r) if !r.uploaded.is_empty() || !r.found.is_empty() => {
                    tracing::info!(target: "audit", uploaded = r.uploaded.len(), found = r.found.len(), "audit export");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(target: "audit", "{e}; segments stay local and are retried at the next run"),
            }
        }
    });
}
