//! Data residency end to end: the real binary, jwt-auth verifying tokens
//! minted here (HS256, a secret written per test), the residency component,
//! and pools in several regions on loopback. Plus a property test of the
//! host's half (real components, random configurations and target health).

use crate::jwt::{Key, now};
use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The residency component (see components/residency).
pub const RESIDENCY: &str = env!("PORTCULLIS_RESIDENCY_WASM");
const JWT_AUTH: &str = crate::jwt::JWT_AUTH;
const ISS: &str = "procare-test";
const SECRET: &[u8] = b"procare-residency-test-secret-0123456789";

/// EU, US and IN; IN patients' health data may go to the EU only with
/// consent, and nowhere else: there is no rule for IN → IN here.
const REGIONS: &str = r#"
jurisdictions = ["EU", "US", "IN"]
classes = ["health", "public"]
[regions]
fsn1 = "EU"
nbg1 = "EU"
ash = "US"
in-mum = "IN"
[[rules]]
name = "eu-health"
subject = "EU"
class = "health"
allow = ["EU"]
[[rules]]
name = "us-health"
subject = "US"
class = "health"
allow = ["US"]
[[rules]]
name = "in-health-eu-with-consent"
subject = "IN"
class = "health"
allow = ["EU"]
consent = "eu-processing"
[[rules]]
name = "public-anywhere"
subject = "*"
class = "public"
allow = ["*"]
"#;

/// The upstreams: two EU pools (fsn1 with two targets, nbg1), one US pool,
/// and the public library in the US and India (no EU pool at all).
struct World {
    fsn1: [Upstream; 2],
    nbg1: Upstream,
    ash: Upstream,
    lib_ash: Upstream,
    lib_mum: Upstream,
}

impl World {
    async fn start() -> World {
        World {
            fsn1: [Upstream::start("records-fsn1-a").await, Upstream::start("records-fsn1-b").await],
            nbg1: Upstream::start("records-nbg1").await,
            ash: Upstream::start("records-ash").await,
            lib_ash: Upstream::start("library-ash").await,
            lib_mum: Upstream::start("library-mum").await,
        }
    }

    /// The gateway config. `eu_health`: extra pool keys for the EU pools
    /// (active health checks in the "EU down" test); `eu_targets`: their
    /// targets (a dead address there).
    fn config(&self, eu_targets: Option<[String; 3]>, eu_health: &str) -> String {
        let [a, b, n] = eu_targets.unwrap_or_else(|| [self.fsn1[0].addr.to_string(), self.fsn1[1].addr.to_string(), self.nbg1.addr.to_string()]);
        let mut c = config_head();
        c.push_str(&format!(
            r#"
# A shared 2-core machine under other builds can stall a policy call past
# the 100 ms default; these tests are about where requests go, not speed.
[runtime]
policy_deadline_ms = 5000

[residency]
regions = "regions.toml"

[policies.jwt]
component = "{JWT_AUTH}"
[policies.jwt.settings]
realm = "procare"
strip-authorization = true
[policies.jwt.settings.issuers.procare]
issuer = "{ISS}"
algorithms = ["HS256"]
audience = ["procare-api"]
region-claim = "residency"
consent-claim = "consent.residency"

[[jwks]]
issuer = "{ISS}"
secret_file = "hs256.key"
kid = "k1"

[policies.residency]
component = "{RESIDENCY}"

[[pools]]
name = "records-ash"
region = "ash"
targets = ["{}"]

[[pools]]
name = "records-fsn1"
region = "fsn1"
targets = ["{a}", "{b}"]
{eu_health}

[[pools]]
name = "records-nbg1"
region = "nbg1"
targets = ["{n}"]
{eu_health}

[[pools]]
name = "library-ash"
region = "ash"
targets = ["{}"]

[[pools]]
name = "library-mum"
region = "in-mum"
targets = ["{}"]

# The US pool first in the route's preference: only residency keeps EU data away from it.
[[routes]]
name = "records"
path = "/api/records"
pools = ["records-ash", "records-fsn1", "records-nbg1"]
chain = ["jwt", "residency"]
facts = {{ residency-class = "health" }}

[[routes]]
name = "library"
path = "/library"
pools = ["library-ash", "library-mum"]
chain = ["jwt", "residency"]
facts = {{ residency-class = "public" }}
[routes.settings.jwt]
mode = "anonymous"
"#,
            self.ash.addr, self.lib_ash.addr, self.lib_mum.addr
        ));
        c
    }

