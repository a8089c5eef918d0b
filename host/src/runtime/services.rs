//! Host-side state that outlives policy instances: the pseudonym key, and
//! the hooks where rate limits and JWKS caches plug in. Policies reach it
//! only through the contract's `host` and `io` interfaces.

use super::bindings::portcullis::gateway::types;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// State shared by every policy instance of the process.
pub struct Services {
    pseudonym_key: Vec<u8>,
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
        Services { pseudonym_key: key }
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

    /// JWKS lookup. No issuer is configured in this build of the gateway core.
    pub async fn jwks(&self, issuer: &str) -> Result<String, types::JwksError> {
        Err(types::JwksError::UnknownIssuer(issuer.to_string()))
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
