//! Route stage: from the chain's facts to the upstream pools to try, and the
//! route's body limit. The router's `route.pools` are the candidates; a later
//! policy may narrow them (`<its name>.pools`, e.g. residency), never widen.

use crate::error::GatewayError;
use crate::runtime::settings::decode_list;
use crate::runtime::{FailureClass, PolicyFailure};
use crate::snapshot::{RouteEntry, Snapshot};
use std::sync::Arc;

/// The pools to try for a request, in order, after every policy narrowed them.
///
/// Every `*.pools` fact narrows: a pool stays a candidate only if the route
/// has it and *every* such fact lists it, so a policy later in the chain can
/// never bring back a pool an earlier one (residency) took out. The order is
/// the last fact's (the latest policy's preference).
///
/// A route with `narrowed_by` (residency) fails closed when that policy
/// proceeded without writing `<policy>.pools`: forwarding then would send
/// the data wherever the route's pools are.
pub fn candidate_pools(snap: &Snapshot, route: &RouteEntry, facts: &[(String, String)]) -> Result<Vec<Arc<crate::pool::Pool>>, GatewayError> {
    if let Some(policy) = &route.narrowed_by
        && !facts.iter().any(|(k, _)| k.strip_suffix(".pools") == Some(policy.as_str()))
    {
        return Err(GatewayError::Policy(PolicyFailure {
            policy: policy.clone(),
            class: FailureClass::Contract,
            detail: format!("proceeded without the fact \"{policy}.pools\": the route's pools were not narrowed, so nothing is forwarded"),
        }));
    }
    let names = narrow(&route.pools, facts);
    let pools: Vec<_> = names.iter().filter_map(|n| snap.pools.get(n).cloned()).collect();
    if pools.is_empty() {
        return Err(GatewayError::NoHealthyTarget { pools: names });
    }
    Ok(pools)
}

/// The route's pools that every `*.pools` fact lists, in the last fact's order.
pub fn narrow(route_pools: &[String], facts: &[(String, String)]) -> Vec<String> {
    let narrowing: Vec<Vec<String>> = facts.iter().filter(|(k, _)| k.ends_with(".pools")).map(|(_, v)| decode_list(v)).collect();
    let order = narrowing.last().map_or(route_pools, Vec::as_slice);
    let mut names: Vec<String> = Vec::new();
    for p in order {
        if route_pools.contains(p) && narrowing.iter().all(|l| l.contains(p)) && !names.contains(p) {
            names.push(p.clone());
        }
    }
    names
}

/// Check a declared `Content-Length` against the route's limit before any byte is read.
pub fn check_declared_length(headers: &http::HeaderMap, limit: u64) -> Result<(), GatewayError> {
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(GatewayError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::narrow;

    fn facts(f: &[(&str, &str)]) -> Vec<(String, String)> {
        f.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn policies_narrow_and_never_widen() {
        let route: Vec<String> = ["us", "eu", "eu2"].map(String::from).to_vec();
        assert_eq!(narrow(&route, &facts(&[("route.name", "r"), ("route.pools", "us,eu,eu2")])), ["us", "eu", "eu2"]);
        // Residency keeps the EU pools, in its order.
        assert_eq!(narrow(&route, &facts(&[("route.pools", "us,eu,eu2"), ("residency.pools", "eu2,eu")])), ["eu2", "eu"]);
        // A later policy cannot bring the US pool back, nor add a pool the route lacks.
        let f = facts(&[("route.pools", "us,eu,eu2"), ("residency.pools", "eu,eu2"), ("other.pools", "us,eu,elsewhere")]);
        assert_eq!(narrow(&route, &f), ["eu"]);
        // Nothing left: nothing to forward to.
        assert!(narrow(&route, &facts(&[("residency.pools", "")])).is_empty());
        assert_eq!(narrow(&route, &facts(&[("residency.pools", "eu,eu")])), ["eu"]);
    }
}
