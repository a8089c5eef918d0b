//! Chain stage: the request head crosses into the policies, router first,
//! then the route's chain in order. Each `on-request` runs in a fresh
//! instance (kept for the same request's `on-response`, if the policy has
//! one); its edits are applied (and its facts checked against its
//! namespace) before the next policy sees the head.

use super::respond::{header_pair, reply_to_response};
use crate::body::ProxyBody;
use crate::error::GatewayError;
use crate::runtime::bindings::types::{self, Verdict};
use crate::runtime::{FailureClass, Kept, PolicyFailure, hooks};
use crate::snapshot::{Link, RouteEntry, Snapshot};
use http::{HeaderMap, Response};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which policy of a request's chain: the router or the route's n-th link.
#[derive(Debug, Clone, Copy)]
pub enum LinkRef {
    /// The router.
    Router,
    /// The route's chain, by index.
    Chain(usize),
}

impl LinkRef {
    /// The link in a snapshot.
    pub fn get<'a>(self, snap: &'a Snapshot, route: Option<&'a RouteEntry>) -> &'a Link {
        match (self, route) {
            (LinkRef::Router, _) => &snap.router,
            (LinkRef::Chain(i), Some(r)) => &r.chain[i],
            (LinkRef::Chain(_), None) => unreachable!("a chain link exists only once a route is chosen"),
        }
    }
}

/// What the chain decided, and what it left for later stages.
pub struct ChainRun {
    /// The head after every edit.
    pub head: types::RequestHead,
    /// Upstream request headers after every edit.
    pub headers: HeaderMap,
    /// Policies whose `on-request` ran, in order.
    pub ran: Vec<LinkRef>,
    /// Each policy's verdict, in order.
    pub verdicts: Vec<(String, String)>,
    /// Audit fields by policy.
    pub audit: BTreeMap<String, BTreeMap<String, String>>,
    /// Response headers requested with `proceed`.
    pub response_headers: Vec<types::Header>,
    /// By position in `ran`: the instance kept for that policy's `on-response`.
    pub kept: Vec<Option<Kept>>,
}

/// How the chain ended.
pub enum ChainEnd {
    /// Every policy proceeded: forward.
    Proceed,
    /// A policy answered.
    Respond {
        /// The policy that answered.
        policy: String,
        /// Its answer.
        response: Response<ProxyBody>,
    },
    /// A policy failed, or the router named an unknown route.
    Failed(GatewayError),
}

impl ChainRun {
    /// A run over a fresh head.
    pub fn new(head: types::RequestHead, headers: HeaderMap) -> ChainRun {
        ChainRun { head, headers, ran: Vec::new(), verdicts: Vec::new(), audit: BTreeMap::new(), response_headers: Vec::new(), kept: Vec::new() }
    }

    /// Add policy audit fields to the record.
    pub fn add_audit(&mut self, policy: &str, fields: Vec<(String, String)>) {
        if !fields.is_empty() {
            self.audit.entry(policy.to_string()).or_default().extend(fields);
        }
    }
}

/// Run the router, then the chosen route's chain.
pub async fn run(snap: &Arc<Snapshot>, run: &mut ChainRun, body: &mut super::RequestBody) -> (ChainEnd, Option<String>) {
    match step(snap, None, LinkRef::Router, run).await {
        Ok(None) => {}
        Ok(Some(end)) => return (end, None),
        Err(e) => return (ChainEnd::Failed(e), None),
    }
    let Some(name) = run.head.facts.iter().find(|(k, _)| k == "route.name").map(|(_, v)| v.clone()) else {
        let failure = contract(&snap.router, "the router proceeded without a route.name fact".into());
        return (ChainEnd::Failed(failure.into()), None);
    };
    let Some(route) = snap.routes.get(&name) else {
        return (ChainEnd::Failed(GatewayError::UnknownRoute(name)), None);
    };
    run.head.route = Some(name.clone());
    // Digest stage: the body's HMAC, before the policies that check it.
    if let Some(hmac) = &route.body_hmac {
        match hmac.attach(run, body).await {
            Ok(()) => {}
            Err(e) => return (ChainEnd::Failed(e), Some(name)),
        }
    }
    for i in 0..route.chain.len() {
        match step(snap, Some(route), LinkRef::Chain(i), run).await {
            Ok(None) => {}
            Ok(Some(end)) => return (end, Some(name)),
            Err(e) => return (ChainEnd::Failed(e), Some(name)),
        }
    }
    (ChainEnd::Proceed, Some(name))
}

