//! The edge plan (`portcullis-edge/1`): the node's resolved configuration
//! as one JSON document, the Spin variable `portcullis_config` of the edge
//! component. It is made from the same [`Snapshot`] `check` and `serve`
//! build, so the edge gets exactly the node's flattened settings (residency's
//! derived ones and the router's table included), route overrides, limits and
//! key sets. Every map is a `BTreeMap`: keys come out sorted, and the same
//! configuration always gives the same bytes.
//!
//! The document may hold secrets (an HS256 JWKS, a body HMAC key): the
//! manifest marks the variable `secret`, and nothing here logs it.

use crate::config::{self, ConfigErrors, Source};
use crate::jwks::EdgeKeys;
use crate::serve::StartError;
use crate::snapshot::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;

/// The plan's `format`.
pub const FORMAT: &str = "portcullis-edge/1";

/// The policy crates compiled into the edge component; a policy whose
/// component is none of them cannot run at the edge.
pub const EDGE_CRATES: [&str; 6] = ["router", "security-headers", "rate-limit", "jwt-auth", "residency", "webhook-signature"];

/// The whole plan.
#[derive(Clone, Serialize)]
pub struct Plan {
    /// Always [`FORMAT`].
    pub format: &'static str,
    /// The node's chain version (`Snapshot::version`).
    pub chain: String,
    /// The router policy's name.
    pub router: String,
    /// Every policy, by name.
    pub policies: BTreeMap<String, PlanPolicy>,
    /// Every route, by name.
    pub routes: BTreeMap<String, PlanRoute>,
    /// Every pool, by name.
    pub pools: BTreeMap<String, PlanPool>,
    /// Every `[[limits]]`, by name.
    pub limits: BTreeMap<String, PlanLimit>,
    /// Every `[[jwks]]` issuer: `{"url": ...}` or `{"jwks": ...}`.
    pub issuers: BTreeMap<String, EdgeKeys>,
    /// Peers whose forwarding headers are believed (CIDRs).
    pub trusted_proxies: Vec<String>,
    /// Largest request head, bytes.
    pub max_request_head: u64,
}

/// A policy: which compiled-in crate runs it, with which settings.
#[derive(Clone, Serialize)]
pub struct PlanPolicy {
    /// One of [`EDGE_CRATES`].
    #[serde(rename = "crate")]
    pub krate: String,
    /// Where its facts must live (`route` for the router).
    pub namespace: String,
    /// Flattened settings, exactly as the node hands them to the policy.
    pub settings: BTreeMap<String, String>,
}

/// A route.
#[derive(Clone, Serialize)]
pub struct PlanRoute {
    /// Policies after the router, in order.
    pub chain: Vec<PlanLink>,
    /// Candidate pools, in order of preference.
    pub pools: Vec<String>,
    /// The policy that must narrow the pools (residency), if any.
    pub narrowed_by: Option<String>,
    /// Largest request body.
    pub body_limit: u64,
    /// Whether `Upgrade` requests pass.
    pub websocket: bool,
    /// Budget for the upstream's response head, overriding the pool's.
    pub timeout_ms: Option<u64>,
    /// The body's HMAC for the route's policies.
    pub body_hmac: Option<PlanBodyHmac>,
}

/// One policy of a route's chain.
#[derive(Clone, Serialize)]
pub struct PlanLink {
    /// The policy's name.
    pub policy: String,
    /// The route's flattened overrides of its settings.
    pub overrides: Option<BTreeMap<String, String>>,
}

/// `[routes.body_hmac]` as the node uses it.
#[derive(Clone, Serialize)]
pub struct PlanBodyHmac {
    /// The key, hex.
    pub key_hex: String,
    /// Largest body read (already capped by the route's body limit).
    pub max_bytes: u64,
}

/// A pool.
#[derive(Clone, Serialize)]
pub struct PlanPool {
    /// Its region, if any.
    pub region: Option<String>,
    /// `http` or `https`.
    pub scheme: String,
    /// `host:port` of each target.
    pub targets: Vec<String>,
    /// Budget for a connection (`connect_timeout_ms`).
    pub connect_timeout_ms: u64,
    /// Budget for the response head (`response_timeout_ms`; a route's `timeout_ms` overrides it).
    pub response_timeout_ms: u64,
}

