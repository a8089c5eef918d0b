//! End-to-end tests: the real `portcullis` binary, real compiled components,
//! real HTTP upstreams on loopback.

mod support;

mod check;
mod clients;
mod hostile;
mod policy_cases;
mod reload;
mod routing;
mod security_headers;
mod streaming;
mod upstreams;
