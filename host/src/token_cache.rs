//! The verified-token cache: a bounded, host-side memory of tokens a policy
//! has verified, so that a fresh instance need not check the same signature
//! again on every request (RS256/ES256 inside wasm cost ~2 ms; see the
//! README, "Policy: jwt-auth"). Envoy's `jwt_cache_config` is the model.
//! Policies reach it through `host.verified-token-cached` and
//! `host.verified-token-put`.
//!
//! What an entry is, and when it holds:
//!
//! * **Key**: the SHA-256 of the token, inside a [`Scope`]. The token itself
//!   is never stored, and no claim is: a hit only says "this exact token
//!   verified"; the policy takes the claims from the token again and
//!   re-checks everything but the signature (time claims against the host's
//!   clock, audience, roles of the route ...).
//! * **Scope**: the policy's name, its component build (SHA-256 of the
//!   component) and its effective settings (its own, with the route's
//!   overrides), plus the key generation of the JWKS cache
//!   (`JwksCache::key_generation`: it changes whenever the keys a policy
//!   could verify with change — a fetch bringing another set, a reload
//!   changing a `[[jwks]]` source). So a reload that changes an issuer, an audience or the
//!   algorithms, a new build of the policy, or a key the issuer withdrew
//!   never lets an earlier verification through; the entries of the old
//!   scope are simply never asked for again and age out.
//! * **Expiry**: what the policy asks (the token's `exp`), capped by
//!   [`MAX_TTL`]; measured on the monotonic clock once stored. An expired
//!   entry is a miss and is removed when it is looked up.
//! * **Bound**: one cache per policy, of at most `cache-entries` entries (the
//!   policy's own setting, not a route's; default [`DEFAULT_ENTRIES`], at
//!   most [`MAX_ENTRIES`]; 0: none). Entries have a fixed size (two 32-byte
//!   digests and a deadline), so the count bounds the bytes too
//!   ([`PolicyCache::memory_bytes`]). Eviction is quick_cache's
//!   (CLOCK-Pro-like: the least recently used, and one-hit entries before
//!   entries in use). Only a token that verified is ever put, so a client
//!   cannot fill the cache with made-up tokens.
//!
//! The caches are sized at start and at every reload that commits
//! ([`TokenCache::configure`], from `Snapshot::start`); a policy whose size
//! is unchanged keeps its entries.

use crate::runtime::Settings;
use arc_swap::ArcSwap;
use prometheus::{IntCounter, IntGauge};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The setting that sizes a policy's cache.
pub const ENTRIES_SETTING: &str = "cache-entries";
/// Entries per policy when the setting is absent.
pub const DEFAULT_ENTRIES: usize = 10_000;
/// Most entries per policy, whatever the setting says.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Longest an entry lives, whatever the policy asks.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// What a verification is valid for: policy, component build, effective
/// settings and key generation, hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scope([u8; 32]);

/// The part of a scope a chain link fixes: policy, component build and
/// effective settings. Computed once per link when a snapshot is built, so
/// a request hashes only its 32 bytes and the key generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeBase([u8; 32]);

impl ScopeBase {
    /// `policy` built as `component` (its SHA-256) with `settings` and the
    /// route's `overrides` merged over them.
    pub fn new(policy: &str, component: &[u8], settings: &Settings, overrides: Option<&Settings>) -> ScopeBase {
        let mut merged: BTreeMap<&str, &str> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (k, v) in overrides.into_iter().flat_map(|o| o.iter()) {
            merged.insert(k, v);
        }
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"portcullis verified-token scope v1");
        field(policy.as_bytes());
        field(component);
        for (k, v) in merged {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        ScopeBase(h.finalize().into())
    }

    /// The scope under the JWKS key generation `key_generation`.
    pub fn with_generation(&self, key_generation: [u64; 2]) -> Scope {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(key_generation[0].to_le_bytes());
        h.update(key_generation[1].to_le_bytes());
        Scope(h.finalize().into())
    }
}

impl Scope {
    /// The scope of a policy instance: its settings with the route's
    /// overrides merged over them, under `key_generation`.
    pub fn of(policy: &str, component: &[u8], settings: &Settings, overrides: Option<&Settings>, key_generation: [u64; 2]) -> Scope {
        ScopeBase::new(policy, component, settings, overrides).with_generation(key_generation)
    }
}

/// An entry's key: the scope and the token's SHA-256.
type Key = ([u8; 32], [u8; 32]);

fn key(scope: &Scope, token: &str) -> Key {
    (scope.0, Sha256::digest(token.as_bytes()).into())
}