    fn eu_requests(&self) -> u64 {
        self.fsn1.iter().chain([&self.nbg1]).map(|u| u.requests.load(Ordering::SeqCst)).sum()
    }
}

fn start(config: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("regions.toml"), REGIONS).unwrap();
    std::fs::write(dir.path().join("hs256.key"), SECRET).unwrap();
    Gateway::start_in(dir, config)
}

/// A token for patient `sub` resident in `residency`, with these consents.
fn token(sub: &str, residency: &str, consents: &[&str]) -> String {
    let claims = json!({
        "iss": ISS, "sub": sub, "aud": "procare-api", "exp": now() + 600, "iat": now() - 5,
        "residency": residency, "consent": { "residency": consents },
    });
    format!("Bearer {}", Key::hs("k1", SECRET).sign(&claims))
}

/// The audit records of requests to `path` (records are written when each
/// response ends, so wait for `n` of them).
async fn records(gw: &Gateway, path: &str, n: usize) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(Duration::from_secs(30), || {
        found = gw.audit_records().into_iter().filter(|r| r["path"] == path).collect();
        found.len() >= n
    })
    .await;
    assert!(found.len() >= n, "{} audit records for {path}, expected {n}", found.len());
    found
}

#[tokio::test]
async fn an_eu_patients_requests_reach_only_eu_targets_over_10000_requests() {
    let w = World::start().await;
    let gw = start(&w.config(None, ""));
    let auth = token("patient-eu-1", "EU", &[]);
    let client = client();
    let url = gw.url("/api/records/eu-1");
    let mut tasks = tokio::task::JoinSet::new();
    const WORKERS: usize = 16;
    const TOTAL: usize = 10_000;
    for _ in 0..WORKERS {
        let (client, url, auth) = (client.clone(), url.clone(), auth.clone());
        tasks.spawn(async move {
            let mut services = BTreeSet::new();
            for _ in 0..TOTAL / WORKERS {
                let req = http::Request::get(&url).header("authorization", &auth).body(full("")).unwrap();
                let a = send(&client, req).await;
                assert_eq!(a.status, 200, "{}: {}", a.status, String::from_utf8_lossy(&a.body));
                services.insert(a.json()["service"].as_str().unwrap().to_string());
            }
            services
        });
    }
    let mut services = BTreeSet::new();
    while let Some(s) = tasks.join_next().await {
        services.extend(s.unwrap());
    }
    assert!(services.iter().all(|s| s.starts_with("records-fsn1") || s == "records-nbg1"), "{services:?}");
    assert_eq!(w.ash.requests.load(Ordering::SeqCst), 0, "the US pool, first in the route's preference, got nothing");
    assert_eq!(w.eu_requests(), TOTAL as u64);
    // Both fsn1 targets shared the load (the pool's round robin).
    assert!(w.fsn1.iter().all(|u| u.requests.load(Ordering::SeqCst) > 0));

    let recs = records(&gw, "/api/records/eu-1", TOTAL).await;
    assert_eq!(recs.len(), TOTAL);
    for r in &recs {
        assert_eq!(r["status"], 200);
        assert!(r["region"] == "fsn1" || r["region"] == "nbg1", "{r}");
        let res = &r["policies"]["residency"];
        assert_eq!(res["subject"], "EU", "{r}");
        assert_eq!(res["class"], "health", "{r}");
        assert_eq!(res["decision"], "permit", "{r}");
        assert_eq!(res["pools"], "records-fsn1,records-nbg1", "{r}");
        assert_eq!(res["rule"], "eu-health", "{r}");
        assert_eq!(res["grants"], "records-fsn1=eu-health,records-nbg1=eu-health", "{r}");
    }
}

