//! The residency policy: data goes only to regions its subject's rules
//! permit. It narrows the route's candidate pools (`<ns>.pools`) to pools
//! in permitted jurisdictions, or answers **451** (problem+json naming the
//! rule) when the route has none. The host then picks a healthy target among
//! the narrowed pools only, so when they are all down the answer is 503 —
//! never a silent failover to another region.
//!
//! Where things come from (see [`decide`] for the decision itself):
//!
//! - the subject's residency: a **verified** fact (`jwt.region`, written by
//!   jwt-auth from a signed claim), never a header; `X-Data-Region` and the
//!   other `forged-headers` are stripped and audited;
//! - the data class: the route's fixed fact `route.residency-class`;
//! - consent: a list fact (`jwt.consent`, from jwt-auth's `consent-claim`);
//! - jurisdictions, regions, the pool → region map and the rules: settings
//!   the host renders from `[residency] regions = "regions.toml"` (the host
//!   checks them at load; `check-config` checks them again).
//!
//! Audit (under the policy's name): on every request `subject` (the
//! jurisdiction, `none` or `unknown`), `class`, `decision` (`permit` /
//! `deny`), and `rules` + `pools` (permit) or `rule` (deny);
//! `forged-headers` when a client sent any. After the response
//! (`on-complete`), for a forwarded request: `rule`, the rule that permitted
//! the pool the host chose, and `jurisdiction`, that pool's (the host's
//! record has the region itself). A chosen pool no rule permits — which the
//! host makes impossible — would be audited as `breach` and logged as an
//! error.
//!
//! Place it after jwt-auth (it reads jwt-auth's facts) on every route; with
//! `[residency]` configured, `portcullis check` refuses a route without it.
#![no_std]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use portcullis_sdk::{Completion, Hooks, Level, Policy, RequestHead, Verdict, audit, export_policy, fact, log, settings, trap};

pub mod config;
pub mod decide;

#[cfg(test)]
mod tests;

/// The residency policy.
pub struct Residency;

impl Policy for Residency {
    fn hooks() -> Hooks {
        Hooks::ON_COMPLETE
    }

    fn check_config() -> Result<(), String> {
        let pairs = settings("");
        config::check(&config::parse(&pairs)?)
    }

    fn on_request(req: RequestHead) -> Verdict {
        let pairs = settings("");
        // check-config passed for these settings (and every route's
        // overrides); anything else is a broken host: fail closed.
        let cfg = config::parse(&pairs).unwrap_or_else(|_| trap());
        let out = decide::evaluate(&cfg, &req);
        audit(&out.audit);
        out.verdict
    }

    fn on_complete(req: RequestHead, done: Completion) {
        let pairs = settings("");
        let cfg = config::parse(&pairs).unwrap_or_else(|_| trap());
        for (k, v) in completion_audit(&cfg, &req, &done) {
            if k == "breach" {
                log(Level::Error, &v);
            }
            audit(&[(k, v)]);
        }
    }
}

/// Audit fields after the response: which rule permitted the pool the host
/// chose. Nothing when this policy did not decide (an earlier policy
/// answered) or nothing was forwarded (451, 503).
pub fn completion_audit(cfg: &config::Config<'_>, req: &RequestHead, done: &Completion) -> Vec<(String, String)> {
    let mut pools_fact = String::from(cfg.namespace);
    pools_fact.push_str(".pools");
    let (Some(_), Some(upstream)) = (fact(req, &pools_fact), &done.upstream) else { return Vec::new() };
    let pool = upstream.split('/').next().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(region) = &done.region {
        out.push(("jurisdiction".to_string(), cfg.region_jurisdiction(region).unwrap_or("unknown").to_string()));
    }
    match decide::granting_rule(cfg, req, pool) {
        Some(rule) => out.push(("rule".to_string(), rule.to_string())),
        None => {
            let mut why = String::from("forwarded to pool ");
            why.push_str(pool);
            why.push_str(", which no residency rule permits for this request");
            out.push(("breach".to_string(), why));
        }
    }
    out
}

export_policy!(Residency);
