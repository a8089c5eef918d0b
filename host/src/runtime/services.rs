//! Host-side state that outlives policy instances: the pseudonym key, the
//! JWKS cache and the rate limits. Policies reach it only through the
//! contract's `host` and `io` interfaces. One `Services` belongs to one
//! snapshot; a reload makes its successor, which carries over whatever did
//! not change (keys, limit counts), so a policy's `check-config` already
//! sees the configuration it is checked against.

use super::bindings::portcullis::gateway::types;
use crate::jwks::{JwksCache, JwksLookupError};
use crate::ratelimit::{AcquireError, Limits};
use crate::token_cache::TokenCache;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// State shared by every policy instance of a snapshot.
pub struct Services {
    pseudonym_key: Arc<[u8]>,
    /// Key sets per issuer (`[[jwks]]`).
    jwks: Arc<JwksCache>,
    /// `[[limits]]` and their state.
    limits: Arc<Limits>,
    /// Tokens policies verified (`host.verified-token-*`); carried over
    /// reloads (its entries are scoped by settings and key generation).
    token_cache: Arc<TokenCache>,
}

impl Services {
    /// Services with the given pseudonym key (or a random per-process one).
    pub fn new(pseudonym_key: Option<Vec<u8>>) -> Services {
        let key = pseudonym_key.unwrap_or_else(|| {
            let mut k = Vec::with_capacity(32);
            k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            k.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            k
        });
        Services { pseudonym_key: key.into(), jwks: Arc::new(JwksCache::empty()), limits: Arc::new(Limits::default()), token_cache: Arc::new(TokenCache::new()) }
    }

    /// The verified-token cache.
    pub fn token_cache(&self) -> &Arc<TokenCache> {
        &self.token_cache
    }

    /// These services with the `[[jwks]]` key sets.
    pub fn with_jwks(mut self, jwks: JwksCache) -> Services {
        self.jwks = Arc::new(jwks);
        self
    }

    /// These services with the `[[limits]]`.
    pub fn with_limits(mut self, limits: Limits) -> Services {
        self.limits = Arc::new(limits);
        self
    }

    /// The services of a reloaded configuration: the same pseudonym key, new
    /// key sets and limits (built from these, so unchanged ones keep state).
    pub fn successor(&self, jwks: JwksCache, limits: Limits) -> Services {
        Services { pseudonym_key: self.pseudonym_key.clone(), jwks: Arc::new(jwks), limits: Arc::new(limits), token_cache: self.token_cache.clone() }
    }

    /// The JWKS cache in use (to carry unchanged issuers over a reload).
    pub fn jwks_cache(&self) -> Arc<JwksCache> {
        self.jwks.clone()
    }

    /// The limits in use (to carry their state over a reload; for metrics).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// HMAC-SHA-256(key, domain || 0 || value), hex.
    pub fn pseudonym(&self, domain: &str, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.pseudonym_key).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Take `cost` from `key`'s budget under the configured limit `limit`.
    pub async fn rate_acquire(&self, limit: &str, key: &str, cost: u32) -> Result<types::RateOutcome, types::RateError> {
        let answer = self.limits.acquire(limit, key, cost, |k| self.pseudonym("rate-limit", k)).await;
        let metrics = crate::metrics::global();
        match answer {
            Ok(o) => {
                metrics.rate_limit_decisions.with_label_values(&[limit, o.source.as_str(), if o.decision.allowed { "allowed" } else { "limited" }]).inc();
                Ok(types::RateOutcome {
                    allowed: o.decision.allowed,
                    limit: o.quota,
                    remaining: o.decision.remaining,
                    reset_ms: o.decision.reset.as_millis() as u64,
                    retry_after_ms: o.decision.retry_after.as_millis() as u64,
                    policy: o.policy,
                    source: o.source.as_str().to_string(),
                })
            }
            Err(AcquireError::UnknownLimit(name)) => Err(types::RateError::UnknownLimit(name)),
            Err(e @ AcquireError::Unavailable { .. }) => {
                metrics.rate_limit_decisions.with_label_values(&[limit, "shared", "unavailable"]).inc();
                Err(types::RateError::Unavailable(e.to_string()))
            }
        }
    }

    /// JWKS lookup: `issuer`, or `issuer#kid=<kid>` (see `crate::jwks`).
    pub async fn jwks(&self, issuer: &str) -> Result<String, types::JwksError> {
        self.jwks.get(issuer).await.map_err(|e| match e {
            JwksLookupError::UnknownIssuer(i) => types::JwksError::UnknownIssuer(i),
            JwksLookupError::Unavailable(why) => types::JwksError::Unavailable(why),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Services;

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        let a = Services::new(Some(b"key-one".to_vec()));
        let b = Services::new(Some(b"key-two".to_vec()));
        assert_eq!(a.pseudonym("subject", "alice"), a.pseudonym("subject", "alice"));
        assert_ne!(a.pseudonym("subject", "alice"), b.pseudonym("subject", "alice"));
        assert_ne!(a.pseudonym("subject", "alice"), a.pseudonym("ip", "alice"));
        assert_eq!(a.pseudonym("subject", "alice").len(), 64);
    }
}