/// The cache of one policy.
pub struct PolicyCache {
    policy: Arc<str>,
    entries: usize,
    /// Allocated at the first put: policies that never use the cache cost nothing.
    cache: OnceLock<quick_cache::sync::Cache<Key, Instant>>,
    /// Its metrics, created at first use (no series for policies without a cache in use).
    meters: OnceLock<Meters>,
}

struct Meters {
    hits: IntCounter,
    misses: IntCounter,
    size: IntGauge,
}

impl PolicyCache {
    fn new(policy: Arc<str>, entries: usize) -> PolicyCache {
        PolicyCache { policy, entries, cache: OnceLock::new(), meters: OnceLock::new() }
    }

    fn meters(&self) -> &Meters {
        self.meters.get_or_init(|| {
            let m = crate::metrics::global();
            let p: &str = &self.policy;
            Meters {
                hits: m.token_cache_lookups.with_label_values(&[p, "hit"]),
                misses: m.token_cache_lookups.with_label_values(&[p, "miss"]),
                size: m.token_cache_entries.with_label_values(&[p]),
            }
        })
    }

    fn set_size_metric(&self, n: usize) {
        if let Some(m) = self.meters.get() {
            m.size.set(n as i64);
        }
    }

    fn cache(&self) -> &quick_cache::sync::Cache<Key, Instant> {
        self.cache.get_or_init(|| {
            // Shards of equal, whole capacity, so their sum never passes
            // `entries` (quick_cache rounds each shard's capacity up).
            let shards = (self.entries / 1024).clamp(1, 16).next_power_of_two().min(16);
            let per_shard = (self.entries / shards).max(1);
            let options = quick_cache::OptionsBuilder::new()
                .shards(shards)
                .estimated_items_capacity(per_shard * shards)
                .weight_capacity((per_shard * shards) as u64)
                .build()
                .expect("valid cache options");
            quick_cache::sync::Cache::with_options(options, quick_cache::UnitWeighter, Default::default(), Default::default())
        })
    }

    /// The configured bound.
    pub fn capacity(&self) -> usize {
        self.entries
    }

    /// Entries held now (expired ones included until looked up or evicted).
    pub fn len(&self) -> usize {
        self.cache.get().map_or(0, |c| c.len())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the cache's own structures (entries, index, eviction
    /// bookkeeping); entries hold no heap data of their own.
    pub fn memory_bytes(&self) -> usize {
        self.cache.get().map_or(0, |c| c.memory_used().total())
    }

    fn get_at(&self, key: &Key, now: Instant) -> bool {
        let m = self.meters();
        let Some(cache) = self.cache.get() else {
            m.misses.inc();
            return false;
        };
        match cache.get(key) {
            Some(deadline) if now < deadline => {
                m.hits.inc();
                true
            }
            Some(_) => {
                cache.remove(key);
                m.size.set(cache.len() as i64);
                m.misses.inc();
                false
            }
            None => {
                m.misses.inc();
                false
            }
        }
    }

    fn put_at(&self, key: Key, ttl: Duration, now: Instant) {
        let ttl = ttl.min(MAX_TTL);
        if ttl.is_zero() {
            return;
        }
        let cache = self.cache();
        cache.insert(key, now + ttl);
        self.meters().size.set(cache.len() as i64);
    }
}

/// Every policy's cache.
pub struct TokenCache {
    policies: ArcSwap<HashMap<Arc<str>, Arc<PolicyCache>>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new()
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<String, (usize, usize)> = self.policies.load().iter().map(|(k, c)| (k.to_string(), (c.len(), c.entries))).collect();
        f.debug_struct("TokenCache").field("entries/capacity", &sizes).finish()
    }
}

/// The size a policy's settings ask for: `cache-entries`, default
/// [`DEFAULT_ENTRIES`], at most [`MAX_ENTRIES`]. (The policy's
/// `check-config` refuses a value that is not a number; one that gets here
/// anyway means the default.)
pub fn entries_setting(settings: &BTreeMap<String, String>) -> usize {
    settings.get(ENTRIES_SETTING).and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(DEFAULT_ENTRIES).min(MAX_ENTRIES)
}

impl TokenCache {
    /// No policy has a cache yet (every lookup misses, every put is dropped).
    pub fn new() -> TokenCache {
        TokenCache { policies: ArcSwap::from_pointee(HashMap::new()) }
    }

