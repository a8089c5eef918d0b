//! Rate limits behind the contract's `io.rate-acquire`: host state that
//! outlives policy instances, component swaps and reloads (a client that
//! used its budget stays limited when the rate-limit component is replaced).
//!
//! ```toml
//! [[limits]]
//! name = "per-ip"          # what policies ask for: rate-acquire("per-ip", key, cost)
//! rate = 10                # units per `per`
//! per = "1s"               # ms, s, m, h, d (or second, minute, hour, day)
//! burst = 20               # units at once (default: rate)
//! shared = false           # true: one budget for every node, in Redis
//! max_keys = 100000        # local store bound (keys beyond it are evicted, S3-FIFO)
//!
//! [shared_limits]          # needed when any limit is shared
//! redis = "redis://10.0.0.5:6379/0"
//! timeout_ms = 25          # per decision (below runtime.policy_deadline_ms)
//! connections = 4          # multiplexed connections, round robin
//! when_unavailable = "local"   # or "deny" (fail closed: rate-error unavailable)
//! nodes = 3                # fallback budget per node = rate / nodes, burst / nodes
//! retry_ms = 1000          # after a failure, how long to answer from the fallback before asking Redis again
//! key_prefix = "portcullis:rl:"
//! ```
//!
//! Keys never reach Redis in clear: a shared budget's key is
//! `<prefix><limit>:<pseudonym(key)>` under `gateway.pseudonym_key_file`,
//! which every node must share (a check error otherwise). Local keys are
//! kept as 64-bit keyed hashes only.

pub mod local;
pub mod shared;

use crate::config::{Config, ConfigError, Source};
use local::{Decision, Gcra, LocalLimiter};
use serde::Deserialize;
use shared::SharedStore;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// `[[limits]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// What policies ask for.
    pub name: Spanned<String>,
    /// Units per `per`.
    pub rate: Spanned<u32>,
    /// The period of `rate`.
    pub per: Spanned<String>,
    /// Units at once (default: `rate`).
    #[serde(default)]
    pub burst: Option<Spanned<u32>>,
    /// One budget for every node, in Redis.
    #[serde(default)]
    pub shared: bool,
    /// The local store's bound.
    #[serde(default = "default_max_keys")]
    pub max_keys: Spanned<usize>,
}

/// `[shared_limits]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedLimitsConfig {
    /// `redis://[user:password@]host:port/db`.
    pub redis: Spanned<String>,
    /// Per decision.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Multiplexed connections, used round robin.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// What shared limits do while Redis cannot be reached.
    #[serde(default)]
    pub when_unavailable: WhenUnavailable,
    /// Gateway nodes sharing the budgets (the fallback takes a 1/nodes share).
    #[serde(default = "default_nodes")]
    pub nodes: Spanned<u32>,
    /// After a failure, how long the fallback answers before Redis is asked again.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
    /// Prefix of every key this gateway writes.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

/// What a shared limit does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUnavailable {
    /// Each node's local limiter answers, with the budget divided by `nodes`.
    #[default]
    Local,
    /// Refuse: the policy gets `rate-error::unavailable` and fails closed.
    Deny,
}

fn default_max_keys() -> Spanned<usize> {
    Spanned::new(0..0, 100_000)
}
fn default_timeout_ms() -> u64 {
    25
}
fn default_connections() -> usize {
    4
}
fn default_nodes() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_retry_ms() -> u64 {
    1000
}
fn default_prefix() -> String {
    "portcullis:rl:".into()
}

/// The period of `per`: `500ms`, `1s`, `10m`, `1h`, `1d`, or `second`..`day`.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let named = match t {
        "second" => Some(1),
        "minute" => Some(60),
        "hour" => Some(3600),
        "day" => Some(86_400),
        _ => None,
    };
    if let Some(s) = named {
        return Ok(Duration::from_secs(s));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("expected a period such as \"1s\", \"1m\", \"1d\" or \"second\", got {text:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (ms, s, m, h, d)")),
    };
    if d.is_zero() {
        return Err("the period must be positive".into());
    }
    Ok(d)
}

