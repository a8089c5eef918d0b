//! Route stage: from the chain's facts to the upstream pools to try, and the
//! route's body limit. The router's `route.pools` are the candidates; a later
//! policy may narrow them (`<its name>.pools`, e.g. residency), never widen.

use crate::error::GatewayError;
use crate::runtime::settings::decode_list;
use crate::snapshot::{RouteEntry, Snapshot};
use std::sync::Arc;

/// The pools to try for a request, in order, after every policy narrowed them.
pub fn candidate_pools(snap: &Snapshot, route: &RouteEntry, facts: &[(String, String)]) -> Result<Vec<Arc<crate::pool::Pool>>, GatewayError> {
    // The last `*.pools` fact wins: the chain runs in order and each may narrow.
    let chosen = facts.iter().rev().find(|(k, _)| k.ends_with(".pools")).map(|(_, v)| decode_list(v));
    let names: Vec<String> = match chosen {
        Some(list) => list.into_iter().filter(|p| route.pools.contains(p)).collect(),
        None => route.pools.clone(),
    };
    let pools: Vec<_> = names.iter().filter_map(|n| snap.pools.get(n).cloned()).collect();
    if pools.is_empty() {
        return Err(GatewayError::NoHealthyTarget { pools: names });
    }
    Ok(pools)
}

/// Check a declared `Content-Length` against the route's limit before any byte is read.
pub fn check_declared_length(headers: &http::HeaderMap, limit: u64) -> Result<(), GatewayError> {
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(GatewayError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}
