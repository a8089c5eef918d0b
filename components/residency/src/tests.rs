extern crate std;

use crate::config;
use crate::decide::{self, DEFAULT_DENY, Subject};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use portcullis_sdk::{Header, RequestHead, Verdict, list};

/// Settings as the host renders them for policies/regions.toml-like rules.
fn settings() -> Vec<(String, String)> {
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        s("namespace", "residency"),
        s("jurisdictions", "EU,US,IN"),
        s("regions", "ash=US,fsn1=EU,in-mum=IN,nbg1=EU"),
        s(
            "pools",
            "records-eu=fsn1,records-eu2=nbg1,records-us=ash,records-in=in-mum",
        ),
        s(
            "rules",
            "eu-health\tEU\thealth\tEU\t\nus-health\tUS\thealth\tUS\t\nin-health-eu-consent\tIN\thealth\tEU\teu-processing\npublic\t*\tpublic\t*\t\n",
        ),
    ]
}

fn head(facts: &[(&str, &str)], headers: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        id: "r1".into(),
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.procare.health".into(),
        path: "/api/records/42".into(),
        query: None,
        headers: headers.iter().map(|(k, v)| Header::new(*k, *v)).collect(),
        client_ip: "192.0.2.1".into(),
        listener: "public".into(),
        route: Some("records".into()),
        facts: facts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn health(
    residency: Option<&str>,
    extra: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> RequestHead {
    let mut facts = vec![
        ("route.name", "records"),
        (
            "route.pools",
            "records-us,records-in,records-eu,records-eu2",
        ),
        ("route.residency-class", "health"),
    ];
    if let Some(r) = residency {
        facts.push(("jwt.region", r));
    }
    facts.extend_from_slice(extra);
    head(&facts, headers)
}

fn fact<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
    match v {
        Verdict::Proceed(e) => e
            .facts
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
        Verdict::Respond(_) => None,
    }
}

fn field<'a>(audit: &'a [(String, String)], k: &str) -> Option<&'a str> {
    audit.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[test]
fn settings_parse_and_refuse_what_is_wrong() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    assert_eq!(c.namespace, "residency");
    assert_eq!(c.pool_jurisdiction("records-eu2"), Some("EU"));
    assert_eq!(c.rules[2].consent, Some("eu-processing"));
    assert_eq!(c.subject_fact, "jwt.region");
    assert!(c.forged_headers.contains(&"x-data-region".to_string()));
    config::check(&c).unwrap();

    let missing: Vec<_> = pairs
        .iter()
        .filter(|(k, _)| k != "rules")
        .cloned()
        .collect();
    assert!(
        config::parse(&missing)
            .unwrap_err()
            .contains("setting \"rules\": missing: the host derives it")
    );
    let mut unknown = pairs.clone();
    unknown.push(("colour".into(), "blue".into()));
    assert!(
        config::parse(&unknown)
            .unwrap_err()
            .starts_with("setting \"colour\": unknown setting")
    );
    let mut bad = pairs.clone();
    bad.push(("subject-fact".into(), "region".into()));
    assert!(
        config::parse(&bad)
            .unwrap_err()
            .contains("expected a fact name such as jwt.region")
    );
    let mut bad = pairs.clone();
    bad[4].1 = "just-a-name\n".into();
    assert!(
        config::parse(&bad)
            .unwrap_err()
            .contains("expected 5 tab-separated fields")
    );
    let mut bad = pairs.clone();
    bad[4].1 = "r\tUK\thealth\tEU\t\n".into();
    let c = config::parse(&bad).unwrap();
    assert_eq!(
        config::check(&c).unwrap_err(),
        "setting \"rules\": a rule names an unknown jurisdiction, got \"r\""
    );
    let mut own = pairs.clone();
    own.push(("forged-headers".into(), "X-Data-Region,X-Country".into()));
    assert_eq!(
        config::parse(&own).unwrap().forged_headers,
        ["x-data-region", "x-country"]
    );
}

#[test]
fn the_subject_comes_from_the_verified_fact_as_a_jurisdiction_or_a_region() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    assert_eq!(decide::subject(&c, None), Subject::None);
    assert_eq!(decide::subject(&c, Some("")), Subject::None);
    assert_eq!(decide::subject(&c, Some("eu")), Subject::In("EU"));
    assert_eq!(decide::subject(&c, Some("IN")), Subject::In("IN"));
    assert_eq!(decide::subject(&c, Some("ash")), Subject::In("US"));
    assert_eq!(decide::subject(&c, Some("mars")), Subject::Unknown);
}