/// Check `[[limits]]` and `[shared_limits]`.
pub fn validate(source: &Source, config: &Config, errors: &mut Vec<ConfigError>) {
    let mut names = std::collections::HashSet::new();
    for (i, l) in config.limits.iter().enumerate() {
        let name = l.name.get_ref();
        if !crate::config::validate::valid_name(name) {
            errors.push(source.error_at(&l.name, format!("limits[{i}].name"), format!("{name:?} is not a valid name (letters, digits, '-', '_')")));
        }
        if !names.insert(name.as_str()) {
            errors.push(source.error_at(&l.name, format!("limits[{i}].name"), format!("duplicate limit name {name:?}")));
        }
        if *l.rate.get_ref() == 0 {
            errors.push(source.error_at(&l.rate, format!("limits[{i}].rate"), "must be at least 1"));
        }
        match parse_period(l.per.get_ref()) {
            Err(why) => errors.push(source.error_at(&l.per, format!("limits[{i}].per"), why)),
            Ok(period) if *l.rate.get_ref() > 0 && period / *l.rate.get_ref() < Duration::from_micros(1) => {
                errors.push(source.error_at(&l.per, format!("limits[{i}].per"), "more than one unit per microsecond cannot be counted"))
            }
            Ok(_) => {}
        }
        if let Some(b) = &l.burst
            && *b.get_ref() == 0
        {
            errors.push(source.error_at(b, format!("limits[{i}].burst"), "must be at least 1"));
        }
        let keys = *l.max_keys.get_ref();
        if !(1..=100_000_000).contains(&keys) {
            errors.push(source.error_at(&l.max_keys, format!("limits[{i}].max_keys"), "must be between 1 and 100000000"));
        }
        if l.shared && config.shared_limits.is_none() {
            errors.push(source.error_at(&l.name, format!("limits[{i}].shared"), "a shared limit needs a [shared_limits] section (its Redis)"));
        }
    }
    if let Some(s) = &config.shared_limits {
        let url = s.redis.get_ref().as_str();
        let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"].iter().any(|p| url.starts_with(p));
        if !scheme_ok {
            errors.push(source.error_at(&s.redis, "shared_limits.redis", format!("not a Redis URL (redis://host:port/db): {url:?}")));
        } else if let Err(e) = redis::Client::open(url) {
            errors.push(source.error_at(&s.redis, "shared_limits.redis", format!("not a Redis URL: {e}")));
        }
        // A decision waits at most timeout_ms inside a policy call; the
        // policy's deadline must leave room for it, or a slow Redis would
        // fail every request closed as a missed deadline instead of
        // taking the configured fallback.
        if s.timeout_ms >= config.runtime.policy_deadline_ms {
            errors.push(source.error_at(
                &s.redis,
                "shared_limits.timeout_ms",
                format!("{} ms must be below runtime.policy_deadline_ms ({} ms), so the fallback answers before the policy's deadline", s.timeout_ms, config.runtime.policy_deadline_ms),
            ));
        }
        if *s.nodes.get_ref() == 0 {
            errors.push(source.error_at(&s.nodes, "shared_limits.nodes", "must be at least 1"));
        }
        if s.timeout_ms == 0 || s.connections == 0 || s.retry_ms == 0 {
            errors.push(source.error_at(&s.redis, "shared_limits", "timeout_ms, connections and retry_ms must be positive"));
        }
        if config.gateway.pseudonym_key_file.is_none() {
            errors.push(source.error_at(&s.redis, "shared_limits", "shared limits need gateway.pseudonym_key_file, the same on every node (keys are stored under it, never in clear)"));
        }
    }
}

/// How a decision was made, for `rate-outcome.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// A local limit.
    Local,
    /// Redis.
    Shared,
    /// A shared limit's local fallback (Redis unreachable).
    LocalFallback,
}

impl DecidedBy {
    /// As `rate-outcome.source` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Local => "local",
            DecidedBy::Shared => "shared",
            DecidedBy::LocalFallback => "local-fallback",
        }
    }
}

/// An answer of `Limits::acquire`.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The decision itself.
    pub decision: Decision,
    /// Units per window (`q` of `RateLimit-Policy`).
    pub quota: u64,
    /// The limit's `RateLimit-Policy` item.
    pub policy: String,
    /// Who decided.
    pub source: DecidedBy,
}

/// Why `Limits::acquire` gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// No such limit.
    #[error("no limit named {0:?} is configured")]
    UnknownLimit(String),
    /// Redis unreachable and the limit fails closed.
    #[error("the shared store is unavailable and limit {limit:?} fails closed: {why}")]
    Unavailable {
        /// The limit.
        limit: String,
        /// What Redis said.
        why: String,
    },
}

/// One configured limit with its state.
pub struct Limit {
    /// Its configured name.
    pub name: String,
    definition: Definition,
    /// The budget itself (local limits) or the per-node fallback (shared ones).
    local: LocalLimiter,
    /// Keys of the local store are hashes under this per-limit random key.
    hasher: std::hash::RandomState,
}

/// What a limit's state was made for: a reload with the same definition
/// keeps the state (and so the counts).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Definition {
    gcra: Gcra,
    /// The per-node fallback (shared limits) or the budget itself.
    local_gcra: Gcra,
    quota: u64,
    shared: bool,
    max_keys: usize,
    policy: String,
}

impl Definition {
    fn of(cfg: &LimitConfig, nodes: u32) -> Definition {
        let rate = (*cfg.rate.get_ref()).max(1);
        let period = parse_period(cfg.per.get_ref()).unwrap_or(Duration::from_secs(1));
        let burst = cfg.burst.as_ref().map(|b| *b.get_ref()).unwrap_or(rate).max(1);
        let gcra = Gcra { interval: period / rate, burst };
        let shared = cfg.shared;
        // The fallback for a shared limit: this node's share of the budget.
        let local_gcra = if shared && nodes > 1 { Gcra { interval: gcra.interval * nodes, burst: burst.div_ceil(nodes) } } else { gcra };
        let mut policy = format!("\"{}\";q={rate};w={}", cfg.name.get_ref(), period.as_secs().max(1));
        if burst != rate {
            policy.push_str(&format!(";burst={burst}"));
        }
        Definition { gcra, local_gcra, quota: u64::from(rate), shared, max_keys: *cfg.max_keys.get_ref(), policy }
    }
}

