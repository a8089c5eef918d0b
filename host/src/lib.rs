//! Portcullis: an edge gateway whose every decision is made by a policy that
//! is a WebAssembly component. See the README for the picture; the request
//! path starts in [`proxy`].
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod body;
pub mod config;
pub mod demo;
pub mod edge;
pub mod error;
pub mod jwks;
pub mod metrics;
pub mod policy_new;
pub mod policy_test;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod residency;
pub mod runtime;
pub mod serve;
pub mod snapshot;
pub mod tls;
pub mod token_cache;