/// A limit's GCRA, the node's own definition.
#[derive(Clone, Serialize)]
pub struct PlanLimit {
    /// One unit comes back every this many nanoseconds (period / rate).
    pub interval_ns: u64,
    /// Units at once.
    pub burst: u32,
    /// Units per window (`rate`).
    pub quota: u64,
    /// The `RateLimit-Policy` item.
    pub policy: String,
}

/// The crate a component is, if it is one the edge has compiled in:
/// `builtin:router` → `router`, `.../rate_limit.wasm` → `rate-limit`.
pub fn edge_crate(component: &str) -> Option<&'static str> {
    let name = match component.strip_prefix("builtin:") {
        Some(builtin) => builtin.to_string(),
        None => std::path::Path::new(component).file_stem()?.to_str()?.replace('_', "-"),
    };
    EDGE_CRATES.iter().copied().find(|c| *c == name)
}

/// Build the snapshot as `check` does (every error of `check`, and then
/// every policy the edge cannot run) and make its plan.
pub async fn build(source: &Source) -> Result<Plan, StartError> {
    let snap = crate::serve::load(source).await?;
    let config = config::parse(source)?;
    let unsupported: Vec<_> = config
        .policies
        .iter()
        .filter(|(_, def)| edge_crate(def.component.get_ref()).is_none())
        .map(|(name, def)| {
            source.error_at(
                &def.component,
                format!("policies.{name}.component"),
                format!("policy {name:?} runs component {:?}, which is not compiled into the edge (edge crates: {})", def.component.get_ref(), EDGE_CRATES.join(", ")),
            )
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(ConfigErrors(unsupported).into());
    }
    Ok(of(&snap))
}

/// The plan of a snapshot whose policies all have an edge crate.
pub fn of(snap: &Snapshot) -> Plan {
    let policies = snap
        .policies
        .iter()
        .map(|(name, p)| {
            let plan = PlanPolicy { krate: edge_crate(&p.source).unwrap_or("unsupported").to_string(), namespace: p.namespace.clone(), settings: (*p.settings).clone() };
            (name.clone(), plan)
        })
        .collect();
    let routes = snap
        .routes
        .iter()
        .map(|(name, r)| {
            let route = PlanRoute {
                chain: r.chain.iter().map(|l| PlanLink { policy: l.policy.name.to_string(), overrides: l.overrides.as_ref().map(|o| (**o).clone()) }).collect(),
                pools: r.pools.clone(),
                narrowed_by: r.narrowed_by.clone(),
                body_limit: r.body_limit,
                websocket: r.websocket,
                timeout_ms: r.timeout.map(|t| t.as_millis() as u64),
                body_hmac: r.body_hmac.as_ref().map(|h| PlanBodyHmac { key_hex: h.key_hex(), max_bytes: h.max_bytes }),
            };
            (name.clone(), route)
        })
        .collect();
    let pools = snap
        .pools
        .iter()
        .map(|(name, p)| (name.clone(), PlanPool {
                    region: p.region.clone(),
                    scheme: p.scheme.to_string(),
                    targets: p.targets.iter().map(|t| t.address.clone()).collect(),
                    connect_timeout_ms: p.config.connect_timeout_ms,
                    response_timeout_ms: p.config.response_timeout_ms,
                }))
        .collect();
    let limits = snap
        .services
        .limits()
        .definitions()
        .map(|(name, interval, burst, quota, policy)| (name.to_string(), PlanLimit { interval_ns: interval.as_nanos() as u64, burst, quota, policy: policy.to_string() }))
        .collect();
    Plan {
        format: FORMAT,
        chain: snap.version.clone(),
        router: snap.router.policy.name.to_string(),
        policies,
        routes,
        pools,
        limits,
        issuers: snap.services.jwks_cache().edge_sources(),
        trusted_proxies: snap.trusted_proxies.iter().map(ToString::to_string).collect(),
        max_request_head: snap.max_request_head,
    }
}

#[cfg(test)]
mod tests {
    use super::edge_crate;

    #[test]
    fn crates_come_from_the_component_name() {
        assert_eq!(edge_crate("builtin:router"), Some("router"));
        assert_eq!(edge_crate("../target/components/wasm32-wasip2/release/rate_limit.wasm"), Some("rate-limit"));
        assert_eq!(edge_crate("/opt/portcullis/jwt_auth.wasm"), Some("jwt-auth"));
        assert_eq!(edge_crate("webhook-signature.wasm"), Some("webhook-signature"));
        assert_eq!(edge_crate("components/test_policy.wasm"), None);
        assert_eq!(edge_crate("builtin:other"), None);
    }
}
