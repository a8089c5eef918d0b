//! Micro-benchmark: what the policy chain adds to a request, in µs.
//!
//! For each policy: Store::new + instantiate + `on-request` + drop, in a
//! loop on one thread (the fresh-instance path every request takes), and the
//! same for the whole chain (router + the route's policies, as the request
//! path runs them). Run with `bench/chain-cost` (release build).
//!
//! Usage: chain [iterations]   (default 100000)

use portcullis::config::{self, Source};
use portcullis::runtime::bindings::types;
use portcullis::runtime::{PolicyState, hooks};
use portcullis::snapshot::{Link, Snapshot};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    // `cargo bench` appends `--bench` to the arguments: flags are not ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let iterations: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    // Optional second argument: run only the policy rows whose name contains it (for profiling).
    let only = args.get(1).cloned();
    FILTER.set(only).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run(iterations));
}

static FILTER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// A row runs when its name contains the filter, or equals it after `=`.
fn selected(name: &str) -> bool {
    FILTER.get().and_then(|f| f.as_deref()).is_none_or(|f| match f.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(f),
    })
}

fn config_text() -> String {
    let test_policy = env!("PORTCULLIS_TEST_POLICY_WASM");
    format!(
        r#"
{runtime}
[[listeners]]
name = "public"
address = "127.0.0.1:0"

[policies.router]
component = "builtin:router"

[policies.stamp]
component = "{test_policy}"
settings = {{ mode = "header", name = "x-stamp", value = "v1" }}

[policies.facts]
component = "{test_policy}"
settings = {{ mode = "facts", namespace = "facts" }}

[[pools]]
name = "clinical"
targets = ["127.0.0.1:9"]

{routes}
[[routes]]
name = "clinical"
hosts = ["api.procare.health"]
path = "/api/clinical"
methods = ["GET", "POST"]
pools = ["clinical"]
chain = ["stamp", "facts"]
facts = {{ roles = ["doctor", "caregiver"], residency-class = "health" }}
"#,
        // Six more routes, so the router works through a realistic table (the ProCare services).
        routes = ["engagement", "lifestyle", "insights", "doctor", "care", "library"]
            .iter()
            .map(|r| format!("[[routes]]\nname = \"{r}\"\npath = \"/api/{r}\"\npools = [\"clinical\"]\n"))
            .collect::<String>(),
        // Profiling under valgrind: its address space holds only a small pool.
        runtime = std::env::var("PORTCULLIS_BENCH_INSTANCES").map(|n| format!("[runtime]\nmax_instances = {n}\n")).unwrap_or_default(),
    )
}

fn head() -> types::RequestHead {
    let h = |n: &str, v: &str| types::Header { name: n.into(), value: v.as_bytes().to_vec() };
    types::RequestHead {
        id: "0193a5c2e4b17c3f9d2e8a6b5c4d3e2f".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.procare.health".into(),
        path: "/api/clinical/patients/42/vitals".into(),
        query: Some("since=2026-11-01".into()),
        headers: vec![
            h("host", "api.procare.health"),
            h("user-agent", "Mozilla/5.0 (X11; Linux x86_64) ProCare-Dashboard/3.2"),
            h("accept", "application/json"),
            h("accept-encoding", "gzip, br"),
            h("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkb2N0b3ItNyJ9.c2lnbmF0dXJl"),
            h("x-forwarded-for", "203.0.113.9"),
            h("x-forwarded-proto", "https"),
            h("x-request-id", "0193a5c2e4b17c3f9d2e8a6b5c4d3e2f"),
        ],
        client_ip: "203.0.113.9".into(),
        listener: "public".into(),
        route: None,
        facts: vec![],
    }
}

async fn once(snap: &Snapshot, link: &Link, head: &types::RequestHead) -> types::Verdict {
    let p = &link.policy;
    let state = PolicyState::new(p.name.clone(), "bench".into(), p.settings.clone(), link.overrides.clone(), snap.runtime.memory_cap(), snap.services.clone());
    hooks::on_request(&snap.runtime, &p.module, state, head).await.0.expect("policy call")
}

