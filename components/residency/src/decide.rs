//! The residency decision, as pure functions of the settings and the
//! request head (tested natively, including by a property test).
//!
//! 1. **Whose data.** The subject's residency comes from one fact
//!    (`subject-fact`, `jwt.region` by default), which only the policy that
//!    verified the token can write: a jurisdiction name (`EU`, any case) or
//!    a region name (`fsn1`, mapped to its jurisdiction). No fact: the
//!    subject is `none`; a value that names neither: `unknown`. Headers never
//!    count: `forged-headers` (`X-Data-Region`, ...) are stripped and audited.
//! 2. **Which rules.** A rule matches when its subject is the subject's
//!    jurisdiction or `*`, its class is the route's `route.residency-class`
//!    or `*`, and its consent (if any) is an item of `consent-fact`.
//! 3. **Which pools.** For each matching rule in file order, each of the
//!    route's pools (`route.pools`, in the route's order) whose region's
//!    jurisdiction the rule allows is granted, by that rule. The first rules
//!    of the file are thus the preferred ones (home jurisdiction before a
//!    consented one).
//! 4. **Answer.** Some pool granted: proceed with `<ns>.pools` = the granted
//!    pools; the host picks a healthy target among them only, so when all
//!    are down the answer is 503 and no other region sees the request. None
//!    granted: 451, naming the first matching rule, or `default-deny` when no
//!    rule matches.

use crate::config::{ANY, Config};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use portcullis_sdk::{Edits, Reply, RequestHead, Verdict, fact, json, list};

/// The rule named when no rule matches: what is not permitted is forbidden.
pub const DEFAULT_DENY: &str = "default-deny";

/// Problem type of a residency refusal.
pub const PROBLEM_TYPE: &str = "urn:portcullis:problem:residency";

/// The data subject's residency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// No verified residency (no token, or no region claim).
    None,
    /// A verified value that names no jurisdiction or region.
    Unknown,
    /// Resident in this jurisdiction.
    In(&'a str),
}

impl Subject<'_> {
    /// As audited and written in `<ns>.subject`.
    pub fn as_str(&self) -> &str {
        match self {
            Subject::None => "none",
            Subject::Unknown => "unknown",
            Subject::In(j) => j,
        }
    }
}

/// The subject of a verified residency value.
pub fn subject<'a>(cfg: &Config<'a>, value: Option<&str>) -> Subject<'a> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Subject::None;
    };
    if let Some(j) = cfg.jurisdictions.iter().find(|j| j.eq_ignore_ascii_case(v)) {
        return Subject::In(j);
    }
    match cfg.regions.iter().find(|(r, _)| r.eq_ignore_ascii_case(v)) {
        Some((_, j)) => Subject::In(j),
        None => Subject::Unknown,
    }
}

/// A pool granted by a rule (indices into the route's pools and the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Index into the route's pools.
    pub pool: usize,
    /// Index into `Config::rules`.
    pub rule: usize,
}

/// What the rules say for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward only to these pools, in this order.
    Permit(Vec<Grant>),
    /// 451, naming this rule (`None`: [`DEFAULT_DENY`]).
    Deny(Option<usize>),
}

/// Indices of the rules matching a subject, a data class and consents.
pub fn matching(
    cfg: &Config<'_>,
    subject: Subject<'_>,
    class: Option<&str>,
    consents: &[&str],
) -> Vec<usize> {
    (0..cfg.rules.len())
        .filter(|&i| {
            let r = &cfg.rules[i];
            let subject_ok =
                r.subject == ANY || matches!(subject, Subject::In(j) if j == r.subject);
            let class_ok = r.class == ANY || class == Some(r.class);
            let consent_ok = r.consent.is_none_or(|c| consents.contains(&c));
            subject_ok && class_ok && consent_ok
        })
        .collect()
}

/// The decision for a subject, a class, consents and the route's pools.
pub fn decide(
    cfg: &Config<'_>,
    subject: Subject<'_>,
    class: Option<&str>,
    consents: &[&str],
    route_pools: &[&str],
) -> Decision {
    let rules = matching(cfg, subject, class, consents);
    let mut grants: Vec<Grant> = Vec::new();
    for &rule in &rules {
        for (pool, name) in route_pools.iter().enumerate() {
            if !grants.iter().any(|g| g.pool == pool)
                && cfg.rules[rule].allows(cfg.pool_jurisdiction(name))
            {
                grants.push(Grant { pool, rule });
            }
        }
    }
    if grants.is_empty() {
        Decision::Deny(rules.first().copied())
    } else {
        Decision::Permit(grants)
    }
}

/// What one request comes to: the verdict and the audit fields.
pub struct Outcome {
    /// Proceed (pools narrowed, forged headers removed) or 451.
    pub verdict: Verdict,
    /// Fields for `host.audit`.
    pub audit: Vec<(String, String)>,
}

/// The inputs of a decision, read from the request head.
pub struct Inputs<'r> {
    /// The verified residency value.
    pub residency: Option<&'r str>,
    /// The route's data class.
    pub class: Option<&'r str>,
    /// Consents given.
    pub consents: Vec<&'r str>,
    /// The route's candidate pools.
    pub pools: Vec<&'r str>,
}

