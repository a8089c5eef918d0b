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
//! Audit (under the policy's name), all from `on-request`, so a durable
//! route's decision record (written before the answer is released) has it
//! too: `subject` (the jurisdiction, `none` or `unknown`), `class`,
//! `decision` (`permit` / `deny`); on permit `pools` (the narrowed list),
//! `grants` (`pool=rule` for each, so the record's `upstream` pool names the
//! rule that let the data go there) and `rule` when one rule granted them
//! all (the usual case); on deny `rule` (the one named in the 451);
//! `forged-headers` when a client sent any. The host's record adds the
//! chosen `upstream` and `region`. (An `on-complete` hook could name the
//! chosen pool's rule directly, but costs a second fresh instance per
//! request — ~30 µs, more than the decision itself — for what `grants`
//! already says.)
//!
//! Place it after jwt-auth (it reads jwt-auth's facts) on every route; with
//! `[residency]` configured, `portcullis check` refuses a route without it.
#![no_std]

extern crate alloc;

use alloc::string::String;
use portcullis_sdk::{Policy, RequestHead, Verdict, audit, export_policy, settings, trap};

pub mod config;
pub mod decide;

#[cfg(test)]
mod tests;

/// The residency policy.
pub struct Residency;

impl Policy for Residency {
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
}

export_policy!(Residency);
