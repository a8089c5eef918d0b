//! What the `host` and `io` interfaces answer at the edge, backed by Spin's
//! capabilities: settings from the plan (one Spin variable), rate-limit
//! state in Spin's key-value store, JWKS fetched over outbound HTTP and
//! cached in key-value, pseudonyms keyed by a secret variable.

use crate::plan::{Plan, Settings};
use crate::{jwks, rate};
use hmac::{Hmac, Mac};
use portcullis_sdk::embedded::Backend;
use portcullis_sdk::{JwksError, Level, RateError, RateOutcome};
use sha2::Sha256;
use spin_sdk::key_value::Store;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Per-request state every policy call shares.
pub struct Services {
    /// The plan.
    pub plan: Plan,
    /// The pseudonym key (Spin variable `pseudonym_key`, hex).
    pub pseudonym_key: Vec<u8>,
    /// Spin's default key-value store, if the component may open it.
    pub kv: Option<Store>,
    /// Key sets fetched for this request, by issuer.
    pub jwks: RefCell<BTreeMap<String, Result<String, JwksError>>>,
}

impl Services {
    /// `hex(HMAC-SHA256(key, domain || 0 || value))`, as on the node.
    pub fn pseudonym(&self, domain: &str, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.pseudonym_key).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Wall-clock milliseconds (`wasi:clocks`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One hook call of one policy: what its host calls see.
pub struct PolicyCall<'a> {
    /// Request-wide services.
    pub services: &'a Services,
    /// The policy's configured name.
    pub policy: &'a str,
    /// Its settings.
    pub settings: &'a Settings,
    /// The route's overrides for it.
    pub overrides: Option<&'a Settings>,
    /// Audit fields it added.
    pub audit: RefCell<Vec<(String, String)>>,
}

/// At most this many audit fields per call, and this many bytes (as on the node).
const MAX_AUDIT_FIELDS: usize = 64;
const MAX_AUDIT_BYTES: usize = 8 * 1024;

impl Backend for PolicyCall<'_> {
    fn setting(&self, key: &str) -> Option<String> {
        self.overrides.and_then(|o| o.get(key)).or_else(|| self.settings.get(key)).cloned()
    }

    fn settings(&self, prefix: &str) -> Vec<(String, String)> {
        let under = |m: &'_ Settings| m.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
        let mut merged: BTreeMap<String, String> = under(self.settings).into_iter().collect();
        if let Some(o) = self.overrides {
            merged.extend(under(o));
        }
        merged.into_iter().collect()
    }

    fn audit(&self, fields: &[(String, String)]) {
        let mut audit = self.audit.borrow_mut();
        let mut used: usize = audit.iter().map(|(k, v)| k.len() + v.len()).sum();
        for (k, v) in fields {
            used += k.len() + v.len();
            if audit.len() >= MAX_AUDIT_FIELDS || used > MAX_AUDIT_BYTES {
                eprintln!("{}: audit fields over the per-call limit dropped", self.policy);
                return;
            }
            audit.push((k.clone(), v.clone()));
        }
    }

    fn pseudonym(&self, domain: &str, value: &str) -> String {
        self.services.pseudonym(domain, value)
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn log(&self, level: Level, message: &str) {
        // Spin collects a component's stderr per request.
        eprintln!("{:?} {}: {}", level, self.policy, message);
    }

    fn limit_policy(&self, limit: &str) -> Option<String> {
        self.services.plan.limits.get(limit).map(|l| l.policy.clone())
    }

    // No verified-token cache at the edge: every token is verified. (A cache
    // in key-value would be shared across requests; the node's is in memory.)
    fn verified_token_cached(&self, _token: &str) -> bool {
        false
    }

    fn verified_token_put(&self, _token: &str, _expires_ms: u64) {}

    fn rate_acquire(&self, limit: &str, key: &str, cost: u32) -> Result<RateOutcome, RateError> {
        let Some(def) = self.services.plan.limits.get(limit) else {
            return Err(RateError::UnknownLimit(limit.to_string()));
        };
        let Some(kv) = &self.services.kv else {
            return Err(RateError::Unavailable("the key-value store \"default\" could not be opened".into()));
        };
        let store_key = format!("rl:{limit}:{}", self.services.pseudonym("rate-limit", key));
        rate::acquire(kv, &store_key, def, cost).map_err(RateError::Unavailable)
    }

    fn jwks(&self, issuer: &str) -> Result<String, JwksError> {
        let issuer = issuer.split_once(jwks::KID_HINT).map_or(issuer, |(i, _)| i);
        match self.services.jwks.borrow().get(issuer) {
            Some(answer) => answer.clone(),
            None if self.services.plan.issuers.contains_key(issuer) => Err(JwksError::Unavailable(format!("keys of {issuer} were not fetched"))),
            None => Err(JwksError::UnknownIssuer(issuer.to_string())),
        }
    }
}
