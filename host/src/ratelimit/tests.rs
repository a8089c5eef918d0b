//! The limits as a library: periods, GCRA answers, the store's bound in keys
//! and in bytes (a counting allocator, this thread only), carry-over.

use super::local::{Gcra, LocalLimiter};
use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes live on the current thread (tests run one per thread).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() + layout.size() as isize));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LIVE.try_with(|l| l.set(l.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

#[test]
fn periods_parse_with_units_and_names() {
    assert_eq!(parse_period("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_period("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_period("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_period("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_period("1d"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_period("minute"), Ok(Duration::from_secs(60)));
    assert!(parse_period("0s").is_err());
    assert!(parse_period("1w").unwrap_err().contains("unknown unit"));
    assert!(parse_period("fortnight").is_err());
    assert!(parse_period("").is_err());
}

#[test]
fn a_burst_of_twenty_at_ten_per_second_allows_twenty_then_says_when() {
    let l = LocalLimiter::new(Gcra { interval: Duration::from_millis(100), burst: 20 }, 100);
    for i in 0..20 {
        let d = l.acquire(7, 1);
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 19 - i, "request {i}");
    }
    let refused = l.acquire(7, 1);
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100), "{:?}", refused.retry_after);
    // Another key has its own budget; a cost above the burst never fits.
    assert!(l.acquire(8, 20).allowed);
    assert!(!l.acquire(9, 21).allowed);
}

#[test]
fn a_million_distinct_keys_stay_within_the_stated_bound() {
    const MAX_KEYS: usize = 100_000;
    /// The bound the README states: bytes per key of the store, all included.
    const BYTES_PER_KEY: isize = 160;
    let start = live();
    // One unit back per hour: the hot key's budget below cannot refill
    // while the test runs, however slowly a loaded machine runs it.
    let l = LocalLimiter::new(Gcra { interval: Duration::from_secs(3600), burst: 20 }, MAX_KEYS);
    let mut peak = 0;
    for key in 0..1_000_000u64 {
        assert!(l.acquire(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), 1).allowed);
        if key % 10_000 == 0 {
            peak = peak.max(live() - start);
        }
    }
    peak = peak.max(live() - start);
    assert!(l.keys() <= MAX_KEYS, "{} keys held", l.keys());
    eprintln!("1,000,000 keys through a store of {MAX_KEYS}: {} held, peak {} bytes ({} per key of the bound)", l.keys(), peak, peak / MAX_KEYS as isize);
    assert!(peak <= BYTES_PER_KEY * MAX_KEYS as isize, "peak {peak} bytes > {BYTES_PER_KEY} per key");
    // A key that keeps coming stays tracked through a flood of one-off keys.
    let hot = u64::MAX;
    for _ in 0..20 {
        l.acquire(hot, 1);
    }
    for key in 0..300_000u64 {
        l.acquire(key ^ 0x5555, 1);
        if key % 1000 == 0 {
            l.acquire(hot, 1);
        }
    }
    assert!(!l.acquire(hot, 1).allowed, "the hot key was forgotten in the flood");
}

fn config(text: &str) -> Config {
    toml::from_str(&format!("[[listeners]]\nname = \"p\"\naddress = \"127.0.0.1:0\"\n{text}")).unwrap()
}

async fn take(limits: &Limits, name: &str) -> bool {
    limits.acquire(name, "k", 1, |k| k.to_string()).await.unwrap().decision.allowed
}

#[tokio::test]
async fn a_rebuild_keeps_unchanged_limits_and_their_counts() {
    let a = config("[[limits]]\nname = \"per-ip\"\nrate = 2\nper = \"1h\"\n[[limits]]\nname = \"other\"\nrate = 2\nper = \"1h\"\n");
    let limits = Limits::build(&a, None).unwrap();
    assert!(take(&limits, "per-ip").await && take(&limits, "per-ip").await);
    assert!(!take(&limits, "per-ip").await);
    assert!(take(&limits, "other").await && take(&limits, "other").await);
    // Same per-ip; "other" changed: per-ip keeps its count, other starts afresh.
    let b = config("[[limits]]\nname = \"per-ip\"\nrate = 2\nper = \"1h\"\n[[limits]]\nname = \"other\"\nrate = 3\nper = \"1h\"\n");
    let next = Limits::build(&b, Some(&limits)).unwrap();
    assert!(!take(&next, "per-ip").await);
    assert!(take(&next, "other").await);
    assert_eq!(next.policy("other"), Some("\"other\";q=3;w=3600"));
    assert!(matches!(next.acquire("nope", "k", 1, |k| k.to_string()).await, Err(AcquireError::UnknownLimit(_))));
}