/// One policy's `on-request`; `Some` when the chain ends here.
async fn step(snap: &Snapshot, route: Option<&RouteEntry>, which: LinkRef, run: &mut ChainRun) -> Result<Option<ChainEnd>, GatewayError> {
    let link = which.get(snap, route);
    let policy = &link.policy;
    let state = link.state(&run.head.id, snap);
    // A policy with an `on-response` keeps its instance for it: one
    // instantiation per request instead of two.
    let mut kept = None;
    let slot = link.hooks.contains(types::HookSet::ON_RESPONSE).then_some(&mut kept);
    let (verdict, audit) = hooks::on_request_in(&snap.runtime, &policy.module, state, &run.head, slot).await;
    run.add_audit(&policy.name, audit);
    run.ran.push(which);
    run.kept.push(kept);
    let verdict = match verdict {
        Ok(v) => v,
        Err(failure) => {
            run.verdicts.push((policy.name.to_string(), format!("failed:{}", failure.class)));
            if let Some(limit) = broken_limit(policy, &failure) {
                run.add_audit(&policy.name, vec![("limit".into(), limit)]);
            }
            return Err(failure.into());
        }
    };
    match verdict {
        Verdict::Respond(reply) => {
            let status = reply.status;
            match reply_to_response(reply) {
                Ok(response) => {
                    run.verdicts.push((policy.name.to_string(), format!("respond:{status}")));
                    Ok(Some(ChainEnd::Respond { policy: policy.name.to_string(), response }))
                }
                Err(why) => {
                    run.verdicts.push((policy.name.to_string(), "failed:contract".into()));
                    Err(contract(link, why).into())
                }
            }
        }
        Verdict::Proceed(edits) => match apply(link, run, edits) {
            Ok(()) => {
                run.verdicts.push((policy.name.to_string(), "proceed".into()));
                Ok(None)
            }
            Err(why) => {
                run.verdicts.push((policy.name.to_string(), "failed:contract".into()));
                Err(contract(link, why).into())
            }
        },
    }
}

/// Which of its own limits a policy broke, for the audit record (the host writes it; the policy cannot).
pub fn broken_limit(policy: &crate::snapshot::LoadedPolicy, failure: &PolicyFailure) -> Option<String> {
    match failure.class {
        crate::runtime::FailureClass::MemoryLimit => Some(format!("memory {} bytes", policy.memory_cap)),
        crate::runtime::FailureClass::Deadline => Some(format!("deadline {} ms", policy.deadline.as_millis())),
        _ => None,
    }
}

fn contract(link: &Link, detail: String) -> PolicyFailure {
    PolicyFailure { policy: link.policy.name.to_string(), class: FailureClass::Contract, detail }
}

/// Apply a `proceed`'s edits to the head and the upstream headers.
fn apply(link: &Link, run: &mut ChainRun, edits: types::Edits) -> Result<(), String> {
    let ns = &link.policy.namespace;
    for (name, _) in &edits.facts {
        let owned = name.len() > ns.len() + 1 && name.starts_with(ns.as_str()) && name.as_bytes()[ns.len()] == b'.';
        if !owned {
            return Err(format!("wrote fact {name:?} outside its namespace {ns:?}"));
        }
    }
    for name in &edits.remove_headers {
        let lower = name.to_ascii_lowercase();
        run.headers.remove(lower.as_str());
        run.head.headers.retain(|h| h.name != lower);
    }
    for h in &edits.set_headers {
        let (n, v) = header_pair(&h.name, &h.value)?;
        run.head.headers.retain(|x| x.name != n.as_str());
        run.head.headers.push(types::Header { name: n.as_str().to_string(), value: h.value.clone() });
        run.headers.insert(n, v);
    }
    for h in &edits.response_headers {
        header_pair(&h.name, &h.value)?;
    }
    run.response_headers.extend(edits.response_headers);
    for (name, value) in edits.facts {
        match run.head.facts.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => run.head.facts.push((name, value)),
        }
    }
    Ok(())
}
