//! Chain stage, as on the node (`host/src/proxy/chain.rs`): the router
//! first, then the route's chain in order; each policy sees the earlier
//! ones' header edits and facts, may write facts only in its own namespace,
//! and the first `respond` ends the chain. Here a policy is a function
//! call into a compiled-in crate rather than a fresh instance.

use crate::plan::{Link, Plan, Settings};
use crate::services::{PolicyCall, Services};
use portcullis_sdk::embedded::{self, PolicyVTable};
use portcullis_sdk::{Completion, Edits, Header, HookSet, Reply, RequestHead, ResponseEdits, ResponseHead, Verdict};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Which policy of a request's chain.
#[derive(Debug, Clone, Copy)]
pub enum LinkRef {
    /// The router.
    Router,
    /// The route's n-th policy.
    Chain(usize),
}

/// A policy as it runs on a route: name, settings, overrides, code.
pub struct Resolved<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub krate: &'a str,
    pub settings: &'a Settings,
    pub overrides: Option<&'a Settings>,
    pub vtable: PolicyVTable,
}

impl LinkRef {
    /// The policy behind this link.
    pub fn resolve<'a>(self, plan: &'a Plan, route: Option<&'a str>) -> Resolved<'a> {
        let (name, overrides): (&str, Option<&Settings>) = match self {
            LinkRef::Router => (plan.router.as_str(), None),
            LinkRef::Chain(i) => {
                let route = route.and_then(|r| plan.routes.get(r)).expect("a chain link exists only once a route is chosen");
                let Link { policy, overrides } = &route.chain[i];
                (policy.as_str(), overrides.as_ref())
            }
        };
        let p = &plan.policies[name];
        Resolved { name, namespace: &p.namespace, krate: &p.krate, settings: &p.settings, overrides, vtable: crate::policies::vtable(&p.krate).expect("checked when the plan was read") }
    }
}

/// Why the gateway itself answers.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    /// Problem type slug (`urn:portcullis:problem:<slug>`).
    pub slug: String,
    /// What the client is told.
    pub detail: String,
}

impl Failure {
    /// A policy broke the contract (500, as on the node).
    pub fn contract(policy: &str) -> Failure {
        Failure { status: 500, slug: "policy-contract".into(), detail: format!("Policy {policy:?} broke the gateway contract; the request was refused.") }
    }
}

/// How the chain ended.
pub enum End {
    /// Every policy proceeded.
    Proceed,
    /// A policy answered.
    Respond { policy: String, reply: Reply },
    /// The gateway answers.
    Failed(Failure),
}

/// What the chain decided and left for later stages.
pub struct Run {
    /// The head after every edit (its headers are what goes upstream).
    pub head: RequestHead,
    /// The route the router named.
    pub route: Option<String>,
    /// Policies whose `on-request` ran, in order.
    pub ran: Vec<LinkRef>,
    /// Each policy's verdict.
    pub verdicts: Vec<(String, String)>,
    /// Audit fields by policy.
    pub audit: BTreeMap<String, BTreeMap<String, String>>,
    /// Response headers asked for with `proceed`.
    pub response_headers: Vec<Header>,
}

/// Call one hook of `p` with the host functions answered for it.
pub fn call<R>(services: &Services, p: &Resolved<'_>, audit: &mut BTreeMap<String, BTreeMap<String, String>>, f: impl FnOnce(&PolicyVTable) -> R) -> R {
    let backend = PolicyCall { services, policy: p.name, settings: p.settings, overrides: p.overrides, audit: RefCell::new(Vec::new()) };
    let out = embedded::call(&backend, || f(&p.vtable));
    let fields = backend.audit.into_inner();
    if !fields.is_empty() {
        audit.entry(p.name.to_string()).or_default().extend(fields);
    }
    out
}

impl Run {
    /// A run over a fresh head.
    pub fn new(head: RequestHead) -> Run {
        Run { head, route: None, ran: Vec::new(), verdicts: Vec::new(), audit: BTreeMap::new(), response_headers: Vec::new() }
    }

