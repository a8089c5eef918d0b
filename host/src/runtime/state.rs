//! What a policy instance's `Store` holds, and the host functions it offers
//! (`host` and `io` of the contract). One `PolicyState` lives exactly as long
//! as one fresh instance: one hook call of one request.

use super::bindings::portcullis::gateway::{host, io, types};
use super::mocks::HostMocks;
use super::settings::Settings;
use super::services::Services;
use crate::token_cache::{Scope, ScopeBase};
use std::sync::Arc;
use wasmtime::ResourceLimiter;

/// Largest number of audit fields one call may add, and their total size:
/// a hostile policy must not grow the host's memory through `audit`.
const MAX_AUDIT_FIELDS: usize = 64;
const MAX_AUDIT_BYTES: usize = 16 * 1024;

/// Store data of one policy instance.
pub struct PolicyState {
    /// Configured name of the policy (its fact namespace, except the router's `route`).
    pub policy: Arc<str>,
    /// Request id, for logs.
    pub request_id: Arc<str>,
    /// The policy's own settings.
    pub settings: Settings,
    /// The current route's overrides for this policy, if any.
    pub overrides: Option<Settings>,
    /// Fields the policy added to the audit record during this call.
    pub audit: Vec<(String, String)>,
    audit_bytes: usize,
    /// Enforces the memory cap and remembers whether it refused a growth.
    pub memory: MemoryCap,
    /// Host state shared by every instance (rate limits, JWKS, pseudonym key).
    pub services: Arc<Services>,
    /// SHA-256 of the component this instance runs (set by `Runtime::call`):
    /// part of the verified-token cache's scope.
    pub component: [u8; 32],
    /// The JWKS key generation, read at the first key or token-cache call of
    /// this instance (before it can see any key).
    key_generation: Option<[u64; 2]>,
    /// The verified-token cache scope, computed at first use.
    token_scope: Option<Scope>,
    /// The scope's part fixed by the chain link (computed at snapshot
    /// build); without it the scope is computed from the settings.
    pub token_scope_base: Option<ScopeBase>,
    /// Canned host answers (`policy test` only; `None` in the gateway).
    pub mocks: Option<std::sync::Arc<HostMocks>>,
    /// This policy's own call deadline; the runtime's when `None`.
    pub deadline: Option<std::time::Duration>,
}

impl PolicyState {
    /// State for one call.
    pub fn new(policy: Arc<str>, request_id: Arc<str>, settings: Settings, overrides: Option<Settings>, memory_cap: usize, services: Arc<Services>) -> Self {
        PolicyState {
            policy,
            request_id,
            settings,
            overrides,
            audit: Vec::new(),
            audit_bytes: 0,
            memory: MemoryCap { cap: memory_cap, refused: false },
            services,
            component: [0; 32],
            key_generation: None,
            token_scope: None,
            token_scope_base: None,
            mocks: None,
            deadline: None,
        }
    }

    /// The key generation this instance runs under (read once, at first use).
    fn key_generation(&mut self) -> [u64; 2] {
        *self.key_generation.get_or_insert_with(|| self.services.jwks_cache().key_generation())
    }

    /// This instance's verified-token scope: policy, component, effective settings, keys.
    fn token_scope(&mut self) -> Scope {
        if let Some(s) = self.token_scope {
            return s;
        }
        let generation = self.key_generation();
        let scope = match self.token_scope_base {
            Some(base) => base.with_generation(generation),
            None => Scope::of(&self.policy, &self.component, &self.settings, self.overrides.as_ref(), generation),
        };
        self.token_scope = Some(scope);
        scope
    }
}

/// Per-instance memory cap. The pooling allocator bounds every memory too;
/// this one tells a memory failure apart from any other trap.
pub struct MemoryCap {
    /// Largest linear memory, bytes.
    pub cap: usize,
    /// Set when a `memory.grow` past the cap was refused.
    pub refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }
}

impl types::Host for PolicyState {}

impl host::Host for PolicyState {
    fn audit(&mut self, fields: Vec<(String, String)>) {
        for (k, v) in fields {
            let size = k.len() + v.len();
            if self.audit.len() >= MAX_AUDIT_FIELDS || self.audit_bytes + size > MAX_AUDIT_BYTES {
                tracing::warn!(policy = %self.policy, request_id = %self.request_id, "audit fields over the per-call limit dropped");
                self.audit.push(("audit-truncated".into(), "true".into()));
                return;
            }
            self.audit_bytes += size;
            self.audit.push((k, v));
        }
    }

    fn pseudonym(&mut self, domain: String, value: String) -> String {
        self.services.pseudonym(&domain, &value)
    }

    fn now_ms(&mut self) -> u64 {
        if let Some(now) = self.mocks.as_ref().and_then(|m| m.now_ms) {
            return now;
        }
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn verified_token_cached(&mut self, token: String) -> bool {
        if let Some(hit) = self.mocks.as_ref().and_then(|m| m.token_cached) {
            return hit;
        }
        let _span = tracing::trace_span!("token_cache", policy = %self.policy, op = "get").entered();
        let scope = self.token_scope();
        self.services.token_cache().get(&self.policy, &scope, &token)
    }

    fn verified_token_put(&mut self, token: String, expires_ms: u64) {
        if self.mocks.as_ref().is_some_and(|m| m.token_cached.is_some()) {
            return;
        }
        let _span = tracing::trace_span!("token_cache", policy = %self.policy, op = "put").entered();
        let ttl = std::time::Duration::from_millis(expires_ms.saturating_sub(self.now_ms()));
        let scope = self.token_scope();
        self.services.token_cache().put(&self.policy, &scope, &token, ttl);
    }

    fn log(&mut self, level: types::Level, message: String) {
        // Policies are told never to log secrets; the message is truncated so
        // a hostile one cannot flood the log either.
        let message: String = message.chars().take(1024).collect();
        let (policy, id) = (&*self.policy, &*self.request_id);
        match level {
            types::Level::Trace => tracing::trace!(target: "policy", policy, request_id = id, "{message}"),
            types::Level::Debug => tracing::debug!(target: "policy", policy, request_id = id, "{message}"),
            types::Level::Info => tracing::info!(target: "policy", policy, request_id = id, "{message}"),
            types::Level::Warn => tracing::warn!(target: "policy", policy, request_id = id, "{message}"),
            types::Level::Error => tracing::error!(target: "policy", policy, request_id = id, "{message}"),
        }
    }

    fn limit_policy(&mut self, limit: String) -> Option<String> {
        if let Some(answer) = self.mocks.as_ref().and_then(|m| m.limit_policy.get(&limit)) {
            return answer.clone();
        }
        self.services.limits().policy(&limit).map(str::to_string)
    }
}

impl io::Host for PolicyState {
    async fn rate_acquire(&mut self, limit: String, key: String, cost: u32) -> Result<types::RateOutcome, types::RateError> {
        if let Some(answer) = self.mocks.as_ref().and_then(|m| m.rate.get(&limit)) {
            return answer.clone();
        }
        self.services.rate_acquire(&limit, &key, cost).await
    }

    async fn jwks(&mut self, issuer: String) -> Result<String, types::JwksError> {
        // Mocks are by issuer; the `#kid=` hint only steers the real cache.
        let named = issuer.split_once("#kid=").map_or(issuer.as_str(), |(i, _)| i);
        if let Some(answer) = self.mocks.as_ref().and_then(|m| m.jwks.get(named)) {
            return answer.clone();
        }
        // The generation is fixed before any key is seen (see `token_scope`).
        self.key_generation();
        self.services.jwks(&issuer).await
    }
}
