//! The audit record at the edge: the node's record shape (`audit::Record`),
//! sent after the response to the collector on a Portcullis node
//! (`POST /audit/v1/records`, bearer token), which appends it to its own
//! hash chain with `"origin": "edge"`.

use crate::chain::Run;
use crate::plan::Plan;
use portcullis_sdk::{Completion, RequestHead};
use serde::Serialize;
use spin_sdk::http::{Method, Request, Response};
use std::collections::BTreeMap;

/// How the response body ended.
pub struct Ending {
    /// Bytes sent.
    pub bytes_out: u64,
    /// `ok`, `client-abort`, `upstream-error`.
    pub outcome: &'static str,
}

/// One request's record (field names as on the node).
#[derive(Debug, Serialize, Default)]
pub struct Record {
    pub time: String,
    pub id: String,
    pub chain: String,
    pub listener: String,
    pub client_ip: String,
    pub method: String,
    pub host: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub status: u16,
    pub source: String,
    pub verdicts: Vec<(String, String)>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_us: u64,
    pub outcome: String,
}

impl Record {
    /// The record of a request whose head was just read.
    pub fn start(head: &RequestHead, plan: &Plan) -> Record {
        Record {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            id: head.id.clone(),
            chain: plan.chain.clone(),
            listener: "edge".into(),
            client_ip: head.client_ip.clone(),
            method: head.method.clone(),
            host: head.authority.clone(),
            path: head.path.clone(),
            ..Record::default()
        }
    }

    /// The response body has ended.
    pub fn finish(&mut self, ending: Ending, duration_us: u64) {
        self.bytes_out = ending.bytes_out;
        self.outcome = ending.outcome.into();
        self.duration_us = duration_us;
    }

    /// What `on-complete` hooks see.
    pub fn completion(&self, run: &Run, plan: &Plan) -> Completion {
        Completion {
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_us: self.duration_us,
            upstream: self.upstream.clone(),
            region: self.region.clone(),
            outcome: self.outcome.clone(),
            verdicts: run.verdicts_with_skipped(plan),
            facts: run.head.facts.clone(),
        }
    }
}

/// Send the record to the collector at the origin `audit_collector` (a
/// Portcullis node's admin listener; none configured: the record goes to
/// stderr, which Spin keeps per component). An origin, not a URL, because
/// it is also an `allowed_outbound_hosts` entry, where Spin allows no path.
pub async fn deliver(record: &Record) {
    let body = serde_json::to_vec(record).expect("records serialize");
    let origin = spin_sdk::variables::get("audit_collector").unwrap_or_default();
    let origin = origin.trim().trim_end_matches('/');
    if origin.is_empty() {
        eprintln!("audit {}", String::from_utf8_lossy(&body));
        return;
    }
    let token = spin_sdk::variables::get("collector_token").unwrap_or_default();
    let request = Request::builder()
        .method(Method::Post)
        .uri(format!("{origin}/audit/v1/records"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(body)
        .build();
    match spin_sdk::http::send::<_, Response>(request).await {
        Ok(r) if *r.status() == 204 || *r.status() == 200 || *r.status() == 201 => {}
        // Never the record itself (it names a patient's request): its id.
        Ok(r) => eprintln!("portcullis-edge: the collector refused record {} with {}", record.id, r.status()),
        Err(e) => eprintln!("portcullis-edge: record {} not delivered to the collector: {e}", record.id),
    }
}
