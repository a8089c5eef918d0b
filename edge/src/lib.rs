//! Portcullis at the edge on Spin: one wasi:http component that runs the
//! node's policy chain (the same policy crates, compiled in through the
//! SDK's `embedded` feature) and forwards to the upstream over outbound HTTP.
//!
//! A request reads top to bottom, as on the node: listen (the head, its
//! checks) → chain (router, then the route's policies) → route (pools) →
//! forward (streamed both ways) → respond (`on-response`, the answer) →
//! complete (`on-complete`, the audit record to the collector).

mod audit;
mod chain;
mod forward;
mod head;
mod jwks;
mod plan;
mod policies;
mod rate;
mod respond;
mod services;

use chain::{End, Failure, Run};
use services::Services;
use spin_sdk::http::{IncomingRequest, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle(request: IncomingRequest, out: ResponseOutparam) {
    let started = std::time::Instant::now();
    let services = match load() {
        Ok(s) => s,
        Err(why) => {
            // The edge's own configuration is wrong: nothing is forwarded.
            eprintln!("portcullis-edge: {why}");
            let failure = Failure { status: 500, slug: "edge-misconfigured".into(), detail: "The edge gateway is misconfigured; the request was refused.".into() };
            respond::send_problem(out, &failure, &head::request_id(&request)).await;
            return;
        }
    };

    // Listen stage: the head as policies see it, and its checks.
    let (head, mut body, refused) = match head::read(request, &services.plan) {
        Ok((head, body)) => (head, Some(body), None),
        Err((failure, head)) => (head, None, Some(failure)),
    };
    let mut record = audit::Record::start(&head, &services.plan);
    let mut run = Run::new(head);

    let answer = match (refused, body.as_mut()) {
        (Some(failure), _) => respond::Answer::problem(&failure, &run.head.id),
        (None, Some(body)) => pass(&services, &mut run, &mut record, body).await,
        (None, None) => unreachable!("a head that was read has a body"),
    };

    // Respond stage.
    let ending = respond::send(out, answer, &mut run, &services, &mut record).await;

    // Completion: on-complete hooks, then the audit record.
    record.finish(ending, started.elapsed().as_micros() as u64);
    let done = record.completion(&run, &services.plan);
    run.on_complete(&services, &done);
    record.verdicts = run.verdicts_with_skipped(&services.plan);
    record.policies = std::mem::take(&mut run.audit);
    audit::deliver(&record).await;
}

/// Chain, route and forward stages: the answer for a head that was read.
async fn pass(services: &Services, run: &mut Run, record: &mut audit::Record, body: &mut head::Body) -> respond::Answer {
    // Chain stage.
    let end = run.run(services, body).await;
    record.route = run.route.clone();
    match end {
        End::Respond { policy, reply } => respond::Answer::reply(reply, format!("policy:{policy}")),
        End::Failed(failure) => respond::Answer::problem(&failure, &run.head.id),
        End::Proceed => {
            let route = &services.plan.routes[run.route.as_ref().expect("a chain proceeds only with a route")];
            // Route stage, then forward stage.
            let pools = match forward::pools(&services.plan, route, &run.head.facts).and_then(|pools| forward::check_declared_length(&run.head, route).map(|()| pools)) {
                Ok(pools) => pools,
                Err(failure) => return respond::Answer::problem(&failure, &run.head.id),
            };
            let body = std::mem::replace(body, head::Body::Read(Vec::new()));
            match forward::forward(&services.plan, &pools, route, &run.head, body).await {
                Ok(up) => {
                    record.upstream = Some(up.upstream.clone());
                    record.region = up.region.clone();
                    record.bytes_in = up.bytes_in;
                    respond::Answer::upstream(up)
                }
                Err((failure, bytes_in)) => {
                    record.bytes_in = bytes_in;
                    respond::Answer::problem(&failure, &run.head.id)
                }
            }
        }
    }
}

/// The plan and the secrets, from Spin variables.
fn load() -> Result<Services, String> {
    let text = spin_sdk::variables::get("portcullis_config").map_err(|e| format!("variable portcullis_config: {e}"))?;
    let plan = plan::Plan::parse(&text).map_err(|e| e.to_string())?;
    let key = spin_sdk::variables::get("pseudonym_key").map_err(|e| format!("variable pseudonym_key: {e}"))?;
    let pseudonym_key = hex::decode(key.trim()).map_err(|_| "variable pseudonym_key: not hex".to_string())?;
    if pseudonym_key.len() < 32 {
        return Err("variable pseudonym_key: fewer than 32 bytes".into());
    }
    let kv = spin_sdk::key_value::Store::open_default().map_err(|e| eprintln!("portcullis-edge: key-value store \"default\": {e}")).ok();
    Ok(Services { plan, pseudonym_key, kv, jwks: Default::default() })
}