    /// Size the caches for the policies of a chain that is about to serve:
    /// `(name, entries)`. A policy whose size is unchanged keeps its cache
    /// and entries; a new size starts an empty cache; a policy no longer
    /// configured loses its cache; 0 means none.
    pub fn configure(&self, policies: impl IntoIterator<Item = (Arc<str>, usize)>) {
        let old = self.policies.load();
        let mut next = HashMap::new();
        for (name, entries) in policies {
            let entries = entries.min(MAX_ENTRIES);
            if entries == 0 {
                continue;
            }
            let cache = match old.get(&name) {
                Some(c) if c.entries == entries => c.clone(),
                _ => Arc::new(PolicyCache::new(name.clone(), entries)),
            };
            next.insert(name, cache);
        }
        for (name, c) in old.iter() {
            if !next.get(name).is_some_and(|n| Arc::ptr_eq(n, c)) {
                c.set_size_metric(0);
            }
        }
        self.policies.store(Arc::new(next));
    }

    /// The cache of `policy`, if it has one.
    pub fn policy(&self, policy: &str) -> Option<Arc<PolicyCache>> {
        self.policies.load().get(policy).cloned()
    }

    /// Whether `policy` verified `token` in `scope` and the entry has not expired.
    pub fn get(&self, policy: &str, scope: &Scope, token: &str) -> bool {
        self.get_at(policy, scope, token, Instant::now())
    }

    /// Remember for `ttl` (at most [`MAX_TTL`]) that `policy` verified `token` in `scope`.
    pub fn put(&self, policy: &str, scope: &Scope, token: &str, ttl: Duration) {
        self.put_at(policy, scope, token, ttl, Instant::now());
    }

    fn get_at(&self, policy: &str, scope: &Scope, token: &str, now: Instant) -> bool {
        self.policy(policy).is_some_and(|c| c.get_at(&key(scope, token), now))
    }