#[test]
fn an_eu_patient_is_narrowed_to_eu_pools_in_route_order() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    let out = decide::evaluate(&c, &health(Some("EU"), &[], &[]));
    assert_eq!(
        fact(&out.verdict, "residency.pools"),
        Some("records-eu,records-eu2")
    );
    assert_eq!(fact(&out.verdict, "residency.subject"), Some("EU"));
    assert_eq!(field(&out.audit, "decision"), Some("permit"));
    assert_eq!(field(&out.audit, "rule"), Some("eu-health"));
    assert_eq!(
        field(&out.audit, "grants"),
        Some("records-eu=eu-health,records-eu2=eu-health")
    );
    assert_eq!(field(&out.audit, "subject"), Some("EU"));
    assert_eq!(field(&out.audit, "class"), Some("health"));
    assert_eq!(field(&out.audit, "forged-headers"), None);
}

#[test]
fn an_in_patient_without_a_permitting_rule_gets_451_naming_the_rule() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    let out = decide::evaluate(&c, &health(Some("IN"), &[], &[]));
    let Verdict::Respond(reply) = &out.verdict else {
        panic!("proceeded")
    };
    assert_eq!(reply.status, 451);
    let body = core::str::from_utf8(&reply.body).unwrap();
    assert_eq!(
        body,
        r#"{"type":"urn:portcullis:problem:residency","title":"Unavailable For Legal Reasons","status":451,"detail":"No residency rule permits data of class \"health\" of this data subject to go to any region; nothing was forwarded.","rule":"default-deny","data-class":"health"}"#
    );
    assert!(
        !body.contains("IN"),
        "the answer says nothing about the subject"
    );
    assert!(
        reply
            .headers
            .iter()
            .any(|h| h.name == "cache-control" && h.value == b"no-store")
    );
    assert_eq!(field(&out.audit, "decision"), Some("deny"));
    assert_eq!(field(&out.audit, "rule"), Some(DEFAULT_DENY));
    assert_eq!(field(&out.audit, "subject"), Some("IN"));

    // With consent, the consent rule permits the EU pools.
    let out = decide::evaluate(
        &c,
        &health(
            Some("IN"),
            &[("jwt.consent", "research,eu-processing")],
            &[],
        ),
    );
    assert_eq!(
        fact(&out.verdict, "residency.pools"),
        Some("records-eu,records-eu2")
    );
    assert_eq!(field(&out.audit, "rule"), Some("in-health-eu-consent"));

    // A matching rule whose jurisdictions the route does not serve is named.
    let out = decide::evaluate(
        &c,
        &head(
            &[
                ("route.pools", "records-eu"),
                ("route.residency-class", "health"),
                ("jwt.region", "US"),
            ],
            &[],
        ),
    );
    let Verdict::Respond(reply) = &out.verdict else {
        panic!("proceeded")
    };
    assert!(core::str::from_utf8(&reply.body).unwrap().contains(r#""detail":"Residency rule \"us-health\" permits none of the regions this route is served from; nothing was forwarded.","rule":"us-health""#));
}

#[test]
fn no_or_unknown_residency_gets_only_what_any_subject_gets() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    for r in [None, Some("mars")] {
        let out = decide::evaluate(&c, &health(r, &[], &[]));
        assert!(
            matches!(out.verdict, Verdict::Respond(ref x) if x.status == 451),
            "{r:?}"
        );
    }
    // A route without a data class matches no class-specific rule.
    let out = decide::evaluate(
        &c,
        &head(&[("route.pools", "records-eu"), ("jwt.region", "EU")], &[]),
    );
    assert!(matches!(out.verdict, Verdict::Respond(_)));
    assert_eq!(field(&out.audit, "class"), Some("none"));
}

#[test]
fn a_public_route_serves_from_any_region() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    for r in [None, Some("EU"), Some("IN"), Some("mars")] {
        let mut facts = vec![
            ("route.pools", "records-us,records-in"),
            ("route.residency-class", "public"),
        ];
        if let Some(r) = r {
            facts.push(("jwt.region", r));
        }
        let out = decide::evaluate(&c, &head(&facts, &[]));
        assert_eq!(
            fact(&out.verdict, "residency.pools"),
            Some("records-us,records-in"),
            "{r:?}"
        );
        assert_eq!(field(&out.audit, "rule"), Some("public"));
    }
}

#[test]
fn a_forged_region_header_changes_nothing_and_is_stripped_and_audited() {
    let pairs = settings();
    let c = config::parse(&pairs).unwrap();
    let honest = decide::evaluate(&c, &health(Some("EU"), &[], &[]));
    let forged = decide::evaluate(
        &c,
        &health(
            Some("EU"),
            &[],
            &[("x-data-region", "us"), ("x-residency", "US")],
        ),
    );
    assert_eq!(
        fact(&forged.verdict, "residency.pools"),
        fact(&honest.verdict, "residency.pools")
    );
    let Verdict::Proceed(e) = &forged.verdict else {
        panic!()
    };
    assert_eq!(e.remove_headers, ["x-data-region", "x-residency"]);
    assert_eq!(
        field(&forged.audit, "forged-headers"),
        Some("x-data-region,x-residency")
    );
    // Nor can a header stand in for a missing claim.
    let out = decide::evaluate(&c, &health(None, &[], &[("x-data-region", "eu")]));
    assert!(matches!(out.verdict, Verdict::Respond(_)));
    assert_eq!(field(&out.audit, "forged-headers"), Some("x-data-region"));
}

