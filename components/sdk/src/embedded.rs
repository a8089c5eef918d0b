//! Policies compiled into one std component instead of each being its own
//! (feature `embedded`): the edge on Spin, where a request is one instance
//! of one component and a policy cannot import `portcullis:gateway/host`.
//!
//! The `host` and `io` functions keep their signatures but call the
//! [`Backend`] the embedder lends for the duration of one hook call
//! ([`call`]); the backend knows which policy is running, with which
//! settings, and collects its audit fields. [`export_policy!`](crate::export_policy)
//! then expands to `pub fn embedded_policy() -> PolicyVTable` instead of wasm
//! exports, so the same policy source builds either way.
//!
//! What differs from the node (the embedder documents it): every policy of a
//! request shares one linear memory and one instance, so isolation is per
//! request, not per hook call; a trap ends the whole request.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::{Completion, HookSet, JwksError, Level, Policy, RateError, RateOutcome, RequestHead, ResponseEdits, ResponseHead, Verdict};

/// The `host` and `io` interfaces for one hook call of one policy.
pub trait Backend {
    /// `setting`: the route's override, else the policy's setting.
    fn setting(&self, key: &str) -> Option<String>;
    /// `settings`: every setting under `prefix`, overrides merged in.
    fn settings(&self, prefix: &str) -> Vec<(String, String)>;
    /// `host.audit`: fields for this request's record, under the policy's name.
    fn audit(&self, fields: &[(String, String)]);
    /// `host.pseudonym`.
    fn pseudonym(&self, domain: &str, value: &str) -> String;
    /// `host.now-ms`.
    fn now_ms(&self) -> u64;
    /// `host.log`.
    fn log(&self, level: Level, message: &str);
    /// `host.limit-policy`.
    fn limit_policy(&self, limit: &str) -> Option<String>;
    /// `host.verified-token-cached`.
    fn verified_token_cached(&self, token: &str) -> bool;
    /// `host.verified-token-put`.
    fn verified_token_put(&self, token: &str, expires_ms: u64);
    /// `io.rate-acquire`.
    fn rate_acquire(&self, limit: &str, key: &str, cost: u32) -> Result<RateOutcome, RateError>;
    /// `io.jwks`.
    fn jwks(&self, issuer: &str) -> Result<String, JwksError>;
}

std::thread_local! {
    /// The backend lent by [`call`], for the call's duration only.
    static CURRENT: Cell<Option<*const (dyn Backend + 'static)>> = const { Cell::new(None) };
}

/// Run `f` (one hook of one policy) with `backend` answering its host calls.
pub fn call<R>(backend: &dyn Backend, f: impl FnOnce() -> R) -> R {
    // SAFETY: the pointer is only dereferenced inside `f`, while `backend` is
    // borrowed; it is cleared before returning (and guests abort on panic,
    // so no unwinding leaves it set).
    let ptr: *const (dyn Backend + '_) = backend;
    let ptr: *const (dyn Backend + 'static) = unsafe { core::mem::transmute(ptr) };
    let previous = CURRENT.with(|c| c.replace(Some(ptr)));
    let out = f();
    CURRENT.with(|c| c.set(previous));
    out
}

fn with<R>(f: impl FnOnce(&dyn Backend) -> R) -> R {
    let ptr = CURRENT.with(|c| c.get()).expect("portcullis_sdk::embedded: a host function was called outside embedded::call");
    // SAFETY: see `call`.
    f(unsafe { &*ptr })
}

/// The `host` interface, answered by the lent backend.
pub mod host {
    use super::with;
    use crate::Level;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// `setting` (on the node it comes packed with each call).
    pub fn setting(key: &str) -> Option<String> {
        with(|b| b.setting(key))
    }
    /// `settings`.
    pub fn settings(prefix: &str) -> Vec<(String, String)> {
        with(|b| b.settings(prefix))
    }
    /// `host.audit`.
    pub fn audit(fields: &[(String, String)]) {
        with(|b| b.audit(fields))
    }
    /// `host.pseudonym`.
    pub fn pseudonym(domain: &str, value: &str) -> String {
        with(|b| b.pseudonym(domain, value))
    }
    /// `host.now-ms`.
    pub fn now_ms() -> u64 {
        with(|b| b.now_ms())
    }
    /// `host.log`.
    pub fn log(level: Level, message: &str) {
        with(|b| b.log(level, message))
    }
    /// `host.limit-policy`.
    pub fn limit_policy(limit: &str) -> Option<String> {
        with(|b| b.limit_policy(limit))
    }
    /// `host.verified-token-cached`.
    pub fn verified_token_cached(token: &str) -> bool {
        with(|b| b.verified_token_cached(token))
    }
    /// `host.verified-token-put`.
    pub fn verified_token_put(token: &str, expires_ms: u64) {
        with(|b| b.verified_token_put(token, expires_ms))
    }
}

/// The `io` interface, answered by the lent backend.
pub mod io {
    use super::with;
    use crate::{JwksError, RateError, RateOutcome};
    use alloc::string::String;

    /// `io.rate-acquire`.
    pub fn rate_acquire(limit: &str, key: &str, cost: u32) -> Result<RateOutcome, RateError> {
        with(|b| b.rate_acquire(limit, key, cost))
    }
    /// `io.jwks`.
    pub fn jwks(issuer: &str) -> Result<String, JwksError> {
        with(|b| b.jwks(issuer))
    }
}

/// A compiled-in policy: the functions its wasm exports would be.
#[derive(Clone, Copy)]
pub struct PolicyVTable {
    /// `policy.hooks`.
    pub hooks: fn() -> HookSet,
    /// `policy.check-config`.
    pub check_config: fn() -> Result<(), String>,
    /// `policy.on-request`.
    pub on_request: fn(RequestHead) -> Verdict,
    /// `policy.on-response`.
    pub on_response: fn(RequestHead, ResponseHead) -> ResponseEdits,
    /// `policy.on-complete`.
    pub on_complete: fn(RequestHead, Completion),
}

impl PolicyVTable {
    /// The vtable of `T`.
    pub fn of<T: Policy>() -> PolicyVTable {
        PolicyVTable { hooks: T::hooks, check_config: T::check_config, on_request: T::on_request, on_response: T::on_response, on_complete: T::on_complete }
    }
}
