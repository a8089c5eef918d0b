//! Canned answers for host calls, for `portcullis policy test` only: a case
//! table states what the clock, the rate limiter, the JWKS store and the
//! verified-token cache answer, so a policy is tested without Redis, an
//! identity provider or a wall clock. A call a mock does not name is
//! answered by the real host state, as in the gateway.

use super::bindings::portcullis::gateway::types;
use std::collections::BTreeMap;

/// What the host answers instead of asking its services.
#[derive(Debug, Clone, Default)]
pub struct HostMocks {
    /// `host.now-ms`.
    pub now_ms: Option<u64>,
    /// `io.rate-acquire`, by limit name.
    pub rate: BTreeMap<String, Result<types::RateOutcome, types::RateError>>,
    /// `io.jwks`, by issuer.
    pub jwks: BTreeMap<String, Result<String, types::JwksError>>,
    /// `host.limit-policy`, by limit name (`None`: no such limit).
    pub limit_policy: BTreeMap<String, Option<String>>,
    /// `host.verified-token-cached` (puts are then ignored).
    pub token_cached: Option<bool>,
}