impl Limit {
    fn new(name: String, definition: Definition) -> Limit {
        Limit {
            local: LocalLimiter::new(definition.local_gcra, definition.max_keys),
            hasher: std::hash::RandomState::new(),
            name,
            definition,
        }
    }

    /// Keys held by the local store.
    pub fn keys(&self) -> usize {
        self.local.keys()
    }
}

/// Every limit of a configuration, and the shared store.
#[derive(Default)]
pub struct Limits {
    by_name: HashMap<String, Arc<Limit>>,
    shared: Option<(SharedLimitsConfig, Arc<SharedStore>)>,
}

impl Limits {
    /// The limits of `config`. Limits whose definition is unchanged from
    /// `previous` keep their state (and so their counts), as does the shared
    /// store when `[shared_limits]` is unchanged.
    pub fn build(config: &Config, previous: Option<&Limits>) -> anyhow::Result<Limits> {
        let shared = match &config.shared_limits {
            None => None,
            Some(cfg) => match previous.and_then(|p| p.shared.as_ref()).filter(|(old, _)| old == cfg) {
                Some((_, store)) => Some((cfg.clone(), store.clone())),
                None => {
                    let store = SharedStore::new(cfg.redis.get_ref(), cfg.connections, Duration::from_millis(cfg.timeout_ms), Duration::from_millis(cfg.retry_ms))
                        .map_err(|e| anyhow::anyhow!("shared_limits.redis: {e}"))?;
                    Some((cfg.clone(), Arc::new(store)))
                }
            },
        };
        let nodes = config.shared_limits.as_ref().map(|s| *s.nodes.get_ref()).unwrap_or(1).max(1);
        let mut by_name = HashMap::new();
        for cfg in &config.limits {
            let name = cfg.name.get_ref();
            let definition = Definition::of(cfg, nodes);
            let kept = previous.and_then(|p| p.by_name.get(name)).filter(|old| old.definition == definition);
            let limit = kept.cloned().unwrap_or_else(|| Arc::new(Limit::new(name.clone(), definition)));
            by_name.insert(name.clone(), limit);
        }
        Ok(Limits { by_name, shared })
    }

    /// The `RateLimit-Policy` item of `name`, if configured.
    pub fn policy(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|l| l.definition.policy.as_str())
    }

    /// Each limit's whole budget as the edge plan carries it (`crate::edge`):
    /// name, GCRA interval, burst, quota and `RateLimit-Policy` item. A
    /// shared limit gives its global budget, not a node's fallback share.
    pub fn definitions(&self) -> impl Iterator<Item = (&str, Duration, u32, u64, &str)> {
        self.by_name.values().map(|l| {
            let d = &l.definition;
            (l.name.as_str(), d.gcra.interval, d.gcra.burst, d.quota, d.policy.as_str())
        })
    }

    /// Every limit (for metrics).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Limit>> {
        self.by_name.values()
    }

    /// Whether the shared store answered its last call (None: no shared store).
    pub fn redis_up(&self) -> Option<bool> {
        self.shared.as_ref().map(|(_, s)| s.is_up())
    }

    /// Take `cost` from `key`'s budget under limit `name`. `pseudonym` turns
    /// the key into the name Redis stores (only called for shared limits).
    pub async fn acquire(&self, name: &str, key: &str, cost: u32, pseudonym: impl FnOnce(&str) -> String) -> Result<Outcome, AcquireError> {
        let limit = self.by_name.get(name).ok_or_else(|| AcquireError::UnknownLimit(name.to_string()))?;
        let def = &limit.definition;
        let outcome = |decision, source| Outcome { decision, quota: def.quota, policy: def.policy.clone(), source };
        let local = |source| outcome(limit.local.acquire(limit.hasher.hash_one(key), cost), source);
        if !def.shared {
            return Ok(local(DecidedBy::Local));
        }
        let Some((cfg, store)) = &self.shared else {
            return Ok(local(DecidedBy::LocalFallback));
        };
        let redis_key = format!("{}{}:{}", cfg.key_prefix, limit.name, pseudonym(key));
        match store.acquire(&redis_key, def.gcra, cost).await {
            Ok(decision) => Ok(outcome(decision, DecidedBy::Shared)),
            Err(e) => match cfg.when_unavailable {
                WhenUnavailable::Local => Ok(local(DecidedBy::LocalFallback)),
                WhenUnavailable::Deny => Err(AcquireError::Unavailable { limit: limit.name.clone(), why: e.to_string() }),
            },
        }
    }
}

#[cfg(test)]
mod tests;
