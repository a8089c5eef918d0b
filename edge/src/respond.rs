//! Respond stage: the answer's head gets the chain's response headers and
//! every `on-response` edit (reverse order), then its body streams out.

use crate::audit::{Ending, Record};
use crate::chain::{self, Failure, Run};
use crate::forward::{self, Upstream};
use crate::services::Services;
use futures::{SinkExt, StreamExt};
use portcullis_sdk::Reply;
use spin_sdk::http::{Fields, OutgoingResponse, ResponseOutparam};

/// `application/problem+json` (RFC 9457).
const PROBLEM_JSON: &str = "application/problem+json";

/// What the client will be sent.
pub enum Answer {
    /// Made here: a policy's reply or a problem.
    Made { status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>, source: String, error: Option<String> },
    /// The upstream's response, its body still to stream.
    Upstream(Upstream),
}

impl Answer {
    /// A policy's reply.
    pub fn reply(reply: Reply, source: String) -> Answer {
        let headers = reply.headers.into_iter().map(|h| (h.name.to_ascii_lowercase(), h.value)).collect();
        Answer::Made { status: reply.status, headers, body: reply.body, source, error: None }
    }

    /// A problem+json answer from the gateway itself.
    pub fn problem(failure: &Failure, request_id: &str) -> Answer {
        let (headers, body) = problem_parts(failure, request_id);
        Answer::Made { status: failure.status, headers, body, source: "gateway".into(), error: Some(failure.slug.clone()) }
    }

    /// The upstream's answer.
    pub fn upstream(up: Upstream) -> Answer {
        Answer::Upstream(up)
    }
}

fn problem_parts(failure: &Failure, request_id: &str) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
    let body = serde_json::json!({
        "type": format!("urn:portcullis:problem:{}", failure.slug),
        "title": http::StatusCode::from_u16(failure.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error"),
        "status": failure.status,
        "detail": failure.detail,
        "request_id": request_id,
    });
    let mut headers = vec![("content-type".to_string(), PROBLEM_JSON.as_bytes().to_vec())];
    // The same request may succeed later (as on the node).
    if failure.status == 503 && failure.slug == "no-healthy-upstream" {
        headers.push(("retry-after".into(), b"1".to_vec()));
    }
    (headers, serde_json::to_vec(&body).expect("json values serialize"))
}

/// A problem, sent before any policy ran (no chain, no record).
pub async fn send_problem(out: ResponseOutparam, failure: &Failure, request_id: &str) {
    let (mut headers, body) = problem_parts(failure, request_id);
    headers.push(("x-request-id".into(), request_id.as_bytes().to_vec()));
    let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid problem headers"));
    let _ = response.set_status_code(failure.status);
    let _ = out.set_with_body(response, body).await;
}

/// Send `answer`; returns how its body ended.
pub async fn send(out: ResponseOutparam, answer: Answer, run: &mut Run, services: &Services, record: &mut Record) -> Ending {
    let (mut status, mut headers, mut source, mut made_body, upstream) = match answer {
        Answer::Made { status, headers, body, source, error } => {
            record.error = error;
            (status, headers, source, Some(body), None)
        }
        Answer::Upstream(up) => (up.response.status(), forward::response_headers(&up.response), "upstream".to_string(), None, Some(up)),
    };
    let _ = chain::set_headers(&mut headers, &run.response_headers);
    if let Err(failure) = run.on_response(services, &mut headers, status, &source) {
        // Fail closed: the answer is not released.
        let (h, b) = problem_parts(&failure, &run.head.id);
        (status, headers, source, made_body) = (failure.status, h, "gateway".into(), Some(b));
        record.error = Some(failure.slug);
    }
    headers.retain(|(n, _)| n != "x-request-id");
    headers.push(("x-request-id".into(), run.head.id.clone().into_bytes()));
    record.status = status;
    record.source = source;

    let fields = match Fields::from_list(&headers) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portcullis-edge: request {}: response headers refused: {e:?}", run.head.id);
            let failure = Failure { status: 502, slug: "upstream-error".into(), detail: "The upstream service's answer could not be used.".into() };
            let (h, b) = problem_parts(&failure, &run.head.id);
            record.status = 502;
            record.source = "gateway".into();
            record.error = Some(failure.slug);
            made_body = Some(b);
            Fields::from_list(&h).expect("valid problem headers")
        }
    };
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(record.status);
    let mut sink = response.take_body();
    out.set(response);
    let mut ending = Ending { bytes_out: 0, outcome: "ok" };
    match (made_body, upstream) {
        (Some(body), _) => {
            ending.bytes_out = body.len() as u64;
            if !body.is_empty() && sink.send(body).await.is_err() {
                ending.outcome = "client-abort";
            }
        }
        (None, Some(up)) => {
            let mut stream = up.response.take_body_stream();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else {
                    ending.outcome = "upstream-error";
                    // Not finished: the client must not take a cut body as whole.
                    std::mem::forget(sink);
                    return ending;
                };
                ending.bytes_out += chunk.len() as u64;
                if sink.send(chunk).await.is_err() {
                    ending.outcome = "client-abort";
                    break;
                }
            }
        }
        (None, None) => unreachable!("an answer has a body or an upstream"),
    }
    drop(sink); // finishes the body
    ending
}
