//! Audit log throughput: records per second written in `async` and
//! `durable` mode through the writer library (the same `LogWriter` the
//! gateway uses), and the fsyncs group commit needed.
//!
//! ```sh
//! cargo bench --profile perf -p portcullis --bench audit [-- SECONDS_PER_ROW]
//! ```
//!
//! The log lives under `target/` (the same disk as a deployment's would on
//! this machine). Each record is a typical request record serialized on the
//! calling thread, as the request path does.

use portcullis::audit::{Line, LogOptions, LogWriter, Record};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn record(i: u64) -> Vec<u8> {
    let mut policies = BTreeMap::new();
    policies.insert("jwt-auth".to_string(), BTreeMap::from([("sub".to_string(), "p:7f3a9c0e12d4b5a6".to_string()), ("roles".to_string(), "doctor".to_string())]));
    let r = Record {
        time: "2026-11-30T12:00:00.123Z".into(),
        id: format!("{i:032x}"),
        chain: "a1b2c3d4e5f6".into(),
        listener: "public".into(),
        client_ip: "203.0.113.9".into(),
        method: "GET".into(),
        host: "api.procare.health".into(),
        path: "/api/clinical/vitals".into(),
        route: Some("clinical".into()),
        status: 200,
        source: "upstream".into(),
        verdicts: vec![("router".into(), "proceed".into()), ("jwt-auth".into(), "proceed".into())],
        policies,
        upstream: Some("clinical-monitor/10.0.1.5:8000".into()),
        region: Some("fsn1".into()),
        error: None,
        bytes_in: 0,
        bytes_out: 1834,
        duration_us: 912,
        outcome: "ok".into(),
        phase: None,
        origin: None,
    };
    serde_json::to_vec(&Line::Request(Box::new(r))).unwrap()
}

fn options(dir: &std::path::Path) -> LogOptions {
    LogOptions {
        dir: dir.to_path_buf(),
        segment_max_bytes: 64 << 20,
        segment_max_age: Duration::from_secs(3600),
        checkpoint_interval: Duration::from_secs(30),
        async_flush: Duration::from_secs(1),
        key: ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
    }
}

struct Row {
    name: String,
    records: u64,
    secs: f64,
    commit_fsyncs: u64,
    fsyncs: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
}

fn async_row(secs: f64) -> Row {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let w = LogWriter::open(options(dir.path())).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            // Stay under the queue's bound (past it, async records are dropped).
            while w.queued() > 50_000 {
                std::thread::sleep(Duration::from_micros(100));
            }
            assert!(w.append(record(n)));
            n += 1;
        }
    }
    w.close(); // everything written, fsynced and sealed
    let elapsed = start.elapsed().as_secs_f64();
    let s = w.stats();
    assert_eq!(s.dropped.load(Ordering::Relaxed), 0, "no record dropped");
    Row { name: "async, 1 producer".into(), records: n, secs: elapsed, commit_fsyncs: s.commit_fsyncs.load(Ordering::Relaxed), fsyncs: s.fsyncs.load(Ordering::Relaxed), p50_us: None, p99_us: None }
}

fn durable_row(secs: f64, concurrency: usize) -> Row {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let w = LogWriter::open(options(dir.path())).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let base_commits = w.stats().commit_fsyncs.load(Ordering::Relaxed);
    let base_fsyncs = w.stats().fsyncs.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut latencies: Vec<u64> = rt.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (w, count) = (w.clone(), count.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let began = Instant::now();
                        w.append_durable(record((t as u64) << 32 | i)).await.unwrap().unwrap();
                        lat.push(began.elapsed().as_micros() as u64);
                        count.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    let s = w.stats();
    let row = Row {
        name: format!("durable, {concurrency} concurrent"),
        records: count.load(Ordering::Relaxed),
        secs: elapsed,
        commit_fsyncs: s.commit_fsyncs.load(Ordering::Relaxed) - base_commits,
        fsyncs: s.fsyncs.load(Ordering::Relaxed) - base_fsyncs,
        p50_us: None,
        p99_us: None,
    };
    latencies.sort_unstable();
    let pick = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied();
    w.close();
    Row { p50_us: pick(0.5), p99_us: pick(0.99), ..row }
}

fn main() {
    let secs: f64 = std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    println!("audit log throughput, {secs} s per row (record ≈ {} bytes as JSON)\n", record(0).len() + 90);
    println!("| mode | records/s | commit fsyncs/s | records per commit fsync | all fsyncs/s | ack p50 µs | ack p99 µs |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = vec![async_row(secs)];
    for c in [1, 8, 64, 256] {
        rows.push(durable_row(secs, c));
    }
    for r in rows {
        let per_commit = if r.commit_fsyncs > 0 { format!("{:.1}", r.records as f64 / r.commit_fsyncs as f64) } else { "-".into() };
        let us = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        println!(
            "| {} | {:.0} | {:.0} | {} | {:.0} | {} | {} |",
            r.name,
            r.records as f64 / r.secs,
            r.commit_fsyncs as f64 / r.secs,
            per_commit,
            r.fsyncs as f64 / r.secs,
            us(r.p50_us),
            us(r.p99_us)
        );
    }
}
