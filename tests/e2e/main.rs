//! End-to-end tests: the real `portcullis` binary, real compiled components,
//! real HTTP upstreams on loopback.

mod support;

mod audit;
mod check;
mod clients;
mod collector;
mod deploy;
mod edge_plan;
mod edge;
mod edge_runtime;
mod framing;
mod greedy_clients;
mod hostile;
mod policy_cases;
mod policy_new;
mod rate_limit;
mod jwt;
mod jwt_cache;
mod platforms;
mod metrics;
mod reload;
mod resilience;
mod residency;
mod routing;
mod security_headers;
mod shutdown;
mod streaming;
mod tls;
mod upstreams;
mod webhook;
