//! Fuzz target `jwt-token` on stable Rust (see fuzz/README.md): finding
//! the token in a request and taking it apart, with proptest over arbitrary
//! and mutated bytes seeded from `fuzz/corpus/jwt-token/`.
//! `PORTCULLIS_FUZZ_CASES` cases (default 256), fixed seed.

use crate::token::{self, MAX_KID, Source};
use portcullis_sdk::{Header, RequestHead};
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

fn seeds() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/jwt-token");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    out.sort();
    assert!(!out.is_empty());
    out
}

/// Seeds with bytes flipped, inserted or removed, or arbitrary bytes.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<usize>(), prop_oneof![Just(b'.'), Just(b'='), Just(b' '), any::<u8>()], 0u8..3);
    let mutated = (prop::sample::select(seeds()), prop::collection::vec(edit, 0..6)).prop_map(|(mut s, edits)| {
        for (at, b, op) in edits {
            let i = if s.is_empty() { 0 } else { at % s.len() };
            match op {
                0 if !s.is_empty() => s[i] = b,
                1 => s.insert(i.min(s.len()), b),
                _ if !s.is_empty() => {
                    s.remove(i);
                }
                _ => {}
            }
        }
        s
    });
    prop_oneof![4 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..512)]
}

fn request(authorization: Option<Vec<u8>>, cookie: Option<Vec<u8>>) -> RequestHead {
    let mut headers = Vec::new();
    if let Some(v) = authorization {
        headers.push(Header { name: "authorization".into(), value: v });
    }
    if let Some(v) = cookie {
        headers.push(Header { name: "cookie".into(), value: v });
    }
    RequestHead {
        id: "fuzz".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.procare.health".into(),
        path: "/".into(),
        query: None,
        headers,
        client_ip: "192.0.2.1".into(),
        listener: "public".into(),
        route: None,
        facts: Vec::new(),
    }
}

/// Any Authorization or Cookie bytes: extract never panics, and a token it
/// finds is a non-empty part of what was sent. Any token text: parse never
/// panics, never accepts `alg: none`, a JWE, an unsafe `kid` or an oversized token.
#[test]
fn fuzz_jwt_token() {
    let started = std::time::Instant::now();
    let input = (bytes(), prop_oneof![Just(0u8), Just(1u8), Just(2u8)]);
    runner()
        .run(&input, |(bytes, shape)| {
            let (auth, cookie) = match shape {
                0 => (Some([b"Bearer ".as_slice(), &bytes].concat()), None),
                1 => (None, Some([b"session=".as_slice(), &bytes].concat())),
                _ => (Some(bytes.clone()), Some(bytes.clone())),
            };
            let req = request(auth.clone(), cookie.clone());
            if let Ok(Some((found, source))) = token::extract(&req, Some("session")) {
                prop_assert!(!found.is_empty());
                let sent = match source {
                    Source::Header => auth.unwrap_or_default(),
                    Source::Cookie => cookie.unwrap_or_default(),
                };
                prop_assert!(sent.windows(found.len()).any(|w| w == found.as_bytes()), "the token is part of what was sent");
            }
            let text = String::from_utf8_lossy(&bytes);
            for max in [64usize, 8192] {
                if let Ok(parsed) = token::parse(&text, max) {
                    prop_assert!(text.len() <= max);
                    prop_assert_eq!(text.split('.').count(), 3);
                    prop_assert!(parsed.kid.as_deref().is_none_or(|k| token::valid_kid(k) && k.len() <= MAX_KID && !k.contains("..")));
                }
            }
            Ok(())
        })
        .unwrap();
    std::eprintln!("fuzz jwt-token: {} cases in {:.2?}", cases(), started.elapsed());
}
