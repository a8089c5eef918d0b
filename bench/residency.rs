//! Micro-benchmark: what the residency policy adds to a request, in µs.
//!
//! Store::new + instantiate + `on-request` + drop, on one thread, for the
//! residency component with the rules of `policies/regions.toml` and a
//! route with pools in two jurisdictions: `on-request` for a permitted
//! subject (narrowing), and for a refused one (the 451 problem+json). The
//! router row is the yardstick.
//!
//! Usage: `cargo bench --profile perf -p portcullis --bench residency -- [iterations]`

use portcullis::config::Source;
use portcullis::runtime::bindings::types;
use portcullis::runtime::{PolicyState, hooks};
use portcullis::snapshot::{Link, Snapshot};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    // `cargo bench` appends `--bench` to the arguments: flags are not ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let iterations: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run(iterations));
}

fn config_text() -> String {
    format!(
        r#"
[[listeners]]
name = "public"
address = "127.0.0.1:0"

[residency]
regions = "regions.toml"

[policies.router]
component = "builtin:router"

[policies.residency]
component = "{}"

[[pools]]
name = "clinical-monitor"
region = "fsn1"
targets = ["127.0.0.1:9"]

[[pools]]
name = "clinical-monitor-ash"
region = "ash"
targets = ["127.0.0.1:9"]

[[routes]]
name = "clinical"
hosts = ["api.procare.health"]
path = "/api/clinical"
pools = ["clinical-monitor", "clinical-monitor-ash"]
chain = ["residency"]
facts = {{ roles = ["doctor", "caregiver"], residency-class = "health" }}
"#,
        env!("PORTCULLIS_RESIDENCY_WASM")
    )
}

fn head(residency: &str) -> types::RequestHead {
    let h = |n: &str, v: &str| types::Header { name: n.into(), value: v.as_bytes().to_vec() };
    let f = |k: &str, v: &str| (k.to_string(), v.to_string());
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
            h("x-forwarded-for", "203.0.113.9"),
            h("x-forwarded-proto", "https"),
            h("x-request-id", "0193a5c2e4b17c3f9d2e8a6b5c4d3e2f"),
        ],
        client_ip: "203.0.113.9".into(),
        listener: "public".into(),
        route: Some("clinical".into()),
        facts: vec![
            f("route.name", "clinical"),
            f("route.pools", "clinical-monitor,clinical-monitor-ash"),
            f("route.roles", "doctor,caregiver"),
            f("route.residency-class", "health"),
            f("jwt.sub", "patient-42"),
            f("jwt.iss", "https://auth.procare.health/realms/procare"),
            f("jwt.roles", "patient"),
            f("jwt.region", residency),
            f("residency.pools", "clinical-monitor"),
            f("residency.subject", residency),
        ],
    }
}

fn state(snap: &Snapshot, link: &Link) -> PolicyState {
    let p = &link.policy;
    PolicyState::new(p.name.clone(), "bench".into(), p.settings.clone(), link.overrides.clone(), snap.runtime.memory_cap(), snap.services.clone())
}

async fn time(iterations: u32, mut f: impl AsyncFnMut()) -> f64 {
    for _ in 0..1000 {
        f().await;
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f().await;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

async fn run(iterations: u32) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-residency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let regions = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/regions.toml");
    std::fs::copy(regions, dir.join("regions.toml")).unwrap();
    std::fs::write(dir.join("bench.toml"), config_text()).unwrap();
    let source = Source::read(&dir.join("bench.toml")).unwrap();
    let snap = Arc::new(portcullis::serve::load(&source).await.unwrap_or_else(|e| panic!("{e}")));
    let _ = std::fs::remove_dir_all(&dir);
    let link = &snap.routes["clinical"].chain[0];
    println!("fresh instance per call: Store::new + instantiate + on-request + drop ({iterations} iterations, one thread)");
    println!("| call | µs per call |");
    println!("|---|---|");
    let mut routing = head("EU");
    routing.route = None;
    routing.facts.clear();
    let us = time(iterations, async || {
        std::hint::black_box(hooks::on_request(&snap.runtime, &snap.router.policy.module, state(&snap, &snap.router), &routing).await.0.unwrap());
    })
    .await;
    println!("| router (yardstick) | {us:.2} |");
    for (label, who, status) in [("residency on-request, EU patient (narrows to the EU pool)", "EU", None), ("residency on-request, IN patient (451 problem+json)", "IN", Some(451))] {
        let h = head(who);
        let us = time(iterations, async || {
            let v = hooks::on_request(&snap.runtime, &link.policy.module, state(&snap, link), &h).await.0.unwrap();
            assert_eq!(matches!(v, types::Verdict::Respond(ref r) if Some(r.status) == status), status.is_some());
            std::hint::black_box(v);
        })
        .await;
        println!("| {label} | {us:.2} |");
    }
}