    /// The router, then the named route's chain.
    pub async fn run(&mut self, services: &Services, body: &mut crate::head::Body) -> End {
        if let Some(end) = self.step(services, LinkRef::Router).await {
            return end;
        }
        let Some(name) = self.head.facts.iter().find(|(k, _)| k == "route.name").map(|(_, v)| v.clone()) else {
            return End::Failed(Failure::contract(&services.plan.router));
        };
        let Some(route) = services.plan.routes.get(&name) else {
            return End::Failed(Failure { status: 500, slug: "unknown-route".into(), detail: "The gateway's configuration is inconsistent; the request was refused.".into() });
        };
        self.route = Some(name.clone());
        self.head.route = Some(name);
        // Digest stage: the body's HMAC, before the policies that check it.
        if let Some(hmac) = &route.body_hmac
            && let Err(failure) = crate::forward::digest(hmac, &mut self.head, body).await
        {
            return End::Failed(failure);
        }
        for i in 0..route.chain.len() {
            if let Some(end) = self.step(services, LinkRef::Chain(i)).await {
                return end;
            }
        }
        End::Proceed
    }

    async fn step(&mut self, services: &Services, which: LinkRef) -> Option<End> {
        let plan = &services.plan;
        let route = self.route.clone();
        let p = which.resolve(plan, route.as_deref());
        if p.krate == "jwt-auth" {
            crate::jwks::ensure(services).await;
        }
        let head = self.head.clone();
        let verdict = call(services, &p, &mut self.audit, |vt| (vt.on_request)(head));
        self.ran.push(which);
        match verdict {
            Verdict::Respond(reply) => {
                if let Err(why) = check_reply(&reply) {
                    eprintln!("{}: {why}", p.name);
                    self.verdicts.push((p.name.to_string(), "failed:contract".into()));
                    return Some(End::Failed(Failure::contract(p.name)));
                }
                self.verdicts.push((p.name.to_string(), format!("respond:{}", reply.status)));
                Some(End::Respond { policy: p.name.to_string(), reply })
            }
            Verdict::Proceed(edits) => match self.apply(p.namespace, edits) {
                Ok(()) => {
                    self.verdicts.push((p.name.to_string(), "proceed".into()));
                    None
                }
                Err(why) => {
                    eprintln!("{}: {why}", p.name);
                    self.verdicts.push((p.name.to_string(), "failed:contract".into()));
                    Some(End::Failed(Failure::contract(p.name)))
                }
            },
        }
    }

