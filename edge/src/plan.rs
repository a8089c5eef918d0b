//! The edge plan: the node's resolved configuration (`portcullis edge plan`,
//! format `portcullis-edge/1`), read from the Spin variable
//! `portcullis_config`. The node builds it from the same snapshot `serve`
//! runs, so settings, route overrides, limits and residency's derived
//! settings are the node's own.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Flattened settings, as the node hands them to a policy.
pub type Settings = BTreeMap<String, String>;

/// The whole plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Always `portcullis-edge/1`.
    pub format: String,
    /// The node's chain version (audit records name it).
    pub chain: String,
    /// The router's policy name.
    pub router: String,
    /// Policies by name.
    pub policies: BTreeMap<String, Policy>,
    /// Routes by name.
    pub routes: BTreeMap<String, Route>,
    /// Pools by name.
    pub pools: BTreeMap<String, Pool>,
    /// Rate limits by name.
    #[serde(default)]
    pub limits: BTreeMap<String, Limit>,
    /// JWKS by issuer.
    #[serde(default)]
    pub issuers: BTreeMap<String, Issuer>,
    /// Peers whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request head, bytes.
    pub max_request_head: u64,
}

/// One configured policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Which compiled-in crate runs it.
    #[serde(rename = "crate")]
    pub krate: String,
    /// Where the facts it writes must live.
    pub namespace: String,
    /// Its settings.
    pub settings: Settings,
}

/// One route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Policies after the router, in order.
    pub chain: Vec<Link>,
    /// Pools, in order of preference.
    pub pools: Vec<String>,
    /// The policy that must narrow the pools (`<name>.pools`) before anything is forwarded.
    pub narrowed_by: Option<String>,
    /// Largest request body.
    pub body_limit: u64,
    /// Whether `Upgrade` requests pass. Not at the edge: wasi:http has no upgrades.
    #[serde(default)]
    #[allow(dead_code)]
    pub websocket: bool,
    /// Budget for the upstream's response head, overriding the pool's.
    pub timeout_ms: Option<u64>,
    /// The body's HMAC for the route's policies.
    pub body_hmac: Option<BodyHmac>,
}

/// A policy on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The policy's name.
    pub policy: String,
    /// The route's overrides of its settings.
    pub overrides: Option<Settings>,
}

/// `[routes.body_hmac]`, resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyHmac {
    /// The key, hex.
    pub key_hex: String,
    /// Largest body digested.
    pub max_bytes: u64,
}

/// One pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Region, for residency and the audit record.
    pub region: Option<String>,
    /// `http` or `https`.
    pub scheme: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Budget for a connection.
    pub connect_timeout_ms: u64,
    /// Budget for the response head (a route's `timeout_ms` overrides it).
    pub response_timeout_ms: u64,
}

/// One rate limit: the node's GCRA definition.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// One unit comes back every this many nanoseconds.
    pub interval_ns: u64,
    /// Units at once.
    pub burst: u32,
    /// Units per window (`q` of `RateLimit-Policy`).
    pub quota: u64,
    /// The limit's `RateLimit-Policy` item.
    pub policy: String,
}

/// Where an issuer's keys come from.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Issuer {
    /// Fetched over outbound HTTP and cached in key-value.
    Url {
        /// The JWKS URL.
        url: String,
    },
    /// Given in the plan.
    Inline {
        /// The JWKS JSON.
        jwks: String,
    },
}

/// Why the plan is unusable.
#[derive(Debug)]
pub struct PlanError(pub String);

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Plan {
    /// Parse and check the plan.
    pub fn parse(text: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_json::from_str(text).map_err(|e| PlanError(format!("portcullis_config: {e}")))?;
        if plan.format != "portcullis-edge/1" {
            return Err(PlanError(format!("portcullis_config: format {:?} is not portcullis-edge/1", plan.format)));
        }
        if !plan.policies.contains_key(&plan.router) {
            return Err(PlanError(format!("portcullis_config: router {:?} is not among the policies", plan.router)));
        }
        for (name, policy) in &plan.policies {
            if crate::policies::vtable(&policy.krate).is_none() {
                return Err(PlanError(format!("portcullis_config: policy {name:?} needs crate {:?}, which is not compiled into this edge (it has {})", policy.krate, crate::policies::CRATES.join(", "))));
            }
        }
        for (name, route) in &plan.routes {
            for link in &route.chain {
                if !plan.policies.contains_key(&link.policy) {
                    return Err(PlanError(format!("portcullis_config: route {name:?} names unknown policy {:?}", link.policy)));
                }
            }
        }
        Ok(plan)
    }
}
