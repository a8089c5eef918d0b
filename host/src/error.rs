//! The one error type of the request path: what failed, whose fault it was,
//! and whether a client may retry. `proxy::respond` is the one place that
//! turns it into an HTTP answer.

use crate::runtime::{FailureClass, PolicyFailure};
use http::StatusCode;

/// Whose fault a failure was (for logs, metrics and the audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something unacceptable.
    Downstream,
    /// The upstream failed or was unreachable.
    Upstream,
    /// A policy failed (trap, deadline, memory, broken contract).
    Policy,
    /// The gateway itself (configuration, capacity).
    Internal,
}

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request head is larger than `max_request_head`.
    #[error("request head of {size} bytes exceeds the limit of {limit}")]
    HeadTooLarge {
        /// Bytes in the head.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The request body is (or became) larger than the route's limit.
    #[error("request body exceeds the route's limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body a route must read whole (`body_hmac`) did not arrive in time.
    #[error("the request body did not arrive within {timeout_ms} ms")]
    BodyTimeout {
        /// The route's body read timeout.
        timeout_ms: u64,
    },
    /// The request could not be understood.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request's framing is ambiguous or malformed (smuggling attempts:
    /// transfer codings, `Host` against the request target); see `proxy::framing`.
    #[error("malformed request framing: {0}")]
    Framing(String),
    /// The client's body stream broke (a bad chunk size, a cut connection)
    /// or stalled past the listener's `body_idle_timeout_ms`.
    #[error("the request body could not be read: {0}")]
    ClientBody(String),
    /// The listener is at its connection or in-flight request limit.
    #[error("listener at capacity: {0}")]
    Overloaded(String),
    /// A policy failed; the request is refused (fail closed).
    #[error(transparent)]
    Policy(#[from] PolicyFailure),
    /// The router named a route the configuration does not have.
    #[error("the router chose route {0:?}, which is not configured")]
    UnknownRoute(String),
    /// No target of any candidate pool is available.
    #[error("no healthy target in pools {pools:?}")]
    NoHealthyTarget {
        /// The pools tried.
        pools: Vec<String>,
    },
    /// Connecting to the upstream failed.
    #[error("cannot connect to upstream {target}: {detail}")]
    UpstreamConnect {
        /// `host:port`.
        target: String,
        /// Why, for the log.
        detail: String,
    },
    /// The upstream did not send a response head in time.
    #[error("upstream {target} sent no response within {timeout_ms} ms")]
    UpstreamTimeout {
        /// `host:port`.
        target: String,
        /// The budget that ran out.
        timeout_ms: u64,
    },
    /// A `durable` route's audit record could not be made durable; the
    /// response is withheld (fail closed).
    #[error("audit record not durable: {0}")]
    AuditUnavailable(String),
    /// The upstream broke the exchange.
    #[error("upstream {target} failed: {detail}")]
    UpstreamProtocol {
        /// `host:port`.
        target: String,
        /// Why, for the log.
        detail: String,
    },
}

impl GatewayError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadRequest(_) | GatewayError::Framing(_) | GatewayError::ClientBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Policy(f) => match f.class {
                FailureClass::Capacity => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            GatewayError::UnknownRoute(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::NoHealthyTarget { .. } | GatewayError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whose fault it was.
    pub fn fault(&self) -> Fault {
        match self {
            GatewayError::HeadTooLarge { .. } | GatewayError::BodyTooLarge { .. } | GatewayError::BodyTimeout { .. } | GatewayError::BadRequest(_) | GatewayError::Framing(_) | GatewayError::ClientBody(_) => Fault::Downstream,
            GatewayError::Overloaded(_) => Fault::Internal,
            GatewayError::Policy(_) => Fault::Policy,
            GatewayError::UnknownRoute(_) | GatewayError::NoHealthyTarget { .. } | GatewayError::AuditUnavailable(_) => Fault::Internal,
            GatewayError::UpstreamConnect { .. } | GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamProtocol { .. } => Fault::Upstream,
        }
    }

    /// Whether the same request may succeed if the client retries.
    pub fn retryable(&self) -> bool {
        matches!(self.fault(), Fault::Upstream) || matches!(self, GatewayError::NoHealthyTarget { .. })
    }

    /// Stable problem slug (`type` is `urn:portcullis:problem:<slug>`).
    pub fn slug(&self) -> String {
        match self {
            GatewayError::HeadTooLarge { .. } => "request-head-too-large".into(),
            GatewayError::BodyTooLarge { .. } => "request-body-too-large".into(),
            GatewayError::BodyTimeout { .. } => "request-body-timeout".into(),
            GatewayError::BadRequest(_) => "bad-request".into(),
            GatewayError::Framing(_) => "request-framing".into(),
            GatewayError::ClientBody(_) => "request-body-broken".into(),
            GatewayError::Overloaded(_) => "overloaded".into(),
            GatewayError::Policy(f) => format!("policy-{}", f.class),
            GatewayError::UnknownRoute(_) => "unknown-route".into(),
            GatewayError::NoHealthyTarget { .. } => "no-healthy-upstream".into(),
            GatewayError::AuditUnavailable(_) => "audit-unavailable".into(),
            GatewayError::UpstreamConnect { .. } => "upstream-unreachable".into(),
            GatewayError::UpstreamTimeout { .. } => "upstream-timeout".into(),
            GatewayError::UpstreamProtocol { .. } => "upstream-error".into(),
        }
    }

    /// What the client is told: no internals (no addresses, no trap text).
    pub fn public_detail(&self) -> String {
        match self {
            GatewayError::HeadTooLarge { limit, .. } => format!("The request head exceeds {limit} bytes."),
            GatewayError::BodyTooLarge { limit } => format!("The request body exceeds {limit} bytes."),
            GatewayError::BodyTimeout { timeout_ms } => format!("The request body did not arrive within {timeout_ms} ms."),
            GatewayError::BadRequest(why) | GatewayError::Framing(why) => why.clone(),
            GatewayError::ClientBody(_) => "The request body could not be read.".into(),
            GatewayError::Overloaded(_) => "The gateway is at capacity; retry later.".into(),
            GatewayError::Policy(f) => {
                let what = match f.class {
                    FailureClass::Trap => "trapped",
                    FailureClass::Deadline => "exceeded its deadline",
                    FailureClass::MemoryLimit => "exceeded its memory limit",
                    FailureClass::Capacity => "could not run: the gateway is at capacity",
                    FailureClass::Contract => "gave an answer the contract forbids",
                };
                format!("Policy {:?} {what}; the request was refused.", f.policy)
            }
            GatewayError::UnknownRoute(_) => "The gateway's routing is misconfigured.".into(),
            GatewayError::NoHealthyTarget { .. } => "No healthy upstream is available for this route.".into(),
            GatewayError::AuditUnavailable(_) => "The audit record of this request could not be written; the answer was withheld.".into(),
            GatewayError::UpstreamConnect { .. } => "The upstream service could not be reached.".into(),
            GatewayError::UpstreamTimeout { .. } => "The upstream service did not answer in time.".into(),
            GatewayError::UpstreamProtocol { .. } => "The upstream service failed to answer.".into(),
        }
    }
}
