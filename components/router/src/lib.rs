//! The router policy (namespace `route`): picks the route of a request from
//! the host-rendered route table (setting `table`) and writes the facts
//! `route.name`, `route.pools` and `route.<key>` for the route's `facts`.
//! No route: 404; a route for the host and path but not the method: 405
//! with `allow`. Both answers are problem+json. A CORS preflight (`OPTIONS`
//! with `access-control-request-method`) matches a route that allows the
//! requested method, so the route's chain can answer it (see [`table`]).
#![no_std]

extern crate alloc;

use alloc::string::String;
use portcullis_sdk::{Policy, RequestHead, Verdict, export_policy, setting};

pub mod table;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod fuzz;

/// The router policy.
pub struct Router;

impl Policy for Router {
    fn check_config() -> Result<(), String> {
        match setting("table") {
            Some(t) => table::check(&t),
            None => Err(String::from(
                "setting \"table\": missing (the host renders it from the routes)",
            )),
        }
    }

    fn on_request(req: RequestHead) -> Verdict {
        // One host call per request; an absent table routes nothing (404).
        let t = setting("table").unwrap_or_default();
        table::route(&t, &req)
    }
}

export_policy!(Router);