async fn run(iterations: u32) {
    let dir = tempfile_dir();
    let path = dir.join("bench.toml");
    std::fs::write(&path, config_text()).unwrap();
    let source = Source::read(&path).unwrap();
    // The config is read; the directory is not needed past this point.
    let _ = std::fs::remove_dir_all(&dir);
    config::validate(&source, &config::parse(&source).unwrap()).unwrap();
    let snap = Arc::new(portcullis::serve::load(&source).await.unwrap_or_else(|e| panic!("{e}")));
    let route = &snap.routes["clinical"];

    let mut routed = head();
    routed.route = Some("clinical".into());
    routed.facts = vec![("route.name".into(), "clinical".into()), ("route.pools".into(), "clinical".into())];

    println!("fresh instance per call: Store::new + instantiate + on-request + drop ({iterations} iterations, one thread)");
    println!("| policy | µs per call |");
    println!("|---|---|");
    let mut total = 0.0;
    let mut bare = routed.clone();
    bare.headers.clear();
    for (name, link, h) in [
        ("router (7 routes)", &snap.router, head()),
        ("test-policy header", &route.chain[0], routed.clone()),
        ("test-policy facts", &route.chain[1], routed.clone()),
        ("test-policy header, head without headers", &route.chain[0], bare),
    ] {
        if !selected(name) {
            continue;
        }
        // Warm up: page in the pool slots and code.
        for _ in 0..1000 {
            once(&snap, link, &h).await;
        }
        let start = Instant::now();
        for _ in 0..iterations {
            std::hint::black_box(once(&snap, link, &h).await);
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
        total += us;
        println!("| {name} | {us:.2} |");
    }
    if FILTER.get().is_some_and(Option::is_some) {
        return;
    }
    // The floor: Store::new alone, and Store::new + instantiate + drop with no call.
    let state = || PolicyState::new(snap.router.policy.name.clone(), "bench".into(), snap.router.policy.settings.clone(), None, snap.runtime.memory_cap(), snap.services.clone());
    let start = Instant::now();
    for _ in 0..iterations {
        snap.runtime.store_only(state());
    }
    println!("| (floor) Store::new + drop | {:.2} |", start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations));
    let start = Instant::now();
    for _ in 0..iterations {
        snap.runtime.instantiate_only(&snap.router.policy.module, state()).unwrap();
    }
    println!("| (floor) Store::new + instantiate router + drop, no call | {:.2} |", start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations));
    // wasmtime's own floor on this machine: the least a component with a
    // memory can be (one core instance, one 64 KiB page, nothing else).
    let empty = wat::parse_str(r#"(component (core module $m (memory (export "memory") 1)) (core instance (instantiate $m)))"#).unwrap();
    let pre = snap.runtime.bare(&empty).unwrap();
    let start = Instant::now();
    for _ in 0..iterations {
        snap.runtime.instantiate_bare(&pre, state()).unwrap();
    }
    println!("| (floor) Store::new + instantiate + drop of an empty component (one core instance, one page) | {:.2} |", start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations));
    // The whole chain as the request path runs it: router, then the route's policies in order.
    let start = Instant::now();
    for _ in 0..iterations {
        let mut h = head();
        if let types::Verdict::Proceed(e) = once(&snap, &snap.router, &h).await {
            h.facts.extend(e.facts);
        }
        h.route = Some("clinical".into());
        for link in &route.chain {
            if let types::Verdict::Proceed(e) = once(&snap, link, &h).await {
                h.facts.extend(e.facts);
            }
        }
    }
    let chain_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    println!("| sum of the three | {total:.2} |");
    println!("| whole chain (router + 2 policies, head rebuilt per request) | {chain_us:.2} |");
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