    fn put_at(&self, policy: &str, scope: &Scope, token: &str, ttl: Duration, now: Instant) {
        if let Some(c) = self.policy(policy) {
            c.put_at(key(scope, token), ttl, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn scope(policy: &str, pairs: &[(&str, &str)]) -> Scope {
        Scope::of(policy, &[7; 32], &settings(pairs), None, [1, 1])
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_put_token_is_a_hit_until_it_expires() {
        let c = TokenCache::new();
        c.configure([("jwt".into(), 100)]);
        let s = scope("jwt", &[("issuers.a.audience", "api")]);
        let t0 = Instant::now();
        assert!(!c.get_at("jwt", &s, "tok", t0));
        c.put_at("jwt", &s, "tok", Duration::from_secs(2), t0);
        assert!(c.get_at("jwt", &s, "tok", t0 + Duration::from_millis(1999)));
        assert!(!c.get_at("jwt", &s, "tok", t0 + Duration::from_secs(2)), "expired at its deadline");
        assert_eq!(c.policy("jwt").unwrap().len(), 0, "an expired entry is removed when looked up");
        // Another token (one byte apart) is another entry.
        c.put_at("jwt", &s, "tok", MIN, t0);
        assert!(!c.get_at("jwt", &s, "tol", t0));
        // Nothing is kept for a zero or past expiry; the host caps long ones.
        c.put_at("jwt", &s, "now", Duration::ZERO, t0);
        assert!(!c.get_at("jwt", &s, "now", t0));
        c.put_at("jwt", &s, "long", Duration::from_secs(10 * 3600), t0);
        assert!(c.get_at("jwt", &s, "long", t0 + MAX_TTL - Duration::from_millis(1)));
        assert!(!c.get_at("jwt", &s, "long", t0 + MAX_TTL));
    }

    #[test]
    fn entries_are_scoped_by_policy_component_settings_and_key_generation() {
        let c = TokenCache::new();
        c.configure([("jwt".into(), 100), ("jwt-b".into(), 100)]);
        let base = settings(&[("issuers.a.audience", "api"), ("issuers.a.algorithms", "RS256")]);
        let s = Scope::of("jwt", &[7; 32], &base, None, [1, 1]);
        let t0 = Instant::now();
        c.put_at("jwt", &s, "tok", MIN, t0);
        assert!(c.get_at("jwt", &s, "tok", t0));
        // Another policy, even with the same scope, has its own entries.
        assert!(!c.get_at("jwt-b", &s, "tok", t0));
        // A changed setting (a reload), a route override, another build, new keys: other scopes.
        let changed = settings(&[("issuers.a.audience", "other"), ("issuers.a.algorithms", "RS256")]);
        for other in [
            Scope::of("jwt", &[7; 32], &changed, None, [1, 1]),
            Scope::of("jwt", &[7; 32], &base, Some(&settings(&[("issuers.a.audience", "other")])), [1, 1]),
            Scope::of("jwt", &[8; 32], &base, None, [1, 1]),
            Scope::of("jwt", &[7; 32], &base, None, [1, 2]),
            Scope::of("jwt", &[7; 32], &base, None, [2, 1]),
            Scope::of("jwt-b", &[7; 32], &base, None, [1, 1]),
        ] {
            assert_ne!(other, s);
            assert!(!c.get_at("jwt", &other, "tok", t0));
        }
        // Overrides equal to the settings, or none: the same effective settings, the same scope.
        assert_eq!(Scope::of("jwt", &[7; 32], &base, Some(&settings(&[("issuers.a.audience", "api")])), [1, 1]), s);
        // Fields cannot run into each other: ("ab", "c") is not ("a", "bc").
        assert_ne!(scope("jwt", &[("ab", "c")]), scope("jwt", &[("a", "bc")]));
    }

    #[test]
    fn the_bound_holds_in_entries_and_bytes() {
        for entries in [1, 10, 1000, 5000] {
            let c = TokenCache::new();
            c.configure([("jwt".into(), entries)]);
            let s = scope("jwt", &[]);
            let t0 = Instant::now();
            for i in 0..entries * 5 + 100 {
                c.put_at("jwt", &s, &format!("token-{i}"), MIN, t0);
                assert!(c.policy("jwt").unwrap().len() <= entries, "{entries}: {} after {i}", c.policy("jwt").unwrap().len());
            }
            let p = c.policy("jwt").unwrap();
            assert!(p.len() >= entries * 9 / 10, "{entries}: nearly full: {}", p.len());
            // Fixed-size entries: bytes grow with the bound, never with what was put.
            assert!(p.memory_bytes() <= 256 * entries + 4096, "{entries}: {} bytes", p.memory_bytes());
        }
    }

    #[test]
    fn tokens_in_use_survive_a_flood_of_new_ones() {
        let c = TokenCache::new();
        c.configure([("jwt".into(), 1000)]);
        let s = scope("jwt", &[]);
        let t0 = Instant::now();
        c.put_at("jwt", &s, "hot", MIN, t0);
        for i in 0..20_000 {
            assert!(c.get_at("jwt", &s, "hot", t0), "evicted after {i} new tokens");
            c.put_at("jwt", &s, &format!("once-{i}"), MIN, t0);
        }
    }

    #[test]
    fn configure_sizes_keeps_and_drops() {
        let c = TokenCache::new();
        let s = scope("jwt", &[]);
        // Unconfigured: no cache.
        c.put("jwt", &s, "tok", MIN);
        assert!(!c.get("jwt", &s, "tok"));
        c.configure([("jwt".into(), 10), ("off".into(), 0)]);
        assert!(c.policy("off").is_none(), "0 entries: no cache");
        c.put("jwt", &s, "tok", MIN);
        let first = c.policy("jwt").unwrap();
        assert_eq!(first.capacity(), 10);
        // Same size: the same cache, entries kept.
        c.configure([("jwt".into(), 10)]);
        assert!(Arc::ptr_eq(&first, &c.policy("jwt").unwrap()));
        assert!(c.get("jwt", &s, "tok"));
        // New size: a new, empty cache. Above the ceiling: the ceiling.
        c.configure([("jwt".into(), 20)]);
        assert!(!c.get("jwt", &s, "tok"));
        c.configure([("jwt".into(), usize::MAX)]);
        assert_eq!(c.policy("jwt").unwrap().capacity(), MAX_ENTRIES);
        // Gone from the chain: gone.
        c.configure([]);
        assert!(c.policy("jwt").is_none());
        // The setting.
        let m = |v: Option<&str>| entries_setting(&v.map(|v| (ENTRIES_SETTING.to_string(), v.to_string())).into_iter().collect());
        assert_eq!((m(None), m(Some("0")), m(Some("500")), m(Some("99999999")), m(Some("many"))), (DEFAULT_ENTRIES, 0, 500, MAX_ENTRIES, DEFAULT_ENTRIES));
    }

    #[test]
    fn no_token_is_kept_only_its_digest() {
        let c = TokenCache::new();
        c.configure([("jwt".into(), 10)]);
        c.put("jwt", &scope("jwt", &[]), "eyJhbGciOiJSUzI1NiJ9.secret-claims.sig", MIN);
        let cache = c.policy("jwt").unwrap();
        let keys: Vec<Key> = cache.cache.get().unwrap().iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].1, <[u8; 32]>::from(Sha256::digest(b"eyJhbGciOiJSUzI1NiJ9.secret-claims.sig")));
        assert!(!format!("{c:?}").contains("eyJ"));
    }
}
