//! Host-side state that outlives policy instances: the pseudonym key, the
//! JWKS cache, and the hook where rate limits plug in. Policies reach it
//! only through the contract's `host` and `io` interfaces.

use super::bindings::portcullis::gateway::types;
use crate::jwks::{JwksCache, JwksLookupError};
use crate::token_cache::TokenCache;
use hmac::{Hmac, KeyInit, Mac};
use std::sync::Arc;
use sha2::Sha256;

/// State shared by every policy instance of the process.
pub struct Services {
    pseudonym_key: Vec<u8>,
    /// Key sets per issuer (`[[jwks]]`); swapped whole on reload.
    jwks: arc_swap::ArcSwap<JwksCache>,
    /// Tokens policies verified (`host.verified-token-*`); outlives reloads
    /// (its entries are scoped by settings and key generation).
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
        Services { pseudonym_key: key, jwks: arc_swap::ArcSwap::from_pointee(JwksCache::empty()), token_cache: Arc::new(TokenCache::new()) }
    }

    /// The verified-token cache.
    pub fn token_cache(&self) -> &Arc<TokenCache> {
        &self.token_cache
    }

    /// These services with the `[[jwks]]` key sets.
    pub fn with_jwks(self, jwks: JwksCache) -> Services {
        self.jwks.store(Arc::new(jwks));
        self
    }

    /// The JWKS cache in use (to carry unchanged issuers over a reload).
    pub fn jwks_cache(&self) -> Arc<JwksCache> {
        self.jwks.load_full()
    }

    /// Replace the JWKS cache (on reload; lookups in flight finish on the old one).
    pub fn set_jwks(&self, jwks: JwksCache) {
        self.jwks.store(Arc::new(jwks));
    }

    /// HMAC-SHA-256(key, domain || 0 || value), hex.
    pub fn pseudonym(&self, domain: &str, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.pseudonym_key).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Rate acquisition. No limit store is configured in this build of the
    /// gateway core, so every name is unknown (the rate-limit issue adds them).
    pub async fn rate_acquire(&self, limit: &str, _key: &str, _cost: u32) -> Result<types::RateOutcome, types::RateError> {
        Err(types::RateError::UnknownLimit(limit.to_string()))
    }

    /// JWKS lookup: `issuer`, or `issuer#kid=<kid>` (see `crate::jwks`).
    pub async fn jwks(&self, issuer: &str) -> Result<String, types::JwksError> {
        let cache = self.jwks.load_full();
        cache.get(issuer).await.map_err(|e| match e {
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
