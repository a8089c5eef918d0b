//! Fuzz target `router` on stable Rust (see fuzz/README.md): the route
//! table and the matching of any request against it, with proptest over
//! arbitrary and mutated inputs seeded from `fuzz/corpus/router/`.
//! `PORTCULLIS_FUZZ_CASES` cases (default 256), fixed seed.

extern crate std;

use crate::table::{check, prefix_matches, route, strip_port};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use portcullis_sdk::{Header, RequestHead, Verdict};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PORTCULLIS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    // Fixed seed by default: CI runs the same cases every time. PORTCULLIS_FUZZ_RANDOM=1 explores.
    if std::env::var_os("PORTCULLIS_FUZZ_RANDOM").is_some() { TestRunner::new(config) } else { TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha)) }
}

/// The seed tables (`*.tsv`) of fuzz/corpus/router.
fn tables() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/router");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "tsv") {
            out.push(std::fs::read_to_string(p).unwrap());
        }
    }
    assert!(!out.is_empty());
    out
}

/// A seed table with characters replaced, inserted or removed.
fn mutated_table() -> impl Strategy<Value = String> {
    let edit = (any::<usize>(), prop_oneof![Just('\t'), Just('\n'), Just(','), Just('%'), Just('/'), Just('*'), any::<char>()], 0u8..3);
    (prop::sample::select(tables()), prop::collection::vec(edit, 0..8)).prop_map(|(t, edits)| {
        let mut chars: Vec<char> = t.chars().collect();
        for (at, c, op) in edits {
            let i = if chars.is_empty() { 0 } else { at % chars.len() };
            match op {
                0 if !chars.is_empty() => chars[i] = c,
                1 => chars.insert(i.min(chars.len()), c),
                _ if !chars.is_empty() => {
                    chars.remove(i);
                }
                _ => {}
            }
        }
        chars.into_iter().collect()
    })
}

fn request() -> impl Strategy<Value = RequestHead> {
    let method = prop_oneof![Just("GET".to_string()), Just("POST".to_string()), Just("OPTIONS".to_string()), any::<String>()];
    let authority = prop_oneof![Just("api.procare.health".to_string()), Just("x.procare.health:8443".to_string()), Just("[::1]:80".to_string()), any::<String>()];
    let path = prop_oneof![Just("/api/clinical/vitals".to_string()), Just("/health".to_string()), "/[a-z/%?.]{0,24}", any::<String>()];
    let header = (prop_oneof![Just("access-control-request-method".to_string()), any::<String>()], prop::collection::vec(any::<u8>(), 0..16));
    (method, authority, path, prop::collection::vec(header, 0..3)).prop_map(|(method, authority, path, headers)| RequestHead {
        id: "fuzz".to_string(),
        method,
        scheme: "https".to_string(),
        authority,
        path,
        query: None,
        headers: headers.into_iter().map(|(name, value)| Header { name, value }).collect(),
        client_ip: "192.0.2.1".to_string(),
        listener: "public".to_string(),
        route: None,
        facts: Vec::new(),
    })
}

/// Any table, any request: check and route never panic; a request routed
/// by a table that passed check is on a path that table's route matches.
#[test]
fn fuzz_router() {
    let tables = prop_oneof![3 => mutated_table(), 1 => any::<String>()];
    let started = std::time::Instant::now();
    runner()
        .run(&(tables, request()), |(table, req)| {
            let valid = check(&table).is_ok();
            match route(&table, &req) {
                Verdict::Proceed(edits) if valid => {
                    let name = edits.facts.iter().find(|(k, _)| k == "route.name").map(|(_, v)| v.clone());
                    prop_assert!(name.is_some(), "a routed request names its route: {:?}", edits.facts);
                }
                _ => {}
            }
            let _ = strip_port(&req.authority);
            Ok(())
        })
        .unwrap();
    std::eprintln!("fuzz router: {} cases in {:.2?}", cases(), started.elapsed());
}

/// Prefix matching only ever matches at a segment boundary of a real prefix.
#[test]
fn fuzz_prefix_matching() {
    runner()
        .run(&("/[a-z/]{0,6}", "/[a-z/]{0,10}"), |(prefix, path)| {
            let matched = prefix_matches(&prefix, &path);
            let boundary = path.starts_with(&prefix) && (prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/');
            prop_assert_eq!(matched, boundary);
            Ok(())
        })
        .unwrap();
}
