//! The security-headers policy: CORS by the Fetch standard, HSTS and the
//! other browser security headers, removal of response headers that leak
//! the stack, and an optional http → https redirect.
//!
//! Place it **first** in a route's `chain`, before any authentication: a CORS
//! preflight carries no credentials, so it must be answered before jwt-auth
//! asks for a token. The router lets a preflight reach a route that allows
//! the *requested* method even when the route's `methods` do not list
//! `OPTIONS` (see the router's `table` module).
//!
//! # What it does
//!
//! `on-request`:
//!
//! 1. `redirect-https = true` and the request came over plain http (the
//!    host's `scheme`: `https` only when a trusted proxy says so in
//!    `x-forwarded-proto`): **308** with
//!    `location: https://<authority><path>[?query]`. The host gives the
//!    authority without a port, so the redirect goes to https's default
//!    port 443 (the method and body are kept by a 308).
//! 2. CORS on (`allow-origins` not empty) and the request is a **preflight**
//!    (`OPTIONS` with `access-control-request-method`): answered here, never
//!    forwarded.
//!    * Allowed when the `Origin` matches `allow-origins`, the requested
//!      method is in `allow-methods` (case-sensitive) and every name in
//!      `access-control-request-headers` is in `allow-headers`
//!      (case-insensitive): **204** with `access-control-allow-origin: <the
//!      origin>`, `access-control-allow-methods` (the configured list),
//!      `access-control-allow-headers` (the configured list, when not
//!      empty), `access-control-max-age`, `access-control-allow-credentials:
//!      true` when configured, and `vary: origin,
//!      access-control-request-method, access-control-request-headers`.
//!    * Otherwise **403** problem+json saying which of origin, method or
//!      header was refused, with no `access-control-*` header (so the
//!      browser blocks the actual request).
//!    * Audit fields: `cors` = `preflight-allowed` or `preflight-refused`, and
//!      `cors-refused` = `origin`, `method` or `header`; a redirect writes
//!      `redirect` = `https`.
//! 3. Anything else proceeds untouched.
//!
//! `on-response` (declared in `hooks`, so it runs on **every** answer of the
//! route: the upstream's, a policy's 401/429/403, a gateway 502/504 and the
//! policy's own 204/308):
//!
//! * removes the `remove-headers` (`server`, `x-powered-by` by default);
//! * sets `strict-transport-security` when the scheme is `https` (never on
//!   plain http, where browsers ignore it), `x-content-type-options`,
//!   `x-frame-options`, `referrer-policy`, `permissions-policy` and
//!   `content-security-policy` as configured, replacing the upstream's;
//!   a header whose setting is `""` is not touched;
//! * for an actual (non-preflight) request with CORS on: removes the
//!   upstream's `access-control-*` headers (the gateway owns CORS on this
//!   route); merges `origin` into `vary` (appending to the upstream's
//!   `vary`, never clobbering it); and when the `Origin` is allowed sets
//!   `access-control-allow-origin: <the origin>` (never `*` with
//!   credentials), `access-control-allow-credentials: true` when
//!   configured and `access-control-expose-headers`. A disallowed origin
//!   gets no CORS header, so the browser keeps the answer from the page.
//!   With `allow-origins = ["*"]` the answer is `access-control-allow-origin:
//!   *` for everyone and no `vary: origin`.
//!
//! # Settings
//!
//! Flattened TOML under `[policies.<name>.settings]`, overridable per key in
//! `[routes.settings.<name>]`. Lists use the contract's list encoding (TOML
//! arrays). Unknown settings are refused by `check-config`.
//!
//! | setting | type | default | meaning |
//! |---|---|---|---|
//! | `allow-origins` | list | `[]` (CORS off) | exact origins `scheme://host[:port]` (lower-case, no path, no default port), patterns `scheme://*.domain[:port]` (any subdomain, not the domain itself, same scheme and port), or `["*"]` alone (any origin, no credentials). `null` is refused. |
//! | `allow-methods` | list | `["GET", "HEAD", "POST"]` | methods a preflight may ask for (upper-case, exact); `["*"]` echoes the requested one (not with credentials) |
//! | `allow-headers` | list | `[]` | request headers a preflight may ask for (case-insensitive); `*` allows any but `authorization` (not with credentials) |
//! | `expose-headers` | list | `[]` | `access-control-expose-headers` on actual responses |
//! | `allow-credentials` | bool | `false` | `access-control-allow-credentials: true` (cookies, `Authorization`) |
//! | `preflight-max-age` | seconds | `600` | `access-control-max-age`, at most 86400 |
//! | `hsts` | bool | `true` | send `strict-transport-security` on https |
//! | `hsts-max-age` | seconds | `63072000` | its `max-age` |
//! | `hsts-include-subdomains` | bool | `true` | its `includeSubDomains` |
//! | `hsts-preload` | bool | `false` | its `preload` (needs include-subdomains and a max-age of a year or more) |
//! | `nosniff` | bool | `true` | `x-content-type-options: nosniff` |
//! | `frame-options` | `DENY`, `SAMEORIGIN` or `""` | `DENY` | `x-frame-options` |
//! | `referrer-policy` | string | `strict-origin-when-cross-origin` | `referrer-policy` (tokens checked; `""` not sent) |
//! | `permissions-policy` | string | `camera=(), microphone=(), geolocation=(), payment=(), usb=()` | `permissions-policy` (`""` not sent) |
//! | `content-security-policy` | string | `""` (not sent) | `content-security-policy` |
//! | `remove-headers` | list | `["server", "x-powered-by"]` | response headers removed (not framing ones) |
//! | `redirect-https` | bool | `false` | 308 plain-http requests to https |
//!
//! `check-config` refuses `*` in `allow-origins`, `allow-methods`,
//! `allow-headers` or `expose-headers` together with `allow-credentials =
//! true`, naming the setting.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use portcullis_sdk::{
    Hooks, Policy, RequestHead, ResponseEdits, ResponseHead, Verdict, audit, export_policy,
    proceed, settings, trap,
};

pub mod config;
pub mod cors;

#[cfg(test)]
mod tests;

use cors::Decision;

/// The security-headers policy.
pub struct SecurityHeaders;

impl Policy for SecurityHeaders {
    fn hooks() -> Hooks {
        Hooks::ON_RESPONSE
    }

    fn check_config() -> Result<(), String> {
        config::parse(&settings("")).map(drop)
    }

    fn on_request(req: RequestHead) -> Verdict {
        let pairs = settings("");
        // check-config passed for these settings (and every route's
        // overrides); anything else is a broken host: fail closed.
        let cfg = config::parse(&pairs).unwrap_or_else(|_| trap());
        match cors::decide(&cfg, &req) {
            Decision::Proceed => proceed(),
            Decision::Redirect(reply) => {
                audit(&[(String::from("redirect"), String::from("https"))]);
                reply.respond()
            }
            Decision::Preflight(reply, refusal) => {
                let fields = match &refusal {
                    None => vec![(String::from("cors"), String::from("preflight-allowed"))],
                    Some(r) => vec![
                        (String::from("cors"), String::from("preflight-refused")),
                        (String::from("cors-refused"), String::from(r.slug())),
                    ],
                };
                audit(&fields);
                reply.respond()
            }
        }
    }

    fn on_response(req: RequestHead, resp: ResponseHead) -> ResponseEdits {
        let pairs = settings("");
        let cfg = config::parse(&pairs).unwrap_or_else(|_| trap());
        cors::response_edits(&cfg, &req, &resp.headers)
    }
}

export_policy!(SecurityHeaders);