#[tokio::test]
async fn with_the_eu_pools_down_the_answer_is_503_and_the_us_pool_gets_nothing() {
    let w = World::start().await;
    // The EU targets: addresses where nothing listens, probed every 50 ms.
    let dead = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let health = "health = { path = \"/health\", interval_ms = 50, timeout_ms = 200, unhealthy_after = 1 }";
    let gw = start(&w.config(Some([dead(), dead(), dead()]), health));
    let auth = token("patient-eu-2", "EU", &[]);
    // Until the probes have marked the EU targets down, a request may be
    // tried on one of them and fail (502); never anywhere else.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = get(&gw.url("/api/records/warm-up"), &[("authorization", &auth)]).await;
        assert!(a.status == 502 || a.status == 503, "{}: {}", a.status, String::from_utf8_lossy(&a.body));
        if a.status == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the EU targets were never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut statuses = BTreeSet::new();
    for _ in 0..100 {
        let a = get(&gw.url("/api/records/eu-2"), &[("authorization", &auth)]).await;
        statuses.insert(a.status);
        if a.status == 503 {
            let p = assert_problem(&a, 503);
            assert_eq!(p["type"], "urn:portcullis:problem:no-healthy-upstream");
        }
    }
    assert_eq!(statuses, BTreeSet::from([503]), "every EU target is down: 503, not another region");
    assert_eq!(w.ash.requests.load(Ordering::SeqCst), 0, "the US pool received nothing");

    // The US pool was up all along: a US patient is served from it.
    let a = get(&gw.url("/api/records/us-1"), &[("authorization", &token("patient-us-1", "US", &[]))]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["service"], "records-ash");
    assert_eq!(w.ash.requests.load(Ordering::SeqCst), 1);

    let recs = records(&gw, "/api/records/eu-2", 100).await;
    for r in &recs {
        assert_eq!(r["status"], 503, "{r}");
        assert!(r.get("region").is_none() && r.get("upstream").is_none(), "nothing was forwarded: {r}");
        assert_eq!(r["policies"]["residency"]["pools"], "records-fsn1,records-nbg1", "{r}");
    }
}

