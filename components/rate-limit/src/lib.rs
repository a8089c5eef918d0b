//! The rate-limit policy: picks the limits that apply to a request and asks
//! the host for each (`io.rate-acquire`); the budgets themselves live in the
//! host (local GCRA with governor, or shared in Redis), so a reload or a swap
//! of this component keeps every count.
//!
//! # What it does
//!
//! `on-request`, for each enabled rule in name order whose key parts are all
//! present:
//!
//! * takes `cost` from the rule's limit under the rule's key;
//! * **refused**: answers **429** problem+json with `Retry-After` (whole
//!   seconds, rounded up), `RateLimit-Policy` (every applicable rule's
//!   policy item) and `RateLimit` (`"<limit>";r=0;t=<s>`), and audits
//!   `limit`, `key` (the key's *parts*, e.g. `fact:jwt.sub`, never the
//!   value), `source` and `retry-after-ms`; later rules are not asked;
//! * **shared store unreachable and the limit fails closed**
//!   (`when_unavailable = "deny"`): **503** problem+json with
//!   `Retry-After: 1`, audited `outcome = unavailable`;
//! * otherwise proceeds, and the response carries `RateLimit-Policy` and
//!   `RateLimit` with what is left of each applied limit. An answer from the
//!   local fallback is audited (`source = local-fallback`).
//!
//! A rule whose key part is absent does not apply (a per-subject limit does
//! not count anonymous requests; pair it with a per-IP rule).
//!
//! # Settings
//!
//! Named rules under `[policies.<name>.settings.rules.<rule>]`, overridable
//! per route key by key (`[routes.settings.<name>] "rules.per-ip.enabled" = false`):
//!
//! | setting | type | default | meaning |
//! |---|---|---|---|
//! | `limit` | name | the rule's name | a `[[limits]]` entry of the gateway config |
//! | `key` | list | — | parts joined into the key: `ip` (an IPv6 client by its /64), `route`, `method`, `fact:<name>` (e.g. `fact:jwt.sub`), `header:<name>` (e.g. `header:x-api-key`) |
//! | `cost` | integer ≥ 1 | `1` | units taken per request |
//! | `enabled` | bool | `true` | `false` switches the rule off (per route) |
//!
//! `check-config` refuses unknown settings, bad key parts, and a `limit`
//! the gateway does not configure (asked through `host.limit-policy`).
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use portcullis_sdk::{Edits, Level, RateError, RequestHead, Verdict, audit, export_policy, field, limit_policy, log, problem, rate_acquire, settings, trap};

pub mod rules;

use rules::{ceil_secs, key_of, ratelimit_item};

/// The rate-limit policy.
pub struct RateLimit;

impl portcullis_sdk::Policy for RateLimit {
    fn check_config() -> Result<(), String> {
        for rule in rules::parse(&settings(""))? {
            if limit_policy(&rule.limit).is_none() {
                return Err(format!("rules.{}.limit: no limit named {:?} in the gateway's [[limits]]", rule.name, rule.limit));
            }
        }
        Ok(())
    }

    fn on_request(req: RequestHead) -> Verdict {
        // check-config passed for these settings; anything else is a broken host.
        let rules = rules::parse(&settings("")).unwrap_or_else(|_| trap());
        let mut policies: Vec<String> = Vec::new();
        let mut states: Vec<String> = Vec::new();
        let mut fallback = false;
        for rule in &rules {
            let Some(key) = key_of(rule, &req) else { continue };
            match rate_acquire(&rule.limit, &key, rule.cost) {
                Ok(o) => {
                    policies.push(o.policy.clone());
                    fallback |= o.source == "local-fallback";
                    if !o.allowed {
                        let retry = ceil_secs(o.retry_after_ms).max(1);
                        audit(&[
                            field("outcome", "limited"),
                            field("limit", rule.limit.as_str()),
                            field("key", rule.key_kinds()),
                            field("source", o.source.as_str()),
                            field("retry-after-ms", o.retry_after_ms.to_string()),
                        ]);
                        let detail = format!("limit {:?} allows no more requests now; retry in {retry} s", rule.limit);
                        return problem(429, "Too Many Requests", &detail)
                            .header("retry-after", retry.to_string())
                            .header("ratelimit-policy", policies.join(", "))
                            .header("ratelimit", ratelimit_item(&rule.limit, 0, o.reset_ms))
                            .respond();
                    }
                    states.push(ratelimit_item(&rule.limit, o.remaining, o.reset_ms));
                }
                Err(RateError::Unavailable(why)) => {
                    log(Level::Warn, &format!("limit {:?}: {why}", rule.limit));
                    audit(&[field("outcome", "unavailable"), field("limit", rule.limit.as_str())]);
                    let detail = format!("limit {:?} cannot be checked now and fails closed", rule.limit);
                    return problem(503, "Service Unavailable", &detail).header("retry-after", "1").respond();
                }
                Err(RateError::UnknownLimit(name)) => {
                    // Only possible if the gateway's limits changed under a
                    // checked configuration: refuse rather than wave through.
                    log(Level::Error, &format!("limit {name:?} is not configured"));
                    audit(&[field("outcome", "unknown-limit"), field("limit", name.as_str())]);
                    return problem(500, "Internal Server Error", "a rate limit of this route is not configured").respond();
                }
            }
        }
        if fallback {
            audit(&[field("source", "local-fallback")]);
        }
        if states.is_empty() {
            return portcullis_sdk::proceed();
        }
        Edits::new()
            .response_header("ratelimit-policy", policies.join(", "))
            .response_header("ratelimit", states.join(", "))
            .proceed()
    }
}

export_policy!(RateLimit);
