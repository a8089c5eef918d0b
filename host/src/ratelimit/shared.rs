//! Shared limits: one budget for several gateway nodes, kept in Redis. Each
//! decision is one Lua script (GCRA on Redis's own clock), so it is atomic
//! and exact across nodes whatever their clocks say. Connections are a small
//! set of multiplexed `ConnectionManager`s (they reconnect by themselves);
//! every call has a short timeout. After a failure the store is skipped for
//! `retry` (callers use their fallback at once instead of each waiting out a
//! timeout), then the next call probes it again.

use super::local::{Decision, Gcra};
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// GCRA in one script. KEYS[1]: the budget's key. ARGV: interval (µs per
/// unit), burst (units), cost (units). Returns {allowed, remaining,
/// reset µs, retry-after µs}. Nothing is written when refused. Times are
/// microseconds since the epoch from Redis's `TIME` (below 2^53, exact in
/// Lua's doubles).
const GCRA_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tau = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tau
if allow_at > now then
  return {0, math.max(0, math.floor((now + tau - tat) / interval)), tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now + tau - new_tat) / interval), new_tat - now, 0}
"#;

/// Why the shared store gave no decision.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A recent failure; Redis is not asked again yet.
    #[error("redis was unreachable {0} ms ago; not retried yet")]
    Resting(u64),
    /// No answer in time.
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The Redis side of every shared limit of the process.
pub struct SharedStore {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    script: redis::Script,
    timeout: Duration,
    retry: Duration,
    /// Milliseconds since `epoch` before which Redis is not asked (0: ask).
    resting_until_ms: AtomicU64,
    /// Whether the last call failed (so the change is logged once each way).
    down: AtomicBool,
    epoch: std::time::Instant,
    /// URL without credentials, for logs and reload comparison.
    pub display: String,
}

impl SharedStore {
    /// Connections to `url` (made lazily: a Redis that is down at start is
    /// not an error, the fallback answers until it is up).
    pub fn new(url: &str, connections: usize, timeout: Duration, retry: Duration) -> Result<SharedStore, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(retry);
        let connections = (0..connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let info = client.get_connection_info();
        let display = format!("{}", info.addr());
        Ok(SharedStore {
            connections,
            next: AtomicUsize::new(0),
            script: redis::Script::new(GCRA_LUA),
            timeout,
            retry,
            resting_until_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            epoch: std::time::Instant::now(),
            display,
        })
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// One decision for `key` (already namespaced and pseudonymised).
    pub async fn acquire(&self, key: &str, gcra: Gcra, cost: u32) -> Result<Decision, SharedError> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let resting = self.resting_until_ms.load(Ordering::Relaxed);
        if now_ms < resting {
            return Err(SharedError::Resting(self.retry.as_millis() as u64 - (resting - now_ms)));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut con = self.connections[i].clone();
        let interval_us = (gcra.interval.as_micros() as u64).max(1);
        let mut call = self.script.key(key);
        call.arg(interval_us).arg(gcra.burst.max(1)).arg(cost.max(1));
        let answer = tokio::time::timeout(self.timeout, call.invoke_async::<(i64, i64, i64, i64)>(&mut con)).await;
        let result = match answer {
            Ok(Ok((allowed, remaining, reset_us, retry_us))) => Ok(Decision {
                allowed: allowed == 1,
                remaining: remaining.max(0) as u64,
                reset: Duration::from_micros(reset_us.max(0) as u64),
                retry_after: Duration::from_micros(retry_us.max(0) as u64),
            }),
            Ok(Err(e)) => Err(SharedError::Redis(e)),
            Err(_) => Err(SharedError::Timeout(self.timeout.as_millis() as u64)),
        };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(redis = %self.display, "shared rate limits: redis reachable again, shared counting resumed");
                }
            }
            Err(e) => {
                self.resting_until_ms.store(now_ms + self.retry.as_millis() as u64, Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(redis = %self.display, error = %e, "shared rate limits: redis unreachable, using the configured fallback");
                }
                crate::metrics::global().rate_limit_redis_errors.inc();
            }
        }
        result
    }
}