#[tokio::test]
async fn an_in_patient_without_a_permitting_rule_gets_451_and_with_consent_reaches_the_eu() {
    let w = World::start().await;
    let gw = start(&w.config(None, ""));
    let a = get(&gw.url("/api/records/in-1"), &[("authorization", &token("patient-in-1", "IN", &["research"]))]).await;
    let p = assert_problem(&a, 451);
    assert_eq!(p["type"], "urn:portcullis:problem:residency");
    assert_eq!(p["title"], "Unavailable For Legal Reasons");
    assert_eq!(p["rule"], "default-deny");
    assert_eq!(p["data-class"], "health");
    let body = String::from_utf8_lossy(&a.body);
    for secret in ["patient-in-1", "\"IN\"", "research"] {
        assert!(!body.contains(secret), "the answer names no patient data ({secret}): {body}");
    }
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(w.eu_requests() + w.ash.requests.load(Ordering::SeqCst), 0, "nothing was forwarded");

    let r = &records(&gw, "/api/records/in-1", 1).await[0];
    assert_eq!(r["status"], 451);
    assert_eq!(r["source"], "policy:residency");
    assert!(r["verdicts"].as_array().unwrap().iter().any(|v| v == &json!(["residency", "respond:451"])), "{r}");
    let res = &r["policies"]["residency"];
    assert_eq!((res["subject"].as_str(), res["decision"].as_str(), res["rule"].as_str()), (Some("IN"), Some("deny"), Some("default-deny")), "{r}");

    // The same patient with recorded consent to EU processing.
    let a = get(&gw.url("/api/records/in-2"), &[("authorization", &token("patient-in-2", "IN", &["eu-processing"]))]).await;
    assert_eq!(a.status, 200);
    assert!(a.json()["service"].as_str().unwrap().starts_with("records-fsn1"));
    let r = &records(&gw, "/api/records/in-2", 1).await[0];
    assert_eq!(r["region"], "fsn1");
    assert_eq!(r["policies"]["residency"]["rule"], "in-health-eu-with-consent", "{r}");
    assert_eq!(w.ash.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_forged_x_data_region_header_changes_nothing_and_is_audited() {
    let w = World::start().await;
    let gw = start(&w.config(None, ""));
    let eu = token("patient-eu-3", "EU", &[]);
    for path in ["/api/records/honest", "/api/records/forged"] {
        let mut headers = vec![("authorization", eu.as_str())];
        if path.ends_with("forged") {
            headers.push(("x-data-region", "us"));
        }
        let a = get(&gw.url(path), &headers).await;
        assert_eq!(a.status, 200);
        let echo = a.json();
        assert!(echo["service"].as_str().unwrap().starts_with("records-fsn1"), "{echo}");
        assert!(echo["headers"].get("x-data-region").is_none(), "the claim never reaches the upstream: {echo}");
    }
    assert_eq!(w.ash.requests.load(Ordering::SeqCst), 0);
    let honest = &records(&gw, "/api/records/honest", 1).await[0];
    let forged = &records(&gw, "/api/records/forged", 1).await[0];
    assert_eq!(forged["region"], honest["region"]);
    assert_eq!(forged["policies"]["residency"]["pools"], honest["policies"]["residency"]["pools"]);
    assert_eq!(forged["policies"]["residency"]["forged-headers"], "x-data-region", "{forged}");
    assert!(honest["policies"]["residency"].get("forged-headers").is_none(), "{honest}");

    // Nor does a header stand in for the claim: a patient without a verified
    // residency who says "eu" gets 451, and the attempt is on record.
    let a = get(&gw.url("/api/records/claimless"), &[("authorization", &token("patient-x", "", &[])), ("X-Data-Region", "eu")]).await;
    assert_problem(&a, 451);
    let r = &records(&gw, "/api/records/claimless", 1).await[0];
    assert_eq!(r["policies"]["residency"]["subject"], "none", "{r}");
    assert_eq!(r["policies"]["residency"]["forged-headers"], "x-data-region", "{r}");
    assert_eq!(w.eu_requests() + w.ash.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_public_route_serves_from_any_region() {
    let w = World::start().await;
    let gw = start(&w.config(None, ""));
    // The library has no EU pool: an EU patient, an IN patient and an
    // anonymous reader are all served from the US.
    for (path, auth) in [("/library/a", Some(token("patient-eu-4", "EU", &[]))), ("/library/b", Some(token("patient-in-4", "IN", &[]))), ("/library/c", None)] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|t| ("authorization", t.as_str())).collect();
        let a = get(&gw.url(path), &headers).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.json()["service"], "library-ash", "{path}");
        let r = &records(&gw, path, 1).await[0];
        assert_eq!(r["region"], "ash", "{r}");
        assert_eq!(r["policies"]["residency"]["rule"], "public-anywhere", "{r}");
        assert_eq!(r["policies"]["residency"]["pools"], "library-ash,library-mum", "{r}");
    }
    assert_eq!(w.lib_ash.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn editing_the_regions_file_reloads_the_rules() {
    let w = World::start().await;
    let gw = start(&w.config(None, ""));
    let auth = token("patient-in-5", "IN", &[]);
    assert_eq!(get(&gw.url("/api/records/in-5"), &[("authorization", &auth)]).await.status, 451);
    // A broken edit is refused and the old rules keep serving.
    let path = gw.dir().join("regions.toml");
    std::fs::write(&path, REGIONS.replace("allow = [\"US\"]", "allow = [\"UK\"]")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(get(&gw.url("/api/records/in-5"), &[("authorization", &auth)]).await.status, 451);
    assert_eq!(get(&gw.url("/api/records/us-5"), &[("authorization", &token("patient-us-5", "US", &[]))]).await.status, 200);
    // A good one: IN patients' health data may now go to the EU without consent.
    std::fs::write(&path, format!("{REGIONS}[[rules]]\nname = \"in-health-eu\"\nsubject = \"IN\"\nclass = \"health\"\nallow = [\"EU\"]\n")).unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = get(&gw.url("/api/records/in-5"), &[("authorization", &auth)]).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200, "the new rule was not loaded");
    // Records are written as responses end: wait for the 200's own.
    let mut ok = None;
    eventually(Duration::from_secs(10), || {
        ok = gw.audit_records().into_iter().find(|r| r["path"] == "/api/records/in-5" && r["status"] == 200);
        ok.is_some()
    })
    .await;
    let r = ok.expect("the 200's audit record");
    assert_eq!(r["policies"]["residency"]["rule"], "in-health-eu", "{r}");
    assert_eq!(w.ash.requests.load(Ordering::SeqCst), 1, "only the US patient's request");
}

// ---------------------------------------------------------------------------
// Property: over random regions files, pools, rules, claims and target
// health, a request is only ever sent to a pool its rules permit; when none
// is permitted the answer is 451, and when every permitted target is down
// nothing is picked (503). The real router and residency components run in
// the real runtime; the host's own narrowing and target choice
// (`proxy::route`, `proxy::forward::pick`) decide. Deterministic: a fixed
// seed, a bounded number of cases.

mod property {
    use super::RESIDENCY;
    use portcullis::config::Source;
    use portcullis::proxy::chain::{self, ChainEnd, ChainRun};
    use portcullis::proxy::{forward, route};
    use portcullis::runtime::bindings::types;
    use portcullis::runtime::{ComponentCache, Runtime, RuntimeLimits, Services};
    use portcullis::snapshot::Snapshot;
    use proptest::prelude::*;
    use std::sync::Arc;

    const J: [&str; 3] = ["EU", "US", "IN"];
    const CLASSES: [&str; 2] = ["health", "public"];

    #[derive(Debug, Clone)]
    struct Rule {
        subject: Option<usize>,
        class: Option<usize>,
        allow: Option<Vec<usize>>,
        consent: bool,
    }

    #[derive(Debug, Clone)]
    struct Claim {
        residency: Option<usize>,
        by_region: bool,
        consent: bool,
        forged: Option<usize>,
    }

    #[derive(Debug, Clone)]
    struct Case {
        regions: Vec<usize>,
        pools: Vec<(usize, Vec<bool>)>,
        route: Vec<usize>,
        class: usize,
        rules: Vec<Rule>,
        claims: Vec<Claim>,
    }

    fn case() -> impl Strategy<Value = Case> {
        (1usize..=4, 1usize..=4).prop_flat_map(|(nr, np)| {
            let rule = (
                proptest::option::of(0usize..3),
                proptest::option::of(0usize..2),
                proptest::option::of(proptest::sample::subsequence(vec![0usize, 1, 2], 1..=3)),
                any::<bool>(),
            )
                .prop_map(|(subject, class, allow, consent)| Rule { subject, class, allow, consent });
            let claim = (proptest::option::of(0usize..3), any::<bool>(), any::<bool>(), proptest::option::of(0usize..3))
                .prop_map(|(residency, by_region, consent, forged)| Claim { residency, by_region, consent, forged });
            (
                proptest::collection::vec(0usize..3, nr),
                proptest::collection::vec((0..nr, proptest::collection::vec(any::<bool>(), 1..=2)), np),
                Just((0..np).collect::<Vec<_>>()).prop_shuffle(),
                1..=np,
                0usize..2,
                proptest::collection::vec(rule, 0..5),
                proptest::collection::vec(claim, 1..6),
            )
                .prop_map(|(regions, pools, order, n, class, rules, claims)| Case { regions, pools, route: order[..n].to_vec(), class, rules, claims })
        })
    }

    impl Case {
        fn regions_toml(&self) -> String {
            let mut t = String::from("jurisdictions = [\"EU\", \"US\", \"IN\"]\nclasses = [\"health\", \"public\"]\n[regions]\n");
            for (i, j) in self.regions.iter().enumerate() {
                t.push_str(&format!("r{i} = \"{}\"\n", J[*j]));
            }
            for (i, r) in self.rules.iter().enumerate() {
                let allow = r.allow.as_ref().map_or("\"*\"".to_string(), |a| a.iter().map(|j| format!("\"{}\"", J[*j])).collect::<Vec<_>>().join(", "));
                t.push_str(&format!(
                    "[[rules]]\nname = \"rule{i}\"\nsubject = \"{}\"\nclass = \"{}\"\nallow = [{allow}]\n{}",
                    r.subject.map_or("*", |j| J[j]),
                    r.class.map_or("*", |c| CLASSES[c]),
                    if r.consent { "consent = \"ok\"\n" } else { "" }
                ));
            }
            t
        }

        fn gateway_toml(&self) -> String {
            let mut t = format!(
                "[[listeners]]\nname = \"p\"\naddress = \"127.0.0.1:0\"\n[residency]\nregions = \"regions.toml\"\n[policies.router]\ncomponent = \"builtin:router\"\n[policies.residency]\ncomponent = \"{RESIDENCY}\"\n"
            );
            for (i, (region, targets)) in self.pools.iter().enumerate() {
                // Targets are never connected to: only their health matters.
                let addrs: Vec<String> = (0..targets.len()).map(|k| format!("\"127.0.0.1:{}\"", 9 + 10 * i + k)).collect();
                t.push_str(&format!("[[pools]]\nname = \"p{i}\"\nregion = \"r{region}\"\ntargets = [{}]\npassive = {{ max_failures = 1, eject_ms = 3600000 }}\n", addrs.join(", ")));
            }
            let route: Vec<String> = self.route.iter().map(|p| format!("\"p{p}\"")).collect();
            t.push_str(&format!("[[routes]]\nname = \"r\"\npath = \"/\"\npools = [{}]\nchain = [\"residency\"]\nfacts = {{ residency-class = \"{}\" }}\n", route.join(", "), CLASSES[self.class]));
            t
        }

        /// The oracle, from the rules' meaning: may `claim`'s data go to pool `p`?
        fn permitted(&self, claim: &Claim, p: usize) -> bool {
            let pool_j = self.regions[self.pools[p].0];
            self.rules.iter().any(|r| {
                r.subject.is_none_or(|s| claim.residency == Some(s))
                    && r.class.is_none_or(|c| c == self.class)
                    && (!r.consent || claim.consent)
                    && r.allow.as_ref().is_none_or(|a| a.contains(&pool_j))
            })
        }

        fn up(&self, p: usize) -> bool {
            self.pools[p].1.iter().any(|healthy| *healthy)
        }

        fn head(&self, claim: &Claim) -> types::RequestHead {
            let mut facts = Vec::new();
            if let Some(j) = claim.residency {
                // By region name when the case has a region there, else by jurisdiction.
                let region = self.regions.iter().position(|r| *r == j).filter(|_| claim.by_region);
                facts.push(("jwt.region".to_string(), region.map_or(J[j].to_ascii_lowercase(), |r| format!("r{r}"))));
            }
            facts.push(("jwt.consent".to_string(), if claim.consent { "x,ok".into() } else { "x".into() }));
            let headers = claim.forged.iter().map(|j| types::Header { name: "x-data-region".into(), value: J[*j].as_bytes().to_vec() }).collect();
            types::RequestHead {
                id: "prop".into(),
                method: "GET".into(),
                scheme: "http".into(),
                authority: "localhost".into(),
                path: "/x".into(),
                query: None,
                headers,
                client_ip: "127.0.0.1".into(),
                listener: "p".into(),
                route: None,
                facts,
            }
        }
    }

    async fn check(case: &Case, runtime: &Arc<Runtime>) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("regions.toml"), case.regions_toml()).unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, case.gateway_toml()).unwrap();
        let source = Source::read(&path).unwrap();
        let snap = Arc::new(Snapshot::build(&source, runtime.clone(), Arc::new(Services::new(None)), None).await.map_err(|e| TestCaseError::fail(format!("{e}\n{}", case.regions_toml())))?);
        // Target health: an unhealthy target is ejected (passive, one failure).
        for (i, (_, targets)) in case.pools.iter().enumerate() {
            let pool = &snap.pools[&format!("p{i}")];
            for (t, healthy) in pool.targets.iter().zip(targets) {
                if !healthy {
                    pool.report(t, false);
                }
            }
        }
        for claim in &case.claims {
            let head = case.head(claim);
            let mut run = ChainRun::new(head, http::HeaderMap::new());
            let mut body: portcullis::proxy::RequestBody = http_body_util::Either::Right(http_body_util::Full::new(bytes::Bytes::new()));
            let (end, route_name) = chain::run(&snap, &mut run, &mut body).await;
            let permitted: Vec<usize> = case.route.iter().copied().filter(|p| case.permitted(claim, *p)).collect();
            match end {
                ChainEnd::Failed(e) => return Err(TestCaseError::fail(format!("the chain failed: {e}"))),
                ChainEnd::Respond { policy, response } => {
                    prop_assert_eq!(policy.as_str(), "residency");
                    prop_assert_eq!(response.status().as_u16(), 451);
                    prop_assert!(permitted.is_empty(), "451 although {:?} are permitted for {:?}", permitted, claim);
                }
                ChainEnd::Proceed => {
                    let route = &snap.routes[route_name.as_deref().unwrap()];
                    let pools = route::candidate_pools(&snap, route, &run.head.facts).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    for p in &pools {
                        let i: usize = p.name[1..].parse().unwrap();
                        prop_assert!(case.permitted(claim, i), "candidate {} is in a forbidden region for {:?}", p.name, claim);
                    }
                    match forward::pick(&pools) {
                        Some((pool, _lease)) => {
                            let i: usize = pool.name[1..].parse().unwrap();
                            prop_assert!(case.permitted(claim, i), "sent to {} in {} for {:?}", pool.name, J[case.regions[case.pools[i].0]], claim);
                        }
                        None => prop_assert!(!permitted.iter().any(|p| case.up(*p)), "nothing picked although a permitted pool is up"),
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn no_request_ever_reaches_a_region_its_rules_forbid() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let limits = RuntimeLimits { deadline: std::time::Duration::from_secs(5), memory_cap: 16 << 20, max_instances: 8 };
        let runtime = rt.block_on(async { Runtime::new(&limits, ComponentCache::new(Some(crate::support::cache_dir()))) }).unwrap();
        let config = ProptestConfig { cases: 64, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(11), ..ProptestConfig::default() };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        runner.run(&case(), |c| rt.block_on(check(&c, &runtime))).unwrap();
    }
}