    /// Apply a `proceed`'s edits to the head.
    fn apply(&mut self, namespace: &str, edits: Edits) -> Result<(), String> {
        for (name, _) in &edits.facts {
            let owned = name.len() > namespace.len() + 1 && name.starts_with(namespace) && name.as_bytes()[namespace.len()] == b'.';
            if !owned {
                return Err(format!("wrote fact {name:?} outside its namespace {namespace:?}"));
            }
        }
        for name in &edits.remove_headers {
            let lower = name.to_ascii_lowercase();
            self.head.headers.retain(|h| h.name != lower);
        }
        for h in &edits.set_headers {
            check_header(&h.name, &h.value)?;
            let lower = h.name.to_ascii_lowercase();
            self.head.headers.retain(|x| x.name != lower);
            self.head.headers.push(Header { name: lower, value: h.value.clone() });
        }
        for h in &edits.response_headers {
            check_header(&h.name, &h.value)?;
        }
        self.response_headers.extend(edits.response_headers);
        for (name, value) in edits.facts {
            match self.head.facts.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 = value,
                None => self.head.facts.push((name, value)),
            }
        }
        Ok(())
    }

    /// `on-response`, in reverse order, for every policy that ran and declares it.
    /// `Err` when one broke the contract (the answer is then not released).
    pub fn on_response(&mut self, services: &Services, headers: &mut Vec<(String, Vec<u8>)>, status: u16, source: &str) -> Result<(), Failure> {
        for which in self.ran.clone().into_iter().rev() {
            let route = self.route.clone();
            let p = which.resolve(&services.plan, route.as_deref());
            if !declares(call(services, &p, &mut self.audit, |vt| (vt.hooks)()), HookSet::ON_RESPONSE) {
                continue;
            }
            let resp = ResponseHead { status, headers: headers.iter().map(|(n, v)| Header { name: n.clone(), value: v.clone() }).collect(), source: source.to_string() };
            let head = self.head.clone();
            let edits: ResponseEdits = call(services, &p, &mut self.audit, |vt| (vt.on_response)(head, resp));
            if let Err(why) = apply_response_edits(headers, &edits) {
                eprintln!("{}: {why}", p.name);
                self.verdicts.push((p.name.to_string(), "failed:contract".into()));
                return Err(Failure::contract(p.name));
            }
        }
        Ok(())
    }

    /// `on-complete` for every policy of the chain that declares it.
    pub fn on_complete(&mut self, services: &Services, done: &Completion) {
        let plan = &services.plan;
        let n = self.route.as_ref().and_then(|r| plan.routes.get(r)).map_or(0, |r| r.chain.len());
        for which in std::iter::once(LinkRef::Router).chain((0..n).map(LinkRef::Chain)) {
            let route = self.route.clone();
            let p = which.resolve(plan, route.as_deref());
            if !declares(call(services, &p, &mut self.audit, |vt| (vt.hooks)()), HookSet::ON_COMPLETE) {
                continue;
            }
            let head = self.head.clone();
            let done = done.clone();
            call(services, &p, &mut self.audit, |vt| (vt.on_complete)(head, done));
        }
    }

    /// Every policy's verdict in chain order; `skipped` for those that did not run.
    pub fn verdicts_with_skipped(&self, plan: &Plan) -> Vec<(String, String)> {
        let mut verdicts = self.verdicts.clone();
        let mut names = vec![plan.router.clone()];
        if let Some(route) = self.route.as_ref().and_then(|r| plan.routes.get(r)) {
            names.extend(route.chain.iter().map(|l| l.policy.clone()));
        }
        for name in names {
            if !verdicts.iter().any(|(n, _)| *n == name) {
                verdicts.push((name, "skipped".into()));
            }
        }
        verdicts
    }
}

fn declares(hooks: HookSet, hook: HookSet) -> bool {
    hooks & hook == hook
}

/// A policy's reply, checked as the node checks it.
fn check_reply(reply: &Reply) -> Result<(), String> {
    // As the node: an HTTP status, and not 1xx (a policy cannot switch protocols).
    match http::StatusCode::from_u16(reply.status) {
        Ok(s) if !s.is_informational() => {}
        _ => return Err(format!("reply status {} is not an HTTP status, or is informational (1xx)", reply.status)),
    }
    if reply.body.len() > 64 * 1024 {
        return Err(format!("reply body of {} bytes exceeds 64 KiB", reply.body.len()));
    }
    for h in &reply.headers {
        check_header(&h.name, &h.value)?;
    }
    Ok(())
}

/// A header as the node checks it (`respond::header_pair`): the `http`
/// crate's rules for names and values.
pub fn check_header(name: &str, value: &[u8]) -> Result<(), String> {
    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    http::HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok(())
}

/// Set `headers` (replacing earlier values of the same names).
pub fn set_headers(headers: &mut Vec<(String, Vec<u8>)>, set: &[Header]) -> Result<(), String> {
    for h in set {
        check_header(&h.name, &h.value)?;
        let lower = h.name.to_ascii_lowercase();
        headers.retain(|(n, _)| *n != lower);
        headers.push((lower, h.value.clone()));
    }
    Ok(())
}

fn apply_response_edits(headers: &mut Vec<(String, Vec<u8>)>, edits: &ResponseEdits) -> Result<(), String> {
    for name in &edits.remove_headers {
        let lower = name.to_ascii_lowercase();
        headers.retain(|(n, _)| *n != lower);
    }
    set_headers(headers, &edits.set_headers)
}
