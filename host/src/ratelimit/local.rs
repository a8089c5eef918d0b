//! Local limits: `governor`'s GCRA over a keyed state store whose size is
//! bounded. governor's own keyed stores grow with every distinct key until
//! `retain_recent` runs, so a flood of distinct client IPs could exhaust
//! memory between sweeps; this store is a `quick_cache` (S3-FIFO) of fixed
//! size entries instead: a key seen once is the first to go, a key that keeps
//! coming (the client being limited) stays. Evicting a key forgets its
//! budget, which is the lenient direction and only happens beyond the
//! configured capacity.

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a limit decided for one acquisition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The cost fit and was taken.
    pub allowed: bool,
    /// Units that could still be taken at once after this decision.
    pub remaining: u64,
    /// Until the budget is whole again.
    pub reset: Duration,
    /// When refused: until the cost would fit (zero when allowed).
    pub retry_after: Duration,
}

/// GCRA parameters of one limit: `burst` units at once, one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// One unit comes back every `interval`.
    pub interval: Duration,
    /// Units at once.
    pub burst: u32,
}

/// A keyed state store of at most `capacity` keys. Keys are 64-bit keyed
/// hashes (the caller's), values the GCRA's theoretical arrival time.
/// Clones share the same cells (the limiter owns one, the owner keeps one to
/// report its size).
#[derive(Clone)]
pub struct BoundedStore {
    cells: Arc<quick_cache::sync::Cache<u64, Arc<AtomicU64>>>,
}

impl BoundedStore {
    /// A store holding at most `capacity` keys.
    pub fn new(capacity: usize) -> BoundedStore {
        BoundedStore { cells: Arc::new(quick_cache::sync::Cache::new(capacity.max(1))) }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// The most keys it will hold.
    pub fn capacity(&self) -> u64 {
        self.cells.capacity()
    }

    fn cell(&self, key: u64) -> Arc<AtomicU64> {
        if let Some(c) = self.cells.get(&key) {
            return c;
        }
        let made: Result<_, std::convert::Infallible> = self.cells.get_or_insert_with(&key, || Ok(Arc::new(AtomicU64::new(0))));
        match made {
            Ok(c) => c,
        }
    }
}

impl StateStore for BoundedStore {
    type Key = u64;

    // The same compare-and-swap loop as governor's own in-memory state: the
    // decision is recomputed if another thread moved the cell meanwhile.
    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let cell = self.cell(*key);
        let mut prev = cell.load(Ordering::Acquire);
        loop {
            let old = (prev != 0).then(|| Nanos::from(prev));
            let (result, next) = f(old)?;
            match cell.compare_exchange_weak(prev, u64::from(next).max(1), Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(result),
                Err(now) => prev = now,
            }
        }
    }
}

/// A local limit: one GCRA budget per key, in a bounded store.
pub struct LocalLimiter {
    gcra: Gcra,
    limiter: RateLimiter<u64, BoundedStore, MonotonicClock, StateInformationMiddleware>,
    store: BoundedStore,
    clock: MonotonicClock,
}

impl LocalLimiter {
    /// A limiter of `gcra` holding at most `max_keys` keys.
    pub fn new(gcra: Gcra, max_keys: usize) -> LocalLimiter {
        let quota = Quota::with_period(gcra.interval.max(Duration::from_nanos(1)))
            .expect("a positive period")
            .allow_burst(NonZeroU32::new(gcra.burst.max(1)).expect("positive"));
        let clock = MonotonicClock;
        let store = BoundedStore::new(max_keys);
        let limiter = RateLimiter::<u64, BoundedStore, MonotonicClock, governor::middleware::NoOpMiddleware<std::time::Instant>>::new(quota, store.clone(), clock.clone()).with_middleware::<StateInformationMiddleware>();
        LocalLimiter { gcra, limiter, store, clock }
    }

    /// Take `cost` units from `key`'s budget.
    pub fn acquire(&self, key: u64, cost: u32) -> Decision {
        let cost = NonZeroU32::new(cost.max(1)).expect("positive");
        let burst = u64::from(self.gcra.burst.max(1));
        match self.limiter.check_key_n(&key, cost) {
            Ok(Ok(snapshot)) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity()).min(burst);
                Decision { allowed: true, remaining, reset: self.gcra.interval * (burst - remaining) as u32, retry_after: Duration::ZERO }
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision { allowed: false, remaining: 0, reset: self.gcra.interval * self.gcra.burst.max(1), retry_after: wait }
            }
            // More than the burst can ever hold: refused for good; say when the budget is whole.
            Err(_) => Decision { allowed: false, remaining: 0, reset: self.gcra.interval * self.gcra.burst.max(1), retry_after: self.gcra.interval * self.gcra.burst.max(1) },
        }
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.store.len()
    }

    /// The most keys the store holds.
    pub fn max_keys(&self) -> u64 {
        self.store.capacity()
    }

    /// The GCRA parameters.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }
}