#[test]
fn grants_name_the_rule_of_each_pool_when_several_rules_permit() {
    let mut pairs = settings();
    // An IN rule too, so that a consenting IN patient has two granting rules.
    pairs[4].1.push_str("in-health\tIN\thealth\tIN\t\n");
    let c = config::parse(&pairs).unwrap();
    let out = decide::evaluate(
        &c,
        &health(Some("IN"), &[("jwt.consent", "eu-processing")], &[]),
    );
    // Rule order is preference: the consent rule comes first in this file.
    assert_eq!(
        fact(&out.verdict, "residency.pools"),
        Some("records-eu,records-eu2,records-in")
    );
    assert_eq!(
        field(&out.audit, "grants"),
        Some(
            "records-eu=in-health-eu-consent,records-eu2=in-health-eu-consent,records-in=in-health"
        )
    );
    assert_eq!(
        field(&out.audit, "rule"),
        None,
        "which rule applies depends on the pool the host picks: see grants"
    );
}

// ---------------------------------------------------------------------------
// Property: over random configurations, subjects, consents, route pools and
// forged headers, no pool in a jurisdiction the rules forbid is ever granted,
// every permitted pool is, and a forged header changes nothing.

mod property {
    use super::*;
    use proptest::prelude::*;

    const JURISDICTIONS: [&str; 3] = ["EU", "US", "IN"];
    const CLASSES: [&str; 2] = ["health", "public"];
    const CONSENTS: [&str; 2] = ["c0", "c1"];

    #[derive(Debug, Clone)]
    struct RuleSpec {
        subject: Option<usize>,
        class: Option<usize>,
        allow: Option<Vec<bool>>,
        consent: Option<usize>,
    }

    #[derive(Debug, Clone)]
    enum Claim {
        Absent,
        Jurisdiction(usize, bool),
        Region(usize),
        Garbage,
    }

    #[derive(Debug, Clone)]
    struct World {
        nj: usize,
        regions: Vec<usize>,
        pools: Vec<usize>,
        rules: Vec<RuleSpec>,
        claim: Claim,
        class: Option<usize>,
        consents: Vec<bool>,
        route: Vec<usize>,
        forged: Option<usize>,
    }

    fn world() -> impl Strategy<Value = World> {
        (1usize..=3, 1usize..=5, 1usize..=5).prop_flat_map(|(nj, nr, np)| {
            let rule = (
                proptest::option::of(0..nj),
                proptest::option::of(0usize..2),
                proptest::option::of(proptest::collection::vec(any::<bool>(), nj)),
                proptest::option::of(0usize..2),
            )
                .prop_map(|(subject, class, allow, consent)| RuleSpec {
                    subject,
                    class,
                    allow,
                    consent,
                });
            let claim = prop_oneof![
                Just(Claim::Absent),
                (0..nj, any::<bool>()).prop_map(|(j, l)| Claim::Jurisdiction(j, l)),
                (0..nr).prop_map(Claim::Region),
                Just(Claim::Garbage)
            ];
            (
                proptest::collection::vec(0..nj, nr),
                proptest::collection::vec(0..nr, np),
                proptest::collection::vec(rule, 0..6),
                claim,
                proptest::option::of(0usize..2),
                proptest::collection::vec(any::<bool>(), 2),
                Just((0..np).collect::<Vec<usize>>()).prop_shuffle(),
                0..=np,
                proptest::option::of(0..nj),
            )
                .prop_map(
                    move |(regions, pools, rules, claim, class, consents, order, n, forged)| {
                        World {
                            nj,
                            regions,
                            pools,
                            rules,
                            claim,
                            class,
                            consents,
                            route: order[..n].to_vec(),
                            forged,
                        }
                    },
                )
        })
    }

