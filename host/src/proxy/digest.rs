//! Digest stage (only on routes with `[routes.body_hmac]`): between the
//! router and the route's policies, read the request body — bounded in size
//! and time — and hand the policies its HMAC-SHA256 as fact
//! `body.hmac-sha256` (lower-case hex) and its length as `body.size`.
//!
//! Why the host: policies see request heads only (no body crosses into wasm
//! memory, so no patient data can linger there), yet a webhook signature is
//! computed over the raw body. The key stays in the host too: a policy gets
//! the digest, compares it with the signature header in constant time, and
//! never holds the secret. The body is then forwarded from memory, so these
//! routes trade streaming for verification, up to `max_bytes`.

use super::chain::ChainRun;
use super::RequestBody;
use crate::config::{self, ConfigError, Source};
use crate::error::GatewayError;
use hmac::{Hmac, KeyInit, Mac};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full};
use sha2::Sha256;
use std::time::Duration;

/// Fact with the body's HMAC-SHA256, lower-case hex.
pub const HMAC_FACT: &str = "body.hmac-sha256";
/// Fact with the body's length in bytes.
pub const SIZE_FACT: &str = "body.size";

/// A route's body HMAC, ready to use.
pub struct BodyHmac {
    key: Vec<u8>,
    /// Largest body read: the smaller of `max_bytes` and the route's body limit.
    pub max_bytes: u64,
    /// How long the body may take to arrive.
    pub timeout: Duration,
    /// SHA-256 of the key: changes the chain version when the key rotates,
    /// without the key itself leaving this struct.
    pub key_fingerprint: [u8; 32],
}

impl std::fmt::Debug for BodyHmac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHmac").field("max_bytes", &self.max_bytes).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl BodyHmac {
    /// Read the key of route `i` (`routes[i].body_hmac`). Errors name the key path.
    pub fn load(source: &Source, spec: &config::BodyHmac, i: usize, body_limit: u64) -> Result<BodyHmac, ConfigError> {
        let at = |field: &str| format!("routes[{i}].body_hmac.{field}");
        let key = match (&spec.secret_file, &spec.secret_env) {
            (Some(file), None) => {
                let path = source.resolve(file.get_ref());
                let mut bytes = std::fs::read(&path).map_err(|e| source.error_at(file, at("secret_file"), format!("cannot read {}: {e}", path.display())))?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                bytes
            }
            (None, Some(var)) => std::env::var_os(var.get_ref())
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| source.error_at(var, at("secret_env"), format!("environment variable {} is not set", var.get_ref())))?,
            _ => return Err(source.error(format!("routes[{i}].body_hmac"), "give exactly one of secret_file or secret_env")),
        };
        // RFC 2104: a key shorter than the hash output weakens the MAC.
        if key.len() < 32 {
            return Err(source.error(format!("routes[{i}].body_hmac"), format!("the HMAC key has {} bytes; at least 32 are required", key.len())));
        }
        if spec.max_bytes.0 == 0 {
            return Err(source.error(at("max_bytes"), "must be positive"));
        }
        if spec.timeout_ms == 0 {
            return Err(source.error(at("timeout_ms"), "must be positive"));
        }
        use sha2::Digest;
        let key_fingerprint = Sha256::digest(&key).into();
        Ok(BodyHmac { key, max_bytes: spec.max_bytes.0.min(body_limit), timeout: Duration::from_millis(spec.timeout_ms), key_fingerprint })
    }

    /// The key in hex, for the edge plan (`crate::edge`), which hands the
    /// edge the same key. Never logged.
    pub fn key_hex(&self) -> String {
        hex::encode(&self.key)
    }

    /// Read `body` whole (bounded), add the facts to `run`, and leave in
    /// `body` the same bytes, to be forwarded.
    pub async fn attach(&self, run: &mut ChainRun, body: &mut RequestBody) -> Result<(), GatewayError> {
        let too_large = GatewayError::BodyTooLarge { limit: self.max_bytes };
        let declared = run.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes) {
            return Err(too_large);
        }
        let bytes = match tokio::time::timeout(self.timeout, read_bounded(body, self.max_bytes)).await {
            Err(_) => return Err(GatewayError::BodyTimeout { timeout_ms: self.timeout.as_millis() as u64 }),
            Ok(Err(None)) => return Err(too_large),
            Ok(Err(Some(e))) => return Err(GatewayError::BadRequest(format!("the request body could not be read: {e}"))),
            Ok(Ok(bytes)) => bytes,
        };
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(&bytes);
        let digest = hex::encode(mac.finalize().into_bytes());
        // Host facts replace anything of the same name (nothing else may write `body.*`).
        run.head.facts.retain(|(k, _)| k != HMAC_FACT && k != SIZE_FACT);
        run.head.facts.push((HMAC_FACT.into(), digest));
        run.head.facts.push((SIZE_FACT.into(), bytes.len().to_string()));
        *body = Either::Right(Full::new(bytes));
        Ok(())
    }
}

/// Bytes the digest stage read, as body statistics, for the audit record of
/// a request a policy answered after it (a refused webhook was still received).
pub fn bytes_read(facts: &[(String, String)]) -> Option<std::sync::Arc<crate::body::BodyStats>> {
    let size = facts.iter().rev().find(|(k, _)| k == SIZE_FACT)?.1.parse::<u64>().ok()?;
    let stats = crate::body::BodyStats::default();
    stats.bytes.store(size, std::sync::atomic::Ordering::Relaxed);
    Some(std::sync::Arc::new(stats))
}

/// The whole body, or `Err(None)` past `limit` bytes, `Err(Some(_))` on a read error.
async fn read_bounded(body: &mut RequestBody, limit: u64) -> Result<Bytes, Option<crate::body::BoxError>> {
    // The body is taken (it is read whole or the request fails) and pinned
    // here: the idle timer inside it is not `Unpin`.
    let mut body = std::pin::pin!(std::mem::replace(body, Either::Right(Full::new(Bytes::new()))));
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Some)?.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