/// Read the decision's inputs from the head: facts only, never headers.
pub fn inputs<'r>(cfg: &Config<'_>, req: &'r RequestHead) -> Inputs<'r> {
    let plain = |text: &'r str| -> Vec<&'r str> {
        // Pool and consent names are plain; an escaped item (which could only
        // be a mangled name) matches nothing, so it is dropped.
        list::items(text)
            .filter_map(|c| match c {
                alloc::borrow::Cow::Borrowed(s) => Some(s),
                alloc::borrow::Cow::Owned(_) => None,
            })
            .collect()
    };
    Inputs {
        residency: fact(req, cfg.subject_fact),
        class: fact(req, "route.residency-class"),
        consents: fact(req, cfg.consent_fact).map(plain).unwrap_or_default(),
        pools: fact(req, "route.pools").map(plain).unwrap_or_default(),
    }
}

/// Decide on a request head.
pub fn evaluate(cfg: &Config<'_>, req: &RequestHead) -> Outcome {
    let mut audit: Vec<(String, String)> = Vec::new();
    let field =
        |audit: &mut Vec<(String, String)>, k: &str, v: String| audit.push((k.to_string(), v));

    // A client's claim to a residency is never believed; it is removed so the
    // upstream cannot believe it either, and the attempt is on record.
    let forged: Vec<&str> = cfg
        .forged_headers
        .iter()
        .map(String::as_str)
        .filter(|h| req.headers.iter().any(|x| x.name.eq_ignore_ascii_case(h)))
        .collect();
    if !forged.is_empty() {
        field(&mut audit, "forged-headers", list::encode(&forged));
    }

    let inp = inputs(cfg, req);
    let who = subject(cfg, inp.residency);
    field(&mut audit, "subject", who.as_str().to_string());
    field(&mut audit, "class", inp.class.unwrap_or("none").to_string());

    match decide(cfg, who, inp.class, &inp.consents, &inp.pools) {
        Decision::Permit(grants) => {
            let pools: Vec<&str> = grants.iter().map(|g| inp.pools[g.pool]).collect();
            let mut pairs: Vec<String> = Vec::with_capacity(grants.len());
            for g in &grants {
                let mut pair = String::from(inp.pools[g.pool]);
                pair.push('=');
                pair.push_str(cfg.rules[g.rule].name);
                pairs.push(pair);
            }
            let pools = list::encode(&pools);
            field(&mut audit, "decision", "permit".to_string());
            field(&mut audit, "pools", pools.clone());
            field(&mut audit, "grants", list::encode(&pairs));
            // One rule for every granted pool (the usual case): whichever
            // pool the host picks, this is the rule that let the data go.
            if grants.iter().all(|g| g.rule == grants[0].rule) {
                field(
                    &mut audit,
                    "rule",
                    cfg.rules[grants[0].rule].name.to_string(),
                );
            }
            let ns = cfg.namespace;
            let mut e = Edits::new()
                .fact(prefixed(ns, ".pools"), pools)
                .fact(prefixed(ns, ".subject"), who.as_str().to_string());
            for h in &forged {
                e = e.remove_header(*h);
            }
            Outcome {
                verdict: e.proceed(),
                audit,
            }
        }
        Decision::Deny(rule) => {
            let rule = rule.map_or(DEFAULT_DENY, |i| cfg.rules[i].name);
            field(&mut audit, "decision", "deny".to_string());
            field(&mut audit, "rule", rule.to_string());
            Outcome {
                verdict: refusal(rule, inp.class.unwrap_or("none")).respond(),
                audit,
            }
        }
    }
}

fn prefixed(ns: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(ns.len() + suffix.len());
    s.push_str(ns);
    s.push_str(suffix);
    s
}

/// The 451 answer: RFC 9457 problem+json naming the rule and the route's
/// data class, never anything about the subject (no identity, no
/// residency: the client may not be the subject, and the answer may be
/// logged by anything in between).
pub fn refusal(rule: &str, class: &str) -> Reply {
    let mut detail = String::new();
    if rule == DEFAULT_DENY {
        detail.push_str("No residency rule permits data of class ");
        json::push_string(&mut detail, class);
        detail.push_str(" of this data subject to go to any region; nothing was forwarded.");
    } else {
        detail.push_str("Residency rule ");
        json::push_string(&mut detail, rule);
        detail.push_str(
            " permits none of the regions this route is served from; nothing was forwarded.",
        );
    }
    let mut body = String::with_capacity(160 + detail.len());
    body.push_str("{\"type\":");
    json::push_string(&mut body, PROBLEM_TYPE);
    body.push_str(",\"title\":\"Unavailable For Legal Reasons\",\"status\":451,\"detail\":");
    json::push_string(&mut body, &detail);
    body.push_str(",\"rule\":");
    json::push_string(&mut body, rule);
    body.push_str(",\"data-class\":");
    json::push_string(&mut body, class);
    body.push('}');
    Reply::new(451)
        .header("content-type", "application/problem+json")
        // The answer depends on who asks: no cache may give it to another.
        .header("cache-control", "no-store")
        .body(body.into_bytes())
}