    impl World {
        fn settings(&self) -> Vec<(String, String)> {
            let regions: Vec<String> = self
                .regions
                .iter()
                .enumerate()
                .map(|(i, j)| format!("r{i}={}", JURISDICTIONS[*j]))
                .collect();
            let pools: Vec<String> = self
                .pools
                .iter()
                .enumerate()
                .map(|(i, r)| format!("p{i}=r{r}"))
                .collect();
            let mut rules = String::new();
            for (i, r) in self.rules.iter().enumerate() {
                let allow = match &r.allow {
                    None => "*".to_string(),
                    Some(bits) => {
                        let js: Vec<&str> = bits
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b)
                            .map(|(j, _)| JURISDICTIONS[j])
                            .collect();
                        // An empty allow list is refused at load: make it "EU".
                        if js.is_empty() {
                            "EU".to_string()
                        } else {
                            list::encode(&js)
                        }
                    }
                };
                rules.push_str(&format!(
                    "rule{i}\t{}\t{}\t{allow}\t{}\n",
                    r.subject.map_or("*", |j| JURISDICTIONS[j]),
                    r.class.map_or("*", |c| CLASSES[c]),
                    r.consent.map_or("", |c| CONSENTS[c]),
                ));
            }
            vec![
                ("namespace".into(), "residency".into()),
                (
                    "jurisdictions".into(),
                    list::encode(&JURISDICTIONS[..self.nj]),
                ),
                ("regions".into(), list::encode(&regions)),
                ("pools".into(), list::encode(&pools)),
                ("rules".into(), rules),
            ]
        }

        fn request(&self, forged: bool) -> RequestHead {
            let pools: Vec<String> = self.route.iter().map(|p| format!("p{p}")).collect();
            let mut facts = vec![("route.pools".to_string(), list::encode(&pools))];
            if let Some(c) = self.class {
                facts.push(("route.residency-class".into(), CLASSES[c].into()));
            }
            match &self.claim {
                Claim::Absent => {}
                Claim::Jurisdiction(j, lower) => facts.push((
                    "jwt.region".into(),
                    if *lower {
                        JURISDICTIONS[*j].to_ascii_lowercase()
                    } else {
                        JURISDICTIONS[*j].into()
                    },
                )),
                Claim::Region(r) => facts.push(("jwt.region".into(), format!("r{r}"))),
                Claim::Garbage => facts.push(("jwt.region".into(), "atlantis".into())),
            }
            let consents: Vec<&str> = self
                .consents
                .iter()
                .enumerate()
                .filter(|(_, b)| **b)
                .map(|(i, _)| CONSENTS[i])
                .collect();
            facts.push(("jwt.consent".into(), list::encode(&consents)));
            let mut req = head(&[], &[]);
            req.facts = facts;
            if forged && let Some(j) = self.forged {
                req.headers.push(Header::new(
                    "x-data-region",
                    JURISDICTIONS[j].to_ascii_lowercase(),
                ));
            }
            req
        }

        /// The oracle, written from the rules' meaning and not from the
        /// policy's code: may data go to pool `p`?
        fn permitted(&self, p: usize) -> bool {
            let subject = match &self.claim {
                Claim::Absent | Claim::Garbage => None,
                Claim::Jurisdiction(j, _) => Some(*j),
                Claim::Region(r) => Some(self.regions[*r]),
            };
            let pool_j = self.regions[self.pools[p]];
            self.rules.iter().any(|r| {
                let allow_j = match &r.allow {
                    None => true,
                    Some(bits) if bits.iter().any(|b| *b) => bits[pool_j],
                    Some(_) => pool_j == 0,
                };
                (r.subject.is_none() || r.subject == subject)
                    && (r.class.is_none() || r.class == self.class)
                    && r.consent.is_none_or(|c| self.consents[c])
                    && allow_j
            })
        }
    }

    fn granted(v: &Verdict) -> Option<Vec<usize>> {
        fact(v, "residency.pools").map(|p| {
            list::decode(p)
                .iter()
                .map(|n| n[1..].parse().unwrap())
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]
        #[test]
        fn no_pool_in_a_forbidden_jurisdiction_is_ever_granted(w in world()) {
            let pairs = w.settings();
            let cfg = config::parse(&pairs).unwrap();
            config::check(&cfg).unwrap();
            let out = decide::evaluate(&cfg, &w.request(false));
            let expected: Vec<usize> = w.route.iter().copied().filter(|p| w.permitted(*p)).collect();
            match granted(&out.verdict) {
                Some(pools) => {
                    for p in &pools {
                        prop_assert!(w.permitted(*p), "granted p{} in {}", p, JURISDICTIONS[w.regions[w.pools[*p]]]);
                        prop_assert!(w.route.contains(p), "granted p{} that the route does not have", p);
                    }
                    let mut sorted = pools.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    prop_assert_eq!(sorted.len(), pools.len(), "a pool granted twice");
                    let mut want = expected.clone();
                    want.sort_unstable();
                    prop_assert_eq!(sorted, want, "every permitted pool is granted");
                }
                None => {
                    prop_assert!(expected.is_empty(), "refused although {:?} are permitted", expected);
                    prop_assert!(matches!(&out.verdict, Verdict::Respond(r) if r.status == 451));
                }
            }
            // A forged header never changes the decision.
            let forged = decide::evaluate(&cfg, &w.request(true));
            prop_assert_eq!(granted(&forged.verdict), granted(&out.verdict));
        }
    }
}
