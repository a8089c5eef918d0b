//! Fuzz targets of the host, on stable Rust: property tests over arbitrary
//! and mutated inputs (proptest), seeded from `fuzz/corpus/<target>/`.
//!
//! - `config`: `config::parse` + `config::validate` on any TOML text;
//! - `head`: request-head headers into the WIT types and back, any bytes;
//! - `audit_segment`: the reader behind `audit verify` on any segment file.
//!
//! Each runs `PORTCULLIS_FUZZ_CASES` cases (default 256) in the normal test
//! suite; raise it for a long run (see fuzz/README.md).

use portcullis::audit::format;
use portcullis::audit::verify::{self, Keys};
use portcullis::audit::{LogOptions, LogWriter};
use portcullis::config::{self, Source};
use portcullis::proxy::respond;
use portcullis::runtime::bindings::types;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn cases() -> u32 {
    std::env::var("PORTCULLIS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    // Fixed seed by default: CI runs the same cases every time. PORTCULLIS_FUZZ_RANDOM=1 explores.
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    if std::env::var_os("PORTCULLIS_FUZZ_RANDOM").is_some() { TestRunner::new(config) } else { TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha)) }
}

/// The seed corpus of `target`: every file in fuzz/corpus/<target>/.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!seeds.is_empty(), "empty corpus {}", dir.display());
    seeds
}

/// One edit of a byte string: what a mutation-based fuzzer does.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), 1usize..128).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ];
    prop::collection::vec(edit, 1..8)
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Flip(i, b) if !out.is_empty() => {
                let i = i % out.len();
                out[i] ^= b | 1;
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, bytes) => {
                let i = at(*i, out.len());
                out.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i, out.len());
                let end = (i + n).min(out.len());
                out.drain(i..end);
            }
            Edit::Duplicate(i, n) => {
                let i = at(*i, out.len());
                let end = (i + n).min(out.len());
                let copy = out[i..end].to_vec();
                out.splice(end..end, copy);
            }
        }
    }
    out
}

/// Inputs for a target: the seeds as they are, mutated seeds, and arbitrary bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (prop::sample::select(seeds), edits()).prop_map(|(s, e)| mutate(&s, &e)),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

/// Run `check` on every seed, then on `cases()` generated inputs; report executions per second.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) {
    for (i, s) in seeds.iter().enumerate() {
        check(s).unwrap_or_else(|e| panic!("{target}: seed {i}: {e}"));
    }
    let started = Instant::now();
    let mut runner = runner();
    let result = runner.run(&inputs(seeds), |input| check(&input));
    let elapsed = started.elapsed();
    eprintln!("fuzz {target}: {} cases in {:.2?} ({:.0}/s)", cases(), elapsed, f64::from(cases()) / elapsed.as_secs_f64().max(1e-9));
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
}

/// The config loader never panics; every error names the file, and a line
/// and column that lie inside the text.
#[test]
fn fuzz_config() {
    let mut seeds = corpus("config");
    for dir in ["../policies", "../tests/configs/bad"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                seeds.push(std::fs::read(p).unwrap());
            }
        }
    }
    fuzz("config", seeds, |bytes| {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let lines = text.lines().count().max(1);
        let source = Source { file: PathBuf::from("fuzz.toml"), base_dir: PathBuf::from("/nonexistent"), text };
        let errors = match config::parse(&source) {
            Ok(cfg) => match config::validate(&source, &cfg) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            Err(e) => e,
        };
        prop_assert!(!errors.0.is_empty());
        for e in &errors.0 {
            prop_assert!(e.to_string().starts_with("fuzz.toml"));
            if let Some((line, col)) = e.line_col {
                prop_assert!(line >= 1 && line <= lines + 1 && col >= 1, "{e}");
            }
        }
        Ok(())
    });
}

