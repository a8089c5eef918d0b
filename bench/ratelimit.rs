//! Rate-limit decisions per second, local (governor over the bounded store)
//! and shared (the Lua GCRA script on a real `redis-server` on loopback),
//! and the latency one Redis decision adds to a request.
//!
//! ```sh
//! cargo bench --profile perf -p portcullis --bench ratelimit [-- DECISIONS]
//! ```
//!
//! Measures the host side the rate-limit policy calls (`rate-acquire`), not
//! the wasm call around it (bench/chain.rs measures that).

use portcullis::config::Config;
use portcullis::ratelimit::Limits;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn limits(text: &str) -> Limits {
    let config: Config = toml::from_str(text).expect("bench config");
    Limits::build(&config, None).expect("limits")
}

fn key(i: u64) -> String {
    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let n: u64 = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Redis connections are made on the runtime they will run on.
    let _runtime = rt.enter();

    // Local: 10,000 clients at 10 r/s burst 20, a store of 100,000 keys.
    let local = Arc::new(limits("[[limits]]\nname = \"per-ip\"\nrate = 10\nper = \"1s\"\nburst = 20\n"));
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let _ = local.acquire("per-ip", &key(i % 10_000), 1, |k| k.to_string()).await.unwrap();
        }
    });
    let one = started.elapsed();
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..2u64)
            .map(|t| {
                let local = local.clone();
                tokio::spawn(async move {
                    for i in 0..n / 2 {
                        let _ = local.acquire("per-ip", &key((i * 2 + t) % 10_000), 1, |k| k.to_string()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let two = started.elapsed();
    println!("local:  {:>9.0} decisions/s on one thread ({:.2} µs each), {:>9.0} decisions/s on two", n as f64 / one.as_secs_f64(), one.as_secs_f64() * 1e6 / n as f64, n as f64 / two.as_secs_f64());

    // Shared: a real redis-server on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup test installs it)");
    std::thread::sleep(Duration::from_millis(300));
    let shared = Arc::new(limits(&format!(
        "[gateway]\npseudonym_key_file = \"k\"\n[[limits]]\nname = \"per-ip\"\nrate = 10\nper = \"1s\"\nburst = 20\nshared = true\n[shared_limits]\nredis = \"redis://127.0.0.1:{port}/0\"\ntimeout_ms = 1000\n"
    )));
    let m = (n / 10).max(1000);
    let mut lat = Vec::with_capacity(m as usize);
    rt.block_on(async {
        // Warm up: the connection and the script cache.
        for i in 0..100 {
            shared.acquire("per-ip", &key(i), 1, |k| k.to_string()).await.unwrap();
        }
        for i in 0..m {
            let t = Instant::now();
            let o = shared.acquire("per-ip", &key(i % 10_000), 1, |k| k.to_string()).await.unwrap();
            lat.push(t.elapsed());
            assert_eq!(o.source.as_str(), "shared");
        }
    });
    lat.sort();
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    for i in 0..m / 64 {
                        let _ = shared.acquire("per-ip", &key((i * 64 + t) % 10_000), 1, |k| k.to_string()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let conc = started.elapsed();
    println!(
        "redis:  one decision p50 {:.0} µs, p99 {:.0} µs (sequential, {m}); {:>7.0} decisions/s with 64 in flight",
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
        (m / 64 * 64) as f64 / conc.as_secs_f64()
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
