//! GCRA over Spin's key-value store: the node's own arithmetic, with the
//! theoretical arrival time (TAT, ns since the epoch) stored per key.
//!
//! Approximate by construction: `fermyon:spin/key-value@2.0.0` has no
//! compare-and-swap, so two concurrent requests for one key can both read
//! the same TAT; and the store is per edge node (README, "At the edge").

use crate::plan::Limit;
use portcullis_sdk::RateOutcome;
use spin_sdk::key_value::Store;

/// Take `cost` units of `key`'s budget under `limit`.
pub fn acquire(kv: &Store, key: &str, limit: &Limit, cost: u32) -> Result<RateOutcome, String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let stored = kv.get(key).map_err(|e| format!("key-value get: {e}"))?;
    let tat = stored.and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
    let (decision, next) = gcra(now, tat, limit, cost);
    if let Some(next) = next {
        kv.set(key, next.to_string().as_bytes()).map_err(|e| format!("key-value set: {e}"))?;
    }
    Ok(RateOutcome {
        allowed: decision.allowed,
        limit: limit.quota,
        remaining: decision.remaining,
        reset_ms: decision.reset_ns / 1_000_000,
        retry_after_ms: decision.retry_after_ns.div_ceil(1_000_000),
        policy: limit.policy.clone(),
        source: "edge".into(),
    })
}

/// A decision, in nanoseconds.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub reset_ns: u64,
    pub retry_after_ns: u64,
}

/// GCRA: the decision at `now` and the TAT to store (none when refused).
/// Remaining and reset are counted as the node's local limiter counts them.
pub fn gcra(now: u64, tat: Option<u64>, limit: &Limit, cost: u32) -> (Decision, Option<u64>) {
    let interval = limit.interval_ns.max(1);
    let burst = u64::from(limit.burst.max(1));
    let cost = u64::from(cost.max(1));
    let tau = interval * burst;
    let whole = interval * burst;
    if cost > burst {
        return (Decision { allowed: false, remaining: 0, reset_ns: whole, retry_after_ns: whole }, None);
    }
    let tat = tat.filter(|&t| t > now).unwrap_or(now);
    let new_tat = tat + interval * cost;
    // Refused while the new TAT lies more than the burst's span ahead.
    if new_tat > now + tau {
        return (Decision { allowed: false, remaining: 0, reset_ns: whole, retry_after_ns: new_tat - tau - now }, None);
    }
    let remaining = ((now + tau - new_tat) / interval).min(burst);
    (Decision { allowed: true, remaining, reset_ns: interval * (burst - remaining), retry_after_ns: 0 }, Some(new_tat))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(interval_ms: u64, burst: u32) -> Limit {
        Limit { interval_ns: interval_ms * 1_000_000, burst, quota: u64::from(burst), policy: "\"t\";q=3;w=1".into() }
    }

    #[test]
    fn a_burst_then_refusal_then_recovery() {
        let l = limit(1000, 3);
        let mut tat = None;
        for expected in [2, 1, 0] {
            let (d, next) = gcra(0, tat, &l, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected);
            tat = next;
        }
        let (d, next) = gcra(0, tat, &l, 1);
        assert!(!d.allowed && next.is_none());
        assert_eq!(d.retry_after_ns, 1_000_000_000);
        let (d, _) = gcra(1_000_000_000, tat, &l, 1);
        assert!(d.allowed);
        let (d, _) = gcra(0, None, &l, 4);
        assert!(!d.allowed, "more than the burst never fits");
    }
}