/// Headers from any bytes: those the gateway accepts cross into the WIT
/// types and back unchanged; what a policy hands back is either refused or
/// exactly the bytes it gave, never a value carrying CR, LF or NUL.
#[test]
fn fuzz_head() {
    fuzz("head", corpus("head"), |bytes| {
        // One header per line, name and value split at the first ':'.
        let mut map = http::HeaderMap::new();
        let mut given: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for line in bytes.split(|b| *b == b'\n') {
            let (name, value) = match line.iter().position(|b| *b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &b""[..]),
            };
            given.push((name.to_vec(), value.to_vec()));
            if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        let wit = respond::wit_headers(&map);
        prop_assert_eq!(wit.len(), map.len());
        // Back: set-headers replaces by name, so the last value of each name stands.
        let mut back = http::HeaderMap::new();
        prop_assert!(respond::set_headers(&mut back, &wit).is_ok());
        for name in map.keys() {
            prop_assert_eq!(back.get(name), map.get_all(name).iter().next_back());
        }
        // A policy's headers, any name and any bytes.
        for (name, value) in given {
            let name = String::from_utf8_lossy(&name).into_owned();
            let h = types::Header { name: name.clone(), value: value.clone() };
            match respond::header_pair(&h.name, &h.value) {
                Ok((n, v)) => {
                    prop_assert_eq!(n.as_str(), name.to_ascii_lowercase());
                    prop_assert_eq!(v.as_bytes(), &value[..]);
                    prop_assert!(!value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)), "a value with CR/LF/NUL was accepted");
                }
                Err(why) => prop_assert!(why.contains("header")),
            }
        }
        Ok(())
    });
}

const SEGMENT: &str = "segment-00000000000000000000.jsonl";

/// A real, sealed evidence log of a few records (what `audit verify` reads).
fn real_segment() -> (Vec<u8>, Keys) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        dir: dir.path().to_path_buf(),
        segment_max_bytes: 1 << 20,
        segment_max_age: Duration::from_secs(3600),
        checkpoint_interval: Duration::from_millis(20),
        async_flush: Duration::from_millis(20),
        key: key.clone(),
    };
    let w = LogWriter::open(opts).unwrap();
    for i in 0..5 {
        let record = serde_json::json!({"time": "2026-11-24T12:00:00.000Z", "id": format!("req-{i}"), "method": "GET", "host": "app.example", "path": "/x", "status": 200, "source": "upstream", "verdicts": [["router", "proceed"]], "bytes_in": 0, "bytes_out": 2, "duration_us": 10, "outcome": "ok"});
        assert!(w.append(serde_json::to_vec(&record).unwrap()));
    }
    w.close();
    let segments = format::list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), 1);
    let k = key.verifying_key();
    (std::fs::read(&segments[0].1).unwrap(), Keys([(format::key_id(&k), k)].into_iter().collect()))
}

/// `audit verify` on any segment file: never panics; the real log verifies;
/// a changed byte in any record line is reported, never passed.
#[test]
fn fuzz_audit_segment() {
    let (real, keys) = real_segment();
    if let Some(dir) = std::env::var_os("PORTCULLIS_FUZZ_SAVE_SEEDS") {
        std::fs::write(Path::new(&dir).join("sealed-5-records.jsonl"), &real).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SEGMENT);
    let verify = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        verify::verify_dir(dir.path(), &keys)
    };
    assert!(verify(&real).is_ok(), "the real log verifies: {:?}", verify(&real).err());
    let mut seeds = corpus("audit-segment");
    seeds.push(real.clone());
    fuzz("audit_segment", seeds, |bytes| {
        let _ = verify(bytes);
        Ok(())
    });
    // Targeted: flip one byte of one record line.
    let record_lines: Vec<(usize, usize)> = {
        let mut out = Vec::new();
        let mut start = 0;
        for line in real.split_inclusive(|b| *b == b'\n') {
            if line.windows(8).any(|w| w == b"\"id\":\"re") {
                out.push((start, line.len() - 1));
            }
            start += line.len();
        }
        out
    };
    assert!(!record_lines.is_empty());
    let mut runner = runner();
    let result = runner.run(&(prop::sample::select(record_lines), any::<usize>(), 1u8..=255), |((start, len), at, x)| {
        let mut bytes = real.clone();
        bytes[start + at % len] ^= x;
        prop_assert!(verify(&bytes).is_err(), "an edited record passed verification");
        Ok(())
    });
    result.unwrap();
}
