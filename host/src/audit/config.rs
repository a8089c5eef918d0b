//! `[audit]` and `[audit.export]`, and each route's `audit` durability.
//!
//! ```toml
//! [audit]
//! dir = "audit"                          # segments, checkpoints, keys (relative to this file)
//! mode = "async"                         # default durability of routes: "async" | "durable"
//! segment_max_bytes = "64MiB"            # rotate (seal with a checkpoint) at this size...
//! segment_max_age_ms = 3600000           # ...or this long after the segment was opened
//! checkpoint_interval_ms = 30000         # a signed checkpoint this often while the log grows
//! async_flush_ms = 1000                  # async records are fsynced within this bound
//! signing_key_file = "keys/audit.key"    # Ed25519, PKCS#8 PEM (openssl genpkey -algorithm ed25519)
//!
//! [audit.collector]                      # edge nodes' records (see `collector`); needs [admin]
//! token_file = "keys/collector.token"    # or token_env = "VAR"; at least 32 bytes
//!
//! [audit.export]                         # ship sealed segments to S3-compatible storage
//! endpoint = "http://10.0.0.9:9000"      # path-style: <endpoint>/<bucket>/<prefix><segment>
//! bucket = "procare-audit"
//! region = "fsn1"
//! access_key_file = "keys/s3.access"
//! secret_key_file = "keys/s3.secret"
//! prefix = "node-1/"
//! interval_ms = 300000                   # background export while serving; 0 = by hand only
//! ```

use crate::config::{ByteSize, Config, ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

/// When a request's record must be on disk.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Written at completion, fsynced within `async_flush_ms`.
    #[default]
    Async,
    /// A decision record is fsynced before the response head is released.
    Durable,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the log.
    pub dir: Spanned<String>,
    /// Default durability of routes.
    #[serde(default)]
    pub mode: Durability,
    /// Rotate at this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: ByteSize,
    /// Rotate a segment this long after it was opened.
    #[serde(default = "default_segment_age")]
    pub segment_max_age_ms: u64,
    /// Checkpoint this often while the log grows.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    /// Bound on the time an async record waits for its fsync.
    #[serde(default = "default_async_flush")]
    pub async_flush_ms: u64,
    /// Ed25519 key that signs checkpoints (a file; never the key itself here).
    pub signing_key_file: Spanned<String>,
    /// Shipping sealed segments to object storage.
    #[serde(default)]
    pub export: Option<ExportConfig>,
    /// Records sent by edge nodes (`POST /audit/v1/records` on the admin listener).
    #[serde(default)]
    pub collector: Option<Spanned<super::collector::CollectorConfig>>,
}

fn default_segment_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_segment_age() -> u64 {
    3_600_000
}
fn default_checkpoint_interval() -> u64 {
    30_000
}
fn default_async_flush() -> u64 {
    1_000
}

/// `[audit.export]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// `http://host:port` of the S3-compatible service (path-style requests).
    pub endpoint: Spanned<String>,
    /// Bucket (must exist).
    pub bucket: String,
    /// SigV4 region.
    #[serde(default = "default_region")]
    pub region: String,
    /// File holding the access key id.
    pub access_key_file: Spanned<String>,
    /// File holding the secret key.
    pub secret_key_file: Spanned<String>,
    /// Prefix of object keys (e.g. `node-1/`).
    #[serde(default)]
    pub prefix: String,
    /// Background export period while serving; 0 = only `portcullis audit export`.
    #[serde(default = "default_export_interval")]
    pub interval_ms: u64,
    /// Retries of a failed request (connection errors, 5xx, 429), with exponential backoff.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Budget of one request.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// S3 Object Lock: upload in COMPLIANCE mode retained this many days (the bucket must have Object Lock enabled).
    #[serde(default)]
    pub object_lock_days: Option<u32>,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_export_interval() -> u64 {
    300_000
}
fn default_retries() -> u32 {
    5
}
fn default_timeout() -> u64 {
    30_000
}

/// Checks of `[audit]` and of routes' `audit` (collected into `errors`).
pub fn validate(source: &Source, config: &Config, errors: &mut Vec<ConfigError>) {
    let audit = config.audit.as_ref();
    if let Some(a) = audit {
        if a.dir.get_ref().trim().is_empty() {
            errors.push(source.error_at(&a.dir, "audit.dir", "empty directory"));
        }
        if config.gateway.audit_log.is_some() {
            errors.push(source.error_at(&a.dir, "audit.dir", "set either gateway.audit_log (a plain file) or [audit] (the evidence log), not both"));
        }
        for (key, v) in [("segment_max_age_ms", a.segment_max_age_ms), ("checkpoint_interval_ms", a.checkpoint_interval_ms), ("async_flush_ms", a.async_flush_ms)] {
            if v == 0 {
                errors.push(source.error_at(&a.dir, format!("audit.{key}"), "must be positive"));
            }
        }
        if a.segment_max_bytes.0 < 1024 {
            errors.push(source.error_at(&a.dir, "audit.segment_max_bytes", "must be at least 1KiB"));
        }
        if let Err(why) = super::format::read_signing_key(&source.resolve(a.signing_key_file.get_ref())) {
            errors.push(source.error_at(&a.signing_key_file, "audit.signing_key_file", why));
        }
        if let Some(e) = &a.export {
            let endpoint = e.endpoint.get_ref();
            if endpoint.starts_with("https://") {
                errors.push(source.error_at(&e.endpoint, "audit.export.endpoint", "https is not supported by this build (no TLS client); use http on a private network"));
            } else if !endpoint.starts_with("http://") || endpoint.parse::<http::Uri>().map_or(true, |u| u.authority().is_none()) {
                errors.push(source.error_at(&e.endpoint, "audit.export.endpoint", format!("expected http://host:port, got {endpoint:?}")));
            }
            if e.bucket.is_empty() || e.bucket.contains('/') {
                errors.push(source.error_at(&e.endpoint, "audit.export.bucket", "a bucket name without '/'"));
            }
            for (key, file) in [("access_key_file", &e.access_key_file), ("secret_key_file", &e.secret_key_file)] {
                if let Err(why) = super::export::read_secret(&source.resolve(file.get_ref())) {
                    errors.push(source.error_at(file, format!("audit.export.{key}"), why));
                }
            }
        }
    }
    if let Some(c) = audit.and_then(|a| a.collector.as_ref()) {
        super::collector::validate(source, c, config.admin.is_some(), errors);
    }
    for (i, r) in config.routes.iter().enumerate() {
        if r.audit == Some(Durability::Durable) && audit.is_none() {
            errors.push(source.error_at(&r.name, format!("routes[{i}].audit"), "\"durable\" needs the evidence log: add [audit] with dir and signing_key_file"));
        }
    }
}
