//! The webhook-signature policy: lets a webhook through only when its
//! sender proved it knows the shared secret.
//!
//! Two schemes, because webhook senders use both:
//!
//! * **`hmac-sha256`** (GitHub, Meta's WhatsApp Cloud API, Shopify ...): the
//!   sender signs the raw body with HMAC-SHA256 and sends the signature in a
//!   header (`x-hub-signature-256: sha256=<hex>`). Policies see request heads
//!   only, so the **host** reads the body (the route's `[routes.body_hmac]`,
//!   bounded in size and time), computes the HMAC with a key the policy never
//!   holds, and hands the digest over as fact `body.hmac-sha256`. This policy
//!   compares it with the header in constant time. A route without
//!   `body_hmac` has no such fact, and every request is refused (500): a
//!   missing digest never waves a webhook through.
//! * **`api-key`** (the WhatsApp Evolution API sends `apikey: <key>`): the
//!   header must hold one of the keys whose SHA-256 is in `api-key-sha256`.
//!   The config holds digests, not keys; several allow rotation.
//!
//! Refusals are **401** problem+json; the audit record says
//! `outcome` = `ok` | `missing` | `malformed` | `mismatch` | `misconfigured`
//! and `scheme`, never the signature or key.
//!
//! # Settings
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `scheme` | — | `hmac-sha256` or `api-key` |
//! | `header` | `x-hub-signature-256` / `apikey` | header carrying the signature or key |
//! | `prefix` | `sha256=` | (hmac) text before the signature in the header; `""` for none |
//! | `encoding` | `hex` | (hmac) `hex` or `base64` |
//! | `api-key-sha256` | — | (api-key) list of SHA-256 digests (hex) of accepted keys |
//! | `strip-header` | `false` | remove the header before forwarding |
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use base64::Engine;
use portcullis_sdk::{Edits, Policy, RequestHead, Verdict, audit, export_policy, fact, field, header_value, problem, setting_error};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The fact the host's digest stage writes.
const HMAC_FACT: &str = "body.hmac-sha256";

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Scheme {
    HmacSha256,
    ApiKey,
}

#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Encoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Settings {
    scheme: Scheme,
    header: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    api_key_sha256: Vec<String>,
    #[serde(default)]
    strip_header: bool,
}

/// Settings checked and ready: digests decoded.
struct Config {
    scheme: Scheme,
    header: String,
    prefix: String,
    encoding: Encoding,
    key_digests: Vec<[u8; 32]>,
    strip_header: bool,
}

impl Config {
    fn from(s: Settings) -> Result<Config, String> {
        let header = s.header.unwrap_or_else(|| String::from(if s.scheme == Scheme::ApiKey { "apikey" } else { "x-hub-signature-256" }));
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            return Err(setting_error("header", "a lower-case header name is required"));
        }
        let mut key_digests = Vec::new();
        for (i, d) in s.api_key_sha256.iter().enumerate() {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(d, &mut digest).map_err(|_| setting_error(&alloc::format!("api-key-sha256.{i}"), "expected a SHA-256 digest: 64 hex digits"))?;
            key_digests.push(digest);
        }
        match s.scheme {
            Scheme::ApiKey if key_digests.is_empty() => return Err(setting_error("api-key-sha256", "the api-key scheme needs at least one key digest")),
            Scheme::ApiKey if s.prefix.is_some() => return Err(setting_error("prefix", "only the hmac-sha256 scheme has a prefix")),
            Scheme::HmacSha256 if !key_digests.is_empty() => {
                return Err(setting_error("api-key-sha256", "only the api-key scheme takes key digests (the HMAC key is the route's body_hmac secret, held by the host)"));
            }
            _ => {}
        }
        Ok(Config { scheme: s.scheme, header, prefix: s.prefix.unwrap_or_else(|| String::from("sha256=")), encoding: s.encoding, key_digests, strip_header: s.strip_header })
    }

    fn load() -> Result<Config, String> {
        Config::from(portcullis_sdk::settings::load()?)
    }

    fn scheme_name(&self) -> &'static str {
        match self.scheme {
            Scheme::HmacSha256 => "hmac-sha256",
            Scheme::ApiKey => "api-key",
        }
    }
}

/// Why a webhook was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    Mismatch,
    /// The route computes no body digest (no `[routes.body_hmac]`).
    Misconfigured,
}

fn decide(cfg: &Config, req: &RequestHead) -> Result<(), Refusal> {
    let presented = header_value(req, &cfg.header).ok_or(Refusal::Missing)?;
    match cfg.scheme {
        Scheme::ApiKey => {
            let digest: [u8; 32] = Sha256::digest(presented).into();
            // Compare with every digest, so timing says nothing about which.
            let matched = cfg.key_digests.iter().fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&digest));
            if bool::from(matched) { Ok(()) } else { Err(Refusal::Mismatch) }
        }
        Scheme::HmacSha256 => {
            let expected_hex = fact(req, HMAC_FACT).ok_or(Refusal::Misconfigured)?;
            let mut expected = [0u8; 32];
            hex::decode_to_slice(expected_hex, &mut expected).map_err(|_| Refusal::Misconfigured)?;
            let text = core::str::from_utf8(presented).map_err(|_| Refusal::Malformed)?.trim();
            let signature = text.strip_prefix(cfg.prefix.as_str()).ok_or(Refusal::Malformed)?;
            let given: Vec<u8> = match cfg.encoding {
                Encoding::Hex => hex::decode(signature).map_err(|_| Refusal::Malformed)?,
                Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(signature).map_err(|_| Refusal::Malformed)?,
            };
            // `ct_eq` on slices of different lengths is false, in constant time.
            if bool::from(given.as_slice().ct_eq(&expected)) { Ok(()) } else { Err(Refusal::Mismatch) }
        }
    }
}

/// The webhook-signature policy.
pub struct WebhookSignature;

impl Policy for WebhookSignature {
    fn check_config() -> Result<(), String> {
        Config::load().map(drop)
    }

    fn on_request(req: RequestHead) -> Verdict {
        let cfg = match Config::load() {
            Ok(c) => c,
            Err(_) => return problem(500, "Internal Server Error", "the webhook policy is misconfigured").respond(),
        };
        let outcome = decide(&cfg, &req);
        let word = match &outcome {
            Ok(()) => "ok",
            Err(Refusal::Missing) => "missing",
            Err(Refusal::Malformed) => "malformed",
            Err(Refusal::Mismatch) => "mismatch",
            Err(Refusal::Misconfigured) => "misconfigured",
        };
        audit(&[field("outcome", word), field("scheme", cfg.scheme_name())]);
        match outcome {
            Ok(()) if cfg.strip_header => Edits::new().remove_header(cfg.header).proceed(),
            Ok(()) => portcullis_sdk::proceed(),
            Err(Refusal::Misconfigured) => problem(500, "Internal Server Error", "this route computes no body digest for the webhook signature").respond(),
            Err(Refusal::Missing) => problem(401, "Unauthorized", &alloc::format!("the webhook is not signed (no {} header)", cfg.header)).respond(),
            Err(Refusal::Malformed) => problem(401, "Unauthorized", "the webhook signature is malformed").respond(),
            Err(Refusal::Mismatch) => problem(401, "Unauthorized", "the webhook signature does not match").respond(),
        }
    }
}

export_policy!(WebhookSignature);

#[cfg(test)]
mod tests;
